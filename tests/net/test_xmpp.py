"""XMPP proxy, gateway link and partner streams over real sockets and TLS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.lab.addressing import HostKind
from simulator.lab.topology import Lab
from simulator.lab.xmpp import XMPP_S2S_PORT
from simulator.net.transport.xmpp_stream import XmppServerListener, connect_s2s
from simulator.outcome import ProbeFailure, Reason, Verdict
from simulator.scenario.runner import run_rules
from simulator.spec.schema import CertificateVariant, ClientRole, Scenario
from simulator.wire import xmpp
from simulator.wire.errors import MalformedMessage

XMPP_RULES = ["I1", "X3", "E1", "X1", "E2", "X2"]


@pytest.fixture
async def lab(shipped_scenario: Scenario) -> AsyncIterator[Lab]:
    async with Lab(shipped_scenario) as running:
        yield running


def _proxy(lab: Lab, node: str = "edge1") -> XmppServerListener:
    proxy = lab.nodes[node].services["xmpp-proxy"]
    assert isinstance(proxy, XmppServerListener)
    return proxy


async def test_all_xmpp_rules_pass(lab: Lab) -> None:
    results = await run_rules(lab, XMPP_RULES)
    assert {r.rule.id: r.verdict for r in results} == dict.fromkeys(XMPP_RULES, Verdict.PASS)
    partner = lab.services["xmpp-partner-xmpp-jabber"]
    assert isinstance(partner, XmppServerListener)
    assert {"E2-edge1-out", "E2-edge2-out", "X2-edge1-out", "X2-edge2-out"} <= set(partner.received)


@pytest.mark.parametrize(("variant", "reason"), [
    (CertificateVariant.WRONG_SAN, Reason.WRONG_SAN),
    (CertificateVariant.EXPIRED, Reason.EXPIRED),
    (CertificateVariant.UNTRUSTED, Reason.UNTRUSTED),
    (CertificateVariant.REVOKED, Reason.REVOKED),
])
async def test_partner_certificate_problems_are_refused_with_the_reason(lab: Lab, variant: CertificateVariant,
                                                                       reason: Reason) -> None:
    partner = lab.scenario.clients_with_role(ClientRole.XMPP_PARTNER)[0]
    assert partner.domain is not None
    with pytest.raises(ProbeFailure) as caught:
        await connect_s2s(lab.external_bind("edge1", "access"), lab.port_map(XMPP_S2S_PORT), partner.domain,
                          lab.scenario.domain, lab.peer_client_context(partner, variant), 3)
    assert caught.value.reason is reason
    for _ in range(100):
        if sum(_proxy(lab).rejected.values()):
            break
        await asyncio.sleep(0.01)
    assert _proxy(lab).rejected.get(str(reason)) == 1 and _proxy(lab).accepted == 0


async def test_a_domain_that_is_not_an_allowed_partner_is_refused(lab: Lab) -> None:
    federated = lab.scenario.clients_with_role(ClientRole.FEDERATED_PARTNER)[0]  # trusted cert, not an XMPP partner
    assert federated.domain is not None
    with pytest.raises(ProbeFailure) as caught:
        await connect_s2s(lab.external_bind("edge1", "access"), lab.port_map(XMPP_S2S_PORT), federated.domain,
                          lab.scenario.domain, lab.peer_client_context(federated), 3)
    assert caught.value.reason is Reason.REJECTED and "policy-violation" in caught.value.detail


async def test_without_the_gateway_link_inbound_messages_fail(lab: Lab) -> None:
    await lab.services["frontend-xmpp"].stop()
    for _ in range(100):
        gateway = lab.nodes["edge1"].services["xmpp-gateway"]
        if not getattr(gateway, "links", None):
            break
        await asyncio.sleep(0.01)
    results = await run_rules(lab, ["E1"])
    assert results[0].verdict is Verdict.FAIL and results[0].reason == "rejected"
    assert "no-gateway" in results[0].detail


async def test_partner_down_fails_outbound_and_gateway_down_blocks_inbound(lab: Lab) -> None:
    await lab.services["xmpp-partner-xmpp-jabber"].stop()
    await lab.nodes["edge2"].stop_service("xmpp-gateway")
    results = {r.rule.id: r for r in await run_rules(lab, ["I1", "E1", "E2"])}
    assert (results["I1"].verdict, results["I1"].reason) == (Verdict.FAIL, "refused")
    assert results["E1"].blocked_by == "I1" and results["E2"].blocked_by == "I1"
    outbound = await run_rules(lab, ["X2"])  # X2 depends on X3, which is not selected here
    assert outbound[0].verdict is Verdict.FAIL and outbound[0].reason in {"rejected", "refused"}


async def test_garbage_on_5269_does_not_stop_the_proxy(lab: Lab) -> None:
    address, port = lab.external_bind("edge1", "access"), lab.port_map(XMPP_S2S_PORT)
    for junk in (b"\x16\x03\x01\x00\xff" * 20, b"<?xml version='1.0'?><notastream/>",
                 b"<!DOCTYPE x [<!ENTITY a 'aaaa'>]><x>&a;</x>"):
        reader, writer = await asyncio.open_connection(address, port)
        writer.write(junk)
        await writer.drain()
        await asyncio.wait_for(reader.read(4096), 3)
        writer.close()
        await writer.wait_closed()
    results = await run_rules(lab, ["X1"])
    assert results[0].verdict is Verdict.PASS


async def test_stream_to_the_wrong_domain_gets_host_unknown(lab: Lab) -> None:
    reader, writer = await asyncio.open_connection(lab.external_bind("edge1", "access"), lab.port_map(XMPP_S2S_PORT))
    writer.write(xmpp.stream_header("jabber.example.org", "fabrikam.com"))
    await writer.drain()
    data = await asyncio.wait_for(reader.read(4096), 3)
    writer.close()
    await writer.wait_closed()
    assert b"host-unknown" in data


def test_partner_addresses_come_from_the_plan(lab: Lab) -> None:
    partner = lab.services["xmpp-partner-xmpp-jabber"]
    assert isinstance(partner, XmppServerListener)
    assert partner.host == lab.plan.of("xmpp-jabber", HostKind.CLIENT)[0].address


CORPUS = [
    xmpp.stream_header("a.example", "b.example") + xmpp.features(xmpp.STARTTLS_REQUIRED) + b"<message to='x@y'>"
    b"<body>hi</body></message>" + xmpp.STREAM_END,
]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=1, max_value=9))
def test_stream_parser_raises_only_malformed_and_is_split_invariant(data: bytes, step: int) -> None:
    whole = xmpp.XmppStreamParser().feed(CORPUS[0])
    split_parser = xmpp.XmppStreamParser()
    split = [e for i in range(0, len(CORPUS[0]), step) for e in split_parser.feed(CORPUS[0][i:i + step])]
    assert [type(e) for e in split] == [type(e) for e in whole]
    assert [getattr(e, "tag", None) for e in split] == [getattr(e, "tag", None) for e in whole]
    parser = xmpp.XmppStreamParser()
    try:
        parser.feed(CORPUS[0][:60] + data)
    except MalformedMessage as error:
        assert error.status is None


def test_a_dtd_split_across_reads_is_refused() -> None:
    parser = xmpp.XmppStreamParser()
    parser.feed(xmpp.stream_header("a.example", "b.example"))
    with pytest.raises(MalformedMessage):
        for chunk in (b"<!DOC", b"TYPE x [<!ENT", b"ITY a 'AAAA'>]>", b"<message>&a;&a;</message>"):
            parser.feed(chunk)


def test_stanzas_are_not_kept_after_they_are_handed_out() -> None:
    parser = xmpp.XmppStreamParser()
    parser.feed(xmpp.stream_header("a.example", "b.example"))
    for index in range(2000):
        [event] = parser.feed(xmpp.message("x@a.example", "y@b.example", str(index), "hi"))
        assert isinstance(event, xmpp.TopLevel)
    assert parser._root is not None and len(parser._root) == 0
