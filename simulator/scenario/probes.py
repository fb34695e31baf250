"""Probes: one application-level check per rule, run against each pool node.

A probe returns an :class:`Outcome` for one node: ``pass`` only when the protocol answered as it must
(an open port alone is never a pass), else ``fail`` with a reason code. Probes are registered by the
name a rule carries (``Rule.probe``); a rule whose probe is not registered is reported
``unimplemented`` by the runner, never ``pass``.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import h11
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from simulator.lab.addressing import HostKind
from simulator.lab.names import crl_host
from simulator.lab.topology import CRL_PATH, CRL_PORT, DNS_PORT, Lab
from simulator.net.http import http_get
from simulator.net.mgmt import ProbeFailure, cls_query, cms_push
from simulator.net.resolver import NameNotFound, ResolverError, ResolverTimeout, StubResolver
from simulator.net.tls import classify_tls_error
from simulator.report.verdict import Outcome, Reason, Verdict
from simulator.scenario.rules import Rule
from simulator.scenario.schema import Client, ClientRole


@dataclass(frozen=True, slots=True)
class ProbeContext:
    lab: Lab
    rule: Rule
    timeout: float


Probe = Callable[[ProbeContext, str], Awaitable[Outcome]]
_T = TypeVar("_T")
PROBES: dict[str, Probe] = {}


def probe(name: str) -> Callable[[Probe], Probe]:
    """Register a probe under the name rules refer to."""

    def register(function: Probe) -> Probe:
        PROBES[name] = function
        return function

    return register


def _peer(ctx: ProbeContext, role: ClientRole) -> Client:
    clients = ctx.lab.scenario.clients_with_role(role)
    if not clients:
        raise ProbeFailure(Reason.NO_PEER, f"the scenario has no {role} to run {ctx.rule.id} from")
    return clients[0]


def _internal_target(ctx: ProbeContext, node: str) -> tuple[str, str]:
    """(address, TLS name) of a node's internal interface."""
    spec = next(n for n in ctx.lab.scenario.edge_pool.nodes if n.name == node)
    address = ctx.lab.plan.one(node, HostKind.EDGE_INTERNAL).address
    return address, spec.internal_fqdn or ctx.lab.scenario.edge_pool.internal_fqdn


async def _guarded(node: str, check: Callable[[], Awaitable[str]]) -> Outcome:
    """Run a check; a :class:`ProbeFailure` becomes a ``fail`` outcome with its reason."""
    started = time.perf_counter()
    try:
        detail = await check()
    except ProbeFailure as failure:
        return Outcome(node, Verdict.FAIL, failure.reason, failure.detail, (time.perf_counter() - started) * 1000)
    return Outcome(node, Verdict.PASS, None, detail, (time.perf_counter() - started) * 1000)


@probe("cms-replication")
async def cms_replication(ctx: ProbeContext, node: str) -> Outcome:
    """I8: the Front End pushes a Central Management store document over HTTPS 4443; the Edge acks it."""

    async def check() -> str:
        frontend = _peer(ctx, ClientRole.FRONT_END)
        address, name = _internal_target(ctx, node)
        port = ctx.lab.port_map(ctx.rule.ports.first)
        document = (f'<?xml version="1.0"?><CmsReplication xmlns="urn:edgesim:cms" to="{name}">'
                    f'<Setting name="AccessEdgeExternalFqdn">{ctx.lab.scenario.edge_pool.access_fqdn}</Setting>'
                    "</CmsReplication>").encode()
        ack = await cms_push(address, port, ctx.lab.peer_client_context(frontend), name, document, ctx.timeout)
        return f"{address}:{port} stored version {ack.get('version')} from {frontend.fqdn}"

    return await _guarded(node, check)


@probe("cls-agent")
async def cls_agent(ctx: ProbeContext, node: str) -> Outcome:
    """I9–I11: the CLS controller queries the agent over mutual TLS on the rule's port."""

    async def check() -> str:
        frontend = _peer(ctx, ClientRole.FRONT_END)
        address, name = _internal_target(ctx, node)
        port = ctx.lab.port_map(ctx.rule.ports.first)
        token = f"{ctx.rule.id}-{node}"
        reply = await cls_query(address, port, ctx.lab.peer_client_context(frontend), name, token, ctx.timeout)
        if reply.fields[0] != node:
            raise ProbeFailure(Reason.PROTOCOL_ERROR, f"answered by agent {reply.fields[0]}, not {node}")
        return f"{address}:{port} agent {reply.fields[0]} answered"

    return await _guarded(node, check)


def _access_edge_resolver(ctx: ProbeContext, node: str) -> StubResolver:
    """A resolver that queries the lab DNS server from the node's Access Edge external address."""
    source = ctx.lab.plan.one(node, HostKind.EDGE_ACCESS_PRIVATE).address
    return StubResolver(ctx.lab.plan.host("dns").address, ctx.lab.port_map(DNS_PORT), timeout=ctx.timeout,
                        source=source)


