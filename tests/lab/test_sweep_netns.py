"""`edgesim sweep`: the one-rule-group-at-a-time sweep a user runs against a ruleset, in the namespace lab.

A short sweep (two groups) of a *user's* ruleset: the emitted one with E9's accept line deleted by hand, as if
the firewall's owner had forgotten it. The baseline must show exactly that hole (E9 fails: never-arrived), and
each swept group must be caught (its rules fail) — what port-tables.md says each flow needs, not what the code
says. The full 28-group sweep is the command users run; its figures are in the README.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from simulator.lab.firewall import firewall_ruleset
from simulator.spec.loader import load_scenario
from tests.lab.test_firewall_netns import FIREWALL_LAB
from tests.peers import in_ci, require_tool

pytestmark = pytest.mark.interop


def _edgesim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "simulator.cli", *args], capture_output=True, text=True,
                          timeout=300, check=False)


def test_a_sweep_of_a_users_ruleset_shows_its_hole_and_catches_each_group(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        if in_ci():
            pytest.fail("network namespaces need root")
        pytest.skip("network namespaces need root")
    for tool in ("ip", "nft", "conntrack"):
        require_tool(tool)
    emitted = firewall_ruleset(load_scenario(FIREWALL_LAB), "nftables")
    mine = "\n".join(line for line in emitted.splitlines() if 'comment "E9 ' not in line) + "\n"
    assert mine != emitted
    ruleset = tmp_path / "my-firewall.nft"
    ruleset.write_text(mine, encoding="utf-8")
    out = tmp_path / "sweep"
    done = _edgesim("sweep", "--scenario", str(FIREWALL_LAB), "--ruleset", str(ruleset), "--only", "E5", "P1",
                    "--out", str(out))
    assert done.returncode == 1, done.stdout + done.stderr  # the baseline is not clean: E9 is missing
    result = json.loads((out / "sweep.json").read_text())
    assert result["baseline"]["failed"] == {"E9": "never-arrived"}, result["baseline"]
    assert result["baseline"]["blocked"] == {}
    steps = {tuple(step["left_out"]): step for step in result["steps"]}
    assert set(steps) == {("E5",), ("E7", "P1")}  # P1 shares its packets with E7: swept together
    for group, step in steps.items():
        assert step["caught"], step
        assert all(step["failed"][rule_id] == "never-arrived" for rule_id in group), step
        assert step["not_in_ruleset"] == []
    # DNS over UDP closed: what needs a partner lookup is blocked behind it (README's mutation 6), E9 still fails
    assert steps[("E5",)]["collateral"] == {"E9": "never-arrived"}
    assert "E8" in steps[("E5",)]["blocked"]
    assert "2/2 groups caught" in done.stdout and "[ 2/2]" in done.stdout


def test_sweep_refuses_bad_input_with_one_line(tmp_path: Path) -> None:
    shipped = Path(__file__).resolve().parents[2] / "scenarios" / "lync2013-scaled-edge-dns-nat.yaml"
    cases = [
        (["--scenario", str(shipped)], 2, "deployment"),
        (["--scenario", str(FIREWALL_LAB), "--only", "Z9"], 2, "unknown rule ids Z9"),
        (["--scenario", str(FIREWALL_LAB), "--timeout", "0"], 2, "--timeout"),
        (["--scenario", str(FIREWALL_LAB), "--ruleset", str(tmp_path / "absent.nft")], 3, "absent.nft"),
    ]
    for argv, code, words in cases:
        done = _edgesim("sweep", *argv, "--out", str(tmp_path / "out"))
        assert done.returncode == code, (argv, done.stderr)
        assert words in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "Traceback" not in done.stderr
