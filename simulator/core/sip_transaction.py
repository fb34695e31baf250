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
branch + sent-by + method (§17.1.3, §17.2.3) and creates server transactions for new requests.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import NamedTuple, TypeAlias

from simulator.wire.sip import (
    BRANCH_MAGIC_COOKIE,
    SipMessage,
    SipRequest,
    SipResponse,
    make_ack,
    make_response,
)

Peer: TypeAlias = Hashable  # opaque to the core: (host, port), a connection id …


class TransactionError(Exception):
    """The TU asked for something the transaction cannot do (not a wire error)."""


class Kind(Enum):
    """The four transaction machines of RFC 3261 §17."""

    CLIENT_INVITE = auto()  # §17.1.1, Figure 5
    CLIENT_NON_INVITE = auto()  # §17.1.2, Figure 6
    SERVER_INVITE = auto()  # §17.2.1, Figure 7
    SERVER_NON_INVITE = auto()  # §17.2.2, Figure 8


class State(Enum):
    """Transaction states (RFC 3261 §17)."""

    CALLING = auto()
    TRYING = auto()
    PROCEEDING = auto()
    COMPLETED = auto()
    CONFIRMED = auto()
    TERMINATED = auto()


class Timer(Enum):
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


class Input(Enum):
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


class Action(Enum):
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

    def initial(self, timer: Timer, reliable: bool) -> float | None:
        """First interval of ``timer``; ``None`` when it is not started on this transport."""
        if reliable:
            return _RELIABLE_INTERVALS[timer](self)
        return _UNRELIABLE_INTERVALS[timer](self)


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


@dataclass(frozen=True, slots=True)
class TransactionKey:
    """Matching key (§17.1.3: branch + CSeq method; §17.2.3: branch + sent-by + method, ACK → INVITE)."""

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
class RequestReceived:
    """A new request for the TU (server transaction ``key`` created)."""

    key: TransactionKey
    request: SipRequest
    peer: Peer


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
class StrayResponse:
    """A response matching no client transaction (2xx retransmissions to INVITE, §17.1.1.2)."""

    response: SipResponse
    peer: Peer


@dataclass(frozen=True, slots=True)
class StrayAck:
    """An ACK matching no server transaction: the ACK for a 2xx, the TU's (dialog's) business (§17.2.1)."""

    request: SipRequest
    peer: Peer


