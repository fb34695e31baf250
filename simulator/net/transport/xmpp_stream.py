"""The Edge's XMPP proxy (5269, E1/E2/X1/X2), its gateway link to the Front End (MTLS 23456, I1/X3), and
the lab's XMPP peers: the Front End's XMPP gateway and a federated XMPP partner server.

Server-to-server streams follow RFC 6120: stream header, STARTTLS (required), TLS, stream restart, SASL
EXTERNAL with the peer's certificate (XEP-0178: the certificate must name the domain in the stream's
``from``), restart, then stanzas. Strict XMPP s2s streams carry stanzas one way; the lab lets the
receiving server answer on the same stream (as XEP-0288 bidirectional streams do) so a probe sees the
round trip on one connection. The gateway link's real framing is not public (research §3.2); the lab
runs it as an XMPP stream over mutual TLS, which is what a firewall sees.

Flow of a partner's message (E1): partner → Edge 5269 → gateway link (the Front End's persistent
23456 connection to that node) → Front End, whose receipt (XEP-0184) travels back the same way. Flow of
an outbound message (E2): Front End → 23456 → Edge, which finds the partner by SRV
``_xmpp-server._tcp.<domain>`` through the lab DNS, opens 5269 to it, and relays the partner's receipt.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
import xml.etree.ElementTree as ET
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator

from simulator.net.transport.listener import AsyncioStream, ByteStream, TcpListener
from simulator.net.transport.tls import classify_tls_error, peer_dns_names
from simulator.net.transport.tlsstream import TlsStream
from simulator.outcome import ProbeFailure, Reason
from simulator.wire import xmpp
from simulator.wire.errors import MalformedMessage

NEGOTIATION_TIMEOUT = 5.0
RECEIPTS_NS = "urn:xmpp:receipts"
PING_NS = "urn:xmpp:ping"


class XmppFailure(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class EventReader:
    """Pulls stream events from a Stream through one parser at a time (replaced on each restart)."""

    def __init__(self, stream: ByteStream) -> None:
        self.stream = stream
        self.parser = xmpp.XmppStreamParser()
        self._events: list[xmpp.StreamEvent] = []

    def restart(self, stream: ByteStream | None = None) -> None:
        self.stream = stream or self.stream
        self.parser = xmpp.XmppStreamParser()
        self._events.clear()

    async def next(self) -> xmpp.StreamEvent:
        while not self._events:
            data = await self.stream.read()
            if not data:
                raise XmppFailure(Reason.RESET, "the peer closed the stream")
            self._events.extend(self.parser.feed(data))
        return self._events.pop(0)

    async def expect_header(self) -> xmpp.StreamOpened:
        event = await self.next()
        if not isinstance(event, xmpp.StreamOpened):
            raise XmppFailure(Reason.PROTOCOL_ERROR, f"expected a stream header, got {event}")
        return event

    async def expect_element(self) -> ET.Element:
        event = await self.next()
        if isinstance(event, xmpp.TopLevel):
            if event.tag == f"{{{xmpp.STREAMS_NS}}}error":
                condition = xmpp.local_name(event.element[0].tag) if len(event.element) else "undefined"
                raise XmppFailure(Reason.REJECTED, f"stream error: {condition}")
            return event.element
        raise XmppFailure(Reason.PROTOCOL_ERROR, f"expected an element, got {event}")


def _has_child(element: ET.Element, namespace: str, name: str) -> bool:
    return element.find(f"{{{namespace}}}{name}") is not None


# ------------------------------------------------------------------------------------------- negotiation


@contextlib.contextmanager
def _as_probe_failure(where: str) -> Iterator[None]:
    """A client-side XMPP failure becomes a ProbeFailure with its reason code."""
    try:
        yield
    except XmppFailure as failure:
        raise ProbeFailure(failure.reason, f"{where}: {failure}") from None
    except MalformedMessage as error:
        raise ProbeFailure(Reason.PROTOCOL_ERROR, f"{where}: {error.reason}") from None
    except (OSError, ssl.SSLError, TimeoutError) as error:
        raise ProbeFailure(classify_tls_error(error), f"{where}: {error}") from None


async def accept_s2s(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, context: ssl.SSLContext,
                     local_domain: str, stream_ids: Callable[[], str],
                     allowed_domains: frozenset[str] | None = None) -> tuple[TlsStream, EventReader, str]:
    """The receiving side of an s2s stream up to authenticated stanzas; returns (stream, events, peer domain)."""
    plain = AsyncioStream(reader, writer)
    events = EventReader(plain)
    header = await events.expect_header()
    if header.to.lower() != local_domain:
        plain.write(xmpp.stream_header(local_domain, header.from_, stream_ids()) + xmpp.stream_error("host-unknown"))
        await plain.drain()
        raise XmppFailure(Reason.REJECTED, f"stream to {header.to!r}, not {local_domain}")
    plain.write(xmpp.stream_header(local_domain, header.from_, stream_ids())
                + xmpp.features(xmpp.STARTTLS_REQUIRED))
    await plain.drain()
    element = await events.expect_element()
    if element.tag != f"{{{xmpp.TLS_NS}}}starttls":
        plain.write(xmpp.stream_error("policy-violation"))  # RFC 6120 §5.3.1: TLS is required here
        await plain.drain()
        raise XmppFailure(Reason.PROTOCOL_ERROR, f"expected <starttls/>, got {element.tag}")
    plain.write(xmpp.PROCEED)
    await plain.drain()
    secure = TlsStream(reader, writer, context)
    await secure.handshake(NEGOTIATION_TIMEOUT)
    events.restart(secure)
    header = await events.expect_header()
    peer_domain = header.from_.lower()
    if allowed_domains is not None and peer_domain not in allowed_domains:
        # Lync federates only with configured XMPP partners (New-CsXmppAllowedPartner).
        secure.write(xmpp.stream_header(local_domain, peer_domain, stream_ids())
                     + xmpp.stream_error("policy-violation"))
        await secure.drain()
        raise XmppFailure(Reason.REJECTED, f"{peer_domain} is not an allowed XMPP partner")
    secure.write(xmpp.stream_header(local_domain, peer_domain, stream_ids()) + xmpp.features(xmpp.SASL_EXTERNAL))
    await secure.drain()
    element = await events.expect_element()
    if element.tag != f"{{{xmpp.SASL_NS}}}auth" or element.get("mechanism") != "EXTERNAL":
        secure.write(xmpp.sasl_failure("invalid-mechanism"))
        await secure.drain()
        raise XmppFailure(Reason.PROTOCOL_ERROR, "expected SASL EXTERNAL")
    if peer_domain not in peer_dns_names(secure.getpeercert()):  # XEP-0178 §3: the certificate names the domain
        secure.write(xmpp.sasl_failure("not-authorized"))
        await secure.drain()
        raise XmppFailure(Reason.WRONG_SAN, f"the peer's certificate does not name {peer_domain}")
    secure.write(xmpp.SASL_SUCCESS)
    await secure.drain()
    events.restart()
    await events.expect_header()
    secure.write(xmpp.stream_header(local_domain, peer_domain, stream_ids()) + xmpp.features())
    await secure.drain()
    return secure, events, peer_domain


async def connect_s2s(host: str, port: int, local_domain: str, remote_domain: str, context: ssl.SSLContext,
                      timeout: float, local_addr: str | None = None) -> tuple[AsyncioStream, EventReader]:
    """The initiating side: STARTTLS (the peer's certificate must name ``remote_domain``), SASL EXTERNAL."""
    with _as_probe_failure(f"{host}:{port}"):
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port,
                                                           local_addr=(local_addr, 0) if local_addr else None)
            stream = AsyncioStream(reader, writer)
            try:
                events = EventReader(stream)
                stream.write(xmpp.stream_header(local_domain, remote_domain))
                await stream.drain()
                await events.expect_header()
                features = await events.expect_element()
                if not _has_child(features, xmpp.TLS_NS, "starttls"):
                    raise XmppFailure(Reason.PROTOCOL_ERROR, "the peer offers no STARTTLS")
                stream.write(xmpp.STARTTLS)
                await stream.drain()
                if (await events.expect_element()).tag != f"{{{xmpp.TLS_NS}}}proceed":
                    raise XmppFailure(Reason.REJECTED, "STARTTLS refused")
                await writer.start_tls(context, server_hostname=remote_domain)
                events.restart()
                stream.write(xmpp.stream_header(local_domain, remote_domain))
                await stream.drain()
                await events.expect_header()
                features = await events.expect_element()
                mechanisms = [m.text for m in features.iter(f"{{{xmpp.SASL_NS}}}mechanism")]
                if "EXTERNAL" not in mechanisms:
                    raise XmppFailure(Reason.PROTOCOL_ERROR, f"no SASL EXTERNAL offered ({mechanisms})")
                stream.write(xmpp.AUTH_EXTERNAL)
                await stream.drain()
                outcome = await events.expect_element()
                if outcome.tag != f"{{{xmpp.SASL_NS}}}success":
                    condition = xmpp.local_name(outcome[0].tag) if len(outcome) else "failure"
                    raise XmppFailure(Reason.WRONG_SAN if condition == "not-authorized" else Reason.REJECTED,
                                      f"SASL EXTERNAL: {condition}")
                events.restart()
                stream.write(xmpp.stream_header(local_domain, remote_domain))
                await stream.drain()
                await events.expect_header()
                await events.expect_element()  # the (empty) post-authentication features
                return stream, events
            except BaseException:
                await stream.close()
                raise


