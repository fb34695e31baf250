"""``edgesim bench relay``: shard an allocation load, run the shards (in-process, N processes, or Dask), merge.

- :func:`resolve_targets`: ``HOST[:PORT]`` or a pool FQDN (every A record, one :class:`Node` each).
- :func:`shard_specs`: split a :class:`ShardSpec` into N (counts, rates and concurrency divided; source addresses
  and source-port ranges sliced, so shards never share a 5-tuple).
- :func:`run_inline`, :func:`run_processes` (``multiprocessing`` spawn, a start barrier, live snapshots over a
  queue), :func:`run_dask` (the same shards on a ``dask.distributed`` cluster, each pinned to a named worker).
- :func:`merge`: results → one report dict. Counters are summed and the encoded HDR histograms are added
  (``decode_and_add``), so merged percentiles are those of one histogram of all values.
- :class:`Threshold` / :func:`evaluate`: k6-like ``metric[:agg] OP number`` checks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import multiprocessing
import os
import queue
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from hdrh.histogram import HdrHistogram

from simulator.net.clients.relay_load import (
    EXHAUSTION,
    Node,
    ShardResult,
    ShardSpec,
    new_histogram,
    run_shard,
)
from simulator.scenario.thresholds import LoadThreshold, ThresholdError, histogram_value
from simulator.scenario.thresholds import evaluate as evaluate_thresholds

Snapshot = dict[str, Any]
OnTick = Callable[[Snapshot], None]


class BenchError(Exception):
    """A usage problem (exit 2) or, with ``environment``, something on the host or network (exit 3); one line."""

    def __init__(self, message: str, *, environment: bool = False) -> None:
        super().__init__(message)
        self.environment = environment


# ------------------------------------------------------------------------------------------- targets
_IPV4 = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")


def default_port(dialect: str, transport: str) -> int:
    return 443 if (dialect == "ms-turn" and transport == "tcp") else 3478


def resolve_targets(target: str, port: int, nameserver: str | None = None) -> tuple[Node, ...]:
    """``HOST[:PORT]`` (an IPv4 address) is one node; a name is a pool: every A record is a node."""
    host, sep, port_text = target.rpartition(":")
    if not sep:
        host = target
    elif port_text.isdigit():
        port = int(port_text)
    else:
        raise BenchError(f"--target {target!r}: the port must be a number")
    if not 0 < port < 65536:
        raise BenchError(f"--target {target!r}: port {port} is out of range")
    if _IPV4.match(host):
        return (Node(host, port, f"{host}:{port}"),)
    import dns.exception
    import dns.resolver

    resolver = dns.resolver.Resolver(configure=nameserver is None)
    if nameserver is not None:
        ns_host, _, ns_port = nameserver.partition(":")
        resolver.nameservers = [ns_host]
        resolver.port = int(ns_port) if ns_port else 53
    resolver.lifetime = 5.0
    try:
        answer = resolver.resolve(host, "A")
    except dns.exception.DNSException as error:
        raise BenchError(f"--target {host}: no A records ({error.__class__.__name__}: {error})",
                         environment=True) from None
    addresses = sorted({record.address for record in answer})
    return tuple(Node(address, port, f"{address}:{port}") for address in addresses)


# ------------------------------------------------------------------------------------------- sharding
def _split(total: int, parts: int, index: int) -> int:
    return total // parts + (1 if index < total % parts else 0)


def shard_specs(spec: ShardSpec, shards: int) -> list[ShardSpec]:
    """``shards`` specs whose counts/rates/concurrency add up to ``spec``'s; sources and port slices disjoint."""
    if shards < 1:
        raise BenchError("--workers must be at least 1")
    out = []
    for i in range(shards):
        hosts = spec.local_hosts
        if len(hosts) >= shards:
            hosts = hosts[i::shards]
        elif hosts:
            hosts = (hosts[i % len(hosts)],)
        ports = spec.port_slice
        if ports is not None:
            size = ports[1] - ports[0] + 1
            if size < shards:
                raise BenchError(f"--source-ports {ports[0]}-{ports[1]}: fewer ports than workers")
            low = ports[0] + sum(_split(size, shards, j) for j in range(i))
            ports = (low, low + _split(size, shards, i) - 1)
        out.append(dataclasses.replace(
            spec, shard=i, local_hosts=hosts, port_slice=ports,
            count=None if spec.count is None else _split(spec.count, shards, i),
            concurrency=max(1, _split(spec.concurrency, shards, i)),
            rate=None if spec.rate is None else spec.rate / shards))
    return out


