"""The ``calls`` phase's call kinds (issue 11): remote ↔ internal user and remote ↔ federated partner user.

Expected ICE outcomes come from RFC 4787 (NAT behaviour), RFC 8445 (candidates, checks, peer-reflexive) and
RFC 5766 §2.3 / §9 (a TURN permission is per peer IP address, installed by the client's Send / CreatePermission),
with the deployment's reachability (research-lync-edge §1): an internal user is reached from the Internet only
through the Edge's internal A/V interface, a federated partner's user sits on a public address.

* remote (APDM/APDF or EIM/EIF) → internal user. The internal user's host candidate is an intranet address: no
  Internet check reaches it and it sends none to the Internet, so the only working paths end at its relay R
  (allocated on the internal interface, relayed from the public A/V address). Its checks through R to the
  caller's srflx install the permission for the caller NAT's address (by IP only); the caller's checks from its
  base reach R — under APDM through a fresh mapping, which R's permission admits (same IP) and the internal user
  answers, the answer passing the caller's filter since it comes from exactly the address the mapping was made
  towards. So the call connects through R, relayed on the internal interface: Ice RELAY on both sides (QoE's
  Ice names the path: a relay at either end of the selected pair), the callee's leg the relayed one, and the
  caller talking straight to R: caller local srflx (EIM: the mapping towards R is the one towards the STUN
  server, RFC 4787 §4.1) or prflx (APDM: a new mapping, learnt from the check's XOR-MAPPED-ADDRESS).
* remote → federated partner user (host candidates at the partner's public address, no relay: the partner's own
  A/V Edge is outside the lab). The caller's check to that host goes out through its NAT and the answer comes
  back from the very address it was sent to, which every filtering behaviour of RFC 4787 §5 admits: DIRECT, for
  EIM (local srflx, the same mapping as towards the STUN server) and for APDM (local prflx, a new mapping) alike;
  no leg relayed.
"""

from __future__ import annotations

from typing import cast

import pytest

from simulator.lab.topology import Lab
from simulator.net.edge.av_edge import AvEdgeServer
from simulator.net.peers.frontend import FrontEndServer
from simulator.net.peers.sip_partner import PartnerEdgeServer
from simulator.scenario.load import run_load
from simulator.spec.loader import ScenarioError, load_scenario, load_scenario_text
from simulator.spec.schema import Scenario

from ..conftest import ROOT

SHIPPED = ROOT / "scenarios" / "lync2013-scaled-edge-dns-nat.yaml"
NATS = {"eim": ("endpoint-independent", "endpoint-independent"),
        "apdm": ("address-and-port-dependent", "address-and-port-dependent")}
# (caller NAT, callee population) → (caller's Ice, callee's Ice, caller's local candidate type,
# callee's candidate type as the caller sees it, relayed legs): see the module's docstring for each.
PREDICTED = {("eim", "internal"): ("RELAY", "RELAY", "srflx", "relay", ["callee"]),
             ("apdm", "internal"): ("RELAY", "RELAY", "prflx", "relay", ["callee"]),
             ("eim", "fabrikam"): ("DIRECT", "DIRECT", "srflx", "host", []),
             ("apdm", "fabrikam"): ("DIRECT", "DIRECT", "prflx", "host", [])}
KINDS = {"internal": "remote-internal", "fabrikam": "remote-federated"}


def _scenario(signalling: str = "sip", duration: float = 1.0) -> Scenario:
    base = load_scenario(SHIPPED)
    keep = [c for c in base.clients if c.role in ("front-end", "director") or c.name == "fabrikam"]
    data = base.model_dump(mode="json", exclude_none=True)
    data["clients"] = [c.model_dump(mode="json", exclude_none=True) for c in keep] + [
        {"name": "internal", "role": "internal-user", "count": 2, "dns_policy": "lync"}] + [
        {"name": f"caller-{name}", "role": "remote-user", "count": 1, "dns_policy": "lync",
         "nat": {"mapping": mapping, "filtering": filtering}} for name, (mapping, filtering) in NATS.items()]
    data["lab"] = {**data["lab"], "loopback_prefix": "127.61", "probe_timeout": 10.0}  # helper callkinds2's block
    data["load"] = [{"name": "calls", "clients": "caller-eim", "rate": 20, "duration": 2,
                     "calls": {"kind": "remote-internal",
                               "pairs": [{"caller": f"caller-{nat}", "callee": callee, "kind": KINDS[callee]}
                                         for nat, callee in PREDICTED],
                               "count": len(PREDICTED), "call_duration": duration, "ice": "rfc8445",
                               "signalling": signalling}}]
    data.pop("deployment", None)
    return Scenario.model_validate(data)


