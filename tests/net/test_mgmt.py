"""The internal management listeners (I8–I11) over real sockets and real mutual TLS."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.lab.addressing import HostKind
from simulator.lab.topology import Lab
from simulator.net.clients.mgmt import cls_query, cms_push
from simulator.net.edge.mgmt import ClsAgentListener, CmsReplicationListener
from simulator.net.transport.tls import client_context
from simulator.outcome import ProbeFailure, Reason
from simulator.spec.schema import CertificateVariant, ClientRole, Scenario
from simulator.wire.cls import parse_query, parse_reply
from simulator.wire.errors import MalformedMessage


@pytest.fixture
async def lab(shipped_scenario: Scenario) -> AsyncIterator[Lab]:
    async with Lab(shipped_scenario) as running:
        yield running


def _frontend(lab: Lab, variant: CertificateVariant = CertificateVariant.VALID) -> ssl.SSLContext:
    client = lab.scenario.clients_with_role(ClientRole.FRONT_END)[0]
    return lab.peer_client_context(client, variant)


def _edge1(lab: Lab) -> str:
    return lab.plan.one("edge1", HostKind.EDGE_INTERNAL).address


async def test_cls_query_round_trip_on_each_port(lab: Lab) -> None:
    for port in (50001, 50002, 50003):
        reply = await cls_query(_edge1(lab), lab.port_map(port), _frontend(lab), "edge1-int.contoso.local",
                                f"t{port}", timeout=3)
        assert reply.status == 200 and reply.fields == ("edge1", str(port), f"t{port}")


async def test_cms_push_is_stored_and_acknowledged(lab: Lab) -> None:
    listener = lab.nodes["edge2"].services["cms"]
    assert isinstance(listener, CmsReplicationListener)
    address = lab.plan.one("edge2", HostKind.EDGE_INTERNAL).address
    first = await cms_push(address, lab.port_map(4443), _frontend(lab), "edge2-int.contoso.local", b"<a/>", 3)
    second = await cms_push(address, lab.port_map(4443), _frontend(lab), "edge2-int.contoso.local", b"<b/>", 3)
    assert (first["version"], second["version"]) == (1, 2)
    assert list(listener.documents) == [b"<a/>", b"<b/>"]


@pytest.mark.parametrize(("variant", "reason"), [
    (CertificateVariant.WRONG_SAN, Reason.WRONG_SAN),
    (CertificateVariant.EXPIRED, Reason.EXPIRED),
    (CertificateVariant.UNTRUSTED, Reason.UNTRUSTED),
    (CertificateVariant.REVOKED, Reason.REVOKED),
])
async def test_listeners_reject_bad_client_certificates_with_the_right_reason(
        lab: Lab, variant: CertificateVariant, reason: Reason) -> None:
    cls = lab.nodes["edge1"].services["cls-50002"]
    cms = lab.nodes["edge1"].services["cms"]
    with pytest.raises(ProbeFailure) as caught:
        await cls_query(_edge1(lab), lab.port_map(50002), _frontend(lab, variant), "edge1-int.contoso.local", "x", 3)
    assert caught.value.reason is reason
    with pytest.raises(ProbeFailure) as caught:
        await cms_push(_edge1(lab), lab.port_map(4443), _frontend(lab, variant), "edge1-int.contoso.local", b"<a/>", 3)
    assert caught.value.reason is reason
    # The listeners counted the refusal under the same reason, and accepted nobody.
    assert cls.rejected[str(reason)] == 1 and cls.accepted == 0
    assert cms.rejected[str(reason)] == 1 and cms.accepted == 0


async def test_trusted_peer_that_is_not_an_internal_server_is_refused(lab: Lab) -> None:
    partner = next(c for c in lab.scenario.clients if c.role is ClientRole.FEDERATED_PARTNER)
    with pytest.raises(ProbeFailure) as caught:
        await cls_query(_edge1(lab), lab.port_map(50001), lab.peer_client_context(partner),
                        "edge1-int.contoso.local", "x", 3)
    assert caught.value.reason is Reason.WRONG_SAN


async def test_client_rejects_an_edge_answering_for_another_name(lab: Lab) -> None:
    with pytest.raises(ProbeFailure) as caught:
        await cls_query(_edge1(lab), lab.port_map(50001), _frontend(lab), "edge9-int.contoso.local", "x", 3)
    assert caught.value.reason is Reason.WRONG_SAN


async def test_client_without_certificate_is_refused(lab: Lab) -> None:
    assert lab.files is not None
    with pytest.raises(ProbeFailure) as caught:
        await cls_query(_edge1(lab), lab.port_map(50001), client_context(lab.files.ca),
                        "edge1-int.contoso.local", "x", 3)
    assert caught.value.reason in {Reason.BAD_CERTIFICATE, Reason.TLS_ALERT}


async def test_stopped_listener_is_refused(lab: Lab) -> None:
    await lab.nodes["edge1"].stop_service("cls-50003")
    with pytest.raises(ProbeFailure) as caught:
        await cls_query(_edge1(lab), lab.port_map(50003), _frontend(lab), "edge1-int.contoso.local", "x", 3)
    assert caught.value.reason is Reason.REFUSED


async def _tls_exchange(lab: Lab, port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(_edge1(lab), lab.port_map(port), ssl=_frontend(lab),
                                                   server_hostname="edge1-int.contoso.local")
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.read(4096), 3)
    finally:
        writer.close()
        await writer.wait_closed()


async def test_malformed_cls_lines_get_400_and_the_agent_keeps_serving(lab: Lab) -> None:
    answer = await _tls_exchange(lab, 50001, b"HELLO THERE\r\n")
    assert answer.startswith(b"CLS/1 400 ")
    listener = lab.nodes["edge1"].services["cls-50001"]
    assert isinstance(listener, ClsAgentListener) and listener.malformed == 1
    reply = await cls_query(_edge1(lab), lab.port_map(50001), _frontend(lab), "edge1-int.contoso.local", "ok", 3)
    assert reply.status == 200


async def test_malformed_http_gets_400_and_the_replica_keeps_serving(lab: Lab) -> None:
    answer = await _tls_exchange(lab, 4443, b"NOT HTTP AT ALL\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ")
    answer = await _tls_exchange(lab, 4443, b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 404 ")
    await cms_push(_edge1(lab), lab.port_map(4443), _frontend(lab), "edge1-int.contoso.local", b"<ok/>", 3)


async def test_plain_tcp_garbage_does_not_kill_the_listener(lab: Lab) -> None:
    reader, writer = await asyncio.open_connection(_edge1(lab), lab.port_map(50001))
    writer.write(b"\x00\xff" * 100)
    await writer.drain()
    await asyncio.wait_for(reader.read(100), 3)  # an alert or nothing; then the listener closes
    writer.close()
    await writer.wait_closed()
    listener = lab.nodes["edge1"].services["cls-50001"]
    for _ in range(50):
        if listener.rejected:
            break
        await asyncio.sleep(0.02)
    assert sum(listener.rejected.values()) == 1
    await cls_query(_edge1(lab), lab.port_map(50001), _frontend(lab), "edge1-int.contoso.local", "ok", 3)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_cls_parsers_never_raise_anything_but_malformed(data: bytes) -> None:
    for parse in (parse_query, parse_reply):
        try:
            parse(data)
        except MalformedMessage as error:
            assert error.status == 400
