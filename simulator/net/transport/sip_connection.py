"""SIP over TLS streams: one connection object for every side, a TLS listener, and outbound TLS.

* :class:`SipConnection` frames a TLS byte stream with :class:`~simulator.wire.sip.SipStreamFramer`,
  answers CRLFCRLF keepalives, and turns a malformed request into the codec's status (400, 413, 505 …)
  built from whatever mandatory headers could be salvaged (RFC 3261 §8.2.6 needs Via, From, To, Call-ID,
  CSeq); a request without a Via cannot be answered and is dropped. Every malformed message is counted.
  When framing itself is lost the connection is closed. Writes made during one turn of the event loop
  are queued and leave together early in the next (one TLS record, one ``send``), in order; ``close``
  flushes first.
* :class:`SipTlsListener` accepts TCP and runs the server side of TLS through
  :class:`~simulator.net.tlsstream.TlsStream`, so a refused client certificate sends its alert and is
  counted by reason; an authenticated peer whose certificate names none of ``allowed_peers`` is refused
  as ``wrong-san``.
* :func:`open_sip_tls` opens the client side (asyncio TLS, hostname checked by the context) from an
  optional source address.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
from collections.abc import AsyncGenerator, Awaitable, Callable

from simulator.net.transport.listener import READ_SIZE, AsyncioStream, ByteStream, Peer, TlsListener
from simulator.net.transport.tls import peer_dns_names
from simulator.net.transport.tlsstream import TlsStream
from simulator.outcome import Reason
from simulator.wire.errors import MalformedMessage
from simulator.wire.sip import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_HEADER_BYTES,
    KEEPALIVE_PONG,
    REASON_PHRASES,
    KeepalivePing,
    SipMessage,
    SipRequest,
    SipResponse,
    SipStreamFramer,
    header_key,
)
from simulator.wire.sip.parse import _build, _content_length

_SALVAGED = ("via", "from", "to", "call-id", "cseq")
_MESSAGES = (SipRequest, SipResponse)
# Messages queued on a connection before they are written without waiting for the loop's next turn. One read
# can hold a hundred requests; writing their forwards only after all of them are handled made the hops take turns
# (the Director idle while the Edge parsed, and back), so a SIP load through the Edge left half the machine idle.
# Writing every 8 lets the next hop work in parallel: benchmarks/sip.py MESSAGE 0.21 -> 0.34 of SIPp direct
# (benchmarks/RESULTS.md), at no measurable CPU per message (1, 2 and 4 cost more writes; 16 and 32 pipeline less).
FLUSH_EVERY = 8
_connection_ids = itertools.count(1)


class _Framer(SipStreamFramer):
    """The codec's framer, telling when it holds nothing (no bytes, no head waiting for its body)."""

    @property
    def idle(self) -> bool:
        return self._pending is None and not self._buffer


def salvage_error_response(raw: bytes, status: int) -> bytes | None:
    """An error response to a request the codec refused, from its raw bytes; ``None`` if unanswerable.

    RFC 3261 §8.2.6.2 asks for Via, From, To, Call-ID and CSeq copied; a response to a response, or a
    request without any Via, is impossible (§18.1.2), so ``None``. Never raises.
    """
    head = raw.lstrip(b"\r\n").split(b"\r\n\r\n", 1)[0]
    lines = head.split(b"\r\n")
    if not lines or lines[0][:4].upper() == b"SIP/":
        return None
    copied: list[bytes] = []
    has_via = False
    for line in lines[1:]:
        name, colon, _ = line.partition(b":")
        if not colon:
            continue
        try:
            key = header_key(name.strip(b" \t").decode("ascii"))
        except UnicodeDecodeError:
            continue
        if key in _SALVAGED and b"\x00" not in line and b"\r" not in line and b"\n" not in line:
            copied.append(line)
            has_via = has_via or key == "via"
    if not has_via:
        return None
    reason = REASON_PHRASES.get(status, "Bad Request")
    return (f"SIP/2.0 {status} {reason}\r\n".encode() + b"\r\n".join(copied)
            + b"\r\nContent-Length: 0\r\n\r\n")


