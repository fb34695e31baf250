"""RFC 8656 TURN server core: auth, every error code, lifetimes and timers via ``now``, the response
cache, permissions, channels, Send/Data, quotas and 508, all driven in memory through bytes."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from simulator.core.credentials import IssuedCredential, rest_password
from simulator.wire import stun, turn
from simulator.wire.stun import Address, Attribute, MessageClass, attr
from simulator.wire.turn import TurnMethod
from tests.av.helpers import (
    CLIENT,
    PASSWORD,
    PEER,
    PRIVATE,
    PUBLIC,
    REALM,
    USER,
    Harness,
    RfcClient,
    allocate,
    error_code,
    make_harness,
    transfer,
)

UDP = attr(turn.REQUESTED_TRANSPORT, 17)


def bound(h: Harness, client: RfcClient, peer: Address = PEER, channel: int = 0x4000) -> int:
    """Allocate + ChannelBind; returns the relay port."""
    resp = allocate(h, client)
    assert resp.cls == MessageClass.SUCCESS, resp
    ok = transfer(h, client, client.request(TurnMethod.CHANNEL_BIND, attr(turn.CHANNEL_NUMBER, channel),
                                            attr(turn.XOR_PEER_ADDRESS, peer)))
    assert ok.cls == MessageClass.SUCCESS
    relay = resp.get(turn.XOR_RELAYED_ADDRESS)
    assert relay is not None
    return relay.port


# ---------------------------------------------------------------- Binding and Allocate


def test_binding_answers_xor_mapped_address_fast_path_and_full_path() -> None:
    h = make_harness()
    c = RfcClient()
    bare = stun.request(stun.StunMethod.BINDING, c.tid()).serialize()
    [raw] = h.to_client(bare)
    resp = stun.parse(raw)
    assert resp.cls == MessageClass.SUCCESS and resp.transaction_id == bare[8:20]
    assert resp.get(stun.XOR_MAPPED_ADDRESS) == CLIENT
    with_fp = stun.request(stun.StunMethod.BINDING, c.tid(), attr(stun.SOFTWARE, "x")).serialize(fingerprint=True)
    [raw] = h.to_client(with_fp)
    resp = stun.parse(raw)
    assert resp.get(stun.XOR_MAPPED_ADDRESS) == CLIENT and stun.verify_fingerprint(resp)


def test_allocate_401_then_success_with_public_relay_and_reflexive_address() -> None:
    h = make_harness()
    c = RfcClient()
    first = transfer(h, c, c.request(TurnMethod.ALLOCATE, UDP, auth=False))
    assert error_code(first) == 401
    assert first.get(stun.REALM) == REALM and first.get(stun.NONCE)
    assert not first.has(stun.MESSAGE_INTEGRITY)
    resp = transfer(h, c, c.request(TurnMethod.ALLOCATE, UDP))
    assert resp.cls == MessageClass.SUCCESS
    assert stun.verify_integrity(resp, c.key)
    relay = resp.get(turn.XOR_RELAYED_ADDRESS)
    assert relay is not None and relay.host == PUBLIC and 50000 <= relay.port <= 50099
    assert resp.get(stun.XOR_MAPPED_ADDRESS) == CLIENT
    assert resp.get(turn.LIFETIME) == 600
    assert ("udp", relay.port) in h.binder.bound  # a real (fake) socket on the private address
    assert h.server.allocation_count == 1


def test_wrong_password_is_401_and_unknown_user_is_401() -> None:
    h = make_harness()
    c = RfcClient(password="wrong")
    transfer(h, c, c.request(TurnMethod.ALLOCATE, UDP, auth=False))
    assert error_code(transfer(h, c, c.request(TurnMethod.ALLOCATE, UDP))) == 401
    c2 = RfcClient(username="mallory")
    transfer(h, c2, c2.request(TurnMethod.ALLOCATE, UDP, auth=False), Address("198.51.100.8", 1))
    assert error_code(transfer(h, c2, c2.request(TurnMethod.ALLOCATE, UDP), Address("198.51.100.8", 1))) == 401
    assert h.server.allocation_count == 0


def test_integrity_without_username_is_400() -> None:
    h = make_harness()
    c = RfcClient()
    transfer(h, c, c.request(TurnMethod.ALLOCATE, UDP, auth=False))
    msg = stun.request(TurnMethod.ALLOCATE, c.tid(), UDP, attr(stun.REALM, REALM), dialect=turn.RFC)
    assert error_code(transfer(h, c, msg.serialize(key=c.key))) == 400


def test_missing_requested_transport_is_400_and_unknown_transport_is_442() -> None:
    h = make_harness()
    c = RfcClient()
    transfer(h, c, c.request(TurnMethod.ALLOCATE, UDP, auth=False))
    resp = transfer(h, c, c.request(TurnMethod.ALLOCATE, attr(turn.LIFETIME, 600)))
    assert error_code(resp) == 400
    assert stun.verify_integrity(resp, c.key)  # errors after authentication are signed
    assert error_code(transfer(h, c, c.request(TurnMethod.ALLOCATE, attr(turn.REQUESTED_TRANSPORT, 1)))) == 442
    # RFC 6062 §5.1: a TCP relay over a UDP control 5-tuple is a 400
    assert error_code(transfer(h, c, c.request(TurnMethod.ALLOCATE, attr(turn.REQUESTED_TRANSPORT, 6)))) == 400


def test_malformed_request_with_transaction_id_gets_400_and_garbage_is_dropped() -> None:
    h = make_harness()
    c = RfcClient()
    good = c.request(TurnMethod.ALLOCATE, UDP, auth=False)
    broken = good[:2] + struct.pack("!H", len(good) - 20 + 4) + good[4:] + b"\x00\x19\x00\x08"
    [raw] = h.to_client(broken)
    resp = turn.parse(raw)
    assert error_code(resp) == 400 and resp.transaction_id == good[8:20]
    assert h.to_client(b"\xff" * 40) == []
    assert h.to_client(b"\x00\x01") == []


def test_unknown_comprehension_required_attribute_is_420_with_unknown_attributes() -> None:
    h = make_harness()
    c = RfcClient()
    transfer(h, c, c.request(TurnMethod.ALLOCATE, UDP, auth=False))
    resp = transfer(h, c, c.request(TurnMethod.ALLOCATE, UDP, Attribute(0x0031, b"\x00\x00\x00\x00")))
    assert error_code(resp) == 420
    assert resp.get(stun.UNKNOWN_ATTRIBUTES) == (0x0031,)
    # comprehension-optional unknown attributes are ignored (RFC 8489 §6.3.1)
    assert transfer(h, c, c.request(TurnMethod.ALLOCATE, UDP, Attribute(0x8031, b"abcd"))).cls == MessageClass.SUCCESS


def test_second_allocate_on_same_five_tuple_is_437_but_retransmission_is_replayed() -> None:
    h = make_harness()
    c = RfcClient()
    transfer(h, c, c.request(TurnMethod.ALLOCATE, UDP, auth=False))
    request = c.request(TurnMethod.ALLOCATE, UDP)
    [first] = h.to_client(request)
    [again] = h.to_client(request)  # RFC 8489 §6.3.1: same transaction ID -> same response
    assert again == first and turn.parse(first).cls == MessageClass.SUCCESS
    assert h.server.metrics.cache_hits == 1
    assert h.server.allocation_count == 1
    assert error_code(transfer(h, c, c.request(TurnMethod.ALLOCATE, UDP))) == 437
    # the cache is per 5-tuple: another client with that transaction ID is not replayed
    other = RfcClient(username="bob", password="hunter2")
    addr = Address("198.51.100.9", 4000)
    transfer(h, other, other.request(TurnMethod.ALLOCATE, UDP, auth=False), addr)
    # the cached entry expires after 40 s
    h.advance(41)
    assert error_code(transfer(h, c, request)) == 437


def test_refresh_zero_deletes_and_its_retransmission_is_not_a_437() -> None:
    h = make_harness()
    c = RfcClient()
    port = allocate(h, c).get(turn.XOR_RELAYED_ADDRESS).port  # type: ignore[union-attr]
    delete = c.request(TurnMethod.REFRESH, attr(turn.LIFETIME, 0))
    resp = transfer(h, c, delete)
    assert resp.cls == MessageClass.SUCCESS and resp.get(turn.LIFETIME) == 0
    assert h.server.allocation_count == 0 and ("udp", port) not in h.binder.bound
    assert transfer(h, c, delete).cls == MessageClass.SUCCESS  # replayed
    assert error_code(transfer(h, c, c.request(TurnMethod.REFRESH, attr(turn.LIFETIME, 0)))) == 437


def test_requests_without_allocation_are_437() -> None:
    h = make_harness()
    c = RfcClient()
    transfer(h, c, c.request(TurnMethod.REFRESH, auth=False))
    for method, attrs in [
        (TurnMethod.REFRESH, ()),
        (TurnMethod.CREATE_PERMISSION, (attr(turn.XOR_PEER_ADDRESS, PEER),)),
        (TurnMethod.CHANNEL_BIND, (attr(turn.CHANNEL_NUMBER, 0x4000), attr(turn.XOR_PEER_ADDRESS, PEER))),
    ]:
        assert error_code(transfer(h, c, c.request(method, *attrs))) == 437


def test_stale_nonce_is_438_with_a_new_nonce_then_the_retry_works() -> None:
    h = make_harness(nonce_lifetime=100.0)
    c = RfcClient()
    allocate(h, c)
    old = c.nonce
    h.now += 101
    resp = transfer(h, c, c.request(TurnMethod.REFRESH))
    assert error_code(resp) == 438 and resp.get(stun.REALM) == REALM
    assert c.nonce != old
    assert transfer(h, c, c.request(TurnMethod.REFRESH)).cls == MessageClass.SUCCESS
    # a forged nonce is stale too
    c.nonce = "ffffffff-0000000000000000"
    assert error_code(transfer(h, c, c.request(TurnMethod.REFRESH))) == 438


def test_other_user_on_the_same_five_tuple_is_441() -> None:
    h = make_harness()
    c = RfcClient()
    allocate(h, c)
    bob = RfcClient(username="bob", password="hunter2", realm=c.realm, nonce=c.nonce)
    assert error_code(transfer(h, bob, bob.request(TurnMethod.REFRESH))) == 441
    assert error_code(transfer(h, bob, bob.request(TurnMethod.CREATE_PERMISSION,
                                                   attr(turn.XOR_PEER_ADDRESS, PEER)))) == 441


def test_peer_denied_by_policy_is_403() -> None:
    h = make_harness(denied_peers=(ipaddress.ip_network("10.0.0.0/8"),))
    c = RfcClient()
    allocate(h, c)
    denied = Address("10.1.2.3", 9)
    resp = transfer(h, c, c.request(TurnMethod.CREATE_PERMISSION, attr(turn.XOR_PEER_ADDRESS, denied)))
    assert error_code(resp) == 403
    resp = transfer(h, c, c.request(TurnMethod.CHANNEL_BIND, attr(turn.CHANNEL_NUMBER, 0x4001),
                                    attr(turn.XOR_PEER_ADDRESS, denied)))
    assert error_code(resp) == 403
    # all or nothing: one denied peer installs no permission for the others
    resp = transfer(h, c, c.request(TurnMethod.CREATE_PERMISSION, attr(turn.XOR_PEER_ADDRESS, PEER),
                                    attr(turn.XOR_PEER_ADDRESS, denied)))
    assert error_code(resp) == 403
    alloc = h.server.allocation_for(CLIENT)
    assert alloc is not None and PEER.host not in alloc.permissions


def test_user_quota_and_total_quota_are_486() -> None:
    h = make_harness(user_quota=2, max_allocations=3)
    clients = [RfcClient() for _ in range(3)]
    results = [error_code(allocate(h, c, addr=Address("198.51.100.7", 41000 + i))) for i, c in enumerate(clients)]
    assert results == [None, None, 486]
    bob = RfcClient(username="bob", password="hunter2")
    assert error_code(allocate(h, bob, addr=Address("198.51.100.8", 1))) is None
    bob2 = RfcClient(username="bob", password="hunter2")
    assert error_code(allocate(h, bob2, addr=Address("198.51.100.8", 2))) == 486  # total of 3
    assert h.server.metrics.errors[486] == 2


def test_port_exhaustion_and_bind_failures_are_508_and_ports_come_back() -> None:
    h = make_harness(first_port=50000, last_port=50003, refuse={50001})
    got = []
    for i in range(4):
        c = RfcClient()
        resp = allocate(h, c, addr=Address("198.51.100.7", 42000 + i))
        got.append(error_code(resp) or resp.get(turn.XOR_RELAYED_ADDRESS).port)  # type: ignore[union-attr]
    # three bindable ports, then 508 (the refused port went to the tail and was tried again)
    assert sorted(p for p in got if p != 508) == [50000, 50002, 50003] and got[-1] == 508
    assert h.server.metrics.bind_failures >= 1
    c = RfcClient()
    addr = Address("198.51.100.7", 42000)
    # delete one allocation: its port is free again
    transfer(h, c, c.request(TurnMethod.REFRESH, auth=False), addr)
    h.server.delete_all(h.now)
    assert allocate(h, RfcClient(), addr=Address("198.51.100.50", 1)).cls == MessageClass.SUCCESS


def test_even_port_with_reservation_token_then_redeemed() -> None:
    h = make_harness()
    c = RfcClient()
    resp = allocate(h, c, UDP, attr(turn.EVEN_PORT, True))
    relay = resp.get(turn.XOR_RELAYED_ADDRESS)
    token = resp.get(turn.RESERVATION_TOKEN)
    assert relay is not None and relay.port % 2 == 0 and token is not None
    c2 = RfcClient()
    addr = Address("198.51.100.7", 40001)
    resp2 = allocate(h, c2, UDP, attr(turn.RESERVATION_TOKEN, token), addr=addr)
    assert resp2.get(turn.XOR_RELAYED_ADDRESS).port == relay.port + 1  # type: ignore[union-attr]
    c3 = RfcClient()
    resp3 = allocate(h, c3, UDP, attr(turn.RESERVATION_TOKEN, token), attr(turn.EVEN_PORT, False),
                     addr=Address("198.51.100.7", 40002))
    assert error_code(resp3) == 400


def test_requested_address_family_ipv6_is_440() -> None:
    h = make_harness()
    c = RfcClient()
    assert error_code(allocate(h, c, UDP, attr(turn.REQUESTED_ADDRESS_FAMILY, 0x02))) == 440


# ---------------------------------------------------------------- lifetimes and timers


def test_lifetime_is_clamped_and_the_allocation_expires_on_the_timer() -> None:
    h = make_harness()
    c = RfcClient()
    resp = allocate(h, c, UDP, attr(turn.LIFETIME, 30))
    assert resp.get(turn.LIFETIME) == 600  # below the default: the default
    resp = transfer(h, c, c.request(TurnMethod.REFRESH, attr(turn.LIFETIME, 99999)))
    assert resp.get(turn.LIFETIME) == 3600  # above the maximum: the maximum
    port = next(iter(h.binder.bound))[1]
    h.advance(3599)
    assert h.server.allocation_count == 1
    timer = h.server.get_timer()
    assert timer is not None and timer <= h.now + 1
    h.advance(1)
    assert h.server.allocation_count == 0 and ("udp", port) not in h.binder.bound
    assert h.server.metrics.allocations_expired == 1
    assert error_code(transfer(h, c, c.request(TurnMethod.REFRESH))) == 438  # the nonce aged too
    assert error_code(transfer(h, c, c.request(TurnMethod.REFRESH))) == 437


def test_permission_lasts_300_seconds_and_filters_peer_data() -> None:
    h = make_harness()
    c = RfcClient()
    port = allocate(h, c).get(turn.XOR_RELAYED_ADDRESS).port  # type: ignore[union-attr]
    assert h.from_peer(port, b"early") == []  # no permission yet
    assert transfer(h, c, c.request(TurnMethod.CREATE_PERMISSION, attr(turn.XOR_PEER_ADDRESS, PEER))).cls == \
        MessageClass.SUCCESS
    [(sink, data, addr)] = h.from_peer(port, b"hello", Address(PEER.host, 6000))  # permission is per IP
    ind = turn.parse(data)
    assert sink is h.udp and addr == CLIENT
    assert (ind.method, ind.cls) == (TurnMethod.DATA, MessageClass.INDICATION)
    assert ind.get(turn.XOR_PEER_ADDRESS) == Address(PEER.host, 6000) and ind.get(turn.DATA) == b"hello"
    h.advance(299)
    assert len(h.from_peer(port, b"x")) == 1
    h.advance(1)
    assert h.from_peer(port, b"x") == []


def test_send_indication_needs_a_permission() -> None:
    h = make_harness()
    c = RfcClient()
    port = allocate(h, c).get(turn.XOR_RELAYED_ADDRESS).port  # type: ignore[union-attr]
    send = stun.indication(TurnMethod.SEND, c.tid(), attr(turn.XOR_PEER_ADDRESS, PEER), attr(turn.DATA, b"hi"),
                           dialect=turn.RFC).serialize()
    assert h.deliver(send) == []
    transfer(h, c, c.request(TurnMethod.CREATE_PERMISSION, attr(turn.XOR_PEER_ADDRESS, PEER)))
    [(sink, data, addr)] = h.deliver(send)
    assert sink is h.binder.bound[("udp", port)] and data == b"hi" and addr == PEER


def test_channel_data_both_ways_and_channel_lifetime() -> None:
    h = make_harness()
    c = RfcClient()
    port = bound(h, c)
    relay = h.binder.bound[("udp", port)]
    [(sink, data, addr)] = h.deliver(turn.encode_channel_data(0x4000, b"payload"))
    assert (sink, data, addr) == (relay, b"payload", PEER)
    [(sink, data, addr)] = h.from_peer(port, b"back")
    assert sink is h.udp and addr == CLIENT and turn.decode_channel_data(data) == (0x4000, b"back")
    assert h.deliver(turn.encode_channel_data(0x4001, b"unbound")) == []
    assert h.deliver(turn.encode_channel_data(0x4000, b"x")[:3]) == []
    h.advance(600)
    assert h.deliver(turn.encode_channel_data(0x4000, b"late")) == []  # RFC 8656 §12: 10 minutes


def test_channel_bind_rules() -> None:
    h = make_harness()
    c = RfcClient()
    bound(h, c)
    transfer(h, c, c.request(TurnMethod.REFRESH, attr(turn.LIFETIME, 3600)))
    other = Address("192.0.2.100", 7000)

    def bind(number: int, peer: Address) -> int | None:
        return error_code(transfer(h, c, c.request(TurnMethod.CHANNEL_BIND, attr(turn.CHANNEL_NUMBER, number),
                                                   attr(turn.XOR_PEER_ADDRESS, peer))))

    assert bind(0x4000, other) == 400  # number taken by another peer
    assert bind(0x4002, PEER) == 400  # peer bound to another number
    assert bind(0x3FFF, other) == 400  # below 0x4000
    assert bind(0x8000, other) == 400  # above RFC 5766's 0x7FFF
    assert bind(0x4000, PEER) is None  # refresh of the same binding
    assert bind(0x4001, other) is None
    h.advance(600)
    assert bind(0x4000, other) == 400  # RFC 8656 §12: still reserved for 5 minutes after expiry
    h.advance(300)
    assert bind(0x4000, other) is None  # both cooldowns over: the number may move
    assert bind(0x4003, Address("192.0.2.101", 1)) is None


# ---------------------------------------------------------------- credentials


def test_rest_api_ephemeral_credentials() -> None:
    h = make_harness(users={}, secret="north")
    username = f"{int(h.now) + 3600}:alice"
    c = RfcClient(username=username, password=rest_password("north", username))
    assert allocate(h, c).cls == MessageClass.SUCCESS
    expired = f"{int(h.now) - 1}:alice"
    c2 = RfcClient(username=expired, password=rest_password("north", expired))
    assert error_code(allocate(h, c2, addr=Address("198.51.100.7", 1))) == 401


def test_mras_issued_credentials_are_checked_through_the_store() -> None:
    h = make_harness(users={})
    h.store.issue(IssuedCredential("mras-user", "mras-pass", expires_at=h.now + 100))
    c = RfcClient(username="mras-user", password="mras-pass")
    assert allocate(h, c).cls == MessageClass.SUCCESS
    h.now += 101
    assert error_code(transfer(h, c, c.request(TurnMethod.REFRESH))) == 401  # credential expired


def test_metrics_count_allocations_and_relayed_packets() -> None:
    h = make_harness()
    c = RfcClient()
    port = bound(h, c)
    for _ in range(5):
        h.deliver(turn.encode_channel_data(0x4000, b"12345678"))
        h.from_peer(port, b"1234")
    m = h.server.metrics
    assert (m.allocations_created, m.relayed_to_peer, m.relayed_to_client) == (1, 5, 5)
    assert (m.bytes_to_peer, m.bytes_to_client) == (40, 20)
    assert m.errors[401] == 1


@pytest.mark.parametrize("user", [USER])
def test_private_address_never_in_allocate_response(user: str) -> None:
    h = make_harness()
    c = RfcClient(username=user, password=PASSWORD)
    transfer(h, c, c.request(TurnMethod.ALLOCATE, UDP, auth=False))
    [raw] = h.to_client(c.request(TurnMethod.ALLOCATE, UDP))
    packed = ipaddress.ip_address(PRIVATE).packed
    xored = bytes(a ^ b for a, b in zip(packed, stun.MAGIC_COOKIE_BYTES, strict=True))
    assert packed not in raw and xored not in raw
