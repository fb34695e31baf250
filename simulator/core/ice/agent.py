"""A sans-I/O ICE agent (one media stream, any number of components) with two profiles.

Theory of operation
-------------------
The agent is a state machine fed with bytes and ``now`` (seconds on the caller's clock), in the aioquic
style: ``receive(data, addr, now, via)`` for each datagram a local socket or relay got,
``datagrams_to_send(now)`` for what to send (``(bytes, remote address, via)`` — ``via`` is the name the
shell gave the local candidate's socket or relay), ``get_timer()`` / ``handle_timer(now)`` for pacing and
retransmissions, and ``next_event()`` for what happened. It never reads a clock and draws every random
value (tie-breaker, ufrag/pwd, transaction IDs) from the ``random.Random`` it was given.

The check list (RFC 8445 §6.1.2):

- Pairs are formed from each local host/relay candidate (a srflx candidate is pruned: it is replaced by
  its base, which is already a host candidate, §6.1.2.4) and each remote candidate of the same
  component, transport and address family — UDP with UDP; TCP host candidates active with passive and
  S-O with S-O (RFC 6544 §6.2; a pair whose local side is passive is never checked from here, it only
  answers and sends triggered checks on the peer's connection); redundant pairs (same base, same remote)
  keep the higher priority; at most ``max_pairs``. Pair priority follows §6.1.2.3 and is recomputed on a role
  change.
- States (§6.1.2.6): the first pair of each foundation starts Waiting, the others Frozen. Every ``Ta``
  (§14.2) one check is sent: a triggered check first (FIFO, §6.1.4.2), else the highest-priority Waiting
  pair; when none is Waiting, each foundation with nothing Waiting or In-Progress gets its best Frozen
  pair unfrozen. A success unfreezes the pairs of the same foundation (§7.2.5.3.3).
- Retransmissions (RFC 8489 §6.2.1): RTO, 2·RTO, … up to ``max_transmissions`` (Rc) requests, then a last
  wait of Rm·RTO; no answer by then fails the pair. Retransmissions are not paced.
- Requests (§7.3): USERNAME, MESSAGE-INTEGRITY (401 otherwise), FINGERPRINT when present, PRIORITY (400
  otherwise); a role conflict (§7.3.1.1) is resolved by tie-breakers, answering 487 or switching role. A
  source not among the remote candidates becomes a peer-reflexive remote candidate (§7.3.1.3); the pair
  gets a triggered check unless it already succeeded (§7.3.1.4); an in-progress check is cancelled first —
  no more retransmissions, but its answer still counts until its timeout, which then fails nothing.
- Responses (§7.2.5): must come from where the request went (else the pair fails); 487 flips the role
  and retries the pair as a triggered check; a success makes a valid pair whose local candidate is the
  one matching XOR-MAPPED-ADDRESS, or a new local peer-reflexive candidate (§7.2.5.3.1).
- Nomination (§8.1.1, regular): the controlling agent nominates the best valid pair of a component —
  a fresh check with USE-CANDIDATE — once no pair of higher priority can still succeed, or
  ``nomination_wait`` seconds after the first valid pair. In the MS-ICE2 profile that wait is the
  MS-ICE 3-second "connectivity checks phase" timer (MS-ICE §3.1.6.2). With ``aggressive`` every check of
  the controlling agent carries USE-CANDIDATE (RFC 5245 §8.1.1.2; what aioice does). The controlled agent
  nominates a pair when a request with USE-CANDIDATE arrives for it and its own check succeeded (§7.3.1.5)
  and selects the highest-priority nominated pair.
- Wire: RFC 8489 STUN in the rfc8445 profile. In the ms-ice2 profile checks and answers are written in
  the MS-ICE2 form libnice OC2007R2 speaks (:mod:`simulator.core.ice.msice2`: unpadded attributes, the
  MS-ICE2 MESSAGE-INTEGRITY, IMPLEMENTATION-VERSION 2) and both forms are read; an answer uses the form of
  its request.
- Completion: every component has a selected pair → :class:`PairSelected` (once per change); checks stop,
  requests are still answered and a Binding indication is sent on the selected pair every ``keepalive``
  seconds (§11). Failure: nothing left to check and no valid pair → :class:`Failed`; a failed nomination
  check moves to the next valid pair.
"""

from __future__ import annotations

import dataclasses
import enum
import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from simulator.core.ice import msice2
from simulator.core.ice.candidates import (
    Candidate,
    CandidateType,
    Profile,
    candidate_priority,
    local_preference,
    pair_priority,
    type_preference,
)
from simulator.wire import stun
from simulator.wire.errors import MalformedMessage
from simulator.wire.stun import Address, Attribute, Message, MessageClass, attr

