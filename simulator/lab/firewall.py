"""The documented Edge rules as a firewall ruleset for a scenario's deployment (nftables or iptables-restore).

:func:`firewall_ruleset` is a pure function: a scenario with a ``deployment:`` section in, the text of a
ruleset out, no I/O. :func:`plan_firewall` is the same decision as data (a :class:`FirewallPlan`), which the
renderers in :data:`DIALECTS` turn into text; a test or the one-rule-at-a-time sweep can read the plan.

Theory of operation. The firewall is a router between three sides: the external side, the Edge DMZ (each
node's *private* external addresses: Access, Web Conferencing, A/V) and the internal side (each node's
internal interface, the Front End, the Director). It holds:

* ``forward`` (filter, policy drop) — first the ``drop_return`` rules (reply-direction packets of chosen
  rules), then ``ct state established,related accept`` (the answers of every accepted flow), ``ct state
  invalid drop``, then one accept rule per documented rule id, each carrying the id in its comment
  (``"E6 Access/SIP(TLS)/TCP/443 in"``), then, with ``reject``, a TCP reset / ICMP port-unreachable end;
* ``prerouting`` (nat) — the pool's static 1:1 NAT inbound: DNAT each node's public Access / Web
  Conferencing / A/V address to its private twin (without ``hairpin``: not for packets a node sends);
* ``postrouting`` (nat) — SNAT each private address to its public twin for what the Edge sends out. A node
  reaching another node's public address (hairpin) is DNATed on the way in and SNATed to its own public
  address on the way out, so the other node answers a public address, which routes back through the
  firewall and conntrack. With ``snat_inbound`` (a misconfiguration) DNATed inbound flows are also
  masqueraded: the Edge sees the firewall's address instead of the client's.

How a documented rule becomes a match (:func:`flow_match`). Rules are written from the Edge's point of view:

* external interface, ``in``: destination = the service's private address (after DNAT; the forward chain
  runs between DNAT and SNAT, so it sees the private one), destination port = the rule's port;
* external interface, ``out``: source = the service's private address (before SNAT), destination port =
  the rule's port. F1's "Access Edge public IP" is that same flow after SNAT, so it matches the private one;
* internal interface (I1–I11, X3): the node's internal address, same direction logic, no NAT; given the
  firewall's ``external_interface``, also "the other end is not behind that leg" (``iifname !=`` for
  inbound, ``oifname !=`` for I3), since a router that matches addresses only cannot tell Table 2's "Any"
  (the internal side) from the Internet;
* the XMPP proxy shares the Access Edge address (E1, E2, X1, X2).
* A/V relay rules (E10–E13, P4): the range (the scenario's ``edge_pool.relay_ports``) is always the *Edge's*
  port: the source port of E10/E11/P4, the destination port of E12/E13 (why: in :func:`flow_match`).

``drop_return`` swaps both ends of a rule's match (the Edge address and the port change sides) and drops
that, in the reply direction only, before the established accept: E15's answers are packets *from* the A/V
addresses *from* port 3478, E5's are packets *to* the Access addresses *from* port 53.

Rules that name the same packets (E6 and P3, E7 and P1, E8, F1 and P2, E1 and X1, E2 and X2, E10 and P4,
E14 and P5, E15 and P6, I1 and X3) each keep their own rule, so leaving out one of them leaves the
traffic allowed by the other.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from enum import StrEnum
from ipaddress import IPv4Address
from typing import Literal

from simulator.spec.deployment import Deployment, NodePlacement
from simulator.spec.rules import RULES_BY_ID, Direction, Interface, PortRange, Rule, Service, Table
from simulator.spec.schema import Scenario

Dialect = Literal["nftables", "iptables"]

# The relay range as the catalog writes it; a scenario's ``edge_pool.relay_ports`` replaces it.
_DOCUMENTED_RELAY = PortRange(50000, 59999)
_ROLE_LABEL: dict[Service, str] = {Service.ACCESS: "Access", Service.WEBCONF: "WebConf", Service.AV: "A/V"}
# Which of a node's NAT pairs an external rule's service lives on (the XMPP proxy shares the Access IP).
_PAIR_OF_SERVICE: dict[Service, str] = {
    Service.ACCESS: "access",
    Service.XMPP: "access",
    Service.WEBCONF: "webconf",
    Service.AV: "av",
}
_NAT_SERVICES = ("access", "webconf", "av")
_INTERFACE_NAME = re.compile(r"[A-Za-z0-9_.@:+-]{1,15}")  # IFNAMSIZ - 1; nothing to quote in either syntax


class NoDeploymentError(ValueError):
    """The scenario has no ``deployment:`` section, so there are no addresses to write rules for."""


class End(StrEnum):
    """One end of a packet: its source or its destination."""

    SOURCE = "source"
    DESTINATION = "destination"

    @property
    def other(self) -> End:
        return End.DESTINATION if self is End.SOURCE else End.SOURCE


@dataclass(frozen=True, slots=True)
class FlowMatch:
    """The packets of one documented flow in one direction: the Edge's addresses at one end, a port at one end."""

    transport: str
    edge: tuple[IPv4Address, ...]
    edge_end: End
    ports: PortRange
    port_end: End
    # The firewall interface the flow's *other* end must not be behind (internal-interface rules: the
    # external leg), or None: "Any" is then any address, whichever leg it is on.
    remote_not_via: str | None = None

    def reversed(self) -> FlowMatch:
        """The same flow's answers: both ends swap."""
        return replace(self, edge_end=self.edge_end.other, port_end=self.port_end.other)


