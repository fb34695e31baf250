"""The Access Edge of every node, the emulated Front End and Director, the partners' Edges, the lab's users.

* :func:`access_edge_services` (per node): the Access Edge (external TLS 443, external MTLS 5061, internal
  MTLS 5061) and the A/V Authentication service on internal 5062 writing to ``lab.credentials``;
  With ``Lab(scenario, access_workers=N)`` the node's three listeners are served by N worker processes
  (:class:`~simulator.net.edge.ae_workers.AccessEdgeWorkers`, service ``access-edge-workers``) from the start;
  MRAS stays in this process;
* :func:`sip_lab_services` (lab-wide): one :class:`~simulator.net.frontend.FrontEndServer` per Front End
  and Director of the scenario (the Director is the Edges' next hop when there is one), one
  :class:`~simulator.net.sip_partner.PartnerEdgeServer` per federated and PIC partner;
* :func:`user_accounts`: the remote users' SIP accounts (``<population>-<n>@<domain>``), with passwords
  derived from the scenario seed so SIPp and benchmarks can sign in too;
* :func:`request_mras_credentials`: A/V credentials through the real SIP path — remote user → Access
  Edge 443 → Director → Edge 5062 — for the A/V probes;
* ``edgesim serve access-edge``: :func:`add_serve_access_edge`.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from simulator.lab.addressing import HostKind
from simulator.lab.clients import open_tcp
from simulator.lab.names import DNS_PORT
from simulator.net.clients.sip_client import (
    RemoteUser,
    SipClient,
    TlsOpener,
    mras_request_body,
    one_request,
    parse_mras_answer,
    require_success,
)
from simulator.net.edge.access_edge import AccessEdge, AccessEdgeConfig, EdgeContexts
from simulator.net.edge.ae_workers import AccessEdgeWorkers
from simulator.net.edge.av_edge import loop_unix_time
from simulator.net.edge.mras import MrasConfig, MrasService
from simulator.net.peers.frontend import FrontEndConfig, FrontEndServer
from simulator.net.peers.sip_partner import PartnerEdgeServer
from simulator.net.transport.resolver import StubResolver
from simulator.net.transport.service import Service
from simulator.net.transport.sip_route import NextHop
from simulator.net.transport.tls import client_context, server_context
from simulator.outcome import ProbeFailure, Reason
from simulator.spec.schema import ClientRole, Scenario
from simulator.spec.schema import EdgeNode as NodeSpec
from simulator.wire import mras

if TYPE_CHECKING:
    from simulator.lab.topology import Lab

SIP_TLS_PORT = 443
SIP_MTLS_PORT = 5061
MRAS_PORT = 5062
DEFAULT_SCENARIO = Path(__file__).resolve().parent.parent.parent / "scenarios" / "lync2013-scaled-edge-dns-nat.yaml"


@dataclass(frozen=True, slots=True)
class Account:
    user: str
    domain: str
    password: str
    host: str  # the lab address the user's client connects from

    @property
    def aor(self) -> str:
        return f"sip:{self.user}@{self.domain}"


def account_password(scenario: Scenario, user: str) -> str:
    """A remote user's password: derived from the seed (a lab secret, printed by ``serve``)."""
    return hashlib.sha256(f"edgesim:{scenario.seed}:{user}".encode()).hexdigest()[:16]


def user_accounts(lab: Lab) -> list[Account]:
    """Every remote user of the scenario, in file order."""
    accounts: list[Account] = []
    for client in lab.scenario.clients_with_role(ClientRole.REMOTE_USER):
        for host in lab.plan.of(client.name, HostKind.CLIENT):
            accounts.append(Account(host.name, lab.scenario.domain, account_password(lab.scenario, host.name),
                                    host.address))
    return accounts


def _node_fqdn(lab: Lab, node: NodeSpec) -> str:
    return node.internal_fqdn or lab.scenario.edge_pool.internal_fqdn


def _internal_server(lab: Lab) -> NextHop:
    """The Edges' internal next hop: the Director when the topology has one, else the Front End."""
    for role in (ClientRole.DIRECTOR, ClientRole.FRONT_END):
        clients = lab.scenario.clients_with_role(role)
        if clients and clients[0].fqdn is not None:
            host = lab.plan.of(clients[0].name, HostKind.CLIENT)[0].address
            return NextHop(host, lab.port_map(SIP_MTLS_PORT), clients[0].fqdn)
    raise LookupError("the scenario has no Director or Front End for the Edge to reach")


def access_edge_address(lab: Lab, node: str) -> str:
    """Where outsiders reach a node's Access Edge: its public address (the 1:1 NAT is DNAT only)."""
    return lab.public_address(node, "access")


def access_workers_problem(scenario: Scenario, workers: int | dict[str, int]) -> str | None:
    """Why ``Lab(scenario, access_workers=workers)`` cannot run (None: it can)."""
    counts = workers if isinstance(workers, dict) else {"": workers}
    names = {node.name for node in scenario.edge_pool.nodes}
    for node, count in counts.items():
        if node and node not in names:
            return f"no pool node {node!r} in {scenario.name} (nodes: {', '.join(sorted(names))})"
        if count < 1:
            return f"want 1 or more Access Edge worker processes, not {count}"
    return None