SOFTWARE = "edgesim"  # 4..7 characters of it align MS-ICE2 checks (see _check_request)
IMPLEMENTATION_VERSION = 0x8070  # MS-ICE2 §2.2.2.2, sent raw (not in the STUN registry: optional range)
MS_ICE2_IMPLEMENTATION_VERSION = 2
ROLE_CONFLICT = 487  # RFC 8445 §7.3.1.1
_TCP_PAIRS = {("active", "passive"), ("passive", "active"), ("so", "so")}
_TCP_OPPOSITE = {"active": "passive", "passive": "active", "so": "so"}
_ICE_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/"


@dataclass(frozen=True, slots=True)
class IceConfig:
    """Timing and behaviour of one profile. RFC values cite their section; MS values say where they come from."""

    profile: Profile
    ta: float  # pacing (RFC 8445 §14.2: 50 ms default)
    rto: float  # initial RTO of a check (RFC 8489 §6.2.1: 500 ms)
    max_transmissions: int  # Rc (RFC 8489 §6.2.1: 7)
    last_wait: int  # Rm (RFC 8489 §6.2.1: 16)
    nomination_wait: float  # after the first valid pair, nominate the best valid pair anyway
    aggressive: bool = False
    keepalive: float = 15.0  # RFC 8445 §11: Tr >= 15 s
    max_pairs: int = 100  # RFC 8445 §6.1.2.5

    @classmethod
    def for_profile(cls, profile: Profile | str, **changes: object) -> IceConfig:
        base = RFC8445 if Profile(profile) is Profile.RFC8445 else MS_ICE2
        if not changes:
            return base
        return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


RFC8445 = IceConfig(Profile.RFC8445, ta=0.05, rto=0.5, max_transmissions=7, last_wait=16, nomination_wait=1.0)
# MS-ICE2: 20 ms pacing and 100 ms first RTO as libnice's OC2007R2 agent paces (stun timer defaults are
# an implementation choice, not MS-ICE2 text); the 3 s checks-phase timer is MS-ICE §3.1.6.2.
MS_ICE2 = IceConfig(Profile.MS_ICE2, ta=0.02, rto=0.1, max_transmissions=7, last_wait=16, nomination_wait=3.0)


class PairState(enum.Enum):
    FROZEN = "frozen"
    WAITING = "waiting"
    IN_PROGRESS = "in-progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(eq=False, slots=True)
class CandidatePair:
    local: Candidate
    remote: Candidate
    priority: int
    state: PairState = PairState.FROZEN
    valid: bool = False  # in the valid list (RFC 8445 §7.2.5.3.2)
    nominated: bool = False
    use_candidate: bool = False  # controlled: a USE-CANDIDATE request came for it (§7.3.1.5)
    valid_pair: CandidatePair | None = None  # the valid pair this pair's check produced
    in_checklist: bool = True

    @property
    def foundation(self) -> tuple[str, str]:
        return self.local.foundation, self.remote.foundation

    @property
    def component(self) -> int:
        return self.local.component

    def __repr__(self) -> str:
        return f"Pair({self.local.describe()} -> {self.remote.describe()} {self.state.value})"


# ------------------------------------------------------------------------------------------------ events


@dataclass(frozen=True, slots=True)
class CheckSent:
    local: Candidate
    remote: Candidate
    transmission: int  # 1 = first, 2.. = retransmissions
    nominate: bool


@dataclass(frozen=True, slots=True)
class CheckSucceeded:
    local: Candidate  # the valid pair's local candidate (may be peer-reflexive)
    remote: Candidate
    rtt: float


@dataclass(frozen=True, slots=True)
class PairFailed:
    local: Candidate
    remote: Candidate
    reason: str


@dataclass(frozen=True, slots=True)
class RoleChanged:
    controlling: bool


@dataclass(frozen=True, slots=True)
class PairSelected:
    component: int
    local: Candidate
    remote: Candidate
    time_to_connected: float


@dataclass(frozen=True, slots=True)
class Failed:
    reason: str


Event = CheckSent | CheckSucceeded | PairFailed | RoleChanged | PairSelected | Failed


@dataclass(slots=True)
class IceStats:
    checks_sent: int = 0  # first transmissions of connectivity checks
    retransmissions: int = 0
    requests_received: int = 0
    responses_received: int = 0
    successes: int = 0
    failures: int = 0
    role_conflicts: int = 0
    rejected: int = 0  # requests answered with an error or dropped (bad integrity, username, …)
    started_at: float | None = None
    connected_at: float | None = None

    @property
    def time_to_connected(self) -> float | None:
        if self.started_at is None or self.connected_at is None:
            return None
        return self.connected_at - self.started_at


@dataclass(eq=False, slots=True)
class _Transaction:
    pair: CandidatePair
    tid: bytes
    data: bytes
    controlling: bool
    nominate: bool
    first_sent: float
    next_at: float
    interval: float
    transmissions: int = 1
    fail_at: float | None = None
    cancelled: bool = False  # RFC 8445 §7.3.1.4: superseded by a triggered check


class IceState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


def random_ice_string(rng: random.Random, size: int) -> str:
    return "".join(rng.choice(_ICE_CHARS) for _ in range(size))


