"""Relay sockets are attached to the loop at the allocation's first permission (RelayBinder.listen).

What a peer sends before that is dropped, counted, and never relayed, exactly as when the socket was read
on arrival: at ``listen`` (then the permission goes in) or at close when no permission ever came.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable

from simulator.wire import turn
from simulator.wire.stun import Address, MessageClass, attr
from simulator.wire.turn import TurnMethod
from tests.av.helpers import RfcClient, error_code, make_harness
from tests.av.test_av_edge import CLIENT_HOST, HOST, PEER_HOST, Collector, edge, udp

UDP = attr(turn.REQUESTED_TRANSPORT, 17)
SO_MEMINFO = 55  # Linux <asm-generic/socket.h>; the answer is u32[SK_MEMINFO_VARS], RMEM_ALLOC first
WAIT_S = 5.0  # a bound for a slow machine; every wait ends as soon as its condition holds


async def eventually(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    """Poll ``condition`` until it holds, yielding to the loop in between (1 ms, doubling to 50 ms)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.001
    while not condition():
        if loop.time() >= deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(delay)
        delay = min(2 * delay, 0.05)


def queued_memory(sock: socket.socket) -> int:
    """What the kernel holds unread for ``sock`` (bytes of buffers): grows with each datagram queued."""
    return struct.unpack_from("I", sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * 9))[0]


async def send_while_unread(peer: socket.socket, relay: socket.socket, target: tuple[str, int],
                            payloads: list[bytes]) -> None:
    """Send each payload and wait until it sits unread in the relay socket's queue.

    Each send is followed by at least one turn of the loop, so a server that read the socket before its
    first permission would read the datagram there: the queue would not grow and this fails at the deadline.
    """
    for payload in payloads:
        before = queued_memory(relay)
        peer.sendto(payload, target)
        await asyncio.sleep(0)
        await eventually(lambda before=before: queued_memory(relay) > before,
                         f"{payload!r} queued, unread, on the relay socket")


async def _allocate(ct: asyncio.DatagramTransport, client: Collector, c: RfcClient, target: tuple[str, int]) -> Address:
    ct.sendto(c.request(TurnMethod.ALLOCATE, UDP, auth=False), target)
    assert error_code(c.learn((await client.get())[0])) == 401
    ct.sendto(c.request(TurnMethod.ALLOCATE, UDP), target)
    relay = c.learn((await client.get())[0]).get(turn.XOR_RELAYED_ADDRESS)
    assert relay is not None
    return relay


async def test_peer_data_before_the_first_permission_is_dropped_then_relayed_after() -> None:
    async with edge(public=HOST) as server:
        assert server.udp_address is not None
        target = (server.udp_address.host, server.udp_address.port)
        client = Collector()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind((PEER_HOST, 0))
            peer.setblocking(False)
            async with udp(client, CLIENT_HOST) as ct:
                c = RfcClient(username="alice", password="s3cret")
                relay = await _allocate(ct, client, c, target)
                relay_state = server._binder.relays[("udp", relay.port)]
                # nobody has a permission: these must never reach the client
                await send_while_unread(peer, relay_state.sock, tuple(relay), [b"early %d" % i for i in range(5)])
                assert server.metrics()["dropped"] == 0  # queued in the kernel, not read yet
                ct.sendto(c.request(TurnMethod.CHANNEL_BIND, attr(turn.CHANNEL_NUMBER, 0x4000),
                                    attr(turn.XOR_PEER_ADDRESS, Address(*peer.getsockname()))), target)
                assert c.learn((await client.get())[0]).cls == MessageClass.SUCCESS
                assert server.metrics()["dropped"] == 5  # read at listen, before the permission went in
                await eventually(lambda: relay_state.transport is not None, "the relay attached to the loop")
                peer.sendto(b"late", tuple(relay))
                data, _ = await client.get()
                assert turn.decode_channel_data(data) == (0x4000, b"late")
                assert client.queue.empty()


async def test_peer_data_to_an_allocation_that_never_had_a_permission_is_counted_at_close() -> None:
    async with edge(public=HOST) as server:
        assert server.udp_address is not None
        target = (server.udp_address.host, server.udp_address.port)
        client = Collector()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind((PEER_HOST, 0))
            async with udp(client, CLIENT_HOST) as ct:
                c = RfcClient(username="alice", password="s3cret")
                relay = await _allocate(ct, client, c, target)
                relay_state = server._binder.relays[("udp", relay.port)]
                assert relay_state.task is None  # not attached
                await send_while_unread(peer, relay_state.sock, tuple(relay), [b"early %d" % i for i in range(3)])
                assert server.metrics()["dropped"] == 0
                ct.sendto(c.request(TurnMethod.REFRESH, attr(turn.LIFETIME, 0)), target)
                assert c.learn((await client.get())[0]).get(turn.LIFETIME) == 0
                metrics = server.metrics()
                assert metrics["dropped"] == 3 and metrics["relay_sockets"] == 0
                assert client.queue.empty()


def test_core_calls_listen_once_at_the_first_permission_and_never_without_one() -> None:
    h = make_harness()
    c = RfcClient()
    [challenge] = h.to_client(c.request(TurnMethod.ALLOCATE, UDP, auth=False))
    c.learn(challenge)
    [ok] = h.to_client(c.request(TurnMethod.ALLOCATE, UDP))
    port = c.learn(ok).get(turn.XOR_RELAYED_ADDRESS).port  # type: ignore[union-attr]
    assert h.binder.listening == set()
    for peer in (Address("192.0.2.1", 1000), Address("192.0.2.2", 1000)):
        h.to_client(c.request(TurnMethod.CREATE_PERMISSION, attr(turn.XOR_PEER_ADDRESS, peer)))
        assert h.binder.listening == {("udp", port)}  # FakeBinder asserts it is called once
    h.to_client(c.request(TurnMethod.REFRESH, attr(turn.LIFETIME, 0)))
    assert h.binder.listening == set()


def _readable(sock: socket.socket) -> bool:
    try:
        return bool(sock.recv(100, socket.MSG_PEEK))
    except BlockingIOError:
        return False


async def test_channel_data_then_refresh_0_in_one_wake_up_still_reaches_the_peer() -> None:
    """The listener reads many datagrams per wake-up and sends once per wake-up: data relayed before a Refresh(0)
    deleted the allocation must still leave (RFC 8656 §12.4: relayed in the order received), though its relay
    socket closes within the same batch."""
    async with edge(public=HOST) as server:
        assert server.udp_address is not None
        target = (server.udp_address.host, server.udp_address.port)
        client = Collector()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind((PEER_HOST, 0))
            peer.setblocking(False)
            async with udp(client, CLIENT_HOST) as ct:
                c = RfcClient(username="alice", password="s3cret")
                await _allocate(ct, client, c, target)
                ct.sendto(c.request(TurnMethod.CHANNEL_BIND, attr(turn.CHANNEL_NUMBER, 0x4000),
                                    attr(turn.XOR_PEER_ADDRESS, Address(*peer.getsockname()))), target)
                assert c.learn((await client.get())[0]).cls == MessageClass.SUCCESS
                ct.sendto(turn.encode_channel_data(0x4000, b"ping"), target)  # both queued before the edge reads
                ct.sendto(c.request(TurnMethod.REFRESH, attr(turn.LIFETIME, 0)), target)
                assert c.learn((await client.get())[0]).get(turn.LIFETIME) == 0
                await eventually(lambda: _readable(peer), "the relayed payload at the peer")
                assert peer.recv(100) == b"ping"
