"""The A/V Edge TURN/MS-TURN listeners: the asyncio shell around :class:`~simulator.core.turn.TurnServer`.

One :class:`AvEdgeServer` is one interface of one A/V Edge node: a UDP listener (3478) and a TCP
listener (443: MS-TURN pseudo-TLS + framing, or standard TURN over TCP), plus one real socket per
relay allocation on ``relay_host`` (firewalls must see the real 50000–59999 spread; research-turn.md
§5.5). The lab starts one per node on the external address and one on the internal address; a pool
shares one :class:`~simulator.core.credentials.CredentialStore` (MRAS fills it).

The shell only moves bytes: every socket callback calls the core with ``now`` and then sends what the
core queued (``TurnServer.transmits``) and acts on its events (close a connection, open an RFC 6062 peer
connection). The UDP sockets (3478 and each relay) are read by ``loop.add_reader`` callbacks that drain a batch
per wake-up: ``recvfrom_into`` one buffer → core (one ``now`` per wake-up) → the sockets' own ``sendto`` once per
wake-up; no task, no future and no asyncio transport per packet. One task exists per RFC 6062 relay listener and
outgoing connection.

Clock: the core runs on Unix time, because MRAS-issued and REST credentials expire in Unix seconds. The
shell reads only the loop's clock, in Unix seconds through a :class:`UnixLoopClock`:
``now = loop.time() + offset``, the offset sampled once per loop (:func:`unix_loop_clock`, shared by every
A/V Edge on the loop and by the lab's MRAS through :func:`loop_unix_time`). A step of the wall clock moves
neither ``now`` nor a timer, and ``now`` never goes backwards (the relay port pools refuse that).

Timer: one ``loop.call_at`` handle at exactly the core's ``get_timer()``, in loop time by the same offset.
It is re-armed when it has fired, and when the core's deadline moved earlier than the armed one, which
can only happen while the core handles a request (``metrics.requests`` counts each), a TCP connection
opens or closes, or its timer runs. The per-datagram path compares that counter and does no other timer
work; after requests, ``get_timer()`` is compared with the armed deadline once, in the next loop iteration
(``call_soon``), however many requests the iteration handled. uvloop rounds ``call_at`` delays to whole
milliseconds, so the handle can fire up to half a millisecond early; then it waits
:data:`EARLY_FIRE_RETRY` more rather than hand the core a ``now`` ahead of the clock.

Use uvloop for real load (``edgesim serve av-edge``, :mod:`simulator.cli.serve`, does); the class runs on
any asyncio loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import resource
import socket
import time
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, cast

from simulator.core.credentials import CredentialStore
from simulator.core.nat import StaticNat
from simulator.core.ports import DEFAULT_FIRST_PORT, DEFAULT_LAST_PORT, RelayPortAllocator, Transport
from simulator.core.turn import CloseStream, ConnectPeer, Sink, TurnServer, TurnServerConfig
from simulator.net.transport.arrivals import ArrivalLog, recorder
from simulator.wire.stun import Address

CONNECT_TIMEOUT = 10.0  # RFC 6062 §5.2: the server gives up on a peer connection after a while
_DRAIN_LIMIT = 4096  # datagrams read from a relay socket that was not attached yet (its receive buffer's worth)
EARLY_FIRE_RETRY = 0.001  # uvloop rounds call_at delays to whole ms: a handle may fire up to 0.5 ms early


LISTENER_BUFFER = 4 << 20  # bytes asked for the UDP 3478 socket's kernel buffers
LISTENER_READ_BUDGET = 256  # datagrams the UDP 3478 socket reads per wake-up (see _UdpListener)
RELAY_READ_BUDGET = 32  # datagrams a relay socket reads per wake-up (as uvloop's transport did; see _UdpRelay)
MAX_DATAGRAM = 65536


@dataclass(frozen=True, slots=True)
class UnixLoopClock:
    """Unix seconds read from an event loop's clock: ``loop.time() + offset``, the offset fixed.

    The TURN core's ``now`` and deadlines are Unix seconds, ``loop.call_at`` takes loop time: the one offset
    converts both ways, so a core deadline is an exact ``call_at`` time, and the core's ``now`` is as
    monotonic as the loop's clock whatever the wall clock does. Get one with :func:`unix_loop_clock`.
    """

    loop: asyncio.AbstractEventLoop
    offset: float  # Unix time minus loop time, sampled once per loop

    def __call__(self) -> float:
        return self.loop.time() + self.offset

    def loop_time(self, unix: float) -> float:
        """The loop time at which this clock reads ``unix``."""
        return unix - self.offset


# Weak keys, and no clock kept here (a clock holds its loop): a closed loop's entry goes with it.
_OFFSETS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, float] = weakref.WeakKeyDictionary()


def unix_loop_clock(loop: asyncio.AbstractEventLoop | None = None) -> UnixLoopClock:
    """The Unix-time clock of ``loop`` (default: the running loop), with the offset sampled at its first use.

    Every clock of one loop reads the same time: the pool's A/V Edges, the pool NAT they share (its port
    pools refuse a ``now`` that goes backwards) and MRAS stamping the credentials they check agree exactly.
    """
    if loop is None:
        loop = asyncio.get_running_loop()
    offset = _OFFSETS.get(loop)
    if offset is None:
        offset = _OFFSETS[loop] = time.time() - loop.time()
    return UnixLoopClock(loop, offset)


def loop_unix_time() -> float:
    """Now, in Unix seconds, on the running loop's :func:`unix_loop_clock` (the lab hands this to MRAS)."""
    return unix_loop_clock()()


