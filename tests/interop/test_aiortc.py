"""Interop: two aiortc 1.16 ``RTCPeerConnection``s (a WebRTC stack nobody here wrote) with the ``relay`` ICE
transport policy and edgesim's A/V Edge as their only TURN server connect and move a data channel's messages,
over TURN/UDP (the A/V Edge's 3478) and plain TURN/TCP (RFC 8656 §3.1: STUN and padded ChannelData framed on
one TCP connection, which is what aioice speaks; the listener that is 443 in the lab, an ephemeral port here
because binding 443 needs a privilege).

aiortc runs ICE with aioice 0.13 underneath. With the relay policy aioice gathers no host or server-reflexive
candidate (RFC 9429 §3.5.3), so each peer connection offers exactly one candidate — its relayed address on
the A/V Edge — and the only possible pair is relay ↔ relay: every ICE check, DTLS, SCTP and data-channel
packet crosses the A/V Edge twice (A → A's allocation → B's relayed address → B). The test checks what
aiortc/aioice nominated on both sides, what the A/V Edge allocated and what it relayed.

Two A/V Edges: the in-process :class:`AvEdgeServer` on the test's loop (its allocation table and counters read
directly), and the shipped ``edgesim serve av-edge`` command (uvloop, its own process) read through its
Prometheus ``--metrics`` endpoint and its exit summary line.

Addresses: helper "aiortc"'s block 127.85.0.0/16, the third octet taken from the pid so that two runs on one
host bind different addresses; each A/V Edge listens, advertises and relays on one address, so relayed
addresses are routable on loopback. aioice binds its TURN client sockets nowhere in particular (the kernel
picks 127.0.0.1 and an ephemeral port).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from simulator.core.credentials import CredentialStore
from simulator.net.edge.av_edge import AvEdgeServer
from tests.metrics.serving import Served, sample, scrape
from tests.peers import in_ci

try:
    import aiortc
    from aiortc import RTCIceTransportPolicy
except ImportError:  # pragma: no cover - depends on the environment
    if in_ci():
        pytest.fail("aiortc is not installed (the dev extra pins it; .ci/run installs it)", pytrace=False)
    pytest.skip("aiortc is not installed (pip install -e '.[dev]')", allow_module_level=True)

pytestmark = pytest.mark.interop

NET = f"127.85.{10 + os.getpid() % 200}"
IN_PROCESS_HOST, SERVED_HOST = f"{NET}.1", f"{NET}.2"
TURN_UDP_PORT = 3478  # the A/V Edge's well-known TURN/UDP port: free on this run's own addresses
USER, PASSWORD, REALM = "webrtc", "r3lay-only", "aiortc.test"
RELAY_RANGE = (52000, 52199)
MESSAGES = 20
DEADLINE = 15.0  # seconds for one whole call: gathering, ICE, DTLS, SCTP, the messages


@dataclass
class Turn:
    """A running A/V Edge as the test sees it: where it listens and how to read what it did."""

    host: str
    udp_port: int
    tcp_port: int
    check: Callable[[str, list[Any]], Any]  # (client transport, the two nominated pairs) -> awaitable
    served: Served | None = None
    edge: AvEdgeServer | None = None  # the in-process one

    def url(self, transport: str) -> str:
        if transport == "udp":
            # No port in the URL: aiortc falls back to RFC 7065's default 3478, where the A/V Edge listens.
            assert self.udp_port == TURN_UDP_PORT
            return f"turn:{self.host}?transport=udp"
        return f"turn:{self.host}:{self.tcp_port}?transport=tcp"


@asynccontextmanager
async def in_process_edge() -> AsyncIterator[Turn]:
    store = CredentialStore()
    store.add_static(USER, PASSWORD)
    edge = AvEdgeServer(IN_PROCESS_HOST, IN_PROCESS_HOST, udp_port=TURN_UDP_PORT, tcp_port=0, credentials=store,
                        realm=REALM, first_port=RELAY_RANGE[0], last_port=RELAY_RANGE[1], seed=85)

    async def check(transport: str, pairs: list[Any]) -> None:
        # Two allocations, over the client transport asked for, at exactly the relayed candidates' addresses.
        allocations = edge.core.allocations()
        assert sorted(x.public for x in allocations) == sorted(
            (p.local_candidate.host, p.local_candidate.port) for p in pairs)
        assert all(x.stream is (transport == "tcp") and not x.ms and x.username == USER for x in allocations)
        metrics = edge.core.metrics
        assert metrics.allocations_created == 2, metrics
        # Conservation through the two relays (loopback loses nothing): once the last SCTP SACK has landed,
        # every packet one relay sent out reached the other and was forwarded to its client, or dropped there
        # (an ICE check that came before that side's CreatePermission).
        await settle(lambda: metrics.relayed_to_peer == metrics.relayed_to_client + metrics.dropped)
        assert metrics.relayed_to_peer == metrics.relayed_to_client + metrics.dropped, metrics
        assert metrics.relayed_to_peer >= 2 * MESSAGES and metrics.relayed_to_client >= 2 * MESSAGES, metrics
        assert metrics.malformed == 0 and metrics.errors == {401: 2}, metrics  # one 401 per first Allocate
        print(f"in-process turn/{transport}: allocations={metrics.allocations_created} "
              f"relayed_to_peer={metrics.relayed_to_peer} relayed_to_client={metrics.relayed_to_client} "
              f"bytes_to_peer={metrics.bytes_to_peer} bytes_to_client={metrics.bytes_to_client} "
              f"dropped={metrics.dropped}")

    async with edge:
        assert edge.udp_address is not None and edge.tcp_address is not None
        yield Turn(IN_PROCESS_HOST, edge.udp_address.port, edge.tcp_address.port, check, edge=edge)


@asynccontextmanager
async def served_edge() -> AsyncIterator[Turn]:
    argv = ["av-edge", "--listen", SERVED_HOST, "--public", SERVED_HOST, "--udp-port", str(TURN_UDP_PORT),
            "--tcp-port", "0", "--relay-range", f"{RELAY_RANGE[0]}-{RELAY_RANGE[1]}", "--user", f"{USER}:{PASSWORD}",
            "--realm", REALM, "--seed", "85", "--metrics", f"{SERVED_HOST}:0"]
    with Served(argv) as served:
        url = (await asyncio.to_thread(served.wait_for, r"^metrics (http://\S+/metrics)$"))[1]
        ready = await asyncio.to_thread(served.wait_for, r"^av-edge ready udp=([\d.]+):(\d+) tcp=([\d.]+):(\d+)$")

        async def check(transport: str, pairs: list[Any]) -> None:
            def relayed(text: str, direction: str) -> float:
                return sample(text, "edgesim_turn_relay_packets_total", direction=direction)

            def balanced(text: str) -> bool:  # the same conservation as in-process (see there)
                return relayed(text, "client_to_peer") == relayed(text, "peer_to_client") + sample(
                    text, "edgesim_turn_dropped_packets_total")

            text = await asyncio.to_thread(scrape, url)
            for _ in range(60):
                if balanced(text):
                    break
                await asyncio.sleep(0.05)
                text = await asyncio.to_thread(scrape, url)
            assert balanced(text), text
            assert sample(text, "edgesim_turn_allocations_active") == 2
            assert sample(text, "edgesim_turn_allocations_total", result="success") == 2
            assert sample(text, "edgesim_turn_allocations_total", result="401") == 2  # one per first Allocate
            assert sample(text, "edgesim_relay_ports_in_use", transport="udp") == 2
            assert sample(text, "edgesim_turn_tcp_connections") == (2 if transport == "tcp" else 0)
            assert sample(text, "edgesim_turn_malformed_messages_total") == 0
            for direction in ("client_to_peer", "peer_to_client"):
                assert relayed(text, direction) >= 2 * MESSAGES
            print(f"serve av-edge turn/{transport}: " + ", ".join(
                f"{d}={relayed(text, d):.0f} packets/"
                f"{sample(text, 'edgesim_turn_relay_bytes_total', direction=d):.0f} B"
                for d in ("client_to_peer", "peer_to_client"))
                + f", dropped={sample(text, 'edgesim_turn_dropped_packets_total'):.0f}")

        turn = Turn(ready[1], int(ready[2]), int(ready[4]), check, served)
        yield turn
        code, stderr = await asyncio.to_thread(served.stop)
        assert code == 0, stderr
        assert served.lines[-1].startswith("av-edge stopped: allocations 2 "), served.lines[-1]


async def settle(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    """Wait (bounded) until ``condition()`` holds; the caller asserts it afterwards."""
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)


EDGES = {"in-process": in_process_edge, "serve": served_edge}


def peer_connection(url: str) -> aiortc.RTCPeerConnection:
    config = aiortc.RTCConfiguration(
        iceServers=[aiortc.RTCIceServer(urls=url, username=USER, credential=PASSWORD)],
        iceTransportPolicy=RTCIceTransportPolicy.RELAY,  # the W3C API's "relay"
    )
    return aiortc.RTCPeerConnection(configuration=config)


@dataclass
class Side:
    """One peer connection's data channel and the messages that arrived on it, in arrival order."""

    channel: Any = None
    received: list[str] = field(default_factory=list)
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    all_in: asyncio.Event = field(default_factory=asyncio.Event)
    attached: asyncio.Event = field(default_factory=asyncio.Event)

    def attach(self, channel: Any) -> None:
        self.channel = channel

        @channel.on("open")  # type: ignore[untyped-decorator]
        def _open() -> None:
            self.opened.set()

        @channel.on("message")  # type: ignore[untyped-decorator]
        def _message(message: str) -> None:
            self.received.append(message)
            if len(self.received) >= MESSAGES:
                self.all_in.set()

        if channel.readyState == "open":
            self.opened.set()
        self.attached.set()


