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
A From (or, in a REGISTER, a To) that is not a SIP or SIPS URI names no user or domain to check: 400 (RFC 3261
§10.3, RFC 4475 §3.3.4; 416 is for the Request-URI only, §8.2.2.1).

With ``serve access-edge --workers N`` (:mod:`simulator.net.edge.ae_workers`) each worker process runs one
``AccessEdge`` with ``worker=<index>``: its flow tokens then name the worker (``w<index>.<connection id>``), and
a request from inside whose flow another worker holds is proxied to that worker over the inter-worker link
(``peer_link``, a connection with ``side="worker"``), which sends it down the flow.

Every request and response goes through the transactions of one sans-I/O
:class:`~simulator.core.sip_element.SipElement` (RFC 3261 §16, §17), driven by
:class:`~simulator.net.transport.sip_proxy.SipProxy`; this module is the routing part of the proxy's
transaction user.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from simulator.core.dns_policy import LyncFailoverPolicy
from simulator.core.sip_transaction import StrayAck
from simulator.net.transport.resolver import ResolverError, StubResolver
from simulator.net.transport.sip_connection import SipConnection, SipTlsListener, format_diagnostic
from simulator.net.transport.sip_proxy import Inbound, OutboundConnections, SipProxy
from simulator.net.transport.sip_route import TRUST_HEADER, NextHop
from simulator.net.transport.tls import classify_tls_error
from simulator.outcome import Reason
from simulator.wire.errors import MalformedMessage
from simulator.wire.sip import (
    SipMessage,
    SipRequest,
    SipResponse,
    SipUri,
    make_response,
    parse_name_addr,
    registrar_address_problem,
)

