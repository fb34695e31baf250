"""SIP message codec (RFC 3261), sans-I/O.

Theory of operation
-------------------
A message is a frozen :class:`SipRequest` or :class:`SipResponse`: the start line, an ordered
:class:`Headers` (names as they appeared, values as raw strings) and a ``bytes`` body. Parsing is lean:
the head is split at the bytes level, only the mandatory headers (Via, From, To, Call-ID, CSeq) and the
Request-URI are checked when the message is built; everything else (Contact, Route, Supported, …) is
parsed on demand by the typed views :class:`SipUri`, :class:`NameAddr`, :class:`Via` and :class:`CSeq`.
The head is decoded once and split as text; anything unusual (non-UTF-8, folded lines, stray CR/LF/NUL, a
refused value) is parsed again by the line-by-line reference path, which decides the outcome and reports
the first fault in order. The views the checks parsed are kept on the message; :class:`Headers` carries
each line's lookup key; the view parsers are LRU-cached (their values are immutable).

Two entry points take bytes from the wire:

* :func:`parse_message` for one datagram (UDP);
* :class:`SipStreamFramer` for TCP/TLS: ``feed(data)`` then ``next_event()`` until ``None``; it yields
  messages and RFC 5626 §3.5.1 keepalives (CRLFCRLF ping, CRLF pong).

Bad input raises :class:`~simulator.wire.errors.MalformedMessage` carrying the status to answer
(400, 413, 416, 505), or ``None`` for a malformed response (RFC 3261 §18.1.2: discarded silently).
Nothing else escapes. Encoding writes the headers back as ``Name: value`` lines, so a canonical
message round-trips byte for byte and ``parse_message(m.encode()) == m`` holds for any parsed ``m``
that has a Content-Length (``encode()`` adds one when missing and corrects a stale one).
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, TypeAlias

from simulator.wire.errors import MalformedMessage

SIP_VERSION = "SIP/2.0"
# RFC 3261 §8.1.1.7: the branch of every RFC 3261 request starts with the magic cookie.
BRANCH_MAGIC_COOKIE = "z9hG4bK"
DEFAULT_MAX_HEADER_BYTES = 65536
DEFAULT_MAX_BODY_BYTES = 1 << 20  # roaming-contacts NOTIFYs can be hundreds of kB

# RFC 3261 §7.3.3 plus the compact forms registered later (IANA "Header Fields" registry).
COMPACT_FORMS: dict[str, str] = {
    "a": "accept-contact",  # RFC 3841
    "b": "referred-by",  # RFC 3892
    "c": "content-type",
    "d": "request-disposition",  # RFC 3841
    "e": "content-encoding",
    "f": "from",
    "i": "call-id",
    "j": "reject-contact",  # RFC 3841
    "k": "supported",
    "l": "content-length",
    "m": "contact",
    "n": "identity-info",  # RFC 4474
    "o": "event",  # RFC 6665
    "r": "refer-to",  # RFC 3515
    "s": "subject",
    "t": "to",
    "u": "allow-events",  # RFC 6665
    "v": "via",
    "x": "session-expires",  # RFC 4028
    "y": "identity",  # RFC 4474
}

# Spelling used when this module writes a header itself (lower-case key → canonical name).
CANONICAL_NAMES: dict[str, str] = {
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "www-authenticate": "WWW-Authenticate",
    "content-length": "Content-Length",
    "content-type": "Content-Type",
    "max-forwards": "Max-Forwards",
    "via": "Via",
    "from": "From",
    "to": "To",
    "contact": "Contact",
    "record-route": "Record-Route",
    "route": "Route",
    "timestamp": "Timestamp",
}

# RFC 3261 §7.3.1: headers whose grammar is a comma-separated list, so several values may share a line.
# (WWW-Authenticate, Authorization and friends are not: their parameters contain commas.)
LIST_HEADERS: frozenset[str] = frozenset(
    {
        "accept",
        "accept-encoding",
        "accept-language",
        "alert-info",
        "allow",
        "allow-events",
        "call-info",
        "contact",
        "content-encoding",
        "content-language",
        "error-info",
        "in-reply-to",
        "proxy-require",
        "record-route",
        "require",
        "route",
        "supported",
        "unsupported",
        "via",
        "warning",
    }
)

# RFC 3261 §8.1.1: a request without these cannot be processed → 400; §8.2.6 responses copy them.
MANDATORY_HEADERS: tuple[str, ...] = ("via", "from", "to", "call-id", "cseq")

SUPPORTED_URI_SCHEMES: frozenset[str] = frozenset({"sip", "sips"})

# RFC 3261 §21 plus the codes the Edge answers with (RFC 3265/6665 489, RFC 4028 422, RFC 3329 494).
REASON_PHRASES: dict[int, str] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    421: "Extension Required",
    422: "Session Interval Too Small",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    489: "Bad Event",
    491: "Request Pending",
    493: "Undecipherable",
    494: "Security Agreement Required",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}

# RFC 3261 §25.1 token.
_TOKEN = re.compile(r"[A-Za-z0-9.!%*_+`'~\-]+")
_VERSION = re.compile(r"SIP/[0-9]+\.[0-9]+", re.IGNORECASE)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")
_HOST_FORBIDDEN = re.compile(r'[ \t<>"\\;?@,/]')
_USER_FORBIDDEN = re.compile(r'[ \t<>"]')
_VIA_PROTOCOL = re.compile(
    r"\s*([A-Za-z0-9.!%*_+`'~\-]+)\s*/\s*([A-Za-z0-9.!%*_+`'~\-]+)\s*/\s*([A-Za-z0-9.!%*_+`'~\-]+)\s+"
)

Params: TypeAlias = tuple[tuple[str, str | None], ...]


def _bad(reason: str, status: int | None = 400) -> MalformedMessage:
    return MalformedMessage(reason, status)


def _is_digits(text: str) -> bool:
    # str.isdigit() accepts non-ASCII digits ("²"), which int() then rejects or misreads.
    return text.isascii() and text.isdigit()


@lru_cache(maxsize=1024)
def header_key(name: str) -> str:
    """Lookup key of a header name: lower case, compact form expanded (RFC 3261 §7.3.1, §7.3.3)."""
    lower = name.lower()
    return COMPACT_FORMS.get(lower, lower)


def canonical_name(name: str) -> str:
    """The long, conventionally capitalised spelling of ``name`` (``i`` → ``Call-ID``)."""
    key = header_key(name)
    return CANONICAL_NAMES.get(key) or "-".join(part.capitalize() for part in key.split("-"))


# split_unquoted() visits only the characters that matter: quote, backslash, separator, angle brackets.
_SPLIT_SPECIALS: dict[tuple[str, bool], re.Pattern[str]] = {}


def split_unquoted(text: str, sep: str, *, angle: bool = False) -> list[str]:
    """Split on ``sep`` outside quoted strings (and outside ``<…>`` when ``angle``)."""
    if '"' not in text and not (angle and "<" in text):
        return text.split(sep)
    if len(sep) != 1 or sep in '"\\<>':
        return _split_unquoted_scan(text, sep, angle)
    pattern = _SPLIT_SPECIALS.get((sep, angle))
    if pattern is None:
        chars = '"\\' + sep + ("<>" if angle else "")
        pattern = _SPLIT_SPECIALS[(sep, angle)] = re.compile("[" + "".join(map(re.escape, chars)) + "]")
    parts: list[str] = []
    start = 0
    in_quotes = False
    depth = 0
    skip = 0
    for match in pattern.finditer(text):
        i = match.start()
        if i < skip:
            continue
        ch = text[i]
        if in_quotes:
            if ch == "\\":  # RFC 3261 §25.1 quoted-pair
                skip = i + 2
            elif ch == '"':
                in_quotes = False
        elif ch == '"':
            in_quotes = True
        elif ch == "<":
            depth += 1
        elif ch == ">":
            if depth:
                depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if in_quotes:
        raise _bad("unterminated quoted string")
    parts.append(text[start:])
    return parts


def _split_unquoted_scan(text: str, sep: str, angle: bool) -> list[str]:
    """:func:`split_unquoted` one character at a time (any separator)."""
    parts: list[str] = []
    start = 0
    in_quotes = False
    depth = 0
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if in_quotes:
            if ch == "\\":  # RFC 3261 §25.1 quoted-pair
                i += 2
                continue
            if ch == '"':
                in_quotes = False
        elif ch == '"':
            in_quotes = True
        elif angle and ch == "<":
            depth += 1
        elif angle and ch == ">" and depth:
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    if in_quotes:
        raise _bad("unterminated quoted string")
    parts.append(text[start:])
    return parts


def unquote(value: str) -> str:
    """Remove the quotes and quoted-pair escapes of a quoted-string; other values are returned as is."""
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        inner = value[1:-1]
        if "\\" not in inner:
            return inner
        return re.sub(r"\\(.)", r"\1", inner)
    return value


def quote(value: str) -> str:
    """Make ``value`` a quoted-string (RFC 3261 §25.1)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _parse_params(parts: Iterable[str]) -> Params:
    params: list[tuple[str, str | None]] = []
    for part in parts:
        name, eq, value = part.partition("=")
        name = name.strip(" \t")
        if not _TOKEN.fullmatch(name):
            raise _bad(f"bad parameter {part!r}")
        params.append((name, value.strip(" \t") if eq else None))
    return tuple(params)


