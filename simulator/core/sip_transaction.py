"""SIP transactions (RFC 3261 §17), sans-I/O.

Theory of operation
-------------------
There are four kinds of transaction (client/server × INVITE/non-INVITE). Each is a small state machine
written as data: :data:`TRANSITIONS` maps ``(kind, state, input)`` to a :class:`Transition` — the next
state, the effects to run (:class:`Action`) and the timers to start. Inputs are what can happen to a
transaction: a response or request received from the wire, a response the transaction user (TU) sends,
a timer firing, a transport error. An input with no row is *absorbed*: a stale timer, a retransmission
that needs no answer. A TU send with no row is a programming error (:class:`TransactionError`).

Entering a new state cancels every running timer except those :data:`SURVIVING_TIMERS` lists for it
(a client non-INVITE keeps E and F from Trying into Proceeding; everything else starts afresh).

Timers follow RFC 3261 Table 4. Over reliable transports (TCP, TLS — the Via transport is not UDP)
the retransmission timers A, E, G are never started and the wait timers D, I, J, K are zero, so the
transaction terminates at once (§17.1.1.2, §17.1.2.2, §17.2.1, §17.2.2).

Nothing reads a clock: every call takes ``now`` (seconds, any monotonic origin). The I/O shell sends
what :meth:`TransactionLayer.messages_to_send` returns, hands :meth:`TransactionLayer.next_event`
results to the TU, and arms one timer at :meth:`TransactionLayer.get_timer` that calls
:meth:`TransactionLayer.handle_timer`. :class:`TransactionLayer` matches messages to transactions by
branch + sent-by + method (§17.1.3, §17.2.3) and creates server transactions for new requests. The peer a
message comes from or goes to is opaque (the type parameter ``P``: an address, a connection object).
The shipped TU is :class:`~simulator.core.sip_element.SipElement` (proxy, registrar, user agent).

Every message of a SIP server runs through this table, so the machinery runs a compiled copy of it
(:data:`_ROWS`: actions resolved to their functions) and, over reliable transports, :data:`_RELIABLE_ROWS`,
where a row that starts only a zero wait timer is merged with the row that timer fires: Completed is
left the instant it is entered anyway, so the transaction goes to Terminated in one step, with the same
effects in the same order (a test drives both tables side by side).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import Any, Generic, NamedTuple, TypeAlias, TypeVar

from simulator.wire.sip import (
    BRANCH_MAGIC_COOKIE,
    SipMessage,
    SipRequest,
    SipResponse,
    make_ack,
    make_response,
)

P = TypeVar("P")  # the peer a message comes from or goes to, opaque to the core: (host, port), a connection …


class TransactionError(Exception):
    """The TU asked for something the transaction cannot do (not a wire error)."""


class _Symbol(Enum):
    """An enum hashed by identity (members compare by identity anyway): ``Enum.__hash__`` is a Python function,
    and the table below is looked up on every message.
    """

    __hash__ = object.__hash__


class Kind(_Symbol):
    """The four transaction machines of RFC 3261 §17."""

    CLIENT_INVITE = auto()  # §17.1.1, Figure 5
    CLIENT_NON_INVITE = auto()  # §17.1.2, Figure 6
    SERVER_INVITE = auto()  # §17.2.1, Figure 7
    SERVER_NON_INVITE = auto()  # §17.2.2, Figure 8


class State(_Symbol):
    """Transaction states (RFC 3261 §17)."""

    CALLING = auto()
    TRYING = auto()
    PROCEEDING = auto()
    COMPLETED = auto()
    CONFIRMED = auto()
    TERMINATED = auto()


class Timer(_Symbol):
    """RFC 3261 Table 4 timers."""

    A = "A"  # INVITE request retransmit (UDP)
    B = "B"  # INVITE transaction timeout
    D = "D"  # wait for response retransmits (client INVITE)
    E = "E"  # non-INVITE request retransmit (UDP)
    F = "F"  # non-INVITE transaction timeout
    G = "G"  # INVITE final response retransmit (UDP)
    H = "H"  # wait for ACK
    I = "I"  # wait for ACK retransmits  # noqa: E741 — the RFC's name
    J = "J"  # wait for non-INVITE request retransmits
    K = "K"  # wait for non-INVITE response retransmits


class Input(_Symbol):
    """Non-timer inputs."""

    RECV_1XX = auto()
    RECV_2XX = auto()
    RECV_3XX_6XX = auto()
    RECV_REQUEST = auto()  # a retransmission of the transaction's request
    RECV_ACK = auto()
    SEND_1XX = auto()
    SEND_2XX = auto()
    SEND_3XX_6XX = auto()
    TRANSPORT_ERROR = auto()  # §17.1.4, §17.2.4


class Action(_Symbol):
    """Effects of a transition."""

    PASS_UP = auto()  # hand the received message to the TU
    SEND_REQUEST = auto()  # (re)transmit the transaction's request
    SEND_RESPONSE = auto()  # transmit the TU's response and remember it
    RESEND_RESPONSE = auto()  # retransmit the last response sent
    SEND_ACK = auto()  # §17.1.1.3: ACK the non-2xx final response
    RESTART_DOUBLED = auto()  # the fired timer again, interval × 2 (A)
    RESTART_DOUBLED_CAPPED = auto()  # the fired timer again, min(interval × 2, T2) (E in Trying, G)
    RESTART_AT_T2 = auto()  # the fired timer again at T2 (E in Proceeding)
    REPORT_TIMEOUT = auto()  # tell the TU (B, F: 408 equivalent; H: no ACK)
    REPORT_TRANSPORT_ERROR = auto()


class Transition(NamedTuple):
    """One row of the table."""

    target: State
    actions: tuple[Action, ...] = ()
    start: tuple[Timer, ...] = ()


TransitionInput: TypeAlias = Input | Timer

_CI, _CNI, _SI, _SNI = Kind.CLIENT_INVITE, Kind.CLIENT_NON_INVITE, Kind.SERVER_INVITE, Kind.SERVER_NON_INVITE
_S = State
_A = Action

# What a new transaction does (§17.1.1.2, §17.1.2.2, §17.2.1, §17.2.2).
INITIAL: dict[Kind, Transition] = {
    _CI: Transition(_S.CALLING, (_A.SEND_REQUEST,), (Timer.A, Timer.B)),
    _CNI: Transition(_S.TRYING, (_A.SEND_REQUEST,), (Timer.E, Timer.F)),
    _SI: Transition(_S.PROCEEDING, (_A.PASS_UP,)),
    _SNI: Transition(_S.TRYING, (_A.PASS_UP,)),
}

TRANSITIONS: dict[tuple[Kind, State, TransitionInput], Transition] = {
    # Client INVITE, §17.1.1.2 / Figure 5
    (_CI, _S.CALLING, Timer.A): Transition(_S.CALLING, (_A.SEND_REQUEST, _A.RESTART_DOUBLED)),
    (_CI, _S.CALLING, Timer.B): Transition(_S.TERMINATED, (_A.REPORT_TIMEOUT,)),
    (_CI, _S.CALLING, Input.RECV_1XX): Transition(_S.PROCEEDING, (_A.PASS_UP,)),
    (_CI, _S.PROCEEDING, Input.RECV_1XX): Transition(_S.PROCEEDING, (_A.PASS_UP,)),
    (_CI, _S.CALLING, Input.RECV_2XX): Transition(_S.TERMINATED, (_A.PASS_UP,)),
    (_CI, _S.PROCEEDING, Input.RECV_2XX): Transition(_S.TERMINATED, (_A.PASS_UP,)),
    (_CI, _S.CALLING, Input.RECV_3XX_6XX): Transition(_S.COMPLETED, (_A.SEND_ACK, _A.PASS_UP), (Timer.D,)),
    (_CI, _S.PROCEEDING, Input.RECV_3XX_6XX): Transition(_S.COMPLETED, (_A.SEND_ACK, _A.PASS_UP), (Timer.D,)),
    (_CI, _S.COMPLETED, Input.RECV_3XX_6XX): Transition(_S.COMPLETED, (_A.SEND_ACK,)),  # absorb, re-ACK
    (_CI, _S.COMPLETED, Timer.D): Transition(_S.TERMINATED),
    # Client non-INVITE, §17.1.2.2 / Figure 6
    (_CNI, _S.TRYING, Timer.E): Transition(_S.TRYING, (_A.SEND_REQUEST, _A.RESTART_DOUBLED_CAPPED)),
    (_CNI, _S.TRYING, Timer.F): Transition(_S.TERMINATED, (_A.REPORT_TIMEOUT,)),
    (_CNI, _S.TRYING, Input.RECV_1XX): Transition(_S.PROCEEDING, (_A.PASS_UP,)),
    (_CNI, _S.TRYING, Input.RECV_2XX): Transition(_S.COMPLETED, (_A.PASS_UP,), (Timer.K,)),
    (_CNI, _S.TRYING, Input.RECV_3XX_6XX): Transition(_S.COMPLETED, (_A.PASS_UP,), (Timer.K,)),
    (_CNI, _S.PROCEEDING, Timer.E): Transition(_S.PROCEEDING, (_A.SEND_REQUEST, _A.RESTART_AT_T2)),
    (_CNI, _S.PROCEEDING, Timer.F): Transition(_S.TERMINATED, (_A.REPORT_TIMEOUT,)),
    (_CNI, _S.PROCEEDING, Input.RECV_1XX): Transition(_S.PROCEEDING, (_A.PASS_UP,)),
    (_CNI, _S.PROCEEDING, Input.RECV_2XX): Transition(_S.COMPLETED, (_A.PASS_UP,), (Timer.K,)),
    (_CNI, _S.PROCEEDING, Input.RECV_3XX_6XX): Transition(_S.COMPLETED, (_A.PASS_UP,), (Timer.K,)),
    (_CNI, _S.COMPLETED, Timer.K): Transition(_S.TERMINATED),
    # Server INVITE, §17.2.1 / Figure 7
    (_SI, _S.PROCEEDING, Input.RECV_REQUEST): Transition(_S.PROCEEDING, (_A.RESEND_RESPONSE,)),
    (_SI, _S.PROCEEDING, Input.SEND_1XX): Transition(_S.PROCEEDING, (_A.SEND_RESPONSE,)),
    (_SI, _S.PROCEEDING, Input.SEND_2XX): Transition(_S.TERMINATED, (_A.SEND_RESPONSE,)),
    (_SI, _S.PROCEEDING, Input.SEND_3XX_6XX): Transition(_S.COMPLETED, (_A.SEND_RESPONSE,), (Timer.G, Timer.H)),
    (_SI, _S.COMPLETED, Input.RECV_REQUEST): Transition(_S.COMPLETED, (_A.RESEND_RESPONSE,)),
    (_SI, _S.COMPLETED, Timer.G): Transition(_S.COMPLETED, (_A.RESEND_RESPONSE, _A.RESTART_DOUBLED_CAPPED)),
    (_SI, _S.COMPLETED, Timer.H): Transition(_S.TERMINATED, (_A.REPORT_TIMEOUT,)),
    (_SI, _S.COMPLETED, Input.RECV_ACK): Transition(_S.CONFIRMED, (), (Timer.I,)),
    (_SI, _S.CONFIRMED, Timer.I): Transition(_S.TERMINATED),
    # Server non-INVITE, §17.2.2 / Figure 8 (a retransmission in Trying is discarded: no row)
    (_SNI, _S.TRYING, Input.SEND_1XX): Transition(_S.PROCEEDING, (_A.SEND_RESPONSE,)),
    (_SNI, _S.TRYING, Input.SEND_2XX): Transition(_S.COMPLETED, (_A.SEND_RESPONSE,), (Timer.J,)),
    (_SNI, _S.TRYING, Input.SEND_3XX_6XX): Transition(_S.COMPLETED, (_A.SEND_RESPONSE,), (Timer.J,)),
    (_SNI, _S.PROCEEDING, Input.RECV_REQUEST): Transition(_S.PROCEEDING, (_A.RESEND_RESPONSE,)),
    (_SNI, _S.PROCEEDING, Input.SEND_1XX): Transition(_S.PROCEEDING, (_A.SEND_RESPONSE,)),
    (_SNI, _S.PROCEEDING, Input.SEND_2XX): Transition(_S.COMPLETED, (_A.SEND_RESPONSE,), (Timer.J,)),
    (_SNI, _S.PROCEEDING, Input.SEND_3XX_6XX): Transition(_S.COMPLETED, (_A.SEND_RESPONSE,), (Timer.J,)),
    (_SNI, _S.COMPLETED, Input.RECV_REQUEST): Transition(_S.COMPLETED, (_A.RESEND_RESPONSE,)),
    (_SNI, _S.COMPLETED, Timer.J): Transition(_S.TERMINATED),
}

# §17.1.4 / §17.2.4: a transport failure ends the transaction in any live state.
for (_kind, _state, _input), _row in list(TRANSITIONS.items()):
    if _state is not _S.TERMINATED:
        TRANSITIONS.setdefault(
            (_kind, _state, Input.TRANSPORT_ERROR), Transition(_S.TERMINATED, (_A.REPORT_TRANSPORT_ERROR,))
        )

SURVIVING_TIMERS: dict[tuple[Kind, State], frozenset[Timer]] = {
    (_CNI, _S.PROCEEDING): frozenset({Timer.E, Timer.F}),  # §17.1.2.2: E keeps firing, F still bounds it
}

_TU_INPUTS = frozenset({Input.SEND_1XX, Input.SEND_2XX, Input.SEND_3XX_6XX})
_RECV_BY_CLASS = {1: Input.RECV_1XX, 2: Input.RECV_2XX}
_SEND_BY_CLASS = {1: Input.SEND_1XX, 2: Input.SEND_2XX}


@dataclass(frozen=True, slots=True)
class TimerSettings:
    """RFC 3261 §17.1.1.1 / Table 4 base values, seconds."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    timer_d: float = 32.0  # "at least 32 s" for unreliable transports
    _reliable: dict[Timer, float | None] = field(init=False, repr=False, compare=False, hash=False)
    _unreliable: dict[Timer, float | None] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_reliable", {t: f(self) for t, f in _RELIABLE_INTERVALS.items()})
        object.__setattr__(self, "_unreliable", {t: f(self) for t, f in _UNRELIABLE_INTERVALS.items()})

    def initial(self, timer: Timer, reliable: bool) -> float | None:
        """First interval of ``timer``; ``None`` when it is not started on this transport."""
        return self.intervals(reliable)[timer]

    def intervals(self, reliable: bool) -> dict[Timer, float | None]:
        """Every timer's first interval on a reliable or unreliable transport (read-only)."""
        return self._reliable if reliable else self._unreliable


