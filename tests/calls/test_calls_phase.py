"""The ``calls`` load phase: calls between NAT types through the lab pool (issue 11).

Expected outcomes come from RFC 4787 with the RFC 8445 candidate set (host, srflx, relay), not from the code:
a direct path exists when the callee's NAT admits the caller's srflx checks after it sent its own (EIF/ADF
filters by address, and the addresses match) and a mapping is reused towards the peer (EIM, or ADM towards the
same peer address); APDM gives a fresh port per destination, so two APDM sides (or APDM with ADM filtering by
port) can only meet through the relay.
"""

from __future__ import annotations

import datetime as dt
import io
import json

import pytest
from rich.console import Console

from simulator.lab.topology import Lab
from simulator.report.html import render_html
from simulator.report.model import build_report
from simulator.report.render import render_table
from simulator.scenario.load import run_load
from simulator.spec.loader import load_scenario
from simulator.spec.schema import Scenario

from ..conftest import ROOT

# Each NAT type twice (a caller population and a callee population): two users behind one NAT box are LAN
# neighbours and rightly connect host to host, which is not what the matrix is about.
SHIPPED = ROOT / "scenarios" / "lync2013-scaled-edge-dns-nat.yaml"
NATS = {"eim": ("endpoint-independent", "endpoint-independent"),
        "adm": ("address-dependent", "address-dependent"),
        "apdm": ("address-and-port-dependent", "address-and-port-dependent")}
# (caller, callee) → ICE outcome RFC 4787 predicts (the ice helper's shell matrix agrees)
PREDICTED = {("eim", "eim"): "DIRECT", ("eim", "apdm"): "DIRECT", ("apdm", "eim"): "DIRECT",
             ("adm", "adm"): "DIRECT", ("apdm", "apdm"): "RELAY", ("adm", "apdm"): "RELAY"}


def _scenario(pairs: list[tuple[str, str]], duration: float, *, signalling: str = "in-process") -> Scenario:
    base = load_scenario(SHIPPED)
    clients = [c for c in base.clients if c.role in ("front-end", "director")]
    data = base.model_dump(mode="json", exclude_none=True)
    data["clients"] = [c.model_dump(mode="json", exclude_none=True) for c in clients] + [
        {"name": f"{side}-{name}", "role": "remote-user", "count": 1, "dns_policy": "lync",
         "nat": {"mapping": mapping, "filtering": filtering}}
        for side in ("caller", "callee") for name, (mapping, filtering) in NATS.items()]
    data["lab"] = {**data["lab"], "loopback_prefix": "127.88", "probe_timeout": 10.0}
    data["load"] = [{"name": "calls", "clients": "caller-eim", "rate": 20, "duration": 2,
                     "calls": {"pairs": [{"caller": f"caller-{a}", "callee": f"callee-{b}"} for a, b in pairs],
                               "count": len(pairs), "call_duration": duration, "ice": "rfc8445",
                               "signalling": signalling}}]
    data.pop("deployment", None)
    return Scenario.model_validate(data)


@pytest.mark.timeout(90)
async def test_nat_pairs_connect_as_rfc4787_predicts_and_media_is_clean() -> None:
    pairs = list(PREDICTED)
    scenario = _scenario(pairs, duration=1.0)
    async with Lab(scenario) as lab:
        load = await run_load(lab)
        now = dt.datetime.now(dt.UTC)
        report = build_report(scenario, lab.plan, lab.port_map, [], now, now,
                              load.to_dict([n.name for n in scenario.edge_pool.nodes], set()))
    doc = json.loads(json.dumps(report.to_dict()))  # what report.json holds
    calls = doc["calls"]
    assert "calls" not in doc["load"]
    assert calls is not None and calls["calls"] == len(pairs)
    by_pair = {(r["caller_population"].removeprefix("caller-"), r["callee_population"].removeprefix("callee-")): r
               for r in calls["records"]}
    for pair, expected in PREDICTED.items():
        record = by_pair[pair]
        assert record["error"] is None, record
        assert record["ice"] == expected, (pair, record)
        if expected == "DIRECT":
            # through the NAT mappings: srflx, or prflx when the mapping towards the peer is not the one the
            # Edge saw (ADM: a new mapping per destination address, RFC 4787 §4.1)
            types = {record["selected_pair"]["local_type"], record["selected_pair"]["remote_type"]}
            assert types & {"srflx", "prflx"} and "relay" not in types and "host" not in types, record
            if pair == ("eim", "eim"):
                assert "srflx" in types, record
        else:
            assert record["relayed_legs"] and all(record["relay_nodes"][leg] in ("edge1", "edge2")
                                                  for leg in record["relayed_legs"])
        assert record["time_to_connected_ms"] > 0 and record["checks_sent"] > 0
        for side in ("caller", "callee"):
            media = record["media"][side]
            # 50 packets/s for 1 s each way (RFC 3550 counts), nothing lost without impairment
            assert media["PacketsSent"] >= 45 and media["PacketsLost"] == 0 and media["PacketLossRate"] == 0
            assert media["PacketsReceived"] == record["media"]["callee" if side == "caller" else "caller"][
                "PacketsSent"]
            for column in ("RoundTripLatencyInMs", "AverageJitterInMs", "PacketReorderRatio", "BytesSent",
                           "BytesReceived"):
                assert column in media
    assert calls["connected"] == len(pairs)
    cells = {(c["caller_nat"], c["callee_nat"]): c for c in calls["matrix"]}
    assert cells[("APDM/APDF", "APDM/APDF")]["outcomes"] == {"RELAY": 1}
    assert cells[("EIM/EIF", "EIM/EIF")]["outcomes"] == {"DIRECT": 1}
    assert cells[("EIM/EIF", "EIM/EIF")]["ttc"]["count"] == 1
    assert set(calls["relayed_legs"]) == {"edge1", "edge2"} and sum(calls["relayed_legs"].values()) >= 2
    assert calls["media"]["PacketLossRate"] == 0

    # the report: HTML matrix and the terminal table within 80 columns
    html = render_html(doc)
    assert 'id="nat-matrix"' in html and "APDM/APDF" in html and "not yet" not in html
    out = io.StringIO()
    render_table(doc, Console(file=out, width=80, color_system=None), summary=False)
    text = out.getvalue()
    assert "calls: 6/6 connected" in text and "relayed legs per node" in text
    assert max(len(line) for line in text.splitlines()) <= 80


@pytest.mark.timeout(90)
async def test_calls_signalled_through_the_access_edges() -> None:
    """SDP in INVITE / 183 / 200 and the re-INVITE through the Access Edges and the Front End (sipcalls)."""
    pairs = [("eim", "apdm"), ("apdm", "apdm")]
    scenario = _scenario(pairs, duration=0.5, signalling="sip")
    async with Lab(scenario) as lab:
        load = await run_load(lab)
    calls = load.calls.to_dict(["edge1", "edge2"])
    assert calls["notes"] == []  # SIP was used, not the in-process fallback
    for record in calls["records"]:
        assert record["signalling"] == "sip" and record["error"] is None, record
        assert record["ice"] == PREDICTED[(record["caller_population"].removeprefix("caller-"),
                                           record["callee_population"].removeprefix("callee-"))], record
        assert record["media"]["callee"]["PacketsLost"] == 0
