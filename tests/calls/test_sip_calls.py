"""Calls through the Edge pool (issue 11, "calls placed the Lync way"): remote ↔ remote across two Access Edge
nodes, remote → unregistered (480, RFC 3261 §21.4.18), remote → federated partner user, remote → internal user.

Expected values come from RFC 3261: the callee's UA sees the caller's SDP body byte for byte (proxies do not
touch bodies, §16.6), the caller gets the callee's answer in the 183/200, in-dialog requests follow the
Record-Route set (§12.1.2, §16.12) and every one of INVITE, re-INVITE and BYE ends 200.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from simulator.lab.access import remote_user_session, user_accounts
from simulator.lab.pki import LabPki, build_pki
from simulator.lab.topology import Lab
from simulator.net.clients.call import CallFailed, SipCall
from simulator.net.edge.access_edge import AccessEdge
from simulator.net.peers.frontend import FrontEndServer
from simulator.net.peers.sip_partner import PartnerEdgeServer
from simulator.spec.schema import ClientRole, Scenario
from simulator.wire.sip import make_request

TIMEOUT = 5.0


def _sdp(who: str, port: int) -> str:
    return (f"v=0\r\no=- 1 1 IN IP4 192.0.2.{port % 250}\r\ns=session\r\nc=IN IP4 192.0.2.{port % 250}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0\r\na=x-edgesim:{who}\r\n")


@pytest.fixture(scope="module")
def calls_scenario(shipped_as_written: Scenario) -> Scenario:
    lab = shipped_as_written.lab.model_copy(update={"loopback_prefix": "127.89"})  # helper sipcalls' block
    return shipped_as_written.model_copy(update={"lab": lab})


@pytest.fixture(scope="module")
def calls_pki(calls_scenario: Scenario) -> LabPki:
    return build_pki(calls_scenario)


@pytest.fixture
async def lab(calls_scenario: Scenario, calls_pki: LabPki) -> AsyncIterator[Lab]:
    async with Lab(calls_scenario, pki=calls_pki) as running:
        yield running


def _director(lab: Lab) -> FrontEndServer:
    server = lab.services["sip-director"]
    assert isinstance(server, FrontEndServer)
    return server


async def test_remote_to_remote_through_two_edge_nodes(lab: Lab) -> None:
    accounts = user_accounts(lab)
    offer, answer, reoffer = _sdp("alice", 5004), _sdp("bob", 6004), _sdp("alice-selected-pair", 5006)
    seen: list[tuple[str, str]] = []
    byes: list[str] = []

    async def on_invite(request_sdp: str, caller_uri: str) -> str:
        seen.append((request_sdp, caller_uri))
        return answer

    async def on_bye(caller_uri: str) -> None:
        byes.append(caller_uri)

    async with remote_user_session(lab, "edge1", index=0, timeout=TIMEOUT) as alice, \
            remote_user_session(lab, "edge2", index=1, timeout=TIMEOUT) as bob:
        bob.client.on_invite = on_invite
        bob.client.on_bye = on_bye
        call = await SipCall.invite(alice.client, accounts[1].aor, offer, TIMEOUT, caller_uri=alice.aor)
        assert call.status == 200 and call.answer_sdp == answer and call.early_sdp == answer
        assert 183 in call.provisional
        assert seen == [(offer, alice.aor)]  # the body crossed both Edges and the Director untouched
        # route set: alice's Edge (edge1), the Director, bob's Edge (edge2)
        assert len(call.route_set) == 3
        ack = await bob.client.next_request("ACK", TIMEOUT)  # the ACK for the 2xx reached the callee end to end
        assert ack.call_id == call.call_id
        assert await call.reinvite(reoffer, TIMEOUT) == answer
        assert seen[-1] == (reoffer, alice.aor)
        assert (await call.bye(TIMEOUT)).status == 200
        assert byes == [alice.aor]
    director = _director(lab)
    assert director.calls_routed["remote"] == 1 and director.calls_routed["in-dialog"] >= 4  # ACK, INVITE, ACK, BYE
    edges = [lab.nodes[node].services["access-edge"] for node in ("edge1", "edge2")]
    assert all(isinstance(edge, AccessEdge) and edge.proxy.forwarded > 0 for edge in edges)


async def test_the_callee_hangs_up_along_the_reversed_route_set(lab: Lab) -> None:
    accounts = user_accounts(lab)

    async def on_invite(request_sdp: str, caller_uri: str) -> str:
        return _sdp("bob", 6008)

    async with remote_user_session(lab, "edge1", index=0, timeout=TIMEOUT) as alice, \
            remote_user_session(lab, "edge2", index=1, timeout=TIMEOUT) as bob:
        bob.client.on_invite = on_invite
        call = await SipCall.invite(alice.client, accounts[1].aor, _sdp("alice", 5008), TIMEOUT, caller_uri=alice.aor)
        invite = await bob.client.next_request("INVITE", TIMEOUT)
        routes = invite.headers.values("record-route")  # the UAS route set (§12.1.1), in order
        assert invite.contacts[0].uri is not None
        bye = make_request("BYE", str(invite.contacts[0].uri), via=bob.client.via(), from_=call.remote_to,
                           to=f"<{alice.aor}>;tag={call.local_tag}", call_id=call.call_id, cseq=1,
                           headers=[("Route", route) for route in routes])
        response = await bob.client.request(bye, TIMEOUT)
        assert response.status == 200
        assert (await alice.client.next_request("BYE", TIMEOUT)).call_id == call.call_id


async def test_a_call_to_an_unregistered_user_gets_480(lab: Lab) -> None:
    accounts = user_accounts(lab)
    async with remote_user_session(lab, "edge1", index=0, timeout=TIMEOUT) as alice:
        with pytest.raises(CallFailed) as failure:
            await SipCall.invite(alice.client, accounts[2].aor, _sdp("alice", 5010), TIMEOUT, caller_uri=alice.aor)
    assert failure.value.status == 480  # RFC 3261 §21.4.18 Temporarily Unavailable


async def test_remote_to_federated_partner_user(lab: Lab) -> None:
    partner_spec = lab.scenario.clients_with_role(ClientRole.FEDERATED_PARTNER)[0]
    partner = lab.services[f"sip-{partner_spec.name}"]
    assert isinstance(partner, PartnerEdgeServer)
    callee = f"sip:carol@{partner_spec.domain or partner_spec.fqdn}"
    seen: list[tuple[str, str, str]] = []

    async def on_invite(request_sdp: str, caller_uri: str, callee_uri: str) -> str:
        seen.append((request_sdp, caller_uri, callee_uri))
        return _sdp("carol", 7004)

    partner.on_invite = on_invite
    offer = _sdp("alice", 5012)
    async with remote_user_session(lab, "edge1", index=0, timeout=TIMEOUT) as alice:
        call = await SipCall.invite(alice.client, callee, offer, TIMEOUT, caller_uri=alice.aor)
        assert call.answer_sdp == _sdp("carol", 7004)
        assert seen == [(offer, alice.aor, callee)]
        assert await call.reinvite(_sdp("alice-pair", 5014), TIMEOUT) == _sdp("carol", 7004)
        assert seen[-1][0] == _sdp("alice-pair", 5014)
        assert (await call.bye(TIMEOUT)).status == 200
    assert partner.received["INVITE"] == 2 and partner.received["BYE"] == 1


async def test_remote_to_internal_user(lab: Lab) -> None:
    director = _director(lab)
    internal = f"sip:dave@{lab.scenario.domain}"
    director.internal_users.add(internal)
    seen: list[tuple[str, str, str]] = []

    async def on_invite(request_sdp: str, caller_uri: str, callee_uri: str) -> str:
        seen.append((request_sdp, caller_uri, callee_uri))
        return _sdp("dave", 8004)

    director.on_invite = on_invite
    offer = _sdp("alice", 5016)
    async with remote_user_session(lab, "edge2", index=0, timeout=TIMEOUT) as alice:
        call = await SipCall.invite(alice.client, internal, offer, TIMEOUT, caller_uri=alice.aor)
        assert call.answer_sdp == _sdp("dave", 8004) and call.early_sdp == _sdp("dave", 8004)
        assert seen == [(offer, alice.aor, internal)]
        assert await call.reinvite(_sdp("alice-pair", 5018), TIMEOUT) == _sdp("dave", 8004)
        assert (await call.bye(TIMEOUT)).status == 200
    assert director.calls_routed["internal"] == 2
