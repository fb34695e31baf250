"""Merge the side reports of a split lab (``edgesim probe --side …``) into one report of every selected rule.

Each side report holds the rules whose probes start on that side (:mod:`simulator.scenario.sides`); the Edge
side's reports hold one node each. The merge takes every rule's outcomes from wherever they were probed,
puts the per-node outcomes of the Edge-side reports together, and then applies the dependency order across
sides as the embedded runner does: a rule whose prerequisite did not pass is ``blocked`` by it (its own probe
result stays in the detail). A selected rule no report speaks for is a ``fail`` with reason ``no-evidence``
(a side that was not run, or restarted mid-run), never a pass.

Observation files of the serving sides (``serve … --observations``) sharpen a failure that only says "nothing
came back" (timeout, reset): :func:`locus_of` says where the rule's flow must arrive and from where, and the
arrivals recorded while the probes ran decide between ``never-arrived`` (the far side saw nothing),
``no-return-path`` (it arrived from the right source; the answer was lost), ``source-rewritten`` (it arrived
from another address) and ``wrong-port`` (a relay flow from a port outside the range).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from simulator.lab.addressing import AddressPlan, PortMap
from simulator.lab.av import PEER_TCP_MEDIA_PORT, PEER_UDP_MEDIA_PORT
from simulator.outcome import Outcome, Reason, Verdict
from simulator.report.model import Report, build_report
from simulator.scenario.runner import RuleResult, combine_outcomes
from simulator.spec.rules import RULES_BY_ID, Direction, Interface, Rule, Service, topological_order
from simulator.spec.schema import INTERNAL_ROLES, ClientRole, Scenario

NO_EVIDENCE = str(Reason.NO_EVIDENCE)
# Probe reasons that say only "nothing came back": what the serving side saw can tell where the flow died.
_VAGUE = frozenset({Reason.TIMEOUT, Reason.RESET, Reason.UNREACHABLE, Reason.NO_RETURN_PATH})


@dataclass(frozen=True, slots=True)
class Locus:
    """Where a rule's flow must show up on its serving side, and from where."""

    side: str  # the observations' side: edge (that node's), internal or external
    hosts: frozenset[str]  # local addresses the arrival is on
    ports: frozenset[int]
    transport: str
    sources: frozenset[str]  # the addresses the flow must come from
    relay_ports: tuple[int, int] | None = None  # the source port must be in this range (the A/V relay sends)


def _addresses_of(scenario: Scenario, roles: set[ClientRole] | None, internal: bool | None = None) -> frozenset[str]:
    deployment = scenario.deployment
    assert deployment is not None
    found: set[str] = set()
    for client in scenario.clients:
        if roles is not None and client.role not in roles:
            continue
        if internal is not None and (client.role in INTERNAL_ROLES) != internal:
            continue
        placed = deployment.clients[client.name]
        found.update(str(address) for address in placed.addresses)
        if placed.nat is not None:
            found.add(str(placed.nat))
    return frozenset(found)


# Whose servers an outbound external rule reaches (the rest reach the federated partner's).
_FAR_PEER = {"P2": ClientRole.PIC_PARTNER, "P4": ClientRole.PIC_PARTNER, "P5": ClientRole.PIC_PARTNER,
             "E2": ClientRole.XMPP_PARTNER, "X2": ClientRole.XMPP_PARTNER}


