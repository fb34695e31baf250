"""Issue 12: the shipped scenario with a 4-port relay range passes every single-allocation A/V rule.

Each probe ends its allocation (MS-TURN 3.2.5.1: Allocate LIFETIME 0 over UDP; closing the TCP connection over
TCP), so the four ports are free again for the next rule; a probe that kept its allocation would make a later
rule meet 508 (Insufficient Capacity) once the four ports are taken.
"""

from __future__ import annotations

import random

import pytest

from simulator.lab.access import request_mras_credentials
from simulator.lab.addressing import HostKind
from simulator.lab.av import TURN_UDP_PORT
from simulator.lab.topology import Lab
from simulator.net.clients.turn_client import MsTurnClient
from simulator.outcome import ProbeFailure, Reason, Verdict
from simulator.scenario.runner import run_rules
from simulator.spec.schema import PortSpan, Scenario
from simulator.wire.stun import Address

# The A/V rules whose probe takes one allocation per node at a time (rules I3/I5 give the MRAS credentials).
SINGLE_ALLOCATION_RULES = ["E10", "E11", "E14", "E15", "E16", "E17", "I6", "I7", "P4", "P5", "P6"]


@pytest.mark.timeout(90)
async def test_a_4_port_relay_range_passes_every_single_allocation_rule(shipped_scenario: Scenario) -> None:
    pool = shipped_scenario.edge_pool.model_copy(update={"relay_ports": PortSpan(first=50000, last=50003)})
    lab_spec = shipped_scenario.lab.model_copy(update={"loopback_prefix": "127.86"})  # this helper's /16
    scenario = shipped_scenario.model_copy(update={"edge_pool": pool, "lab": lab_spec})
    async with Lab(scenario) as lab:
        # Twice over: the second round only finds free ports if the first released every allocation.
        results = await run_rules(lab, ["E6", "I3", "I5", *SINGLE_ALLOCATION_RULES, *SINGLE_ALLOCATION_RULES])
    failed = [(r.rule.id, r.verdict, r.reason, r.detail) for r in results if r.verdict is not Verdict.PASS]
    assert not failed, failed
    assert {r.rule.id for r in results} >= set(SINGLE_ALLOCATION_RULES)


@pytest.mark.timeout(60)
async def test_a_508_from_a_used_up_range_is_reported_as_exhaustion(shipped_scenario: Scenario) -> None:
    pool = shipped_scenario.edge_pool.model_copy(update={"relay_ports": PortSpan(first=50000, last=50000)})
    lab_spec = shipped_scenario.lab.model_copy(update={"loopback_prefix": "127.86"})
    scenario = shipped_scenario.model_copy(update={"edge_pool": pool, "lab": lab_spec})
    async with Lab(scenario) as lab:
        answer = await request_mras_credentials(lab, "edge1", timeout=3)
        assert answer.credentials is not None
        server = Address(lab.external_bind("edge1", "av"), lab.port_map(TURN_UDP_PORT))
        hosts = [host.address for host in lab.plan.of("remote-users", HostKind.CLIENT)[:2]]
        clients = [MsTurnClient("udp", server, answer.credentials.username, answer.credentials.password,
                                random.Random(index), version=3, local_host=host) for index, host in enumerate(hosts)]
        try:
            for client in clients:
                await client.open(3)
            await clients[0].allocate(3)  # takes the range's one port
            with pytest.raises(ProbeFailure) as caught:
                await clients[1].allocate(3)
            assert caught.value.reason is Reason.EXHAUSTION and "508" in caught.value.detail
        finally:
            for client in clients:
                await client.close()