def _format_params(params: Params) -> str:
    return "".join(f";{n}" if v is None else f";{n}={v}" for n, v in params)


def _find_param(params: Params, name: str) -> str | None:
    lower = name.lower()
    for n, v in params:
        if n.lower() == lower:
            return "" if v is None else v
    return None


def _has_param(params: Params, name: str) -> bool:
    lower = name.lower()
    return any(n.lower() == lower for n, _ in params)


def _with_param(params: Params, name: str, value: str | None) -> Params:
    lower = name.lower()
    kept = tuple(p for p in params if p[0].lower() != lower)
    return (*kept, (name, value))


def _parse_hostport(text: str) -> tuple[str, int | None]:
    if text.startswith("["):  # RFC 3261 §25.1 IPv6reference
        close = text.find("]")
        if close < 0:
            raise _bad(f"bad IPv6 host {text!r}")
        host, rest = text[: close + 1], text[close + 1 :]
        if rest and not rest.startswith(":"):
            raise _bad(f"bad host {text!r}")
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text_raw = text.partition(":")
        port_text = port_text_raw if colon else None
    if not host or (not host.startswith("[") and _HOST_FORBIDDEN.search(host)):
        raise _bad(f"bad host {text!r}")
    if port_text is None:
        return host, None
    if not _is_digits(port_text) or len(port_text) > 5 or int(port_text) > 65535:
        raise _bad(f"bad port {text!r}")
    return host, int(port_text)


