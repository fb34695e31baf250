"""Interop: aioice 0.13 ``Connection`` (a peer nobody here wrote) ↔ edgesim's ICE agent in the rfc8445
profile, over UDP on loopback, with edgesim's own A/V Edge (in-process ``AvEdgeServer``) as the STUN server
(server-reflexive candidates) and TURN server (aioice: RFC 8656 TURN; edgesim: MS-TURN) for relays.

edgesim's side sits behind an in-process NAT box (endpoint-independent mapping and filtering), so its
server-reflexive candidate is a real, distinct address (the NAT's public one) and its host candidate is
an inside address nobody can reach. aioice's host candidates are pinned to this test's loopback address
(aioice enumerates interfaces otherwise). Addresses are helper "ice"'s block 127.91.0.0/16.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from unittest import mock

import pytest

from simulator.core.credentials import CredentialStore
from simulator.core.ice import CandidateType, IceState
from simulator.core.nat import Behaviour, NatConfig
from simulator.net.clients.ice import IceSession
from simulator.net.edge.av_edge import AvEdgeServer
from simulator.net.nat.natbox import NatBox
from simulator.wire import sdp

aioice = pytest.importorskip("aioice")

pytestmark = pytest.mark.interop

EDGE = "127.91.1.1"
AIOICE_HOST = "127.91.1.2"
NAT_PUBLIC = "127.91.1.4"
INSIDE = "127.91.2.3"  # the NAT's inside address: virtual, nothing is bound there
USER, PASSWORD = "iceuser", "icepass1"
EIM_EIF = NatConfig(mapping=Behaviour.ENDPOINT_INDEPENDENT, filtering=Behaviour.ENDPOINT_INDEPENDENT)


@asynccontextmanager
async def lab(seed: int) -> AsyncIterator[tuple[AvEdgeServer, NatBox]]:
    store = CredentialStore()
    store.add_static(USER, PASSWORD)
    edge = AvEdgeServer(EDGE, EDGE, udp_port=0, tcp_port=0, credentials=store, realm="ice.test",
                        first_port=54000, last_port=54199, seed=seed)
    async with edge, NatBox.dynamic(EIM_EIF, NAT_PUBLIC, random.Random(seed)) as nat:
        yield edge, nat


def aioice_connection(edge: AvEdgeServer, controlling: bool, relay_only: bool) -> aioice.Connection:
    assert edge.udp_address is not None
    server = (edge.udp_address.host, edge.udp_address.port)
    policy = aioice.TransportPolicy.RELAY if relay_only else aioice.TransportPolicy.ALL
    return aioice.Connection(ice_controlling=controlling, stun_server=server, turn_server=server,
                             turn_username=USER, turn_password=PASSWORD, use_ipv6=False, transport_policy=policy)


async def exchange(theirs: aioice.Connection, ours: IceSession, count: int = 5) -> None:
    for i in range(count):
        await theirs.send(b"from aioice %d" % i)
        data, _ = await ours.recv(3)
        assert data == b"from aioice %d" % i
        ours.send(b"from edgesim %d" % i)
        assert await asyncio.wait_for(theirs.recv(), 3) == b"from edgesim %d" % i


async def negotiate(edgesim_controlling: bool, relay_only: bool, seed: int) -> dict[str, object]:
    async with lab(seed) as (edge, nat):
        assert edge.udp_address is not None
        theirs = aioice_connection(edge, not edgesim_controlling, relay_only)
        ours = IceSession("rfc8445", "controlling" if edgesim_controlling else "controlled", random.Random(seed),
                          hosts=[INSIDE], nat=nat, turn_server=edge.udp_address, turn_username=USER,
                          turn_password=PASSWORD, relay_only=relay_only)
        try:
            with mock.patch("aioice.ice.get_host_addresses", return_value=[AIOICE_HOST]):
                await asyncio.gather(theirs.gather_candidates(), ours.gather(3.0))
            kinds = {c.type for c in ours.agent.local_candidates}
            expected = {CandidateType.RELAY} if relay_only else {CandidateType.HOST, CandidateType.SRFLX,
                                                                  CandidateType.RELAY}
            assert kinds == expected, (ours.agent.local_candidates, ours.warnings)
            srflx = [c for c in ours.agent.local_candidates if c.type is CandidateType.SRFLX]
            assert all(c.address.host == NAT_PUBLIC for c in srflx)  # learnt from the A/V Edge's Binding answer
            relay = [c for c in ours.agent.local_candidates if c.type is CandidateType.RELAY]
            assert relay and relay[0].address.host == EDGE and 54000 <= relay[0].address.port <= 54199
            # Offer/answer through SDP text both ways: aioice parses our a=candidate lines, we parse its.
            offer = sdp.parse_sdp(ours.local_sdp())
            for candidate in offer.candidates:
                await theirs.add_remote_candidate(aioice.Candidate.from_sdp(candidate.to_sdp()[len("candidate:"):]))
            await theirs.add_remote_candidate(None)
            theirs.remote_username, theirs.remote_password = offer.ufrag, offer.pwd
            answer = sdp.build_sdp(sdp.IceDescription(
                theirs.local_username, theirs.local_password,
                tuple(sdp.parse_candidate("candidate:" + c.to_sdp()) for c in theirs.local_candidates)))
            ours.set_remote(answer)
            selected, _ = await asyncio.wait_for(asyncio.gather(ours.connect(10.0), theirs.connect()), 12)
            assert ours.state is IceState.COMPLETED
            await exchange(theirs, ours)
            print(f"aioice edgesim={'controlling' if edgesim_controlling else 'controlled'} relay_only={relay_only} "
                  f"pair={selected.local.type}->{selected.remote.type} ttc={selected.time_to_connected:.3f}s "
                  f"checks_sent={ours.stats.checks_sent} retransmissions={ours.stats.retransmissions}")
            # aioice 0.13 internals (pinned, research-next.md A1): the pair aioice nominated / was nominated.
            return {"selected": selected, "stats": ours.stats, "theirs_pair": theirs._nominated[1]}
        finally:
            await theirs.close()
            await ours.close()


@pytest.mark.parametrize("edgesim_controlling", [True, False], ids=["edgesim-controlling", "edgesim-controlled"])
async def test_aioice_and_edgesim_nominate_a_pair_with_host_srflx_relay(edgesim_controlling: bool) -> None:
    result = await negotiate(edgesim_controlling, relay_only=False, seed=11 if edgesim_controlling else 12)
    selected = result["selected"]
    # Our host candidate is behind the NAT (unreachable); the best working pair leaves through the NAT:
    # its local candidate is the srflx one (XOR-MAPPED-ADDRESS of the check = the NAT's public address).
    assert selected.local.type is CandidateType.SRFLX, selected
    assert selected.remote.address.host == AIOICE_HOST
    theirs_pair = result["theirs_pair"]
    assert theirs_pair.remote_addr == tuple(selected.local.address)  # both sides agree on the path
    stats = result["stats"]
    assert stats.checks_sent >= 1 and stats.time_to_connected is not None and stats.time_to_connected < 5


@pytest.mark.parametrize("edgesim_controlling", [True, False], ids=["edgesim-controlling", "edgesim-controlled"])
async def test_aioice_and_edgesim_relay_only(edgesim_controlling: bool) -> None:
    result = await negotiate(edgesim_controlling, relay_only=True, seed=21 if edgesim_controlling else 22)
    selected = result["selected"]
    assert selected.local.type is CandidateType.RELAY and selected.relayed
    assert selected.remote.address.host == EDGE  # aioice's relayed candidate on the same A/V Edge
    theirs_pair = result["theirs_pair"]
    assert theirs_pair.local_candidate.type == "relay" and theirs_pair.remote_addr == tuple(selected.local.address)
