"""Priorities and pair priorities against the RFC 8445 formulas, computed here by hand from the RFC text
(and cross-checked with aioice's own ``candidate_priority``), never read back from the code under test."""

from __future__ import annotations

import pytest

from simulator.core.ice import CandidateType, Profile, candidate_priority, local_preference, pair_priority
from simulator.core.ice import type_preference as type_pref

# RFC 8445 §5.1.2.1: priority = 2^24*type + 2^8*local + (256 - component); §5.1.2.2 recommended type
# preferences host 126, prflx 110, srflx 100, relay 0; single-homed local preference 65535.
RFC_VALUES = [
    (CandidateType.HOST, 1, 126 * 16777216 + 65535 * 256 + 255),  # 2130706431
    (CandidateType.HOST, 2, 126 * 16777216 + 65535 * 256 + 254),  # 2130706430
    (CandidateType.PRFLX, 1, 110 * 16777216 + 65535 * 256 + 255),  # 1862270975
    (CandidateType.SRFLX, 1, 100 * 16777216 + 65535 * 256 + 255),  # 1694498815
    (CandidateType.RELAY, 1, 0 * 16777216 + 65535 * 256 + 255),  # 16777215
]


@pytest.mark.parametrize(("kind", "component", "expected"), RFC_VALUES)
def test_rfc8445_candidate_priority(kind: CandidateType, component: int, expected: int) -> None:
    got = candidate_priority(type_pref(Profile.RFC8445, kind), local_preference(Profile.RFC8445), component)
    assert got == expected


@pytest.mark.parametrize(("kind", "component", "expected"), RFC_VALUES)
def test_rfc8445_priority_matches_aioice(kind: CandidateType, component: int, expected: int) -> None:
    aioice_candidate = pytest.importorskip("aioice.candidate")
    assert aioice_candidate.candidate_priority(component, str(kind)) == expected


def test_known_literal_values() -> None:
    # The numbers every RFC 5245/8445 stack prints for a single-homed host (e.g. RFC 8839 §5.1 examples).
    assert candidate_priority(126, 65535, 1) == 2130706431
    assert candidate_priority(100, 65535, 1) == 1694498815


def test_ms_ice2_local_preference_layout() -> None:
    # research-lync-edge.md §1.2: transport(UDP 15, TCP 6) << 12 | direction(active 5, passive 2) << 9
    # | turn_server_idx << 6 | ip_idx
    assert local_preference(Profile.MS_ICE2) == 15 << 12 == 61440
    assert local_preference(Profile.MS_ICE2, transport="tcp", tcptype="active") == (6 << 12) | (5 << 9)
    assert local_preference(Profile.MS_ICE2, transport="tcp", tcptype="passive") == (6 << 12) | (2 << 9)
    assert local_preference(Profile.MS_ICE2, turn_index=1, ip_index=3) == (15 << 12) | (1 << 6) | 3
    # type preferences host 120, prflx 110, srflx 100, relay UDP 30, relay TCP 20
    assert type_pref(Profile.MS_ICE2, CandidateType.HOST) == 120
    assert type_pref(Profile.MS_ICE2, CandidateType.RELAY) == 30
    assert type_pref(Profile.MS_ICE2, CandidateType.RELAY, "tcp") == 20
    host = candidate_priority(type_pref(Profile.MS_ICE2, CandidateType.HOST), local_preference(Profile.MS_ICE2), 1)
    assert host == 120 * 2**24 + 61440 * 2**8 + 255


def test_pair_priority_formula() -> None:
    # RFC 8445 §6.1.2.3: 2^32*MIN(G,D) + 2*MAX(G,D) + (G>D?1:0), G from the controlling agent.
    g, d = 2130706431, 1694498815
    assert pair_priority(g, d) == 1694498815 * 4294967296 + 2 * 2130706431 + 1
    assert pair_priority(d, g) == 1694498815 * 4294967296 + 2 * 2130706431 + 0
    assert pair_priority(g, g) == 2130706431 * 4294967296 + 2 * 2130706431


def test_priority_bounds() -> None:
    with pytest.raises(ValueError):
        candidate_priority(127, 0, 1)
    with pytest.raises(ValueError):
        candidate_priority(0, 65536, 1)
    with pytest.raises(ValueError):
        candidate_priority(0, 0, 0)
