"""Relay port allocator: one shuffled free-list FIFO per (relay address, transport).

Theory of operation
-------------------
A :class:`PortPool` owns every port of one range (default 50000–59999, the Lync A/V Edge relay range)
on one (relay address, transport). At creation the ports are shuffled once with the seeded
``random.Random`` and queued. ``allocate`` takes the head of the queue, and a port that becomes free
again goes to the tail. So the first ``size`` allocations come out in a uniformly random order, and a
freed port is reused only after every port that was free before it. This is coturn's
``turn_ports.c`` design (research-turn.md §3, §5.1). There is no random probing. The pool never
refuses while a port is free, and it exhausts at exactly ``size`` allocations with
:class:`InsufficientCapacity` (508). pion's "random port + 10 retries" fails spuriously near full
occupancy, and this design avoids that.

Every port is in one :class:`PortState`. The moves between states are the table ``_TRANSITIONS``:

    FREE ──ALLOCATE──▶ ALLOCATED ──RELEASE──▶ LINGERING ──LINGER_ELAPSED──▶ FREE
    FREE ──RESERVE───▶ RESERVED  ──REDEEM───▶ ALLOCATED
    ALLOCATED, RESERVED ──BIND_FAILED──▶ FREE              (the OS refused the port: to the tail, counted)
    RESERVED ──RESERVATION_ENDED──▶ FREE                   (token expired, or its allocation's bind failed)

Time is passed in as ``now``, and the pool never reads a clock. Lingering ports and reservations become
free when an operation (or :meth:`PortPool.expire`) is called with ``now`` at or past their deadline.
``now`` must not go backwards. :meth:`PortPool.next_timer` tells the shell when to call ``expire``. The
shell needs that only to keep the free-port metric current; allocation is correct without it.

Queues and complexity
---------------------
A free port sits in up to three FIFO deques, each entry stamped with the sequence number the port got
when it last became free:

* ``_fifo``: every free port. Plain ``allocate`` pops here.
* ``_even_fifo``: free even ports. EVEN-PORT pops here (RFC 8656 §18.7).
* ``_pair_fifo``: even ports ``p`` with ``p`` and ``p + 1`` both free. EVEN-PORT with R=1 pops here.

A port taken through one queue is not searched for in the other two. Its entries there go stale (the
stamp no longer matches) and are skipped when they reach the head (lazy deletion). Each entry is pushed
once and popped once, so every operation is **O(1) amortised**. When a deque holds more than
2 × size + 64 entries it is rebuilt without its stale entries. That is O(size) work that happens at
most once per ~size pushes, so it is still O(1) amortised, and memory stays O(size). The one-off cost
is O(size) at construction (list, shuffle, deques: about 7 ms for 10,000 ports on the reference
machine) and O(size) per compaction. A single operation can
therefore take O(size) in the worst case, which is amortised, not a constant bound.

Order: plain and EVEN-PORT allocations return the port that has been free longest among the eligible
ones (never-used ports first, in shuffled order). EVEN-PORT with R=1 returns the pair that became free
(both halves) earliest. Reservation tokens come from the pool's seeded RNG, so runs are reproducible.
The tokens are not secret: this is a lab.
"""

from __future__ import annotations

import enum
import math
import random
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar, Final, Literal

Transport = Literal["udp", "tcp"]

DEFAULT_FIRST_PORT: Final = 50000  # Lync 2013 A/V Edge relay range 50000–59999
DEFAULT_LAST_PORT: Final = 59999
RESERVATION_TOKEN_LENGTH: Final = 8  # RFC 8656 §18.10: the token is 8 bytes
DEFAULT_RESERVATION_LIFETIME: Final = 30.0  # RFC 8656 §7.2: hold the reserved port for about 30 s
_COMPACTION_SLACK: Final = 64


