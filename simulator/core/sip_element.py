"""The transaction user of one SIP element — user agent, registrar, stateful proxy (RFC 3261 §8, §16) — sans-I/O.

Theory of operation
-------------------
A :class:`SipElement` owns one :class:`~simulator.core.sip_transaction.TransactionLayer` and is its
transaction user (TU): every request the element receives or sends, and every response, goes through an
RFC 3261 §17 transaction of that layer, whose table calls the element back
(:class:`~simulator.core.sip_transaction.TransactionUser`) with what happened. The routing itself (which next
hop, which answer) stays with the caller, which may need I/O to decide (DNS, opening a connection).

* A request from the wire creates a server transaction and comes out of :meth:`SipElement.next_event` as
  :class:`~simulator.core.sip_transaction.RequestReceived`; the caller then :meth:`~SipElement.respond`\\ s
  or :meth:`~SipElement.forward`\\ s it. An ACK no server transaction absorbs (the ACK for a 2xx, §17.2.1)
  comes out as :class:`~simulator.core.sip_transaction.StrayAck`, to go on with :meth:`~SipElement.send_stateless`.
* :meth:`~SipElement.forward` (§16.6) starts a client transaction for the forwarded copy, linked to the server
  transaction. Its responses have the element's Via popped (§16.7 step 3); provisional ones other than 100 go
  upstream at once (step 5), the final one goes upstream through the server transaction and comes out as
  :class:`Answered`. :meth:`~SipElement.send_request` is the same without a server transaction: the element's
  own request (a user agent's REGISTER, the Director's NOTIFY); only its final response comes out.
* Every client transaction has a response deadline: Timer C (§16.6 step 11), applied here to every method, or a
  user agent's own patience — a timer of the transaction itself. When it passes — or Timer B/F ends the
  transaction first — the element gives up: the transaction has ended (a late response is then stray), a
  forwarded request is answered 408 upstream (§16.8) and :class:`TimedOut` comes out. A transport error (§16.9,
  §17.1.4) answers 503 upstream and :class:`SendFailed` comes out.

Each pending client transaction carries an opaque ``context`` of the caller's, handed back in those three
events (a callback, a future …); with ``None`` nobody waits on it, and none of them comes out. Nothing reads a
clock: each call takes ``now``. The I/O shell sends
:meth:`~SipElement.messages_to_send`, hands :meth:`~SipElement.next_event` to its routing, and keeps one
timer armed at :meth:`~SipElement.get_timer` that calls :meth:`~SipElement.handle_timer`.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeAlias, TypeVar

from simulator.core.sip_transaction import (
    Outgoing,
    P,
    RequestReceived,
    State,
    StrayAck,
    Timer,
    TimerSettings,
    Transaction,
    TransactionError,
    TransactionKey,
    TransactionLayer,
)
from simulator.wire.errors import MalformedMessage
from simulator.wire.sip import SipMessage, SipRequest, SipResponse, make_response, new_tag

C = TypeVar("C")  # the caller's context of a pending client transaction
_TERMINATED = State.TERMINATED


@dataclass(frozen=True, slots=True)
class Answered(Generic[C]):
    """The final response to a client transaction of this element (for a forward: already relayed upstream)."""

    key: TransactionKey
    response: SipResponse
    context: C


@dataclass(frozen=True, slots=True)
class TimedOut(Generic[C]):
    """No final response within ``after`` seconds (for a forward: 408 already sent upstream, §16.8)."""

    key: TransactionKey
    context: C
    after: float


@dataclass(frozen=True, slots=True)
class SendFailed(Generic[C]):
    """The transport could not carry the request (for a forward: 503 already sent upstream, §16.9)."""

    key: TransactionKey
    context: C


@dataclass(frozen=True, slots=True)
class Provisional(Generic[C]):
    """A provisional response (101–199) to a client transaction of this element's own, when the element was made
    with ``report_provisional`` (a user agent that wants a 183's early SDP, RFC 3261 §13.2.2.1).
    """

    key: TransactionKey
    response: SipResponse
    context: C


ElementEvent: TypeAlias = (RequestReceived[P] | StrayAck[P] | Answered[C] | TimedOut[C] | SendFailed[C]
                           | Provisional[C])


class SipElement(Generic[P, C]):
    """One SIP element's TU over one :class:`TransactionLayer`; see the module docstring.

    ``response_timeout`` is the default response deadline of a client transaction (Timer C); ``reliable``
    says every peer is a stream (TCP/TLS: no retransmissions, zero wait timers); ``auto_trying`` answers a new
    INVITE 100 Trying at once (a proxy, §16.2); ``response_headers`` go into the 408 and 503 the element
    generates itself (a Server header).
    """

    def __init__(
        self,
        rng: random.Random,
        *,
        response_timeout: float,
        settings: TimerSettings | None = None,
        reliable: bool = True,
        auto_trying: bool = False,
        response_headers: Iterable[tuple[str, str]] = (),
        report_provisional: bool = False,
    ) -> None:
        self.layer: TransactionLayer[P] = TransactionLayer(settings=settings, auto_trying=auto_trying, tu=self,
                                                           report_terminated=False)
        self.response_timeout = response_timeout
        self.reliable = reliable
        self.response_headers = tuple(response_headers)
        self.report_provisional = report_provisional
        self._rng = rng
        # client transactions waiting for a final response (marked ``waiting``; each carries the caller's context, and
        # the server transaction it was forwarded for as its upstream)
        self._waiting = 0
        self.events: deque[ElementEvent[P, C]] = deque()  # drained by next_event(), or directly
        self.outbox: deque[Outgoing[P]] = self.layer.outbox  # drained by messages_to_send(), or directly
        self.forwarded = 0
        self.timeouts = 0
        self.send_failures = 0
        self.stray_responses = 0

    def __len__(self) -> int:
        """Client transactions waiting for a final response."""
        return self._waiting

    def timers_started(self) -> int:
        """A counter that moves when a deadline earlier than the last :meth:`get_timer` was set: while it does not
        move, a shell whose timer is armed at or before that value needs not look again (a deadline that went away
        or moved later only makes its handle fire early, and re-arm).
        """
        return self.layer.timers_started

    # ----------------------------------------------------------------------------------- the wire

    def receive(self, message: SipMessage, peer: P, now: float) -> None:
        """A parsed message from ``peer``."""
        try:
            self.layer.receive(message, now, peer, self.reliable)
        except MalformedMessage:
            if isinstance(message, SipRequest):
                raise
            self.stray_responses += 1  # no usable Via: no transaction to match (§18.1.2: dropped)

    def messages_to_send(self) -> list[Outgoing[P]]:
        """Drain the messages to write, in order."""
        return self.layer.messages_to_send()

    def next_event(self) -> ElementEvent[P, C] | None:
        """Next event for the caller, ``None`` when none is queued."""
        return self.events.popleft() if self.events else None

    # ---------------------------------------------------------------------------------- the caller

    def respond(self, key: TransactionKey, response: SipResponse, now: float) -> bool:
        """Answer the request of server transaction ``key``; False when that transaction is gone (its peer's
        connection failed, or it was already answered by a timeout).
        """
        try:
            self.layer.send_response(response, now, key)
        except TransactionError:
            if self.layer.get(key) is None:
                return False
            raise
        return True

    def forward(self, key: TransactionKey, request: SipRequest, peer: P, now: float, context: C, *,
                timeout: float | None = None, branch: str | None = None) -> TransactionKey:
        """Send ``request`` (the forwarded copy, with this element's Via on top) for server transaction ``key``.

        ``branch``: that Via's branch, when the caller has it at hand (spares parsing the Via).
        """
        layer = self.layer
        txn = layer.send_request(request, now, peer, reliable=self.reliable, branch=branch, context=context,
                                 timer_c=self.response_timeout if timeout is None else timeout,
                                 upstream=layer.get(key))
        txn.waiting = True
        self._waiting += 1
        self.forwarded += 1
        return txn.key

    def send_request(self, request: SipRequest, peer: P, now: float, context: C, *,
                     timeout: float | None = None, branch: str | None = None) -> TransactionKey:
        """Send this element's own request (not ACK: :meth:`send_stateless`); ``branch`` as for :meth:`forward`."""
        txn = self.layer.send_request(request, now, peer, reliable=self.reliable, branch=branch, context=context,
                                      timer_c=self.response_timeout if timeout is None else timeout)
        txn.waiting = True
        self._waiting += 1
        return txn.key

    def send_stateless(self, message: SipMessage, peer: P) -> None:
        """Queue a message outside any transaction (an ACK for a 2xx, end to end, §13.2.2.4, §16.6)."""
        self.layer.send_stateless(message, peer)

    def abandon(self, key: TransactionKey) -> C | None:
        """Stop waiting for client transaction ``key`` (no event); returns its context."""
        txn = self.layer.discard(key)
        if txn is None or not self._stop_waiting(txn):
            return None
        return txn.context  # type: ignore[no-any-return]

    def transport_error(self, key: TransactionKey, now: float, headers: Iterable[tuple[str, str]] = ()) -> None:
        """The request of client transaction ``key`` could not be written (§17.1.4): a forward is answered 503
        upstream with ``headers`` added (§16.9); :class:`SendFailed` comes out.
        """
        txn = self.layer.get(key)
        waiting = txn is not None and self._stop_waiting(txn)
        self.layer.handle_transport_error(key, now)  # the transaction ends; nothing waits to be reported any more
        if waiting:
            assert txn is not None
            self._give_up(txn, now, 503, headers)

    def peer_lost(self, peer: P, now: float) -> None:
        """``peer``'s connection is gone: every client transaction sent to it fails as :meth:`transport_error`."""
        for txn in self.layer.transactions():
            if txn.waiting and txn.peer == peer:
                self.transport_error(txn.key, now)

    # -------------------------------------------------------------------------------------- timers

    def get_timer(self) -> float | None:
        """Earliest deadline of the element's transactions (Timer C among them), ``None`` when idle."""
        return self.layer.get_timer()

    def handle_timer(self, now: float) -> None:
        """Fire every due timer (§17, and Timer C)."""
        self.layer.handle_timer(now)

    # --------------------------------------------------------------------------------- machinery

    def _give_up(self, pending: Transaction[P], now: float, status: int,
                 headers: Iterable[tuple[str, str]] = ()) -> None:
        key = pending.key
        server = pending.upstream
        if server is not None and server.state is not _TERMINATED and server.request is not None:
            answer = make_response(server.request, status, to_tag=new_tag(self._rng),
                                   headers=(*self.response_headers, *headers))
            self._relay(server, answer, now)  # §16.8 (408), §16.9 (503)
        if status == 408:
            self.timeouts += 1
            if pending.context is not None:
                self.events.append(TimedOut(key, pending.context, pending.timer_c or 0.0))
        else:
            self.send_failures += 1
            if pending.context is not None:
                self.events.append(SendFailed(key, pending.context))

    def _relay(self, server: Transaction[P], response: SipResponse, now: float) -> None:
        if server.state is _TERMINATED:
            return  # the inbound side is gone (its connection failed): nobody to answer
        try:
            server.send(response, now)
        except TransactionError:
            self.stray_responses += 1  # a second final response (forking is not done here): dropped

    # ------------------------------------------------------ what the transactions report (TransactionUser)

    def request_received(self, txn: Transaction[P], request: SipRequest, now: float) -> None:
        self.events.append(RequestReceived(txn.key, request, txn.peer))

    def stray_ack(self, ack: SipRequest, peer: P, now: float) -> None:
        self.events.append(StrayAck(ack, peer))

    def response_received(self, txn: Transaction[P], response: SipResponse, now: float) -> None:
        if not txn.waiting:
            return  # an abandoned request, or a response after the final one
        status = response.status
        if status >= 200:
            txn.waiting = False
            self._waiting -= 1
        server = txn.upstream
        if server is not None and status != 100 and server.state is not _TERMINATED:  # §16.7 step 5: no 100
            relayed = SipResponse(status, response.reason, response.headers.remove_first("via"),
                                  response.body, response.version)  # §16.7 step 3
            try:
                server.send(relayed, now)
            except TransactionError:
                self.stray_responses += 1  # a second final response (forking is not done here): dropped
        if status >= 200 and txn.context is not None:
            self.events.append(Answered(txn.key, response, txn.context))
        elif status > 100 and self.report_provisional and server is None and txn.context is not None:
            self.events.append(Provisional(txn.key, response, txn.context))

    def timed_out(self, txn: Transaction[P], timer: Timer, now: float) -> None:
        if self._stop_waiting(txn):  # Timer B/C/F; H (no ACK, a server transaction) finds nobody waiting
            self._give_up(txn, now, 408)

    def transport_failed(self, txn: Transaction[P], now: float) -> None:
        if self._stop_waiting(txn):
            self._give_up(txn, now, 503)

    def _stop_waiting(self, txn: Transaction[P]) -> bool:
        """True when ``txn`` was waiting for its final response (it no longer is)."""
        if not txn.waiting:
            return False
        txn.waiting = False
        self._waiting -= 1
        return True

    def stray_response(self, response: SipResponse, peer: P, now: float) -> None:
        self.stray_responses += 1  # §16.7 step 2: matches no transaction of ours, dropped

    def terminated(self, txn: Transaction[P]) -> None:
        pass  # the element keeps its own account of what is pending