TransactionEvent: TypeAlias = (
    RequestReceived
    | ResponseReceived
    | TransactionTimedOut
    | TransportFailed
    | TransactionTerminated
    | StrayResponse
    | StrayAck
)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message to write to ``peer``."""

    message: SipMessage
    peer: Peer


# ------------------------------------------------------------------------------------- transaction


@dataclass(eq=False)
class Transaction:
    """One transaction; see the module docstring.

    Build client transactions with :meth:`client` and server ones with :meth:`server`. ``events`` and
    ``outbox`` may be shared with a :class:`TransactionLayer`; ``on_timer`` tells it a deadline changed.
    """

    kind: Kind
    request: SipRequest
    key: TransactionKey
    reliable: bool
    peer: Peer = None
    settings: TimerSettings = field(default_factory=TimerSettings)
    events: deque[TransactionEvent] = field(default_factory=deque)
    outbox: deque[Outgoing] = field(default_factory=deque)
    on_timer: Callable[[Transaction, Timer, float], None] | None = None
    state: State = State.TERMINATED
    last_response: SipResponse | None = None
    ack: SipRequest | None = None
    _deadlines: dict[Timer, float] = field(default_factory=dict)
    _intervals: dict[Timer, float] = field(default_factory=dict)

    @classmethod
    def client(
        cls,
        request: SipRequest,
        now: float,
        *,
        peer: Peer = None,
        reliable: bool | None = None,
        settings: TimerSettings | None = None,
        events: deque[TransactionEvent] | None = None,
        outbox: deque[Outgoing] | None = None,
        on_timer: Callable[[Transaction, Timer, float], None] | None = None,
    ) -> Transaction:
        """Start a client transaction and queue ``request`` for sending (§17.1.1.2, §17.1.2.2)."""
        if request.method == "ACK":
            raise TransactionError("ACK never has a client transaction (RFC 3261 §17.1.1.3, §13.2.2.4)")
        kind = Kind.CLIENT_INVITE if request.method == "INVITE" else Kind.CLIENT_NON_INVITE
        return cls._start(kind, request, client_key(request), now, None, peer, reliable, settings, events, outbox,
                          on_timer)

    @classmethod
    def server(
        cls,
        request: SipRequest,
        now: float,
        *,
        peer: Peer = None,
        reliable: bool | None = None,
        settings: TimerSettings | None = None,
        events: deque[TransactionEvent] | None = None,
        outbox: deque[Outgoing] | None = None,
        on_timer: Callable[[Transaction, Timer, float], None] | None = None,
    ) -> Transaction:
        """Start a server transaction for a new request and pass it to the TU (§17.2)."""
        if request.method == "ACK":
            raise TransactionError("ACK never creates a server transaction (RFC 3261 §17.2.3)")
        kind = Kind.SERVER_INVITE if request.method == "INVITE" else Kind.SERVER_NON_INVITE
        return cls._start(kind, request, server_key(request), now, request, peer, reliable, settings, events,
                          outbox, on_timer)

    @classmethod
    def _start(
        cls,
        kind: Kind,
        request: SipRequest,
        key: TransactionKey,
        now: float,
        received: SipRequest | None,
        peer: Peer,
        reliable: bool | None,
        settings: TimerSettings | None,
        events: deque[TransactionEvent] | None,
        outbox: deque[Outgoing] | None,
        on_timer: Callable[[Transaction, Timer, float], None] | None,
    ) -> Transaction:
        txn = cls(
            kind=kind,
            request=request,
            key=key,
            reliable=request.top_via.reliable if reliable is None else reliable,
            peer=peer,
            settings=settings or TimerSettings(),
            events=events if events is not None else deque(),
            outbox=outbox if outbox is not None else deque(),
            on_timer=on_timer,
        )
        txn._enter(INITIAL[kind], now, None, received)
        return txn

    @property
    def is_server(self) -> bool:
        return self.kind in (Kind.SERVER_INVITE, Kind.SERVER_NON_INVITE)

    @property
    def terminated(self) -> bool:
        return self.state is State.TERMINATED

    # -- inputs

    def receive(self, message: SipMessage, now: float) -> None:
        """A message from the wire that matched this transaction."""
        if isinstance(message, SipResponse):
            if self.is_server:
                return
            inp = _RECV_BY_CLASS.get(message.status // 100, Input.RECV_3XX_6XX)
        else:
            if not self.is_server:
                return
            inp = Input.RECV_ACK if message.method == "ACK" else Input.RECV_REQUEST
        self._apply(inp, now, message)

    def send(self, response: SipResponse, now: float) -> None:
        """The TU's response (server transactions only)."""
        if not self.is_server:
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

    def next_event(self) -> TransactionEvent | None:
        """Next event for the TU, ``None`` when none is queued."""
        return self.events.popleft() if self.events else None

    def messages_to_send(self) -> list[Outgoing]:
        """Drain the messages to write."""
        out = list(self.outbox)
        self.outbox.clear()
        return out

    # -- machinery

    def _apply(self, inp: TransitionInput, now: float, message: SipMessage | None) -> None:
        row = TRANSITIONS.get((self.kind, self.state, inp))
        if row is None:
            if inp in _TU_INPUTS:
                raise TransactionError(f"{self.kind.name} in {self.state.name} cannot take {inp}")
            return  # absorbed
        self._enter(row, now, inp, message)

    def _enter(self, row: Transition, now: float, inp: TransitionInput | None, message: SipMessage | None) -> None:
        if row.target is not self.state:
            keep = SURVIVING_TIMERS.get((self.kind, row.target), frozenset())
            for timer in [t for t in self._deadlines if t not in keep]:
                del self._deadlines[timer]
            self.state = row.target
        for action in row.actions:
            _EFFECTS[action](self, now, inp, message)
        immediate: list[Timer] = []
        for timer in row.start:
            interval = self.settings.initial(timer, self.reliable)
            if interval is None:
                continue
            if interval == 0:
                immediate.append(timer)
            else:
                self._arm(timer, interval, now)
        if self.state is State.TERMINATED:
            self._deadlines.clear()
            self.events.append(TransactionTerminated(self.key))
            return
        for timer in immediate:  # reliable transport: D/I/J/K are zero
            self._apply(timer, now, None)

    def _arm(self, timer: Timer, interval: float, now: float) -> None:
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
        assert isinstance(inp, Timer)
        self._restart(inp, 2 * self._intervals[inp], now)

    def _restart_doubled_capped(self, now: float, inp: TransitionInput | None, message: SipMessage | None) -> None:
        assert isinstance(inp, Timer)
        self._restart(inp, min(2 * self._intervals[inp], self.settings.t2), now)

    def _restart_at_t2(self, now: float, inp: TransitionInput | None, message: SipMessage | None) -> None:
        assert isinstance(inp, Timer)
        self._restart(inp, self.settings.t2, now)

    def _report_timeout(self, now: float, inp: TransitionInput | None, message: SipMessage | None) -> None:
        assert isinstance(inp, Timer)
        self.events.append(TransactionTimedOut(self.key, inp))

    def _report_transport_error(self, now: float, inp: TransitionInput | None, message: SipMessage | None) -> None:
        self.events.append(TransportFailed(self.key))