class IceAgent:
    """One ICE agent. See the module docstring for the theory of operation."""

    def __init__(self, config: IceConfig | Profile | str, controlling: bool, rng: random.Random, *,
                 ufrag: str | None = None, pwd: str | None = None, tie_breaker: int | None = None,
                 components: Iterable[int] = (1,)) -> None:
        self.config = config if isinstance(config, IceConfig) else IceConfig.for_profile(config)
        self.profile = self.config.profile
        self.controlling = controlling
        self.rng = rng
        self.local_ufrag = ufrag or random_ice_string(rng, 8)
        self.local_pwd = pwd or random_ice_string(rng, 24)
        self.tie_breaker = tie_breaker if tie_breaker is not None else rng.getrandbits(64)
        self.components = tuple(sorted(set(components)))
        self.remote_ufrag: str | None = None
        self.remote_pwd: str | None = None
        self.local_candidates: list[Candidate] = []
        self.remote_candidates: list[Candidate] = []
        self.pairs: list[CandidatePair] = []
        self.selected: dict[int, CandidatePair] = {}
        self.state = IceState.NEW
        self.stats = IceStats()
        self._foundations: dict[tuple[object, ...], str] = {}
        self._prflx_count = 0
        self._triggered: deque[CandidatePair] = deque()
        self._transactions: dict[bytes, _Transaction] = {}
        self._out: list[tuple[bytes, Address, str]] = []
        self._events: deque[Event] = deque()
        self._next_check_at: float | None = None
        self._last_check_at: float | None = None
        self._first_valid_at: float | None = None
        self._nomination_at: float | None = None
        self._nominating: dict[int, CandidatePair] = {}
        self._keepalive_at: float | None = None

    # ---------------------------------------------------------------------------------- candidates

    def _foundation(self, kind: CandidateType, base_host: str, server: str | None, transport: str) -> str:
        # RFC 8445 §5.1.1.3: same type, base IP, server and transport -> same foundation
        key = (kind, base_host, server, transport)
        if key not in self._foundations:
            self._foundations[key] = str(len(self._foundations) + 1)
        return self._foundations[key]

    def add_local_candidate(self, kind: CandidateType | str, address: Address, *, via: str,
                            base: Address | None = None, component: int = 1, related: Address | None = None,
                            server: str | None = None, ip_index: int = 0, turn_index: int = 0,
                            transport: str = "udp", tcptype: str | None = None,
                            relay_leg: str = "udp") -> Candidate:
        """Add a gathered candidate; its priority and foundation are computed here (RFC 8445 §5.1.2, §5.1.1.3).

        ``via`` names the socket (host, and srflx with that host as base) or relay that sends for it;
        ``relay_leg`` is the transport to the TURN server of a relay candidate (udp 3478 or tcp 443).
        A candidate equal to one already there (same address and base) is redundant (§5.1.3) and not added.
        """
        kind = CandidateType(kind)
        address = Address(*address)
        base = Address(*base) if base is not None else address
        priority = candidate_priority(
            type_preference(self.profile, kind, transport, relay_leg),
            local_preference(self.profile, transport=transport, tcptype=tcptype, turn_index=turn_index,
                             ip_index=ip_index),
            component)
        for existing in self.local_candidates:  # §5.1.3: same address and base: keep the higher priority
            if existing.address == address and existing.base == base and existing.component == component:
                if existing.priority >= priority:
                    return existing
                self.local_candidates.remove(existing)
        candidate = Candidate(kind, address, priority, self._foundation(kind, base.host, server, transport),
                              component, transport, related, base, via, tcptype)
        self.local_candidates.append(candidate)
        if self.remote_candidates:
            self._pair_local(candidate)
        return candidate

    def set_remote_credentials(self, ufrag: str, pwd: str) -> None:
        self.remote_ufrag, self.remote_pwd = ufrag, pwd

    def add_remote_candidate(self, candidate: Candidate) -> None:
        """A candidate from the peer's SDP. Unusable ones (TCP, unknown component) are kept but never paired."""
        for existing in self.remote_candidates:
            if existing.address == candidate.address and existing.component == candidate.component:
                return
        self.remote_candidates.append(candidate)
        for local in list(self.local_candidates):
            self._pair(local, candidate)

    def _pair_local(self, local: Candidate) -> None:
        for remote in list(self.remote_candidates):
            self._pair(local, remote)

    def _pairable(self, local: Candidate, remote: Candidate) -> bool:
        if (local.type not in (CandidateType.HOST, CandidateType.RELAY)  # srflx pruned to its base (§6.1.2.4)
                or local.component != remote.component
                or (":" in local.address.host) != (":" in remote.address.host)):
            return False
        if local.transport == remote.transport == "udp":
            return True
        # RFC 6544 §6.2: active pairs with passive, passive with active, S-O with S-O (host candidates here)
        return (local.transport == remote.transport == "tcp" and local.type is CandidateType.HOST
                and (local.tcptype, remote.tcptype) in _TCP_PAIRS)

    @staticmethod
    def _checkable(pair: CandidatePair) -> bool:
        """RFC 6544 §6.2: a pair whose local candidate is TCP passive is never checked from here (the peer
        connects); it only answers and sends triggered checks on the connection the peer opened."""
        return pair.in_checklist and not (pair.local.transport == "tcp" and pair.local.tcptype == "passive")

    def _pair_priority(self, local: Candidate, remote: Candidate) -> int:
        if self.controlling:
            return pair_priority(local.priority, remote.priority)
        return pair_priority(remote.priority, local.priority)

    def _find_pair(self, local_base: Address, via: str, remote: Address) -> CandidatePair | None:
        for pair in self.pairs:
            if pair.in_checklist and pair.local.via == via and pair.local.base == local_base \
                    and pair.remote.address == remote:
                return pair
        return None

    def _pair(self, local: Candidate, remote: Candidate) -> CandidatePair | None:
        if not self._pairable(local, remote):
            return None
        assert local.base is not None
        existing = self._find_pair(local.base, local.via, remote.address)
        priority = self._pair_priority(local, remote)
        if existing is not None:  # redundant (§6.1.2.4): keep the higher priority
            if priority > existing.priority and existing.state in (PairState.FROZEN, PairState.WAITING):
                existing.local, existing.remote, existing.priority = local, remote, priority
            return existing
        if sum(p.in_checklist for p in self.pairs) >= self.config.max_pairs:
            return None
        busy = any(p.foundation == (local.foundation, remote.foundation)
                   and p.state in (PairState.WAITING, PairState.IN_PROGRESS) for p in self.pairs)
        pair = CandidatePair(local, remote, priority, PairState.FROZEN)
        if not busy and self._checkable(pair):
            pair.state = PairState.WAITING
        self.pairs.append(pair)
        self.pairs.sort(key=lambda p: p.priority, reverse=True)
        self._schedule_check(self._last_check_at)
        return pair

    # ---------------------------------------------------------------------------------- running

    def start(self, now: float) -> None:
        """Begin connectivity checks (needs the remote credentials)."""
        if self.remote_ufrag is None or self.remote_pwd is None:
            raise ValueError("set_remote_credentials() first")
        if self.state is not IceState.NEW:
            return
        self.state = IceState.RUNNING
        self.stats.started_at = now
        self._schedule_check(None, now)
        self._check_done(now)

    def _schedule_check(self, after: float | None, now: float | None = None) -> None:
        if self.state is not IceState.RUNNING or self._next_check_at is not None:
            return
        if after is None:
            self._next_check_at = now if now is not None else 0.0
        else:
            self._next_check_at = after + self.config.ta

    def get_timer(self) -> float | None:
        times = [t.fail_at if t.fail_at is not None else t.next_at for t in self._transactions.values()]
        if self._next_check_at is not None:
            times.append(self._next_check_at)
        if self._nomination_at is not None and self.state is IceState.RUNNING and self.controlling:
            times.append(self._nomination_at)
        if self._keepalive_at is not None:
            times.append(self._keepalive_at)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        for tx in list(self._transactions.values()):
            if tx.fail_at is not None:
                if now >= tx.fail_at:
                    self._transactions.pop(tx.tid, None)
                    if not tx.cancelled:
                        self._pair_failed(tx.pair, "no answer", now, tx.nominate)
            elif now >= tx.next_at:
                self._retransmit(tx, now)
        if self._next_check_at is not None and now >= self._next_check_at:
            self._next_check_at = None
            if self._send_next_check(now):
                self._last_check_at = now
                self._next_check_at = now + self.config.ta
        if self._keepalive_at is not None and now >= self._keepalive_at:
            self._send_keepalives(now)
        if self._nomination_at is not None and now >= self._nomination_at:
            self._nomination_at = None  # fired: _maybe_nominate sees it through _first_valid_at
        self._check_done(now)

    def _retransmit(self, tx: _Transaction, now: float) -> None:
        sent_at = tx.next_at  # the scheduled time, so a late timer does not stretch the schedule
        tx.transmissions += 1
        tx.interval *= 2
        if tx.transmissions >= self.config.max_transmissions:  # RFC 8489 §6.2.1: then wait Rm * RTO
            tx.fail_at = sent_at + self.config.rto * self.config.last_wait
        else:
            tx.next_at = sent_at + tx.interval
        self.stats.retransmissions += 1
        pair = tx.pair
        self._out.append((tx.data, pair.remote.address, pair.local.via))
        self._events.append(CheckSent(pair.local, pair.remote, tx.transmissions, tx.nominate))

    def _send_next_check(self, now: float) -> bool:
        """One paced check (§6.1.4.2). True if one was sent."""
        if self.state is not IceState.RUNNING:
            return False
        while self._triggered:
            triggered = self._triggered.popleft()
            if triggered.state is PairState.WAITING and triggered.in_checklist:
                self._send_check(triggered, now, nominate=self.controlling and self.config.aggressive)
                return True
        pair = self._best_waiting()
        if pair is None:
            self._unfreeze()
            pair = self._best_waiting()
        if pair is None:
            return False
        self._send_check(pair, now, nominate=self.controlling and self.config.aggressive)
        return True

    def _sendable(self) -> bool:
        """Would a paced slot send a check now (triggered, Waiting, or a Frozen pair it may unfreeze)?"""
        if self._triggered:
            return True
        busy = {p.foundation for p in self.pairs if p.state in (PairState.WAITING, PairState.IN_PROGRESS)}
        return any(self._checkable(p) and (p.state is PairState.WAITING or (
            p.state is PairState.FROZEN and p.foundation not in busy)) for p in self.pairs)

    def _best_waiting(self) -> CandidatePair | None:
        return next((p for p in self.pairs if p.state is PairState.WAITING and self._checkable(p)), None)

    def _unfreeze(self) -> None:
        active = {p.foundation for p in self.pairs if p.state in (PairState.WAITING, PairState.IN_PROGRESS)}
        for pair in self.pairs:  # sorted by priority: the best Frozen pair of each idle foundation
            if pair.state is PairState.FROZEN and pair.foundation not in active and self._checkable(pair):
                pair.state = PairState.WAITING
                active.add(pair.foundation)

    def _check_request(self, pair: CandidatePair, tid: bytes, nominate: bool) -> bytes:
        assert self.remote_ufrag is not None and self.remote_pwd is not None
        local = pair.local
        # RFC 8445 §7.1.1: PRIORITY = the priority a peer-reflexive candidate from this base would get
        prflx = candidate_priority(type_preference(self.profile, CandidateType.PRFLX, local.transport),
                                   (local.priority >> 8) & 0xFFFF, local.component)
        attrs: list[Attribute] = [
            attr(stun.USERNAME, f"{self.remote_ufrag}:{self.local_ufrag}"),  # RFC 8445 §7.2.2
            attr(stun.PRIORITY, prflx),
            attr(stun.ICE_CONTROLLING, self.tie_breaker) if self.controlling
            else attr(stun.ICE_CONTROLLED, self.tie_breaker),
        ]
        if nominate:
            attrs.append(attr(stun.USE_CANDIDATE, True))
        if self.profile is Profile.MS_ICE2:
            attrs.append(Attribute(IMPLEMENTATION_VERSION, MS_ICE2_IMPLEMENTATION_VERSION.to_bytes(4, "big")))
            # MS-ICE2 writes attributes unpadded; a legacy MS-TURN relay rounds DATA lengths up to 4 (its
            # lengths count the padding), which would append NULs to an unaligned check. A SOFTWARE value of
            # the right length keeps the whole check a multiple of 4 bytes, so it crosses such relays intact.
            used = sum(4 + len(stun.USERNAME.encode(a.value, b"")) if a.code == stun.AttrType.USERNAME else 0
                       for a in attrs)
            attrs.append(attr(stun.SOFTWARE, SOFTWARE[: 4 + (-used) % 4]))
        message = stun.request(stun.StunMethod.BINDING, tid, *attrs)
        return self._encode(message, stun.short_term_key(self.remote_pwd), self.profile is Profile.MS_ICE2)

    @staticmethod
    def _encode(message: Message, key: bytes | None, ms: bool) -> bytes:
        if ms:
            return msice2.serialize(message, key)
        return message.serialize(key=key, fingerprint=True)

    def _decode(self, data: bytes) -> list[tuple[Message, bool]]:
        """The readings of a datagram: MS-ICE2 (unpadded) first in that profile, then RFC 8489."""
        out: list[tuple[Message, bool]] = []
        forms = (True, False) if self.profile is Profile.MS_ICE2 else (False,)
        declared = 20 + int.from_bytes(data[2:4], "big")
        if 0 < len(data) - declared <= 3 and not data[declared:].strip(b"\x00"):
            data = data[:declared]  # NULs a legacy MS-TURN relay appended (DATA length rounded up to 4)
        for ms in forms:
            try:
                message = stun.parse(data, msice2.DIALECT if ms else stun.STUN)
            except MalformedMessage:
                continue
            if message.has(stun.FINGERPRINT) and not stun.verify_fingerprint(message):
                continue  # e.g. MS-ICE2's legacy copy of a check (CRC-32 typo): the real copy follows
            out.append((message, ms))
        return out

    @staticmethod
    def _authentic(message: Message, ms: bool, key: bytes) -> bool:
        return msice2.verify_integrity(message, key) if ms else stun.verify_integrity(message, key)

    def _send_check(self, pair: CandidatePair, now: float, *, nominate: bool) -> None:
        tid = stun.new_transaction_id(self.rng)
        data = self._check_request(pair, tid, nominate)
        pair.state = PairState.IN_PROGRESS
        tx = _Transaction(pair, tid, data, self.controlling, nominate, now, now + self.config.rto, self.config.rto)
        if self.config.max_transmissions <= 1:
            tx.fail_at = now + self.config.rto * self.config.last_wait
        self._transactions[tid] = tx
        self.stats.checks_sent += 1
        self._out.append((data, pair.remote.address, pair.local.via))
        self._events.append(CheckSent(pair.local, pair.remote, 1, nominate))

    # ---------------------------------------------------------------------------------- input

    def receive(self, data: bytes, addr: tuple[str, int], now: float, via: str) -> bool:
        """Feed one datagram that ``via`` received from ``addr``. False when it is not STUN (application data)."""
        if len(data) < 20 or data[0] > 3 or data[4:8] != stun.MAGIC_COOKIE_BYTES:
            return False  # RFC 7983: 0..3 is STUN; no cookie: not an RFC 5389 check (legacy copies dropped)
        readings = self._decode(data)
        if not readings:
            self.stats.rejected += 1
            return True
        message, ms = readings[0]
        if message.method != stun.StunMethod.BINDING:
            return True
        source = Address(addr[0], addr[1])
        if message.cls is MessageClass.REQUEST:
            key = stun.short_term_key(self.local_pwd)
            message, ms = next(((m, f) for m, f in readings if self._authentic(m, f, key)), readings[0])
            self._on_request(message, ms, source, now, via)
        elif message.cls in (MessageClass.SUCCESS, MessageClass.ERROR) and self.remote_pwd is not None:
            key = stun.short_term_key(self.remote_pwd)
            authentic = next(((m, f) for m, f in readings if self._authentic(m, f, key)), None)
            if authentic is None:
                self.stats.rejected += 1  # RFC 8489 §9.1.4: discard, as if never received
                return True
            self._on_response(authentic[0], source, now, via)
        self._check_done(now)
        return True

    def _reject(self, request: Message, ms: bool, to: Address, via: str, code: int, reason: str) -> None:
        self.stats.rejected += 1
        response = stun.error_response(request, code, reason)
        # RFC 8489 §9.1.3: 400/401 go unsigned (the request could not be authenticated); others are signed.
        key = None if code in (400, 401) else stun.short_term_key(self.local_pwd)
        self._out.append((self._encode(response, key, ms), to, via))

    def _on_request(self, request: Message, ms: bool, source: Address, now: float, via: str) -> None:
        self.stats.requests_received += 1
        username = request.get(stun.USERNAME)
        if username is None or not request.has(stun.MESSAGE_INTEGRITY):
            self._reject(request, ms, source, via, 400, "Bad Request")  # RFC 8489 §9.1.3
            return
        if username.split(":", 1)[0] != self.local_ufrag or \
                not self._authentic(request, ms, stun.short_term_key(self.local_pwd)):
            self._reject(request, ms, source, via, 401, "Unauthenticated")  # RFC 8489 §9.1.3
            return
        priority = request.get(stun.PRIORITY)
        if priority is None:
            self._reject(request, ms, source, via, 400, "Bad Request")  # RFC 8445 §7.3: PRIORITY is mandatory
            return
        # RFC 8445 §7.3.1.1: role conflicts
        theirs_controlling = request.get(stun.ICE_CONTROLLING)
        theirs_controlled = request.get(stun.ICE_CONTROLLED)
        if self.controlling and theirs_controlling is not None:
            if self.tie_breaker >= theirs_controlling:
                self.stats.role_conflicts += 1
                self._reject(request, ms, source, via, ROLE_CONFLICT, "Role Conflict")
                return
            self._set_role(False)
        elif not self.controlling and theirs_controlled is not None:
            if self.tie_breaker >= theirs_controlled:
                self._set_role(True)
            else:
                self.stats.role_conflicts += 1
                self._reject(request, ms, source, via, ROLE_CONFLICT, "Role Conflict")
                return
        attrs: list[Attribute] = [attr(stun.XOR_MAPPED_ADDRESS, source)]  # RFC 8445 §7.3.1.2
        if self.profile is Profile.MS_ICE2:  # MS-ICE2 §3.1.4.8.2: also stops the peer's legacy copies
            attrs.append(Attribute(IMPLEMENTATION_VERSION, MS_ICE2_IMPLEMENTATION_VERSION.to_bytes(4, "big")))
        response = stun.success_response(request, *attrs)
        self._out.append((self._encode(response, stun.short_term_key(self.local_pwd), ms), source, via))
        local = next((c for c in self.local_candidates if c.via == via
                      and c.type in (CandidateType.HOST, CandidateType.RELAY)), None)
        if local is None:
            return
        remote = next((c for c in self.remote_candidates
                       if c.address == source and c.component == local.component), None)
        if remote is None:  # RFC 8445 §7.3.1.3: a peer-reflexive remote candidate
            self._prflx_count += 1
            remote = Candidate(CandidateType.PRFLX, source, priority, f"prflx{self._prflx_count}",
                               local.component, local.transport,
                               tcptype=_TCP_OPPOSITE.get(local.tcptype or "") if local.transport == "tcp" else None)
            self.remote_candidates.append(remote)
        pair = self._find_pair(local.base or local.address, via, source) or self._pair(local, remote)
        if pair is None:
            return
        use_candidate = request.has(stun.USE_CANDIDATE) and not self.controlling
        if pair.state is PairState.SUCCEEDED:
            if use_candidate and pair.valid_pair is not None:  # §7.3.1.5
                self._nominate(pair.valid_pair, now)
            return
        if self.state is not IceState.RUNNING and self.state is not IceState.NEW:
            return
        if use_candidate:
            pair.use_candidate = True
        if pair.state is PairState.IN_PROGRESS:  # §7.3.1.4: cancel the running check, trigger a new one
            for tx in self._transactions.values():
                if tx.pair is pair and not tx.nominate and not tx.cancelled:
                    tx.cancelled = True
                    rc, rto = self.config.max_transmissions, self.config.rto
                    tx.fail_at = tx.first_sent + rto * ((1 << (rc - 1)) - 1 + self.config.last_wait)
                    pair.state = PairState.FAILED  # re-armed just below
        if pair.state in (PairState.FROZEN, PairState.WAITING, PairState.FAILED):  # §7.3.1.4
            pair.state = PairState.WAITING
            if pair not in self._triggered:
                self._triggered.append(pair)
            self._schedule_check(self._last_check_at, now)

    def _set_role(self, controlling: bool) -> None:
        self.controlling = controlling
        for pair in self.pairs:
            pair.priority = self._pair_priority(pair.local, pair.remote)
        self.pairs.sort(key=lambda p: p.priority, reverse=True)
        self._events.append(RoleChanged(controlling))

    def _on_response(self, response: Message, source: Address, now: float, via: str) -> None:
        tx = self._transactions.get(response.transaction_id)
        if tx is None:
            return
        self._transactions.pop(tx.tid)
        self.stats.responses_received += 1
        pair = tx.pair
        if pair.state is PairState.SUCCEEDED and tx.cancelled:
            return  # the triggered check that replaced it already succeeded
        if source != pair.remote.address or via != pair.local.via:  # §7.2.5.2.1: non-symmetric
            self._pair_failed(pair, "non-symmetric response", now, tx.nominate)
            return
        if response.cls is MessageClass.ERROR:
            error = response.get(stun.ERROR_CODE)
            if error is not None and error.code == ROLE_CONFLICT:  # §7.2.5.1
                self.stats.role_conflicts += 1
                if tx.controlling == self.controlling:
                    self._set_role(not tx.controlling)
                pair.state = PairState.WAITING
                self._triggered.append(pair)
                self._schedule_check(self._last_check_at, now)
                return
            self._pair_failed(pair, f"error {error.code if error else '?'}", now, tx.nominate)
            return
        for sibling in list(self._transactions.values()):  # an answered pair needs no other check
            if sibling.pair is pair and not sibling.nominate:
                del self._transactions[sibling.tid]
        mapped = response.get(stun.XOR_MAPPED_ADDRESS)
        if mapped is None:
            self._pair_failed(pair, "success without XOR-MAPPED-ADDRESS", now, tx.nominate)
            return
        self.stats.successes += 1
        valid = self._valid_pair_for(pair, mapped, tx)
        pair.state = PairState.SUCCEEDED
        pair.valid_pair = valid
        valid.state = PairState.SUCCEEDED
        valid.valid = True
        for other in self.pairs:  # §7.2.5.3.3: unfreeze the same foundation
            if other.state is PairState.FROZEN and other.foundation == pair.foundation and self._checkable(other):
                other.state = PairState.WAITING
        if self._first_valid_at is None:
            self._first_valid_at = now
            if not self.config.aggressive:  # MS-ICE §3.1.6.2 checks-phase timer (ms-ice2), nomination wait (rfc)
                self._nomination_at = now + self.config.nomination_wait
        self._events.append(CheckSucceeded(valid.local, valid.remote, now - tx.first_sent))
        if (tx.nominate and tx.controlling and self.controlling) or (not self.controlling and pair.use_candidate):
            self._nominate(valid, now)

    def _valid_pair_for(self, pair: CandidatePair, mapped: Address, tx: _Transaction) -> CandidatePair:
        """RFC 8445 §7.2.5.3.1/§7.2.5.3.2: the valid pair's local candidate is the one at XOR-MAPPED-ADDRESS."""
        local = next((c for c in self.local_candidates
                      if c.address == mapped and c.component == pair.local.component), None)
        if local is None:
            sent = self._decode(tx.data)[0][0].get(stun.PRIORITY) or pair.local.priority
            local = Candidate(CandidateType.PRFLX, mapped, sent,
                              self._foundation(CandidateType.PRFLX, (pair.local.base or mapped).host, None,
                                               pair.local.transport),
                              pair.local.component, pair.local.transport, None, pair.local.base, pair.local.via,
                              pair.local.tcptype)
            self.local_candidates.append(local)
        if local is pair.local:
            return pair
        for other in self.pairs:
            if other.local is local and other.remote is pair.remote:
                return other
        valid = CandidatePair(local, pair.remote, self._pair_priority(local, pair.remote), PairState.SUCCEEDED,
                              in_checklist=False)
        self.pairs.append(valid)
        self.pairs.sort(key=lambda p: p.priority, reverse=True)
        return valid

    def _pair_failed(self, pair: CandidatePair, reason: str, now: float, nominating: bool) -> None:
        pair.state = PairState.FAILED
        self.stats.failures += 1
        self._events.append(PairFailed(pair.local, pair.remote, reason))
        if nominating:
            self._nominating.pop(pair.component, None)
            if pair.valid_pair is not None:
                pair.valid_pair.valid = False
            pair.valid = False
        self._check_done(now)

    # ---------------------------------------------------------------------------------- nomination

    def _nominate(self, pair: CandidatePair, now: float) -> None:
        if pair.nominated:
            return
        pair.nominated = True
        self._nominating.pop(pair.component, None)
        current = self.selected.get(pair.component)
        if current is not None and pair.priority <= current.priority:
            return
        self.selected[pair.component] = pair
        elapsed = now - (self.stats.started_at if self.stats.started_at is not None else now)
        if self.state is IceState.COMPLETED:  # controlled: a better pair was nominated (§8.1.2)
            self._events.append(PairSelected(pair.component, pair.local, pair.remote, elapsed))
        elif set(self.selected) >= set(self.components):
            self._complete(now)
            for component in self.components:
                chosen = self.selected[component]
                self._events.append(PairSelected(component, chosen.local, chosen.remote, elapsed))

    def _complete(self, now: float) -> None:
        if self.state is IceState.COMPLETED:
            return
        self.state = IceState.COMPLETED
        self.stats.connected_at = now
        self._next_check_at = None
        self._triggered.clear()
        for tid, tx in list(self._transactions.items()):  # §8.1.2: stop checking
            if not tx.nominate:
                del self._transactions[tid]
        for pair in self.pairs:
            if pair.state in (PairState.FROZEN, PairState.WAITING):
                pair.state = PairState.FAILED
        self._keepalive_at = now + self.config.keepalive

    def _maybe_nominate(self, now: float) -> None:
        """Controlling, regular nomination (§8.1.1): pick the best valid pair of each component."""
        if not self.controlling or self.config.aggressive or self.state is not IceState.RUNNING:
            return
        timer_fired = self._first_valid_at is not None and now >= self._first_valid_at + self.config.nomination_wait
        for component in self.components:
            if component in self._nominating or component in self.selected:
                continue
            valid = [p for p in self.pairs if p.valid and p.component == component]
            if not valid:
                continue
            best = max(valid, key=lambda p: p.priority)
            pending = any(p.component == component and p.in_checklist and p.priority > best.priority
                          and (p.state is PairState.IN_PROGRESS
                               or (p.state in (PairState.FROZEN, PairState.WAITING)
                                   and (self._checkable(p) or p in self._triggered)))
                          for p in self.pairs)
            if pending and not timer_fired:
                continue
            self._nominating[component] = best
            self._send_check(best, now, nominate=True)

    def _check_done(self, now: float) -> None:
        if self.state is not IceState.RUNNING:
            return
        if self._next_check_at is None and self._sendable():
            self._schedule_check(self._last_check_at, now)  # e.g. a success unfroze pairs after pacing went idle
        self._maybe_nominate(now)
        if self.state is not IceState.RUNNING:
            return
        busy = self._transactions or self._triggered or any(
            p.state in (PairState.FROZEN, PairState.WAITING) and self._checkable(p) for p in self.pairs)
        if busy:
            return
        if self.controlling and not self.config.aggressive:
            for component in self.components:
                if component not in self.selected and any(p.valid and p.component == component for p in self.pairs):
                    return  # nomination will be retried with the next valid pair
        if any(p.valid for p in self.pairs) and not self.controlling:
            return  # controlled: valid pairs, waiting for the controlling agent to nominate
        if not self.pairs and not self.remote_candidates:
            return  # nothing to check yet: candidates may still come
        self.state = IceState.FAILED
        self._events.append(Failed("every candidate pair failed" if self.pairs else "no candidate pair"))

    def _send_keepalives(self, now: float) -> None:
        for pair in self.selected.values():
            tid = stun.new_transaction_id(self.rng)
            data = self._encode(stun.indication(stun.StunMethod.BINDING, tid), None, self.profile is Profile.MS_ICE2)
            self._out.append((data, pair.remote.address, pair.local.via))
        self._keepalive_at = now + self.config.keepalive

    # ---------------------------------------------------------------------------------- output

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address, str]]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    @property
    def selected_pair(self) -> CandidatePair | None:
        """The selected pair of the first component (RTP), once ICE completed."""
        return self.selected.get(self.components[0]) if self.components else None
