"""XMPP streams, sans-I/O (RFC 6120): a pull parser that turns bytes into stream events, and builders.

An XMPP stream is one long XML document: ``<stream:stream …>`` opens it, each depth-1 child is a
top-level element (features, STARTTLS, SASL, stanzas), ``</stream:stream>`` closes it.
:class:`XmppStreamParser` feeds bytes to expat (``xml.etree.ElementTree.XMLPullParser``) and yields
:class:`StreamOpened`, :class:`TopLevel` (a complete element) and :class:`StreamClosed`. After STARTTLS or
SASL success the stream restarts (RFC 6120 §5.4.3.3, §6.4.6): make a new parser. Bad XML, a DTD, an
oversize element or bytes after the stream's end raise :class:`MalformedMessage` with status None (RFC
6120 §4.9: a stream error closes the stream).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

from simulator.wire.errors import MalformedMessage

STREAMS_NS = "http://etherx.jabber.org/streams"
SERVER_NS = "jabber:server"
TLS_NS = "urn:ietf:params:xml:ns:xmpp-tls"
SASL_NS = "urn:ietf:params:xml:ns:xmpp-sasl"
DIALBACK_NS = "jabber:server:dialback"
MAX_ELEMENT = 256 * 1024
_RESTRICTED = (b"<!DOCTYPE", b"<!ENTITY", b"<!--")
_TAIL = max(len(marker) for marker in _RESTRICTED) - 1
MAX_DEPTH = 32


@dataclass(frozen=True, slots=True)
class StreamOpened:
    attributes: dict[str, str]

    @property
    def from_(self) -> str:
        return self.attributes.get("from", "")

    @property
    def to(self) -> str:
        return self.attributes.get("to", "")


@dataclass(frozen=True, slots=True)
class TopLevel:
    element: ET.Element

    @property
    def tag(self) -> str:
        return self.element.tag

    def is_(self, namespace: str, name: str) -> bool:
        return self.element.tag == f"{{{namespace}}}{name}"


@dataclass(frozen=True, slots=True)
class StreamClosed:
    pass


StreamEvent = StreamOpened | TopLevel | StreamClosed


class XmppStreamParser:
    """Incremental parser of one XMPP stream (one per direction, new after each restart)."""

    def __init__(self) -> None:
        self._parser: ET.XMLPullParser[ET.Element] = ET.XMLPullParser(events=("start", "end"))
        self._depth = 0
        self._pending = 0
        self._closed = False
        self._root: ET.Element | None = None
        self._tail = b""  # the last bytes fed: a forbidden markup split across two reads is still seen

    def feed(self, data: bytes) -> list[StreamEvent]:
        if self._closed and data.strip():
            raise MalformedMessage("data after the end of the stream", None)
        window = self._tail + data
        if any(marker in window for marker in _RESTRICTED):
            raise MalformedMessage("restricted XML (DTD, entity or comment) is not allowed (RFC 6120 §11.1)", None)
        self._tail = window[-_TAIL:]
        self._pending += len(data)
        if self._pending > MAX_ELEMENT:
            raise MalformedMessage("element too large", None)
        try:
            self._parser.feed(data)
            raw: list[tuple[str, ET.Element]] = list(self._parser.read_events())  # type: ignore[arg-type]
        except ET.ParseError as error:
            raise MalformedMessage(f"bad XML: {error}", None) from None
        events: list[StreamEvent] = []
        for kind, item in raw:
            if kind == "start":
                self._depth += 1
                if self._depth > MAX_DEPTH:
                    raise MalformedMessage("elements nested too deep", None)
                if self._depth == 1:
                    if item.tag != f"{{{STREAMS_NS}}}stream":
                        raise MalformedMessage(f"not an XMPP stream: <{item.tag}>", None)
                    self._root = item
                    events.append(StreamOpened(dict(item.attrib)))
            else:
                self._depth -= 1
                if self._depth == 1:
                    events.append(TopLevel(item))
                    self._pending = 0
                    if self._root is not None:
                        self._root.remove(item)  # the stream is one document: drop each stanza once handed out
                elif self._depth == 0:
                    self._closed = True
                    events.append(StreamClosed())
        return events


def stream_header(from_: str, to: str, stream_id: str | None = None, default_ns: str = SERVER_NS) -> bytes:
    """The opening tag of a stream (RFC 6120 §4.7); the answering side gives an id."""
    id_attr = f" id={quoteattr(stream_id)}" if stream_id else ""
    return (f"<?xml version='1.0'?><stream:stream xmlns={quoteattr(default_ns)} "
            f"xmlns:stream='{STREAMS_NS}' xmlns:db='{DIALBACK_NS}' from={quoteattr(from_)} "
            f"to={quoteattr(to)}{id_attr} version='1.0'>").encode()


STREAM_END = b"</stream:stream>"


def features(*children: str) -> bytes:
    return ("<stream:features>" + "".join(children) + "</stream:features>").encode()


STARTTLS_REQUIRED = f"<starttls xmlns='{TLS_NS}'><required/></starttls>"
SASL_EXTERNAL = f"<mechanisms xmlns='{SASL_NS}'><mechanism>EXTERNAL</mechanism></mechanisms>"
STARTTLS = f"<starttls xmlns='{TLS_NS}'/>".encode()
PROCEED = f"<proceed xmlns='{TLS_NS}'/>".encode()
AUTH_EXTERNAL = f"<auth xmlns='{SASL_NS}' mechanism='EXTERNAL'>=</auth>".encode()
SASL_SUCCESS = f"<success xmlns='{SASL_NS}'/>".encode()


def sasl_failure(condition: str) -> bytes:
    return f"<failure xmlns='{SASL_NS}'><{condition}/></failure>".encode()


def stream_error(condition: str) -> bytes:
    """A stream-level error (RFC 6120 §4.9.3), followed by the closing tag."""
    return (f"<stream:error><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"
            ).encode() + STREAM_END


def message(from_: str, to: str, stanza_id: str, body: str) -> bytes:
    element = ET.Element("message", {"from": from_, "to": to, "id": stanza_id, "type": "chat"})
    ET.SubElement(element, "body").text = body
    return ET.tostring(element)


def local_name(tag: str) -> str:
    return tag.rpartition("}")[2]


def domain_of(jid: str) -> str:
    """The domain part of a JID (RFC 7622 §3.2)."""
    return jid.rpartition("@")[2].partition("/")[0].lower()
