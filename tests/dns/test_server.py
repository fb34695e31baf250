"""The asyncio DNS server on loopback: UDP and TCP on one port, framing, malformed input, lifecycle."""

from __future__ import annotations

import asyncio
import random
import struct

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import pytest

from simulator.core.dns_zone import Zone
from simulator.net.peers.dns import DnsServer
from tests.dns.conftest import BIG_NAME_ADDRESSES, CLIENT_HOST, DNS_SERVER_HOST, POOL_NODES

TIMEOUT = 2.0


def a_addresses(response: dns.message.Message) -> list[str]:
    return [rdata.address for rrset in response.answer for rdata in rrset if rrset.rdtype == 1]


async def udp_query(server: DnsServer, name: str, rdtype: str = "A") -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    return await dns.asyncquery.udp(query, server.host, timeout=TIMEOUT, port=server.port, source=CLIENT_HOST)


async def tcp_query(server: DnsServer, name: str, rdtype: str = "A") -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    return await dns.asyncquery.tcp(query, server.host, timeout=TIMEOUT, port=server.port, source=CLIENT_HOST)


class _Collector(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.datagrams: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.datagrams.put_nowait(data)


async def send_raw_udp(server: DnsServer, payloads: list[bytes], expect_replies: int) -> list[bytes]:
    loop = asyncio.get_running_loop()
    transport, collector = await loop.create_datagram_endpoint(
        _Collector, local_addr=(CLIENT_HOST, 0), remote_addr=server.address
    )
    try:
        for payload in payloads:
            transport.sendto(payload)
        return [await asyncio.wait_for(collector.datagrams.get(), TIMEOUT) for _ in range(expect_replies)]
    finally:
        transport.close()


async def read_framed(reader: asyncio.StreamReader) -> bytes:
    (length,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), TIMEOUT))
    return await asyncio.wait_for(reader.readexactly(length), TIMEOUT)


async def test_udp_and_tcp_share_one_port_and_answer_the_zone(dns_server: DnsServer) -> None:
    assert dns_server.port > 0
    assert a_addresses(await udp_query(dns_server, "sip.contoso.com")) == POOL_NODES
    assert a_addresses(await tcp_query(dns_server, "sip.contoso.com")) == POOL_NODES
    srv = await tcp_query(dns_server, "_sipfederationtls._tcp.contoso.com", "SRV")
    assert [rdata.port for rrset in srv.answer for rdata in rrset] == [5061]
    assert dns_server.counters.queries == {("udp", "A"): 1, ("tcp", "A"): 1, ("tcp", "SRV"): 1}


async def test_large_answer_sets_tc_over_udp_and_is_whole_over_tcp(dns_server: DnsServer) -> None:
    query = dns.message.make_query("big.contoso.com", "A")
    udp = await dns.asyncquery.udp(query, dns_server.host, timeout=TIMEOUT, port=dns_server.port)
    assert udp.flags & dns.flags.TC
    tcp = await tcp_query(dns_server, "big.contoso.com")
    assert not tcp.flags & dns.flags.TC
    assert a_addresses(tcp) == BIG_NAME_ADDRESSES
    assert dns_server.counters.truncated == 1


async def test_several_queries_on_one_tcp_connection_pipelined_and_split(dns_server: DnsServer) -> None:
    reader, writer = await asyncio.open_connection(
        dns_server.host, dns_server.port, local_addr=(CLIENT_HOST, 0)
    )
    try:
        names = ["sip.contoso.com", "av.contoso.com", "webconf.contoso.com"]
        queries = [dns.message.make_query(name, "A") for name in names]
        stream = b"".join(struct.pack("!H", len(q.to_wire())) + q.to_wire() for q in queries)
        # RFC 7766 §6.2.1.1: pipelined queries; delivered in small pieces to exercise framing.
        for start in range(0, len(stream), 7):
            writer.write(stream[start : start + 7])
            await writer.drain()
            await asyncio.sleep(0)
        for query in queries:
            response = dns.message.from_wire(await read_framed(reader))
            assert response.id == query.id
            assert len(a_addresses(response)) == 3
    finally:
        writer.close()
        await writer.wait_closed()
    assert dns_server.counters.tcp_connections == 1


