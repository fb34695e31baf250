"""XMPP client helpers: open a Front End gateway link to an Edge's 23456, send a stanza and wait for its
answer, and the stanzas the probes send (ping, a message asking for a receipt).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import xml.etree.ElementTree as ET

from simulator.net.transport.listener import AsyncioStream
from simulator.net.transport.tls import classify_tls_error
from simulator.net.transport.xmpp_stream import (
    PING_NS,
    RECEIPTS_NS,
    EventReader,
    StanzaLink,
    XmppFailure,
    _as_probe_failure,
    ignore_stanza,
)
from simulator.outcome import ProbeFailure, Reason
from simulator.wire import xmpp
from simulator.wire.errors import MalformedMessage


async def open_gateway_link(host: str, port: int, context: ssl.SSLContext, server_name: str, name: str,
                            domain: str, timeout: float, *,
                            source: str | None = None) -> tuple[AsyncioStream, EventReader]:
    """Open the Front End → Edge gateway link: mutual TLS, then an XMPP stream (I1/X3)."""
    with _as_probe_failure(f"{host}:{port}"):
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=server_name,
                                                           local_addr=(source, 0) if source else None)
            stream = AsyncioStream(reader, writer)
            try:
                events = EventReader(stream)
                stream.write(xmpp.stream_header(name, domain, default_ns="jabber:component:accept"))
                await stream.drain()
                await events.expect_header()
                await events.expect_element()  # features
                return stream, events
            except BaseException:
                await stream.close()
                raise


async def exchange(stream: AsyncioStream, events: EventReader, stanza: bytes, stanza_id: str,
                   timeout: float, where: str) -> ET.Element:
    """Send one stanza on an open stream and wait for the stanza that answers it."""
    link = StanzaLink(stream, events, where, ignore_stanza)
    runner = asyncio.create_task(link.run())
    try:
        return await link.request(stanza, stanza_id, timeout)
    except TimeoutError:
        raise ProbeFailure(Reason.TIMEOUT, f"{where}: no answer to stanza {stanza_id}") from None
    except (OSError, ssl.SSLError) as error:
        raise ProbeFailure(classify_tls_error(error), f"{where}: {error}") from None
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError, XmppFailure, MalformedMessage, OSError, ssl.SSLError):
            await runner


def ping(from_: str, to: str, stanza_id: str) -> bytes:
    element = ET.Element("iq", {"type": "get", "from": from_, "to": to, "id": stanza_id})
    ET.SubElement(element, f"{{{PING_NS}}}ping")
    return ET.tostring(element)


def message_with_receipt_request(from_: str, to: str, stanza_id: str, body: str) -> bytes:
    element = ET.Element("message", {"from": from_, "to": to, "id": stanza_id, "type": "chat"})
    ET.SubElement(element, "body").text = body
    ET.SubElement(element, f"{{{RECEIPTS_NS}}}request")
    return ET.tostring(element)

