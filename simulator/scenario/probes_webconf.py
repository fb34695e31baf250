"""Probes of the Web Conferencing rules: I4 (Front End → Edge MTLS 8057), E9 (client → Edge TLS 443)."""

from __future__ import annotations

import contextlib
import ssl

from simulator.lab.clients import open_tcp
from simulator.lab.webconf import PSOM_EXTERNAL_PORT, PSOM_INTERNAL_PORT
from simulator.net.clients.psom import psom_join, psom_register
from simulator.net.transport.tls import client_context
from simulator.outcome import Outcome, ProbeFailure, Reason
from simulator.scenario.probing import ProbeContext, guarded, host_of, internal_target, peer, probe
from simulator.spec.schema import ClientRole


@probe("psom-frontend-in")
async def psom_frontend_in(ctx: ProbeContext, node: str) -> Outcome:
    """I4: the Front End opens an MTLS link to the node's 8057 and registers; the Edge counts its links."""

    async def check() -> str:
        frontend = peer(ctx, ClientRole.FRONT_END)
        address, name = internal_target(ctx, node)
        port = ctx.lab.port_map(PSOM_INTERNAL_PORT)
        _reader, writer = await psom_register(address, port, ctx.lab.peer_client_context(frontend), name,
                                              frontend.fqdn or frontend.name, ctx.timeout,
                                              source=host_of(ctx, frontend))
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
        return f"{address}:{port} registered {frontend.fqdn}"

    return await guarded(node, check)


@probe("psom-client-in")
async def psom_client_in(ctx: ProbeContext, node: str) -> Outcome:
    """E9: a remote client joins a meeting over TLS to the node's Web Conferencing address on 443; the Edge
    bridges the join to a Front End over 8057 (synthetic PSOM records)."""

    async def check() -> str:
        files = ctx.lab.files
        assert files is not None
        address = ctx.lab.public_address(node, "webconf")
        port = ctx.lab.port_map(PSOM_EXTERNAL_PORT)
        name = ctx.lab.scenario.edge_pool.webconf_fqdn
        # A remote user's client, through its population's NAT box when it has one.
        user = peer(ctx, ClientRole.REMOTE_USER)
        context = client_context(files.ca)
        answer = await psom_join(address, port, context, name, ctx.lab.conference_key, ctx.timeout,
                                 opener=lambda: open_tcp(ctx.lab, host_of(ctx, user), address, port, context=context,
                                                         server_name=name, timeout=ctx.timeout))
        answered_by = answer.partition("/")[0]
        if answered_by != node:
            raise ProbeFailure(Reason.PROTOCOL_ERROR, f"joined through {answered_by}, not {node}")
        return f"{address}:{port} ({name}) joined via {answer}"

    return await guarded(node, check)
