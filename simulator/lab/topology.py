"""Build and run the embedded lab of a scenario: address plan, PKI, Edge nodes, client identities.

``async with Lab(scenario) as lab:`` writes the PKI to a private folder, starts every pool node's
listeners on their own loopback addresses, and stops and cleans everything on exit.
"""

from __future__ import annotations

import ssl
import tempfile
from pathlib import Path
from types import TracebackType

from simulator.lab.addressing import AddressPlan, HostKind, PortMap
from simulator.lab.pki import LabPki, PkiFiles, build_pki
from simulator.net.edge import CLS_PORTS, CMS_PORT, EdgeNode, EdgeNodeConfig
from simulator.net.tls import client_context, server_context
from simulator.scenario.schema import INTERNAL_ROLES, SERVER_ROLES, CertificateVariant, Client, Scenario

DOCUMENTED_PORTS = (CMS_PORT, *CLS_PORTS)


class Lab:
    """Everything a scenario needs, running in this process."""

    def __init__(self, scenario: Scenario, pki: LabPki | None = None, port_map: PortMap | None = None) -> None:
        self.scenario = scenario
        self.plan = AddressPlan.for_scenario(scenario)
        self.port_map = port_map or PortMap.for_this_process(scenario.lab.privileged_port_offset)
        self.pki = pki or build_pki(scenario)
        self._folder: tempfile.TemporaryDirectory[str] | None = None
        self.files: PkiFiles | None = None
        self.nodes: dict[str, EdgeNode] = {}

    @property
    def internal_peer_names(self) -> frozenset[str]:
        """Names the Edge's internal listeners accept: the topology's internal servers."""
        return frozenset(client.fqdn for client in self.scenario.clients
                         if client.role in INTERNAL_ROLES and client.fqdn is not None)

    async def start(self) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="edgesim-pki-")
        self.files = self.pki.write(self._folder.name)
        internal_context = server_context(*self.files.cert("edge-internal"), ca=self.files.ca, crl=self.files.crl)
        pool = self.scenario.edge_pool
        try:
            for node in pool.nodes:
                config = EdgeNodeConfig(
                    name=node.name,
                    internal_address=self.plan.one(node.name, HostKind.EDGE_INTERNAL).address,
                    internal_fqdn=node.internal_fqdn or pool.internal_fqdn,
                    internal_context=internal_context,
                    internal_peers=self.internal_peer_names,
                    port={port: self.port_map(port) for port in DOCUMENTED_PORTS},
                )
                edge = EdgeNode(config)
                self.nodes[node.name] = edge
                await edge.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        for edge in self.nodes.values():
            await edge.stop()
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None

    async def __aenter__(self) -> Lab:
        await self.start()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.stop()

    def peer_client_context(self, client: Client, variant: CertificateVariant | None = None) -> ssl.SSLContext:
        """A TLS client context presenting ``client``'s certificate (its scenario variant by default)."""
        assert self.files is not None, "the lab is not started"
        if client.role not in SERVER_ROLES:
            raise ValueError(f"{client.name} ({client.role}) has no certificate of its own")
        chain, key = self.files.cert(client.name, variant or client.certificate)
        return client_context(self.files.ca, chain, key)

    def pki_folder(self) -> Path:
        assert self.files is not None, "the lab is not started"
        return self.files.folder
