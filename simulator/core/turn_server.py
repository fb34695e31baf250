"""The A/V Edge TURN server core: RFC 8656 TURN, RFC 6062 TCP relays and MS-TURN, sans-I/O.

Theory of operation
-------------------
One :class:`TurnServer` serves one A/V Edge interface: one UDP listener and one TCP listener (the lab
starts one on the external and one on the internal address of a node). It never touches a socket or a
clock. The asyncio shell (:mod:`simulator.net.av_edge`) feeds it

* ``receive_datagram(data, client, now)`` for every datagram on the UDP listener,
* ``stream_opened(sink, client, now)`` / ``receive_stream(sink, data, now)`` / ``stream_closed(sink, now)``
  for every TCP connection on the TCP listener,
* ``receive_from_peer(port, data, peer, now)`` for every datagram on a UDP relay socket,
* ``peer_stream_opened(port, sink, peer, now)`` / ``peer_connected(connection_id, sink, now)`` /
  ``peer_connect_failed(connection_id, now)`` / ``receive_peer_stream(sink, data, now)`` /
  ``peer_stream_closed(sink, now)`` for RFC 6062 peer TCP connections,
* ``handle_timer(now)`` at (or after) ``get_timer()``,

and drains what the core wants done: ``datagrams_to_send()`` (a list of ``(sink, bytes, address)``
transmits; the shell calls ``sink.sendto(bytes, address)``) and ``next_event()`` (close a stream, open
a peer TCP connection). A *sink* is whatever object the shell hands in for a socket or connection; the
core only stores it and hands it back. Relay sockets are bound through an injected :class:`RelayBinder`,
because a bind can fail (another program holds the port) and the Allocate answer depends on it
synchronously (RFC 8656 §7.2: try another port, else 508).

A *5-tuple* is the client address for the UDP listener, and the connection sink for TCP. Each has at
most one allocation (RFC 8656 §2.2). The dialect of a 5-tuple is decided by each message's first bytes
(MS-TURN carries the MAGIC-COOKIE attribute first; research-lync-edge.md §1.1) and pinned by the
allocation: an MS-TURN allocation never answers RFC TURN requests and vice versa.

Requests go through the same pipeline, as a table of handlers per (dialect family, method):

    parse ─▶ response cache (same 5-tuple + transaction ID: replay, RFC 8489 §6.3.1)
          ─▶ authenticate (401 / 438 / 400, RFC 8489 §9.2.4; MS-TURN 401 adds ALTERNATE-SERVER)
          ─▶ 420 for unknown comprehension-required attributes (RFC 8489 §6.3.1)
          ─▶ handler (Allocate, Refresh, CreatePermission, ChannelBind, Connect, ConnectionBind,
                      MS Allocate/Send/Set Active Destination)
          ─▶ response signed with the user's key (cached for Allocate/Refresh)

Lifetimes (RFC 8656 §7.2, §9, §12): allocation 600 s by default, clamped to [600, 3600]; permissions
300 s, per peer IP; channels 600 s, and an expired channel number keeps its peer for another 300 s.
Allocations expire from a heap of ``(expiry, schedule number)`` in ``handle_timer`` (a refreshed or deleted
allocation leaves a stale entry that refers to nothing; the heap is rebuilt when those outnumber the live
ones, so a deleted allocation is freed at once, not kept 600 s by its timer); permissions and channels are
checked against ``now`` where they are used, so the per-packet path needs no timer.

Nonces are stateless: ``<expiry hex>-<HMAC(server secret, expiry, client IP)>``, so nothing is stored
per unauthenticated client and an expired nonce is a 438 (RFC 8656 §5 / RFC 8489 §9.2.4). Long-term
keys are cached per (username, password), so an allocation costs one MD5 at most once per user.

Addresses: the core knows the node's *public* A/V address (``config.public_host``, 1:1 NAT) and the
private ones it binds (``config.private_hosts``). Every address it writes into a response is either
the public host or the client's own reflexive address; it never writes a private one
(research-lync-edge.md §2.1, "NAT with DNS LB").

The hot paths are ChannelData client→peer and peer→client: one dict lookup for the allocation, one
for the channel, a ``now`` comparison, slicing, one append. No :class:`Message` is built for them.
"""

from __future__ import annotations

import heapq
import hmac
import ipaddress
import random
import struct
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from simulator.core.credentials import CredentialStore
from simulator.core.ports import InsufficientCapacity, PortLease, RelayPortAllocator, Transport
from simulator.wire import msturn, stun, turn
from simulator.wire.errors import MalformedMessage
from simulator.wire.framing import (
    Frame,
    FrameKind,
    MsTurnFrameKind,
    MsTurnTcpFramer,
    Role,
    TurnTcpFramer,
    frame_control,
    frame_data,
    server_hello,
)
from simulator.wire.stun import Address, Attribute, Message, MessageClass, attr
from simulator.wire.turn import TransportProtocol, TurnMethod

_CD: Final = struct.Struct("!HH")
_BINDING_SUCCESS: Final = b"\x01\x01\x00\x0c"
_XMA_V4_HEAD: Final = b"\x00\x20\x00\x08\x00\x01"
_COOKIE_PORT: Final = 0x2112
_COOKIE_INT: Final = 0x2112A442
_MS_COOKIE_ATTR: Final = msturn.MAGIC_COOKIE_ATTRIBUTE_BYTES
_RELAY_BIND_ATTEMPTS: Final = 64
_PEER_BUFFER_LIMIT: Final = 65536  # RFC 6062 §5.3: buffer peer data until ConnectionBind, bounded
_NONCE_CACHE_SIZE: Final = 65536
_ALLOCATE_REQUEST: Final = 0x0003  # RFC 8656 §17: Allocate request type
_REFRESH_REQUEST: Final = 0x0004
_SUCCESS_BIT: Final = 0x0100  # RFC 8489 §5: C1 (request 0x0003 -> success 0x0103)
_MI_HEAD: Final = b"\x00\x08\x00\x14"  # MESSAGE-INTEGRITY, 20 bytes (RFC 8489 §14.5)
_FAST_TEXT: Final = -1
# The RFC 8656 fast path's attribute table: code -> the exact value length the generic decoder accepts
# (_FAST_TEXT: any length, UTF-8). A request with any other attribute takes the generic path.
_FAST_ATTRIBUTES: Final[dict[int, int]] = {
    turn.REQUESTED_TRANSPORT.code: 4,
    turn.LIFETIME.code: 4,
    turn.DONT_FRAGMENT.code: 0,
    stun.USERNAME.code: _FAST_TEXT,
    stun.REALM.code: _FAST_TEXT,
    stun.NONCE.code: _FAST_TEXT,
    stun.SOFTWARE.code: _FAST_TEXT,
    stun.MESSAGE_INTEGRITY.code: 20,
    stun.FINGERPRINT.code: 4,
}
_FAST_TEXT_CODES: Final = tuple(code for code, length in _FAST_ATTRIBUTES.items() if length == _FAST_TEXT)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_DENIED_PEERS: Final[tuple[Network, ...]] = (
    ipaddress.ip_network("0.0.0.0/8"),  # "this network"
    ipaddress.ip_network("224.0.0.0/4"),  # multicast
    ipaddress.ip_network("255.255.255.255/32"),
    ipaddress.ip_network("::/128"),
    ipaddress.ip_network("ff00::/8"),
)
"""Peers a relay never sends to (403, RFC 8656 §21.3 "peer address filtering"). Loopback and private
ranges are allowed, because the lab runs every host on 127.0.0.0/8."""


class Sink(Protocol):
    """A socket or connection of the shell: the core returns it in transmits, never calls it."""

    def sendto(self, data: bytes, addr: Any, /) -> None: ...


class RelayBinder(Protocol):
    """Binds relay sockets for the core (the shell: one real socket per allocation).

    ``bind`` returns the sink of a newly bound socket on ``(host, port)`` or None when the OS
    refused the port; ``unbind`` closes it. ``listen`` is called once per allocation, just before its first
    permission is installed: until then nothing a peer sends can be relayed (RFC 8656 §9), so a shell may
    leave the socket unread and deliver what queued up to ``receive_from_peer`` in ``listen`` (it is all
    dropped), or at ``unbind`` when no permission ever came; an allocation that only lives through
    Allocate → Refresh(0) then never costs an event-loop registration.
    """

    def bind(self, transport: Transport, host: str, port: int) -> Sink | None: ...

    def unbind(self, transport: Transport, port: int) -> None: ...

    def listen(self, transport: Transport, port: int) -> None: ...


Transmit = tuple[Sink, bytes, Any]


@dataclass(frozen=True, slots=True)
class CloseStream:
    """Close this TCP connection (client control/data connection or peer connection)."""

    sink: Sink


@dataclass(frozen=True, slots=True)
class ConnectPeer:
    """RFC 6062 §5.2: open a TCP connection from ``(relay_host, relay_port)`` to ``peer``.

    Report the outcome with ``peer_connected(connection_id, sink, now)`` or
    ``peer_connect_failed(connection_id, now)``.
    """

    connection_id: int
    relay_host: str
    relay_port: int
    peer: Address


Event = CloseStream | ConnectPeer


