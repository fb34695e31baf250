"""``edgesim bench relay`` against real servers: coturn (UDP, TCP, REST secret) and ``edgesim serve av-edge``
(RFC 8656 and MS-TURN, UDP and TCP), exhaustion of a 200-port range, threshold exit codes.

Expected values come from the servers' configuration, not from the client: a relay range of
``--min-port``/``--max-port`` (coturn) or ``--relay-range`` (edgesim) of 200 ports holds exactly 200
allocations, and RFC 8656 §7.2 says the next Allocate gets 508 (Insufficient Capacity).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from simulator.cli import main
from tests.bench.servers import PASSWORD, RANGE_SIZE, REALM, USER, coturn, edgesim, host, relay_range_of
from tests.interop.turnpeers import TurnServer

_SLICES = itertools.count()  # one source-port slice per bench run in this module (servers are shared)


def bench(tmp_path: Path, server: TurnServer, *extra: str, transport: str = "udp", dialect: str = "rfc8656",
          client: int = 200) -> tuple[int, dict[str, Any]]:
    port = server.udp_port if transport == "udp" else server.tcp_port
    runs = len(list(tmp_path.iterdir()))
    out = tmp_path / f"run-{dialect}-{transport}-{runs}"
    first = 30000 + 1000 * (next(_SLICES) % 25)
    low, high = relay_range_of(server)
    code = main(["bench", "relay", "--target", f"{server.host}:{port}", "--user", f"{USER}:{PASSWORD}",
                 "--realm", REALM, "--dialect", dialect, "--transport", transport, "--bind", host(client),
                 "--relay-range", f"{low}-{high}", "--server-pid", str(server.process.pid), "--out", str(out),
                 # a cyclic source-port slice: the OS's random ephemeral port can repeat a 5-tuple whose allocation
                 # coturn deleted under ~1 s ago, which coturn answers 437 (allocation mismatch)
                 # — and each run its own slice, so a run never starts on the last run's 5-tuples
                 "--source-ports", f"{first}-{first + 999}", "--quiet", "--json", *extra])
    return code, json.loads((out / "report.json").read_text())


def assert_exhausted_at_range(report: dict[str, Any], attempts: int) -> None:
    """Every port of the range handed out once; the next Allocate answered 508, reported as exhaustion."""
    assert report["ok"] == RANGE_SIZE
    assert report["failures"] == {"exhaustion": attempts - RANGE_SIZE}
    assert report["answers"]["508"] == attempts - RANGE_SIZE
    exhaustion = report["exhaustion"]
    assert exhaustion["seen"] and exhaustion["held_at_first_508"] == RANGE_SIZE
    assert exhaustion["peak_held"] == RANGE_SIZE
    assert exhaustion["time_to_exhaustion_s"] is not None and exhaustion["time_to_exhaustion_s"] > 0
    ports = report["ports"]
    assert ports["distinct"] == RANGE_SIZE == ports["range_size"] and ports["outside_range"] == 0
    assert ports["even"] == ports["odd"] == RANGE_SIZE // 2  # every port of an even-started range, once
    assert report["released"] == RANGE_SIZE and report["release_failed"] == 0
    assert report["cpu"]["limit"].startswith("relay range")


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_coturn_churn(tmp_path: Path, transport: str) -> None:
    with coturn(tmp_path, 1) as server:
        code, report = bench(tmp_path, server, "--count", "120", "--concurrency", "16",
                             "--threshold", "alloc_ok_ratio>=1", transport=transport)
    assert code == 0, report["failures"]
    assert (report["started"], report["ok"], report["released"]) == (120, 120, 120)
    assert report["answers"] == {"200": 240, "401": 120}  # 401 challenge, Allocate 200, Refresh(0) 200 each
    low, high = relay_range_of(server)
    assert all(low <= int(port) <= high for port in report["ports"]["histogram"])
    assert report["alloc_ms"]["count"] == 120 and report["alloc_ms"]["p50"] <= report["alloc_ms"]["p99"]
    assert report["cpu"]["server_cpu_s"] >= 0 and report["cpu"]["client_cpu_s"] > 0


def test_coturn_exhaustion_at_range_size(tmp_path: Path) -> None:
    with coturn(tmp_path, 3) as server:
        code, report = bench(tmp_path, server, "--count", "240", "--concurrency", "240", "--rate", "600",
                             "--hold", "1.5")
    assert code == 0
    assert_exhausted_at_range(report, 240)


def test_coturn_rest_secret(tmp_path: Path) -> None:
    """coturn --use-auth-secret: username 'expiry:user', password base64(HMAC-SHA1(secret, username))."""
    with coturn(tmp_path, 5, secret="b3nch-secret") as server:
        port = server.udp_port
        out = tmp_path / "rest"
        code = main(["bench", "relay", "--target", f"{server.host}:{port}", "--user", "carol:x", "--secret",
                     "b3nch-secret", "--bind", host(201), "--count", "30", "--concurrency", "5", "--out", str(out),
                     "--source-ports", "41000-41999", "--quiet", "--json"])  # cyclic: no recent 5-tuple (437)
        assert code == 0
        assert json.loads((out / "report.json").read_text())["ok"] == 30
        wrong = tmp_path / "wrong"
        main(["bench", "relay", "--target", f"{server.host}:{port}", "--user", "carol:x", "--secret", "not-it",
              "--bind", host(201), "--count", "5", "--concurrency", "5", "--out", str(wrong), "--quiet", "--json",
              "--source-ports", "42000-42999"])
    report = json.loads((wrong / "report.json").read_text())
    assert report["ok"] == 0 and report["failures"] == {"auth": 5}  # 401 to the authenticated Allocate


@pytest.fixture(scope="module")
def av_edge(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with edgesim(tmp_path_factory.mktemp("av-edge"), 11) as server:
        yield server


@pytest.mark.parametrize(("dialect", "transport"),
                         [("rfc8656", "udp"), ("rfc8656", "tcp"), ("ms-turn", "udp"), ("ms-turn", "tcp")])
def test_edgesim_av_edge_exhaustion_at_range_size(tmp_path: Path, av_edge: TurnServer, dialect: str,
                                                  transport: str) -> None:
    code, report = bench(tmp_path, av_edge, "--count", "230", "--concurrency", "230", "--rate", "700",
                         "--hold", "1.0", dialect=dialect, transport=transport)
    assert code == 0
    assert_exhausted_at_range(report, 230)
    assert report["answers"]["401"] == 230  # every flow was challenged once


def test_threshold_decides_exit_code(tmp_path: Path, av_edge: TurnServer) -> None:
    code, report = bench(tmp_path, av_edge, "--count", "20", "--concurrency", "4",
                         "--threshold", "alloc_ok_ratio>0.999", "--threshold", "alloc_ms:p99<0.001")
    assert code == 1
    assert [t["ok"] for t in report["thresholds"]] == [True, False]
    code, report = bench(tmp_path, av_edge, "--count", "20", "--concurrency", "4",
                         "--threshold", "alloc_ok_ratio>0.999", "--threshold", "alloc_ms:p99<5000")
    assert code == 0 and all(t["ok"] for t in report["thresholds"])


def test_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "relay", "--target", "127.93.0.1:3478", "--user", "a:b", "--threshold", "nonsense"]) == 2
    assert main(["bench", "relay", "--target", "127.93.0.1:x", "--user", "a:b"]) == 2
    assert main(["bench", "relay", "--target", "127.93.0.1", "--user", "a:b", "--executor", "ray://x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("edgesim: ") for line in err)


def test_live_lines_plain_when_piped(av_edge: TurnServer, capsys: pytest.CaptureFixture[str]) -> None:
    """Once a second: rate reached, in flight, ok, failures by reason, p50/p99 (plain key=value when piped)."""
    code = main(["bench", "relay", "--target", f"{av_edge.host}:{av_edge.udp_port}", "--user", f"{USER}:{PASSWORD}",
                 "--bind", host(202), "--rate", "40", "--duration", "2.5", "--concurrency", "10", "--json"])
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("t=")]
    assert code == 0 and len(lines) >= 2
    for key in ("rate=", "in_flight=", "ok=", "failed=", "failures=", "p50_ms=", "p99_ms="):
        assert all(key in line for line in lines)
    first_rate = float(lines[0].split("rate=")[1].split("/s")[0])
    assert 20 <= first_rate <= 60  # the achieved rate follows the 40/s target
    assert json.loads(captured.out)["ok"] == 100  # 40/s for 2.5 s
