"""Probes of the XMPP rules: I1/X3 (gateway link, MTLS 23456), E1/X1 (partner → proxy 5269), E2/X2
(proxy → partner 5269, found by SRV through the lab DNS)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable

from simulator.lab.addressing import HostKind
from simulator.lab.xmpp import XMPP_GATEWAY_PORT, XMPP_S2S_PORT
from simulator.net.clients.xmpp import exchange, message_with_receipt_request, open_gateway_link, ping
from simulator.net.transport.xmpp_stream import answered_id, connect_s2s, is_error
from simulator.outcome import Outcome, ProbeFailure, Reason
from simulator.scenario.probing import ProbeContext, guarded, host_of, internal_target, peer, probe
from simulator.spec.schema import ClientRole


def _check_answer(answer: ET.Element, stanza_id: str, where: str) -> None:
    if is_error(answer):
        text = " ".join(answer.itertext()).strip()
        raise ProbeFailure(Reason.REJECTED, f"{where}: error answer to {stanza_id}: {text}")
    if answered_id(answer) != stanza_id:
        raise ProbeFailure(Reason.PROTOCOL_ERROR, f"{where}: answer does not match {stanza_id}")


async def _through_gateway_link(ctx: ProbeContext, node: str, stanza_for: Callable[[str, str, str], bytes],
                                suffix: str, timeout: float) -> ET.Element:
    """As the Front End: open the gateway link to ``node`` (MTLS 23456), send one stanza, return its answer."""
    frontend = peer(ctx, ClientRole.FRONT_END)
    address, name = internal_target(ctx, node)
    port = ctx.lab.port_map(XMPP_GATEWAY_PORT)
    domain = ctx.lab.scenario.domain
    stream, events = await open_gateway_link(address, port, ctx.lab.peer_client_context(frontend), name,
                                             frontend.fqdn or frontend.name, domain, ctx.timeout,
                                             source=host_of(ctx, frontend))
    stanza_id = f"{ctx.rule.id}-{node}-{suffix}"
    try:
        answer = await exchange(stream, events, stanza_for(frontend.fqdn or "", domain, stanza_id), stanza_id,
                                timeout, f"{address}:{port}")
    finally:
        await stream.close()
    _check_answer(answer, stanza_id, f"{address}:{port}")
    return answer


@probe("xmpp-gateway-in")
async def xmpp_gateway_in(ctx: ProbeContext, node: str) -> Outcome:
    """I1/X3: the Front End's XMPP gateway opens MTLS 23456 to the node, opens a stream, pings the Edge."""

    async def check() -> str:
        answer = await _through_gateway_link(ctx, node, ping, "ping", ctx.timeout)
        address, _ = internal_target(ctx, node)
        return f"{address}:{ctx.lab.port_map(XMPP_GATEWAY_PORT)} stream open, ping answered by {answer.get('from')}"

    return await guarded(node, check)


@probe("xmpp-s2s-in")
async def xmpp_s2s_in(ctx: ProbeContext, node: str) -> Outcome:
    """E1/X1: an XMPP partner opens 5269 to the node's Access Edge address (STARTTLS, SASL EXTERNAL) and sends
    a message to a user; the receipt comes back from the Front End through the gateway link."""

    async def check() -> str:
        partner = peer(ctx, ClientRole.XMPP_PARTNER)
        assert partner.domain is not None
        address = ctx.lab.public_address(node, "access")
        port = ctx.lab.port_map(XMPP_S2S_PORT)
        domain = ctx.lab.scenario.domain
        source = ctx.lab.plan.of(partner.name, HostKind.CLIENT)[0].address
        stream, events = await connect_s2s(address, port, partner.domain, domain,
                                           ctx.lab.peer_client_context(partner), ctx.timeout, source)
        try:
            stanza_id = f"{ctx.rule.id}-{node}-msg"
            stanza = message_with_receipt_request(f"alice@{partner.domain}", f"bob@{domain}", stanza_id, "hello")
            answer = await exchange(stream, events, stanza, stanza_id, ctx.timeout, f"{address}:{port}")
        finally:
            await stream.close()
        _check_answer(answer, stanza_id, f"{address}:{port}")
        return f"{partner.domain} → {address}:{port} authenticated (SASL EXTERNAL), receipt from {answer.get('from')}"

    return await guarded(node, check)


@probe("xmpp-s2s-out")
async def xmpp_s2s_out(ctx: ProbeContext, node: str) -> Outcome:
    """E2/X2: the Front End sends a message for a partner user through the node; the Edge resolves the
    partner (SRV), opens 5269 to it from its public address, and relays the partner's receipt."""

    async def check() -> str:
        partner = peer(ctx, ClientRole.XMPP_PARTNER)

        def message(_sender: str, domain: str, stanza_id: str) -> bytes:
            return message_with_receipt_request(f"bob@{domain}", f"alice@{partner.domain}", stanza_id, "hi")

        answer = await _through_gateway_link(ctx, node, message, "out", ctx.timeout * 2)
        return f"{node} → {partner.domain}:5269 delivered, receipt from {answer.get('from')}"

    return await guarded(node, check)