def raise_nofile_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit towards ``wanted`` (at most the hard limit); returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class PoolNatView:
    """The pool's static 1:1 NAT as this A/V Edge sees it (research-lync-edge §2.2), applied at the wire.

    In the embedded lab the external listeners and relays bind the node's *public* address, which is what
    a correct 1:1 NAT (DNAT only, sources preserved) looks like from the Edge. The NAT's misconfigurations
    are emulated here, with the sans-I/O :class:`~simulator.core.nat.StaticNat` deciding: with
    ``snat_inbound`` every inbound source becomes the NAT's inside address (and replies to it are mapped
    back to the real client); with ``hairpin=False`` traffic between the pool nodes' public addresses is
    dropped both ways.
    """

    def __init__(self, nat: StaticNat, private_host: str, public_host: str, *, listeners: bool = True) -> None:
        self.nat = nat
        self.private_host = private_host
        self.public_host = public_host
        self.listeners = listeners  # False for the internal interface: only its relays face the NAT
        self.inside = nat.config.inside_address if nat.config.snat_inbound else None
        self.dropped = 0

    def inbound(self, transport: Transport, src: tuple[str, int], port: int, now: float) -> tuple[str, int] | None:
        """The source the Edge sees for a packet from ``src`` to its public ``port`` (None: dropped)."""
        translation = self.nat.inbound(transport, (src[0], src[1]), (self.public_host, port), now)
        if translation is None:
            self.dropped += 1
            return None
        return translation.src

    def outbound(self, transport: Transport, port: int, dst: tuple[str, int], now: float) -> tuple[str, int] | None:
        """Where a packet from the Edge's ``port`` to ``dst`` really goes (None: dropped)."""
        translation = self.nat.outbound(transport, (self.private_host, port), (dst[0], dst[1]), now)
        if translation is None:
            self.dropped += 1
            return None
        # Only a reply to an SNAT-ed source changes destination; the lab's nodes listen on public addresses.
        return translation.dst if self.inside is not None and dst[0] == self.inside else (dst[0], dst[1])


