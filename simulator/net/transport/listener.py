"""What every lab listener shares: owned connection tasks, and TLS accepted the way a real Edge refuses.

* :class:`TcpListener` — ``start()`` binds, ``stop()`` closes the server, cancels and awaits every
  connection task and closes every socket (style.md §10: tasks owned, nothing leaks). A subclass writes
  ``serve(reader, writer)`` for one connection; socket errors end that connection, never the listener.
* :class:`TlsListener` — runs the server side of TLS itself (:class:`~simulator.net.tlsstream.TlsStream`)
  so a refused certificate sends its alert and is counted by reason (expired, untrusted, revoked …); a
  verified peer whose certificate names none of ``allowed_peers`` is refused as ``wrong-san`` through the
  protocol's own ``refuse``; the rest reach ``handle(stream, peer)``.
* :class:`ByteStream` / :class:`AsyncioStream` — the one read/write/drain/close interface the protocol
  layers use, whether TLS runs in asyncio (client side) or in a :class:`TlsStream` (server side).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from simulator.net.transport import arrivals
from simulator.net.transport.tls import classify_tls_error, peer_dns_names
from simulator.net.transport.tlsstream import TlsStream
from simulator.outcome import Reason

HANDSHAKE_TIMEOUT = 5.0
READ_SIZE = 65536


class ByteStream(Protocol):
    """A connected byte stream (TLS already established, or plain)."""

    async def read(self, limit: int = READ_SIZE) -> bytes: ...

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    async def close(self) -> None: ...


class AsyncioStream:
    """:class:`ByteStream` over an asyncio reader/writer pair."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def read(self, limit: int = READ_SIZE) -> bytes:
        return await self.reader.read(limit)

    def write(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)

    async def drain(self) -> None:
        await self.writer.drain()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await self.writer.wait_closed()


class TcpListener:
    """A TCP listener that owns its connection tasks."""

    def __init__(self, name: str, host: str, port: int, *, backlog: int = 1024) -> None:
        self.name = name
        self.host = host
        self.port = port
        self._backlog = backlog
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.errors = 0  # connections ended by an unexpected exception in the protocol code (counted, not raised)

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connected, self.host, self.port, reuse_address=True,
                                                  backlog=self._backlog)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Start a task the listener owns (cancelled by :meth:`stop`)."""
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        log = arrivals.recorder()
        if log is not None:
            local, remote = writer.get_extra_info("sockname"), writer.get_extra_info("peername")
            if local and remote:
                log.tcp(self.name, (local[0], local[1]), (remote[0], remote[1]))
        try:
            await self.serve(reader, writer)
        except (OSError, ssl.SSLError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # this connection is over; the listener carries on
        except asyncio.CancelledError:
            pass  # stop() cancelled us: end normally, or asyncio's stream callback logs the cancellation
        except Exception:  # a bug in the protocol code must cost one connection, never the listener
            self.errors += 1
            if self.errors == 1:
                logging.getLogger(__name__).exception("%s: connection ended by an unexpected error", self.name)
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Peer:
    """Who connected: the DNS names of its verified certificate, and both addresses."""

    names: frozenset[str]
    address: tuple[str, int]
    local: tuple[str, int]

    @property
    def name(self) -> str:
        return min(self.names) if self.names else ""


class TlsListener(TcpListener):
    """A TLS listener (mutual when the context requires client certificates) with refusals by reason."""

    def __init__(self, name: str, host: str, port: int, context: ssl.SSLContext,
                 allowed_peers: frozenset[str] | None = None, *, backlog: int = 1024) -> None:
        super().__init__(name, host, port, backlog=backlog)
        self._context = context
        self._allowed = allowed_peers
        self.accepted = 0
        self.rejected: Counter[str] = Counter()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream = TlsStream(reader, writer, self._context)
        try:
            try:
                await stream.handshake(HANDSHAKE_TIMEOUT)
            except (OSError, ssl.SSLError, TimeoutError) as error:
                self.rejected[str(classify_tls_error(error))] += 1
                return
            address = writer.get_extra_info("peername") or ("", 0)
            local = writer.get_extra_info("sockname") or (self.host, self.port)
            peer = Peer(frozenset(peer_dns_names(stream.getpeercert())), (address[0], address[1]),
                        (local[0], local[1]))
            if self._allowed is not None and not peer.names & self._allowed:
                self.rejected[str(Reason.WRONG_SAN)] += 1
                await self.refuse(stream, peer, Reason.WRONG_SAN)
                return
            self.accepted += 1
            await self.handle(stream, peer)
        finally:
            await stream.close()

    async def refuse(self, stream: TlsStream, peer: Peer, reason: Reason) -> None:
        """Tell an authenticated but unwelcome peer why it is refused (protocol-specific)."""

    async def handle(self, stream: TlsStream, peer: Peer) -> None:
        raise NotImplementedError