class InsufficientCapacity(Exception):
    """No port matching the request can be handed out. Answer the Allocate with 508.

    RFC 8656 §7.2 and §19 give 508 for three cases: no relayed address left, none with the requested
    properties (EVEN-PORT), or the port behind a RESERVATION-TOKEN is not available.
    """

    status: ClassVar[int] = 508
    reason_phrase: ClassVar[str] = "Insufficient Capacity"

    def __init__(self, detail: str, *, address: str, transport: Transport) -> None:
        super().__init__(f"508 Insufficient Capacity on {address}/{transport}: {detail}")
        self.detail = detail
        self.address = address
        self.transport = transport


class PortState(enum.IntEnum):
    """Where one port of a pool is in its life."""

    FREE = 0
    ALLOCATED = 1
    LINGERING = 2
    RESERVED = 3


class PortEvent(enum.Enum):
    """What can happen to a port; see ``_TRANSITIONS``."""

    ALLOCATE = "allocate"
    RESERVE = "reserve"
    REDEEM = "redeem"
    RELEASE = "release"
    LINGER_ELAPSED = "linger-elapsed"
    BIND_FAILED = "bind-failed"
    RESERVATION_ENDED = "reservation-ended"


_TRANSITIONS: Final[Mapping[tuple[PortState, PortEvent], PortState]] = {
    (PortState.FREE, PortEvent.ALLOCATE): PortState.ALLOCATED,
    # RFC 8656 §7.2: with EVEN-PORT R=1 the server reserves port + 1 for a later Allocate
    (PortState.FREE, PortEvent.RESERVE): PortState.RESERVED,
    # RFC 8656 §7.2: an Allocate carrying a valid RESERVATION-TOKEN gets the reserved port
    (PortState.RESERVED, PortEvent.REDEEM): PortState.ALLOCATED,
    (PortState.ALLOCATED, PortEvent.RELEASE): PortState.LINGERING,
    (PortState.LINGERING, PortEvent.LINGER_ELAPSED): PortState.FREE,
    (PortState.ALLOCATED, PortEvent.BIND_FAILED): PortState.FREE,
    (PortState.RESERVED, PortEvent.BIND_FAILED): PortState.FREE,
    (PortState.RESERVED, PortEvent.RESERVATION_ENDED): PortState.FREE,
}


@dataclass(frozen=True, slots=True)
class PortLease:
    """A port handed out by a pool. The shell binds ``(address, port)`` on ``transport``.

    With EVEN-PORT R=1, ``reserved_port`` (= ``port + 1``) is held for a later Allocate that presents
    ``reservation_token``. Put the token in the response's RESERVATION-TOKEN (RFC 8656 §18.10).
    """

    address: str
    transport: Transport
    port: int
    reservation_token: bytes | None = None
    reserved_port: int | None = None


@dataclass(frozen=True, slots=True)
class PoolMetrics:
    """A snapshot of one pool: gauges (free … reserved) and counters since creation."""

    address: str
    transport: Transport
    size: int
    free: int
    allocated: int
    lingering: int
    reserved: int
    allocations: int
    releases: int
    bind_failures: int
    exhaustions: int


@dataclass(slots=True)
class _Reservation:
    port: int
    owner_port: int
    expires: float


