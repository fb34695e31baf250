"""The asyncio shell on real loopback sockets, the ``edgesim serve av-edge`` CLI, and aioice's TURN
client (UDP and TCP) echoing through the relay."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from simulator.core.credentials import CredentialStore
from simulator.net.av_edge import AvEdgeServer
from simulator.wire import msturn, turn
from simulator.wire.framing import MsTurnTcpFramer, Role, client_hello, frame_control, frame_data
from simulator.wire.stun import Address, MessageClass, attr
from simulator.wire.turn import TurnMethod
from tests.av.helpers import MsClient, RfcClient, error_code

HOST = "127.88.4.1"
PEER_HOST = "127.88.4.2"
CLIENT_HOST = "127.88.4.3"
PUBLIC = "203.0.113.77"


class Collector(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.queue.put_nowait((data, addr))

    async def get(self) -> tuple[bytes, Any]:
        return await asyncio.wait_for(self.queue.get(), 3)


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(data, addr)


@asynccontextmanager
async def udp(protocol: asyncio.DatagramProtocol, host: str) -> AsyncIterator[asyncio.DatagramTransport]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: protocol, local_addr=(host, 0))
    try:
        yield transport
    finally:
        transport.close()


def edge(public: str = PUBLIC, **kwargs: Any) -> AvEdgeServer:
    store = CredentialStore()
    store.add_static("alice", "s3cret")
    return AvEdgeServer(HOST, public, udp_port=0, tcp_port=0, credentials=store, realm="lab",
                        first_port=52000, last_port=52099, seed=1, **kwargs)


async def test_udp_allocate_channel_echo_and_real_relay_socket() -> None:
    async with edge(public=HOST) as server:
        assert server.udp_address is not None
        target = tuple(server.udp_address)
        client = Collector()
        async with udp(client, CLIENT_HOST) as ct, udp(Echo(), PEER_HOST) as pt:
            c = RfcClient(username="alice", password="s3cret")
            udp_attr = attr(turn.REQUESTED_TRANSPORT, 17)
            ct.sendto(c.request(TurnMethod.ALLOCATE, udp_attr, auth=False), target)
            assert error_code(c.learn((await client.get())[0])) == 401
            ct.sendto(c.request(TurnMethod.ALLOCATE, udp_attr), target)
            resp = c.learn((await client.get())[0])
            relay = resp.get(turn.XOR_RELAYED_ADDRESS)
            assert relay is not None and relay.host == HOST and 52000 <= relay.port <= 52099
            peer = Address(*pt.get_extra_info("sockname"))
            ct.sendto(c.request(TurnMethod.CHANNEL_BIND, attr(turn.CHANNEL_NUMBER, 0x4000),
                                attr(turn.XOR_PEER_ADDRESS, peer)), target)
            assert c.learn((await client.get())[0]).cls == MessageClass.SUCCESS
            for i in range(20):
                ct.sendto(turn.encode_channel_data(0x4000, b"ping %d" % i), target)
                data, _ = await client.get()
                assert turn.decode_channel_data(data) == (0x4000, b"ping %d" % i)
            metrics = server.metrics()
            assert metrics["allocations_active"] == 1 and metrics["relayed_to_peer"] == 20
            assert metrics["relay_sockets"] == 1
            ct.sendto(c.request(TurnMethod.REFRESH, attr(turn.LIFETIME, 0)), target)
            assert c.learn((await client.get())[0]).get(turn.LIFETIME) == 0
            await asyncio.sleep(0.05)
            assert server.metrics()["relay_sockets"] == 0
    assert not server.running


async def test_msturn_over_tcp_pseudo_tls_public_address_and_active_destination() -> None:
    async with edge() as server, udp(Echo(), PEER_HOST) as pt:
        assert server.tcp_address is not None
        reader, writer = await asyncio.open_connection(*server.tcp_address, local_addr=(CLIENT_HOST, 0))
        framer = MsTurnTcpFramer(Role.CLIENT)

        async def frames(n: int) -> list[Any]:
            got: list[Any] = []
            while len(got) < n:
                got += framer.feed(await asyncio.wait_for(reader.read(4096), 3))
            return got

        try:
            writer.write(client_hello(bytes(32)))
            [hello] = await frames(1)
            assert len(hello.data) == 83
            c = MsClient(version=3)
            writer.write(frame_control(c.request(msturn.MsTurnMethod.ALLOCATE, auth=False)))
            [f] = await frames(1)
            challenge = c.learn(f.data)
            assert challenge.get(msturn.ALTERNATE_SERVER) == Address(PUBLIC, server.tcp_address.port)
            writer.write(frame_control(c.request(msturn.MsTurnMethod.ALLOCATE)))
            [f] = await frames(1)
            resp = c.learn(f.data)
            relay = resp.get(msturn.MAPPED_ADDRESS)
            assert relay is not None and relay.host == PUBLIC  # never the private HOST
            assert resp.get(msturn.XOR_MAPPED_ADDRESS) == Address(CLIENT_HOST, writer.get_extra_info("sockname")[1])
            assert HOST.encode() not in f.data
            peer = Address(*pt.get_extra_info("sockname"))
            writer.write(frame_control(c.request(msturn.MsTurnMethod.SET_ACTIVE_DESTINATION,
                                                 attr(msturn.DESTINATION_ADDRESS, peer), seq=True)))
            [f] = await frames(1)
            assert c.learn(f.data).cls == MessageClass.SUCCESS
            writer.write(frame_data(b"\x80rtp over tcp"))
            [f] = await frames(1)
            assert f.data == b"\x80rtp over tcp"  # echoed by the peer, back as a raw 0x03 frame
        finally:
            writer.close()
            await writer.wait_closed()
        await asyncio.sleep(0.05)
        assert server.metrics()["allocations_active"] == 0


async def test_bind_failure_on_a_held_relay_port_moves_to_the_next_port() -> None:
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        async with edge(public=HOST) as server:
            # take the port the allocator will hand out first
            first = server.ports.pool(HOST, "udp")._fifo[0][1]
            blocker.bind((HOST, first))
            client = Collector()
            async with udp(client, CLIENT_HOST) as ct:
                c = RfcClient(username="alice", password="s3cret")
                udp_attr = attr(turn.REQUESTED_TRANSPORT, 17)
                ct.sendto(c.request(TurnMethod.ALLOCATE, udp_attr, auth=False), tuple(server.udp_address or ()))
                c.learn((await client.get())[0])
                ct.sendto(c.request(TurnMethod.ALLOCATE, udp_attr), tuple(server.udp_address or ()))
                relay = c.learn((await client.get())[0]).get(turn.XOR_RELAYED_ADDRESS)
                assert relay is not None and relay.port != first
                assert server.metrics()["bind_failures"] == 1
    finally:
        blocker.close()


# ---------------------------------------------------------------- CLI + aioice


@asynccontextmanager
async def cli_server(host: str, *extra: str) -> AsyncIterator[tuple[Address, Address]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulator.cli", "serve", "av-edge", "--listen", host, "--public", host,
        "--udp-port", "0", "--tcp-port", "0", "--relay-range", "53000-53199", "--user", "u:p", "--realm", "lab",
        "--seed", "5", *extra, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()
        assert line.startswith("av-edge ready udp="), line
        parts = dict(p.split("=") for p in line.split()[2:])
        u_host, u_port = parts["udp"].rsplit(":", 1)
        t_host, t_port = parts["tcp"].rsplit(":", 1)
        yield Address(u_host, int(u_port)), Address(t_host, int(t_port))
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0, err.decode()
    assert err == b"", err.decode()


async def test_cli_prints_one_ready_line_and_exits_zero_on_sigterm() -> None:
    async with cli_server("127.88.4.10") as (udp_addr, tcp_addr):
        assert udp_addr.host == tcp_addr.host == "127.88.4.10"
        assert udp_addr.port > 0 and tcp_addr.port > 0


@pytest.mark.interop
@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_aioice_turn_client_echoes_100_messages(transport: str) -> None:
    from aioice.turn import create_turn_endpoint

    host = "127.88.4.20" if transport == "udp" else "127.88.4.21"
    async with cli_server(host) as (udp_addr, tcp_addr), udp(Echo(), PEER_HOST) as pt:
        server_addr = udp_addr if transport == "udp" else tcp_addr
        receiver = Collector()
        relay_transport, _ = await create_turn_endpoint(
            lambda: receiver, server_addr=tuple(server_addr), username="u", password="p", lifetime=600,
            transport=transport)
        try:
            relayed = relay_transport.get_extra_info("sockname")
            assert relayed[0] == host and 53000 <= relayed[1] <= 53199
            peer = pt.get_extra_info("sockname")
            got = []
            for i in range(100):
                relay_transport.sendto(b"msg %03d" % i, peer)
                data, addr = await receiver.get()
                got.append(data)
                assert tuple(addr) == tuple(peer)
            assert got == [b"msg %03d" % i for i in range(100)]
        finally:
            relay_transport.close()
            await asyncio.sleep(0.1)
