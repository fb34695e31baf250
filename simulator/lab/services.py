"""The shapes of the embedded lab's service builders.

A *node builder* returns the named services of one pool node (the internal management listeners, the A/V
Edge, the Access Edge, …); a *lab builder* returns services that are not on a node (an emulated Front End,
a federated partner's server, …). :mod:`simulator.lab.topology` lists the builders explicitly, in the order
they must start; a new Edge role is one builder function in its own module and one line in that list.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from simulator.net.transport.service import Service
from simulator.spec.schema import EdgeNode as NodeSpec

if TYPE_CHECKING:
    from simulator.lab.topology import Lab

NodeServiceBuilder = Callable[["Lab", NodeSpec], dict[str, Service]]
LabServiceBuilder = Callable[["Lab"], dict[str, Service]]
