"""Stateful SIP forwarding over TLS connections, shared by the Access Edge and the emulated Director.

Theory of operation
-------------------
Every transport here is reliable (TLS), so the RFC 3261 §17 timers that matter are reduced to one: a
forwarded request that gets no final response within ``response_timeout`` is answered 408 by the proxy
(§16.7 step 10 / §16.8 Timer C, simplified). Forwarding (§16.6) pushes the proxy's own Via with a fresh
branch, decrements Max-Forwards and, for dialog-creating requests, adds a Record-Route; the branch keys
the pending entry that remembers the inbound connection. A response is matched by its top Via branch
(§16.7 step 1), the proxy's Via is popped (step 3) and the response goes back on the inbound connection;
a final response ends the entry. ACK is forwarded without an entry (it has no response).

:class:`OutboundConnections` keeps one persistent connection per (host, port, TLS name) — Lync servers
reuse their MTLS connections — and runs a reader task per connection that hands requests and responses
to the owner's callbacks, so a peer may send requests back on a connection this side opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from simulator.net.sip_connection import SipConnection, open_sip_tls
from simulator.wire.errors import MalformedMessage
from simulator.wire.sip import SipMessage, SipRequest, SipResponse, make_response, new_branch

MessageHandler = Callable[[SipConnection, SipMessage], Awaitable[None]]
FinalCallback = Callable[[SipResponse], None]


@dataclass
class _Pending:
    inbound: SipConnection
    request: SipRequest
    timer: asyncio.TimerHandle | None
    on_final: FinalCallback | None


class SipForwarder:
    """Pending forwarded requests, keyed by the branch of the Via this proxy added."""

    def __init__(self, rng: random.Random, response_timeout: float = 10.0) -> None:
        self._rng = rng
        self.response_timeout = response_timeout
        self.pending: dict[str, _Pending] = {}
        self.forwarded = 0
        self.timeouts = 0
        self.stray_responses = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def forward(self, inbound: SipConnection, request: SipRequest, outbound: SipConnection, *,
                      record_route: str | None = None, pop_route: bool = False,
                      on_final: FinalCallback | None = None, extra: tuple[tuple[str, str], ...] = (),
                      strip: str | None = None) -> None:
        """Send ``request`` on ``outbound`` as a proxy (RFC 3261 §16.6); raises OSError if it cannot.

        ``strip`` names a header removed from the forwarded copy (before ``extra`` is appended).
        """
        branch = new_branch(self._rng)
        host, port = outbound.local
        headers = request.headers
        if strip is not None:
            headers = headers.remove(strip)
        if pop_route:
            headers = headers.remove_first("route")  # §16.4: our own Route entry
        max_forwards = headers.get("max-forwards")
        hops = int(max_forwards) - 1 if max_forwards is not None and max_forwards.isdigit() else 69
        headers = headers.set("Max-Forwards", str(hops))  # §16.6 step 3
        if record_route is not None:
            headers = headers.prepend("Record-Route", record_route)  # §16.6 step 4
        for name, value in extra:
            headers = headers.add(name, value)
        headers = headers.prepend("Via", f"SIP/2.0/TLS {host}:{port};branch={branch}")  # §16.6 step 8
        forwarded = SipRequest(request.method, request.uri, headers, request.body, request.version)
        if request.method != "ACK":
            loop = asyncio.get_running_loop()
            timer = loop.call_later(self.response_timeout, self._expire, branch)
            self.pending[branch] = _Pending(inbound, request, timer, on_final)
        try:
            await outbound.send(forwarded)
        except (OSError, ssl.SSLError):
            entry = self.pending.pop(branch, None)
            if entry is not None and entry.timer is not None:
                entry.timer.cancel()
            raise
        self.forwarded += 1

    async def on_response(self, response: SipResponse) -> bool:
        """Relay a response to the connection its request came from; False when it is not ours."""
        try:
            branch = response.top_via.branch
        except MalformedMessage:
            branch = None
        entry = self.pending.get(branch or "")
        if entry is None:
            self.stray_responses += 1  # §16.7 step 2: not ours, dropped
            return False
        final = response.status >= 200
        if final:
            del self.pending[branch or ""]
            if entry.timer is not None:
                entry.timer.cancel()
            if entry.on_final is not None:
                entry.on_final(response)
        relayed = SipResponse(response.status, response.reason, response.headers.remove_first("via"),
                              response.body, response.version)
        with contextlib.suppress(OSError, ssl.SSLError):
            await entry.inbound.send(relayed)
        return True

    def _expire(self, branch: str) -> None:
        entry = self.pending.pop(branch, None)
        if entry is None:
            return
        self.timeouts += 1
        answer = make_response(entry.request, 408)
        task = asyncio.get_running_loop().create_task(_send_quietly(entry.inbound, answer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for entry in self.pending.values():
            if entry.timer is not None:
                entry.timer.cancel()
        self.pending.clear()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


async def _send_quietly(connection: SipConnection, message: SipMessage) -> None:
    with contextlib.suppress(OSError, ssl.SSLError):
        await connection.send(message)


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
