"""The asyncio shell on real loopback sockets, the ``edgesim serve av-edge`` CLI, and aioice's TURN
client (UDP and TCP) echoing through the relay."""

from __future__ import annotations

import asyncio
import itertools
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvloop

from simulator.core.credentials import CredentialStore
from simulator.net.edge.av_edge import AvEdgeServer, loop_unix_time, unix_loop_clock
from simulator.wire import msturn, turn
from simulator.wire.framing import MsTurnTcpFramer, Role, TurnTcpFramer, client_hello, frame_control, frame_data
from simulator.wire.stun import Address, Attribute, Message, MessageClass, attr
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


# ---------------------------------------------------------------- clock and timer


async def udp_allocate(c: RfcClient, sock: asyncio.DatagramTransport, inbox: Collector, target: tuple[Any, ...],
                       *extra: Attribute) -> Message:
    """Allocate → 401 → authenticated Allocate of a UDP relay; returns the success response."""
    udp_attr = attr(turn.REQUESTED_TRANSPORT, 17)
    sock.sendto(c.request(TurnMethod.ALLOCATE, udp_attr, *extra, auth=False), target)
    assert error_code(c.learn((await inbox.get())[0])) == 401
    sock.sendto(c.request(TurnMethod.ALLOCATE, udp_attr, *extra), target)
    resp = c.learn((await inbox.get())[0])
    assert resp.cls == MessageClass.SUCCESS, error_code(resp)
    return resp