class PortPool:
    """The free-list FIFO of one (relay address, transport) over ``first_port..last_port`` inclusive.

    ``linger`` (seconds) keeps a released port out of circulation for a while, like coturn's ~1 s after
    Refresh(0) (research-turn.md §5.2). ``reservation_lifetime`` is how long an EVEN-PORT R=1
    reservation is held.
    """

    def __init__(
        self,
        address: str,
        transport: Transport,
        rng: random.Random,
        *,
        first_port: int = DEFAULT_FIRST_PORT,
        last_port: int = DEFAULT_LAST_PORT,
        linger: float = 0.0,
        reservation_lifetime: float = DEFAULT_RESERVATION_LIFETIME,
    ) -> None:
        if not 0 < first_port <= last_port <= 0xFFFF:
            raise ValueError(f"bad port range {first_port}-{last_port}")
        if linger < 0 or reservation_lifetime <= 0:
            raise ValueError("linger must be >= 0 and reservation_lifetime > 0")
        self.address = address
        self.transport: Transport = transport
        self.first_port = first_port
        self.last_port = last_port
        self.size = last_port - first_port + 1
        self.linger = linger
        self.reservation_lifetime = reservation_lifetime
        self._rng = rng
        self._state = [PortState.FREE] * self.size
        # Stamp of each port's current entries in the queues; -1 while the port is not free.
        self._free_stamp = [-1] * self.size
        self._fifo: deque[tuple[int, int]] = deque()
        self._even_fifo: deque[tuple[int, int]] = deque()
        self._pair_fifo: deque[int] = deque()
        self._compact_above = 2 * self.size + _COMPACTION_SLACK
        self._lingering: deque[tuple[float, int]] = deque()
        self._reservations: dict[bytes, _Reservation] = {}
        self._reservation_deadlines: deque[tuple[float, bytes]] = deque()
        self._token_of_owner: dict[int, bytes] = {}
        self._token_of_reserved: dict[int, bytes] = {}
        self._last_now = -math.inf
        self._allocated_count = 0
        self.allocations = 0
        self.releases = 0
        self.bind_failures = 0
        self.exhaustions = 0
        order = list(range(first_port, last_port + 1))
        rng.shuffle(order)  # Fisher–Yates: every initial order equally likely
        # Same queues as calling _become_free(port) for each port in order, built in bulk.
        for stamp, port in enumerate(order, start=1):
            self._free_stamp[port - first_port] = stamp
        self._stamp = self.size
        self._free_count = self.size
        self._fifo.extend(enumerate(order, start=1))
        self._even_fifo.extend(entry for entry in self._fifo if entry[1] % 2 == 0)
        self._pair_fifo.extend(port for port in order if port % 2 == 0 and port < last_port)

    # ------------------------------------------------------------------ public API

    def allocate(
        self,
        now: float,
        *,
        even_port: bool = False,
        reserve_next: bool = False,
        reservation_token: bytes | None = None,
    ) -> PortLease:
        """Hand out the port that has been free longest (or the reserved one), else raise 508.

        ``even_port``/``reserve_next`` are the EVEN-PORT attribute and its R bit (RFC 8656 §18.7).
        ``reservation_token`` is a RESERVATION-TOKEN from an earlier R=1 allocation.
        RFC 8656 §7.2 makes a token together with EVEN-PORT a 400. The TURN server must check that
        before calling, and this method raises ``ValueError`` for it.
        Raises :class:`InsufficientCapacity` when no port fits: the pool is empty, no even port (or
        even pair) is free, or the token is unknown or expired.
        """
        self._advance(now)
        if reservation_token is not None:
            if even_port:
                raise ValueError("RESERVATION-TOKEN with EVEN-PORT is a 400 (RFC 8656 §7.2)")
            return self._redeem(reservation_token)
        if not even_port:
            if reserve_next:
                raise ValueError("reserve_next is the R bit of EVEN-PORT; it needs even_port=True")
            port = self._pop_free(self._fifo)
            if port is None:
                raise self._insufficient("no free port")  # RFC 8656 §7.2: 508 when no port
            self._take(port, PortEvent.ALLOCATE)
            return PortLease(self.address, self.transport, port)
        if not reserve_next:
            port = self._pop_free(self._even_fifo)
            if port is None:
                raise self._insufficient("no free even port")  # RFC 8656 §7.2: 508 for EVEN-PORT
            self._take(port, PortEvent.ALLOCATE)
            return PortLease(self.address, self.transport, port)
        port = self._pop_free_pair()
        if port is None:
            raise self._insufficient("no free even port with a free port + 1")  # RFC 8656 §7.2
        self._take(port, PortEvent.ALLOCATE)
        reserved = port + 1
        self._take(reserved, PortEvent.RESERVE)
        token = self._new_token()
        expires = now + self.reservation_lifetime
        self._reservations[token] = _Reservation(reserved, port, expires)
        self._reservation_deadlines.append((expires, token))
        self._token_of_owner[port] = token
        self._token_of_reserved[reserved] = token
        return PortLease(self.address, self.transport, port, token, reserved)

    def claim(self, port: int, now: float) -> PortLease | None:
        """Take this exact port if it is free (e.g. NAT port preservation), else return ``None``."""
        self._advance(now)
        if not self.first_port <= port <= self.last_port:
            return None
        if self._state[port - self.first_port] is not PortState.FREE:
            return None
        self._take(port, PortEvent.ALLOCATE)
        return PortLease(self.address, self.transport, port)

    def release(self, port: int, now: float) -> None:
        """Give an allocated port back. It rejoins the tail after ``linger`` seconds.

        A reservation made together with this port stays until it is redeemed or expires
        (RFC 8656 §7.2 ties it to the token, not to the allocation).
        """
        self._advance(now)
        self._move(port, PortEvent.RELEASE)
        self._allocated_count -= 1
        self.releases += 1
        self._token_of_owner.pop(port, None)
        if self.linger == 0:
            self._move(port, PortEvent.LINGER_ELAPSED)
            self._become_free(port)
        else:
            self._lingering.append((now + self.linger, port))

    def bind_failed(self, port: int, now: float) -> None:
        """The OS refused to bind ``port``. Requeue it at the tail, count it, and then allocate again.

        If the port came with a reservation (EVEN-PORT R=1), the reservation is cancelled as well.
        ``port`` may also be the reserved port + 1. Then the reservation ends and the lease's token
        becomes invalid, so release the even port and retry. Retry at most ``size`` times, then
        answer 508 (coturn gives up after 0xFFFF tries).
        """
        self._advance(now)
        state = self._state[self._index(port)]
        if state is PortState.RESERVED:
            self._end_reservation(self._token_of_reserved[port], PortEvent.BIND_FAILED)
            self.bind_failures += 1
            return
        self._move(port, PortEvent.BIND_FAILED)
        self.bind_failures += 1
        self._allocated_count -= 1
        self._become_free(port)
        token = self._token_of_owner.get(port)
        if token is not None:
            self._end_reservation(token)

    def expire(self, now: float) -> None:
        """Free the lingering ports and expired reservations whose deadline is at or before ``now``."""
        self._advance(now)

    def next_timer(self) -> float | None:
        """The earliest pending deadline (linger or reservation), or ``None``. Call ``expire`` then."""
        self._drop_stale_reservation_heads()
        deadlines = []
        if self._lingering:
            deadlines.append(self._lingering[0][0])
        if self._reservation_deadlines:
            deadlines.append(self._reservation_deadlines[0][0])
        return min(deadlines) if deadlines else None

    def port_state(self, port: int) -> PortState:
        """The state of ``port`` (``ValueError`` when it is outside the range)."""
        return self._state[self._index(port)]

    @property
    def free_count(self) -> int:
        """Ports that the next allocation could take, as of the last ``now`` seen."""
        return self._free_count

    def metrics(self) -> PoolMetrics:
        """Gauges and counters of this pool (free-port count as of the last ``now`` seen)."""
        return PoolMetrics(
            address=self.address,
            transport=self.transport,
            size=self.size,
            free=self._free_count,
            allocated=self._allocated_count,
            lingering=len(self._lingering),
            reserved=len(self._reservations),
            allocations=self.allocations,
            releases=self.releases,
            bind_failures=self.bind_failures,
            exhaustions=self.exhaustions,
        )

    # ------------------------------------------------------------------ internals

    def _index(self, port: int) -> int:
        if not self.first_port <= port <= self.last_port:
            raise ValueError(f"port {port} is outside {self.first_port}-{self.last_port}")
        return port - self.first_port

    def _move(self, port: int, event: PortEvent) -> None:
        index = self._index(port)
        new_state = _TRANSITIONS.get((self._state[index], event))
        if new_state is None:
            raise ValueError(f"port {port}: cannot {event.value} while {self._state[index].name}")
        self._state[index] = new_state

    def _advance(self, now: float) -> None:
        if now < self._last_now:
            raise ValueError(f"now went backwards: {now} < {self._last_now}")
        self._last_now = now
        lingering = self._lingering
        deadlines = self._reservation_deadlines
        while lingering or deadlines:
            self._drop_stale_reservation_heads()
            linger_due = bool(lingering) and lingering[0][0] <= now
            reservation_due = bool(deadlines) and deadlines[0][0] <= now
            # Whichever deadline came first frees its port first; a tie goes to the lingering port.
            if linger_due and not (reservation_due and deadlines[0][0] < lingering[0][0]):
                _, port = lingering.popleft()
                self._move(port, PortEvent.LINGER_ELAPSED)
                self._become_free(port)
            elif reservation_due:
                _, token = deadlines.popleft()
                self._end_reservation(token)
            else:
                return

    def _drop_stale_reservation_heads(self) -> None:
        deadlines = self._reservation_deadlines
        while deadlines:
            expires, token = deadlines[0]
            reservation = self._reservations.get(token)
            if reservation is not None and reservation.expires == expires:
                return
            deadlines.popleft()

    def _end_reservation(self, token: bytes, event: PortEvent = PortEvent.RESERVATION_ENDED) -> None:
        """Forget the reservation behind ``token``; its port rejoins the tail."""
        reservation = self._forget_reservation(token)
        self._move(reservation.port, event)
        self._become_free(reservation.port)

    def _forget_reservation(self, token: bytes) -> _Reservation:
        reservation = self._reservations.pop(token)
        del self._token_of_reserved[reservation.port]
        if self._token_of_owner.get(reservation.owner_port) == token:
            del self._token_of_owner[reservation.owner_port]
        return reservation

    def _redeem(self, token: bytes) -> PortLease:
        if token not in self._reservations:
            # RFC 8656 §7.2: a token that is unknown, expired or used answers 508
            raise self._insufficient("reservation token unknown or expired")
        port = self._forget_reservation(token).port
        self._move(port, PortEvent.REDEEM)
        self._allocated_count += 1
        self.allocations += 1
        return PortLease(self.address, self.transport, port)

    def _insufficient(self, detail: str) -> InsufficientCapacity:
        self.exhaustions += 1
        return InsufficientCapacity(detail, address=self.address, transport=self.transport)

    def _new_token(self) -> bytes:
        while True:
            token = self._rng.randbytes(RESERVATION_TOKEN_LENGTH)
            if token not in self._reservations:
                return token

    def _pop_free(self, queue: deque[tuple[int, int]]) -> int | None:
        free_stamp = self._free_stamp
        first = self.first_port
        while queue:
            stamp, port = queue.popleft()
            if free_stamp[port - first] == stamp:
                return port
        return None

    def _pop_free_pair(self) -> int | None:
        free_stamp = self._free_stamp
        first = self.first_port
        queue = self._pair_fifo
        while queue:
            port = queue.popleft()
            if free_stamp[port - first] >= 0 and free_stamp[port + 1 - first] >= 0:
                return port
        return None

    def _take(self, port: int, event: PortEvent) -> None:
        """Move a FREE port to ALLOCATED or RESERVED; its queue entries go stale."""
        self._move(port, event)
        self._free_stamp[port - self.first_port] = -1
        self._free_count -= 1
        if event is PortEvent.ALLOCATE:
            self._allocated_count += 1
            self.allocations += 1

    def _become_free(self, port: int) -> None:
        """Append a port (already in state FREE) to the tail of its queues."""
        index = port - self.first_port
        self._stamp += 1
        stamp = self._stamp
        self._free_stamp[index] = stamp
        self._free_count += 1
        self._fifo.append((stamp, port))
        if port % 2 == 0:
            self._even_fifo.append((stamp, port))
            if port < self.last_port and self._free_stamp[index + 1] >= 0:
                self._pair_fifo.append(port)
        elif port > self.first_port and self._free_stamp[index - 1] >= 0:
            self._pair_fifo.append(port - 1)
        if len(self._fifo) > self._compact_above:
            self._fifo = deque(self._live_entries(self._fifo))
        if len(self._even_fifo) > self._compact_above:
            self._even_fifo = deque(self._live_entries(self._even_fifo))
        if len(self._pair_fifo) > self._compact_above:
            self._pair_fifo = deque(self._live_pairs(self._pair_fifo))

    def _live_entries(self, entries: Iterable[tuple[int, int]]) -> Iterable[tuple[int, int]]:
        free_stamp = self._free_stamp
        first = self.first_port
        return (entry for entry in entries if free_stamp[entry[1] - first] == entry[0])

    def _live_pairs(self, entries: Iterable[int]) -> Iterable[int]:
        seen: set[int] = set()
        free_stamp = self._free_stamp
        first = self.first_port
        for port in entries:
            if port not in seen and free_stamp[port - first] >= 0 and free_stamp[port + 1 - first] >= 0:
                seen.add(port)
                yield port