def locus_of(scenario: Scenario, rule: Rule, node: str) -> Locus | None:
    """Where ``rule``'s flow for ``node`` must arrive in a deployment, or None when the lab records nothing
    there (the UDP relays' inbound side)."""
    deployment = scenario.deployment
    assert deployment is not None
    placed = deployment.nodes[node]
    port, transport = rule.ports.first, str(rule.transport)
    relay = (scenario.edge_pool.relay_ports.first, scenario.edge_pool.relay_ports.last)
    if rule.interface is Interface.INTERNAL:
        if rule.direction is Direction.IN:
            return Locus("edge", frozenset({str(placed.internal)}), frozenset({port}), transport,
                         _addresses_of(scenario, None, internal=True))
        servers = _addresses_of(scenario, {ClientRole.FRONT_END, ClientRole.DIRECTOR})
        return Locus("internal", servers, frozenset({port}), transport, frozenset({str(placed.internal)}))
    pair = {Service.ACCESS: placed.access, Service.XMPP: placed.access, Service.WEBCONF: placed.webconf,
            Service.AV: placed.av}[rule.service]
    if rule.direction is Direction.IN:
        if rule.ports.first != rule.ports.last:
            return None  # a relay port: inbound relay traffic is not recorded
        return Locus("edge", frozenset({str(pair.private)}), frozenset({port}), transport,
                     _addresses_of(scenario, None, internal=False))
    peer_role = _FAR_PEER.get(rule.id, ClientRole.FEDERATED_PARTNER)
    source = frozenset({str(pair.public)})
    if rule.id == "E3":
        return Locus("external", frozenset({str(deployment.crl)}), frozenset({80}), "tcp", source)
    if rule.id in ("E4", "E5"):
        return Locus("external", frozenset({str(deployment.dns.address)}), frozenset({deployment.dns.port}),
                     transport, source)
    peers = _addresses_of(scenario, {peer_role})
    if rule.service is Service.AV:
        # The media peers (simulator.lab.av): the relay's RTP goes to their media port (E11 over UDP, E10/P4 over
        # TCP), STUN/TURN to their 3478/443 (E14/P5, E17) — one port per rule, so one rule's arrivals never
        # stand in for another's (E17's TCP to 443 is not E10's to the media port).
        media = PEER_UDP_MEDIA_PORT if transport == "udp" else PEER_TCP_MEDIA_PORT
        return Locus("external", peers, frozenset({media if rule.protocol == "RTP" else port}), transport, source,
                     relay)
    return Locus("external", peers, frozenset({port}), transport, source)


def _refine(outcome: Outcome, locus: Locus | None, arrivals: list[dict[str, Any]] | None) -> Outcome:
    """A vague failure made precise by what the serving side saw (None: that side's observations are missing)."""
    if outcome.verdict is not Verdict.FAIL or locus is None or arrivals is None:
        return outcome
    # An application refusal (a 504 or an XMPP stream error from the Edge) is vague too when the Edge gave it on
    # behalf of a far side that never saw the flow: then the flow died on its way there.
    relayed_refusal = outcome.reason is Reason.REJECTED
    if outcome.reason not in _VAGUE and not relayed_refusal:
        return outcome
    seen = []
    for arrival in arrivals:
        host, _, port = str(arrival["local"]).rpartition(":")
        if arrival["transport"] == locus.transport and host in locus.hosts and int(port) in locus.ports:
            source, _, source_port = str(arrival["remote"]).rpartition(":")
            seen.append((source, int(source_port)))
    expected = [(host, port) for host, port in seen if host in locus.sources]
    if relayed_refusal and seen:
        return outcome  # it arrived: the refusal is the far side's own answer
    if expected:
        if locus.relay_ports is not None and not any(locus.relay_ports[0] <= p <= locus.relay_ports[1]
                                                     for _, p in expected):
            reason, why = Reason.WRONG_PORT, (f"arrived from port {expected[0][1]}, outside the relay range "
                                              f"{locus.relay_ports[0]}-{locus.relay_ports[1]}")
        else:
            reason, why = Reason.NO_RETURN_PATH, (f"arrived at the {locus.side} side from {expected[0][0]}, "
                                                  "but the answer never came back")
    elif seen:
        reason, why = Reason.SOURCE_REWRITTEN, (f"arrived from {seen[0][0]}, not from "
                                                f"{', '.join(sorted(locus.sources))}")
    else:
        reason, why = Reason.NEVER_ARRIVED, f"the {locus.side} side saw nothing of it"
    return Outcome(outcome.node, outcome.verdict, reason, f"{outcome.detail} [{why}; probe said {outcome.reason}]",
                   outcome.elapsed_ms)


def _outcome(entry: dict[str, Any]) -> Outcome:
    reason = entry.get("reason")
    return Outcome(str(entry["node"]), Verdict(entry["verdict"]), Reason(reason) if reason else None,
                   str(entry.get("detail", "")), float(entry.get("elapsed_ms", 0.0)))