# ------------------------------------------------------------------------------------------- executors
def _run(spec: ShardSpec, on_tick: OnTick | None, loop: str) -> ShardResult:
    """One shard on a fresh event loop: uvloop (the default, when installed) or asyncio's own."""
    if loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            result: ShardResult = uvloop.run(run_shard(spec, on_tick))
            return result
    return asyncio.run(run_shard(spec, on_tick))


def run_inline(spec: ShardSpec, on_tick: OnTick | None = None, loop: str = "uvloop") -> list[dict[str, Any]]:
    """One shard on this process's own event loop."""
    return [_run(spec, on_tick, loop).to_dict()]


def run_shard_blocking(spec: ShardSpec, loop: str = "uvloop") -> dict[str, Any]:
    """One shard on a fresh event loop in the calling thread (what a Dask task runs)."""
    return _run(spec, None, loop).to_dict()


def _process_main(spec: ShardSpec, out: Any, go: Any, loop: str) -> None:
    out.put({"ready": spec.shard})
    if not go.wait(60):
        return
    try:
        result = _run(dataclasses.replace(spec, start_at=None), out.put, loop)
        out.put({"result": result.to_dict()})
    except BaseException as error:  # report, never hang the parent
        out.put({"error": f"shard {spec.shard}: {error!r}"})


