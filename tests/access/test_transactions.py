"""The Access Edge, the Director and the SIP clients run their requests through RFC 3261 transactions: a proxy
answers 408 when the next hop never answers (§16.8), a client gives up at its own deadline, nothing is left
behind once the flows are done, and a registrar refuses a non-SIP address of record with 400 (RFC 3261 §10.3,
RFC 4475 §3.3.4 — 416 is for the Request-URI only, §8.2.2.1).

Mutations these tests kill: a proxy without Timer C (the client waits for its own timeout instead of a 408), a
408 sent without ending the server transaction (a transaction left over), a registrar answering 416 or 404 to a
``tel:``/``http:`` From or To, a TU path that neither answers nor forwards (a server transaction left in Trying).
"""

from __future__ import annotations

import asyncio
import random

import pytest

from simulator.lab.access import remote_user_session, user_accounts
from simulator.lab.topology import Lab
from simulator.net.clients.sip_client import one_request
from simulator.net.edge.access_edge import AccessEdge
from simulator.net.peers.frontend import FrontEndServer
from simulator.net.transport.sip_proxy import Inbound
from simulator.outcome import ProbeFailure, Reason
from simulator.spec.schema import ClientRole
from simulator.wire.sip import SipResponse

TIMEOUT = 3.0


def _edge(lab: Lab, node: str = "edge1") -> AccessEdge:
    edge = lab.nodes[node].services["access-edge"]
    assert isinstance(edge, AccessEdge)
    return edge


def _director(lab: Lab) -> FrontEndServer:
    server = lab.services["sip-director"]
    assert isinstance(server, FrontEndServer)
    return server


def _drop_messages(director: FrontEndServer, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make the Director take MESSAGE requests and never answer them; returns the Call-IDs it swallowed."""
    swallowed: list[str] = []
    handle = director._handle

    async def silent(inbound: Inbound) -> SipResponse | None:
        if inbound.request.method == "MESSAGE":
            swallowed.append(inbound.request.call_id)
            return None
        return await handle(inbound)

    monkeypatch.setattr(director, "_handle", silent)
    return swallowed


async def test_the_edge_answers_408_when_the_director_never_answers(lab: Lab, monkeypatch: pytest.MonkeyPatch
                                                                    ) -> None:
    edge = _edge(lab)
    edge.proxy.core.response_timeout = 0.3  # Timer C, shortened for the test (10 s in the lab)
    swallowed = _drop_messages(_director(lab), monkeypatch)
    target = user_accounts(lab)[1].aor
    async with remote_user_session(lab, "edge1") as user:
        request = user.client.build("MESSAGE", target, user.from_, f"<{target}>", body=b"anyone?")
        response = await user.client.request(request, TIMEOUT)
    assert swallowed == [request.call_id]  # it did reach the Director
    assert response.status == 408  # RFC 3261 §16.8
    assert (response.headers.get("server") or "").startswith("edgesim-access-edge/edge1")
    assert response.to.tag is not None  # §8.2.6.2: the Edge answered as a UAS
    assert edge.proxy.timeouts == 1 and edge.proxy.pending == 0
    assert len(edge.proxy.core.layer) == 0  # the server transaction ended with the 408 (Timer J = 0 on TLS)


async def test_a_client_gives_up_at_its_own_deadline(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    _drop_messages(_director(lab), monkeypatch)
    target = user_accounts(lab)[1].aor
    async with remote_user_session(lab, "edge1") as user:
        request = user.client.build("MESSAGE", target, user.from_, f"<{target}>", body=b"anyone?")
        with pytest.raises(ProbeFailure) as failure:
            await user.client.request(request, 0.3)
        assert len(user.client._core) == 0  # nothing left waiting
        assert (await user.client.request(user.client.build("OPTIONS", target, user.from_, f"<{target}>"),
                                          TIMEOUT)).status == 200  # and the client goes on
    assert failure.value.reason is Reason.TIMEOUT
    assert failure.value.detail == "no final response to MESSAGE within 0.3 s"
    assert _edge(lab).proxy.pending == 1  # the Edge still waits, up to its own Timer C


async def test_no_transaction_is_left_once_a_session_is_over(lab: Lab) -> None:
    accounts = user_accounts(lab)
    async with remote_user_session(lab, "edge1") as user:
        await user.provisioning(TIMEOUT)
        await user.subscribe_presence(accounts[1].aor, TIMEOUT)
        await user.publish_presence(TIMEOUT)
        await user.instant_message(accounts[1].aor, "hello", TIMEOUT)
        await user.request_mras(TIMEOUT)
        assert len(user.client._core) == 0
    director = _director(lab)
    for _ in range(100):  # the NOTIFY's 200 is still on its way back through the Edge
        if director.notifies_acknowledged:
            break
        await asyncio.sleep(0.01)
    edge = _edge(lab)
    assert director.notifies_acknowledged == 1
    # every server and client transaction ended (TLS: Timers J, K, I are zero; the INVITE got a 2xx)
    assert (len(edge.proxy.core.layer), edge.proxy.pending) == (0, 0)
    assert (len(director.proxy.core.layer), director.proxy.pending) == (0, 0)
    assert edge.proxy.forwarded >= 9 and edge.proxy.timeouts == 0 and edge.proxy.stray_responses == 0


@pytest.mark.parametrize(("from_", "to", "problem"), [
    # RFC 4475 §3.3.4 (unksm2): "the To: header field is required to contain a SIP or SIPS URI as an AOR"
    ("<http://www.example.com>", "isbn:2983792873", "To is not a SIP or SIPS URI (isbn)"),
    ("<tel:+14255550100>", "<sip:remote-users-1@contoso.com>", "From is not a SIP or SIPS URI (tel)"),
])
async def test_the_registrar_answers_400_to_a_non_sip_address_of_record(lab: Lab, from_: str, to: str,
                                                                        problem: str) -> None:
    director = _director(lab)
    frontend = lab.scenario.clients_with_role(ClientRole.FRONT_END)[0]
    response = await one_request(director.config.host, director.config.port, lab.peer_client_context(frontend),
                                 director.config.fqdn, TIMEOUT, random.Random(8), "REGISTER", "sip:contoso.com",
                                 from_, to)
    assert (response.status, response.reason) == (400, problem)
    assert (response.headers.get("server") or "").startswith("edgesim-frontend/")
    assert director.counters["registered"] == 0


async def test_the_edge_answers_400_to_a_from_or_to_it_cannot_check(lab: Lab) -> None:
    async with remote_user_session(lab, "edge1", sign_in=False) as user:
        register = user.client.build("REGISTER", "sip:contoso.com", user.from_, "isbn:2983792873")
        refused = await user.client.request(register, TIMEOUT)
        message = user.client.build("MESSAGE", "sip:contoso.com", "<tel:+14255550100>", "<sip:contoso.com>")
        no_user = await user.client.request(message, TIMEOUT)
    assert (refused.status, refused.reason) == (400, "To is not a SIP or SIPS URI (isbn)")
    assert (no_user.status, no_user.reason) == (400, "From is not a SIP or SIPS URI (tel)")
    for response in (refused, no_user):
        assert (response.headers.get("server") or "").startswith("edgesim-access-edge/")
    assert _director(lab).counters["REGISTER"] == 0
