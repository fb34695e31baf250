"""The Access Edge, the emulated Director and the SIP clients over real sockets and real TLS."""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import ssl
import time

import pytest

from simulator.core.dns_policy import LegacySingleAddressPolicy, LyncFailoverPolicy
from simulator.lab.access import (
    access_edge_address,
    remote_user_session,
    request_mras_credentials,
    user_accounts,
)
from simulator.lab.addressing import HostKind
from simulator.lab.pki import LabPki
from simulator.lab.topology import Lab
from simulator.net.clients.sip_client import SipClient, one_request
from simulator.net.edge.access_edge import AccessEdge
from simulator.net.edge.mras import MrasService
from simulator.net.peers.frontend import FrontEndServer
from simulator.net.transport.sip_connection import SipTlsListener, diagnostic_reason
from simulator.net.transport.tls import client_context
from simulator.outcome import ProbeFailure, Reason
from simulator.spec.schema import CertificateVariant, ClientRole, Scenario
from simulator.wire import mras
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


async def test_remote_user_signs_in_provisions_subscribes_publishes_and_chats(lab: Lab) -> None:
    accounts = user_accounts(lab)
    async with remote_user_session(lab, "edge2", sign_in=False) as user:
        signed = await user.sign_in(TIMEOUT)
        assert signed.challenge.status == 401 and "Digest" in (signed.challenge.headers.get("www-authenticate") or "")
        assert signed.accepted.status == 200
        assert signed.accepted.headers.get("ms-user-logon-data") == "RemoteUser"
        assert 'gruu="sip:remote-users-1@contoso.com;opaque=user:epid:' in (signed.accepted.headers.get("contact")
                                                                             or "")
        mras_uri = await user.provisioning(TIMEOUT)
        assert mras_uri == "sip:dirpool.contoso.local@contoso.com;gruu;opaque=srvr:MRAS:director"
        notify = await user.subscribe_presence(accounts[1].aor, TIMEOUT)
        assert notify.headers.get("event") == "presence" and b"<basic>open</basic>" in notify.body
        await user.publish_presence(TIMEOUT)
        delivered = await user.instant_message(accounts[1].aor, "hello from outside", TIMEOUT)
        assert delivered.status == 200
    director = _director(lab)
    assert (accounts[0].aor, accounts[1].aor, b"hello from outside") in director.messages
    assert len(director.publications) == 1
    for _ in range(50):  # the 200 to the NOTIFY travels back through the Edge
        if director.notifies_acknowledged:
            break
        await asyncio.sleep(0.01)
    assert director.notifies_acknowledged == 1
    assert "sip:remote-users-1@contoso.com" in director.registrations


async def test_wrong_password_is_refused_by_the_registrar(lab: Lab) -> None:
    async with remote_user_session(lab, "edge1", sign_in=False) as user:
        user.password = "not-the-password"
        with pytest.raises(ProbeFailure) as failure:
            await user.sign_in(TIMEOUT)
    assert failure.value.reason is Reason.REJECTED and "403" in failure.value.detail


async def test_the_edge_refuses_requests_before_registration(lab: Lab) -> None:
    async with remote_user_session(lab, "edge1", sign_in=False) as user:
        message = user.client.build("MESSAGE", user_accounts(lab)[1].aor, user.from_,
                                    f"<{user_accounts(lab)[1].aor}>", body=b"sneaky")
        response = await user.client.request(message, TIMEOUT)
    assert response.status == 403 and (response.headers.get("server") or "").startswith("edgesim-access-edge")
    assert _edge(lab).refused["not-authenticated"] == 1
    assert _director(lab).messages == []