SERVER_HEADER = "edgesim-access-edge"
FLOW_PARAM = "edgesim-flow"
DIALOG_CREATING = frozenset({"INVITE", "SUBSCRIBE"})
CONNECT_TIMEOUT = 5.0


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
                 internal_peers: frozenset[str], response_timeout: float = 10.0, *, worker: int | None = None,
                 listener_class: type[SipTlsListener] = SipTlsListener) -> None:
        """``worker``: this Edge is worker ``worker`` of several (flow tokens name it; see :attr:`peer_link`);
        ``listener_class``: what binds the three SIP listeners (the workers' shares the ports)."""
        self.config = config
        self.worker = worker
        # worker mode: the connection to worker ``i`` (a request for a flow that worker holds goes there)
        self.peer_link: Callable[[int], Awaitable[SipConnection]] | None = None
        self.handed_out = 0  # requests from inside passed to the worker holding their flow
        self.handed_in = 0  # requests another worker passed here, sent down one of this worker's flows
        self.next_hop = next_hop
        self._contexts = contexts
        self._resolver = resolver
        self._port_map = port_map
        self._rng = rng
        self._policy = LyncFailoverPolicy(random.Random(rng.getrandbits(64)))
        self.proxy = SipProxy(rng, response_timeout, server_header=f"{SERVER_HEADER}/{config.node}", auto_trying=True)
        self._internal_out = OutboundConnections(self._on_message, source=config.internal_host, side="internal")
        self._federation_out = OutboundConnections(self._on_message, source=config.external_host,
                                                   side="federation")
        self.flows: dict[str, SipConnection] = {}
        self._partner_flows: dict[str, SipConnection] = {}  # outbound federation links a dialog was routed over
        self.refused: Counter[str] = Counter()
        self.answered_malformed = 0
        self._running = False
        c = config
        self._edge_hosts = frozenset({c.access_fqdn, c.internal_fqdn, c.external_host, c.internal_host})
        self._client_trust = (f"ms-source-type=InternetUser;ms-ep-fqdn={c.access_fqdn};"
                              "ms-source-network=internet")
        self.listeners: dict[str, SipTlsListener] = {
            "sip-443": listener_class("sip-443", c.external_host, c.tls_port, contexts.client_tls, self._serve,
                                      side="client"),
            "sip-5061-external": listener_class("sip-5061-external", c.external_host, c.federation_port,
                                                contexts.federation_server, self._serve, side="federation"),
            "sip-5061-internal": listener_class("sip-5061-internal", c.internal_host, c.internal_port,
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
        await self.proxy.close()

    # -------------------------------------------------------------------------------- connections

    def flow_token(self, connection: SipConnection) -> str:
        """The flow token naming ``connection``: its id, prefixed ``w<index>.`` in worker mode."""
        return connection.id if self.worker is None else f"w{self.worker}.{connection.id}"

    async def _serve(self, connection: SipConnection) -> None:
        token = self.flow_token(connection)
        if connection.side in ("client", "federation"):
            self.flows[token] = connection
        try:
            async with contextlib.aclosing(connection.messages()) as messages:
                async for message in messages:
                    await self._on_message(connection, message)
        finally:
            self.flows.pop(token, None)

    async def _refuse_peer(self, connection: SipConnection, reason: Reason) -> None:
        self.refused[str(reason)] += 1

    async def _on_message(self, connection: SipConnection, message: SipMessage) -> None:
        for inbound in await self.proxy.receive(connection, message):
            await self._on_request(inbound)

    async def _on_request(self, inbound: Inbound) -> None:
        try:
            await self._route(inbound)
        except (OSError, ssl.SSLError) as error:  # the next hop's connection was closed
            await self._reply(inbound, 503, f"next hop lost: {error}", classify_tls_error(error))
        except MalformedMessage as error:
            self.answered_malformed += 1
            await self._reply(inbound, error.status or 400, error.reason)
        except Exception:
            await self._reply(inbound, 500)  # a bug here still ends the server transaction
            raise

    async def _reply(self, inbound: Inbound, status: int, text: str = "", reason: Reason | None = None,
                     code: int = 1000, phrase: str | None = None) -> None:
        if isinstance(inbound, StrayAck):
            return  # an ACK is never answered
        headers = [("Server", f"{SERVER_HEADER}/{self.config.node}")]
        if text or reason is not None:
            headers.append(format_diagnostic(code, text or str(reason), reason))
        response = make_response(inbound.request, status, phrase, to_tag=f"{self._rng.getrandbits(32):08x}",
                                 headers=headers)
        await self.proxy.respond(inbound, response)

    # ------------------------------------------------------------------------------------ routing

    def _record_route(self, connection: SipConnection) -> str:
        c = self.config
        return f"<sip:{c.internal_host}:{c.internal_port};transport=tls;lr;{FLOW_PARAM}={self.flow_token(connection)}>"

    def _our_route(self, request: SipRequest) -> SipUri | None:
        if "route" not in request.headers.lookup_keys:
            return None  # the usual request from outside: no lookup to make
        routes = request.headers.values("route")
        if not routes:
            return None
        uri = parse_name_addr(routes[0]).uri
        if isinstance(uri, SipUri) and uri.has_param(FLOW_PARAM) and uri.host == self.config.internal_host:
            return uri
        return None

    def _is_for_edge(self, uri: SipUri) -> bool:
        return uri.user is None and uri.host.lower() in self._edge_hosts

    async def _route(self, inbound: Inbound) -> None:
        request = inbound.request
        connection = inbound.peer
        max_forwards = request.headers.get("max-forwards")
        if max_forwards is not None and max_forwards.strip() == "0":
            await self._reply(inbound, 483)  # RFC 3261 §16.3 step 2
            return
        uri = request.uri
        if not isinstance(uri, SipUri):
            await self._reply(inbound, 416)  # RFC 3261 §8.2.2.1
            return
        our_route = self._our_route(request)
        if our_route is None and self._is_for_edge(uri):
            if request.method == "OPTIONS":  # RFC 3261 §11.2: the Edge answers for itself
                await self._reply(inbound, 200)
            else:
                await self._reply(inbound, 405)
            return
        if connection.side in ("client", "federation"):
            problem = _address_problem(request)
            if problem is not None:
                await self._reply(inbound, 400, problem, phrase=problem)
                return
        if connection.side == "client":
            await self._from_client(inbound, our_route)
        elif connection.side == "federation":
            await self._from_partner(inbound, our_route)
        else:
            await self._from_inside(inbound, our_route, uri)

    async def _from_client(self, inbound: Inbound, our_route: SipUri | None) -> None:
        request, connection = inbound.request, inbound.peer
        sender = request.from_.sip_uri
        if sender.host.lower() != self.config.domain:
            self.refused["foreign-user"] += 1
            await self._reply(inbound, 403, "user is not in a domain of this pool", Reason.REJECTED)
            return
        aor = sender.aor
        if request.method not in ("REGISTER", "ACK") and aor not in connection.authenticated:
            self.refused["not-authenticated"] += 1
            await self._reply(inbound, 403, "not authenticated: REGISTER first", Reason.REJECTED)
            return
        on_final = None
        if request.method == "REGISTER":
            registered = request.to.sip_uri.aor

            def on_final(response: SipResponse) -> None:
                if 200 <= response.status < 300:
                    connection.authenticated.add(registered)

        await self._to_director(inbound, our_route, self._client_trust, on_final)

    async def _from_partner(self, inbound: Inbound, our_route: SipUri | None) -> None:
        request, connection = inbound.request, inbound.peer
        domain = request.from_.sip_uri.host.lower()
        if domain not in connection.authenticated:
            reason = await self._check_partner(connection, domain)
            if reason is not None:
                self.refused[str(reason)] += 1
                await self._reply(inbound, 403, f"partner certificate does not match the SRV target of {domain}",
                                  reason, code=1046)
                return
            connection.authenticated.add(domain)
        target = request.uri
        if our_route is None and isinstance(target, SipUri) and target.host.lower() != self.config.domain:
            self.refused["relay-denied"] += 1
            await self._reply(inbound, 403, "the Edge does not relay between partners", Reason.REJECTED)
            return
        trust = f"ms-source-type=DirectPartner;ms-ep-fqdn={min(connection.peer_names, default='')};" \
                "ms-source-network=federation"
        await self._to_director(inbound, our_route, trust, None)

    async def _to_director(self, inbound: Inbound, our_route: SipUri | None, trust: str,
                           on_final: Callable[[SipResponse], None] | None) -> None:
        hop = self.next_hop
        try:
            outbound = await self._internal_out.get(hop.host, hop.port, self._contexts.internal_client,
                                                    hop.server_name, CONNECT_TIMEOUT)
        except (OSError, ssl.SSLError, TimeoutError) as error:
            reason = classify_tls_error(error)
            self.refused[f"next-hop-{reason}"] += 1
            await self._reply(inbound, 504, f"cannot reach the next hop {hop.server_name}: {error}", reason,
                              code=1008)
            return
        method = inbound.request.method
        record = self._record_route(inbound.peer) if method in DIALOG_CREATING else None
        extra: tuple[tuple[str, str], ...] = ((TRUST_HEADER, trust),)
        if method == "REGISTER" and inbound.peer.side == "client":
            # RFC 3327 Path (the flow token of RFC 5626 §5.1): the registrar routes requests for this user back
            # through this Edge and onto this very connection
            extra = (("Path", self._record_route(inbound.peer)), (TRUST_HEADER, trust))
        await self.proxy.forward(inbound, outbound, record_route=record, pop_route=our_route is not None,
                                 on_final=on_final, extra=extra, strip=TRUST_HEADER)

    async def _from_inside(self, inbound: Inbound, our_route: SipUri | None, uri: SipUri) -> None:
        if our_route is not None:
            token = our_route.param(FLOW_PARAM) or ""
            owner = flow_owner(token)
            if (owner is not None and self.worker is not None and owner != self.worker
                    and self.peer_link is not None and inbound.peer.side != "worker"):
                await self._to_owner(inbound, owner, self.peer_link)
                return
            flow = self.flows.get(token) or self._partner_flows.get(token)
            if flow is None or flow.closed:
                await self._reply(inbound, 480, "the client's connection is gone", Reason.RESET)
                return
            if inbound.peer.side == "worker":
                self.handed_in += 1
            record = self._record_route(flow) if inbound.request.method in DIALOG_CREATING else None
            await self.proxy.forward(inbound, flow, pop_route=True, record_route=record)
            return
        if uri.host.lower() == self.config.domain:
            await self._reply(inbound, 404, "the Edge serves no internal user")
            return
        await self._to_partner(inbound, uri.host.lower())

    async def _to_owner(self, inbound: Inbound, owner: int,
                        link: Callable[[int], Awaitable[SipConnection]]) -> None:
        """Worker mode: pass a request for a flow worker ``owner`` holds to it, our Route entry kept (the owner
        pops it and adds the Record-Route naming its flow)."""
        try:
            connection = await link(owner)
        except OSError as error:
            self.refused["worker-link"] += 1
            await self._reply(inbound, 480, f"the worker holding the client's connection is unreachable: {error}",
                              Reason.RESET)
            return
        self.handed_out += 1
        await self.proxy.forward(inbound, connection)

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

    async def _to_partner(self, inbound: Inbound, domain: str) -> None:
        try:
            candidates = await self._partner_targets(domain)
        except (ResolverError, OSError) as error:
            await self._reply(inbound, 504, f"no federation route to {domain}: {error}", Reason.PROTOCOL_ERROR,
                              code=1034)
            return
        if not candidates:
            await self._reply(inbound, 404, f"{domain} publishes no federation SRV", Reason.PROTOCOL_ERROR)
            return
        now = asyncio.get_running_loop().time()
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
            record = None
            if inbound.request.method in DIALOG_CREATING:
                # in-dialog requests from inside go back on this link
                self._partner_flows[self.flow_token(outbound)] = outbound
                record = self._record_route(outbound)
            await self.proxy.forward(inbound, outbound, record_route=record)
            return
        await self._reply(inbound, 504, f"cannot connect to the federated peer {last[1]}", last[0], code=1046)


def flow_owner(token: str) -> int | None:
    """The worker a flow token names (``w<index>.<connection id>``); None for a single process's token."""
    if not token.startswith("w"):
        return None
    index, dot, _ = token[1:].partition(".")
    return int(index) if dot and index.isdigit() else None


def _address_problem(request: SipRequest) -> str | None:
    """Why a request from outside names no user the Edge can check: a REGISTER's From or To (RFC 3261 §10.3,
    RFC 4475 §3.3.4), another request's From, that is not a SIP or SIPS URI. The answer is 400.
    """
    if request.method == "REGISTER":
        return registrar_address_problem(request)
    uri = request.from_.uri
    if isinstance(uri, SipUri):
        return None
    return f"From is not a SIP or SIPS URI ({'*' if uri is None else uri.scheme})"

