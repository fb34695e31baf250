"""Per-interval samples of a load run, read from the lab's own counters (SIPp's ``-trace_stat`` idea).

While the load phases run, :class:`LoadSampler` reads, once per interval, what the lab already counts — nothing
is added per message:

* the Front End's REGISTER requests, its 200 OKs to them (``registered``) and its digest failures
  (``auth-failed``): every remote user's sign-in crosses an Access Edge to it;
* each pool node's Access Edge open client connections (its ``flows``): the users on that node now.

:meth:`LoadSampler.intervals` turns the samples into one row per interval with, as SIPp's statistics file
does, a per-period (``_period``) and a cumulative (``_cumulative``) column for each counter, plus the
connection gauges at the interval's end. Start it next to ``run_load`` (``edgesim run`` does)::

    sampler = LoadSampler(lab)
    task = asyncio.create_task(sampler.run())
    outcome = await run_load(lab, timeout)
    await sampler.stop(task)
    rows = sampler.intervals()
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

from simulator.lab.topology import Lab
from simulator.net.edge.access_edge import AccessEdge
from simulator.net.peers.frontend import FrontEndServer

# (column stem, Front End counter) — each becomes ``<stem>_period`` and ``<stem>_cumulative``.
COUNTERS: tuple[tuple[str, str], ...] = (
    ("sign_in_attempts", "REGISTER"),
    ("signed_in", "registered"),
    ("auth_failed", "auth-failed"),
)
MAX_SAMPLES = 3600  # an hour of one-second samples: the longest phase a scenario may have


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # seconds since the sampler started
    counters: dict[str, int]
    connections: dict[str, int]  # node → open client connections on its Access Edge


class LoadSampler:
    """Samples the lab's counters every ``interval`` seconds (bounded by :data:`MAX_SAMPLES`)."""

    def __init__(self, lab: Lab, interval: float = 1.0) -> None:
        if interval <= 0:
            raise ValueError("the sampling interval must be above 0")
        self.lab = lab
        self.interval = interval
        self.samples: list[Sample] = []
        self._start = 0.0
        self._baseline: dict[str, int] = {}

    def _frontends(self) -> list[FrontEndServer]:
        return [service for service in self.lab.services.values() if isinstance(service, FrontEndServer)]

    def _read(self) -> tuple[dict[str, int], dict[str, int]]:
        counters = dict.fromkeys((stem for stem, _ in COUNTERS), 0)
        for frontend in self._frontends():
            for stem, key in COUNTERS:
                counters[stem] += frontend.counters.get(key, 0)
        connections: dict[str, int] = {}
        for name in (node.name for node in self.lab.scenario.edge_pool.nodes):
            node = self.lab.nodes.get(name)
            edge = node.services.get("access-edge") if node is not None else None
            connections[name] = len(edge.flows) if isinstance(edge, AccessEdge) else 0
        return counters, connections

    def sample(self) -> Sample:
        """Take one sample now (the first one sets the baseline: counts from before the load do not count)."""
        now = asyncio.get_running_loop().time()
        counters, connections = self._read()
        if not self.samples:
            self._start, self._baseline = now, dict(counters)
        taken = Sample(round(now - self._start, 3), {k: v - self._baseline.get(k, 0) for k, v in counters.items()},
                       connections)
        self.samples.append(taken)
        return taken

    async def run(self) -> None:
        """Sample now and then every interval until cancelled (or :data:`MAX_SAMPLES` samples)."""
        loop = asyncio.get_running_loop()
        self.sample()
        while len(self.samples) < MAX_SAMPLES:
            next_at = self._start + len(self.samples) * self.interval  # no drift: fixed interval boundaries
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            self.sample()

    async def stop(self, task: asyncio.Task[None]) -> None:
        """End :meth:`run` and take the closing sample (the last, possibly shorter, interval)."""
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if self.samples and asyncio.get_running_loop().time() - self._start > self.samples[-1].at + 0.05:
            self.sample()

    def intervals(self) -> list[dict[str, Any]]:
        """One row per interval between consecutive samples: period and cumulative counts, rates, gauges."""
        rows: list[dict[str, Any]] = []
        for index, (before, after) in enumerate(zip(self.samples, self.samples[1:], strict=False), start=1):
            span = max(after.at - before.at, 1e-9)
            row: dict[str, Any] = {"interval": index, "start_s": before.at, "end_s": after.at}
            for stem, _ in COUNTERS:
                row[f"{stem}_period"] = after.counters[stem] - before.counters[stem]
                row[f"{stem}_cumulative"] = after.counters[stem]
            row["sign_in_rate_period"] = round(row["signed_in_period"] / span, 3)
            row["sign_in_rate_cumulative"] = round(after.counters["signed_in"] / max(after.at, 1e-9), 3)
            for node, count in after.connections.items():
                row[f"connections_{node}"] = count
            rows.append(row)
        return rows