@dataclass(frozen=True, slots=True)
class TurnServerConfig:
    """What one A/V Edge interface advertises and enforces.

    ``public_host`` is what responses carry (relay address, ALTERNATE-SERVER); ``relay_host`` is where
    relay sockets bind (the relay port pool key); ``private_hosts`` are the addresses that must never
    appear in a response. ``udp_port``/``tcp_port`` are the advertised listener ports (1:1 NAT keeps
    ports).
    """

    public_host: str
    relay_host: str
    private_hosts: frozenset[str] = frozenset()
    # Where the 401's ALTERNATE-SERVER sends the client: the answering interface's own reachable address.
    # None = public_host (the external interface behind 1:1 NAT); the internal interface names itself.
    alternate_host: str | None = None
    udp_port: int = 3478
    tcp_port: int = 443
    realm: str = "edgesim"
    default_lifetime: int = 600  # RFC 8656 §7.2: 10 minutes
    max_lifetime: int = 3600  # RFC 8656 §7.2: 1 hour is the recommended maximum
    permission_lifetime: float = 300.0  # RFC 8656 §9
    channel_lifetime: float = 600.0  # RFC 8656 §12
    channel_cooldown: float = 300.0  # RFC 8656 §12: number/peer kept 5 more minutes after expiry
    nonce_lifetime: float = 3600.0
    max_allocations: int | None = None  # total quota -> 486
    user_quota: int | None = None  # per-username quota -> 486
    denied_peers: tuple[Network, ...] = DEFAULT_DENIED_PEERS
    response_cache_ttl: float = 40.0  # RFC 8489 §6.3.1: Rc * Rto = 39.5 s for UDP
    response_cache_size: int = 65536
    connection_bind_timeout: float = 30.0  # RFC 6062 §5.3
    ms_bandwidth: int = 2000  # kbit/s granted in MS-TURN BANDWIDTH when the client asks none


@dataclass(slots=True)
class Channel:
    number: int
    peer: Address
    expires: float
    header_len: bytes = b""


@dataclass(slots=True)
class PeerConnection:
    """RFC 6062: one TCP connection between the relay and a peer."""

    connection_id: int
    allocation: Allocation
    peer: Address
    expires: float  # ConnectionBind deadline
    sink: Sink | None = None
    data_sink: Sink | None = None  # the client data connection once bound
    buffer: bytearray = field(default_factory=bytearray)
    connect_tid: bytes | None = None  # pending Connect request (client initiated)


@dataclass(slots=True, eq=False)
class Allocation:
    """One relayed transport address and its 5-tuple (RFC 8656 §2.2)."""

    key: object  # the 5-tuple: client Address (UDP) or connection sink (TCP)
    client: Address
    client_sink: Sink  # where answers to the client go (UDP listener or the TCP connection)
    stream: bool  # client over TCP: ChannelData padded (RFC 8656 §12.5)
    ms: bool  # MS-TURN dialect pinned by the first Allocate
    ms_tcp: bool  # MS-TURN 443 framing
    dialect: stun.Dialect
    transport: Transport  # relay transport
    lease: PortLease
    relay_sink: Sink
    public: Address
    username: str
    key_bytes: bytes
    integrity: stun.IntegrityAlgorithm
    expires: float
    version: int | None = None  # MS-VERSION
    permissions: dict[str, float] = field(default_factory=dict)  # peer IP -> expiry
    channels: dict[int, Channel] = field(default_factory=dict)
    peer_channels: dict[Any, Channel] = field(default_factory=dict)
    connection_id: bytes = b""  # MS-SEQUENCE-NUMBER connection ID
    sequence: int = 0
    active_destination: Address | None = None
    peer_connections: dict[int, PeerConnection] = field(default_factory=dict)
    dead: bool = False
    timer: int = 0  # its live entry in the expiry heap (TurnServer._schedule)
    listening: bool = False  # RelayBinder.listen called (at the first permission)


@dataclass(slots=True)
class _Stream:
    """A client TCP connection on the listener: undecided, TURN, MS-TURN 443, or an RFC 6062 data leg."""

    sink: Sink
    client: Address
    turn_framer: TurnTcpFramer | None = None
    ms_framer: MsTurnTcpFramer | None = None
    peer: PeerConnection | None = None  # bound data connection
    pending: bytes = b""


@dataclass(slots=True)
class TurnMetrics:
    """Live counters and gauges (research-turn.md §5.10: live, not per finished session)."""

    allocations_created: int = 0
    allocations_deleted: int = 0
    allocations_expired: int = 0
    requests: int = 0
    bindings: int = 0
    relayed_to_peer: int = 0
    relayed_to_client: int = 0
    bytes_to_peer: int = 0
    bytes_to_client: int = 0
    dropped: int = 0
    malformed: int = 0
    cache_hits: int = 0
    bind_failures: int = 0
    errors: dict[int, int] = field(default_factory=dict)


class _Reply(Exception):
    """Internal: abort a request with an error response (code, reason, extra attributes, signed?)."""

    def __init__(self, code: int, reason: str, *attributes: Attribute) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason
        self.attributes = attributes


@dataclass(slots=True)
class _Auth:
    username: str
    key: bytes


@dataclass(slots=True)
class _Request:
    """One request in flight through the pipeline."""

    msg: Message
    conn: object
    client: Address
    sink: Sink
    stream: _Stream | None
    ms: bool
    auth: _Auth | None = None
    integrity: stun.IntegrityAlgorithm = stun.IntegrityAlgorithm.SHA1


REASONS: Final[dict[int, str]] = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    420: "Unknown Attribute",
    437: "Allocation Mismatch",
    438: "Stale Nonce",
    440: "Address Family not Supported",
    441: "Wrong Credentials",
    442: "Unsupported Transport Protocol",
    443: "Peer Address Family Mismatch",
    446: "Connection Already Exists",
    447: "Connection Timeout or Failure",
    486: "Allocation Quota Reached",
    500: "Server Error",
    508: "Insufficient Capacity",
}


def _addr(value: Any) -> Address:
    return value if isinstance(value, Address) else Address(value[0], value[1])