def _format_hostport(host: str, port: int | None) -> str:
    return host if port is None else f"{host}:{port}"


# ---------------------------------------------------------------------------------------------- URIs


@dataclass(frozen=True, slots=True)
class SipUri:
    """``sip:`` / ``sips:`` URI (RFC 3261 §19.1). Values stay escaped as on the wire."""

    host: str
    user: str | None = None
    password: str | None = None
    port: int | None = None
    params: Params = ()
    headers: tuple[tuple[str, str], ...] = ()
    scheme: str = "sip"

    def __str__(self) -> str:
        userinfo = ""
        if self.user is not None:
            userinfo = self.user if self.password is None else f"{self.user}:{self.password}"
            userinfo += "@"
        hostport = _format_hostport(self.host, self.port)
        text = f"{self.scheme}:{userinfo}{hostport}{_format_params(self.params)}"
        if self.headers:
            text += "?" + "&".join(f"{n}={v}" for n, v in self.headers)
        return text

    def param(self, name: str) -> str | None:
        """Value of uri-parameter ``name`` ("" for a flag such as ``lr``), ``None`` when absent."""
        return _find_param(self.params, name)

    def has_param(self, name: str) -> bool:
        """True when uri-parameter ``name`` is present (with or without a value)."""
        return _has_param(self.params, name)

    def with_param(self, name: str, value: str | None = None) -> SipUri:
        """Copy with parameter ``name`` set (replacing an existing one)."""
        return dataclasses.replace(self, params=_with_param(self.params, name, value))

    @property
    def transport(self) -> str | None:
        """The ``transport`` uri-parameter, lower case (RFC 3261 §19.1.1)."""
        value = self.param("transport")
        return value.lower() if value is not None else None

    @property
    def aor(self) -> str:
        """Address of record: ``scheme:user@host`` without port or parameters (RFC 3261 §10.3 step 5)."""
        user = f"{self.user}@" if self.user is not None else ""
        return f"{self.scheme.lower()}:{user}{self.host.lower()}"


@dataclass(frozen=True, slots=True)
class AbsoluteUri:
    """Any other URI (``tel:``, ``urn:``, ``mailto:`` …), kept as scheme + opaque rest."""

    scheme: str
    rest: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.rest}"


Uri: TypeAlias = SipUri | AbsoluteUri


@lru_cache(maxsize=4096)  # URIs repeat (domains, users, hops); the values are immutable, errors not cached
def parse_uri(text: str) -> Uri:
    """Parse a URI; ``sip``/``sips`` into :class:`SipUri`, anything else into :class:`AbsoluteUri`."""
    scheme, colon, rest = text.partition(":")
    if not colon or not _SCHEME.fullmatch(scheme) or not rest:
        raise _bad(f"bad URI {text!r}")
    if scheme.lower() not in ("sip", "sips"):
        if any(ch in " \t<>" for ch in rest):
            raise _bad(f"bad URI {text!r}")
        return AbsoluteUri(scheme, rest)
    main, qmark, header_text = rest.partition("?")
    headers: tuple[tuple[str, str], ...] = ()
    if qmark:
        pairs = []
        for item in header_text.split("&"):
            hname, eq, hvalue = item.partition("=")
            if not eq or not hname:
                raise _bad(f"bad URI header {item!r}")
            pairs.append((hname, hvalue))
        headers = tuple(pairs)
    user: str | None = None
    password: str | None = None
    at = main.rfind("@")
    if at >= 0:
        userinfo, main = main[:at], main[at + 1 :]
        if not userinfo:
            raise _bad(f"empty user in {text!r}")
        user_part, pcolon, pw = userinfo.partition(":")
        user = user_part
        password = pw if pcolon else None
        if _USER_FORBIDDEN.search(userinfo):
            raise _bad(f"bad user in {text!r}")
    hostport, *param_parts = main.split(";")
    host, port = _parse_hostport(hostport)
    return SipUri(
        host=host,
        user=user,
        password=password,
        port=port,
        params=_parse_params(param_parts),
        headers=headers,
        scheme=scheme,
    )


def parse_sip_uri(text: str) -> SipUri:
    """Parse a URI that must be ``sip:``/``sips:`` (416 otherwise, RFC 3261 §8.2.2.1)."""
    uri = parse_uri(text)
    if not isinstance(uri, SipUri):
        raise _bad(f"unsupported URI scheme {uri.scheme!r}", 416)
    return uri


# ------------------------------------------------------------------------------------- header views


