"""Property tests: the server core never raises on random or mutated input (UDP, TCP, peers), and no
response ever carries a private address of the node."""

from __future__ import annotations

import ipaddress
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from simulator.wire import msturn, stun, turn
from simulator.wire.errors import MalformedMessage
from simulator.wire.framing import client_hello, frame_control
from simulator.wire.stun import Address, attr
from simulator.wire.turn import TurnMethod
from tests.av.helpers import CLIENT, PEER, PRIVATE, Harness, MsClient, RfcClient, StreamClient, allocate, make_harness

PRIVATE_PACKED = ipaddress.ip_address(PRIVATE).packed
PRIVATE_XORED = bytes(a ^ b for a, b in zip(PRIVATE_PACKED, stun.MAGIC_COOKIE_BYTES, strict=True))


def corpus() -> list[bytes]:
    """Valid requests of both dialects, authenticated and not, as seeds for mutation."""
    h = make_harness()
    c = RfcClient()
    allocate(h, c)
    ms = MsClient(version=3, realm="contoso.com", nonce="abc", connection_id=bytes(20))
    legacy = MsClient(version=2, realm="contoso.com", nonce="abc", connection_id=bytes(20))
    udp = attr(turn.REQUESTED_TRANSPORT, 17)
    return [
        c.request(TurnMethod.ALLOCATE, udp, auth=False),
        c.request(TurnMethod.ALLOCATE, udp, attr(turn.EVEN_PORT, True)),
        c.request(TurnMethod.REFRESH, attr(turn.LIFETIME, 0)),
        c.request(TurnMethod.CREATE_PERMISSION, attr(turn.XOR_PEER_ADDRESS, PEER)),
        c.request(TurnMethod.CHANNEL_BIND, attr(turn.CHANNEL_NUMBER, 0x4000), attr(turn.XOR_PEER_ADDRESS, PEER)),
        c.request(TurnMethod.CONNECT, attr(turn.XOR_PEER_ADDRESS, PEER)),
        c.request(TurnMethod.CONNECTION_BIND, attr(turn.CONNECTION_ID, 7)),
        stun.indication(TurnMethod.SEND, c.tid(), attr(turn.XOR_PEER_ADDRESS, PEER), attr(turn.DATA, b"d"),
                        dialect=turn.RFC).serialize(),
        stun.request(stun.StunMethod.BINDING, c.tid()).serialize(),
        turn.encode_channel_data(0x4000, b"payload"),
        ms.request(msturn.MsTurnMethod.ALLOCATE, auth=False),
        ms.request(msturn.MsTurnMethod.ALLOCATE),
        legacy.request(msturn.MsTurnMethod.ALLOCATE),
        legacy.request(msturn.MsTurnMethod.SEND, attr(msturn.DESTINATION_ADDRESS, PEER), attr(msturn.DATA, b"x"),
                       seq=True),
        ms.request(msturn.MsTurnMethod.SET_ACTIVE_DESTINATION, attr(msturn.DESTINATION_ADDRESS, PEER), seq=True),
    ]


CORPUS = corpus()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    base = bytearray(draw(st.sampled_from(CORPUS)))
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.integers(0, 2))
        if kind == 0 and base:
            i = draw(st.integers(0, len(base) - 1))
            base[i] = draw(st.integers(0, 255))
        elif kind == 1 and base:
            cut = draw(st.integers(0, len(base)))
            base = base[:cut]
        else:
            base += draw(st.binary(max_size=12))
    return bytes(base)


inputs = st.one_of(st.binary(max_size=120), mutated())


def check_outputs(h: Harness, client_sinks: set[int]) -> None:
    for sink, data, _ in h.server.datagrams_to_send():
        if id(sink) not in client_sinks:
            continue
        assert PRIVATE_PACKED not in data and PRIVATE_XORED not in data, data
        for parse in (turn.parse, msturn.parse):
            try:
                msg = parse(data)
            except MalformedMessage:
                continue
            for a in msg.attributes:
                if isinstance(a.value, Address):
                    assert a.value.host != PRIVATE


def live_harness() -> tuple[Harness, RfcClient]:
    h = make_harness()
    c = RfcClient()
    allocate(h, c)
    h.server.datagrams_to_send()
    return h, c


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(inputs, min_size=1, max_size=8), st.lists(st.binary(max_size=40), max_size=3))
def test_udp_and_peer_input_never_raises_and_never_leaks(packets: list[bytes], from_peer: list[bytes]) -> None:
    for p in packets + from_peer:
        assume(PRIVATE_PACKED not in p and PRIVATE_XORED not in p)
    h, _ = live_harness()
    sinks = {id(h.udp)}
    for data in packets:
        h.server.receive_datagram(data, CLIENT, h.now)
        h.server.receive_datagram(data, Address("198.51.100.200", 9), h.now)
        check_outputs(h, sinks)
    for port in (50000 + i for i in range(100)):
        for data in from_peer:
            h.server.receive_from_peer(port, data, PEER, h.now)
    check_outputs(h, sinks)
    h.now += 4000
    h.server.handle_timer(h.now)
    assert h.server.allocation_count == 0


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(inputs, min_size=1, max_size=6), st.booleans(), st.integers(1, 7))
def test_tcp_streams_never_raise_and_never_leak(frames: list[bytes], ms: bool, chunk: int) -> None:
    for p in frames:
        assume(PRIVATE_PACKED not in p and PRIVATE_XORED not in p)
    h = make_harness()
    s = StreamClient(h, Address("198.51.100.210", 5), ms=ms)
    stream = client_hello(bytes(32)) + b"".join(frame_control(f) for f in frames) if ms else b"".join(frames)
    for i in range(0, len(stream), chunk):
        h.server.receive_stream(s.sink, stream[i : i + chunk], h.now)
    check_outputs(h, {id(s.sink)})
    while h.server.next_event() is not None:
        pass
    h.server.stream_closed(s.sink, h.now)
    assert h.server.allocation_count == 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["conn_ok", "conn_fail", "peer_open", "peer_data", "peer_close"]),
                          st.integers(0, 2**32 - 1), st.binary(max_size=20)), max_size=10))
def test_rfc6062_callbacks_in_any_order_never_raise(calls: list[tuple[str, int, bytes]]) -> None:
    h, _ = live_harness()
    sinks: list[Any] = []
    for name, number, data in calls:
        from tests.av.helpers import FakeSink

        sink = FakeSink(str(number))
        sinks.append(sink)
        if name == "conn_ok":
            h.server.peer_connected(number, sink, h.now)
        elif name == "conn_fail":
            h.server.peer_connect_failed(number, h.now)
        elif name == "peer_open":
            h.server.peer_stream_opened(50000 + number % 100, sink, PEER, h.now)
        elif name == "peer_data":
            h.server.receive_peer_stream(sinks[number % len(sinks)], data, h.now)
        else:
            h.server.peer_stream_closed(sinks[number % len(sinks)], h.now)
    h.server.datagrams_to_send()
