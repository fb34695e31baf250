"""MS-TURN dialect of the server core: 401 with ALTERNATE-SERVER (public), MAPPED-ADDRESS relay,
0x8020 reflexive, MS-SEQUENCE-NUMBER, Send / Data Indication, implicit permission, Set Active
Destination and raw forwarding, pseudo-TLS + 4-byte framing on TCP, and the two dialects side by side."""

from __future__ import annotations

import dataclasses

import pytest

from simulator.wire import msturn, turn
from simulator.wire.framing import frame_data
from simulator.wire.stun import Address, MessageClass, attr
from simulator.wire.turn import TurnMethod
from tests.av.helpers import (
    CLIENT,
    PEER,
    PUBLIC,
    REALM,
    Harness,
    MsClient,
    RfcClient,
    StreamClient,
    allocate,
    error_code,
    make_harness,
)

MS = msturn.MsTurnMethod


def ms_transfer(h: Harness, c: MsClient, data: bytes, addr: Address = CLIENT) -> msturn.stun.Message:
    answers = h.to_client(data, addr)
    assert len(answers) == 1, answers
    return c.learn(answers[0])


def ms_allocate(h: Harness, c: MsClient, addr: Address = CLIENT) -> msturn.stun.Message:
    first = ms_transfer(h, c, c.request(MS.ALLOCATE, auth=False), addr)
    assert error_code(first) == 401
    return ms_transfer(h, c, c.request(MS.ALLOCATE, attr(msturn.LIFETIME, 3600)), addr)


@pytest.mark.parametrize("version", [2, 3])
def test_401_carries_alternate_server_public_and_swapped_realm_nonce(version: int) -> None:
    h = make_harness(udp_port=3478)
    c = MsClient(version=version)
    first = ms_transfer(h, c, c.request(MS.ALLOCATE, auth=False))
    assert error_code(first) == 401
    assert first.attributes[0].code == msturn.MAGIC_COOKIE.code  # MS-TURN: MAGIC-COOKIE first
    assert first.get(msturn.ALTERNATE_SERVER) == Address(PUBLIC, 3478)
    assert first.get(msturn.REALM) == REALM and first.get(msturn.NONCE)
    assert first.dialect is msturn.dialect_for(version)


@pytest.mark.parametrize("version", [2, 3])
def test_allocate_gives_mapped_relay_reflexive_8020_and_sequence_number(version: int) -> None:
    h = make_harness()
    c = MsClient(version=version)
    resp = ms_allocate(h, c)
    assert resp.cls == MessageClass.SUCCESS
    assert msturn.stun.verify_integrity(resp, c.key)
    relay = resp.get(msturn.MAPPED_ADDRESS)
    assert relay is not None and relay.host == PUBLIC and 50000 <= relay.port <= 50099
    assert resp.get(msturn.XOR_MAPPED_ADDRESS) == CLIENT
    assert resp.get(msturn.LIFETIME) == 3600
    seq = resp.get(msturn.MS_SEQUENCE_NUMBER)
    assert seq is not None and len(seq.connection_id) == 20
    assert resp.get(msturn.MS_VERSION) == version


def test_allocate_again_refreshes_and_lifetime_zero_deletes() -> None:
    h = make_harness()
    c = MsClient()
    ms_allocate(h, c)
    resp = ms_transfer(h, c, c.request(MS.ALLOCATE, attr(msturn.LIFETIME, 1200)))
    assert resp.cls == MessageClass.SUCCESS and resp.get(msturn.LIFETIME) == 1200
    assert h.server.allocation_count == 1
    resp = ms_transfer(h, c, c.request(MS.ALLOCATE, attr(msturn.LIFETIME, 0)))
    assert resp.get(msturn.LIFETIME) == 0 and h.server.allocation_count == 0


def test_send_without_response_implicit_permission_and_data_indication() -> None:
    h = make_harness()
    c = MsClient()
    port = ms_allocate(h, c).get(msturn.MAPPED_ADDRESS).port  # type: ignore[union-attr]
    relay = h.binder.bound[("udp", port)]
    assert h.from_peer(port, b"unsolicited") == []  # MS-TURN 1.3: nothing before the client sent
    send = c.request(MS.SEND, attr(msturn.DESTINATION_ADDRESS, PEER), attr(msturn.DATA, b"rtp!"), seq=True)
    out = h.deliver(send)
    assert out == [(relay, b"rtp!", PEER)]  # no response to the client
    [(sink, data, addr)] = h.from_peer(port, b"reply")
    assert sink is h.udp and addr == CLIENT
    ind = msturn.parse(data)
    assert (ind.method, ind.cls) == (MS.DATA, MessageClass.INDICATION)
    assert data[0:2] == b"\x01\x15"  # MS-TURN 2.2.1: Data Indication is 0x0115
    # legacy (v <= 2) lengths would count padding; relayed DATA keeps its exact length instead
    # (tests/av/test_msturn_exact_length.py)
    assert ind.get(msturn.REMOTE_ADDRESS) == PEER and ind.get(msturn.DATA) == b"reply"


