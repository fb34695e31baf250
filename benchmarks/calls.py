"""Concurrent audio calls in one process: ICE time to connected per pair type, node spread, media loss, capacity.

Runs the calls phase of ``scenarios/calls-200.yaml`` (or the same scenario rebuilt with ``--calls N``,
``--duration S``, ``--rate R``) in this process — the lab (DNS, 2-node Edge pool, Director, Front End), the NAT
boxes and every caller and callee — and prints:

* ICE time to connected (the caller's, HDR) p50/p99 per selected pair type: direct server-reflexive
  (srflx on both ends), direct through a peer-reflexive candidate (prflx on either end: ADM/APDM mappings
  towards the peer are not the one the Edge saw, RFC 4787 §4.1), relay;
* the node spread of the relayed legs (which A/V Edge DNS load balancing gave each relayed side);
* media loss over the calls that completed (RFC 3550 A.3: lost / expected), packets, RTT, jitter;
* this process's CPU (``/proc/self/stat`` utime + stime) over the calls' own time, in cores, and the event
  loop's worst lag.

``--capacity``: steps the number of concurrent calls up (100, 200, 300, 400, 600, 800 …) until the loss reaches
0.1 % or the process uses ~1 core (``--cpu-limit``), ``--runs`` runs a step (median), and prints a table.
The users are signed in before the calls (``sign_in_first``) so the figures are about calls, not TLS sign-ins.
Every run is bounded (count, duration, timeouts). Usage:

    .venv/bin/python benchmarks/calls.py [--calls N] [--duration S] [--rate R] [--capacity] [--runs R]
                                         [--signalling sip|in-process] [--json] [--profile FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simulator.lab.topology import Lab
from simulator.scenario.calls import check_calls
from simulator.scenario.load import run_load
from simulator.spec.loader import load_scenario
from simulator.spec.schema import Scenario

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "scenarios" / "calls-200.yaml"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> float:
    """utime + stime of this process (/proc/self/stat fields 14 and 15), seconds."""
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def pair_class(record: dict[str, Any]) -> str | None:
    pair = record["selected_pair"]
    types = {pair["local_type"], pair["remote_type"]}
    if record["ice"] == "FAILED" or None in types:
        return None
    if "relay" in types:
        return "relay"
    if "prflx" in types:
        return "direct prflx"
    if types == {"srflx"}:
        return "direct srflx"
    return "direct " + "/".join(sorted(str(t) for t in types))


def build(calls: int | None, duration: float | None, rate: float | None, signalling: str | None,
          prefix: str | None, mix: str = "mixed") -> Scenario:
    """The shipped calls-200 scenario, resized: enough users per population that each is in one call.
    ``mix="direct"``: only the pairs RFC 4787 lets connect directly (an EIM side, or ADM/ADF on both)."""
    base = load_scenario(SCENARIO)
    data = base.model_dump(mode="json", exclude_none=True)
    phase = data["load"][0]
    spec = phase["calls"]
    if mix == "direct":
        spec["pairs"] = [p for p in dict.fromkeys((p["caller"], p["callee"]) for p in spec["pairs"])
                         if "eim" in (p[0] + p[1]) or (p[0].endswith("adm") and p[1].endswith("adm")
                                                       and "apdm" not in p[0] + p[1])]
        spec["pairs"] = [{"caller": caller, "callee": callee} for caller, callee in spec["pairs"]]
        spec.pop("expect", None)
    if calls is not None:
        share: dict[str, int] = {}
        for pair in spec["pairs"]:
            for name in (pair.get("caller") or phase["clients"], pair["callee"]):
                share[name] = share.get(name, 0) + 1
        for client in data["clients"]:
            if client["name"] in share:
                client["count"] = -(-calls * share[client["name"]] // len(spec["pairs"])) + 2
        spec["count"] = calls
    if rate is not None:
        phase["rate"] = rate
    phase["duration"] = 2 * spec["count"] / phase["rate"] + 5.0  # slack: a busy loop starts calls late
    if duration is not None:
        spec["call_duration"] = duration
    if signalling is not None:
        spec["signalling"] = signalling
    spec["sign_in_first"] = True
    data["rules"] = ["E6"]
    if prefix is not None:
        data["lab"]["loopback_prefix"] = prefix
    return Scenario.model_validate(data)


async def _lag_probe(worst: list[float]) -> None:
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(0.05)
        worst[0] = max(worst[0], loop.time() - before - 0.05)


async def run_once(scenario: Scenario, profile: cProfile.Profile | None = None) -> dict[str, Any]:
    async with Lab(scenario) as lab:
        worst = [0.0]
        probe = asyncio.create_task(_lag_probe(worst))
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        if profile is not None:
            profile.enable()
        try:
            report = await run_load(lab)
        finally:
            if profile is not None:
                profile.disable()
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe
        cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
    nodes = [node.name for node in scenario.edge_pool.nodes]
    calls = report.calls.to_dict(nodes)
    by_class: dict[str, list[float]] = {}
    for record in calls["records"]:
        kind = pair_class(record)
        if kind is not None and record["time_to_connected_ms"] is not None:
            by_class.setdefault(kind, []).append(record["time_to_connected_ms"])
    sign_in = next((float(n.split("(")[1].split(" s")[0]) for n in calls["notes"] if "signed in before" in n), 0.0)
    legs = calls["relayed_legs"]
    total_legs = sum(legs.values())
    return {
        "calls": calls["calls"], "connected": calls["connected"], "ended": calls["ended"],
        "failures": calls["failures"], "first_error": next((r["error"] for r in calls["records"] if r["error"]), None),
        "ttc": {kind: {"n": len(v), "p50_ms": round(_pct(v, 50), 1), "p99_ms": round(_pct(v, 99), 1)}
                for kind, v in sorted(by_class.items())},
        "relayed_legs": legs,
        "relay_share": {node: round(count / total_legs, 3) if total_legs else None for node, count in legs.items()},
        "loss": calls["media_completed"]["PacketLossRate"], "packets": calls["media_completed"]["PacketsSent"],
        "rtt_ms": calls["media"]["RoundTripLatencyInMs"], "jitter_ms": calls["media"]["AverageJitterInMs"],
        "wall_s": round(wall, 2), "sign_in_s": sign_in,
        # CPU over the whole run (sign-in included) divided by the wall time: cores used on average
        "cores": round(cpu / wall, 3) if wall else None,
        "loop_lag_max_ms": round(worst[0] * 1000, 1),
        "problems": check_calls(report.calls, scenario),
    }


def _pct(values: list[float], percentile: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(percentile / 100 * len(ordered) + 0.5) - 1))]


def show(result: dict[str, Any]) -> None:
    print(f"calls {result['connected']}/{result['calls']} connected, ended {result['ended']}, failures "
          f"{result['failures']} {result['first_error'] or ''}")
    print(f"{'pair type':<14} {'n':>4} {'ttc p50 ms':>11} {'ttc p99 ms':>11}")
    for kind, row in result["ttc"].items():
        print(f"{kind:<14} {row['n']:>4} {row['p50_ms']:>11.1f} {row['p99_ms']:>11.1f}")
    print(f"relayed legs {result['relayed_legs']} share {result['relay_share']}")
    print(f"media loss {result['loss']:.4%} of {result['packets']} packets, RTT {result['rtt_ms']} ms, "
          f"jitter {result['jitter_ms']} ms; wall {result['wall_s']} s (sign-in {result['sign_in_s']} s), "
          f"{result['cores']} cores, loop lag max {result['loop_lag_max_ms']} ms")
    for problem in result["problems"]:
        print(f"  expectation not met: {problem}")


def _runner(loop: str) -> Any:
    if loop == "uvloop":
        import uvloop

        return uvloop.run
    return asyncio.run


run: Any = asyncio.run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=None, help="calls (default: the scenario's)")
    parser.add_argument("--duration", type=float, default=None, help="seconds of audio per call")
    parser.add_argument("--rate", type=float, default=None, help="calls started per second")
    parser.add_argument("--signalling", choices=("sip", "in-process"), default=None)
    parser.add_argument("--mix", choices=("mixed", "direct"), default="mixed",
                        help="mixed: the scenario's 9 NAT pairs (half relayed); direct: only direct-path pairs")
    parser.add_argument("--capacity", action="store_true", help="step the call count up (100, 200, 300, 400, 600 …)")
    parser.add_argument("--steps", default="100,200,300,400,600,800,1000")
    parser.add_argument("--runs", type=int, default=1, help="runs per step (median)")
    parser.add_argument("--loss-limit", type=float, default=0.001)
    parser.add_argument("--cpu-limit", type=float, default=0.95, help="stop once the process uses this many cores")
    parser.add_argument("--prefix", default="127.84", help="lab loopback prefix")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                        help="event loop (edgesim run uses uvloop)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--profile", default=None, help="write a cProfile of the (first) run here")
    args = parser.parse_args()
    global run
    run = _runner(args.loop)
    if not args.capacity:
        profile = cProfile.Profile() if args.profile else None
        result = run(run_once(build(args.calls, args.duration, args.rate, args.signalling, args.prefix, args.mix),
                                      profile))
        if profile is not None:
            profile.dump_stats(args.profile)
        print(json.dumps(result) if args.json else "", end="\n" if args.json else "")
        if not args.json:
            show(result)
        return 1 if result["problems"] else 0
    rows = []
    print(f"{'calls':>6} {'connected':>9} {'loss %':>8} {'cores':>6} {'lag ms':>7} {'relay p50':>9} "
          f"{'srflx p50':>9} {'spread':>13}")
    for step in (int(s) for s in args.steps.split(",")):
        results = [run(run_once(build(step, args.duration, args.rate, args.signalling, args.prefix, args.mix)))
                   for _ in range(args.runs)]
        row = {"calls": step, "connected": statistics.median(r["connected"] for r in results),
               "loss": statistics.median(r["loss"] for r in results),
               "cores": statistics.median(r["cores"] or 0 for r in results),
               "lag_ms": statistics.median(r["loop_lag_max_ms"] for r in results),
               "relay_p50": statistics.median(r["ttc"].get("relay", {}).get("p50_ms", 0) for r in results),
               "srflx_p50": statistics.median(r["ttc"].get("direct srflx", {}).get("p50_ms", 0) for r in results),
               "spread": results[len(results) // 2]["relay_share"]}
        rows.append(row)
        spread = "/".join(f"{v:.2f}" for v in row["spread"].values() if v is not None)
        print(f"{step:>6} {row['connected']:>9} {row['loss'] * 100:>8.3f} {row['cores']:>6.2f} {row['lag_ms']:>7.0f} "
              f"{row['relay_p50']:>9.0f} {row['srflx_p50']:>9.0f} {spread:>13}", flush=True)
        if row["loss"] >= args.loss_limit or row["cores"] >= args.cpu_limit or row["connected"] < step:
            break
    sustained = [r["calls"] for r in rows
                 if r["loss"] < args.loss_limit and r["cores"] < args.cpu_limit and r["connected"] == r["calls"]]
    print(f"largest step with every call connected, loss < {args.loss_limit:.1%}, under {args.cpu_limit} core: "
          f"{max(sustained) if sustained else None}")
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