@dataclass(frozen=True, slots=True)
class FilterRule:
    """One forward-chain rule: accept a flow's opening packets, or drop a flow's answers (``reply_only``)."""

    rule_id: str
    match: FlowMatch
    action: Literal["accept", "drop"]
    reply_only: bool
    comment: str


@dataclass(frozen=True, slots=True)
class NatRule:
    """One 1:1 translation: ``dnat`` (public → private, inbound) or ``snat`` (private → public, outbound)."""

    kind: Literal["dnat", "snat"]
    match: IPv4Address
    to: IPv4Address
    comment: str


@dataclass(frozen=True, slots=True)
class FirewallPlan:
    """What the ruleset holds, independent of the firewall's syntax."""

    scenario: str
    rule_ids: tuple[str, ...]
    drop_return: tuple[FilterRule, ...]
    accept: tuple[FilterRule, ...]
    reject: bool
    dnat: tuple[NatRule, ...]
    snat: tuple[NatRule, ...]
    # Without hairpin: packets from these private addresses to these public ones are not translated.
    no_hairpin: tuple[tuple[IPv4Address, ...], tuple[IPv4Address, ...]] | None
    # With snat_inbound: DNATed flows to these private addresses are masqueraded.
    snat_inbound: tuple[IPv4Address, ...] | None
    external_interface: str | None
    options: tuple[tuple[str, str], ...]


def rule_label(rule: Rule, ports: PortRange | None = None) -> str:
    """The rule as port-tables.md writes it, with its direction: ``E6 Access/SIP(TLS)/TCP/443 in``."""
    role = ""
    if rule.table in (Table.EXTERNAL, Table.FEDERATION, Table.PIC) and rule.service in _ROLE_LABEL:
        role = f"{_ROLE_LABEL[rule.service]}/"
    return f"{rule.id} {role}{rule.protocol}/{rule.transport.upper()}/{ports or rule.ports} {rule.direction}"


def _nodes(scenario: Scenario, deployment: Deployment) -> list[NodePlacement]:
    return [deployment.nodes[node.name] for node in scenario.edge_pool.nodes]


