"""Interop: libnice (Debian ``gir1.2-nice-0.1`` 0.1.21, ``Nice.Compatibility.OC2007R2``) as the MS-TURN client
of ``edgesim serve av-edge``, over UDP 3478 and over TCP with the MSOC pseudo-TLS hello and 4-byte framing.

``tests/interop/libnice_msturn.py`` runs under the system python (python3-gi is not in the venv). It gathers,
prints the relay candidates, selects (relay, plain UDP peer) without connectivity checks and echoes a
payload through the relay; see its docstring for why each step is done that way.

Setup notes that the tests encode:

- edgesim's MS-TURN 401 carries ALTERNATE-SERVER = the public address, and libnice sends its next Allocate
  there (MS-TURN 2.2.2). On loopback there is no 1:1 NAT, so the server runs with ``--public`` =
  ``--listen`` = ``--relay-bind``: the relay candidate must then carry that address.
- libnice's OC2007 modes base64-decode the relay username/password; the script base64-encodes them.
  libnice 0.1.21 also writes OC2007 attributes unpadded (``STUN_AGENT_USAGE_NO_ALIGNED_ATTRIBUTES``), so the
  username is 8 characters: a 4-aligned USERNAME keeps the Allocate 4-aligned.
- The coturn case (``Nice.Compatibility.RFC5245``, RFC 5766 TURN over UDP) is the control for the script.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop import turnpeers
from tests.interop.turnpeers import TurnServer
from tests.peers import in_ci, require_tool

pytestmark = pytest.mark.interop

SCRIPT = Path(__file__).with_name("libnice_msturn.py")
SYSTEM_PYTHON = "/usr/bin/python3"
MS_USER, MS_PASSWORD = "msturn01", "pass1234"  # 8 bytes: see the module docstring
LOCAL, PEER = turnpeers.LIBNICE_LOCAL, turnpeers.LIBNICE_PEER  # this process's own interop addresses

# libnice writes MS-TURN attributes unpadded with exact lengths, so a payload that is not a multiple of 4
# bytes checks that the Edge reads that form and answers in it (the DATA length is not rounded up), and
# its Set Active Destination carries no NONCE (signed with the allocation's key).

def require_libnice() -> None:
    require_tool(SYSTEM_PYTHON)
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import gi; gi.require_version('Nice', '0.1'); from gi.repository import Nice"],
        capture_output=True, timeout=30, check=False,
    )
    if probe.returncode != 0:
        message = "libnice GI bindings missing (Debian gir1.2-nice-0.1 python3-gi): " + probe.stderr.decode()[-200:]
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)


def run_libnice(server_host: str, port: int, user: str, password: str, *, relay: str, compat: str,
                payload_size: int, timeout: float = 5.0) -> tuple[dict[str, object], str]:
    argv = [
        SYSTEM_PYTHON, str(SCRIPT), "--server", server_host, "--port", str(port), "--user", user,
        "--password", password, "--relay", relay, "--compat", compat, "--local", LOCAL, "--peer", PEER,
        "--timeout", str(timeout), "--max-sends", "10", "--payload-size", str(payload_size),
    ]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 10, check=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"libnice script did not finish: {exc}")
    output = done.stdout + done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    results = [e for e in events if e.get("event") == "result"]
    assert results, output
    return results[-1], output


@pytest.fixture(scope="module")
def ms_edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TurnServer]:
    require_libnice()
    available, why = turnpeers.edgesim_serve_available()
    if not available:
        pytest.fail(f"edgesim serve av-edge is not available: {why}")
    server = turnpeers.start_edgesim(
        tmp_path_factory.mktemp("libnice-edgesim"), public_host=turnpeers.EDGESIM_HOST,
        relay_bind=turnpeers.EDGESIM_HOST, user=MS_USER, password=MS_PASSWORD,
    )
    try:
        yield server
    finally:
        server.stop()


def assert_relayed(server: TurnServer, result: dict[str, object], output: str) -> None:
    relays = result["relay_candidates"]
    assert isinstance(relays, list) and relays, output
    relay = relays[0]
    assert relay["host"] == server.public_host, output
    assert 50000 <= relay["port"] <= 50999, output  # the harness' --relay-range
    # The payload left the relay's address, and the peer's echo came back to libnice through the server.
    assert result["peer_saw_payload_from"] == [relay["host"], relay["port"]], output
    assert result.get("padded_receive") is None, output
    assert result["ok"] is True and result["echoes"] == 1, output


# payload sizes: UDP DATA = payload; TCP DATA = 2-byte RFC 4571 length + payload (libnice frames ICE-TCP).
@pytest.mark.parametrize(
    ("relay", "payload_size"),
    [
        pytest.param("udp", 32, id="udp-3478"),
        pytest.param("tls", 30, id="tcp-pseudo-tls"),
        pytest.param("udp", 29, id="udp-3478-unaligned"),
        pytest.param("tls", 29, id="tcp-pseudo-tls-unaligned"),
    ],
)
def test_libnice_oc2007r2_relays_through_edgesim(ms_edge: TurnServer, relay: str, payload_size: int) -> None:
    port = ms_edge.udp_port if relay == "udp" else ms_edge.tcp_port
    result, output = run_libnice(
        ms_edge.host, port, MS_USER, MS_PASSWORD, relay=relay, compat="oc2007r2", payload_size=payload_size,
    )
    assert_relayed(ms_edge, result, output)


def test_libnice_rfc5245_control_against_coturn(tmp_path: Path) -> None:
    require_libnice()
    require_tool("turnserver")
    server = turnpeers.start_coturn(tmp_path)
    try:
        result, output = run_libnice(
            server.host, server.udp_port, server.user, server.password, relay="udp", compat="rfc5245",
            payload_size=29,
        )
    finally:
        server.stop()
    assert_relayed(server, result, output)
