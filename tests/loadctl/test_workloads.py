"""Issue 12: the `im` workload — each signed-in user sends IMs through the Access Edge (INVITE m=message, MESSAGE,
BYE: the Lync IM dialog), counted and timed apart from the sign-ins, with thresholds of their own.

Expected counts come from the scenario (users × messages), never from the code under test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT
from tests.report.helpers import scenario_text

SIGN_IN = "  - {name: sign-in, clients: remote-users, rate: 10, duration: 2}\n"
USERS, MESSAGES = 4, 3


def _scenario(tmp_path: Path, phase: str) -> Path:
    text = scenario_text("127.78")
    assert SIGN_IN in text
    path = tmp_path / "im.yaml"
    path.write_text(text.replace(SIGN_IN, phase), encoding="utf-8")
    return path


def _edgesim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "simulator.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, check=False)


def test_every_user_sends_its_ims_and_they_are_measured(tmp_path: Path) -> None:
    scenario = _scenario(tmp_path, "  - {name: im, clients: remote-users, rate: 10, duration: 3, workload: im, "
                                   f"messages: {MESSAGES}, message_interval: 0.3}}\n")
    out = tmp_path / "run"
    done = _edgesim("run", str(scenario), "--rules", "E1", "--no-progress", "--loop", "asyncio", "--out", str(out),
                    "--threshold", "im_ok_ratio>=1", "--threshold", f"ims>={USERS * MESSAGES}",
                    "--threshold", "im_ms:p99<5000")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    load = json.loads((out / "report.json").read_text())["load"]
    im = load["control"]["im"]
    assert im["sent"] == im["ok"] == USERS * MESSAGES and im["failed"] == 0
    assert im["im_ms"]["count"] == USERS * MESSAGES and 0 < im["im_ms"]["p50_ms"] <= im["im_ms"]["p99_ms"]
    assert load["signed_in"] == USERS  # the sign-ins are still counted as such
    # a threshold the IMs cannot meet fails the run (exit 1), as in k6
    failing = _edgesim("run", str(scenario), "--rules", "E1", "--no-progress", "--loop", "asyncio", "--out",
                       str(tmp_path / "run2"), "--threshold", "im_ms:p50<0.001")
    assert failing.returncode == 1, failing.stderr[-2000:]


def test_the_relay_workload_is_refused_with_one_line(tmp_path: Path) -> None:
    scenario = _scenario(tmp_path, "  - {name: r, clients: remote-users, rate: 10, duration: 2, workload: relay}\n")
    done = _edgesim("validate", str(scenario))
    assert done.returncode == 2 and "workload 'relay' is not implemented yet" in done.stderr
    assert "Traceback" not in done.stderr