@pytest.mark.timeout(90)
async def test_internal_and_federated_callees_connect_as_predicted_with_clean_media() -> None:
    scenario = _scenario()
    async with Lab(scenario) as lab:
        load = await run_load(lab)
        director, partner = lab.services["sip-director"], lab.services["sip-fabrikam"]
        assert isinstance(director, FrontEndServer) and isinstance(partner, PartnerEdgeServer)
        av = {(node, side): lab.nodes[node].services[f"av-{side}"] for node in ("edge1", "edge2")
              for side in ("internal", "external")}
        assert all(isinstance(server, AvEdgeServer) for server in av.values())
        counters = {key: cast(AvEdgeServer, server).metrics() for key, server in av.items()}
    calls = load.calls.to_dict([n.name for n in scenario.edge_pool.nodes])
    assert calls["notes"] == [] and calls["calls"] == len(PREDICTED)
    assert calls["kinds"] == {"remote-internal": 2, "remote-federated": 2}
    by_pair = {(r["caller_population"].removeprefix("caller-"), r["callee_population"]): r for r in calls["records"]}
    for pair, (caller_ice, callee_ice, local_type, remote_type, relayed) in PREDICTED.items():
        record = by_pair[pair]
        assert record["error"] is None and record["signalling"] == "sip", record
        assert record["kind"] == KINDS[pair[1]], record
        assert record["ice_by_side"] == {"caller": caller_ice, "callee": callee_ice}, (pair, record)
        assert record["ice"] == caller_ice, record
        assert record["selected_pair"]["local_type"] == local_type, (pair, record)
        assert record["selected_pair"]["remote_type"] == remote_type, (pair, record)
        assert record["relayed_legs"] == relayed, (pair, record)
        if relayed:  # the internal user's leg: allocated on the internal interface, relayed by a pool node
            assert record["relay_interfaces"]["callee"] == "internal", record
            node = record["relay_nodes"]["callee"]
            # the Edge's own counters agree: that node's internal interface moved the media both ways
            internal = counters[(node, "internal")]
            assert internal["relayed_to_peer"] >= record["media"]["callee"]["PacketsSent"], internal
            assert internal["relayed_to_client"] >= record["media"]["caller"]["PacketsSent"], internal
        assert record["callee_nat"] == ("intranet" if pair[1] == "internal" else "partner")
        assert record["time_to_connected_ms"] > 0 and record["ended"] == "completed", record
        for side, other in (("caller", "callee"), ("callee", "caller")):
            media = record["media"][side]
            # 50 packets/s for 1 s each way (RFC 3550 counts), nothing lost without impairment
            assert media["PacketsSent"] >= 45 and media["PacketsLost"] == 0, (pair, side, media)
            assert media["PacketsReceived"] == record["media"][other]["PacketsSent"], (pair, side, record)
    # the SIP went the real way: the Director answered for the internal users (INVITE and re-INVITE each), the
    # partner's Edge for its user (RFC 3261: INVITE, re-INVITE, BYE all reached it)
    assert director.calls_routed["internal"] == 4
    assert partner.received["INVITE"] == 4 and partner.received["BYE"] == 2
    assert calls["media"]["PacketLossRate"] == 0
    # one allocation per internal user's call on the internal interfaces; the external ones relayed no media
    # (the remote callers' relays were gathered, never selected)
    assert sum(counters[(node, "internal")]["allocations_created"] for node in ("edge1", "edge2")) == 2
    assert all(counters[(node, "external")]["relayed_to_client"] < 45 for node in ("edge1", "edge2")), counters


async def test_in_process_signalling_also_serves_the_new_kinds() -> None:
    scenario = _scenario(signalling="in-process", duration=0.5)
    async with Lab(scenario) as lab:
        load = await run_load(lab)
    calls = load.calls.to_dict([n.name for n in scenario.edge_pool.nodes])
    assert calls["connected"] == len(PREDICTED), calls["records"]
    for record in calls["records"]:
        pair = (record["caller_population"].removeprefix("caller-"), record["callee_population"])
        assert record["ice_by_side"]["callee"] == PREDICTED[pair][1], record


def _line_of(text: str, needle: str) -> int:
    return next(number for number, line in enumerate(text.splitlines(), start=1) if needle in line)


def test_a_callee_population_of_the_wrong_role_is_a_scenario_error_at_its_line() -> None:
    text = SHIPPED.read_text(encoding="utf-8")
    text = text.replace("      pairs:\n        - {callee: remote-home}\n",
                        "      kind: remote-internal\n      pairs:\n        - {callee: remote-home}\n"
                        "        - {callee: fabrikam, kind: remote-federated}\n"
                        "        - {callee: frontend, kind: remote-federated}\n", 1)
    assert "kind: remote-internal" in text
    with pytest.raises(ScenarioError) as caught:
        load_scenario_text(text, "lab.yaml")
    problems = {problem.field: problem for problem in caught.value.problems}
    home = problems["load[1].calls.pairs[0].callee"]
    assert home.line == _line_of(text, "- {callee: remote-home}")
    assert "'remote-home' is a remote-user population" in home.message and "remote-internal" in home.message
    assert "internal-user" in home.message
    frontend = problems["load[1].calls.pairs[2].callee"]
    assert frontend.line == _line_of(text, "- {callee: frontend")
    assert "front-end" in frontend.message and "federated-partner" in frontend.message
    # the federated pair is right; the other remote callees are wrong for the phase's kind
    assert "load[1].calls.pairs[1].callee" not in problems
    assert set(problems) == {f"load[1].calls.pairs[{i}].callee" for i in (0, 2, 3, 4)}


def test_a_remote_internal_call_without_a_front_end_is_a_scenario_error() -> None:
    data = _scenario().model_dump(mode="json", exclude_none=True)
    data["clients"] = [c for c in data["clients"] if c["role"] != "front-end"]
    with pytest.raises(ValueError, match="remote-internal call needs a front-end population"):
        Scenario.model_validate(data)
