"""Churn soak through the embedded lab: allocations, sign-ins and calls at a steady rate, resources back to baseline.

The lab (the shipped scenario, in ``--prefix``/16) runs in this process. For ``--duration`` seconds (default
600):

- **allocations**: the project's bench client (:mod:`simulator.net.clients.relay_load`, MS-TURN over UDP)
  against edge1's A/V Edge at ``--alloc-rate`` per second, each held ``--hold`` seconds then released
  (Allocate LIFETIME 0), with MRAS-issued credentials got through the real SIP path at start;
- **sign-ins**: remote users (population remote-users) sign in on edge1's Access Edge (TLS 443, Director
  behind it) and sign out (close) at ``--signin-rate`` per second, as simulator/scenario/load.py does;
- **calls**: at ``--call-rate`` per second (at most 2 in flight), remote-home calls remote-corp through
  simulator/scenario/calls.py: SIP INVITE/183/200/re-INVITE/BYE through the Access Edges, MS-ICE2, an
  MS-TURN relay on whichever node DNS picked, 2 s of SILK-WB audio each way. The two parties stay signed in
  (as users do) and sign out at the end; each call's record is judged (ICE connected, media completed) and
  dropped.

Every ``--sample`` seconds: this process's VmRSS, open file descriptors (/proc/self/fd), relay sockets and
allocations on the A/V Edges, the client NATs' mapped-port UDP sockets, and the entries/bytes of the SIP
parse caches (``functools.lru_cache`` in simulator/wire). Baseline: after one warm-up allocation, sign-in
and call, with the SIP parse caches filled to their size (``prefill_caches``: bounded caches filling look
like growth), before the churn. Passes when, after the churn stopped and the drain (with calls: until the
client NATs' UDP bindings timed out, RFC 4787 REQ-5), fds, NAT sockets, relay sockets and allocations are back
to the baseline, the RSS slope over the second half of the samples after ``--warmup`` is at most
``--max-slope`` KiB/s (the first half's slope and the total growth are reported too), and there were 0
errors. Prints a table; the last line is one JSON object. Exit 0 pass, 1 leak or errors.

    .venv/bin/python benchmarks/soak.py                 # the 10-minute soak
    .venv/bin/python benchmarks/soak.py --duration 60   # about what tests/perf/test_soak_short.py runs
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import enum
import gc
import json
import os
import platform
import re
import sys
import time
import tracemalloc
import types
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
from simulator.net.nat.natbox import NatBox  # noqa: E402
from simulator.net.transport.sip_proxy import OutboundConnections  # noqa: E402
from simulator.scenario import calls as calls_phase  # noqa: E402
from simulator.spec.loader import load_scenario  # noqa: E402
from simulator.spec.schema import CallPair, LoadPhase, Scenario  # noqa: E402

SHIPPED = ROOT / "scenarios" / "lync2013-scaled-edge-dns-nat.yaml"
NODE = "edge1"
# calls go remote-home (EIM/EIF) -> remote-corp (APDM/APDF): a relayed pair; sign-ins use the other population
# (remote-users), so a sign-in's REGISTER never replaces a call party's registration
CALLER, CALLEE, SIGNIN_POPULATION = "remote-home", "remote-corp", "remote-users"
MAX_CALLS_IN_FLIGHT = 2


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
    calls_ok: int = 0
    cache_entries: int = 0  # entries in the wire layer's bounded parse caches (functools.lru_cache)
    cache_kib: int = 0  # what they hold (cache_bytes)
    nat_sockets: int = 0  # mapped-port UDP sockets the client NAT boxes hold (they go when the binding expires)
    pooled: int = 0  # server-to-server SIP connections the lab's proxies keep for reuse (Edge <-> Director)


@dataclass
class SoakResult:
    baseline: Sample
    samples: list[Sample] = field(default_factory=list)
    final: Sample | None = None
    errors: dict[str, int] = field(default_factory=dict)
    allocs_ok: int = 0
    signins_ok: int = 0
    calls_ok: int = 0
    rss_growth_kib: int = 0
    rss_slope_kib_s: float = 0.0  # least-squares slope of RSS over the samples after warm-up
    rss_slope_first_kib_s: float = 0.0  # ... over the first half of those samples
    rss_slope_second_kib_s: float = 0.0  # ... over the second half (the verdict's rate)
    cache_full_at: float | None = None  # when the wire parse caches stopped growing (None: never)
    problems: list[str] = field(default_factory=list)
    trace_top: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": self.problems, "errors": self.errors, "allocs_ok": self.allocs_ok,
                "signins_ok": self.signins_ok, "calls_ok": self.calls_ok, "rss_growth_kib": self.rss_growth_kib,
                "rss_slope_kib_s": self.rss_slope_kib_s, "rss_slope_first_kib_s": self.rss_slope_first_kib_s,
                "rss_slope_second_kib_s": self.rss_slope_second_kib_s, "cache_full_at": self.cache_full_at,
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


def av_edge(lab: Lab, node: str = NODE) -> AvEdgeServer:
    edge = lab.nodes[node].services["av-external"]
    assert isinstance(edge, AvEdgeServer)
    return edge


def av_edges(lab: Lab) -> list[AvEdgeServer]:
    """Every pool node's A/V Edge (calls may relay through any node; the bench client uses ``NODE``)."""
    return [av_edge(lab, node) for node in lab.nodes if isinstance(lab.nodes[node].services.get("av-external"),
                                                                   AvEdgeServer)]


