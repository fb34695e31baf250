"""MRAS bodies: ``application/msrtc-media-relay-auth+xml`` (MS-AVEDGEA; research §1.3).

The client sends SIP SERVICE to its ``mrasUri`` with a :class:`MrasRequest` body; the A/V
Authentication service (Edge internal interface, TCP 5062) answers 200 OK with a :class:`MrasResponse`
holding the MS-TURN long-term credentials (valid ``duration`` minutes) and the media relays to use.
``to_xml()`` builds the body, :func:`parse_mras_request` / :func:`parse_mras_response` read one; bad
XML or missing elements raise MalformedMessage(…, 400) and nothing else.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from enum import StrEnum

from simulator.wire.errors import MalformedMessage

CONTENT_TYPE = "application/msrtc-media-relay-auth+xml"
NAMESPACE = "http://schemas.microsoft.com/2006/09/sip/mrasp"
DEFAULT_DURATION_MINUTES = 480  # 8 h, what Lync clients ask for
_NS = f"{{{NAMESPACE}}}"


class MrasLocation(StrEnum):
    """Where the requester (or a relay) sits."""

    INTERNET = "internet"
    INTRANET = "intranet"


@dataclass(frozen=True, slots=True)
class MrasRequest:
    """``<request><credentialsRequest>`` sent in SERVICE to MRAS."""

    request_id: str
    from_uri: str
    to_uri: str
    credentials_request_id: str
    identity: str
    location: MrasLocation = MrasLocation.INTERNET
    duration: int = DEFAULT_DURATION_MINUTES
    version: str = "1.0"

    def to_xml(self) -> bytes:
        """The body (UTF-8 XML, default namespace mrasp)."""
        root = ET.Element(
            "request",
            {"requestID": self.request_id, "from": self.from_uri, "to": self.to_uri, "version": self.version},
        )
        cred = ET.SubElement(root, "credentialsRequest", {"credentialsRequestID": self.credentials_request_id})
        ET.SubElement(cred, "identity").text = self.identity
        ET.SubElement(cred, "location").text = str(self.location)
        ET.SubElement(cred, "duration").text = str(self.duration)
        return _serialize(root)


@dataclass(frozen=True, slots=True)
class MediaRelay:
    """One ``<mediaRelay>``: an A/V Edge the client may allocate on (UDP 3478, TCP 443 in Lync 2013)."""

    location: MrasLocation
    host_name: str
    udp_port: int | None = 3478
    tcp_port: int | None = 443


@dataclass(frozen=True, slots=True)
class MrasCredentials:
    """``<credentials>``: MS-TURN username/password valid ``duration`` minutes."""

    username: str
    password: str
    duration: int


@dataclass(frozen=True, slots=True)
class MrasResponse:
    """``<response><credentialsResponse>`` returned in the 200 OK to SERVICE.

    ``credentials`` is ``None`` and ``reason_phrase`` not ``"OK"`` when MRAS refuses.
    """

    request_id: str
    from_uri: str
    to_uri: str
    credentials_request_id: str
    credentials: MrasCredentials | None
    relays: tuple[MediaRelay, ...] = ()
    reason_phrase: str = "OK"
    version: str = "1.0"
    server_version: str | None = "2"

    def to_xml(self) -> bytes:
        """The body (UTF-8 XML, default namespace mrasp)."""
        attrs = {"requestID": self.request_id, "version": self.version}
        if self.server_version is not None:
            attrs["serverVersion"] = self.server_version
        attrs |= {"to": self.to_uri, "from": self.from_uri, "reasonPhrase": self.reason_phrase}
        root = ET.Element("response", attrs)
        resp = ET.SubElement(root, "credentialsResponse", {"credentialsRequestID": self.credentials_request_id})
        if self.credentials is not None:
            cred = ET.SubElement(resp, "credentials")
            ET.SubElement(cred, "username").text = self.credentials.username
            ET.SubElement(cred, "password").text = self.credentials.password
            ET.SubElement(cred, "duration").text = str(self.credentials.duration)
        if self.relays:
            relay_list = ET.SubElement(resp, "mediaRelayList")
            for relay in self.relays:
                node = ET.SubElement(relay_list, "mediaRelay")
                ET.SubElement(node, "location").text = str(relay.location)
                ET.SubElement(node, "hostName").text = relay.host_name
                if relay.udp_port is not None:
                    ET.SubElement(node, "udpPort").text = str(relay.udp_port)
                if relay.tcp_port is not None:
                    ET.SubElement(node, "tcpPort").text = str(relay.tcp_port)
        return _serialize(root)


def _serialize(root: ET.Element) -> bytes:
    # Unqualified tags + an explicit xmlns: ElementTree's default_namespace refuses unqualified attributes.
    root.set("xmlns", NAMESPACE)
    data: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=False)
    return data


def _load(body: bytes, root_name: str) -> ET.Element:
    # No DTDs at all: entity expansion is the classic XML bomb, and MRAS bodies never carry one.
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise MalformedMessage("MRAS body with a DTD", 400)
    try:
        root = ET.fromstring(body)
    except (ET.ParseError, ValueError) as exc:
        raise MalformedMessage(f"bad MRAS XML: {exc}", 400) from None
    if root.tag != f"{_NS}{root_name}":
        raise MalformedMessage(f"MRAS body root is {root.tag!r}, expected {root_name!r}", 400)
    return root


def _child(parent: ET.Element, name: str) -> ET.Element:
    node = parent.find(f"{_NS}{name}")
    if node is None:
        raise MalformedMessage(f"MRAS body without <{name}>", 400)
    return node


def _text(parent: ET.Element, name: str) -> str:
    return (_child(parent, name).text or "").strip()


def _optional_int(parent: ET.Element, name: str) -> int | None:
    node = parent.find(f"{_NS}{name}")
    return None if node is None else _int(node.text or "", name)


def _int(text: str, name: str) -> int:
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 9:
        raise MalformedMessage(f"MRAS <{name}> is not a number: {text[:20]!r}", 400)
    return int(text)


def _attr(node: ET.Element, name: str) -> str:
    value = node.get(name)
    if value is None:
        raise MalformedMessage(f"MRAS <{node.tag}> without {name}", 400)
    return value


def _location(text: str) -> MrasLocation:
    try:
        return MrasLocation(text.lower())
    except ValueError:
        raise MalformedMessage(f"bad MRAS location {text[:20]!r}", 400) from None


def parse_mras_request(body: bytes) -> MrasRequest:
    """Parse a SERVICE body."""
    root = _load(body, "request")
    cred = _child(root, "credentialsRequest")
    return MrasRequest(
        request_id=_attr(root, "requestID"),
        from_uri=root.get("from", ""),
        to_uri=root.get("to", ""),
        credentials_request_id=_attr(cred, "credentialsRequestID"),
        identity=_text(cred, "identity"),
        location=_location(_text(cred, "location")),
        duration=_int(_text(cred, "duration"), "duration"),
        version=root.get("version", "1.0"),
    )


def parse_mras_response(body: bytes) -> MrasResponse:
    """Parse the body of MRAS's answer."""
    root = _load(body, "response")
    resp = _child(root, "credentialsResponse")
    node = resp.find(f"{_NS}credentials")
    credentials = None
    if node is not None:
        credentials = MrasCredentials(
            username=_text(node, "username"),
            password=_text(node, "password"),
            duration=_int(_text(node, "duration"), "duration"),
        )
    relays: list[MediaRelay] = []
    relay_list = resp.find(f"{_NS}mediaRelayList")
    if relay_list is not None:
        for relay in relay_list.findall(f"{_NS}mediaRelay"):
            relays.append(
                MediaRelay(
                    location=_location(_text(relay, "location")),
                    host_name=_text(relay, "hostName"),
                    udp_port=_optional_int(relay, "udpPort"),
                    tcp_port=_optional_int(relay, "tcpPort"),
                )
            )
    return MrasResponse(
        request_id=_attr(root, "requestID"),
        from_uri=root.get("from", ""),
        to_uri=root.get("to", ""),
        credentials_request_id=_attr(resp, "credentialsRequestID"),
        credentials=credentials,
        relays=tuple(relays),
        reason_phrase=root.get("reasonPhrase", ""),
        version=root.get("version", "1.0"),
        server_version=root.get("serverVersion"),
    )
