"""Build and run the embedded lab of a scenario: address plan, PKI, DNS, CRL server, Edge nodes.

``async with Lab(scenario) as lab:`` writes the PKI to a private folder, starts the lab DNS server
(the scenario's zone, UDP and TCP), the CRL distribution point (HTTP) and every pool node's listeners on
their own loopback addresses, and stops and cleans everything on exit.
"""

from __future__ import annotations

import random
import secrets
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from simulator.core.credentials import CredentialStore
from simulator.core.dns_zone import Zone
from simulator.core.nat import StaticNat, StaticNatConfig
from simulator.lab import access, av, clients, mgmt, webconf, xmpp
from simulator.lab.addressing import AddressPlan, HostKind, PortMap
from simulator.lab.names import CRL_PATH, CRL_PORT, DNS_PORT, zone_records
from simulator.lab.pki import LabPki, PkiFiles, build_pki
from simulator.lab.services import LabServiceBuilder, NodeServiceBuilder
from simulator.net.peers.crl import StaticHttpServer
from simulator.net.peers.dns import DnsServer
from simulator.net.transport.arrivals import ArrivalLog, start_recording, stop_recording
from simulator.net.transport.service import EdgeNode, Service
from simulator.net.transport.tls import client_context, server_context
from simulator.spec.schema import INTERNAL_ROLES, SERVER_ROLES, CertificateVariant, Client, Scenario
from simulator.spec.schema import EdgeNode as NodeSpec

# What runs on each pool node, in start order: the Access Edge (with MRAS on 5062), the A/V Edges, the internal
# management listeners, Web Conferencing, XMPP. Every node is up before any lab service starts.
NODE_SERVICES: tuple[NodeServiceBuilder, ...] = (
    access.access_edge_services,
    av.av_services,
    mgmt.management_services,
    webconf.webconf_services,
    xmpp.xmpp_services,
)
# What runs beside the nodes, started after them (the Front End opens its 8057 and 23456 links at start): the
# clients' NAT boxes first (everything the clients send crosses them), then the Front End, Director and
# partners, the media peers, the Front End's Web Conferencing service and the XMPP peers.
LAB_SERVICES: tuple[LabServiceBuilder, ...] = (
    clients.client_nats,
    access.sip_lab_services,
    av.media_peers,
    webconf.frontend_webconf,
    xmpp.xmpp_peers,
)


@dataclass(frozen=True, slots=True)
class Placement:
    """Which parts of a scenario run in this process, and on which addresses.

    The embedded lab runs everything on loopback with the pool's 1:1 NAT emulated. In firewall lab mode
    (``deployed``) every address comes from the scenario's ``deployment`` section, external Edge services bind
    their private addresses (the real firewall DNATs the public ones), ports are the documented ones, and each
    process runs one side: an Edge node's listeners, the internal side (Front End, Director), the external side
    (partners, media peers, XMPP partner, DNS, CRL), or only the client NATs a probing side sends through.
    """

    deployed: bool = False
    nodes: frozenset[str] | None = None  # None: every pool node
    internal: bool = True  # Front End/Director emulation and the internal peers
    external: bool = True  # partners' servers, media peers, XMPP partner, DNS and CRL servers
    client_nats: bool = True  # the emulated NATs in front of client populations

    def runs_node(self, name: str) -> bool:
        return self.nodes is None or name in self.nodes

    def runs(self, client: Client) -> bool:
        """Whether the services of a client population (a server-like peer) run here."""
        return self.internal if client.role in INTERNAL_ROLES else self.external