@dataclass(frozen=True, slots=True)
class NameAddr:
    """``"Display" <uri>;tag=…`` (RFC 3261 §20.10, §25.1 name-addr / addr-spec with header params).

    ``uri`` is ``None`` for the ``Contact: *`` wildcard (RFC 3261 §10.2.2).
    """

    uri: Uri | None
    display_name: str | None = None
    params: Params = ()

    def __str__(self) -> str:
        if self.uri is None:
            return "*"
        prefix = f"{quote(self.display_name)} " if self.display_name else ""
        return f"{prefix}<{self.uri}>{_format_params(self.params)}"

    @property
    def tag(self) -> str | None:
        """The ``tag`` parameter (RFC 3261 §19.3)."""
        return _find_param(self.params, "tag")

    def param(self, name: str) -> str | None:
        """Header parameter ``name`` (raw, quotes kept), ``None`` when absent."""
        return _find_param(self.params, name)

    def with_tag(self, tag: str) -> NameAddr:
        """Copy with ``;tag=`` set."""
        return dataclasses.replace(self, params=_with_param(self.params, "tag", tag))

    @property
    def sip_uri(self) -> SipUri:
        """The URI as :class:`SipUri` (MalformedMessage 416 when it is another scheme)."""
        if not isinstance(self.uri, SipUri):
            raise _bad(f"not a SIP URI: {self.uri}", 416)
        return self.uri


@lru_cache(maxsize=4096)  # a From/To/Route value is parsed again at every hop and in the response
def parse_name_addr(value: str) -> NameAddr:
    """Parse one From/To/Contact/Route value."""
    text = value.strip(" \t")
    if text == "*":
        return NameAddr(None)
    display: str | None = None
    if text.startswith('"'):
        i = 1
        while i < len(text):
            if text[i] == "\\":
                i += 2
                continue
            if text[i] == '"':
                break
            i += 1
        else:
            raise _bad(f"unterminated display name in {value!r}")
        display = unquote(text[: i + 1])
        text = text[i + 1 :].lstrip(" \t")
        if not text.startswith("<"):
            raise _bad(f"display name without <uri> in {value!r}")
    lt = text.find("<")
    if lt >= 0 and '"' in text[:lt]:
        lt = -1  # the '<' sits in a quoted header parameter of an addr-spec
    if lt >= 0:
        gt = text.find(">", lt)
        if gt < 0:
            raise _bad(f"unterminated <uri> in {value!r}")
        if display is None:
            display = text[:lt].strip(" \t") or None
        uri_text, param_text = text[lt + 1 : gt], text[gt + 1 :]
    else:
        # RFC 3261 §20.10: without <>, everything after the first ';' is a header parameter.
        uri_text, _, param_text = text.partition(";")
        param_text = ";" + param_text if param_text else ""
    param_text = param_text.strip(" \t")
    if param_text and not param_text.startswith(";"):
        raise _bad(f"junk after URI in {value!r}")
    parts = split_unquoted(param_text[1:], ";") if param_text else []
    return NameAddr(parse_uri(uri_text.strip(" \t")), display, _parse_params(parts))


@dataclass(frozen=True, slots=True)
class Via:
    """One Via value (RFC 3261 §20.42, §18.2.1 received/rport RFC 3581, Lync ms-received-port/-cid)."""

    transport: str
    host: str
    port: int | None = None
    params: Params = ()
    protocol: str = SIP_VERSION

    def __str__(self) -> str:
        return f"{self.protocol}/{self.transport} {_format_hostport(self.host, self.port)}" + _format_params(
            self.params
        )

    def param(self, name: str) -> str | None:
        """Parameter ``name`` ("" for a flag), ``None`` when absent."""
        return _find_param(self.params, name)

    def with_param(self, name: str, value: str | None = None) -> Via:
        """Copy with parameter ``name`` set (e.g. ``received`` by a server, RFC 3261 §18.2.1)."""
        return dataclasses.replace(self, params=_with_param(self.params, name, value))

    @property
    def branch(self) -> str | None:
        """Transaction id (RFC 3261 §8.1.1.7)."""
        return self.param("branch")

    @property
    def received(self) -> str | None:
        """``received`` parameter (RFC 3261 §18.2.1)."""
        return self.param("received")

    @property
    def rport(self) -> int | None:
        """``rport`` value, ``None`` when absent or an empty flag (RFC 3581)."""
        value = self.param("rport")
        return int(value) if value and _is_digits(value) else None

    @property
    def sent_by(self) -> str:
        """``host[:port]`` as sent (server transaction matching, RFC 3261 §17.2.3)."""
        return _format_hostport(self.host, self.port)

    @property
    def reliable(self) -> bool:
        """True for stream transports (TCP, TLS, SCTP): no retransmission (RFC 3261 §17.1.1.2)."""
        return self.transport.upper() != "UDP"


@lru_cache(maxsize=4096)  # a proxy's own Via comes back, unchanged, at the top of the response
def parse_via(value: str) -> Via:
    """Parse one Via value."""
    match = _VIA_PROTOCOL.match(value)
    if match is None:
        raise _bad(f"bad Via {value!r}")
    name, version, transport = match.groups()
    if f"{name}/{version}".upper() != SIP_VERSION:
        raise _bad(f"bad Via protocol in {value!r}")
    sent_by, *param_parts = split_unquoted(value[match.end() :], ";")
    host, port = _parse_hostport(sent_by.strip(" \t"))
    return Via(transport, host, port, _parse_params(param_parts), f"{name}/{version}")