def _edge_addresses(rule: Rule, nodes: list[NodePlacement]) -> tuple[IPv4Address, ...]:
    if rule.interface is Interface.INTERNAL:
        return tuple(node.internal for node in nodes)
    pair = _PAIR_OF_SERVICE.get(rule.service)
    if pair is None:
        raise ValueError(f"{rule.id}: no external address for service {rule.service}")
    return tuple(getattr(node, pair).private for node in nodes)


def flow_match(rule: Rule, nodes: list[NodePlacement], relay_ports: PortRange,
               external_interface: str | None = None) -> FlowMatch:
    """The opening packets of ``rule``'s flow (see the module docstring for the mapping)."""
    edge_end = End.DESTINATION if rule.direction is Direction.IN else End.SOURCE
    ports, port_end = rule.ports, End.DESTINATION
    if rule.service is Service.AV and rule.ports == _DOCUMENTED_RELAY:
        # Why the range is the Edge's port in both directions: it is where the A/V Edge allocates relayed
        # transport addresses (RFC 8656 §7.2: the server picks the relayed address on itself), and a relay
        # talks to peers only from that address.
        # * E10, E11, P4 (out): the relay opens TCP to a peer from its relayed address (RFC 6062 §4.3:
        #   Connect) or sends UDP from it (RFC 8656 §10.2) to whatever port the peer's candidate names (a
        #   partner Edge's relay, 443, 50600, a client's host port): the *source* port is in the range, the
        #   destination port is anything. Matching the destination port would miss all of these flows.
        # * E12, E13 (in): an OCS 2007 peer connects or sends *to* the relayed address the Edge advertised in
        #   its candidates: the *destination* port is in the range, the source port is the peer's own.
        # Every other rule names the remote service's port (E3–E8, E14, E17, I3 out) or the Edge's listening
        # port (in), i.e. always the destination port of the flow's opening packet.
        ports, port_end = relay_ports, edge_end
    # Table 2's "Any" is any host on the internal side: never one behind the external leg.
    guard = external_interface if rule.interface is Interface.INTERNAL else None
    return FlowMatch(str(rule.transport), _edge_addresses(rule, nodes), edge_end, ports, port_end, guard)


def _known(ids: Iterable[str], what: str) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(ids))
    unknown = [rule_id for rule_id in chosen if rule_id not in RULES_BY_ID]
    if unknown:
        raise ValueError(f"{what}: unknown rule ids {', '.join(unknown)} (see `edgesim rules`)")
    return chosen


