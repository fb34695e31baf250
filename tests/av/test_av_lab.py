"""The A/V rules in the embedded lab: credentials from MRAS, relays on the public address, failure reasons."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator

import pytest

from simulator.core.credentials import IssuedCredential
from simulator.lab.access import request_mras_credentials
from simulator.lab.addressing import HostKind
from simulator.lab.av import TURN_UDP_PORT
from simulator.lab.topology import Lab
from simulator.net.clients.turn_client import MsTurnClient
from simulator.net.edge.av_edge import AvEdgeServer
from simulator.outcome import ProbeFailure, Reason, Verdict
from simulator.scenario.runner import run_rules
from simulator.spec.schema import Scenario
from simulator.wire.stun import Address

AV_RULES = ["E10", "E11", "E12", "E13", "E14", "E15", "E16", "E17", "I6", "I7", "P4", "P5", "P6"]


@pytest.fixture
async def lab(shipped_scenario: Scenario) -> AsyncIterator[Lab]:
    async with Lab(shipped_scenario) as running:
        yield running


async def _allocate(lab: Lab, username: str, password: str, node: str = "edge1") -> None:
    server = Address(lab.external_bind(node, "av"), lab.port_map(TURN_UDP_PORT))
    client = MsTurnClient("udp", server, username, password, random.Random(7), version=3,
                          local_host=lab.plan.of("remote-users", HostKind.CLIENT)[0].address)
    await client.open(3)
    try:
        await client.allocate(3)
    finally:
        await client.close()


async def test_mras_credentials_authenticate_and_made_up_or_expired_ones_do_not(lab: Lab) -> None:
    answer = await request_mras_credentials(lab, "edge1", timeout=3)
    assert answer.credentials is not None
    username, password = answer.credentials.username, answer.credentials.password
    await _allocate(lab, username, password, "edge2")  # one pool-wide store: valid on every node
    with pytest.raises(ProbeFailure) as caught:
        await _allocate(lab, username, "not-the-password")
    assert caught.value.reason is Reason.REJECTED and "401" in caught.value.detail
    with pytest.raises(ProbeFailure):
        await _allocate(lab, "made-up-user", password)
    lab.credentials.issue(IssuedCredential(username, password, expires_at=time.time() - 1))
    with pytest.raises(ProbeFailure) as caught:
        await _allocate(lab, username, password)
    assert caught.value.reason is Reason.REJECTED


async def test_every_av_rule_passes_on_both_nodes(lab: Lab) -> None:
    results = await run_rules(lab, ["E6", "I3", "I5", *AV_RULES])
    for result in results:
        assert result.verdict is Verdict.PASS, result
        assert len(result.outcomes) == 2


async def test_an_edge_that_advertises_its_private_address_is_caught(lab: Lab) -> None:
    edge = lab.nodes["edge1"]
    good = edge.services["av-external"]
    assert isinstance(good, AvEdgeServer)
    await good.stop()
    private = lab.plan.one("edge1", HostKind.EDGE_AV_PRIVATE).address
    # A misconfigured Edge: listens on the public address but advertises its private one.
    leaky = AvEdgeServer(good.listen_host, private, relay_host=good.listen_host, udp_port=good.udp_port,
                         tcp_port=good.tcp_port, credentials=lab.credentials, realm=lab.scenario.domain, seed=1)
    edge.services["av-external"] = leaky
    await leaky.start()
    results = {r.rule.id: r for r in await run_rules(lab, ["E15"])}
    assert results["E15"].verdict is Verdict.FAIL and results["E15"].reason == "private-address-leaked"
    assert [o.verdict for o in results["E15"].outcomes] == [Verdict.FAIL, Verdict.PASS]


async def test_stopped_av_edge_fails_its_rules(lab: Lab) -> None:
    await lab.nodes["edge2"].stop_service("av-external")
    results = {r.rule.id: r for r in await run_rules(lab, ["E15", "E16"], timeout=1.0)}
    assert results["E16"].verdict is Verdict.FAIL and results["E16"].reason == "refused"
    assert results["E15"].verdict is Verdict.FAIL and results["E15"].reason in {"refused", "timeout"}
    assert [o.verdict for o in results["E16"].outcomes] == [Verdict.PASS, Verdict.FAIL]


async def test_without_mras_the_av_rules_are_blocked(lab: Lab) -> None:
    for node in lab.nodes.values():
        await node.stop_service("mras")
    results = {r.rule.id: r for r in await run_rules(lab, ["I5", "E15", "I6", "E10"], timeout=1.0)}
    assert results["I5"].verdict is Verdict.FAIL
    for rule_id in ("E15", "I6", "E10"):
        assert results[rule_id].verdict is Verdict.BLOCKED and results[rule_id].blocked_by == "I5"
