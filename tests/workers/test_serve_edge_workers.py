"""``edgesim serve edge --workers N`` (firewall lab mode): the node's Access Edge and each of its A/V Edge interfaces
on N processes each, Web Conferencing and MRAS in the parent (issue 14).

The firewall lab's deployment is moved onto loopback (``10.200.A.B`` → ``127.66.A.B``, this helper's block), so
``serve edge --node edge1 --workers 2`` runs as a user would start it, as a child process on the documented ports
(hence root, as the netns firewall tests). The other sides (Director, Front End, partners, DNS, CRL) run in this
process as ``serve internal`` and ``serve external`` would (one deployed ``Lab``). There is no firewall, so the
1:1 NAT's public addresses lead nowhere: the client talks to the Edge's private addresses, as the firewall's
DNAT would deliver it. What is checked, and where the expected values come from:

* remote users sign in over TLS 443 (RFC 3261 §10: REGISTER, 401 with Digest, then 200), read the ``mrasUri``
  from provisioning and get A/V credentials from the node's MRAS through the Edge and the Director (research
  §1.3: remote user → Access Edge 443 → Director → Edge 5062); the kernel spreads the TLS connections over both
  Access Edge workers (each worker's ``sip-443#w<i>`` handshakes > 0, summing to the number of connections);
* aioice (a real TURN client, RFC 5766 long-term credentials) allocates relays with those credentials on the
  node's external A/V Edge (3478/UDP): every allocation succeeds, the relayed address is the node's public A/V
  address (what the Edge must advertise behind the 1:1 NAT), and both A/V workers allocated (each worker's
  ``edgesim_turn_allocations_total{result="success"}`` > 0, summing to the number of allocations);
* ``--observations``: every one of those TLS connections is recorded as an arrival on 443 (the workers record
  what reached them, as the in-process listeners do, for ``report merge``'s reasons);
* the merged exposition passes Prometheus's own linter (``promtool check metrics``);
* ``--workers 0`` / ``--workers abc``: one line on stderr, exit 2.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import aioice.turn
import pytest
import yaml

from simulator.cli.scenarios import shipped_scenario
from simulator.lab.access import user_accounts
from simulator.lab.addressing import HostKind
from simulator.lab.fwlab import SplitLab
from simulator.lab.pki import read_pki
from simulator.lab.topology import Lab, Placement
from simulator.net.clients.sip_client import RemoteUser, SipClient
from simulator.net.transport.tls import client_context
from simulator.spec.loader import load_scenario
from simulator.spec.rules import RULES_BY_ID
from tests.metrics.serving import Served, promtool_ok, sample, scrape
from tests.peers import in_ci, require_tool

FIREWALL_LAB = shipped_scenario("firewall-lab.yaml")
PREFIX = "127.66"  # this helper's block (serveedge)
NODE = "edge1"
SIGN_INS = 12  # TLS connections to 443: P(all on one worker) = 2**-11
ALLOCATIONS = 12  # aioice allocations, each from its own source port: P(all on one worker) = 2**-11
TIMEOUT = 10.0


def _on_loopback(tmp_path: Path) -> Path:
    """The firewall lab's scenario with every deployment address moved from 10.200.A.B to 127.66.A.B."""
    text = FIREWALL_LAB.read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    moved = yaml.safe_dump(data["deployment"]).replace("10.200.", f"{PREFIX}.")
    data["deployment"] = yaml.safe_load(moved)
    path = tmp_path / "firewall-lab-loopback.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _edgesim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "simulator.cli", *args], capture_output=True, text=True,
                          timeout=60, check=False)


async def _relay(server: tuple[str, int], username: str, password: str) -> tuple[str, int]:
    """The XOR-RELAYED-ADDRESS aioice got for one allocation (from its own source port)."""
    transport, _ = await aioice.turn.create_turn_endpoint(
        asyncio.DatagramProtocol, server, username, password, transport="udp")
    try:
        host, port = transport.get_extra_info("sockname")
        return str(host), int(port)
    finally:
        transport.close()