async def until(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    """Poll every millisecond (the tolerances below are 100 ms) until ``condition()`` holds."""
    async with asyncio.timeout(timeout):
        for _ in itertools.count():  # a state change no callback reports: poll
            if condition():
                return
            await asyncio.sleep(0.001)


async def test_allocation_expires_at_its_deadline_though_the_timer_was_armed_later() -> None:
    """An allocation whose deadline comes before the armed timer still expires on it, within 100 ms (the shell
    re-arms when a request moves the core's next deadline earlier), and its relay socket is closed."""
    async with edge(public=HOST, config={"default_lifetime": 1}) as server, udp(Echo(), PEER_HOST) as pt:
        assert server.udp_address is not None
        target = tuple(server.udp_address)
        hour_box, second_box = Collector(), Collector()
        async with udp(hour_box, CLIENT_HOST) as hour_t, udp(second_box, CLIENT_HOST) as second_t:
            await udp_allocate(RfcClient(), hour_t, hour_box, target, attr(turn.LIFETIME, 3600))
            armed = server.core.get_timer()  # the cached Allocate answer, 40 s on: what the shell armed
            assert armed is not None and armed > server.time() + 30
            c = RfcClient()
            resp = await udp_allocate(c, second_t, second_box, target)
            assert resp.get(turn.LIFETIME) == 1
            relay = resp.get(turn.XOR_RELAYED_ADDRESS)
            assert relay is not None
            peer = Address(*pt.get_extra_info("sockname"))
            # a permission attaches the relay socket to the loop: the common case, closed through its transport
            second_t.sendto(c.request(TurnMethod.CREATE_PERMISSION, attr(turn.XOR_PEER_ADDRESS, peer)), target)
            assert c.learn((await second_box.get())[0]).cls == MessageClass.SUCCESS
            [short] = [a for a in server.core.allocations() if a.lease.port == relay.port]
            assert short.expires < armed
            await until(lambda: server.core.allocation_count == 1)
            late = server.time() - short.expires
            assert 0 <= late < 0.1, late  # RFC 8656 §7: deleted when its lifetime ends
            await asyncio.sleep(0.01)  # a transport closes its socket on the next loop iteration
            assert server.metrics()["relay_sockets"] == 1
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.bind((HOST, relay.port))  # the relay socket is really closed: its port binds again


async def test_connection_bind_timeout_closes_the_peer_connection_on_time() -> None:
    """RFC 6062 §5.3: a peer connection with no ConnectionBind is closed when the timeout ends, within 100 ms
    even for a deadline under a second (the old shell armed at most 1 s ahead and closed it up to 1 s late)."""
    accepted: asyncio.Queue[float] = asyncio.Queue()
    closed: asyncio.Queue[float] = asyncio.Queue()

    async with edge(public=HOST, config={"connection_bind_timeout": 0.3}) as server:
        async def on_peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.put_nowait(server.time())
            await reader.read()  # until the Edge closes it
            closed.put_nowait(server.time())
            writer.close()

        peer_server = await asyncio.start_server(on_peer, PEER_HOST, 0)
        assert server.tcp_address is not None
        reader, writer = await asyncio.open_connection(*server.tcp_address, local_addr=(CLIENT_HOST, 0))
        framer = TurnTcpFramer()

        async def answer() -> Message:
            while True:
                frames = framer.feed(await asyncio.wait_for(reader.read(4096), 3))
                if frames:
                    [frame] = frames
                    return c.learn(frame.data)

        try:
            c = RfcClient()
            tcp_attr = attr(turn.REQUESTED_TRANSPORT, 6)
            writer.write(c.request(TurnMethod.ALLOCATE, tcp_attr, auth=False))
            assert error_code(await answer()) == 401
            writer.write(c.request(TurnMethod.ALLOCATE, tcp_attr))
            assert (await answer()).cls == MessageClass.SUCCESS
            peer = Address(*peer_server.sockets[0].getsockname()[:2])
            sent = server.time()
            writer.write(c.request(TurnMethod.CONNECT, attr(turn.XOR_PEER_ADDRESS, peer)))
            resp = await answer()
            assert resp.cls == MessageClass.SUCCESS and resp.get(turn.CONNECTION_ID) is not None
            await asyncio.wait_for(accepted.get(), 3)
            gone = await asyncio.wait_for(closed.get(), 3)
            # The deadline is the Connect's arrival + 0.3 s (in the core's arithmetic): not before sent + 0.3 s,
            # and not much later.
            assert sent + 0.3 <= gone < sent + 0.3 + 0.1, gone - sent
        finally:
            writer.close()
            await writer.wait_closed()
            peer_server.close()
            await peer_server.wait_closed()


@pytest.mark.parametrize("test", [test_allocation_expires_at_its_deadline_though_the_timer_was_armed_later,
                                  test_connection_bind_timeout_closes_the_peer_connection_on_time])
def test_timers_fire_on_time_on_uvloop(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """The same on uvloop, which ``edgesim serve`` runs: it rounds ``call_at`` delays to whole milliseconds, so a
    handle can fire before its deadline (the shell then waits a millisecond more)."""
    uvloop.run(test())


async def test_a_wall_clock_step_back_moves_neither_now_nor_the_relay_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    """An NTP step of the wall clock after start: the core's time comes from the loop's clock, so the relay
    port pools, which refuse a ``now`` that goes backwards, keep allocating (the old shell read time.time)."""
    real = time.time
    step = [0.0]
    monkeypatch.setattr(time, "time", lambda: real() - step[0])
    async with edge(public=HOST) as server:
        assert server.udp_address is not None
        target = tuple(server.udp_address)
        first_box, second_box = Collector(), Collector()
        async with udp(first_box, CLIENT_HOST) as first_t, udp(second_box, CLIENT_HOST) as second_t:
            first = RfcClient()
            await udp_allocate(first, first_t, first_box, target)
            step[0] = 3600.0  # the wall clock goes back an hour
            await udp_allocate(RfcClient(), second_t, second_box, target)
            first_t.sendto(first.request(TurnMethod.REFRESH, attr(turn.LIFETIME, 0)), target)
            assert first.learn((await first_box.get())[0]).get(turn.LIFETIME) == 0
            assert server.core.allocation_count == 1


async def test_every_edge_and_mras_on_one_loop_read_one_unix_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool's A/V Edges and MRAS (``loop_unix_time``, what the lab hands it) share one offset, even across a
    wall-clock step between two starts: a credential MRAS stamps and the time an Edge checks it at, and the
    shared pool NAT's ``now``, come from one clock."""
    loop = asyncio.get_running_loop()
    clock = unix_loop_clock()
    assert abs(clock() - time.time()) < 0.5  # Unix seconds
    real = time.time
    async with edge(public=HOST) as first:
        monkeypatch.setattr(time, "time", lambda: real() + 5.0)  # NTP steps the wall clock between two starts
        async with AvEdgeServer(PEER_HOST, PEER_HOST, udp_port=0, tcp_port=0) as second:
            assert first.clock.offset == second.clock.offset == unix_loop_clock(loop).offset == clock.offset
            assert first.time() <= loop_unix_time() <= second.time() < first.time() + 1
    now = loop.time()
    assert clock.loop_time(now + clock.offset) == pytest.approx(now, abs=1e-6)  # Unix deadline → call_at time


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_the_timer_is_armed_at_exactly_the_core_deadline_and_only_then(transport: str) -> None:
    async with edge(public=HOST) as server:
        assert server.udp_address is not None and server.tcp_address is not None
        assert server.timer_deadline is None  # idle: nothing pending, no wake-ups
        c = RfcClient()
        if transport == "udp":
            box = Collector()
            async with udp(box, CLIENT_HOST) as sock:
                target = tuple(server.udp_address)
                await udp_allocate(c, sock, box, target)
                assert server.timer_deadline == server.core.get_timer()  # the cached answer, 40 s on
                sock.sendto(c.request(TurnMethod.REFRESH, attr(turn.LIFETIME, 0)), target)
                assert c.learn((await box.get())[0]).get(turn.LIFETIME) == 0
                assert server.timer_deadline == server.core.get_timer()
        else:
            reader, writer = await asyncio.open_connection(*server.tcp_address, local_addr=(CLIENT_HOST, 0))
            framer = TurnTcpFramer()
            try:
                for auth in (False, True):
                    writer.write(c.request(TurnMethod.ALLOCATE, attr(turn.REQUESTED_TRANSPORT, 17), auth=auth))
                    frames: list[Any] = []
                    while not frames:
                        frames = framer.feed(await asyncio.wait_for(reader.read(4096), 3))
                    c.learn(frames[0].data)
                assert server.core.allocation_count == 1
                assert server.timer_deadline == server.core.get_timer()
            finally:
                writer.close()
                await writer.wait_closed()
    assert server.timer_deadline is None


# ---------------------------------------------------------------- CLI + aioice


@asynccontextmanager
async def cli_server(host: str, *extra: str) -> AsyncIterator[tuple[Address, Address]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulator.cli", "serve", "av-edge", "--listen", host, "--public", host,
        "--udp-port", "0", "--tcp-port", "0", "--relay-range", "53000-53199", "--user", "u:p", "--realm", "lab",
        "--seed", "5", "--workers", "1", *extra, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
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
