"""The RFC 8656 Allocate/Refresh fast path answers byte for byte what the generic pipeline answers.

Two server cores with the same seed get the same request bytes; one has ``fast_path`` switched off. Every
transmit (sink, bytes, address), every metric and the allocation table must match, for the requests the
fast path takes (401, Allocate, Refresh, Refresh(0), retransmissions) and for the ones it must hand to the
generic path (437, 438, 441, 400, 420, 442, 486, 508, TCP relays, EVEN-PORT, non-UTF-8 text). MS-TURN
(legacy and v3, padded and unaligned) never takes it, and its answers are checked the same way; integrity
is checked against ``hmac.digest`` directly, independent of the codec's cached-pad HMAC.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import random
from collections.abc import Callable
from typing import Any

import pytest

from simulator.wire import msturn, stun, turn
from simulator.wire.stun import Address, Attribute, MessageClass, attr
from simulator.wire.turn import TurnMethod
from tests.av.helpers import CLIENT, REALM, USER, MsClient, RfcClient, StreamClient, make_harness

MS = msturn.MsTurnMethod
UDP, TCP = 17, 6


class Twin:
    """A fast-path core and a generic-only core fed the same bytes; every answer must be identical."""

    def __init__(self, **config: Any) -> None:
        self.fast = make_harness(**config)
        self.slow = make_harness(**config)
        self.slow.server.fast_path = False
        self.dispatched = 0  # requests the fast core sent through the generic pipeline
        generic = self.fast.server._dispatch

        def counting(*args: Any) -> None:
            self.dispatched += 1
            generic(*args)

        self.fast.server._dispatch = counting  # type: ignore[method-assign]

    @staticmethod
    def _shape(out: list[tuple[Any, bytes, Any]]) -> list[tuple[str, bytes, Any]]:
        return [(sink.name, data, tuple(addr)) for sink, data, addr in out]

    def send(self, data: bytes, addr: Address = CLIENT) -> list[bytes]:
        fast = self.fast.deliver(data, addr)
        slow = self.slow.deliver(data, addr)
        assert self._shape(fast) == self._shape(slow)
        self.check_state()
        return [d for sink, d, a in fast if sink is self.fast.udp and a == addr]

    def one(self, client: RfcClient, data: bytes, addr: Address = CLIENT) -> stun.Message:
        [answer] = self.send(data, addr)
        return client.learn(answer)

    def advance(self, seconds: float) -> None:
        self.fast.advance(seconds)
        self.slow.advance(seconds)

    def check_state(self) -> None:
        fast, slow = self.fast.server, self.slow.server
        assert dataclasses.asdict(fast.metrics) == dataclasses.asdict(slow.metrics)
        assert [(a.key, a.public, a.expires, a.username) for a in fast.allocations()] == [
            (a.key, a.public, a.expires, a.username) for a in slow.allocations()
        ]


def mi_valid(message: bytes, key: bytes, digest: str = "sha1", pad64: bool = False, padded: bool = True) -> bool:
    """MESSAGE-INTEGRITY (0x0008) checked with the standard library's HMAC, from the raw bytes."""
    pos = 20
    while pos + 4 <= len(message):
        code, length = int.from_bytes(message[pos : pos + 2], "big"), int.from_bytes(message[pos + 2 : pos + 4], "big")
        if code == 0x0008:
            signed = message[:2] + (pos + 4 + length - 20).to_bytes(2, "big") + message[4:pos]
            if pad64:
                signed += bytes(-len(signed) % 64)
            return hmac.compare_digest(hmac.digest(key, signed, digest)[:length], message[pos + 4 : pos + 4 + length])
        pos += 4 + ((length + 3) & ~3 if padded else length)
    return False


