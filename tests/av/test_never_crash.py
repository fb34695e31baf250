"""Property tests: the server core never raises on random or mutated input (UDP, TCP, peers), and no
response ever carries a private address of the node.

The RFC 6062 part builds real sequences (TCP Allocate → CreatePermission → Connect → peer connected →
ConnectionBind, incoming peer connections, data both ways, closes, the 30 s bind timer) and checks each
answer against RFC 6062 / RFC 8656, then feeds random and mutated bytes and callbacks into that live state.
Mutations it kills (each checked by hand on a scratch copy of the core): ``peer_connected``,
``peer_stream_opened``, ``receive_peer_stream`` or the CreatePermission / Connect / ConnectionBind handler
raising once past its "unknown id" early exit; ``peer_connected`` not answering the Connect;
``peer_connect_failed`` without its 447; no 446 for a second Connect to a peer; ``peer_stream_opened``
ignoring permissions; ``receive_peer_stream`` dropping bound data; ConnectionBind not flushing what the peer
sent before it; a 30 s permission lifetime; a 300 s bind deadline.
"""

from __future__ import annotations

import ipaddress
import itertools
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from simulator.core.turn import CloseStream, ConnectPeer
from simulator.wire import msturn, stun, turn
from simulator.wire.errors import MalformedMessage
from simulator.wire.framing import TurnTcpFramer, client_hello, frame_control
from simulator.wire.stun import Address, Message, MessageClass, attr
from simulator.wire.turn import TurnMethod
from tests.av.helpers import (
    CLIENT,
    PEER,
    PRIVATE,
    PUBLIC,
    FakeSink,
    Harness,
    MsClient,
    RfcClient,
    StreamClient,
    allocate,
    error_code,
    make_harness,
)

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


# ---------------------------------------------------------------- RFC 6062 sequences, then noise
#
# Expected answers come from RFC 6062 §5.2-§5.5 and RFC 8656 §9, not from the core: where the RFCs leave
# a choice (does a Connect install a permission? is an incoming peer with the same address as a Connect
# a duplicate?), the addresses below keep the cases apart or the check accepts either answer.

TCP_RELAY = attr(turn.REQUESTED_TRANSPORT, 6)
CONTROL = Address("198.51.100.220", 7000)  # the client's control connection; data connections: same host
TARGETS = (Address("192.0.2.99", 5000), Address("192.0.2.99", 5001), Address("203.0.113.77", 6000))
CALLERS = (Address("192.0.2.99", 40001), Address("203.0.113.77", 40002), Address("198.51.100.66", 40003))
PEER_HOSTS = ("192.0.2.99", "203.0.113.77", "198.51.100.66")
PERMISSION_S = 300.0  # RFC 8656 §9
BIND_S = 30.0  # RFC 6062 §5.3: a peer data connection not bound within 30 s is closed
UNUSED_CID = 0x5EED  # never handed out by the seeded core: checked, not assumed


@dataclass
class Leg:
    """One peer data connection as the client sees it (RFC 6062)."""

    cid: int
    peer: Address
    opened: float
    from_connect: bool
    sink: FakeSink | None = None  # None while the Connect is in progress
    connect_tid: bytes | None = None
    data: FakeSink | None = None  # the bound client data connection
    buffer: bytearray = field(default_factory=bytearray)


def _no_private(data: bytes) -> None:
    assert PRIVATE_PACKED not in data and PRIVATE_XORED not in data, data