def test_send_with_wrong_connection_id_or_bad_integrity_is_dropped() -> None:
    h = make_harness()
    c = MsClient()
    ms_allocate(h, c)
    good_id = c.connection_id
    c.connection_id = bytes(20)
    assert h.deliver(c.request(MS.SEND, attr(msturn.DESTINATION_ADDRESS, PEER), attr(msturn.DATA, b"x"),
                               seq=True)) == []
    c.connection_id = good_id
    c.password = "wrong"
    assert h.deliver(c.request(MS.SEND, attr(msturn.DESTINATION_ADDRESS, PEER), attr(msturn.DATA, b"x"),
                               seq=True)) == []


def test_set_active_destination_then_raw_forwarding_both_ways() -> None:
    h = make_harness()
    c = MsClient(version=3)
    port = ms_allocate(h, c).get(msturn.MAPPED_ADDRESS).port  # type: ignore[union-attr]
    relay = h.binder.bound[("udp", port)]
    resp = ms_transfer(h, c, c.request(MS.SET_ACTIVE_DESTINATION, attr(msturn.DESTINATION_ADDRESS, PEER), seq=True))
    assert resp.cls == MessageClass.SUCCESS and resp.method == MS.SET_ACTIVE_DESTINATION
    rtp = b"\x80\x60" + bytes(30)
    assert h.deliver(rtp) == [(relay, rtp, PEER)]
    # an end-to-end STUN check (no MAGIC-COOKIE attribute) is forwarded too
    check = RfcClient().request(TurnMethod.BINDING, auth=False)
    assert h.deliver(check) == [(relay, check, PEER)]
    assert h.from_peer(port, b"\x80raw") == [(h.udp, b"\x80raw", CLIENT)]
    other = Address("192.0.2.44", 1)
    h.deliver(c.request(MS.SEND, attr(msturn.DESTINATION_ADDRESS, other), attr(msturn.DATA, b"x"), seq=True))
    [(_, data, _)] = h.from_peer(port, b"y", other)
    assert msturn.parse(data).get(msturn.REMOTE_ADDRESS) == other


def test_dialect_is_pinned_per_five_tuple() -> None:
    h = make_harness()
    c = MsClient()
    ms_allocate(h, c)
    rfc = RfcClient()
    assert h.to_client(rfc.request(TurnMethod.ALLOCATE, attr(turn.REQUESTED_TRANSPORT, 17), auth=False)) == []
    # the RFC dialect on another 5-tuple of the same listener still works
    other = Address("198.51.100.99", 1234)
    assert allocate(h, rfc, addr=other).get(turn.XOR_RELAYED_ADDRESS) is not None
    assert h.to_client(c.request(MS.ALLOCATE, auth=False), other) == []


def test_pseudo_tls_then_framed_msturn_on_tcp_and_alternate_server_tcp_port() -> None:
    h = make_harness(tcp_port=443)
    s = StreamClient(h, Address("198.51.100.20", 50123), ms=True)
    hello = s.hello()
    assert len(hello) == 83 and hello[:3] == b"\x16\x03\x01" and hello[-4:] == b"\x0e\x00\x00\x00"
    c = MsClient(version=2)
    [first] = s.send(c.request(MS.ALLOCATE, auth=False))
    first_msg = c.learn(first)
    assert error_code(first_msg) == 401
    assert first_msg.get(msturn.ALTERNATE_SERVER) == Address(PUBLIC, 443)
    [resp] = s.send(c.request(MS.ALLOCATE))
    msg = c.learn(resp)
    assert msg.cls == MessageClass.SUCCESS
    port = msg.get(msturn.MAPPED_ADDRESS).port  # type: ignore[union-attr]
    assert msg.get(msturn.XOR_MAPPED_ADDRESS) == Address("198.51.100.20", 50123)
    ok = c.learn(s.send(c.request(MS.SET_ACTIVE_DESTINATION, attr(msturn.DESTINATION_ADDRESS, PEER), seq=True))[0])
    assert ok.cls == MessageClass.SUCCESS
    relay = h.binder.bound[("udp", port)]
    h.server.receive_stream(s.sink, frame_data(b"media"), h.now)
    assert h.server.datagrams_to_send() == [(relay, b"media", PEER)]
    h.server.receive_from_peer(port, b"back", PEER, h.now)
    [(sink, data, _)] = h.server.datagrams_to_send()
    assert sink is s.sink and data == frame_data(b"back")
    h.server.stream_closed(s.sink, h.now)
    assert h.server.allocation_count == 0


