"""Run the probes of the selected rules in dependency order and give each rule one verdict.

Rules run in topological order of ``Rule.depends_on``. A rule whose prerequisite failed (or was itself
blocked) is ``blocked`` by it and its probe does not run; a rule with no registered probe is
``unimplemented``. Otherwise the probe runs against every pool node at once and the rule passes only
when it passes on each node; the first failing node gives the rule its reason.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from simulator.lab.topology import Lab
from simulator.outcome import Outcome, Reason, Verdict
from simulator.scenario.probes import PROBES, ProbeContext
from simulator.spec.rules import RULES_BY_ID, Rule, topological_order


@dataclass(frozen=True, slots=True)
class RuleResult:
    rule: Rule
    verdict: Verdict
    reason: str | None = None
    blocked_by: str | None = None
    detail: str = ""
    outcomes: tuple[Outcome, ...] = field(default_factory=tuple)
    elapsed_ms: float = 0.0


ProgressCallback = Callable[[RuleResult], None]


def combine_outcomes(rule: Rule, outcomes: list[Outcome], elapsed_ms: float) -> RuleResult:
    """One verdict from the per-node outcomes: pass only when every node passed; the first failure's reason."""
    failed = [outcome for outcome in outcomes if outcome.verdict is not Verdict.PASS]
    if not failed:
        detail = "; ".join(f"{o.node}: {o.detail}" for o in outcomes)
        return RuleResult(rule, Verdict.PASS, None, None, detail, tuple(outcomes), elapsed_ms)
    first = failed[0]
    reason = str(first.reason) if first.reason is not None else None
    detail = "; ".join(f"{o.node}: {o.detail}" for o in failed)
    return RuleResult(rule, Verdict.FAIL, reason, None, detail, tuple(outcomes), elapsed_ms)


async def run_rule(lab: Lab, rule: Rule, timeout: float, nodes: list[str] | None = None) -> RuleResult:
    """Run one rule's probe against every pool node, or ``nodes`` (no dependency check)."""
    probe = PROBES.get(rule.probe)
    if probe is None:
        return RuleResult(rule, Verdict.UNIMPLEMENTED, None, None, f"no probe '{rule.probe}' yet")
    started = time.perf_counter()  # a measurement for the report, like a probe's (see probing.guarded)
    context = ProbeContext(lab, rule, timeout)
    nodes = nodes if nodes is not None else [node.name for node in lab.scenario.edge_pool.nodes]
    # A probe has its own timeouts; this outer bound only guards against a probe that forgets one.
    results = await asyncio.gather(*(asyncio.wait_for(probe(context, node), timeout * 4) for node in nodes),
                                   return_exceptions=True)
    outcomes = [
        result if isinstance(result, Outcome)
        else Outcome(node, Verdict.FAIL, Reason.TIMEOUT if isinstance(result, TimeoutError) else
                     Reason.PROTOCOL_ERROR, f"probe error: {result!r}")
        for node, result in zip(nodes, results, strict=True)
    ]
    return combine_outcomes(rule, outcomes, (time.perf_counter() - started) * 1000)


async def run_rules(lab: Lab, rule_ids: list[str], timeout: float | None = None,
                    on_result: ProgressCallback | None = None, *, nodes: list[str] | None = None,
                    given: dict[str, RuleResult] | None = None) -> list[RuleResult]:
    """Run the selected rules in dependency order; results come back in that order.

    ``nodes``: probe only these pool nodes (an Edge-side probe in firewall lab mode runs on its node's host).
    ``given``: verdicts another side already reached (firewall lab mode): a rule that depends on one that
    failed there is blocked here too, instead of probing a flow that cannot work.
    """
    timeout = timeout if timeout is not None else lab.scenario.lab.probe_timeout
    known: dict[str, RuleResult] = dict(given or {})
    done: dict[str, RuleResult] = {}
    for rule_id in topological_order(rule_ids):
        rule = RULES_BY_ID[rule_id]
        blocker = next((dep for dep in rule.depends_on
                        if dep in known and known[dep].verdict in (Verdict.FAIL, Verdict.BLOCKED)), None)
        if blocker is not None:
            root = blocker
            while known[root].blocked_by is not None:  # follow the chain to the rule that actually failed
                root = known[root].blocked_by  # type: ignore[assignment]
            result = RuleResult(rule, Verdict.BLOCKED, None, blocker,
                                f"prerequisite {blocker} did not pass" + (f" (root: {root})" if root != blocker
                                                                            else ""))
        else:
            result = await run_rule(lab, rule, timeout, nodes)
        done[rule_id] = known[rule_id] = result
        if on_result is not None:
            on_result(result)
    return list(done.values())