class TcpRelayRun:
    """A TCP allocation driven step by step, with what RFC 6062 says must come out of each step."""

    def __init__(self) -> None:
        self.h = make_harness()
        self.c = RfcClient()
        self.control = FakeSink("control")
        self.framer = TurnTcpFramer()
        self.ports = itertools.count(CONTROL.port + 1)
        self.names = itertools.count()
        self.legs: dict[int, Leg] = {}
        self.learned: list[int] = []  # CONNECTION-IDs the client was told about
        self.issued: set[int] = set()  # every CONNECTION-ID the core used
        self.permits: dict[str, float] = {}  # host -> expiry of an explicit CreatePermission
        self.connected_to: dict[str, float] = {}  # host -> last Connect (it may install a permission)
        self.streams: list[FakeSink] = []  # client connections besides the control one
        self.peer_sinks: list[FakeSink] = []
        self.control_open = True
        self.noisy = False
        self.h.server.stream_opened(self.control, CONTROL, self.h.now)
        [challenge] = self.ask(self.c.request(TurnMethod.ALLOCATE, TCP_RELAY, auth=False))
        assert error_code(self.c.learn(challenge.raw)) == 401
        [ok] = self.ask(self.c.request(TurnMethod.ALLOCATE, TCP_RELAY))
        relay = ok.get(turn.XOR_RELAYED_ADDRESS)
        assert ok.cls == MessageClass.SUCCESS and relay is not None and relay.host == PUBLIC
        self.port = relay.port

    # ------------------------------------------------------------ plumbing

    @property
    def now(self) -> float:
        return self.h.now

    def drain(self) -> tuple[list[tuple[Any, bytes]], list[object], list[Message]]:
        """(transmits, events, STUN messages that went to the control connection)."""
        transmits = [(sink, data) for sink, data, _ in self.h.server.datagrams_to_send()]
        events: list[object] = []
        while (event := self.h.server.next_event()) is not None:
            events.append(event)
        control = b"".join(data for sink, data in transmits if sink is self.control)
        _no_private(control)
        messages: list[Message] = []
        for frame in self.framer.feed(control) if self.control_open else ():
            try:
                messages.append(turn.parse(frame.data))
            except MalformedMessage:
                assert self.noisy, frame  # before the noise, the control connection carries only RFC TURN
        for msg in messages:
            for a in msg.attributes:
                if isinstance(a.value, Address):
                    assert a.value.host != PRIVATE, msg
        return transmits, events, messages

    def ask(self, request: bytes) -> list[Message]:
        self.h.server.receive_stream(self.control, request, self.now)
        transmits, events, messages = self.drain()
        assert all(sink is self.control for sink, _ in transmits) and events == [], (transmits, events)
        return messages

    def sink(self, kind: str) -> FakeSink:
        sink = FakeSink(f"{kind}-{next(self.names)}")
        (self.peer_sinks if kind == "peer" else self.streams).append(sink)
        return sink

    def unused_cid(self) -> int:
        assert UNUSED_CID not in self.issued
        return UNUSED_CID

    def live(self, pick: int, which: str) -> Leg | None:
        legs = [leg for leg in self.legs.values() if (
            leg.sink is None if which == "pending" else
            leg.data is not None if which == "bound" else leg.sink is not None)]
        return legs[pick % len(legs)] if legs else None

    def new_cid(self, cid: int | None) -> int:
        # RFC 6062 §5.2/§5.3: the CONNECTION-ID uniquely identifies the peer data connection.
        assert cid is not None and cid not in self.legs, cid
        self.issued.add(cid)
        return cid

    def signed_ok(self, msg: Message, method: int, tid: bytes) -> None:
        assert (msg.method, msg.cls, msg.transaction_id) == (method, MessageClass.SUCCESS, tid), msg
        assert stun.verify_integrity(msg, self.c.key), msg

    # ------------------------------------------------------------ client requests

    def permit(self, pick: int) -> None:
        host = PEER_HOSTS[pick % len(PEER_HOSTS)]
        request = self.c.request(TurnMethod.CREATE_PERMISSION, attr(turn.XOR_PEER_ADDRESS, Address(host, 9)))
        [ok] = self.ask(request)
        self.signed_ok(ok, TurnMethod.CREATE_PERMISSION, request[8:20])
        self.permits[host] = self.now + PERMISSION_S  # RFC 8656 §9.2

    def connect(self, pick: int) -> None:
        target = TARGETS[pick % len(TARGETS)]
        request = self.c.request(TurnMethod.CONNECT, attr(turn.XOR_PEER_ADDRESS, target))
        self.h.server.receive_stream(self.control, request, self.now)
        transmits, events, messages = self.drain()
        if any(leg.from_connect and leg.peer == target for leg in self.legs.values()):
            # RFC 6062 §5.2: a Connect in progress, or a pending/active one, to the same peer: 446.
            [answer] = messages
            assert answer.transaction_id == request[8:20] and error_code(answer) == 446, answer
            assert events == []
            return
        # RFC 6062 §5.2: no answer yet; the server connects from the relayed transport address.
        assert transmits == [] and len(events) == 1, (transmits, events)
        [event] = events
        assert isinstance(event, ConnectPeer) and event.peer == target, event
        assert (event.relay_host, event.relay_port) == (PRIVATE, self.port), event
        cid = self.new_cid(event.connection_id)
        self.legs[cid] = Leg(cid, target, self.now, True, connect_tid=request[8:20])
        self.connected_to[target.host] = self.now

    def bind(self, pick: int) -> None:
        bindable = [leg.cid for leg in self.legs.values() if leg.sink is not None and leg.data is None]
        # mostly a connection waiting for its bind; else any CONNECTION-ID the client heard of, or none
        candidates = bindable if bindable and pick < 5 else [*self.learned, self.unused_cid()]
        cid = candidates[pick % len(candidates)]
        data = self.sink("data")
        self.h.server.stream_opened(data, Address(CONTROL.host, next(self.ports)), self.now)
        request = self.c.request(TurnMethod.CONNECTION_BIND, attr(turn.CONNECTION_ID, cid))
        self.h.server.receive_stream(data, request, self.now)
        transmits, events, _ = self.drain()
        assert all(sink is data for sink, _ in transmits), transmits
        out = b"".join(d for _, d in transmits)
        size = 20 + int.from_bytes(out[2:4], "big")
        answer, rest = turn.parse(out[:size]), out[size:]
        leg = self.legs.get(cid)
        if leg is None or leg.sink is None or leg.data is not None:
            # RFC 6062 §5.4: no pending connection with that CONNECTION-ID: 400, nothing relayed.
            assert error_code(answer) == 400 and rest == b"", (answer, rest)
            assert set(events) <= {CloseStream(data)}, events
            return
        self.signed_ok(answer, TurnMethod.CONNECTION_BIND, request[8:20])
        # RFC 6062 §5.4: what the peer sent before the ConnectionBind follows it, as-is.
        assert rest == bytes(leg.buffer) and events == [], (rest, leg.buffer, events)
        leg.data, leg.buffer = data, bytearray()

    # ------------------------------------------------------------ the shell reporting peer connections

    def connected(self, pick: int) -> None:
        leg = self.live(pick, "pending")
        sink = self.sink("peer")
        if leg is None:
            self.h.server.peer_connected(self.unused_cid(), sink, self.now)
            transmits, events, _ = self.drain()
            assert transmits == [] and set(events) <= {CloseStream(sink)}, (transmits, events)
            return
        self.h.server.peer_connected(leg.cid, sink, self.now)
        transmits, events, messages = self.drain()
        [answer] = messages
        assert leg.connect_tid is not None and len(transmits) == 1 and events == []
        # RFC 6062 §5.2: the success response carries the CONNECTION-ID of the new peer data connection.
        self.signed_ok(answer, TurnMethod.CONNECT, leg.connect_tid)
        assert answer.get(turn.CONNECTION_ID) == leg.cid, answer
        leg.sink, leg.connect_tid = sink, None
        self.learned.append(leg.cid)

    def failed(self, pick: int) -> None:
        leg = self.live(pick, "pending")
        cid = leg.cid if leg is not None else self.unused_cid()
        self.h.server.peer_connect_failed(cid, self.now)
        transmits, events, messages = self.drain()
        assert events == []
        if leg is None:
            assert transmits == []
            return
        [answer] = messages  # RFC 6062 §5.2: the connection attempt failed: 447
        assert answer.transaction_id == leg.connect_tid and error_code(answer) == 447, answer
        del self.legs[cid]

    def incoming(self, pick: int) -> None:
        caller = CALLERS[pick % len(CALLERS)]
        sink = self.sink("peer")
        accepted = self.h.server.peer_stream_opened(self.port, sink, caller, self.now)
        transmits, events, messages = self.drain()
        assert set(events) <= {CloseStream(sink)}, events
        if self.permits.get(caller.host, 0.0) > self.now:
            assert accepted  # RFC 6062 §5.3 with RFC 8656 §9: a permission is installed
        elif self.connected_to.get(caller.host, -PERMISSION_S) + PERMISSION_S <= self.now:
            assert not accepted  # RFC 6062 §5.3: no permission for this peer: close
        if not accepted:
            assert transmits == []
            return
        # RFC 6062 §5.3: ConnectionAttempt with the peer's transport address and a CONNECTION-ID.
        [attempt] = messages
        assert (attempt.method, attempt.cls) == (TurnMethod.CONNECTION_ATTEMPT, MessageClass.INDICATION)
        assert attempt.get(turn.XOR_PEER_ADDRESS) == caller, attempt
        cid = self.new_cid(attempt.get(turn.CONNECTION_ID))
        self.legs[cid] = Leg(cid, caller, self.now, False, sink=sink)
        self.learned.append(cid)

    def peer_data(self, pick: int, data: bytes) -> None:
        leg = self.live(pick, "open")
        if leg is None:
            self.h.server.receive_peer_stream(self.sink("peer"), data, self.now)
            assert self.drain()[:2] == ([], [])
            return
        assert leg.sink is not None
        self.h.server.receive_peer_stream(leg.sink, data, self.now)
        transmits, events, _ = self.drain()
        assert events == []
        if leg.data is not None:
            assert transmits == [(leg.data, data)], transmits  # RFC 6062 §5.4: as-is
        else:
            assert transmits == [], transmits  # RFC 6062 §5.3: buffered until bound
            leg.buffer += data

    def client_data(self, pick: int, data: bytes) -> None:
        leg = self.live(pick, "bound")
        if leg is None:
            return
        assert leg.data is not None
        self.h.server.receive_stream(leg.data, data, self.now)
        transmits, events, _ = self.drain()
        assert transmits == [(leg.sink, data)] and events == [], (transmits, events)  # RFC 6062 §5.4

    def peer_close(self, pick: int) -> None:
        leg = self.live(pick, "open")
        if leg is None:
            return
        assert leg.sink is not None
        self.h.server.peer_stream_closed(leg.sink, self.now)
        transmits, events, _ = self.drain()
        pair = {CloseStream(leg.sink)} | ({CloseStream(leg.data)} if leg.data is not None else set())
        assert transmits == [] and set(events) <= pair, (transmits, events)
        if leg.data is not None:
            assert CloseStream(leg.data) in events  # RFC 6062 §5.5: the other side of the pair closes
        del self.legs[leg.cid]

    def data_close(self, pick: int) -> None:
        leg = self.live(pick, "bound")
        if leg is None:
            return
        assert leg.data is not None and leg.sink is not None
        self.h.server.stream_closed(leg.data, self.now)
        transmits, events, _ = self.drain()
        assert transmits == [] and CloseStream(leg.sink) in events, (transmits, events)  # RFC 6062 §5.5
        assert set(events) <= {CloseStream(leg.sink), CloseStream(leg.data)}, events
        del self.legs[leg.cid]

    def dial(self, pick: int) -> None:
        """Connect, the peer answers, and (even picks) the client binds a data connection to it."""
        self.connect(pick)
        self.connected(pick)
        if pick % 2 == 0:
            self.bind(0)

    def accept(self, pick: int) -> None:
        """CreatePermission, that peer calls in, and (even picks) the client binds a data connection."""
        self.permit(pick)
        self.incoming(pick)
        if pick % 2 == 0:
            self.bind(0)

    def advance(self, seconds: float) -> None:
        if any(leg.sink is None for leg in self.legs.values()):
            return  # a Connect in progress may take 30 s or more (RFC 6062 §5.2): not modelled
        deadlines = {leg.opened + BIND_S for leg in self.legs.values()} | set(self.permits.values())
        deadlines |= {t + PERMISSION_S for t in self.connected_to.values()}
        while self.now + seconds in deadlines:
            seconds += 0.125  # never land exactly on a deadline: "within 30 s" has no agreed edge
        self.h.advance(seconds)
        transmits, events, _ = self.drain()
        expired = [leg for leg in self.legs.values() if leg.data is None and leg.opened + BIND_S <= self.now]
        assert transmits == [] and set(events) == {CloseStream(leg.sink) for leg in expired}, events
        for leg in expired:
            del self.legs[leg.cid]

    def close_control(self) -> None:
        self.h.server.stream_closed(self.control, self.now)
        self.control_open = False
        transmits, events, _ = self.drain()
        # The allocation dies with its control connection (RFC 8656 §3.1), and its data connections with it.
        assert self.h.server.allocation_count == 0 and transmits == []
        owned = {CloseStream(leg.sink) for leg in self.legs.values() if leg.sink is not None}
        owned |= {CloseStream(leg.data) for leg in self.legs.values() if leg.data is not None}
        assert owned <= set(events) <= owned | {CloseStream(self.control)}, (owned, events)
        self.legs.clear()

    # ------------------------------------------------------------ noise: only "never raises, never leaks"

    def payload(self, base: tuple[Any, ...], edits: list[tuple[int, int, int]]) -> bytes:
        kind, n = base[0], base[1]
        if kind == "raw":
            data = bytearray(base[2])
        elif kind == "corpus":
            data = bytearray(CORPUS[n % len(CORPUS)])
        else:
            cids = sorted(self.issued) or [n]
            value = {
                "connect": lambda: (TurnMethod.CONNECT, attr(turn.XOR_PEER_ADDRESS, TARGETS[n % len(TARGETS)])),
                "bind": lambda: (TurnMethod.CONNECTION_BIND, attr(turn.CONNECTION_ID, cids[n % len(cids)])),
                "permit": lambda: (TurnMethod.CREATE_PERMISSION,
                                   attr(turn.XOR_PEER_ADDRESS, Address(PEER_HOSTS[n % 3], 1))),
                "refresh": lambda: (TurnMethod.REFRESH, attr(turn.LIFETIME, n * 97 % 700)),
                "allocate": lambda: (TurnMethod.ALLOCATE, TCP_RELAY),
            }[kind]()
            data = bytearray(self.c.request(*value))
        for op, pos, byte in edits:
            if op == 0 and data:
                data[pos % len(data)] = byte
            elif op == 1:
                del data[pos % (len(data) + 1):]
            else:
                data += bytes([byte]) * (pos % 5)
        assume(PRIVATE_PACKED not in data and PRIVATE_XORED not in data)
        return bytes(data)

    def feed(self, sink: FakeSink, data: bytes, chunk: int) -> None:
        for i in range(0, len(data), chunk):
            self.h.server.receive_stream(sink, data[i : i + chunk], self.now)
        self.drain()

    def noise(self, step: tuple[Any, ...]) -> None:
        self.noisy = True
        kind, n = step[0], step[1]
        cids = sorted(self.issued)
        cid = cids[n % len(cids)] if cids and n % 4 else n * 0x9E3779B1 % 2**32
        server = self.h.server
        if kind in ("control", "data", "fresh"):
            data = self.payload(step[2], step[3])
            target = self.control if kind == "control" and self.control_open else None
            if kind == "data" and self.streams:
                target = self.streams[n % len(self.streams)]
            if target is None:
                target = self.sink("data")
                server.stream_opened(target, Address(CONTROL.host, next(self.ports)), self.now)
            self.feed(target, data, step[4])
        elif kind == "connected":
            server.peer_connected(cid, self.sink("peer"), self.now)
        elif kind == "failed":
            server.peer_connect_failed(cid, self.now)
        elif kind == "incoming":
            port = self.port if n % 3 else 50000 + n % 100
            server.peer_stream_opened(port, self.sink("peer"), CALLERS[n % len(CALLERS)], self.now)
        elif kind == "peer_data" and self.peer_sinks:
            server.receive_peer_stream(self.peer_sinks[n % len(self.peer_sinks)], step[2], self.now)
        elif kind == "peer_close" and self.peer_sinks:
            server.peer_stream_closed(self.peer_sinks[n % len(self.peer_sinks)], self.now)
        elif kind == "stream_close" and self.streams:
            server.stream_closed(self.streams[n % len(self.streams)], self.now)
        elif kind == "advance":
            self.h.advance(n * 7.5)
        self.drain()

    def close_everything(self) -> None:
        """What the shell does at the end: every connection closes; nothing may stay allocated."""
        for sink in self.streams:
            self.h.server.stream_closed(sink, self.now)
        for sink in self.peer_sinks:
            self.h.server.peer_stream_closed(sink, self.now)
        if self.control_open:
            self.h.server.stream_closed(self.control, self.now)
            self.control_open = False
        self.drain()
        assert self.h.server.allocation_count == 0