def plan_firewall(
    scenario: Scenario,
    *,
    leave_out: Iterable[str] = (),
    reject: bool = False,
    snat_inbound: bool | None = None,
    hairpin: bool | None = None,
    drop_return: Iterable[str] = (),
    external_interface: str | None = None,
) -> FirewallPlan:
    """Decide the ruleset for ``scenario``'s deployment.

    ``leave_out``: rule ids with no accept rule. ``reject``: end the forward chain with a TCP reset / ICMP
    port-unreachable instead of the silent drop. ``snat_inbound``: masquerade DNATed inbound flows (default:
    the scenario's ``edge_pool.nat.snat_inbound``). ``hairpin``: translate a node's traffic to the pool's
    public addresses (default: ``edge_pool.nat.hairpin``). ``drop_return``: rule ids whose flows arrive but
    whose answers are dropped (a rule before the established accept drops their reply direction).
    ``external_interface``: the firewall's external leg (e.g. ``eth0``); internal-interface rules (I1–I11,
    X3) then refuse flows whose other end is behind it. Without it, rules match addresses only, and "Any"
    in Table 2 includes the external side.
    Raises :class:`NoDeploymentError` without a deployment, ValueError for an unknown rule id.
    """
    deployment = scenario.deployment
    if deployment is None:
        raise NoDeploymentError(f"scenario '{scenario.name}' has no deployment: section (the real addresses "
                                "the firewall rules are written for)")
    if external_interface is not None and not _INTERFACE_NAME.fullmatch(external_interface):
        raise ValueError(f"external_interface: {external_interface!r} is not an interface name")
    left_out = set(_known(leave_out, "leave_out"))
    returns_dropped = _known(drop_return, "drop_return")
    nat = scenario.edge_pool.nat
    with_hairpin = nat.hairpin if hairpin is None else hairpin
    with_snat_inbound = nat.snat_inbound if snat_inbound is None else snat_inbound
    relay = PortRange(scenario.edge_pool.relay_ports.first, scenario.edge_pool.relay_ports.last)
    nodes = _nodes(scenario, deployment)

    def accept_rule(rule: Rule) -> FilterRule:
        match = flow_match(rule, nodes, relay, external_interface)
        return FilterRule(rule.id, match, "accept", False, rule_label(rule, match.ports))

    def return_rule(rule: Rule) -> FilterRule:
        match = flow_match(rule, nodes, relay, external_interface)
        label = rule_label(rule, match.ports)
        return FilterRule(rule.id, match.reversed(), "drop", True, f"{label}: return traffic dropped")

    rule_ids = tuple(rule_id for rule_id in scenario.selected_rules if rule_id not in left_out)
    pairs = [(name, service, getattr(node, service)) for name, node in zip(
        (node.name for node in scenario.edge_pool.nodes), nodes, strict=True) for service in _NAT_SERVICES]
    dnat = tuple(NatRule("dnat", pair.public, pair.private, f"{name} {service} public -> private (1:1 NAT)")
                 for name, service, pair in pairs)
    snat = tuple(NatRule("snat", pair.private, pair.public, f"{name} {service} private -> public (1:1 NAT)")
                 for name, service, pair in pairs)
    privates = tuple(pair.private for _, _, pair in pairs)
    publics = tuple(pair.public for _, _, pair in pairs)
    options = (
        ("reject", "yes" if reject else "no"),
        ("hairpin", "yes" if with_hairpin else "no"),
        ("snat_inbound", "yes" if with_snat_inbound else "no"),
        ("leave_out", ",".join(sorted(left_out, key=list(RULES_BY_ID).index)) or "-"),
        ("drop_return", ",".join(returns_dropped) or "-"),
        ("external_interface", external_interface or "-"),
    )
    return FirewallPlan(
        scenario=scenario.name,
        rule_ids=rule_ids,
        drop_return=tuple(return_rule(RULES_BY_ID[rule_id]) for rule_id in returns_dropped),
        accept=tuple(accept_rule(RULES_BY_ID[rule_id]) for rule_id in rule_ids),
        reject=reject,
        dnat=dnat,
        snat=snat,
        no_hairpin=None if with_hairpin else (privates, publics),
        snat_inbound=privates if with_snat_inbound else None,
        external_interface=external_interface,
        options=options,
    )


def _header(plan: FirewallPlan, dialect: str, load: str) -> list[str]:
    options = ", ".join(f"{name}={value}" for name, value in plan.options)
    return [
        f"# edgesim firewall ruleset ({dialect}) for scenario '{plan.scenario}': {len(plan.rule_ids)} documented "
        "rules",
        "# A router between the external side, the Edge DMZ (the nodes' private external addresses) and the",
        "# internal side; IP forwarding must be on (sysctl -w net.ipv4.ip_forward=1). The firewall's own INPUT",
        "# and OUTPUT are not touched. One accept rule per documented rule id, the id first in its comment.",
        "# Hairpin sends a node's packets back out the leg they came in on: turn ICMP redirects off there",
        "# (sysctl -w net.ipv4.conf.all.send_redirects=0 and the same for that interface).",
        *([] if plan.external_interface else [
            "# No external interface given: rules match addresses only, so Table 2's \"Any\" includes the external",
            "# side. Give it (external_interface / --external-interface) to keep the internal rules internal.",
        ]),
        f"# Load: {load}",
        f"# Options: {options}",
    ]