def access_edge_services(lab: Lab, node: NodeSpec) -> dict[str, Service]:
    """The node's Access Edge (in this process, or on ``lab.access_workers_for(node)`` workers) and its MRAS."""
    files = lab.files
    assert files is not None
    pool = lab.scenario.edge_pool
    external = lab.external_bind(node.name, "access")
    internal = lab.plan.one(node.name, HostKind.EDGE_INTERNAL).address
    config = AccessEdgeConfig(
        node=node.name, domain=lab.scenario.domain, access_fqdn=pool.access_fqdn,
        internal_fqdn=_node_fqdn(lab, node), external_host=external, internal_host=internal,
        tls_port=lab.port_map(SIP_TLS_PORT), federation_port=lab.port_map(SIP_MTLS_PORT),
        internal_port=lab.port_map(SIP_MTLS_PORT), mras_port=lab.port_map(MRAS_PORT))
    relays = (mras.MediaRelay(mras.MrasLocation.INTRANET, pool.internal_fqdn),
              mras.MediaRelay(mras.MrasLocation.INTERNET, pool.av_fqdn))
    # Credentials expire on the clock the pool's A/V Edges check them with: the loop's, in Unix seconds.
    mras_service = MrasService(MrasConfig(node.name, relays), internal, lab.port_map(MRAS_PORT),
                               lab.internal_server_context(), lab.internal_peer_names, lab.credentials,
                               random.Random(f"{lab.scenario.seed}:mras:{node.name}"), clock=loop_unix_time,
                               secret=lab.av_secret)  # A/V Edges in workers: HMAC credentials
    workers = lab.access_workers_for(node.name)
    if workers is not None:
        # The workers bind the three listeners themselves (SO_REUSEPORT): nothing here binds them first.
        pool_of_workers = AccessEdgeWorkers.plan(
            workers, config=config, ca=files.ca, crl=files.crl, external_cert=files.cert("edge-external"),
            internal_cert=files.cert("edge-internal"), next_hop=_internal_server(lab),
            dns=(lab.plan.host("dns").address, lab.port_map(DNS_PORT)), port_map=lab.port_map,
            internal_peers=lab.internal_peer_names, seed=f"{lab.scenario.seed}:access:{node.name}",
            record_arrivals=lab.arrival_log is not None)  # a serving side of firewall lab mode
        return {"access-edge-workers": pool_of_workers, "mras": mras_service}
    contexts = EdgeContexts(
        client_tls=lab.external_server_context(False),
        federation_server=lab.external_server_context(True),
        federation_client=client_context(files.ca, *files.cert("edge-external"), crl=files.crl),
        internal_server=lab.internal_server_context(),
        internal_client=client_context(files.ca, *files.cert("edge-internal"), crl=files.crl))
    resolver = StubResolver(lab.plan.host("dns").address, lab.port_map(DNS_PORT), timeout=3.0, source=external)
    rng = random.Random(f"{lab.scenario.seed}:access:{node.name}")
    edge = AccessEdge(config, contexts, _internal_server(lab), resolver, lab.port_map, rng, lab.internal_peer_names)
    return {"access-edge": edge, **edge.listeners, "mras": mras_service}


def access_edge_workers(lab: Lab) -> list[tuple[str, AccessEdgeWorkers]]:
    """(node, its Access Edge workers) of every running node whose Access Edge is on worker processes."""
    return [(name, service) for name, node in lab.nodes.items() for service in node.services.values()
            if isinstance(service, AccessEdgeWorkers) and service.running]


def sip_lab_services(lab: Lab) -> dict[str, Service]:
    files = lab.files
    assert files is not None
    pool = lab.scenario.edge_pool
    edge_names = frozenset({pool.internal_fqdn, *(n.internal_fqdn for n in pool.nodes if n.internal_fqdn)})
    edges = {}
    for node in pool.nodes:
        address = lab.plan.one(node.name, HostKind.EDGE_INTERNAL).address
        edges[address] = NextHop(address, lab.port_map(SIP_MTLS_PORT), _node_fqdn(lab, node))
    accounts = {account.user: account.password for account in user_accounts(lab)}
    services: dict[str, Service] = {}
    for client in lab.scenario.clients:
        if client.fqdn is None or not lab.plan.of(client.name, HostKind.CLIENT) or not lab.placement.runs(client):
            continue
        host = lab.plan.of(client.name, HostKind.CLIENT)[0].address
        rng = random.Random(f"{lab.scenario.seed}:sip:{client.name}")
        if client.role in (ClientRole.FRONT_END, ClientRole.DIRECTOR):
            config = FrontEndConfig(client.name, client.fqdn, lab.scenario.domain, host,
                                    lab.port_map(SIP_MTLS_PORT), accounts)
            context = server_context(*files.cert(client.name, client.certificate), ca=files.ca, crl=files.crl)
            services[f"sip-{client.name}"] = FrontEndServer(
                config, context, lab.peer_client_context(client), edges, lab.port_map(MRAS_PORT),
                edge_names | lab.internal_peer_names, rng)
        elif client.role in (ClientRole.FEDERATED_PARTNER, ClientRole.PIC_PARTNER):
            context = server_context(*files.cert(client.name, client.certificate), ca=files.ca, crl=files.crl)
            services[f"sip-{client.name}"] = PartnerEdgeServer(f"sip-{client.name}", client.fqdn,
                                                               client.domain or client.fqdn, host,
                                                               lab.port_map(SIP_MTLS_PORT), context, rng)
    return services