_UNRELIABLE_INTERVALS: dict[Timer, Callable[[TimerSettings], float | None]] = {
    Timer.A: lambda s: s.t1,
    Timer.B: lambda s: 64 * s.t1,
    Timer.D: lambda s: s.timer_d,
    Timer.E: lambda s: s.t1,
    Timer.F: lambda s: 64 * s.t1,
    Timer.G: lambda s: s.t1,
    Timer.H: lambda s: 64 * s.t1,
    Timer.I: lambda s: s.t4,
    Timer.J: lambda s: 64 * s.t1,
    Timer.K: lambda s: s.t4,
}
_RELIABLE_INTERVALS: dict[Timer, Callable[[TimerSettings], float | None]] = {
    **_UNRELIABLE_INTERVALS,
    Timer.A: lambda s: None,
    Timer.E: lambda s: None,
    Timer.G: lambda s: None,
    Timer.D: lambda s: 0.0,
    Timer.I: lambda s: 0.0,
    Timer.J: lambda s: 0.0,
    Timer.K: lambda s: 0.0,
}


_DEFAULT_SETTINGS = TimerSettings()


class TransactionKey(NamedTuple):
    """Matching key (§17.1.3: branch + CSeq method; §17.2.3: branch + sent-by + method, ACK → INVITE).

    A tuple, so hashing it (every dict lookup of every message) runs in C.
    """

    branch: str
    method: str
    sent_by: str = ""
    server: bool = False