async def test_mras_credentials_through_the_sip_path_authenticate_against_the_store(lab: Lab) -> None:
    answer = await request_mras_credentials(lab, "edge1", timeout=TIMEOUT)
    assert answer.credentials is not None and answer.reason_phrase == "OK"
    assert answer.credentials.duration == 480
    assert {(r.location, r.host_name, r.udp_port, r.tcp_port) for r in answer.relays} == {
        (mras.MrasLocation.INTERNET, "av.contoso.com", 3478, 443),
        (mras.MrasLocation.INTRANET, "edgepool-int.contoso.local", 3478, 443)}
    now = time.time()
    assert lab.credentials.password_for(answer.credentials.username, now) == answer.credentials.password
    issued = lab.credentials.issued(answer.credentials.username)
    assert issued is not None and issued.identity == "sip:remote-users-1@contoso.com"
    assert 480 * 60 - 5 < issued.expires_at - now <= 480 * 60
    assert lab.credentials.password_for(answer.credentials.username, now + 481 * 60) is None  # expired
    assert lab.credentials.password_for("0" * 40, now) is None  # made up
    mras_service = lab.nodes["edge1"].services["mras"]
    assert isinstance(mras_service, MrasService) and mras_service.issued == 1
    other = lab.nodes["edge2"].services["mras"]
    assert isinstance(other, MrasService) and other.issued == 0  # routed to the node it came through


async def test_mras_refuses_other_methods_and_bodies(lab: Lab) -> None:
    frontend = lab.scenario.clients_with_role(ClientRole.FRONT_END)[0]
    address = lab.plan.one("edge1", HostKind.EDGE_INTERNAL).address
    context = lab.peer_client_context(frontend)
    rng = random.Random(1)
    uri = "sip:fepool.contoso.local@contoso.com;gruu;opaque=srvr:MRAS:x"
    args = (address, lab.port_map(5062), context, "edge1-int.contoso.local", TIMEOUT, rng)
    wrong_type = await one_request(*args, "SERVICE", uri, "<sip:a@contoso.com>", f"<{uri}>",
                                   headers=[("Content-Type", "text/plain")], body=b"x")
    bad_xml = await one_request(*args, "SERVICE", uri, "<sip:a@contoso.com>", f"<{uri}>",
                                headers=[("Content-Type", mras.CONTENT_TYPE)], body=b"<request")
    options = await one_request(*args, "OPTIONS", uri, "<sip:a@contoso.com>", f"<{uri}>")
    assert (wrong_type.status, bad_xml.status, options.status) == (415, 400, 405)
    assert len(lab.credentials) == 0


async def test_mras_5062_refuses_a_client_without_an_internal_certificate(lab: Lab) -> None:
    assert lab.files is not None
    address = lab.plan.one("edge1", HostKind.EDGE_INTERNAL).address
    with pytest.raises(ProbeFailure) as failure:
        await one_request(address, lab.port_map(5062), client_context(lab.files.ca), "edge1-int.contoso.local",
                          TIMEOUT, random.Random(2), "SERVICE", "sip:x@contoso.com", "<sip:a@contoso.com>",
                          "<sip:x@contoso.com>")
    assert failure.value.reason in (Reason.BAD_CERTIFICATE, Reason.RESET, Reason.TLS_ALERT)
    listener = lab.nodes["edge1"].services["mras"]
    assert isinstance(listener, MrasService)
    for _ in range(50):
        if sum(listener.listener.rejected.values()):
            break
        await asyncio.sleep(0.01)
    assert sum(listener.listener.rejected.values()) == 1


async def _partner_message(lab: Lab, variant: CertificateVariant, role: ClientRole = ClientRole.FEDERATED_PARTNER
                           ) -> SipResponse:
    partner = lab.scenario.clients_with_role(role)[0]
    source = lab.plan.of(partner.name, HostKind.CLIENT)[0].address
    target = user_accounts(lab)[0].aor
    return await one_request(access_edge_address(lab, "edge1"), lab.port_map(5061),
                             lab.peer_client_context(partner, variant), "sip.contoso.com", TIMEOUT,
                             random.Random(3), "MESSAGE", target, f"<sip:bob@{partner.domain}>", f"<{target}>",
                             source=source, body=b"hi")


