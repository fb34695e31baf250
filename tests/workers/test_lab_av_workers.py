"""The embedded lab with each node's A/V Edge on worker processes: ``Lab(scenario, av_workers=2)``,
``edgesim run --av-workers 2`` (issue 14: "`make run` passes with the node's A/V Edge on 2 workers").

* The shipped default scenario (what ``make run`` runs) gives every rule the verdict the scenario expects
  (38/38) and every call of its calls phase connects, with the A/V Edges in 2 workers per interface.
* Allocations land on both workers of a node: aioice (a real TURN client) allocates with MRAS credentials
  fetched over the real SIP path (remote user → Access Edge → Director → MRAS); the relayed port each
  allocation returns lies in exactly one worker's slice of the external interface's half of the range, both
  slices are used, and each worker's own allocation counter (read from the worker process) grew by exactly the
  number of relayed ports in its slice. The internal interface's slices never overlap the external one's.
* Stopping a node's A/V service (what a ``stop_node`` event with service ``av`` does) ends its processes.
* Bad input: ``--av-workers 0`` or more workers than relay ports → one line on stderr, exit 2.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys
from pathlib import Path

import aioice.turn
import pytest

from simulator.cli.scenarios import default_scenario
from simulator.lab.access import request_mras_credentials
from simulator.lab.av import TURN_UDP_PORT, worker_av_edges
from simulator.lab.metrics import Sources, registry_for
from simulator.lab.topology import Lab
from simulator.net.edge.workers import AvEdgeWorkers
from simulator.outcome import Verdict
from simulator.report.model import build_report
from simulator.scenario.load import check_load, run_load
from simulator.scenario.runner import run_rules
from simulator.spec.loader import load_scenario
from simulator.spec.schema import Scenario

PREFIX = "127.62"  # this helper's block (avlab)
ALLOCATIONS = 24  # aioice allocations, each from its own source port: P(all on one worker) = 2**-23
WORKERS = 2


def _scenario() -> Scenario:
    scenario = load_scenario(default_scenario())
    lab = scenario.lab.model_copy(update={"loopback_prefix": PREFIX})
    return scenario.model_copy(update={"lab": lab})


def _external(lab: Lab, node: str) -> AvEdgeWorkers:
    service = lab.nodes[node].services["av-external"]
    assert isinstance(service, AvEdgeWorkers)
    return service


async def _aioice_relay(server: tuple[str, int], username: str, password: str) -> tuple[str, int]:
    """The XOR-RELAYED-ADDRESS aioice got for one allocation (from its own source port)."""
    transport, _ = await aioice.turn.create_turn_endpoint(
        asyncio.DatagramProtocol, server, username, password, transport="udp")
    try:
        host, port = transport.get_extra_info("sockname")
        return str(host), int(port)
    finally:
        transport.close()


async def test_shipped_scenario_passes_with_av_edge_on_two_workers() -> None:
    scenario = _scenario()
    async with Lab(scenario, av_workers=WORKERS) as lab:
        services = {(node, name): service for node, edge in lab.nodes.items()
                    for name, service in edge.services.items()
                    if name.startswith("av-") and isinstance(service, AvEdgeWorkers)}
        assert len(services) == 2 * len(scenario.edge_pool.nodes)
        assert all(len(s.pool.processes) == WORKERS for s in services.values())
        # The two interfaces of a node relay on one address: their slices must be disjoint.
        for node in lab.nodes:
            ranges = [(spec.first_port, spec.last_port) for name in ("av-external", "av-internal")
                      for spec in services[(node, name)].pool.specs]
            ports = [port for lo, hi in ranges for port in range(lo, hi + 1)]
            assert len(ports) == len(set(ports)) == scenario.edge_pool.relay_ports.last - \
                scenario.edge_pool.relay_ports.first + 1

        # Every rule as the scenario expects it; the calls of the load phases connect.
        started = dt.datetime.now(dt.UTC)
        results = await run_rules(lab, scenario.selected_rules)
        doc = build_report(scenario, lab.plan, lab.port_map, results, started, dt.datetime.now(dt.UTC)).to_dict()
        wrong = [(r["id"], r["verdict"], r["expected"], r["reason"]) for r in doc["rules"]
                 if not r["matches_expectation"]]
        assert not wrong
        assert len(doc["rules"]) == 38 and all(r["verdict"] == r["expected"] == "pass" for r in doc["rules"])
        outcome = await run_load(lab)
        assert check_load(outcome, scenario) == []
        assert outcome.calls.records and all(r.ice != "FAILED" for r in outcome.calls.records)
        created = sum(s.metrics.allocations_created for service in services.values()
                      for s in service.pool.snapshots())
        assert created > 0  # the A/V rules and calls allocated on the workers

        # A real client: relayed ports fall in the workers' slices, both slices used, the counters agree.
        node = scenario.edge_pool.nodes[0].name
        external = _external(lab, node)
        slices = [(spec.first_port, spec.last_port) for spec in external.pool.specs]
        before = [s.metrics.allocations_created for s in external.pool.snapshots()]
        answer = await request_mras_credentials(lab, node)
        assert answer.credentials is not None
        username, password = answer.credentials.username, answer.credentials.password
        server = (lab.public_address(node, "av"), lab.port_map(TURN_UDP_PORT))
        per_worker = [0] * WORKERS
        for _ in range(ALLOCATIONS):
            host, port = await _aioice_relay(server, username, password)
            assert host == lab.public_address(node, "av")
            owners = [index for index, (lo, hi) in enumerate(slices) if lo <= port <= hi]
            assert len(owners) == 1, (port, slices)
            per_worker[owners[0]] += 1
        assert all(count > 0 for count in per_worker), per_worker
        after = [s.metrics.allocations_created for s in external.pool.snapshots()]
        assert [a - b for a, b in zip(after, before, strict=True)] == per_worker

        # The lab's metrics: one series per worker, read from the worker processes; relay pools summed per node.
        registry = registry_for(lambda: Sources(av_edges=worker_av_edges(lab)), process=False)
        for index, count in enumerate(after):
            labels = {"node": node, "interface": f"av-external#w{index}", "result": "success"}
            assert registry.get_sample_value("edgesim_turn_allocations_total", labels) == count
        relay_address = lab.public_address(node, "av")
        free = registry.get_sample_value("edgesim_relay_ports_free", {"address": relay_address, "transport": "udp"})
        in_use = registry.get_sample_value("edgesim_relay_ports_in_use",
                                           {"address": relay_address, "transport": "udp"})
        lingering = registry.get_sample_value("edgesim_relay_ports_lingering",
                                              {"address": relay_address, "transport": "udp"})
        assert free is not None and in_use is not None and lingering is not None
        span = scenario.edge_pool.relay_ports.last - scenario.edge_pool.relay_ports.first + 1
        assert free + in_use + lingering == span  # both interfaces' halves, every worker's slice, counted once
        print(f"relay slices {slices}: aioice allocations per worker {per_worker}; allocations on all workers "
              f"during the run {created}")

        # stop_node with service "av" stops the node's A/V services: their processes end.
        processes = [p for name in ("av-external", "av-internal") for p in services[(node, name)].pool.processes]
        assert len(processes) == 2 * WORKERS and all(p.is_alive() for p in processes)
        for name in ("av-external", "av-internal"):
            await lab.nodes[node].stop_service(name)
        assert not any(p.is_alive() for p in processes)
        assert not external.running
        assert [e for e in worker_av_edges(lab) if e[0] == node] == []
        everyone = [p for service in services.values() for p in service.pool.processes]
        assert everyone and all(p.is_alive() for p in everyone)  # the other node's A/V workers still serve
    assert not any(p.is_alive() for p in everyone)  # the lab's exit stops every worker


def _edgesim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "simulator.cli", "run", *args], capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.mark.parametrize("count", ["0", "-1"])
def test_av_workers_below_one_is_a_usage_error(count: str, tmp_path: Path) -> None:
    done = _edgesim("--av-workers", count, "--out", str(tmp_path / "out"), "--lab-prefix", PREFIX)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--av-workers" in lines[0] and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_more_workers_than_relay_ports_is_a_usage_error(tmp_path: Path) -> None:
    text = default_scenario().read_text(encoding="utf-8")
    assert "relay_ports: {first: 50000, last: 59999}" in text
    small = tmp_path / "small.yaml"
    small.write_text(text.replace("relay_ports: {first: 50000, last: 59999}",
                                  "relay_ports: {first: 50000, last: 50002}"), encoding="utf-8")
    done = _edgesim(str(small), "--av-workers", "2", "--out", str(tmp_path / "out"), "--lab-prefix", PREFIX)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "relay ports" in lines[0] and "Traceback" not in done.stderr
    with pytest.raises(ValueError, match="relay ports"):
        Lab(load_scenario(small), av_workers=2)


# ------------------------------------------------------------------ the pool NAT's misconfigurations in workers
# Each worker emulates the pool's 1:1 NAT with its own table (simulator.lab.av): the rules that depend on the
# misconfigurations fail exactly as in-process (tests/av/test_pool_nat.py states the same sets, from the
# research notes on what each misconfiguration breaks).
AV_RULES = ["E10", "E11", "E12", "E13", "E14", "E15", "E16", "E17", "I6", "I7", "P4", "P5", "P6"]
PREREQUISITES = ["I3", "E6", "I5"]
PROBE_TIMEOUT = 2.0  # seconds per probe step: the failing rules wait it out


@pytest.mark.parametrize(("nat", "failed", "reason"), [
    ({"snat_inbound": True}, {"E11", "E12", "E13", "E14", "E15", "E16", "I6", "I7", "P5", "P6"}, "snat-inbound"),
    ({"hairpin": False}, {"E11", "E13"}, "no-hairpin"),
])
async def test_pool_nat_misconfigurations_fail_the_same_rules_in_workers(
        nat: dict[str, bool], failed: set[str], reason: str) -> None:
    scenario = _scenario()
    pool = scenario.edge_pool.model_copy(update={"nat": scenario.edge_pool.nat.model_copy(update=nat)})
    scenario = scenario.model_copy(update={"edge_pool": pool})
    async with Lab(scenario, av_workers=WORKERS) as lab:
        results = {r.rule.id: r for r in await run_rules(lab, PREREQUISITES + AV_RULES, PROBE_TIMEOUT)}
    got = {rule_id for rule_id, result in results.items() if result.verdict is Verdict.FAIL}
    assert got == failed
    assert {results[rule_id].reason for rule_id in got} == {reason}
    for rule_id in set(results) - failed:
        assert results[rule_id].verdict is Verdict.PASS, results[rule_id]
