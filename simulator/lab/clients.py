"""The client side of the lab: one NAT box per client population that sits behind a NAT, and the
connectors every lab client uses, so its traffic crosses that NAT for real.

A remote user at 127.77.200.5 whose population has ``nat:`` in the scenario reaches the Edge from the
NAT's public address (``P.150.k``) and a port the NAT table chose (RFC 4787 mapping and filtering as
configured); a client without NAT connects from its own address.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import ssl
from typing import TYPE_CHECKING

from simulator.core.nat import Behaviour, NatConfig
from simulator.lab.addressing import HostKind
from simulator.net.nat.natbox import NatBox, loopback_only
from simulator.net.transport.service import Service

if TYPE_CHECKING:
    from simulator.lab.topology import Lab

StreamPair = tuple[asyncio.StreamReader, asyncio.StreamWriter]
_VIRTUAL_PORTS = itertools.count(20000)  # inside ports of NATed TCP connections (virtual: nothing binds them)


def nat_service_name(client: str) -> str:
    return f"nat-{client}"


def client_nats(lab: Lab) -> dict[str, Service]:
    services: dict[str, Service] = {}
    if not lab.placement.client_nats:
        return services
    # Embedded: the loopback lab only. Deployed: only the deployment's own addresses, never anything else.
    known = frozenset(host.address for host in lab.plan.hosts)
    allowed = (lambda ip: ip in known) if lab.placement.deployed else loopback_only
    for client in lab.scenario.clients:
        if client.nat is None or not lab.plan.of(client.name, HostKind.CLIENT_NAT):
            continue
        config = NatConfig(mapping=Behaviour(client.nat.mapping.value), filtering=Behaviour(client.nat.filtering.value),
                           udp_binding_timeout=client.nat.binding_timeout,
                           port_preservation=client.nat.port_preservation, hairpin=client.nat.hairpin)
        public = lab.plan.one(client.name, HostKind.CLIENT_NAT).address
        services[nat_service_name(client.name)] = NatBox.dynamic(
            config, public, random.Random(f"{lab.scenario.seed}:nat:{client.name}"), allow_destination=allowed)
    return services


def nat_for(lab: Lab, host: str) -> NatBox | None:
    """The NAT box in front of the client at ``host``, if its population has one."""
    for client in lab.scenario.clients:
        if client.nat is not None and any(h.address == host for h in lab.plan.of(client.name, HostKind.CLIENT)):
            box = lab.services.get(nat_service_name(client.name))
            return box if isinstance(box, NatBox) else None
    return None


async def open_tcp(lab: Lab, source: str, host: str, port: int, *, context: ssl.SSLContext | None = None,
                   server_name: str | None = None, timeout: float = 5.0) -> StreamPair:
    """A TCP (optionally TLS) connection from the lab client at ``source``, through its NAT if it has one.

    Raises OSError, ssl.SSLError or TimeoutError like ``asyncio.open_connection``.
    """
    box = nat_for(lab, source)
    if box is None:
        return await asyncio.wait_for(asyncio.open_connection(
            host, port, ssl=context, server_hostname=server_name if context else None, local_addr=(source, 0),
            ssl_handshake_timeout=timeout if context else None), timeout)
    inside = (source, next(_VIRTUAL_PORTS) % 40000 + 20000)
    return await asyncio.wait_for(box.open_tcp_connection(inside, (host, port), ssl=context,
                                                          server_hostname=server_name, connect_timeout=timeout),
                                  timeout)