# --- nftables ----------------------------------------------------------------------------------------------

_NFT_TABLE = "inet edgesim"


def _nft_addresses(addresses: tuple[IPv4Address, ...]) -> str:
    return str(addresses[0]) if len(addresses) == 1 else "{ " + ", ".join(map(str, addresses)) + " }"


def _nft_match(match: FlowMatch) -> str:
    ports = f"{match.ports.first}-{match.ports.last}" if match.ports.first != match.ports.last else str(match.ports)
    address_key = "saddr" if match.edge_end is End.SOURCE else "daddr"
    port_key = "sport" if match.port_end is End.SOURCE else "dport"
    text = f"ip {address_key} {_nft_addresses(match.edge)} {match.transport} {port_key} {ports}"
    if match.remote_not_via is not None:  # the remote end is the source (Edge inbound) or the destination
        text += f' {"iifname" if match.edge_end is End.DESTINATION else "oifname"} != "{match.remote_not_via}"'
    return text


def _nft_filter(rule: FilterRule) -> str:
    prefix = "ct direction reply " if rule.reply_only else ""
    return f'{prefix}{_nft_match(rule.match)} {rule.action} comment "{rule.comment}"'


def render_nftables(plan: FirewallPlan) -> str:
    """``nft -f`` input: one table ``inet edgesim`` (replaced as a whole on every load)."""
    forward = [_nft_filter(rule) for rule in plan.drop_return]
    forward += ['ct state established,related accept comment "return traffic of accepted flows"',
                'ct state invalid drop comment "not part of any flow"']
    forward += [_nft_filter(rule) for rule in plan.accept]
    if plan.reject:
        forward += ['meta l4proto tcp reject with tcp reset comment "end: reject (tcp reset)"',
                    'reject with icmpx type port-unreachable comment "end: reject (port unreachable)"']
    prerouting = []
    if plan.no_hairpin is not None:
        privates, publics = plan.no_hairpin
        prerouting.append(f"ip saddr {_nft_addresses(privates)} ip daddr {_nft_addresses(publics)} return "
                          'comment "no hairpin: a node\'s traffic to public addresses is not translated"')
    prerouting += [f'ip daddr {rule.match} dnat ip to {rule.to} comment "{rule.comment}"' for rule in plan.dnat]
    postrouting = [f'ip saddr {rule.match} snat ip to {rule.to} comment "{rule.comment}"' for rule in plan.snat]
    if plan.snat_inbound is not None:
        postrouting.append(f"ct status dnat ip daddr {_nft_addresses(plan.snat_inbound)} masquerade "
                           'comment "misconfiguration: inbound sources rewritten to the firewall\'s address"')

    def chain(name: str, hook: str, policy: str, rules: list[str]) -> list[str]:
        return [f"\tchain {name} {{", f"\t\t{hook}; policy {policy};", *(f"\t\t{rule}" for rule in rules), "\t}"]

    lines = _header(plan, "nftables", "nft -f FILE (replaces table inet edgesim, leaves other tables alone)")
    lines += [
        "",
        f"table {_NFT_TABLE}",
        f"delete table {_NFT_TABLE}",
        "",
        f"table {_NFT_TABLE} {{",
        *chain("forward", "type filter hook forward priority filter", "drop", forward),
        "",
        *chain("prerouting", "type nat hook prerouting priority dstnat", "accept", prerouting),
        "",
        *chain("postrouting", "type nat hook postrouting priority srcnat", "accept", postrouting),
        "}",
    ]
    return "\n".join(lines) + "\n"


# --- iptables-restore --------------------------------------------------------------------------------------


def _ipt_addresses(addresses: tuple[IPv4Address, ...]) -> str:
    return ",".join(map(str, addresses))


