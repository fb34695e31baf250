"""What a lab client sends through: a :class:`Gateway` (a NAT box, or the perimeter around an internal user).

:class:`~simulator.net.clients.ice.IceSession` and the TURN clients take a gateway rather than a socket
when their host sits behind something: :class:`~simulator.net.nat.natbox.NatBox` (RFC 4787 translation) or
:class:`IntranetGate` (no translation; only intranet addresses may be reached). Both give UDP endpoints with
``sendto``/``close``/``mapped_address`` and TCP connections from a chosen inside address.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable
from typing import Protocol, cast

from simulator.wire.stun import Address


class GatewayEndpoint(Protocol):
    """One UDP endpoint behind a gateway."""

    @property
    def internal_address(self) -> tuple[str, int]: ...

    def sendto(self, data: bytes, dst: tuple[str, int]) -> None: ...

    def mapped_address(self, remote: tuple[str, int]) -> tuple[str, int] | None: ...

    def close(self) -> None: ...


class Gateway(Protocol):
    """What a host's traffic goes through (a NAT box, a perimeter)."""

    async def open_udp(self, internal_address: tuple[str, int],
                       on_datagram: Callable[[bytes, tuple[str, int]], None] | None = None) -> GatewayEndpoint: ...

    async def open_tcp_connection(self, internal_address: tuple[str, int], dst: tuple[str, int]
                                  ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]: ...


class _GatedEndpoint(asyncio.DatagramProtocol):
    """One UDP socket at an intranet address that only talks with intranet addresses (see IntranetGate)."""

    def __init__(self, gate: IntranetGate, on_datagram: Callable[[bytes, tuple[str, int]], None] | None) -> None:
        self.gate = gate
        self.on_datagram = on_datagram
        self.transport: asyncio.DatagramTransport | None = None
        self.internal_address = Address("0.0.0.0", 0)
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        name = self.transport.get_extra_info("sockname")
        self.internal_address = Address(name[0], name[1])

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if addr[0] not in self.gate.allowed:
            self.gate.dropped_inbound += 1
        elif self.on_datagram is not None and not self.closed:
            self.on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        pass

    def sendto(self, data: bytes, dst: tuple[str, int]) -> None:
        if self.closed or self.transport is None:
            return
        if dst[0] not in self.gate.allowed:
            self.gate.dropped_outbound += 1
            return
        self.transport.sendto(data, (dst[0], dst[1]))

    def mapped_address(self, remote: tuple[str, int]) -> Address:
        return self.internal_address  # no translation: the intranet is routed to the Edge's internal interface

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class IntranetGate:
    """The perimeter around an internal user, for a loopback lab where every address reaches every other.

    Its endpoints are real sockets at the user's intranet address (so its host candidates are that address and
    the internal A/V Edge sees it as it is: no NAT), but they send to and accept from ``allowed`` addresses only
    — the intranet: the nodes' internal interfaces, the Front End, the Director, internal users. What an
    Internet host sends to an intranet address, or an intranet host to an Internet one, is dropped and counted,
    as the perimeter firewalls of a Lync Edge deployment do (research-lync-edge §1: internal clients reach the
    Internet's media through the Edge's internal interface only). It is a :class:`Gateway`, as a NAT box is.
    """

    def __init__(self, allowed: frozenset[str]) -> None:
        self.allowed = allowed
        self.dropped_inbound = 0
        self.dropped_outbound = 0

    async def open_udp(self, internal_address: tuple[str, int],
                       on_datagram: Callable[[bytes, tuple[str, int]], None] | None = None) -> _GatedEndpoint:
        endpoint = _GatedEndpoint(self, on_datagram)
        await asyncio.get_running_loop().create_datagram_endpoint(lambda: endpoint, local_addr=internal_address)
        return endpoint

    async def open_tcp_connection(self, internal_address: tuple[str, int], dst: tuple[str, int]
                                  ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A TCP connection from ``internal_address`` to an intranet ``dst``; refused (and counted) otherwise."""
        if dst[0] not in self.allowed:
            self.dropped_outbound += 1
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"{dst[0]} is outside the intranet")
        return await asyncio.open_connection(dst[0], dst[1], local_addr=internal_address)