def nat_boxes(lab: Lab) -> list[NatBox]:
    return [service for service in lab.services.values() if isinstance(service, NatBox)]


def pooled_connections() -> int:
    """Open connections in the SIP proxies' outbound pools (each is 2 fds here: both ends are in the lab)."""
    return sum(len(pool._connections) for pool in gc.get_objects() if isinstance(pool, OutboundConnections))


def nat_udp_timeout(lab: Lab) -> float:
    """The longest UDP binding timeout of the client NATs (0 without any)."""
    return max((client.nat.binding_timeout for client in lab.scenario.clients if client.nat is not None),
               default=0.0)


def wire_caches() -> list[Any]:
    """The bounded parse caches of the sans-I/O wire layer (functools.lru_cache), found by module."""
    found = []
    for name, module in list(sys.modules.items()):
        if not name.startswith("simulator.wire") or module is None:
            continue
        for value in vars(module).values():
            if hasattr(value, "cache_info") and getattr(value, "__module__", "") == name:
                found.append(value)
    return found


def cache_entries(caches: list[Any]) -> int:
    return sum(cache.cache_info().currsize for cache in caches)


_OPAQUE = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, enum.Enum)


def cache_bytes(caches: list[Any]) -> int:
    """Bytes the caches' entries hold (sys.getsizeof over keys, results and what they reach, each object
    once, plus the cache dict and one 56-byte list link per entry); allocator rounding not included."""
    seen: set[int] = set()
    total = 0
    for cache in caches:
        stack: list[Any] = []
        for ref in gc.get_referents(cache):
            if isinstance(ref, dict) and ref is not getattr(cache, "__dict__", None):
                total += sys.getsizeof(ref) + 56 * len(ref)
            elif not isinstance(ref, _OPAQUE) and ref is not None:
                stack.append(ref)
        while stack:
            obj = stack.pop()
            if id(obj) in seen or isinstance(obj, _OPAQUE):
                continue
            seen.add(id(obj))
            total += sys.getsizeof(obj)
            stack.extend(gc.get_referents(obj))
    return total


PREFILLED = ("parse_via", "parse_name_addr", "parse_uri")  # keyed by values with per-transaction tokens
_TOKEN = re.compile(r"[0-9A-Za-z]{6,}")


