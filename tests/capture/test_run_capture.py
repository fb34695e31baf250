"""`edgesim run --pcap --keylog`: the embedded lab's own capture, and its TLS opened by the key log.

What must be seen comes from the protocols, not from edgesim: a Lync client's first SIP request to the Access
Edge (443, TLS) is a REGISTER (research-lync-edge §1.3); tshark decodes it only with the run's key log.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.capture.test_capture import require_capture
from tests.peers import require_tool


def _tshark(pcap: Path, *options: str) -> str:
    done = subprocess.run([require_tool("tshark"), "-r", str(pcap), "-d", "tcp.port==443,tls", "-d",
                           "tls.port==443,sip", *options, "-Y", "sip.Method == \"REGISTER\"", "-T", "fields", "-e",
                           "ip.dst", "-e", "sip.Method"], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_runs_capture_decodes_sip_inside_the_access_edges_tls_with_its_key_log(tmp_path: Path) -> None:
    require_capture()
    pcap, keys = tmp_path / "run.pcap", tmp_path / "keys.log"
    done = subprocess.run([sys.executable, "-m", "simulator.cli", "run", "--rules", "E6", "--no-load", "--no-progress",
                           "--lab-prefix", "127.97", "--pcap", str(pcap), "--keylog", str(keys), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    labels = {line.split(" ", 1)[0] for line in keys.read_text().splitlines() if line.strip() and line[0] != "#"}
    assert labels and labels <= {"CLIENT_RANDOM", "CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_HANDSHAKE_TRAFFIC_SECRET",
                                 "CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0", "EXPORTER_SECRET"}, labels
    decoded = _tshark(pcap, "-o", f"tls.keylog_file:{keys}")
    registers = [line.split("\t") for line in decoded.splitlines() if line.strip()]
    assert registers, "no REGISTER decoded from the capture"
    assert all(dst.startswith("127.97.") for dst, _ in registers)  # the run's own /16, nothing else captured
    assert _tshark(pcap).strip() == ""  # without the key log the same capture shows no SIP