# ------------------------------------------------------------------------------------ client helpers


def tls_opener(lab: Lab, source: str, timeout: float) -> TlsOpener:
    """Opens TLS to an Access Edge address on 443 from the client at ``source``, through its NAT if any."""
    assert lab.files is not None
    context = lab.user_client_context()

    async def open_to(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await open_tcp(lab, source, address, lab.port_map(SIP_TLS_PORT), context=context,
                              server_name=lab.scenario.edge_pool.access_fqdn, timeout=timeout)

    return open_to


@asynccontextmanager
async def remote_user_session(lab: Lab, node: str, *, index: int = 0, timeout: float = 5.0,
                              sign_in: bool = True, seed: int | None = None) -> AsyncIterator[RemoteUser]:
    """A remote user connected to ``node``'s Access Edge on 443 (signed in unless ``sign_in=False``)."""
    assert lab.files is not None
    account = user_accounts(lab)[index]
    rng = random.Random(seed if seed is not None else f"{lab.scenario.seed}:user:{account.user}:{node}")
    client = await SipClient.connect([access_edge_address(lab, node)], lab.port_map(SIP_TLS_PORT),
                                     lab.user_client_context(), lab.scenario.edge_pool.access_fqdn, timeout,
                                     rng, source=account.host, opener=tls_opener(lab, account.host, timeout))
    async with client:
        user = RemoteUser(client, account.user, account.domain, account.password)
        if sign_in:
            await user.sign_in(timeout)
        yield user


async def request_mras_credentials(lab: Lab, node: str, *, index: int = 0, timeout: float = 5.0,
                                   location: mras.MrasLocation = mras.MrasLocation.INTERNET) -> mras.MrasResponse:
    """A/V credentials through the real SIP path (research §1.3): a remote user signs in on ``node``'s
    Access Edge (TLS 443), gets the ``mrasUri`` from provisioning, and sends SERVICE to it; the Edge
    relays to the Director (internal MTLS 5061), which routes it to ``node``'s MRAS on internal 5062.

    The credentials are in ``lab.credentials`` when this returns; raises ProbeFailure otherwise.
    """
    async with remote_user_session(lab, node, index=index, timeout=timeout) as user:
        await user.provisioning(timeout)
        return await user.request_mras(timeout, location=location)


async def frontend_mras_credentials(lab: Lab, node: str, rng: random.Random, *, timeout: float = 5.0,
                                    location: mras.MrasLocation = mras.MrasLocation.INTRANET,
                                    identity: str | None = None) -> tuple[str, mras.MrasResponse]:
    """A/V credentials the way the Front End gets them for an internal user (research §1.3): SERVICE from the
    Front End's address over mutual TLS straight to ``node``'s MRAS on the internal interface (5062), on behalf
    of ``identity`` (the internal user's AOR; default: the first remote user's, as the probes ask).

    Returns (where it was asked, the checked answer); raises ProbeFailure otherwise.
    """
    frontends = lab.scenario.clients_with_role(ClientRole.FRONT_END)
    if not frontends:
        raise ProbeFailure(Reason.NO_PEER, "the scenario has no Front End to ask MRAS from")
    frontend = frontends[0]
    spec = lab.node_spec(node)
    address = lab.plan.one(node, HostKind.EDGE_INTERNAL).address
    tls_name = spec.internal_fqdn or lab.scenario.edge_pool.internal_fqdn
    port = lab.port_map(MRAS_PORT)
    accounts = user_accounts(lab)
    if identity is None:
        identity = accounts[0].aor if accounts else f"sip:probe@{lab.scenario.domain}"
    mras_uri = f"sip:{frontend.fqdn}@{lab.scenario.domain};gruu;opaque=srvr:MRAS:probe"
    response = await one_request(address, port, lab.peer_client_context(frontend), tls_name, timeout, rng,
                                 "SERVICE", mras_uri, f"<{identity}>", f"<{mras_uri}>",
                                 source=lab.plan.of(frontend.name, HostKind.CLIENT)[0].address,
                                 headers=[("Content-Type", mras.CONTENT_TYPE)],
                                 body=mras_request_body(rng, identity, mras_uri, location))
    return f"{address}:{port}", parse_mras_answer(require_success(response, "MRAS SERVICE"))
