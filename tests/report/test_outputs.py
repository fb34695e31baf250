"""The files of one real run: report.json (versioned, stable types), intervals.csv and sessions.csv (SIPp-style),
JUnit XML, and the terminal at 80 columns. Expected values come from the scenario file (4 remote users, a 2 s
phase), from SIPp's statistics definitions (cumulative = running sum of the periods) and from the JUnit XML
shape CI tools read, never from the code under test."""

from __future__ import annotations

import csv
import itertools
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import yaml

from simulator.report.text import has_repr
from tests.report.conftest import Run
from tests.report.helpers import edgesim

SCENARIO = yaml.safe_load((Path(__file__).resolve().parents[2] / "scenarios" /
                           "lync2013-scaled-edge-dns-nat.yaml").read_text(encoding="utf-8"))
USERS = next(c["count"] for c in SCENARIO["clients"] if c["role"] == "remote-user")
PHASE_S = SCENARIO["load"][0]["duration"]
REPRS = ("Address(", "Error()", "Error(", " object at 0x")


def test_the_run_folder_holds_every_file(full_run: Run) -> None:
    assert sorted(p.name for p in full_run.folder.iterdir()) == ["intervals.csv", "report.html", "report.json",
                                                                  "sessions.csv"]
    assert f"report: {full_run.folder}/" in " ".join(full_run.result.stdout.split())


def test_report_json_has_a_schema_version_and_one_type_per_field(full_run: Run) -> None:
    doc = json.loads((full_run.folder / "report.json").read_text())
    assert doc["schema_version"] == 1
    assert len(doc["rules"]) == 38
    for rule in doc["rules"]:
        assert isinstance(rule["port_used"], str) and re.fullmatch(r"\d+(-\d+)?", rule["port_used"]), rule
        assert isinstance(rule["ports"], str)
        for key in ("reason", "blocked_by"):
            assert rule[key] is None or isinstance(rule[key], str)
        assert isinstance(rule["elapsed_ms"], float | int) and isinstance(rule["matches_expectation"], bool)
        for node in rule["nodes"]:
            assert node["reason"] is None or isinstance(node["reason"], str)
    ranges = [rule for rule in doc["rules"] if "-" in rule["ports"]]
    assert ranges and all(rule["port_used"] == rule["ports"] for rule in ranges)  # relay ports are never mapped
    assert isinstance(doc["intervals"], list) and doc["relay_ports"] == SCENARIO["edge_pool"]["relay_ports"]


