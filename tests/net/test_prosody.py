"""The Edge's XMPP s2s side against prosody, an XMPP server nobody here wrote.

Prosody (Debian ``prosody``) plays the federated XMPP partner jabber.example.org on a 127.x address with
the lab PKI. The Edge's outbound stream (what E2/X2 run) must get through STARTTLS and SASL EXTERNAL
(XEP-0178) with the Edge's real certificate, and prosody must refuse the wrong-SAN variant.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulator.lab.pki import PkiFiles, build_pki
from simulator.net.transport.tls import client_context
from simulator.net.transport.xmpp_stream import connect_s2s
from simulator.outcome import ProbeFailure, Reason
from simulator.spec.schema import CertificateVariant, Scenario
from tests.peers import in_ci, require_tool

pytestmark = pytest.mark.interop
PROSODY_ADDRESS = "127.78.52.69"
PARTNER = "jabber.example.org"


def _config(folder: Path, files: PkiFiles) -> Path:
    chain, key = files.cert("xmpp-jabber")
    config = folder / "prosody.cfg.lua"
    config.write_text(f"""
run_as_root = true
daemonize = false
pidfile = "{folder}/prosody.pid"
data_path = "{folder}/data"
log = {{ {{ levels = {{ min = "debug" }}, to = "file", filename = "{folder}/prosody.log" }} }}
interfaces = {{ "{PROSODY_ADDRESS}" }}
c2s_ports = {{}}
s2s_ports = {{ 5269 }}
http_ports = {{}}
https_ports = {{}}
modules_enabled = {{ "tls", "saslauth", "dialback", "disco", "ping" }}
modules_disabled = {{ "offline", "posix" }}
certificates = "{folder}"
s2s_secure_auth = true
s2s_require_encryption = true
ssl = {{ certificate = "{chain}"; key = "{key}"; cafile = "{files.ca}"; }}
VirtualHost "{PARTNER}"
""", encoding="utf-8")
    (folder / "data").mkdir()
    return config


async def _log_with(log: Path, needle: str) -> str:
    """Prosody's log once it holds ``needle`` (it writes asynchronously); fails after 5 s."""
    for _ in range(100):
        text = await asyncio.to_thread(log.read_text)
        if needle in text:
            return text
        await asyncio.sleep(0.05)
    pytest.fail(f"prosody never logged {needle!r}")


@pytest.fixture
def prosody(tmp_path: Path, shipped_scenario: Scenario) -> Iterator[tuple[PkiFiles, Path]]:
    binary = require_tool("prosody")
    if os.geteuid() != 0:
        message = "prosody on port 5269 needs root here"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    files = build_pki(shipped_scenario).write(tmp_path / "pki")
    config = _config(tmp_path, files)
    process = subprocess.Popen([binary, "--config", str(config), "-F"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    log = tmp_path / "prosody.log"
    try:
        deadline = time.monotonic() + 15
        while "Activated service 's2s'" not in (log.read_text() if log.exists() else ""):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"prosody did not start: {log.read_text() if log.exists() else 'no log'}")
            time.sleep(0.05)
        yield files, log
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


async def test_edge_outbound_stream_is_accepted_by_prosody_with_sasl_external(
        prosody: tuple[PkiFiles, Path]) -> None:
    files, log = prosody
    context = client_context(files.ca, *files.cert("edge-external"), crl=files.crl)
    stream, _ = await connect_s2s(PROSODY_ADDRESS, 5269, "contoso.com", PARTNER, context, 5)
    await stream.close()
    text = await _log_with(log, "is now authenticated for contoso.com")
    assert "mechanism='EXTERNAL'" in text and "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'" in text


async def test_prosody_refuses_the_edge_certificate_with_the_wrong_name(prosody: tuple[PkiFiles, Path]) -> None:
    files, log = prosody
    context = client_context(files.ca, *files.cert("edge-external", CertificateVariant.WRONG_SAN))
    with pytest.raises(ProbeFailure) as caught:
        await connect_s2s(PROSODY_ADDRESS, 5269, "contoso.com", PARTNER, context, 5)
    assert caught.value.reason is Reason.REJECTED and "not-authorized" in caught.value.detail
    await _log_with(log, "certificate is not valid for this name")
