"""The Edge's XMPP roles: the proxy's delivery into the Front End's gateway link and its outbound route to
partners (5269, E1/E2/X1/X2), and the gateway link listener on internal MTLS 23456 (I1/X3).

Flow of a partner's message (E1): partner → Edge 5269 → gateway link (the Front End's persistent
23456 connection to that node) → Front End, whose receipt (XEP-0184) travels back the same way. Flow of
an outbound message (E2): Front End → 23456 → Edge, which finds the partner by SRV
``_xmpp-server._tcp.<domain>`` through the lab DNS, opens 5269 to it, and relays the partner's receipt.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from simulator.net.transport.listener import Peer, TlsListener
from simulator.net.transport.tlsstream import TlsStream
from simulator.net.transport.xmpp_stream import (
    NEGOTIATION_TIMEOUT,
    RECEIPTS_NS,
    EventReader,
    StanzaLink,
    XmppFailure,
    _retag,
    connect_s2s,
    ignore_stanza,
    receipt_for,
)
from simulator.outcome import ProbeFailure, Reason
from simulator.wire import xmpp
from simulator.wire.errors import MalformedMessage

# ------------------------------------------------------------------------------------------- Edge side


@dataclass
class OutboundRoute:
    """How the Edge reaches a partner domain: resolve and dial (set by the lab)."""

    resolve: Callable[[str], Awaitable[tuple[str, int]]]
    context: ssl.SSLContext
    local_addr: str | None


class XmppGatewayListener(TlsListener):
    """23456 (I1/X3): the Front End's XMPP gateway links; stanzas for other domains go out through 5269."""

    def __init__(self, node: str, domain: str, host: str, port: int, context: ssl.SSLContext,
                 allowed_peers: frozenset[str] | None, route: OutboundRoute) -> None:
        super().__init__("xmpp-gateway", host, port, context, allowed_peers)
        self.node = node
        self.domain = domain
        self.route = route
        self.links: list[StanzaLink] = []
        self.outbound = 0
        self._turn = itertools.count()

    def pick_link(self) -> StanzaLink | None:
        return self.links[next(self._turn) % len(self.links)] if self.links else None

    async def refuse(self, stream: TlsStream, peer: Peer, reason: Reason) -> None:
        stream.write(xmpp.stream_error("not-authorized"))
        await stream.drain()

    async def handle(self, stream: TlsStream, peer: Peer) -> None:
        events = EventReader(stream)
        try:
            header = await events.expect_header()
            stream.write(xmpp.stream_header(self.domain, header.from_, f"{self.node}-gw") + xmpp.features())
            await stream.drain()
            link = StanzaLink(stream, events, peer.name, self._from_frontend)
            self.links.append(link)
            try:
                await link.run()
            finally:
                self.links.remove(link)
        except (XmppFailure, MalformedMessage):
            return

    async def _from_frontend(self, link: StanzaLink, stanza: ET.Element) -> None:
        to = xmpp.domain_of(stanza.get("to", ""))
        if to == self.domain:  # a ping for the Edge itself
            await link.send(receipt_for(stanza, self.domain))
            return
        self.outbound += 1
        self.spawn(self._relay_out(link, stanza, to))  # owned: cancelled with the listener

    async def _relay_out(self, link: StanzaLink, stanza: ET.Element, domain: str) -> None:
        """E2/X2: open 5269 to the partner, deliver, relay its receipt back to the Front End."""
        stanza_id = stanza.get("id", "")
        try:
            host, port = await self.route.resolve(domain)
            stream, events = await connect_s2s(host, port, self.domain, domain, self.route.context,
                                               NEGOTIATION_TIMEOUT, self.route.local_addr)
            try:
                partner = StanzaLink(stream, events, domain, ignore_stanza)
                runner = asyncio.create_task(partner.run())
                try:
                    answer = await partner.request(_retag(stanza), stanza_id, NEGOTIATION_TIMEOUT)
                finally:
                    runner.cancel()
                    with contextlib.suppress(asyncio.CancelledError, XmppFailure, MalformedMessage, OSError):
                        await runner
            finally:
                await stream.close()
            await link.send(_retag(answer))
        except (ProbeFailure, TimeoutError, OSError, LookupError) as error:
            failure = ET.Element("message", {"from": domain, "to": stanza.get("from", ""), "type": "error",
                                             "id": f"error-{stanza_id}"})
            ET.SubElement(failure, f"{{{RECEIPTS_NS}}}received", {"id": stanza_id})
            ET.SubElement(failure, "error", {"type": "cancel"}).text = str(error)[:200]
            with contextlib.suppress(OSError, ssl.SSLError):
                await link.send(ET.tostring(failure))


def edge_deliver(gateway: XmppGatewayListener) -> Callable[[ET.Element], Awaitable[bytes | None]]:
    """The Edge proxy hands a partner's stanza to a Front End gateway link and returns its answer."""

    async def deliver(stanza: ET.Element) -> bytes | None:
        stanza_id = stanza.get("id", "")
        link = gateway.pick_link()
        if link is None:
            error = ET.Element("message", {"from": gateway.domain, "to": stanza.get("from", ""), "type": "error",
                                           "id": f"error-{stanza_id}"})
            ET.SubElement(error, f"{{{RECEIPTS_NS}}}received", {"id": stanza_id})
            ET.SubElement(error, "error", {"type": "wait"}).text = "no-gateway"
            return ET.tostring(error)
        answer = await link.request(_retag(stanza), stanza_id, NEGOTIATION_TIMEOUT)
        return _retag(answer)

    return deliver

