"""Firewall lab mode's commands refuse bad input with one line and their exit code, before anything starts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest

from simulator.cli.scenarios import shipped_scenario
from simulator.scenario.probes import PROBES
from simulator.scenario.sides import PROBE_SIDES, ProbeSide, side_of
from simulator.spec.rules import RULES, Direction, Interface

FIREWALL_LAB = shipped_scenario("firewall-lab.yaml")
SHIPPED = shipped_scenario("lync2013-scaled-edge-dns-nat.yaml")


def _edgesim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "simulator.cli", *args], capture_output=True, text=True,
                          timeout=60, check=False)


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgesim: "), done.stderr  # no traceback
    return lines[0]


def test_every_probe_has_a_side_and_inbound_rules_start_where_the_seed_says() -> None:
    assert set(PROBE_SIDES) == {rule.probe for rule in RULES} == set(PROBES)
    for rule in RULES:
        side = side_of(rule.id)
        # port-tables.md: an inbound rule's flow starts at its source; inside for the internal interface
        if rule.direction is Direction.IN:
            expected = ProbeSide.INTERNAL if rule.interface is Interface.INTERNAL else ProbeSide.EXTERNAL
            assert side is expected, rule.id
    assert {side_of(rule_id) for rule_id in ("E3", "E4", "E5")} == {ProbeSide.EDGE}


def test_a_scenario_without_deployment_is_a_usage_error(tmp_path: Path) -> None:
    done = _edgesim("probe", str(SHIPPED), "--side", "external", "--pki", str(tmp_path), "--out",
                    str(tmp_path / "x.json"))
    assert done.returncode == 2
    assert "no 'deployment' section" in _one_line(done)


def test_an_address_this_host_does_not_have_is_an_environment_error(tmp_path: Path) -> None:
    done = _edgesim("serve", "edge", str(FIREWALL_LAB), "--node", "edge1", "--pki", str(tmp_path), "--duration", "1")
    if done.returncode == 0:
        pytest.skip("this host has the firewall lab's addresses")
    assert done.returncode == 3
    assert "10.200.5.10 (nodes.edge1.internal) is not an address of this host" in _one_line(done)


def test_an_unknown_node_is_a_usage_error(tmp_path: Path) -> None:
    done = _edgesim("serve", "edge", str(FIREWALL_LAB), "--node", "edge9", "--pki", str(tmp_path))
    assert done.returncode == 2
    assert "no pool node 'edge9'" in _one_line(done)


def test_merge_refuses_what_is_not_a_side_report(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.json"
    bogus.write_text(json.dumps({"hello": 1}))
    done = _edgesim("report", "merge", str(bogus), "--scenario", str(FIREWALL_LAB), "--out", str(tmp_path / "m"))
    assert done.returncode == 2 and "not an edgesim side report" in _one_line(done)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    done = _edgesim("report", "merge", str(broken), "--scenario", str(FIREWALL_LAB), "--out", str(tmp_path / "m"))
    assert done.returncode == 2 and "not JSON" in _one_line(done)
    done = _edgesim("report", "merge", str(tmp_path / "missing.json"), "--scenario", str(FIREWALL_LAB))
    assert done.returncode == 3 and "missing.json" in _one_line(done)


def test_merging_nothing_reports_every_rule_without_evidence(tmp_path: Path) -> None:
    observations = tmp_path / "obs.json"
    observations.write_text(json.dumps({"edgesim_observations": 1, "side": "external", "node": None,
                                        "arrivals": []}))
    done = _edgesim("report", "merge", str(observations), "--scenario", str(FIREWALL_LAB), "--out",
                    str(tmp_path / "m"), "--junit", str(tmp_path / "junit.xml"))
    assert done.returncode == 1  # nothing passed: the shipped expectations do not hold
    # the same outputs as a run: the page and one JUnit testcase per rule, each of them failing here
    assert (tmp_path / "m" / "report.html").read_text().lstrip().lower().startswith("<!doctype html")
    suite = ElementTree.parse(tmp_path / "junit.xml").getroot()
    cases = suite.findall(".//testcase")
    assert len(cases) == 38 and all(case.find("failure") is not None for case in cases)
    report = json.loads((tmp_path / "m" / "report.json").read_text())
    verdicts = {rule["id"]: (rule["verdict"], rule["reason"], rule["blocked_by"]) for rule in report["rules"]}
    assert len(verdicts) == 38
    # the roots fail for want of evidence, never pass; what depends on them is blocked
    assert verdicts["I3"] == ("fail", "no-evidence", None)
    assert verdicts["E6"] == ("blocked", None, "I3")


def test_a_missing_pki_folder_is_an_environment_error(tmp_path: Path) -> None:
    done = _edgesim("probe", str(FIREWALL_LAB), "--side", "edge", "--node", "edge1", "--pki", str(tmp_path / "none"),
                    "--out", str(tmp_path / "x.json"))
    assert done.returncode == 3
    line = _one_line(done)
    assert "is not an address of this host" in line or "missing (write the lab PKI" in line
