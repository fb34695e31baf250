"""``edgesim serve access-edge``: announces its listeners, serves, exits when its duration is over."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import ROOT


def test_serve_access_edge_prints_its_addresses_and_stops() -> None:
    done = subprocess.run([sys.executable, "-m", "simulator.cli", "serve", "access-edge", "--node", "edge2",
                           "--duration", "0.5"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    assert re.fullmatch(r"access-edge ready tls=127\.77\.102\.11:(40)?443 mtls=127\.77\.102\.11:5061", first), first
    assert "user sip:remote-users-1@contoso.com password " in done.stdout


def test_serve_access_edge_refuses_an_unknown_node() -> None:
    done = subprocess.run([sys.executable, "-m", "simulator.cli", "serve", "access-edge", "--node", "edge9",
                           "--duration", "0.5"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 2 and "no node 'edge9'" in done.stderr
