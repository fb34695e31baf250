"""The intranet gate (simulator.net.nat.gate): what an internal user's sockets may reach, and what reaches them.

Expected behaviour is the perimeter's (research-lync-edge §1): intranet addresses only, both ways, for UDP and
TCP; everything else is dropped (UDP) or refused (TCP) and counted. Real loopback sockets, addresses in 127.68/16.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from simulator.net.nat.gate import IntranetGate

INSIDE, INTRANET, INTERNET = "127.68.0.1", "127.68.0.2", "127.68.0.3"


async def test_udp_only_to_and_from_intranet_addresses() -> None:
    gate = IntranetGate(frozenset({INTRANET}))
    got: list[tuple[bytes, tuple[str, int]]] = []
    endpoint = await gate.open_udp((INSIDE, 0), lambda data, src: got.append((data, src)))
    peers = {}
    for host in (INTRANET, INTERNET):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((host, 0))
        sock.settimeout(0.5)
        peers[host] = sock
    try:
        for host, sock in peers.items():
            endpoint.sendto(b"out-" + host.encode(), sock.getsockname())
            sock.sendto(b"in-" + host.encode(), endpoint.internal_address)
        await asyncio.sleep(0.2)
        assert peers[INTRANET].recvfrom(100)[0] == b"out-" + INTRANET.encode()
        with pytest.raises(TimeoutError):
            peers[INTERNET].recvfrom(100)
        assert [data for data, _ in got] == [b"in-" + INTRANET.encode()]
        assert (gate.dropped_outbound, gate.dropped_inbound) == (1, 1)
        assert endpoint.mapped_address((INTRANET, 1)) == endpoint.internal_address  # no translation
    finally:
        endpoint.close()
        for sock in peers.values():
            sock.close()


async def test_tcp_to_the_internet_is_refused_and_to_the_intranet_connects() -> None:
    gate = IntranetGate(frozenset({INTRANET}))
    accepted: list[tuple[str, int]] = []

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer.get_extra_info("peername")[:2])
        writer.close()

    servers = [await asyncio.start_server(on_client, host, 0) for host in (INTRANET, INTERNET)]
    try:
        ports = [s.sockets[0].getsockname()[1] for s in servers]
        with pytest.raises(ConnectionRefusedError):
            await gate.open_tcp_connection((INSIDE, 0), (INTERNET, ports[1]))
        _, writer = await gate.open_tcp_connection((INSIDE, 0), (INTRANET, ports[0]))
        writer.close()
        for _ in range(50):
            if accepted:
                break
            await asyncio.sleep(0.01)
        assert [host for host, _ in accepted] == [INSIDE]
        assert gate.dropped_outbound == 1
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()
