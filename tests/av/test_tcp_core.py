"""TURN over TCP (padded ChannelData) and RFC 6062 TCP relays: Connect, ConnectionAttempt,
ConnectionBind, the 30 s bind deadline, 446/447."""

from __future__ import annotations

from simulator.core.turn import CloseStream, ConnectPeer
from simulator.wire import stun, turn
from simulator.wire.stun import Address, MessageClass, attr
from simulator.wire.turn import TurnMethod
from tests.av.helpers import PEER, PUBLIC, Harness, RfcClient, StreamClient, error_code, make_harness

TCP = attr(turn.REQUESTED_TRANSPORT, 6)
UDP = attr(turn.REQUESTED_TRANSPORT, 17)


def tcp_allocate(h: Harness, s: StreamClient, c: RfcClient, *attrs: stun.Attribute) -> stun.Message:
    [first] = s.send(c.request(TurnMethod.ALLOCATE, *attrs, auth=False))
    assert error_code(c.learn(first)) == 401
    [resp] = s.send(c.request(TurnMethod.ALLOCATE, *attrs))
    return c.learn(resp)


def test_turn_over_tcp_with_padded_channel_data() -> None:
    h = make_harness()
    s = StreamClient(h, Address("198.51.100.30", 1000))
    c = RfcClient()
    resp = tcp_allocate(h, s, c, UDP)
    port = resp.get(turn.XOR_RELAYED_ADDRESS).port  # type: ignore[union-attr]
    [ok] = s.send(c.request(TurnMethod.CHANNEL_BIND, attr(turn.CHANNEL_NUMBER, 0x4005),
                            attr(turn.XOR_PEER_ADDRESS, PEER)))
    assert c.learn(ok).cls == MessageClass.SUCCESS
    relay = h.binder.bound[("udp", port)]
    h.server.receive_stream(s.sink, turn.encode_channel_data(0x4005, b"abcde", pad=True), h.now)
    assert h.server.datagrams_to_send() == [(relay, b"abcde", PEER)]
    h.server.receive_from_peer(port, b"xyz", PEER, h.now)
    [(sink, data, _)] = h.server.datagrams_to_send()
    assert sink is s.sink and data == turn.encode_channel_data(0x4005, b"xyz", pad=True) and len(data) == 8
    h.server.stream_closed(s.sink, h.now)
    assert h.server.allocation_count == 0 and not h.binder.bound


def test_tcp_relay_connect_and_connection_bind() -> None:
    h = make_harness()
    control = StreamClient(h, Address("198.51.100.31", 1000))
    c = RfcClient()
    resp = tcp_allocate(h, control, c, TCP)
    relay = resp.get(turn.XOR_RELAYED_ADDRESS)
    assert relay is not None and relay.host == PUBLIC and ("tcp", relay.port) in h.binder.bound
    out = control.send(c.request(TurnMethod.CONNECT, attr(turn.XOR_PEER_ADDRESS, PEER)))
    assert out == []  # the answer waits for the peer connection
    event = h.server.next_event()
    assert isinstance(event, ConnectPeer) and event.peer == PEER and event.relay_port == relay.port
    from tests.av.helpers import FakeSink

    peer_sink = FakeSink("peer-conn")
    h.server.peer_connected(event.connection_id, peer_sink, h.now)
    [(sink, data, _)] = h.server.datagrams_to_send()
    connect_ok = c.learn(data)
    assert sink is control.sink and connect_ok.cls == MessageClass.SUCCESS
    assert stun.verify_integrity(connect_ok, c.key)
    cid = connect_ok.get(turn.CONNECTION_ID)
    assert cid == event.connection_id
    # a second Connect to the same peer is 446
    [dup] = control.send(c.request(TurnMethod.CONNECT, attr(turn.XOR_PEER_ADDRESS, PEER)))
    assert error_code(c.learn(dup)) == 446
    h.server.receive_peer_stream(peer_sink, b"early bytes", h.now)  # buffered until bound
    data_conn = StreamClient(h, Address("198.51.100.31", 1001))
    [bind_ok] = data_conn.send(c.request(TurnMethod.CONNECTION_BIND, attr(turn.CONNECTION_ID, cid)))
    assert c.learn(bind_ok).cls == MessageClass.SUCCESS
    # buffered peer bytes were flushed with the answer; now raw both ways
    h.server.receive_stream(data_conn.sink, b"raw from client", h.now)
    assert h.server.datagrams_to_send() == [(peer_sink, b"raw from client", PEER)]
    h.server.receive_peer_stream(peer_sink, b"raw from peer", h.now)
    assert h.server.datagrams_to_send() == [(data_conn.sink, b"raw from peer", PEER)]
    # the peer closes: the data connection is closed too
    h.server.peer_stream_closed(peer_sink, h.now)
    assert h.server.next_event() == CloseStream(data_conn.sink)


def test_connect_failure_is_447_and_connect_on_udp_allocation_is_400() -> None:
    h = make_harness()
    control = StreamClient(h, Address("198.51.100.32", 1000))
    c = RfcClient()
    tcp_allocate(h, control, c, TCP)
    control.send(c.request(TurnMethod.CONNECT, attr(turn.XOR_PEER_ADDRESS, PEER)))
    event = h.server.next_event()
    assert isinstance(event, ConnectPeer)
    h.server.peer_connect_failed(event.connection_id, h.now)
    [(_, data, _)] = h.server.datagrams_to_send()
    assert error_code(c.learn(data)) == 447
    s2 = StreamClient(h, Address("198.51.100.32", 1001))
    c2 = RfcClient()
    tcp_allocate(h, s2, c2, UDP)
    [bad] = s2.send(c2.request(TurnMethod.CONNECT, attr(turn.XOR_PEER_ADDRESS, PEER)))
    assert error_code(c2.learn(bad)) == 400


def test_incoming_peer_connection_attempt_and_bind_deadline() -> None:
    h = make_harness()
    control = StreamClient(h, Address("198.51.100.33", 1000))
    c = RfcClient()
    port = tcp_allocate(h, control, c, TCP).get(turn.XOR_RELAYED_ADDRESS).port  # type: ignore[union-attr]
    from tests.av.helpers import FakeSink

    stranger = FakeSink("stranger")
    assert not h.server.peer_stream_opened(port, stranger, PEER, h.now)  # no permission
    [ok] = control.send(c.request(TurnMethod.CREATE_PERMISSION, attr(turn.XOR_PEER_ADDRESS, PEER)))
    assert c.learn(ok).cls == MessageClass.SUCCESS
    peer_sink = FakeSink("peer")
    assert h.server.peer_stream_opened(port, peer_sink, PEER, h.now)
    [(sink, data, _)] = h.server.datagrams_to_send()
    attempt = turn.parse(data)
    assert sink is control.sink
    assert (attempt.method, attempt.cls) == (TurnMethod.CONNECTION_ATTEMPT, MessageClass.INDICATION)
    assert attempt.get(turn.XOR_PEER_ADDRESS) == PEER and attempt.get(turn.CONNECTION_ID)
    # nobody binds within 30 s: the peer connection is closed (RFC 6062 §5.3)
    h.advance(31)
    assert h.server.next_event() == CloseStream(peer_sink)
