"""The NAT box's in-process endpoints through real loopback sockets: what servers see, what gets in."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from simulator.core.nat import Behaviour, DropReason
from simulator.net.nat.natbox import DatapathDrop, EndpointClosed, NatBox
from tests.nat.conftest import TEST_PORT_RANGE, UdpServer, loopback_ip, wait_until

EI, AD, APD = Behaviour.ENDPOINT_INDEPENDENT, Behaviour.ADDRESS_DEPENDENT, Behaviour.ADDRESS_AND_PORT_DEPENDENT
CLIENT = ("10.77.0.1", 40000)
OTHER_CLIENT = ("10.77.0.2", 40000)
RECV_TIMEOUT = 2.0

NatBoxes = Callable[..., Awaitable[NatBox]]
UdpServers = Callable[..., Awaitable[UdpServer]]


async def recv(endpoint: object) -> tuple[bytes, tuple[str, int]]:
    return await asyncio.wait_for(endpoint.recv(), RECV_TIMEOUT)  # type: ignore[attr-defined]


async def test_packets_leave_from_the_public_address_and_replies_come_back(
    nat_boxes: NatBoxes, udp_servers: UdpServers
) -> None:
    box = await nat_boxes()
    server = await udp_servers(loopback_ip())
    endpoint = await box.open_udp(CLIENT)

    endpoint.sendto(b"ping", server.address)

    assert await recv(endpoint) == (b"ping", server.address)
    mapped = endpoint.mapped_address(server.address)
    assert server.seen == [(b"ping", mapped)]
    assert mapped is not None and mapped[0] == box.public_ip
    assert TEST_PORT_RANGE[0] <= mapped[1] <= TEST_PORT_RANGE[1]
    assert (box.counters.sent, box.counters.received, box.counters.delivered) == (1, 1, 1)
    assert box.counters.sockets_opened == 1


async def test_callback_endpoint_and_port_zero(nat_boxes: NatBoxes, udp_servers: UdpServers) -> None:
    box = await nat_boxes()
    server = await udp_servers(loopback_ip())
    got: list[tuple[bytes, tuple[str, int]]] = []
    endpoint = await box.open_udp((CLIENT[0], 0), lambda data, src: got.append((data, src)))

    endpoint.sendto(b"x", server.address)

    await wait_until(lambda: bool(got))
    assert got == [(b"x", server.address)]
    assert endpoint.internal_address[1] != 0


@pytest.mark.parametrize(
    ("mapping", "same_ip_other_port_shares", "other_ip_shares"),
    [(EI, True, True), (AD, True, False), (APD, False, False)],
    ids=["EIM", "ADM", "APDM"],
)
async def test_mapping_reuse_per_behaviour(
    nat_boxes: NatBoxes,
    udp_servers: UdpServers,
    mapping: Behaviour,
    same_ip_other_port_shares: bool,
    other_ip_shares: bool,
) -> None:
    box = await nat_boxes(mapping=mapping)
    first_ip, second_ip = loopback_ip(), loopback_ip()
    first = await udp_servers(first_ip)
    same_ip_other_port = await udp_servers(first_ip)
    other_ip = await udp_servers(second_ip)
    endpoint = await box.open_udp(CLIENT)

    for server in (first, same_ip_other_port, other_ip, first):
        endpoint.sendto(b"m", server.address)
        await recv(endpoint)

    seen_first = first.sources()
    assert seen_first[0] == seen_first[1], "RFC 4787 §4.1: a live binding is reused for the same destination"
    assert (same_ip_other_port.sources()[0] == seen_first[0]) is same_ip_other_port_shares
    assert (other_ip.sources()[0] == seen_first[0]) is other_ip_shares
    expected_bindings = 1 + (not same_ip_other_port_shares) + (not other_ip_shares)
    assert box.table.bindings_created == expected_bindings
    assert box.counters.sockets_opened == expected_bindings


@pytest.mark.parametrize(
    ("filtering", "same_ip_other_port_gets_in", "other_ip_gets_in"),
    [(EI, True, True), (AD, True, False), (APD, False, False)],
    ids=["EIF", "ADF", "APDF"],
)
async def test_filtering_of_unsolicited_inbound(
    nat_boxes: NatBoxes,
    udp_servers: UdpServers,
    filtering: Behaviour,
    same_ip_other_port_gets_in: bool,
    other_ip_gets_in: bool,
) -> None:
    box = await nat_boxes(filtering=filtering)
    first_ip = loopback_ip()
    contacted = await udp_servers(first_ip, echo=False)
    same_ip_other_port = await udp_servers(first_ip, echo=False)
    other_ip = await udp_servers(loopback_ip(), echo=False)
    endpoint = await box.open_udp(CLIENT)
    endpoint.sendto(b"hello", contacted.address)
    await wait_until(lambda: bool(contacted.seen))
    mapped = contacted.sources()[0]

    same_ip_other_port.send(b"same-ip", mapped)
    other_ip.send(b"other-ip", mapped)
    expected_filtered = (not same_ip_other_port_gets_in) + (not other_ip_gets_in)
    await wait_until(lambda: box.counters.received == 2)
    contacted.send(b"contacted", mapped)  # always admitted: the endpoint sent to exactly this address

    got = []
    for _ in range(3 - expected_filtered):
        got.append(await recv(endpoint))
    assert sorted(got) == sorted(
        [(b"contacted", contacted.address)]
        + ([(b"same-ip", same_ip_other_port.address)] if same_ip_other_port_gets_in else [])
        + ([(b"other-ip", other_ip.address)] if other_ip_gets_in else [])
    )
    assert box.table.drops[DropReason.FILTERED] == expected_filtered


async def test_inbound_to_an_unbound_port_never_reaches_the_box(
    nat_boxes: NatBoxes, udp_servers: UdpServers
) -> None:
    """No binding, no socket: the public port is closed, exactly like a NAT with no mapping."""
    box = await nat_boxes()
    server = await udp_servers(loopback_ip(), echo=False)
    endpoint = await box.open_udp(CLIENT)
    endpoint.sendto(b"hello", server.address)
    await wait_until(lambda: bool(server.seen))
    mapped = server.sources()[0]
    unbound = (box.public_ip, TEST_PORT_RANGE[0] + (mapped[1] - TEST_PORT_RANGE[0] + 1) % 1000)

    server.send(b"stray", unbound)
    server.send(b"reply", mapped)

    assert await recv(endpoint) == (b"reply", server.address)
    assert box.counters.received == 1


async def test_binding_times_out_and_its_socket_closes(nat_boxes: NatBoxes, udp_servers: UdpServers) -> None:
    box = await nat_boxes(udp_binding_timeout=0.3, port_preservation=False)
    server = await udp_servers(loopback_ip())
    endpoint = await box.open_udp(CLIENT)
    endpoint.sendto(b"one", server.address)
    await recv(endpoint)
    first_mapping = server.sources()[0]

    await wait_until(lambda: box.counters.sockets_closed == 1, timeout=2.0)
    assert box.table.bindings_expired == 1
    assert endpoint.mapped_address(server.address) is None
    server.send(b"late", first_mapping)  # the port is closed now: nothing can come in

    endpoint.sendto(b"two", server.address)
    assert await recv(endpoint) == (b"two", server.address)
    second_mapping = server.sources()[-1]
    assert second_mapping != first_mapping  # RFC 4787 §4.3: a new binding after the timeout
    assert box.table.bindings_created == 2
    assert box.counters.received == 2  # "one" and "two" echoes; "late" never reached a socket


async def test_outbound_traffic_keeps_the_binding_alive(nat_boxes: NatBoxes, udp_servers: UdpServers) -> None:
    box = await nat_boxes(udp_binding_timeout=0.3)
    server = await udp_servers(loopback_ip(), echo=False)
    endpoint = await box.open_udp(CLIENT)
    for _ in range(6):  # 0.6 s in all, twice the timeout
        endpoint.sendto(b"keepalive", server.address)
        await asyncio.sleep(0.1)
    await wait_until(lambda: len(server.seen) == 6)
    assert len(set(server.sources())) == 1  # RFC 4787 §4.3 REQ-6: outbound packets refresh
    assert box.table.bindings_expired == 0


@pytest.mark.parametrize("hairpin", [True, False], ids=["hairpin", "no-hairpin"])
async def test_hairpin(nat_boxes: NatBoxes, udp_servers: UdpServers, hairpin: bool) -> None:
    box = await nat_boxes(hairpin=hairpin)
    server = await udp_servers(loopback_ip(), echo=False)
    alice = await box.open_udp(CLIENT)
    bob = await box.open_udp(OTHER_CLIENT)
    alice.sendto(b"a", server.address)
    bob.sendto(b"b", server.address)
    await wait_until(lambda: len(server.seen) == 2)
    alice_public = alice.mapped_address(server.address)
    bob_public = bob.mapped_address(server.address)
    assert alice_public is not None and bob_public is not None

    bob.sendto(b"to alice", alice_public)

    if hairpin:
        # RFC 4787 §6 REQ-9: the receiver sees the sender's external address
        assert await recv(alice) == (b"to alice", bob_public)
        assert box.counters.hairpinned == 1
    else:
        assert box.table.drops[DropReason.HAIRPIN_DENIED] == 1
        assert box.counters.hairpinned == 0
    assert box.counters.sent == 2  # a hairpin never leaves the box


@pytest.mark.parametrize("preserve", [True, False], ids=["preserved", "not-preserved"])
async def test_port_preservation(nat_boxes: NatBoxes, udp_servers: UdpServers, preserve: bool) -> None:
    box = await nat_boxes(port_preservation=preserve)
    server = await udp_servers(loopback_ip(), echo=False)
    internal = ("10.77.0.3", TEST_PORT_RANGE[0] + 500)
    endpoint = await box.open_udp(internal)
    endpoint.sendto(b"p", server.address)
    await wait_until(lambda: bool(server.seen))
    assert (server.sources()[0][1] == internal[1]) is preserve  # RFC 4787 §4.2.1


async def test_inside_hosts_reach_each_other_directly(nat_boxes: NatBoxes) -> None:
    box = await nat_boxes()
    alice = await box.open_udp(CLIENT)
    bob = await box.open_udp(OTHER_CLIENT)
    alice.sendto(b"lan", OTHER_CLIENT)
    assert await recv(bob) == (b"lan", CLIENT)
    assert box.counters.lan == 1
    assert box.table.bindings_created == 0


async def test_destinations_off_loopback_are_never_sent(nat_boxes: NatBoxes) -> None:
    box = await nat_boxes()
    endpoint = await box.open_udp(CLIENT)
    endpoint.sendto(b"x", ("192.0.2.1", 9))
    assert box.counters.drops[DatapathDrop.DESTINATION_NOT_ALLOWED] == 1
    assert box.table.bindings_created == 0
    assert box.counters.sockets_opened == 0


async def test_stop_closes_endpoints_and_sockets(nat_boxes: NatBoxes, udp_servers: UdpServers) -> None:
    box = await nat_boxes(mapping=APD)
    server = await udp_servers(loopback_ip())
    endpoint = await box.open_udp(CLIENT)
    endpoint.sendto(b"x", server.address)
    await recv(endpoint)
    pending = asyncio.ensure_future(endpoint.recv())
    await asyncio.sleep(0)

    await box.stop()

    with pytest.raises(EndpointClosed):
        await asyncio.wait_for(pending, RECV_TIMEOUT)
    assert box.counters.sockets_closed == box.counters.sockets_opened == 1
    with pytest.raises(EndpointClosed):
        endpoint.sendto(b"y", server.address)
    with pytest.raises(EndpointClosed):
        await box.open_udp(OTHER_CLIENT)


async def test_open_udp_refuses_taken_addresses(nat_boxes: NatBoxes) -> None:
    box = await nat_boxes()
    await box.open_udp(CLIENT)
    with pytest.raises(ValueError):
        await box.open_udp(CLIENT)
    with pytest.raises(ValueError):
        await box.open_udp((box.public_ip, 1))


@pytest.mark.parametrize(("mapping", "shared"), [(EI, True), (APD, False)], ids=["EIM", "APDM"])
async def test_tcp_connections_come_from_the_mapped_address(
    nat_boxes: NatBoxes, mapping: Behaviour, shared: bool
) -> None:
    box = await nat_boxes(mapping=mapping)
    peers: list[tuple[str, int]] = []

    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer.get_extra_info("peername")[:2])
        writer.write(await reader.readexactly(5))
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    servers = [await asyncio.start_server(greet, loopback_ip(), 0) for _ in range(2)]
    try:
        for server in servers:
            dst = server.sockets[0].getsockname()[:2]
            reader, writer = await box.open_tcp_connection(CLIENT, dst)
            writer.write(b"hello")
            assert await asyncio.wait_for(reader.readexactly(5), RECV_TIMEOUT) == b"hello"
            writer.close()
            await writer.wait_closed()
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()
    assert [ip for ip, _ in peers] == [box.public_ip, box.public_ip]
    assert (peers[0][1] == peers[1][1]) is shared
    assert box.counters.tcp_connections == 2


async def test_tcp_refuses_destinations_off_loopback(nat_boxes: NatBoxes) -> None:
    box = await nat_boxes()
    with pytest.raises(ConnectionRefusedError):
        await box.open_tcp_connection(CLIENT, ("192.0.2.1", 443))
    assert box.table.bindings_created == 0