def _ipt_match(match: FlowMatch) -> str:
    ports = f"{match.ports.first}:{match.ports.last}" if match.ports.first != match.ports.last else str(match.ports)
    address_flag = "-s" if match.edge_end is End.SOURCE else "-d"
    port_flag = "--sport" if match.port_end is End.SOURCE else "--dport"
    proto = match.transport
    text = f"{address_flag} {_ipt_addresses(match.edge)} -p {proto} -m {proto} {port_flag} {ports}"
    if match.remote_not_via is not None:
        text = f'{"! -i" if match.edge_end is End.DESTINATION else "! -o"} {match.remote_not_via} {text}'
    return text


def _ipt_filter(rule: FilterRule) -> str:
    direction = " -m conntrack --ctdir REPLY" if rule.reply_only else ""
    return (f'-A FORWARD {_ipt_match(rule.match)}{direction} -m comment --comment "{rule.comment}" '
            f"-j {rule.action.upper()}")


def render_iptables(plan: FirewallPlan) -> str:
    """``iptables-restore`` input: the nat table's PREROUTING/POSTROUTING and the filter table's FORWARD."""
    nat = ["*nat", ":PREROUTING ACCEPT [0:0]", ":POSTROUTING ACCEPT [0:0]", "-F PREROUTING", "-F POSTROUTING"]
    if plan.no_hairpin is not None:
        privates, publics = plan.no_hairpin
        nat.append(f"-A PREROUTING -s {_ipt_addresses(privates)} -d {_ipt_addresses(publics)} -m comment "
                   "--comment \"no hairpin: a node's traffic to public addresses is not translated\" -j RETURN")
    nat += [f'-A PREROUTING -d {rule.match} -m comment --comment "{rule.comment}" -j DNAT --to-destination {rule.to}'
            for rule in plan.dnat]
    nat += [f'-A POSTROUTING -s {rule.match} -m comment --comment "{rule.comment}" -j SNAT --to-source {rule.to}'
            for rule in plan.snat]
    if plan.snat_inbound is not None:
        nat.append(f"-A POSTROUTING -d {_ipt_addresses(plan.snat_inbound)} -m conntrack --ctstate DNAT -m comment "
                   "--comment \"misconfiguration: inbound sources rewritten to the firewall's address\" "
                   "-j MASQUERADE")
    nat.append("COMMIT")
    filter_table = ["*filter", ":FORWARD DROP [0:0]", "-F FORWARD"]
    filter_table += [_ipt_filter(rule) for rule in plan.drop_return]
    filter_table += [
        '-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment "return traffic of accepted '
        'flows" -j ACCEPT',
        '-A FORWARD -m conntrack --ctstate INVALID -m comment --comment "not part of any flow" -j DROP',
    ]
    filter_table += [_ipt_filter(rule) for rule in plan.accept]
    if plan.reject:
        filter_table += [
            '-A FORWARD -p tcp -m comment --comment "end: reject (tcp reset)" -j REJECT --reject-with tcp-reset',
            '-A FORWARD -m comment --comment "end: reject (port unreachable)" -j REJECT '
            "--reject-with icmp-port-unreachable",
        ]
    filter_table.append("COMMIT")
    lines = _header(plan, "iptables-restore", "iptables-restore --noflush FILE (replaces FORWARD and the nat "
                    "PREROUTING/POSTROUTING chains only)")
    return "\n".join([*lines, *nat, *filter_table]) + "\n"


DIALECTS: dict[str, Callable[[FirewallPlan], str]] = {"nftables": render_nftables, "iptables": render_iptables}


