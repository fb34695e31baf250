"""Probes of the internal management rules: I8 (CMS replication, HTTPS 4443), I9–I11 (CLS, MTLS)."""

from __future__ import annotations

from simulator.net.clients.mgmt import cls_query, cms_push
from simulator.outcome import Outcome, ProbeFailure, Reason
from simulator.scenario.probing import ProbeContext, guarded, host_of, internal_target, peer, probe
from simulator.spec.schema import ClientRole


@probe("cms-replication")
async def cms_replication(ctx: ProbeContext, node: str) -> Outcome:
    """I8: the Front End pushes a Central Management store document over HTTPS 4443; the Edge acks it."""

    async def check() -> str:
        frontend = peer(ctx, ClientRole.FRONT_END)
        address, name = internal_target(ctx, node)
        port = ctx.lab.port_map(ctx.rule.ports.first)
        document = (f'<?xml version="1.0"?><CmsReplication xmlns="urn:edgesim:cms" to="{name}">'
                    f'<Setting name="AccessEdgeExternalFqdn">{ctx.lab.scenario.edge_pool.access_fqdn}</Setting>'
                    "</CmsReplication>").encode()
        ack = await cms_push(address, port, ctx.lab.peer_client_context(frontend), name, document, ctx.timeout,
                             source=host_of(ctx, frontend))
        return f"{address}:{port} stored version {ack.get('version')} from {frontend.fqdn}"

    return await guarded(node, check)


@probe("cls-agent")
async def cls_agent(ctx: ProbeContext, node: str) -> Outcome:
    """I9–I11: the CLS controller queries the agent over mutual TLS on the rule's port."""

    async def check() -> str:
        frontend = peer(ctx, ClientRole.FRONT_END)
        address, name = internal_target(ctx, node)
        port = ctx.lab.port_map(ctx.rule.ports.first)
        token = f"{ctx.rule.id}-{node}"
        reply = await cls_query(address, port, ctx.lab.peer_client_context(frontend), name, token, ctx.timeout,
                                source=host_of(ctx, frontend))
        if reply.fields[0] != node:
            raise ProbeFailure(Reason.PROTOCOL_ERROR, f"answered by agent {reply.fields[0]}, not {node}")
        return f"{address}:{port} agent {reply.fields[0]} answered"

    return await guarded(node, check)