@pytest.mark.parametrize(("variant", "reason"), [
    (CertificateVariant.EXPIRED, Reason.EXPIRED),
    (CertificateVariant.UNTRUSTED, Reason.UNTRUSTED),
    (CertificateVariant.REVOKED, Reason.REVOKED),
])
async def test_partner_with_a_bad_certificate_is_refused_on_5061_by_tls(lab: Lab, variant: CertificateVariant,
                                                                         reason: Reason) -> None:
    with pytest.raises(ProbeFailure) as failure:
        await _partner_message(lab, variant)
    assert failure.value.reason is reason
    listener = _edge(lab).listeners["sip-5061-external"]
    for _ in range(50):
        if listener.rejected:
            break
        await asyncio.sleep(0.01)
    assert listener.rejected == {str(reason): 1}
    assert _director(lab).messages == []


async def test_partner_whose_certificate_does_not_name_its_srv_target_is_refused_wrong_san(lab: Lab) -> None:
    response = await _partner_message(lab, CertificateVariant.WRONG_SAN)
    assert response.status == 403 and diagnostic_reason(response) is Reason.WRONG_SAN
    assert _edge(lab).refused["wrong-san"] == 1
    assert _director(lab).messages == []
    good = await _partner_message(lab, CertificateVariant.VALID, ClientRole.PIC_PARTNER)
    assert good.status == 200 and (good.headers.get("server") or "").startswith("edgesim-frontend")


async def test_a_partner_may_not_use_the_edge_as_a_relay(lab: Lab) -> None:
    partner = lab.scenario.clients_with_role(ClientRole.FEDERATED_PARTNER)[0]
    source = lab.plan.of(partner.name, HostKind.CLIENT)[0].address
    response = await one_request(access_edge_address(lab, "edge1"), lab.port_map(5061),
                                 lab.peer_client_context(partner), "sip.contoso.com", TIMEOUT, random.Random(4),
                                 "MESSAGE", "sip:someone@live.example.net", "<sip:bob@fabrikam.com>",
                                 "<sip:someone@live.example.net>", source=source)
    assert response.status == 403 and _edge(lab).refused["relay-denied"] == 1


@pytest.mark.parametrize(("variant", "reason"), [
    (CertificateVariant.WRONG_SAN, Reason.WRONG_SAN),
    (CertificateVariant.EXPIRED, Reason.EXPIRED),
    (CertificateVariant.UNTRUSTED, Reason.UNTRUSTED),
    (CertificateVariant.REVOKED, Reason.REVOKED),
])
async def test_the_edge_refuses_a_partner_server_with_a_bad_certificate_going_out(
        shipped_scenario: Scenario, shipped_pki: LabPki, variant: CertificateVariant, reason: Reason) -> None:
    clients = [c.model_copy(update={"certificate": variant}) if c.role is ClientRole.FEDERATED_PARTNER else c
               for c in shipped_scenario.clients]
    scenario = shipped_scenario.model_copy(update={"clients": clients})
    async with Lab(scenario, pki=shipped_pki) as lab:
        frontend = lab.scenario.clients_with_role(ClientRole.FRONT_END)[0]
        response = await one_request(lab.plan.one("edge1", HostKind.EDGE_INTERNAL).address, lab.port_map(5061),
                                     lab.peer_client_context(frontend), "edge1-int.contoso.local", TIMEOUT,
                                     random.Random(5), "MESSAGE", "sip:bob@fabrikam.com",
                                     "<sip:remote-users-1@contoso.com>", "<sip:bob@fabrikam.com>")
        assert response.status == 504 and diagnostic_reason(response) is reason
        assert _edge(lab).refused[f"partner-{reason}"] == 1