class _UdpListener:
    """UDP 3478: every datagram straight into the core, read by the listener itself.

    Every client of the node shares this one socket — each relayed packet a client sends (MS-TURN Send,
    ChannelData) comes through it — while each peer of a relay has a socket of its own. A transport reading
    one datagram per wake-up (asyncio's selector transport does) serves this socket as one among the hundreds
    of relay and NAT sockets a busy lab has ready: its queue grows to seconds, and the client → peer half of
    every relayed call lags while the other half does not (found by 200 concurrent calls: media from the
    relayed side reached the direct side after the call had given up). So the socket is drained on each
    wake-up, up to :data:`LISTENER_READ_BUDGET` datagrams (uvloop's transport reads 32 per poll); what the
    socket cannot send at once is dropped and counted (``AvEdgeServer.send_errors``), as the kernel would drop it.
    """

    def __init__(self, edge: AvEdgeServer, sock: socket.socket) -> None:
        self.edge = edge
        self.sock = sock
        self.read_errors = 0
        view = edge.nat_view
        if view is None or not view.listeners:
            # Nothing to translate: the core's transmits go straight to the socket (no Python frame per packet;
            # AvEdgeServer._send_all counts what the socket refuses).
            self.sendto = sock.sendto  # type: ignore[method-assign,assignment]

    def readable(self) -> None:
        """One wake-up: read up to :data:`LISTENER_READ_BUDGET` datagrams, hand each to the core, then send what
        the core queued for all of them (in the order queued) and check the timer once.

        ``now`` is read once per wake-up: every datagram of one drain was already queued in the kernel when the
        socket woke the loop, and the drain takes well under a millisecond (~1 µs of core work per datagram), so a
        later read would differ by microseconds at most, and it never goes backwards (the next callback reads the
        clock again). Datagrams are read into one preallocated buffer (``recvfrom_into``) and copied out at their
        size: ``recvfrom(65536)`` allocates and shrinks 64 KiB per datagram (~0.5 µs on the benchmark machine).
        """
        edge = self.edge
        core = edge._core
        if core is None:
            return  # stopped: the socket is closing
        recv_into = self.sock.recvfrom_into
        buffer, view = edge.recv_buffer, edge.recv_view
        now = edge.loop_time() + edge.epoch_offset  # UnixLoopClock.__call__, inlined; once per wake-up (above)
        nat = edge.nat_view
        plain = edge.arrivals is None and (nat is None or not nat.listeners)
        receive = core.receive_datagram if plain else self.datagram_received
        try:
            for _ in range(LISTENER_READ_BUDGET):
                try:
                    size, addr = recv_into(buffer)
                except BlockingIOError:
                    break
                except OSError:  # an error queued on the socket (ICMP): nothing to read this time
                    self.read_errors += 1
                    continue
                receive(view[:size].tobytes(), addr, now)
        finally:
            if edge._core is core:  # not stopped meanwhile
                if core.transmits or core.pending_events:
                    edge.send_transmits(core)
                if core.metrics.requests != edge._requests_seen:
                    edge._deadline_may_have_moved()  # a request can schedule (cache 40 s, a lifetime, a Connect)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int], now: float) -> None:
        """One datagram with the firewall lab's arrival log or the pool NAT's listener view in the way."""
        edge = self.edge
        core = edge._core
        if core is None:
            return
        if edge.arrivals is not None:
            edge.arrivals.udp("av-udp", (edge.listen_host, edge.public_udp_port), (addr[0], addr[1]))
        view = edge.nat_view
        if view is not None and view.listeners:
            seen = view.inbound("udp", addr, edge.public_udp_port, now)
            if seen is None:
                return
            addr = seen
        core.receive_datagram(data, addr, now)

    def _send_raw(self, data: bytes, addr: Any, /) -> None:
        try:
            self.sock.sendto(data, addr)
        except OSError:  # BlockingIOError: the send buffer is full; or the socket is closed
            self.edge.send_errors += 1

    def sendto(self, data: bytes, addr: Any, /) -> None:
        view = self.edge.nat_view
        if view is not None and view.listeners:
            addr = view.outbound("udp", self.edge.public_udp_port, addr, self.edge.time())
            if addr is None:
                return
        self._send_raw(data, addr)


