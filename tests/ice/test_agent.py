"""The sans-I/O agent between two instances on a virtual-time network (tests/ice/netsim.py).

Expected values come from the RFC text: check order by RFC 8445 §6.1.2.3 pair priorities, pacing Ta = 50 ms
(§14.2), the retransmission schedule of RFC 8489 §6.2.1 (its own example: RTO 500 ms, Rc 7, Rm 16 → requests at
0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s, failure at 39.5 s), role-conflict resolution (§7.3.1.1, §7.2.5.1),
peer-reflexive candidates (§7.2.5.3.1, §7.3.1.3) and MS-ICE's 3-second checks-phase timer (MS-ICE §3.1.6.2).
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.core.ice import (
    Candidate,
    CandidateType,
    CheckSent,
    CheckSucceeded,
    Failed,
    IceAgent,
    IceState,
    PairFailed,
    PairSelected,
    PairState,
    RoleChanged,
)
from simulator.wire import sdp, stun
from simulator.wire.stun import Address
from tests.ice.netsim import Net

A_HOST = Address("10.0.0.1", 1000)
A_RELAY = Address("203.0.113.9", 50001)
B_HOST = Address("10.0.0.2", 2000)
B_RELAY = Address("203.0.113.9", 50002)


def via_sdp(candidate: Candidate) -> Candidate:
    """What the peer learns: the candidate through an SDP line (no base, no via)."""
    return Candidate.from_sdp(sdp.parse_candidate("a=" + candidate.to_sdp().to_sdp()))


def exchange(a: IceAgent, b: IceAgent) -> None:
    a.set_remote_credentials(b.local_ufrag, b.local_pwd)
    b.set_remote_credentials(a.local_ufrag, a.local_pwd)
    for c in b.local_candidates:
        a.add_remote_candidate(via_sdp(c))
    for c in a.local_candidates:
        b.add_remote_candidate(via_sdp(c))


def both_done(a: IceAgent, b: IceAgent) -> bool:
    return a.state in (IceState.COMPLETED, IceState.FAILED) and b.state in (IceState.COMPLETED, IceState.FAILED)


def simple(profile: str = "rfc8445", *, seed: int = 1, relays: bool = False) -> tuple[IceAgent, IceAgent, Net]:
    a = IceAgent(profile, True, random.Random(seed))
    b = IceAgent(profile, False, random.Random(seed + 100))
    net = Net()
    net.host(a, "a0", a.add_local_candidate("host", A_HOST, via="a0").address)
    net.host(b, "b0", b.add_local_candidate("host", B_HOST, via="b0").address)
    if relays:
        net.host(a, "ar", a.add_local_candidate("relay", A_RELAY, via="ar", related=A_HOST).address)
        net.host(b, "br", b.add_local_candidate("relay", B_RELAY, via="br", related=B_HOST).address)
    return a, b, net


def of_type(events: list[tuple[float, object]], kind: type) -> list[tuple[float, object]]:
    return [(t, e) for t, e in events if isinstance(e, kind)]


def test_host_pair_connects_and_both_sides_agree() -> None:
    a, b, net = simple()
    exchange(a, b)
    a.start(0.0)
    b.start(0.0)
    net.run(5.0, lambda: both_done(a, b))
    assert a.state is b.state is IceState.COMPLETED
    assert a.selected_pair is not None and b.selected_pair is not None
    assert a.selected_pair.local.address == B_HOST or a.selected_pair.remote.address == B_HOST
    assert (a.selected_pair.local.address, a.selected_pair.remote.address) == (A_HOST, B_HOST)
    assert (b.selected_pair.local.address, b.selected_pair.remote.address) == (B_HOST, A_HOST)
    # Both agents compute the same pair priority (G = the controlling agent's candidate, §6.1.2.3).
    assert a.selected_pair.priority == b.selected_pair.priority
    [(_, selected)] = of_type(net.events_of(a), PairSelected)
    assert isinstance(selected, PairSelected) and selected.time_to_connected == a.stats.time_to_connected
    assert a.stats.checks_sent == 2  # one ordinary check, one USE-CANDIDATE check (regular nomination §8.1.1)
    nominations = [e for _, e in of_type(net.events_of(a), CheckSent) if isinstance(e, CheckSent) and e.nominate]
    assert len(nominations) == 1


def test_check_order_follows_pair_priority_and_pacing() -> None:
    a, b, net = simple(relays=True)
    exchange(a, b)
    net.drop = lambda src, dst: True  # nothing answers: the order and pacing of first transmissions shows
    a.start(0.0)
    net.run(0.5)
    first = [(t, e) for t, e in of_type(net.events_of(a), CheckSent)
             if isinstance(e, CheckSent) and e.transmission == 1]
    pairs = [(e.local.address, e.remote.address) for _, e in first]  # type: ignore[attr-defined]
    # RFC 8445 §6.1.2.3 with host 2130706431 / relay 16777215 (G = A's, controlling):
    # host-host > host-relay = relay-host (tie: G > D wins by 1) > relay-relay.
    h, r = 2130706431, 16777215

    def prio(g: int, d: int) -> int:
        return 2**32 * min(g, d) + 2 * max(g, d) + (1 if g > d else 0)

    expected = sorted([((A_HOST, B_HOST), prio(h, h)), ((A_HOST, B_RELAY), prio(h, r)),
                       ((A_RELAY, B_HOST), prio(r, h)), ((A_RELAY, B_RELAY), prio(r, r))],
                      key=lambda item: item[1], reverse=True)
    assert pairs == [p for p, _ in expected]
    # Ta = 50 ms between checks (RFC 8445 §14.2 default)
    assert [round(t, 6) for t, _ in first] == [0.0, 0.05, 0.1, 0.15]


def test_same_foundation_starts_frozen() -> None:
    a = IceAgent("rfc8445", True, random.Random(3))
    a.add_local_candidate("host", A_HOST, via="a0")
    a.set_remote_credentials("abcd", "x" * 22)
    # Two remote host candidates with the same foundation: one pair Waiting, the other Frozen (§6.1.2.6).
    for port in (2000, 2002):
        a.add_remote_candidate(Candidate(CandidateType.HOST, Address("10.0.0.2", port), 2130706431, "7"))
    assert sorted(p.state.value for p in a.pairs) == ["frozen", "waiting"]


def test_pair_fails_after_rfc8489_retransmission_schedule() -> None:
    a, b, net = simple()
    exchange(a, b)
    net.drop = lambda src, dst: True
    a.start(0.0)
    net.run(60.0, lambda: a.state is IceState.FAILED)
    sends = [round(t, 6) for t, e in of_type(net.events_of(a), CheckSent)]
    assert sends == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]  # RFC 8489 §6.2.1 example
    [(failed_at, _failure)] = of_type(net.events_of(a), PairFailed)
    assert round(failed_at, 6) == 39.5
    [(end, _final)] = of_type(net.events_of(a), Failed)
    assert round(end, 6) == 39.5 and a.state is IceState.FAILED
    assert a.stats.checks_sent == 1 and a.stats.retransmissions == 6
    assert all(p.state is PairState.FAILED for p in a.pairs)


def test_lost_first_response_is_recovered_by_retransmission() -> None:
    a, b, net = simple()
    exchange(a, b)
    dropped: list[int] = []

    def drop_first(src: Address, dst: Address) -> bool:
        if src == B_HOST and not dropped:
            dropped.append(1)
            return True
        return False

    net.drop = drop_first
    a.start(0.0)
    net.run(5.0, lambda: a.state is IceState.COMPLETED)
    assert a.state is IceState.COMPLETED and a.stats.retransmissions >= 1


@pytest.mark.parametrize("controlling", [True, False])
def test_role_conflict_is_resolved_by_tie_breakers(controlling: bool) -> None:
    a = IceAgent("rfc8445", controlling, random.Random(1), tie_breaker=2**63 + 5)
    b = IceAgent("rfc8445", controlling, random.Random(2), tie_breaker=7)
    net = Net()
    net.host(a, "a0", a.add_local_candidate("host", A_HOST, via="a0").address)
    net.host(b, "b0", b.add_local_candidate("host", B_HOST, via="b0").address)
    exchange(a, b)
    a.start(0.0)
    b.start(0.0)
    net.run(10.0, lambda: both_done(a, b))
    # §7.3.1.1: the larger tie-breaker ends up controlling, whatever both started as.
    assert a.controlling and not b.controlling
    assert a.state is b.state is IceState.COMPLETED
    changed = of_type(net.events_of(a) + net.events_of(b), RoleChanged)
    assert len(changed) == 1
    codes = [stun.parse(d).get(stun.ERROR_CODE) for _, _, _, d in net.sent if d[0] == 0x01 and d[1] == 0x11]
    if controlling:  # both controlling: the larger tie-breaker answers 487 (§7.3.1.1)
        assert any(c is not None and c.code == 487 for c in codes)
        assert a.stats.role_conflicts >= 1


def test_peer_reflexive_candidates_on_both_sides() -> None:
    a, b, net = simple()
    mapped = Address("198.51.100.2", 6000)  # B's packets appear from here (a NAT nobody signalled)
    net.sources[(id(b), "b0")] = mapped
    net.owners[mapped] = (b, "b0")
    exchange(a, b)
    a.start(0.0)
    b.start(0.0)
    net.run(10.0, lambda: both_done(a, b))
    assert a.state is b.state is IceState.COMPLETED
    prflx_remote = [c for c in a.remote_candidates if c.type is CandidateType.PRFLX]
    # §7.3.1.3: priority from B's PRIORITY attribute = prflx priority 110<<24 + 65535<<8 + 255
    assert [(c.address, c.priority) for c in prflx_remote] == [(mapped, 1862270975)]
    prflx_local = [c for c in b.local_candidates if c.type is CandidateType.PRFLX]
    # §7.2.5.3.1: B learns its mapped address from XOR-MAPPED-ADDRESS, with the priority it sent
    assert [(c.address, c.priority, c.base) for c in prflx_local] == [(mapped, 1862270975, B_HOST)]
    assert b.selected_pair is not None and b.selected_pair.local.type is CandidateType.PRFLX


def test_ms_ice2_nominates_three_seconds_after_first_success() -> None:
    a, b, net = simple("ms-ice2", relays=True)
    exchange(a, b)
    # The best pairs (anything from A's host) are blackholed: only A's relay path works.
    net.drop = lambda src, dst: A_HOST in (src, dst)
    a.start(0.0)
    b.start(0.0)
    net.run(20.0, lambda: both_done(a, b))
    assert a.state is IceState.COMPLETED
    successes = [t for t, _ in of_type(net.events_of(a), CheckSucceeded)]
    nominations = [t for t, e in of_type(net.events_of(a), CheckSent) if isinstance(e, CheckSent) and e.nominate]
    assert nominations and round(nominations[0] - successes[0], 6) == 3.0  # MS-ICE §3.1.6.2
    assert a.selected_pair is not None and a.selected_pair.local.type is CandidateType.RELAY
    # the host pair was still being retried (pending higher priority) when the timer fired
    assert any(p.local.address == A_HOST and p.state is PairState.IN_PROGRESS for p in a.pairs) or \
        a.stats.retransmissions > 0


def test_rfc8445_nominates_at_once_when_best_pair_succeeds() -> None:
    a, b, net = simple(relays=True)
    exchange(a, b)
    a.start(0.0)
    b.start(0.0)
    net.run(10.0, lambda: both_done(a, b))
    first_success = of_type(net.events_of(a), CheckSucceeded)[0][0]
    nomination = next(t for t, e in of_type(net.events_of(a), CheckSent) if isinstance(e, CheckSent) and e.nominate)
    assert nomination == first_success  # nothing of higher priority pending
    assert a.selected_pair is not None and a.selected_pair.local.address == A_HOST


def test_bad_integrity_gets_401_and_no_pair() -> None:
    a, b, net = simple()
    exchange(a, b)
    b.set_remote_credentials(a.local_ufrag, "wrong-password-xxxxxxxxx")
    b.start(0.0)
    net.run(0.2)
    assert a.stats.rejected >= 1 and a.state is IceState.NEW
    errors = [stun.parse(d).get(stun.ERROR_CODE) for _, src, _, d in net.sent if src == A_HOST]
    assert errors and errors[0] is not None and errors[0].code == 401


def test_non_stun_is_application_data() -> None:
    a, _, _ = simple()
    assert a.receive(b"\x80\x00rtp", ("10.0.0.2", 2000), 0.0, "a0") is False


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_agent_never_crashes_on_random_bytes(data: bytes) -> None:
    a = IceAgent("rfc8445", False, random.Random(1))
    a.add_local_candidate("host", A_HOST, via="a0")
    a.receive(data, ("10.0.0.2", 2000), 0.0, "a0")
    a.receive(stun.MAGIC_COOKIE_BYTES.join([b"\x00\x01\x00\x00", data]), ("10.0.0.2", 2000), 0.0, "a0")
    a.datagrams_to_send(0.0)


def test_two_components_each_get_a_selected_pair() -> None:
    a = IceAgent("rfc8445", True, random.Random(5), components=(1, 2))
    b = IceAgent("rfc8445", False, random.Random(6), components=(1, 2))
    net = Net()
    for agent, host, tag in ((a, "10.0.0.1", "a"), (b, "10.0.0.2", "b")):
        for component, port in ((1, 1000), (2, 1001)):
            net.host(agent, f"{tag}{component}", agent.add_local_candidate(
                "host", Address(host, port), via=f"{tag}{component}", component=component).address)
    exchange(a, b)
    a.start(0.0)
    b.start(0.0)
    net.run(5.0, lambda: both_done(a, b))
    assert a.state is b.state is IceState.COMPLETED
    for agent in (a, b):
        assert sorted(agent.selected) == [1, 2]
        assert all(p.local.component == p.remote.component == c for c, p in agent.selected.items())
    # RFC 8445 §5.1.2.1: component 2 priorities are one lower than component 1's
    rtcp = next(c for c in a.local_candidates if c.component == 2)
    assert rtcp.priority == 126 * 2**24 + 65535 * 2**8 + 254


def test_keepalive_on_the_selected_pair_every_15_seconds() -> None:
    a, b, net = simple()
    exchange(a, b)
    a.start(0.0)
    b.start(0.0)
    net.run(5.0, lambda: both_done(a, b))
    connected = a.stats.connected_at
    assert connected is not None
    net.run(connected + 31.0)
    indications = [t for t, src, _, d in net.sent if src == A_HOST and d[:2] == b"\x00\x11"]
    # RFC 8445 §11: Binding indications at Tr = 15 s on the selected pair
    assert [round(t - connected, 6) for t in indications] == [15.0, 30.0]


def test_aggressive_nomination_selects_on_first_success() -> None:
    from simulator.core.ice import IceConfig

    config = IceConfig.for_profile("rfc8445", aggressive=True)
    a = IceAgent(config, True, random.Random(8))
    b = IceAgent("rfc8445", False, random.Random(9))
    net = Net()
    net.host(a, "a0", a.add_local_candidate("host", A_HOST, via="a0").address)
    net.host(b, "b0", b.add_local_candidate("host", B_HOST, via="b0").address)
    exchange(a, b)
    a.start(0.0)
    b.start(0.0)
    net.run(5.0, lambda: both_done(a, b))
    sent = [e for _, e in of_type(net.events_of(a), CheckSent)]
    assert sent and all(isinstance(e, CheckSent) and e.nominate for e in sent)  # USE-CANDIDATE on every check
    assert a.stats.checks_sent == 1 and a.state is b.state is IceState.COMPLETED


def test_triggered_check_replaces_an_in_progress_check() -> None:
    a, b, net = simple()
    exchange(a, b)
    dropped: list[int] = []

    def drop_first_from_a(src: Address, dst: Address) -> bool:
        if src == A_HOST and not dropped:
            dropped.append(1)  # A's first check is lost (e.g. B's NAT filter before B sent anything)
            return True
        return False

    net.drop = drop_first_from_a
    a.start(0.0)
    net.run(0.1)
    b.start(net.now)
    net.run(60.0, lambda: both_done(a, b) and net.now > 45.0)
    sent = [(round(t, 6), e.transmission) for t, e in of_type(net.events_of(a), CheckSent)
            if isinstance(e, CheckSent) and not e.nominate]
    # RFC 8445 §7.3.1.4: B's check makes A cancel its in-progress check (no retransmission at 0.5 s)
    # and send a triggered one at once (the next Ta slot).
    assert sent[0] == (0.0, 1) and sent[1][1] == 1 and sent[1][0] < 0.5
    assert all(transmission == 1 for _, transmission in sent)
    assert a.state is IceState.COMPLETED and a.stats.connected_at is not None and a.stats.connected_at < 0.5
    assert not of_type(net.events_of(a), PairFailed)  # the cancelled transaction's timeout fails nothing


def test_frozen_pair_is_checked_once_its_foundation_succeeds() -> None:
    a = IceAgent("rfc8445", False, random.Random(11))  # controlled: it checks, it does not nominate
    b = IceAgent("rfc8445", True, random.Random(12))
    net = Net(delay=0.1)  # RTT 200 ms > Ta: pacing goes idle while the first check is in progress
    net.host(a, "a0", a.add_local_candidate("host", A_HOST, via="a0").address)
    b1 = b.add_local_candidate("host", B_HOST, via="b1")
    b2 = b.add_local_candidate("host", Address(B_HOST.host, 2002), via="b2", ip_index=1)
    net.host(b, "b1", b1.address)
    net.host(b, "b2", b2.address)
    assert b1.foundation == b2.foundation  # same type, base IP and transport (RFC 8445 §5.1.1.3)
    exchange(a, b)
    assert sorted(p.state.value for p in a.pairs) == ["frozen", "waiting"]
    a.start(0.0)
    net.run(1.0)
    to = [(round(t, 6), e.remote.address) for t, e in of_type(net.events_of(a), CheckSent)
          if isinstance(e, CheckSent) and e.transmission == 1]
    first_success = of_type(net.events_of(a), CheckSucceeded)[0][0]
    # §7.2.5.3.3: the success unfreezes the other pair of the foundation; it is checked in the next Ta slot
    assert to[0] == (0.0, B_HOST)
    assert to[1][1] == b2.address and first_success <= to[1][0] <= first_success + 0.05 + 1e-9


def test_ice_tcp_active_connects_to_passive() -> None:
    """RFC 6544 on the virtual network: A offers TCP active (port 9) and passive, B the same; only
    active→passive pairs are checked, the connection's ephemeral port shows up as peer-reflexive."""
    a = IceAgent("rfc8445", True, random.Random(21))
    b = IceAgent("rfc8445", False, random.Random(22))
    net = Net()
    for agent, host, tag, ephemeral in ((a, "10.0.0.1", "a", 40001), (b, "10.0.0.2", "b", 40002)):
        passive = agent.add_local_candidate("host", Address(host, 5000), via=f"{tag}-pass", transport="tcp",
                                            tcptype="passive")
        active = agent.add_local_candidate("host", Address(host, 9), via=f"{tag}-act", transport="tcp",
                                           tcptype="active")
        net.host(agent, f"{tag}-pass", passive.address)
        net.host(agent, f"{tag}-act", Address(host, ephemeral))  # a connection leaves from an ephemeral port
        # RFC 6544 §4.2: local preference 2^13 * direction + (8191 - ip_index), type preference host 126
        assert passive.priority == 126 * 2**24 + (2**13 * 4 + 8191) * 2**8 + 255
        assert active.priority == 126 * 2**24 + (2**13 * 6 + 8191) * 2**8 + 255
    exchange(a, b)
    checked = {(p.local.tcptype, p.remote.tcptype) for p in a.pairs if p.state is PairState.WAITING}
    assert checked == {("active", "passive")}
    a.start(0.0)
    b.start(0.0)
    net.run(5.0, lambda: both_done(a, b))
    assert a.state is b.state is IceState.COMPLETED
    assert a.selected_pair is not None and b.selected_pair is not None
    assert a.selected_pair.local.transport == b.selected_pair.local.transport == "tcp"
    sent_from = {src for _, src, _, _ in net.sent}
    assert Address("10.0.0.1", 9) not in sent_from and Address("10.0.0.2", 9) not in sent_from
