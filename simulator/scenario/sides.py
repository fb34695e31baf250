"""Which side of the firewall each probe starts on, for firewall lab mode (``edgesim probe --side``).

A probe sends from the addresses of the population that opens the flow (a remote user, a partner, the Front
End) or, for the Edge's own lookups, from the Edge's address; in a split lab it must run on the host that owns
those addresses. Three sides:

* ``external`` — remote users (through their emulated NAT), federated/PIC/XMPP partners: E6/P3, E7/P1, E9,
  E1/X1, every A/V rule reached from outside, and I3 (the Edge relays a remote user's REGISTER inward);
* ``internal`` — the Front End/Director: I1/X3, I2, I4, I5, I8–I11, I6/I7 (A/V on the internal interface), and
  what the Edge sends out on the Front End's behalf: E8/F1/P2 (SIP to partners) and E2/X2 (XMPP to partners);
* ``edge`` — the Edge's own lookups from its Access Edge address: E3 (CRL), E4, E5 (DNS). In the seed these
  flows start on the Edge itself, so the probe runs on the Edge host (beside ``serve edge``).

A rule whose prerequisite runs on another side is probed anyway; :mod:`simulator.report.merge` applies the
dependency order across the side reports.
"""

from __future__ import annotations

from enum import StrEnum

from simulator.spec.rules import RULES_BY_ID


class ProbeSide(StrEnum):
    EXTERNAL = "external"
    INTERNAL = "internal"
    EDGE = "edge"


PROBE_SIDES: dict[str, ProbeSide] = {
    "sip-remote-signin": ProbeSide.EXTERNAL,
    "sip-internal-out": ProbeSide.EXTERNAL,
    "sip-federation-in": ProbeSide.EXTERNAL,
    "sip-pic-in": ProbeSide.EXTERNAL,
    "psom-client-in": ProbeSide.EXTERNAL,
    "xmpp-s2s-in": ProbeSide.EXTERNAL,
    "av-turn-udp-in": ProbeSide.EXTERNAL,
    "av-turn-tcp-in": ProbeSide.EXTERNAL,
    "av-relay-udp-out": ProbeSide.EXTERNAL,
    "av-relay-udp-in": ProbeSide.EXTERNAL,
    "av-relay-tcp-out": ProbeSide.EXTERNAL,
    "av-relay-tcp-in": ProbeSide.EXTERNAL,
    "av-turn-udp-out": ProbeSide.EXTERNAL,
    "av-turn-tcp-out": ProbeSide.EXTERNAL,
    "sip-internal-in": ProbeSide.INTERNAL,
    "mras-in": ProbeSide.INTERNAL,
    "sip-federation-out": ProbeSide.INTERNAL,
    "sip-pic-out": ProbeSide.INTERNAL,
    "psom-frontend-in": ProbeSide.INTERNAL,
    "xmpp-gateway-in": ProbeSide.INTERNAL,
    "xmpp-s2s-out": ProbeSide.INTERNAL,
    "cms-replication": ProbeSide.INTERNAL,
    "cls-agent": ProbeSide.INTERNAL,
    "av-turn-udp-internal": ProbeSide.INTERNAL,
    "av-turn-tcp-internal": ProbeSide.INTERNAL,
    "dns-tcp": ProbeSide.EDGE,
    "dns-udp": ProbeSide.EDGE,
    "crl-fetch": ProbeSide.EDGE,
}


def side_of(rule_id: str) -> ProbeSide:
    return PROBE_SIDES[RULES_BY_ID[rule_id].probe]


def rules_for_side(rule_ids: list[str], side: ProbeSide) -> list[str]:
    """The selected rules whose probes start on ``side`` (catalog order)."""
    return [rule_id for rule_id in rule_ids if side_of(rule_id) is side]
