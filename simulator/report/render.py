"""Renderers of a :class:`Report`: the terminal table (rich) and report.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from simulator.outcome import Verdict
from simulator.report.model import Report

_STYLE = {Verdict.PASS: "bold green", Verdict.FAIL: "bold red", Verdict.BLOCKED: "yellow",
          Verdict.UNIMPLEMENTED: "dim"}


def render_table(report: Report, console: Console) -> None:
    table = Table(title=f"edgesim — {report.scenario.name}", show_lines=False, header_style="bold")
    for column in ("rule", "table", "protocol", "port", "dir", "verdict", "reason / blocked by", "expected",
                   "detail"):
        table.add_column(column, overflow="fold" if column == "detail" else "ellipsis",
                         max_width=60 if column == "detail" else None)
    for entry in report.rules:
        result, rule = entry.result, entry.result.rule
        why = result.reason or (f"by {result.blocked_by}" if result.blocked_by else "")
        mark = Text("✓ " + entry.expected, style="green") if entry.matches else Text("✗ " + entry.expected,
                                                                                       style="bold red")
        table.add_row(rule.id, str(rule.table), f"{rule.protocol}/{rule.transport}", str(rule.ports),
                      str(rule.direction), Text(str(result.verdict), style=_STYLE[result.verdict]), why, mark,
                      result.detail if result.verdict is not Verdict.UNIMPLEMENTED else "")
    console.print(table)
    counts = report.counts()
    summary = ", ".join(f"{count} {name}" for name, count in counts.items())
    verdict = "[green]all verdicts as expected[/]" if report.all_match else "[bold red]verdicts differ from the " \
        "scenario's expectations[/]"
    if report.load is not None:
        render_load(report.load, console)
    for problem in report.load_problems:
        console.print(f"[bold red]load: {problem}[/]")
    console.print(f"{len(report.rules)} rules: {summary} — {verdict}")


def render_load(load: dict[str, Any], console: Console) -> None:
    """Per population: sign-ins, spread over the nodes, re-homed and lost users; failover percentiles."""
    table = Table(title="load phases", header_style="bold")
    for column in ("population", "sessions", "signed in", "spread over nodes", "on stopped node", "re-homed", "lost"):
        table.add_column(column)
    for name, population in load["populations"].items():
        signed = max(1, population["signed_in"])
        spread = ", ".join(f"{node} {count} ({count / signed:.0%})" for node, count in population["spread"].items())
        table.add_row(name, str(population["sessions"]), str(population["signed_in"]), spread,
                      str(population["on_stopped_nodes"]), str(population["rehomed"]), str(population["lost"]))
    console.print(table)
    for event in load["events"]:
        console.print(f"event at {event['applied_at']} s: stopped {event['service']} on {event['stop_node']}")
    failover = load["failover"]
    if failover.get("count"):
        console.print(f"failover time over {failover['count']} re-homed users: p50 {failover['p50_ms']:.1f} ms, "
                      f"p90 {failover['p90_ms']:.1f} ms, p99 {failover['p99_ms']:.1f} ms, "
                      f"max {failover['max_ms']:.1f} ms")


def write_json(report: Report, folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "report.json"
    path.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    return path
