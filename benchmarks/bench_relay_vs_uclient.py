"""Allocation rate against one coturn: ``edgesim bench relay`` (one client process) vs coturn's own
``turnutils_uclient`` in its allocation-flood mode, side by side in one invocation; median of ``--runs``.

- coturn runs once for the whole invocation (``-v``: it logs one ``Local relay addr`` line per allocation it
  creates, which is how both tools' allocations are counted — by the server, not by the tools).
- ``turnutils_uclient -O -c -m M -n 0 -e PEER`` (4.6.1: ``-O`` "DOS attack mode (quick connect and exit)",
  the allocation-heavy mode of this version; 4.7+ has ``-Y alloc``): M clients each allocate and quit.
  Its rate = allocations coturn logged during the run / the run's wall time.
- ``edgesim bench relay --count N --concurrency C`` as its own process: Allocate → 401 → Allocate → Refresh(0)
  per allocation, one source address, source ports cycling through a 10,000-port slice (coturn answers 437
  to a 5-tuple reused within ~1 s). Its rate = allocations coturn logged / the tool's own measured window
  (``elapsed_s``: first allocation started → last finished; the interpreter's start-up is not in it).
  The wall-clock rate including start-up is printed too.
- Phases alternate order per run and are 3 s apart, and every phase sends from its own fresh source address
  (``NET.10+run`` for uclient, ``NET.40+run`` for bench), so coturn's lingering sessions of one phase never
  meet a later phase's 5-tuples (a reused 5-tuple gets 437 and uclient then spends seconds retrying).
  Machine noise hits both: this is a 2-core box shared with other work.

    .venv/bin/python benchmarks/bench_relay_vs_uclient.py --runs 3

The last line is JSON: ``{"uclient_allocs_per_s": …, "bench_allocs_per_s": …, "ratio": …}`` (medians).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.interop import turnpeers  # noqa: E402

NET = "127.93.250"
COTURN_HOST, PEER_HOST = f"{NET}.1", f"{NET}.3"
EDGESIM = ROOT / ".venv" / "bin" / "edgesim"


def relay_lines(server: turnpeers.TurnServer) -> int:
    return server.process.log_text().count("Local relay addr")


def settle(server: turnpeers.TurnServer, timeout: float = 3.0) -> int:
    """Wait until coturn's allocation count stops moving (its log is written asynchronously)."""
    last, end = relay_lines(server), time.monotonic() + timeout
    while time.monotonic() < end:
        time.sleep(0.2)
        now = relay_lines(server)
        if now == last:
            return now
        last = now
    return last


def run_uclient(server: turnpeers.TurnServer, clients: int, client_host: str) -> dict[str, Any]:
    tool = shutil.which("turnutils_uclient")
    assert tool is not None
    before = settle(server)
    argv = [tool, "-O", "-c", "-m", str(clients), "-n", "0", "-u", server.user, "-w", server.password,
            "-p", str(server.udp_port), "-L", client_host, "-e", PEER_HOST, "-r", "3480", server.host]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, timeout=120, check=False)
    wall = time.perf_counter() - start
    allocations = settle(server) - before
    return {"allocations": allocations, "wall_s": round(wall, 3), "rc": done.returncode,
            "allocs_per_s": round(allocations / wall, 1), "argv": " ".join(argv)}


def run_bench(server: turnpeers.TurnServer, count: int, concurrency: int, client_host: str) -> dict[str, Any]:
    before = settle(server)
    argv = [str(EDGESIM), "bench", "relay", "--target", f"{server.host}:{server.udp_port}",
            "--user", f"{server.user}:{server.password}", "--bind", client_host, "--source-ports", "30000-39999",
            "--count", str(count), "--concurrency", str(concurrency), "--duration", "60",
            "--server-pid", str(server.process.pid), "--json", "--quiet"]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, timeout=180, check=False)
    wall = time.perf_counter() - start
    allocations = settle(server) - before
    report = json.loads(done.stdout)
    return {"allocations": allocations, "own_ok": report["ok"], "elapsed_s": report["elapsed_s"],
            "wall_s": round(wall, 3), "rc": done.returncode, "failures": report["failures"],
            "allocs_per_s": round(allocations / report["elapsed_s"], 1),
            "wall_allocs_per_s": round(allocations / wall, 1), "p50_ms": report["alloc_ms"].get("p50"),
            "p99_ms": report["alloc_ms"].get("p99"), "cpu": report["cpu"], "argv": " ".join(argv)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--uclient-clients", type=int, default=200, help="uclient -m (its best regime here: "
                        "at -m 1000 one source address makes it spend most of its time on 437 retries)")
    parser.add_argument("--count", type=int, default=3000, help="bench relay --count")
    parser.add_argument("--concurrency", type=int, default=50, help="bench relay --concurrency")
    args = parser.parse_args()
    for tool in ("turnserver", "turnutils_uclient"):
        if shutil.which(tool) is None:
            print(f"bench_relay_vs_uclient: {tool} (Debian coturn) is not installed", file=sys.stderr)
            return 3
    uclient_runs: list[dict[str, Any]] = []
    bench_runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as workdir:
        server = turnpeers.start_coturn(Path(workdir), host=COTURN_HOST, relay_range=(50000, 59999), extra=["-v"])
        try:
            print(f"coturn {shutil.which('turnserver')} pid {server.process.pid} on "
                  f"{server.host}:{server.udp_port}, relay 50000-59999; host {os.cpu_count()} CPUs")
            for run in range(args.runs):
                order = ("uclient", "bench") if run % 2 == 0 else ("bench", "uclient")
                for phase in order:
                    time.sleep(3.0)
                    if phase == "uclient":
                        result = run_uclient(server, args.uclient_clients, f"{NET}.{10 + run}")
                        uclient_runs.append(result)
                    else:
                        result = run_bench(server, args.count, args.concurrency, f"{NET}.{40 + run}")
                        bench_runs.append(result)
                    shown = {k: v for k, v in result.items() if k != "argv"}
                    print(f"run {run + 1} {phase:8s} {shown}", flush=True)
        finally:
            server.stop()
    print("uclient:", uclient_runs[0]["argv"])
    print("bench:  ", bench_runs[0]["argv"])
    uclient = statistics.median(r["allocs_per_s"] for r in uclient_runs)
    bench = statistics.median(r["allocs_per_s"] for r in bench_runs)
    bench_wall = statistics.median(r["wall_allocs_per_s"] for r in bench_runs)
    print(f"median allocs/s: turnutils_uclient {uclient:.1f}, edgesim bench relay {bench:.1f} "
          f"(wall clock incl. start-up {bench_wall:.1f}); ratio {bench / uclient:.2f}x (target >= 1.5x)")
    print(json.dumps({"uclient_allocs_per_s": uclient, "bench_allocs_per_s": bench,
                      "bench_wall_allocs_per_s": bench_wall, "ratio": round(bench / uclient, 2),
                      "ratio_wall": round(bench_wall / uclient, 2), "runs": args.runs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
