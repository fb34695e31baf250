"""Probes of the Access Edge's SIP rules: E6/P3 (remote sign-in on 443), E7/P1 (partners in on 5061),
E8/F1/P2 (the Edge out to partners on 5061), I2/I3 (internal 5061 both ways) and I5 (MRAS on 5062).

Each one passes only on the expected SIP answer from the expected server (the ``Server`` header of the
Director, the partner or the Edge), after TLS checked the certificate names.
"""

from __future__ import annotations

import random
import time

from simulator.lab.access import (
    SIP_MTLS_PORT,
    access_edge_address,
    frontend_mras_credentials,
    remote_user_session,
    user_accounts,
)
from simulator.lab.addressing import HostKind
from simulator.net.clients.sip_client import (
    SipClient,
    one_request,
    require_success,
)
from simulator.net.edge.access_edge import SERVER_HEADER as EDGE_SERVER
from simulator.net.peers.frontend import SERVER_HEADER as FRONTEND_SERVER
from simulator.net.peers.sip_partner import SERVER_HEADER as PARTNER_SERVER
from simulator.outcome import Outcome, ProbeFailure, Reason
from simulator.scenario.probing import ProbeContext, guarded, internal_target, peer, probe
from simulator.spec.schema import ClientRole
from simulator.wire import mras
from simulator.wire.sip import SipResponse


def _rng(ctx: ProbeContext, node: str) -> random.Random:
    return random.Random(f"{ctx.lab.scenario.seed}:{ctx.rule.id}:{node}")


def _answered_by(response: SipResponse, prefix: str, what: str) -> str:
    server = response.headers.get("server") or ""
    if not server.startswith(prefix):
        raise ProbeFailure(Reason.PROTOCOL_ERROR, f"{what} answered by {server or 'an unnamed server'}, "
                           f"expected {prefix}")
    return server


def _internal_server(ctx: ProbeContext) -> tuple[str, str]:
    """(scenario client name, address) of the Front End (the server that talks to the Edge's inside)."""
    frontend = peer(ctx, ClientRole.FRONT_END)
    return frontend.name, ctx.lab.plan.of(frontend.name, HostKind.CLIENT)[0].address


@probe("sip-remote-signin")
async def sip_remote_signin(ctx: ProbeContext, node: str) -> Outcome:
    """E6/P3: a remote user, TLS 443 (certificate sip.<domain>): REGISTER → 401 → REGISTER → 200."""

    async def check() -> str:
        if not user_accounts(ctx.lab):
            raise ProbeFailure(Reason.NO_PEER, "the scenario has no remote user")
        async with remote_user_session(ctx.lab, node, timeout=ctx.timeout, sign_in=False) as user:
            signed = await user.sign_in(ctx.timeout)
            server = _answered_by(signed.accepted, FRONTEND_SERVER, "REGISTER")
            logon = signed.accepted.headers.get("ms-user-logon-data") or "-"
            address = f"{access_edge_address(ctx.lab, node)}:{ctx.lab.port_map(443)}"
            return f"{user.aor} via {address}: 401 then 200 from {server} (ms-user-logon-data {logon})"

    return await guarded(node, check)


@probe("sip-internal-out")
async def sip_internal_out(ctx: ProbeContext, node: str) -> Outcome:
    """I3: the Edge relays a remote user's REGISTER over internal MTLS 5061 to the Director (its 401)."""

    async def through_sign_in() -> str:
        async with remote_user_session(ctx.lab, node, timeout=ctx.timeout, sign_in=False) as user:
            client = user.client
            request = client.build("REGISTER", f"sip:{user.domain}", user.from_, f"<{user.aor}>")
            response = await client.request(request, ctx.timeout)
        if response.status != 401:
            require_success(response, "REGISTER relayed to the Director")
            raise ProbeFailure(Reason.PROTOCOL_ERROR, f"expected the Director's 401, got {response.status}")
        server = _answered_by(response, FRONTEND_SERVER, "REGISTER")
        return f"Edge {node} → {server} over internal MTLS {ctx.lab.port_map(SIP_MTLS_PORT)}: 401 challenge"

    async def check() -> str:
        # The Edge opens this flow only when something outside asks it to: a remote user's REGISTER (443) or a
        # partner's MESSAGE (5061). Try both, so a closed inbound port fails its own rule (E6 or E7), not I3.
        try:
            return await through_sign_in()
        except ProbeFailure as first:
            if not ctx.lab.scenario.clients_with_role(ClientRole.FEDERATED_PARTNER):
                raise
            try:
                detail = await _partner_in(ctx, node, ClientRole.FEDERATED_PARTNER)
            except ProbeFailure:
                raise first from None
            return f"{detail} (the remote user's REGISTER did not get through: {first.reason})"

    return await guarded(node, check)


@probe("sip-internal-in")
async def sip_internal_in(ctx: ProbeContext, node: str) -> Outcome:
    """I2: the Front End opens MTLS 5061 to the Edge's internal interface; OPTIONS → 200 from the Edge."""

    async def check() -> str:
        name, source = _internal_server(ctx)
        frontend = peer(ctx, ClientRole.FRONT_END)
        address, tls_name = internal_target(ctx, node)
        port = ctx.lab.port_map(SIP_MTLS_PORT)
        response = await one_request(address, port, ctx.lab.peer_client_context(frontend), tls_name, ctx.timeout,
                                     _rng(ctx, node), "OPTIONS", f"sip:{tls_name}", f"<sip:{frontend.fqdn}>",
                                     f"<sip:{tls_name}>", source=source)
        require_success(response, "OPTIONS to the Edge")
        server = _answered_by(response, EDGE_SERVER, "OPTIONS")
        return f"{name} → {tls_name} ({address}:{port}): 200 from {server}"

    return await guarded(node, check)


