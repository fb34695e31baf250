"""Renderers of a report: the terminal table (rich) and report.json.

Every renderer reads the report.json document (``Report.to_dict()``), so a saved report renders the same as a
fresh one. The terminal table fits 80 columns: one short row per rule — rules that differ from the scenario's
expectations first, then failures, blocked and unprobed rules, then passes — with the probe details below it
(for the rules that differ; for every rule with ``details=True``), wrapped at word boundaries, and one summary line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from simulator.report.model import Report
from simulator.report.text import plain

_STYLE = {"pass": "bold green", "fail": "bold red", "blocked": "yellow", "unimplemented": "dim"}
_ORDER = {"fail": 0, "blocked": 1, "unimplemented": 2, "pass": 3}
VERDICTS = ("pass", "fail", "blocked", "unimplemented")


def document(report: Report | dict[str, Any]) -> dict[str, Any]:
    return report.to_dict() if isinstance(report, Report) else report


def ordered_rules(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Rules that differ from expectations first, then by verdict (fail, blocked, unimplemented, pass), then in
    catalog order."""
    rules = list(doc["rules"])
    return sorted(rules, key=lambda r: (bool(r["matches_expectation"]), _ORDER.get(r["verdict"], 9),
                                        rules.index(r)))


def why(rule: dict[str, Any]) -> str:
    if rule.get("reason"):
        return str(rule["reason"])
    if rule.get("blocked_by"):
        return f"by {rule['blocked_by']}"
    return ""


def counts(doc: dict[str, Any]) -> dict[str, int]:
    found = dict.fromkeys(VERDICTS, 0)
    for rule in doc["rules"]:
        found[rule["verdict"]] = found.get(rule["verdict"], 0) + 1
    return found


def all_match(doc: dict[str, Any]) -> bool:
    return all(rule["matches_expectation"] for rule in doc["rules"]) and not doc.get("load_problems")


def summary_line(doc: dict[str, Any]) -> str:
    found = counts(doc)
    text = ", ".join(f"{count} {name}" for name, count in found.items())
    differ = sum(not rule["matches_expectation"] for rule in doc["rules"])
    if all_match(doc):
        verdict = "all verdicts as expected"
    elif differ:
        verdict = f"{differ} differ{'s' if differ == 1 else ''} from expected"  # fits 80 columns with 38 rules
    else:
        verdict = "load not as expected"
    return f"{len(doc['rules'])} rules: {text} — {verdict}"


def render_table(report: Report | dict[str, Any], console: Console, details: bool = False,
                 summary: bool = True) -> None:
    """The verdict table, the details, the load phases and (``summary``) the one-line summary."""
    doc = document(report)
    table = Table(title=f"edgesim — {doc['scenario']}", box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False,
                  title_justify="left")
    table.add_column("rule", no_wrap=True)
    table.add_column("flow", overflow="fold")
    table.add_column("verdict", no_wrap=True)
    table.add_column("reason", overflow="fold")
    table.add_column("expected", overflow="fold")
    for rule in ordered_rules(doc):
        flow = f"{rule['protocol']}/{rule['transport']} {rule['ports']} {rule['direction']}"
        mark = Text("✓ " + rule["expected"], style="green") if rule["matches_expectation"] else \
            Text("✗ " + rule["expected"], style="bold red")
        table.add_row(rule["id"], flow, Text(rule["verdict"], style=_STYLE.get(rule["verdict"], "")), why(rule), mark)
    console.print(table)
    shown = [rule for rule in ordered_rules(doc) if details or not rule["matches_expectation"]]
    if shown:
        console.print(Text("details" if details else "details of the rules that differ (all: --details)",
                           style="bold"))
    for rule in shown:
        head = Text(f"{rule['id']} {rule['verdict']}", style=_STYLE.get(rule["verdict"], ""))
        if why(rule):
            head.append(f" ({why(rule)})")
        head.append(": ")
        head.append(plain(rule.get("detail") or "—"))
        console.print(head, overflow="fold")
    if doc.get("load") is not None:
        render_load(doc["load"], console)
    if doc.get("calls"):
        render_calls(doc["calls"], console)
    for problem in doc.get("load_problems", []):
        console.print(Text(f"load: {plain(problem)}", style="bold red"), overflow="fold")
    if summary:
        print_summary(doc, console)