class _UdpRelay:
    """One relay allocation's UDP socket: bound synchronously, read by the loop (``add_reader``) once the core
    calls ``listen`` (its first permission); what a peer sent before that is read then, or at close, and dropped
    by the core exactly as if it had been read on arrival (no permission yet).

    Read like the 3478 listener (:meth:`_UdpListener.readable`): on each wake-up up to :data:`RELAY_READ_BUDGET`
    datagrams (uvloop's transport read 32 per poll), one clock read per wake-up, into the edge's one receive
    buffer, then one flush. Sends go straight to the socket; one that cannot go at once is dropped and counted
    (``AvEdgeServer.send_errors``), as the kernel would drop it.
    """

    def __init__(self, edge: AvEdgeServer, port: int, sock: socket.socket) -> None:
        self.edge = edge
        self.port = port
        self.sock = sock
        self.transport: socket.socket | None = None  # the socket, once the loop reads it (attached at listen)
        self.closed = False
        self.task: asyncio.Task[Any] | None = None  # never set: attaching is synchronous (kept for _Binder)
        if edge.nat_view is None:
            # Nothing to translate: the core's transmits go straight to the socket (no Python frame per packet;
            # AvEdgeServer._send_all counts what the socket refuses).
            self.sendto = sock.sendto  # type: ignore[method-assign,assignment]

    def attach(self) -> None:
        """Start reading the socket on the loop (from inside a core call: the first read is a later callback)."""
        if self.transport is None and not self.closed:
            asyncio.get_running_loop().add_reader(self.sock.fileno(), self.readable)
            self.transport = self.sock

    def readable(self) -> None:
        edge = self.edge
        core = edge._core
        if core is None or self.closed:
            return  # stopped: the socket is closing
        recv_into = self.sock.recvfrom_into
        buffer, view = edge.recv_buffer, edge.recv_view
        now = edge.loop_time() + edge.epoch_offset  # UnixLoopClock.__call__, inlined; once per wake-up (see listener)
        nat = edge.nat_view
        port = self.port
        receive = core.receive_from_peer  # schedules nothing: no timer check
        try:
            for _ in range(RELAY_READ_BUDGET):
                try:
                    size, addr = recv_into(buffer)
                except BlockingIOError:
                    break
                except OSError:  # ICMP port unreachable from a peer, queued on the socket
                    continue
                if nat is not None:
                    seen = nat.inbound("udp", addr, port, now)
                    if seen is None:
                        continue
                    addr = seen
                receive(port, view[:size].tobytes(), addr, now)
        finally:
            if edge._core is core and (core.transmits or core.pending_events):
                edge.send_transmits(core)

    def drain(self) -> None:
        """Hand the core what queued while the socket was not attached (from inside a core call: no flush)."""
        edge = self.edge
        core = edge._core
        for _ in range(_DRAIN_LIMIT):
            try:
                data, addr = self.sock.recvfrom(65536)
            except OSError:  # BlockingIOError: nothing (more) queued
                return
            if core is None:
                continue
            now = edge.time()
            view = edge.nat_view
            if view is not None:
                seen = view.inbound("udp", addr, self.port, now)
                if seen is None:
                    continue
                addr = seen
            core.receive_from_peer(self.port, data, addr, now)  # no permission yet: dropped

    def sendto(self, data: bytes, addr: Any, /) -> None:
        view = self.edge.nat_view
        if view is not None:
            addr = view.outbound("udp", self.port, addr, self.edge.time())
            if addr is None:
                return
        if not self.closed:
            try:
                self.sock.sendto(data, addr)
            except OSError:  # the send buffer is full
                self.edge.send_errors += 1

    def close(self) -> None:
        if self.closed:
            return
        core = self.edge._core
        if core is not None and core.transmits:
            # The listener flushes once per wake-up: what an earlier datagram of this wake-up relayed through this
            # socket (before, say, a Refresh(0) that closes it) is still queued. Send it now, as a flush per
            # datagram would have; the core's list is edited in place (the core may be inside a call).
            transmits = core.transmits
            mine = [(data, addr) for sink, data, addr in transmits if sink is self]
            if mine:
                transmits[:] = [t for t in transmits if t[0] is not self]
                self.edge._send_all([(self, data, addr) for data, addr in mine])
        self.closed = True
        if self.transport is not None:
            with contextlib.suppress(RuntimeError, ValueError):  # the loop is closing / the socket already closed
                asyncio.get_running_loop().remove_reader(self.sock.fileno())
        else:
            self.drain()  # never listened: what peers sent is dropped now, as it would have been on arrival
        self.sock.close()


