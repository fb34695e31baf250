"""Bad input never crashes a listener: every socket the lab listens on gets garbage, then every rule still
passes and the event loop saw no unhandled exception."""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

import pytest

from simulator.lab.topology import Lab
from simulator.net.edge.av_edge import AvEdgeServer
from simulator.net.peers.dns import DnsServer
from simulator.net.peers.media_peer import MediaPeer
from simulator.net.transport.listener import TcpListener
from simulator.outcome import Verdict
from simulator.scenario.runner import run_rules
from simulator.spec.schema import Scenario

Endpoint = tuple[str, str, int]  # (transport, host, port)


def _endpoints(service: Any) -> set[Endpoint]:
    """Every TCP/UDP endpoint a lab service listens on (found by what it is, not by its name)."""
    found: set[Endpoint] = set()
    if isinstance(service, TcpListener):
        found.add(("tcp", service.host, service.port))
    if isinstance(service, AvEdgeServer) and service.udp_address and service.tcp_address:
        found |= {("udp", *service.udp_address), ("tcp", *service.tcp_address)}
    if isinstance(service, DnsServer):
        found |= {("udp", *service.address), ("tcp", *service.address)}
    if isinstance(service, MediaPeer):
        found |= {("udp", service.host, service.udp_port), *(("tcp", service.host, p) for p in service.tcp_ports)}
    for value in vars(service).values():  # listeners a service holds (AccessEdge, MRAS, Front End, partners)
        if isinstance(value, TcpListener):
            found.add(("tcp", value.host, value.port))
        elif isinstance(value, dict):
            found |= {("tcp", v.host, v.port) for v in value.values() if isinstance(v, TcpListener)}
    return found


GARBAGE = [
    b"\x00" * 64,
    b"\x16\x03\x01\x02\x00" + bytes(range(256)) * 2,  # a TLS record header with nonsense after it
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"INVITE sip:x SIP/2.0\r\nContent-Length: 99999999\r\n\r\n",
    b"<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams'>" + b"<a>" * 64,
]


async def _throw_garbage(endpoint: Endpoint, rng: random.Random) -> None:
    transport, host, port = endpoint
    payloads = [*GARBAGE, rng.randbytes(2000), rng.randbytes(17)]
    if transport == "udp":
        loop = asyncio.get_running_loop()
        sender, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=(host, port))
        try:
            for payload in payloads:
                sender.sendto(payload)
        finally:
            sender.close()
        return
    for payload in payloads:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2)
        except (OSError, TimeoutError):
            continue
        try:
            writer.write(payload)
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reader.read(4096), 0.5)
        except OSError:
            pass  # the listener may reset a connection it will not talk to
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


@pytest.mark.timeout(180)
async def test_garbage_on_every_listener_breaks_nothing(shipped_scenario: Scenario) -> None:
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    try:
        async with Lab(shipped_scenario) as lab:
            services = [lab.dns, lab.crl_server, *lab.services.values(),
                        *(s for node in lab.nodes.values() for s in node.services.values())]
            endpoints = set().union(*(_endpoints(service) for service in services))
            # 17 per node (internal 4443/5061/5062/8057/23456/50001-3/3478/443, access 443/5061/5269, webconf
            # 443, A/V 3478/443) and the lab's DNS, CRL, Front End, Director, partners and media peers
            assert len(endpoints) >= 2 * 17 + 12, sorted(endpoints)
            rng = random.Random(2013)
            await asyncio.gather(*(_throw_garbage(endpoint, rng) for endpoint in sorted(endpoints)))
            await asyncio.sleep(0.2)
            results = await run_rules(lab, shipped_scenario.selected_rules)
    finally:
        loop.set_exception_handler(None)
    failed = {r.rule.id: (r.reason, r.detail[:120]) for r in results if r.verdict is not Verdict.PASS}
    assert failed == {}
    assert unhandled == [], [str(context.get("message")) + repr(context.get("exception")) for context in unhandled]
