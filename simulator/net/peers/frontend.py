"""The emulated Front End / Director on the Edge's internal side (one class, two roles in the lab).

It listens on its internal address, SIP/MTLS 5061 (its own certificate; the peer must be the Edge pool or
another internal server), and emulates what a remote user's requests reach through the Access Edge:

* **registrar** with a Digest challenge (RFC 3261 §22.4; realm ``SIP Communications Service`` as Lync's):
  REGISTER → 401 → REGISTER with Authorization → 200 with the contact, a GRUU when the contact carries
  ``+sip.instance``, and ``ms-user-logon-data: RemoteUser`` for requests the Edge vouched came from the
  internet. NTLM and TLS-DSK are not emulated (README);
* **provisioning** SUBSCRIBE (``Event: vnd-microsoft-provisioning-v2``) answered 200 with the data
  piggybacked in the body (``ms-piggyback-first-notify``), including the ``mrasUri``;
* **presence**: SUBSCRIBE ``Event: presence`` → 200, then a NOTIFY sent along the Record-Route set back
  through the Edge to the subscriber; SERVICE ``application/msrtc-category-publish+xml`` → 200;
* **IM** as the far end for every user of the directory: INVITE (``m=message``) → 200, ACK, MESSAGE → 200,
  BYE → 200;
* **MRAS routing**: SERVICE to the ``mrasUri`` (or with the MRAS content type) is proxied to the A/V
  Authentication service on an Edge's internal 5062 — the node the request came through, so each node's
  5062 is proven by its own probe (a real pool would pick any node by DNS load balancing).

Every response carries ``Server: edgesim-frontend/<fqdn>`` so a client can tell the request reached it. A REGISTER
whose From or To is not a SIP or SIPS URI is answered 400 (RFC 3261 §10.3, RFC 4475 §3.3.4; 416 is for the
Request-URI only). Requests, responses, the MRAS forward and the NOTIFY run through the transactions of one
sans-I/O :class:`~simulator.core.sip_element.SipElement` (:class:`~simulator.net.transport.sip_proxy.SipProxy`
is its shell); nonces expire on the event loop's clock, the one the transactions use.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import itertools
import random
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import overload

from simulator.core.sip_transaction import RequestReceived, StrayAck
from simulator.net.transport.sip_connection import SipConnection, SipTlsListener, format_diagnostic
from simulator.net.transport.sip_proxy import Inbound, OutboundConnections, SipProxy
from simulator.net.transport.sip_route import TRUST_HEADER, NextHop
from simulator.net.transport.tls import classify_tls_error
from simulator.wire import digest, mras
from simulator.wire.errors import MalformedMessage
from simulator.wire.sip import (
    SipMessage,
    SipRequest,
    SipResponse,
    SipUri,
    make_request,
    make_response,
    new_branch,
    new_tag,
    parse_name_addr,
    registrar_address_problem,
)

SERVER_HEADER = "edgesim-frontend"
REALM = "SIP Communications Service"
NONCE_LIFETIME = 300.0
MAX_NONCES = 200_000
PROVISIONING_EVENT = "vnd-microsoft-provisioning-v2"
PROVISIONING_TYPE = "application/vnd-microsoft-roaming-provisioning-v2+xml"
PUBLISH_TYPE = "application/msrtc-category-publish+xml"
PRESENCE_TYPE = "application/pidf+xml"
ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS, MESSAGE, INFO, SUBSCRIBE, NOTIFY, SERVICE, REGISTER"


@dataclass(frozen=True, slots=True)
class FrontEndConfig:
    name: str  # "frontend" / "director"
    fqdn: str
    domain: str
    host: str
    port: int
    accounts: dict[str, str] = field(default_factory=dict)  # user part → password
    realm: str = REALM


@dataclass
class Registration:
    aor: str
    contact: str
    expires_at: float
    gruu: str | None = None
    path: tuple[str, ...] = ()  # RFC 3327: the Edge (and flow) the binding was registered through


InternalInviteHandler = Callable[[str, str, str], Awaitable[str]]
"""An internal user's answer: (offer SDP, caller URI, callee URI) → answer SDP."""


