"""The Edge's internal management listeners and the Front End clients that use them (rules I8–I11).

* **Central Management store replication, HTTPS 4443 (I8).** The Front End holding the CMS pushes a
  small configuration document (``POST /replication/config``, XML); the Edge stores it and acknowledges
  with its SHA-256 and a version number. HTTP/1.1 via h11; mutual TLS, the peer must be one of the
  topology's internal servers.
* **Centralized Logging Service agent, MTLS 50001–50003 (I9–I11).** The CLS controller sends one
  synthetic query line and gets one reply (:mod:`simulator.wire.cls`).

Each listener accepts plain TCP and runs the TLS state machine itself (:class:`TlsStream`), so a refused
handshake sends its alert to the peer and is counted by reason (expired, untrusted, revoked …) instead of
vanishing into asyncio's log; a verified peer whose certificate names no allowed server is refused as
``wrong-san``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
from collections import deque

import h11

from simulator.net.transport.listener import Peer, TlsListener
from simulator.net.transport.tlsstream import TlsStream
from simulator.outcome import Reason
from simulator.wire import cms
from simulator.wire.cls import MAX_LINE, ClsReply, parse_query
from simulator.wire.errors import MalformedMessage

MAX_BODY = cms.MAX_DOCUMENT



class ClsAgentListener(TlsListener):
    """CLS agent on one of 50001–50003: answers ``CLS/1 QUERY`` with the agent name and port."""

    def __init__(self, agent: str, host: str, port: int, context: ssl.SSLContext,
                 allowed_peers: frozenset[str] | None) -> None:
        super().__init__(f"cls-{port}", host, port, context, allowed_peers)
        self.agent = agent
        self.documented_port = port
        self.malformed = 0

    async def refuse(self, stream: TlsStream, peer: Peer, reason: Reason) -> None:
        stream.write(ClsReply(403, (str(reason),)).serialize())
        await stream.drain()

    async def handle(self, stream: TlsStream, peer: Peer) -> None:
        writer = stream
        while True:
            try:
                line = await stream.readuntil(b"\r\n", MAX_LINE)
                query = parse_query(line)
            except asyncio.LimitOverrunError:
                self.malformed += 1
                writer.write(ClsReply(400, ("line-too-long",)).serialize())
                await writer.drain()
                return
            except asyncio.IncompleteReadError:
                return
            except MalformedMessage:
                self.malformed += 1
                writer.write(ClsReply(400, ("malformed",)).serialize())
                await writer.drain()
                continue
            writer.write(ClsReply(200, (self.agent, str(self.documented_port), query.token)).serialize())
            await writer.drain()


class CmsReplicationListener(TlsListener):
    """CMS replica on 4443: accepts ``POST /replication/config`` and acknowledges what it stored."""

    PATH = cms.REPLICATION_PATH

    def __init__(self, agent: str, host: str, port: int, context: ssl.SSLContext,
                 allowed_peers: frozenset[str] | None) -> None:
        super().__init__("cms-replication", host, port, context, allowed_peers)
        self.agent = agent
        self.documents: deque[bytes] = deque(maxlen=64)  # the latest pushes (bounded: a peer can push forever)
        self.version = 0
        self.malformed = 0

    async def refuse(self, stream: TlsStream, peer: Peer, reason: Reason) -> None:
        connection = h11.Connection(h11.SERVER)
        await _send_json(stream, connection, 403, {"error": str(reason)})

    async def handle(self, stream: TlsStream, peer: Peer) -> None:
        reader = writer = stream
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
        request: h11.Request | None = None
        body = bytearray()
        try:
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    connection.receive_data(data)
                    if not data and request is None:
                        return
                    continue
                if isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > MAX_BODY:
                        await _send_json(writer, connection, 413, {"error": "document too large"})
                        return
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    return
        except h11.RemoteProtocolError as error:
            self.malformed += 1
            if connection.our_state in {h11.IDLE, h11.SEND_RESPONSE}:
                await _send_json(writer, connection, error.error_status_hint, {"error": "malformed request"})
            return
        assert request is not None
        if request.method != b"POST" or request.target != self.PATH:
            await _send_json(writer, connection, 404, {"error": "no such resource"})
            return
        document = bytes(body)
        self.documents.append(document)
        self.version += 1
        await _send_json(writer, connection, 200, {
            "ack": hashlib.sha256(document).hexdigest(), "version": self.version, "agent": self.agent,
        })


async def _send_json(writer: TlsStream, connection: h11.Connection, status: int,
                     payload: dict[str, object]) -> None:
    body = json.dumps(payload).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
               ("Connection", "close")]
    data = connection.send(h11.Response(status_code=status, headers=headers))
    data = (data or b"") + (connection.send(h11.Data(data=body)) or b"") + (connection.send(h11.EndOfMessage())
                                                                             or b"")
    writer.write(data)
    await writer.drain()

