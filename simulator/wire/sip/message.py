"""SIP messages: :class:`SipRequest`, :class:`SipResponse` and the stream keepalives (RFC 5626 §3.5.1).

Theory of operation
-------------------
A message is a frozen :class:`SipRequest` or :class:`SipResponse`: the start line, an ordered
:class:`~simulator.wire.sip.headers.Headers` (names as they appeared, values as raw strings) and a ``bytes``
body. Only the mandatory headers are parsed when a message is built; everything else (Contact, Route,
Supported, …) is parsed on demand by the typed views. The views the parser's checks produced are kept on the
message (``_views``, never compared), so ``cseq``, ``from_``, ``to`` and ``top_via`` are not parsed twice.

Encoding writes the headers back as ``Name: value`` lines, so a canonical message round-trips byte for byte
and ``parse_message(m.encode()) == m`` holds for any parsed ``m`` that has a Content-Length (``encode()``
adds one when missing and corrects a stale one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeAlias

from simulator.wire.sip.grammar import SIP_VERSION, _bad
from simulator.wire.sip.headers import Headers
from simulator.wire.sip.uri import Uri
from simulator.wire.sip.views import CSeq, NameAddr, Via, parse_cseq, parse_name_addr, parse_via


class _MessageViews:
    """Typed accessors shared by requests and responses (each raises MalformedMessage on bad values)."""

    __slots__ = ()
    headers: Headers
    body: bytes
    # Parsed views (cseq, from_, to, top_via), filled by the parser's checks or on first use; never compared.
    _views: dict[str, Any] | None

    def _cache(self) -> dict[str, Any]:
        views = self._views
        if views is None:
            views = {}
            object.__setattr__(self, "_views", views)
        return views

    @property
    def call_id(self) -> str:
        return self.headers.get("call-id") or ""

    @property
    def cseq(self) -> CSeq:
        views = self._cache()
        value: CSeq | None = views.get("cseq")
        if value is None:
            value = views["cseq"] = parse_cseq(self.headers.get("cseq") or "")
        return value

    @property
    def from_(self) -> NameAddr:
        views = self._cache()
        value: NameAddr | None = views.get("from")
        if value is None:
            value = views["from"] = parse_name_addr(self.headers.get("from") or "")
        return value

    @property
    def to(self) -> NameAddr:
        views = self._cache()
        value: NameAddr | None = views.get("to")
        if value is None:
            value = views["to"] = parse_name_addr(self.headers.get("to") or "")
        return value

    @property
    def vias(self) -> list[Via]:
        return [parse_via(v) for v in self.headers.values("via")]

    @property
    def top_via(self) -> Via:
        views = self._cache()
        value: Via | None = views.get("top_via")
        if value is None:
            first = self.headers.values("via")
            if not first:
                raise _bad("missing Via")
            value = views["top_via"] = parse_via(first[0])
        return value

    @property
    def contacts(self) -> list[NameAddr]:
        return [parse_name_addr(v) for v in self.headers.values("contact")]

    @property
    def content_type(self) -> str | None:
        value = self.headers.get("content-type")
        return value.split(";", 1)[0].strip(" \t").lower() if value else None

    def _encode(self, start_line: str) -> bytes:
        headers = self.headers
        keys = headers.lookup_keys
        if "content-length" in keys:
            length = str(len(self.body))  # never let a stale length desynchronise the stream
            lines = [f"{item[0]}: {length}" if key == "content-length" else ": ".join(item)
                     for key, item in zip(keys, headers.items, strict=True)]
        else:
            lines = list(map(": ".join, headers.items))
            lines.append(f"Content-Length: {len(self.body)}")
        return (start_line + "\r\n" + "\r\n".join(lines) + "\r\n\r\n").encode() + self.body


@dataclass(frozen=True, slots=True)
class SipRequest(_MessageViews):
    """A request; ``uri`` is the parsed Request-URI."""

    method: str
    uri: Uri
    headers: Headers
    body: bytes = b""
    version: str = SIP_VERSION
    _views: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False, hash=False)

    def encode(self) -> bytes:
        """Wire form; Content-Length is written (or corrected) from the body."""
        return self._encode(f"{self.method} {self.uri} {self.version}")

    def __bytes__(self) -> bytes:  # a method of its own, not an alias of encode: mypyc compiles this module
        return self.encode()


@dataclass(frozen=True, slots=True)
class SipResponse(_MessageViews):
    """A response."""

    status: int
    reason: str
    headers: Headers
    body: bytes = b""
    version: str = SIP_VERSION
    _views: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False, hash=False)

    def encode(self) -> bytes:
        """Wire form; Content-Length is written (or corrected) from the body."""
        return self._encode(f"{self.version} {self.status} {self.reason}")

    def __bytes__(self) -> bytes:  # a method of its own, not an alias of encode: mypyc compiles this module
        return self.encode()


SipMessage: TypeAlias = SipRequest | SipResponse


@dataclass(frozen=True, slots=True)
class KeepalivePing:
    """CRLFCRLF received on a stream (RFC 5626 §3.5.1); answer with :data:`KEEPALIVE_PONG`."""


@dataclass(frozen=True, slots=True)
class KeepalivePong:
    """CRLF received after this side sent a ping (RFC 5626 §3.5.1)."""


KEEPALIVE_PING = b"\r\n\r\n"
KEEPALIVE_PONG = b"\r\n"

StreamEvent: TypeAlias = SipRequest | SipResponse | KeepalivePing | KeepalivePong
