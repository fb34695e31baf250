"""Helpers for the NAT box tests: per-run loopback addresses, UDP servers, bounded waits.

Every address is on 127.79.0.0/16 (not the lab's 127.77/16, never 127.0.0.1); the third octet comes
from the pid so two test runs on one machine do not share public NAT addresses.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import cast

import pytest

from simulator.core.nat import Behaviour, NatConfig
from simulator.net.nat.natbox import NatBox
from simulator.net.nat.netns import NamespacedHost, namespaces_unavailable_reason
from tests.peers import in_ci

Address = tuple[str, int]

_THIRD_OCTET = 1 + os.getpid() % 250
_fourth = itertools.count(1)
TEST_PORT_RANGE = (42000, 42999)
SEED = 4787


def loopback_ip() -> str:
    """A fresh 127.79.x.y address for this test run (wraps after 254 calls)."""
    return f"127.79.{_THIRD_OCTET}.{1 + next(_fourth) % 254}"


async def wait_until(predicate: Callable[[], bool], timeout: float = 2.0, step: float = 0.005) -> None:
    """Poll ``predicate`` until true; fail after ``timeout`` seconds (bounded in count and time)."""
    for _ in range(int(timeout / step) + 1):
        if predicate():
            return
        await asyncio.sleep(step)
    raise AssertionError(f"condition not met within {timeout} s")


class UdpServer(asyncio.DatagramProtocol):
    """A loopback UDP server that records what it got and, with ``echo``, sends it back."""

    def __init__(self, echo: bool = True) -> None:
        self.echo = echo
        self.seen: list[tuple[bytes, Address]] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.address: Address = ("", 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.address = transport.get_extra_info("sockname")[:2]

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        source = (str(addr[0]), int(str(addr[1])))
        self.seen.append((data, source))
        if self.echo and self.transport is not None:
            self.transport.sendto(data, source)

    def send(self, data: bytes, dst: Address) -> None:
        assert self.transport is not None
        self.transport.sendto(data, dst)

    def sources(self) -> list[Address]:
        return [source for _, source in self.seen]


@pytest.fixture
async def udp_servers() -> AsyncIterator[Callable[..., Awaitable[UdpServer]]]:
    """A factory ``await make(ip, port=0, echo=True)``; every server is closed after the test."""
    loop = asyncio.get_running_loop()
    transports: list[asyncio.DatagramTransport] = []

    async def make(ip: str, port: int = 0, echo: bool = True) -> UdpServer:
        transport, protocol = await loop.create_datagram_endpoint(lambda: UdpServer(echo), local_addr=(ip, port))
        transports.append(transport)
        return protocol

    yield make
    for transport in transports:
        transport.close()
    await asyncio.sleep(0)


@pytest.fixture
async def nat_boxes() -> AsyncIterator[Callable[..., Awaitable[NatBox]]]:
    """A factory for NAT boxes on fresh public addresses; started here, stopped after the test."""
    boxes: list[NatBox] = []

    async def make(
        mapping: Behaviour = Behaviour.ENDPOINT_INDEPENDENT,
        filtering: Behaviour = Behaviour.ENDPOINT_INDEPENDENT,
        **config: object,
    ) -> NatBox:
        nat_config = NatConfig(mapping=mapping, filtering=filtering, **config)  # type: ignore[arg-type]
        box = NatBox.dynamic(nat_config, loopback_ip(), random.Random(SEED), TEST_PORT_RANGE)
        boxes.append(box)
        await box.start()
        return box

    yield make
    for box in boxes:
        await box.stop()


def require_namespaces() -> None:
    """Skip (fail under CI=true) when namespaces or TUN devices cannot be made here."""
    reason = namespaces_unavailable_reason()
    if reason is not None:
        if in_ci():
            pytest.fail(reason)
        pytest.skip(reason)


async def run_inside(host: NamespacedHost, argv: list[str], timeout: float) -> str:
    """Run ``argv`` in the host's namespace; its stdout. Killed (and the test failed) after ``timeout``."""
    process = await asyncio.create_subprocess_exec(
        *host.exec_argv(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        stdout, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"{argv[0]} did not finish within {timeout} s") from None
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return stdout.decode(errors="replace")