@dataclass(frozen=True, slots=True)
class CSeq:
    """``CSeq: 1 REGISTER`` (RFC 3261 §20.16)."""

    seq: int
    method: str

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


@lru_cache(maxsize=1024)
def parse_cseq(value: str) -> CSeq:
    """Parse a CSeq value; the number must be below 2**31 (RFC 3261 §8.1.1.5)."""
    number, _, method = value.strip(" \t").partition(" ")
    method = method.strip(" \t")
    if not _is_digits(number) or len(number) > 10 or int(number) >= 2**31 or not _TOKEN.fullmatch(method):
        raise _bad(f"bad CSeq {value!r}")
    return CSeq(int(number), method)


# ------------------------------------------------------------------------------------------ headers


@dataclass(frozen=True, slots=True)
class Headers:
    """Ordered, immutable header list; lookups ignore case and accept compact forms (RFC 3261 §7.3)."""

    items: tuple[tuple[str, str], ...] = ()
    # header_key() of every item, computed once (by the parser, or on the first lookup); never compared.
    _keys: tuple[str, ...] | None = field(default=None, init=False, repr=False, compare=False, hash=False)

    @classmethod
    def _keyed(cls, items: tuple[tuple[str, str], ...], keys: tuple[str, ...]) -> Headers:
        headers = cls(items)
        object.__setattr__(headers, "_keys", keys)
        return headers

    @property
    def lookup_keys(self) -> tuple[str, ...]:
        """:func:`header_key` of every line's name, in order."""
        keys = self._keys
        if keys is None:
            keys = tuple([header_key(n) for n, _ in self.items])
            object.__setattr__(self, "_keys", keys)
        return keys

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        return header_key(name) in self.lookup_keys

    def get(self, name: str) -> str | None:
        """First value of ``name`` (the whole line's value), ``None`` when absent."""
        key = header_key(name)
        keys = self.lookup_keys
        if key not in keys:
            return None
        return self.items[keys.index(key)][1]

    def get_all(self, name: str) -> list[str]:
        """Every line's value for ``name``, in order."""
        key = header_key(name)
        return [item[1] for k, item in zip(self.lookup_keys, self.items, strict=True) if k == key]

    def values(self, name: str) -> list[str]:
        """Every value of ``name``, comma-separated lines split for list headers (RFC 3261 §7.3.1)."""
        key = header_key(name)
        lines = self.get_all(name)
        if key not in LIST_HEADERS:
            return lines
        out: list[str] = []
        for line in lines:
            if "," not in line and '"' not in line:  # one value: what split_unquoted would give
                value = line.strip(" \t")
                if value:
                    out.append(value)
                continue
            out.extend(v.strip(" \t") for v in split_unquoted(line, ",", angle=True) if v.strip(" \t"))
        return out

    def add(self, name: str, value: str) -> Headers:
        """Copy with ``name: value`` appended."""
        return Headers._keyed((*self.items, (name, value)), (*self.lookup_keys, header_key(name)))

    def prepend(self, name: str, value: str) -> Headers:
        """Copy with ``name: value`` first (a proxy's own Via, RFC 3261 §16.6 step 8)."""
        return Headers._keyed(((name, value), *self.items), (header_key(name), *self.lookup_keys))

    def remove(self, name: str) -> Headers:
        """Copy without any ``name`` line."""
        key = header_key(name)
        keys = self.lookup_keys
        if key not in keys:
            return self
        kept = [(k, item) for k, item in zip(keys, self.items, strict=True) if k != key]
        return Headers._keyed(tuple(item for _, item in kept), tuple(k for k, _ in kept))

    def set(self, name: str, value: str) -> Headers:
        """Copy where the first ``name`` line holds ``value`` and other ``name`` lines are gone."""
        key = header_key(name)
        keys = self.lookup_keys
        if key not in keys:
            return self.add(name, value)
        out: list[tuple[str, str]] = []
        out_keys: list[str] = []
        done = False
        for k, item in zip(keys, self.items, strict=True):
            if k != key:
                out.append(item)
                out_keys.append(k)
            elif not done:
                out.append((item[0], value))
                out_keys.append(k)
                done = True
        return Headers._keyed(tuple(out), tuple(out_keys))

    def remove_first(self, name: str) -> Headers:
        """Copy without the first value of ``name`` (a proxy popping its Via or Route, RFC 3261 §16.12)."""
        key = header_key(name)
        keys = self.lookup_keys
        if key not in keys:
            return self
        index = keys.index(key)
        n, v = self.items[index]
        replacement: tuple[tuple[str, str], ...] = ()
        replacement_key: tuple[str, ...] = ()
        if key in LIST_HEADERS and "," in v:
            rest = split_unquoted(v, ",", angle=True)[1:]
            if rest:
                replacement = ((n, ",".join(rest).strip(" \t")),)
                replacement_key = (key,)
        elif key in LIST_HEADERS and '"' in v:
            split_unquoted(v, ",", angle=True)  # an unterminated quoted string still raises
        return Headers._keyed(
            (*self.items[:index], *replacement, *self.items[index + 1 :]),
            (*keys[:index], *replacement_key, *keys[index + 1 :]),
        )


# ----------------------------------------------------------------------------------------- messages


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

    __bytes__ = encode


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

    __bytes__ = encode


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