async def _resolve(coroutine: Awaitable[list[_T]], what: str) -> list[_T]:
    try:
        return await coroutine
    except ResolverTimeout:
        raise ProbeFailure(Reason.TIMEOUT, f"no DNS answer for {what}") from None
    except NameNotFound:
        raise ProbeFailure(Reason.PROTOCOL_ERROR, f"NXDOMAIN for {what}") from None
    except ResolverError as error:
        raise ProbeFailure(Reason.PROTOCOL_ERROR, f"{what}: {error}") from None
    except OSError as error:
        raise ProbeFailure(classify_tls_error(error), f"{what}: {error}") from None


async def _dns_check(ctx: ProbeContext, node: str, transport: str) -> str:
    """The Access Edge resolves the pool (one A per node) and a federation SRV over one transport."""
    resolver = _access_edge_resolver(ctx, node)
    pool = ctx.lab.scenario.edge_pool
    expected = sorted(ctx.lab.zone.addresses(pool.access_fqdn))
    got = sorted(await _resolve(resolver.resolve_a(pool.access_fqdn, transport),
                                f"{pool.access_fqdn} A over {transport}"))
    if got != expected:
        raise ProbeFailure(Reason.PROTOCOL_ERROR, f"{pool.access_fqdn} A over {transport}: {got}, expected {expected}")
    partners = [c for c in ctx.lab.scenario.clients if c.role in (ClientRole.FEDERATED_PARTNER, ClientRole.PIC_PARTNER)
                and c.domain is not None]
    domain = partners[0].domain if partners else ctx.lab.scenario.domain
    name = f"_sipfederationtls._tcp.{domain}"
    targets = await _resolve(resolver.resolve_srv(name, transport), f"{name} SRV over {transport}")
    want = partners[0].fqdn if partners else pool.access_fqdn
    if not targets or targets[0].target != want:
        raise ProbeFailure(Reason.PROTOCOL_ERROR, f"{name} SRV over {transport}: {targets}, expected {want}")
    return f"{pool.access_fqdn} → {len(got)} A records, {name} → {want}"


@probe("dns-tcp")
async def dns_tcp(ctx: ProbeContext, node: str) -> Outcome:
    """E4: the Access Edge queries DNS over TCP 53 (RFC 7766)."""
    return await _guarded(node, lambda: _dns_check(ctx, node, "tcp"))


@probe("dns-udp")
async def dns_udp(ctx: ProbeContext, node: str) -> Outcome:
    """E5: the Access Edge queries DNS over UDP 53."""
    return await _guarded(node, lambda: _dns_check(ctx, node, "udp"))


@probe("crl-fetch")
async def crl_fetch(ctx: ProbeContext, node: str) -> Outcome:
    """E3: the Access Edge fetches the CA's CRL over HTTP 80 and finds it signed by the lab CA and current."""

    async def check() -> str:
        resolver = _access_edge_resolver(ctx, node)
        name = crl_host(ctx.lab.scenario)
        addresses = await _resolve(resolver.resolve_a(name), f"{name} A")
        if not addresses:
            raise ProbeFailure(Reason.PROTOCOL_ERROR, f"{name} has no A record")
        address, port = addresses[0], ctx.lab.port_map(CRL_PORT)
        source = ctx.lab.plan.one(node, HostKind.EDGE_ACCESS_PRIVATE).address
        try:
            status, body = await http_get(address, port, CRL_PATH, name, ctx.timeout, source=source)
        except (OSError, TimeoutError) as error:
            raise ProbeFailure(classify_tls_error(error), f"{address}:{port}: {error}") from None
        except h11.RemoteProtocolError as error:
            raise ProbeFailure(Reason.PROTOCOL_ERROR, f"{address}:{port}: bad HTTP: {error}") from None
        if status != 200:
            raise ProbeFailure(Reason.REJECTED, f"GET http://{name}{CRL_PATH} → HTTP {status}")
        try:
            crl = x509.load_der_x509_crl(body)
        except ValueError:
            raise ProbeFailure(Reason.PROTOCOL_ERROR, "the document is not a DER CRL") from None
        root = x509.load_pem_x509_certificate(ctx.lab.pki.root_cert_pem)
        try:
            valid = crl.is_signature_valid(root.public_key())  # type: ignore[arg-type]
        except InvalidSignature:
            valid = False
        if not valid:
            raise ProbeFailure(Reason.UNTRUSTED, "the CRL is not signed by the lab CA")
        next_update = crl.next_update_utc
        if next_update is None or next_update < dt.datetime.now(dt.UTC):
            raise ProbeFailure(Reason.EXPIRED, f"the CRL is stale (next update {next_update})")
        return f"GET http://{name}{CRL_PATH} from {source}: CRL with {len(list(crl))} revoked certificates"

    return await _guarded(node, check)
