"""Relay port allocator benchmark: ops/s and time to exhaust 50000–59999 under churn.

    .venv/bin/python benchmarks/ports.py [--seed 2013] [--runs 5] [--ops 200000]

Figures (median of ``--runs``):
* steady-state ops/s of allocate + release at half occupancy (plain, EVEN-PORT, EVEN-PORT R=1 + redeem);
* time to exhaust the default 10,000-port range under churn (allocate 2, release 1 random held port
  until 508), and the number of ports held at that point (must be exactly 10,000);
* the same range at 90 % occupancy with a pion-style "random port + 10 retries" picker, measured
  here for contrast: its spurious-failure rate, against 0 for the FIFO pool.
The last line is a JSON object with every figure and the seed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simulator.core.ports import InsufficientCapacity, PortPool

RELAY_IP = "203.0.113.10"


def new_pool(seed: int) -> PortPool:
    return PortPool(RELAY_IP, "udp", random.Random(seed))


def steady_ops_per_s(seed: int, ops: int, mode: str) -> float:
    """Allocate + release ``ops`` times at half occupancy; one op = one allocate or one release."""
    pool = new_pool(seed)
    # half of the ports (EVEN-PORT: half of the even ports) stay held; each step swaps one
    held = [pool.allocate(0.0, even_port=mode == "even").port for _ in range(pool.size // (4 if mode == "even" else 2))]
    start = time.perf_counter()
    now = 0.0
    for i in range(ops // 2):
        if mode == "plain":
            port = pool.allocate(now).port
            pool.release(held[i % len(held)], now)
            held[i % len(held)] = port
        elif mode == "even":
            port = pool.allocate(now, even_port=True).port
            pool.release(held[i % len(held)], now)
            held[i % len(held)] = port
        else:  # EVEN-PORT R=1, then the token is redeemed and both ports released
            lease = pool.allocate(now, even_port=True, reserve_next=True)
            assert lease.reservation_token is not None
            pool.allocate(now, reservation_token=lease.reservation_token)
            pool.release(lease.port, now)
            pool.release(lease.port + 1, now)
    elapsed = time.perf_counter() - start
    operations = ops // 2 * (4 if mode == "even_reserve" else 2)
    return operations / elapsed


def exhaust_under_churn(seed: int) -> tuple[float, int, int]:
    """Allocate two, release one random held port, until 508. Return (seconds, held, operations).

    ``operations`` counts every allocate (including the refused one) and every release.
    """
    pool = new_pool(seed)
    chooser = random.Random(seed + 1)
    held: list[int] = []
    operations = 0
    start = time.perf_counter()
    for _ in range(pool.size * 3):  # bounded: the range fills after ~2 × size operations
        try:
            for _ in range(2):
                operations += 1
                held.append(pool.allocate(0.0).port)
        except InsufficientCapacity:
            break
        index = chooser.randrange(len(held))
        held[index], held[-1] = held[-1], held[index]
        pool.release(held.pop(), 0.0)
        operations += 1
    return time.perf_counter() - start, len(held), operations


def pion_style_failure_rate(seed: int, occupancy: float, attempts: int) -> float:
    """Share of Allocates a random-port + 10-retries picker refuses at ``occupancy`` (pion's default)."""
    rng = random.Random(seed)
    first, size = 50000, 10000
    in_use = set(rng.sample(range(first, first + size), int(size * occupancy)))
    failures = 0
    for _ in range(attempts):
        # each attempt is answered and released at once, so the occupancy stays where it is
        if all(rng.randrange(first, first + size) in in_use for _ in range(10)):
            failures += 1
    return failures / attempts


def fifo_failure_rate(seed: int, occupancy: float, attempts: int) -> float:
    pool = new_pool(seed)
    for _ in range(int(pool.size * occupancy)):
        pool.allocate(0.0)
    failures = 0
    for _ in range(attempts):
        try:
            pool.release(pool.allocate(0.0).port, 0.0)
        except InsufficientCapacity:
            failures += 1
    return failures / attempts


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=2013)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--ops", type=int, default=200_000)
    args = parser.parse_args()
    seeds = [args.seed + run for run in range(args.runs)]

    construct = statistics.median(_timed(lambda s=s: new_pool(s)) for s in seeds)
    plain = statistics.median(steady_ops_per_s(s, args.ops, "plain") for s in seeds)
    even = statistics.median(steady_ops_per_s(s, args.ops, "even") for s in seeds)
    even_reserve = statistics.median(steady_ops_per_s(s, args.ops, "even_reserve") for s in seeds)
    churn = [exhaust_under_churn(s) for s in seeds]
    exhaust_s = statistics.median(c[0] for c in churn)
    held_at_508 = sorted({c[1] for c in churn})
    churn_ops = statistics.median(c[2] for c in churn)
    pion_90 = pion_style_failure_rate(args.seed, 0.9, 20_000)
    fifo_90 = fifo_failure_rate(args.seed, 0.9, 20_000)

    print(f"seed {args.seed}, runs {args.runs}, ops/run {args.ops}")
    print(f"python {platform.python_version()}, nproc {os.cpu_count()}, cpu {cpu_model()}")
    print(f"pool construction (10,000 ports, shuffle + queues): {construct * 1e3:.1f} ms")
    print(f"allocate+release, plain:             {plain:,.0f} ops/s")
    print(f"allocate+release, EVEN-PORT:         {even:,.0f} ops/s")
    print(f"EVEN-PORT R=1 + redeem + 2 releases: {even_reserve:,.0f} ops/s")
    print(
        f"exhaust 50000-59999 under churn:     {exhaust_s * 1e3:.1f} ms, {churn_ops:,.0f} ops,"
        f" held at 508: {held_at_508}"
    )
    print(f"at 90% occupancy, Allocates refused: pion-style random+10 retries {pion_90:.1%}, FIFO pool {fifo_90:.1%}")
    print(
        json.dumps(
            {
                "benchmark": "ports",
                "seed": args.seed,
                "runs": args.runs,
                "ops_per_run": args.ops,
                "construct_ms": round(construct * 1e3, 2),
                "plain_ops_per_s": round(plain),
                "even_port_ops_per_s": round(even),
                "even_reserve_ops_per_s": round(even_reserve),
                "exhaust_under_churn_ms": round(exhaust_s * 1e3, 2),
                "exhaust_under_churn_ops": churn_ops,
                "held_at_508": held_at_508,
                "pion_style_refusal_rate_90pct": round(pion_90, 4),
                "fifo_refusal_rate_90pct": fifo_90,
            }
        )
    )


def _timed(function: object) -> float:
    assert callable(function)
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
