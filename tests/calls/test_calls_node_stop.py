"""An A/V Edge node stopped mid-call (``stop_node`` with service ``av``) during a calls phase (issue 11).

Ten calls: five between EIM/EIF users (RFC 4787: a direct srflx path, no relay) and five between APDM/APDF
users (no direct path: relayed through the A/V Edge each user got from DNS load balancing). edge1's A/V
services stop while every call is talking. No ICE restart is modelled, so what must happen is:

* a relayed call whose media went through edge1 loses its media: it ends ``media-lost-mid-call`` naming edge1,
  after the phase's ``media_timeout`` of silence, before its ``call_duration``;
* relayed calls only through edge2, and every direct call, talk to the end: ``completed``.
"""

from __future__ import annotations

import pytest

from simulator.lab.topology import Lab
from simulator.scenario.calls import COMPLETED, MEDIA_LOST
from simulator.scenario.load import run_load
from simulator.spec.loader import load_scenario
from simulator.spec.schema import Scenario

from ..conftest import ROOT

SCENARIO = ROOT / "scenarios" / "calls-200.yaml"
CALL_S = 7.0
STOP_AT = 3.0  # seconds after the load starts: users signed in (~1 s), calls connected (~1 s), talking
TIMEOUT = 1.5


def _scenario() -> Scenario:
    data = load_scenario(SCENARIO).model_dump(mode="json", exclude_none=True)
    keep = {"caller-eim", "callee-eim", "caller-apdm", "callee-apdm"}
    data["clients"] = [c | ({"count": 6} if c["name"] in keep else {}) for c in data["clients"]
                       if c["role"] != "remote-user" or c["name"] in keep]
    phase = data["load"][0]
    phase |= {"rate": 20, "duration": 1}
    phase["calls"] |= {"pairs": [{"caller": "caller-eim", "callee": "callee-eim"},
                                 {"caller": "caller-apdm", "callee": "callee-apdm"}],
                       "count": 10, "call_duration": CALL_S, "signalling": "in-process", "ice": "rfc8445",
                       "sign_in_first": True, "media_timeout": TIMEOUT}
    phase["calls"].pop("expect", None)
    data["events"] = [{"at": STOP_AT, "stop_node": "edge1", "service": "av"}]
    data["rules"] = ["E6"]
    return Scenario.model_validate(data)


@pytest.mark.timeout(90)
async def test_calls_relayed_by_a_stopped_av_edge_lose_media_the_others_complete() -> None:
    scenario = _scenario()
    async with Lab(scenario) as lab:
        report = await run_load(lab)
    assert [e["stop_node"] for e in report.events] == ["edge1"] and report.events[0]["stopped"]
    assert all(name.startswith("av-") for name in report.events[0]["stopped"])
    calls = report.calls.to_dict(["edge1", "edge2"])
    records = calls["records"]
    assert len(records) == 10 and calls["connected"] == 10, calls["failures"]
    through_edge1 = [r for r in records if r["ice"] == "RELAY"
                     and "edge1" in {r["relay_nodes"][leg] for leg in r["relayed_legs"]}]
    others = [r for r in records if r not in through_edge1]
    print("\n" + "\n".join(f"call {r['call']} {r['ice']} relays {r['relay_nodes']} → {r['ended']} "
                           f"after {r['ended_after_s']} s {r['ended_reason'] or ''}" for r in records))
    # seeded DNS choices: five relayed calls put at least one leg on edge1 (1 − 2⁻⁵ for a fair shuffle)
    assert through_edge1, "no relayed call went through edge1: the test proves nothing"
    for record in through_edge1:
        assert record["ended"] == MEDIA_LOST, record
        assert record["ended_nodes"] and "edge1" in record["ended_nodes"], record
        assert TIMEOUT <= record["ended_after_s"] < CALL_S, record
        assert "received no media" in record["ended_reason"]
    for record in others:
        assert record["ended"] == COMPLETED, record
        assert record["ended_nodes"] == []
        assert record["media"]["caller"]["PacketsLost"] == 0 and record["media"]["callee"]["PacketsLost"] == 0
    assert all(r["ended"] == COMPLETED for r in records if r["ice"] == "DIRECT")
    assert calls["ended"] == {COMPLETED: len(others), MEDIA_LOST: len(through_edge1)}
    assert calls["media_lost_by_node"].get("edge1") == len(through_edge1)