# ------------------------------------------------------------------------------------------ parsing


# A Content-Length (or compact ``l``) line of a head: everything after a line's first colon up to its CRLF.
_CONTENT_LENGTH_LINE = re.compile(rb"\r\n[ \t]*(?:content-length|l)[ \t]*:(.*?)(?=\r\n|\Z)", re.IGNORECASE | re.DOTALL)

# Header names already checked against the token grammar → their lookup key (bounded; names as received).
_KNOWN_NAMES: dict[str, str] = {}
_KNOWN_NAMES_MAX = 4096


def _content_length(head: bytes) -> int | None:
    """Content-Length from a raw head (start line + header lines), ``None`` when absent (for framing)."""
    found: int | None = None
    for match in _CONTENT_LENGTH_LINE.finditer(head):
        value = match.group(1).strip(b" \t")
        if not value.isdigit() or len(value) > 10:  # bytes.isdigit() is ASCII-only
            raise _bad(f"bad Content-Length {value!r}")
        length = int(value)
        if found is not None and found != length:
            raise _bad("conflicting Content-Length headers")
        found = length
    return found


def _decode_headers(lines: list[bytes]) -> tuple[tuple[str, str], ...]:
    """Header lines one by one (the reference path: it finds the first fault, in order)."""
    headers: list[tuple[str, str]] = []
    for raw in lines[1:]:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _bad("header is not UTF-8") from None
        if "\r" in line or "\n" in line or "\x00" in line:
            raise _bad("stray CR, LF or NUL in header")
        if not line:
            raise _bad("empty header line")
        if line[0] in " \t":  # RFC 3261 §7.3.1: folded continuation line
            if not headers:
                raise _bad("continuation line before any header")
            name, value = headers[-1]
            headers[-1] = (name, (value + " " + line.strip(" \t")).strip(" \t"))
            continue
        colon = line.find(":")
        name = line[:colon].rstrip(" \t") if colon > 0 else ""
        if not _TOKEN.fullmatch(name):
            raise _bad(f"bad header line {line[:40]!r}")
        headers.append((name, line[colon + 1 :].strip(" \t")))
    return tuple(headers)


def _check_version(version: str, status: int | None) -> None:
    if version.upper() == SIP_VERSION:
        return
    if _VERSION.fullmatch(version):
        raise _bad(f"unsupported version {version}", 505 if status is not None else None)  # §8.2.2
    raise _bad(f"bad version {version!r}", status)


def _check_mandatory(headers: Headers, method: str | None) -> dict[str, Any]:
    """RFC 3261 §8.1.1 (and §8.2.2.3 for 400); returns the views it parsed (see ``_MessageViews``)."""
    keys = headers.lookup_keys
    items = headers.items
    for name in MANDATORY_HEADERS:
        if name not in keys:
            raise _bad(f"missing mandatory header {canonical_name(name)}")
    cseq = parse_cseq(items[keys.index("cseq")][1])
    if method is not None and cseq.method != method:
        raise _bad("CSeq method does not match the request method")
    if not items[keys.index("call-id")][1].strip():
        raise _bad("empty Call-ID")
    vias = headers.values("via")  # every line: an unterminated quoted string in any of them is a 400
    if not vias:
        raise _bad("empty Via")
    top_via = parse_via(vias[0])
    from_ = parse_name_addr(items[keys.index("from")][1])
    to = parse_name_addr(items[keys.index("to")][1])
    if "max-forwards" in keys:
        max_forwards = items[keys.index("max-forwards")][1]
        if not _is_digits(max_forwards) or int(max_forwards) > 255:
            raise _bad("bad Max-Forwards")
    return {"cseq": cseq, "top_via": top_via, "from": from_, "to": to}


def _status_line(start: str) -> tuple[str, int, str]:
    version, _, rest = start.partition(" ")
    code, _, reason = rest.partition(" ")
    _check_version(version, None)
    if len(code) != 3 or not _is_digits(code) or not 100 <= int(code) <= 699:
        raise _bad(f"bad status code {code!r}", None)
    if "\r" in reason or "\n" in reason:
        raise _bad("bad reason phrase", None)
    return version, int(code), reason


def _request_line(start: str) -> tuple[str, Uri, str]:
    parts = start.split(" ")
    if len(parts) != 3:
        raise _bad(f"bad request line {start[:60]!r}")
    method, uri_text, version = parts
    if not _TOKEN.fullmatch(method):
        raise _bad(f"bad method {method[:20]!r}")
    _check_version(version, 400)
    uri = parse_uri(uri_text)
    if uri.scheme.lower() not in SUPPORTED_URI_SCHEMES:
        raise _bad(f"unsupported URI scheme {uri.scheme!r}", 416)  # RFC 3261 §8.2.2.1
    return method, uri, version


def _with_views(message: SipMessage, views: dict[str, Any]) -> SipMessage:
    object.__setattr__(message, "_views", views)
    return message


def _build(head: bytes, body: bytes) -> SipMessage:
    """A message from its head (start line and header lines, no final CRLFCRLF) and body.

    The fast path decodes the head once; anything it does not expect (non-UTF-8, folding, stray CR/LF/NUL,
    a bad value) goes to the line-by-line reference path, which accepts and refuses exactly as before and
    reports the first fault in order.
    """
    try:
        message = _build_fast(head.decode("utf-8"), body)
    except (UnicodeDecodeError, MalformedMessage):
        message = None
    return message if message is not None else _build_reference(head.split(b"\r\n"), body)