_Effect: TypeAlias = Callable[[Transaction, float, "TransitionInput | None", "SipMessage | None"], None]
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


# ------------------------------------------------------------------------------------------- layer


class TransactionLayer:
    """All transactions of one SIP element, matched by key; one timer heap for all of them.

    ``auto_trying``: a new INVITE server transaction answers 100 Trying at once (§17.2.1 allows the
    transaction to do it; a proxy such as the Access Edge always wants it).
    """

    def __init__(self, *, settings: TimerSettings | None = None, auto_trying: bool = True) -> None:
        self.settings = settings or TimerSettings()
        self.auto_trying = auto_trying
        self._transactions: dict[TransactionKey, Transaction] = {}
        self._events: deque[TransactionEvent] = deque()
        self._outbox: deque[Outgoing] = deque()
        self._heap: list[tuple[float, int, TransactionKey, Timer]] = []
        self._counter = 0

    def __len__(self) -> int:
        return len(self._transactions)

    def get(self, key: TransactionKey) -> Transaction | None:
        """The live transaction with ``key``."""
        return self._transactions.get(key)

    def _schedule(self, txn: Transaction, timer: Timer, deadline: float) -> None:
        self._counter += 1
        heapq.heappush(self._heap, (deadline, self._counter, txn.key, timer))

    def _track(self, txn: Transaction) -> Transaction:
        if txn.terminated:
            self._transactions.pop(txn.key, None)
        else:
            self._transactions[txn.key] = txn
        return txn

    def send_request(
        self, request: SipRequest, now: float, peer: Peer = None, *, reliable: bool | None = None
    ) -> Transaction:
        """Start a client transaction for ``request`` (not ACK: use :meth:`send_stateless`)."""
        txn = Transaction.client(
            request,
            now,
            peer=peer,
            reliable=reliable,
            settings=self.settings,
            events=self._events,
            outbox=self._outbox,
            on_timer=self._schedule,
        )
        if txn.key in self._transactions:
            raise TransactionError(f"a transaction with branch {txn.key.branch!r} already exists")
        return self._track(txn)

    def send_response(self, response: SipResponse, now: float) -> Transaction:
        """Send the TU's response through the server transaction it answers."""
        key = TransactionKey(_branch(response), response.cseq.method, response.top_via.sent_by.lower(), True)
        txn = self._transactions.get(key)
        if txn is None:
            raise TransactionError(f"no server transaction for {key}")
        txn.send(response, now)
        return self._track(txn)

    def send_stateless(self, message: SipMessage, peer: Peer = None) -> None:
        """Queue a message outside any transaction (ACK for 2xx, 2xx retransmissions by the TU)."""
        self._outbox.append(Outgoing(message, peer))

    def receive(self, message: SipMessage, now: float, peer: Peer = None, *, reliable: bool | None = None) -> None:
        """A parsed message from the wire: feed the matching transaction, or create/report (§17.1.3, §17.2.3)."""
        if isinstance(message, SipResponse):
            txn = self._transactions.get(client_key(message))
            if txn is None:
                self._events.append(StrayResponse(message, peer))
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
            self._events.append(StrayAck(message, peer))
            return
        txn = Transaction.server(
            message,
            now,
            peer=peer,
            reliable=reliable,
            settings=self.settings,
            events=self._events,
            outbox=self._outbox,
            on_timer=self._schedule,
        )
        self._track(txn)
        if self.auto_trying and txn.kind is Kind.SERVER_INVITE:
            txn.send(make_response(message, 100), now)  # §17.2.1

    def invite_for_cancel(self, cancel: SipRequest) -> Transaction | None:
        """The INVITE server transaction a CANCEL targets (§9.2: same key but the method)."""
        key = server_key(cancel)
        return self._transactions.get(TransactionKey(key.branch, "INVITE", key.sent_by, True))

    def handle_transport_error(self, key: TransactionKey, now: float) -> None:
        """The transport failed for transaction ``key``."""
        txn = self._transactions.get(key)
        if txn is not None:
            txn.handle_transport_error(now)
            self._track(txn)

    def get_timer(self) -> float | None:
        """Earliest deadline across all transactions, ``None`` when idle."""
        heap = self._heap
        while heap:
            deadline, _, key, timer = heap[0]
            txn = self._transactions.get(key)
            if txn is not None and txn.timer_deadline(timer) == deadline:
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

    def next_event(self) -> TransactionEvent | None:
        """Next event for the TU, ``None`` when none is queued."""
        return self._events.popleft() if self._events else None

    def messages_to_send(self) -> list[Outgoing]:
        """Drain the messages to write."""
        out = list(self._outbox)
        self._outbox.clear()
        return out