def firewall_ruleset(
    scenario: Scenario,
    dialect: Dialect = "nftables",
    *,
    leave_out: Iterable[str] = (),
    reject: bool = False,
    snat_inbound: bool | None = None,
    hairpin: bool | None = None,
    drop_return: Iterable[str] = (),
    external_interface: str | None = None,
) -> str:
    """The ruleset text for ``scenario``'s deployment in ``dialect`` (options: see :func:`plan_firewall`)."""
    render = DIALECTS.get(dialect)
    if render is None:
        raise ValueError(f"unknown firewall dialect {dialect!r}; one of {', '.join(DIALECTS)}")
    plan = plan_firewall(scenario, leave_out=leave_out, reject=reject, snat_inbound=snat_inbound,
                         hairpin=hairpin, drop_return=drop_return, external_interface=external_interface)
    return render(plan)


def same_packet_groups(scenario: Scenario) -> list[tuple[str, ...]]:
    """The selected rules grouped by the packets they accept: rules whose opening packets are the same (E6 and
    P3 both accept TCP 443 in to the Access Edge) cannot be told apart by any firewall, so a sweep leaves them
    out together. Catalog order, each group in the order of its first rule."""
    deployment = scenario.deployment
    if deployment is None:
        raise NoDeploymentError(f"scenario '{scenario.name}' has no deployment: section")
    relay = PortRange(scenario.edge_pool.relay_ports.first, scenario.edge_pool.relay_ports.last)
    nodes = _nodes(scenario, deployment)
    groups: dict[FlowMatch, list[str]] = {}
    for rule_id in scenario.selected_rules:
        groups.setdefault(flow_match(RULES_BY_ID[rule_id], nodes, relay), []).append(rule_id)
    return [tuple(ids) for ids in groups.values()]


def without_rules(ruleset: str, rule_ids: Iterable[str]) -> tuple[str, list[str]]:
    """``ruleset`` (nftables or iptables-restore text whose accept rules carry the rule id first in their comment,
    as :func:`firewall_ruleset` writes them) with the accept lines of ``rule_ids`` removed; also the ids no line
    carried."""
    wanted = set(rule_ids)
    found: set[str] = set()
    kept = []
    for line in ruleset.splitlines():
        match = _RULE_COMMENT.search(line)
        accepts = " accept " in f"{line} " or "-j ACCEPT" in line
        if match is not None and accepts and match.group(1) in wanted:
            found.add(match.group(1))
            continue
        kept.append(line)
    return "\n".join(kept) + "\n", sorted(wanted - found, key=list(RULES_BY_ID).index)


# An accept rule's comment: `comment "E6 Access/..."` (nftables) or `--comment "E6 Access/..."` (iptables).
_RULE_COMMENT = re.compile(r'comment "([A-Z]+\d+) ')


def _overlap(a: FlowMatch, b: FlowMatch) -> bool:
    """Some packet matches both: same transport, a shared Edge address at the same end, and port conditions that
    can hold at once (on the same end the ranges meet; on different ends they constrain different fields)."""
    if a.transport != b.transport or a.edge_end is not b.edge_end or not set(a.edge) & set(b.edge):
        return False
    if a.port_end is not b.port_end:
        return True
    return a.ports.first <= b.ports.last and b.ports.first <= a.ports.last


def overlapping_rules(scenario: Scenario) -> dict[str, tuple[str, ...]]:
    """For each selected rule, the rules of *other* same-packet groups that accept some of its packets too: E14 (UDP
    to 3478 out) and E11 (UDP from the relay range out) both accept a relay's STUN to a partner's 3478, so taking
    E14 out alone leaves that flow open. A sweep says so instead of calling the hole uncaught."""
    deployment = scenario.deployment
    if deployment is None:
        raise NoDeploymentError(f"scenario '{scenario.name}' has no deployment: section")
    relay = PortRange(scenario.edge_pool.relay_ports.first, scenario.edge_pool.relay_ports.last)
    nodes = _nodes(scenario, deployment)
    matches = {rule_id: flow_match(RULES_BY_ID[rule_id], nodes, relay) for rule_id in scenario.selected_rules}
    return {rule_id: tuple(other for other, theirs in matches.items() if theirs != mine and _overlap(mine, theirs))
            for rule_id, mine in matches.items()}
