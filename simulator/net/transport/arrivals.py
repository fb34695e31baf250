"""What reached this process's listeners: the serving side's half of a firewall verdict.

In firewall lab mode a serving side (``edgesim serve edge|internal|external``) records, for each flow that
reached one of its listeners, the listener, the transport, its own address and port and the sender's, and the
time; ``report merge`` compares that with what the probing side saw to say *where* a failed flow died (never
arrived, arrived but the answer was lost, arrived from a rewritten source, arrived on a port outside the
range). A TCP connection is one arrival; for UDP the first datagram from each source to each local port is.

Recording is off unless a Lab turns it on (:func:`start_recording`). Listeners read :func:`recorder` once, at
start; with recording off the embedded lab and the benchmarks pay one ``is None`` test per accepted connection,
and the A/V Edge's 3478 listener one per datagram (an attribute it already holds), nothing else.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

MAX_ARRIVALS = 100_000


@dataclass(slots=True)
class ArrivalLog:
    """Bounded: past ``limit`` arrivals only the count grows (``dropped``)."""

    limit: int = MAX_ARRIVALS
    entries: list[dict[str, Any]] = field(default_factory=list)
    dropped: int = 0
    _seen_udp: set[tuple[str, int, str, int]] = field(default_factory=set)

    def tcp(self, listener: str, local: tuple[str, int], remote: tuple[str, int]) -> None:
        self._add(listener, "tcp", local, remote)

    def udp(self, listener: str, local: tuple[str, int], remote: tuple[str, int]) -> None:
        key = (local[0], local[1], remote[0], remote[1])
        if key in self._seen_udp:
            return
        if len(self._seen_udp) < self.limit:
            self._seen_udp.add(key)
        self._add(listener, "udp", local, remote)

    def _add(self, listener: str, transport: str, local: tuple[str, int], remote: tuple[str, int]) -> None:
        if len(self.entries) >= self.limit:
            self.dropped += 1
            return
        self.entries.append({"listener": listener, "transport": transport, "local": f"{local[0]}:{local[1]}",
                             "remote": f"{remote[0]}:{remote[1]}", "at": round(time.time(), 6)})


_current: ArrivalLog | None = None


def start_recording(log: ArrivalLog) -> None:
    global _current
    _current = log


def stop_recording() -> None:
    global _current
    _current = None


def recorder() -> ArrivalLog | None:
    """The log listeners write to, or None when nothing records (the embedded lab)."""
    return _current