def test_intervals_csv_has_one_row_per_interval_with_period_and_cumulative_columns(full_run: Run) -> None:
    with (full_run.folder / "intervals.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    load = json.loads((full_run.folder / "report.json").read_text())["load"]
    # one-second intervals over the phase: PHASE_S full ones, maybe one short closing interval
    assert PHASE_S <= len(rows) <= PHASE_S + 1, rows
    assert [int(row["interval"]) for row in rows] == list(range(1, len(rows) + 1))
    assert float(rows[0]["start_s"]) == 0.0
    for before, after in itertools.pairwise(rows):
        assert after["start_s"] == before["end_s"]  # contiguous: every moment in exactly one row
    for row in rows[:PHASE_S]:
        assert abs(float(row["end_s"]) - float(row["start_s"]) - 1.0) < 0.25, row
    assert abs(float(rows[-1]["end_s"]) - load["duration_s"]) < 0.3
    stems = [column.removesuffix("_period") for column in rows[0] if column.endswith("_period")]
    assert {"sign_in_attempts", "signed_in", "auth_failed", "sign_in_rate"} <= set(stems)
    for stem in ("sign_in_attempts", "signed_in", "auth_failed"):  # SIPp: (C) is the running sum of (P)
        running = 0
        for row in rows:
            running += int(row[f"{stem}_period"])
            assert int(row[f"{stem}_cumulative"]) == running, (stem, row)
    # the Front End's 200 OKs to REGISTER are the users the load says signed in (two independent counts)
    assert int(rows[-1]["signed_in_cumulative"]) == load["signed_in"] == USERS
    assert int(rows[-1]["sign_in_attempts_cumulative"]) == 2 * USERS  # REGISTER, 401, REGISTER, 200 per user
    nodes = [node["name"] for node in SCENARIO["edge_pool"]["nodes"]]
    assert sum(int(rows[-2 if len(rows) > PHASE_S else -1][f"connections_{n}"]) for n in nodes) == USERS


def test_sessions_csv_has_one_row_per_user(full_run: Run) -> None:
    with (full_run.folder / "sessions.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == USERS
    nodes = {node["name"] for node in SCENARIO["edge_pool"]["nodes"]}
    assert all(row["home"] in nodes and row["lost"] == "false" and row["error"] == "" for row in rows)
    assert list(rows[0]) == ["user", "population", "policy", "home", "rehomed_to", "failover_ms", "lost", "error"]


def test_junit_parses_with_one_testcase_per_rule(full_run: Run) -> None:
    root = ET.parse(full_run.junit).getroot()
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert len(suites) == 1
    suite = suites[0]
    cases = suite.findall("testcase")
    rule_cases = [case for case in cases if not case.get("classname", "").endswith(".load")]
    assert len(rule_cases) == 38
    assert int(suite.get("tests", "-1")) == len(cases) == int(root.get("tests", "-1"))
    assert suite.get("failures") == "0" and suite.get("errors") == "0"
    assert not suite.findall("testcase/failure")
    for case in cases:
        assert case.get("name") and case.get("classname") and float(case.get("time", "x")) >= 0
    assert {case.get("name", "").split()[0] for case in rule_cases} >= {"E1", "I11", "X3"}
    # only the elements and attributes of Jenkins' junit-10.xsd (the schema pytest checks its own JUnit XML
    # against), with its required attributes present: what a strict CI reader accepts
    allowed = {"testsuites": {"name", "time", "tests", "failures", "errors"},
               "testsuite": {"name", "tests", "failures", "errors", "group", "time", "skipped", "timestamp",
                             "hostname", "id", "package", "file", "log", "url", "version"},
               "properties": set(), "property": {"name", "value"},
               "testcase": {"name", "time", "classname", "group"},
               "failure": {"message", "type"}, "errors": {"message", "type"}, "skipped": {"message", "type"},
               "system-out": set(), "system-err": set()}
    required = {"testsuite": {"name", "tests", "failures", "errors"}, "property": {"name", "value"},
                "testcase": {"name"}}
    for element in root.iter():
        assert element.tag in allowed, element.tag
        assert required.get(element.tag, set()) <= set(element.attrib), (element.tag, element.attrib)
        assert set(element.attrib) <= allowed[element.tag], (element.tag, element.attrib)


def test_a_differing_rule_is_a_junit_failure_with_reason_and_detail(full_run: Run, tmp_path: Path) -> None:
    doc = json.loads((full_run.folder / "report.json").read_text())
    rule = next(r for r in doc["rules"] if r["id"] == "E6")
    rule.update(verdict="fail", reason="timeout", detail="edge1: no answer from 127.94.101.11:443 in 3 s",
                matches_expectation=False)
    saved = tmp_path / "report.json"
    saved.write_text(json.dumps(doc))
    out = tmp_path / "junit.xml"
    result = edgesim("report", str(saved), "--junit", str(out), columns=80)
    assert result.returncode == 1, result.stderr  # the saved run's verdicts differ: exit 1
    failures = ET.parse(out).getroot().findall("testsuite/testcase/failure")
    assert len(failures) == 1
    assert failures[0].get("message") == "expected pass, got fail:timeout"
    assert failures[0].text == "edge1: no answer from 127.94.101.11:443 in 3 s"
    assert ET.parse(out).getroot().find("testsuite").get("failures") == "1"  # type: ignore[union-attr]
    first = next(line for line in result.stdout.splitlines() if re.match(r"^\s*[EIFPX]\d+\s", line))
    assert first.split()[0] == "E6"  # failures first


def test_the_terminal_at_80_columns(full_run: Run) -> None:
    lines = full_run.result.stdout.splitlines()
    too_long = [line for line in lines if len(line.rstrip()) > 80]
    assert not too_long, too_long
    assert lines[-1].startswith("38 rules: 38 pass, 0 fail, 0 blocked, 0 unimplemented — all verdicts as expected")
    assert not full_run.result.stderr.strip()


def test_the_terminal_at_120_columns_keeps_one_line_per_rule(full_run: Run) -> None:
    result = edgesim("report", str(full_run.folder / "report.json"), columns=120)
    assert result.returncode == 0
    rows = [line for line in result.stdout.splitlines() if re.match(r"^\s*[EIFPX]\d+\s", line)]
    assert len(rows) == 38 and all(len(line.rstrip()) <= 120 for line in result.stdout.splitlines())


def test_no_python_repr_in_any_output(full_run: Run) -> None:
    texts = {"stdout": full_run.result.stdout, "stderr": full_run.result.stderr,
             "junit": full_run.junit.read_text()}
    texts |= {path.name: path.read_text() for path in full_run.folder.iterdir()}
    for name, text in texts.items():
        for pattern in REPRS:
            assert pattern not in text, (name, pattern, text[max(0, text.find(pattern) - 200):text.find(pattern) + 80])
        assert not has_repr(text), name


def test_details_are_behind_a_flag_and_wrap_at_word_boundaries(full_run: Run) -> None:
    result = edgesim("report", str(full_run.folder / "report.json"), "--details", columns=80)
    assert result.returncode == 0
    assert "E11 pass: edge1:" in result.stdout
    assert all(len(line.rstrip()) <= 80 for line in result.stdout.splitlines())
    addresses = re.findall(r"127\.94\.\d+\.\d+:\d+", json.dumps(json.loads(
        (full_run.folder / "report.json").read_text())["rules"]))
    shown = " ".join(result.stdout.split())
    # an address is never split across lines: every one in the report appears whole in the output
    assert addresses and all(address in result.stdout for address in set(addresses)), shown[:500]
    assert "E11 pass" not in full_run.result.stdout  # without --details only differing rules show details


def test_a_report_from_before_schema_versions_still_renders(full_run: Run, tmp_path: Path) -> None:
    doc = json.loads((full_run.folder / "report.json").read_text())
    for key in ("schema_version", "intervals", "nodes", "relay_ports"):
        del doc[key]
    doc["rules"][0]["port_used"] = int(doc["rules"][0]["port_used"])  # what edgesim wrote before
    old = tmp_path / "old.json"
    old.write_text(json.dumps(doc))
    result = edgesim("report", str(old), "--html", str(tmp_path / "old.html"), columns=80)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "old.html").read_text().count("<svg") == 3  # no intervals: the load plot says so instead
    doc["rules"][0].pop("matches_expectation")
    old.write_text(json.dumps(doc))
    result = edgesim("report", str(old), columns=80)
    assert result.returncode == 2 and "not an edgesim report of a known schema" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
