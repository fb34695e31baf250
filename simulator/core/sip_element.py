"""The transaction user of one SIP element — user agent, registrar, stateful proxy (RFC 3261 §8, §16) — sans-I/O.

Theory of operation
-------------------
A :class:`SipElement` owns one :class:`~simulator.core.sip_transaction.TransactionLayer` and is its
transaction user (TU): every request the element receives or sends, and every response, goes through an
RFC 3261 §17 transaction of that layer. What the element decides is written as data too — :data:`_ON_LAYER_EVENT`
maps each layer event to what the element does with it; the routing itself (which next hop, which answer)
stays with the caller, which may need I/O to decide (DNS, opening a connection).

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
  user agent's own patience. When it passes — or Timer B/F ends the transaction first — the element gives up:
  the client transaction is discarded (a late response is then stray), a forwarded request is answered 408
  upstream (§16.8) and :class:`TimedOut` comes out. A transport error (§16.9, §17.1.4) answers 503 upstream and
  :class:`SendFailed` comes out.

Each pending client transaction carries an opaque ``context`` of the caller's, handed back in those three
events (a callback, a future …). Nothing reads a clock: each call takes ``now``. The I/O shell sends
:meth:`~SipElement.messages_to_send`, hands :meth:`~SipElement.next_event` to its routing, and keeps one
timer armed at :meth:`~SipElement.get_timer` that calls :meth:`~SipElement.handle_timer`.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeAlias, TypeVar

from simulator.core.sip_transaction import (
    Outgoing,
    P,
    RequestReceived,
    ResponseReceived,
    StrayAck,
    StrayResponse,
    TimerSettings,
    TransactionError,
    TransactionKey,
    TransactionLayer,
    TransactionTerminated,
    TransactionTimedOut,
    TransportFailed,
)
from simulator.wire.errors import MalformedMessage
from simulator.wire.sip import SipMessage, SipRequest, SipResponse, make_response, new_tag

C = TypeVar("C")  # the caller's context of a pending client transaction


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


ElementEvent: TypeAlias = RequestReceived[P] | StrayAck[P] | Answered[C] | TimedOut[C] | SendFailed[C]


@dataclass(slots=True)
class _Pending(Generic[C]):
    """A client transaction the element waits on: ``server`` is the one it was forwarded for, if any."""

    server: TransactionKey | None
    context: C
    deadline: float
    timeout: float


_COMPACT_MIN = 4096


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
    ) -> None:
        # the element keeps its own account of what is pending: no TransactionTerminated notices needed
        self.layer: TransactionLayer[P] = TransactionLayer(settings=settings, auto_trying=auto_trying,
                                                           report_terminated=False)
        self.response_timeout = response_timeout
        self.reliable = reliable
        self.response_headers = tuple(response_headers)
        self._rng = rng
        self._pending: dict[TransactionKey, _Pending[C]] = {}
        self._deadlines: list[tuple[float, int, TransactionKey]] = []
        self._counter = 0
        self._compact_at = _COMPACT_MIN
        self.events: deque[ElementEvent[P, C]] = deque()  # drained by next_event(), or directly
        self.outbox: deque[Outgoing[P]] = self.layer.outbox  # drained by messages_to_send(), or directly
        self.forwarded = 0
        self.timeouts = 0
        self.send_failures = 0
        self.stray_responses = 0

    def __len__(self) -> int:
        """Client transactions waiting for a final response."""
        return len(self._pending)

    def timers_started(self) -> int:
        """How many deadlines were ever set: a shell whose count has not moved needs not look at :meth:`get_timer`
        (a deadline that went away or moved later only makes its handle fire early, and re-arm).
        """
        return self.layer.timers_started + self._counter

    # ----------------------------------------------------------------------------------- the wire

    def receive(self, message: SipMessage, peer: P, now: float) -> None:
        """A parsed message from ``peer``."""
        try:
            self.layer.receive(message, now, peer, reliable=self.reliable)
        except MalformedMessage:
            if isinstance(message, SipRequest):
                raise
            self.stray_responses += 1  # no usable Via: no transaction to match (§18.1.2: dropped)
            return
        self._pump(now)

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
        if self.layer.get(key) is None:
            return False
        self.layer.send_response(response, now, key)
        self._pump(now)
        return True

    def forward(self, key: TransactionKey, request: SipRequest, peer: P, now: float, context: C, *,
                timeout: float | None = None, branch: str | None = None) -> TransactionKey:
        """Send ``request`` (the forwarded copy, with this element's Via on top) for server transaction ``key``.

        ``branch``: that Via's branch, when the caller has it at hand (spares parsing the Via).
        """
        client = self._start(request, peer, now, key, context, timeout, branch)
        self.forwarded += 1
        return client

    def send_request(self, request: SipRequest, peer: P, now: float, context: C, *,
                     timeout: float | None = None, branch: str | None = None) -> TransactionKey:
        """Send this element's own request (not ACK: :meth:`send_stateless`); ``branch`` as for :meth:`forward`."""
        return self._start(request, peer, now, None, context, timeout, branch)

    def send_stateless(self, message: SipMessage, peer: P) -> None:
        """Queue a message outside any transaction (an ACK for a 2xx, end to end, §13.2.2.4, §16.6)."""
        self.layer.send_stateless(message, peer)

    def abandon(self, key: TransactionKey) -> C | None:
        """Stop waiting for client transaction ``key`` (no event); returns its context."""
        pending = self._pending.pop(key, None)
        self.layer.discard(key)
        return None if pending is None else pending.context

    def transport_error(self, key: TransactionKey, now: float, headers: Iterable[tuple[str, str]] = ()) -> None:
        """The request of client transaction ``key`` could not be written (§17.1.4): a forward is answered 503
        upstream with ``headers`` added (§16.9); :class:`SendFailed` comes out.
        """
        pending = self._pending.pop(key, None)
        self.layer.handle_transport_error(key, now)
        if pending is not None:
            self._give_up(key, pending, now, 503, headers)
        self._pump(now)

    def peer_lost(self, peer: P, now: float) -> None:
        """``peer``'s connection is gone: every client transaction sent to it fails as :meth:`transport_error`."""
        for key in [key for key in self._pending if self._peer_of(key) == peer]:
            self.transport_error(key, now)

    def _peer_of(self, key: TransactionKey) -> P | None:
        txn = self.layer.get(key)
        return None if txn is None else txn.peer

    # -------------------------------------------------------------------------------------- timers

    def get_timer(self) -> float | None:
        """Earliest deadline of the element and its transactions, ``None`` when idle."""
        layer = self.layer.get_timer()
        own = self._own_timer()
        if own is None:
            return layer
        return own if layer is None or own < layer else layer

    def handle_timer(self, now: float) -> None:
        """Fire every due timer: the transactions' (§17), then the response deadlines."""
        self.layer.handle_timer(now)
        self._pump(now)
        heap = self._deadlines
        while (deadline := self._own_timer()) is not None and deadline <= now:
            _, _, key = heapq.heappop(heap)
            pending = self._pending.pop(key)
            self.layer.discard(key)
            self._give_up(key, pending, now, 408)
        self._pump(now)

    def _own_timer(self) -> float | None:
        heap = self._deadlines
        pending = self._pending
        while heap:
            deadline, _, key = heap[0]
            entry = pending.get(key)
            if entry is not None and entry.deadline == deadline:
                return deadline
            heapq.heappop(heap)  # answered or given up
        return None

    # --------------------------------------------------------------------------------- machinery

    def _start(self, request: SipRequest, peer: P, now: float, server: TransactionKey | None, context: C,
               timeout: float | None, branch: str | None) -> TransactionKey:
        key = self.layer.send_request(request, now, peer, reliable=self.reliable, branch=branch).key  # raises if a twin
        wait = self.response_timeout if timeout is None else timeout
        deadline = now + wait
        self._pending[key] = _Pending(server, context, deadline, wait)
        self._counter += 1
        heapq.heappush(self._deadlines, (deadline, self._counter, key))
        if len(self._deadlines) > self._compact_at:
            self._deadlines = [e for e in self._deadlines if (p := self._pending.get(e[2])) and p.deadline == e[0]]
            heapq.heapify(self._deadlines)
            self._compact_at = max(_COMPACT_MIN, 2 * len(self._deadlines))
        self._pump(now)
        return key

    def _pump(self, now: float) -> None:
        """Turn what the layer reported into the element's effects and events."""
        events = self.layer.events
        while events:
            event = events.popleft()
            _ON_LAYER_EVENT[type(event)](self, event, now)

    def _pass_up(self, event: Any, now: float) -> None:
        self.events.append(event)

    def _ignore(self, event: Any, now: float) -> None:
        pass

    def _stray(self, event: Any, now: float) -> None:
        self.stray_responses += 1  # §16.7 step 2: matches no transaction of ours, dropped

    def _on_response(self, event: ResponseReceived, now: float) -> None:
        key, response = event.key, event.response
        pending = self._pending.get(key)
        if pending is None:
            return  # a server transaction's timer or an abandoned request
        final = response.status >= 200
        if final:
            del self._pending[key]
        server = pending.server
        if server is not None and response.status != 100:  # §16.7 step 5: 100 is not forwarded
            relayed = SipResponse(response.status, response.reason, response.headers.remove_first("via"),
                                  response.body, response.version)  # §16.7 step 3
            self._relay(server, relayed, now)
        if final:
            self.events.append(Answered(key, response, pending.context))

    def _on_timed_out(self, event: TransactionTimedOut, now: float) -> None:
        pending = self._pending.pop(event.key, None)  # Timer B/F; H (no ACK, a server transaction) has none
        if pending is not None:
            self._give_up(event.key, pending, now, 408)

    def _on_transport_failed(self, event: TransportFailed, now: float) -> None:
        pending = self._pending.pop(event.key, None)
        if pending is not None:
            self._give_up(event.key, pending, now, 503)

    def _give_up(self, key: TransactionKey, pending: _Pending[C], now: float, status: int,
                 headers: Iterable[tuple[str, str]] = ()) -> None:
        if pending.server is not None:
            txn = self.layer.get(pending.server)
            if txn is not None:
                answer = make_response(txn.request, status, to_tag=new_tag(self._rng),
                                       headers=(*self.response_headers, *headers))
                self._relay(pending.server, answer, now)  # §16.8 (408), §16.9 (503)
        if status == 408:
            self.timeouts += 1
            self.events.append(TimedOut(key, pending.context, pending.timeout))
        else:
            self.send_failures += 1
            self.events.append(SendFailed(key, pending.context))

    def _relay(self, server: TransactionKey, response: SipResponse, now: float) -> None:
        if self.layer.get(server) is None:
            return  # the inbound side is gone: nobody to answer
        try:
            self.layer.send_response(response, now, server)
        except TransactionError:
            self.stray_responses += 1  # a second final response (forking is not done here): dropped


_Handler: TypeAlias = Callable[[SipElement[Any, Any], Any, float], None]
_ON_LAYER_EVENT: dict[type, _Handler] = {
    RequestReceived: SipElement._pass_up,
    StrayAck: SipElement._pass_up,
    ResponseReceived: SipElement._on_response,
    TransactionTimedOut: SipElement._on_timed_out,
    TransportFailed: SipElement._on_transport_failed,
    StrayResponse: SipElement._stray,
    TransactionTerminated: SipElement._ignore,
}
