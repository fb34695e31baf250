"""Client resolver policies: Lync/UCMA shuffle + failover + 600 s penalty; legacy single address."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest

from simulator.core.dns_policy import (
    RESOLVER_POLICIES,
    LegacySingleAddressPolicy,
    LyncFailoverPolicy,
    make_resolver_policy,
)

NODES = ["127.77.1.11", "127.77.1.12", "127.77.1.13"]


def test_lync_shuffle_is_roughly_uniform_over_many_draws() -> None:
    policy = LyncFailoverPolicy(random.Random(1234))
    draws = 6000
    first_choice: Counter[str] = Counter()
    orders: Counter[tuple[str, ...]] = Counter()
    for _ in range(draws):
        order = policy.candidates(NODES, now=0.0)
        assert sorted(order) == sorted(NODES)
        first_choice[order[0]] += 1
        orders[tuple(order)] += 1
    # Each node first ~2000 times (binomial sd ≈ 37; ±200 is > 5 sd, yet catches "always first").
    for node in NODES:
        assert abs(first_choice[node] - draws / 3) < 200, first_choice
    # All 6 permutations appear ~1000 times each.
    assert set(orders) == set(itertools.permutations(NODES))
    assert all(abs(count - draws / 6) < 150 for count in orders.values()), orders


def test_lync_shuffle_replays_with_the_same_seed() -> None:
    first = LyncFailoverPolicy(random.Random(7))
    second = LyncFailoverPolicy(random.Random(7))
    first_orders = [first.candidates(NODES, 0.0) for _ in range(20)]
    assert first_orders == [second.candidates(NODES, 0.0) for _ in range(20)]


def test_lync_fails_over_to_the_next_address_and_skips_the_failed_one() -> None:
    policy = LyncFailoverPolicy(random.Random(3))
    order = policy.candidates(NODES, now=100.0)
    # The client tries order[0], it times out, it tries order[1], which works.
    policy.report_failure(order[0], now=100.0)
    policy.report_success(order[1], now=101.0)
    for _ in range(50):
        again = policy.candidates(NODES, now=150.0)
        assert order[0] not in again
        assert sorted(again) == sorted(order[1:])


def test_lync_penalty_lasts_600_seconds_measured_from_the_failure() -> None:
    policy = LyncFailoverPolicy(random.Random(0))
    policy.report_failure("127.77.1.11", now=1000.0)
    assert policy.is_penalised("127.77.1.11", 1000.0)
    assert policy.is_penalised("127.77.1.11", 1599.9)
    assert "127.77.1.11" not in policy.candidates(NODES, now=1599.9)
    assert not policy.is_penalised("127.77.1.11", 1600.0)
    assert policy.penalised_until("127.77.1.11") == 1600.0
    seen_first = {policy.candidates(NODES, now=1600.0)[0] for _ in range(60)}
    assert "127.77.1.11" in seen_first


def test_lync_a_second_failure_restarts_the_penalty() -> None:
    policy = LyncFailoverPolicy(random.Random(0))
    policy.report_failure("127.77.1.11", now=0.0)
    policy.report_failure("127.77.1.11", now=500.0)
    assert policy.is_penalised("127.77.1.11", 1000.0)
    assert not policy.is_penalised("127.77.1.11", 1100.0)


def test_lync_success_clears_the_penalty() -> None:
    policy = LyncFailoverPolicy(random.Random(0))
    policy.report_failure("127.77.1.12", now=0.0)
    policy.report_success("127.77.1.12", now=10.0)
    assert not policy.is_penalised("127.77.1.12", 10.0)
    assert policy.penalised_until("127.77.1.12") is None


def test_lync_when_every_address_is_penalised_offers_all_least_recently_failed_first() -> None:
    policy = LyncFailoverPolicy(random.Random(0))
    policy.report_failure("127.77.1.13", now=1.0)
    policy.report_failure("127.77.1.11", now=2.0)
    policy.report_failure("127.77.1.12", now=3.0)
    assert policy.candidates(NODES, now=10.0) == ["127.77.1.13", "127.77.1.11", "127.77.1.12"]


def test_lync_removes_duplicate_addresses_and_handles_no_addresses() -> None:
    policy = LyncFailoverPolicy(random.Random(0))
    assert sorted(policy.candidates(NODES + NODES[:1], 0.0)) == sorted(NODES)
    assert policy.candidates([], 0.0) == []


def test_legacy_uses_only_the_first_address_and_never_fails_over() -> None:
    policy = LegacySingleAddressPolicy()
    assert policy.candidates(NODES, now=0.0) == [NODES[0]]
    policy.report_failure(NODES[0], now=0.0)
    for now in (1.0, 10.0, 700.0):
        assert policy.candidates(NODES, now=now) == [NODES[0]]
    assert policy.candidates([], 0.0) == []


@pytest.mark.parametrize(
    ("name", "policy_type"), [("lync", LyncFailoverPolicy), ("LEGACY", LegacySingleAddressPolicy)]
)
def test_registry_builds_policies_by_name(name: str, policy_type: type) -> None:
    assert isinstance(make_resolver_policy(name, random.Random(0)), policy_type)


def test_registry_rejects_unknown_names_listing_the_known_ones() -> None:
    assert set(RESOLVER_POLICIES) == {"lync", "legacy"}
    with pytest.raises(ValueError, match="known: legacy, lync"):
        make_resolver_policy("ocs2007", random.Random(0))
