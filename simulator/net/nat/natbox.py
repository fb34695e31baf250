"""The NAT box: a client NAT's datapath around a sans-I/O :class:`~simulator.core.nat.NatTable`.

Theory of operation
-------------------
A :class:`NatBox` owns one ``NatTable`` (one public IP, RFC 4787 behaviour from ``NatConfig``) and
moves UDP packets between *inside hosts* and real sockets on the public IP. Every decision —
mapping, filtering, binding lifetime, port choice, hairpinning — is the table's; the box only does
I/O and counts what it could not move (:class:`DatapathDrop`; the table counts its own drops in
``box.table.drops``).

Inside hosts come in two kinds, both fed by the same code path:

* **In-process endpoints** (:meth:`NatBox.open_udp`): a lab client gets a :class:`NatUdpEndpoint`
  at an internal address ``(ip, port)``. The internal side is virtual: no socket is bound to it.
  ``endpoint.sendto(data, dst)`` hands the datagram to the table at once (no task, no queue).
* **Namespaced hosts** (:meth:`NatBox.attach_namespace`): an unmodified binary runs inside a network
  namespace whose default route is a TUN device (see :mod:`simulator.net.nat.netns`). The box reads raw
  IPv4/UDP packets from the TUN descriptor (``loop.add_reader``), parses them with
  :mod:`simulator.wire.ipv4` and treats them like ``sendto`` calls; replies are built as IPv4/UDP
  packets and written back to the TUN.

Outbound (inside → ``dst``): a destination that is itself an inside host of this box (not the public
IP) is delivered directly, as on a LAN. Anything else goes to ``table.outbound``. The result's source
is the binding's external address ``(public_ip, port)``: the box sends from a real UDP socket bound to
exactly that address, opened when the binding first appears — one socket per binding, so firewalls
and servers see the real mapped ports. A destination on the box's own public IP is a hairpin: the
table returns the internal endpoint behind it and the box delivers it inside without touching a
socket (RFC 4787 §6). Destinations outside ``allow_destination`` (loopback only by default) are
dropped before the table sees them: the lab never sends to a real network.

Inbound: each binding socket has a reader (``loop.add_reader``, up to :data:`READ_BUDGET` datagrams
per wake-up). A datagram from ``src`` to ``(public_ip, port)`` goes to ``table.inbound``, which admits
it or drops and counts it; an admitted one is delivered to the inside host at the translation's
destination, with the real remote source.

Timers: one ``loop.call_at(table.next_timer())`` handle, re-armed after every outbound packet only when
the table's next timer moved earlier. When it fires the box calls ``table.expire(now)`` and, if any
binding went, closes the sockets of bindings the table no longer holds (checked with
``table.lookup``). Time is ``loop.time()``.

Impairment (:mod:`simulator.core.impairment`): an optional :class:`PathImpairment` gives each direction
seeded netem-like loss, delay, jitter and reorder. Outbound packets are impaired after translation (the
binding exists at once; the datagram leaves its public socket late or never), inbound packets after the
table admitted them (delivered to the inside host late or never). Packets in flight wait in one
:class:`DelayLine` behind one ``loop.call_at`` handle. Hairpinned and LAN packets are not impaired.
Without impairment (the default) the datapath pays one ``is None`` test per packet.

TCP: in-process clients only, outbound only (:meth:`NatBox.open_tcp_connection`): the table maps the
connection and the box connects from a real socket bound to the mapped address; the streams are the
caller's. A TCP segment from a namespaced host is counted as ``NOT_UDP`` and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import functools
import ipaddress
import itertools
import logging
import random
import socket
import ssl as ssl_module
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final, NamedTuple, Protocol

from simulator.core.impairment import DelayLine, ImpairedLink, PathImpairment
from simulator.core.nat import DEFAULT_PORT_RANGE, NatConfig, NatTable
from simulator.net.nat.netns import NamespacedHost
from simulator.wire.errors import MalformedMessage
from simulator.wire.ipv4 import IpProtocol, UdpDatagram, build_udp, parse_ipv4, parse_udp

logger = logging.getLogger(__name__)

Address = tuple[str, int]
DatagramHandler = Callable[[bytes, Address], None]

READ_BUDGET: Final = 64  # datagrams read per reader wake-up, so one busy socket cannot starve the loop
MAX_DATAGRAM: Final = 65535
DEFAULT_QUEUE_SIZE: Final = 1024
DEFAULT_TCP_CONNECT_TIMEOUT: Final = 5.0
_VIRTUAL_PORTS: Final = (49152, 65535)  # where open_udp(ip, 0) picks an internal port (RFC 6335 dynamic)


class DatapathDrop(enum.Enum):
    """Why the box (not the table) dropped a packet; the key of ``counters.drops``."""

    NOT_IPV4 = "not-ipv4"  # a TUN packet of another IP version
    NOT_UDP = "not-udp"  # a TUN packet of another transport (TCP is not implemented)
    MALFORMED = "malformed"  # a TUN packet that does not parse (bad length or checksum, fragment)
    FOREIGN_SOURCE = "foreign-source"  # a TUN packet whose source is not the namespaced host's address
    DESTINATION_NOT_ALLOWED = "destination-not-allowed"  # outside ``allow_destination``: never sent
    NO_INSIDE_HOST = "no-inside-host"  # admitted, but no endpoint holds the internal address any more
    BIND_FAILED = "bind-failed"  # the OS refused public_ip:mapped_port (someone else holds it)
    SEND_FAILED = "send-failed"  # sendto on a public socket failed
    QUEUE_FULL = "queue-full"  # an in-process endpoint's receive queue is full
    TUN_FULL = "tun-full"  # the kernel refused a packet written to the TUN
    IMPAIRMENT_LOSS = "impairment-loss"  # dropped on purpose by the configured impairment


@dataclass
class NatBoxCounters:
    """What moved through the box."""

    from_inside: int = 0  # datagrams sent by inside hosts
    sent: int = 0  # datagrams sent out of a public socket
    received: int = 0  # datagrams read from public sockets
    delivered: int = 0  # datagrams handed to inside hosts (inbound, hairpin and LAN)
    hairpinned: int = 0
    lan: int = 0  # inside host to inside host, without translation
    sockets_opened: int = 0  # UDP binding sockets
    sockets_closed: int = 0
    tcp_connections: int = 0  # outbound TCP connections made through the box
    drops: Counter[DatapathDrop] = field(default_factory=Counter)


class EndpointClosed(ConnectionError):
    """The endpoint (or its box) is closed."""


@functools.lru_cache(maxsize=4096)
def loopback_only(ip: str) -> bool:
    """The default ``allow_destination``: the lab lives on 127.0.0.0/8 (asked per datagram: parsed once)."""
    return ipaddress.IPv4Address(ip).is_loopback


class _InsideHost(Protocol):
    def deliver(self, payload: bytes, src: Address, dst: Address) -> bool:
        """Hand one datagram to the host; ``False`` if it had to be dropped."""
        ...


class _InFlight(NamedTuple):
    """A delayed datagram: outbound (leaves ``sock`` for ``dst``) or inbound (``sock`` is ``None``)."""

    sock: socket.socket | None
    payload: bytes
    src: Address
    dst: Address


@dataclass(slots=True)
class _PublicPort:
    """One binding's socket, with an (internal, remote) pair that ``table.lookup`` resolves to it."""

    sock: socket.socket
    internal: Address
    remote: Address