Step = tuple[Any, ...]
_pick = st.integers(0, 7)
_bytes = st.binary(min_size=1, max_size=24)
# One branch per kind, so each is drawn as often as the others; "dial" and "accept" (below, in TcpRelayRun)
# chain the steps that reach the deep states, so those are common, not rare.
rfc6062_step = st.one_of(
    *(st.tuples(st.just(kind), _pick) for kind in ("permit", "connect", "connected", "failed", "incoming",
                                                    "bind", "peer_close", "data_close", "dial", "accept")),
    *(st.tuples(st.just(kind), _pick, _bytes) for kind in ("peer_data", "client_data")),
    st.tuples(st.just("advance"), st.sampled_from([0.5, 12.25, 31.5])),
)
_edits = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 200), st.integers(0, 255)), max_size=3)
_base = st.one_of(
    st.tuples(st.sampled_from(["connect", "bind", "permit", "refresh", "allocate", "corpus"]), _pick),
    st.tuples(st.just("raw"), _pick, st.binary(max_size=48)),
)
noise_step = st.one_of(
    st.tuples(st.sampled_from(["control", "data", "fresh"]), _pick, _base, _edits, st.integers(1, 64)),
    st.tuples(st.sampled_from(["connected", "failed", "incoming", "peer_close", "stream_close", "advance"]),
              _pick),
    st.tuples(st.just("peer_data"), _pick, st.binary(max_size=40)),
)

