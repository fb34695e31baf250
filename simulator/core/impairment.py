"""Link impairment, sans-I/O: seeded loss, delay, jitter and reorder for one direction of a path.

Theory of operation
-------------------
An :class:`Impairment` says what one direction of a link does to packets, in the way Linux
``tc netem`` words it (``loss 2% delay 40ms 10ms reorder 1%``):

* **loss** — each packet is dropped with this probability, independently (netem ``loss random``).
* **delay_ms / jitter_ms** — a packet that survives is delivered ``delay + U(-jitter, +jitter)`` ms
  after it arrived, drawn independently per packet (uniform, as netem without a distribution table),
  never earlier than its arrival. Independent draws let a packet overtake the one before it when the
  jitter exceeds half the gap between them, as on netem.
* **reorder** — with this probability a packet skips the delay and jitter and goes out at once, so it
  overtakes whatever is still in flight (netem ``reorder``: it needs a delay to have any effect).

:class:`ImpairedLink` makes the decision: ``decide(now)`` returns ``None`` (drop) or the time the packet
is due (``now`` for "at once"). It draws from the ``random.Random`` it was given, so the same seed and
the same packet order give the same drops and delays. :class:`DelayLine` holds the packets in flight:
``push(due, item)``, ``pop_due(now)`` in due order, ``next_timer()`` — the shell arms one timer on it.

:class:`PathImpairment` pairs an inbound and an outbound :class:`Impairment` for a NAT box (outbound:
inside → outside; inbound: outside → inside).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Impairment:
    """What one direction of a link does to packets (netem-like; see the module docstring)."""

    loss: float = 0.0  # probability, 0..1
    delay_ms: float = 0.0
    jitter_ms: float = 0.0  # uniform ±jitter_ms around delay_ms
    reorder: float = 0.0  # probability that a packet skips the delay

    def __post_init__(self) -> None:
        if not 0.0 <= self.loss <= 1.0 or not 0.0 <= self.reorder <= 1.0:
            raise ValueError("loss and reorder are probabilities in 0..1")
        if self.delay_ms < 0 or self.jitter_ms < 0:
            raise ValueError("delay_ms and jitter_ms are not negative")

    @property
    def active(self) -> bool:
        """Whether this does anything at all (a box skips the impairment path when not)."""
        return bool(self.loss or self.delay_ms or self.jitter_ms or self.reorder)


NO_IMPAIRMENT = Impairment()


@dataclass(frozen=True, slots=True)
class PathImpairment:
    """Both directions of a NAT box: ``outbound`` inside → outside, ``inbound`` outside → inside."""

    inbound: Impairment = NO_IMPAIRMENT
    outbound: Impairment = NO_IMPAIRMENT

    @property
    def active(self) -> bool:
        return self.inbound.active or self.outbound.active


@dataclass(slots=True)
class ImpairmentCounters:
    """What a link did: packets seen, dropped, delayed, sent ahead (reordered)."""

    packets: int = 0
    dropped: int = 0
    delayed: int = 0
    reordered: int = 0


class ImpairedLink:
    """One direction's decisions: ``decide(now)`` → ``None`` (drop) or the due time."""

    def __init__(self, impairment: Impairment, rng: random.Random) -> None:
        self.impairment = impairment
        self.counters = ImpairmentCounters()
        self._rng = rng
        self._loss = impairment.loss
        self._reorder = impairment.reorder
        self._delay = impairment.delay_ms / 1000.0
        self._jitter = impairment.jitter_ms / 1000.0

    def decide(self, now: float) -> float | None:
        """Drop (``None``) or the time at which to deliver a packet that arrived at ``now``."""
        counters = self.counters
        counters.packets += 1
        rng = self._rng
        if self._loss and rng.random() < self._loss:
            counters.dropped += 1
            return None
        if self._reorder and rng.random() < self._reorder:
            counters.reordered += 1  # netem reorder: this one goes out at once, ahead of those in flight
            return now
        delay = self._delay
        if self._jitter:
            delay += rng.uniform(-self._jitter, self._jitter)
        if delay <= 0.0:
            return now
        counters.delayed += 1
        return now + delay


@dataclass(order=True, slots=True)
class _InFlight(Generic[T]):
    due: float
    serial: int
    item: T = field(compare=False)


class DelayLine(Generic[T]):
    """Items in flight, released in due order (ties in push order)."""

    def __init__(self) -> None:
        self._heap: list[_InFlight[T]] = []
        self._serial = 0

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, due: float, item: T) -> None:
        self._serial += 1
        heapq.heappush(self._heap, _InFlight(due, self._serial, item))

    def pop_due(self, now: float) -> Iterator[T]:
        """Yield, and remove, every item due at or before ``now``."""
        heap = self._heap
        while heap and heap[0].due <= now:
            yield heapq.heappop(heap).item

    def next_timer(self) -> float | None:
        """The earliest due time, or ``None`` when nothing is in flight."""
        return self._heap[0].due if self._heap else None

    def clear(self) -> None:
        self._heap.clear()