class RelayPortAllocator:
    """All relay port pools of one TURN server, keyed by (relay address, transport).

    Each pool gets its own ``random.Random`` seeded from ``rng`` in the order the pools are added, so a
    run is reproducible from one seed. UDP and TCP pools on one address are independent, as in coturn.
    """

    def __init__(
        self,
        rng: random.Random,
        *,
        first_port: int = DEFAULT_FIRST_PORT,
        last_port: int = DEFAULT_LAST_PORT,
        linger: float = 0.0,
        reservation_lifetime: float = DEFAULT_RESERVATION_LIFETIME,
        pools: Iterable[tuple[str, Transport]] = (),
    ) -> None:
        self._rng = rng
        self.first_port = first_port
        self.last_port = last_port
        self.linger = linger
        self.reservation_lifetime = reservation_lifetime
        self._pools: dict[tuple[str, Transport], PortPool] = {}
        for address, transport in pools:
            self.add_pool(address, transport)

    def add_pool(self, address: str, transport: Transport) -> PortPool:
        """Create the pool for (address, transport). ``ValueError`` if it already exists."""
        key = (address, transport)
        if key in self._pools:
            raise ValueError(f"pool {address}/{transport} already exists")
        pool = PortPool(
            address,
            transport,
            random.Random(self._rng.getrandbits(64)),
            first_port=self.first_port,
            last_port=self.last_port,
            linger=self.linger,
            reservation_lifetime=self.reservation_lifetime,
        )
        self._pools[key] = pool
        return pool

    def pool(self, address: str, transport: Transport) -> PortPool:
        """The pool for (address, transport); ``KeyError`` when it was never added."""
        return self._pools[(address, transport)]

    @property
    def pools(self) -> Mapping[tuple[str, Transport], PortPool]:
        """Every pool, keyed by (relay address, transport)."""
        return self._pools

    def allocate(
        self,
        address: str,
        transport: Transport,
        now: float,
        *,
        even_port: bool = False,
        reserve_next: bool = False,
        reservation_token: bytes | None = None,
    ) -> PortLease:
        """:meth:`PortPool.allocate` on the pool for (address, transport)."""
        return self.pool(address, transport).allocate(
            now, even_port=even_port, reserve_next=reserve_next, reservation_token=reservation_token
        )

    def release(self, lease: PortLease, now: float) -> None:
        """:meth:`PortPool.release` of ``lease.port`` in its pool."""
        self.pool(lease.address, lease.transport).release(lease.port, now)

    def bind_failed(self, lease: PortLease, now: float, port: int | None = None) -> None:
        """:meth:`PortPool.bind_failed` for ``port`` (default ``lease.port``) in the lease's pool."""
        self.pool(lease.address, lease.transport).bind_failed(lease.port if port is None else port, now)

    def expire(self, now: float) -> None:
        """Run :meth:`PortPool.expire` on every pool."""
        for pool in self._pools.values():
            pool.expire(now)

    def next_timer(self) -> float | None:
        """The earliest deadline across pools, or ``None``."""
        timers = [t for t in (pool.next_timer() for pool in self._pools.values()) if t is not None]
        return min(timers) if timers else None

    def metrics(self) -> list[PoolMetrics]:
        """One :class:`PoolMetrics` per pool, in the order the pools were added."""
        return [pool.metrics() for pool in self._pools.values()]
