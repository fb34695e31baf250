"""Scale-out of ``bench relay``: ``--workers N`` processes and a Dask cluster give figures that equal those of
one histogram/counter set built from every raw value."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from simulator.cli import main
from simulator.net.clients.relay_load import Credentials, Node, ShardSpec
from simulator.scenario.bench_relay import merge, merged_from_raw, run_dask, run_processes, shard_specs
from tests.bench.servers import PASSWORD, USER, edgesim, host
from tests.interop.turnpeers import TurnServer
from tests.peers import in_ci


@pytest.fixture(scope="module")
def av_edge(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with edgesim(tmp_path_factory.mktemp("av-edge"), 21, size=2000) as server:
        yield server


def spec_for(server: TurnServer, count: int) -> ShardSpec:
    return ShardSpec(nodes=(Node(server.host, server.udp_port),), credentials=Credentials(USER, PASSWORD),
                     concurrency=8, count=count, duration=20, local_hosts=(host(210), host(211)), keep_raw=True)


def assert_merge_exact(results: list[dict[str, Any]], count: int) -> None:
    report = merge(results)
    raw = [value for result in results for value in result["raw_alloc_us"]]
    assert len(raw) == report["ok"] == count
    assert report["started"] == sum(r["started"] for r in results) == count
    direct = merged_from_raw(raw)
    merged = report["alloc_ms"]
    assert merged["count"] == direct.get_total_count()
    for pct in (50, 90, 99):
        assert merged[f"p{pct}"] == direct.get_value_at_percentile(pct) / 1000
    assert merged["max"] == direct.get_max_value() / 1000 and merged["min"] == direct.get_min_value() / 1000
    ports: dict[str, int] = {}
    for result in results:
        for port, n in result["ports"].items():
            ports[port] = ports.get(port, 0) + n
    assert sum(report["ports"]["histogram"].values()) == count and report["ports"]["histogram"] == {
        p: ports[p] for p in sorted(ports, key=int)}


def test_two_worker_processes_merge_exactly(av_edge: TurnServer, tmp_path: Path) -> None:
    specs = shard_specs(spec_for(av_edge, 300), 2)
    assert [s.local_hosts for s in specs] == [(host(210),), (host(211),)]  # each its own source address
    results = run_processes(specs)
    assert [r["shard"] for r in results] == [0, 1] and all(r["ok"] == 150 for r in results)
    assert_merge_exact(results, 300)
    out = tmp_path / "cli"
    code = main(["bench", "relay", "--target", f"{av_edge.host}:{av_edge.udp_port}", "--user", f"{USER}:{PASSWORD}",
                 "--workers", "2", "--count", "100", "--bind", host(212), host(213), "--out", str(out), "--quiet",
                 "--json", "--threshold", "alloc_ok_ratio>=1"])
    report = json.loads((out / "report.json").read_text())
    assert code == 0 and report["shards"] == 2 and report["ok"] == 100
    assert report["target"]["executor"] == "processes"


def test_dask_local_cluster_runs_the_shards(av_edge: TurnServer) -> None:
    try:
        from distributed import LocalCluster
    except ImportError:
        if in_ci():
            pytest.fail("dask.distributed (edgesim[distributed]) is not installed")
        pytest.skip("dask.distributed (edgesim[distributed]) is not installed")
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1,  # type: ignore[no-untyped-call]
                      host=host(220), scheduler_port=0, dashboard_address=f"{host(220)}:0",
                      worker_dashboard_address=f"{host(220)}:0") as cluster:  # nothing on a well-known port
        address = cluster.scheduler_address
        results = run_dask(shard_specs(spec_for(av_edge, 200), 2), "dask://" + address.removeprefix("tcp://"))
    assert len({r["worker"] for r in results}) == 2  # one shard pinned to each named worker
    assert_merge_exact(results, 200)