def prefill_caches(caches: list[Any]) -> int:
    """Fill the PREFILLED caches to their maxsize with variants of what they hold (the last 6+-character
    token of each key replaced by a counter of the same length), so their memory is in the baseline; real
    entries then replace these one for one (LRU). Returns the entries added. Bounded: 4 x maxsize attempts."""
    added = 0
    for cache in caches:
        info = cache.cache_info()
        if cache.__name__ not in PREFILLED or not info.maxsize:
            continue
        keys = [ref for ref in gc.get_referents(cache) if isinstance(ref, str)]
        keys = [key for key in keys if _TOKEN.search(key)]
        for n in range(4 * info.maxsize):
            if not keys or cache.cache_info().currsize >= info.maxsize:
                break
            key = keys[n % len(keys)]
            token = list(_TOKEN.finditer(key))[-1]
            stamp = f"{n:x}"
            if len(stamp) >= len(token.group()):
                continue
            variant = key[:token.end() - len(stamp)] + stamp + key[token.end():]
            try:
                cache(variant)
            except Exception:  # a variant the parser refuses is not cached: try the next one
                continue
        added += cache.cache_info().currsize - info.currsize
    return added


def call_phase(lab: Lab) -> LoadPhase:
    """The shipped scenario's calls phase, narrowed to the CALLER -> CALLEE pair."""
    phase = next(p for p in lab.scenario.load if p.calls is not None)
    assert phase.calls is not None
    spec = phase.calls.model_copy(update={"pairs": [CallPair(caller=CALLER, callee=CALLEE)]})
    return phase.model_copy(update={"calls": spec})


class CallChurn:
    """Calls placed one by one through simulator/scenario/calls.py (SIP through the Access Edges, ICE, MS-TURN
    relay, 2 s of audio, BYE). The parties sign in once and stay signed in (as users do); each call's record is
    judged and dropped, so nothing per call stays in this process."""

    def __init__(self, lab: Lab, timeout: float = 5.0) -> None:
        self.phase = call_phase(lab)
        assert self.phase.calls is not None
        self.report = calls_phase.CallsReport()
        self.runner = calls_phase._Phase(lab, self.phase, self.phase.calls, self.report, timeout)
        self.ok = 0

    async def call(self, index: int) -> str | None:
        """Place call ``index``; None when it connected and completed its media, else what went wrong."""
        try:
            await self.runner.call(index, CALLER, CALLEE)
        except Exception as exc:
            return f"call: {type(exc).__name__}: {str(exc)[:60]}"
        finally:
            record = next((r for r in self.report.records if r.call == index), None)
            self.report.records[:] = [r for r in self.report.records if r.call != index]
        if record is None or record.ice == "FAILED" or record.error or record.ended != calls_phase.COMPLETED:
            what = "no record" if record is None else record.error or record.ended or f"ICE {record.ice}"
            return f"call: {what}"[:80]
        self.ok += 1
        return None

    async def close(self) -> None:
        await self.runner.close()


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


def relay_sockets(edges: list[AvEdgeServer]) -> int:
    return sum(len(edge._binder.relays) for edge in edges)


def halves(samples: list[Sample]) -> tuple[list[Sample], list[Sample]]:
    """The samples split in two halves by time (the middle sample in both)."""
    if not samples:
        return [], []
    middle = (samples[0].t + samples[-1].t) / 2
    return [s for s in samples if s.t <= middle], [s for s in samples if s.t >= middle]


