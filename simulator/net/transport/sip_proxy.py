"""The asyncio shell of a SIP element over TLS connections, shared by the Access Edge, the emulated Director and
the partners' Edges; and the outbound connections they keep.

Theory of operation
-------------------
The transactions, the forwarding bookkeeping and the timers live in the sans-I/O
:class:`~simulator.core.sip_element.SipElement` (RFC 3261 §16, §17). :class:`SipProxy` is its shell: it feeds
every message its owner's connections read into the element with ``now`` from the event loop's clock, writes
what the element queues onto the connection the element names, and keeps one timer handle
(:class:`ElementTimer`) at the element's ``get_timer()``. The owner is the routing part of the transaction
user: it takes the requests :meth:`SipProxy.receive` returns and answers (:meth:`SipProxy.respond`) or
forwards (:meth:`SipProxy.forward`) each.

Every transport here is reliable (TLS), so the §17 retransmission timers never run and the wait timers are
zero; what remains is Timer B/F (64·T1) and the element's response deadline, ``response_timeout`` (Timer C):
a forwarded request without a final response by then is answered 408 upstream. Forwarding (§16.6) pushes this
proxy's Via with a fresh branch, decrements Max-Forwards and, for dialog-creating requests, adds a
Record-Route; a response has that Via popped and goes back through the server transaction, on the connection
the request came in on. An ACK for a 2xx (no transaction, §16.6) is forwarded statelessly.

:class:`OutboundConnections` keeps one persistent connection per (host, port, TLS name) — Lync servers
reuse their MTLS connections — and runs a reader task per connection that hands requests and responses
to the owner's callbacks, so a peer may send requests back on a connection this side opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TypeAlias

from simulator.core.sip_element import Answered, SipElement
from simulator.core.sip_transaction import RequestReceived, StrayAck, TransactionKey
from simulator.net.transport.sip_connection import SipConnection, format_diagnostic, open_sip_tls
from simulator.net.transport.tls import classify_tls_error
from simulator.wire.sip import Headers, SipMessage, SipRequest, SipResponse, header_key, new_branch

MessageHandler = Callable[[SipConnection, SipMessage], Awaitable[None]]
FinalCallback = Callable[[SipResponse], None]
Inbound: TypeAlias = RequestReceived[SipConnection] | StrayAck[SipConnection]
"""A request for the owner to route: a new server transaction, or an ACK for a 2xx."""
_INBOUND = (RequestReceived, StrayAck)


class ElementTimer:
    """One ``loop.call_at`` handle for one sans-I/O core: kept at or before the core's earliest deadline.

    :meth:`arm` after every call into the core. It looks at ``get_timer()`` only when ``timers_started()`` moved
    (the core moves it when a deadline earlier than the last ``get_timer()`` appears; one that went away or moved
    later only makes the handle fire early), and re-arms only when the deadline moved earlier, so a message costs
    one counter comparison (:meth:`arm_if_moved` makes it without a call, for a shell that reads the counter
    itself). When the handle fires, ``fire(now)`` runs (``now`` never before the deadline it was armed for: the loop
    may wake a little early) and the handle is armed again at the core's next deadline.
    """

    def __init__(self, get_timer: Callable[[], float | None], timers_started: Callable[[], int],
                 fire: Callable[[float], None]) -> None:
        self._get_timer = get_timer
        self._timers_started = timers_started
        self._fire = fire
        self._handle: asyncio.TimerHandle | None = None
        self._at = 0.0
        self.seen = -1  # the value of timers_started() at the last look

    def arm(self) -> None:
        started = self._timers_started()
        if started != self.seen:
            self.arm_if_moved(started)

    def arm_if_moved(self, started: int) -> None:
        if started == self.seen:
            return
        self.seen = started
        deadline = self._get_timer()
        if deadline is None or (self._handle is not None and self._at <= deadline):
            return  # idle, or armed early enough: firing re-arms
        if self._handle is not None:
            self._handle.cancel()
        self._at = deadline
        self._handle = asyncio.get_running_loop().call_at(deadline, self._expired)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _expired(self) -> None:
        self._handle = None
        self._fire(max(asyncio.get_running_loop().time(), self._at))
        self.seen = -1
        self.arm()


class SipProxy:
    """The shell of one :class:`SipElement` whose peers are :class:`SipConnection`\\ s; see the module docstring.

    ``server_header`` goes into the 408 and 503 the element generates; ``auto_trying`` answers a new INVITE 100
    Trying at once (RFC 3261 §16.2: a proxy does; a user agent answering at once needs not).
    """

    def __init__(self, rng: random.Random, response_timeout: float = 10.0, *, server_header: str = "",
                 auto_trying: bool = True) -> None:
        self._rng = rng
        self.core: SipElement[SipConnection, FinalCallback | None] = SipElement(
            rng, response_timeout=response_timeout, auto_trying=auto_trying,
            response_headers=[("Server", server_header)] if server_header else [])
        self._layer = self.core.layer  # its timers_started counter, read after every call into the core
        self.timer = ElementTimer(self.core.get_timer, self.core.timers_started, self._on_timer)
        self._loop: asyncio.AbstractEventLoop | None = None  # the running loop, looked up once
        self.responses_sent: Counter[int] = Counter()  # responses written (answered or relayed), by status code

    def _clock(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    # counters, as the element keeps them
    @property
    def forwarded(self) -> int:
        return self.core.forwarded

    @property
    def timeouts(self) -> int:
        return self.core.timeouts

    @property
    def stray_responses(self) -> int:
        return self.core.stray_responses

    @property
    def pending(self) -> int:
        """Requests (forwarded or this side's own) waiting for a final response."""
        return len(self.core)

    async def receive(self, connection: SipConnection, message: SipMessage) -> list[Inbound]:
        """Feed a message read from ``connection``; returns the requests the owner must route."""
        core = self.core
        core.receive(message, connection, (self._loop or self._clock()).time())
        inbound = self._take_events() if core.events else []
        if core.outbox:  # a new request mostly queues nothing: its answer comes from the owner
            for written in self._queue():
                try:  # noqa: SIM105 — not contextlib.suppress(): three calls more, for every message
                    await written.drain()
                except (OSError, ssl.SSLError):
                    pass  # the write failed: the connection's reader sees it end
        if self._layer.timers_started != self.timer.seen:  # ElementTimer.arm(), without the calls
            self.timer.arm_if_moved(self._layer.timers_started)
        return inbound

    async def respond(self, inbound: Inbound, response: SipResponse) -> None:
        """Answer a request through its server transaction (an ACK is never answered)."""
        if isinstance(inbound, StrayAck):
            return
        self.core.respond(inbound.key, response, (self._loop or self._clock()).time())
        for written in self._queue():
            try:  # noqa: SIM105
                await written.drain()
            except (OSError, ssl.SSLError):
                pass
        if self._layer.timers_started != self.timer.seen:
            self.timer.arm_if_moved(self._layer.timers_started)

    async def forward(self, inbound: Inbound, outbound: SipConnection, *, record_route: str | None = None,
                      pop_route: bool = False, on_final: FinalCallback | None = None,
                      extra: tuple[tuple[str, str], ...] = (), strip: str | None = None) -> None:
        """Forward ``inbound`` on ``outbound`` as a proxy (RFC 3261 §16.6).

        ``strip`` names a header removed from the forwarded copy (before ``extra`` is appended); ``on_final`` sees
        the final response. Raises ConnectionResetError, sending nothing, when ``outbound`` is already closed; a
        write that fails later answers 503 upstream (§16.9).
        """
        if outbound.closed:
            raise ConnectionResetError(f"connection {outbound.id} to {outbound.peer} is closed")
        branch = new_branch(self._rng)
        forwarded = self._forwarded_copy(inbound.request, outbound, branch, record_route, pop_route, extra, strip)
        if isinstance(inbound, StrayAck):
            self.core.send_stateless(forwarded, outbound)  # an ACK for a 2xx: end to end, no transaction
            await self._drain(self._queue())
            return
        now = (self._loop or self._clock()).time()
        key = self.core.forward(inbound.key, forwarded, outbound, now, on_final, branch=branch)
        written = self._queue()
        try:
            await outbound.drain()
        except (OSError, ssl.SSLError) as error:
            self._transport_error(key, error)
        if len(written) > 1:
            await self._drain(written, outbound)
        if self._layer.timers_started != self.timer.seen:
            self.timer.arm_if_moved(self._layer.timers_started)

    async def send_request(self, request: SipRequest, outbound: SipConnection,
                           on_final: FinalCallback | None = None, *, branch: str | None = None) -> None:
        """Send this side's own request (a NOTIFY; ``branch``, its Via's, if at hand); ``on_final`` sees its final
        response.
        """
        key = self.core.send_request(request, outbound, (self._loop or self._clock()).time(), on_final, branch=branch)
        written = self._queue()
        try:
            await outbound.drain()
        except (OSError, ssl.SSLError) as error:
            self._transport_error(key, error)
        await self._drain(written, outbound)
        if self._layer.timers_started != self.timer.seen:
            self.timer.arm_if_moved(self._layer.timers_started)

    async def close(self) -> None:
        self.timer.cancel()

    # --------------------------------------------------------------------------------- machinery

    def _forwarded_copy(self, request: SipRequest, outbound: SipConnection, branch: str, record_route: str | None,
                        pop_route: bool, extra: tuple[tuple[str, str], ...], strip: str | None) -> SipRequest:
        """The copy to send on (§16.6), its header list built in one pass: this runs for every forwarded request."""
        host, port = outbound.local
        source = request.headers
        if pop_route:
            source = source.remove_first("route")  # §16.4: our own Route entry
        drop = None if strip is None else header_key(strip)
        items = [("Via", f"SIP/2.0/TLS {host}:{port};branch={branch}")]  # §16.6 step 8
        if record_route is not None:
            items.append(("Record-Route", record_route))  # §16.6 step 4
        keys = source.lookup_keys
        if drop not in keys and keys.count("max-forwards") == 1:  # the usual request: slices, no loop
            at = keys.index("max-forwards")
            name, value = source.items[at]
            items += source.items[:at]
            items.append((name, str(int(value) - 1) if value.isdigit() else "69"))  # §16.6 step 3
            items += source.items[at + 1:]
            items += extra
            return SipRequest(request.method, request.uri, Headers(tuple(items)), request.body, request.version)
        hops: str | None = None
        for key, item in zip(keys, source.items, strict=True):
            if key == drop:
                continue
            if key == "max-forwards":  # §16.6 step 3: the first one, decremented; no other
                if hops is not None:
                    continue
                value = item[1]
                hops = str(int(value) - 1) if value.isdigit() else "69"
                item = (item[0], hops)
            items.append(item)
        if hops is None:
            items.append(("Max-Forwards", "69"))
        items.extend(extra)
        return SipRequest(request.method, request.uri, Headers(tuple(items)), request.body, request.version)

    def _transport_error(self, key: TransactionKey, error: BaseException) -> None:
        diagnostic = format_diagnostic(1000, f"next hop lost: {error}", classify_tls_error(error))
        self.core.transport_error(key, self._clock().time(), [diagnostic])
        self._take_events()
        self._queue()

    def _take_events(self) -> list[Inbound]:
        inbound: list[Inbound] = []
        events = self.core.events
        while events:
            event = events.popleft()
            if isinstance(event, _INBOUND):
                inbound.append(event)
            elif isinstance(event, Answered) and event.context is not None:
                event.context(event.response)
            # TimedOut, SendFailed: the element has answered upstream and counted them (and reports none of the
            # requests forwarded without an on_final callback)
        return inbound

    def _queue(self) -> list[SipConnection]:
        """Write what the element queued (flushed in the loop's next turn); returns the connections written to."""
        written: list[SipConnection] = []
        outbox = self.core.outbox
        while outbox:
            out = outbox.popleft()
            connection = out.peer
            if connection.closed:
                continue  # the request's connection is gone: nowhere to answer (RFC 3261 §18.2.2)
            message = out.message
            connection.write(message.encode())
            if isinstance(message, SipResponse):
                self.responses_sent[message.status] += 1
            if connection not in written:
                written.append(connection)
        return written

    async def _drain(self, written: list[SipConnection], done: SipConnection | None = None) -> None:
        for connection in written:
            if connection is not done:
                try:  # noqa: SIM105 — not contextlib.suppress(): three calls more, for every message
                    await connection.drain()
                except (OSError, ssl.SSLError):
                    pass  # the write failed: the connection's reader sees it end

    def _on_timer(self, now: float) -> None:
        self.core.handle_timer(now)
        self._take_events()
        self._queue()


class OutboundConnections:
    """Persistent client connections, one per (host, port, name), each with its reader task."""

    def __init__(self, on_message: MessageHandler, *, source: str | None = None, side: str = "") -> None:
        self._on_message = on_message
        self._source = source
        self._side = side
        self._connections: dict[tuple[str, int, str], SipConnection] = {}
        self._locks: dict[tuple[str, int, str], asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.opened = 0

    def find(self, host: str) -> SipConnection | None:
        """An open connection to ``host`` (any port), if there is one."""
        for (peer_host, _, _), connection in self._connections.items():
            if peer_host == host and not connection.closed:
                return connection
        return None

    async def get(self, host: str, port: int, context: ssl.SSLContext, server_name: str,
                  timeout: float) -> SipConnection:
        """The open connection to (host, port, name), or a new one (errors propagate, unclassified)."""
        key = (host, port, server_name)
        connection = self._connections.get(key)
        if connection is not None and not connection.closed and not self._locks[key].locked():
            return connection  # the common case: no lock to take
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            connection = self._connections.get(key)
            if connection is not None and not connection.closed:
                return connection
            connection = await open_sip_tls(host, port, context, server_name, timeout, source=self._source,
                                            side=self._side)
            self.opened += 1
            self._connections[key] = connection
            task = asyncio.get_running_loop().create_task(self._read(key, connection))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return connection

    async def _read(self, key: tuple[str, int, str], connection: SipConnection) -> None:
        try:
            async with contextlib.aclosing(connection.messages()) as messages:
                async for message in messages:
                    await self._on_message(connection, message)
        finally:
            if self._connections.get(key) is connection:
                del self._connections[key]
            await connection.close()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for connection in list(self._connections.values()):
            await connection.close()
        self._connections.clear()
