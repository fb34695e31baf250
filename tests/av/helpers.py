"""In-memory harness for the TURN server core: fake sockets, a minimal client core and ``transfer()``.

The client side is written here from the wire codecs only (it is not the server's code), so the
core tests exercise the server through bytes, as a real client would.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from typing import Any

from simulator.core.credentials import CredentialStore
from simulator.core.ports import RelayPortAllocator, Transport
from simulator.core.turn import TurnServer, TurnServerConfig
from simulator.wire import msturn, stun, turn
from simulator.wire.framing import MsTurnFrameKind, MsTurnTcpFramer, Role, TurnTcpFramer, client_hello, frame_control
from simulator.wire.stun import Address, Attribute, Message, MessageClass, attr
from simulator.wire.turn import TurnMethod

PUBLIC = "203.0.113.10"  # the node's public A/V address (1:1 NAT)
PRIVATE = "10.20.0.10"  # its private A/V address: listeners and relay sockets bind here
CLIENT = Address("198.51.100.7", 40000)
PEER = Address("192.0.2.99", 5000)
REALM = "contoso.com"
_seeds = itertools.count(100)
USER, PASSWORD = "alice", "s3cret"


class FakeSink:
    """Stands for a socket or connection; records what the server sends through it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sent: list[tuple[bytes, Any]] = []

    def sendto(self, data: bytes, addr: Any, /) -> None:
        self.sent.append((data, addr))

    def __repr__(self) -> str:
        return f"FakeSink({self.name})"


class FakeBinder:
    """Relay sockets in memory; ``refuse`` are ports another program holds."""

    def __init__(self, refuse: set[int] | None = None) -> None:
        self.refuse = refuse or set()
        self.bound: dict[tuple[str, int], FakeSink] = {}
        self.listening: set[tuple[str, int]] = set()

    def bind(self, transport: Transport, host: str, port: int) -> FakeSink | None:
        assert host == PRIVATE, "relay sockets bind the private address"
        if port in self.refuse:
            return None
        sink = FakeSink(f"relay-{transport}-{port}")
        self.bound[(transport, port)] = sink
        return sink

    def unbind(self, transport: Transport, port: int) -> None:
        del self.bound[(transport, port)]
        self.listening.discard((transport, port))

    def listen(self, transport: Transport, port: int) -> None:
        assert (transport, port) in self.bound and (transport, port) not in self.listening
        self.listening.add((transport, port))


@dataclass
class Harness:
    server: TurnServer
    binder: FakeBinder
    udp: FakeSink
    store: CredentialStore
    now: float = 1000.0

    def deliver(self, data: bytes, client: Address = CLIENT) -> list[tuple[Any, bytes, Any]]:
        self.server.receive_datagram(data, client, self.now)
        return self.server.datagrams_to_send()

    def to_client(self, data: bytes, client: Address = CLIENT) -> list[bytes]:
        """Deliver ``data`` and return what came back to ``client`` on the UDP listener."""
        return [d for sink, d, addr in self.deliver(data, client) if sink is self.udp and addr == client]

    def from_peer(self, port: int, data: bytes, peer: Address = PEER) -> list[tuple[Any, bytes, Any]]:
        self.server.receive_from_peer(port, data, peer, self.now)
        return self.server.datagrams_to_send()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        timer = self.server.get_timer()
        if timer is not None and timer <= self.now:
            self.server.handle_timer(self.now)


def make_harness(
    *,
    first_port: int = 50000,
    last_port: int = 50099,
    refuse: set[int] | None = None,
    users: dict[str, str] | None = None,
    secret: str | None = None,
    seed: int = 4,
    **config: Any,
) -> Harness:
    store = CredentialStore(rest_secret=secret)
    for name, password in (users if users is not None else {USER: PASSWORD, "bob": "hunter2"}).items():
        store.add_static(name, password)
    binder = FakeBinder(refuse)
    udp = FakeSink("udp-listener")
    rng = random.Random(seed)
    ports = RelayPortAllocator(random.Random(seed + 1), first_port=first_port, last_port=last_port)
    cfg = TurnServerConfig(public_host=PUBLIC, relay_host=PRIVATE, private_hosts=frozenset({PRIVATE}),
                           realm=REALM, **config)
    server = TurnServer(cfg, credentials=store, ports=ports, relays=binder, rng=rng, udp_sink=udp)
    return Harness(server, binder, udp, store)


@dataclass
class RfcClient:
    """A minimal RFC 8656 client core: builds requests, keeps realm/nonce/key, reads answers."""

    username: str = USER
    password: str = PASSWORD
    rng: random.Random = field(default_factory=lambda: random.Random(next(_seeds)))
    realm: str | None = None
    nonce: str | None = None

    @property
    def key(self) -> bytes:
        assert self.realm is not None
        return stun.long_term_key(self.username, self.realm, self.password)

    def tid(self) -> bytes:
        return stun.new_transaction_id(self.rng)

    def request(self, method: int, *attrs: Attribute, tid: bytes | None = None, auth: bool = True) -> bytes:
        msg = stun.request(method, tid or self.tid(), *attrs, dialect=turn.RFC)
        if auth and self.nonce is not None:
            assert self.realm is not None
            msg = msg.with_attributes(attr(stun.USERNAME, self.username), attr(stun.REALM, self.realm),
                                      attr(stun.NONCE, self.nonce))
            return msg.serialize(key=self.key)
        return msg.serialize()

    def learn(self, response: bytes) -> Message:
        msg = turn.parse(response)
        nonce = msg.get(stun.NONCE)
        if nonce is not None:
            self.nonce = nonce
            self.realm = msg.get(stun.REALM) or self.realm
        return msg


