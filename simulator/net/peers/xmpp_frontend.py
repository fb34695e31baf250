"""The emulated Front End's XMPP gateway: keeps one gateway link (MTLS 23456) to each Edge node, answers
the partners' messages with receipts and sends messages for partner users out through the Edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import xml.etree.ElementTree as ET

from simulator.net.clients.xmpp import open_gateway_link
from simulator.net.transport.listener import AsyncioStream
from simulator.net.transport.xmpp_stream import NEGOTIATION_TIMEOUT, StanzaLink, XmppFailure, receipt_for
from simulator.outcome import ProbeFailure
from simulator.wire import xmpp
from simulator.wire.errors import MalformedMessage

# ------------------------------------------------------------------------------------------ Front End side


class FrontendXmppGateway:
    """The Front End's XMPP gateway: one persistent MTLS 23456 link per Edge node, answering stanzas."""

    def __init__(self, name: str, domain: str, targets: list[tuple[str, int, str]], context: ssl.SSLContext,
                 source: str | None = None) -> None:
        self.name = name
        self.source = source
        self.domain = domain
        self.targets = targets
        self.context = context
        self.links: dict[str, StanzaLink] = {}
        self.failures: dict[str, str] = {}
        self._streams: list[AsyncioStream] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._running = False

    @property
    def running(self) -> bool:
        return self._running

    async def start(self) -> None:
        self._running = True
        for host, port, server_name in self.targets:
            try:
                stream, events = await open_gateway_link(host, port, self.context, server_name, self.name,
                                                         self.domain, NEGOTIATION_TIMEOUT, source=self.source)
            except ProbeFailure as failure:
                self.failures[server_name] = str(failure)
                continue
            self._streams.append(stream)
            link = StanzaLink(stream, events, server_name, self._answer)
            self.links[server_name] = link
            task = asyncio.create_task(self._run(link))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, link: StanzaLink) -> None:
        with contextlib.suppress(XmppFailure, MalformedMessage, OSError, ssl.SSLError):
            await link.run()

    async def _answer(self, link: StanzaLink, stanza: ET.Element) -> None:
        await link.send(receipt_for(stanza, xmpp.domain_of(stanza.get("to", "")) or self.domain))

    async def stop(self) -> None:
        self._running = False
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for stream in self._streams:
            await stream.close()
        self._streams.clear()