def test_allocation_cycle_takes_the_fast_path_and_matches_the_generic_one() -> None:
    twin = Twin()
    c = RfcClient()
    rt = attr(turn.REQUESTED_TRANSPORT, UDP)
    first = twin.one(c, c.request(TurnMethod.ALLOCATE, rt, attr(turn.LIFETIME, 600), auth=False))
    assert (first.cls, first.get(stun.ERROR_CODE)) == (MessageClass.ERROR, stun.ErrorCode(401, "Unauthorized"))
    allocate = c.request(TurnMethod.ALLOCATE, rt, attr(turn.LIFETIME, 600))
    [raw] = twin.send(allocate)
    ok = c.learn(raw)
    assert ok.cls == MessageClass.SUCCESS and mi_valid(raw, c.key) and stun.verify_integrity(ok, c.key)
    assert ok.get(stun.XOR_MAPPED_ADDRESS) == CLIENT and ok.get(turn.LIFETIME) == 600
    assert twin.send(allocate) == [raw]  # retransmission: the cached answer (RFC 8489 §6.3.1)
    for lifetime in (1200, 10, 99999, None):
        extra = () if lifetime is None else (attr(turn.LIFETIME, lifetime),)
        [raw] = twin.send(c.request(TurnMethod.REFRESH, *extra))
        assert mi_valid(raw, c.key) and c.learn(raw).cls == MessageClass.SUCCESS
        twin.advance(1.5)
    refresh0 = c.request(TurnMethod.REFRESH, attr(turn.LIFETIME, 0))
    [raw] = twin.send(refresh0)
    assert c.learn(raw).get(turn.LIFETIME) == 0 and twin.fast.server.allocation_count == 0
    assert twin.send(refresh0) == [raw]  # replayed, not a 437
    unsigned_refresh = twin.one(c, RfcClient().request(TurnMethod.REFRESH, attr(turn.LIFETIME, 0), auth=False))
    assert unsigned_refresh.get(stun.ERROR_CODE) == stun.ErrorCode(401, "Unauthorized")
    assert twin.dispatched == 0  # all of it without building a Message


def test_optional_attributes_the_fast_path_knows() -> None:
    twin = Twin()
    c = RfcClient()
    twin.one(c, c.request(TurnMethod.ALLOCATE, attr(turn.REQUESTED_TRANSPORT, UDP), auth=False))
    msg = stun.request(
        TurnMethod.ALLOCATE, c.tid(), attr(stun.SOFTWARE, "edgesim test ü"), attr(turn.REQUESTED_TRANSPORT, UDP),
        attr(turn.DONT_FRAGMENT, True), attr(stun.USERNAME, USER), attr(stun.REALM, REALM),
        attr(stun.NONCE, c.nonce or ""), dialect=turn.RFC,
    )
    [raw] = twin.send(msg.serialize(key=c.key, fingerprint=True))
    assert c.learn(raw).cls == MessageClass.SUCCESS and mi_valid(raw, c.key)
    assert twin.dispatched == 0