def client_key(message: SipMessage) -> TransactionKey:
    """Key of the client transaction a request belongs to or a response answers (§17.1.3)."""
    return TransactionKey(_branch(message), message.cseq.method, "", False)


def server_key(request: SipRequest) -> TransactionKey:
    """Key of the server transaction a request belongs to (§17.2.3; ACK matches its INVITE)."""
    method = "INVITE" if request.method == "ACK" else request.method
    return TransactionKey(_branch(request), method, request.top_via.sent_by.lower(), True)


def _branch(message: SipMessage) -> str:
    via = message.top_via
    branch = via.branch
    if branch and branch.startswith(BRANCH_MAGIC_COOKIE):
        return branch
    # RFC 2543 peer (§17.2.3 second half), approximated: Call-ID + CSeq number + From tag + sent-by.
    return f"2543|{message.call_id}|{message.cseq.seq}|{message.from_.tag}|{via.sent_by}"


# ------------------------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class RequestReceived(Generic[P]):
    """A new request for the TU (server transaction ``key`` created)."""

    key: TransactionKey
    request: SipRequest
    peer: P


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """A response for the TU from client transaction ``key``."""

    key: TransactionKey
    response: SipResponse


@dataclass(frozen=True, slots=True)
class TransactionTimedOut:
    """Timer B or F (no final response: the TU acts as on 408, §8.1.3.1) or H (no ACK, §17.2.1)."""

    key: TransactionKey
    timer: Timer


