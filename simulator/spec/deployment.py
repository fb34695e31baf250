"""Where each part of a scenario runs when edgesim is split across the sides of a real firewall.

A scenario without ``deployment`` runs as the embedded loopback lab (every host on its own 127.x.y.z address,
the pool's 1:1 NAT emulated in-process). With it, every part is placed on a real address:

* ``nodes`` — per pool node its internal interface and the private/public (1:1 NAT) pair of each external
  service (Access, Web Conferencing, A/V); ``edgesim serve edge --node NAME`` binds the private ones and the
  internal one;
* ``clients`` — per client population the addresses its instances send from (instances share them round-robin
  when there are fewer addresses than instances) and, for a population behind an emulated NAT, the NAT's
  public address; internal roles (Front End, Director, internal users) are the internal side, all others
  the external side;
* ``dns`` — edgesim's DNS server on a given address (``server``, run by ``serve external``) or the site's own
  resolver (``resolver``), which must then hold the pool's records;
* ``crl`` — where the CRL distribution point (HTTP, E3) runs (``serve external``).

The checks here need only the file: every address parses, no address serves two parts, every node and
client population of the scenario is placed and nothing else is. Whether this host owns an address is checked
by the serve and probe commands before they start.
"""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NatPair(_Model):
    """An external service's private address (bound by the Edge) and its public twin (the firewall's DNAT)."""

    private: IPv4Address
    public: IPv4Address


class NodePlacement(_Model):
    internal: IPv4Address = Field(description="the node's internal interface")
    access: NatPair
    webconf: NatPair
    av: NatPair


class ClientPlacement(_Model):
    addresses: list[IPv4Address] = Field(min_length=1, description="where the population's instances send from")
    nat: IPv4Address | None = Field(None, description="the public address of the population's emulated NAT")


class DnsPlacement(_Model):
    """Exactly one of: edgesim's DNS server's address, or the site's own resolver."""

    server: IPv4Address | None = None
    resolver: IPv4Address | None = None
    port: int = Field(53, ge=1, le=65535)

    @model_validator(mode="after")
    def _one_source(self) -> DnsPlacement:
        if (self.server is None) == (self.resolver is None):
            raise ValueError("give exactly one of 'server' (edgesim's DNS) or 'resolver' (the site's own)")
        return self

    @property
    def address(self) -> IPv4Address:
        address = self.server if self.server is not None else self.resolver
        assert address is not None
        return address


Side = Literal["edge", "internal", "external"]


class Deployment(_Model):
    nodes: dict[str, NodePlacement] = Field(min_length=1)
    clients: dict[str, ClientPlacement] = {}
    dns: DnsPlacement
    crl: IPv4Address = Field(description="the CRL distribution point (HTTP 80), run by serve external")

    @model_validator(mode="after")
    def _no_overlap(self) -> Deployment:
        owners: dict[IPv4Address, list[str]] = {}

        def claim(address: IPv4Address, what: str) -> None:
            owners.setdefault(address, []).append(what)

        for name, node in self.nodes.items():
            claim(node.internal, f"nodes.{name}.internal")
            for service in ("access", "webconf", "av"):
                pair: NatPair = getattr(node, service)
                claim(pair.private, f"nodes.{name}.{service}.private")
                claim(pair.public, f"nodes.{name}.{service}.public")
        for name, client in self.clients.items():
            for index, address in enumerate(dict.fromkeys(client.addresses)):
                claim(address, f"clients.{name}.addresses[{index}]")
            if client.nat is not None:
                claim(client.nat, f"clients.{name}.nat")
        if self.dns.server is not None:
            claim(self.dns.server, "dns.server")
        claim(self.crl, "crl")
        clashes = [f"{address} ({' and '.join(what)})" for address, what in owners.items() if len(what) > 1]
        if clashes:
            raise ValueError(f"one address serves two parts: {'; '.join(clashes)}")
        for address in owners:
            if address.is_unspecified or address.is_multicast or address.is_reserved:
                raise ValueError(f"{address} ({owners[address][0]}) is not a host address")
        return self

    def node_addresses(self, node: str) -> list[IPv4Address]:
        """What ``serve edge --node`` binds: the internal interface and the external private addresses."""
        placement = self.nodes[node]
        return [placement.internal, placement.access.private, placement.webconf.private, placement.av.private]
