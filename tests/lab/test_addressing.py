"""The address plan: one loopback address per host, never 127.0.0.1; privileged ports mapped when needed."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from simulator.lab.addressing import AddressPlan, HostKind, PortMap
from simulator.spec.schema import Scenario


def test_every_host_has_its_own_loopback_address(shipped_as_written: Scenario) -> None:
    plan = AddressPlan.for_scenario(shipped_as_written)
    addresses = [IPv4Address(host.address) for host in plan.hosts]
    assert len(set(addresses)) == len(addresses)
    lab = IPv4Network("127.77.0.0/16")
    assert all(address in lab for address in addresses)
    assert IPv4Address("127.0.0.1") not in addresses
    # 2 nodes x (internal + 6 external) + DNS + CRL + pool NAT + 3 client NATs (remote-users, remote-home,
    # remote-corp) + 4 + 2 + 2 remote users + 2 internal users + 5 single peers
    assert len(plan.hosts) == 2 * 7 + 3 + 3 + (4 + 2 + 2) + 2 + 5


def test_node_layout(shipped_as_written: Scenario) -> None:
    plan = AddressPlan.for_scenario(shipped_as_written)
    assert plan.one("edge1", HostKind.EDGE_INTERNAL).address == "127.77.1.1"
    assert plan.one("edge2", HostKind.EDGE_AV_PRIVATE).address == "127.77.2.13"
    assert plan.one("edge2", HostKind.EDGE_AV_PUBLIC).address == "127.77.102.13"
    assert [h.address for h in plan.of("remote-users", HostKind.CLIENT)] == [
        "127.77.200.3", "127.77.200.4", "127.77.200.5", "127.77.200.6"]  # frontend, director come first


def test_large_populations_skip_network_and_broadcast_like_addresses(shipped_as_written: Scenario) -> None:
    clients = [c.model_copy(update={"count": 600}) if c.name == "remote-users" else c
               for c in shipped_as_written.clients]
    plan = AddressPlan.for_scenario(shipped_as_written.model_copy(update={"clients": clients}))
    addresses = [h.address for h in plan.of("remote-users", HostKind.CLIENT)]
    assert len(addresses) == len(set(addresses)) == 600
    assert not any(a.endswith((".0", ".255")) for a in addresses)


def test_port_map() -> None:
    unprivileged = PortMap(offset=40000, privileged_allowed=False, unprivileged_start=1024)
    assert unprivileged(443) == 40443 and unprivileged(80) == 40080 and unprivileged(53) == 40053
    assert unprivileged(5061) == 5061 and unprivileged(50001) == 50001
    assert unprivileged.mapped(443) and not unprivileged.mapped(3478)
    root = PortMap(offset=40000, privileged_allowed=True)
    assert root(443) == 443
    low_start = PortMap(offset=40000, privileged_allowed=False, unprivileged_start=0)
    assert low_start(443) == 443
