"""``edgesim serve av-edge --metrics``: scraped while a real TURN client (aioice) allocates and releases.

The exposition must pass ``promtool check metrics`` (Prometheus's own linter), and the figures must follow
what the client did: aioice reports each allocation it got and each one it deleted (Refresh with LIFETIME 0,
RFC 8656 §8), so the active-allocation gauge must read 0 → 1 → 2 → 3 → 1 → 0 and the relay ports in use with it.
Environment errors (metrics address in use, listener port in use) are one line and exit code 3.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import Callable

import aioice.stun
import aioice.turn
import pytest

from simulator.lab.metrics import MetricsEndpoint, registry_for
from tests.metrics.serving import Served, promtool_ok, run_serve, sample, scrape
from tests.peers import require_tool

HOST = "127.95.90.1"  # this module's A/V Edge (block 127.95.0.0/16 is the metrics helper's)
BUSY_HOST = "127.95.90.2"
PEER_HOST = "127.95.90.4"
RELAY = (52000, 52019)
USER, PASSWORD = "alice", "wonderland"


def _av_edge(*extra: str, host: str = HOST) -> list[str]:
    return ["av-edge", "--listen", host, "--public", host, "--udp-port", "0", "--tcp-port", "0",
            "--relay-range", f"{RELAY[0]}-{RELAY[1]}", "--user", f"{USER}:{PASSWORD}", "--realm", "edgesim", *extra]


class _Inbox(asyncio.DatagramProtocol):
    """What a TURN client (or the echo peer) received."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queue.put_nowait((data, addr))
        if self.echo and self.transport is not None:
            self.transport.sendto(data, addr)

    echo = False


async def _relay_through(client: aioice.turn.TurnTransport, inbox: _Inbox) -> tuple[list[bytes], list[bytes]]:
    """Send 5 datagrams through ``client``'s relay to an echo peer; returns (what the peer got, what came back)."""
    loop = asyncio.get_running_loop()
    peer = _Inbox()
    peer.echo = True
    transport, _ = await loop.create_datagram_endpoint(lambda: peer, local_addr=(PEER_HOST, 0))
    try:
        address = transport.get_extra_info("sockname")
        for index in range(5):
            client.sendto(f"media {index:02d}".encode() * (index + 1), address)
            await asyncio.sleep(0.02)  # the first one waits for aioice's CreatePermission/ChannelBind
        got = [(await asyncio.wait_for(peer.queue.get(), 5))[0] for _ in range(5)]
        back = [(await asyncio.wait_for(inbox.queue.get(), 5))[0] for _ in range(5)]
    finally:
        transport.close()
    return got, back


