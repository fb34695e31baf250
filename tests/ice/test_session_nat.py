"""Two edgesim ICE sessions, each behind its own in-process NAT box, gathering from one in-process A/V Edge.

What RFC 4787 predicts, and so what is asserted:
- endpoint-independent mapping on both sides (EIM): the server-reflexive address learnt from the Edge is the
  mapping the peer sees too, so once both sides have sent to each other's srflx address the filters
  (endpoint-independent or address-dependent) admit the checks: a DIRECT srflx pair.
- address-and-port-dependent mapping and filtering on both sides (APDM/APDF): a new mapping per destination,
  so the srflx address the Edge saw is not the one the peer would reach, and the filter drops the peer's
  packets: no direct pair can work, and ICE ends on a RELAY pair.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest

from simulator.core.credentials import CredentialStore
from simulator.core.nat import Behaviour, NatConfig
from simulator.net.clients.ice import IceSession
from simulator.net.edge.av_edge import AvEdgeServer
from simulator.net.nat.natbox import NatBox
from simulator.wire import sdp

EDGE = "127.91.4.1"
NAT_A, NAT_B = "127.91.4.10", "127.91.4.20"
INSIDE_A, INSIDE_B = "127.91.5.1", "127.91.5.2"  # virtual inside addresses: nothing is bound there
USER, PASSWORD = "natuser1", "natpass1"
EIM = Behaviour.ENDPOINT_INDEPENDENT
ADM = Behaviour.ADDRESS_DEPENDENT
APDM = Behaviour.ADDRESS_AND_PORT_DEPENDENT


@asynccontextmanager
async def two_sessions(profile: str, nat_a: NatConfig, nat_b: NatConfig,
                       seed: int) -> AsyncIterator[tuple[IceSession, IceSession]]:
    store = CredentialStore()
    store.add_static(USER, PASSWORD)
    async with AsyncExitStack() as stack:
        edge = await stack.enter_async_context(AvEdgeServer(
            EDGE, EDGE, udp_port=0, tcp_port=0, credentials=store, realm="ice.test", first_port=56000,
            last_port=56199, seed=seed))
        box_a = await stack.enter_async_context(NatBox.dynamic(nat_a, NAT_A, random.Random(seed)))
        box_b = await stack.enter_async_context(NatBox.dynamic(nat_b, NAT_B, random.Random(seed + 1)))
        assert edge.udp_address is not None
        sessions = []
        for role, box, inside in (("controlling", box_a, INSIDE_A), ("controlled", box_b, INSIDE_B)):
            session = IceSession(profile, role, random.Random(seed + len(sessions)), hosts=[inside], nat=box,
                                 turn_server=edge.udp_address, turn_username=USER, turn_password=PASSWORD)
            stack.push_async_callback(session.close)
            sessions.append(session)
        yield sessions[0], sessions[1]


async def call(a: IceSession, b: IceSession) -> None:
    await asyncio.gather(a.gather(3.0), b.gather(3.0))
    a.set_remote(b.local_sdp())
    b.set_remote(a.local_sdp())
    await asyncio.gather(a.connect(15.0), b.connect(15.0))
    for i in range(5):  # media both ways on the selected pairs
        a.send(b"rtp a->b %d" % i)
        assert (await b.recv(3))[0] == b"rtp a->b %d" % i
        b.send(b"rtp b->a %d" % i)
        assert (await a.recv(3))[0] == b"rtp b->a %d" % i


NATS = {"EIM/EIF": NatConfig(mapping=EIM, filtering=EIM), "ADM/ADF": NatConfig(mapping=ADM, filtering=ADM),
        "APDM/APDF": NatConfig(mapping=APDM, filtering=APDM)}


def predicted(a: str, b: str) -> str:
    """RFC 4787 reasoning (module docstring): a direct path exists unless a port-dependent side meets a side
    that is not endpoint-independent."""
    if "EIM/EIF" in (a, b) or (a, b) == ("ADM/ADF", "ADM/ADF"):
        return "DIRECT"
    return "RELAY"


@pytest.mark.parametrize("nat_b", sorted(NATS))
@pytest.mark.parametrize("nat_a", sorted(NATS))
async def test_nat_matrix(nat_a: str, nat_b: str) -> None:
    async with two_sessions("rfc8445", NATS[nat_a], NATS[nat_b], seed=50) as (a, b):
        await call(a, b)
        outcomes = [a.outcome(), b.outcome()]
        reoffer = sdp.parse_sdp(a.selected_sdp())  # the caller's re-INVITE: one candidate + remote-candidates
        pair = a.selected
        assert pair is not None and len(reoffer.candidates) == 1
        assert reoffer.remote_candidates == ((1, pair.remote.address.host, pair.remote.address.port),)
        print(f"nat {nat_a} x {nat_b}: " + " | ".join(
            f"{o.ice} {o.local_type}->{o.remote_type} ttc={o.time_to_connected:.3f}s checks={o.checks_sent}"
            for o in outcomes if o.time_to_connected is not None))
        assert [o.ice for o in outcomes] == [predicted(nat_a, nat_b)] * 2, outcomes


async def test_ms_ice2_direct_through_address_dependent_filtering() -> None:
    config = NatConfig(mapping=EIM, filtering=ADM)
    async with two_sessions("ms-ice2", config, config, seed=31) as (a, b):
        await call(a, b)
        for session in (a, b):
            outcome = session.outcome()
            assert outcome.ice == "DIRECT", outcome
            assert outcome.time_to_connected is not None and outcome.time_to_connected >= 3.0  # MS-ICE 3 s phase


async def test_relay_over_tcp_443_meets_relay_over_udp_3478() -> None:
    """The Lync gathering pair: an MS-TURN allocation over TCP (pseudo-TLS, framing) and one over UDP."""
    store = CredentialStore()
    store.add_static(USER, PASSWORD)
    config = NatConfig(mapping=APDM, filtering=APDM)
    async with AsyncExitStack() as stack:
        edge = await stack.enter_async_context(AvEdgeServer(
            EDGE, EDGE, udp_port=0, tcp_port=0, credentials=store, realm="ice.test", first_port=56200,
            last_port=56399, seed=61))
        box_a = await stack.enter_async_context(NatBox.dynamic(config, NAT_A, random.Random(61)))
        box_b = await stack.enter_async_context(NatBox.dynamic(config, NAT_B, random.Random(62)))
        assert edge.udp_address is not None and edge.tcp_address is not None
        a = IceSession("ms-ice2", "controlling", random.Random(63), hosts=[INSIDE_A], nat=box_a, relay_only=True,
                       turn_tcp_server=edge.tcp_address, turn_username=USER, turn_password=PASSWORD)
        stack.push_async_callback(a.close)
        b = IceSession("ms-ice2", "controlled", random.Random(64), hosts=[INSIDE_B], nat=box_b, relay_only=True,
                       turn_server=edge.udp_address, turn_username=USER, turn_password=PASSWORD)
        stack.push_async_callback(b.close)
        await call(a, b)
        [relay_a] = a.agent.local_candidates
        [relay_b] = b.agent.local_candidates
        # MS-ICE2 type preference: relay over TCP 20, relay over UDP 30 (research-lync-edge.md §1.2)
        assert relay_a.priority >> 24 == 20 and relay_b.priority >> 24 == 30
        assert a.outcome().ice == b.outcome().ice == "RELAY"
