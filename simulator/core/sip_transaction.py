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
transaction terminates at once (§17.1.1.2, §17.1.2.2, §17.2.1, §17.2.2). Timer C (§16.6 step 11) is the TU's:
a proxy or a user agent starts it with its client transaction (:meth:`TransactionLayer.send_request`) as the
deadline for a final response, and the table ends the transaction when it fires, as Timer B or F would.

The table tells the TU what happened through the :class:`TransactionUser` calls its effects make — a request
or a response to pass up, a timeout, a transport error, the end — so nothing is built for the TU that it does
not read. :class:`EventQueue`, the TU when none is given, turns each call into an event (:class:`RequestReceived`,
…) for :meth:`TransactionLayer.next_event`.

Nothing reads a clock: every call takes ``now`` (seconds, any monotonic origin). The I/O shell sends
what :meth:`TransactionLayer.messages_to_send` returns and arms one timer at :meth:`TransactionLayer.get_timer`
that calls :meth:`TransactionLayer.handle_timer`. :class:`TransactionLayer` matches messages to transactions by
branch + sent-by + method (§17.1.3, §17.2.3) and creates server transactions for new requests. The peer a
message comes from or goes to is opaque (the type parameter ``P``: an address, a connection object).
The shipped TU is :class:`~simulator.core.sip_element.SipElement` (proxy, registrar, user agent).

Every message of a SIP server runs through this table, so the machinery runs a compiled copy of it
(:func:`compile_table`): each row holds its effects as functions, its timers with their intervals, and the rows of
the state it leads to, so an input costs one dict lookup. Over reliable transports a row that starts only a zero
wait timer is merged with the row that timer fires: Completed is left the instant it is entered anyway, so the
transaction goes to Terminated in one step, with the same effects in the same order (a test drives both tables
side by side); and a non-INVITE client transaction lets go of its request once sent, since it never sends it again
(a request is a sizable graph of objects, which the garbage collector would otherwise keep walking over).

The layer keeps each transaction with a running timer at its earliest deadline only, in the queue of that timer:
a deadline is ``now`` plus the timer's interval, so each queue (an insertion-ordered dict) is sorted by
construction and :meth:`~TransactionLayer.get_timer` looks at its head; a deadline that would break the order (a
retransmission timer restarted with a shorter interval, a clock that went back) goes to a heap instead. A
transaction that ends leaves its queue at once, so nothing stale piles up; over TLS a client transaction costs
one insertion and one removal, a server transaction nothing. ``timers_started`` moves only when a deadline earlier
than what :meth:`~TransactionLayer.get_timer` last returned appears, so a shell re-arms its one timer handle only
then.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import Any, Generic, NamedTuple, Protocol, TypeAlias, TypeVar