def merge_side_reports(scenario: Scenario, documents: list[dict[str, Any]]) -> Report:
    """One report from side reports (observation files among them are accepted and set aside)."""
    outcomes: dict[str, dict[str, Outcome]] = {}
    elapsed: dict[str, float] = {}
    unprobed: dict[str, RuleResult] = {}
    times: list[dt.datetime] = []
    observed: dict[tuple[str, str | None], list[dict[str, Any]]] = {}
    load: dict[str, Any] | None = None
    for document in documents:
        if document.get("edgesim_observations") == 1:
            key = (str(document["side"]), document.get("node") if document["side"] == "edge" else None)
            observed.setdefault(key, []).extend(document.get("arrivals", []))
            continue
        if document.get("edgesim_side_report") != 1:
            raise ValueError("not an edgesim side report or observations file (no 'edgesim_side_report': 1)")
        if document.get("scenario") != scenario.name:
            raise ValueError(f"a side report of scenario {document.get('scenario')!r}, not {scenario.name!r}")
        times += [dt.datetime.fromisoformat(document[key]) for key in ("started", "finished")]
        load = document.get("load") or load
        for entry in document["rules"]:
            rule_id = entry["id"]
            if rule_id not in RULES_BY_ID:
                raise ValueError(f"unknown rule id {rule_id!r} in a side report")
            if entry["verdict"] == str(Verdict.UNIMPLEMENTED):
                unprobed[rule_id] = RuleResult(RULES_BY_ID[rule_id], Verdict.UNIMPLEMENTED, None, None,
                                               str(entry.get("detail", "")))
                continue
            per_node = outcomes.setdefault(rule_id, {})
            for node_entry in entry.get("nodes", []):
                per_node[str(node_entry["node"])] = _outcome(node_entry)
            elapsed[rule_id] = elapsed.get(rule_id, 0.0) + float(entry.get("elapsed_ms", 0.0))

    if times:  # only what arrived while the probes ran counts (a serving side may outlive several probe runs)
        first, last = min(times).timestamp() - 1.0, max(times).timestamp() + 1.0
        observed = {key: [a for a in arrivals if first <= float(a["at"]) <= last] for key, arrivals in observed.items()}
    nodes = [node.name for node in scenario.edge_pool.nodes]
    for rule_id, per_node in outcomes.items():
        for node, outcome in list(per_node.items()):
            locus = locus_of(scenario, RULES_BY_ID[rule_id], node)
            seen = None if locus is None else observed.get((locus.side, node if locus.side == "edge" else None))
            per_node[node] = _refine(outcome, locus, seen)
    done: dict[str, RuleResult] = {}
    for rule_id in topological_order(scenario.selected_rules):
        rule = RULES_BY_ID[rule_id]
        if rule_id in unprobed:
            done[rule_id] = unprobed[rule_id]
            continue
        blocker = next((dep for dep in rule.depends_on
                        if dep in done and done[dep].verdict in (Verdict.FAIL, Verdict.BLOCKED)), None)
        per_node = outcomes.get(rule_id, {})
        missing = [node for node in nodes if node not in per_node]
        if blocker is not None:
            own = "; ".join(f"{o.node}: {o.verdict}" for o in per_node.values()) or "not probed"
            done[rule_id] = RuleResult(rule, Verdict.BLOCKED, None, blocker,
                                       f"prerequisite {blocker} did not pass (own probe: {own})")
        elif missing:
            done[rule_id] = RuleResult(rule, Verdict.FAIL, NO_EVIDENCE, None,
                                       f"no side report has this rule for {', '.join(missing)}",
                                       tuple(per_node.values()))
        else:
            done[rule_id] = combine_outcomes(rule, [per_node[node] for node in nodes], elapsed.get(rule_id, 0.0))
    now = dt.datetime.now(dt.UTC)
    started, finished = (min(times), max(times)) if times else (now, now)
    return build_report(scenario, AddressPlan.for_deployment(scenario), PortMap(0, True), list(done.values()),
                        started, finished, load)
