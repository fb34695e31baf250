"""Web Conferencing Edge services of every node (E9, I4) and the Front End that links to them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from simulator.lab.addressing import HostKind
from simulator.lab.services import lab_service, node_service
from simulator.net.edge import Service
from simulator.net.psom import FrontendWebConferencing, PsomExternalListener, PsomInternalListener
from simulator.scenario.schema import ClientRole
from simulator.scenario.schema import EdgeNode as NodeSpec

if TYPE_CHECKING:
    from simulator.lab.topology import Lab

PSOM_INTERNAL_PORT = 8057
PSOM_EXTERNAL_PORT = 443


@node_service
def webconf_services(lab: Lab, node: NodeSpec) -> dict[str, Service]:
    internal = PsomInternalListener(node.name, lab.plan.one(node.name, HostKind.EDGE_INTERNAL).address,
                                    lab.port_map(PSOM_INTERNAL_PORT), lab.internal_server_context(),
                                    lab.internal_peer_names)
    external = PsomExternalListener(node.name, lab.external_bind(node.name, "webconf"),
                                    lab.port_map(PSOM_EXTERNAL_PORT), lab.external_server_context(False), internal)
    return {"psom-internal": internal, "psom-external": external}


@lab_service
def frontend_webconf(lab: Lab) -> dict[str, Service]:
    frontends = lab.scenario.clients_with_role(ClientRole.FRONT_END)
    if not frontends:
        return {}
    frontend = frontends[0]
    targets = [(lab.plan.one(node.name, HostKind.EDGE_INTERNAL).address, lab.port_map(PSOM_INTERNAL_PORT),
                node.internal_fqdn or lab.scenario.edge_pool.internal_fqdn) for node in lab.scenario.edge_pool.nodes]
    return {"frontend-webconf": FrontendWebConferencing(frontend.fqdn or frontend.name, targets,
                                                        lab.peer_client_context(frontend), lab.conference_key,
                                                        lab.plan.of(frontend.name, HostKind.CLIENT)[0].address)}
