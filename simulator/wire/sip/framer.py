"""Framing a TCP/TLS byte stream into SIP messages and keepalives (RFC 3261 §18.3, RFC 5626 §3.5.1).

Theory of operation
-------------------
``feed(data)`` appends bytes; ``next_event()`` returns the next message or keepalive, ``None`` when more
bytes are needed. A head is cut at the first CRLFCRLF, its Content-Length read from the raw bytes (a
missing one means an empty body), and the head and body go to the same builder as a datagram
(:func:`~simulator.wire.sip.parse._build`). A fault in one message is raised after its body is consumed;
a fault in the framing itself (bad or conflicting Content-Length, oversized head or body) breaks the
stream for good.
"""

from __future__ import annotations

from collections.abc import Iterator

from simulator.wire.errors import MalformedMessage
from simulator.wire.sip.grammar import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_HEADER_BYTES, _bad
from simulator.wire.sip.message import KeepalivePing, KeepalivePong, StreamEvent
from simulator.wire.sip.parse import _build, _content_length


class SipStreamFramer:
    """Splits a TCP/TLS byte stream into messages and keepalives (RFC 3261 §18.3, RFC 5626 §3.5.1).

    ``feed(data)``, then call ``next_event()`` until it returns ``None``. A MalformedMessage about one
    message (missing header, bad URI …) is raised after its body has been consumed, so the caller can
    answer it and go on. When framing itself is lost (bad Content-Length, oversized head or body)
    ``broken`` becomes True, the error is raised once and the connection should be closed.
    """

    def __init__(
        self,
        *,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self._buffer = bytearray()
        self._scan_from = 0
        self._pending: bytes | None = None  # a head waiting for its body
        self._body_length = 0
        self._max_header_bytes = max_header_bytes
        self._max_body_bytes = max_body_bytes
        self._pong_expected = False
        self.broken = False
        # The bytes of the message the last MalformedMessage was about (head, CRLFCRLF, and what of the body was
        # there), so a caller can answer it (RFC 3261 §8.2.6.2) without keeping a copy of the stream itself.
        self.malformed_bytes = b""

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        if not self.broken:
            self._buffer += data

    def expect_pong(self) -> None:
        """Call after sending a CRLFCRLF ping: the next bare CRLF is reported as :class:`KeepalivePong`."""
        self._pong_expected = True

    @property
    def buffered(self) -> int:
        """Bytes received and not consumed yet."""
        return len(self._buffer)

    def _fail(self, reason: str, status: int, head: bytes | None = None) -> MalformedMessage:
        """Framing is lost: ``malformed_bytes`` is ``head`` (already cut from the buffer), then the buffer."""
        self.broken = True
        self.malformed_bytes = bytes(self._buffer) if head is None else head + b"\r\n\r\n" + self._buffer
        self._buffer.clear()
        return _bad(reason, status)

    def next_event(self) -> StreamEvent | None:
        """Next message or keepalive, ``None`` when more bytes are needed (or the stream is broken)."""
        buf = self._buffer
        while not self.broken:
            if self._pending is not None:
                if len(buf) < self._body_length:
                    return None
                body = bytes(buf[: self._body_length]) if self._body_length else b""
                del buf[: self._body_length]
                head, self._pending = self._pending, None
                try:
                    return _build(head, body)
                except MalformedMessage:
                    self.malformed_bytes = head + b"\r\n\r\n" + body
                    raise
            if buf[:2] == b"\r\n":
                if buf[:4] == b"\r\n\r\n":
                    del buf[:4]
                    self._scan_from = 0
                    return KeepalivePing()
                if self._pong_expected:
                    del buf[:2]
                    self._pong_expected = False
                    return KeepalivePong()
                if len(buf) < 4 and bytes(buf[2:3]) in (b"", b"\r"):
                    return None  # could still become a CRLFCRLF ping
                del buf[:2]  # RFC 3261 §7.5: stray CRLF before a start line
                self._scan_from = 0
                continue
            if buf == b"\r":
                return None
            end = buf.find(b"\r\n\r\n", self._scan_from)
            if end < 0:
                if len(buf) > self._max_header_bytes:
                    raise self._fail("header section too large", 413)
                self._scan_from = max(0, len(buf) - 3)
                return None
            if end > self._max_header_bytes:
                raise self._fail("header section too large", 413)
            head = bytes(buf[:end])
            del buf[: end + 4]
            self._scan_from = 0
            try:
                length = _content_length(head)
            except MalformedMessage as exc:
                raise self._fail(exc.reason, 400, head) from None
            if length is not None and length > self._max_body_bytes:
                raise self._fail("body too large", 413, head)
            self._pending = head
            self._body_length = length or 0  # RFC 3261 §18.3 makes it mandatory on streams; assume 0
        return None

    def events(self) -> Iterator[StreamEvent]:
        """Iterate ``next_event()`` until ``None`` (MalformedMessage propagates)."""
        while (event := self.next_event()) is not None:
            yield event