async def test_remote_users_sign_in_and_relay_on_both_kinds_of_workers(tmp_path: Path) -> None:
    if os.geteuid() != 0:  # the deployment's documented ports (443, 3478, 5061, 53, 80)
        if in_ci():
            pytest.fail("serve edge binds the documented ports: needs root")
        pytest.skip("serve edge binds the documented ports: needs root")
    promtool = require_tool("promtool")
    path = _on_loopback(tmp_path)
    scenario = load_scenario(path)
    pki_folder = tmp_path / "pki"
    done = _edgesim("certs", "--scenario", str(path), "--out", str(pki_folder))
    assert done.returncode == 0, done.stderr
    pki, files = read_pki(scenario, pki_folder)
    observations = tmp_path / "observed-edge1.json"
    with Served(["edge", str(path), "--node", NODE, "--pki", str(pki_folder), "--workers", "2",
                 "--metrics", f"{PREFIX}.90.9:0", "--observations", str(observations)]) as served:
        url = served.wait_for(r"^metrics (http://\S+/metrics)$", timeout=60)[1]
        assert served.wait_for(r"^edge workers (\d+) ", timeout=60)[1] == "2"
        served.wait_for(rf"^edge ready node={NODE}$", timeout=60)
        rest = Placement(deployed=True, nodes=frozenset(), internal=True, external=True, client_nats=False)
        async with Lab(scenario, pki, placement=rest, pki_files=files) as lab:
            access = lab.plan.one(NODE, HostKind.EDGE_ACCESS_PRIVATE).address  # where the firewall's DNAT leads
            av_private = lab.plan.one(NODE, HostKind.EDGE_AV_PRIVATE).address
            av_public = lab.public_address(NODE, "av")
            accounts = user_accounts(lab)
            hosts = {accounts[index % len(accounts)].host for index in range(SIGN_INS)}
            context = client_context(files.ca)
            credentials: list[tuple[str, str]] = []
            for index in range(SIGN_INS):
                account = accounts[index % len(accounts)]
                client = await SipClient.connect([access], 443, context, scenario.edge_pool.access_fqdn, TIMEOUT,
                                                 random.Random(index), source=account.host)
                async with client:
                    user = RemoteUser(client, account.user, account.domain, account.password)
                    signed = await user.sign_in(TIMEOUT)
                    assert (signed.challenge.status, signed.accepted.status) == (401, 200)
                    if index < 2:
                        await user.provisioning(TIMEOUT)
                        answer = await user.request_mras(TIMEOUT)
                        assert answer.credentials is not None
                        credentials.append((answer.credentials.username, answer.credentials.password))
            relayed = [await _relay((av_private, 3478), *credentials[index % len(credentials)])
                       for index in range(ALLOCATIONS)]
            assert {host for host, _port in relayed} == {av_public}  # advertised: the public address
            exposition = await asyncio.to_thread(scrape, url)
        code, stderr = served.stop()
    assert code == 0, stderr
    promtool_ok(promtool, exposition)
    node = {"node": NODE}
    tls = [sample(exposition, "edgesim_tls_handshakes_total", listener=f"sip-443#w{i}", result="accepted", **node)
           for i in range(2)]
    assert all(count > 0 for count in tls) and sum(tls) == SIGN_INS, tls
    allocated = [sample(exposition, "edgesim_turn_allocations_total", interface=f"av-external#w{i}",
                        result="success", **node) for i in range(2)]
    assert all(count > 0 for count in allocated) and sum(allocated) == ALLOCATIONS, allocated
    assert sample(exposition, "edgesim_sip_responses_total", code="401", **node) == SIGN_INS
    print("\n".join(line for line in served.lines if "workers w0(" in line))  # per-worker figures (pytest -s)
    line = next(line for line in served.lines if line.startswith("edge workers w0("))
    counts = [int(n) for n in re.findall(r"tls443=(\d+)", line)]
    assert sorted(counts) == sorted(int(n) for n in tls), line
    # --observations: the workers recorded every TLS connection that reached 443, from the users' addresses
    arrivals = json.loads(observations.read_text(encoding="utf-8"))["arrivals"]
    on_443 = [a for a in arrivals if a["listener"] == "sip-443" and a["local"] == f"{access}:443"]
    assert len(on_443) == SIGN_INS and {a["remote"].rsplit(":", 1)[0] for a in on_443} == hosts, on_443
    # … and the A/V Edge workers recorded the Allocates that reached 3478 (what `report merge` reads for E15/E16)
    on_3478 = [a for a in arrivals if a["listener"] == "av-udp" and a["local"].endswith(":3478")]
    assert on_3478, [a for a in arrivals if a["listener"] != "sip-443"][:20]


@pytest.mark.parametrize("value", ["0", "abc"])
def test_bad_worker_count_is_one_line_and_exit_2(tmp_path: Path, value: str) -> None:
    done = _edgesim("serve", "edge", str(FIREWALL_LAB), "--node", NODE, "--pki", str(tmp_path), "--workers", value)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "worker" in lines[0] and "Traceback" not in done.stderr, done.stderr


class _WorkersSplitLab(SplitLab):
    """The netns firewall lab of :mod:`simulator.lab.fwlab`, each ``serve edge`` started with ``--workers 2``."""

    def _start(self, side: str, kind: str, *extra: str) -> tuple[Path, subprocess.Popen[str]]:
        return super()._start(side, kind, *extra, *(("--workers", "2") if kind == "edge" else ()))


@pytest.mark.interop
def test_every_rule_passes_across_a_real_firewall_with_both_nodes_on_workers(tmp_path: Path) -> None:
    """As tests/lab/test_split_lab_netns.py (the emitted nftables ruleset between network namespaces), with each
    node's Access Edge and A/V Edge interfaces on 2 workers: all 38 rules pass on both nodes (the seed's tables),
    and the observations name the arrivals on the node's 443 (recorded in the Access Edge workers)."""
    if os.geteuid() != 0:
        if in_ci():
            pytest.fail("network namespaces need root")
        pytest.skip("network namespaces need root")
    for tool in ("ip", "nft", "conntrack"):
        require_tool(tool)
    lab = _WorkersSplitLab(load_scenario(FIREWALL_LAB), FIREWALL_LAB, tmp_path, 3.0)
    try:
        lab.build()
        lab.load()
        observed = lab.serve_all()
        assert sum(line.startswith("edge workers 2 ") for line in lab.said) == 2, lab.said  # both nodes
        lab.probe_all()
        lab.snapshot(observed)
        lab.stop_servers()
        code, report, output = lab.merge(sorted(tmp_path.glob("side-*.json")) + observed)
    finally:
        lab.close()
    failing = {rule["id"]: (rule["verdict"], rule["reason"]) for rule in report["rules"] if rule["verdict"] != "pass"}
    assert failing == {}, output[-6000:]
    assert sorted(rule["id"] for rule in report["rules"]) == sorted(RULES_BY_ID) and code == 0
    arrivals = json.loads(observed[0].read_text())["arrivals"]
    access_private = str(lab.scenario.deployment.nodes["edge1"].access.private)  # type: ignore[union-attr]
    assert any(entry["local"] == f"{access_private}:443" for entry in arrivals), arrivals[:20]
