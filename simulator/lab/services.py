"""Which services the embedded lab runs: a registry of builders, one per Edge role or lab peer.

``NODE_SERVICES`` builders return the named services of one pool node (the internal management
listeners, the A/V Edge, the Access Edge, …); ``LAB_SERVICES`` builders return services that are not on a
node (an emulated Front End, a federated partner's server, …). A new Edge role is one builder function
registered with :func:`node_service` or :func:`lab_service` in its own module, imported by
:mod:`simulator.lab.topology`; nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from simulator.net.edge import Service
from simulator.scenario.schema import EdgeNode as NodeSpec

if TYPE_CHECKING:
    from simulator.lab.topology import Lab

NodeServiceBuilder = Callable[["Lab", NodeSpec], dict[str, Service]]
LabServiceBuilder = Callable[["Lab"], dict[str, Service]]

NODE_SERVICES: list[NodeServiceBuilder] = []
LAB_SERVICES: list[LabServiceBuilder] = []


def node_service(builder: NodeServiceBuilder) -> NodeServiceBuilder:
    NODE_SERVICES.append(builder)
    return builder


def lab_service(builder: LabServiceBuilder) -> LabServiceBuilder:
    LAB_SERVICES.append(builder)
    return builder