def nominated_pair(pc: aiortc.RTCPeerConnection) -> Any:
    """aioice's nominated pair for component 1 (aiortc 1.16 / aioice 0.13 internals: SCTP → DTLS → ICE)."""
    sctp = pc.sctp
    assert sctp is not None
    pair = sctp.transport.transport._connection._nominated.get(1)
    assert pair is not None, "aioice nominated no pair"
    return pair


async def call(turn: Turn, transport: str) -> None:
    url = turn.url(transport)
    caller, callee = peer_connection(url), peer_connection(url)
    try:
        a, b = Side(), Side()
        a.attach(caller.createDataChannel("chat"))
        callee.on("datachannel", b.attach)

        async with asyncio.timeout(DEADLINE):
            # Offer/answer in-process; setLocalDescription waits for gathering (the TURN Allocate).
            await caller.setLocalDescription(await caller.createOffer())
            await callee.setRemoteDescription(caller.localDescription)
            await callee.setLocalDescription(await callee.createAnswer())
            await caller.setRemoteDescription(callee.localDescription)
            await asyncio.gather(a.opened.wait(), b.attached.wait())
            await b.opened.wait()
            for i in range(MESSAGES):
                a.channel.send(f"caller->callee {i:02d}")
                b.channel.send(f"callee->caller {i:02d}")
            await asyncio.gather(a.all_in.wait(), b.all_in.wait())
        assert b.received == [f"caller->callee {i:02d}" for i in range(MESSAGES)]
        assert a.received == [f"callee->caller {i:02d}" for i in range(MESSAGES)]

        # Each SDP carried one candidate, a relayed address on the A/V Edge (nothing else was gathered).
        for pc in (caller, callee):
            sdp = pc.localDescription.sdp
            candidates = [line for line in sdp.splitlines() if line.startswith("a=candidate:")]
            assert len(candidates) == 1 and " typ relay" in candidates[0] and f" {turn.host} " in candidates[0], sdp
        pairs = [nominated_pair(caller), nominated_pair(callee)]
        for pair in pairs:
            for candidate in (pair.local_candidate, pair.remote_candidate):
                assert candidate.type == "relay" and candidate.transport == "udp", pair
                assert candidate.host == turn.host and RELAY_RANGE[0] <= candidate.port <= RELAY_RANGE[1], pair
        # Both sides agree on the path: A's local relay is B's remote one and the other way round.
        assert pairs[0].local_candidate.port == pairs[1].remote_candidate.port
        assert pairs[1].local_candidate.port == pairs[0].remote_candidate.port
        assert pairs[0].local_candidate.port != pairs[0].remote_candidate.port
        await turn.check(transport, pairs)
    finally:
        await caller.close()
        await callee.close()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("edge", list(EDGES))