class SipConnection:
    """One SIP-over-TLS connection: ``messages()`` yields what arrives, ``send()`` (or ``write()`` then
    ``drain()``) writes.
    """

    def __init__(self, stream: ByteStream, *, peer: tuple[str, int], local: tuple[str, int],
                 peer_names: frozenset[str] = frozenset(), side: str = "") -> None:
        self.id = f"c{next(_connection_ids)}"
        self.stream = stream
        self.peer = peer
        self.local = local
        self.peer_names = peer_names
        self.side = side
        self.closed = False
        self.error: BaseException | None = None  # what ended the read side, when it was not a clean close
        self.malformed = 0
        self.keepalives = 0
        self.authenticated: set[str] = set()  # AORs a registrar accepted on this flow (Access Edge)
        self._framer = _Framer()  # it keeps the bytes of a malformed request, to answer it from
        # Writes made in one turn of the event loop leave together (one TLS record, one send) in the next.
        self._outgoing: list[bytes] = []
        self._flush_handle: asyncio.Handle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop the first write ran in (one per connection)

    async def send(self, message: SipMessage) -> None:
        await self.send_bytes(message.encode())

    async def send_bytes(self, data: bytes) -> None:
        """Queue ``data`` (:meth:`write`), then :meth:`drain`."""
        self.write(data)
        await self.stream.drain()

    def write(self, data: bytes) -> None:
        """Queue ``data``; it is written, in order, by a callback in the event loop's next turn, or at once when
        :data:`FLUSH_EVERY` messages are queued. Raises ConnectionResetError when the connection is closed.
        """
        if self.closed:
            raise ConnectionResetError(f"connection {self.id} to {self.peer} is closed")
        self._outgoing.append(data)
        if len(self._outgoing) >= FLUSH_EVERY:
            self.flush()  # the next hop starts on these while this loop goes on with the rest of its read
            return
        if self._flush_handle is None:
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_soon(self._flush_now)

    def drain(self) -> Awaitable[None]:
        """Wait while the stream is paused; raises (as the stream's ``drain`` does) when the connection is lost.

        The stream's own awaitable: one coroutine less per message than an ``async def`` around it.
        """
        return self.stream.drain()

    def flush(self) -> None:
        """Write what ``send_bytes`` queued now (also done by ``close`` and by the scheduled callback)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        self._flush_now()

    def _flush_now(self) -> None:
        self._flush_handle = None
        if not self._outgoing:
            return
        outgoing = self._outgoing
        data = outgoing[0] if len(outgoing) == 1 else b"".join(outgoing)
        outgoing.clear()
        # A broken stream fails the sender's drain(); nothing may escape into the event loop from here.
        with contextlib.suppress(OSError, ssl.SSLError, ValueError, RuntimeError):
            self.stream.write(data)

    async def close(self) -> None:
        if not self.closed:
            self.flush()
            self.closed = True
            await self.stream.close()

    async def messages(self) -> AsyncGenerator[SipMessage, None]:
        """Messages until the peer closes; keepalives and malformed requests are handled here."""
        framer = self._framer
        while not self.closed:
            try:
                data = await self.stream.read(READ_SIZE)
            except (OSError, ssl.SSLError, asyncio.IncompleteReadError) as error:
                self.error = error  # e.g. a TLS 1.3 alert refusing our certificate after the handshake
                return
            if not data:
                return
            if framer.idle:
                # The usual read holds whole messages: cut and build them here as the framer would (same limits,
                # same builder), without copying the read into the framer's buffer and out again; anything else —
                # a CRLF, a cut message, a fault — goes to the framer from that message on, which decides and
                # answers as always (tests/sip/test_connection_framing.py: the same messages and answers).
                start, end_of_data = 0, len(data)
                while start < end_of_data:
                    end = data.find(b"\r\n\r\n", start)
                    if end < 0 or data[start] == 13 or end - start > DEFAULT_MAX_HEADER_BYTES:
                        break
                    head = data[start:end]
                    try:
                        length = _content_length(head) or 0
                    except MalformedMessage:
                        break
                    stop = end + 4 + length
                    if length > DEFAULT_MAX_BODY_BYTES or stop > end_of_data:
                        break
                    body = data[end + 4:stop]
                    try:
                        message = _build(head, body)
                    except MalformedMessage:
                        break
                    start = stop
                    yield message
                if start:
                    data = data[start:]
                    if not data:
                        continue
            framer.feed(data)
            while True:
                try:
                    event = framer.next_event()
                except MalformedMessage as error:
                    self.malformed += 1
                    if error.status is not None:
                        answer = salvage_error_response(framer.malformed_bytes, error.status)
                        if answer is not None:
                            with contextlib.suppress(OSError, ssl.SSLError):
                                await self.send_bytes(answer)
                    if framer.broken:
                        return
                    continue
                if event is None:
                    break
                if isinstance(event, _MESSAGES):
                    yield event
                elif isinstance(event, KeepalivePing):
                    self.keepalives += 1
                    with contextlib.suppress(OSError, ssl.SSLError):
                        await self.send_bytes(KEEPALIVE_PONG)  # RFC 5626 §3.5.1


ConnectionHandler = Callable[[SipConnection], Awaitable[None]]


class SipTlsListener(TlsListener):
    """A SIP/TLS (or SIP/MTLS) listener: handshake, peer check, then ``handler(connection)``."""

    def __init__(self, name: str, host: str, port: int, context: ssl.SSLContext, handler: ConnectionHandler,
                 *, allowed_peers: frozenset[str] | None = None, side: str = "",
                 refuse: Callable[[SipConnection, Reason], Awaitable[None]] | None = None) -> None:
        super().__init__(name, host, port, context, allowed_peers)
        self.side = side
        self._handler = handler
        self._refuse = refuse
        self.connections: set[SipConnection] = set()
        self._malformed_closed = 0

    @property
    def malformed(self) -> int:
        """Malformed messages received on this listener's connections, open and closed."""
        return sum(connection.malformed for connection in self.connections) + self._malformed_closed

    def _connection(self, stream: TlsStream, peer: Peer) -> SipConnection:
        return SipConnection(stream, peer=peer.address, local=peer.local, peer_names=peer.names, side=self.side)

    async def refuse(self, stream: TlsStream, peer: Peer, reason: Reason) -> None:
        if self._refuse is not None:
            await self._refuse(self._connection(stream, peer), reason)

    async def handle(self, stream: TlsStream, peer: Peer) -> None:
        connection = self._connection(stream, peer)
        self.connections.add(connection)
        try:
            await self._handler(connection)
        finally:
            self.connections.discard(connection)
            self._malformed_closed += connection.malformed
            connection.flush()  # before the listener closes the stream
            connection.closed = True