def error_code(msg: Message) -> int | None:
    err = msg.get(stun.ERROR_CODE)
    return None if err is None else err.code


def transfer(h: Harness, client: RfcClient, data: bytes, addr: Address = CLIENT) -> Message:
    """Send one request and return the single answer, after the client learned from it."""
    answers = h.to_client(data, addr)
    assert len(answers) == 1, answers
    return client.learn(answers[0])


def allocate(h: Harness, client: RfcClient, *attrs: Attribute, addr: Address = CLIENT) -> Message:
    """Allocate → 401 → authenticated Allocate (UDP relay unless ``attrs`` say otherwise)."""
    attrs = attrs or (attr(turn.REQUESTED_TRANSPORT, 17),)
    if client.nonce is None:
        first = transfer(h, client, client.request(TurnMethod.ALLOCATE, *attrs, auth=False), addr)
        assert error_code(first) == 401
    return transfer(h, client, client.request(TurnMethod.ALLOCATE, *attrs), addr)


@dataclass
class MsClient:
    """A minimal MS-TURN client core (legacy v2 header or v3 RFC 5389 header)."""

    version: int = 2
    username: str = USER
    password: str = PASSWORD
    rng: random.Random = field(default_factory=lambda: random.Random(next(_seeds)))
    realm: str | None = None
    nonce: str | None = None
    connection_id: bytes = b""
    sequence: int = 0

    def tid(self) -> bytes:
        return stun.new_transaction_id(self.rng, msturn.dialect_for(self.version))

    @property
    def key(self) -> bytes:
        assert self.realm is not None and self.nonce is not None
        return msturn.key_for(self.version, self.username, self.realm, self.password, self.nonce)

    def request(self, method: int, *attrs: Attribute, auth: bool = True, seq: bool = False,
                cls: MessageClass = MessageClass.REQUEST, tid: bytes | None = None) -> bytes:
        extra: list[Attribute] = [attr(msturn.MS_VERSION, self.version)]
        extra += attrs
        if seq:
            self.sequence += 1
            extra.append(attr(msturn.MS_SEQUENCE_NUMBER, msturn.SequenceNumber(self.connection_id, self.sequence)))
        if auth and self.nonce is not None:
            assert self.realm is not None
            extra += [attr(msturn.USERNAME, self.username), attr(msturn.REALM, self.realm),
                      attr(msturn.NONCE, self.nonce)]
            msg = msturn.build(method, cls, tid or self.tid(), *extra, version=self.version)
            return msg.serialize(key=self.key, integrity=(msturn.integrity_for(self.version),))
        return msturn.build(method, cls, tid or self.tid(), *extra, version=self.version).serialize()

    def learn(self, response: bytes) -> Message:
        msg = msturn.parse(response)
        if msg.get(msturn.NONCE) is not None:
            self.nonce = msg.get(msturn.NONCE)
            self.realm = msg.get(msturn.REALM)
        seq = msg.get(msturn.MS_SEQUENCE_NUMBER)
        if seq is not None:
            self.connection_id = seq.connection_id
            self.sequence = seq.sequence
        return msg


class StreamClient:
    """A client TCP connection to the server core: TURN-over-TCP or MS-TURN 443 framing."""

    def __init__(self, h: Harness, client: Address, ms: bool = False) -> None:
        self.h = h
        self.sink = FakeSink(f"tcp-{client}")
        self.client = client
        self.ms = ms
        self.turn = TurnTcpFramer()
        self.ms_framer = MsTurnTcpFramer(Role.CLIENT)
        h.server.stream_opened(self.sink, client, h.now)

    def hello(self) -> bytes:
        self.h.server.receive_stream(self.sink, client_hello(bytes(32)), self.h.now)
        out = self._drain()
        [frame] = self.ms_framer.feed(out)
        assert frame.kind == MsTurnFrameKind.HELLO
        return frame.data

    def _drain(self) -> bytes:
        return b"".join(d for sink, d, _ in self.h.server.datagrams_to_send() if sink is self.sink)

    def send(self, data: bytes, *, raw: bool = False) -> list[bytes]:
        """Send one message (framed for MS-TURN unless ``raw``) and return the frames that came back."""
        payload = frame_control(data) if self.ms and not raw else data
        self.h.server.receive_stream(self.sink, payload, self.h.now)
        out = self._drain()
        if self.ms:
            return [f.data for f in self.ms_framer.feed(out)]
        return [f.data for f in self.turn.feed(out)]