async def test_random_bytes_over_udp_do_not_stop_the_listener(dns_server: DnsServer) -> None:
    rng = random.Random(20240607)
    garbage = [rng.randbytes(rng.randrange(0, 300)) for _ in range(200)]
    garbage += [b"", b"\x00", bytes(11)]
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=(CLIENT_HOST, 0), remote_addr=dns_server.address
    )
    try:
        for payload in garbage:
            transport.sendto(payload)
    finally:
        transport.close()
    assert a_addresses(await udp_query(dns_server, "sip.contoso.com")) == POOL_NODES
    assert dns_server.counters.malformed >= 3
    assert dns_server.counters.malformed == dns_server.counters.formerr_sent + dns_server.counters.dropped


async def test_formerr_comes_back_over_udp_with_the_query_id(dns_server: DnsServer) -> None:
    garbage = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + b"\x3f"
    (reply,) = await send_raw_udp(dns_server, [garbage], expect_replies=1)
    response = dns.message.from_wire(reply)
    assert response.id == 0x4242
    assert response.rcode() == dns.rcode.FORMERR


async def test_random_bytes_over_tcp_do_not_stop_the_listener(dns_server: DnsServer) -> None:
    rng = random.Random(7766)
    for _ in range(20):
        reader, writer = await asyncio.open_connection(dns_server.host, dns_server.port)
        writer.write(rng.randbytes(rng.randrange(1, 400)))
        await writer.drain()
        writer.close()
        await writer.wait_closed()
    # Well-framed garbage on one connection: FORMERR, then the same connection still answers.
    reader, writer = await asyncio.open_connection(dns_server.host, dns_server.port)
    try:
        body = struct.pack("!HHHHHH", 0x0101, 0x0100, 1, 0, 0, 0) + b"\xc0\xff"
        writer.write(struct.pack("!H", len(body)) + body)
        good = dns.message.make_query("av.contoso.com", "A")
        writer.write(struct.pack("!H", len(good.to_wire())) + good.to_wire())
        await writer.drain()
        assert dns.message.from_wire(await read_framed(reader)).rcode() == dns.rcode.FORMERR
        assert len(a_addresses(dns.message.from_wire(await read_framed(reader)))) == 3
    finally:
        writer.close()
        await writer.wait_closed()
    assert a_addresses(await tcp_query(dns_server, "sip.contoso.com")) == POOL_NODES


async def test_idle_tcp_connection_is_closed_by_the_server(lab_zone: Zone) -> None:
    async with DnsServer(lab_zone, DNS_SERVER_HOST, tcp_idle_timeout=0.2) as server:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        try:
            assert await asyncio.wait_for(reader.read(1), TIMEOUT) == b""  # EOF from the server
        finally:
            writer.close()
            await writer.wait_closed()


async def test_stop_closes_open_connections_and_frees_the_port(lab_zone: Zone) -> None:
    server = DnsServer(lab_zone, DNS_SERVER_HOST)
    await server.start()
    port = server.port
    reader, writer = await asyncio.open_connection(server.host, port)
    try:
        await asyncio.sleep(0.05)
        await asyncio.wait_for(server.stop(), TIMEOUT)
        assert await asyncio.wait_for(reader.read(1), TIMEOUT) == b""
    finally:
        writer.close()
        await writer.wait_closed()
    with pytest.raises(RuntimeError):
        _ = server.port
    with pytest.raises(OSError):
        await asyncio.open_connection(DNS_SERVER_HOST, port)
    # The same port can be bound again (sockets really closed).
    async with DnsServer(lab_zone, DNS_SERVER_HOST, port) as again:
        assert a_addresses(await udp_query(again, "sip.contoso.com")) == POOL_NODES


async def test_round_robin_shuffle_on_the_wire(lab_zone: Zone) -> None:
    async with DnsServer(lab_zone, DNS_SERVER_HOST, shuffle_rng=random.Random(5)) as server:
        orders = {tuple(a_addresses(await udp_query(server, "sip.contoso.com"))) for _ in range(30)}
    assert len(orders) > 1
    assert all(sorted(order) == POOL_NODES for order in orders)
