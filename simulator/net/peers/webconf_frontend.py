"""The emulated Front End Web Conferencing service: at start it opens ``LINKS_PER_NODE`` MTLS links to each
Edge's internal 8057 (I4), registers them, and answers the remote clients' JOINs the Edge bridges over them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from simulator.net.clients.psom import psom_register
from simulator.outcome import ProbeFailure
from simulator.wire.errors import MalformedMessage
from simulator.wire.psom import PsomFramer, PsomRecord, PsomType

LINKS_PER_NODE = 4


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