def _generic_cases() -> list[tuple[str, Callable[[Twin, RfcClient], bytes]]]:
    rt = attr(turn.REQUESTED_TRANSPORT, UDP)

    def other_password(t: Twin, c: RfcClient) -> bytes:
        return RfcClient(password="wrong", realm=c.realm, nonce=c.nonce).request(TurnMethod.ALLOCATE, rt)

    def stale_nonce(t: Twin, c: RfcClient) -> bytes:
        t.advance(4000)
        return c.request(TurnMethod.ALLOCATE, rt)

    def bad_realm(t: Twin, c: RfcClient) -> bytes:
        return RfcClient(realm="elsewhere", nonce=c.nonce).request(TurnMethod.ALLOCATE, rt)

    def forged_nonce(t: Twin, c: RfcClient) -> bytes:
        return RfcClient(realm=c.realm, nonce="ffffffff-0123456789abcdef").request(TurnMethod.ALLOCATE, rt)

    def no_username(t: Twin, c: RfcClient) -> bytes:
        msg = stun.request(TurnMethod.ALLOCATE, c.tid(), rt, attr(stun.REALM, REALM), attr(stun.NONCE, c.nonce or ""),
                           dialect=turn.RFC)
        return msg.serialize(key=c.key)

    def latin1_username(t: Twin, c: RfcClient) -> bytes:
        good = RfcClient(username="alXce", realm=c.realm, nonce=c.nonce).request(TurnMethod.ALLOCATE, rt)
        return good.replace(b"alXce", b"al\xefce")  # not UTF-8: 400 (RFC 8489 §14.3)

    def latin1_software_retransmitted(t: Twin, c: RfcClient) -> bytes:
        msg = stun.request(TurnMethod.ALLOCATE, c.tid(), rt, attr(stun.SOFTWARE, "ab"), attr(stun.USERNAME, USER),
                           attr(stun.REALM, REALM), attr(stun.NONCE, c.nonce or ""), dialect=turn.RFC)
        good = msg.serialize(key=c.key)
        t.send(good)  # cached success; the same transaction with broken UTF-8 is a 400, not a replay
        return good.replace(b"\x80\x22\x00\x02ab", b"\x80\x22\x00\x02\xff\xfe")

    def unknown_attribute(t: Twin, c: RfcClient) -> bytes:
        return c.request(TurnMethod.ALLOCATE, rt, Attribute(0x7F01, b"abcd"))

    def no_transport(t: Twin, c: RfcClient) -> bytes:
        return c.request(TurnMethod.ALLOCATE, attr(turn.LIFETIME, 600))

    def transport_tcp_over_udp(t: Twin, c: RfcClient) -> bytes:
        return c.request(TurnMethod.ALLOCATE, attr(turn.REQUESTED_TRANSPORT, TCP))

    def transport_sctp(t: Twin, c: RfcClient) -> bytes:
        return c.request(TurnMethod.ALLOCATE, attr(turn.REQUESTED_TRANSPORT, 132))

    def even_port(t: Twin, c: RfcClient) -> bytes:
        return c.request(TurnMethod.ALLOCATE, rt, attr(turn.EVEN_PORT, True))

    def twice(t: Twin, c: RfcClient) -> bytes:
        t.send(c.request(TurnMethod.ALLOCATE, rt))
        return c.request(TurnMethod.ALLOCATE, rt)  # 437

    def refresh_without_allocation(t: Twin, c: RfcClient) -> bytes:
        return c.request(TurnMethod.REFRESH, attr(turn.LIFETIME, 600))

    def refresh_by_another_user(t: Twin, c: RfcClient) -> bytes:
        t.send(c.request(TurnMethod.ALLOCATE, rt))
        bob = RfcClient(username="bob", password="hunter2", realm=c.realm, nonce=c.nonce)
        return bob.request(TurnMethod.REFRESH, attr(turn.LIFETIME, 0))  # 441

    def duplicate_lifetime(t: Twin, c: RfcClient) -> bytes:
        return c.request(TurnMethod.ALLOCATE, rt, attr(turn.LIFETIME, 600), attr(turn.LIFETIME, 0))

    def bad_lifetime_length(t: Twin, c: RfcClient) -> bytes:
        good = c.request(TurnMethod.ALLOCATE, rt, attr(turn.LIFETIME, 600))
        return good.replace(b"\x00\x0d\x00\x04\x00\x00\x02\x58", b"\x00\x0d\x00\x03\x00\x00\x02\x58")

    def truncated(t: Twin, c: RfcClient) -> bytes:
        return c.request(TurnMethod.ALLOCATE, rt)[:-4]

    def bad_integrity(t: Twin, c: RfcClient) -> bytes:
        good = bytearray(c.request(TurnMethod.ALLOCATE, rt))
        good[-1] ^= 1
        return bytes(good)

    return [(f.__name__, f) for f in (
        other_password, stale_nonce, bad_realm, forged_nonce, no_username, latin1_username,
        latin1_software_retransmitted, unknown_attribute, no_transport, transport_tcp_over_udp, transport_sctp,
        even_port, twice, refresh_without_allocation, refresh_by_another_user, duplicate_lifetime,
        bad_lifetime_length, truncated, bad_integrity,
    )]


@pytest.mark.parametrize(("name", "case"), _generic_cases(), ids=[n for n, _ in _generic_cases()])
def test_requests_the_fast_path_leaves_to_the_generic_one(name: str, case: Callable[[Twin, RfcClient], bytes]) -> None:
    twin = Twin()
    c = RfcClient()
    twin.one(c, c.request(TurnMethod.ALLOCATE, attr(turn.REQUESTED_TRANSPORT, UDP), auth=False))
    answers = twin.send(case(twin, c))  # identical answers from both cores
    assert answers, name