@probe("mras-in")
async def mras_in(ctx: ProbeContext, node: str) -> Outcome:
    """I5: the Front End sends SERVICE (MRAS) to the Edge's 5062; credentials come back and are usable."""

    async def check() -> str:
        where, answer = await frontend_mras_credentials(ctx.lab, node, _rng(ctx, node), timeout=ctx.timeout,
                                                        location=mras.MrasLocation.INTERNET)
        assert answer.credentials is not None
        relays = ", ".join(f"{r.location}:{r.host_name}" for r in answer.relays)
        if ctx.lab.placement.deployed:
            # The pool's credential store lives in the Edge's process: the A/V rules (I6, I7, E15 …) show the
            # credentials are accepted there.
            return f"{where}: credentials for {answer.credentials.duration} min, relays {relays}"
        stored = ctx.lab.credentials.password_for(answer.credentials.username, time.time())
        if stored != answer.credentials.password:
            raise ProbeFailure(Reason.PROTOCOL_ERROR, "the issued credentials are not in the pool's credential store")
        return f"{where}: credentials for {answer.credentials.duration} min, relays {relays}"

    return await guarded(node, check)


def _partner(ctx: ProbeContext, role: ClientRole) -> tuple[str, str, str]:
    client = peer(ctx, role)
    assert client.fqdn is not None
    return client.name, client.fqdn, client.domain or client.fqdn


async def _partner_in(ctx: ProbeContext, node: str, role: ClientRole) -> str:
    name, fqdn, domain = _partner(ctx, role)
    client = peer(ctx, role)
    source = ctx.lab.plan.of(name, HostKind.CLIENT)[0].address
    address, port = access_edge_address(ctx.lab, node), ctx.lab.port_map(SIP_MTLS_PORT)
    pool = ctx.lab.scenario.edge_pool
    target = f"sip:{user_accounts(ctx.lab)[0].user if user_accounts(ctx.lab) else 'user'}@{ctx.lab.scenario.domain}"
    rng = _rng(ctx, node)
    sip = await SipClient.connect([address], port, ctx.lab.peer_client_context(client), pool.access_fqdn,
                                  ctx.timeout, rng, source=source)
    async with sip:
        request = sip.build("MESSAGE", target, f"<sip:someone@{domain}>", f"<{target}>",
                            headers=[("Content-Type", "text/plain")], body=f"hello from {fqdn}".encode())
        response = require_success(await sip.request(request, ctx.timeout), f"MESSAGE from {domain}")
    server = _answered_by(response, FRONTEND_SERVER, "MESSAGE")
    return f"{fqdn} → {pool.access_fqdn} ({address}:{port}) MTLS: MESSAGE to {target} → 200 from {server}"


async def _partner_out(ctx: ProbeContext, node: str, role: ClientRole) -> str:
    _, fqdn, domain = _partner(ctx, role)
    frontend = peer(ctx, ClientRole.FRONT_END)
    _, source = _internal_server(ctx)
    address, tls_name = internal_target(ctx, node)
    target = f"sip:someone@{domain}"
    response = await one_request(address, ctx.lab.port_map(SIP_MTLS_PORT), ctx.lab.peer_client_context(frontend),
                                 tls_name, ctx.timeout, _rng(ctx, node), "MESSAGE", target,
                                 f"<sip:{user_accounts(ctx.lab)[0].user if user_accounts(ctx.lab) else 'fe'}"
                                 f"@{ctx.lab.scenario.domain}>", f"<{target}>", source=source,
                                 headers=[("Content-Type", "text/plain")], body=b"hello partner")
    require_success(response, f"MESSAGE to {domain} through {node}")
    server = _answered_by(response, PARTNER_SERVER, "MESSAGE")
    return f"{node} found {fqdn} by _sipfederationtls._tcp.{domain}, MTLS 5061 out: 200 from {server}"


@probe("sip-federation-in")
async def sip_federation_in(ctx: ProbeContext, node: str) -> Outcome:
    """E7: a federated partner's Edge opens MTLS 5061 to the Access Edge and gets a MESSAGE delivered."""
    return await guarded(node, lambda: _partner_in(ctx, node, ClientRole.FEDERATED_PARTNER))


@probe("sip-federation-out")
async def sip_federation_out(ctx: ProbeContext, node: str) -> Outcome:
    """E8/F1: the Access Edge finds the partner by SRV and delivers a MESSAGE over MTLS 5061."""
    return await guarded(node, lambda: _partner_out(ctx, node, ClientRole.FEDERATED_PARTNER))


@probe("sip-pic-in")
async def sip_pic_in(ctx: ProbeContext, node: str) -> Outcome:
    """P1: the PIC partner opens MTLS 5061 to the Access Edge."""
    return await guarded(node, lambda: _partner_in(ctx, node, ClientRole.PIC_PARTNER))


@probe("sip-pic-out")
async def sip_pic_out(ctx: ProbeContext, node: str) -> Outcome:
    """P2: the Access Edge opens MTLS 5061 to the PIC partner."""
    return await guarded(node, lambda: _partner_out(ctx, node, ClientRole.PIC_PARTNER))