async def open_sip_tls(host: str, port: int, context: ssl.SSLContext, server_name: str, timeout: float, *,
                       source: str | None = None, side: str = "") -> SipConnection:
    """Connect and complete TLS (the context checks the server's certificate names ``server_name``).

    Raises OSError/ssl.SSLError/TimeoutError; callers classify with ``classify_tls_error``.
    """
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, ssl=context, server_hostname=server_name,
                                ssl_handshake_timeout=timeout, local_addr=(source, 0) if source else None),
        timeout)
    return sip_connection_over(reader, writer, host, port, side)


def sip_connection_over(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, port: int,
                        side: str = "") -> SipConnection:
    """A SipConnection over an already open TLS stream pair (e.g. one made through a NAT box)."""
    peercert = writer.get_extra_info("peercert")
    local = writer.get_extra_info("sockname") or ("", 0)
    return SipConnection(AsyncioStream(reader, writer), peer=(host, port), local=(local[0], local[1]),
                         peer_names=frozenset(peer_dns_names(peercert)), side=side)


# ms-diagnostics (MS-SIPRE §2.2.3 style): "<code>;reason=\"…\"", plus the lab's reason code so a client
# far away can tell *why* a hop refused (wrong-san, untrusted …) without reading the server's counters.
DIAGNOSTICS_HEADER = "ms-diagnostics"


def format_diagnostic(code: int, text: str, reason: Reason | None = None) -> tuple[str, str]:
    """An ``ms-diagnostics`` header carrying ``reason`` as ``edgesim-reason``."""
    value = f'{code};reason="{text}"'
    if reason is not None:
        value += f';edgesim-reason="{reason}"'
    return DIAGNOSTICS_HEADER, value


def diagnostic_reason(message: SipMessage) -> Reason | None:
    """The ``edgesim-reason`` of a response's ``ms-diagnostics``, if it names a known reason."""
    value = message.headers.get(DIAGNOSTICS_HEADER) or ""
    marker = 'edgesim-reason="'
    start = value.find(marker)
    if start < 0:
        return None
    end = value.find('"', start + len(marker))
    text = value[start + len(marker):end if end >= 0 else None]
    return Reason(text) if text in set(Reason) else None
