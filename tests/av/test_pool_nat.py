"""The Edge pool's 1:1 NAT misconfigurations turn exactly the A/V rules that depend on them into failures
with a reason that says so (issue 6)."""

from __future__ import annotations

import pytest

from simulator.lab.topology import Lab
from simulator.outcome import Verdict
from simulator.scenario.runner import run_rules
from simulator.spec.schema import Scenario

AV_RULES = ["E10", "E11", "E12", "E13", "E14", "E15", "E16", "E17", "I6", "I7", "P4", "P5", "P6"]
PREREQUISITES = ["I3", "E6", "I5"]


def _with_pool_nat(scenario: Scenario, **nat: bool) -> Scenario:
    pool = scenario.edge_pool.model_copy(update={"nat": scenario.edge_pool.nat.model_copy(update=nat)})
    return scenario.model_copy(update={"edge_pool": pool})


@pytest.mark.timeout(120)
async def test_snat_on_inbound_fails_the_rules_that_need_real_sources(shipped_scenario: Scenario) -> None:
    async with Lab(_with_pool_nat(shipped_scenario, snat_inbound=True)) as lab:
        results = {r.rule.id: r for r in await run_rules(lab, PREREQUISITES + AV_RULES)}
        assert lab.pool_nat.config.snat_inbound
    failed = {rule_id for rule_id, result in results.items() if result.verdict is Verdict.FAIL}
    # Relays that open TCP outward keep working; everything that receives from outside breaks.
    assert failed == {"E11", "E12", "E13", "E14", "E15", "E16", "I6", "I7", "P5", "P6"}
    assert {results[rule_id].reason for rule_id in failed} == {"snat-inbound"}
    assert "source-NATed" in results["E15"].detail or "rewritten" in results["E15"].detail
    for rule_id in ("E10", "E17", "P4", *PREREQUISITES):
        assert results[rule_id].verdict is Verdict.PASS, results[rule_id]


@pytest.mark.timeout(120)
async def test_no_hairpin_fails_relay_to_relay_across_the_pool(shipped_scenario: Scenario) -> None:
    async with Lab(_with_pool_nat(shipped_scenario, hairpin=False)) as lab:
        results = {r.rule.id: r for r in await run_rules(lab, PREREQUISITES + AV_RULES)}
        dropped = sum(lab.pool_nat.drops.values())
    failed = {rule_id for rule_id, result in results.items() if result.verdict is Verdict.FAIL}
    assert failed == {"E11", "E13"}
    assert {results[rule_id].reason for rule_id in failed} == {"no-hairpin"}
    assert dropped > 0  # the NAT table refused the node-to-node packets
