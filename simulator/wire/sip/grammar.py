"""SIP lexical layer (RFC 3261 §7, §25): the constants and grammar helpers every other module shares.

Header-name keys (lower case, compact forms expanded), quoted strings, separator splitting outside quotes,
``;name=value`` parameter lists and ``host[:port]``. Values stay as the strings on the wire; nothing here
unescapes ``%HH``. Bad input raises :class:`~simulator.wire.errors.MalformedMessage` (400 unless told).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import TypeAlias

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
