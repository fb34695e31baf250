"""``edgesim serve access-edge``: announces its listeners, serves, exits when its duration is over."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, loopback_prefix_for_tests, shipped_text_for_tests


def test_serve_access_edge_prints_its_addresses_and_stops(tmp_path: Path) -> None:
    scenario = tmp_path / "shipped.yaml"  # in this test process's own loopback /16: no clash with `make run`
    scenario.write_text(shipped_text_for_tests(), encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "simulator.cli", "serve", "access-edge", str(scenario), "--node",
                           "edge2", "--duration", "0.5"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    cores = len(os.sched_getaffinity(0))  # the default --workers: one per core this process may use
    if cores > 1:
        assert lines[0] == f"access-edge workers {cores}", lines[0]
        lines = lines[1:]
    first = lines[0]
    public = re.escape(f"{loopback_prefix_for_tests()}.102.11")
    assert re.fullmatch(rf"access-edge ready tls={public}:(40)?443 mtls={public}:5061", first), first
    assert "user sip:remote-users-1@contoso.com password " in done.stdout


def test_serve_access_edge_refuses_an_unknown_node() -> None:
    done = subprocess.run([sys.executable, "-m", "simulator.cli", "serve", "access-edge", "--node", "edge9",
                           "--duration", "0.5"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 2 and "no node 'edge9'" in done.stderr
