"""The lab's DNS zone, derived from the scenario and the address plan (DNS load balancing, research §2).

Each pool name resolves to one A record per node — the node's *public* address for the external names
(sip., webconf., av.) and its internal address for the internal pool name — so clients see the pool the
way Lync clients do and pick among the records themselves. SRV records point clients (``_sip._tls``),
federated partners (``_sipfederationtls._tcp``) and XMPP servers (``_xmpp-server._tcp``) at the Access
Edge; partner domains get their own SRV and A records so the Access Edge can find them (E8, F1, P2, X2).
"""

from __future__ import annotations

from simulator.lab.addressing import AddressPlan, HostKind
from simulator.spec.schema import ClientRole, Scenario

Record = dict[str, object]

DNS_PORT = 53
CRL_PORT = 80
CRL_PATH = "/lab-root.crl"

_SRV_FOR_ROLE: dict[ClientRole, tuple[str, int]] = {
    ClientRole.FEDERATED_PARTNER: ("_sipfederationtls._tcp", 5061),
    ClientRole.PIC_PARTNER: ("_sipfederationtls._tcp", 5061),
    ClientRole.XMPP_PARTNER: ("_xmpp-server._tcp", 5269),
}


_FIELDS_OF_TYPE = {"A": {"name", "type", "value"}, "CNAME": {"name", "type", "value"},
                   "SRV": {"name", "type", "priority", "weight", "port", "target"}}


def crl_host(scenario: Scenario) -> str:
    return f"crl.{scenario.domain}"


def zone_records(scenario: Scenario, plan: AddressPlan) -> list[Record]:
    """Every record the lab DNS server serves, in the form ``Zone.from_records`` takes."""
    pool = scenario.edge_pool
    records: list[Record] = []

    def a(name: str, address: str) -> None:
        records.append({"name": name, "type": "A", "value": address})

    def srv(name: str, port: int, target: str) -> None:
        records.append({"name": name, "type": "SRV", "priority": 0, "weight": 0, "port": port, "target": target})

    for node in pool.nodes:
        a(pool.access_fqdn, plan.one(node.name, HostKind.EDGE_ACCESS_PUBLIC).address)
        a(pool.webconf_fqdn, plan.one(node.name, HostKind.EDGE_WEBCONF_PUBLIC).address)
        a(pool.av_fqdn, plan.one(node.name, HostKind.EDGE_AV_PUBLIC).address)
        internal = plan.one(node.name, HostKind.EDGE_INTERNAL).address
        a(pool.internal_fqdn, internal)
        if node.internal_fqdn:
            a(node.internal_fqdn, internal)
    srv(f"_sip._tls.{scenario.domain}", 443, pool.access_fqdn)
    srv(f"_sipfederationtls._tcp.{scenario.domain}", 5061, pool.access_fqdn)
    srv(f"_xmpp-server._tcp.{scenario.domain}", 5269, pool.access_fqdn)
    a(crl_host(scenario), plan.host("crl").address)
    for client in scenario.clients:
        if client.fqdn is None:
            continue
        for host in plan.of(client.name, HostKind.CLIENT):
            a(client.fqdn, host.address)
        service = _SRV_FOR_ROLE.get(client.role)
        if service is not None and client.domain is not None:
            srv(f"{service[0]}.{client.domain}", service[1], client.fqdn)
    for extra in scenario.dns.extra_records:
        fields = _FIELDS_OF_TYPE[extra.type]
        records.append({key: value for key, value in extra.model_dump().items() if key in fields})
    return records