async def soak(lab: Lab, *, duration: float, alloc_rate: float, hold: float, signin_rate: float,
               warmup: float, sample_every: float, rss_tolerance_mib: float, drain: float = 15.0,
               seed: int = 2013, echo: bool = True, trace_frames: int = 0, call_rate: float = 0.0,
               max_slope_kib_s: float | None = None, prefill: bool = True) -> SoakResult:
    """Run the churn on a started lab and judge it (see the module docstring)."""
    edges = av_edges(lab)
    boxes = nat_boxes(lab)
    caches = wire_caches()
    errors: dict[str, int] = {}
    counts = {"signins": 0}
    calls: CallChurn | None = None

    def error(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    answer = await request_mras_credentials(lab, NODE, timeout=5)
    assert answer.credentials is not None
    accounts = user_accounts(lab)
    signers = [i for i, a in enumerate(accounts) if lab.plan.host(a.user).owner == SIGNIN_POPULATION] \
        or list(range(len(accounts)))
    spec = ShardSpec(
        nodes=(Node(lab.external_bind(NODE, "av"), lab.port_map(TURN_UDP_PORT), NODE),),
        credentials=Credentials(answer.credentials.username, answer.credentials.password), dialect="ms-turn",
        transport="udp", concurrency=max(4, int(alloc_rate * (hold + 2) * 2)), rate=alloc_rate,
        duration=duration, hold=hold, timeout=3.0, local_hosts=tuple(a.host for a in accounts[:4]), seed=seed,
    )

    async def sign_in(index: int) -> None:
        try:
            async with remote_user_session(lab, NODE, index=signers[index % len(signers)], timeout=5,
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
    if call_rate > 0:  # one warm-up call by its own parties, signed out again before the baseline
        warm_calls = CallChurn(lab)
        if (problem := await warm_calls.call(0)) is not None:
            error(f"warm-up {problem}")
        await warm_calls.close()
        calls = CallChurn(lab)
    if prefill:
        prefill_caches(caches)
    await asyncio.sleep(0.5)
    gc.collect()

    def sample(t: float, shard: LoadShard | None) -> Sample:
        return Sample(round(t, 1), rss_kib(), open_fds(), relay_sockets(edges),
                      sum(edge.core.allocation_count for edge in edges), shard.result.ok if shard else 0,
                      counts["signins"],
                      sum(errors.values()) + (shard.result.failed + shard.result.release_failed if shard else 0),
                      calls.ok if calls else 0, cache_entries(caches), cache_bytes(caches) // 1024,
                      sum(len(box._public) for box in boxes), pooled_connections())

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
    in_calls: set[asyncio.Task[None]] = set()

    async def one_call(churn: CallChurn, index: int) -> None:
        if (problem := await churn.call(index)) is not None:
            error(problem)

    async def call_loop(churn: CallChurn) -> None:
        index = 1
        while (now := time.monotonic()) - started < duration:
            due = started + index / call_rate
            await asyncio.sleep(max(0.0, due - now))
            if time.monotonic() - started >= duration:
                break
            if len(in_calls) < MAX_CALLS_IN_FLIGHT:  # bounded: slow calls are skipped, not queued
                task = asyncio.create_task(one_call(churn, index))
                in_calls.add(task)
                task.add_done_callback(in_calls.discard)
            else:
                error(f"call: {MAX_CALLS_IN_FLIGHT} in flight, skipped")
            index += 1

    call_task = asyncio.create_task(call_loop(calls)) if calls is not None else None
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
    if call_task is not None and calls is not None:
        await call_task
        if in_calls:
            await asyncio.wait(set(in_calls), timeout=30)
        await calls.close()  # the parties sign out: their TLS connections and NAT bindings go
    shard_result = await asyncio.gather(alloc_task, return_exceptions=True)
    for item in shard_result:
        if isinstance(item, BaseException):
            error(f"allocation client: {item!r}"[:80])
    for reason, n in shard.result.failures.items():
        errors[f"allocation: {reason}"] = errors.get(f"allocation: {reason}", 0) + n
    if shard.result.release_failed:
        errors["allocation release failed"] = shard.result.release_failed
    result.allocs_ok, result.signins_ok = shard.result.ok, counts["signins"]
    result.calls_ok = calls.ok if calls else 0
    result.errors = errors

    # drain: released allocations and closed connections must give their sockets back; a call's UDP mappings
    # on the client NATs (host, srflx, relay client sockets: ~7 a call) go only when their binding times out
    # (RFC 4787 REQ-5, >= 120 s: a NAT cannot know a UDP flow ended), so with calls the drain waits that long
    base = result.baseline

    def own_fds(s: Sample) -> int:  # the NATs' mapped-port sockets and the proxies' pooled connections apart
        return s.fds - s.nat_sockets - 2 * s.pooled

    deadline = time.monotonic() + drain + (nat_udp_timeout(lab) + 5 if calls is not None else 0.0)
    while True:
        gc.collect()
        final = sample(time.monotonic() - started, shard)
        back = own_fds(final) <= own_fds(base) \
            and final.nat_sockets <= (0 if calls is not None else base.nat_sockets) \
            and final.relay_sockets == base.relay_sockets and final.allocations == base.allocations
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
    first_half, second_half = halves(after_warmup)
    result.rss_slope_first_kib_s, result.rss_slope_second_kib_s = rss_slope(first_half), rss_slope(second_half)
    full = [s for s in result.samples if s.cache_entries == result.samples[-1].cache_entries] \
        if result.samples else []
    if result.samples and len(full) < len(result.samples):
        result.cache_full_at = full[0].t if len(full) >= 2 else None
    if max_slope_kib_s is None:
        if result.rss_growth_kib > rss_tolerance_mib * 1024:
            result.problems.append(f"RSS grew {result.rss_growth_kib} KiB after warm-up "
                                   f"(tolerance {rss_tolerance_mib} MiB)")
    elif len(second_half) < 3:
        result.problems.append(f"{len(second_half)} samples in the second half after warm-up: too few to judge the "
                               "RSS slope (lengthen --duration or shorten --sample)")
    elif result.rss_slope_second_kib_s > max_slope_kib_s:
        result.problems.append(f"RSS slope over the second half after warm-up {result.rss_slope_second_kib_s} "
                               f"KiB/s > {max_slope_kib_s} KiB/s")
    if own_fds(final) > own_fds(base):
        result.problems.append(f"open fds {final.fds} > baseline {base.fds} (not counting the client NATs' "
                               f"mapped-port sockets, {final.nat_sockets} and {base.nat_sockets}, and the pooled "
                               f"Edge-Director connections, {final.pooled} and {base.pooled}, 2 fds each)")
    if final.nat_sockets > base.nat_sockets:
        result.problems.append(f"client NAT mapped-port sockets {final.nat_sockets} > baseline {base.nat_sockets}")
    if final.relay_sockets != base.relay_sockets:
        result.problems.append(f"relay sockets {final.relay_sockets} != baseline {base.relay_sockets}")
    if final.allocations != base.allocations:
        result.problems.append(f"allocations {final.allocations} != baseline {base.allocations}")
    if errors:
        result.problems.append(f"{sum(errors.values())} errors: {errors}")
    if (alloc_rate > 0 and result.allocs_ok == 0) or (signin_rate > 0 and result.signins_ok == 0) \
            or (call_rate > 0 and result.calls_ok == 0):
        result.problems.append("no churn happened")
    return result


async def _idle(duration: float, shard: LoadShard) -> Any:
    await asyncio.sleep(duration)
    return shard.result


HEADER = (f"{'t s':>7} {'RSS KiB':>9} {'fds':>5} {'relays':>6} {'allocs':>6} {'allocs ok':>9} {'sign-ins':>8} "
          f"{'calls':>5} {'caches':>6} {'cache KiB':>9} {'NAT socks':>9} {'pooled':>6} {'errors':>6}")


def row(s: Sample) -> str:
    return (f"{s.t:7.1f} {s.rss_kib:9d} {s.fds:5d} {s.relay_sockets:6d} {s.allocations:6d} {s.allocs_ok:9d} "
            f"{s.signins_ok:8d} {s.calls_ok:5d} {s.cache_entries:6d} {s.cache_kib:9d} {s.nat_sockets:9d} "
            f"{s.pooled:6d} {s.errors:6d}")


async def run(args: argparse.Namespace) -> SoakResult:
    ports: tuple[int, int] | None = None
    if args.relay_ports and args.relay_ports != "scenario":
        first, _, last = args.relay_ports.partition("-")
        ports = (int(first), int(last))
    async with Lab(scenario_in(args.prefix, ports)) as lab:
        print(HEADER)
        return await soak(lab, duration=args.duration, alloc_rate=args.alloc_rate, hold=args.hold,
                          signin_rate=args.signin_rate, warmup=args.warmup, sample_every=args.sample,
                          rss_tolerance_mib=args.rss_tolerance_mib, seed=args.seed,
                          trace_frames=args.tracemalloc, call_rate=args.call_rate,
                          max_slope_kib_s=None if args.max_slope is None or args.max_slope < 0 else args.max_slope,
                          prefill=not args.no_prefill)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--alloc-rate", type=float, default=20.0, help="allocations started per second")
    parser.add_argument("--hold", type=float, default=2.0, help="seconds each allocation is held")
    parser.add_argument("--signin-rate", type=float, default=2.0, help="sign-ins per second")
    parser.add_argument("--call-rate", type=float, default=0.2, help="calls placed per second (remote-home -> "
                        f"remote-corp, relayed, 2 s of audio; at most {MAX_CALLS_IN_FLIGHT} in flight)")
    parser.add_argument("--warmup", type=float, default=None, help="seconds of warm-up (default: 20%% of duration)")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--rss-tolerance-mib", type=float, default=8.0,
                        help="with --max-slope -1: the most RSS may grow after warm-up")
    parser.add_argument("--no-prefill", action="store_true",
                        help="do not fill the SIP parse caches (" + ", ".join(PREFILLED) + ") to their size "
                             "before the baseline: their filling then shows as RSS growth")
    parser.add_argument("--max-slope", type=float, default=5.0, metavar="KIB_S",
                        help="the most RSS may grow per second over the second half of the run after warm-up "
                             "(least squares); -1: judge total growth against --rss-tolerance-mib instead")
    parser.add_argument("--prefix", default="127.87", help="the lab's loopback /16")
    parser.add_argument("--seed", type=int, default=2013)
    parser.add_argument("--relay-ports", metavar="FIRST-LAST", default="50000-50999",
                        help="the A/V Edges' relay range (default: 50000-50999, 1,000 ports). Per-port state (the "
                        "bench client's per-port records, the port pool's FIFOs) is bounded by the range and fills "
                        "as ports are used for the first time: at 20 allocations/s the scenario's 10,000 ports "
                        "(50000-59999) go round once in 500 s, most of a 10-minute soak, 1,000 ports within the "
                        "warm-up; 'scenario' keeps the scenario's range")
    parser.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES",
                        help="trace allocations (FRAMES deep) from the baseline; print the 15 sites that grew "
                             "most between the first sample after warm-up and the end (slow)")
    args = parser.parse_args(argv)
    if not 5 <= args.duration <= 7200 or not 0 <= args.alloc_rate <= 500 or not 0 <= args.signin_rate <= 50 \
            or not 0 <= args.call_rate <= 2:
        parser.error("--duration 5..7200, --alloc-rate 0..500, --signin-rate 0..50, --call-rate 0..2")
    if args.warmup is None:
        args.warmup = args.duration * 0.2
    began = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    try:
        result = asyncio.run(run(args))
    except OSError as error:  # the environment, not the soak: one line and its own exit code
        print(f"soak: the lab in {args.prefix}.0.0/16 stopped on the host: {error} (another run on this prefix? "
              "pass another --prefix)", file=sys.stderr)
        return 3
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
    return 0 if result.ok else 1  # 3: the host refused the lab (above)


if __name__ == "__main__":
    sys.exit(main())
