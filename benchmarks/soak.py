"""Churn soak through the embedded lab: allocations and sign-ins at a steady rate, resources back to baseline.

The lab (the shipped scenario, in 127.87.0.0/16) runs in this process. For ``--duration`` seconds (default
600):

- **allocations**: the project's bench client (:mod:`simulator.net.clients.relay_load`, MS-TURN over UDP)
  against edge1's A/V Edge at ``--alloc-rate`` per second, each held ``--hold`` seconds then released
  (Allocate LIFETIME 0), with MRAS-issued credentials got through the real SIP path at start;
- **sign-ins**: remote users sign in on edge1's Access Edge (TLS 443, Director behind it) and sign out
  (close) at ``--signin-rate`` per second, as simulator/scenario/load.py does.

Every ``--sample`` seconds: this process's VmRSS, open file descriptors (/proc/self/fd), relay sockets the
A/V Edge holds, allocations active. Baseline: after one warm-up allocation and sign-in, before the churn.
Passes when, after the churn stopped and a short drain, fds, relay sockets and allocations are back to the
baseline, RSS after warm-up (the first ``--warmup`` seconds) grew less than ``--rss-tolerance-mib``, and
there were 0 errors. Prints a table; the last line is one JSON object. Exit 0 pass, 1 leak or errors.

    .venv/bin/python benchmarks/soak.py                 # the 10-minute soak
    .venv/bin/python benchmarks/soak.py --duration 60   # what tests/perf/test_soak_short.py runs (shorter)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import os
import platform
import sys
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from simulator.lab.access import remote_user_session, request_mras_credentials, user_accounts  # noqa: E402
from simulator.lab.av import TURN_UDP_PORT  # noqa: E402
from simulator.lab.topology import Lab  # noqa: E402
from simulator.net.clients.relay_load import Credentials, LoadShard, Node, ShardSpec  # noqa: E402
from simulator.net.edge.av_edge import AvEdgeServer  # noqa: E402
from simulator.spec.loader import load_scenario  # noqa: E402
from simulator.spec.schema import Scenario  # noqa: E402

SHIPPED = ROOT / "scenarios" / "lync2013-scaled-edge-dns-nat.yaml"
NODE = "edge1"


def rss_kib() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@dataclass
class Sample:
    t: float
    rss_kib: int
    fds: int
    relay_sockets: int
    allocations: int
    allocs_ok: int
    signins_ok: int
    errors: int


@dataclass
class SoakResult:
    baseline: Sample
    samples: list[Sample] = field(default_factory=list)
    final: Sample | None = None
    errors: dict[str, int] = field(default_factory=dict)
    allocs_ok: int = 0
    signins_ok: int = 0
    rss_growth_kib: int = 0
    rss_slope_kib_s: float = 0.0  # least-squares slope of RSS over the samples after warm-up
    problems: list[str] = field(default_factory=list)
    trace_top: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": self.problems, "errors": self.errors, "allocs_ok": self.allocs_ok,
                "signins_ok": self.signins_ok, "rss_growth_kib": self.rss_growth_kib,
                "rss_slope_kib_s": self.rss_slope_kib_s,
                "baseline": vars(self.baseline), "final": vars(self.final) if self.final else None,
                "samples": [vars(s) for s in self.samples]}


def scenario_in(prefix: str, relay_ports: tuple[int, int] | None = None) -> Scenario:
    scenario = load_scenario(SHIPPED)
    lab = scenario.lab.model_copy(update={"loopback_prefix": prefix})
    update: dict[str, Any] = {"lab": lab}
    if relay_ports is not None:
        span = scenario.edge_pool.relay_ports.model_copy(update={"first": relay_ports[0], "last": relay_ports[1]})
        update["edge_pool"] = scenario.edge_pool.model_copy(update={"relay_ports": span})
    return scenario.model_copy(update=update)


def av_edge(lab: Lab) -> AvEdgeServer:
    edge = lab.nodes[NODE].services["av-external"]
    assert isinstance(edge, AvEdgeServer)
    return edge


def rss_slope(samples: list[Sample]) -> float:
    """Least-squares slope of RSS (KiB/s) over ``samples``; 0 with fewer than 3."""
    if len(samples) < 3:
        return 0.0
    n = len(samples)
    mean_t = sum(s.t for s in samples) / n
    mean_r = sum(s.rss_kib for s in samples) / n
    var = sum((s.t - mean_t) ** 2 for s in samples)
    cov = sum((s.t - mean_t) * (s.rss_kib - mean_r) for s in samples)
    return round(cov / var, 2) if var else 0.0


def trace_diff(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, top: int = 15) -> list[str]:
    """The ``top`` allocation sites (by traceback) that grew most between two tracemalloc snapshots."""
    ignore = (tracemalloc.Filter(False, tracemalloc.__file__),
              tracemalloc.Filter(False, "<frozen importlib._bootstrap>"))
    stats = after.filter_traces(ignore).compare_to(before.filter_traces(ignore), "traceback")
    lines = []
    for stat in stats[:top]:
        lines.append(f"+{stat.size_diff / 1024:.1f} KiB, +{stat.count_diff} blocks")
        lines.extend(f"    {line}" for line in stat.traceback.format(limit=8))
    return lines


def relay_sockets(edge: AvEdgeServer) -> int:
    return len(edge._binder.relays)


async def soak(lab: Lab, *, duration: float, alloc_rate: float, hold: float, signin_rate: float,
               warmup: float, sample_every: float, rss_tolerance_mib: float, drain: float = 15.0,
               seed: int = 2013, echo: bool = True, trace_frames: int = 0) -> SoakResult:
    """Run the churn on a started lab and judge it (see the module docstring)."""
    edge = av_edge(lab)
    errors: dict[str, int] = {}
    counts = {"signins": 0}

    def error(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    answer = await request_mras_credentials(lab, NODE, timeout=5)
    assert answer.credentials is not None
    accounts = user_accounts(lab)
    spec = ShardSpec(
        nodes=(Node(lab.external_bind(NODE, "av"), lab.port_map(TURN_UDP_PORT), NODE),),
        credentials=Credentials(answer.credentials.username, answer.credentials.password), dialect="ms-turn",
        transport="udp", concurrency=max(4, int(alloc_rate * (hold + 2) * 2)), rate=alloc_rate,
        duration=duration, hold=hold, timeout=3.0, local_hosts=tuple(a.host for a in accounts[:4]), seed=seed,
    )

    async def sign_in(index: int) -> None:
        try:
            async with remote_user_session(lab, NODE, index=index % len(accounts), timeout=5,
                                           seed=seed * 1000 + index):
                counts["signins"] += 1
        except Exception as exc:  # every failure is an unexpected error in a soak: count it by type
            error(f"sign-in: {type(exc).__name__}: {str(exc)[:60]}")

    # warm-up one of each before the baseline, so lazily built things (TLS contexts, caches) are in it
    await sign_in(0)
    warm = await LoadShard(dataclasses.replace(spec, rate=None, count=1, hold=0.0, concurrency=1,
                                               duration=5.0)).run()
    if warm.ok != 1:
        error(f"warm-up allocation: {warm.failures}")
    await asyncio.sleep(0.5)
    gc.collect()

    def sample(t: float, shard: LoadShard | None) -> Sample:
        return Sample(round(t, 1), rss_kib(), open_fds(), relay_sockets(edge), edge.core.allocation_count,
                      shard.result.ok if shard else 0, counts["signins"],
                      sum(errors.values()) + (shard.result.failed + shard.result.release_failed if shard else 0))

    result = SoakResult(baseline=sample(0.0, None))
    if trace_frames:
        tracemalloc.start(trace_frames)
    first_snapshot: tracemalloc.Snapshot | None = None
    counts["signins"] = 0
    shard = LoadShard(spec)
    started = time.monotonic()
    # --alloc-rate 0: sign-ins only (the shard is built but never run; its result stays empty)
    alloc_task = asyncio.create_task(shard.run() if alloc_rate > 0 else _idle(duration, shard))
    signins: set[asyncio.Task[None]] = set()

    async def signin_loop() -> None:
        index = 1
        while (now := time.monotonic()) - started < duration:
            due = started + index / signin_rate
            await asyncio.sleep(max(0.0, due - now))
            if len(signins) < 32:  # bounded: a stuck Edge cannot grow this without limit
                task = asyncio.create_task(sign_in(index))
                signins.add(task)
                task.add_done_callback(signins.discard)
            else:
                error("sign-in: 32 in flight, skipped")
            index += 1

    signin_task = asyncio.create_task(signin_loop()) if signin_rate > 0 else None
    next_sample = started + sample_every
    while not alloc_task.done() or time.monotonic() - started < duration:
        await asyncio.sleep(max(0.0, min(next_sample - time.monotonic(), 1.0)))
        if time.monotonic() >= next_sample:
            s = sample(time.monotonic() - started, shard)
            result.samples.append(s)
            next_sample += sample_every
            if trace_frames and first_snapshot is None and s.t >= warmup:
                gc.collect()
                first_snapshot = tracemalloc.take_snapshot()
            if echo:
                print(row(s), flush=True)
        if time.monotonic() - started > duration + hold + 30:
            error("allocation client did not finish")
            alloc_task.cancel()
            break
    if signin_task is not None:
        await signin_task
    if signins:
        await asyncio.wait(set(signins), timeout=15)
    shard_result = await asyncio.gather(alloc_task, return_exceptions=True)
    for item in shard_result:
        if isinstance(item, BaseException):
            error(f"allocation client: {item!r}"[:80])
    for reason, n in shard.result.failures.items():
        errors[f"allocation: {reason}"] = errors.get(f"allocation: {reason}", 0) + n
    if shard.result.release_failed:
        errors["allocation release failed"] = shard.result.release_failed
    result.allocs_ok, result.signins_ok = shard.result.ok, counts["signins"]
    result.errors = errors

    # drain: released allocations and closed connections must give their sockets back
    base = result.baseline
    deadline = time.monotonic() + drain
    while True:
        gc.collect()
        final = sample(time.monotonic() - started, shard)
        back = final.fds <= base.fds and final.relay_sockets == base.relay_sockets \
            and final.allocations == base.allocations
        if back or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.5)
    result.final = final
    if trace_frames and first_snapshot is not None:
        result.trace_top = trace_diff(first_snapshot, tracemalloc.take_snapshot())
        tracemalloc.stop()
    after_warmup = [s for s in result.samples if s.t >= warmup] or result.samples[-1:]
    reference = after_warmup[0].rss_kib if after_warmup else base.rss_kib
    result.rss_growth_kib = max(s.rss_kib for s in [*after_warmup, final]) - reference
    result.rss_slope_kib_s = rss_slope(after_warmup)
    if result.rss_growth_kib > rss_tolerance_mib * 1024:
        result.problems.append(f"RSS grew {result.rss_growth_kib} KiB after warm-up "
                               f"(tolerance {rss_tolerance_mib} MiB)")
    if final.fds > base.fds:
        result.problems.append(f"open fds {final.fds} > baseline {base.fds}")
    if final.relay_sockets != base.relay_sockets:
        result.problems.append(f"relay sockets {final.relay_sockets} != baseline {base.relay_sockets}")
    if final.allocations != base.allocations:
        result.problems.append(f"allocations {final.allocations} != baseline {base.allocations}")
    if errors:
        result.problems.append(f"{sum(errors.values())} errors: {errors}")
    if (alloc_rate > 0 and result.allocs_ok == 0) or (signin_rate > 0 and result.signins_ok == 0):
        result.problems.append("no churn happened")
    return result


async def _idle(duration: float, shard: LoadShard) -> Any:
    await asyncio.sleep(duration)
    return shard.result


HEADER = (f"{'t s':>7} {'RSS KiB':>9} {'fds':>5} {'relays':>6} {'allocs':>6} {'allocs ok':>9} {'sign-ins':>8} "
          f"{'errors':>6}")


def row(s: Sample) -> str:
    return (f"{s.t:7.1f} {s.rss_kib:9d} {s.fds:5d} {s.relay_sockets:6d} {s.allocations:6d} {s.allocs_ok:9d} "
            f"{s.signins_ok:8d} {s.errors:6d}")


async def run(args: argparse.Namespace) -> SoakResult:
    ports: tuple[int, int] | None = None
    if args.relay_ports:
        first, _, last = args.relay_ports.partition("-")
        ports = (int(first), int(last))
    async with Lab(scenario_in(args.prefix, ports)) as lab:
        print(HEADER)
        return await soak(lab, duration=args.duration, alloc_rate=args.alloc_rate, hold=args.hold,
                          signin_rate=args.signin_rate, warmup=args.warmup, sample_every=args.sample,
                          rss_tolerance_mib=args.rss_tolerance_mib, seed=args.seed,
                          trace_frames=args.tracemalloc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--alloc-rate", type=float, default=20.0, help="allocations started per second")
    parser.add_argument("--hold", type=float, default=2.0, help="seconds each allocation is held")
    parser.add_argument("--signin-rate", type=float, default=2.0, help="sign-ins per second")
    parser.add_argument("--warmup", type=float, default=None, help="seconds of warm-up (default: 20%% of duration)")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--rss-tolerance-mib", type=float, default=8.0)
    parser.add_argument("--prefix", default="127.87", help="the lab's loopback /16")
    parser.add_argument("--seed", type=int, default=2013)
    parser.add_argument("--relay-ports", metavar="FIRST-LAST", help="the A/V Edge relay range (default: the "
                        "scenario's 50000-59999); per-port state fills once per port, so a small range shows "
                        "whether RSS growth is range-bounded")
    parser.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES",
                        help="trace allocations (FRAMES deep) from the baseline; print the 15 sites that grew "
                             "most between the first sample after warm-up and the end (slow)")
    args = parser.parse_args(argv)
    if not 5 <= args.duration <= 7200 or not 0 <= args.alloc_rate <= 500 or not 0 <= args.signin_rate <= 50:
        parser.error("--duration 5..7200, --alloc-rate 0..500, --signin-rate 0..50")
    if args.warmup is None:
        args.warmup = args.duration * 0.2
    began = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    result = asyncio.run(run(args))
    final = result.final
    print(f"\nbaseline: {row(result.baseline)}")
    if final is not None:
        print(f"final:    {row(final)}")
    print(f"{began}, {platform.machine()} x{os.cpu_count()}, Python {platform.python_version()}; "
          f"{result.allocs_ok} allocations, {result.signins_ok} sign-ins in {args.duration:.0f} s; "
          f"RSS growth after {args.warmup:.0f} s warm-up: {result.rss_growth_kib} KiB "
          f"(slope {result.rss_slope_kib_s} KiB/s)")
    if result.trace_top:
        print("\ntracemalloc, growth after warm-up by traceback (top 15):")
        print("\n".join(result.trace_top))
    print("PASS" if result.ok else "FAIL: " + "; ".join(result.problems))
    print(json.dumps(result.to_dict()))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
