"""Sans-I/O ICE (RFC 8445 and MS-ICE2 profiles): candidates and priorities, and the agent."""

from simulator.core.ice.agent import (
    MS_ICE2,
    RFC8445,
    CandidatePair,
    CheckSent,
    CheckSucceeded,
    Event,
    Failed,
    IceAgent,
    IceConfig,
    IceState,
    IceStats,
    PairFailed,
    PairSelected,
    PairState,
    RoleChanged,
)
from simulator.core.ice.candidates import (
    Candidate,
    CandidateType,
    Profile,
    candidate_priority,
    local_preference,
    pair_priority,
    type_preference,
)

__all__ = [
    "MS_ICE2", "RFC8445", "Candidate", "CandidatePair", "CandidateType", "CheckSent", "CheckSucceeded", "Event",
    "Failed", "IceAgent", "IceConfig", "IceState", "IceStats", "PairFailed", "PairSelected", "PairState",
    "Profile", "RoleChanged", "candidate_priority", "local_preference", "pair_priority", "type_preference",
]