async def _until(url: str, check: Callable[[str], bool], timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        exposition = await asyncio.to_thread(scrape, url)
        if check(exposition) or time.monotonic() > deadline:
            return exposition
        await asyncio.sleep(0.05)


def _active(exposition: str) -> float:
    return sample(exposition, "edgesim_turn_allocations_active")


async def test_gauges_follow_allocations_and_promtool_accepts() -> None:
    promtool = require_tool("promtool")
    with Served(_av_edge("--metrics", f"{HOST}:0")) as served:
        url = served.wait_for(r"^metrics (http://\S+/metrics)$")[1]
        ready = served.wait_for(r"^av-edge ready udp=([\d.]+):(\d+) ")
        server = (ready[1], int(ready[2]))
        first = await asyncio.to_thread(scrape, url)
        promtool_ok(promtool, first)
        assert _active(first) == 0
        assert sample(first, "edgesim_relay_ports_free", transport="udp") == RELAY[1] - RELAY[0] + 1

        transports = []
        protocols: list[_Inbox] = []
        try:
            seen = []
            for _ in range(3):
                transport, protocol = await aioice.turn.create_turn_endpoint(_Inbox, server, USER, PASSWORD)
                transports.append(transport)
                protocols.append(protocol)
                seen.append(_active(await asyncio.to_thread(scrape, url)))
            assert seen == [1, 2, 3]
            peak = await asyncio.to_thread(scrape, url)
            promtool_ok(promtool, peak)  # now with error, pool and traffic series filled in
            assert sample(peak, "edgesim_relay_ports_in_use", transport="udp") == 3
            assert sample(peak, "edgesim_relay_ports_free", transport="udp") == RELAY[1] - RELAY[0] + 1 - 3
            assert sample(peak, "edgesim_turn_allocations_total", result="success") == 3
            # aioice's first Allocate carries no credentials: the long-term mechanism answers 401 (RFC 8489 §9.2)
            assert sample(peak, "edgesim_stun_error_responses_total", method="allocate", code="401") == 3
            assert sample(peak, "edgesim_turn_auth_failures_total") == 0

            # Through the first relay to an echo peer and back: what each side received is what was relayed.
            sent, echoed = await _relay_through(transports[0], protocols[0])
            traffic = await _until(url, lambda text: sample(text, "edgesim_turn_relay_packets_total",
                                                            direction="peer_to_client") == len(echoed))
            assert sample(traffic, "edgesim_turn_relay_packets_total", direction="client_to_peer") == len(sent)
            assert sample(traffic, "edgesim_turn_relay_bytes_total", direction="client_to_peer") == sum(map(len, sent))
            assert sample(traffic, "edgesim_turn_relay_packets_total", direction="peer_to_client") == len(echoed)
            assert sample(traffic, "edgesim_turn_relay_bytes_total", direction="peer_to_client") == sum(
                map(len, echoed))

            for transport in transports[:2]:
                transport.close()  # aioice deletes the allocation: Refresh LIFETIME 0
            after_two = await _until(url, lambda text: _active(text) == 1)
            assert _active(after_two) == 1
            assert sample(after_two, "edgesim_relay_ports_in_use", transport="udp") == 1
            transports[2].close()
            after_all = await _until(url, lambda text: _active(text) == 0)
            assert _active(after_all) == 0
            assert sample(after_all, "edgesim_turn_allocations_ended_total", reason="deleted") == 3
            promtool_ok(promtool, after_all)

            # Refused signatures (RFC 8489 §9.2.4: 401 again): a wrong password, an unknown user.
            for user, password in ((USER, "not-" + PASSWORD), ("mallory", PASSWORD)):
                with pytest.raises(aioice.stun.TransactionFailed):
                    await aioice.turn.create_turn_endpoint(asyncio.DatagramProtocol, server, user, password)
            refused = await asyncio.to_thread(scrape, url)
            assert sample(refused, "edgesim_turn_auth_failures_total", reason="bad_integrity") == 1
            assert sample(refused, "edgesim_turn_auth_failures_total", reason="unknown_user") == 1
            assert sample(refused, "edgesim_turn_allocations_total", result="401") == 3 + 2 * 2
            assert _active(refused) == 0
            promtool_ok(promtool, refused)
        finally:
            for transport in transports:
                transport.close()
            await asyncio.sleep(0.1)
        code, stderr = served.stop()
    assert code == 0, stderr
    relayed = sum(map(len, sent)) + sum(map(len, echoed))
    assert served.lines[-1] == ("av-edge stopped: allocations 3 (0 active at exit, 0 expired; Allocate errors 401=7), "
                                f"relayed {len(sent) + len(echoed)} packets / {relayed} B, STUN errors 401=7, "
                                "auth failures bad_integrity=1 unknown_user=1")


def test_metrics_address_in_use_is_an_environment_error() -> None:
    with socket.socket() as busy:
        busy.bind((BUSY_HOST, 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run_serve(_av_edge("--metrics", f"{BUSY_HOST}:{port}"))
    assert done.returncode == 3
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"--metrics {BUSY_HOST}:{port}" in lines[0] and "in use" in lines[0], done.stderr


def test_listener_port_in_use_is_an_environment_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind((BUSY_HOST, 0))
        port = busy.getsockname()[1]
        done = run_serve(["av-edge", "--listen", BUSY_HOST, "--public", BUSY_HOST, "--udp-port", str(port),
                          "--tcp-port", "0", "--relay-range", "52100-52109"])
    assert done.returncode == 3
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "in use" in lines[0] and "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize("value", ["9641", "127.95.90.1", "127.95.90.1:http", "127.95.90.1:70000"])
def test_bad_metrics_address_is_a_usage_error(value: str) -> None:
    done = run_serve(_av_edge("--metrics", value))
    assert done.returncode == 2
    assert "--metrics" in done.stderr and "Traceback" not in done.stderr


async def test_endpoint_survives_bad_requests() -> None:
    """Garbage, other methods, other paths, an endless header: answered or dropped, the endpoint keeps serving."""
    from simulator.lab.metrics import Sources

    endpoint = MetricsEndpoint(registry_for(Sources, process=False), "127.95.90.3", 0)
    async with endpoint:
        async def ask(data: bytes) -> bytes:
            reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
            writer.write(data)
            await writer.drain()
            try:
                return await asyncio.wait_for(reader.read(), 10)
            finally:
                writer.close()
                await writer.wait_closed()

        assert (await ask(b"POST /metrics HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 405")
        assert (await ask(b"GET /other HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404")
        assert (await ask(b"\x16\x03\x01\x00\xff" + bytes(300) + b"\r\n\r\n")).startswith(b"HTTP/1.1 405")  # TLS
        assert await ask(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 40000) == b""  # over the limit: closed
        answer = await ask(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200") and b"text/plain; version=0.0.4" in answer


def test_sigint_stops_with_the_summary_line() -> None:
    with Served(_av_edge(host="127.95.90.5")) as served:
        served.wait_for(r"^av-edge ready ")
        code, stderr = served.stop(sig=signal.SIGINT)
    assert code == 0, stderr
    assert served.lines[-1] == "av-edge stopped: allocations 0 (0 active at exit, 0 expired), relayed 0 packets / 0 B"
