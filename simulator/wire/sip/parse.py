"""Parsing one message from bytes (RFC 3261 §7, §8.1.1, §18.3), sans-I/O.

Theory of operation
-------------------
Parsing is lean: the head is split at the bytes level, and only the Request-URI and the mandatory headers
(Via, From, To, Call-ID, CSeq; Max-Forwards when present; each single-value one at most once) are checked when
the message is built. The head is decoded once and split as text (the fast path); anything unusual (non-UTF-8,
folded lines, stray CR/LF/NUL, a refused value) is parsed again by the line-by-line reference path, which
decides the outcome and reports the first fault in order. The two paths must agree;
``tests/sip/test_fast_path.py`` checks that property on the corpus, on mutated corpus bytes and on generated
messages. The header-name keys seen on the fast path are remembered (bounded) so a known name costs one dict
lookup.

:func:`parse_message` takes one datagram (UDP); the stream framer
(:class:`~simulator.wire.sip.framer.SipStreamFramer`) cuts a TCP/TLS stream into heads and bodies and
hands each to :func:`_build`.

Bad input raises :class:`~simulator.wire.errors.MalformedMessage` carrying the status to answer
(400, 413, 416, 505), or ``None`` for a malformed response (RFC 3261 §18.1.2: discarded silently).
Nothing else escapes.
"""

from __future__ import annotations

import re
from typing import Any

from simulator.wire.errors import MalformedMessage
from simulator.wire.sip.grammar import (
    _TOKEN,
    _VERSION,
    DEFAULT_MAX_HEADER_BYTES,
    MANDATORY_HEADERS,
    SIP_VERSION,
    SUPPORTED_URI_SCHEMES,
    _bad,
    _is_digits,
    canonical_name,
    header_key,
)
from simulator.wire.sip.headers import Headers
from simulator.wire.sip.message import SipMessage, SipRequest, SipResponse
from simulator.wire.sip.uri import Uri, parse_uri
from simulator.wire.sip.views import parse_cseq, parse_name_addr, parse_via

# A Content-Length (or compact ``l``) line of a head: everything after a line's first colon up to its CRLF.
_CONTENT_LENGTH_LINE = re.compile(rb"\r\n[ \t]*(?:content-length|l)[ \t]*:(.*?)(?=\r\n|\Z)", re.IGNORECASE | re.DOTALL)

# Header names already checked against the token grammar → their lookup key (bounded; names as received).
_KNOWN_NAMES: dict[str, str] = {}
_KNOWN_NAMES_MAX = 4096

# RFC 3261 §7.3.1: only a header whose value is a comma-separated list may appear on several lines; RFC 4475
# §3.3.8 (multi01): a second Call-ID, CSeq, From, To or Max-Forwards is answered 400.
_SINGLE_VALUE_HEADERS: tuple[str, ...] = ("from", "to", "call-id", "cseq", "max-forwards")


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


def _nul_only_in_quoted_pairs(value: str) -> bool:
    """True when every NUL of ``value`` is the escaped octet of a quoted-pair inside a quoted-string."""
    in_quotes = False
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if in_quotes and ch == "\\":  # RFC 3261 §25.1 quoted-pair = "\" (%x00-09 / %x0B-0C / %x0E-7F)
            i += 2
            continue
        if ch == '"':
            in_quotes = not in_quotes
        elif ch == "\x00":
            return False
        i += 1
    return True


def _check_nul(header: tuple[str, str]) -> None:
    if "\x00" in header[1] and not _nul_only_in_quoted_pairs(header[1]):
        raise _bad("stray CR, LF or NUL in header")


def _decode_headers(lines: list[bytes]) -> tuple[tuple[str, str], ...]:
    """Header lines one by one (the reference path: it finds the first fault, in order).

    A NUL is refused unless it is quoted (RFC 4475 §3.1.1.2 quotes one in a display name); that is decided
    once the header's continuation lines are joined, since a quoted string may span a fold.
    """
    headers: list[tuple[str, str]] = []
    for raw in lines[1:]:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _bad("header is not UTF-8") from None
        if "\r" in line or "\n" in line:
            raise _bad("stray CR, LF or NUL in header")
        if not line:
            raise _bad("empty header line")
        if line[0] in " \t":  # RFC 3261 §7.3.1: folded continuation line
            if not headers:
                raise _bad("continuation line before any header")
            name, value = headers[-1]
            headers[-1] = (name, (value + " " + line.strip(" \t")).strip(" \t"))
            continue
        if headers:
            _check_nul(headers[-1])
        colon = line.find(":")
        name = line[:colon].rstrip(" \t") if colon > 0 else ""
        if not _TOKEN.fullmatch(name):
            raise _bad(f"bad header line {line[:40]!r}")
        headers.append((name, line[colon + 1 :].strip(" \t")))
    if headers:
        _check_nul(headers[-1])
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
    for name in _SINGLE_VALUE_HEADERS:
        if keys.count(name) > 1:
            raise _bad(f"more than one {canonical_name(name)} header")
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