def test_split_delivery_of_pseudo_tls_and_frames() -> None:
    h = make_harness()
    s = StreamClient(h, Address("198.51.100.21", 1), ms=True)
    from simulator.wire.framing import client_hello, frame_control

    c = MsClient()
    stream = client_hello(bytes(32)) + frame_control(c.request(MS.ALLOCATE, auth=False))
    for i in range(len(stream)):
        h.server.receive_stream(s.sink, stream[i : i + 1], h.now)
    out = b"".join(d for sink, d, _ in h.server.datagrams_to_send() if sink is s.sink)
    frames = s.ms_framer.feed(out)
    assert len(frames) == 2 and error_code(c.learn(frames[1].data)) == 401


def test_garbage_on_tcp_closes_the_connection() -> None:
    h = make_harness()
    s = StreamClient(h, Address("198.51.100.22", 1))
    h.server.receive_stream(s.sink, b"\xc0\x00\x00\x00garbage", h.now)
    event = h.server.next_event()
    assert event is not None and event.sink is s.sink  # type: ignore[union-attr]


def _libnice_style(c: MsClient, method: int, *attrs: msturn.stun.Attribute) -> bytes:
    """A request the way libnice's OC2007R2 mode writes it: no NONCE, attributes unpadded, signed with
    the allocation's key (captured from libnice 0.1.21, tests/interop/test_libnice.py)."""
    c.sequence += 1
    body = (attr(msturn.MS_VERSION, 2), attr(msturn.USERNAME, c.username),
            attr(msturn.MS_SEQUENCE_NUMBER, msturn.SequenceNumber(c.connection_id, c.sequence)),
            attr(msturn.REALM, c.realm or ""), *attrs)
    message = msturn.build(method, MessageClass.REQUEST, c.tid(), *body, version=2)
    unpadded = dataclasses.replace(message, dialect=msturn.LEGACY_UNALIGNED)
    return unpadded.serialize(key=c.key, integrity=(msturn.integrity_for(2),))


def test_libnice_style_set_active_destination_and_unpadded_send() -> None:
    h = make_harness()
    c = MsClient()
    port = ms_allocate(h, c).get(msturn.MAPPED_ADDRESS).port  # type: ignore[union-attr]
    relay = h.binder.bound[("udp", port)]
    payload = b"edgesim-libnice-29-bytes-long"  # 29 bytes: its DATA attribute is not 4-aligned
    assert len(payload) % 4 == 1
    send = _libnice_style(c, MS.SEND, attr(msturn.DESTINATION_ADDRESS, PEER), attr(msturn.DATA, payload))
    assert h.deliver(send) == [(relay, payload, PEER)]  # exactly 29 bytes, and no answer to a Send
    [(_, data, _)] = h.from_peer(port, b"x" * 37)
    assert b"\x00\x13\x00\x25" + b"x" * 37 in data  # DATA answered in the client's form: length 37, not 40
    assert msturn.parse(data).get(msturn.DATA) == b"x" * 37
    [answer] = h.to_client(_libnice_style(c, MS.SET_ACTIVE_DESTINATION, attr(msturn.DESTINATION_ADDRESS, PEER)))
    resp = msturn.parse(answer)
    assert (resp.method, resp.cls) == (MS.SET_ACTIVE_DESTINATION, MessageClass.SUCCESS)
    assert msturn.stun.verify_integrity(resp, c.key)
    ascii_media = b"edgesim-raw"  # first byte 0x65: in ChannelData's range, but MS-TURN has no ChannelData
    assert h.deliver(ascii_media) == [(relay, ascii_media, PEER)]


def test_set_active_destination_without_an_allocation_is_437_not_a_crash() -> None:
    h = make_harness()
    c = MsClient()
    c.realm, c.nonce, c.connection_id = REALM, "n", bytes(20)
    [answer] = h.to_client(_libnice_style(c, MS.SET_ACTIVE_DESTINATION, attr(msturn.DESTINATION_ADDRESS, PEER)))
    assert error_code(msturn.parse(answer)) == 437


def test_a_malformed_send_gets_no_answer() -> None:
    h = make_harness()
    c = MsClient()
    ms_allocate(h, c)
    send = c.request(MS.SEND, attr(msturn.DESTINATION_ADDRESS, PEER), attr(msturn.DATA, b"abcd"), seq=True)
    broken = send[:-3]  # the last attribute now overruns the message
    assert h.deliver(broken) == []
    assert h.server.metrics.malformed >= 1
