"""The Access Edge of one pool node and its A/V Authentication service (MRAS).

Listeners (research-lync-edge §4.1, §1.3; rules E6–E8, F1, P1–P3, I2, I3, I5):

* **external TLS 443** — remote users, server certificate ``sip.<domain>``; no client certificate;
* **external MTLS 5061** — federated and PIC partners in; the partner's certificate must name the SRV
  target of ``_sipfederationtls._tcp.<its domain>`` (checked per From domain, 403 ``wrong-san`` if not);
  the same port is used *out* to partners, found through the lab DNS, and the partner's certificate must
  name its SRV target (the TLS hostname check);
* **internal MTLS 5061** — the Director/Front End, both ways; peers must be the topology's internal
  servers;
* **internal MTLS 5062** — :class:`MrasService`, answering SERVICE ``application/msrtc-media-relay-auth+xml``
  with credentials it writes to the pool's :class:`~simulator.core.credentials.CredentialStore`.

Routing, as a Lync Access Edge does it: every request from a remote user or a partner goes to the
internal next hop (the Director); requests from the inside go back to a remote user when their top Route
is the Record-Route this Edge added (it carries the client's flow), or out to a partner when their
Request-URI names another domain. A remote user's requests other than REGISTER are refused 403 until a
REGISTER of that AOR has been accepted on the same connection (the Edge only relays authenticated users).
Refusals carry ``ms-diagnostics`` with the lab's reason code (:func:`~simulator.net.sip_connection.format_diagnostic`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from simulator.core.credentials import CredentialStore, IssuedCredential
from simulator.core.dns_policy import LyncFailoverPolicy
from simulator.net.resolver import ResolverError, StubResolver
from simulator.net.sip_connection import SipConnection, SipTlsListener, format_diagnostic
from simulator.net.sip_proxy import OutboundConnections, SipForwarder
from simulator.net.tls import classify_tls_error
from simulator.report.verdict import Reason
from simulator.wire import mras
from simulator.wire.errors import MalformedMessage
from simulator.wire.sip import SipMessage, SipRequest, SipResponse, SipUri, make_response, parse_name_addr

SERVER_HEADER = "edgesim-access-edge"
TRUST_HEADER = "ms-edge-proxy-message-trust"  # Lync: how the Edge vouches for the source of a request
FLOW_PARAM = "edgesim-flow"
DIALOG_CREATING = frozenset({"INVITE", "SUBSCRIBE"})
CONNECT_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class NextHop:
    """Where a TLS connection goes: address, port and the name its certificate must carry."""

    host: str
    port: int
    server_name: str


@dataclass(frozen=True, slots=True)
class AccessEdgeConfig:
    node: str
    domain: str  # the SIP domain this pool serves (contoso.com)
    access_fqdn: str  # sip.<domain>
    internal_fqdn: str  # the node's internal name
    external_host: str  # Access Edge external (private) address
    internal_host: str
    tls_port: int = 443
    federation_port: int = 5061
    internal_port: int = 5061
    mras_port: int = 5062
    documented_federation_port: int = 5061


@dataclass(frozen=True, slots=True)
class EdgeContexts:
    client_tls: ssl.SSLContext  # 443, server-auth only
    federation_server: ssl.SSLContext  # 5061 external, client certificate required
    federation_client: ssl.SSLContext  # 5061 out to partners (edge-external certificate)
    internal_server: ssl.SSLContext  # 5061/5062 internal
    internal_client: ssl.SSLContext  # 5061 out to the Director (edge-internal certificate)


class AccessEdge:
    """The SIP proxy behind the node's listeners (itself a Service: it owns the outbound connections)."""

    def __init__(self, config: AccessEdgeConfig, contexts: EdgeContexts, next_hop: NextHop,
                 resolver: StubResolver, port_map: Callable[[int], int], rng: random.Random,
                 internal_peers: frozenset[str], response_timeout: float = 10.0) -> None:
        self.config = config
        self.next_hop = next_hop
        self._contexts = contexts
        self._resolver = resolver
        self._port_map = port_map
        self._rng = rng
        self._policy = LyncFailoverPolicy(random.Random(rng.getrandbits(64)))
        self.forwarder = SipForwarder(rng, response_timeout)
        self._internal_out = OutboundConnections(self._on_message, source=config.internal_host, side="internal")
        self._federation_out = OutboundConnections(self._on_message, source=config.external_host,
                                                   side="federation")
        self.flows: dict[str, SipConnection] = {}
        self.refused: Counter[str] = Counter()
        self.answered_malformed = 0
        self._running = False
        c = config
        self.listeners: dict[str, SipTlsListener] = {
            "sip-443": SipTlsListener("sip-443", c.external_host, c.tls_port, contexts.client_tls, self._serve,
                                      side="client"),
            "sip-5061-external": SipTlsListener("sip-5061-external", c.external_host, c.federation_port,
                                                contexts.federation_server, self._serve, side="federation"),
            "sip-5061-internal": SipTlsListener("sip-5061-internal", c.internal_host, c.internal_port,
                                                contexts.internal_server, self._serve, side="internal",
                                                allowed_peers=internal_peers, refuse=self._refuse_peer),
        }

    @property
    def running(self) -> bool:
        return self._running

    async def start(self) -> None:
        self._running = True

    async def stop(self) -> None:
        self._running = False
        await self._internal_out.close()
        await self._federation_out.close()
        await self.forwarder.close()

    # -------------------------------------------------------------------------------- connections

    async def _serve(self, connection: SipConnection) -> None:
        if connection.side in ("client", "federation"):
            self.flows[connection.id] = connection
        try:
            async with contextlib.aclosing(connection.messages()) as messages:
                async for message in messages:
                    await self._on_message(connection, message)
        finally:
            self.flows.pop(connection.id, None)

    async def _refuse_peer(self, connection: SipConnection, reason: Reason) -> None:
        self.refused[str(reason)] += 1

    async def _on_message(self, connection: SipConnection, message: SipMessage) -> None:
        if isinstance(message, SipResponse):
            await self.forwarder.on_response(message)
            return
        try:
            await self._route(connection, message)
        except (OSError, ssl.SSLError) as error:  # the next hop's connection broke while we wrote to it
            if message.method != "ACK":
                await self._reply(connection, message, 503, f"next hop lost: {error}", classify_tls_error(error))
        except MalformedMessage as error:
            self.answered_malformed += 1
            if error.status is not None and message.method != "ACK":
                await self._reply(connection, message, error.status, error.reason)

    async def _reply(self, connection: SipConnection, request: SipRequest, status: int, text: str = "",
                     reason: Reason | None = None, code: int = 1000) -> None:
        headers = [("Server", f"{SERVER_HEADER}/{self.config.node}")]
        if text or reason is not None:
            headers.append(format_diagnostic(code, text or str(reason), reason))
        response = make_response(request, status, to_tag=f"{self._rng.getrandbits(32):08x}", headers=headers)
        with contextlib.suppress(OSError, ssl.SSLError):
            await connection.send(response)

    # ------------------------------------------------------------------------------------ routing

    def _record_route(self, connection: SipConnection) -> str:
        c = self.config
        return f"<sip:{c.internal_host}:{c.internal_port};transport=tls;lr;{FLOW_PARAM}={connection.id}>"

    def _our_route(self, request: SipRequest) -> SipUri | None:
        routes = request.headers.values("route")
        if not routes:
            return None
        uri = parse_name_addr(routes[0]).uri
        if isinstance(uri, SipUri) and uri.has_param(FLOW_PARAM) and uri.host == self.config.internal_host:
            return uri
        return None

    def _is_for_edge(self, uri: SipUri) -> bool:
        c = self.config
        return uri.user is None and uri.host.lower() in {c.access_fqdn, c.internal_fqdn, c.external_host,
                                                         c.internal_host}

    async def _route(self, connection: SipConnection, request: SipRequest) -> None:
        max_forwards = request.headers.get("max-forwards")
        if max_forwards is not None and max_forwards.strip() == "0":
            await self._reply(connection, request, 483)  # RFC 3261 §16.3 step 2
            return
        uri = request.uri
        if not isinstance(uri, SipUri):
            await self._reply(connection, request, 416)
            return
        our_route = self._our_route(request)
        if our_route is None and self._is_for_edge(uri):
            if request.method == "OPTIONS":  # RFC 3261 §11.2: the Edge answers for itself
                await self._reply(connection, request, 200)
            elif request.method != "ACK":
                await self._reply(connection, request, 405)
            return
        if connection.side == "client":
            await self._from_client(connection, request, our_route)
        elif connection.side == "federation":
            await self._from_partner(connection, request, our_route)
        else:
            await self._from_inside(connection, request, our_route, uri)

    async def _from_client(self, connection: SipConnection, request: SipRequest, our_route: SipUri | None) -> None:
        sender = request.from_.sip_uri
        if sender.host.lower() != self.config.domain:
            self.refused["foreign-user"] += 1
            await self._reply(connection, request, 403, "user is not in a domain of this pool", Reason.REJECTED)
            return
        aor = sender.aor
        if request.method not in ("REGISTER", "ACK") and aor not in connection.authenticated:
            self.refused["not-authenticated"] += 1
            await self._reply(connection, request, 403, "not authenticated: REGISTER first", Reason.REJECTED)
            return
        on_final = None
        if request.method == "REGISTER":
            registered = request.to.sip_uri.aor

            def on_final(response: SipResponse) -> None:
                if 200 <= response.status < 300:
                    connection.authenticated.add(registered)

        trust = f"ms-source-type=InternetUser;ms-ep-fqdn={self.config.access_fqdn};ms-source-network=internet"
        await self._to_director(connection, request, our_route, trust, on_final)

    async def _from_partner(self, connection: SipConnection, request: SipRequest, our_route: SipUri | None) -> None:
        domain = request.from_.sip_uri.host.lower()
        if domain not in connection.authenticated:
            reason = await self._check_partner(connection, domain)
            if reason is not None:
                self.refused[str(reason)] += 1
                await self._reply(connection, request, 403, f"partner certificate does not match the SRV "
                                  f"target of {domain}", reason, code=1046)
                return
            connection.authenticated.add(domain)
        target = request.uri
        if our_route is None and isinstance(target, SipUri) and target.host.lower() != self.config.domain:
            self.refused["relay-denied"] += 1
            await self._reply(connection, request, 403, "the Edge does not relay between partners", Reason.REJECTED)
            return
        trust = f"ms-source-type=DirectPartner;ms-ep-fqdn={min(connection.peer_names, default='')};" \
                "ms-source-network=federation"
        await self._to_director(connection, request, our_route, trust, None)

    async def _to_director(self, connection: SipConnection, request: SipRequest, our_route: SipUri | None,
                           trust: str, on_final: Callable[[SipResponse], None] | None) -> None:
        hop = self.next_hop
        try:
            outbound = await self._internal_out.get(hop.host, hop.port, self._contexts.internal_client,
                                                    hop.server_name, CONNECT_TIMEOUT)
        except (OSError, ssl.SSLError, TimeoutError) as error:
            reason = classify_tls_error(error)
            self.refused[f"next-hop-{reason}"] += 1
            await self._reply(connection, request, 504, f"cannot reach the next hop {hop.server_name}: {error}",
                              reason, code=1008)
            return
        record = self._record_route(connection) if request.method in DIALOG_CREATING else None
        await self.forwarder.forward(connection, request, outbound, record_route=record,
                                     pop_route=our_route is not None, on_final=on_final,
                                     extra=((TRUST_HEADER, trust),), strip=TRUST_HEADER)

    async def _from_inside(self, connection: SipConnection, request: SipRequest, our_route: SipUri | None,
                           uri: SipUri) -> None:
        if our_route is not None:
            flow = self.flows.get(our_route.param(FLOW_PARAM) or "")
            if flow is None or flow.closed:
                await self._reply(connection, request, 480, "the client's connection is gone", Reason.RESET)
                return
            await self.forwarder.forward(connection, request, flow, pop_route=True)
            return
        if uri.host.lower() == self.config.domain:
            await self._reply(connection, request, 404, "the Edge serves no internal user")
            return
        await self._to_partner(connection, request, uri.host.lower())

    # --------------------------------------------------------------------------------- federation

    async def _partner_targets(self, domain: str) -> list[tuple[str, NextHop]]:
        """(address, hop) to try for a partner domain: SRV ``_sipfederationtls._tcp`` then A records."""
        targets = await self._resolver.resolve_srv(f"_sipfederationtls._tcp.{domain}")
        found: list[tuple[str, NextHop]] = []
        for target in targets:
            name = target.target.rstrip(".").lower()
            addresses = list(target.addresses) or await self._resolver.resolve_a(name)
            hop = NextHop("", self._port_map(target.port), name)
            found.extend((address, hop) for address in addresses)
        return found

    async def _check_partner(self, connection: SipConnection, domain: str) -> Reason | None:
        """None when the partner's certificate names the SRV target of ``domain`` (research §4.1 item 7)."""
        try:
            targets = await self._resolver.resolve_srv(f"_sipfederationtls._tcp.{domain}")
        except ResolverError:
            return Reason.WRONG_SAN
        names = {t.target.rstrip(".").lower() for t in targets}
        return None if names & connection.peer_names else Reason.WRONG_SAN

    async def _to_partner(self, connection: SipConnection, request: SipRequest, domain: str) -> None:
        try:
            candidates = await self._partner_targets(domain)
        except (ResolverError, OSError) as error:
            await self._reply(connection, request, 504, f"no federation route to {domain}: {error}",
                              Reason.PROTOCOL_ERROR, code=1034)
            return
        if not candidates:
            await self._reply(connection, request, 404, f"{domain} publishes no federation SRV", Reason.PROTOCOL_ERROR)
            return
        now = time.monotonic()
        by_address = dict(candidates)
        last: tuple[Reason, str] = (Reason.REFUSED, "no address")
        for address in self._policy.candidates([a for a, _ in candidates], now):
            hop = by_address[address]
            try:
                outbound = await self._federation_out.get(address, hop.port, self._contexts.federation_client,
                                                          hop.server_name, CONNECT_TIMEOUT)
            except (OSError, ssl.SSLError, TimeoutError) as error:
                self._policy.report_failure(address, now)
                last = (classify_tls_error(error), f"{hop.server_name} ({address}:{hop.port}): {error}")
                self.refused[f"partner-{last[0]}"] += 1
                continue
            self._policy.report_success(address, now)
            record = self._record_route(connection) if request.method in DIALOG_CREATING else None
            await self.forwarder.forward(connection, request, outbound, record_route=record)
            return
        await self._reply(connection, request, 504, f"cannot connect to the federated peer {last[1]}", last[0],
                          code=1046)


