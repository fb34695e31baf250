"""The run report: a pure function of the scenario, the lab layout and the rule results.

``Report.to_dict()`` is report.json, the one document every other output (terminal table, CSV, JUnit, HTML,
``edgesim report FILE``) is rendered from. Its ``schema_version`` says which shape it has; within a version
every field keeps one type (``port_used`` is always a string: ``"40443"`` or ``"50000-59999"``, like ``ports``;
``reason``/``blocked_by`` are a string or null). Version history:

1. ``schema_version``, ``intervals`` (per-second load samples), ``relay_ports``, ``nodes``; ``port_used`` a
   string; details free of Python reprs. (Reports written before carry no ``schema_version``.)
"""

from __future__ import annotations

import datetime as dt
import platform
from dataclasses import dataclass
from typing import Any

from simulator import __version__
from simulator.lab.addressing import AddressPlan, PortMap
from simulator.outcome import Verdict
from simulator.report.text import plain
from simulator.scenario.runner import RuleResult
from simulator.spec.rules import RULES_BY_ID
from simulator.spec.schema import Scenario

SCHEMA_VERSION = 1


def port_used(port_map: PortMap, first: int, last: int) -> str:
    """The port(s) the lab bound for a documented range, always as text ("40443", "50000-59999")."""
    if first == last:
        return str(port_map(first))
    return f"{port_map(first)}-{port_map(last)}"


@dataclass(frozen=True, slots=True)
class RuleReport:
    result: RuleResult
    expected: str
    matches: bool

    def to_dict(self, port_map: PortMap) -> dict[str, Any]:
        result, rule = self.result, self.result.rule
        return {
            "id": rule.id,
            "table": str(rule.table),
            "interface": str(rule.interface),
            "service": str(rule.service),
            "protocol": rule.protocol,
            "transport": str(rule.transport),
            "ports": str(rule.ports),
            "port_used": port_used(port_map, rule.ports.first, rule.ports.last),
            "direction": str(rule.direction),
            "verdict": str(result.verdict),
            "reason": result.reason,
            "blocked_by": result.blocked_by,
            "detail": plain(result.detail),
            "expected": self.expected,
            "matches_expectation": self.matches,
            "elapsed_ms": round(result.elapsed_ms, 3),
            "nodes": [
                {"node": o.node, "verdict": str(o.verdict), "reason": None if o.reason is None else str(o.reason),
                 "detail": plain(o.detail), "elapsed_ms": round(o.elapsed_ms, 3)}
                for o in result.outcomes
            ],
        }


def _matches(result: RuleResult, verdict: Verdict, detail: str | None) -> bool:
    if result.verdict is not verdict:
        return False
    if detail is None:
        return True
    return detail == (result.blocked_by if verdict is Verdict.BLOCKED else result.reason)


@dataclass(frozen=True, slots=True)
class Report:
    scenario: Scenario
    plan: AddressPlan
    port_map: PortMap
    rules: tuple[RuleReport, ...]
    started: dt.datetime
    finished: dt.datetime
    load: dict[str, Any] | None = None  # LoadReport.to_dict(), when the scenario has load phases
    load_problems: tuple[str, ...] = ()  # what contradicts the scenario's expect_load
    intervals: tuple[dict[str, Any], ...] = ()  # per-second load samples (simulator.scenario.load_sampler)

    @property
    def all_match(self) -> bool:
        return all(rule.matches for rule in self.rules) and not self.load_problems

    def counts(self) -> dict[str, int]:
        counts = {str(verdict): 0 for verdict in Verdict}
        for rule in self.rules:
            counts[str(rule.result.verdict)] += 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        pool = self.scenario.edge_pool
        return {
            "schema_version": SCHEMA_VERSION,
            "edgesim": __version__,
            "scenario": self.scenario.name,
            "seed": self.scenario.seed,
            "started": self.started.isoformat(),
            "finished": self.finished.isoformat(),
            "machine": {"python": platform.python_version(), "platform": platform.platform()},
            "summary": {**self.counts(), "all_match_expectations": self.all_match},
            "rules": [rule.to_dict(self.port_map) for rule in self.rules],
            "load": None if self.load is None else {k: v for k, v in self.load.items() if k != "calls"},
            "calls": (self.load or {}).get("calls"),  # simulator.scenario.calls: the NAT matrix, per call
            "load_problems": [plain(problem) for problem in self.load_problems],
            "intervals": [dict(interval) for interval in self.intervals],
            "nodes": [node.name for node in pool.nodes],
            "relay_ports": {"first": pool.relay_ports.first, "last": pool.relay_ports.last},
            "hosts": [{"name": h.name, "kind": str(h.kind), "address": h.address, "owner": h.owner}
                      for h in self.plan.hosts],
            "port_map": {"offset": self.port_map.offset, "privileged_allowed": self.port_map.privileged_allowed},
        }


def build_report(scenario: Scenario, plan: AddressPlan, port_map: PortMap, results: list[RuleResult],
                 started: dt.datetime, finished: dt.datetime, load: dict[str, Any] | None = None,
                 load_problems: tuple[str, ...] = (), intervals: tuple[dict[str, Any], ...] = ()) -> Report:
    rules = []
    catalog_order = {rule_id: index for index, rule_id in enumerate(RULES_BY_ID)}
    for result in sorted(results, key=lambda r: catalog_order[r.rule.id]):
        verdict, detail = scenario.expected(result.rule.id)
        expected = str(verdict) + (f":{detail}" if detail else "")
        rules.append(RuleReport(result, expected, _matches(result, verdict, detail)))
    return Report(scenario, plan, port_map, tuple(rules), started, finished, load, load_problems, intervals)
