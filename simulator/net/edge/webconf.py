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
import itertools
import ssl

from simulator.net.transport.listener import Peer, TlsListener
from simulator.net.transport.tlsstream import TlsStream
from simulator.outcome import Reason
from simulator.wire.errors import MalformedMessage
from simulator.wire.psom import PsomFramer, PsomRecord, PsomType

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

