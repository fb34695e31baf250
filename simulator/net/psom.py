"""Web Conferencing Edge (PSOM) in the lab: external TLS 443 (E9), internal MTLS 8057 (I4), and the
emulated Front End Web Conferencing service that opens the 8057 connections.

How the real one works (research-lync-edge §3.1): at start the Front End's Web Conferencing service opens
four MTLS connections *to* each Edge's internal 8057 (so 8057 is inbound on the Edge); a remote client
opens TLS to the Web Conferencing Edge's public address on 443 and the Edge bridges its session to the
Front End over one of those connections. The lab does the same with the synthetic records of
:mod:`simulator.wire.psom`: a client's JOIN is forwarded over a registered Front End link and the Front
End's answer comes back; with no Front End link the Edge answers ``ERROR no-frontend``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
from collections.abc import Awaitable, Callable

from simulator.net.listener import Peer, TlsListener
from simulator.net.tls import classify_tls_error, open_tls
from simulator.net.tlsstream import TlsStream
from simulator.report.verdict import ProbeFailure, Reason
from simulator.wire.errors import MalformedMessage
from simulator.wire.psom import PsomFramer, PsomRecord, PsomType

StreamOpener = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
LINKS_PER_NODE = 4
BRIDGE_TIMEOUT = 5.0


class _FrontendLink:
    """One registered 8057 connection; carries one bridged exchange at a time."""

    def __init__(self, stream: TlsStream, name: str) -> None:
        self.stream = stream
        self.name = name
        self.lock = asyncio.Lock()
        self.replies: asyncio.Queue[PsomRecord] = asyncio.Queue()

    async def exchange(self, record: PsomRecord, timeout: float) -> PsomRecord:
        async with self.lock:
            while not self.replies.empty():  # a reply that came after an earlier exchange timed out
                self.replies.get_nowait()
            self.stream.write(record.serialize())
            await self.stream.drain()
            return await asyncio.wait_for(self.replies.get(), timeout)


async def _read_records(stream: TlsStream, framer: PsomFramer) -> list[PsomRecord] | None:
    data = await stream.read()
    if not data:
        return None
    return framer.feed(data)


class PsomInternalListener(TlsListener):
    """8057: accepts the Front End's persistent MTLS links (REGISTER → REGISTERED links=N)."""

    def __init__(self, node: str, host: str, port: int, context: ssl.SSLContext,
                 allowed_peers: frozenset[str] | None) -> None:
        super().__init__("psom-internal", host, port, context, allowed_peers)
        self.node = node
        self.links: list[_FrontendLink] = []
        self.malformed = 0
        self._turn = itertools.count()

    def pick_link(self) -> _FrontendLink | None:
        if not self.links:
            return None
        return self.links[next(self._turn) % len(self.links)]

    async def refuse(self, stream: TlsStream, peer: Peer, reason: Reason) -> None:
        stream.write(PsomRecord(PsomType.ERROR, str(reason).encode()).serialize())
        await stream.drain()

    async def handle(self, stream: TlsStream, peer: Peer) -> None:
        framer = PsomFramer()
        link: _FrontendLink | None = None
        try:
            while True:
                try:
                    records = await _read_records(stream, framer)
                except MalformedMessage:
                    self.malformed += 1
                    return
                if records is None:
                    return
                for record in records:
                    if record.type is PsomType.REGISTER and link is None:
                        link = _FrontendLink(stream, record.text or peer.name)
                        self.links.append(link)
                        stream.write(PsomRecord(PsomType.REGISTERED,
                                                f"{self.node} links={len(self.links)}".encode()).serialize())
                        await stream.drain()
                    elif record.type is PsomType.PING:
                        stream.write(PsomRecord(PsomType.PONG, record.payload).serialize())
                        await stream.drain()
                    elif link is not None and record.type in (PsomType.JOINED, PsomType.ERROR):
                        link.replies.put_nowait(record)
                    else:
                        self.malformed += 1
                        stream.write(PsomRecord(PsomType.ERROR, b"unexpected").serialize())
                        await stream.drain()
        finally:
            if link is not None:
                self.links.remove(link)


class PsomExternalListener(TlsListener):
    """443 on the Web Conferencing Edge address: server-authenticated TLS; JOIN is bridged to a Front End."""

    def __init__(self, node: str, host: str, port: int, context: ssl.SSLContext,
                 internal: PsomInternalListener) -> None:
        super().__init__("psom-external", host, port, context, None)
        self.node = node
        self.internal = internal
        self.joins = 0
        self.malformed = 0

    async def handle(self, stream: TlsStream, peer: Peer) -> None:
        framer = PsomFramer()
        while True:
            try:
                records = await _read_records(stream, framer)
            except MalformedMessage:
                self.malformed += 1
                return
            if records is None:
                return
            for record in records:
                answer = await self._answer(record)
                stream.write(answer.serialize())
                await stream.drain()

    async def _answer(self, record: PsomRecord) -> PsomRecord:
        if record.type is PsomType.PING:
            return PsomRecord(PsomType.PONG, record.payload)
        if record.type is not PsomType.JOIN:
            self.malformed += 1
            return PsomRecord(PsomType.ERROR, b"unexpected")
        link = self.internal.pick_link()
        if link is None:
            return PsomRecord(PsomType.ERROR, b"no-frontend")
        try:
            reply = await link.exchange(record, BRIDGE_TIMEOUT)
        except (TimeoutError, OSError, ssl.SSLError):
            return PsomRecord(PsomType.ERROR, b"frontend-timeout")
        if reply.type is PsomType.JOINED:
            self.joins += 1
            return PsomRecord(PsomType.JOINED, f"{self.node}/{reply.text}".encode())
        return reply