def _build_fast(text: str, body: bytes) -> SipMessage | None:
    lines = text.split("\r\n")
    breaks = len(lines) - 1
    if text.count("\n") != breaks or text.count("\r") != breaks or "\x00" in text:
        return None  # a stray CR, LF or NUL: the reference path refuses it
    items: list[tuple[str, str]] = []
    keys: list[str] = []
    known = _KNOWN_NAMES
    for index in range(1, len(lines)):
        name, colon, value = lines[index].partition(":")
        key = known.get(name)
        if key is None:
            stripped = name.rstrip(" \t")
            if not colon or not _TOKEN.fullmatch(stripped):
                return None  # folding, an empty or junk line: the reference path decides
            key = header_key(stripped)
            if stripped == name and len(known) < _KNOWN_NAMES_MAX:
                known[name] = key
            name = stripped
        elif not colon:
            return None
        items.append((name, value.strip(" \t")))
        keys.append(key)
    headers = Headers._keyed(tuple(items), tuple(keys))
    start = lines[0]
    if start[:4].upper() == "SIP/":
        version, code, reason = _status_line(start)
        views = _check_mandatory(headers, None)
        return _with_views(SipResponse(code, reason, headers, body, version), views)
    method, uri, version = _request_line(start)
    views = _check_mandatory(headers, method)
    return _with_views(SipRequest(method, uri, headers, body, version), views)


def _build_reference(lines: list[bytes], body: bytes) -> SipMessage:
    try:
        start = lines[0].decode("utf-8")
    except UnicodeDecodeError:
        raise _bad("start line is not UTF-8") from None
    if start[:4].upper() == "SIP/":
        try:
            version, code, reason = _status_line(start)
            headers = Headers(_decode_headers(lines))
            views = _check_mandatory(headers, None)
        except MalformedMessage as exc:
            # RFC 3261 §18.1.2: a malformed response is discarded, never answered.
            raise MalformedMessage(exc.reason, None) from None
        return _with_views(SipResponse(code, reason, headers, body, version), views)
    method, uri, version = _request_line(start)
    headers = Headers(_decode_headers(lines))
    views = _check_mandatory(headers, method)
    return _with_views(SipRequest(method, uri, headers, body, version), views)


def parse_message(data: bytes, *, max_size: int = DEFAULT_MAX_HEADER_BYTES) -> SipMessage:
    """Parse one whole message from a datagram (RFC 3261 §18.3: extra bytes after the body ignored).

    Without Content-Length the body is the rest of the datagram. Raises MalformedMessage only.
    """
    if len(data) > max_size:
        raise _bad("message too large", 413)
    start = 0
    while data.startswith(b"\r\n", start):  # RFC 3261 §7.5: ignore CRLFs before the start line
        start += 2
    end = data.find(b"\r\n\r\n", start)
    if end < 0:
        raise _bad("no blank line after headers")
    head = data[start:end]
    length = _content_length(head)
    body = data[end + 4 :]
    if length is not None:
        if len(body) < length:
            raise _bad("body shorter than Content-Length")  # RFC 3261 §18.3
        body = body[:length]
    return _build(head, body)