def run_processes(specs: Sequence[ShardSpec], on_tick: OnTick | None = None, start_timeout: float = 60.0,
                  loop: str = "uvloop") -> list[dict[str, Any]]:
    """Each shard in its own process (spawn): own interpreter, own loop. All start together (a barrier)."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    go = context.Event()
    processes = [context.Process(target=_process_main, args=(spec, out, go, loop), daemon=True) for spec in specs]
    for process in processes:
        process.start()
    results: list[dict[str, Any]] = []
    errors: list[str] = []
    try:
        ready = 0
        deadline = time.monotonic() + start_timeout
        while ready < len(specs):
            try:
                message = out.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise BenchError(f"only {ready} of {len(specs)} worker processes started in {start_timeout} s",
                                 environment=True) from None
            if "ready" in message:
                ready += 1
        go.set()
        longest = max(spec.duration + spec.hold + 4 * spec.timeout + 30 for spec in specs)
        deadline = time.monotonic() + longest
        while len(results) + len(errors) < len(specs) and time.monotonic() < deadline:
            try:
                message = out.get(timeout=0.5)
            except queue.Empty:
                if not any(p.is_alive() for p in processes) and out.empty():
                    break
                continue
            if "result" in message:
                results.append(message["result"])
            elif "error" in message:
                errors.append(message["error"])
            elif on_tick is not None:
                on_tick(message)
    finally:
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
        out.close()
    if errors or len(results) != len(specs):
        raise BenchError("; ".join(errors) or f"{len(specs) - len(results)} worker(s) ended without a result",
                         environment=True)
    return sorted(results, key=lambda r: int(r["shard"]))


def run_dask(specs: Sequence[ShardSpec], address: str, loop: str = "uvloop") -> list[dict[str, Any]]:
    """The shards on a Dask cluster (``dask://HOST:PORT`` or ``tcp://…``), shard i pinned to worker i mod n."""
    try:
        from distributed import Client
    except ImportError:
        raise BenchError("--executor dask:// needs the optional extra: pip install 'edgesim[distributed]'",
                         environment=True) from None
    if address.startswith("dask://"):
        address = "tcp://" + address.removeprefix("dask://")
    try:
        client = Client(address, timeout=10)  # type: ignore[no-untyped-call]
    except (OSError, TimeoutError, ValueError) as error:
        raise BenchError(f"--executor {address}: no Dask scheduler there ({error})", environment=True) from None
    try:
        workers = sorted(client.scheduler_info()["workers"])
        if not workers:
            raise BenchError(f"--executor {address}: the cluster has no workers", environment=True)
        futures = [client.submit(run_shard_blocking, spec, loop, workers=[workers[i % len(workers)]],
                                 allow_other_workers=False, pure=False, key=f"edgesim-bench-shard-{i}-{os.getpid()}")
                   for i, spec in enumerate(specs)]
        results: list[dict[str, Any]] = client.gather(futures)  # type: ignore[no-untyped-call]
    finally:
        client.close()  # type: ignore[no-untyped-call]
    for index, result in enumerate(results):
        result["worker"] = workers[index % len(workers)]
    return sorted(results, key=lambda r: int(r["shard"]))


# ------------------------------------------------------------------------------------------- statistics
def _decode(encoded: str) -> HdrHistogram:
    histogram = new_histogram()
    if encoded:
        histogram.decode_and_add(encoded.encode())
    return histogram


def _add(target: HdrHistogram, encoded: str) -> None:
    if encoded:
        target.decode_and_add(encoded.encode())


def histogram_ms(histogram: HdrHistogram) -> dict[str, float | int]:
    """Percentiles of a µs histogram, in ms."""
    if histogram.get_total_count() == 0:
        return {"count": 0}
    ms = 1000.0
    return {"count": histogram.get_total_count(), "min": histogram.get_min_value() / ms,
            "p50": histogram.get_value_at_percentile(50) / ms, "p90": histogram.get_value_at_percentile(90) / ms,
            "p99": histogram.get_value_at_percentile(99) / ms, "max": histogram.get_max_value() / ms,
            "mean": round(histogram.get_mean_value() / ms, 4)}


def chi_square_sf(statistic: float, df: int) -> float:
    """P(X >= statistic) for X ~ chi-square(df): the regularized upper incomplete gamma Q(df/2, statistic/2)."""
    if df <= 0:
        return 1.0
    a, x = df / 2.0, statistic / 2.0
    if x <= 0:
        return 1.0
    log_front = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1:  # series for P, Q = 1 - P
        term = total = 1.0 / a
        n = a
        for _ in range(10000):
            n += 1
            term *= x / n
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(log_front))
    tiny = 1e-300  # Lentz's continued fraction for Q
    b = x + 1 - a
    c = 1 / tiny
    d = 1 / b
    h = d
    for i in range(1, 10000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-15:
            break
    return min(1.0, math.exp(log_front) * h)


def port_figures(ports: dict[int, int], port_range: tuple[int, int] | None) -> dict[str, Any]:
    """The relay-port histogram over the range: uniformity (chi-square over every port of the range), even/odd."""
    if not ports:
        return {"allocations": 0}
    low, high = port_range if port_range is not None else (min(ports), max(ports))
    size = high - low + 1
    total = sum(ports.values())
    outside = sum(n for p, n in ports.items() if not low <= p <= high)
    inside = total - outside
    # Chi-square needs about 5 expected per bin: with fewer allocations than 5 x range, adjacent ports are
    # grouped into equal-width bins (the last one narrower, its expectation scaled to its width).
    bins = max(1, min(size, inside // 5))
    width = -(-size // bins)
    counts: dict[int, int] = {}
    for port, n in ports.items():
        if low <= port <= high:
            counts[(port - low) // width] = counts.get((port - low) // width, 0) + n
    statistic = 0.0
    nbins = -(-size // width)
    for b in range(nbins):
        expected = inside * (min(high, low + (b + 1) * width - 1) - (low + b * width) + 1) / size
        statistic += (counts.get(b, 0) - expected) ** 2 / expected if expected else 0.0
    even = sum(n for p, n in ports.items() if p % 2 == 0)
    return {"allocations": total, "range": [low, high], "range_size": size, "distinct": len(ports),
            "outside_range": outside, "even": even, "odd": total - even,
            "chi_square": round(statistic, 3), "bin_width": width, "df": nbins - 1,
            "uniform_p": round(chi_square_sf(statistic, nbins - 1), 6) if inside and nbins > 1 else None,
            "histogram": {str(p): ports[p] for p in sorted(ports)}}


def read_process_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        text = handle.read()
    fields = text.rpartition(")")[2].split()  # fields from 3 (state) on; utime is field 14, stime 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read_host_cpu() -> tuple[float, float]:
    """(busy, total) CPU ticks of the whole host over all cores, from /proc/stat (idle + iowait are not busy)."""
    with open("/proc/stat", encoding="ascii") as handle:
        values = [float(v) for v in handle.readline().split()[1:]]
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return total - values[3] - values[4], total


def host_busy(before: tuple[float, float], after: tuple[float, float]) -> float | None:
    """Fraction of all the host's cores that were busy between two :func:`read_host_cpu` readings."""
    total = after[1] - before[1]
    return None if total <= 0 else (after[0] - before[0]) / total


def merge(results: Sequence[dict[str, Any]], *, port_range: tuple[int, int] | None = None,
          server_cpu_s: float | None = None, host_busy: float | None = None) -> dict[str, Any]:
    """One report from every shard's result (counters summed, HDR histograms added)."""
    alloc, release, reuse = new_histogram(), new_histogram(), new_histogram()
    answers: dict[str, int] = {}
    failures: dict[str, int] = {}
    ports: dict[int, int] = {}
    nodes: dict[str, dict[str, Any]] = {}
    sums = dict.fromkeys(("started", "ok", "failed", "released", "release_failed"), 0)
    for result in results:
        for key in sums:
            sums[key] += int(result[key])
        _add(alloc, result["alloc_us"])
        _add(release, result["release_us"])
        _add(reuse, result["reuse_us"])
        for code, n in result["answers"].items():
            answers[code] = answers.get(code, 0) + n
        for reason, n in result["failures"].items():
            failures[reason] = failures.get(reason, 0) + n
        for port, n in result["ports"].items():
            ports[int(port)] = ports.get(int(port), 0) + n
        for name, node in result["nodes"].items():
            merged = nodes.setdefault(name, {"ok": 0, "failed": 0, "hist": new_histogram()})
            merged["ok"] += node["ok"]
            merged["failed"] += node["failed"]
            _add(merged["hist"], node["alloc_us"])
    began = min((r["began_at"] for r in results), default=0.0)
    ended = max((r["ended_at"] for r in results), default=0.0)
    elapsed = max(ended - began, 1e-9)
    firsts = [(r["first_508_at"], r["held_at_first_508"]) for r in results if r["first_508_at"] is not None]
    client_cpu = sum(float(r["client_cpu_s"]) for r in results)
    report: dict[str, Any] = {
        "shards": len(results), "elapsed_s": round(elapsed, 3), **sums,
        "alloc_ok_ratio": sums["ok"] / sums["started"] if sums["started"] else 0.0,
        "allocs_per_s": round(sums["ok"] / elapsed, 2),
        "alloc_ms": histogram_ms(alloc), "release_ms": histogram_ms(release), "reuse_ms": histogram_ms(reuse),
        "answers": dict(sorted(answers.items())), "failures": dict(sorted(failures.items())),
        "exhaustion": {
            "seen": bool(firsts), "count": failures.get(EXHAUSTION, 0),
            "time_to_exhaustion_s": round(min(f for f, _ in firsts) - began, 3) if firsts else None,
            # exact for one shard; with several, each shard's count at its own first 508, summed
            "held_at_first_508": sum(h or 0 for _, h in firsts) if firsts else None,
            "peak_held": sum(int(r["peak_held"]) for r in results),
        },
        "ports": port_figures(ports, port_range),
        "nodes": {name: {"ok": n["ok"], "failed": n["failed"], "allocs_per_s": round(n["ok"] / elapsed, 2),
                         "share": round(n["ok"] / sums["ok"], 4) if sums["ok"] else 0.0,
                         "alloc_ms": histogram_ms(n["hist"])} for name, n in sorted(nodes.items())},
        "cpu": cpu_figures(client_cpu, len(results), elapsed, server_cpu_s, host_busy),
        "histograms": {"alloc_us": alloc.encode().decode(), "release_us": release.encode().decode()},
    }
    if failures.get(EXHAUSTION):  # a 508 is the relay range (or capacity) running out, not a CPU limit
        report["cpu"]["limit"] = "relay range (exhaustion: 508 Insufficient Capacity)"
    return report


def cpu_figures(client_cpu_s: float, processes: int, elapsed: float, server_cpu_s: float | None,
                host_busy: float | None = None) -> dict[str, Any]:
    """Client and server CPU and which side was the limit: a side near one full core per process, or the whole
    host (every core busy: client, server and whatever else runs there share them)."""
    client_util = client_cpu_s / (elapsed * max(1, processes))
    out: dict[str, Any] = {"client_cpu_s": round(client_cpu_s, 3), "client_util_per_process": round(client_util, 3)}
    server_util = None
    if server_cpu_s is not None:
        server_util = server_cpu_s / elapsed
        out.update(server_cpu_s=round(server_cpu_s, 3), server_util=round(server_util, 3))
    if host_busy is not None:
        out["host_busy"] = round(host_busy, 3)
    if client_util >= 0.85:
        out["limit"] = "client"
    elif server_util is not None and server_util >= 0.85:
        out["limit"] = "server"
    elif host_busy is not None and host_busy >= 0.9:
        out["limit"] = f"host CPU ({host_busy:.0%} of all {os.cpu_count()} cores busy)"
    elif server_util is None:
        out["limit"] = "unknown (client not saturated; give --server-pid to see the server)"
    else:
        out["limit"] = "neither (latency-bound: raise --concurrency)"
    return out


def merged_from_raw(values: Sequence[int]) -> HdrHistogram:
    """One histogram of raw µs values (for proving the merge)."""
    histogram = new_histogram()
    for value in values:
        histogram.record_value(value)
    return histogram


def live_figures(snapshots: dict[int, Snapshot]) -> dict[str, Any]:
    """Live figures over every shard's latest snapshot."""
    hist = new_histogram()
    failures: dict[str, int] = {}
    totals = dict.fromkeys(("started", "ok", "failed", "in_flight", "held", "ok_last"), 0)
    t = 0.0
    for snap in snapshots.values():
        for key in totals:
            totals[key] += int(snap.get(key, 0))
        for reason, n in snap.get("failures", {}).items():
            failures[reason] = failures.get(reason, 0) + n
        _add(hist, snap.get("alloc_us", ""))
        t = max(t, float(snap.get("t", 0.0)))
    count = hist.get_total_count()
    return {**totals, "t": t, "failures": failures,
            "p50_ms": hist.get_value_at_percentile(50) / 1000 if count else None,
            "p99_ms": hist.get_value_at_percentile(99) / 1000 if count else None}


# ------------------------------------------------------------------------------------------- thresholds
HISTOGRAM_METRICS = {"alloc_ms": "alloc_us", "release_ms": "release_us"}
SCALAR_METRICS = ("alloc_ok_ratio", "allocs_per_s", "started", "ok", "failed", "released", "release_failed",
                  "exhaustion_held", "time_to_exhaustion_s")


class Threshold(LoadThreshold):
    """A bench threshold: :class:`~simulator.scenario.thresholds.LoadThreshold` over the bench report's metrics."""

    @classmethod
    def parse(cls, text: str, histograms: Sequence[str] = (), scalars: Sequence[str] = (),
              prefixes: Sequence[str] = ()) -> Threshold:
        try:
            parsed = LoadThreshold.parse(text, histograms or tuple(HISTOGRAM_METRICS), scalars or SCALAR_METRICS,
                                         prefixes or ("fail_", "answers_"))
        except ThresholdError as error:
            raise BenchError(str(error)) from None
        return cls(parsed.text, parsed.metric, parsed.aggregate, parsed.op, parsed.value)

    def actual(self, report: dict[str, Any]) -> float | None:
        if self.metric in HISTOGRAM_METRICS:
            return histogram_value(_decode(report["histograms"][HISTOGRAM_METRICS[self.metric]]), self.aggregate)
        if self.metric == "exhaustion_held":
            held = report["exhaustion"]["held_at_first_508"]
            return None if held is None else float(held)
        if self.metric == "time_to_exhaustion_s":
            seconds = report["exhaustion"]["time_to_exhaustion_s"]
            return None if seconds is None else float(seconds)
        if self.metric.startswith("fail_"):
            return float(report["failures"].get(self.metric.removeprefix("fail_"), 0))
        if self.metric.startswith("answers_"):
            return float(report["answers"].get(self.metric.removeprefix("answers_"), 0))
        return float(report[self.metric])


def evaluate(thresholds: Sequence[Threshold], report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each threshold with its actual value and whether it passed (no value: failed)."""
    return evaluate_thresholds(thresholds, lambda threshold: cast(Threshold, threshold).actual(report))


# ------------------------------------------------------------------------------------------- MRAS credentials


def mras_credentials(scenario_file: str, pki_folder: str, node: str | None, timeout: float) -> tuple[str, str]:
    """A/V credentials the way a Lync client gets them (research §1.3): a remote user of the scenario signs in on
    ``node``'s Access Edge at its deployment address (TLS 443, through the user's NAT if the scenario gives it
    one), reads the mrasUri from provisioning and sends SERVICE to it; the Director routes it to that node's MRAS
    (5062), whose store the node's A/V Edge checks. Needs the scenario's ``deployment:`` and its PKI
    (``edgesim certs``), as ``edgesim probe --side external`` does; runs from the external side."""
    import asyncio

    from simulator.lab.access import request_mras_credentials
    from simulator.lab.pki import PkiFolderError, read_pki
    from simulator.lab.topology import Lab, Placement
    from simulator.outcome import ProbeFailure
    from simulator.spec.loader import ScenarioError, load_scenario

    try:
        scenario = load_scenario(scenario_file)
    except ScenarioError as error:
        raise BenchError(f"--mras: {error.problems[0] if error.problems else error}") from None
    except OSError as error:
        raise BenchError(f"--mras {scenario_file}: {error.strerror}", environment=True) from None
    if scenario.deployment is None:
        raise BenchError(f"--mras {scenario_file}: no deployment: section (the Access Edge's real addresses)")
    names = [n.name for n in scenario.edge_pool.nodes]
    chosen = node or names[0]
    if chosen not in names:
        raise BenchError(f"--mras-node {chosen!r}: the scenario's nodes are {', '.join(names)}")
    try:
        pki, files = read_pki(scenario, pki_folder)
    except PkiFolderError as error:
        raise BenchError(f"--pki: {error}", environment=True) from None
    lab = Lab(scenario, pki, placement=Placement(deployed=True, nodes=frozenset(), internal=False, external=False,
                                                 client_nats=True), pki_files=files)

    async def ask() -> tuple[str, str]:
        async with lab:
            answer = await request_mras_credentials(lab, chosen, timeout=timeout)
        if answer.credentials is None:
            raise BenchError("--mras: MRAS answered without credentials", environment=True)
        return answer.credentials.username, answer.credentials.password

    try:
        return asyncio.run(ask())
    except ProbeFailure as failure:
        raise BenchError(f"--mras: no credentials from {chosen}'s MRAS: {failure.reason}: {failure.detail}",
                         environment=True) from None
    except OSError as error:
        raise BenchError(f"--mras: {error.strerror or error}", environment=True) from None
