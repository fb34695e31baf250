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
from collections.abc import Awaitable, Callable

from simulator.net.transport.sip_connection import SipConnection, SipTlsListener
from simulator.net.transport.sip_proxy import Inbound, SipProxy
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
        # a partner user's answer to an INVITE: (offer SDP, caller URI, callee URI) → answer SDP; None: 200, no body
        self.on_invite: Callable[[str, str, str], Awaitable[str]] | None = None
        self._host, self._port = host, port

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
                        if inbound.request.method == "INVITE" and self.on_invite is not None:
                            await self._answer_invite(inbound)
                        else:
                            await self.proxy.respond(inbound, self.answer(inbound.request))

    async def _answer_invite(self, inbound: Inbound) -> None:
        """183 and 200 with the SDP ``on_invite`` gives (a re-INVITE: 200 only), Record-Route copied (RFC 3261
        §12.1.1) and a Contact here; 488 when the callback fails.
        """
        assert self.on_invite is not None
        request = inbound.request
        tag = request.to.tag or new_tag(self._rng)
        server = ("Server", f"{SERVER_HEADER}/{self.fqdn}")
        callee = request.to.sip_uri
        try:
            answer = (await self.on_invite(request.body.decode("utf-8", "replace"), str(request.from_.uri),
                                           callee.aor)).encode()
        except Exception:  # the far end hears 488
            await self.proxy.respond(inbound, make_response(request, 488, to_tag=tag, headers=[server]))
            return
        headers = [server, ("Contact", f"<sip:{callee.user or 'user'}@{self._host}:{self._port};transport=tls>"),
                   ("Content-Type", "application/sdp")]
        if request.to.tag is None:
            await self.proxy.respond(inbound, make_response(request, 183, to_tag=tag, headers=headers, body=answer,
                                                            copy_record_route=True))
        await self.proxy.respond(inbound, make_response(request, 200, to_tag=tag, headers=headers, body=answer,
                                                        copy_record_route=True))

    def answer(self, request: SipRequest) -> SipResponse:
        headers = [("Server", f"{SERVER_HEADER}/{self.fqdn}")]
        if request.method not in ANSWERED:
            return make_response(request, 405, to_tag=new_tag(self._rng), headers=headers)
        return make_response(request, 200, to_tag=new_tag(self._rng), headers=headers)
