"""``serve av-edge`` without ``--workers``: one worker process per core this process may use (issue 14).

The expected count comes from the operating system (``os.sched_getaffinity``), not from edgesim: the server is
started with its CPU affinity set to one core, then to every core this test may use, and must print the matching
worker line (or, on one core, none: one process, as ``--workers 1``). A relay range of one port cannot be sliced,
so the default there is one process, not an error (an explicit ``--workers 2`` on it is one, exit 2).
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import ROOT

HOST = "127.73.1.1"  # this test's own block (127.73/16)


def _serve(cpus: set[int], *extra: str) -> tuple[list[str], int]:
    """Start ``serve av-edge`` on ``cpus``, wait for its ready line, stop it with SIGTERM: (stdout lines, exit)."""
    argv = [sys.executable, "-m", "simulator.cli", "serve", "av-edge", "--listen", HOST, "--public", HOST,
            "--udp-port", "0", "--tcp-port", "0", "--user", "u:p", *extra]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                               preexec_fn=lambda: os.sched_setaffinity(0, cpus))
    assert process.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line.rstrip("\n")) for line in process.stdout or ()],
                              daemon=True)
    reader.start()
    seen: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (seen and seen[-1].startswith("av-edge ready")):
        with contextlib.suppress(queue.Empty):
            seen.append(lines.get(timeout=1))
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    reader.join(10)  # it ends at the end of the output
    while not lines.empty():
        seen.append(lines.get())
    assert process.stderr is not None
    err = process.stderr.read()
    process.stdout.close()
    process.stderr.close()
    assert any(line.startswith("av-edge ready") for line in seen), (seen, err)
    return seen, process.returncode


def test_one_core_means_one_process() -> None:
    lines, code = _serve({min(os.sched_getaffinity(0))}, "--relay-range", "53300-53399")
    assert code == 0
    assert lines[0].startswith("av-edge ready udp="), lines
    assert not any(" workers " in line for line in lines), lines
    assert lines[-1].startswith("av-edge stopped: "), lines


def test_the_default_is_one_worker_per_core() -> None:
    cores = os.sched_getaffinity(0)
    if len(cores) < 2:
        pytest.skip("this process may use one core only: the default is one process (the test above)")
    lines, code = _serve(cores, "--relay-range", "53300-53399")
    assert code == 0
    assert lines[0].startswith(f"av-edge workers {len(cores)} relay w0=53300-"), lines
    assert lines[1].startswith("av-edge ready udp="), lines
    assert lines[-2].startswith("av-edge workers w0("), lines  # per worker, then the summed summary
    assert lines[-1].startswith("av-edge stopped: "), lines


def test_a_relay_range_of_one_port_gets_one_process_by_default() -> None:
    lines, code = _serve(os.sched_getaffinity(0), "--relay-range", "53400-53400")
    assert code == 0
    assert lines[0].startswith("av-edge ready udp="), lines
    explicit = subprocess.run([sys.executable, "-m", "simulator.cli", "serve", "av-edge", "--listen", HOST, "--public",
                               HOST, "--udp-port", "0", "--tcp-port", "0", "--relay-range", "53400-53400",
                               "--workers", "2"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert explicit.returncode == 2
    assert explicit.stderr.strip() == "edgesim: serve av-edge: relay range 53400-53400 is smaller than 2 workers"
