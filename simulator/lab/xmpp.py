"""XMPP services: each node's proxy (5269) and gateway link listener (23456), the Front End's XMPP
gateway, and one XMPP server per XMPP partner of the scenario."""

from __future__ import annotations

from typing import TYPE_CHECKING

from simulator.lab.addressing import HostKind
from simulator.lab.names import DNS_PORT
from simulator.net.edge.xmpp import OutboundRoute, XmppGatewayListener, edge_deliver
from simulator.net.peers.xmpp_frontend import FrontendXmppGateway
from simulator.net.peers.xmpp_partner import answering_deliver
from simulator.net.transport.resolver import StubResolver
from simulator.net.transport.service import Service
from simulator.net.transport.tls import client_context, server_context
from simulator.net.transport.xmpp_stream import XmppServerListener
from simulator.spec.schema import ClientRole
from simulator.spec.schema import EdgeNode as NodeSpec

if TYPE_CHECKING:
    from simulator.lab.topology import Lab

XMPP_S2S_PORT = 5269
XMPP_GATEWAY_PORT = 23456


def _partner_domains(lab: Lab) -> frozenset[str]:
    return frozenset(c.domain for c in lab.scenario.clients_with_role(ClientRole.XMPP_PARTNER) if c.domain)


def xmpp_services(lab: Lab, node: NodeSpec) -> dict[str, Service]:
    assert lab.files is not None
    public = lab.external_bind(node.name, "access")
    resolver = StubResolver(lab.plan.host("dns").address, lab.port_map(DNS_PORT), timeout=3.0, source=public)

    async def resolve(domain: str) -> tuple[str, int]:
        # RFC 6120 §3.2.1: SRV _xmpp-server._tcp.<domain>, then the target's address.
        targets = await resolver.resolve_srv(f"_xmpp-server._tcp.{domain}")
        if not targets:
            raise LookupError(f"no _xmpp-server._tcp SRV for {domain}")
        addresses = targets[0].addresses or tuple(await resolver.resolve_a(targets[0].target))
        if not addresses:
            raise LookupError(f"no address for {targets[0].target}")
        return addresses[0], lab.port_map(targets[0].port)

    route = OutboundRoute(resolve, client_context(lab.files.ca, *lab.files.cert("edge-external"), crl=lab.files.crl),
                          public)
    gateway = XmppGatewayListener(node.name, lab.scenario.domain,
                                  lab.plan.one(node.name, HostKind.EDGE_INTERNAL).address,
                                  lab.port_map(XMPP_GATEWAY_PORT), lab.internal_server_context(),
                                  lab.internal_peer_names, route)
    proxy = XmppServerListener("xmpp-proxy", lab.scenario.domain, public, lab.port_map(XMPP_S2S_PORT),
                               lab.external_server_context(True), edge_deliver(gateway), _partner_domains(lab))
    return {"xmpp-gateway": gateway, "xmpp-proxy": proxy}


def xmpp_peers(lab: Lab) -> dict[str, Service]:
    assert lab.files is not None
    services: dict[str, Service] = {}
    for partner in lab.scenario.clients_with_role(ClientRole.XMPP_PARTNER):
        if partner.domain is None or not lab.placement.runs(partner):
            continue
        host = lab.plan.of(partner.name, HostKind.CLIENT)[0].address
        context = server_context(*lab.files.cert(partner.name, partner.certificate), ca=lab.files.ca,
                                 crl=lab.files.crl)
        services[f"xmpp-partner-{partner.name}"] = XmppServerListener(
            partner.name, partner.domain, host, lab.port_map(XMPP_S2S_PORT), context,
            answering_deliver(partner.domain), frozenset({lab.scenario.domain}))
    frontends = lab.scenario.clients_with_role(ClientRole.FRONT_END)
    if frontends and lab.placement.runs(frontends[0]):
        frontend = frontends[0]
        targets = [(lab.plan.one(node.name, HostKind.EDGE_INTERNAL).address, lab.port_map(XMPP_GATEWAY_PORT),
                    node.internal_fqdn or lab.scenario.edge_pool.internal_fqdn)
                   for node in lab.scenario.edge_pool.nodes]
        services["frontend-xmpp"] = FrontendXmppGateway(frontend.fqdn or frontend.name, lab.scenario.domain, targets,
                                                        lab.peer_client_context(frontend),
                                                        lab.plan.of(frontend.name, HostKind.CLIENT)[0].address)
    return services
