"""The asyncio shell around the sans-I/O ICE agent (:mod:`simulator.core.ice`): sockets, relays, the timer.

Theory of operation
-------------------
An :class:`IceSession` owns one UDP socket per host address (a real loopback socket, or an endpoint of a
:class:`~simulator.net.nat.gate.Gateway` — a NAT box or an intranet gate — when the client sits behind one),
optionally one MS-TURN UDP relay through edgesim's own :class:`~simulator.net.clients.turn_client.MsTurnClient`, and one
:class:`~simulator.core.ice.IceAgent`. It only moves bytes:

- ``gather()``: opens the sockets (host candidates), sends one STUN Binding per host socket to the STUN
  server (edgesim's A/V Edge answers Binding on its TURN port) for the server-reflexive candidate, and
  allocates the relay (Allocate → 401 → Allocate; MAPPED-ADDRESS is the relayed candidate).
- every datagram a socket or the relay gets goes to ``agent.receive(data, src, now, via)``; what is not
  STUN is application data (RTP) for the caller's ``on_data`` or :meth:`recv`.
- after each call into the agent the shell sends ``agent.datagrams_to_send()`` — through the socket named
  by ``via``, or as an MS-TURN Send request when ``via`` is the relay (that also opens the relay's implicit
  permission) — and arms one ``loop.call_at(agent.get_timer())``.
- ``connect()`` starts the checks and waits for :class:`~simulator.core.ice.PairSelected` (or ``Failed``);
  ``send()`` then sends application datagrams on the selected pair, direct or relayed.

Time is ``loop.time()``; the agent gets it as ``now``. Randomness comes from the ``rng`` passed in.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from simulator.core.ice import (
    CandidatePair,
    CandidateType,
    Failed,
    IceAgent,
    IceConfig,
    IceState,
    IceStats,
    PairSelected,
    Profile,
    rfc4571,
)
from simulator.core.ice.candidates import Candidate
from simulator.net.clients.turn_client import MsTurnClient
from simulator.net.nat.gate import Gateway, GatewayEndpoint
from simulator.outcome import ProbeFailure, Reason
from simulator.wire import sdp, stun
from simulator.wire.errors import MalformedMessage
from simulator.wire.stun import Address

DataHandler = Callable[[bytes, Address], None]
STUN_RTO = 0.5  # RFC 8489 §6.2.1
# Lync QoE ``IceWarningFlags`` bits this shell can observe (research-next.md A2).
WARN_TURN_UNREACHABLE = 0x10
WARN_UDP_ALLOCATE_FAILED = 0x40
WARN_TCP_ALLOCATE_FAILED = 0x200


class IceFailed(RuntimeError):
    """ICE ended without a selected pair (every pair failed, or the caller's deadline passed)."""


@dataclass(frozen=True, slots=True)
class SelectedPair:
    local: Candidate
    remote: Candidate
    relayed: bool  # the local candidate is a relay (QoE "RELAY"), else "DIRECT"
    time_to_connected: float


@dataclass(frozen=True, slots=True)
class IceOutcome:
    """A call leg's ICE result as Lync's QoE reports it (Connectivity ``Ice``: DIRECT / RELAY / FAILED)."""

    ice: Literal["DIRECT", "RELAY", "FAILED"]
    local_type: str | None
    local_transport: str | None
    remote_type: str | None
    remote_transport: str | None
    time_to_connected: float | None
    checks_sent: int
    retransmissions: int
    warnings: tuple[str, ...]
    warning_flags: int = 0  # QoE IceWarningFlags bits (WARN_* above)


class _HostSocket(asyncio.DatagramProtocol):
    """One host candidate's socket: a real UDP socket or an endpoint behind a NAT box."""

    def __init__(self, session: IceSession, via: str) -> None:
        self.session = session
        self.via = via
        self.transport: asyncio.DatagramTransport | None = None
        self.endpoint: GatewayEndpoint | None = None
        self.address = Address("0.0.0.0", 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.session._on_datagram(data, Address(addr[0], addr[1]), self.via)

    def error_received(self, exc: Exception) -> None:  # ICMP unreachable: the check will time out
        pass

    def sendto(self, data: bytes, addr: Address) -> None:
        if self.endpoint is not None:
            self.endpoint.sendto(data, addr)
        elif self.transport is not None:
            self.transport.sendto(data, (addr.host, addr.port))

    def close(self) -> None:
        if self.endpoint is not None:
            self.endpoint.close()
        if self.transport is not None:
            self.transport.close()


class _TcpLink:
    """One ICE-TCP connection (RFC 6544): RFC 4571 frames both ways; sends queue until it is connected."""

    def __init__(self, session: IceSession, via: str, peer: Address, *, accepted: bool = False) -> None:
        self.session = session
        self.via = via
        self.peer = peer
        self.accepted = accepted  # the task is asyncio.start_server's handler: end it by EOF, never cancel it
        self.writer: asyncio.StreamWriter | None = None
        self.pending: list[bytes] = []
        self.task: asyncio.Task[None] | None = None
        self.closed = False

    def send(self, packet: bytes) -> None:
        framed = rfc4571.frame(packet)
        if self.writer is None:
            if len(self.pending) < 256:
                self.pending.append(framed)
            return
        self.writer.write(framed)

    def attach(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        for framed in self.pending:
            writer.write(framed)
        self.pending.clear()

    async def run(self, reader: asyncio.StreamReader) -> None:
        framer = rfc4571.Rfc4571Framer()
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                for packet in framer.feed(data):
                    self.session._on_datagram(packet, self.peer, self.via)

    async def connect_and_run(self, local_host: str, timeout: float) -> None:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                self.peer.host, self.peer.port, local_addr=(local_host, 0)), timeout)
        except (OSError, TimeoutError):
            return  # the checks on this pair time out and fail it
        self.attach(writer)
        await self.run(reader)

    async def close(self) -> None:
        self.closed = True
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        if self.task is not None and self.task is not asyncio.current_task():
            if self.accepted:
                await asyncio.wait({self.task}, timeout=1.0)  # our close gives its read an EOF
            if not self.task.done():
                self.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self.task


class IceSession:
    """One ICE media stream (component 1, RTP/RTCP multiplexed) as a call would drive it.

    ``profile`` is ``"rfc8445"`` or ``"ms-ice2"``; ``role`` ``"controlling"`` (the caller) or
    ``"controlled"``. ``hosts``: local addresses, one host candidate each (inside addresses when ``nat``
    is given). ``stun_server``: where to learn the server-reflexive address (defaults to ``turn_server``);
    ``turn_server`` + credentials: an MS-TURN relay over UDP (3478); ``turn_tcp_server``: one more over TCP
    (443, pseudo-TLS and framing; the relayed address is UDP on the Edge either way); ``turn_version`` is
    MS-Version. ``relay_only`` offers only relay candidates (like ``iceTransportPolicy="relay"``).
    ``transports``: host candidates over ``"udp"`` and/or ``"tcp"`` (RFC 6544 active + passive per address,
    RFC 4571 framing; not behind a NAT box, which maps outbound TCP only).
    """

    def __init__(self, profile: Profile | str, role: Literal["controlling", "controlled"], rng: random.Random, *,
                 hosts: Sequence[str], nat: Gateway | None = None, stun_server: Address | None = None,
                 turn_server: Address | None = None, turn_tcp_server: Address | None = None,
                 turn_username: str = "", turn_password: str = "",
                 turn_version: int = 3, relay_only: bool = False, config: IceConfig | None = None,
                 transports: Sequence[str] = ("udp",),
                 on_data: DataHandler | None = None, queue_size: int = 4096) -> None:
        self.profile = Profile(profile)
        self.rng = rng
        self.hosts = list(hosts)
        self.nat = nat
        self.turn_server = turn_server
        self.turn_tcp_server = turn_tcp_server
        self.stun_server = stun_server or turn_server
        self.turn_username = turn_username
        self.turn_password = turn_password
        self.turn_version = turn_version
        self.relay_only = relay_only
        self.transports = tuple(transports)
        if "tcp" in self.transports and nat is not None:
            raise ValueError("TCP host candidates behind a NAT box are not supported (it maps outbound TCP only)")
        self._servers: list[asyncio.Server] = []
        self._links: dict[tuple[str, Address], _TcpLink] = {}
        self.on_data = on_data
        self.agent = IceAgent(config or self.profile, role == "controlling", rng)
        self.relays: dict[str, MsTurnClient] = {}  # via -> the relay's MS-TURN client
        self.warnings: list[str] = []  # gathering problems in words: "TURN UDP allocate failed: …"
        self.warning_flags = 0  # the same as QoE IceWarningFlags bits
        self._sockets: dict[str, _HostSocket] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._relay_tasks: list[asyncio.Task[None]] = []
        self._binding: dict[bytes, asyncio.Future[Address]] = {}
        self._done: asyncio.Future[SelectedPair] | None = None
        self._data: asyncio.Queue[tuple[bytes, Address]] = asyncio.Queue(queue_size)
        self.dropped_data = 0
        self.closed = False

    # ------------------------------------------------------------------------------ gathering

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def now(self) -> float:
        return self.loop.time()

    async def gather(self, timeout: float = 3.0) -> list[Candidate]:
        """Open the sockets and the relay; add host, server-reflexive and relay candidates to the agent."""
        loop = self.loop
        for index, host in enumerate(self.hosts if "udp" in self.transports else ()):
            via = f"host{index}"
            sock = _HostSocket(self, via)
            if self.nat is not None:
                sock.endpoint = await self.nat.open_udp((host, 0), on_datagram=self._nat_handler(via))
                sock.address = Address(*sock.endpoint.internal_address)
            else:
                await loop.create_datagram_endpoint(lambda s=sock: s, local_addr=(host, 0))  # type: ignore[misc]
                assert sock.transport is not None
                name = sock.transport.get_extra_info("sockname")
                sock.address = Address(name[0], name[1])
            self._sockets[via] = sock
        if not self.relay_only:
            for index, sock in enumerate(self._sockets.values()):
                self.agent.add_local_candidate(CandidateType.HOST, sock.address, via=sock.via, ip_index=index)
            if "tcp" in self.transports:
                for index, host in enumerate(self.hosts):
                    await self._gather_tcp(host, index)
        jobs = [self._gather_srflx(sock, index, timeout) for index, sock in enumerate(self._sockets.values())]
        if self.turn_server is not None:
            jobs.append(self._gather_relay("udp", self.turn_server, 0, timeout))
        if self.turn_tcp_server is not None:
            jobs.append(self._gather_relay("tcp", self.turn_tcp_server, 1, timeout))
        await asyncio.gather(*jobs)
        return list(self.agent.local_candidates)

    async def _gather_tcp(self, host: str, index: int) -> None:
        """RFC 6544 §4.1: a passive candidate (a listening socket) and an active one (port 9 in SDP)."""
        passive_via, active_via = f"tcppass{index}", f"tcpact{index}"

        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            name = writer.get_extra_info("peername")
            peer = Address(name[0], name[1])
            link = _TcpLink(self, passive_via, peer, accepted=True)
            link.attach(writer)
            link.task = asyncio.current_task()
            self._links[(passive_via, peer)] = link
            try:
                await link.run(reader)
            finally:
                self._links.pop((passive_via, peer), None)
                writer.close()

        server = await asyncio.start_server(accepted, host, 0)
        self._servers.append(server)
        port = server.sockets[0].getsockname()[1]
        self.agent.add_local_candidate(CandidateType.HOST, Address(host, port), via=passive_via, ip_index=index,
                                       transport="tcp", tcptype="passive")
        self.agent.add_local_candidate(CandidateType.HOST, Address(host, 9), via=active_via, ip_index=index,
                                       transport="tcp", tcptype="active")

    def _nat_handler(self, via: str) -> Callable[[bytes, tuple[str, int]], None]:
        def handler(data: bytes, src: tuple[str, int]) -> None:
            self._on_datagram(data, Address(src[0], src[1]), via)

        return handler

    async def _gather_srflx(self, sock: _HostSocket, index: int, timeout: float) -> None:
        if self.stun_server is None or self.relay_only:
            return
        tid = stun.new_transaction_id(self.rng)
        request = stun.request(stun.StunMethod.BINDING, tid).serialize(fingerprint=True)
        waiter: asyncio.Future[Address] = self.loop.create_future()
        self._binding[tid] = waiter
        try:
            async with asyncio.timeout(timeout):
                rto = STUN_RTO
                while True:
                    sock.sendto(request, self.stun_server)
                    try:
                        mapped = await asyncio.wait_for(asyncio.shield(waiter), rto)
                        break
                    except TimeoutError:
                        rto *= 2
        except TimeoutError:
            self.warnings.append(f"no STUN Binding answer from {self.stun_server.host}:{self.stun_server.port}")
            return
        finally:
            self._binding.pop(tid, None)
        self.agent.add_local_candidate(CandidateType.SRFLX, mapped, via=sock.via, base=sock.address,
                                       related=sock.address, server=self.stun_server.host, ip_index=index)

    async def _gather_relay(self, transport: Literal["udp", "tcp"], server: Address, index: int,
                            timeout: float) -> None:
        local_host = self.hosts[0] if self.hosts else None
        opener = None
        if transport == "tcp" and self.nat is not None and local_host is not None:
            nat = self.nat

            def opener() -> Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
                return nat.open_tcp_connection((local_host, 0), server)

        client = MsTurnClient(transport, server, self.turn_username, self.turn_password, self.rng,
                              version=self.turn_version, local_host=local_host, nat=self.nat, tcp_opener=opener)
        try:
            await client.open(timeout)
            allocation = await client.allocate(timeout)
        except ProbeFailure as failure:
            self.warnings.append(f"TURN {transport.upper()} allocate failed: {failure}")
            self.warning_flags |= WARN_UDP_ALLOCATE_FAILED if transport == "udp" else WARN_TCP_ALLOCATE_FAILED
            if failure.reason in (Reason.TIMEOUT, Reason.REFUSED, Reason.UNREACHABLE):
                self.warning_flags |= WARN_TURN_UNREACHABLE
            await client.close()
            return
        via = f"relay{index}"
        self.relays[via] = client
        self.agent.add_local_candidate(CandidateType.RELAY, allocation.relay, via=via,
                                       related=allocation.reflexive or client.public, server=server.host,
                                       turn_index=index, ip_index=index, relay_leg=transport)
        client.on_data = self._relay_handler(via)  # each relayed datagram as it arrives: no queue, no task

    def _relay_handler(self, via: str) -> Callable[[Address | None, bytes], None]:
        def handle(peer: Address | None, payload: bytes) -> None:
            if peer is not None:
                self._on_datagram(payload, peer, via)

        return handle

    # ------------------------------------------------------------------------------ descriptions

    def local_description(self, default_port: int | None = None) -> sdp.IceDescription:
        """ufrag, pwd and candidates (the relay is the default candidate when it exists)."""
        candidates = tuple(c.to_sdp() for c in self.agent.local_candidates if c.type is not CandidateType.PRFLX)
        default = next((c for c in self.agent.local_candidates if c.type is CandidateType.RELAY), None) or (
            self.agent.local_candidates[0] if self.agent.local_candidates else None)
        host = default.address.host if default else "0.0.0.0"
        port = default_port if default_port is not None else default.address.port if default else 9
        return sdp.IceDescription(self.agent.local_ufrag, self.agent.local_pwd, candidates, host, port)

    def local_sdp(self, form: sdp.SdpForm | None = None) -> str:
        """An SDP body with this side's candidates (MS-ICE2 spelling in the ms-ice2 profile by default)."""
        chosen: sdp.SdpForm = form or ("ms-ice2" if self.profile is Profile.MS_ICE2 else "rfc8839")
        return sdp.build_sdp(self.local_description(), form=chosen)

    def selected_sdp(self, form: sdp.SdpForm | None = None) -> str:
        """The re-offer after ICE (RFC 8839 §4.4.1.2.2 / the Lync re-INVITE): c=/m= and the only candidate are
        the selected local candidate; ``a=remote-candidates`` names the peer's side of the pair."""
        pair = self.agent.selected_pair
        if pair is None:
            raise IceFailed("no selected pair")
        local = pair.local
        if local.type is CandidateType.PRFLX and local.base is not None:  # not signalled: offer its base
            local = next((c for c in self.agent.local_candidates if c.address == local.base), local)
        desc = sdp.IceDescription(self.agent.local_ufrag, self.agent.local_pwd, (local.to_sdp(),),
                                  local.address.host, local.address.port,
                                  remote_candidates=((pair.remote.component, pair.remote.address.host,
                                                      pair.remote.address.port),))
        chosen: sdp.SdpForm = form or ("ms-ice2" if self.profile is Profile.MS_ICE2 else "rfc8839")
        return sdp.build_sdp(desc, form=chosen)

    def set_remote(self, description: sdp.IceDescription | str) -> None:
        """The peer's SDP (text or parsed): credentials and candidates."""
        desc = sdp.parse_sdp(description) if isinstance(description, str) else description
        self.agent.set_remote_credentials(desc.ufrag, desc.pwd)
        for candidate in desc.candidates:
            self.agent.add_remote_candidate(Candidate.from_sdp(candidate))
        self._pump()

    def add_remote_candidate(self, line: str) -> None:
        self.agent.add_remote_candidate(Candidate.from_sdp(sdp.parse_candidate(line)))
        self._pump()

    # ------------------------------------------------------------------------------ checks

    async def connect(self, timeout: float = 10.0) -> SelectedPair:
        """Run the checks until a pair is selected. Raises :class:`IceFailed`."""
        if self._done is None:
            self._done = self.loop.create_future()
        self.agent.start(self.now())
        self._pump()
        try:
            return await asyncio.wait_for(asyncio.shield(self._done), timeout)
        except TimeoutError:
            raise IceFailed(f"no pair selected within {timeout} s") from None

    def _on_datagram(self, data: bytes, src: Address, via: str) -> None:
        if self.closed:
            return
        if self._binding and len(data) >= 20 and data[0] == 0x01:
            waiter = self._binding.get(bytes(data[8:20]))
            if waiter is not None:
                with contextlib.suppress(MalformedMessage):
                    mapped = stun.parse(data).get(stun.XOR_MAPPED_ADDRESS)
                    if mapped is not None and not waiter.done():
                        waiter.set_result(mapped)
                return
        if self.agent.receive(data, src, self.now(), via):
            self._pump()
            return
        if self.on_data is not None:
            self.on_data(data, src)
            return
        try:
            self._data.put_nowait((data, src))
        except asyncio.QueueFull:
            self.dropped_data += 1

    def _transmit(self, data: bytes, addr: Address, via: str) -> None:
        if via.startswith("tcp"):
            link = self._links.get((via, addr))
            if link is None and via.startswith("tcpact") and not self.closed:  # RFC 6544: active connects
                link = self._links[(via, addr)] = _TcpLink(self, via, addr)
                link.task = asyncio.create_task(link.connect_and_run(self.hosts[int(via[6:])], 5.0))
            if link is not None:
                link.send(data)
            return
        relay = self.relays.get(via)
        if relay is not None:
            relay.send(addr, data)
            return
        sock = self._sockets.get(via)
        if sock is not None:
            sock.sendto(data, addr)

    def _pump(self) -> None:
        """Send what the agent queued, take its events, re-arm its timer."""
        agent = self.agent
        for data, addr, via in agent.datagrams_to_send(self.now()):
            self._transmit(data, Address(*addr), via)
        while (event := agent.next_event()) is not None:
            if isinstance(event, PairSelected) and self._done is not None and not self._done.done():
                self._done.set_result(SelectedPair(event.local, event.remote,
                                                   event.local.type is CandidateType.RELAY,
                                                   event.time_to_connected))
            elif isinstance(event, Failed) and self._done is not None and not self._done.done():
                self._done.set_exception(IceFailed(event.reason))
        self._arm()

    def _arm(self) -> None:
        when = self.agent.get_timer()
        if when == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = when
        if when is not None and not self.closed:
            self._timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.agent.handle_timer(self.now())
        self._pump()

    # ------------------------------------------------------------------------------ media

    @property
    def selected(self) -> CandidatePair | None:
        return self.agent.selected_pair

    @property
    def stats(self) -> IceStats:
        return self.agent.stats

    @property
    def state(self) -> IceState:
        return self.agent.state

    def outcome(self) -> IceOutcome:
        """DIRECT when the selected pair uses no relay on either side, RELAY when it does, else FAILED."""
        pair = self.agent.selected_pair
        stats = self.agent.stats
        if pair is None:
            return IceOutcome("FAILED", None, None, None, None, None, stats.checks_sent, stats.retransmissions,
                              tuple(self.warnings), self.warning_flags)
        relayed = CandidateType.RELAY in (pair.local.type, pair.remote.type)
        return IceOutcome("RELAY" if relayed else "DIRECT", str(pair.local.type), pair.local.transport,
                          str(pair.remote.type), pair.remote.transport, stats.time_to_connected, stats.checks_sent,
                          stats.retransmissions, tuple(self.warnings), self.warning_flags)

    def send(self, data: bytes) -> None:
        """One application datagram (RTP) on the selected pair, direct or through the relay."""
        pair = self.agent.selected_pair
        if pair is None:
            raise IceFailed("no selected pair")
        self._transmit(data, pair.remote.address, pair.local.via)

    async def recv(self, timeout: float) -> tuple[bytes, Address]:
        """The next application datagram (when no ``on_data`` handler was given)."""
        return await asyncio.wait_for(self._data.get(), timeout)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._done is not None and not self._done.done():
            self._done.set_exception(IceFailed("closed"))
            self._done.exception()  # retrieved: nobody may be waiting
        for task in self._relay_tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for relay in self.relays.values():
            await relay.close()
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()
        for server in self._servers:
            server.close()
        for link in list(self._links.values()):
            await link.close()
        self._links.clear()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()

    async def __aenter__(self) -> IceSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