def test_quota_and_capacity_errors_from_the_fast_path_are_the_generic_answers() -> None:
    twin = Twin(user_quota=1, first_port=50000, last_port=50001, refuse={50000})
    rt = attr(turn.REQUESTED_TRANSPORT, UDP)
    a, b = RfcClient(), RfcClient()
    twin.one(a, a.request(TurnMethod.ALLOCATE, rt, auth=False))
    assert twin.one(a, a.request(TurnMethod.ALLOCATE, rt)).cls == MessageClass.SUCCESS
    b.realm, b.nonce = a.realm, a.nonce
    other = Address(CLIENT.host, CLIENT.port + 1)
    [raw] = twin.send(b.request(TurnMethod.ALLOCATE, rt), other)
    assert turn.parse(raw).get(stun.ERROR_CODE) == stun.ErrorCode(486, "Allocation Quota Reached")
    assert mi_valid(raw, b.key)
    twin.send(a.request(TurnMethod.REFRESH, attr(turn.LIFETIME, 0)))
    twin2 = Twin(first_port=50000, last_port=50000, refuse={50000})
    c = RfcClient()
    twin2.one(c, c.request(TurnMethod.ALLOCATE, rt, auth=False))
    [raw] = twin2.send(c.request(TurnMethod.ALLOCATE, rt))
    assert turn.parse(raw).get(stun.ERROR_CODE) == stun.ErrorCode(508, "Insufficient Capacity")


def test_ipv6_client_and_many_hosts() -> None:
    twin = Twin()
    rt = attr(turn.REQUESTED_TRANSPORT, UDP)
    rng = random.Random(7)
    for addr in (Address("2001:db8::7", 40000), Address("198.51.100.200", 1), Address("10.9.8.7", 65535)):
        c = RfcClient(rng=random.Random(rng.getrandbits(32)))
        twin.one(c, c.request(TurnMethod.ALLOCATE, rt, auth=False), addr)
        [raw] = twin.send(c.request(TurnMethod.ALLOCATE, rt), addr)
        ok = c.learn(raw)
        assert ok.get(stun.XOR_MAPPED_ADDRESS) == addr and mi_valid(raw, c.key)
        twin.send(c.request(TurnMethod.REFRESH, attr(turn.LIFETIME, 0)), addr)
    assert twin.dispatched == 0


def test_turn_over_tcp_takes_the_fast_path_too() -> None:
    outputs = []
    for fast in (True, False):
        h = make_harness(seed=9)
        h.server.fast_path = fast
        c = RfcClient(rng=random.Random(3))
        s = StreamClient(h, CLIENT)
        rt = attr(turn.REQUESTED_TRANSPORT, UDP)
        [first] = s.send(c.request(TurnMethod.ALLOCATE, rt, auth=False))
        c.learn(first)
        [ok] = s.send(c.request(TurnMethod.ALLOCATE, rt))
        [tcp_relay] = StreamClient(h, Address(CLIENT.host, 1)).send(c.request(TurnMethod.ALLOCATE, attr(
            turn.REQUESTED_TRANSPORT, TCP)))
        [gone] = s.send(c.request(TurnMethod.REFRESH, attr(turn.LIFETIME, 0)))
        outputs.append((first, ok, tcp_relay, gone, dataclasses.asdict(h.server.metrics)))
        assert c.learn(ok).cls == MessageClass.SUCCESS and mi_valid(ok, c.key)
        assert c.learn(tcp_relay).cls == MessageClass.SUCCESS
    assert outputs[0] == outputs[1]


def _unaligned(c: MsClient, method: int, *attrs: Attribute, version: int) -> bytes:
    body = [attr(msturn.MS_VERSION, version), *attrs, attr(msturn.USERNAME, c.username),
            attr(msturn.REALM, c.realm or ""), attr(msturn.NONCE, c.nonce or "")]
    message = msturn.build(method, MessageClass.REQUEST, c.tid(), *body, version=version)
    unpadded = dataclasses.replace(message, dialect=msturn.UNALIGNED[msturn.dialect_for(version)])
    return unpadded.serialize(key=c.key, integrity=(msturn.integrity_for(version),))


