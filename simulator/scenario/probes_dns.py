"""Probes of the Access Edge's outbound infrastructure rules: E3 (CRL over HTTP), E4/E5 (DNS TCP/UDP)."""

from __future__ import annotations

import datetime as dt

import h11
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from simulator.lab.addressing import HostKind
from simulator.lab.names import CRL_PATH, CRL_PORT, crl_host
from simulator.net.clients.http import http_get
from simulator.net.transport.tls import classify_tls_error
from simulator.outcome import Outcome, ProbeFailure, Reason
from simulator.scenario.probing import ProbeContext, access_edge_resolver, guarded, probe, resolve
from simulator.spec.schema import ClientRole


async def _dns_check(ctx: ProbeContext, node: str, transport: str) -> str:
    """The Access Edge resolves the pool (one A per node) and a federation SRV over one transport."""
    resolver = access_edge_resolver(ctx, node)
    pool = ctx.lab.scenario.edge_pool
    # One A record per node: each node's public Access Edge address (DNS load balancing, research §2).
    expected = sorted(ctx.lab.public_address(n.name, "access") for n in pool.nodes)
    got = sorted(await resolve(resolver.resolve_a(pool.access_fqdn, transport),
                                f"{pool.access_fqdn} A over {transport}"))
    if got != expected:
        raise ProbeFailure(Reason.PROTOCOL_ERROR, f"{pool.access_fqdn} A over {transport}: {got}, expected {expected}")
    partners = [c for c in ctx.lab.scenario.clients if c.role in (ClientRole.FEDERATED_PARTNER, ClientRole.PIC_PARTNER)
                and c.domain is not None]
    domain = partners[0].domain if partners else ctx.lab.scenario.domain
    name = f"_sipfederationtls._tcp.{domain}"
    targets = await resolve(resolver.resolve_srv(name, transport), f"{name} SRV over {transport}")
    want = partners[0].fqdn if partners else pool.access_fqdn
    if not targets or targets[0].target != want:
        raise ProbeFailure(Reason.PROTOCOL_ERROR, f"{name} SRV over {transport}: {targets}, expected {want}")
    return f"{pool.access_fqdn} → {len(got)} A records, {name} → {want}"


@probe("dns-tcp")
async def dns_tcp(ctx: ProbeContext, node: str) -> Outcome:
    """E4: the Access Edge queries DNS over TCP 53 (RFC 7766)."""
    return await guarded(node, lambda: _dns_check(ctx, node, "tcp"))


@probe("dns-udp")
async def dns_udp(ctx: ProbeContext, node: str) -> Outcome:
    """E5: the Access Edge queries DNS over UDP 53."""
    return await guarded(node, lambda: _dns_check(ctx, node, "udp"))


@probe("crl-fetch")
async def crl_fetch(ctx: ProbeContext, node: str) -> Outcome:
    """E3: the Access Edge fetches the CA's CRL over HTTP 80 and finds it signed by the lab CA and current."""

    async def check() -> str:
        resolver = access_edge_resolver(ctx, node)
        name = crl_host(ctx.lab.scenario)
        addresses = await resolve(resolver.resolve_a(name), f"{name} A")
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

    return await guarded(node, check)