# Whole conversations, so every RFC 6062 entry point runs with live state in every run of the test.
OUTGOING: list[Step] = [("permit", 0), ("connect", 0), ("connected", 0), ("peer_data", 0, b"early"),
                        ("bind", 0), ("peer_data", 0, b"late"), ("client_data", 0, b"up"), ("peer_close", 0)]
INCOMING: list[Step] = [("incoming", 0), ("permit", 0), ("incoming", 0), ("peer_data", 0, b"before"),
                        ("bind", 0), ("bind", 0), ("client_data", 0, b"x"), ("data_close", 0)]
FAILURES: list[Step] = [("connect", 2), ("connect", 2), ("failed", 0), ("connect", 2), ("connected", 0),
                        ("connect", 1), ("connected", 0), ("advance", 31.5), ("bind", 0), ("permit", 1),
                        ("incoming", 1), ("advance", 12.25), ("bind", 1), ("peer_data", 0, b"z")]
# RFC 8656 §9 / RFC 6062 §5.3 timers: a permission outlives 30 s but not 300 s; an unbound peer connection
# does not outlive 30 s.
TIMERS: list[Step] = [("permit", 0), ("advance", 31.5), ("incoming", 0), ("advance", 31.5), ("advance", 240.0),
                      ("incoming", 0)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(rfc6062_step, max_size=14), st.booleans(), st.lists(noise_step, max_size=6))
@example(OUTGOING, False, [])
@example(INCOMING, True, [])
@example(TIMERS, False, [])
@example(FAILURES, False, [("control", 1, ("bind", 1), [], 3), ("peer_data", 1, b"q"), ("connected", 1)])
@example(OUTGOING[:5], False, [("fresh", 0, ("bind", 0), [(0, 29, 0)], 1), ("data", 0, ("connect", 1), [], 64),
                               ("incoming", 1), ("failed", 0), ("stream_close", 0)])
def test_tcp_relay_sequences_follow_rfc6062_then_survive_noise(steps: list[Step], close_control: bool,
                                                               noise: list[Step]) -> None:
    run = TcpRelayRun()
    for step in steps:
        getattr(run, step[0])(*step[1:])
    if close_control:
        run.close_control()
    for step in noise:
        run.noise(step)
    run.close_everything()