class NatUdpEndpoint:
    """A lab client's UDP endpoint behind a :class:`NatBox`.

    ``sendto(data, dst)`` sends through the NAT. Received datagrams go to ``on_datagram(data, src)``
    when one was given, else to a bounded queue read with ``await recv()``.
    """

    def __init__(
        self, box: NatBox, internal_address: Address, on_datagram: DatagramHandler | None, queue_size: int
    ) -> None:
        self._box = box
        self.internal_address = internal_address
        self._on_datagram = on_datagram
        self._queue: asyncio.Queue[tuple[bytes, Address] | None] = asyncio.Queue(queue_size)
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def sendto(self, data: bytes, dst: Address) -> None:
        """Send one datagram to ``dst`` through the NAT. Drops are counted, never raised."""
        if self._closed:
            raise EndpointClosed(f"endpoint {self.internal_address} is closed")
        self._box._from_inside(bytes(data), self.internal_address, (dst[0], dst[1]))

    async def recv(self) -> tuple[bytes, Address]:
        """The next datagram and its source (as the NAT delivered it). Raises ``EndpointClosed``."""
        if self._closed and self._queue.empty():
            raise EndpointClosed(f"endpoint {self.internal_address} is closed")
        item = await self._queue.get()
        if item is None:
            raise EndpointClosed(f"endpoint {self.internal_address} is closed")
        return item

    def mapped_address(self, remote: Address) -> Address | None:
        """The external address this endpoint uses towards ``remote`` now, or ``None`` (no binding)."""
        return self._box.table.lookup("udp", self.internal_address, remote, self._box._now())

    def close(self) -> None:
        """Stop receiving; wakes a pending ``recv`` with ``EndpointClosed``. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._box._endpoints.pop(self.internal_address, None)
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)

    def deliver(self, payload: bytes, src: Address, dst: Address) -> bool:
        if self._on_datagram is not None:
            self._on_datagram(payload, src)
            return True
        try:
            self._queue.put_nowait((payload, src))
        except asyncio.QueueFull:
            return False
        return True


class _TunHost:
    """A namespaced host as the box sees it: writes reply packets to its TUN."""

    def __init__(self, host: NamespacedHost) -> None:
        self.host = host
        self._ids = itertools.count()

    def deliver(self, payload: bytes, src: Address, dst: Address) -> bool:
        packet = build_udp(UdpDatagram(src, dst, payload), identification=next(self._ids) & 0xFFFF)
        return self.host.tun.write(packet)


class NatBox:
    """A client NAT: one :class:`NatTable` and the sockets, endpoints and TUNs around it.

    Use as ``async with NatBox.dynamic(config, public_ip, rng) as box:`` or ``await box.start()`` …
    ``await box.stop()``. ``stop`` closes every endpoint, socket, TUN and namespace it made.
    """

    def __init__(
        self,
        table: NatTable,
        *,
        allow_destination: Callable[[str], bool] = loopback_only,
        impairment: PathImpairment | None = None,
        impairment_rng: random.Random | None = None,
    ) -> None:
        self.table = table
        self.public_ip = table.public_ip
        self.counters = NatBoxCounters()
        self._allow_destination = allow_destination
        self._loop: asyncio.AbstractEventLoop | None = None
        self._public: dict[int, _PublicPort] = {}
        self._endpoints: dict[Address, NatUdpEndpoint] = {}
        self._tun_hosts: dict[str, _TunHost] = {}
        self._tcp_open: Counter[Address] = Counter()  # open outbound connections per inside address
        self._tcp_watches: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        self._last_now = 0.0
        self._next_virtual_port = _VIRTUAL_PORTS[0]
        self.impairment: PathImpairment | None = None
        self.impaired_outbound: ImpairedLink | None = None
        self.impaired_inbound: ImpairedLink | None = None
        self._in_flight: DelayLine[_InFlight] = DelayLine()
        self._flight_timer: asyncio.TimerHandle | None = None
        self._flight_when = 0.0
        if impairment is not None:
            self.set_impairment(impairment, impairment_rng or random.Random(0))

    @classmethod
    def dynamic(
        cls,
        config: NatConfig,
        public_ip: str,
        rng: random.Random,
        port_range: tuple[int, int] = DEFAULT_PORT_RANGE,
        *,
        allow_destination: Callable[[str], bool] = loopback_only,
        impairment: PathImpairment | None = None,
        impairment_rng: random.Random | None = None,
    ) -> NatBox:
        """A box around a new ``NatTable(config, rng, public_ip, port_range)``.

        ``impairment`` (with its own seeded ``impairment_rng``, default ``Random(0)``) impairs the datapath.
        """
        return cls(
            NatTable(config, rng, public_ip, port_range),
            allow_destination=allow_destination,
            impairment=impairment,
            impairment_rng=impairment_rng,
        )

    def set_impairment(self, impairment: PathImpairment | None, rng: random.Random) -> None:
        """Impair each direction from now on (``None`` or inactive directions: none).

        Each direction draws from its own generator seeded from ``rng``, so traffic in one direction
        does not change the decisions in the other. Packets already in flight keep their due times.
        """
        self.impairment = impairment
        outbound_rng = random.Random(rng.getrandbits(64))
        inbound_rng = random.Random(rng.getrandbits(64))
        self.impaired_outbound = self.impaired_inbound = None
        if impairment is not None and impairment.outbound.active:
            self.impaired_outbound = ImpairedLink(impairment.outbound, outbound_rng)
        if impairment is not None and impairment.inbound.active:
            self.impaired_inbound = ImpairedLink(impairment.inbound, inbound_rng)

    # ------------------------------------------------------------------ lifecycle

    @property
    def running(self) -> bool:
        return self._loop is not None

    async def start(self) -> None:
        """Bind the box to the running loop. Sockets are opened per binding, on demand."""
        if self._loop is not None:
            raise RuntimeError("NatBox already started")
        self._loop = asyncio.get_running_loop()

    async def stop(self) -> None:
        """Close every endpoint, binding socket, TUN and namespace. Idempotent."""
        loop = self._loop
        if loop is None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._flight_timer is not None:
            self._flight_timer.cancel()
            self._flight_timer = None
        self._in_flight.clear()
        for watch in list(self._tcp_watches):
            watch.cancel()
        self._tcp_watches.clear()
        self._tcp_open.clear()
        for endpoint in list(self._endpoints.values()):
            endpoint.close()
        try:
            for tun_host in list(self._tun_hosts.values()):
                await self._detach(tun_host)
        finally:  # even when cancelled: no socket, descriptor or namespace may outlive the box
            for tun_host in list(self._tun_hosts.values()):
                self._tun_hosts.pop(tun_host.host.inside_ip, None)
                if not tun_host.host.tun.closed:
                    loop.remove_reader(tun_host.host.tun.fileno())
                tun_host.host.close()
            for port in list(self._public):
                self._close_public(port)
            self._loop = None

    async def __aenter__(self) -> NatBox:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------------ inside hosts

    async def open_udp(
        self,
        internal_address: Address,
        on_datagram: DatagramHandler | None = None,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
    ) -> NatUdpEndpoint:
        """An endpoint at ``internal_address`` behind this NAT (port 0: pick a free internal port).

        The internal address is virtual: nothing is bound to it, so it may be any IPv4 address that
        is not this box's public IP nor a namespaced host's.
        """
        self._running_loop()
        ip, port = internal_address
        ipaddress.IPv4Address(ip)
        if ip == self.public_ip or ip in self._tun_hosts:
            raise ValueError(f"{ip} is not free as an inside address of this NAT")
        if port == 0:
            port = self._free_virtual_port(ip)
        address = (ip, port)
        if address in self._endpoints:
            raise ValueError(f"internal address {address} is already open")
        endpoint = NatUdpEndpoint(self, address, on_datagram, queue_size)
        self._endpoints[address] = endpoint
        return endpoint

    async def open_tcp_connection(
        self,
        internal_address: Address,
        dst: Address,
        *,
        ssl: ssl_module.SSLContext | None = None,
        server_hostname: str | None = None,
        connect_timeout: float = DEFAULT_TCP_CONNECT_TIMEOUT,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """An outbound TCP connection from ``internal_address`` to ``dst`` through this NAT.

        The table maps the connection (``"tcp"`` bindings, RFC 5382) and the connection is made from a
        real socket bound to the mapped ``(public_ip, port)``, so the server sees the NAT's address.
        Several connections may share one mapped port (endpoint-independent mapping): each socket sets
        SO_REUSEADDR, and Linux allows that for connecting sockets with distinct peers. Only the
        connection set-up refreshes the binding. Raises ``ConnectionRefusedError`` when the table drops
        the SYN, ``OSError`` when the socket cannot be bound or connected, ``ValueError`` for a hairpin
        or LAN destination (not implemented for TCP).
        """
        loop = self._running_loop()
        ipaddress.IPv4Address(internal_address[0])
        if dst[0] == self.public_ip or self._inside_host(dst) is not None:
            raise ValueError("TCP hairpin and LAN connections are not implemented")
        if not self._allow_destination(dst[0]):
            self.counters.drops[DatapathDrop.DESTINATION_NOT_ALLOWED] += 1
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"{dst[0]} is outside the lab")
        translation = self.table.outbound("tcp", internal_address, dst, self._now())
        self._arm_timer()
        if translation is None:
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"NAT {self.public_ip} dropped the SYN to {dst}")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(translation.src)
            except OSError:
                self.counters.drops[DatapathDrop.BIND_FAILED] += 1
                raise
            await asyncio.wait_for(loop.sock_connect(sock, translation.dst), connect_timeout)
            reader, writer = await asyncio.open_connection(
                sock=sock, ssl=ssl, server_hostname=server_hostname if ssl is not None else None
            )
        except BaseException:
            sock.close()
            raise
        self.counters.tcp_connections += 1
        self._watch_tcp(internal_address, dst, writer)
        return reader, writer

    def _watch_tcp(self, internal_address: Address, dst: Address, writer: asyncio.StreamWriter) -> None:
        """When the connection closes (either side), its binding turns transitory (RFC 5382 §5 REQ-5)."""
        key = internal_address  # a binding may carry several connections (EIM): it turns transitory at the last
        self._tcp_open[key] += 1

        async def watch() -> None:
            with contextlib.suppress(Exception):  # a reset connection is closed too; its error is the owner's
                await writer.wait_closed()
            left = self._tcp_open.pop(key, 0) - 1
            if left > 0:
                self._tcp_open[key] = left
                return
            if self._loop is not None and self.table.tcp_closed(internal_address, dst, self._now()):
                self._arm_timer()

        task = self._running_loop().create_task(watch())
        self._tcp_watches.add(task)
        task.add_done_callback(self._tcp_watches.discard)

    async def attach_namespace(self, inside_ip: str) -> NamespacedHost:
        """A fresh network namespace at ``inside_ip`` whose traffic goes through this NAT.

        Run programs in it with ``host.exec_argv([...])``. Detached and deleted by :meth:`stop` or
        :meth:`detach_namespace`. Needs root (see :mod:`simulator.net.nat.netns`).
        """
        loop = self._running_loop()
        if inside_ip == self.public_ip or inside_ip in self._tun_hosts:
            raise ValueError(f"{inside_ip} is not free as an inside address of this NAT")
        host = await NamespacedHost.create(inside_ip)
        tun_host = _TunHost(host)
        try:
            loop.add_reader(host.tun.fileno(), self._on_tun_readable, tun_host)
        except BaseException:
            await host.aclose()
            raise
        self._tun_hosts[inside_ip] = tun_host
        return host

    async def detach_namespace(self, host: NamespacedHost) -> None:
        """Stop reading the host's TUN and delete its namespace. Idempotent."""
        tun_host = self._tun_hosts.get(host.inside_ip)
        if tun_host is not None and tun_host.host is host:
            await self._detach(tun_host)
        else:
            await host.aclose()

    # ------------------------------------------------------------------ datapath

    def _now(self) -> float:
        # Never backwards, even after a timer that fired a hair early (see _on_timer): the table's
        # port pools require a monotonic ``now``.
        now = self._running_loop().time()
        if now < self._last_now:
            return self._last_now
        self._last_now = now
        return now

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise EndpointClosed("NatBox is not running")
        return self._loop

    def _inside_host(self, address: Address) -> _InsideHost | None:
        endpoint = self._endpoints.get(address)
        if endpoint is not None:
            return endpoint
        return self._tun_hosts.get(address[0])

    def _from_inside(self, payload: bytes, src: Address, dst: Address) -> None:
        now = self._now()
        counters = self.counters
        counters.from_inside += 1
        public_ip = self.public_ip
        if dst[0] != public_ip:
            lan = self._inside_host(dst)
            if lan is not None:  # a LAN neighbour: no NAT on the way
                counters.lan += 1
                self._deliver(lan, payload, src, dst)
                return
            if not self._allow_destination(dst[0]):
                counters.drops[DatapathDrop.DESTINATION_NOT_ALLOWED] += 1
                return
        translation = self.table.outbound("udp", src, dst, now)
        self._arm_timer()
        if dst[0] == public_ip or translation is None:
            # RFC 4787 §6: a hairpin never leaves the box. A binding may exist even when the packet
            # was dropped (hairpin off, filtered): open its socket so later replies find it.
            external = self.table.lookup("udp", src, dst, now)
            if external is not None:
                self._public_socket(external[1], src, dst)
            if translation is not None:
                counters.hairpinned += 1
                self._deliver_to(payload, translation.src, translation.dst)
            return
        sock = self._public_socket(translation.src[1], src, dst)
        if sock is None:
            return
        link = self.impaired_outbound
        if link is not None:
            due = link.decide(now)
            if due is None:
                counters.drops[DatapathDrop.IMPAIRMENT_LOSS] += 1
                return
            if due > now:
                self._delay(due, _InFlight(sock, payload, translation.src, translation.dst))
                return
        try:  # inline, not _send_public: this is the hot path
            sock.sendto(payload, translation.dst)
        except OSError as exc:
            counters.drops[DatapathDrop.SEND_FAILED] += 1
            logger.debug("NAT %s: sendto %s failed: %s", public_ip, translation.dst, exc)
            return
        counters.sent += 1

    def _send_public(self, sock: socket.socket, payload: bytes, dst: Address) -> None:
        counters = self.counters
        try:
            sock.sendto(payload, dst)
        except OSError as exc:
            counters.drops[DatapathDrop.SEND_FAILED] += 1
            logger.debug("NAT %s: sendto %s failed: %s", self.public_ip, dst, exc)
            return
        counters.sent += 1

    def _deliver_to(self, payload: bytes, src: Address, dst: Address) -> None:
        host = self._inside_host(dst)
        if host is None:
            self.counters.drops[DatapathDrop.NO_INSIDE_HOST] += 1
            return
        self._deliver(host, payload, src, dst)

    def _deliver(self, host: _InsideHost, payload: bytes, src: Address, dst: Address) -> None:
        if host.deliver(payload, src, dst):
            self.counters.delivered += 1
        else:
            reason = DatapathDrop.TUN_FULL if isinstance(host, _TunHost) else DatapathDrop.QUEUE_FULL
            self.counters.drops[reason] += 1

    def _public_socket(self, port: int, internal: Address, remote: Address) -> socket.socket | None:
        entry = self._public.get(port)
        if entry is not None:
            entry.internal, entry.remote = internal, remote
            return entry.sock
        loop = self._running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind((self.public_ip, port))
            loop.add_reader(sock.fileno(), self._on_public_readable, port, sock)
        except OSError as exc:
            sock.close()
            self.counters.drops[DatapathDrop.BIND_FAILED] += 1
            level = logging.WARNING if exc.errno == errno.EADDRINUSE else logging.ERROR
            logger.log(level, "NAT %s: cannot bind mapped port %d: %s", self.public_ip, port, exc)
            return None
        self._public[port] = _PublicPort(sock, internal, remote)
        self.counters.sockets_opened += 1
        return sock

    def _close_public(self, port: int) -> None:
        entry = self._public.pop(port, None)
        if entry is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(entry.sock.fileno())
        entry.sock.close()
        self.counters.sockets_closed += 1

    def _on_public_readable(self, port: int, sock: socket.socket) -> None:
        public = (self.public_ip, port)
        for _ in range(READ_BUDGET):
            try:
                payload, src = sock.recvfrom(MAX_DATAGRAM)
            except BlockingIOError:
                return
            except OSError as exc:  # an ICMP error reported on the socket: nothing to deliver
                logger.debug("NAT %s: recvfrom failed: %s", public, exc)
                continue
            self.counters.received += 1
            now = self._now()
            translation = self.table.inbound("udp", (src[0], src[1]), public, now)
            if translation is not None:  # else dropped and counted by the table (RFC 4787 §5)
                link = self.impaired_inbound
                if link is None:
                    self._deliver_to(payload, translation.src, translation.dst)
                else:
                    self._impair_inbound(link, payload, translation.src, translation.dst, now)
            if sock.fileno() < 0:  # a delivery callback stopped the box
                return

    def _on_tun_readable(self, tun_host: _TunHost) -> None:
        drops = self.counters.drops
        for _ in range(READ_BUDGET):
            if tun_host.host.tun.closed:
                return
            packet = tun_host.host.tun.read()
            if packet is None:
                return
            if not packet or packet[0] >> 4 != 4:
                drops[DatapathDrop.NOT_IPV4] += 1
                continue
            try:
                header = parse_ipv4(packet)
                if header.protocol != IpProtocol.UDP:
                    drops[DatapathDrop.NOT_UDP] += 1
                    continue
                datagram = parse_udp(packet)
            except MalformedMessage:
                drops[DatapathDrop.MALFORMED] += 1
                continue
            if datagram.src[0] != tun_host.host.inside_ip:
                drops[DatapathDrop.FOREIGN_SOURCE] += 1
                continue
            self._from_inside(datagram.payload, datagram.src, datagram.dst)

    async def _detach(self, tun_host: _TunHost) -> None:
        host = tun_host.host
        self._tun_hosts.pop(host.inside_ip, None)
        if self._loop is not None and not host.tun.closed:
            self._loop.remove_reader(host.tun.fileno())
        await host.aclose()

    # ------------------------------------------------------------------ impairment

    def _impair_inbound(self, link: ImpairedLink, payload: bytes, src: Address, dst: Address, now: float) -> None:
        due = link.decide(now)
        if due is None:
            self.counters.drops[DatapathDrop.IMPAIRMENT_LOSS] += 1
        elif due > now:
            self._delay(due, _InFlight(None, payload, src, dst))
        else:
            self._deliver_to(payload, src, dst)

    def _delay(self, due: float, packet: _InFlight) -> None:
        self._in_flight.push(due, packet)
        self._arm_flight_timer()

    def _arm_flight_timer(self) -> None:
        when = self._in_flight.next_timer()
        if when is None or self._loop is None:
            return
        if self._flight_timer is not None:
            if self._flight_when <= when:
                return
            self._flight_timer.cancel()
        self._flight_when = when
        self._flight_timer = self._loop.call_at(when, self._on_flight_timer)

    def _on_flight_timer(self) -> None:
        self._flight_timer = None
        # call_at may fire up to the clock resolution early: release what was due at the deadline
        now = max(self._now(), self._flight_when)
        for packet in self._in_flight.pop_due(now):
            if self._loop is None:  # a delivery callback stopped the box
                return
            if packet.sock is None:
                self._deliver_to(packet.payload, packet.src, packet.dst)
            elif packet.sock.fileno() < 0:  # the binding expired while the packet was in flight
                self.counters.drops[DatapathDrop.SEND_FAILED] += 1
            else:
                self._send_public(packet.sock, packet.payload, packet.dst)
        self._arm_flight_timer()

    # ------------------------------------------------------------------ timers

    def _arm_timer(self) -> None:
        when = self.table.next_timer()
        if when is None or (self._timer is not None and self._timer_when <= when):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_when = when
        self._timer = self._running_loop().call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        # call_at may fire up to the clock resolution early; the table must see the deadline reached
        self._last_now = max(self._last_now, self._timer_when)
        now = self._now()
        if self.table.expire(now):
            self._close_unbound_sockets(now)
        self._arm_timer()

    def _close_unbound_sockets(self, now: float) -> None:
        lookup = self.table.lookup
        public_ip = self.public_ip
        for port, entry in list(self._public.items()):
            if lookup("udp", entry.internal, entry.remote, now) != (public_ip, port):
                self._close_public(port)

    def _free_virtual_port(self, ip: str) -> int:
        first, last = _VIRTUAL_PORTS
        span = last - first + 1
        for _ in range(span):
            port = self._next_virtual_port
            self._next_virtual_port = first + (port + 1 - first) % span
            if (ip, port) not in self._endpoints:
                return port
        raise OSError(errno.EADDRINUSE, f"no free internal port on {ip}")