# ---------------------------------------------------------------------------------------------- stanzas


def receipt_for(stanza: ET.Element, from_: str) -> bytes:
    """A XEP-0184 receipt answering a message, or an iq result answering an iq."""
    sender, stanza_id = stanza.get("from", ""), stanza.get("id", "")
    if xmpp.local_name(stanza.tag) == "iq":
        return ET.tostring(ET.Element("iq", {"type": "result", "from": from_, "to": sender, "id": stanza_id}))
    reply = ET.Element("message", {"from": from_, "to": sender, "id": f"receipt-{stanza_id}"})
    ET.SubElement(reply, f"{{{RECEIPTS_NS}}}received", {"id": stanza_id})
    return ET.tostring(reply, default_namespace=None)


def answered_id(stanza: ET.Element) -> str | None:
    """Which stanza id this one answers (an iq result's id, a receipt's id), else None."""
    if xmpp.local_name(stanza.tag) == "iq" and stanza.get("type") in ("result", "error"):
        return stanza.get("id")
    received = stanza.find(f"{{{RECEIPTS_NS}}}received")
    return received.get("id") if received is not None else None


async def ignore_stanza(link: StanzaLink, stanza: ET.Element) -> None:
    """A :class:`StanzaLink` handler for a link that expects nothing unsolicited."""
    return None


