"""Web Conferencing Edge services of every node (E9, I4) and the Front End that links to them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from simulator.lab.addressing import HostKind
from simulator.net.edge.webconf import PsomExternalListener, PsomInternalListener
from simulator.net.peers.webconf_frontend import FrontendWebConferencing
from simulator.net.transport.service import Service
from simulator.spec.schema import ClientRole
from simulator.spec.schema import EdgeNode as NodeSpec

if TYPE_CHECKING:
    from simulator.lab.topology import Lab

PSOM_INTERNAL_PORT = 8057
PSOM_EXTERNAL_PORT = 443


def webconf_services(lab: Lab, node: NodeSpec) -> dict[str, Service]:
    internal = PsomInternalListener(node.name, lab.plan.one(node.name, HostKind.EDGE_INTERNAL).address,
                                    lab.port_map(PSOM_INTERNAL_PORT), lab.internal_server_context(),
                                    lab.internal_peer_names)
    external = PsomExternalListener(node.name, lab.external_bind(node.name, "webconf"),
                                    lab.port_map(PSOM_EXTERNAL_PORT), lab.external_server_context(False), internal)
    return {"psom-internal": internal, "psom-external": external}


def frontend_webconf(lab: Lab) -> dict[str, Service]:
    frontends = lab.scenario.clients_with_role(ClientRole.FRONT_END)
    if not frontends or not lab.placement.runs(frontends[0]):
        return {}
    frontend = frontends[0]
    targets = [(lab.plan.one(node.name, HostKind.EDGE_INTERNAL).address, lab.port_map(PSOM_INTERNAL_PORT),
                node.internal_fqdn or lab.scenario.edge_pool.internal_fqdn) for node in lab.scenario.edge_pool.nodes]
    return {"frontend-webconf": FrontendWebConferencing(frontend.fqdn or frontend.name, targets,
                                                        lab.peer_client_context(frontend), lab.conference_key,
                                                        lab.plan.of(frontend.name, HostKind.CLIENT)[0].address)}
