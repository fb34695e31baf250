"""The internal management services of every node: CMS replication 4443 (I8), CLS agent 50001–50003."""

from __future__ import annotations

from typing import TYPE_CHECKING

from simulator.lab.addressing import HostKind
from simulator.net.edge.mgmt import ClsAgentListener, CmsReplicationListener
from simulator.net.transport.service import Service
from simulator.spec.schema import EdgeNode as NodeSpec

if TYPE_CHECKING:
    from simulator.lab.topology import Lab

CMS_PORT = 4443
CLS_PORTS = (50001, 50002, 50003)


def management_services(lab: Lab, node: NodeSpec) -> dict[str, Service]:
    address = lab.plan.one(node.name, HostKind.EDGE_INTERNAL).address
    context, peers = lab.internal_server_context(), lab.internal_peer_names
    services: dict[str, Service] = {
        "cms": CmsReplicationListener(node.name, address, lab.port_map(CMS_PORT), context, peers)}
    for port in CLS_PORTS:
        services[f"cls-{port}"] = ClsAgentListener(node.name, address, lab.port_map(port), context, peers)
    return services
