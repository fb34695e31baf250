"""Verdicts and reason codes: what the runner says of each rule."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    BLOCKED = "blocked"
    UNIMPLEMENTED = "unimplemented"


class Reason(StrEnum):
    """Why a probe failed. An open port alone is never a pass (design.md)."""

    REFUSED = "refused"  # RST / ECONNREFUSED
    TIMEOUT = "timeout"  # no answer in time (dropped SYN, filtered UDP …)
    UNREACHABLE = "unreachable"  # ICMP unreachable / no route
    RESET = "reset"  # connection reset or closed mid-exchange
    TLS_ALERT = "tls-alert"  # a TLS alert we have no finer code for
    BAD_CERTIFICATE = "bad-certificate"  # the peer's certificate is malformed or rejected for another reason
    WRONG_SAN = "wrong-san"  # the certificate does not name the expected host
    EXPIRED = "expired"
    UNTRUSTED = "untrusted"  # not issued by the lab CA
    REVOKED = "revoked"
    PROTOCOL_ERROR = "protocol-error"  # the peer answered, but not what the protocol says
    REJECTED = "rejected"  # an application-level refusal (4xx, error response)
    EXHAUSTION = "exhaustion"  # TURN 508 Insufficient Capacity: the relay port range is used up
    PRIVATE_ADDRESS_LEAKED = "private-address-leaked"
    NO_RETURN_PATH = "no-return-path"
    NO_PEER = "no-peer"  # the scenario has no client of the role this rule needs
    SNAT_INBOUND = "snat-inbound"  # the Edge saw a rewritten source: something source-NATs inbound traffic
    NO_HAIRPIN = "no-hairpin"  # the pool nodes' public addresses cannot reach each other
    # Firewall lab mode: what the serving side saw refines a probe's timeout (simulator.report.merge).
    NEVER_ARRIVED = "never-arrived"  # the far side saw nothing of the flow
    SOURCE_REWRITTEN = "source-rewritten"  # it arrived, from another address than it left (SNAT where none belongs)
    WRONG_PORT = "wrong-port"  # a relay flow arrived from a port outside the documented range
    NO_EVIDENCE = "no-evidence"  # no side report speaks for this rule (a side not run, or restarted mid-run)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one probe observed against one pool node."""

    node: str
    verdict: Verdict
    reason: Reason | None = None
    detail: str = ""
    elapsed_ms: float = 0.0
    measurements: dict[str, float] = field(default_factory=dict)

    @classmethod
    def passed(cls, node: str, detail: str = "", **measurements: float) -> Outcome:
        return cls(node, Verdict.PASS, None, detail, measurements=dict(measurements))

    @classmethod
    def failed(cls, node: str, reason: Reason, detail: str = "") -> Outcome:
        return cls(node, Verdict.FAIL, reason, detail)


class ProbeFailure(Exception):
    """A client-side failure with its reason code; probes turn it into a ``fail`` outcome."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