class SipStreamFramer:
    """Splits a TCP/TLS byte stream into messages and keepalives (RFC 3261 §18.3, RFC 5626 §3.5.1).

    ``feed(data)``, then call ``next_event()`` until it returns ``None``. A MalformedMessage about one
    message (missing header, bad URI …) is raised after its body has been consumed, so the caller can
    answer it and go on. When framing itself is lost (bad Content-Length, oversized head or body)
    ``broken`` becomes True, the error is raised once and the connection should be closed.
    """

    def __init__(
        self,
        *,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self._buffer = bytearray()
        self._scan_from = 0
        self._pending: bytes | None = None  # a head waiting for its body
        self._body_length = 0
        self._max_header_bytes = max_header_bytes
        self._max_body_bytes = max_body_bytes
        self._pong_expected = False
        self.broken = False

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        if not self.broken:
            self._buffer += data

    def expect_pong(self) -> None:
        """Call after sending a CRLFCRLF ping: the next bare CRLF is reported as :class:`KeepalivePong`."""
        self._pong_expected = True

    @property
    def buffered(self) -> int:
        """Bytes received and not consumed yet."""
        return len(self._buffer)

    def _fail(self, reason: str, status: int) -> MalformedMessage:
        self.broken = True
        self._buffer.clear()
        return _bad(reason, status)

    def next_event(self) -> StreamEvent | None:
        """Next message or keepalive, ``None`` when more bytes are needed (or the stream is broken)."""
        buf = self._buffer
        while not self.broken:
            if self._pending is not None:
                if len(buf) < self._body_length:
                    return None
                body = bytes(buf[: self._body_length]) if self._body_length else b""
                del buf[: self._body_length]
                head, self._pending = self._pending, None
                return _build(head, body)
            if buf[:2] == b"\r\n":
                if buf[:4] == b"\r\n\r\n":
                    del buf[:4]
                    self._scan_from = 0
                    return KeepalivePing()
                if self._pong_expected:
                    del buf[:2]
                    self._pong_expected = False
                    return KeepalivePong()
                if len(buf) < 4 and bytes(buf[2:3]) in (b"", b"\r"):
                    return None  # could still become a CRLFCRLF ping
                del buf[:2]  # RFC 3261 §7.5: stray CRLF before a start line
                self._scan_from = 0
                continue
            if buf == b"\r":
                return None
            end = buf.find(b"\r\n\r\n", self._scan_from)
            if end < 0:
                if len(buf) > self._max_header_bytes:
                    raise self._fail("header section too large", 413)
                self._scan_from = max(0, len(buf) - 3)
                return None
            if end > self._max_header_bytes:
                raise self._fail("header section too large", 413)
            head = bytes(buf[:end])
            del buf[: end + 4]
            self._scan_from = 0
            try:
                length = _content_length(head)
            except MalformedMessage as exc:
                raise self._fail(exc.reason, 400) from None
            if length is not None and length > self._max_body_bytes:
                raise self._fail("body too large", 413)
            self._pending = head
            self._body_length = length or 0  # RFC 3261 §18.3 makes it mandatory on streams; assume 0
        return None

    def events(self) -> Iterator[StreamEvent]:
        """Iterate ``next_event()`` until ``None`` (MalformedMessage propagates)."""
        while (event := self.next_event()) is not None:
            yield event


# ---------------------------------------------------------------------------------------- builders


def new_branch(rng: random.Random) -> str:
    """A fresh RFC 3261 branch (magic cookie + 64 random bits, §8.1.1.7)."""
    return f"{BRANCH_MAGIC_COOKIE}{rng.getrandbits(64):016x}"


def new_tag(rng: random.Random) -> str:
    """A fresh From/To tag (32 random bits, RFC 3261 §19.3)."""
    return f"{rng.getrandbits(32):08x}"


def new_call_id(rng: random.Random) -> str:
    """A fresh Call-ID (RFC 3261 §8.1.1.4)."""
    return f"{rng.getrandbits(128):032x}"


def make_request(
    method: str,
    uri: Uri | str,
    *,
    via: Via | str,
    from_: NameAddr | str,
    to: NameAddr | str,
    call_id: str,
    cseq: int,
    max_forwards: int = 70,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> SipRequest:
    """Build a request with the RFC 3261 §8.1.1 header set, then ``headers``, then Content-Length."""
    items: list[tuple[str, str]] = [
        ("Via", str(via)),
        ("Max-Forwards", str(max_forwards)),
        ("From", str(from_)),
        ("To", str(to)),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} {method}"),
    ]
    items.extend(headers)
    items.append(("Content-Length", str(len(body))))
    request_uri = parse_uri(uri) if isinstance(uri, str) else uri
    return SipRequest(method, request_uri, Headers(tuple(items)), body)


def make_response(
    request: SipRequest,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    copy_record_route: bool = False,
) -> SipResponse:
    """Response to ``request`` (RFC 3261 §8.2.6): Via lines, From, To (+``to_tag`` when it has none),
    Call-ID, CSeq copied; Timestamp copied into 100 (§8.2.6.1); Record-Route when asked (§12.1.1);
    then ``headers`` and Content-Length.
    """
    copied: list[tuple[str, str]] = []
    for key, (_, value) in zip(request.headers.lookup_keys, request.headers.items, strict=True):
        if key == "via" or (copy_record_route and key == "record-route"):
            copied.append((CANONICAL_NAMES[key], value))
    copied.append(("From", request.headers.get("from") or ""))
    to_value = request.headers.get("to") or ""
    if to_tag is not None:
        to_addr = parse_name_addr(to_value)
        if to_addr.tag is None:
            to_value = f"{to_value};tag={to_tag}"
    copied.append(("To", to_value))
    copied.append(("Call-ID", request.call_id))
    copied.append(("CSeq", request.headers.get("cseq") or ""))
    timestamp = request.headers.get("timestamp")
    if status == 100 and timestamp is not None:
        copied.append(("Timestamp", timestamp))
    copied.extend(headers)
    copied.append(("Content-Length", str(len(body))))
    phrase = reason if reason is not None else REASON_PHRASES.get(status, "Unknown")
    return SipResponse(status, phrase, Headers(tuple(copied)), body)


def make_ack(request: SipRequest, response: SipResponse) -> SipRequest:
    """ACK for a non-2xx final response to INVITE (RFC 3261 §17.1.1.3): same Request-URI, top Via,
    Call-ID, From, CSeq number and Route set as the INVITE; To from the response.
    """
    items: list[tuple[str, str]] = [("Via", request.headers.values("via")[0])]
    max_forwards = request.headers.get("max-forwards")
    if max_forwards is not None:
        items.append(("Max-Forwards", max_forwards))
    items.append(("From", request.headers.get("from") or ""))
    items.append(("To", response.headers.get("to") or ""))
    items.append(("Call-ID", request.call_id))
    items.append(("CSeq", f"{request.cseq.seq} ACK"))
    items.extend(("Route", v) for v in request.headers.get_all("route"))
    items.append(("Content-Length", "0"))
    return SipRequest("ACK", request.uri, Headers(tuple(items)))