from simulator.wire.sip import (
    BRANCH_MAGIC_COOKIE,
    SipMessage,
    SipRequest,
    SipResponse,
    Via,
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
    C = "C"  # proxy's wait for a final response (§16.6 step 11), started by the TU with its interval
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
    REPORT_TIMEOUT = auto()  # tell the TU (B, C, F: 408 equivalent; H: no ACK)
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

# §16.6 step 11 / §16.8: Timer C ends a client transaction still waiting for its final response; the TU answers as
# if a 408 had come (for a proceeding INVITE §16.8 would CANCEL it — the lab's elements give up the same way).
for _kind, _state in ((_CI, _S.CALLING), (_CI, _S.PROCEEDING), (_CNI, _S.TRYING), (_CNI, _S.PROCEEDING)):
    TRANSITIONS[(_kind, _state, Timer.C)] = Transition(_S.TERMINATED, (_A.REPORT_TIMEOUT,))

# §17.1.4 / §17.2.4: a transport failure ends the transaction in any live state.
for (_kind, _state, _input), _row in list(TRANSITIONS.items()):
    if _state is not _S.TERMINATED:
        TRANSITIONS.setdefault(
            (_kind, _state, Input.TRANSPORT_ERROR), Transition(_S.TERMINATED, (_A.REPORT_TRANSPORT_ERROR,))
        )

SURVIVING_TIMERS: dict[tuple[Kind, State], frozenset[Timer]] = {
    (_CI, _S.PROCEEDING): frozenset({Timer.C}),  # §16.6 step 11: C bounds the whole wait (A and B stop)
    (_CNI, _S.PROCEEDING): frozenset({Timer.C, Timer.E, Timer.F}),  # §17.1.2.2: E keeps firing, F still bounds it
}

_TU_INPUTS = frozenset({Input.SEND_1XX, Input.SEND_2XX, Input.SEND_3XX_6XX})
_RECV_BY_CLASS = {1: Input.RECV_1XX, 2: Input.RECV_2XX}
# the same, indexed by status // 100 (0 to 9): every response looks it up
_RECV_BY_HUNDREDS = (Input.RECV_3XX_6XX, Input.RECV_1XX, Input.RECV_2XX, *(Input.RECV_3XX_6XX,) * 7)
_SEND_BY_CLASS = {1: Input.SEND_1XX, 2: Input.SEND_2XX}
_RETRANSMIT_TIMERS = frozenset({Timer.A, Timer.E, Timer.G})
_SERVER_KINDS = frozenset({Kind.SERVER_INVITE, Kind.SERVER_NON_INVITE})


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
        """Every table timer's first interval on a reliable or unreliable transport (read-only; C is the TU's)."""
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


# Builds a key without the Python-level ``__new__`` a NamedTuple gets: this runs for every message.
_key: Callable[[type[TransactionKey], tuple[str, str, str, bool]], TransactionKey] = tuple.__new__


def client_key(message: SipMessage) -> TransactionKey:
    """Key of the client transaction a request belongs to or a response answers (§17.1.3)."""
    method = message.method if isinstance(message, SipRequest) else message.cseq.method  # §8.1.1.5: they match
    return _key(TransactionKey, (_branch(message, message.top_via), method, "", False))


def server_key(request: SipRequest) -> TransactionKey:
    """Key of the server transaction a request belongs to (§17.2.3; ACK matches its INVITE)."""
    via = request.top_via
    method = "INVITE" if request.method == "ACK" else request.method
    return _key(TransactionKey, (_branch(request, via), method, _sent_by(via), True))


def _branch(message: SipMessage, via: Via) -> str:
    """The top Via's branch (read from the parsed parameters: this runs for every message)."""
    for name, value in via.params:
        if name == "branch" or name.lower() == "branch":  # RFC 3261 §7.3.1: names are case-insensitive
            if value and value.startswith(BRANCH_MAGIC_COOKIE):
                return value
            break
    # RFC 2543 peer (§17.2.3 second half), approximated: Call-ID + CSeq number + From tag + sent-by.
    return f"2543|{message.call_id}|{message.cseq.seq}|{message.from_.tag}|{via.sent_by}"


def _sent_by(via: Via) -> str:
    """``host[:port]`` of a Via, the host compared without case (RFC 3261 §17.2.3, §19.1.4)."""
    host, port = via.host, via.port
    return (host if port is None else f"{host}:{port}").lower()


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
    """Timer B, C or F (no final response: the TU acts as on 408, §8.1.3.1, §16.8) or H (no ACK, §17.2.1)."""

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


class Outgoing(NamedTuple, Generic[P]):
    """A message to write to ``peer``."""

    message: SipMessage
    peer: P


_outgoing: Callable[[type[Outgoing[Any]], tuple[SipMessage, Any]], Outgoing[Any]] = tuple.__new__


class TransactionUser(Protocol[P]):
    """What the transactions tell their TU (RFC 3261 §17: the transaction layer passes messages up to the TU).

    Called from inside a transition (the transaction is already in its new state); a TU may send through other
    transactions of the layer from here, not through the one calling.
    """

    def request_received(self, txn: Transaction[P], request: SipRequest, now: float) -> None:
        """A new request: server transaction ``txn`` was created for it."""

    def response_received(self, txn: Transaction[P], response: SipResponse, now: float) -> None:
        """A response from client transaction ``txn`` (a provisional one or the final one)."""

    def timed_out(self, txn: Transaction[P], timer: Timer, now: float) -> None:
        """Timer B, C, F (no final response) or H (no ACK) ended ``txn``."""

    def transport_failed(self, txn: Transaction[P], now: float) -> None:
        """The transport failed for ``txn`` (§17.1.4, §17.2.4)."""

    def terminated(self, txn: Transaction[P]) -> None:
        """``txn`` is gone."""

    def stray_response(self, response: SipResponse, peer: P, now: float) -> None:
        """A response matching no client transaction (§17.1.3)."""

    def stray_ack(self, ack: SipRequest, peer: P, now: float) -> None:
        """An ACK matching no server transaction: the ACK for a 2xx (§17.2.3)."""


class EventQueue(Generic[P]):
    """The TU when none is given: every call becomes a :data:`TransactionEvent` in :attr:`events`."""

    def __init__(self, report_terminated: bool = True) -> None:
        self.events: deque[TransactionEvent[P]] = deque()
        self.report_terminated = report_terminated

    def request_received(self, txn: Transaction[P], request: SipRequest, now: float) -> None:
        self.events.append(RequestReceived(txn.key, request, txn.peer))

    def response_received(self, txn: Transaction[P], response: SipResponse, now: float) -> None:
        self.events.append(ResponseReceived(txn.key, response))

    def timed_out(self, txn: Transaction[P], timer: Timer, now: float) -> None:
        self.events.append(TransactionTimedOut(txn.key, timer))

    def transport_failed(self, txn: Transaction[P], now: float) -> None:
        self.events.append(TransportFailed(txn.key))

    def terminated(self, txn: Transaction[P]) -> None:
        if self.report_terminated:
            self.events.append(TransactionTerminated(txn.key))

    def stray_response(self, response: SipResponse, peer: P, now: float) -> None:
        self.events.append(StrayResponse(response, peer))

    def stray_ack(self, ack: SipRequest, peer: P, now: float) -> None:
        self.events.append(StrayAck(ack, peer))


# ------------------------------------------------------------------------------------- the compiled table

_Effect: TypeAlias = Callable[["Transaction[Any]", float, "TransitionInput | None", "SipMessage | None"], None]


class Row(NamedTuple):
    """A compiled row: the state entered and that state's rows, the effects as functions, the timers started
    (with their first interval), the zero timers that fire at once, and the running timers kept (``None``: all
    stop) when the state changes.
    """

    target: State
    rows: dict[TransitionInput, Row]
    effects: tuple[_Effect, ...]
    timed: tuple[tuple[Timer, float], ...]
    immediate: tuple[Timer, ...]
    keep: frozenset[Timer] | None


@dataclass(frozen=True, slots=True)
class CompiledTable:
    """The table as the machinery runs it, for one :class:`TimerSettings` and one kind of transport."""

    settings: TimerSettings
    reliable: bool
    initial: dict[Kind, Row]
    states: dict[tuple[Kind, State], dict[TransitionInput, Row]]


def compile_table(settings: TimerSettings, reliable: bool, *, merge: bool = True) -> CompiledTable:
    """Compile :data:`INITIAL` and :data:`TRANSITIONS`; ``merge`` folds, over a reliable transport, a row that
    starts only a zero wait timer into the row that timer fires (see the module docstring).
    """
    intervals = settings.intervals(reliable)
    states: dict[tuple[Kind, State], dict[TransitionInput, Row]] = {(k, s): {} for k in Kind for s in State}

    def compile_row(kind: Kind, row: Transition) -> Row:
        target, actions, start = row
        started = [t for t in start if intervals[t] is not None]
        if merge and reliable and len(started) == 1 and intervals[started[0]] == 0 and target is not State.TERMINATED:
            then = TRANSITIONS.get((kind, target, started[0]))
            if then is not None and not then.start:
                target, actions, start = then.target, (*actions, *then.actions), ()
        timed = tuple((t, interval) for t in start if (interval := intervals[t]))
        immediate = tuple(t for t in start if intervals[t] == 0)
        effects = tuple(_effect(kind, action) for action in actions)
        if reliable and kind is Kind.CLIENT_NON_INVITE and row is INITIAL[kind]:
            # §17.1.2.2: Timer E is not started, the request is never sent again (an INVITE keeps it for its ACK)
            effects = tuple(Transaction._send_request_once if e is Transaction._send_request else e for e in effects)
        return Row(target, states[(kind, target)], effects, timed, immediate, SURVIVING_TIMERS.get((kind, target)))

    for (kind, state, inp), transition in TRANSITIONS.items():
        states[(kind, state)][inp] = compile_row(kind, transition)
    initial = {kind: compile_row(kind, transition) for kind, transition in INITIAL.items()}
    return CompiledTable(settings, reliable, initial, states)


_COMPILED: dict[tuple[TimerSettings, bool], CompiledTable] = {}


def _table(settings: TimerSettings, reliable: bool) -> CompiledTable:
    table = _COMPILED.get((settings, reliable))
    if table is None:
        table = _COMPILED[(settings, reliable)] = compile_table(settings, reliable)
    return table


_INF = float("inf")
# Enum members read through their class cost a metaclass lookup each; the hot paths read these instead.
_TERMINATED = State.TERMINATED
_TIMER_C = Timer.C
_RECV_3XX_6XX, _RECV_ACK, _RECV_REQUEST = Input.RECV_3XX_6XX, Input.RECV_ACK, Input.RECV_REQUEST
_SEND_3XX_6XX = Input.SEND_3XX_6XX
_NO_DEADLINES: dict[Timer, float] = {}

# ------------------------------------------------------------------------------------- transaction


class Transaction(Generic[P]):
    """One transaction; see the module docstring.

    Build standalone client transactions with :meth:`client` and server ones with :meth:`server` (a
    :class:`TransactionLayer` builds its own, and is their ``layer``). ``tu`` hears what happens (an
    :class:`EventQueue` by default, read with :meth:`next_event`); what to send goes to ``outbox``.
    """

    __slots__ = (
        "_deadlines",
        "_intervals",
        "_queue",
        "_rows",
        "_scheduled",
        "ack",
        "context",
        "key",
        "kind",
        "last_response",
        "layer",
        "outbox",
        "peer",
        "request",
        "state",
        "table",
        "timer_c",
        "tu",
        "upstream",
        "waiting",
    )

    def __init__(self, kind: Kind, request: SipRequest, key: TransactionKey, peer: P, table: CompiledTable,
                 tu: TransactionUser[P], outbox: deque[Outgoing[P]], layer: TransactionLayer[P] | None,
                 initial: Row, context: Any = None, upstream: Transaction[P] | None = None) -> None:
        self.kind = kind
        self.request: SipRequest | None = request  # None once a request that is never sent again was sent
        self.key = key
        self.peer = peer
        self.table = table
        self.tu = tu
        self.outbox = outbox
        self.layer = layer  # told when the earliest deadline changes and when the transaction ends
        self.state = initial.target  # born in its first state; entering the initial row runs its effects and timers
        self._rows = initial.rows
        self.last_response: SipResponse | None = None
        self.ack: SipRequest | None = None
        self._deadlines: dict[Timer, float] | None = None
        self._intervals: dict[Timer, float] | None = None  # of the retransmission timers (A, E, G), doubled on restart
        self._scheduled = _INF  # the earliest deadline, the one the layer keeps the transaction at
        self._queue: dict[tuple[str, str, str, bool], Transaction[P]] | None = None  # where the layer keeps it
        self.timer_c: float | None = None  # the TU's wait for a final response, when it started Timer C
        # the TU's, opaque to the table: what it hands back with the outcome, and the server transaction this client
        # transaction was started for (a proxy's forward, RFC 3261 §16.6)
        self.context: Any = context
        self.upstream: Transaction[P] | None = upstream
        self.waiting = False  # the TU's: it still waits for the final response

    @classmethod
    def client(cls, request: SipRequest, now: float, *, peer: P, reliable: bool | None = None,
               settings: TimerSettings | None = None, tu: TransactionUser[P] | None = None,
               key: TransactionKey | None = None, timer_c: float | None = None) -> Transaction[P]:
        """Start a client transaction and queue ``request`` for sending (§17.1.1.2, §17.1.2.2); ``key`` when known,
        ``timer_c`` the TU's wait for a final response (§16.6 step 11).
        """
        if request.method == "ACK":
            raise TransactionError("ACK never has a client transaction (RFC 3261 §17.1.1.3, §13.2.2.4)")
        kind = Kind.CLIENT_INVITE if request.method == "INVITE" else Kind.CLIENT_NON_INVITE
        table = _table(settings or _DEFAULT_SETTINGS, request.top_via.reliable if reliable is None else reliable)
        initial = table.initial[kind]
        txn = cls(kind, request, key or client_key(request), peer, table, tu or EventQueue(), deque(), None, initial)
        if timer_c is not None:
            txn.timer_c = timer_c
            txn._deadlines = {Timer.C: now + timer_c}
        txn._enter(initial, now, None, None)
        return txn

    @classmethod
    def server(cls, request: SipRequest, now: float, *, peer: P, reliable: bool | None = None,
               settings: TimerSettings | None = None, tu: TransactionUser[P] | None = None,
               key: TransactionKey | None = None) -> Transaction[P]:
        """Start a server transaction for a new request and pass it to the TU (§17.2); ``key`` when known."""
        if request.method == "ACK":
            raise TransactionError("ACK never creates a server transaction (RFC 3261 §17.2.3)")
        kind = Kind.SERVER_INVITE if request.method == "INVITE" else Kind.SERVER_NON_INVITE
        table = _table(settings or _DEFAULT_SETTINGS, request.top_via.reliable if reliable is None else reliable)
        initial = table.initial[kind]
        txn = cls(kind, request, key or server_key(request), peer, table, tu or EventQueue(), deque(), None, initial)
        txn._enter(initial, now, None, request)
        return txn

    @property
    def reliable(self) -> bool:
        return self.table.reliable

    @property
    def settings(self) -> TimerSettings:
        return self.table.settings

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
        row = self._rows.get(inp)
        if row is not None:  # no row: absorbed
            self._enter(row, now, inp, message)

    def send(self, response: SipResponse, now: float) -> None:
        """The TU's response (server transactions only)."""
        inp = _SEND_BY_CLASS.get(response.status // 100, _SEND_3XX_6XX)
        row = self._rows.get(inp)
        if row is None:
            if self.kind not in _SERVER_KINDS:
                raise TransactionError("only server transactions send responses")
            raise TransactionError(f"{self.kind.name} in {self.state.name} cannot send {response.status}")
        self._enter(row, now, inp, response)

    def handle_transport_error(self, now: float) -> None:
        """The transport could not deliver a message of this transaction."""
        self._apply(Input.TRANSPORT_ERROR, now, None)

    def get_timer(self) -> float | None:
        """Earliest deadline, ``None`` when no timer runs."""
        return min(deadlines.values()) if (deadlines := self._deadlines) else None

    def handle_timer(self, now: float) -> None:
        """Fire every timer whose deadline is ``<= now`` (earliest first)."""
        while deadlines := self._deadlines:
            timer = min(deadlines, key=deadlines.__getitem__)
            if deadlines[timer] > now:
                break
            del deadlines[timer]
            self._apply(timer, now, None)
        if self._deadlines is not None:
            self._sync()

    def timer_deadline(self, timer: Timer) -> float | None:
        """Deadline of one timer, ``None`` when it is not running."""
        return self._deadlines.get(timer) if self._deadlines else None

    def next_event(self) -> TransactionEvent[P] | None:
        """Next event for the TU when it is an :class:`EventQueue`, ``None`` when none is queued."""
        tu = self.tu
        return tu.events.popleft() if isinstance(tu, EventQueue) and tu.events else None

    def messages_to_send(self) -> list[Outgoing[P]]:
        """Drain the messages to write."""
        out = list(self.outbox)
        self.outbox.clear()
        return out

    # -- machinery

    def _apply(self, inp: TransitionInput, now: float, message: SipMessage | None) -> None:
        row = self._rows.get(inp)
        if row is None:
            if inp in _TU_INPUTS:
                raise TransactionError(f"{self.kind.name} in {self.state.name} cannot take {inp}")
            return  # absorbed
        self._enter(row, now, inp, message)

    def _enter(self, row: Row, now: float, inp: TransitionInput | None, message: SipMessage | None) -> None:
        # The effects every message of a proxy runs (pass up, send) are done in place, the others by their function:
        # a call less per step, and less code to bring back into the caches between two messages.
        target, rows, effects, timed, immediate, keep = row
        if target is _TERMINATED:  # rows into Terminated start no timer
            self.state = target
            self._rows = rows
            self._deadlines = None
            for effect in effects:
                if effect is _pass_up_response:
                    self.tu.response_received(self, message, now)  # type: ignore[arg-type]  # a client's: a response
                elif effect is _send_response:
                    self.last_response = message  # type: ignore[assignment]  # the TU's: a response
                    self.outbox.append(_outgoing(Outgoing, (message, self.peer)))  # type: ignore[arg-type]
                else:
                    effect(self, now, inp, message)
            layer = self.layer
            if layer is None:
                self.tu.terminated(self)
                return
            key = self.key  # out of the layer (TransactionLayer._forget, inline: every transaction ends here)
            transactions = layer._transactions
            other = transactions.pop(key, None)
            if other is not self and other is not None:  # one that replaced it after a discard
                transactions[key] = other
            queue = self._queue
            if queue is not None:
                del queue[key]
                self._queue = None
            if layer._report_terminated:
                self.tu.terminated(self)
            return
        if target is not self.state:
            deadlines = self._deadlines
            if deadlines:
                if keep is None:
                    deadlines.clear()
                else:
                    for timer in [t for t in deadlines if t not in keep]:
                        del deadlines[timer]
            self.state = target
            self._rows = rows
        for effect in effects:
            if effect is _pass_up_request:
                self.tu.request_received(self, message, now)  # type: ignore[arg-type]  # a server's: a request
            elif effect is _send_request_once:
                self.outbox.append(_outgoing(Outgoing, (self.request, self.peer)))  # type: ignore[arg-type]
                self.request = None  # never sent again: nothing to keep it alive for
            else:
                effect(self, now, inp, message)
        if timed:
            deadlines = self._deadlines  # an effect may have restarted one
            if deadlines is None:
                deadlines = self._deadlines = {}
            for timer, interval in timed:
                deadlines[timer] = now + interval
                if timer in _RETRANSMIT_TIMERS:
                    if self._intervals is None:
                        self._intervals = {}
                    self._intervals[timer] = interval
        for timer in immediate:  # a zero wait timer the merged rows did not absorb
            self._apply(timer, now, None)
        deadlines = self._deadlines
        if deadlines is not None:  # _sync(), inline: every client transaction's start comes through here
            earliest, first = _INF, None
            for timer, deadline in deadlines.items():
                if deadline < earliest:
                    earliest, first = deadline, timer
            if earliest != self._scheduled:
                if self.layer is None:
                    self._scheduled = earliest
                else:
                    self.layer._reschedule(self, first, earliest)

    def _arm(self, timer: Timer, interval: float, now: float) -> None:
        if timer in _RETRANSMIT_TIMERS:
            if self._intervals is None:
                self._intervals = {}
            self._intervals[timer] = interval
        deadlines = self._deadlines
        if deadlines is None:
            self._deadlines = {timer: now + interval}
        else:
            deadlines[timer] = now + interval

    def _sync(self) -> None:
        """Tell the layer when the earliest deadline changed (it keeps each transaction at that one)."""
        earliest, first = _INF, None
        for timer, deadline in (self._deadlines or _NO_DEADLINES).items():
            if deadline < earliest:
                earliest, first = deadline, timer
        if earliest != self._scheduled:
            if self.layer is None:
                self._scheduled = earliest
            else:
                self.layer._reschedule(self, first, earliest)

    # -- effects (one function per Action, registered in _EFFECTS)

    def _pass_up_request(self, now: float, inp: TransitionInput | None, message: SipMessage | None) -> None:
        self.tu.request_received(self, message, now)  # type: ignore[arg-type]  # a server transaction's: a request

    def _pass_up_response(self, now: float, inp: TransitionInput | None, message: SipMessage | None) -> None:
        self.tu.response_received(self, message, now)  # type: ignore[arg-type]  # a client transaction's: a response

    def _send_request(self, now: float, inp: TransitionInput | None, message: SipMessage | None) -> None:
        assert self.request is not None  # only _send_request_once lets it go, and no row sends it after that
        self.outbox.append(_outgoing(Outgoing, (self.request, self.peer)))

    def _send_request_once(self, now: float, inp: TransitionInput | None, message: SipMessage | None) -> None:
        assert self.request is not None
        self.outbox.append(_outgoing(Outgoing, (self.request, self.peer)))
        self.request = None  # never sent again: nothing to keep it alive for

    def _send_response(self, now: float, inp: TransitionInput | None, message: SipMessage | None) -> None:
        assert isinstance(message, SipResponse)
        self.last_response = message
        self.outbox.append(_outgoing(Outgoing, (message, self.peer)))

    def _resend_response(self, now: float, inp: TransitionInput | None, message: SipMessage | None) -> None:
        if self.last_response is not None:
            self.outbox.append(_outgoing(Outgoing, (self.last_response, self.peer)))

    def _send_ack(self, now: float, inp: TransitionInput | None, message: SipMessage | None) -> None:
        if self.ack is None:
            assert isinstance(message, SipResponse) and self.request is not None
            self.ack = make_ack(self.request, message)
        self.outbox.append(_outgoing(Outgoing, (self.ack, self.peer)))

    def _restart_doubled(self, now: float, inp: TransitionInput | None, message: SipMessage | None) -> None:
        assert isinstance(inp, Timer) and self._intervals is not None
        self._arm(inp, 2 * self._intervals[inp], now)

    def _restart_doubled_capped(self, now: float, inp: TransitionInput | None, message: SipMessage | None) -> None:
        assert isinstance(inp, Timer) and self._intervals is not None
        self._arm(inp, min(2 * self._intervals[inp], self.table.settings.t2), now)

    def _restart_at_t2(self, now: float, inp: TransitionInput | None, message: SipMessage | None) -> None:
        assert isinstance(inp, Timer)
        self._arm(inp, self.table.settings.t2, now)

    def _report_timeout(self, now: float, inp: TransitionInput | None, message: SipMessage | None) -> None:
        assert isinstance(inp, Timer)
        self.tu.timed_out(self, inp, now)

    def _report_transport_error(self, now: float, inp: TransitionInput | None, message: SipMessage | None) -> None:
        self.tu.transport_failed(self, now)


_EFFECTS: dict[Action, _Effect] = {
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


# done in place by Transaction._enter
_pass_up_request: _Effect = Transaction._pass_up_request
_pass_up_response: _Effect = Transaction._pass_up_response
_send_request_once: _Effect = Transaction._send_request_once
_send_response: _Effect = Transaction._send_response


def _effect(kind: Kind, action: Action) -> _Effect:
    if action is Action.PASS_UP:  # a server transaction passes up requests, a client one responses
        return Transaction._pass_up_request if kind in _SERVER_KINDS else Transaction._pass_up_response
    return _EFFECTS[action]


# ------------------------------------------------------------------------------------------- layer

_COMPACT_MIN = 4096  # heap entries below which stale ones are left for get_timer() to drop


class _TimerQueue(Generic[P]):
    """The transactions whose earliest deadline is one timer's, in the order of those deadlines (``tail``: the last
    one queued; a dict keeps insertion order and drops a member in O(1)).
    """

    __slots__ = ("members", "tail")

    def __init__(self) -> None:
        self.members: dict[tuple[str, str, str, bool], Transaction[P]] = {}
        self.tail = -_INF

_HeapEntry: TypeAlias = tuple[float, TransactionKey]


class TransactionLayer(Generic[P]):
    """All transactions of one SIP element, matched by key, with one timer structure for all of them.

    ``tu`` hears what the transactions report (``report_terminated``: their ends too); without one, an
    :class:`EventQueue` whose ``events`` :meth:`next_event` drains. ``outbox`` is the queue
    every transaction writes to, drained by :meth:`messages_to_send` (or directly, by a TU that owns the layer).

    ``auto_trying``: a new INVITE server transaction answers 100 Trying at once (§17.2.1 allows the
    transaction to do it; a proxy such as the Access Edge always wants it).
    """

    def __init__(self, *, settings: TimerSettings | None = None, auto_trying: bool = True,
                 report_terminated: bool = True, tu: TransactionUser[P] | None = None) -> None:
        self.settings = settings or _DEFAULT_SETTINGS
        self.auto_trying = auto_trying
        queue: EventQueue[P] = EventQueue(report_terminated)
        self.events = queue.events  # stays empty when another TU is given
        self.tu: TransactionUser[P] = queue if tu is None else tu
        self._report_terminated = report_terminated
        self.outbox: deque[Outgoing[P]] = deque()
        # keyed by TransactionKey; looked up with plain tuples too (equal, same hash), which are cheaper to build
        self._transactions: dict[tuple[str, str, str, bool], Transaction[P]] = {}
        self._reliable = _table(self.settings, True)
        self._unreliable = _table(self.settings, False)
        # the transactions with a running timer, kept at their earliest deadline: in the queue of that timer while
        # its deadlines come in order, in the heap otherwise
        self._queues: dict[Timer, _TimerQueue[P]] = {}
        self._heap: list[_HeapEntry] = []
        self._compact_at = _COMPACT_MIN
        # bumped when a deadline earlier than what get_timer() last returned is set: until it moves, a shell whose
        # timer is armed at or before that value needs not look again
        self.timers_started = 0
        self._horizon = _INF

    def __len__(self) -> int:
        return len(self._transactions)

    def get(self, key: TransactionKey) -> Transaction[P] | None:
        """The live transaction with ``key``."""
        return self._transactions.get(key)

    def transactions(self) -> list[Transaction[P]]:
        """The live transactions."""
        return list(self._transactions.values())

    @property
    def timer_entries(self) -> int:
        """Deadlines held for the transactions, live or stale (stale heap entries go at the next pass)."""
        return len(self._heap) + sum(len(queue.members) for queue in self._queues.values())

    def send_request(self, request: SipRequest, now: float, peer: P, *, reliable: bool | None = None,
                     branch: str | None = None, timer_c: float | None = None, context: Any = None,
                     upstream: Transaction[P] | None = None) -> Transaction[P]:
        """Start a client transaction for ``request`` (not ACK: use :meth:`send_stateless`).

        ``branch``: the RFC 3261 branch of the request's top Via, when the caller just wrote it (spares parsing
        the Via again); ``timer_c``: the TU's wait for a final response (§16.6 step 11); ``context`` and
        ``upstream``: the TU's, kept on the transaction.
        """
        method = request.method
        if method == "ACK":
            raise TransactionError("ACK never has a client transaction (RFC 3261 §17.1.1.3, §13.2.2.4)")
        key = client_key(request) if branch is None else _key(TransactionKey, (branch, method, "", False))
        transactions = self._transactions
        if key in transactions:
            raise TransactionError(f"a transaction with branch {key.branch!r} already exists")
        if reliable is None:
            reliable = request.top_via.reliable
        kind = _CI if method == "INVITE" else _CNI
        table = self._reliable if reliable else self._unreliable
        initial = table.initial[kind]
        txn = Transaction(kind, request, key, peer, table, self.tu, self.outbox, self, initial, context, upstream)
        transactions[key] = txn
        if timer_c is not None:
            txn.timer_c = timer_c
            txn._deadlines = {_TIMER_C: now + timer_c}
        txn._enter(initial, now, None, None)
        return txn

    def send_response(self, response: SipResponse, now: float, key: TransactionKey | None = None) -> Transaction[P]:
        """Send the TU's response through the server transaction it answers (``key``, or found from its Via)."""
        if key is None:
            via = response.top_via
            key = _key(TransactionKey, (_branch(response, via), response.cseq.method, _sent_by(via), True))
        txn = self._transactions.get(key)
        if txn is None:
            raise TransactionError(f"no server transaction for {key}")
        txn.send(response, now)
        return txn

    def send_stateless(self, message: SipMessage, peer: P) -> None:
        """Queue a message outside any transaction (ACK for 2xx, 2xx retransmissions by the TU)."""
        self.outbox.append(_outgoing(Outgoing, (message, peer)))

    def receive(self, message: SipMessage, now: float, peer: P, reliable: bool | None = None) -> None:
        """A parsed message from the wire: feed the matching transaction, or create/report (§17.1.3, §17.2.3)."""
        via = message.top_via
        branch = None
        for name, value in via.params:  # _branch(), inline: every message of the element comes through here
            if name == "branch":
                branch = value
                break
        if not branch or not branch.startswith(BRANCH_MAGIC_COOKIE):
            branch = _branch(message, via)
        if isinstance(message, SipResponse):
            txn = self._transactions.get((branch, message.cseq.method, "", False))  # a TransactionKey's equal
            if txn is None:
                self.tu.stray_response(message, peer, now)
                return
            inp: TransitionInput = _RECV_BY_HUNDREDS[message.status // 100 % 10]
            row = txn._rows.get(inp)
            if row is not None:  # no row: absorbed
                txn._enter(row, now, inp, message)
            return
        method = message.method
        host, port = via.host, via.port
        key = _key(TransactionKey, (branch, "INVITE" if method == "ACK" else method,
                                    (host if port is None else f"{host}:{port}").lower(), True))  # _sent_by(), inline
        txn = self._transactions.get(key)
        if txn is not None:
            inp = _RECV_ACK if method == "ACK" else _RECV_REQUEST
            row = txn._rows.get(inp)
            if row is not None:  # no row: absorbed (a retransmission the state needs not answer)
                txn._enter(row, now, inp, message)
            return
        if method == "ACK":
            self.tu.stray_ack(message, peer, now)
            return
        if reliable is None:
            reliable = via.reliable
        kind = _SI if method == "INVITE" else _SNI
        table = self._reliable if reliable else self._unreliable
        initial = table.initial[kind]
        txn = Transaction(kind, message, key, peer, table, self.tu, self.outbox, self, initial)
        self._transactions[key] = txn
        txn._enter(initial, now, None, message)
        if self.auto_trying and kind is _SI and txn.state is not _TERMINATED:
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

    def discard(self, key: TransactionKey) -> Transaction[P] | None:
        """Forget transaction ``key`` without running its table: the TU has given up on it. Later messages with
        its key are stray, or start a new transaction; its timers are dropped.
        """
        txn = self._transactions.get(key)
        if txn is not None:
            self._forget(txn)
            txn.layer = None  # its timers are gone; should anything still drive it, it runs on its own
        return txn

    def _forget(self, txn: Transaction[P]) -> None:
        key = txn.key
        transactions = self._transactions
        other = transactions.pop(key, None)
        if other is not txn and other is not None:  # one that replaced it after a discard
            transactions[key] = other
        queue = txn._queue
        if queue is not None:
            del queue[key]
            txn._queue = None

    # -- timers

    def _reschedule(self, txn: Transaction[P], timer: Timer | None, deadline: float) -> None:
        """``txn``'s earliest deadline is now ``timer``'s, ``deadline`` (no timer: none runs)."""
        key = txn.key
        queue = txn._queue
        if queue is not None:
            del queue[key]
            txn._queue = None
        txn._scheduled = deadline  # a heap entry with another deadline is stale from now on
        if timer is None or txn.layer is not self:
            return
        timers = self._queues.get(timer)
        if timers is None:
            timers = self._queues[timer] = _TimerQueue()
        if deadline >= timers.tail:
            timers.tail = deadline
            queue = txn._queue = timers.members
            queue[key] = txn
        else:  # an interval shorter than the last one's (a restarted or the TU's timer), or a clock that went back
            heap = self._heap
            heapq.heappush(heap, (deadline, key))
            if len(heap) > self._compact_at:
                self._heap = [entry for entry in heap if self._in_heap(entry)]
                heapq.heapify(self._heap)
                self._compact_at = max(_COMPACT_MIN, 2 * len(self._heap))
        if deadline < self._horizon:
            self._horizon = deadline
            self.timers_started += 1

    def _in_heap(self, entry: _HeapEntry) -> bool:
        txn = self._transactions.get(entry[1])
        return txn is not None and txn._queue is None and txn._scheduled == entry[0]

    def _earliest(self) -> Transaction[P] | None:
        """The transaction with the earliest deadline (the heads of the queues and of the heap; stale heap entries
        go).
        """
        best: Transaction[P] | None = None
        for timers in self._queues.values():
            if timers.members:
                txn = next(iter(timers.members.values()))
                if best is None or txn._scheduled < best._scheduled:
                    best = txn
        heap = self._heap
        while heap and not self._in_heap(heap[0]):
            heapq.heappop(heap)
        if heap and (best is None or heap[0][0] < best._scheduled):
            best = self._transactions[heap[0][1]]
        return best

    def get_timer(self) -> float | None:
        """Earliest deadline across all transactions, ``None`` when idle."""
        earliest = self._earliest()
        self._horizon = _INF if earliest is None else earliest._scheduled
        return None if earliest is None else earliest._scheduled

    def handle_timer(self, now: float) -> None:
        """Fire every due timer."""
        while (txn := self._earliest()) is not None and txn._scheduled <= now:
            self._reschedule(txn, None, _INF)  # due: out of the queue (a heap entry is stale now)
            txn.handle_timer(now)  # what still runs puts it back
        self._horizon = _INF  # whatever the shell armed may be spent: its next look must not be skipped
        self.timers_started += 1

    def next_event(self) -> TransactionEvent[P] | None:
        """Next event for the TU when it is the layer's :class:`EventQueue`, ``None`` when none is queued."""
        return self.events.popleft() if self.events else None

    def messages_to_send(self) -> list[Outgoing[P]]:
        """Drain the messages to write."""
        out = list(self.outbox)
        self.outbox.clear()
        return out