async def test_aiortc_peers_relay_a_data_channel_through_the_av_edge(edge: str, transport: str) -> None:
    async with EDGES[edge]() as turn:
        await call(turn, transport)



async def test_a_refused_allocation_leaves_relay_only_peers_unconnected() -> None:
    """The control: with a wrong TURN password the A/V Edge refuses both Allocates, each side is left with no
    candidate at all (no host fallback under the relay policy) and aiortc never even starts ICE — so the calls
    above could only connect through the A/V Edge's relays."""
    async with in_process_edge() as turn:
        assert turn.edge is not None
        config = aiortc.RTCConfiguration(
            iceServers=[aiortc.RTCIceServer(urls=turn.url("udp"), username=USER, credential="not-" + PASSWORD)],
            iceTransportPolicy=RTCIceTransportPolicy.RELAY,
        )
        caller, callee = aiortc.RTCPeerConnection(configuration=config), aiortc.RTCPeerConnection(configuration=config)
        try:
            channel = caller.createDataChannel("chat")
            async with asyncio.timeout(DEADLINE):
                await caller.setLocalDescription(await caller.createOffer())
                await callee.setRemoteDescription(caller.localDescription)
                await callee.setLocalDescription(await callee.createAnswer())
                await caller.setRemoteDescription(callee.localDescription)
            await asyncio.sleep(1.0)  # time enough for a loopback call to connect (the ones above take < 1 s)
            for pc in (caller, callee):
                assert "a=candidate:" not in pc.localDescription.sdp, pc.localDescription.sdp
                assert pc.iceGatheringState == "complete" and pc.connectionState == "new", pc.connectionState
            assert channel.readyState == "connecting"
            metrics = turn.edge.core.metrics
            # RFC 8489 §9.2.4: a request whose MESSAGE-INTEGRITY does not verify is answered 401.
            # (aiortc 1.16's answerer, handed an offer without candidates, did not even try to allocate in our runs.)
            assert metrics.allocations_created == 0 and metrics.auth_failures.get("bad_integrity", 0) >= 1, metrics
            assert set(metrics.auth_failures) == {"bad_integrity"} and set(metrics.errors) == {401}, metrics
            assert metrics.relayed_to_peer == metrics.relayed_to_client == 0, metrics
        finally:
            await caller.close()
            await callee.close()
