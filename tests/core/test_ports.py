"""Relay port allocator: exact exhaustion, FIFO reuse, EVEN-PORT/RESERVATION-TOKEN, linger, bind failures.

The state machine checks every operation against a plain reference model: free ports that were never
handed out come first (in any order); after them, a freed port comes back only after every port
freed before it.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from simulator.core.ports import (
    DEFAULT_FIRST_PORT,
    DEFAULT_LAST_PORT,
    RESERVATION_TOKEN_LENGTH,
    InsufficientCapacity,
    PortPool,
    PortState,
    RelayPortAllocator,
)

RELAY_IP = "192.0.2.10"


def make_pool(first: int = 50000, last: int = 50009, seed: int = 7, **kwargs: float) -> PortPool:
    return PortPool(RELAY_IP, "udp", random.Random(seed), first_port=first, last_port=last, **kwargs)


def drain(pool: PortPool, now: float = 0.0) -> list[int]:
    ports = []
    while pool.free_count:
        ports.append(pool.allocate(now).port)
    return ports


# ---------------------------------------------------------------- exhaustion and order


def test_default_range_gives_exactly_10000_ports_then_508() -> None:
    allocator = RelayPortAllocator(random.Random(2013), pools=[(RELAY_IP, "udp")])
    ports = [allocator.allocate(RELAY_IP, "udp", 0.0).port for _ in range(10_000)]
    assert len(set(ports)) == 10_000
    assert min(ports) == DEFAULT_FIRST_PORT == 50000
    assert max(ports) == DEFAULT_LAST_PORT == 59999
    with pytest.raises(InsufficientCapacity) as excinfo:
        allocator.allocate(RELAY_IP, "udp", 0.0)
    assert excinfo.value.status == 508
    assert excinfo.value.reason_phrase == "Insufficient Capacity"
    [metrics] = allocator.metrics()
    assert (metrics.free, metrics.allocated, metrics.exhaustions) == (0, 10_000, 1)


def test_first_allocations_are_shuffled_and_reproducible() -> None:
    first = drain(make_pool(50000, 50999, seed=1))
    again = drain(make_pool(50000, 50999, seed=1))
    other = drain(make_pool(50000, 50999, seed=2))
    assert first == again
    assert first != other
    assert first != sorted(first)
    # a sequential or clustered allocator would put most of the first 100 in one corner
    assert 300 < sum(first[:100]) / 100 - 50000 < 700


def test_freed_ports_come_back_last_in_release_order() -> None:
    pool = make_pool(50000, 50009)
    held = drain(pool)
    order = [held[3], held[0], held[9], held[5]]
    for port in order:
        pool.release(port, 1.0)
    assert [pool.allocate(1.0).port for _ in order] == order
    with pytest.raises(InsufficientCapacity):
        pool.allocate(1.0)


def test_released_port_waits_behind_every_free_port() -> None:
    pool = make_pool(50000, 50009)
    first = pool.allocate(0.0).port
    pool.release(first, 0.0)
    later = [pool.allocate(0.0).port for _ in range(10)]
    assert later[-1] == first
    assert first not in later[:-1]


def test_pools_per_address_and_transport_are_independent() -> None:
    allocator = RelayPortAllocator(
        random.Random(5),
        first_port=40000,
        last_port=40003,
        pools=[("192.0.2.1", "udp"), ("192.0.2.1", "tcp"), ("192.0.2.2", "udp")],
    )
    for key in allocator.pools:
        for _ in range(4):
            allocator.allocate(*key, 0.0)
    assert [m.allocated for m in allocator.metrics()] == [4, 4, 4]
    with pytest.raises(InsufficientCapacity) as excinfo:
        allocator.allocate("192.0.2.1", "tcp", 0.0)
    assert (excinfo.value.address, excinfo.value.transport) == ("192.0.2.1", "tcp")
    assert [m.exhaustions for m in allocator.metrics()] == [0, 1, 0]
    with pytest.raises(ValueError):
        allocator.add_pool("192.0.2.1", "udp")
    with pytest.raises(KeyError):
        allocator.pool("192.0.2.9", "udp")


# ---------------------------------------------------------------- bind failures and linger


def test_bind_failure_requeues_at_the_tail_and_counts() -> None:
    pool = make_pool(50000, 50004)
    refused = pool.allocate(0.0).port
    pool.bind_failed(refused, 0.0)
    assert pool.port_state(refused) is PortState.FREE
    rest = [pool.allocate(0.0).port for _ in range(5)]
    assert rest[-1] == refused
    assert pool.metrics().bind_failures == 1


def test_linger_keeps_released_ports_out_until_it_elapses() -> None:
    # coturn F2: a 50-port range, Refresh(0) lingering ~1 s -> sequential churn gets 508
    pool = make_pool(50000, 50049, linger=1.0)
    held = drain(pool, 0.0)
    for port in held:
        pool.release(port, 0.5)
    assert pool.free_count == 0
    with pytest.raises(InsufficientCapacity):
        pool.allocate(1.4999)
    assert pool.next_timer() == 1.5
    assert pool.allocate(1.5).port == held[0]
    assert pool.free_count == 49


def test_ports_freed_by_different_deadlines_rejoin_in_deadline_order() -> None:
    pool = make_pool(50000, 50003, linger=2.0, reservation_lifetime=3.0)
    lease = pool.allocate(0.0, even_port=True, reserve_next=True)
    drain(pool, 0.0)
    pool.release(lease.port, 1.5)  # free again at 3.5; the reservation ends at 3.0
    assert [pool.allocate(4.0).port, pool.allocate(4.0).port] == [lease.port + 1, lease.port]


def test_now_must_not_go_backwards() -> None:
    pool = make_pool()
    pool.allocate(5.0)
    with pytest.raises(ValueError):
        pool.allocate(4.0)


@pytest.mark.parametrize(
    ("action", "port"),
    [("release", 50000), ("bind_failed", 50000), ("release", 49999), ("release", 50010)],
)
def test_misuse_is_a_value_error(action: str, port: int) -> None:
    pool = make_pool(50000, 50009)
    with pytest.raises(ValueError):
        getattr(pool, action)(port, 0.0)


# ---------------------------------------------------------------- EVEN-PORT and RESERVATION-TOKEN


def test_even_port_is_even() -> None:
    pool = make_pool(50001, 50020)
    ports = [pool.allocate(0.0, even_port=True).port for _ in range(10)]
    assert sorted(ports) == list(range(50002, 50021, 2))
    with pytest.raises(InsufficientCapacity):  # RFC 8656 §7.2: odd ports left, none even -> 508
        pool.allocate(0.0, even_port=True)
    assert pool.free_count == 10


def test_reserve_next_holds_port_plus_one_for_the_token() -> None:
    pool = make_pool(50000, 50009)
    lease = pool.allocate(0.0, even_port=True, reserve_next=True)
    assert lease.port % 2 == 0
    assert lease.reserved_port == lease.port + 1
    assert lease.reservation_token is not None
    assert len(lease.reservation_token) == RESERVATION_TOKEN_LENGTH == 8
    assert pool.port_state(lease.port + 1) is PortState.RESERVED
    # plain allocations never hand out the reserved port
    assert lease.port + 1 not in drain(pool, 1.0)
    redeemed = pool.allocate(2.0, reservation_token=lease.reservation_token)
    assert redeemed.port == lease.port + 1
    with pytest.raises(InsufficientCapacity):  # a used token is no longer valid
        pool.allocate(2.0, reservation_token=lease.reservation_token)


def test_reservation_expires_after_about_30_seconds() -> None:
    pool = make_pool(50000, 50009)
    lease = pool.allocate(100.0, even_port=True, reserve_next=True)
    assert lease.reservation_token is not None
    assert pool.next_timer() == 130.0
    pool.expire(129.9)
    assert pool.port_state(lease.port + 1) is PortState.RESERVED
    pool.expire(130.0)
    assert pool.port_state(lease.port + 1) is PortState.FREE
    with pytest.raises(InsufficientCapacity):
        pool.allocate(130.0, reservation_token=lease.reservation_token)
    assert pool.next_timer() is None


def test_reserve_next_needs_a_free_pair() -> None:
    pool = make_pool(50000, 50003)
    pool.claim(50001, 0.0)
    pool.claim(50002, 0.0)
    # 50000 and 50003 are free but no even port has a free successor
    with pytest.raises(InsufficientCapacity):
        pool.allocate(0.0, even_port=True, reserve_next=True)
    assert pool.allocate(0.0, even_port=True).port == 50000


def test_bind_failure_of_an_even_port_cancels_its_reservation() -> None:
    pool = make_pool(50000, 50009)
    lease = pool.allocate(0.0, even_port=True, reserve_next=True)
    pool.bind_failed(lease.port, 0.0)
    assert pool.port_state(lease.port) is PortState.FREE
    assert pool.port_state(lease.port + 1) is PortState.FREE
    assert pool.metrics().reserved == 0
    with pytest.raises(InsufficientCapacity):
        pool.allocate(0.0, reservation_token=lease.reservation_token)


def test_token_with_even_port_or_r_bit_without_even_port_is_a_caller_error() -> None:
    pool = make_pool()
    with pytest.raises(ValueError):
        pool.allocate(0.0, even_port=True, reservation_token=b"\x00" * 8)
    with pytest.raises(ValueError):
        pool.allocate(0.0, reserve_next=True)


def test_heavy_pair_churn_keeps_queues_bounded() -> None:
    pool = make_pool(50000, 50099)
    for step in range(20_000):
        lease = pool.allocate(float(step), even_port=True, reserve_next=True)
        assert lease.reservation_token is not None
        pool.allocate(float(step), reservation_token=lease.reservation_token)
        pool.release(lease.port, float(step))
        pool.release(lease.port + 1, float(step))
    bound = 2 * pool.size + 64
    # white-box: lazy deletion must not let stale entries pile up
    assert max(len(pool._fifo), len(pool._even_fifo), len(pool._pair_fifo)) <= bound
    assert pool.free_count == 100


# ---------------------------------------------------------------- state machine

RESERVATION_LIFETIME = 3.0


class PortPoolMachine(RuleBasedStateMachine):
    """Drives a small pool at random and compares it with a reference model after every step."""

    @initialize(
        first=st.integers(1000, 1003),
        size=st.integers(1, 20),
        linger=st.sampled_from([0.0, 0.0, 1.0, 2.5]),
        seed=st.integers(0, 2**32),
    )
    def setup(self, first: int, size: int, linger: float, seed: int) -> None:
        self.pool = PortPool(
            RELAY_IP,
            "udp",
            random.Random(seed),
            first_port=first,
            last_port=first + size - 1,
            linger=linger,
            reservation_lifetime=RESERVATION_LIFETIME,
        )
        self.ports = range(first, first + size)
        self.linger = linger
        self.now = 0.0
        self.never_used: set[int] = set(self.ports)
        self.freed: list[int] = []  # used and free again, oldest first
        self.allocated: set[int] = set()
        self.lingering: list[tuple[float, int, int]] = []  # (deadline, serial, port)
        self.reservations: dict[bytes, tuple[float, int, int]] = {}  # token -> (expires, serial, port)
        self.owner_of: dict[bytes, int] = {}  # token -> even port still allocated with it
        self.tokens_seen: list[bytes] = [b"\xff" * 8]
        self.serial = 0
        self.bind_failures = 0
        self.exhaustions = 0

    # ---- model helpers

    def catch_up(self) -> None:
        due: list[tuple[float, int, int, int]] = [(d, 0, s, p) for d, s, p in self.lingering if d <= self.now]
        due += [(e, 1, s, p) for e, s, p in self.reservations.values() if e <= self.now]
        for _, _, _, port in sorted(due):
            self.freed.append(port)
        self.lingering = [entry for entry in self.lingering if entry[0] > self.now]
        for token in [t for t, (e, _, _) in self.reservations.items() if e <= self.now]:
            del self.reservations[token]
            self.owner_of.pop(token, None)

    def free_ports(self) -> set[int]:
        return self.never_used | set(self.freed)

    def take(self, port: int) -> None:
        if port in self.never_used:
            self.never_used.remove(port)
        else:
            self.freed.remove(port)

    def expect_oldest(self, port: int, eligible: set[int]) -> None:
        fresh = eligible & self.never_used
        if fresh:
            assert port in fresh
        else:
            assert port == next(p for p in self.freed if p in eligible)

    def expect_508(self, **kwargs: object) -> None:
        try:
            lease = self.pool.allocate(self.now, **kwargs)  # type: ignore[arg-type]
        except InsufficientCapacity as error:
            assert error.status == 508
            self.exhaustions += 1
        else:
            raise AssertionError(f"expected 508, got {lease}")

    # ---- rules

    @rule(dt=st.sampled_from([0.0, 0.5, 1.0, 2.5, RESERVATION_LIFETIME, 10.0]))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule()
    def allocate(self) -> None:
        self.catch_up()
        free = self.free_ports()
        if not free:
            self.expect_508()
            return
        port = self.pool.allocate(self.now).port
        self.expect_oldest(port, free)
        self.take(port)
        self.allocated.add(port)

    @rule()
    def allocate_even(self) -> None:
        self.catch_up()
        evens = {p for p in self.free_ports() if p % 2 == 0}
        if not evens:
            self.expect_508(even_port=True)
            return
        port = self.pool.allocate(self.now, even_port=True).port
        self.expect_oldest(port, evens)
        self.take(port)
        self.allocated.add(port)

    @rule()
    def allocate_even_and_reserve(self) -> None:
        self.catch_up()
        free = self.free_ports()
        pairs = {p for p in free if p % 2 == 0 and p + 1 in free}
        if not pairs:
            self.expect_508(even_port=True, reserve_next=True)
            return
        lease = self.pool.allocate(self.now, even_port=True, reserve_next=True)
        assert lease.port in pairs
        assert lease.reserved_port == lease.port + 1
        token = lease.reservation_token
        assert token is not None and len(token) == 8 and token not in self.reservations
        self.take(lease.port)
        self.take(lease.port + 1)
        self.allocated.add(lease.port)
        self.serial += 1
        self.reservations[token] = (self.now + RESERVATION_LIFETIME, self.serial, lease.port + 1)
        self.owner_of[token] = lease.port
        self.tokens_seen.append(token)

    @rule(data=st.data())
    def redeem(self, data: st.DataObject) -> None:
        self.catch_up()
        token = data.draw(st.sampled_from(self.tokens_seen))
        if token not in self.reservations:
            self.expect_508(reservation_token=token)
            return
        port = self.pool.allocate(self.now, reservation_token=token).port
        assert port == self.reservations.pop(token)[2]
        self.owner_of.pop(token, None)
        self.allocated.add(port)

    @precondition(lambda self: self.allocated)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        self.catch_up()
        port = data.draw(st.sampled_from(sorted(self.allocated)))
        self.pool.release(port, self.now)
        self.allocated.remove(port)
        for token in [t for t, owner in self.owner_of.items() if owner == port]:
            del self.owner_of[token]  # the reservation outlives its allocation
        if self.linger == 0:
            self.freed.append(port)
        else:
            self.serial += 1
            self.lingering.append((self.now + self.linger, self.serial, port))

    @precondition(lambda self: self.allocated or self.reservations)
    @rule(data=st.data())
    def bind_fails(self, data: st.DataObject) -> None:
        self.catch_up()
        reserved = {entry[2]: token for token, entry in self.reservations.items()}
        candidates = sorted(self.allocated | set(reserved))
        if not candidates:  # everything expired in catch_up: let the pool catch up too
            self.pool.expire(self.now)
            return
        port = data.draw(st.sampled_from(candidates))
        self.pool.bind_failed(port, self.now)
        self.bind_failures += 1
        self.freed.append(port)
        if port in reserved:
            del self.reservations[reserved[port]]
            self.owner_of.pop(reserved[port], None)
            return
        self.allocated.remove(port)
        for token in [t for t, owner in self.owner_of.items() if owner == port]:
            del self.owner_of[token]
            self.freed.append(self.reservations.pop(token)[2])

    @rule()
    def expire(self) -> None:
        self.catch_up()
        self.pool.expire(self.now)
        deadlines = [d for d, _, _ in self.lingering] + [e for e, _, _ in self.reservations.values()]
        assert self.pool.next_timer() == (min(deadlines) if deadlines else None)

    # ---- invariants

    @invariant()
    def states_match_the_model(self) -> None:
        if not hasattr(self, "pool"):
            return
        metrics = self.pool.metrics()
        lingering = {p for _, _, p in self.lingering}
        reserved = {p for _, _, p in self.reservations.values()}
        # Model and pool both catch up only when an operation runs, so the states match exactly.
        for port in self.ports:
            state = self.pool.port_state(port)
            if port in self.allocated:
                assert state is PortState.ALLOCATED
            elif port in lingering:
                assert state is PortState.LINGERING
            elif port in reserved:
                assert state is PortState.RESERVED
            else:
                assert state is PortState.FREE
        assert metrics.allocated == len(self.allocated)
        assert metrics.free == len(self.free_ports())
        assert metrics.reserved == len(self.reservations)
        assert metrics.bind_failures == self.bind_failures
        assert metrics.exhaustions == self.exhaustions
        assert metrics.free + metrics.allocated + metrics.lingering + metrics.reserved == metrics.size


TestPortPoolMachine = PortPoolMachine.TestCase
TestPortPoolMachine.settings = settings(
    max_examples=300,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
