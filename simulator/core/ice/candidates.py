"""ICE candidates, priorities and pair ordering for the two profiles (RFC 8445 and MS-ICE2).

Formulas (cited where used):

- Candidate priority, RFC 8445 §5.1.2.1::

      priority = 2^24 * type_pref + 2^8 * local_pref + (256 - component_id)

- Type preferences: RFC 8445 §5.1.2.2 recommends host 126, prflx 110, srflx 100, relay 0. MS-ICE2 (as
  libnice OC2007R2 writes it, research-lync-edge.md §1.2): host 120, prflx 110, srflx 100, relay-UDP 30,
  relay-TCP 20, halved when the candidate's transport does not match the stream's (UDP stream, TCP
  candidate).
- Local preference: RFC 8445 §5.1.2.1 — 65535 for a single-homed host, distinct per IP address when
  multi-homed (here ``65535 - ip_index``); TCP candidates RFC 6544 §4.2
  ``2^13 * direction_pref (active 6, passive 4, so 2) + other_pref``. MS-ICE2: 16 bits
  ``transport(UDP 15, TCP 6) << 12 | direction(active 5, passive 2, UDP 0) << 9 | turn_index << 6 | ip_index``.
- Pair priority, RFC 8445 §6.1.2.3 with G the controlling agent's candidate priority, D the controlled's::

      pair_priority = 2^32 * MIN(G, D) + 2 * MAX(G, D) + (G > D ? 1 : 0)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from simulator.wire.sdp import SdpCandidate
from simulator.wire.stun import Address


class Profile(enum.StrEnum):
    RFC8445 = "rfc8445"
    MS_ICE2 = "ms-ice2"


class CandidateType(enum.StrEnum):
    HOST = "host"
    SRFLX = "srflx"
    PRFLX = "prflx"
    RELAY = "relay"


# RFC 8445 §5.1.2.2 recommended values.
RFC_TYPE_PREFERENCE = {CandidateType.HOST: 126, CandidateType.PRFLX: 110, CandidateType.SRFLX: 100,
                       CandidateType.RELAY: 0}
# MS-ICE2 / libnice OC2007R2 (research-lync-edge.md §1.2); relay is 30 over UDP, 20 over TCP.
MS_TYPE_PREFERENCE = {CandidateType.HOST: 120, CandidateType.PRFLX: 110, CandidateType.SRFLX: 100,
                      CandidateType.RELAY: 30}
MS_RELAY_TCP_PREFERENCE = 20
MS_TRANSPORT_PREFERENCE = {"udp": 15, "tcp": 6}
RFC_TCP_DIRECTION_PREFERENCE = {"active": 6, "passive": 4, "so": 2}  # RFC 6544 §4.2 (UDP-reachable host)
MS_DIRECTION_PREFERENCE = {None: 0, "active": 5, "passive": 2, "so": 5}


def candidate_priority(type_preference: int, local_preference: int, component: int) -> int:
    """RFC 8445 §5.1.2.1."""
    if not 0 <= type_preference <= 126 or not 0 <= local_preference <= 65535 or not 1 <= component <= 256:
        raise ValueError("type preference 0..126, local preference 0..65535, component 1..256")
    return (1 << 24) * type_preference + (1 << 8) * local_preference + (256 - component)


def type_preference(profile: Profile, kind: CandidateType, transport: str = "udp", relay_leg: str = "udp") -> int:
    """``relay_leg``: how a relay candidate reaches its TURN server (MS-ICE2 ranks a relay over TCP lower)."""
    if profile is Profile.RFC8445:
        return RFC_TYPE_PREFERENCE[kind]
    if kind is CandidateType.RELAY and "tcp" in (transport, relay_leg):
        return MS_RELAY_TCP_PREFERENCE
    value = MS_TYPE_PREFERENCE[kind]
    return value // 2 if transport != "udp" else value  # libnice: halved on a reliability mismatch


def local_preference(profile: Profile, *, transport: str = "udp", tcptype: str | None = None,
                     turn_index: int = 0, ip_index: int = 0) -> int:
    """RFC 8445 §5.1.2.1 (``65535 - ip_index``), RFC 6544 §4.2 for TCP, or the MS-ICE2 16-bit layout."""
    if profile is Profile.RFC8445:
        if transport == "tcp":  # RFC 6544 §4.2: 2^13 * direction-pref + other-pref (active 6, passive 4, so 2)
            return (1 << 13) * RFC_TCP_DIRECTION_PREFERENCE[tcptype or "passive"] + (8191 - ip_index)
        return 65535 - ip_index
    return ((MS_TRANSPORT_PREFERENCE[transport] << 12) | (MS_DIRECTION_PREFERENCE[tcptype] << 9)
            | ((turn_index & 0x7) << 6) | (ip_index & 0x3F))


def pair_priority(controlling: int, controlled: int) -> int:
    """RFC 8445 §6.1.2.3: G = the controlling agent's candidate priority, D = the controlled agent's."""
    return (1 << 32) * min(controlling, controlled) + 2 * max(controlling, controlled) + (
        1 if controlling > controlled else 0)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A local or remote candidate.

    ``base`` is the local address a local candidate sends from (RFC 8445 §5.1.1: itself for host and
    relay, the host candidate for srflx/prflx); ``via`` names the shell's socket or relay that sends
    for it (the same for a srflx candidate and its host base). Remote candidates have neither.
    """

    type: CandidateType
    address: Address
    priority: int
    foundation: str
    component: int = 1
    transport: str = "udp"
    related: Address | None = None
    base: Address | None = None
    via: str = ""
    tcptype: str | None = None

    def to_sdp(self) -> SdpCandidate:
        related = self.related
        return SdpCandidate(self.foundation, self.component, self.transport, self.priority, self.address.host,
                            self.address.port, str(self.type), related.host if related else None,
                            related.port if related else None, self.tcptype)

    @classmethod
    def from_sdp(cls, sdp: SdpCandidate) -> Candidate:
        related = None
        if sdp.related_host is not None and sdp.related_port is not None:
            related = Address(sdp.related_host, sdp.related_port)
        return cls(CandidateType(sdp.type), Address(sdp.host, sdp.port), sdp.priority, sdp.foundation,
                   sdp.component, sdp.transport, related, tcptype=sdp.tcptype)

    def describe(self) -> str:
        return f"{self.type}/{self.transport} {self.address.host}:{self.address.port}"
