"""The CLI contract: 0 verdicts match, 1 they do not, 2 usage or scenario error, 3 environment error — each error
one line on stderr, no traceback, found before the lab starts where it can be."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.report.helpers import PREFIX, edgesim, scenario_text

QUICK = ("--rules", "I8", "--no-load", "--no-progress", "--loop", "asyncio")  # one rule, ~1 s of lab


def _one_line_error(result: object, code: int, *needles: str) -> str:
    assert isinstance(result, subprocess.CompletedProcess)
    assert result.returncode == code, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    stderr: str = result.stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr and lines[0].startswith("edgesim"), stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture
def scenario(tmp_path: Path) -> Path:
    path = tmp_path / "shipped.yaml"
    path.write_text(scenario_text(), encoding="utf-8")
    return path


def _line_of(text: str, fragment: str, after: str | None = None) -> int:
    start = text.index(after) if after else 0
    return text[: text.index(fragment, start)].count("\n") + 1


# ------------------------------------------------------------------------------------------ help


@pytest.mark.parametrize("command", [(), ("run",), ("report", "show")])
def test_help_lists_the_exit_codes(command: tuple[str, ...]) -> None:
    result = edgesim(*command, "--help", columns=100)
    assert result.returncode == 0
    text = result.stdout
    assert "exit codes:" in text
    for code, words in (("0", "match"), ("1", "do not"), ("2", "usage"), ("3", "environment")):
        assert any(line.strip().startswith(code) and words in line for line in text.splitlines()), (code, text)


# ------------------------------------------------------------------------------------------ usage: exit 2


@pytest.mark.parametrize(("value", "shown"), [("0", "got 0"), ("-1", "got -1"), ("nan", "got nan")])
def test_a_timeout_that_is_not_above_zero_is_a_usage_error(scenario: Path, value: str, shown: str) -> None:
    result = edgesim("run", str(scenario), f"--timeout={value}", "--out", str(scenario.parent / "out"))
    _one_line_error(result, 2, "--timeout must be above 0", shown)
    assert not (scenario.parent / "out" / "report.json").exists()


def test_a_timeout_that_is_not_a_number_is_a_usage_error(scenario: Path) -> None:
    _one_line_error(edgesim("run", str(scenario), "--timeout", "soon"), 2, "--timeout", "soon")


def test_an_unknown_option_and_an_unknown_rule(scenario: Path) -> None:
    _one_line_error(edgesim("run", str(scenario), "--colour"), 2, "--colour")
    _one_line_error(edgesim("run", str(scenario), "--rules", "E99"), 2, "unknown rule ids: E99")


def test_a_missing_scenario_file(tmp_path: Path) -> None:
    _one_line_error(edgesim("run", str(tmp_path / "nope.yaml")), 2, "nope.yaml", "cannot read")


def test_a_bad_lab_prefix(scenario: Path) -> None:
    _one_line_error(edgesim("run", str(scenario), "--lab-prefix", "10.1"), 2, "--lab-prefix 10.1")


def test_an_out_that_is_a_file(scenario: Path) -> None:
    _one_line_error(edgesim("run", str(scenario), "--out", str(scenario)), 2, "is a file")


def test_a_folder_that_holds_another_run_is_refused_without_force(scenario: Path) -> None:
    out = scenario.parent / "run"
    first = edgesim("run", str(scenario), "--out", str(out), *QUICK)
    assert first.returncode == 0, first.stderr
    before = (out / "report.json").read_text()
    _one_line_error(edgesim("run", str(scenario), "--out", str(out), *QUICK), 2, "already holds a run", "--force")
    assert (out / "report.json").read_text() == before  # untouched
    forced = edgesim("run", str(scenario), "--out", str(out), "--force", *QUICK)
    assert forced.returncode == 0, forced.stderr
    assert json.loads((out / "report.json").read_text())["started"] != json.loads(before)["started"]


def test_a_folder_with_other_files_is_fine(scenario: Path) -> None:
    # the scenario file's own folder: it holds a scenario, not a run
    result = edgesim("run", str(scenario), "--out", str(scenario.parent), *QUICK)
    assert result.returncode == 0, result.stderr
    assert (scenario.parent / "report.json").exists() and scenario.exists()


def test_report_of_a_file_that_is_not_a_report(tmp_path: Path) -> None:
    _one_line_error(edgesim("report", str(tmp_path / "none.json")), 2, "none.json", "no such file")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    _one_line_error(edgesim("report", str(bad)), 2, "not JSON")
    bad.write_text('{"hello": 1}')
    _one_line_error(edgesim("report", str(bad), "--html", str(tmp_path / "x.html")), 2, "not an edgesim report")


# ------------------------------------------------------------------------------------------ scenario validation


def _variant(tmp_path: Path, old: str, new: str) -> tuple[Path, str]:
    text = scenario_text()
    assert old in text, old
    text = text.replace(old, new, 1)
    path = tmp_path / "variant.yaml"
    path.write_text(text, encoding="utf-8")
    return path, text


def test_duplicate_client_names_point_at_the_second_name(tmp_path: Path) -> None:
    path, text = _variant(tmp_path, "  - name: director\n", "  - name: frontend\n")
    second = text.index("  - name: frontend", text.index("  - name: frontend") + 1)
    line = text[:second].count("\n") + 1
    for command in ("validate", "run"):
        _one_line_error(edgesim(command, str(path)), 2, f"{path}:{line}:", "clients[1].name",
                        "duplicate client names: frontend")


def test_a_load_phase_on_a_population_that_cannot_sign_in(tmp_path: Path) -> None:
    path, text = _variant(tmp_path, "clients: remote-users, rate: 10", "clients: fabrikam, rate: 10")
    line = _line_of(text, "clients: fabrikam")
    _one_line_error(edgesim("validate", str(path)), 2, f"{path}:{line}:", "load[0].clients",
                    "'fabrikam' is a federated-partner population", "remote-user")


def test_a_load_phase_on_a_population_that_does_not_exist(tmp_path: Path) -> None:
    path, text = _variant(tmp_path, "clients: remote-users, rate: 10", "clients: nobody, rate: 10")
    _one_line_error(edgesim("validate", str(path)), 2, f"{path}:{_line_of(text, 'clients: nobody')}:",
                    "load[0].clients", "no client named 'nobody'")


def test_a_relay_range_over_the_listeners(tmp_path: Path) -> None:
    path, text = _variant(tmp_path, "relay_ports: {first: 50000, last: 59999}",
                          "relay_ports: {first: 5000, last: 6000}")
    line = _line_of(text, "relay_ports:")
    # port-tables.md: the Access Edge listens on 5061 (E7, P1) and 5269 (E1, X1) at its external interface
    _one_line_error(edgesim("run", str(path)), 2, f"{path}:{line}:", "edge_pool.relay_ports", "5061", "5269")


@pytest.mark.parametrize(("relay", "field"), [("{first: 50000, last: 70000}", "relay_ports.last"),
                                              ("{first: 0, last: 100}", "relay_ports.first")])
def test_a_relay_range_outside_the_port_numbers(tmp_path: Path, relay: str, field: str) -> None:
    path, text = _variant(tmp_path, "relay_ports: {first: 50000, last: 59999}", f"relay_ports: {relay}")
    result = edgesim("validate", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{path}:{_line_of(text, 'relay_ports:')}:" in result.stderr and field in result.stderr, result.stderr


def test_an_event_on_a_node_the_pool_does_not_have(tmp_path: Path) -> None:
    path, text = _variant(tmp_path, "expect:\n", "events:\n  - {at: 1, stop_node: edge9}\nexpect:\n")
    _one_line_error(edgesim("validate", str(path)), 2, f"{path}:{_line_of(text, 'stop_node: edge9')}:",
                    "events[0].stop_node", "edge9")


# ------------------------------------------------------------------------------------------ environment: exit 3


def test_an_out_folder_that_cannot_be_created(scenario: Path) -> None:
    _one_line_error(edgesim("run", str(scenario), "--out", str(scenario / "sub")), 3, "cannot write to",
                    "is a file, not a folder")


def test_a_junit_file_that_cannot_be_written(scenario: Path) -> None:
    _one_line_error(edgesim("run", str(scenario), "--out", str(scenario.parent / "o"), "--junit",
                            str(scenario / "j.xml")), 3, "cannot write to", "is a file, not a folder")


@contextlib.contextmanager
def _holding(host: str, ports: tuple[int, ...], kind: int) -> Iterator[None]:
    """Bind ``host`` on each port this process may bind (the lab moves ports below 1024 up when unprivileged)."""
    held = []
    try:
        for port in ports:
            sock = socket.socket(socket.AF_INET, kind)
            try:
                if kind == socket.SOCK_STREAM:  # as the lab's own servers: earlier runs' TIME_WAIT do not count
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, port))
                if kind == socket.SOCK_STREAM:
                    sock.listen()
                held.append(sock)
            except PermissionError:
                sock.close()
            except BaseException:
                sock.close()
                raise
        assert held
        yield
    finally:
        for sock in held:
            sock.close()


def test_a_busy_lab_prefix_that_was_asked_for_is_an_environment_error(scenario: Path) -> None:
    with _holding(f"{PREFIX}.0.53", (53, 40053), socket.SOCK_DGRAM):
        line = _one_line_error(edgesim("run", str(scenario), "--lab-prefix", PREFIX, *QUICK, cwd=scenario.parent),
                               3, f"lab prefix {PREFIX} is busy", f"{PREFIX}.0.53:")
    assert "Address already in use" in line
    assert not (scenario.parent / "reports").exists()  # checked before any folder was made


def test_a_second_run_on_the_same_host_moves_to_a_free_prefix(scenario: Path) -> None:
    out = scenario.parent / "second"
    with _holding(f"{PREFIX}.0.53", (53, 40053), socket.SOCK_DGRAM):
        result = edgesim("run", str(scenario), "--out", str(out), *QUICK)
    assert result.returncode == 0, result.stderr
    note = result.stderr.strip().splitlines()
    assert len(note) == 1 and f"lab prefix {PREFIX} is busy" in note[0] and "using 127." in note[0], note
    moved = note[0].split("using ", 1)[1].split(".0.0/16")[0]
    assert moved != PREFIX
    hosts = json.loads((out / "report.json").read_text())["hosts"]
    assert all(host["address"].startswith(f"{moved}.") for host in hosts)


def test_an_address_taken_while_the_lab_starts_is_an_environment_error(scenario: Path) -> None:
    # the CRL server's address is not among the ones checked up front: the lab's own bind finds it busy
    with _holding(f"{PREFIX}.0.80", (80, 40080), socket.SOCK_STREAM):
        _one_line_error(edgesim("run", str(scenario), "--lab-prefix", PREFIX, *QUICK, cwd=scenario.parent), 3,
                        "lab could not start", "in use")
    assert list((scenario.parent / "reports").iterdir()) == []  # the run's folder went with the failed run


# ------------------------------------------------------------------------------------------ 0 and 1


def test_default_run_folders_never_overwrite_each_other(scenario: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "reports" / "latest").mkdir(parents=True)  # a run of edgesim before run folders
    (work / "reports" / "latest" / "report.json").write_text('{"started": "2026-01-02T03:04:05+00:00"}')
    for _ in range(2):
        result = edgesim("run", str(scenario), *QUICK, cwd=work)
        assert result.returncode == 0, result.stderr
    reports = work / "reports"
    runs = sorted(p.name for p in reports.iterdir() if p.is_dir() and not p.is_symlink())
    assert len([name for name in runs if name.endswith(scenario_name(scenario)) or "-2" in name]) == 2, runs
    assert "20260102T030405Z-earlier" in runs  # the old folder is kept under a name of its own
    latest = reports / "latest"
    assert latest.is_symlink() and (latest / "report.json").exists()
    newest = max((p for p in reports.iterdir() if not p.is_symlink() and "earlier" not in p.name),
                 key=lambda p: json.loads((p / "report.json").read_text())["started"])
    assert latest.resolve() == newest.resolve()


def scenario_name(path: Path) -> str:
    return next(line.split(":", 1)[1].strip() for line in path.read_text().splitlines() if line.startswith("name:"))


def test_exit_1_when_a_verdict_differs_with_the_failure_first(tmp_path: Path) -> None:
    path, _ = _variant(tmp_path, "  default: pass", "  default: pass\n  I9: fail:refused")
    result = edgesim("run", str(path), "--out", str(tmp_path / "out"), "--rules", "I8", "I9", "--no-load",
                     "--no-progress", "--loop", "asyncio", columns=80)
    assert result.returncode == 1, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.strip().startswith(("I8", "I9"))]
    assert rows[0][0] == "I9" and "✗" in " ".join(rows[0])
    assert result.stdout.strip().splitlines()[-1] == "2 rules: 2 pass, 0 fail, 0 blocked, 0 unimplemented — " \
        "1 differs from expected"
    assert os.path.exists(tmp_path / "out" / "report.html")


def test_expectations_name_a_blocker_and_point_at_their_own_line(tmp_path: Path) -> None:
    path, _ = _variant(tmp_path, "  default: pass", "  default: pass\n  E6: blocked:I3")
    assert edgesim("validate", str(path)).returncode == 0  # the form the shipped scenario's comment shows
    path, text = _variant(tmp_path, "  default: pass", "  default: pass\n  E6: maybe\n  I9: blocked:Z1")
    result = edgesim("validate", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2
    assert f"{path}:{_line_of(text, 'E6: maybe')}:" in lines[0] and "expect.E6" in lines[0] and "'maybe'" in lines[0]
    assert f"{path}:{_line_of(text, 'I9: blocked:Z1')}:" in lines[1] and "expect.I9" in lines[1]


def test_an_unknown_rule_in_the_rule_list_points_at_its_item(tmp_path: Path) -> None:
    path, text = _variant(tmp_path, "rules: all", "rules: [E6, E99]")
    line = _one_line_error(edgesim("validate", str(path)), 2, "rules[1]", "'E99'")
    column = text.splitlines()[_line_of(text, "rules: [E6") - 1].index("E99") + 1
    assert f"{path}:{_line_of(text, 'rules: [E6')}:{column}:" in line


@pytest.mark.parametrize(("old", "new", "field", "at"), [
    ("    count: 4\n", "    count: -4\n", "clients[2].count", "count: -4"),
    ("rate: 10, duration: 2}", "rate: 0, duration: 2}", "load[0].rate", "rate: 0"),
    ("rate: 10, duration: 2}", "rate: 10, duration: -2}", "load[0].duration", "duration: -2"),
    ("rate: 10, duration: 2}", "rate: 10, duration: 2, max_sessions: -5}", "load[0].max_sessions", "max_sessions"),
])
def test_negative_and_zero_counts_in_a_scenario(tmp_path: Path, old: str, new: str, field: str, at: str) -> None:
    path, text = _variant(tmp_path, old, new)
    _one_line_error(edgesim("run", str(path)), 2, f"{path}:{_line_of(text, at)}:", field)
