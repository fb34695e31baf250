"""A shortened churn soak (benchmarks/soak.py) through the embedded lab: ~40 s of MS-TURN allocations
(bench client, MRAS credentials) and TLS sign-ins on edge1.

Asserted (issue 14, "Done when"): after the churn and a short drain, open file descriptors, relay sockets
and allocations are back at their baseline; 0 errors; RSS after a 15 s warm-up grew by less than 6 MiB
(measured: ~1-2 MiB over 40 s on a 2-core VM, mostly allocator noise; a leak of one relay socket object
or one TLS session per operation would be ~1,000 operations x >= 2 KiB and trips it), and its growth RATE
(least-squares slope over the samples after warm-up) stays under RSS_SLOPE_KIB_S.

The slope bound is loose on purpose: in the first minute the process fills bounded state (the SIP parse
caches, 4,096 entries each; the A/V Edge's response cache and port FIFO; pymalloc arenas): measured 45, 60
and 101 KiB/s in this 40 s window with the known leaks fixed (2-core VM shared with other jobs;
helpers/leak/NOTES.md). So 40 s cannot tell a 22 KiB/s leak from warm-up; this bound only catches gross ones
(an idle TLS session, ~40 KiB, kept per sign-in = 80 KiB/s, plus one relay socket object per allocation).
The slow per-sign-in leaks the 10-minute soak found (NAT bindings, Digest nonces) are pinned by
tests/perf/test_state_release.py; the 10-minute rate is benchmarks/soak.py's job.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from simulator.lab.topology import Lab
from simulator.spec.schema import Scenario

ROOT = Path(__file__).resolve().parents[2]
RSS_SLOPE_KIB_S = 160.0


def _soak_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("edgesim_bench_soak", ROOT / "benchmarks" / "soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def test_short_churn_soak_returns_to_baseline(shipped_scenario: Scenario) -> None:
    soak = _soak_module()
    async with Lab(shipped_scenario) as lab:
        result = await soak.soak(lab, duration=40.0, alloc_rate=20.0, hold=2.0, signin_rate=2.0, warmup=15.0,
                                 sample_every=5.0, rss_tolerance_mib=6.0, echo=False)
    table = "\n".join(soak.row(s) for s in [result.baseline, *result.samples, result.final])
    assert result.allocs_ok >= 600 and result.signins_ok >= 60, table  # the churn really ran
    assert result.errors == {}, table
    assert result.final.fds <= result.baseline.fds, table
    assert result.final.relay_sockets == result.baseline.relay_sockets == 0, table
    assert result.final.allocations == result.baseline.allocations == 0, table
    assert result.rss_growth_kib < 6 * 1024, table
    assert result.rss_slope_kib_s < RSS_SLOPE_KIB_S, (result.rss_slope_kib_s, table)
    assert result.ok, result.problems