async def test_malformed_requests_get_400_and_the_connection_carries_on(lab: Lab) -> None:
    assert lab.files is not None
    reader, writer = await asyncio.open_connection(access_edge_address(lab, "edge1"), lab.port_map(443),
                                                   ssl=client_context(lab.files.ca),
                                                   server_hostname="sip.contoso.com")
    try:
        bad_cseq = (b"OPTIONS sip:sip.contoso.com SIP/2.0\r\nVia: SIP/2.0/TLS 10.0.0.1:5061;branch=z9hG4bK1\r\n"
                    b"From: <sip:a@contoso.com>;tag=1\r\nTo: <sip:sip.contoso.com>\r\nCall-ID: bad-1\r\n"
                    b"CSeq: x OPTIONS\r\nContent-Length: 0\r\n\r\n")
        wrong_version = bad_cseq.replace(b"SIP/2.0\r\nVia", b"SIP/3.0\r\nVia").replace(b"bad-1", b"bad-2")
        no_via = b"OPTIONS sip:sip.contoso.com SIP/2.0\r\nCall-ID: bad-3\r\nContent-Length: 0\r\n\r\n"
        good = bad_cseq.replace(b"CSeq: x", b"CSeq: 1").replace(b"bad-1", b"good")
        writer.write(bad_cseq + b"\r\n\r\n" + no_via + wrong_version + good)
        await writer.drain()
        answers: list[tuple[int, str]] = []
        buffer = b""
        while len(answers) < 3:
            chunk = await asyncio.wait_for(reader.read(65536), TIMEOUT)
            assert chunk, "the Edge closed the connection"
            buffer += chunk
            while b"\r\n\r\n" in buffer:
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                head = head.lstrip(b"\r\n")  # the CRLF pong to our CRLFCRLF ping (RFC 5626 §3.5.1)
                if head:  # the 400 copies the bad CSeq as it came (RFC 3261 §8.2.6.2): read it loosely
                    status = re.match(rb"SIP/2.0 (\d{3}) ", head)
                    call_id = re.search(rb"\r\nCall-ID: *([^\r]+)", head)
                    assert status is not None and call_id is not None, head
                    answers.append((int(status.group(1)), call_id.group(1).decode()))
        assert answers == [(400, "bad-1"), (505, "bad-2"), (200, "good")]
    finally:
        writer.close()
        with contextlib.suppress(ssl.SSLError, OSError):
            await writer.wait_closed()
    listener = _edge(lab).listeners["sip-443"]
    assert isinstance(listener, SipTlsListener)
    for _ in range(50):
        if listener.malformed == 3:
            break
        await asyncio.sleep(0.01)
    assert listener.malformed == 3 and listener.running


async def test_a_lync_client_fails_over_to_the_next_address_and_a_legacy_one_does_not(lab: Lab) -> None:
    assert lab.files is not None
    await lab.nodes["edge1"].stop_service("sip-443")
    addresses = [access_edge_address(lab, "edge1"), access_edge_address(lab, "edge2")]
    context = client_context(lab.files.ca)
    lync = LyncFailoverPolicy(random.Random(0))
    for _ in range(2):
        client = await SipClient.connect(addresses, lab.port_map(443), context, "sip.contoso.com", TIMEOUT,
                                         random.Random(0), policy=lync)
        async with client:
            assert client.connection.peer[0] == addresses[1]
    assert lync.is_penalised(addresses[0], time.monotonic())
    with pytest.raises(ProbeFailure) as failure:
        await SipClient.connect(addresses, lab.port_map(443), context, "sip.contoso.com", TIMEOUT,
                                random.Random(0), policy=LegacySingleAddressPolicy())
    assert failure.value.reason is Reason.REFUSED


async def test_director_down_gives_504_with_the_reason(lab: Lab) -> None:
    await lab.services["sip-director"].stop()
    async with remote_user_session(lab, "edge1", sign_in=False) as user:
        with pytest.raises(ProbeFailure) as failure:
            await user.sign_in(TIMEOUT)
    assert failure.value.reason is Reason.REFUSED and "504" in failure.value.detail