@pytest.mark.parametrize("version", [2, 3])
@pytest.mark.parametrize("aligned", [True, False])
def test_msturn_never_takes_the_fast_path_and_answers_identically(version: int, aligned: bool) -> None:
    twin = Twin()
    c = MsClient(version=version)
    [challenge] = twin.send(c.request(MS.ALLOCATE, auth=False))
    c.learn(challenge)
    digest = "sha256" if version >= 3 else "sha1"
    for lifetime in (3600, 1200, 0):
        request = (
            c.request(MS.ALLOCATE, attr(msturn.LIFETIME, lifetime))
            if aligned
            else _unaligned(c, MS.ALLOCATE, attr(msturn.LIFETIME, lifetime), version=version)
        )
        [raw] = twin.send(request)
        answer = c.learn(raw)
        assert answer.cls == MessageClass.SUCCESS and answer.get(msturn.LIFETIME) == lifetime
        assert mi_valid(raw, c.key, digest, pad64=True, padded=aligned)
    assert twin.dispatched == 4


def test_rfc_and_msturn_on_the_same_core_stay_apart() -> None:
    twin = Twin()
    rfc, ms = RfcClient(), MsClient(version=3)
    rt = attr(turn.REQUESTED_TRANSPORT, UDP)
    twin.one(rfc, rfc.request(TurnMethod.ALLOCATE, rt, auth=False))
    ms.learn(twin.send(ms.request(MS.ALLOCATE, auth=False))[0])
    assert twin.one(rfc, rfc.request(TurnMethod.ALLOCATE, rt)).cls == MessageClass.SUCCESS
    assert twin.send(ms.request(MS.ALLOCATE, attr(msturn.LIFETIME, 600))) == []  # RFC 5-tuple: MS is foreign
    other = Address(CLIENT.host, CLIENT.port + 7)
    ms.learn(twin.send(ms.request(MS.ALLOCATE, attr(msturn.LIFETIME, 600)), other)[0])
    assert twin.send(rfc.request(TurnMethod.REFRESH, attr(turn.LIFETIME, 0)), other) == []  # and vice versa
    assert twin.fast.server.allocation_count == 2


@pytest.mark.parametrize("digest", ["sha1", "sha256"])
def test_cached_pad_hmac_is_hmac(digest: str) -> None:
    rng = random.Random(digest)
    for _ in range(300):
        key = rng.randbytes(rng.choice([0, 1, 16, 20, 32, 63, 64, 65, 200]))
        data = rng.randbytes(rng.randrange(0, 600))
        assert stun.hmac_digest(key, data, digest) == hmac.digest(key, data, digest)
        assert stun.hmac_digest(bytearray(key), data, digest) == hmac.digest(key, data, digest)
    assert stun.hmac_digest(b"k", b"d", "md5") == hmac.new(b"k", b"d", hashlib.md5).digest()


def test_deleted_allocations_are_freed_and_refreshed_ones_still_expire() -> None:
    import gc

    from simulator.core.turn import Allocation

    h = make_harness(first_port=50000, last_port=50999)
    rt = attr(turn.REQUESTED_TRANSPORT, UDP)
    for i in range(300):
        c = RfcClient()
        addr = Address(CLIENT.host, 20000 + i)
        [challenge] = h.to_client(c.request(TurnMethod.ALLOCATE, rt, auth=False), addr)
        c.learn(challenge)
        h.to_client(c.request(TurnMethod.ALLOCATE, rt), addr)
        h.to_client(c.request(TurnMethod.REFRESH, attr(turn.LIFETIME, 0)), addr)
    gc.collect()
    assert not [o for o in gc.get_objects() if isinstance(o, Allocation)]  # not even the expiry heap keeps them
    keeper = RfcClient()
    [challenge] = h.to_client(keeper.request(TurnMethod.ALLOCATE, rt, auth=False))
    keeper.learn(challenge)
    h.to_client(keeper.request(TurnMethod.ALLOCATE, rt))
    for _ in range(3000):  # stale heap entries pile up, and the heap is rebuilt from the live one
        [ok] = h.to_client(keeper.request(TurnMethod.REFRESH, attr(turn.LIFETIME, 600)))
        assert keeper.learn(ok).cls == MessageClass.SUCCESS
    assert len(h.server._expiry_heap) <= 2 * 1 + 1024 + 1
    h.advance(599)
    assert h.server.allocation_count == 1
    h.advance(2)
    assert h.server.allocation_count == 0 and h.server.metrics.allocations_expired == 1
