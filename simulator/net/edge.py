"""One Edge pool node in the embedded lab: the listeners it runs on its interfaces.

Each service is a named listener so a scenario (or a test) can stop one mid-run. This issue brings the
internal management listeners (CMS replication 4443, CLS agent 50001–50003); the Access, Web
Conferencing and A/V services join as their issues land.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from simulator.net.mgmt import ClsAgentListener, CmsReplicationListener, MtlsListener

CMS_PORT = 4443
CLS_PORTS = (50001, 50002, 50003)


@dataclass(frozen=True, slots=True)
class EdgeNodeConfig:
    """Where one node lives and how it authenticates (built by :class:`simulator.lab.topology.Lab`)."""

    name: str
    internal_address: str
    internal_fqdn: str
    internal_context: ssl.SSLContext  # mutual TLS, CRL-checked, the edge-internal certificate
    internal_peers: frozenset[str]  # names of the internal servers allowed to connect (FE, Director)
    port: dict[int, int]  # documented port → port actually bound


class EdgeNode:
    """The listeners of one pool node, started and stopped together or one by one."""

    def __init__(self, config: EdgeNodeConfig) -> None:
        self.config = config
        address, context, peers = config.internal_address, config.internal_context, config.internal_peers
        self.services: dict[str, MtlsListener] = {
            "cms": CmsReplicationListener(config.name, address, config.port[CMS_PORT], context, peers),
        }
        for documented in CLS_PORTS:
            self.services[f"cls-{documented}"] = ClsAgentListener(
                config.name, address, config.port[documented], context, peers)

    async def start(self) -> None:
        for listener in self.services.values():
            await listener.start()

    async def stop(self) -> None:
        for listener in self.services.values():
            await listener.stop()

    async def stop_service(self, name: str) -> None:
        await self.services[name].stop()
