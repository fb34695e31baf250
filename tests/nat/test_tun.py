"""TUN + network namespace: the kernel accepts our packets, and an unmodified process talks through the box."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from simulator.core.nat import Behaviour, DropReason
from simulator.net.nat.natbox import NatBox
from simulator.net.nat.netns import NamespacedHost
from simulator.wire.ipv4 import UdpDatagram, build_udp
from tests.nat.conftest import UdpServer, loopback_ip, require_namespaces, run_inside

PROCESS_TIMEOUT = 10.0
INSIDE_IP = "10.77.1.2"

# Receives until it gets b"good" (or 3 s pass) and prints every payload it got, one per line.
LISTENER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(3.0)
print("ready", flush=True)
for _ in range(10):
    try:
        data, source = s.recvfrom(2048)
    except TimeoutError:
        break
    print(data.decode(), source[0], source[1], flush=True)
    if data == b"good":
        break
"""

# Sends b"ping" to argv[1]:argv[2] and prints the reply and its source.
CLIENT = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3.0)
s.sendto(b"ping", (sys.argv[1], int(sys.argv[2])))
data, source = s.recvfrom(2048)
print(data.decode(), source[0], source[1])
"""


@pytest.fixture(autouse=True)
def _namespaces() -> None:
    require_namespaces()


async def test_kernel_accepts_built_packets_and_drops_corrupt_ones() -> None:
    """Checksums verified by the kernel: a socket in the namespace receives only the well-formed packet."""
    host = await NamespacedHost.create(INSIDE_IP)
    try:
        process = await asyncio.create_subprocess_exec(
            *host.exec_argv([sys.executable, "-c", LISTENER, "7000"]),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
        )
        try:
            assert process.stdout is not None
            ready = await asyncio.wait_for(process.stdout.readline(), PROCESS_TIMEOUT)
            assert ready == b"ready\n"
            source = ("127.79.250.9", 5555)
            bad_udp = bytearray(build_udp(UdpDatagram(source, (INSIDE_IP, 7000), b"bad-udp")))
            bad_udp[27] ^= 0x01  # UDP checksum
            bad_ip = bytearray(build_udp(UdpDatagram(source, (INSIDE_IP, 7000), b"bad-ip")))
            bad_ip[11] ^= 0x01  # IPv4 header checksum
            for packet in (bytes(bad_udp), bytes(bad_ip), build_udp(UdpDatagram(source, (INSIDE_IP, 7000), b"good"))):
                assert host.tun.write(packet)
            stdout, _ = await asyncio.wait_for(process.communicate(), PROCESS_TIMEOUT)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    finally:
        await host.aclose()
    assert stdout.decode().splitlines() == ["good 127.79.250.9 5555"]


def namespace_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


async def test_namespace_is_deleted_on_close() -> None:
    host = await NamespacedHost.create(INSIDE_IP)
    assert namespace_exists(host.namespace)
    await host.aclose()
    await host.aclose()
    host.close()
    assert not namespace_exists(host.namespace)
    assert host.tun.closed


async def test_unmodified_process_talks_through_the_box(
    nat_boxes: Callable[..., Awaitable[NatBox]], udp_servers: Callable[..., Awaitable[UdpServer]]
) -> None:
    box = await nat_boxes(mapping=Behaviour.ENDPOINT_INDEPENDENT, filtering=Behaviour.ADDRESS_AND_PORT_DEPENDENT)
    server = await udp_servers(loopback_ip())
    host = await box.attach_namespace(INSIDE_IP)

    output = await run_inside(host, [sys.executable, "-c", CLIENT, *map(str, server.address)], PROCESS_TIMEOUT)

    assert output.split() == ["ping", server.address[0], str(server.address[1])]
    ((payload, seen_from),) = server.seen
    assert payload == b"ping" and seen_from[0] == box.public_ip
    assert box.counters.delivered == 1
    stranger = await udp_servers(loopback_ip(), echo=False)
    stranger.send(b"unsolicited", seen_from)
    for _ in range(200):
        if box.table.drops[DropReason.FILTERED]:
            break
        await asyncio.sleep(0.01)
    assert box.table.drops[DropReason.FILTERED] == 1

    await box.stop()
    assert not namespace_exists(host.namespace)