class _Stream(asyncio.Protocol):
    """A TCP connection: a client on the listener, or a peer on an RFC 6062 relay (``peer=True``)."""

    def __init__(self, edge: AvEdgeServer, relay_port: int | None = None, peer: bool = False) -> None:
        self.edge = edge
        self.relay_port = relay_port
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.connection_id: int | None = None  # outgoing RFC 6062 connection
        self.refused = False  # dropped by the pool NAT before the core saw it

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        edge = self.edge
        addr = transport.get_extra_info("peername")
        if edge.arrivals is not None and self.connection_id is None and addr:
            local = transport.get_extra_info("sockname")
            edge.arrivals.tcp("av-tcp" if not self.peer else "av-relay-tcp", (local[0], local[1]), (addr[0], addr[1]))
        now = edge.time()
        view = edge.nat_view
        if view is not None and self.connection_id is None and (self.peer or view.listeners):
            seen = view.inbound("tcp", addr, self.relay_port or edge.public_tcp_port, now)
            if seen is None:
                self.refused = True
                transport.close()
                return
            addr = seen
        edge.streams.add(self)
        if self.connection_id is not None:
            edge.core.peer_connected(self.connection_id, self, now)
        elif self.peer:
            assert self.relay_port is not None
            # RFC 6062 §5.3: an incoming peer connection waits 30 s for its ConnectionBind (a new deadline)
            if not edge.core.peer_stream_opened(self.relay_port, self, addr, now):
                transport.close()
        else:
            edge.core.stream_opened(self, addr, now)
        edge.flush()
        edge._deadline_may_have_moved()

    def data_received(self, data: bytes) -> None:
        edge = self.edge
        now = edge.loop_time() + edge.epoch_offset  # UnixLoopClock.__call__, inlined: the per-read path
        if self.peer:
            edge.core.receive_peer_stream(self, data, now)
        else:
            edge.core.receive_stream(self, data, now)
        edge.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        edge = self.edge
        if self.refused:
            return
        edge.streams.discard(self)
        if self.peer:
            edge.core.peer_stream_closed(self, edge.time())
        else:
            edge.core.stream_closed(self, edge.time())  # deletes its allocation: its port may linger
        edge.flush()
        edge._deadline_may_have_moved()

    def sendto(self, data: bytes, addr: Any, /) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _TcpRelay:
    """An RFC 6062 relay: a listening socket on the relay port, peers connect in."""

    def __init__(self, edge: AvEdgeServer, port: int, sock: socket.socket) -> None:
        self.edge = edge
        self.port = port
        self.sock = sock
        self.server: asyncio.Server | None = None
        self.closed = False
        self.task: asyncio.Task[Any] | None = None

    def sendto(self, data: bytes, addr: Any, /) -> None:
        pass  # data goes through peer connections, never through the listener

    def close(self) -> None:
        self.closed = True
        if self.server is not None:
            self.server.close()
        elif self.task is not None and not self.task.done():
            self.task.cancel()
        else:
            self.sock.close()


class _Binder:
    """The core's :class:`~simulator.core.turn.RelayBinder`: real sockets, bound synchronously."""

    def __init__(self, edge: AvEdgeServer) -> None:
        self.edge = edge
        self.relays: dict[tuple[Transport, int], _UdpRelay | _TcpRelay] = {}

    def bind(self, transport: Transport, host: str, port: int) -> Sink | None:
        edge = self.edge
        kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
        sock = socket.socket(_family(host), kind)
        try:
            sock.setblocking(False)
            if transport == "tcp":
                # RFC 6062: outgoing peer connections leave from the same port as the listener.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            if transport == "tcp":
                sock.listen(16)
        except OSError:
            sock.close()
            return None  # the core requeues the port and tries the next one (RFC 8656 §7.2)
        relay: _UdpRelay | _TcpRelay
        if transport == "udp":
            relay = _UdpRelay(edge, port, sock)  # attached on listen(): most allocations of a load test never are
        else:
            tcp = _TcpRelay(edge, port, sock)
            tcp.task = edge.spawn(self._attach_tcp(tcp))
            relay = tcp
        self.relays[(transport, port)] = relay
        return relay

    async def _attach_tcp(self, relay: _TcpRelay) -> None:
        loop = asyncio.get_running_loop()
        edge = self.edge
        server = await loop.create_server(lambda: _Stream(edge, relay.port, peer=True), sock=relay.sock)
        relay.server = server
        if relay.closed:
            server.close()

    def listen(self, transport: Transport, port: int) -> None:
        relay = self.relays.get((transport, port))
        if isinstance(relay, _UdpRelay) and relay.transport is None and not relay.closed:
            relay.drain()
            relay.attach()

    def unbind(self, transport: Transport, port: int) -> None:
        relay = self.relays.pop((transport, port), None)
        if relay is not None:
            relay.close()

    def close_all(self) -> None:
        for relay in list(self.relays.values()):
            relay.close()
        self.relays.clear()


