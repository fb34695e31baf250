"""The lab address plan and port map: where every simulated host lives in the embedded lab.

Every host gets its own loopback address inside the scenario's ``lab.loopback_prefix`` (default
127.77.0.0/16), so nothing ever binds 127.0.0.1 and documented ports can be used as they are:

=====================  ==========================  ===================================================
what                   address                     notes
=====================  ==========================  ===================================================
lab DNS server         P.0.53
CRL/HTTP server        P.0.80                      (E3)
pool NAT inside        P.0.254                     seen only when the 1:1 NAT is misconfigured to SNAT
node *i* internal      P.i.1                       i = 1 … N, the node's position in the pool
node *i* access/webconf/av, external private   P.i.11 / .12 / .13
node *i* access/webconf/av, public (1:1 NAT)   P.(100+i).11 / .12 / .13
client NAT *k* public  P.150.k                     one per client population that has a NAT
client hosts           P.200.1 upward              one per simulated client, in file order
=====================  ==========================  ===================================================

Ports: a documented port below the kernel's unprivileged start (``ip_unprivileged_port_start``, usually
1024) is used as-is when the process may bind it (root or CAP_NET_BIND_SERVICE); otherwise it is mapped
to ``port + lab.privileged_port_offset`` (443 → 40443, 80 → 40080, 53 → 40053 by default). The report
always shows the documented port and the port actually used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address

from simulator.spec.schema import Scenario


class HostKind(StrEnum):
    DNS = "dns"
    CRL = "crl"
    EDGE_INTERNAL = "edge-internal"
    EDGE_ACCESS_PRIVATE = "edge-access-private"
    EDGE_WEBCONF_PRIVATE = "edge-webconf-private"
    EDGE_AV_PRIVATE = "edge-av-private"
    EDGE_ACCESS_PUBLIC = "edge-access-public"
    EDGE_WEBCONF_PUBLIC = "edge-webconf-public"
    EDGE_AV_PUBLIC = "edge-av-public"
    CLIENT_NAT = "client-nat"
    POOL_NAT = "pool-nat"  # the inside address of the Edge pool's 1:1 NAT (seen only when it SNATs)
    CLIENT = "client"


@dataclass(frozen=True, slots=True)
class Host:
    """One simulated address: what it is, whose it is, where it lives."""

    name: str
    kind: HostKind
    address: str
    owner: str  # the node or client population it belongs to ("lab" for shared services)


_EDGE_SLOTS = (
    (HostKind.EDGE_ACCESS_PRIVATE, 0, 11), (HostKind.EDGE_WEBCONF_PRIVATE, 0, 12),
    (HostKind.EDGE_AV_PRIVATE, 0, 13), (HostKind.EDGE_ACCESS_PUBLIC, 100, 11),
    (HostKind.EDGE_WEBCONF_PUBLIC, 100, 12), (HostKind.EDGE_AV_PUBLIC, 100, 13),
)
_CLIENT_FIRST = 200 * 256 + 1
_CLIENT_LAST = 254 * 256 + 254


class AddressPlan:
    """All lab hosts of a scenario, with lookups by name and by (owner, kind)."""

    def __init__(self, hosts: list[Host], *, shared: bool = False) -> None:
        """``shared``: instances of one population may share an address (a deployment's real hosts)."""
        self.hosts = hosts
        self._by_name = {host.name: host for host in hosts}
        self._by_owner: dict[tuple[str, HostKind], list[Host]] = {}
        for host in hosts:
            self._by_owner.setdefault((host.owner, host.kind), []).append(host)
        owners: dict[str, str] = {}
        for host in hosts:
            owner = owners.setdefault(host.address, host.owner if shared else host.name)
            if owner != (host.owner if shared else host.name):
                raise ValueError(f"address plan gives {host.address} to {owner} and {host.name}")

    @classmethod
    def for_scenario(cls, scenario: Scenario) -> AddressPlan:
        prefix = scenario.lab.loopback_prefix
        base = int(IPv4Address(f"{prefix}.0.0"))

        def at(third: int, fourth: int) -> str:
            return str(IPv4Address(base + third * 256 + fourth))

        hosts = [Host("dns", HostKind.DNS, at(0, 53), "lab"), Host("crl", HostKind.CRL, at(0, 80), "lab"),
                 Host("pool-nat", HostKind.POOL_NAT, at(0, 254), "lab")]
        for index, node in enumerate(scenario.edge_pool.nodes, start=1):
            hosts.append(Host(f"{node.name}-internal", HostKind.EDGE_INTERNAL, at(index, 1), node.name))
            for kind, offset, fourth in _EDGE_SLOTS:
                label = kind.value.removeprefix("edge-")
                hosts.append(Host(f"{node.name}-{label}", kind, at(index + offset, fourth), node.name))
        nat_index = 0
        next_client = _CLIENT_FIRST
        for client in scenario.clients:
            if client.nat is not None:
                nat_index += 1
                hosts.append(Host(f"{client.name}-nat", HostKind.CLIENT_NAT, at(150, nat_index), client.name))
            for instance in range(1, client.count + 1):
                if next_client > _CLIENT_LAST:
                    raise ValueError(f"too many clients for one /16 lab (stopped at {client.name}#{instance})")
                if next_client % 256 in (0, 255):
                    next_client += 2 if next_client % 256 == 255 else 1
                address = str(IPv4Address(base + next_client))
                hosts.append(Host(f"{client.name}-{instance}", HostKind.CLIENT, address, client.name))
                next_client += 1
        return cls(hosts)

    @classmethod
    def for_deployment(cls, scenario: Scenario) -> AddressPlan:
        """The hosts of a scenario's ``deployment`` section: the same names and kinds as the embedded plan, on
        the real addresses of firewall lab mode. Instances of a population share its addresses round-robin;
        the pool NAT's inside address does not exist (the real firewall NATs)."""
        deployment = scenario.deployment
        if deployment is None:
            raise ValueError(f"scenario {scenario.name!r} has no deployment section")
        hosts = [Host("dns", HostKind.DNS, str(deployment.dns.address), "lab"),
                 Host("crl", HostKind.CRL, str(deployment.crl), "lab")]
        for node in scenario.edge_pool.nodes:
            placed = deployment.nodes[node.name]
            hosts.append(Host(f"{node.name}-internal", HostKind.EDGE_INTERNAL, str(placed.internal), node.name))
            for kind, pair, side in ((HostKind.EDGE_ACCESS_PRIVATE, placed.access, "private"),
                                     (HostKind.EDGE_WEBCONF_PRIVATE, placed.webconf, "private"),
                                     (HostKind.EDGE_AV_PRIVATE, placed.av, "private"),
                                     (HostKind.EDGE_ACCESS_PUBLIC, placed.access, "public"),
                                     (HostKind.EDGE_WEBCONF_PUBLIC, placed.webconf, "public"),
                                     (HostKind.EDGE_AV_PUBLIC, placed.av, "public")):
                label = kind.value.removeprefix("edge-")
                hosts.append(Host(f"{node.name}-{label}", kind, str(getattr(pair, side)), node.name))
        for client in scenario.clients:
            placed_client = deployment.clients[client.name]
            if client.nat is not None and placed_client.nat is not None:
                hosts.append(Host(f"{client.name}-nat", HostKind.CLIENT_NAT, str(placed_client.nat), client.name))
            addresses = placed_client.addresses
            for instance in range(1, client.count + 1):
                address = str(addresses[(instance - 1) % len(addresses)])
                hosts.append(Host(f"{client.name}-{instance}", HostKind.CLIENT, address, client.name))
        return cls(hosts, shared=True)

    def host(self, name: str) -> Host:
        return self._by_name[name]

    def of(self, owner: str, kind: HostKind) -> list[Host]:
        """The hosts of one node or client population of one kind (file order)."""
        return list(self._by_owner.get((owner, kind), []))

    def one(self, owner: str, kind: HostKind) -> Host:
        hosts = self.of(owner, kind)
        if len(hosts) != 1:
            raise LookupError(f"{owner} has {len(hosts)} hosts of kind {kind}")
        return hosts[0]


def unprivileged_port_start() -> int:
    """The kernel's lowest port an unprivileged process may bind (Linux sysctl; 1024 elsewhere)."""
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start", encoding="ascii") as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return 1024


def may_bind_privileged() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


@dataclass(frozen=True, slots=True)
class PortMap:
    """Documented port → the port the embedded lab actually binds."""

    offset: int
    privileged_allowed: bool
    unprivileged_start: int = 1024

    @classmethod
    def for_this_process(cls, offset: int) -> PortMap:
        return cls(offset, may_bind_privileged(), unprivileged_port_start())

    def __call__(self, documented: int) -> int:
        if documented >= self.unprivileged_start or self.privileged_allowed:
            return documented
        return documented + self.offset

    def mapped(self, documented: int) -> bool:
        return self(documented) != documented
