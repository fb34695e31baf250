"""The 38 documented Edge rules (port-tables.md) as typed data — the single source of truth.

Each :class:`Rule` is one row of the five tables of "Lync Server 2013: Port summary — scaled consolidated
Edge, DNS load balancing with private IP addresses using NAT". Direction is relative to the Edge: ``IN``
means a peer opens the flow to the Edge, ``OUT`` means the Edge opens it. ``probe`` names the probe in
:mod:`simulator.scenario.probes` that verifies the rule at the application level; ``depends_on`` lists the
rules whose flows must work first (design.md: SIP 443 → internal 5061 → MRAS 5062 → MS-TURN), which the
runner uses to report ``blocked`` instead of ``fail``. The Edge's own DNS lookups go over UDP first (E5), and
it looks a partner up both to reach it (E8, F1, P2, E2, X2) and to check the certificate of a partner that
connects in (E7, P1: the SRV target of ``_sipfederationtls._tcp.<domain>``), so those rules depend on E5.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Table(StrEnum):
    EXTERNAL = "external"
    INTERNAL = "internal"
    FEDERATION = "federation"
    PIC = "pic"
    XMPP = "xmpp"


class Interface(StrEnum):
    EXTERNAL = "external"
    INTERNAL = "internal"


class Service(StrEnum):
    ACCESS = "access"
    WEBCONF = "webconf"
    AV = "av"
    XMPP = "xmpp"
    MGMT = "mgmt"


class Transport(StrEnum):
    TCP = "tcp"
    UDP = "udp"


class Direction(StrEnum):
    IN = "in"
    OUT = "out"


@dataclass(frozen=True, slots=True)
class PortRange:
    first: int
    last: int

    def __post_init__(self) -> None:
        if not 0 < self.first <= self.last <= 65535:
            raise ValueError(f"bad port range {self.first}-{self.last}")

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.first <= port <= self.last


@dataclass(frozen=True, slots=True)
class Rule:
    """One documented firewall rule."""

    id: str
    table: Table
    interface: Interface
    service: Service
    protocol: str
    transport: Transport
    ports: PortRange
    direction: Direction
    source: str
    destination: str
    note: str
    probe: str
    depends_on: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "table": str(self.table),
            "interface": str(self.interface),
            "service": str(self.service),
            "protocol": self.protocol,
            "transport": str(self.transport),
            "ports": str(self.ports),
            "direction": str(self.direction),
            "source": self.source,
            "destination": self.destination,
            "note": self.note,
            "probe": self.probe,
            "depends_on": list(self.depends_on),
        }


def _r(
    rule_id: str,
    table: Table,
    interface: Interface,
    service: Service,
    protocol: str,
    transport: Transport,
    ports: tuple[int, int] | int,
    direction: Direction,
    source: str,
    destination: str,
    note: str,
    probe: str,
    depends_on: tuple[str, ...] = (),
) -> Rule:
    first, last = (ports, ports) if isinstance(ports, int) else ports
    return Rule(rule_id, table, interface, service, protocol, transport, PortRange(first, last), direction,
                source, destination, note, probe, depends_on)


_T, _U = Transport.TCP, Transport.UDP
_IN, _OUT = Direction.IN, Direction.OUT
_EXT, _INT = Interface.EXTERNAL, Interface.INTERNAL
_RELAY = (50000, 59999)
# A/V rules need MRAS credentials: the client gets them through SIP 443 → Director → Edge 5062 (§1.3).
_AV_EXT_DEPS = ("E6", "I5")

RULES: tuple[Rule, ...] = (
    # Table 1 — external interface, Node 1 and Node 2
    _r("E1", Table.EXTERNAL, _EXT, Service.XMPP, "XMPP", _T, 5269, _IN, "Any",
       "XMPP proxy (Access Edge IP)",
       "XMPP proxy accepts traffic from XMPP contacts in defined XMPP federations", "xmpp-s2s-in", ("I1",)),
    _r("E2", Table.EXTERNAL, _EXT, Service.XMPP, "XMPP", _T, 5269, _OUT, "XMPP proxy (Access Edge IP)", "Any",
       "XMPP proxy sends traffic to XMPP contacts in defined federations", "xmpp-s2s-out", ("I1", "E5")),
    _r("E3", Table.EXTERNAL, _EXT, Service.ACCESS, "HTTP", _T, 80, _OUT, "Access Edge", "Any",
       "certificate revocation / CRL check and retrieval", "crl-fetch", ("E5",)),
    _r("E4", Table.EXTERNAL, _EXT, Service.ACCESS, "DNS", _T, 53, _OUT, "Access Edge", "Any",
       "DNS query over TCP", "dns-tcp"),
    _r("E5", Table.EXTERNAL, _EXT, Service.ACCESS, "DNS", _U, 53, _OUT, "Access Edge", "Any",
       "DNS query over UDP", "dns-udp"),
    _r("E6", Table.EXTERNAL, _EXT, Service.ACCESS, "SIP(TLS)", _T, 443, _IN, "Any", "Access Edge",
       "client-to-server SIP for external (remote) users", "sip-remote-signin", ("I3",)),
    _r("E7", Table.EXTERNAL, _EXT, Service.ACCESS, "SIP(MTLS)", _T, 5061, _IN, "Any", "Access Edge",
       "federation and public IM connectivity (SIP)", "sip-federation-in", ("I3", "E5")),
    _r("E8", Table.EXTERNAL, _EXT, Service.ACCESS, "SIP(MTLS)", _T, 5061, _OUT, "Access Edge", "Any",
       "federation and public IM connectivity (SIP)", "sip-federation-out", ("I2", "E5")),
    _r("E9", Table.EXTERNAL, _EXT, Service.WEBCONF, "PSOM(TLS)", _T, 443, _IN, "Any", "Web Conferencing Edge",
       "web conferencing media", "psom-client-in", ("I4",)),
    _r("E10", Table.EXTERNAL, _EXT, Service.AV, "RTP", _T, _RELAY, _OUT, "A/V Edge", "Any",
       "federation with OCS 2007, OCS 2007 R2, Lync 2010 and Lync 2013 partners", "av-relay-tcp-out",
       _AV_EXT_DEPS),
    _r("E11", Table.EXTERNAL, _EXT, Service.AV, "RTP", _U, _RELAY, _OUT, "A/V Edge", "Any",
       "only for federation with OCS 2007 partners", "av-relay-udp-out", _AV_EXT_DEPS),
    _r("E12", Table.EXTERNAL, _EXT, Service.AV, "RTP", _T, _RELAY, _IN, "Any", "A/V Edge",
       "only for federation with OCS 2007 partners", "av-relay-tcp-in", _AV_EXT_DEPS),
    _r("E13", Table.EXTERNAL, _EXT, Service.AV, "RTP", _U, _RELAY, _IN, "Any", "A/V Edge",
       "only for federation with OCS 2007 partners", "av-relay-udp-in", _AV_EXT_DEPS),
    _r("E14", Table.EXTERNAL, _EXT, Service.AV, "STUN,MSTURN", _U, 3478, _OUT, "A/V Edge", "Any",
       "outbound 3478 finds the version of the remote Edge and carries Edge-to-Edge media; needed for "
       "federation with Lync 2010, Windows Live Messenger, OCS 2007 R2, and when a company has several Edge "
       "pools", "av-turn-udp-out", _AV_EXT_DEPS),
    _r("E15", Table.EXTERNAL, _EXT, Service.AV, "STUN,MSTURN", _U, 3478, _IN, "Any", "A/V Edge",
       "STUN/TURN candidate negotiation over UDP/3478", "av-turn-udp-in", _AV_EXT_DEPS),
    _r("E16", Table.EXTERNAL, _EXT, Service.AV, "STUN,MSTURN", _T, 443, _IN, "Any", "A/V Edge",
       "STUN/TURN candidate negotiation over TCP/443", "av-turn-tcp-in", _AV_EXT_DEPS),
    _r("E17", Table.EXTERNAL, _EXT, Service.AV, "STUN,MSTURN", _T, 443, _OUT, "A/V Edge", "Any",
       "STUN/TURN candidate negotiation over TCP/443", "av-turn-tcp-out", _AV_EXT_DEPS),
    # Table 2 — internal interface, Node 1 and Node 2
    _r("I1", Table.INTERNAL, _INT, Service.XMPP, "XMPP/MTLS", _T, 23456, _IN,
       "Any (Front End server/pool running the XMPP gateway)", "Edge internal interface",
       "outbound XMPP from the XMPP gateway on the Front End", "xmpp-gateway-in"),
    _r("I2", Table.INTERNAL, _INT, Service.ACCESS, "SIP/MTLS", _T, 5061, _IN,
       "Any (Director, Director pool, Front End server or pool)", "Edge internal interface",
       "outbound SIP from Director/Front End to the Edge", "sip-internal-in"),
    _r("I3", Table.INTERNAL, _INT, Service.ACCESS, "SIP/MTLS", _T, 5061, _OUT, "Edge internal interface",
       "Any (Director, Director pool, Front End server or pool)",
       "inbound SIP from the Edge to Director/Front End", "sip-internal-out"),
    _r("I4", Table.INTERNAL, _INT, Service.WEBCONF, "PSOM/MTLS", _T, 8057, _IN, "Any (each Front End server)",
       "Edge internal interface", "web conferencing traffic from each Front End server to the Edge",
       "psom-frontend-in"),
    _r("I5", Table.INTERNAL, _INT, Service.AV, "SIP/MTLS", _T, 5062, _IN,
       "Any (Front End server/pool, or any Survivable Branch Appliance/Server using this Edge)",
       "Edge internal interface", "A/V user authentication (A/V Authentication service)", "mras-in"),
    _r("I6", Table.INTERNAL, _INT, Service.AV, "STUN/MSTURN", _U, 3478, _IN, "Any", "Edge internal interface",
       "preferred path for A/V media between internal and external users, SBA/SBS", "av-turn-udp-internal",
       ("I5",)),
    _r("I7", Table.INTERNAL, _INT, Service.AV, "STUN/MSTURN", _T, 443, _IN, "Any", "Edge internal interface",
       "fallback A/V path when UDP cannot be set up; TCP carries file transfer and desktop sharing",
       "av-turn-tcp-internal", ("I5",)),
    _r("I8", Table.INTERNAL, _INT, Service.MGMT, "HTTPS", _T, 4443, _IN,
       "Any (Front End server or pool holding the Central Management store)", "Edge internal interface",
       "replication of changes from the Central Management store to the Edge", "cms-replication"),
    _r("I9", Table.INTERNAL, _INT, Service.MGMT, "MTLS", _T, 50001, _IN, "Any", "Edge internal interface",
       "Centralized Logging Service controller (CLS cmdlets, ClsController.exe, ClsAgent.exe) and log "
       "collection", "cls-agent"),
    _r("I10", Table.INTERNAL, _INT, Service.MGMT, "MTLS", _T, 50002, _IN, "Any", "Edge internal interface",
       "same as I9", "cls-agent"),
    _r("I11", Table.INTERNAL, _INT, Service.MGMT, "MTLS", _T, 50003, _IN, "Any", "Edge internal interface",
       "same as I9", "cls-agent"),
    # Table 3 — federation
    _r("F1", Table.FEDERATION, _EXT, Service.ACCESS, "SIP(MTLS)", _T, 5061, _OUT, "Access Edge public IP",
       "Any", "federation and public IM connectivity (SIP)", "sip-federation-out", ("I2", "E5")),
    # Table 4 — public IM connectivity (PIC)
    _r("P1", Table.PIC, _EXT, Service.ACCESS, "SIP(MTLS)", _T, 5061, _IN, "PIC partner", "Access Edge",
       "federation and PIC (SIP)", "sip-pic-in", ("I3", "E5")),
    _r("P2", Table.PIC, _EXT, Service.ACCESS, "SIP(MTLS)", _T, 5061, _OUT, "Access Edge", "PIC partner",
       "federation and PIC (SIP)", "sip-pic-out", ("I2", "E5")),
    _r("P3", Table.PIC, _EXT, Service.ACCESS, "SIP(TLS)", _T, 443, _IN, "Clients", "Access Edge",
       "client-to-server SIP for external users", "sip-remote-signin", ("I3",)),
    _r("P4", Table.PIC, _EXT, Service.AV, "RTP", _T, _RELAY, _OUT, "A/V Edge", "Live Messenger clients",
       "A/V sessions with Windows Live Messenger when PIC is configured", "av-relay-tcp-out", _AV_EXT_DEPS),
    _r("P5", Table.PIC, _EXT, Service.AV, "STUN,MSTURN", _U, 3478, _OUT, "A/V Edge", "Live Messenger clients",
       "required for PIC with Windows Live Messenger", "av-turn-udp-out", _AV_EXT_DEPS),
    _r("P6", Table.PIC, _EXT, Service.AV, "STUN,MSTURN", _U, 3478, _IN, "Live Messenger clients", "A/V Edge",
       "required for PIC with Windows Live Messenger", "av-turn-udp-in", _AV_EXT_DEPS),
    # Table 5 — XMPP
    _r("X1", Table.XMPP, _EXT, Service.XMPP, "XMPP", _T, 5269, _IN, "Any", "Access Edge interface IP",
       "standard XMPP server-to-server port: federated XMPP partners to the Edge XMPP proxy", "xmpp-s2s-in",
       ("X3",)),
    _r("X2", Table.XMPP, _EXT, Service.XMPP, "XMPP", _T, 5269, _OUT, "Access Edge interface IP", "Any",
       "Edge XMPP proxy to federated XMPP partners", "xmpp-s2s-out", ("X3", "E5")),
    _r("X3", Table.XMPP, _INT, Service.XMPP, "XMPP/MTLS", _T, 23456, _IN, "Any",
       "each internal Edge interface IP",
       "internal XMPP from the XMPP gateway on the Front End to the Edge (each pool member)", "xmpp-gateway-in"),
)

RULES_BY_ID: dict[str, Rule] = {rule.id: rule for rule in RULES}


def rules_for_table(table: Table | str | None) -> tuple[Rule, ...]:
    """The rules of one table (all rules when ``table`` is None)."""
    if table is None:
        return RULES
    wanted = Table(table)
    return tuple(rule for rule in RULES if rule.table is wanted)


def topological_order(rule_ids: list[str] | tuple[str, ...]) -> list[str]:
    """Order ``rule_ids`` so each rule comes after the selected rules it depends on (stable, Kahn).

    Prerequisites that are not selected are ignored. Raises ValueError on a cycle.
    """
    selected = list(dict.fromkeys(rule_ids))
    chosen = set(selected)
    done: set[str] = set()
    order: list[str] = []
    while len(order) < len(selected):
        progressed = False
        for rule_id in selected:
            if rule_id in done:
                continue
            if all(dep in done or dep not in chosen for dep in RULES_BY_ID[rule_id].depends_on):
                order.append(rule_id)
                done.add(rule_id)
                progressed = True
        if not progressed:
            raise ValueError(f"dependency cycle among {sorted(chosen - done)}")
    return order