class AvEdgeServer:
    """One A/V Edge interface: UDP + TCP listeners on ``listen_host``, relays on ``relay_host``.

    ``public_host`` is what responses advertise (the node's public A/V address behind 1:1 NAT; for the
    internal interface pass the internal address itself). ``credentials`` is shared by the pool's
    nodes (MRAS fills it). Ports 0 bind ephemeral ports; ``udp_address``/``tcp_address`` tell the
    bound ones after ``start()``. Implements the lab's ``Service`` protocol (``running``, ``start``,
    ``stop``).

    One worker of ``serve av-edge --workers N`` (:mod:`simulator.net.edge.workers`) passes ``reuse_port`` (the
    listeners join a SO_REUSEPORT group), ``nonce_secret`` (shared by the workers), ``core_random`` (the core's
    RNG: connection IDs that name the worker) and ``stream_factory`` (the TCP listener's protocol: RFC 6062
    hand-over). Their defaults leave a single server exactly as it was.
    """

    def __init__(
        self,
        listen_host: str,
        public_host: str,
        *,
        relay_host: str | None = None,
        udp_port: int = 3478,
        tcp_port: int = 443,
        credentials: CredentialStore | None = None,
        realm: str = "edgesim",
        first_port: int = DEFAULT_FIRST_PORT,
        last_port: int = DEFAULT_LAST_PORT,
        max_allocations: int | None = None,
        user_quota: int | None = None,
        seed: int | None = None,
        config: dict[str, Any] | None = None,
        ports: RelayPortAllocator | None = None,
        nat_view: PoolNatView | None = None,
        clock: UnixLoopClock | None = None,
        reuse_port: bool = False,
        nonce_secret: bytes | None = None,
        core_random: Callable[[int], random.Random] = random.Random,
        stream_factory: Callable[[AvEdgeServer], asyncio.Protocol] | None = None,
    ) -> None:
        self.listen_host = listen_host
        self.public_host = public_host
        self.relay_host = relay_host or listen_host
        self.udp_port = udp_port
        self.tcp_port = tcp_port
        self.credentials = credentials if credentials is not None else CredentialStore()
        self.realm = realm
        self.max_allocations = max_allocations
        self.user_quota = user_quota
        self.seed = seed if seed is not None else random.SystemRandom().getrandbits(32)
        self.extra_config = config or {}
        # ``serve av-edge --workers N`` (simulator.net.edge.workers): listeners shared with SO_REUSEPORT, one nonce
        # secret for every worker, connection IDs that name their worker, data connections handed over to it.
        self.reuse_port = reuse_port
        self.nonce_secret = nonce_secret
        self.core_random = core_random
        self.stream_factory = stream_factory
        self.nat_view = nat_view  # the pool's 1:1 NAT misconfigurations, when the lab emulates them
        self.arrivals: ArrivalLog | None = None  # firewall lab mode: what reached the listeners (set at start)
        self.public_udp_port = udp_port
        self.public_tcp_port = tcp_port
        self.ports = ports or RelayPortAllocator(random.Random(self.seed), first_port=first_port, last_port=last_port)
        self._core: TurnServer | None = None
        self.streams: set[_Stream] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._udp: _UdpListener | None = None
        self._tcp_server: asyncio.Server | None = None
        self._binder = _Binder(self)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")  # the core deadline (Unix seconds) the handle is armed for
        self._timer_check: asyncio.Handle | None = None  # a pending _check_timer (at most one)
        self._requests_seen = 0  # core.metrics.requests when the timer was last checked against get_timer()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clock = clock
        self.udp_address: Address | None = None
        self.tcp_address: Address | None = None
        # The clock, read as the core's ``now``; the per-datagram paths inline it as loop_time() + epoch_offset.
        self.send_errors = 0  # UDP datagrams a socket refused to send (dropped, as the kernel would)
        # One receive buffer for every UDP socket of this edge: each datagram is read into it and copied out at its
        # size (``recvfrom(65536)`` would allocate and shrink 64 KiB per datagram, ~0.5 µs).
        self.recv_buffer = bytearray(MAX_DATAGRAM)
        self.recv_view = memoryview(self.recv_buffer)
        self.time: Callable[[], float] = self._no_loop_time
        self.loop_time: Callable[[], float] = self._no_loop_time
        self.epoch_offset = 0.0

    @staticmethod
    def _no_loop_time() -> float:
        raise RuntimeError("AvEdgeServer is not started")

    @property
    def clock(self) -> UnixLoopClock:
        """The Unix-time clock the core runs on (the running loop's :func:`unix_loop_clock` unless given)."""
        if self._clock is None:
            raise RuntimeError("AvEdgeServer is not started")
        return self._clock

    @property
    def timer_deadline(self) -> float | None:
        """The core deadline (Unix seconds on :attr:`clock`) the timer is armed for; None when none is."""
        return None if self._timer is None else self._timer_at

    @property
    def core(self) -> TurnServer:
        if self._core is None:
            raise RuntimeError("AvEdgeServer is not started")
        return self._core

    @property
    def running(self) -> bool:
        return self._core is not None

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        if self._core is not None:
            return
        self.arrivals = recorder()
        loop = asyncio.get_running_loop()
        clock = self._clock or unix_loop_clock(loop)
        if clock.loop is not loop:
            raise ValueError("the clock reads another event loop")
        self._loop = loop
        self._clock = clock
        # The core's clock is Unix time: MRAS-issued and REST-API credentials expire in Unix time, and the
        # pool's credential store is shared with the MRAS that issues them (on this same clock in the lab).
        self.time = clock
        self.loop_time = loop.time
        self.epoch_offset = clock.offset
        raise_nofile_limit(2 * self.ports.last_port - 2 * self.ports.first_port + 4096)
        family = _family(self.listen_host)
        udp_sock = socket.socket(family, socket.SOCK_DGRAM)
        tcp_sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if self.reuse_port:
                udp_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                tcp_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            udp_sock.setblocking(False)
            # Every client's media through this node shares the one 3478 socket: a burst of relayed packets must
            # queue in the kernel, not be dropped there (the kernel caps these at net.core.[rw]mem_max).
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                udp_sock.setsockopt(socket.SOL_SOCKET, option, LISTENER_BUFFER)
            udp_sock.bind((self.listen_host, self.udp_port))
            tcp_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp_sock.setblocking(False)
            tcp_sock.bind((self.listen_host, self.tcp_port))
            tcp_sock.listen(1024)
        except OSError:
            udp_sock.close()
            tcp_sock.close()
            raise
        udp_port = udp_sock.getsockname()[1]
        tcp_port = tcp_sock.getsockname()[1]
        self.public_udp_port, self.public_tcp_port = udp_port, tcp_port  # 1:1 NAT keeps ports
        extra = dict(self.extra_config)
        private = ({self.listen_host, self.relay_host} | set(extra.pop("private_hosts", ()))) - {
            self.public_host, extra.get("alternate_host")}
        cfg = TurnServerConfig(
            public_host=self.public_host,
            relay_host=self.relay_host,
            private_hosts=frozenset(private),
            udp_port=udp_port,  # 1:1 NAT keeps ports: the advertised port is the bound one
            tcp_port=tcp_port,
            realm=self.realm,
            max_allocations=self.max_allocations,
            user_quota=self.user_quota,
            **extra,
        )
        self._core = TurnServer(
            cfg, credentials=self.credentials, ports=self.ports, relays=self._binder, rng=self.core_random(self.seed)
        )
        if self.nonce_secret is not None:
            self._core._auth.use_secret(self.nonce_secret)
        try:
            listener = _UdpListener(self, udp_sock)
            self._udp = listener
            loop.add_reader(udp_sock.fileno(), listener.readable)
            self._core.udp_sink = listener
            factory = self.stream_factory
            self._tcp_server = await loop.create_server(
                (lambda: _Stream(self)) if factory is None else (lambda: factory(self)), sock=tcp_sock)
        except BaseException:
            await self.stop()
            udp_sock.close()
            tcp_sock.close()
            raise
        self.udp_address = Address(self.listen_host, udp_port)
        self.tcp_address = Address(self.listen_host, tcp_port)
        self._requests_seen = self._core.metrics.requests
        self._arm_timer(self._core.get_timer())

    async def stop(self) -> None:
        core = self._core
        if core is None:
            return
        self._arm_timer(None)
        if self._timer_check is not None:
            self._timer_check.cancel()
            self._timer_check = None
        self._loop = None  # no timer from here on (closing streams reports to the core, which may schedule)
        if self._tcp_server is not None:
            self._tcp_server.close()
        for stream in list(self.streams):
            stream.close()
        if self._udp is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                asyncio.get_running_loop().remove_reader(self._udp.sock.fileno())
            self._udp.sock.close()
        core.delete_all(self.time())
        core.datagrams_to_send()
        while core.next_event() is not None:
            pass
        self._binder.close_all()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for relay in self._binder.relays.values():
            relay.sock.close()
        if self._tcp_server is not None:
            await self._tcp_server.wait_closed()
            self._tcp_server = None
        await asyncio.sleep(0)  # let transports run their connection_lost callbacks
        self._core = None
        self._udp = None

    async def __aenter__(self) -> AvEdgeServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Start a task the server owns (cancelled and awaited on ``stop``)."""
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._relay_attach_failed(task)

    def _relay_attach_failed(self, task: asyncio.Task[Any]) -> None:
        for relay in self._binder.relays.values():
            if relay.task is task:
                relay.sock.close()

    # ---------------------------------------------------------------- core plumbing

    def send_transmits(self, core: TurnServer) -> None:
        """The per-wake-up flush: send what the core queued; events (rare) through :meth:`flush`."""
        transmits = core.transmits
        if transmits:
            core.transmits = []
            self._send_all(transmits)
        if core.pending_events:
            self.flush()

    def _send_all(self, transmits: list[tuple[Sink, bytes, Any]]) -> None:
        """``sink.sendto`` for each, in order. A UDP sink's ``sendto`` may be its socket's own (no Python frame per
        packet): a datagram the socket refuses (send buffer full, ICMP error queued) is dropped and counted."""
        index = 0
        while index < len(transmits):
            try:
                for sink, data, addr in transmits[index:] if index else transmits:
                    index += 1
                    sink.sendto(data, addr)
            except OSError:
                self.send_errors += 1

    def flush(self) -> None:
        """Send what the core queued and act on its events."""
        core = self._core
        if core is None:
            return
        transmits = core.transmits
        if transmits:
            core.transmits = []
            self._send_all(transmits)
        if core.pending_events:
            event = core.next_event()
            while event is not None:
                if isinstance(event, CloseStream):
                    close = getattr(event.sink, "close", None)
                    if close is not None:
                        close()
                elif isinstance(event, ConnectPeer):
                    self.spawn(self._connect_peer(event))
                event = core.next_event()
        if core.metrics.requests != self._requests_seen:
            self._deadline_may_have_moved()

    async def _connect_peer(self, event: ConnectPeer) -> None:
        """RFC 6062 §5.2: connect from the relay port to the peer, then report to the core."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(_family(event.relay_host), socket.SOCK_STREAM)
        protocol = _Stream(self, event.relay_port, peer=True)
        protocol.connection_id = event.connection_id
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((event.relay_host, event.relay_port))
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await loop.sock_connect(sock, tuple(event.peer))
                await loop.create_connection(lambda: protocol, sock=sock)
        except (OSError, TimeoutError):
            sock.close()
            if self._core is not None:
                self._core.peer_connect_failed(event.connection_id, self.time())
                self.flush()
        except asyncio.CancelledError:
            sock.close()
            raise

    def _deadline_may_have_moved(self) -> None:
        """The core may have scheduled something: compare its next deadline with the armed one, once per loop
        iteration however many requests that iteration handled (``get_timer`` costs µs; what a request schedules
        is due seconds later, not within microseconds)."""
        core = self._core
        loop = self._loop
        if core is None or loop is None:
            return
        self._requests_seen = core.metrics.requests
        if self._timer_check is None:
            self._timer_check = loop.call_soon(self._check_timer)

    def _check_timer(self) -> None:
        self._timer_check = None
        core = self._core
        if core is None:
            return
        at = core.get_timer()
        if at is not None and at < self._timer_at:
            self._arm_timer(at)  # the core's deadline moved earlier than the armed one

    def _arm_timer(self, at: float | None) -> None:
        """Arm the one timer handle at the core deadline ``at`` (Unix seconds), exactly; None disarms it."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = float("inf") if at is None else at
        loop = self._loop
        if at is not None and loop is not None and self._core is not None:
            self._timer = loop.call_at(at - self.epoch_offset, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        core = self._core
        loop = self._loop
        if core is None or loop is None:
            return
        now = self.time()
        at = self._timer_at
        if now < at:
            # Fired early (uvloop's millisecond rounding): the core must never see a ``now`` ahead of the clock,
            # which a later packet would then contradict (the port pools refuse a ``now`` going backwards).
            self._timer = loop.call_at(at - self.epoch_offset + EARLY_FIRE_RETRY, self._on_timer)
            return
        core.handle_timer(now)
        self.flush()
        self._arm_timer(core.get_timer())

    # ---------------------------------------------------------------- metrics

    def metrics(self) -> dict[str, Any]:
        """Live counters: the core's, active allocations, relay sockets and each port pool."""
        core = self.core
        out: dict[str, Any] = asdict(core.metrics)
        out["allocations_active"] = core.allocation_count
        out["relay_sockets"] = len(self._binder.relays)
        out["tcp_connections"] = len(self.streams)
        out["pools"] = [asdict(m) for m in self.ports.metrics()]
        return out