@dataclass(frozen=True, slots=True)
class TransportFailed:
    """The transport reported an error (§17.1.4, §17.2.4)."""

    key: TransactionKey


@dataclass(frozen=True, slots=True)
class TransactionTerminated:
    """The transaction is gone; later messages with its key start a new one or are stray."""

    key: TransactionKey


@dataclass(frozen=True, slots=True)
class StrayResponse(Generic[P]):
    """A response matching no client transaction (2xx retransmissions to INVITE, §17.1.1.2)."""

    response: SipResponse
    peer: P


@dataclass(frozen=True, slots=True)
class StrayAck(Generic[P]):
    """An ACK matching no server transaction: the ACK for a 2xx, the TU's (dialog's) business (§17.2.1)."""

    request: SipRequest
    peer: P


TransactionEvent: TypeAlias = (
    RequestReceived[P]
    | ResponseReceived
    | TransactionTimedOut
    | TransportFailed
    | TransactionTerminated
    | StrayResponse[P]
    | StrayAck[P]
)


@dataclass(frozen=True, slots=True)
class Outgoing(Generic[P]):
    """A message to write to ``peer``."""

    message: SipMessage
    peer: P


# ------------------------------------------------------------------------------------- transaction


class Transaction(Generic[P]):
    """One transaction; see the module docstring.

    Build client transactions with :meth:`client` and server ones with :meth:`server`. ``events`` and
    ``outbox`` may be shared with a :class:`TransactionLayer`; ``on_timer`` tells it a deadline changed;
    ``report_terminated`` says whether its end is queued as :class:`TransactionTerminated`.
    """

    __slots__ = (
        "_deadlines",
        "_initial",
        "_intervals",
        "_rows",
        "ack",
        "events",
        "key",
        "kind",
        "last_response",
        "on_timer",
        "outbox",
        "peer",
        "reliable",
        "report_terminated",
        "request",
        "settings",
        "state",
    )

    def __init__(self, kind: Kind, request: SipRequest, key: TransactionKey, reliable: bool, peer: P,
                 settings: TimerSettings, events: deque[TransactionEvent[P]], outbox: deque[Outgoing[P]],
                 on_timer: Callable[[Transaction[P], Timer, float], None] | None, report_terminated: bool) -> None:
        self.kind = kind
        self.request = request
        self.key = key
        self.reliable = reliable
        self.peer = peer
        self.settings = settings
        self.events = events
        self.outbox = outbox
        self.on_timer = on_timer
        self.report_terminated = report_terminated
        self.state = State.TERMINATED  # until the initial row is entered
        self.last_response: SipResponse | None = None
        self.ack: SipRequest | None = None
        self._deadlines: dict[Timer, float] = {}
        self._intervals: dict[Timer, float] | None = None  # of the retransmission timers (A, E, G), doubled on restart
        self._initial = settings._reliable if reliable else settings._unreliable
        self._rows = _RELIABLE_ROWS if reliable else _ROWS

    @classmethod
    def client(
        cls,
        request: SipRequest,
        now: float,
        *,
        peer: P,
        reliable: bool | None = None,
        settings: TimerSettings | None = None,
        events: deque[TransactionEvent[P]] | None = None,
        outbox: deque[Outgoing[P]] | None = None,
        on_timer: Callable[[Transaction[P], Timer, float], None] | None = None,
        key: TransactionKey | None = None,
        report_terminated: bool = True,
    ) -> Transaction[P]:
        """Start a client transaction and queue ``request`` for sending (§17.1.1.2, §17.1.2.2); ``key`` when known."""
        if request.method == "ACK":
            raise TransactionError("ACK never has a client transaction (RFC 3261 §17.1.1.3, §13.2.2.4)")
        kind = Kind.CLIENT_INVITE if request.method == "INVITE" else Kind.CLIENT_NON_INVITE
        return cls._start(kind, request, key or client_key(request), now, None, peer, reliable, settings, events,
                          outbox, on_timer, report_terminated)

    @classmethod
    def server(
        cls,
        request: SipRequest,
        now: float,
        *,
        peer: P,
        reliable: bool | None = None,
        settings: TimerSettings | None = None,
        events: deque[TransactionEvent[P]] | None = None,
        outbox: deque[Outgoing[P]] | None = None,
        on_timer: Callable[[Transaction[P], Timer, float], None] | None = None,
        key: TransactionKey | None = None,
        report_terminated: bool = True,
    ) -> Transaction[P]:
        """Start a server transaction for a new request and pass it to the TU (§17.2); ``key`` when known."""
        if request.method == "ACK":
            raise TransactionError("ACK never creates a server transaction (RFC 3261 §17.2.3)")
        kind = Kind.SERVER_INVITE if request.method == "INVITE" else Kind.SERVER_NON_INVITE
        return cls._start(kind, request, key or server_key(request), now, request, peer, reliable, settings, events,
                          outbox, on_timer, report_terminated)

    @classmethod
    def _start(
        cls,
        kind: Kind,
        request: SipRequest,
        key: TransactionKey,
        now: float,
        received: SipRequest | None,
        peer: P,
        reliable: bool | None,
        settings: TimerSettings | None,
        events: deque[TransactionEvent[P]] | None,
        outbox: deque[Outgoing[P]] | None,
        on_timer: Callable[[Transaction[P], Timer, float], None] | None,
        report_terminated: bool = True,
    ) -> Transaction[P]:
        txn = cls(kind, request, key, request.top_via.reliable if reliable is None else reliable, peer,
                  settings or _DEFAULT_SETTINGS, events if events is not None else deque(),
                  outbox if outbox is not None else deque(), on_timer, report_terminated)
        txn._enter(_INITIAL_ROWS[kind], now, None, received)
        return txn

    @property
    def is_server(self) -> bool:
        return self.kind in _SERVER_KINDS

    @property
    def terminated(self) -> bool:
        return self.state is State.TERMINATED

    # -- inputs

    def receive(self, message: SipMessage, now: float) -> None:
        """A message from the wire that matched this transaction."""
        if isinstance(message, SipResponse):
            if self.kind in _SERVER_KINDS:
                return
            inp = _RECV_BY_CLASS.get(message.status // 100, Input.RECV_3XX_6XX)
        else:
            if self.kind not in _SERVER_KINDS:
                return
            inp = Input.RECV_ACK if message.method == "ACK" else Input.RECV_REQUEST
        self._apply(inp, now, message)

    def send(self, response: SipResponse, now: float) -> None:
        """The TU's response (server transactions only)."""
        if self.kind not in _SERVER_KINDS:
            raise TransactionError("only server transactions send responses")
        self._apply(_SEND_BY_CLASS.get(response.status // 100, Input.SEND_3XX_6XX), now, response)

    def handle_transport_error(self, now: float) -> None:
        """The transport could not deliver a message of this transaction."""
        self._apply(Input.TRANSPORT_ERROR, now, None)

    def get_timer(self) -> float | None:
        """Earliest deadline, ``None`` when no timer runs."""
        return min(self._deadlines.values(), default=None)

    def handle_timer(self, now: float) -> None:
        """Fire every timer whose deadline is ``<= now`` (earliest first)."""
        while self._deadlines:
            timer, deadline = min(self._deadlines.items(), key=lambda item: item[1])
            if deadline > now:
                return
            del self._deadlines[timer]
            self._apply(timer, now, None)

    def timer_deadline(self, timer: Timer) -> float | None:
        """Deadline of one timer, ``None`` when it is not running."""
        return self._deadlines.get(timer)

    def next_event(self) -> TransactionEvent[P] | None:
        """Next event for the TU, ``None`` when none is queued."""
        return self.events.popleft() if self.events else None

    def messages_to_send(self) -> list[Outgoing[P]]:
        """Drain the messages to write."""
        out = list(self.outbox)
        self.outbox.clear()
        return out

    # -- machinery

    def _apply(self, inp: TransitionInput, now: float, message: SipMessage | None) -> None:
        row = self._rows.get((self.kind, self.state, inp))
        if row is None:
            if inp in _TU_INPUTS:
                raise TransactionError(f"{self.kind.name} in {self.state.name} cannot take {inp}")
            return  # absorbed
        self._enter(row, now, inp, message)

    def _enter(self, row: _Row, now: float, inp: TransitionInput | None, message: SipMessage | None) -> None:
        target, effects, start = row
        if target is not self.state:
            deadlines = self._deadlines
            if deadlines:
                keep = SURVIVING_TIMERS.get((self.kind, target))
                if keep is None:
                    deadlines.clear()
                else:
                    for timer in [t for t in deadlines if t not in keep]:
                        del deadlines[timer]
            self.state = target
        for effect in effects:
            effect(self, now, inp, message)
        immediate: list[Timer] | None = None
        if start:
            initial = self._initial
            for timer in start:
                interval = initial[timer]
                if interval:
                    self._arm(timer, interval, now)
                elif interval is not None:
                    immediate = [timer] if immediate is None else [*immediate, timer]
        if target is State.TERMINATED:
            self._deadlines.clear()
            if self.report_terminated:
                self.events.append(TransactionTerminated(self.key))
            return
        if immediate is not None:
            for timer in immediate:  # reliable transport: D/I/J/K are zero
                self._apply(timer, now, None)

    def _arm(self, timer: Timer, interval: float, now: float) -> None:
        if timer in _RETRANSMIT_TIMERS:
            if self._intervals is None:
                self._intervals = {}
            self._intervals[timer] = interval
        deadline = now + interval
        self._deadlines[timer] = deadline
        if self.on_timer is not None:
            self.on_timer(self, timer, deadline)

    # -- effects (one function per Action, registered in _EFFECTS)

    def _pass_up(self, now: float, inp: TransitionInput | None, message: SipMessage | None) -> None:
        if isinstance(message, SipRequest):
            self.events.append(RequestReceived(self.key, message, self.peer))
        elif isinstance(message, SipResponse):
            self.events.append(ResponseReceived(self.key, message))

    def _send_request(self, now: float, inp: TransitionInput | None, message: SipMessage | None) -> None:
        self.outbox.append(Outgoing(self.request, self.peer))

    def _send_response(self, now: float, inp: TransitionInput | None, message: SipMessage | None) -> None:
        assert isinstance(message, SipResponse)
        self.last_response = message
        self.outbox.append(Outgoing(message, self.peer))

    def _resend_response(self, now: float, inp: TransitionInput | None, message: SipMessage | None) -> None:
        if self.last_response is not None:
            self.outbox.append(Outgoing(self.last_response, self.peer))

    def _send_ack(self, now: float, inp: TransitionInput | None, message: SipMessage | None) -> None:
        if self.ack is None:
            assert isinstance(message, SipResponse)
            self.ack = make_ack(self.request, message)
        self.outbox.append(Outgoing(self.ack, self.peer))

    def _restart(self, timer: Timer, interval: float, now: float) -> None:
        self._arm(timer, interval, now)

    def _restart_doubled(self, now: float, inp: TransitionInput | None, message: SipMessage | None) -> None:
        assert isinstance(inp, Timer) and self._intervals is not None
        self._restart(inp, 2 * self._intervals[inp], now)

    def _restart_doubled_capped(self, now: float, inp: TransitionInput | None, message: SipMessage | None) -> None:
        assert isinstance(inp, Timer) and self._intervals is not None
        self._restart(inp, min(2 * self._intervals[inp], self.settings.t2), now)

    def _restart_at_t2(self, now: float, inp: TransitionInput | None, message: SipMessage | None) -> None:
        assert isinstance(inp, Timer)
        self._restart(inp, self.settings.t2, now)

    def _report_timeout(self, now: float, inp: TransitionInput | None, message: SipMessage | None) -> None:
        assert isinstance(inp, Timer)
        self.events.append(TransactionTimedOut(self.key, inp))

    def _report_transport_error(self, now: float, inp: TransitionInput | None, message: SipMessage | None) -> None:
        self.events.append(TransportFailed(self.key))


_SERVER_KINDS = frozenset({Kind.SERVER_INVITE, Kind.SERVER_NON_INVITE})
_RETRANSMIT_TIMERS = frozenset({Timer.A, Timer.E, Timer.G})

_Effect: TypeAlias = Callable[["Transaction[Any]", float, "TransitionInput | None", "SipMessage | None"], None]
_EFFECTS: dict[Action, _Effect] = {
    Action.PASS_UP: Transaction._pass_up,
    Action.SEND_REQUEST: Transaction._send_request,
    Action.SEND_RESPONSE: Transaction._send_response,
    Action.RESEND_RESPONSE: Transaction._resend_response,
    Action.SEND_ACK: Transaction._send_ack,
    Action.RESTART_DOUBLED: Transaction._restart_doubled,
    Action.RESTART_DOUBLED_CAPPED: Transaction._restart_doubled_capped,
    Action.RESTART_AT_T2: Transaction._restart_at_t2,
    Action.REPORT_TIMEOUT: Transaction._report_timeout,
    Action.REPORT_TRANSPORT_ERROR: Transaction._report_transport_error,
}

# The tables with each action resolved to its function, as the machinery runs them.
_Row: TypeAlias = tuple[State, tuple[_Effect, ...], tuple[Timer, ...]]


def _compile(row: Transition) -> _Row:
    return row.target, tuple(_EFFECTS[action] for action in row.actions), row.start


# Over a reliable transport the wait timers D, I, J, K are zero: a row that starts only one of them, into a state
# where it leads on to a row that starts nothing, is the two rows in one (Completed → Terminated at once, §17.1.1.2,
# §17.1.2.2, §17.2.1, §17.2.2): the same effects in the same order, one lookup and one state change fewer.
_ZERO_WHEN_RELIABLE = frozenset(t for t, f in _RELIABLE_INTERVALS.items() if f(_DEFAULT_SETTINGS) == 0)


def _compile_reliable(kind: Kind, row: Transition) -> _Row:
    started = [t for t in row.start if _RELIABLE_INTERVALS[t](_DEFAULT_SETTINGS) is not None]
    if len(started) == 1 and started[0] in _ZERO_WHEN_RELIABLE and row.target is not State.TERMINATED:
        then = TRANSITIONS.get((kind, row.target, started[0]))
        if then is not None and not then.start:
            return then.target, tuple(_EFFECTS[a] for a in (*row.actions, *then.actions)), ()
    return _compile(row)


_INITIAL_ROWS: dict[Kind, _Row] = {kind: _compile(row) for kind, row in INITIAL.items()}
_ROWS: dict[tuple[Kind, State, TransitionInput], _Row] = {key: _compile(row) for key, row in TRANSITIONS.items()}
_RELIABLE_ROWS: dict[tuple[Kind, State, TransitionInput], _Row] = {
    key: _compile_reliable(key[0], row) for key, row in TRANSITIONS.items()
}


# ------------------------------------------------------------------------------------------- layer

_COMPACT_MIN = 4096  # heap entries below which stale ones are left for get_timer() to pop


class TransactionLayer(Generic[P]):
    """All transactions of one SIP element, matched by key; one timer heap for all of them.

    ``events`` and ``outbox`` are the queues every transaction of the layer writes to, drained by
    :meth:`next_event` and :meth:`messages_to_send` (or directly, by a TU that owns the layer).

    ``auto_trying``: a new INVITE server transaction answers 100 Trying at once (§17.2.1 allows the
    transaction to do it; a proxy such as the Access Edge always wants it).

    A transaction that ends early leaves its timers in the heap; they are skipped when they reach the top, and
    the heap is rebuilt from the live ones when it has grown to twice what it held after the last rebuild (a
    proxy over TLS ends nearly every transaction long before its Timer F).
    """

    def __init__(self, *, settings: TimerSettings | None = None, auto_trying: bool = True,
                 report_terminated: bool = True) -> None:
        self.settings = settings or _DEFAULT_SETTINGS
        self.auto_trying = auto_trying
        self.report_terminated = report_terminated
        self._transactions: dict[TransactionKey, Transaction[P]] = {}
        self.events: deque[TransactionEvent[P]] = deque()
        self.outbox: deque[Outgoing[P]] = deque()
        self._heap: list[tuple[float, int, TransactionKey, Timer]] = []
        # how many deadlines were ever set: a shell compares it to know whether get_timer() may have moved earlier
        self.timers_started = 0
        self._compact_at = _COMPACT_MIN

    def __len__(self) -> int:
        return len(self._transactions)

    def get(self, key: TransactionKey) -> Transaction[P] | None:
        """The live transaction with ``key``."""
        return self._transactions.get(key)

    def _schedule(self, txn: Transaction[P], timer: Timer, deadline: float) -> None:
        self.timers_started += 1
        heapq.heappush(self._heap, (deadline, self.timers_started, txn.key, timer))
        if len(self._heap) > self._compact_at:
            self._compact()

    def _is_live(self, key: TransactionKey, timer: Timer, deadline: float) -> bool:
        txn = self._transactions.get(key)
        return txn is not None and txn._deadlines.get(timer) == deadline

    def _compact(self) -> None:
        self._heap = [entry for entry in self._heap if self._is_live(entry[2], entry[3], entry[0])]
        heapq.heapify(self._heap)
        self._compact_at = max(_COMPACT_MIN, 2 * len(self._heap))

    def _track(self, txn: Transaction[P]) -> Transaction[P]:
        if txn.state is State.TERMINATED:
            self._transactions.pop(txn.key, None)
        else:
            self._transactions[txn.key] = txn
        return txn

    def send_request(
        self, request: SipRequest, now: float, peer: P, *, reliable: bool | None = None, branch: str | None = None
    ) -> Transaction[P]:
        """Start a client transaction for ``request`` (not ACK: use :meth:`send_stateless`).

        ``branch``: the RFC 3261 branch of the request's top Via, when the caller just wrote it (spares parsing
        the Via again).
        """
        txn = Transaction.client(
            request,
            now,
            peer=peer,
            reliable=reliable,
            settings=self.settings,
            events=self.events,
            outbox=self.outbox,
            on_timer=self._schedule,
            key=None if branch is None else TransactionKey(branch, request.cseq.method, "", False),
            report_terminated=self.report_terminated,
        )
        if txn.key in self._transactions:
            raise TransactionError(f"a transaction with branch {txn.key.branch!r} already exists")
        return self._track(txn)

    def send_response(self, response: SipResponse, now: float, key: TransactionKey | None = None) -> Transaction[P]:
        """Send the TU's response through the server transaction it answers (``key``, or found from its Via)."""
        if key is None:
            key = TransactionKey(_branch(response), response.cseq.method, response.top_via.sent_by.lower(), True)
        txn = self._transactions.get(key)
        if txn is None:
            raise TransactionError(f"no server transaction for {key}")
        txn.send(response, now)
        return self._track(txn)

    def send_stateless(self, message: SipMessage, peer: P) -> None:
        """Queue a message outside any transaction (ACK for 2xx, 2xx retransmissions by the TU)."""
        self.outbox.append(Outgoing(message, peer))

    def receive(self, message: SipMessage, now: float, peer: P, *, reliable: bool | None = None) -> None:
        """A parsed message from the wire: feed the matching transaction, or create/report (§17.1.3, §17.2.3)."""
        if isinstance(message, SipResponse):
            txn = self._transactions.get(client_key(message))
            if txn is None:
                self.events.append(StrayResponse(message, peer))
                return
            txn.receive(message, now)
            self._track(txn)
            return
        key = server_key(message)
        txn = self._transactions.get(key)
        if txn is not None:
            txn.receive(message, now)
            self._track(txn)
            return
        if message.method == "ACK":
            self.events.append(StrayAck(message, peer))
            return
        txn = Transaction.server(
            message,
            now,
            peer=peer,
            reliable=reliable,
            settings=self.settings,
            events=self.events,
            outbox=self.outbox,
            on_timer=self._schedule,
            key=key,
            report_terminated=self.report_terminated,
        )
        self._track(txn)
        if self.auto_trying and txn.kind is Kind.SERVER_INVITE:
            txn.send(make_response(message, 100), now)  # §17.2.1

    def invite_for_cancel(self, cancel: SipRequest) -> Transaction[P] | None:
        """The INVITE server transaction a CANCEL targets (§9.2: same key but the method)."""
        key = server_key(cancel)
        return self._transactions.get(TransactionKey(key.branch, "INVITE", key.sent_by, True))

    def handle_transport_error(self, key: TransactionKey, now: float) -> None:
        """The transport failed for transaction ``key``."""
        txn = self._transactions.get(key)
        if txn is not None:
            txn.handle_transport_error(now)
            self._track(txn)

    def discard(self, key: TransactionKey) -> Transaction[P] | None:
        """Forget transaction ``key`` without running its table: the TU has given up on it (a proxy whose
        Timer C fired, RFC 3261 §16.8). Later messages with its key are stray, or start a new transaction.
        """
        return self._transactions.pop(key, None)

    def get_timer(self) -> float | None:
        """Earliest deadline across all transactions, ``None`` when idle."""
        heap = self._heap
        while heap:
            deadline, _, key, timer = heap[0]
            if self._is_live(key, timer, deadline):
                return deadline
            heapq.heappop(heap)  # stale: cancelled, restarted or transaction gone
        return None

    def handle_timer(self, now: float) -> None:
        """Fire every due timer."""
        while (deadline := self.get_timer()) is not None and deadline <= now:
            _, _, key, _ = heapq.heappop(self._heap)
            txn = self._transactions[key]
            txn.handle_timer(now)
            self._track(txn)

    def next_event(self) -> TransactionEvent[P] | None:
        """Next event for the TU, ``None`` when none is queued."""
        return self.events.popleft() if self.events else None

    def messages_to_send(self) -> list[Outgoing[P]]:
        """Drain the messages to write."""
        out = list(self.outbox)
        self.outbox.clear()
        return out
