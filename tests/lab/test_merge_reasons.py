"""How `report merge` turns a probe's vague failure into where the flow died, from the serving side's arrivals.

Addresses are scenarios/firewall-lab.yaml's, by hand; ports are port-tables.md's (E17: TCP 443 out to the remote
Edge) and the lab's media peers' (their RTP/TCP port, where E10's relay connects).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from simulator.lab.av import PEER_TCP_MEDIA_PORT
from simulator.outcome import Outcome, Reason, Verdict
from simulator.report.merge import _refine, locus_of
from simulator.spec.loader import load_scenario
from simulator.spec.rules import RULES_BY_ID
from simulator.spec.schema import Scenario

FIREWALL_LAB = Path(__file__).resolve().parents[2] / "scenarios" / "firewall-lab.yaml"
EDGE1_AV_PUBLIC = "10.200.3.12"


@pytest.fixture(scope="module")
def lab() -> Scenario:
    return load_scenario(FIREWALL_LAB)


def _arrival(local: str, remote: str, transport: str = "tcp") -> dict[str, str]:
    return {"local": local, "remote": remote, "transport": transport}


def test_each_relay_rule_looks_for_its_own_port(lab: Scenario) -> None:
    e10, e17 = locus_of(lab, RULES_BY_ID["E10"], "edge1"), locus_of(lab, RULES_BY_ID["E17"], "edge1")
    assert e10 is not None and e17 is not None
    assert e10.ports == {PEER_TCP_MEDIA_PORT} and e17.ports == {443}
    assert e10.sources == {EDGE1_AV_PUBLIC}


def test_another_rules_arrival_does_not_stand_in_for_a_flow_that_never_came(lab: Scenario) -> None:
    """E10 taken out, E17 open: the relay's TCP to the peer's 443 arrived, its TCP to the media port did not."""
    locus = locus_of(lab, RULES_BY_ID["E10"], "edge1")
    assert locus is not None
    peer = sorted(locus.hosts)[0]
    seen = [_arrival(f"{peer}:443", f"{EDGE1_AV_PUBLIC}:51000")]
    refined = _refine(Outcome("edge1", Verdict.FAIL, Reason.TIMEOUT, "no answer to Connect"), locus, seen)
    assert refined.reason is Reason.NEVER_ARRIVED
    seen.append(_arrival(f"{peer}:{PEER_TCP_MEDIA_PORT}", f"{EDGE1_AV_PUBLIC}:51002"))
    refined = _refine(Outcome("edge1", Verdict.FAIL, Reason.TIMEOUT, "no answer to Connect"), locus, seen)
    assert refined.reason is Reason.NO_RETURN_PATH


def test_a_refusal_the_edge_gave_for_a_far_side_that_saw_nothing_is_never_arrived(lab: Scenario) -> None:
    locus = locus_of(lab, RULES_BY_ID["E2"], "edge1")
    assert locus is not None
    rejected = Outcome("edge1", Verdict.FAIL, Reason.REJECTED, "stream error remote-connection-failed")
    assert _refine(rejected, locus, []).reason is Reason.NEVER_ARRIVED
    # it arrived: the refusal is the far side's own answer and stays
    here = [_arrival(f"{sorted(locus.hosts)[0]}:5269", f"{sorted(locus.sources)[0]}:40000")]
    assert _refine(rejected, locus, here).reason is Reason.REJECTED
    # no observations from that side: nothing to say more
    assert _refine(rejected, locus, None).reason is Reason.REJECTED
