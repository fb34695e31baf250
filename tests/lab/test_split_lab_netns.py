"""Firewall lab mode end to end: edgesim on every side of a real nftables firewall between network namespaces.

The namespaces of :mod:`simulator.lab.fwlab` (ext, dmz, int and the router fw) get every address of
``scenarios/firewall-lab.yaml``'s deployment; fw loads the ruleset ``edgesim rules --firewall nftables`` emits
(the seed's rules plus the pool's 1:1 NAT). Then, as a user would on real hosts:

* ``serve edge --node edge1`` and ``--node edge2`` in dmz, ``serve internal`` in int, ``serve external`` in ext;
* ``probe --side edge`` (each node) in dmz, ``probe --side internal`` in int, ``probe --side external`` in ext;
* ``report merge`` of the side reports gives the one 38-rule table.

Every address and port comes from the deployment: nothing here is on 127.x.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from simulator.lab.fwlab import SplitLab
from simulator.spec.loader import load_scenario
from simulator.spec.rules import RULES_BY_ID
from tests.lab.test_firewall_netns import FIREWALL_LAB
from tests.peers import in_ci, require_tool

pytestmark = pytest.mark.interop

PROBE_TIMEOUT = 3.0  # seconds per probe step (the scenario's own)


@pytest.fixture
def split_lab(tmp_path: Path) -> Iterator[SplitLab]:
    if os.geteuid() != 0:
        if in_ci():
            pytest.fail("network namespaces need root")
        pytest.skip("network namespaces need root")
    require_tool("ip")
    require_tool("nft")
    require_tool("conntrack")
    lab = SplitLab(load_scenario(FIREWALL_LAB), FIREWALL_LAB, tmp_path, PROBE_TIMEOUT)
    try:
        lab.build()
        yield lab
    finally:
        lab.close()


def test_every_rule_passes_on_both_nodes_across_a_real_firewall(split_lab: SplitLab) -> None:
    split_lab.load()
    metrics = f"{split_lab.net.ext_client}:19641"
    observed = split_lab.serve_all(metrics=metrics)
    assert f"metrics http://{metrics}/metrics" in split_lab.said
    sides = split_lab.probe_all(load=True)
    split_lab.snapshot(observed)  # SIGUSR1: what arrived so far, while serving goes on
    # the external side's live metrics, scraped where they are served: valid exposition (promtool), and the partner
    # DNS server's answers counted per pool member after the probes and the load looked the pool up
    exposition = split_lab.net.run_in("ext", [sys.executable, "-c", "import sys, urllib.request; sys.stdout.write("
                                              f"urllib.request.urlopen('http://{metrics}/metrics', timeout=5)"
                                              ".read().decode())"])
    promtool = subprocess.run([require_tool("promtool"), "check", "metrics"], input=exposition, capture_output=True,
                              text=True, timeout=30, check=False)
    assert promtool.returncode == 0, promtool.stdout + promtool.stderr
    assert "edgesim_dns_answers_total{" in exposition, exposition[:3000]
    assert all(json.loads(path.read_text())["arrivals"] for path in observed)
    split_lab.stop_servers()
    files = sorted(split_lab.tmp.glob("side-*.json")) + observed
    code, report, output = split_lab.merge(files)
    verdicts = {rule["id"]: (rule["verdict"], rule["reason"], rule["detail"][:300]) for rule in report["rules"]}
    failing = {rule_id: v for rule_id, v in verdicts.items() if v[0] != "pass"}
    assert failing == {}, output[-6000:]
    assert sorted(verdicts) == sorted(RULES_BY_ID)  # all 38, from the catalog
    for rule in report["rules"]:
        assert sorted(node["node"] for node in rule["nodes"]) == ["edge1", "edge2"], rule
    assert code == 0
    # the probes really ran where the deployment says: every side report names only its own rules
    assert {side["side"] for side in sides} == {"edge", "internal", "external"}
    hosts = {host["address"] for host in report["hosts"]}
    assert not any(address.startswith("127.") for address in hosts)
    # the scenario's sign-in load ran through the firewall from outside: every remote user signed in, on both nodes
    load = report["load"]
    users = len(json.loads((split_lab.tmp / "side-external.json").read_text())["load"]["sessions"])
    assert users >= 1 and load["signed_in"] == users and load["failures"] == {}, load
    assert all(count > 0 for count in load["spread"].values()), load["spread"]
    # the serving sides saw the flows arrive on their deployment addresses
    arrivals = [json.loads(path.read_text())["arrivals"] for path in observed]
    access_private = str(split_lab.scenario.deployment.nodes["edge1"].access.private)  # type: ignore[union-attr]
    assert any(entry["local"] == f"{access_private}:443" for entry in arrivals[0]), arrivals[0][:20]


# ------------------------------------------------------------------------------------------- mutations
# Each mutation is a fresh ruleset with one change. What it must do comes from the seed's tables and what each
# probe sends (README "What works today"): a rule fails when its own flow (or the flow its probe needs, e.g. the
# relay's way out for the echo) is closed; a rule whose prerequisite fails is blocked by it; nothing else moves.
AV_EXTERNAL = ["E10", "E11", "E12", "E13", "E14", "E15", "E16", "E17", "P4", "P5", "P6"]
UDP_MS_TURN = ["E11", "E13", "E14", "E15", "P5", "P6"]  # MS-TURN sessions over UDP 3478 from outside

MUTATIONS: dict[str, tuple[dict[str, Any], dict[str, tuple[str, str | None]]]] = {
    # (1) no TCP 443 to the Access Edge's public address: sign-in fails; A/V (credentials need it) is blocked.
    "no-443-in": ({"leave_out": ["E6", "P3"]},
                  {"E6": ("fail", "never-arrived"), "P3": ("fail", "never-arrived"),
                   **{rule: ("blocked", "E6") for rule in AV_EXTERNAL}}),
    # (2) no UDP 3478 in to the A/V public address: every UDP MS-TURN session from outside.
    "no-3478-udp-in": ({"leave_out": ["E15", "P6"]},
                       {**{rule: ("fail", None) for rule in UDP_MS_TURN},
                        "E15": ("fail", "never-arrived"), "P6": ("fail", "never-arrived")}),
    # (4) 5062 from the Front End to the Edge's internal interface: MRAS fails, every A/V rule is blocked by it.
    "no-5062": ({"leave_out": ["I5"]},
                {"I5": ("fail", "never-arrived"), **{rule: ("blocked", "I5") for rule in [*AV_EXTERNAL, "I6", "I7"]}}),
    # (3) the relay range closed outbound for UDP: RTP from the relay to a peer's media port never arrives. E13's
    # peer speaks first (its own accept rule, not E11's return traffic), and a relay's STUN to a partner's 3478
    # is E14's to accept, so nothing else moves.
    "no-relay-udp-out": ({"leave_out": ["E11"]}, {"E11": ("fail", "never-arrived")}),
    # (6) DNS over UDP out closed, TCP open: E5 fails, E4 passes; what needs E5 is blocked by it (the Edge looks
    # partners up to reach them and to check the certificate of one that connects in).
    "no-dns-udp": ({"leave_out": ["E5"]},
                   {"E5": ("fail", "never-arrived"),
                    **{rule: ("blocked", "E5") for rule in ("E2", "E3", "E7", "E8", "F1", "P1", "P2", "X2")}}),
    # (8) inbound DNAT that also SNATs: the rules whose flows start outside and must keep the sender's address (the
    # client's Allocate, a peer opening to the relay). A flow the relay starts comes back as its reply, un-NATed.
    "snat-inbound": ({"snat_inbound": True},
                     {rule: ("fail", "snat-inbound") for rule in ("E12", "E13", "E15", "E16", "P6")}),
    # (7) REJECT instead of DROP: the closed 443 is refused at once, not timed out.
    "reject-443": ({"leave_out": ["E6", "P3"], "reject": True},
                   {"E6": ("fail", "refused"), "P3": ("fail", "refused"),
                    **{rule: ("blocked", "E6") for rule in AV_EXTERNAL}}),
    # (9) the answers of UDP 3478 dropped on their way back: the Allocates arrive, nothing comes back.
    "no-return-3478": ({"drop_return": ["E15", "P6"]},
                       {**{rule: ("fail", None) for rule in UDP_MS_TURN},
                        "E15": ("fail", "no-return-path"), "P6": ("fail", "no-return-path")}),
    # (5) 5061 out to partners (E8, F1 and P2 match the same packets).
    "no-5061-out": ({"leave_out": ["E8", "F1", "P2"]},
                    {rule: ("fail", "never-arrived") for rule in ("E8", "F1", "P2")}),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_one_firewall_change_moves_exactly_the_rules_it_must(split_lab: SplitLab, mutation: str) -> None:
    lab = split_lab
    options, expected = MUTATIONS[mutation]
    lab.load(**options)
    observed = lab.serve_all()  # fresh servers: nothing one mutation left (a held connection) leaks into the next
    lab.probe_all()
    lab.stop_servers()  # each writes what reached it
    code, report, output = lab.merge(sorted(lab.tmp.glob("side-*.json")) + observed)
    got = {rule["id"]: (rule["verdict"], rule["blocked_by"] if rule["verdict"] == "blocked" else rule["reason"])
           for rule in report["rules"]}
    moved = {rule_id: verdict for rule_id, verdict in got.items() if verdict[0] != "pass"}
    (lab.tmp / f"moved-{mutation}.json").write_text(json.dumps(
        {rule["id"]: [rule["verdict"], rule["reason"], rule["blocked_by"], rule["detail"][:500]]
         for rule in report["rules"] if rule["verdict"] != "pass"}, indent=1))
    want = {rule_id: verdict for rule_id, verdict in expected.items()}
    assert set(moved) == set(want), output[-6000:]
    for rule_id, (verdict, why) in want.items():
        assert moved[rule_id][0] == verdict, (rule_id, moved[rule_id], output[-4000:])
        if why is not None:
            assert moved[rule_id][1] == why, (rule_id, moved[rule_id], output[-4000:])
    assert code == 1  # the shipped expectations (all pass) no longer hold


def test_bench_relay_takes_mras_credentials_through_the_access_edge(split_lab: SplitLab) -> None:
    """`edgesim bench relay --mras`: credentials as a Lync client gets them (sign-in on 443 through the firewall,
    SERVICE to the node's MRAS over 5062 from the Director), then MS-TURN allocations on that node's public A/V
    address through the firewall's 1:1 NAT. Another node's MRAS does not authenticate here: each node checks
    its own store (the split lab has no shared one)."""
    split_lab.load()
    split_lab.serve_all()
    deployment = split_lab.scenario.deployment
    assert deployment is not None
    target = f"{deployment.nodes['edge1'].av.public}:3478"

    def bench(node: str, out: str) -> tuple[int, dict[str, Any]]:
        folder = split_lab.tmp / out
        done = subprocess.run(split_lab._in("ext", "bench", "relay", "--target", target, "--dialect", "ms-turn",
                                            "--mras", str(FIREWALL_LAB), "--pki", str(split_lab.pki),
                                            "--mras-node", node, "--bind", split_lab.net.ext_client, "--count", "40",
                                            "--concurrency", "8", "--quiet", "--json", "--out", str(folder)),
                              capture_output=True, text=True, timeout=120, check=False)
        assert (folder / "report.json").exists(), done.stdout[-2000:] + done.stderr[-2000:]
        return done.returncode, json.loads((folder / "report.json").read_text())

    code, report = bench("edge1", "bench-edge1")
    assert code == 0 and report["ok"] == 40 and report["failures"] == {}, report["failures"]
    relays = split_lab.scenario.edge_pool.relay_ports
    assert all(relays.first <= int(port) <= relays.last for port in report["ports"]["histogram"])
    code, report = bench("edge2", "bench-edge2")
    assert report["ok"] == 0 and set(report["failures"]) == {"auth"}, report["failures"]
    split_lab.stop_servers()
