"""What a TURN server remembers: configuration, allocations and their channels, permissions and RFC 6062 peer
connections, client streams, metrics, the events it hands the shell, and :class:`ServerState`, the tables one
server keeps, which every handler module of this package reads and writes directly.

Lifetimes (RFC 8656 §7.2, §9, §12) are in :class:`TurnServerConfig`; how they are enforced is described in
:mod:`simulator.core.turn.allocations`.
"""

from __future__ import annotations

import ipaddress
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from simulator.core.credentials import CredentialStore
from simulator.core.ports import PortLease, RelayPortAllocator, Transport
from simulator.wire import stun
from simulator.wire.framing import MsTurnTcpFramer, TurnTcpFramer
from simulator.wire.stun import Address

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
    timer: int = 0  # its live entry in the expiry heap (AllocationTable._schedule)
    listening: bool = False  # RelayBinder.listen called (at the first permission)


@dataclass(slots=True)
class ClientStream:
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
    errors_by_method: dict[tuple[str, int], int] = field(default_factory=dict)  # (method name, code) -> count
    auth_failures: dict[str, int] = field(default_factory=dict)  # by reason: the Authenticator's own counter


def as_address(value: Any) -> Address:
    """The shell's ``(host, port)`` tuple as an :class:`Address` (an Address is returned as it is)."""
    return value if isinstance(value, Address) else Address(value[0], value[1])


class ServerState:
    """The tables of one TURN server, shared by the handler mixins and :class:`~simulator.core.turn.TurnServer`.

    The handlers are mixins over this one object rather than collaborators holding references to it: the
    shell swaps ``transmits`` for a fresh list on every drain, and a per-datagram path (ChannelData, Binding,
    peer data) must reach its tables and outputs with one attribute lookup on ``self``.
    """

    def __init__(
        self,
        config: TurnServerConfig,
        *,
        credentials: CredentialStore,
        ports: RelayPortAllocator,
        relays: RelayBinder,
        rng: random.Random,
        udp_sink: Sink | None,
    ) -> None:
        self.config = config
        self.credentials = credentials
        self.ports = ports
        self.relays = relays
        self.udp_sink = udp_sink
        self._rng = rng
        for transport in ("udp", "tcp"):
            if (config.relay_host, transport) not in ports.pools:
                ports.add_pool(config.relay_host, transport)
        self.metrics = TurnMetrics()
        # outputs, drained by the shell
        self.transmits: list[Transmit] = []
        self._events: deque[Event] = deque()
        # allocations (simulator.core.turn.allocations)
        self._allocations: dict[object, Allocation] = {}
        self._by_relay: dict[tuple[Transport, int], Allocation] = {}
        self._per_user: dict[str, int] = {}
        self._expiry_heap: list[tuple[float, int]] = []  # (expires, schedule number)
        self._scheduled: dict[int, Allocation] = {}  # schedule number -> allocation, for live entries only
        self._seq = 0
        # packed addresses (simulator.core.turn.binding)
        self._xored_hosts: dict[str, bytes] = {}  # IPv4 host -> address XOR cookie (Binding fast path)
        # answers to retransmissions (simulator.core.turn.responses)
        self._cache: dict[tuple[object, bytes], bytes] = {}
        self._cache_order: deque[tuple[float, tuple[object, bytes]]] = deque()
        # client TCP connections and RFC 6062 peer connections
        self._streams: dict[Sink, ClientStream] = {}
        self._peer_conns: dict[int, PeerConnection] = {}
        self._peer_by_sink: dict[Sink, PeerConnection] = {}
        self._bind_deadlines: deque[tuple[float, int]] = deque()
        self._tid_counter = rng.getrandbits(64)