def print_summary(doc: dict[str, Any], console: Console) -> None:
    console.print(Text(summary_line(doc), style="green" if all_match(doc) else "bold red"), overflow="fold")


def _counts(counts: dict[str, int]) -> str:
    return " ".join(f"{key[0]}{value}" for key, value in sorted(counts.items()))  # D2 R1 F0


def render_calls(calls: dict[str, Any], console: Console) -> None:
    """The caller-NAT × callee-NAT matrix (outcomes, time to connected), relayed legs per node, media totals."""
    table = Table(title=f"calls: {calls['connected']}/{calls['calls']} connected (D direct, R relay, F failed)",
                  box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False, collapse_padding=True,
                  title_justify="left")
    for column in ("caller NAT", "callee NAT", "calls", "ICE", "pair", "ttc p50/p99 ms"):
        table.add_column(column, overflow="fold")
    for cell in calls["matrix"]:
        ttc = cell["ttc"]
        pairs = ", ".join(kind.replace("/udp", "") for kind in cell["pair_types"])
        table.add_row(cell["caller_nat"], cell["callee_nat"], str(cell["calls"]), _counts(cell["outcomes"]), pairs,
                      f"{ttc['p50_ms']:.0f}/{ttc['p99_ms']:.0f}" if ttc.get("count") else "—")
    console.print(table)
    legs = ", ".join(f"{node} {count} ({calls['relayed_kbps'][node]:.0f} kbit/s)"
                     for node, count in calls["relayed_legs"].items())
    console.print(f"relayed legs per node: {legs}", overflow="fold")
    media = calls["media"]
    rtt = media["RoundTripLatencyInMs"]
    console.print(f"media: {media['PacketsSent']} packets sent, loss {media['PacketLossRate']:.3%}, "
                  f"RTT {'—' if rtt is None else f'{rtt:.1f} ms'}, jitter {media['AverageJitterInMs'] or 0:.1f} ms",
                  overflow="fold")
    lost_by_node = calls.get("media_lost_by_node") or {}
    if lost_by_node:  # calls that lost their media mid-call (their relay's A/V Edge stopped): per node
        ended = calls.get("ended", {})
        nodes = ", ".join(f"{node} {count}" for node, count in sorted(lost_by_node.items()))
        console.print(f"ended: {ended.get('completed', 0)} completed, {ended.get('media-lost-mid-call', 0)} "
                      f"media-lost-mid-call (through {nodes})", overflow="fold")
    for note in calls.get("notes", []):
        console.print(f"note: {note}", overflow="fold")


def render_load(load: dict[str, Any], console: Console) -> None:
    """Per population: sign-ins, spread over the nodes, re-homed and lost users; failover percentiles."""
    table = Table(title="load phases", box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False,
                  collapse_padding=True, title_justify="left")
    table.add_column("population", no_wrap=True)
    widest = max((len(f"{node} {count} (100%)") for population in load["populations"].values()
                  for node, count in population["spread"].items()), default=0)
    for column in ("users", "signed in", "spread over nodes", "on stopped", "re-homed", "lost"):
        # the counts and their headers keep one line; the spread has one line per node and a folded header
        folded = column == "spread over nodes"
        table.add_column(column, overflow="fold", no_wrap=not folded, min_width=widest if folded else None)
    for name, population in load["populations"].items():
        signed = max(1, population["signed_in"])
        spread = "\n".join(f"{node} {count} ({count / signed:.0%})" for node, count in population["spread"].items())
        table.add_row(name, str(population["sessions"]), str(population["signed_in"]), spread,
                      str(population["on_stopped_nodes"]), str(population["rehomed"]), str(population["lost"]))
    console.print(table)
    for event in load["events"]:
        console.print(f"event at {event['applied_at']} s: stopped {event['service']} on {event['stop_node']}")
    failover = load["failover"]
    if failover.get("count"):
        console.print(f"failover of {failover['count']} re-homed users: p50 {failover['p50_ms']:.1f}, "
                      f"p90 {failover['p90_ms']:.1f}, p99 {failover['p99_ms']:.1f}, max {failover['max_ms']:.1f} ms",
                      overflow="fold")


def write_json(report: Report | dict[str, Any], folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "report.json"
    path.write_text(json.dumps(document(report), indent=2) + "\n", encoding="utf-8")
    return path
