"""Running ``edgesim`` as a user does (a subprocess) on this helper's loopback block."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import SHIPPED

ROOT = Path(__file__).resolve().parents[2]
# This helper's address block (127.94.0.0/16): the runs here never meet another test's lab.
PREFIX = "127.94"


def scenario_text(prefix: str = PREFIX) -> str:
    """The shipped scenario as written, placed on ``prefix``, with its sign-in load phase only: the figures these
    tests check (one intervals.csv row per second of the phase, every sign-in counted twice independently) are the
    sign-in phase's; the calls phase, whose users sign in too, has its own tests (tests/calls)."""
    text = SHIPPED.read_text(encoding="utf-8")
    calls = re.search(r"\n  # Meanwhile[^\n]*\n(?:  #[^\n]*\n)*  - name: calls\n(?:    [^\n]*\n|      [^\n]*\n)*", text)
    assert calls is not None, "the shipped scenario's calls phase moved: update tests/report/helpers.py"
    text = text[:calls.start()] + "\n" + text[calls.end():]
    return text.replace("seed: 2013\n", f"seed: 2013\nlab: {{loopback_prefix: '{prefix}'}}\n", 1)


def edgesim(*args: str, cwd: Path = ROOT, columns: int | None = None, timeout: float = 120
            ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    if columns is not None:
        env["COLUMNS"] = str(columns)
    return subprocess.run([sys.executable, "-m", "simulator.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout, check=False)