class Lab:
    """Everything a scenario needs, running in this process (or the part of it ``placement`` names)."""

    def __init__(self, scenario: Scenario, pki: LabPki | None = None, port_map: PortMap | None = None, *,
                 placement: Placement | None = None, pki_files: PkiFiles | None = None,
                 av_workers: int | None = None, access_workers: int | dict[str, int] | None = None) -> None:
        """``pki`` with ``pki_files``: a PKI already on disk (``edgesim certs``), shared by every host.

        ``av_workers``: run each node's A/V Edge interfaces on that many worker processes each (``edgesim run
        --av-workers N``, :mod:`simulator.lab.av`); MRAS then issues HMAC credentials of ``av_secret``.
        ValueError when the count does not fit the scenario (see :func:`~simulator.lab.av.av_workers_problem`).

        ``access_workers``: serve each node's Access Edge listeners (TLS 443, MTLS 5061 external and internal) with
        that many worker processes sharing the ports (SO_REUSEPORT; ``serve access-edge|edge --workers N``), or
        ``{node: count}`` for some nodes only; MRAS stays in this process (:func:`~simulator.lab.access.
        access_edge_services`). ValueError for a count below 1 or a node the scenario does not have.
        """
        problem = None if av_workers is None else av.av_workers_problem(scenario, av_workers)
        if problem is None and access_workers is not None:
            problem = access.access_workers_problem(scenario, access_workers)
        if problem is not None:
            raise ValueError(problem)
        self.access_workers = access_workers
        self.av_workers = av_workers
        self.av_secret = None if av_workers is None else secrets.token_hex(20)
        self.scenario = scenario
        self.placement = placement or Placement()
        deployed = self.placement.deployed
        self.plan = AddressPlan.for_deployment(scenario) if deployed else AddressPlan.for_scenario(scenario)
        offset = scenario.lab.privileged_port_offset
        # Firewall lab mode uses the documented ports: what a firewall rule names is what is bound.
        self.port_map = port_map or (PortMap(offset, True) if deployed else PortMap.for_this_process(offset))
        self.pki = pki or build_pki(scenario)
        self._folder: tempfile.TemporaryDirectory[str] | None = None
        self._given_files = pki_files
        self.files: PkiFiles | None = None
        self._user_context: ssl.SSLContext | None = None  # see user_client_context
        self.nodes: dict[str, EdgeNode] = {}
        self.zone = Zone.from_records(zone_records(scenario, self.plan))
        self.dns: DnsServer | None = None
        self.crl_server: StaticHttpServer | None = None
        self.credentials = CredentialStore(self.av_secret)  # pool-wide: MRAS issues, every A/V Edge checks
        self.services: dict[str, Service] = {}  # lab services that are not on a node
        self.rng = random.Random(scenario.seed)
        self.pool_nat = None if deployed else self._pool_nat()  # deployed: the real firewall NATs
        # A serving side of a split lab records what reached it (report merge says where a flow died).
        serving = bool(self.placement.nodes) or self.placement.internal or self.placement.external
        self.arrival_log = ArrivalLog() if deployed and serving else None
        self.conference_key = f"conf-{self.rng.getrandbits(64):016x}"  # what SIP would hand a meeting joiner

    @property
    def internal_peer_names(self) -> frozenset[str]:
        """Names the Edge's internal listeners accept: the topology's internal servers."""
        return frozenset(client.fqdn for client in self.scenario.clients
                         if client.role in INTERNAL_ROLES and client.fqdn is not None)

    def _pool_nat(self) -> StaticNat:
        """The pool's static 1:1 NAT: each node's external private address ↔ its public twin."""
        pairs = ((HostKind.EDGE_ACCESS_PRIVATE, HostKind.EDGE_ACCESS_PUBLIC),
                 (HostKind.EDGE_WEBCONF_PRIVATE, HostKind.EDGE_WEBCONF_PUBLIC),
                 (HostKind.EDGE_AV_PRIVATE, HostKind.EDGE_AV_PUBLIC))
        public_of = {self.plan.one(node.name, private).address: self.plan.one(node.name, public).address
                     for node in self.scenario.edge_pool.nodes for private, public in pairs}
        spec = self.scenario.edge_pool.nat
        config = StaticNatConfig(public_of, hairpin=spec.hairpin, snat_inbound=spec.snat_inbound,
                                 inside_address=self.plan.host("pool-nat").address)
        return StaticNat(config, random.Random(f"{self.scenario.seed}:pool-nat"))

    def internal_server_context(self) -> ssl.SSLContext:
        """Mutual TLS on the Edge's internal interface: the edge-internal certificate, CRL-checked peers."""
        assert self.files is not None, "the lab is not started"
        return server_context(*self.files.cert("edge-internal"), ca=self.files.ca, crl=self.files.crl)

    def external_server_context(self, require_client_cert: bool) -> ssl.SSLContext:
        """TLS on the Edge's external interface: the edge-external certificate (sip., webconf., av.)."""
        assert self.files is not None, "the lab is not started"
        return server_context(*self.files.cert("edge-external"), ca=self.files.ca, crl=self.files.crl,
                              require_client_cert=require_client_cert)

    def external_bind(self, node: str, service: str) -> str:
        """Where a node's external ``service`` (access, webconf, av) binds and sends from.

        Embedded: the pool's static 1:1 NAT preserves inbound source addresses (DNAT only), which is what a
        listener bound to the public address observes, so external services bind their node's public address;
        the Edge still knows its private addresses (``private_addresses``) and must never reveal them.
        Deployed: the private address, behind the real firewall's 1:1 NAT.
        """
        if self.placement.deployed:
            kind = {"access": HostKind.EDGE_ACCESS_PRIVATE, "webconf": HostKind.EDGE_WEBCONF_PRIVATE,
                    "av": HostKind.EDGE_AV_PRIVATE}[service]
            return self.plan.one(node, kind).address
        return self.public_address(node, service)

    def public_address(self, node: str, service: str) -> str:
        """A node's public address of an external ``service``: what DNS answers and what outsiders reach."""
        kind = {"access": HostKind.EDGE_ACCESS_PUBLIC, "webconf": HostKind.EDGE_WEBCONF_PUBLIC,
                "av": HostKind.EDGE_AV_PUBLIC}[service]
        return self.plan.one(node, kind).address

    def private_addresses(self, node: str) -> frozenset[str]:
        """A node's external private addresses: behind the 1:1 NAT, never to appear on the wire."""
        kinds = (HostKind.EDGE_ACCESS_PRIVATE, HostKind.EDGE_WEBCONF_PRIVATE, HostKind.EDGE_AV_PRIVATE)
        return frozenset(self.plan.one(node, kind).address for kind in kinds)

    def access_workers_for(self, node: str) -> int | None:
        """How many worker processes serve ``node``'s Access Edge listeners (None: this process does)."""
        if isinstance(self.access_workers, dict):
            return self.access_workers.get(node)
        return self.access_workers

    def node_spec(self, name: str) -> NodeSpec:
        return next(node for node in self.scenario.edge_pool.nodes if node.name == name)

    @property
    def runs_lab_dns(self) -> bool:
        """The lab's DNS server runs here: embedded, or the external side when the deployment names edgesim's."""
        deployment = self.scenario.deployment
        if not self.placement.external:
            return False
        return not self.placement.deployed or (deployment is not None and deployment.dns.server is not None)

    def arrivals(self) -> list[dict[str, object]]:
        """What reached this process's listeners (firewall lab mode's serving sides; empty otherwise)."""
        return list(self.arrival_log.entries) if self.arrival_log is not None else []

    async def start(self) -> None:
        if self.arrival_log is not None:
            start_recording(self.arrival_log)
        if self._given_files is not None:
            self.files = self._given_files
        else:
            self._folder = tempfile.TemporaryDirectory(prefix="edgesim-pki-")
            self.files = self.pki.write(self._folder.name)
        pool = self.scenario.edge_pool
        try:
            if self.runs_lab_dns:
                shuffle = random.Random(self.scenario.seed) if self.scenario.dns.shuffle else None
                self.dns = DnsServer(self.zone, self.plan.host("dns").address, self.port_map(DNS_PORT),
                                     shuffle_rng=shuffle)
                await self.dns.start()
            if self.placement.external:
                crl_der = x509.load_pem_x509_crl(self.pki.crl_pem).public_bytes(Encoding.DER)
                self.crl_server = StaticHttpServer(self.plan.host("crl").address, self.port_map(CRL_PORT),
                                                   {CRL_PATH: ("application/pkix-crl", crl_der)})
                await self.crl_server.start()
            for node in pool.nodes:
                if not self.placement.runs_node(node.name):
                    continue
                services: dict[str, Service] = {}
                for node_builder in NODE_SERVICES:
                    services.update(node_builder(self, node))
                edge = EdgeNode(node.name, services)
                self.nodes[node.name] = edge
                await edge.start()
            # Lab peers start after the nodes: some connect to them at start (the Front End's 8057 links).
            for lab_builder in LAB_SERVICES:
                for name, service in lab_builder(self).items():
                    self.services[name] = service
                    await service.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self.arrival_log is not None:
            stop_recording()
        for service in reversed(list(self.services.values())):
            await service.stop()
        for edge in self.nodes.values():
            await edge.stop()
        if self.crl_server is not None:
            await self.crl_server.stop()
        if self.dns is not None:
            await self.dns.stop()
        self._user_context = None
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

    def user_client_context(self) -> ssl.SSLContext:
        """The TLS client context of a user's client (no certificate of its own: it checks the server against the
        lab CA), built once per started lab and shared by every connection, as a real client keeps one. A context
        per connection re-read and re-parsed the CA file each time: two per sign-in, the churn soak's heaviest
        OpenSSL allocations.
        """
        assert self.files is not None, "the lab is not started"
        if self._user_context is None:
            self._user_context = client_context(self.files.ca)
        return self._user_context

    def pki_folder(self) -> Path:
        assert self.files is not None, "the lab is not started"
        return self.files.folder
