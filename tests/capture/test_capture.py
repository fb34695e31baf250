"""``--pcap`` and ``--keylog``: a real capture that tshark decrypts with the key log edgesim wrote.

The checks are made by peers edgesim did not write: tcpdump compiles the BPF filters, tshark reads the pcap,
and with ``-o tls.keylog_file:`` it decrypts the Access Edge's TLS 443 and dissects the SIP inside (the same
capture without the key log shows no SIP: the decryption is what makes it readable). dnspython asks the lab
DNS, and the metrics of ``serve access-edge`` must count what the SIP client and dnspython saw.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import dns.asyncquery
import dns.message
import dns.rdatatype
import pytest
import yaml

from simulator.lab.addressing import PortMap
from simulator.net.clients.sip_client import one_request
from simulator.net.transport import capture
from simulator.net.transport.tls import client_context
from tests.conftest import SHIPPED
from tests.metrics.serving import Served, promtool_ok, run_serve, sample, scrape
from tests.peers import in_ci, require_tool

PREFIX = "127.95"  # the metrics helper's block; the lab of the SIP test lives in it
UDP_HOSTS = ("127.95.91.1", "127.95.91.2")
OTHER_HOSTS = ("127.95.91.3", "127.95.91.4")


@functools.cache
def _capture_problem(tcpdump: str) -> str | None:
    """Why tcpdump cannot capture on loopback here (None: it can). A tcpdump still waiting after 1 s is capturing."""
    try:
        done = subprocess.run([tcpdump, "-i", "lo", "-c", "1", "-w", os.devnull, "host", "127.95.255.254"],
                              capture_output=True, text=True, timeout=1.0, check=False)
    except subprocess.TimeoutExpired:
        return None
    return done.stderr.strip() or f"tcpdump exited {done.returncode}"


def require_capture() -> None:
    """tcpdump installed and allowed to capture on loopback; otherwise skip (fail in CI, which runs as root)."""
    problem = _capture_problem(require_tool("tcpdump"))
    if problem is not None:
        message = f"cannot capture on loopback here: {problem}"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)


def _tshark(*args: str) -> list[str]:
    tshark = require_tool("tshark")
    done = subprocess.run([tshark, *args], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if line.strip()]


@pytest.mark.parametrize(("given", "bpf"), [
    ("127.95.0.0/16", "net 127.95.0.0/16"),
    (["127.95.1.1", "127.95.1.2", "127.95.1.1"], "host 127.95.1.1 or host 127.95.1.2"),
    ("[::1]", "host ::1"),
])
def test_bpf_filter_compiles_in_tcpdump(given: str | list[str], bpf: str) -> None:
    assert capture.bpf_filter(given) == bpf
    tcpdump = require_tool("tcpdump")
    done = subprocess.run([tcpdump, "-d", "-i", "lo", bpf], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr  # tcpdump compiles it (no capture)


@pytest.mark.parametrize("bad", ["", "sip.contoso.com", "127.95.0.0/33"])
def test_bpf_filter_refuses_what_is_not_an_address(bad: str) -> None:
    with pytest.raises(ValueError):
        capture.bpf_filter([bad] if bad else [])


async def test_capture_holds_exactly_the_named_hosts_traffic(tmp_path: Path) -> None:
    require_capture()
    pcap = tmp_path / "udp.pcap"
    loop = asyncio.get_running_loop()
    async with capture.capture(pcap, UDP_HOSTS) as running:
        sender, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=(UDP_HOSTS[0], 0))
        receiver, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=(UDP_HOSTS[1], 0))
        other, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=(OTHER_HOSTS[0], 0))
        target = receiver.get_extra_info("sockname")
        for index in range(5):
            sender.sendto(f"datagram {index}".encode(), target)
            other.sendto(b"not ours", (OTHER_HOSTS[1], 9))  # outside the filter: must not be in the file
        await asyncio.sleep(0.05)
        for transport in (sender, receiver, other):
            transport.close()
    assert running.tool in ("tcpdump", "dumpcap")
    rows = _tshark("-r", str(pcap), "-Y", "udp", "-T", "fields", "-e", "ip.src", "-e", "ip.dst", "-e", "data.text",
                   "-o", "data.show_as_text:TRUE")
    assert rows == [f"{UDP_HOSTS[0]}\t{UDP_HOSTS[1]}\tdatagram {index}" for index in range(5)]


async def test_no_capture_tool_is_a_capture_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(capture, "SEARCH_DIRS", ())
    with pytest.raises(capture.CaptureError, match="needs tcpdump or dumpcap"):
        async with capture.capture(tmp_path / "x.pcap", "127.95.0.0/16"):
            pass


def test_pcap_into_a_missing_folder_is_an_environment_error(tmp_path: Path) -> None:
    done = run_serve(["av-edge", "--listen", "127.95.91.5", "--public", "127.95.91.5", "--udp-port", "0",
                      "--tcp-port", "0", "--relay-range", "52200-52209", "--pcap", str(tmp_path / "no" / "x.pcap")])
    assert done.returncode == 3
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not exist" in lines[0] and "Traceback" not in done.stderr, done.stderr


def test_keylog_into_a_missing_folder_is_an_environment_error(tmp_path: Path) -> None:
    done = run_serve(["access-edge", "--keylog", str(tmp_path / "no" / "keys.log"), "--duration", "0.1"])
    assert done.returncode == 3
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--keylog" in lines[0] and "Traceback" not in done.stderr, done.stderr


def test_unwritable_sslkeylogfile_is_an_environment_error(tmp_path: Path) -> None:
    done = run_serve(["access-edge", "--duration", "0.1"], env={"SSLKEYLOGFILE": str(tmp_path / "no" / "k.log")})
    assert done.returncode == 3
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "SSLKEYLOGFILE" in lines[0] and "Traceback" not in done.stderr, done.stderr


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to drop to nobody")
def test_capture_without_privilege_is_an_environment_error(tmp_path: Path) -> None:
    require_tool("tcpdump")
    setpriv = require_tool("setpriv")
    shared = Path(tempfile.mkdtemp(prefix="edgesim-np-", dir="/tmp"))  # nobody must reach it: not under pytest's
    shared.chmod(0o1777)
    pcap = shared / "np.pcap"
    try:
            done = subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
                               "simulator.cli", "serve", "av-edge", "--listen", "127.95.91.6", "--public",
                               "127.95.91.6", "--udp-port", "0", "--tcp-port", "0", "--relay-range", "52210-52219",
                               "--pcap", str(pcap)],
                              capture_output=True, text=True, timeout=60, check=False, cwd=Path(__file__).parents[2])
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    if "Permission denied" in done.stderr and "python" in done.stderr.lower():
        pytest.skip("nobody cannot run this checkout's interpreter")
    assert done.returncode == 3, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot capture" in lines[0] and "Traceback" not in done.stderr, done.stderr


# ----------------------------------------------------------------- SIP inside the Access Edge's TLS


def _scenario(tmp_path: Path) -> Path:
    data = yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))
    data["lab"] = {**data.get("lab", {}), "loopback_prefix": PREFIX}
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


async def test_tshark_decodes_sip_inside_the_access_edge_tls(tmp_path: Path) -> None:
    require_capture()
    require_tool("tshark")
    promtool = require_tool("promtool")
    pcap, keylog, pki = tmp_path / "run.pcap", tmp_path / "keys.log", tmp_path / "pki"
    with Served(["access-edge", str(_scenario(tmp_path)), "--pcap", str(pcap), "--keylog", str(keylog),
                 "--pki-out", str(pki), "--metrics", f"{PREFIX}.90.9:0"]) as served:
        url = served.wait_for(r"^metrics (http://\S+/metrics)$")[1]
        ready = served.wait_for(r"^access-edge ready tls=([\d.]+):(\d+) ", timeout=60)
        edge, port = ready[1], int(ready[2])
        user = served.wait_for(r"^user (sip:(\S+)) password (\S+) from ([\d.]+)$")
        aor, source = user[1], user[4]

        response = await one_request(edge, port, client_context(pki / "ca.pem"), "sip.contoso.com", 10,
                                     random.Random(7), "REGISTER", "sip:contoso.com", f"<{aor}>", f"<{aor}>",
                                     source=source)
        query = dns.message.make_query("sip.contoso.com", dns.rdatatype.A)
        dns_port = PortMap.for_this_process(40000)(53)  # the lab's DNS port rule (53 as root, else 40053)
        answer = await dns.asyncquery.udp(query, f"{PREFIX}.0.53", port=dns_port, timeout=5, source=source)
        first_member = answer.answer[0][0].address

        exposition = await asyncio.to_thread(scrape, url)
        promtool_ok(promtool, exposition)
        assert sample(exposition, "edgesim_sip_responses_total", code=str(response.status)) == 1
        # one connection, accepted once: by the process itself, or by one of its workers (``sip-443#w<i>``, the
        # default: one per core)
        workers = [f"sip-443#w{i}" for i in range(len(os.sched_getaffinity(0)))]
        assert sum(sample(exposition, "edgesim_tls_handshakes_total", listener=name, result="accepted")
                   for name in ["sip-443", *workers]) == 1
        assert sample(exposition, "edgesim_dns_answers_total", name="sip.contoso.com",
                      pool_member=first_member) == 1
        code, stderr = served.stop()
    assert code == 0, stderr
    assert any(line.startswith("access-edge stopped: ") for line in served.lines), served.lines
    assert keylog.read_text().count("CLIENT_TRAFFIC_SECRET_0") >= 1

    fields = ["-T", "fields", "-e", "ip.src", "-e", "ip.dst", "-e", "sip.Method", "-e", "sip.Status-Code"]
    decode = ["-d", f"tls.port=={port},sip"]  # SIP on the Access Edge's TLS port (443 is HTTPS to tshark)
    rows = _tshark("-r", str(pcap), "-o", f"tls.keylog_file:{keylog}", *decode, "-Y", f"sip && tcp.port=={port}",
                   *fields)
    assert f"{source}\t{edge}\tREGISTER\t" in rows, rows
    assert f"{edge}\t{source}\t\t{response.status}" in rows, rows
    # The same capture without the key log: TLS only, no SIP — the key log is what opened it.
    assert _tshark("-r", str(pcap), *decode, "-Y", f"sip && tcp.port=={port}", *fields) == []
    assert shutil.which("tshark") is not None