class FrontEndServer:
    """Registrar, presence, IM far end and MRAS router, behind SIP/MTLS 5061."""

    def __init__(self, config: FrontEndConfig, server_context: ssl.SSLContext, client_context: ssl.SSLContext,
                 edges: dict[str, NextHop], mras_port: Callable[[str], int] | int,
                 allowed_peers: frozenset[str] | None, rng: random.Random, response_timeout: float = 10.0) -> None:
        self.config = config
        self._client_context = client_context
        self.edges = edges  # Edge internal address → (address, internal SIP port, internal name)
        self._mras_port = mras_port
        self._rng = rng
        self.proxy = SipProxy(rng, response_timeout, server_header=f"{SERVER_HEADER}/{config.fqdn}",
                              auto_trying=False)  # a UAS that answers at once; MRAS SERVICE is no INVITE
        self._outbound = OutboundConnections(self._on_message, source=config.host, side="internal")
        self.listener = SipTlsListener(config.name, config.host, config.port, server_context, self._serve,
                                       side="internal", allowed_peers=allowed_peers)
        self._nonces: dict[str, float] = {}
        self.registrations: dict[str, Registration] = {}
        self.publications: list[bytes] = []
        self.messages: list[tuple[str, str, bytes]] = []  # (from AOR, to AOR, body)
        self.notifies_acknowledged = 0
        self.counters: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[None]] = set()
        self.internal_users: set[str] = set()  # AORs of internal users (on-premises, no Edge): on_invite answers
        self.on_invite: InternalInviteHandler | None = None
        self.calls_routed: Counter[str] = Counter()  # "remote", "partner", "internal", "in-dialog", "unavailable"

    @property
    def running(self) -> bool:
        return self.listener.running

    async def start(self) -> None:
        await self.listener.start()

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.listener.stop()
        await self._outbound.close()
        await self.proxy.close()

    def _headers(self) -> list[tuple[str, str]]:
        return [("Server", f"{SERVER_HEADER}/{self.config.fqdn}")]

    async def _serve(self, connection: SipConnection) -> None:
        async with contextlib.aclosing(connection.messages()) as messages:
            async for message in messages:
                await self._on_message(connection, message)

    async def _on_message(self, connection: SipConnection, message: SipMessage) -> None:
        for inbound in await self.proxy.receive(connection, message):
            await self._on_request(inbound)

    async def _on_request(self, inbound: Inbound) -> None:
        request = inbound.request
        self.counters[request.method] += 1
        if request.method in _CALL_METHODS and await self._route_call(inbound):
            return
        if request.method == "ACK":
            return  # an ACK for a 2xx: the dialog's, nothing to do (one for an error ended its transaction)
        try:
            response = await self._handle(inbound)
        except MalformedMessage as error:
            response = make_response(request, error.status or 400, to_tag=new_tag(self._rng),
                                     headers=[*self._headers(), format_diagnostic(1000, error.reason)])
        except Exception:
            await self.proxy.respond(inbound, self._reply(request, 500))  # a bug here still ends the transaction
            raise
        if response is not None:
            await self.proxy.respond(inbound, response)

    def _reply(self, request: SipRequest, status: int, headers: list[tuple[str, str]] | None = None,
               body: bytes = b"", text: str = "", phrase: str | None = None) -> SipResponse:
        extra = [*self._headers(), *(headers or [])]
        if text:
            extra.append(format_diagnostic(1000, text))
        return make_response(request, status, phrase, to_tag=new_tag(self._rng), headers=extra, body=body)

    async def _handle(self, inbound: Inbound) -> SipResponse | None:
        request = inbound.request
        method = request.method
        if method == "REGISTER":
            return self._register(request, asyncio.get_running_loop().time())
        if method == "SERVICE":
            if request.content_type == mras.CONTENT_TYPE or _is_mras_uri(request.uri):
                return await self._to_mras(inbound)
            if request.content_type == PUBLISH_TYPE:
                self.publications.append(request.body)
                return self._reply(request, 200)
            return self._reply(request, 415, [("Accept", PUBLISH_TYPE)])
        if method == "SUBSCRIBE":
            return self._subscribe(inbound.peer, request)
        if method in ("OPTIONS", "CANCEL", "NOTIFY", "INFO"):
            return self._reply(request, 200, [("Allow", ALLOW)])
        if method in ("INVITE", "MESSAGE", "BYE"):
            target = request.uri
            in_dialog = request.to.tag is not None  # Request-URI is then our Contact (RFC 3261 §12.2.1.1)
            if not isinstance(target, SipUri) or target.user not in self.config.accounts or (
                    not in_dialog and target.host.lower() != self.config.domain):
                return self._reply(request, 404, text="no such user")
            if method == "MESSAGE":
                self.messages.append((request.from_.sip_uri.aor, request.to.sip_uri.aor, request.body))
                return self._reply(request, 200)
            if method == "INVITE":
                contact = f"<sip:{target.user}@{self.config.host}:{self.config.port};transport=tls>"
                sdp = (f"v=0\r\no=- 0 0 IN IP4 {self.config.host}\r\ns=session\r\nc=IN IP4 {self.config.host}\r\n"
                       "t=0 0\r\nm=message 5060 sip null\r\na=accept-types:text/plain\r\n").encode()
                return self._reply(request, 200, [("Contact", contact), ("Content-Type", "application/sdp")], sdp)
            return self._reply(request, 200)
        return self._reply(request, 405, [("Allow", ALLOW)])

    # ------------------------------------------------------------------------------ call routing

    def _record_route(self) -> str:
        return f"<sip:{self.config.host}:{self.config.port};transport=tls;lr>"

    def _is_ours(self, route: str) -> bool:
        uri = parse_name_addr(route).uri
        return isinstance(uri, SipUri) and uri.host == self.config.host and uri.port in (None, self.config.port)

    async def _route_call(self, inbound: Inbound) -> bool:
        """Route a call's request as Lync's Director/Front End does; False leaves it to the old far-end handling.

        In-dialog (our Record-Route on top): pop it, on to the next Route (an Edge's flow). An INVITE to a user
        registered through an Edge: Request-URI → the binding's Contact, Route → its Path (RFC 3327), Record-Route
        ours. An INVITE to another domain: back to the Edge it came through (which finds the partner). An internal
        user with an ``on_invite``: answered here. A call (not IM) to a known user with no binding: 480.
        """
        request = inbound.request
        routes = request.headers.values("route")
        if routes and self._is_ours(routes[0]):
            if len(routes) == 1:
                return False  # the dialog ends here
            await self._forward_along(inbound, inbound.request, routes[1], pop_route=True, record=False)
            self.calls_routed["in-dialog"] += 1
            return True
        target = request.uri
        if not isinstance(target, SipUri):
            return False
        internal = f"sip:{target.user}@{self.config.domain}"
        if self.on_invite is not None and target.user is not None and internal in self.internal_users and (
                target.aor == internal or target.host == self.config.host):
            if request.method == "INVITE":
                await self._answer_internal(inbound, internal)
            elif not isinstance(inbound, StrayAck):
                await self.proxy.respond(inbound, self._reply(request, 200))  # BYE, INFO … of that dialog
            return True
        if request.method != "INVITE" or request.to.tag is not None:
            return False
        if target.host.lower() != self.config.domain:
            if isinstance(inbound, RequestReceived) and inbound.peer.peer[0] in self.edges:
                await self.proxy.forward(inbound, inbound.peer, record_route=self._record_route())
                self.calls_routed["partner"] += 1
                return True
            return False
        binding = self.registrations.get(target.aor)
        now = asyncio.get_running_loop().time()
        if binding is not None and binding.path and binding.expires_at > now:
            headers = request.headers.remove("route")
            for hop in reversed(binding.path):
                headers = headers.prepend("Route", hop)
            contact = parse_name_addr(f"<{binding.contact}>").uri
            routed = SipRequest(request.method, contact or target, headers, request.body, request.version)
            await self._forward_along(inbound, routed, binding.path[0], pop_route=False, record=True)
            self.calls_routed["remote"] += 1
            return True
        if target.user in self.config.accounts and b"m=message" not in request.body:
            self.calls_routed["unavailable"] += 1
            await self.proxy.respond(inbound, self._reply(request, 480, text="the user has no registered endpoint"))
            return True
        return False

    async def _forward_along(self, inbound: Inbound, request: SipRequest, route: str, *, pop_route: bool,
                             record: bool) -> None:
        uri = parse_name_addr(route).uri
        if not isinstance(uri, SipUri):
            await self._refuse(inbound, 400, "unusable Route")
            return
        hop = self.edges.get(uri.host)
        outbound = self._connection_to(uri.host, None)
        try:
            if outbound is None:
                if hop is None:
                    await self._refuse(inbound, 404, f"no route to {uri.host}")
                    return
                outbound = await self._outbound.get(hop.host, hop.port, self._client_context, hop.server_name, 5.0)
            routed = dataclasses.replace(inbound, request=request)
            await self.proxy.forward(routed, outbound, pop_route=pop_route,
                                     record_route=self._record_route() if record else None)
        except (OSError, ssl.SSLError, TimeoutError) as error:
            await self._refuse(inbound, 480, f"the callee's Edge is unreachable: {error}")

    async def _refuse(self, inbound: Inbound, status: int, text: str) -> None:
        if not isinstance(inbound, StrayAck):
            await self.proxy.respond(inbound, self._reply(inbound.request, status, text=text))

    async def _answer_internal(self, inbound: Inbound, callee: str) -> None:
        """An internal user's endpoint, emulated here: 183 and 200 with the SDP ``on_invite`` gives (200 only to
        a re-INVITE), Record-Route copied; BYE and ACK of that dialog are handled by the old far-end path.
        """
        if isinstance(inbound, StrayAck):
            return
        assert self.on_invite is not None
        request = inbound.request
        self.calls_routed["internal"] += 1
        tag = request.to.tag or new_tag(self._rng)
        user = callee.split(":", 1)[1]
        headers = [*self._headers(), ("Contact", f"<sip:{user.split('@', 1)[0]}@{self.config.host}:{self.config.port}"
                                                 ";transport=tls>"), ("Content-Type", "application/sdp")]
        try:
            answer = (await self.on_invite(request.body.decode("utf-8", "replace"), str(request.from_.uri),
                                           callee)).encode()
        except Exception as error:  # the far end hears 488
            await self.proxy.respond(inbound, make_response(request, 488, to_tag=tag, headers=[
                *self._headers(), format_diagnostic(1000, f"{type(error).__name__}: {error}")]))
            return
        if request.to.tag is None:
            await self.proxy.respond(inbound, make_response(request, 183, to_tag=tag, headers=headers, body=answer,
                                                            copy_record_route=True))
        await self.proxy.respond(inbound, make_response(request, 200, to_tag=tag, headers=headers, body=answer,
                                                        copy_record_route=True))

    # ---------------------------------------------------------------------------------- registrar

    def _register(self, request: SipRequest, now: float) -> SipResponse:
        problem = registrar_address_problem(request)
        if problem is not None:
            return self._reply(request, 400, text=problem, phrase=problem)  # RFC 3261 §10.3, RFC 4475 §3.3.4
        to = request.to.sip_uri
        if to.host.lower() != self.config.domain:
            return self._reply(request, 404, text="not a domain of this pool")
        password = self.config.accounts.get(to.user or "")
        if password is None:
            return self._reply(request, 404, text="no such user")
        authorization = request.headers.get("authorization")
        if authorization is None:
            return self._challenge(request, now)
        credentials = digest.parse_credentials(authorization)
        expiry = self._nonces.get(credentials.nonce)
        if expiry is None or expiry <= now:
            self._nonces.pop(credentials.nonce, None)
            return self._challenge(request, now, stale=expiry is not None)
        if credentials.username != to.user or credentials.realm != self.config.realm or not digest.verify(
                credentials, ha1_hex=digest.ha1(credentials.username, self.config.realm, password),
                method="REGISTER"):
            self.counters["auth-failed"] += 1
            return self._reply(request, 403, text="wrong credentials")
        expires = _expires(request)
        headers = [("Expires", str(expires))]
        contacts = request.headers.values("contact")
        aor = to.aor
        if expires == 0 or not contacts:
            self.registrations.pop(aor, None)
        else:
            contact = parse_name_addr(contacts[0])
            instance = contact.param("+sip.instance")
            gruu = None
            if instance is not None:
                gruu = f"{aor};opaque=user:epid:{hashlib.sha1(instance.encode()).hexdigest()[:16]};gruu"
            self.registrations[aor] = Registration(aor, str(contact.uri), now + expires, gruu,
                                                   tuple(request.headers.values("path")))
            value = f"{contacts[0]};expires={expires}" + (f';gruu="{gruu}"' if gruu else "")
            headers.append(("Contact", value))
        trust = request.headers.get(TRUST_HEADER) or ""
        if "ms-source-network=internet" in trust:
            headers.append(("ms-user-logon-data", "RemoteUser"))
        headers.append(("Supported", "msrtc-event-categories"))
        self.counters["registered"] += 1
        return self._reply(request, 200, headers)

    def _challenge(self, request: SipRequest, now: float, stale: bool = False) -> SipResponse:
        challenge = digest.make_challenge(self.config.realm, self._rng, stale=stale)
        self._prune_nonces(now)
        if len(self._nonces) >= MAX_NONCES:
            for nonce in [n for n, at in self._nonces.items() if at <= now] or list(self._nonces)[:1000]:
                del self._nonces[nonce]
        self._nonces[challenge.nonce] = now + NONCE_LIFETIME
        return self._reply(request, 401, [("WWW-Authenticate", challenge.to_header())])

    def _prune_nonces(self, now: float) -> None:
        """Forget nonces that expired more than ``NONCE_LIFETIME`` ago (kept that long to answer stale=true).

        Every nonce gets the same lifetime on a clock that never goes back, so insertion order is expiry
        order: the expired ones are at the front. Without this each sign-in's nonce stayed until
        ``MAX_NONCES`` (~0.1 KiB each, for ever at a steady sign-in rate).
        """
        nonces = self._nonces
        for nonce, expiry in list(itertools.islice(nonces.items(), 64)):
            if expiry + NONCE_LIFETIME > now:
                break
            del nonces[nonce]

    # ------------------------------------------------------------------------- subscriptions

    def mras_uri(self) -> str:
        return f"sip:{self.config.fqdn}@{self.config.domain};gruu;opaque=srvr:MRAS:{self.config.name}"

    def _subscribe(self, connection: SipConnection, request: SipRequest) -> SipResponse:
        event = (request.headers.get("event") or "").split(";", 1)[0].strip().lower()
        if event == PROVISIONING_EVENT:
            body = (f'<provisionGroupList xmlns="http://schemas.microsoft.com/2006/09/sip/provisiongrouplist-notification">'
                    f'<provisionGroup name="ServerConfiguration"><mrasUri>{self.mras_uri()}</mrasUri>'
                    f'<focusFactoryUri>sip:{self.config.fqdn}@{self.config.domain};gruu;opaque=app:conf:focusfactory'
                    f'</focusFactoryUri></provisionGroup></provisionGroupList>').encode()
            return self._reply(request, 200, [("Expires", "0"), ("Content-Type", PROVISIONING_TYPE),
                                              ("Event", PROVISIONING_EVENT)], body)
        if event == "presence":
            contact = f"<sip:{self.config.host}:{self.config.port};transport=tls>"
            response = self._reply(request, 200, [("Expires", str(_expires(request, 3600))), ("Contact", contact)])
            task = asyncio.get_running_loop().create_task(self._notify(connection, request, response))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return response
        return self._reply(request, 489, [("Allow-Events", f"presence, {PROVISIONING_EVENT}")])

    async def _notify(self, connection: SipConnection, subscribe: SipRequest, response: SipResponse) -> None:
        """Send the first NOTIFY of a presence subscription along its route set (RFC 6665 §4.2.1)."""
        await asyncio.sleep(0)  # the 200 goes first
        routes = subscribe.headers.values("record-route")  # RFC 3261 §12.1.1: the UAS route set
        contacts = subscribe.contacts
        if not contacts or contacts[0].uri is None:
            return
        target = subscribe.to.sip_uri
        body = (f'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="{target.aor}"><tuple id="t1"><status>'
                '<basic>open</basic></status></tuple></presence>').encode()
        branch = new_branch(self._rng)
        items = [("Route", route) for route in routes]
        items += [("Event", "presence"), ("Subscription-State", "active;expires=3600"),
                  ("Contact", f"<sip:{self.config.host}:{self.config.port};transport=tls>"),
                  ("Content-Type", PRESENCE_TYPE)]
        outbound = connection
        if routes:
            first = parse_name_addr(routes[0]).uri
            if isinstance(first, SipUri):
                outbound = self._connection_to(first.host, connection)
        via_host, via_port = outbound.local
        notify = make_request("NOTIFY", contacts[0].uri, via=f"SIP/2.0/TLS {via_host}:{via_port};branch={branch}",
                              from_=str(response.to), to=str(subscribe.from_), call_id=subscribe.call_id, cseq=1,
                              headers=items, body=body)
        if outbound.closed:
            return
        await self.proxy.send_request(notify, outbound, self._notify_answered, branch=branch)
        self.counters["notify-sent"] += 1

    def _notify_answered(self, response: SipResponse) -> None:
        if 200 <= response.status < 300:
            self.notifies_acknowledged += 1

    @overload
    def _connection_to(self, host: str, fallback: SipConnection) -> SipConnection: ...
    @overload
    def _connection_to(self, host: str, fallback: None) -> SipConnection | None: ...

    def _connection_to(self, host: str, fallback: SipConnection | None) -> SipConnection | None:
        for connection in self.listener.connections:
            if connection.peer[0] == host and not connection.closed:
                return connection
        return self._outbound.find(host) or fallback

    # ---------------------------------------------------------------------------------------- MRAS

    async def _to_mras(self, inbound: Inbound) -> SipResponse | None:
        request = inbound.request
        edge = self.edges.get(inbound.peer.peer[0]) or next(iter(self.edges.values()), None)
        if edge is None:
            return self._reply(request, 503, text="no Edge to route MRAS to")
        port = self._mras_port if isinstance(self._mras_port, int) else self._mras_port(edge.host)
        try:
            outbound = await self._outbound.get(edge.host, port, self._client_context, edge.server_name, 5.0)
        except (OSError, ssl.SSLError, TimeoutError) as error:
            reason = classify_tls_error(error)
            return make_response(request, 504, to_tag=new_tag(self._rng), headers=[
                *self._headers(), format_diagnostic(1008, f"MRAS at {edge.server_name}:{port}: {error}", reason)])
        try:
            await self.proxy.forward(inbound, outbound, pop_route=False)
        except (OSError, ssl.SSLError) as error:
            return self._reply(request, 503, text=f"MRAS connection lost: {error}")
        return None


_CALL_METHODS = frozenset({"INVITE", "ACK", "BYE", "CANCEL", "UPDATE", "PRACK", "INFO"})


def _is_mras_uri(uri: object) -> bool:
    return isinstance(uri, SipUri) and "srvr:MRAS" in (uri.param("opaque") or "")


def _expires(request: SipRequest, default: int = 3600) -> int:
    value = request.headers.get("expires")
    if value is not None and value.strip().isdigit():
        return min(int(value.strip()), 86400)
    contacts = request.headers.values("contact")
    if contacts:
        with contextlib.suppress(MalformedMessage):
            param = parse_name_addr(contacts[0]).param("expires")
            if param is not None and param.isdigit():
                return min(int(param), 86400)
    return default