class StanzaLink:
    """A stream carrying stanzas both ways, with request → answer matching by stanza id."""

    def __init__(self, stream: ByteStream, events: EventReader, name: str,
                 on_request: Callable[[StanzaLink, ET.Element], Awaitable[None]]) -> None:
        self.stream = stream
        self.events = events
        self.name = name
        self._on_request = on_request
        self._pending: dict[str, asyncio.Future[ET.Element]] = {}

    async def run(self) -> None:
        """Read stanzas until the stream ends; answers resolve requests, others go to ``on_request``."""
        while True:
            event = await self.events.next()
            if isinstance(event, xmpp.StreamClosed):
                return
            if not isinstance(event, xmpp.TopLevel):
                continue
            answered = answered_id(event.element)
            waiter = self._pending.pop(answered, None) if answered else None
            if waiter is not None:
                if not waiter.done():
                    waiter.set_result(event.element)
            else:
                await self._on_request(self, event.element)

    async def send(self, data: bytes) -> None:
        self.stream.write(data)
        await self.stream.drain()

    async def request(self, stanza: bytes, stanza_id: str, timeout: float) -> ET.Element:
        future: asyncio.Future[ET.Element] = asyncio.get_running_loop().create_future()
        self._pending[stanza_id] = future
        try:
            await self.send(stanza)
            return await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(stanza_id, None)


def _retag(stanza: ET.Element) -> bytes:
    """Serialize a received stanza for another stream (drop the jabber:server namespace prefix)."""
    copy = ET.fromstring(ET.tostring(stanza))
    for element in copy.iter():
        if element.tag.startswith(f"{{{xmpp.SERVER_NS}}}"):
            element.tag = xmpp.local_name(element.tag)
    return ET.tostring(copy)


class XmppServerListener(TcpListener):
    """A 5269 listener that accepts s2s streams (the Edge's XMPP proxy, or a partner's server).

    ``deliver(stanza) -> reply bytes`` decides what answers a stanza that arrived on a stream.
    """

    def __init__(self, name: str, domain: str, host: str, port: int, context: ssl.SSLContext,
                 deliver: Callable[[ET.Element], Awaitable[bytes | None]],
                 allowed_domains: frozenset[str] | None = None) -> None:
        super().__init__(name, host, port)
        self.allowed_domains = allowed_domains
        self.domain = domain
        self._context = context
        self._deliver = deliver
        self._ids = itertools.count(1)
        self.accepted = 0
        self.rejected: Counter[str] = Counter()
        self.received: deque[str] = deque(maxlen=1024)  # the latest stanza ids that arrived on authenticated streams

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream: ByteStream = AsyncioStream(reader, writer)
        try:
            secure, events, peer = await asyncio.wait_for(
                accept_s2s(reader, writer, self._context, self.domain, lambda: f"{self.name}-{next(self._ids)}",
                           self.allowed_domains), NEGOTIATION_TIMEOUT * 2)
            stream = secure
            self.accepted += 1
            await StanzaLink(secure, events, peer, self._on_stanza).run()
        except XmppFailure as failure:
            self.rejected[str(failure.reason)] += 1
        except (OSError, ssl.SSLError, TimeoutError, MalformedMessage) as error:
            self.rejected[str(Reason.PROTOCOL_ERROR if isinstance(error, MalformedMessage)
                              else classify_tls_error(error))] += 1
        finally:
            await stream.close()

    async def _on_stanza(self, link: StanzaLink, stanza: ET.Element) -> None:
        self.received.append(stanza.get("id", ""))
        reply = await self._deliver(stanza)
        if reply is not None:
            await link.send(reply)


def is_error(stanza: ET.Element) -> bool:
    return stanza.get("type") == "error"

