"""A federated or PIC partner's Edge, as the lab emulates it: SIP/MTLS 5061 at the partner's address.

It accepts mutual TLS from any peer with a lab-CA certificate (open federation; the Access Edge presents
its external certificate) and answers OPTIONS, MESSAGE, SUBSCRIBE, NOTIFY, INFO, INVITE and BYE 200 as
the partner's users would, with ``Server: edgesim-partner/<fqdn>`` so a probe can tell the request
crossed the federation link. Its certificate is the scenario's variant for that partner (valid,
wrong-san, expired …), which is what the Access Edge's outbound check (E8, F1, P2) has to catch. It answers
through the server transactions of a sans-I/O :class:`~simulator.core.sip_element.SipElement`, as the Edge does.
"""

from __future__ import annotations

import contextlib
import random
import ssl
from collections import Counter

from simulator.net.transport.sip_connection import SipConnection, SipTlsListener
from simulator.net.transport.sip_proxy import SipProxy
from simulator.wire.sip import SipRequest, SipResponse, make_response, new_tag

SERVER_HEADER = "edgesim-partner"
ANSWERED = frozenset({"OPTIONS", "MESSAGE", "SUBSCRIBE", "NOTIFY", "INFO", "INVITE", "BYE", "SERVICE"})


class PartnerEdgeServer:
    """The partner side of federation: answers what the Access Edge sends out on 5061."""

    def __init__(self, name: str, fqdn: str, domain: str, host: str, port: int, context: ssl.SSLContext,
                 rng: random.Random) -> None:
        self.fqdn = fqdn
        self.domain = domain
        self._rng = rng
        self.received: Counter[str] = Counter()
        self.peers: set[str] = set()  # certificate names of the Edges that connected
        self.listener = SipTlsListener(name, host, port, context, self._serve, side="partner")
        self.proxy = SipProxy(rng, server_header=f"{SERVER_HEADER}/{fqdn}", auto_trying=False)

    @property
    def running(self) -> bool:
        return self.listener.running

    async def start(self) -> None:
        await self.listener.start()

    async def stop(self) -> None:
        await self.listener.stop()
        await self.proxy.close()

    async def _serve(self, connection: SipConnection) -> None:
        self.peers |= connection.peer_names
        async with contextlib.aclosing(connection.messages()) as messages:
            async for message in messages:
                for inbound in await self.proxy.receive(connection, message):
                    if inbound.request.method != "ACK":
                        self.received[inbound.request.method] += 1
                        await self.proxy.respond(inbound, self.answer(inbound.request))

    def answer(self, request: SipRequest) -> SipResponse:
        headers = [("Server", f"{SERVER_HEADER}/{self.fqdn}")]
        if request.method not in ANSWERED:
            return make_response(request, 405, to_tag=new_tag(self._rng), headers=headers)
        return make_response(request, 200, to_tag=new_tag(self._rng), headers=headers)
