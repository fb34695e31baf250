"""Server-side TLS over an asyncio stream, driven through ``ssl.MemoryBIO`` so refusals send their alert.

asyncio's own TLS (``start_server(ssl=…)``, ``StreamWriter.start_tls``) aborts the transport when a
handshake fails without flushing the alert OpenSSL wrote (CPython 3.11 ``sslproto._on_handshake_complete``
→ ``_fatal_error``), so a peer refused for an expired, untrusted or revoked certificate sees only a
closed connection. Real Edges (Schannel) send the alert, and a firewall test must tell those apart, so the
lab's mutual-TLS listeners run the TLS state machine themselves: bytes from the socket go into the
incoming BIO, whatever OpenSSL puts in the outgoing BIO — alerts included — is written to the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

READ_SIZE = 65536


class TlsStream:
    """A TLS session over a plain asyncio stream pair (server side)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, context: ssl.SSLContext) -> None:
        self._reader = reader
        self._writer = writer
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._buffer = bytearray()
        self._eof = False

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data:
            self._writer.write(data)

    async def _fill(self) -> bool:
        """Feed the TLS engine from the socket; False at end of stream."""
        data = await self._reader.read(READ_SIZE)
        if not data:
            self._incoming.write_eof()
            return False
        self._incoming.write(data)
        return True

    async def handshake(self, timeout: float) -> None:
        """Complete the handshake; on failure the alert is sent before the error propagates."""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    self._tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    self._flush()
                    await self._writer.drain()
                    if not await self._fill():
                        raise ConnectionResetError("peer closed during the TLS handshake") from None
                except ssl.SSLError:
                    self._flush()  # the alert (RFC 8446 §6.2)
                    with contextlib.suppress(OSError):
                        await self._writer.drain()
                    raise
        self._flush()
        await self._writer.drain()

    def getpeercert(self) -> dict[str, Any] | None:
        return self._tls.getpeercert()

    async def _decrypt(self) -> bytes:
        """The application data of every whole record received so far (waiting for the first); b"" at the end.

        One record's data is returned as OpenSSL handed it: no copy into a buffer and out again.
        """
        tls = self._tls
        while True:
            try:
                chunk = tls.read(READ_SIZE)
            except ssl.SSLWantReadError:
                self._flush()
                if not await self._fill():
                    self._eof = True
                    return b""
                continue
            except ssl.SSLZeroReturnError:
                self._eof = True
                return b""
            if not chunk:
                self._eof = True
                return b""
            break
        incoming = self._incoming
        if not incoming.pending:
            return chunk
        chunks, size = [chunk], len(chunk)
        while incoming.pending and size < READ_SIZE:  # the other whole records already received
            try:
                chunk = tls.read(READ_SIZE)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                break  # a partial record, or close_notify: the next read deals with it
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)

    async def _read_some(self) -> bool:
        data = await self._decrypt()
        if not data:
            return False
        self._buffer += data
        return True

    async def read(self, limit: int = READ_SIZE) -> bytes:
        """Up to ``limit`` bytes of application data; b"" at end of stream."""
        buffer = self._buffer
        if not buffer:
            if self._eof:
                return b""
            data = await self._decrypt()  # the common case: straight from OpenSSL to the caller
            if len(data) <= limit:
                return data
            buffer += memoryview(data)[limit:]
            return data[:limit]
        if len(buffer) <= limit:
            data = bytes(buffer)
            buffer.clear()
            return data
        data = bytes(buffer[:limit])
        del buffer[:limit]
        return data

    async def readuntil(self, separator: bytes, limit: int = 4096) -> bytes:
        """Data up to and including ``separator``; raises like ``StreamReader.readuntil``."""
        while True:
            index = self._buffer.find(separator)
            if index >= 0:
                end = index + len(separator)
                data = bytes(self._buffer[:end])
                del self._buffer[:end]
                return data
            if len(self._buffer) > limit:
                raise asyncio.LimitOverrunError("separator not found within the limit", len(self._buffer))
            if self._eof or not await self._read_some():
                raise asyncio.IncompleteReadError(bytes(self._buffer), None)

    def write(self, data: bytes) -> None:
        self._tls.write(data)
        self._flush()

    async def drain(self) -> None:
        await self._writer.drain()

    async def close(self) -> None:
        """Send close_notify and close the socket."""
        with contextlib.suppress(ssl.SSLError, ValueError):
            self._tls.unwrap()
        with contextlib.suppress(ssl.SSLError):
            self._flush()
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()