class TurnServer:
    """The TURN/MS-TURN server of one A/V Edge interface (see the module docstring)."""

    def __init__(
        self,
        config: TurnServerConfig,
        *,
        credentials: CredentialStore,
        ports: RelayPortAllocator,
        relays: RelayBinder,
        rng: random.Random,
        udp_sink: Sink | None = None,
    ) -> None:
        self.config = config
        self.credentials = credentials
        self.ports = ports
        self.relays = relays
        self.udp_sink = udp_sink
        self._rng = rng
        self._secret = rng.randbytes(20)
        for transport in ("udp", "tcp"):
            if (config.relay_host, transport) not in ports.pools:
                ports.add_pool(config.relay_host, transport)
        self.metrics = TurnMetrics()
        self.transmits: list[Transmit] = []
        self._events: deque[Event] = deque()
        self._allocations: dict[object, Allocation] = {}
        self._by_relay: dict[tuple[Transport, int], Allocation] = {}
        self._per_user: dict[str, int] = {}
        self._expiry_heap: list[tuple[float, int]] = []  # (expires, schedule number)
        self._scheduled: dict[int, Allocation] = {}  # schedule number -> allocation, for live entries only
        self._seq = 0
        self._keys: dict[tuple[Any, ...], bytes] = {}
        self._xored_hosts: dict[str, bytes] = {}  # IPv4 host -> address XOR cookie (Binding fast path)
        self._nonce_by_host: dict[str, tuple[int, str]] = {}  # host -> (expiry, nonce) last handed out
        self._good_nonces: dict[tuple[str, str], int] = {}  # (nonce, host) with a valid MAC -> expiry
        self._challenges: dict[tuple[str, int], tuple[int, bytes]] = {}  # (host, method) -> (expiry, 401)
        self.fast_path = True  # RFC 8656 Allocate/Refresh without a Message (tests switch it off to compare)
        self._cache: dict[tuple[object, bytes], bytes] = {}
        self._cache_order: deque[tuple[float, tuple[object, bytes]]] = deque()
        self._streams: dict[Sink, _Stream] = {}
        self._peer_conns: dict[int, PeerConnection] = {}
        self._peer_by_sink: dict[Sink, PeerConnection] = {}
        self._bind_deadlines: deque[tuple[float, int]] = deque()
        self._tid_counter = rng.getrandbits(64)
        alternate = config.alternate_host or config.public_host
        self._public_udp = Address(alternate, config.udp_port)
        self._public_tcp = Address(alternate, config.tcp_port)
        self._handlers: dict[tuple[bool, int], Callable[[_Request, float], None]] = {
            (False, TurnMethod.ALLOCATE): self._allocate,
            (False, TurnMethod.REFRESH): self._refresh,
            (False, TurnMethod.CREATE_PERMISSION): self._create_permission,
            (False, TurnMethod.CHANNEL_BIND): self._channel_bind,
            (False, TurnMethod.CONNECT): self._connect,
            (False, TurnMethod.CONNECTION_BIND): self._connection_bind,
            (True, msturn.MsTurnMethod.ALLOCATE): self._ms_allocate,
            (True, msturn.MsTurnMethod.SET_ACTIVE_DESTINATION): self._ms_set_active_destination,
        }
        # Requests whose answers are replayed from the cache on retransmission (RFC 8489 §6.3.1):
        # the ones that change state so that a second execution would answer differently (437).
        self._cached_methods: frozenset[tuple[bool, int]] = frozenset(
            {
                (False, TurnMethod.ALLOCATE),
                (False, TurnMethod.REFRESH),
                (True, msturn.MsTurnMethod.ALLOCATE),
            }
        )

    # ================================================================== outputs

    def datagrams_to_send(self) -> list[Transmit]:
        """Everything to send since the last call, as ``(sink, data, address)``."""
        out = self.transmits
        self.transmits = []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    @property
    def pending_events(self) -> bool:
        return bool(self._events)

    @property
    def allocation_count(self) -> int:
        return len(self._allocations)

    def allocations(self) -> list[Allocation]:
        return list(self._allocations.values())

    def allocation_for(self, five_tuple: object) -> Allocation | None:
        return self._allocations.get(five_tuple)

    # ================================================================== timers

    def get_timer(self) -> float | None:
        """When ``handle_timer`` has something to do next (None: nothing pending)."""
        heap = self._expiry_heap
        while heap and heap[0][1] not in self._scheduled:
            heapq.heappop(heap)
        candidates = [heap[0][0]] if heap else []
        if self._cache_order:
            candidates.append(self._cache_order[0][0])
        if self._bind_deadlines:
            candidates.append(self._bind_deadlines[0][0])
        port_timer = self.ports.next_timer()
        if port_timer is not None:
            candidates.append(port_timer)
        return min(candidates) if candidates else None

    def handle_timer(self, now: float) -> None:
        """Expire allocations, cached responses, unbound peer connections and port lingering."""
        heap = self._expiry_heap
        while heap and heap[0][0] <= now:
            expires, seq = heapq.heappop(heap)
            alloc = self._scheduled.get(seq)
            if alloc is None:
                continue  # refreshed (a newer entry exists) or deleted
            if alloc.expires != expires:
                heapq.heappush(heap, (alloc.expires, seq))  # moved without _schedule: keep it on time
                continue
            del self._scheduled[seq]
            if not alloc.dead:
                self.metrics.allocations_expired += 1
                self._delete(alloc, now)  # RFC 8656 §7: the allocation is deleted when its lifetime ends
        self._evict_cache(now)
        deadlines = self._bind_deadlines
        while deadlines and deadlines[0][0] <= now:
            _, cid = deadlines.popleft()
            pc = self._peer_conns.get(cid)
            if pc is not None and pc.data_sink is None and pc.expires <= now:
                self._close_peer(pc)  # RFC 6062 §5.3: no ConnectionBind within 30 s
        self.ports.expire(now)

    # ================================================================== UDP listener

    def receive_datagram(self, data: bytes, client: Any, now: float) -> None:
        """One datagram on the UDP listener from ``client``."""
        if not data:
            return
        first = data[0]
        if 0x40 <= first <= 0x7F:  # ChannelData (turn.CHANNEL_MIN..CHANNEL_MAX)
            # RFC 8656 §12.4: ChannelData fast path.
            alloc = self._allocations.get(client)
            if alloc is not None and alloc.ms:
                # MS-TURN has no ChannelData: after Set Active Destination this is the client's raw media,
                # whatever its first byte (an ASCII payload starts at 0x41..0x7A).
                self._ms_raw_from_client(client, data, now)
                return
            if alloc is None or len(data) < 4:
                self.metrics.dropped += 1
                return
            number, length = _CD.unpack_from(data, 0)
            channel = alloc.channels.get(number)
            if channel is None or channel.expires <= now or 4 + length > len(data):
                self.metrics.dropped += 1  # RFC 8656 §12.4: unbound channel: discard
                return
            payload = data[4 : 4 + length]
            self.transmits.append((alloc.relay_sink, payload, channel.peer))
            self.metrics.relayed_to_peer += 1
            self.metrics.bytes_to_peer += length
            return
        sink = self.udp_sink
        if sink is None:
            raise RuntimeError("udp_sink is not set")
        if first == 0 and len(data) == 20 and data[1] == 1 and data[4:8] == stun.MAGIC_COOKIE_BYTES:
            # A bare Binding request (RFC 8489 §7.3), the common keep-alive/ICE case, unless an MS-TURN
            # 5-tuple may forward it end to end (see _receive_message).
            alloc = self._allocations.get(client)
            if alloc is None or not alloc.ms:
                self._binding(data, client, sink, now)
                return
        self._receive_message(data, client, client, sink, None, now)

    # ================================================================== TCP listener

    def stream_opened(self, sink: Sink, client: Any, now: float) -> None:
        """A client connected to the TCP listener."""
        self._streams[sink] = _Stream(sink, _addr(client))

    def stream_closed(self, sink: Sink, now: float) -> None:
        """The client TCP connection is gone: its allocation goes with it (RFC 6062 §5.1, RFC 8656 §3.1)."""
        stream = self._streams.pop(sink, None)
        alloc = self._allocations.get(sink)
        if alloc is not None:
            self._delete(alloc, now)
        if stream is not None and stream.peer is not None:
            self._close_peer(stream.peer)

    def receive_stream(self, sink: Sink, data: bytes, now: float) -> None:
        """Bytes from a client TCP connection."""
        stream = self._streams.get(sink)
        if stream is None or not data:
            return
        if stream.peer is not None:
            # RFC 6062 §5.5: after ConnectionBind the data connection is a raw pipe to the peer.
            pc = stream.peer
            if pc.sink is not None:
                self.transmits.append((pc.sink, data, pc.peer))
                self.metrics.relayed_to_peer += 1
                self.metrics.bytes_to_peer += len(data)
            return
        try:
            if stream.turn_framer is None and stream.ms_framer is None:
                head = stream.pending + data
                if head[0] == 0x16:  # MS-TURN 2.1: pseudo-TLS ClientHello
                    stream.ms_framer = MsTurnTcpFramer(Role.SERVER)
                elif head[0] & 0xC0 in (0x00, 0x40):
                    stream.turn_framer = TurnTcpFramer()  # RFC 8656 §3.1: STUN/TURN over TCP
                else:
                    self._drop_stream(stream)
                    return
                data = head
                stream.pending = b""
            if stream.turn_framer is not None:
                for frame in stream.turn_framer.feed(data):
                    self._stream_frame(stream, frame, now)
                    if stream.sink not in self._streams or stream.peer is not None:
                        break
                if stream.peer is not None and stream.turn_framer.buffered:
                    # bytes after ConnectionBind on the same segment belong to the peer
                    rest = bytes(stream.turn_framer._buffer)
                    stream.turn_framer = None
                    self.receive_stream(sink, rest, now)
            elif stream.ms_framer is not None:
                for ms_frame in stream.ms_framer.feed(data):
                    if ms_frame.kind == MsTurnFrameKind.HELLO:
                        # MS-TURN 2.1: answer the fake ClientHello with ServerHello + ServerHelloDone.
                        hello = server_hello(self._rng.randbytes(32), self._rng.randbytes(32))
                        self.transmits.append((sink, hello, stream.client))
                    elif ms_frame.kind == MsTurnFrameKind.CONTROL:
                        self._receive_message(ms_frame.data, sink, stream.client, sink, stream, now)
                    else:
                        self._ms_raw_from_client(sink, ms_frame.data, now)
                    if stream.sink not in self._streams:
                        break
        except MalformedMessage:
            self.metrics.malformed += 1
            self._drop_stream(stream)  # framing lost: close (MS-TURN 3.1.10, RFC 8489 §6.2.2)

    def _stream_frame(self, stream: _Stream, frame: Frame, now: float) -> None:
        sink = stream.sink
        if frame.kind == FrameKind.CHANNEL_DATA:
            data = frame.data
            alloc = self._allocations.get(sink)
            number, length = _CD.unpack_from(data, 0)
            channel = alloc.channels.get(number) if alloc is not None else None
            if alloc is None or channel is None or channel.expires <= now:
                self.metrics.dropped += 1
                return
            self.transmits.append((alloc.relay_sink, data[4 : 4 + length], channel.peer))
            self.metrics.relayed_to_peer += 1
            self.metrics.bytes_to_peer += length
            return
        self._receive_message(frame.data, sink, stream.client, sink, stream, now)

    def _drop_stream(self, stream: _Stream) -> None:
        self._events.append(CloseStream(stream.sink))

    # ================================================================== relay sockets

    def receive_from_peer(self, port: int, data: bytes, peer: Any, now: float) -> None:
        """A datagram from ``peer`` on the UDP relay socket bound to ``port``."""
        alloc = self._by_relay.get(("udp", port))
        if alloc is None:
            self.metrics.dropped += 1
            return
        # RFC 8656 §10.3/§11.5: only peers with a permission get through.
        perm = alloc.permissions.get(peer[0])
        if perm is None or perm <= now:
            self.metrics.dropped += 1
            return
        self.metrics.relayed_to_client += 1
        self.metrics.bytes_to_client += len(data)
        if alloc.ms:
            self._ms_to_client(alloc, data, _addr(peer))
            return
        channel = alloc.peer_channels.get(peer)
        if channel is not None and channel.expires > now:
            # RFC 8656 §12.5: ChannelData, padded to 4 over TCP.
            head = _CD.pack(channel.number, len(data))
            out = head + data + bytes(-len(data) & 3) if alloc.stream and len(data) & 3 else head + data
            self.transmits.append((alloc.client_sink, out, alloc.client))
            return
        # RFC 8656 §11.5: no channel: a Data indication with XOR-PEER-ADDRESS and DATA.
        ind = stun.indication(
            TurnMethod.DATA,
            self._new_tid(12),
            attr(turn.XOR_PEER_ADDRESS, _addr(peer)),
            attr(turn.DATA, bytes(data)),
            dialect=turn.RFC,
        )
        self.transmits.append((alloc.client_sink, ind.serialize(), alloc.client))

    # ---------------------------------------------------------------- RFC 6062 peer connections

    def peer_stream_opened(self, port: int, sink: Sink, peer: Any, now: float) -> bool:
        """A peer connected to the TCP relay listener on ``port``. False: close it (no permission)."""
        alloc = self._by_relay.get(("tcp", port))
        peer = _addr(peer)
        if alloc is None:
            return False
        perm = alloc.permissions.get(peer.host)
        if perm is None or perm <= now:
            return False  # RFC 6062 §5.3: no permission for this peer: reject the connection
        pc = self._new_peer_connection(alloc, peer, now)
        pc.sink = sink
        self._peer_by_sink[sink] = pc
        # RFC 6062 §5.3: ConnectionAttempt indication with CONNECTION-ID and XOR-PEER-ADDRESS.
        ind = stun.indication(
            TurnMethod.CONNECTION_ATTEMPT,
            self._new_tid(12),
            attr(turn.CONNECTION_ID, pc.connection_id),
            attr(turn.XOR_PEER_ADDRESS, peer),
            dialect=turn.RFC,
        )
        self.transmits.append((alloc.client_sink, ind.serialize(), alloc.client))
        return True

    def peer_connected(self, connection_id: int, sink: Sink, now: float) -> None:
        """The outgoing connection of a Connect request is up (RFC 6062 §5.2)."""
        pc = self._peer_conns.get(connection_id)
        if pc is None or pc.allocation.dead:
            self._events.append(CloseStream(sink))
            return
        pc.sink = sink
        self._peer_by_sink[sink] = pc
        alloc = pc.allocation
        tid = pc.connect_tid
        pc.connect_tid = None
        if tid is not None:
            resp = Message(
                TurnMethod.CONNECT, MessageClass.SUCCESS, tid, (attr(turn.CONNECTION_ID, connection_id),), turn.RFC
            )
            self.transmits.append((alloc.client_sink, resp.serialize(key=alloc.key_bytes), alloc.client))

    def peer_connect_failed(self, connection_id: int, now: float) -> None:
        """The outgoing connection failed or timed out: 447 (RFC 6062 §5.2)."""
        pc = self._peer_conns.pop(connection_id, None)
        if pc is None:
            return
        alloc = pc.allocation
        alloc.peer_connections.pop(connection_id, None)
        if pc.connect_tid is not None and not alloc.dead:
            resp = Message(
                TurnMethod.CONNECT,
                MessageClass.ERROR,
                pc.connect_tid,
                (Attribute(stun.AttrType.ERROR_CODE, stun.ErrorCode(447, REASONS[447])),),
                turn.RFC,
            )
            self._count_error(447)
            self.transmits.append((alloc.client_sink, resp.serialize(key=alloc.key_bytes), alloc.client))

    def receive_peer_stream(self, sink: Sink, data: bytes, now: float) -> None:
        """Bytes from a peer TCP connection."""
        pc = self._peer_by_sink.get(sink)
        if pc is None:
            return
        if pc.data_sink is not None:
            self.transmits.append((pc.data_sink, data, pc.peer))
            self.metrics.relayed_to_client += 1
            self.metrics.bytes_to_client += len(data)
        elif len(pc.buffer) + len(data) <= _PEER_BUFFER_LIMIT:
            pc.buffer += data  # RFC 6062 §5.3: hold data until the client binds a data connection
        else:
            self._close_peer(pc)

    def peer_stream_closed(self, sink: Sink, now: float) -> None:
        pc = self._peer_by_sink.pop(sink, None)
        if pc is not None:
            pc.sink = None
            self._close_peer(pc)

    # ================================================================== message pipeline

    def _receive_message(
        self, data: bytes, conn: object, client: Any, sink: Sink, stream: _Stream | None, now: float
    ) -> None:
        alloc = self._allocations.get(conn)
        size = len(data)
        is_ms = size >= 28 and data[20:28] == _MS_COOKIE_ATTR
        if size < 20 or data[0] & 0xC0 or (not is_ms and data[4:8] != stun.MAGIC_COOKIE_BYTES):
            # Not a STUN message: raw media after MS-TURN Set Active Destination, else noise.
            if alloc is not None and alloc.ms and stream is None:
                self._ms_raw_from_client(conn, data, now)
            else:
                self.metrics.dropped += 1
            return
        if alloc is not None and alloc.ms and not is_ms:
            # MS-TURN 5-tuple: a non-MS-TURN STUN message is end-to-end (ICE checks) once a
            # destination is active; otherwise it is not for us.
            if alloc.active_destination is not None and stream is None:
                self._ms_raw_from_client(conn, data, now)
            elif data[0:2] == b"\x00\x01" and not is_ms:
                self._binding(data, client, sink, now)
            else:
                self.metrics.dropped += 1
            return
        if not is_ms and data[0:2] == b"\x00\x01":
            self._binding(data, client, sink, now)
            return
        if alloc is not None and not alloc.ms and is_ms:
            self.metrics.dropped += 1  # the 5-tuple speaks RFC TURN: an MS-TURN message is foreign
            return
        if (
            not is_ms
            and data[0] == 0
            and (data[1] == _ALLOCATE_REQUEST or data[1] == _REFRESH_REQUEST)
            and (stream is None or stream.ms_framer is None)
            and self.fast_path
            and self._fast_turn_request(data, conn, client, sink, stream, now)
        ):
            return
        try:
            msg = msturn.parse(data) if is_ms else turn.parse(data)
        except MalformedMessage as exc:
            self.metrics.malformed += 1
            dialect = (msturn.RFC5389 if data[4:8] == stun.MAGIC_COOKIE_BYTES else msturn.LEGACY) if is_ms else turn.RFC
            tid = stun.transaction_id_of(data, dialect)
            ms_send = is_ms and struct.unpack_from("!H", data, 0)[0] == msturn.MsTurnMethod.SEND
            if ms_send:
                return  # MS-TURN: a Send never gets a response, not even an error
            if exc.status is not None and tid is not None and (data[0] & 0x01) == 0 and (data[1] & 0x10) == 0:
                # RFC 8489 §6.3: a malformed *request* gets its error (400) when it has a transaction ID.
                self._send_bare_error(dialect, data, tid, exc.status, client, sink, is_ms)
            return
        self._dispatch(msg, conn, _addr(client), sink, stream, is_ms, now)

    def _binding(self, data: bytes, client: Any, sink: Sink, now: float) -> None:
        """RFC 8489 §7.3: Binding request -> success with XOR-MAPPED-ADDRESS; fast path for the bare one."""
        self.metrics.bindings += 1
        host = client[0]
        if len(data) == 20 and data[4:8] == stun.MAGIC_COOKIE_BYTES and ":" not in host:
            xaddr = self._xored_hosts.get(host) or self._xor_host(host)
            port = (client[1] ^ _COOKIE_PORT).to_bytes(2, "big")
            self.transmits.append((sink, _BINDING_SUCCESS + data[4:20] + _XMA_V4_HEAD + port + xaddr, client))
            return
        try:
            msg = turn.parse(data)
        except MalformedMessage:
            self.metrics.malformed += 1
            return
        if msg.cls != MessageClass.REQUEST:
            return
        unknown = msg.unknown_required()
        if unknown:
            resp = stun.error_response(msg, 420, REASONS[420], attr(stun.UNKNOWN_ATTRIBUTES, unknown))
        else:
            resp = stun.success_response(msg, attr(stun.XOR_MAPPED_ADDRESS, _addr(client)))
        self.transmits.append((sink, resp.serialize(fingerprint=msg.has(stun.FINGERPRINT)), client))

    def _xor_host(self, host: str) -> bytes:
        """An IPv4 address XOR the magic cookie (RFC 8489 §14.2), cached per host."""
        if len(self._xored_hosts) > 65536:
            self._xored_hosts.clear()
        packed = ipaddress.IPv4Address(host).packed
        xaddr = self._xored_hosts[host] = (int.from_bytes(packed, "big") ^ _COOKIE_INT).to_bytes(4, "big")
        return xaddr

    def _xor_address_attribute(self, code: int, host: str, port: int, xor_key: bytes) -> bytes:
        """One XOR-*-ADDRESS attribute, header included, as ``stun.encode_xor_address`` writes it."""
        if ":" in host:
            value = stun.encode_xor_address(Address(host, port), xor_key)
            return _CD.pack(code, len(value)) + value
        xaddr = self._xored_hosts.get(host) or self._xor_host(host)
        return _CD.pack(code, 8) + b"\x00\x01" + (port ^ _COOKIE_PORT).to_bytes(2, "big") + xaddr

    # ---------------------------------------------------------------- RFC 8656 Allocate/Refresh fast path

    def _fast_turn_request(
        self, data: bytes, conn: object, client: Any, sink: Sink, stream: _Stream | None, now: float
    ) -> bool:
        """Answer an RFC 8656 Allocate or Refresh request from its bytes; False: take the generic path.

        Handles what a TURN client does on every allocation, exactly as the generic pipeline answers it:
        the 401 to an unsigned request, Allocate of a UDP relay, Refresh and Refresh(0). It reads only the
        attributes in ``_FAST_ATTRIBUTES``, and everything up to the answer has no side effect, so any
        other request (another attribute, a duplicate, a stale nonce, a wrong key, 437, 441, TCP relay,
        ...) goes to the generic path as if this had not run. tests/av/test_fast_path.py compares both.
        """
        size = len(data)
        if size != 20 + ((data[2] << 8) | data[3]) or size & 3:
            return False
        found: dict[int, tuple[int, int]] = {}  # code -> (value offset, value length)
        table = _FAST_ATTRIBUTES
        pos = 20
        while pos < size:
            code, length = _CD.unpack_from(data, pos)
            want = table.get(code)
            end = pos + 4 + ((length + 3) & ~3)
            if want is None or (want != length and want != _FAST_TEXT) or code in found or end > size:
                return False
            found[code] = (pos + 4, length)
            pos = end
        texts: dict[int, str] = {}
        try:
            for code in _FAST_TEXT_CODES:
                at = found.get(code)
                if at is not None:
                    texts[code] = data[at[0] : at[0] + at[1]].decode("utf-8")
        except UnicodeDecodeError:
            return False  # the generic parser answers 400
        cache_key = (conn, data[8:20])
        cached = self._cache.get(cache_key)
        if cached is not None:
            # RFC 8489 §6.3.1: a retransmission gets the same answer.
            self.metrics.requests += 1
            self.metrics.cache_hits += 1
            self.transmits.append((sink, cached, client))
            return True
        mi = found.get(stun.MESSAGE_INTEGRITY.code)
        if mi is None:
            self.metrics.requests += 1
            self._count_error(401)
            # RFC 8489 §9.2.4: no MESSAGE-INTEGRITY: 401 with REALM and NONCE.
            self.transmits.append((sink, self._challenge_bytes(data, client[0], now), client))
            return True
        username = texts.get(stun.USERNAME.code)
        realm = texts.get(stun.REALM.code)
        nonce = texts.get(stun.NONCE.code)
        if (
            username is None
            or realm is None
            or nonce is None
            or realm != self.config.realm
            or not self._nonce_valid(nonce, client[0], now)
        ):
            return False
        password = self.credentials.password_for(username, now)
        if password is None:
            return False
        key = self._key(False, None, username, realm, password, nonce)
        mi_at = mi[0] - 4
        # RFC 8489 §14.5: HMAC over the message up to MESSAGE-INTEGRITY, length field ending just after it.
        signed = data[:2] + (mi_at + 24 - 20).to_bytes(2, "big") + data[4:mi_at]
        if not hmac.compare_digest(stun.hmac_digest(key, signed, "sha1"), data[mi[0] : mi[0] + 20]):
            return False  # RFC 8489 §9.2.4: the generic path answers the 401
        lifetime_at = found.get(turn.LIFETIME.code)
        requested = int.from_bytes(data[lifetime_at[0] : lifetime_at[0] + 4], "big") if lifetime_at else None
        method = data[1]
        if method == _ALLOCATE_REQUEST:
            transport_at = found.get(turn.REQUESTED_TRANSPORT.code)
            if conn in self._allocations or transport_at is None or data[transport_at[0]] != TransportProtocol.UDP:
                return False  # 437, 400, TCP relay, 442: the generic path
            self.metrics.requests += 1
            client_address = _addr(client)
            req = _Request(
                Message(TurnMethod.ALLOCATE, MessageClass.REQUEST, data[8:20], (), turn.RFC, data),
                conn, client_address, sink, stream, False, _Auth(username, key),
            )
            lifetime = self._lifetime(requested)
            try:
                alloc = self._create(req, "udp", now, lifetime)
            except _Reply as reply:
                req.msg = turn.parse(data)  # quota or no port: the generic error answer
                self._reply_error(req, reply, now)
                return True
            xor_key = data[4:20]
            public = alloc.public
            body = self._xor_address_attribute(turn.XOR_RELAYED_ADDRESS.code, public.host, public.port, xor_key)
            body += b"\x00\x0d\x00\x04" + lifetime.to_bytes(4, "big")
            token = alloc.lease.reservation_token
            if token is not None:
                body += b"\x00\x22\x00\x08" + token
            # RFC 8656 §7.3: the client's reflexive address.
            body += self._xor_address_attribute(stun.XOR_MAPPED_ADDRESS.code, client_address.host,
                                                client_address.port, xor_key)
        else:
            alloc_ = self._allocations.get(conn)
            if alloc_ is None or alloc_.dead or alloc_.username != username:
                return False  # 437 / 441: the generic path
            self.metrics.requests += 1
            if requested == 0:
                self._delete(alloc_, now)  # RFC 8656 §8: LIFETIME 0 deletes
                lifetime = 0
            else:
                lifetime = self._lifetime(requested)
                alloc_.expires = now + lifetime
                self._schedule(alloc_)
            body = b"\x00\x0d\x00\x04" + lifetime.to_bytes(4, "big")
        head = _CD.pack(method | _SUCCESS_BIT, len(body) + 24) + data[4:20]
        signed_body = head + body
        out = signed_body + _MI_HEAD + stun.hmac_digest(key, signed_body, "sha1")
        self._cache_put(cache_key, out, now)
        self.transmits.append((sink, out, client))
        return True

    def _challenge_bytes(self, data: bytes, host: str, now: float) -> bytes:
        """The 401 to an unsigned RFC 8656 request: built once per host and nonce second, then spliced."""
        expiry = int(now + self.config.nonce_lifetime)
        method = data[1]
        cached = self._challenges.get((host, method))
        if cached is None or cached[0] != expiry:
            nonce = self._make_nonce(host, now)
            template = Message(
                method,
                MessageClass.ERROR,
                bytes(12),
                (
                    Attribute(stun.AttrType.ERROR_CODE, stun.ErrorCode(401, REASONS[401])),
                    attr(stun.REALM, self.config.realm),
                    attr(stun.NONCE, nonce),
                ),
                turn.RFC,
            ).serialize()
            if len(self._challenges) >= _NONCE_CACHE_SIZE:
                self._challenges.clear()
            cached = self._challenges[(host, method)] = (expiry, template)
        template = cached[1]
        return template[:4] + data[4:20] + template[20:]

    def _send_bare_error(
        self, dialect: stun.Dialect, data: bytes, tid: bytes, code: int, client: Any, sink: Sink, ms: bool
    ) -> None:
        method, _ = stun.split_message_type(struct.unpack_from("!H", data, 0)[0])
        err = Attribute(stun.AttrType.ERROR_CODE, stun.ErrorCode(code, REASONS.get(code, "Bad Request")))
        attrs: tuple[Attribute, ...] = (msturn.cookie_attribute(), err) if ms else (err,)
        try:
            msg = Message(method, MessageClass.ERROR, tid, attrs, dialect)
            out = msg.serialize()
        except ValueError:
            return
        self._count_error(code)
        self._send(sink, out, client, self._is_ms_stream(sink))

    def _is_ms_stream(self, sink: Any) -> bool:
        stream = self._streams.get(sink)
        return stream is not None and stream.ms_framer is not None

    def _send(self, sink: Sink, data: bytes, client: Any, ms_framed: bool) -> None:
        self.transmits.append((sink, frame_control(data) if ms_framed else data, client))

    def _dispatch(
        self, msg: Message, conn: object, client: Address, sink: Sink, stream: _Stream | None, ms: bool, now: float
    ) -> None:
        if msg.cls == MessageClass.INDICATION:
            if not ms and msg.method == TurnMethod.SEND:
                self._send_indication(msg, conn, now)
            else:
                self.metrics.dropped += 1
            return
        if msg.cls != MessageClass.REQUEST:
            self.metrics.dropped += 1  # responses from a client: nothing to do
            return
        if ms and msg.method == msturn.MsTurnMethod.SEND:
            self._ms_send(msg, conn, now)  # MS-TURN: Send is a request that gets no response
            return
        self.metrics.requests += 1
        cache_key = (conn, msg.transaction_id)
        cached = self._cache.get(cache_key)
        if cached is not None:
            # RFC 8489 §6.3.1 / RFC 8656 §7.2: a retransmission gets the same answer, not a 437.
            self.metrics.cache_hits += 1
            self._send(sink, cached, client, stream is not None and stream.ms_framer is not None)
            return
        req = _Request(msg, conn, client, sink, stream, ms)
        handler = self._handlers.get((ms, msg.method))
        try:
            if handler is None:
                raise _Reply(400, "Bad Request")  # RFC 8489 §6.3.1: unknown method
            if not (ms and msg.method == msturn.MsTurnMethod.SET_ACTIVE_DESTINATION):
                # MS-TURN: Set Active Destination, like Send, is tied to its allocation by the
                # MS-SEQUENCE-NUMBER connection ID and signed with the allocation's key, without a NONCE
                # (libnice sends none); _ms_check_sequence verifies it.
                self._authenticate(req, now)
            unknown = msg.unknown_required()
            if unknown:
                raise _Reply(420, REASONS[420], attr(stun.UNKNOWN_ATTRIBUTES, unknown))
            handler(req, now)
        except _Reply as reply:
            self._reply_error(req, reply, now)

    # ---------------------------------------------------------------- authentication

    def _make_nonce(self, host: str, now: float) -> str:
        expiry = int(now + self.config.nonce_lifetime)
        last = self._nonce_by_host.get(host)
        if last is not None and last[0] == expiry:
            return last[1]  # same host, same second: the same nonce (it is a function of both)
        mac = stun.hmac_digest(self._secret, f"{expiry:x}/{host}".encode(), "sha1").hex()[:16]
        nonce = f"{expiry:x}-{mac}"
        if len(self._nonce_by_host) >= _NONCE_CACHE_SIZE:
            self._nonce_by_host.clear()
        self._nonce_by_host[host] = (expiry, nonce)
        return nonce

    def _nonce_valid(self, nonce: str, host: str, now: float) -> bool:
        expiry = self._good_nonces.get((nonce, host))
        if expiry is None:
            stamp, sep, mac = nonce.partition("-")
            if not sep or len(mac) != 16:
                return False
            try:
                expiry = int(stamp, 16)
            except ValueError:
                return False
            good = stun.hmac_digest(self._secret, f"{stamp}/{host}".encode(), "sha1").hex()[:16]
            if not hmac.compare_digest(good, mac):
                return False
            if len(self._good_nonces) >= _NONCE_CACHE_SIZE:
                self._good_nonces.clear()
            self._good_nonces[(nonce, host)] = expiry  # ours and untampered: only the expiry is left to check
        return expiry > now

    def _challenge(self, req: _Request, code: int, now: float) -> _Reply:
        """401/438 with REALM and a fresh NONCE (RFC 8489 §9.2.4); MS-TURN adds ALTERNATE-SERVER."""
        nonce = self._make_nonce(req.client.host, now)
        if req.ms:
            public = self._public_tcp if req.stream is not None else self._public_udp
            # MS-TURN 2.2.2.x: the 401 names the answering node's public address, which pins the
            # client to this pool member behind DNS load balancing (research-lync-edge.md §2.2).
            return _Reply(
                code,
                REASONS[code],
                attr(msturn.REALM, self.config.realm),
                attr(msturn.NONCE, nonce),
                attr(msturn.ALTERNATE_SERVER, public),
            )
        return _Reply(code, REASONS[code], attr(stun.REALM, self.config.realm), attr(stun.NONCE, nonce))

    def _authenticate(self, req: _Request, now: float) -> None:
        msg = req.msg
        ms = req.ms
        mi_spec = msturn.MESSAGE_INTEGRITY if ms else stun.MESSAGE_INTEGRITY
        if not msg.has(mi_spec):
            raise self._challenge(req, 401, now)  # RFC 8489 §9.2.4: no MESSAGE-INTEGRITY
        username = msg.get(msturn.USERNAME if ms else stun.USERNAME)
        realm = msg.get(msturn.REALM if ms else stun.REALM)
        nonce = msg.get(msturn.NONCE if ms else stun.NONCE)
        if username is None or realm is None or nonce is None:
            raise _Reply(400, "Bad Request")  # RFC 8489 §9.2.4: MI without USERNAME/REALM/NONCE
        if not self._nonce_valid(nonce, req.client.host, now):
            raise self._challenge(req, 438, now)  # RFC 8489 §9.2.4: stale nonce
        password = self.credentials.password_for(username, now)
        if password is None or realm != self.config.realm:
            raise self._challenge(req, 401, now)
        version = msg.get(msturn.MS_VERSION) if ms else None
        key = self._key(ms, version, username, realm, password, nonce)
        if not stun.verify_integrity(msg, key):
            raise self._challenge(req, 401, now)  # RFC 8489 §9.2.4: bad MESSAGE-INTEGRITY
        req.auth = _Auth(username, key)
        req.integrity = msturn.integrity_for(version) if ms else stun.IntegrityAlgorithm.SHA1

    def _key(self, ms: bool, version: int | None, username: str, realm: str, password: str, nonce: str) -> bytes:
        if ms and (version or 1) >= 3:
            ckey: tuple[Any, ...] = ("ms3", username, password, nonce)
        else:
            ckey = (ms, username, password)
        key = self._keys.get(ckey)
        if key is None:
            if len(self._keys) > 100_000:
                self._keys.clear()
            if ms:
                key = msturn.key_for(version, username, realm, password, nonce)
            else:
                key = stun.long_term_key(username, realm, password)  # RFC 8489 §9.2.2
            self._keys[ckey] = key
        return key

    # ---------------------------------------------------------------- responses

    def _respond(self, req: _Request, cls: MessageClass, attrs: Iterable[Attribute], now: float) -> None:
        msg = req.msg
        attributes = tuple(attrs)
        if req.ms:
            version = msg.get(msturn.MS_VERSION)
            head: tuple[Attribute, ...] = (msturn.cookie_attribute(),)
            if version is not None:
                head += (attr(msturn.MS_VERSION, version),)
            resp = Message(msg.method, cls, msg.transaction_id, head + attributes, msg.dialect)
        else:
            resp = Message(msg.method, cls, msg.transaction_id, attributes, msg.dialect)
        key = req.auth.key if req.auth is not None else None
        data = resp.serialize(key=key, integrity=(req.integrity,))
        if key is not None and (req.ms, msg.method) in self._cached_methods:
            self._cache_put((req.conn, msg.transaction_id), data, now)
        self._send(req.sink, data, req.client, req.stream is not None and req.stream.ms_framer is not None)

    def _reply_error(self, req: _Request, reply: _Reply, now: float) -> None:
        self._count_error(reply.code)
        err = Attribute(stun.AttrType.ERROR_CODE, stun.ErrorCode(reply.code, reply.reason))
        if req.auth is None or reply.code in (401, 438):
            req.auth = None  # challenges are not signed (RFC 8489 §9.2.4)
        self._respond(req, MessageClass.ERROR, (err, *reply.attributes), now)

    def _count_error(self, code: int) -> None:
        errors = self.metrics.errors
        errors[code] = errors.get(code, 0) + 1

    def _cache_put(self, key: tuple[object, bytes], data: bytes, now: float) -> None:
        self._evict_cache(now)
        if len(self._cache) >= self.config.response_cache_size:
            _, oldest = self._cache_order.popleft()
            self._cache.pop(oldest, None)
        self._cache[key] = data
        self._cache_order.append((now + self.config.response_cache_ttl, key))

    def _evict_cache(self, now: float) -> None:
        order = self._cache_order
        while order and order[0][0] <= now:
            _, key = order.popleft()
            self._cache.pop(key, None)

    def _new_tid(self, size: int) -> bytes:
        self._tid_counter = (self._tid_counter + 1) & 0xFFFFFFFFFFFFFFFF
        return self._tid_counter.to_bytes(8, "big").rjust(size, b"\x5a")

    # ---------------------------------------------------------------- policy helpers

    def _lifetime(self, requested: int | None) -> int:
        """RFC 8656 §7.2: the default when absent, clamped to [default, max] otherwise."""
        cfg = self.config
        if requested is None:
            return cfg.default_lifetime
        return max(cfg.default_lifetime, min(requested, cfg.max_lifetime))

    def _check_peer(self, alloc: Allocation, peer: Address) -> None:
        try:
            ip = ipaddress.ip_address(peer.host)
        except ValueError as exc:
            raise _Reply(400, "Bad Request") from exc
        if (ip.version == 6) != (":" in alloc.lease.address):
            raise _Reply(443, REASONS[443])  # RFC 8656 §9.1: peer family differs from the relay's
        if peer.port == 0 or any(ip in net for net in self.config.denied_peers):
            raise _Reply(403, REASONS[403])  # RFC 8656 §9.1 / §21.3: peer denied by local policy

    def _own_allocation(self, req: _Request) -> Allocation:
        alloc = self._allocations.get(req.conn)
        if alloc is None or alloc.dead:
            raise _Reply(437, REASONS[437])  # RFC 8656 §7.3: no allocation on this 5-tuple
        assert req.auth is not None
        if alloc.username != req.auth.username:
            raise _Reply(441, REASONS[441])  # RFC 8656 §5: another user's allocation
        return alloc

    def _permit(self, alloc: Allocation, host: str, now: float) -> None:
        if not alloc.listening:
            alloc.listening = True
            self.relays.listen(alloc.transport, alloc.lease.port)  # before the first permission (RelayBinder)
        alloc.permissions[host] = now + self.config.permission_lifetime  # RFC 8656 §9: 300 s

    # ---------------------------------------------------------------- allocation lifecycle

    def _create(
        self,
        req: _Request,
        transport: Transport,
        now: float,
        lifetime: int,
        *,
        even_port: bool = False,
        reserve_next: bool = False,
        token: bytes | None = None,
        ms: bool = False,
    ) -> Allocation:
        assert req.auth is not None
        cfg = self.config
        username = req.auth.username
        if cfg.max_allocations is not None and len(self._allocations) >= cfg.max_allocations:
            raise _Reply(486, REASONS[486])  # total quota (coturn --total-quota answers 486 too)
        if cfg.user_quota is not None and self._per_user.get(username, 0) >= cfg.user_quota:
            raise _Reply(486, REASONS[486])  # RFC 8656 §7.2: per-user quota
        sink: Sink | None = None
        lease: PortLease | None = None
        for _ in range(_RELAY_BIND_ATTEMPTS):
            try:
                lease = self.ports.allocate(
                    cfg.relay_host, transport, now, even_port=even_port, reserve_next=reserve_next,
                    reservation_token=token,
                )
            except InsufficientCapacity as exc:
                raise _Reply(508, REASONS[508]) from exc  # RFC 8656 §7.2: no relay port
            sink = self.relays.bind(transport, lease.address, lease.port)
            if sink is not None:
                break
            self.metrics.bind_failures += 1
            self.ports.bind_failed(lease, now)  # the OS holds the port: to the tail, next one
            if token is not None:
                raise _Reply(508, REASONS[508])
            lease = None
        if lease is None or sink is None:
            raise _Reply(508, REASONS[508])
        stream = req.stream
        alloc = Allocation(
            key=req.conn,
            client=req.client,
            client_sink=req.sink,
            stream=stream is not None,
            ms=ms,
            ms_tcp=stream is not None and stream.ms_framer is not None,
            dialect=req.msg.dialect,
            transport=transport,
            lease=lease,
            relay_sink=sink,
            public=Address(cfg.public_host, lease.port),
            username=username,
            key_bytes=req.auth.key,
            integrity=req.integrity,
            expires=now + lifetime,
        )
        self._allocations[req.conn] = alloc
        self._by_relay[(transport, lease.port)] = alloc
        self._per_user[username] = self._per_user.get(username, 0) + 1
        self._schedule(alloc)
        self.metrics.allocations_created += 1
        return alloc

    def _schedule(self, alloc: Allocation) -> None:
        scheduled = self._scheduled
        scheduled.pop(alloc.timer, None)
        self._seq += 1
        alloc.timer = self._seq
        scheduled[self._seq] = alloc
        heap = self._expiry_heap
        if len(heap) > 2 * len(scheduled) + 1024:  # mostly stale entries: rebuild from the live ones
            heap[:] = [(a.expires, seq) for seq, a in scheduled.items() if seq != self._seq]
            heapq.heapify(heap)
        heapq.heappush(heap, (alloc.expires, self._seq))

    def _delete(self, alloc: Allocation, now: float) -> None:
        if alloc.dead:
            return
        alloc.dead = True
        self._scheduled.pop(alloc.timer, None)
        self._allocations.pop(alloc.key, None)
        self._by_relay.pop((alloc.transport, alloc.lease.port), None)
        left = self._per_user.get(alloc.username, 1) - 1
        if left:
            self._per_user[alloc.username] = left
        else:
            self._per_user.pop(alloc.username, None)
        for pc in list(alloc.peer_connections.values()):
            self._close_peer(pc)
        self.relays.unbind(alloc.transport, alloc.lease.port)
        self.ports.release(alloc.lease, now)
        self.metrics.allocations_deleted += 1

    def delete_all(self, now: float) -> None:
        """Drop every allocation and release its port (shutdown)."""
        for alloc in list(self._allocations.values()):
            self._delete(alloc, now)

    # ---------------------------------------------------------------- RFC 8656 handlers

    def _allocate(self, req: _Request, now: float) -> None:
        msg = req.msg
        if req.conn in self._allocations:
            raise _Reply(437, REASONS[437])  # RFC 8656 §7.2: 5-tuple already has an allocation
        requested = msg.get(turn.REQUESTED_TRANSPORT)
        if requested is None:
            raise _Reply(400, "Bad Request")  # RFC 8656 §7.2: REQUESTED-TRANSPORT is mandatory
        if requested == TransportProtocol.TCP:
            if req.stream is None:
                raise _Reply(400, "Bad Request")  # RFC 6062 §5.1: TCP relay needs a TCP control connection
            transport: Transport = "tcp"
        elif requested == TransportProtocol.UDP:
            transport = "udp"
        else:
            raise _Reply(442, REASONS[442])  # RFC 8656 §7.2
        even = msg.get(turn.EVEN_PORT)
        token = msg.get(turn.RESERVATION_TOKEN)
        family = msg.get(turn.REQUESTED_ADDRESS_FAMILY)
        if token is not None and (even is not None or family is not None):
            raise _Reply(400, "Bad Request")  # RFC 8656 §7.2: token excludes EVEN-PORT and family
        relay_family = 0x02 if ":" in self.config.relay_host else 0x01
        if family is not None and family != relay_family:
            raise _Reply(440, REASONS[440])  # RFC 8656 §7.2: only the relay host's family here
        if msg.has(turn.ADDITIONAL_ADDRESS_FAMILY):
            raise _Reply(440, REASONS[440])  # no dual allocation (RFC 8656 §7.2)
        lifetime = self._lifetime(msg.get(turn.LIFETIME))
        alloc = self._create(
            req, transport, now, lifetime, even_port=even is not None, reserve_next=bool(even), token=token
        )
        attrs = [
            attr(turn.XOR_RELAYED_ADDRESS, alloc.public),
            attr(turn.LIFETIME, lifetime),
        ]
        if alloc.lease.reservation_token is not None:
            attrs.append(attr(turn.RESERVATION_TOKEN, alloc.lease.reservation_token))
        attrs.append(attr(stun.XOR_MAPPED_ADDRESS, req.client))  # RFC 8656 §7.3: the reflexive address
        self._respond(req, MessageClass.SUCCESS, attrs, now)

    def _refresh(self, req: _Request, now: float) -> None:
        alloc = self._own_allocation(req)
        requested = req.msg.get(turn.LIFETIME)
        if requested == 0:
            self._delete(alloc, now)  # RFC 8656 §8: LIFETIME 0 deletes
            self._respond(req, MessageClass.SUCCESS, (attr(turn.LIFETIME, 0),), now)
            return
        lifetime = self._lifetime(requested)
        alloc.expires = now + lifetime
        self._schedule(alloc)
        self._respond(req, MessageClass.SUCCESS, (attr(turn.LIFETIME, lifetime),), now)

    def _create_permission(self, req: _Request, now: float) -> None:
        alloc = self._own_allocation(req)
        peers = req.msg.get_all(turn.XOR_PEER_ADDRESS)
        if not peers:
            raise _Reply(400, "Bad Request")  # RFC 8656 §9.2: at least one XOR-PEER-ADDRESS
        for peer in peers:
            self._check_peer(alloc, peer)
        for peer in peers:  # RFC 8656 §9.2: all or nothing
            self._permit(alloc, peer.host, now)
        self._respond(req, MessageClass.SUCCESS, (), now)

    def _channel_bind(self, req: _Request, now: float) -> None:
        alloc = self._own_allocation(req)
        msg = req.msg
        number = msg.get(turn.CHANNEL_NUMBER)
        peer = msg.get(turn.XOR_PEER_ADDRESS)
        if number is None or peer is None or not turn.CHANNEL_MIN <= number <= turn.CHANNEL_MAX:
            raise _Reply(400, "Bad Request")  # RFC 8656 §11.2 / RFC 5766 §11: 0x4000-0x7FFF and a peer
        self._check_peer(alloc, peer)
        cooldown = self.config.channel_cooldown
        existing = alloc.channels.get(number)
        if existing is not None and existing.peer != peer and existing.expires + cooldown > now:
            raise _Reply(400, "Bad Request")  # RFC 8656 §11.2: number bound to another peer
        other = alloc.peer_channels.get(peer)
        if other is not None and other.number != number and other.expires + cooldown > now:
            raise _Reply(400, "Bad Request")  # RFC 8656 §11.2: peer bound to another number
        if existing is not None and existing.peer != peer:
            alloc.peer_channels.pop(existing.peer, None)
        if other is not None and other.number != number:
            alloc.channels.pop(other.number, None)
        channel = Channel(number, peer, now + self.config.channel_lifetime)  # RFC 8656 §12: 10 min
        alloc.channels[number] = channel
        alloc.peer_channels[peer] = channel
        self._permit(alloc, peer.host, now)  # RFC 8656 §11.2: ChannelBind installs/refreshes a permission
        self._respond(req, MessageClass.SUCCESS, (), now)

    def _send_indication(self, msg: Message, conn: object, now: float) -> None:
        """RFC 8656 §10.2: Send indication -> UDP datagram to the peer, if permitted; else drop."""
        alloc = self._allocations.get(conn)
        peer = msg.get(turn.XOR_PEER_ADDRESS)
        data = msg.get(turn.DATA)
        if alloc is None or alloc.ms or alloc.transport != "udp" or peer is None or data is None:
            self.metrics.dropped += 1
            return
        perm = alloc.permissions.get(peer.host)
        if perm is None or perm <= now:
            self.metrics.dropped += 1
            return
        self.transmits.append((alloc.relay_sink, data, peer))
        self.metrics.relayed_to_peer += 1
        self.metrics.bytes_to_peer += len(data)

    # ---------------------------------------------------------------- RFC 6062 handlers

    def _new_peer_connection(self, alloc: Allocation, peer: Address, now: float) -> PeerConnection:
        while True:
            cid = self._rng.getrandbits(32)
            if cid and cid not in self._peer_conns:
                break
        deadline = now + self.config.connection_bind_timeout
        pc = PeerConnection(cid, alloc, peer, deadline)
        self._peer_conns[cid] = pc
        alloc.peer_connections[cid] = pc
        self._bind_deadlines.append((deadline, cid))
        return pc

    def _close_peer(self, pc: PeerConnection) -> None:
        self._peer_conns.pop(pc.connection_id, None)
        pc.allocation.peer_connections.pop(pc.connection_id, None)
        if pc.sink is not None:
            self._peer_by_sink.pop(pc.sink, None)
            self._events.append(CloseStream(pc.sink))
            pc.sink = None
        if pc.data_sink is not None:
            data_sink = pc.data_sink
            pc.data_sink = None
            if self._streams.pop(data_sink, None) is not None:
                self._events.append(CloseStream(data_sink))

    def _connect(self, req: _Request, now: float) -> None:
        alloc = self._own_allocation(req)
        if alloc.transport != "tcp":
            raise _Reply(400, "Bad Request")  # RFC 6062 §5.2: Connect on a UDP allocation
        peer = req.msg.get(turn.XOR_PEER_ADDRESS)
        if peer is None:
            raise _Reply(400, "Bad Request")
        self._check_peer(alloc, peer)
        if any(pc.peer == peer for pc in alloc.peer_connections.values()):
            raise _Reply(446, REASONS[446])  # RFC 6062 §5.2: already connected to that peer
        pc = self._new_peer_connection(alloc, peer, now)
        pc.connect_tid = req.msg.transaction_id
        self._permit(alloc, peer.host, now)  # RFC 6062 §5.2: a Connect installs a permission
        self._events.append(ConnectPeer(pc.connection_id, alloc.lease.address, alloc.lease.port, peer))

    def _connection_bind(self, req: _Request, now: float) -> None:
        stream = req.stream
        cid = req.msg.get(turn.CONNECTION_ID)
        pc = self._peer_conns.get(cid) if cid is not None else None
        if stream is None or pc is None or pc.data_sink is not None or pc.sink is None:
            raise _Reply(400, "Bad Request")  # RFC 6062 §5.4: unknown or used CONNECTION-ID
        if req.conn in self._allocations:
            raise _Reply(400, "Bad Request")  # RFC 6062 §5.4: a control connection cannot be a data one
        assert req.auth is not None
        if pc.allocation.username != req.auth.username:
            raise _Reply(441, REASONS[441])
        self._respond(req, MessageClass.SUCCESS, (), now)
        pc.data_sink = stream.sink
        stream.peer = pc
        if pc.buffer:
            self.transmits.append((stream.sink, bytes(pc.buffer), pc.peer))
            pc.buffer.clear()

    # ---------------------------------------------------------------- MS-TURN handlers

    def _ms_allocate(self, req: _Request, now: float) -> None:
        """MS-TURN 3.2.5.1: Allocate creates, and on an existing allocation refreshes (LIFETIME 0 deletes)."""
        msg = req.msg
        assert req.auth is not None
        requested = msg.get(msturn.LIFETIME)
        alloc = self._allocations.get(req.conn)
        if alloc is not None:
            if not alloc.ms:
                raise _Reply(437, REASONS[437])
            if alloc.username != req.auth.username:
                raise _Reply(441, REASONS[441])
            if requested == 0:
                self._delete(alloc, now)
                self._respond(req, MessageClass.SUCCESS, (attr(msturn.LIFETIME, 0),), now)
                return
            lifetime = self._lifetime(requested)
            alloc.expires = now + lifetime
            self._schedule(alloc)
        else:
            family = msg.get(msturn.REQUESTED_ADDRESS_FAMILY)
            if family is not None and family != (0x02 if ":" in self.config.relay_host else 0x01):
                raise _Reply(440, REASONS[440])
            lifetime = self._lifetime(requested)
            alloc = self._create(req, "udp", now, lifetime, ms=True)
            alloc.version = msg.get(msturn.MS_VERSION)
            alloc.connection_id = self._rng.randbytes(20)
        bandwidth = msg.get(msturn.BANDWIDTH)
        attrs = [
            attr(msturn.MAPPED_ADDRESS, alloc.public),  # MS-TURN 3.2.5.1: relay in MAPPED-ADDRESS (public)
            attr(msturn.XOR_MAPPED_ADDRESS, req.client),  # 0x8020: the client's reflexive address
            attr(msturn.LIFETIME, lifetime),
            attr(msturn.BANDWIDTH, bandwidth if bandwidth is not None else self.config.ms_bandwidth),
            attr(msturn.MS_SEQUENCE_NUMBER, msturn.SequenceNumber(alloc.connection_id, alloc.sequence)),
        ]
        self._respond(req, MessageClass.SUCCESS, attrs, now)

    def _ms_check_sequence(self, alloc: Allocation, msg: Message) -> bool:
        seq = msg.get(msturn.MS_SEQUENCE_NUMBER)
        if seq is None or seq.connection_id != alloc.connection_id:
            return False  # MS-TURN: the connection ID ties Send/SAD to the allocation
        alloc.sequence = seq.sequence
        return not msg.has(msturn.MESSAGE_INTEGRITY) or stun.verify_integrity(msg, alloc.key_bytes)

    def _ms_send(self, msg: Message, conn: object, now: float) -> None:
        """MS-TURN Send request: DATA to DESTINATION-ADDRESS, no response; implies a permission."""
        alloc = self._allocations.get(conn)
        dest = msg.get(msturn.DESTINATION_ADDRESS)
        data = msg.get(msturn.DATA)
        if alloc is None or not alloc.ms or dest is None or data is None or not self._ms_check_sequence(alloc, msg):
            self.metrics.dropped += 1
            return
        try:
            self._check_peer(alloc, dest)
        except _Reply:
            self.metrics.dropped += 1
            return
        # MS-TURN 1.3: the relay accepts a peer only after the client has sent to it.
        self._permit(alloc, dest.host, now)
        alloc.dialect = msg.dialect  # answer in the attribute form the client writes (padded or not)
        self.transmits.append((alloc.relay_sink, data, dest))
        self.metrics.relayed_to_peer += 1
        self.metrics.bytes_to_peer += len(data)

    def _ms_set_active_destination(self, req: _Request, now: float) -> None:
        """MS-TURN Set Active Destination: later raw data from the client goes to this peer."""
        alloc = self._allocations.get(req.conn)
        if alloc is None or alloc.dead or not alloc.ms:
            raise _Reply(437, REASONS[437])  # no allocation on this 5-tuple
        if not self._ms_check_sequence(alloc, req.msg):
            raise _Reply(400, "Bad Request")
        alloc.dialect = req.msg.dialect
        if req.msg.has(msturn.MESSAGE_INTEGRITY):  # signed with the allocation's key: so is the answer
            req.auth = _Auth(alloc.username, alloc.key_bytes)
            req.integrity = msturn.integrity_for(req.msg.get(msturn.MS_VERSION))
        dest = req.msg.get(msturn.DESTINATION_ADDRESS)
        if dest is None or (dest.port == 0 and dest.host in ("0.0.0.0", "::")):
            alloc.active_destination = None  # no or null destination: back to Send requests
        else:
            self._check_peer(alloc, dest)
            alloc.active_destination = dest
            self._permit(alloc, dest.host, now)
        self._respond(req, MessageClass.SUCCESS, (), now)

    def _ms_raw_from_client(self, conn: object, data: bytes, now: float) -> None:
        alloc = self._allocations.get(conn)
        if alloc is None or alloc.active_destination is None:
            self.metrics.dropped += 1
            return
        dest = alloc.active_destination
        self._permit(alloc, dest.host, now)
        self.transmits.append((alloc.relay_sink, data, dest))
        self.metrics.relayed_to_peer += 1
        self.metrics.bytes_to_peer += len(data)

    def _ms_to_client(self, alloc: Allocation, data: bytes, peer: Address) -> None:
        if alloc.active_destination is not None and peer == alloc.active_destination:
            # After Set Active Destination the active peer's data goes raw (type 0x03 frame on TCP).
            out = frame_data(data) if alloc.ms_tcp else data
            self.transmits.append((alloc.client_sink, out, alloc.client))
            return
        # MS-TURN Data Indication 0x0115: REMOTE-ADDRESS and DATA.
        ind = Message(
            msturn.MsTurnMethod.DATA,
            MessageClass.INDICATION,
            self._new_tid(alloc.dialect.transaction_id_size),
            (
                msturn.cookie_attribute(),
                attr(msturn.REMOTE_ADDRESS, peer),
                attr(msturn.DATA, bytes(data)),
            ),
            alloc.dialect,
        )
        raw = ind.serialize()
        self.transmits.append((alloc.client_sink, frame_control(raw) if alloc.ms_tcp else raw, alloc.client))
