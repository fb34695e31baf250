"""Probes: one application-level check per rule, run against each pool node.

A probe returns an :class:`Outcome` for one node: ``pass`` only when the protocol answered as it must
(an open port alone is never a pass), else ``fail`` with a reason code. Probes are registered by the
name a rule carries (``Rule.probe``); a rule whose probe is not registered is reported
``unimplemented`` by the runner, never ``pass``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from simulator.lab.addressing import HostKind
from simulator.lab.topology import Lab
from simulator.net.mgmt import ProbeFailure, cls_query, cms_push
from simulator.report.verdict import Outcome, Reason, Verdict
from simulator.scenario.rules import Rule
from simulator.scenario.schema import Client, ClientRole


@dataclass(frozen=True, slots=True)
class ProbeContext:
    lab: Lab
    rule: Rule
    timeout: float


Probe = Callable[[ProbeContext, str], Awaitable[Outcome]]
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