# -------------------------------------------------------------------------------------------- MRAS


@dataclass(frozen=True, slots=True)
class MrasConfig:
    node: str
    relays: tuple[mras.MediaRelay, ...]
    max_duration: int = mras.DEFAULT_DURATION_MINUTES


class MrasService:
    """The A/V Authentication service on internal 5062: SERVICE (MRAS body) → credentials + relays."""

    def __init__(self, config: MrasConfig, host: str, port: int, context: ssl.SSLContext,
                 internal_peers: frozenset[str], store: CredentialStore, rng: random.Random,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._store = store
        self._rng = rng
        self._clock = clock
        self.issued = 0
        self.refused: Counter[str] = Counter()
        self.listener = SipTlsListener("mras-5062", host, port, context, self._serve, side="mras",
                                       allowed_peers=internal_peers)

    @property
    def running(self) -> bool:
        return self.listener.running

    async def start(self) -> None:
        await self.listener.start()

    async def stop(self) -> None:
        await self.listener.stop()

    async def _serve(self, connection: SipConnection) -> None:
        async with contextlib.aclosing(connection.messages()) as messages:
            async for message in messages:
                if isinstance(message, SipRequest):
                    with contextlib.suppress(OSError, ssl.SSLError):
                        await connection.send(self.answer(message))

    def answer(self, request: SipRequest) -> SipResponse:
        """The response to one request (pure but for the store and the RNG)."""
        headers = [("Server", f"{SERVER_HEADER}/{self.config.node} mras")]
        tag = f"{self._rng.getrandbits(32):08x}"
        if request.method != "SERVICE":
            self.refused["method"] += 1
            return make_response(request, 405, to_tag=tag, headers=[*headers, ("Allow", "SERVICE")])
        if request.content_type != mras.CONTENT_TYPE:
            self.refused["content-type"] += 1
            return make_response(request, 415, to_tag=tag, headers=[*headers, ("Accept", mras.CONTENT_TYPE)])
        try:
            body = mras.parse_mras_request(request.body)
        except MalformedMessage as error:
            self.refused["malformed"] += 1
            return make_response(request, 400, to_tag=tag, headers=[*headers, format_diagnostic(1000, error.reason)])
        duration = max(1, min(body.duration, self.config.max_duration))
        username = f"{self._rng.getrandbits(160):040x}"
        password = f"{self._rng.getrandbits(128):032x}"
        self._store.issue(IssuedCredential(username, password, self._clock() + duration * 60, body.identity))
        self.issued += 1
        answer = mras.MrasResponse(
            request_id=body.request_id, from_uri=body.to_uri, to_uri=body.from_uri,
            credentials_request_id=body.credentials_request_id,
            credentials=mras.MrasCredentials(username, password, duration), relays=self.config.relays)
        return make_response(request, 200, to_tag=tag, headers=[*headers, ("Content-Type", mras.CONTENT_TYPE)],
                             body=answer.to_xml())


# ---------------------------------------------------------------------------------- serve helpers


def run_until_stopped(main: Callable[[], Awaitable[int]]) -> int:
    """Run ``main`` on a fresh event loop (``edgesim serve``); Ctrl-C exits 130."""

    async def wrapper() -> int:
        return await main()

    try:
        return asyncio.run(wrapper())
    except KeyboardInterrupt:
        return 130


async def wait_for_stop(duration: float | None) -> None:
    """Return after ``duration`` seconds (forever when None) or at SIGINT/SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), duration)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