class FrontendWebConferencing:
    """The emulated Front End Web Conferencing service: opens and serves LINKS_PER_NODE links per Edge."""

    def __init__(self, name: str, targets: list[tuple[str, int, str]], context: ssl.SSLContext,
                 conference_key: str, source: str | None = None) -> None:
        self.name = name
        self.source = source
        self.targets = targets  # (address, port, TLS name) of each node's 8057
        self.context = context
        self.conference_key = conference_key
        self.connected: dict[str, int] = {}
        self.failures: dict[str, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self._running = False

    @property
    def running(self) -> bool:
        return self._running

    async def start(self) -> None:
        self._running = True
        for host, port, server_name in self.targets:
            for _ in range(LINKS_PER_NODE):
                try:
                    reader, writer = await psom_register(host, port, self.context, server_name, self.name, 3.0,
                                                         source=self.source)
                except ProbeFailure as failure:
                    self.failures[server_name] = str(failure)
                    break
                self.connected[server_name] = self.connected.get(server_name, 0) + 1
                self._writers.append(writer)
                task = asyncio.create_task(self._serve(reader, writer))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        self._running = False
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        framer = PsomFramer()
        with contextlib.suppress(OSError, ssl.SSLError, MalformedMessage):
            while data := await reader.read(65536):
                for record in framer.feed(data):
                    if record.type is PsomType.JOIN:
                        ok = record.text == self.conference_key
                        reply = PsomRecord(PsomType.JOINED, self.name.encode()) if ok else PsomRecord(
                            PsomType.ERROR, b"rejected")
                        writer.write(reply.serialize())
                        await writer.drain()


async def _one_record(reader: asyncio.StreamReader, framer: PsomFramer, where: str, timeout: float) -> PsomRecord:
    try:
        async with asyncio.timeout(timeout):
            while True:
                data = await reader.read(65536)
                if not data:
                    raise ProbeFailure(Reason.RESET, f"{where}: closed before an answer")
                records = framer.feed(data)
                if records:
                    return records[0]
    except (OSError, ssl.SSLError, TimeoutError) as error:
        raise ProbeFailure(classify_tls_error(error), f"{where}: {error}") from None
    except MalformedMessage as error:
        raise ProbeFailure(Reason.PROTOCOL_ERROR, f"{where}: {error.reason}") from None


async def psom_register(host: str, port: int, context: ssl.SSLContext, server_name: str, frontend: str,
                        timeout: float, *, source: str | None = None) -> tuple[asyncio.StreamReader,
                                                                               asyncio.StreamWriter]:
    """Open one Front End link to an Edge's 8057 and register it; returns the open stream pair."""
    reader, writer = await open_tls(host, port, context, server_name, timeout, source=source)
    try:
        writer.write(PsomRecord(PsomType.REGISTER, frontend.encode()).serialize())
        await writer.drain()
        answer = await _one_record(reader, PsomFramer(), f"{host}:{port}", timeout)
    except BaseException:
        writer.close()
        raise
    if answer.type is not PsomType.REGISTERED:
        writer.close()
        reason = Reason(answer.text) if answer.type is PsomType.ERROR and answer.text in set(Reason) \
            else Reason.REJECTED
        raise ProbeFailure(reason, f"{host}:{port}: {answer.type.name} {answer.text}")
    return reader, writer


async def psom_join(host: str, port: int, context: ssl.SSLContext, server_name: str, key: str,
                    timeout: float, *, opener: StreamOpener | None = None) -> str:
    """A remote client joins a conference through the Web Conferencing Edge; returns ``node/frontend``.

    ``opener`` opens the TLS connection itself (a client behind its NAT box); TLS failures still come back
    as :class:`ProbeFailure` with their reason.
    """
    if opener is None:
        reader, writer = await open_tls(host, port, context, server_name, timeout)
    else:
        try:
            reader, writer = await opener()
        except (OSError, ssl.SSLError, TimeoutError) as error:
            raise ProbeFailure(classify_tls_error(error), f"{host}:{port}: {error}") from None
    try:
        writer.write(PsomRecord(PsomType.JOIN, key.encode()).serialize())
        await writer.drain()
        answer = await _one_record(reader, PsomFramer(), f"{host}:{port}", timeout)
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
    if answer.type is not PsomType.JOINED:
        raise ProbeFailure(Reason.REJECTED, f"{host}:{port}: {answer.type.name} {answer.text}")
    return answer.text
