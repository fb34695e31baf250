"""A media peer on the far side of the A/V Edge: a partner's Edge or a Live Messenger client.

UDP (one port, 3478 by default): answers STUN Binding requests with XOR-MAPPED-ADDRESS (what a remote
A/V Edge's STUN does: E14/P5 "finds the version of the remote Edge") and echoes any other datagram
prefixed with ``seen=HOST:PORT|`` — the source it arrived from — so a probe learns, over the wire, which
relay address and port the A/V Edge used. TCP (each port given): the same echo, one line per read.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import cast

from simulator.net.transport.arrivals import ArrivalLog, recorder
from simulator.wire import stun
from simulator.wire.errors import MalformedMessage
from simulator.wire.stun import Address, MessageClass, StunMethod, attr


def seen_prefix(address: tuple[str, int]) -> bytes:
    return f"seen={address[0]}:{address[1]}|".encode()


def parse_seen(data: bytes) -> tuple[Address, bytes] | None:
    """Split an echo into (the source the peer saw, the original payload)."""
    if not data.startswith(b"seen="):
        return None
    head, sep, rest = data.partition(b"|")
    host, _, port = head[5:].decode("ascii", "replace").rpartition(":")
    if not sep or not port.isdigit():
        return None
    return Address(host, int(port)), rest


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, peer: MediaPeer) -> None:
        self.peer = peer
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # 3.11's selector transport isn't a subclass
        self.port = transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.peer.udp_sources.append((addr[0], addr[1]))
        if self.peer.arrivals is not None:
            self.peer.arrivals.udp(f"media-{self.peer.name}", (self.peer.host, self.port), addr)
        try:
            request = stun.parse(data)
        except MalformedMessage:
            self.transport.sendto(seen_prefix(addr) + data, addr)
            return
        if request.cls is MessageClass.REQUEST and request.method == StunMethod.BINDING:
            answer = stun.success_response(request, attr(stun.XOR_MAPPED_ADDRESS, Address(addr[0], addr[1])))
            self.transport.sendto(answer.serialize(fingerprint=True), addr)


class MediaPeer:
    """UDP STUN/echo on ``udp_port`` (a remote A/V Edge's 3478) and on ``rtp_port`` (a media port: what the relay
    sends RTP to), TCP echo on ``tcp_ports`` at ``host``."""

    def __init__(self, name: str, host: str, udp_port: int, tcp_ports: tuple[int, ...],
                 rtp_port: int | None = None) -> None:
        self.name = name
        self.host = host
        self.udp_port = udp_port
        self.rtp_port = rtp_port
        self.tcp_ports = tcp_ports
        self._rtp: asyncio.DatagramTransport | None = None
        self.udp_sources: list[tuple[str, int]] = []
        self.tcp_sources: list[tuple[str, int]] = []
        self._udp: asyncio.DatagramTransport | None = None
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.arrivals: ArrivalLog | None = None

    @property
    def running(self) -> bool:
        return self._udp is not None

    async def start(self) -> None:
        self.arrivals = recorder()
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), local_addr=(self.host, self.udp_port))
        self._udp = transport
        self.udp_port = transport.get_extra_info("sockname")[1]
        if self.rtp_port is not None:
            self._rtp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self),
                                                               local_addr=(self.host, self.rtp_port))
            self.rtp_port = self._rtp.get_extra_info("sockname")[1]
        for port in self.tcp_ports:
            self._servers.append(await asyncio.start_server(self._echo, self.host, port, reuse_address=True))

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        source = writer.get_extra_info("peername")
        self.tcp_sources.append((source[0], source[1]))
        if self.arrivals is not None:
            local = writer.get_extra_info("sockname")
            self.arrivals.tcp(f"media-{self.name}", (local[0], local[1]), (source[0], source[1]))
        try:
            with contextlib.suppress(OSError):
                while data := await asyncio.wait_for(reader.read(65536), 30):
                    writer.write(seen_prefix(source) + data)
                    await writer.drain()
        except TimeoutError:
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def stop(self) -> None:
        if self._rtp is not None:
            self._rtp.close()
            self._rtp = None
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        for server in self._servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
