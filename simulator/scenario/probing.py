"""The probe registry: one application-level check per rule, run against each pool node.

A probe returns an :class:`Outcome` for one node: ``pass`` only when the protocol answered as it must
(an open port alone is never a pass), else ``fail`` with a reason code. Probes are registered by the
name a rule carries (``Rule.probe``); a rule whose probe is not registered is reported
``unimplemented`` by the runner, never ``pass``. Probe modules register with :func:`probe`;
:mod:`simulator.scenario.probes` imports them all.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from simulator.lab.addressing import HostKind
from simulator.lab.names import DNS_PORT
from simulator.lab.topology import Lab
from simulator.net.transport.resolver import NameNotFound, ResolverError, ResolverTimeout, StubResolver
from simulator.net.transport.tls import classify_tls_error
from simulator.outcome import Outcome, ProbeFailure, Reason, Verdict
from simulator.spec.rules import Rule
from simulator.spec.schema import Client, ClientRole


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


def peer(ctx: ProbeContext, role: ClientRole) -> Client:
    clients = ctx.lab.scenario.clients_with_role(role)
    if not clients:
        raise ProbeFailure(Reason.NO_PEER, f"the scenario has no {role} to run {ctx.rule.id} from")
    return clients[0]


def host_of(ctx: ProbeContext, client: Client) -> str:
    """The lab address a client population's (first) host sends from."""
    return ctx.lab.plan.of(client.name, HostKind.CLIENT)[0].address


def internal_target(ctx: ProbeContext, node: str) -> tuple[str, str]:
    """(address, TLS name) of a node's internal interface."""
    spec = next(n for n in ctx.lab.scenario.edge_pool.nodes if n.name == node)
    address = ctx.lab.plan.one(node, HostKind.EDGE_INTERNAL).address
    return address, spec.internal_fqdn or ctx.lab.scenario.edge_pool.internal_fqdn


async def guarded(node: str, check: Callable[[], Awaitable[str]]) -> Outcome:
    """Run a check; a :class:`ProbeFailure` becomes a ``fail`` outcome with its reason."""
    # A measurement for the report, not protocol time: no core sees it and no timer is armed from it, so it
    # takes the clock made for durations (loop.time() is millisecond-coarse under uvloop; reports keep µs).
    started = time.perf_counter()
    try:
        detail = await check()
    except ProbeFailure as failure:
        return Outcome(node, Verdict.FAIL, failure.reason, failure.detail, (time.perf_counter() - started) * 1000)
    return Outcome(node, Verdict.PASS, None, detail, (time.perf_counter() - started) * 1000)


def access_edge_resolver(ctx: ProbeContext, node: str) -> StubResolver:
    """A resolver that queries the lab DNS server from the node's Access Edge external address."""
    source = ctx.lab.plan.one(node, HostKind.EDGE_ACCESS_PRIVATE).address
    return StubResolver(ctx.lab.plan.host("dns").address, ctx.lab.port_map(DNS_PORT), timeout=ctx.timeout,
                        source=source)


async def resolve(coroutine: Awaitable[list[_T]], what: str) -> list[_T]:
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
