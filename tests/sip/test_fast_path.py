"""The codec's fast paths give what the reference (line-by-line) paths give: same message, same views,
same MalformedMessage status and reason — on the corpus, on mutated corpus bytes and on generated messages.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator.wire import sip
from simulator.wire.errors import MalformedMessage
from simulator.wire.sip import COMPACT_FORMS, Headers, SipMessage, grammar, header_key, parse, split_unquoted
from tests.sip.corpus import ALL
from tests.sip.test_never_crash import mutated

FAST = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _outcome(build: object) -> tuple[str, object]:
    assert callable(build)
    try:
        message: SipMessage = build()
    except MalformedMessage as exc:
        return "error", (exc.status, exc.reason)
    views: list[object] = []
    for view in ("cseq", "from_", "to", "top_via"):
        try:
            views.append(getattr(message, view))
        except MalformedMessage as exc:
            views.append(("error", exc.status, exc.reason))
    return "message", (message, message.headers.lookup_keys, views, message.encode())


def _split(data: bytes) -> tuple[bytes, bytes]:
    end = data.find(b"\r\n\r\n")
    assert end >= 0
    return data[:end], data[end + 4 :]


def _same_as_reference(head: bytes, body: bytes) -> None:
    fast = _outcome(lambda: parse._build(head, body))
    reference = _outcome(lambda: parse._build_reference(head.split(b"\r\n"), body))
    assert fast == reference


def _reference_content_length(head: bytes) -> int | None:
    """The framing rule as first written: one header line at a time (the oracle)."""
    found: int | None = None
    for line in head.split(b"\r\n")[1:]:
        colon = line.find(b":")
        if colon <= 0:
            continue
        name = line[:colon].strip(b" \t").lower()
        if name != b"content-length" and name != b"l":
            continue
        value = line[colon + 1 :].strip(b" \t")
        if not value.isdigit() or len(value) > 10:
            raise MalformedMessage(f"bad Content-Length {value!r}", 400)
        length = int(value)
        if found is not None and found != length:
            raise MalformedMessage("conflicting Content-Length headers", 400)
        found = length
    return found


def _length_outcome(function: object, head: bytes) -> object:
    assert callable(function)
    try:
        return function(head)
    except MalformedMessage as exc:
        return ("error", exc.status, exc.reason)


@pytest.mark.parametrize("name", sorted(ALL))
def test_corpus_fast_path_equals_reference(name: str) -> None:
    head, body = _split(ALL[name])
    assert parse._build_fast(head.decode(), body) is not None  # the corpus takes the fast path
    _same_as_reference(head, body)
    assert _length_outcome(parse._content_length, head) == _length_outcome(_reference_content_length, head)


@FAST
@given(mutated())
def test_mutated_corpus_fast_path_equals_reference(data: bytes) -> None:
    end = data.find(b"\r\n\r\n")
    head = data if end < 0 else data[:end]
    body = b"" if end < 0 else data[end + 4 :]
    _same_as_reference(head, body)
    assert _length_outcome(parse._content_length, head) == _length_outcome(_reference_content_length, head)


_NAMES = st.sampled_from(
    ["Via", "v", "VIA", "From", "f", "To", "t", "Call-ID", "i", "CSeq", "Contact", "m", "Route", "Record-Route",
     "Max-Forwards", "Content-Length", "l", "Supported", "k", "X-Ms-Thing", "Subject", "Bad Name", "", " Via"]
)
_VALUE = st.lists(st.sampled_from([*'ab <>;,="@:?.\t\\0129', "sip:", "é", "\r", "\n"]), max_size=20).map("".join)
_SPACING = st.sampled_from(["", " ", "  ", "\t", " \t"])


@st.composite
def generated(draw: st.DrawFn) -> tuple[bytes, bytes]:
    method = draw(st.sampled_from(["REGISTER", "MESSAGE", "INVITE", "OPTIONS"]))
    start = draw(st.sampled_from([f"{method} sip:bob@contoso.com SIP/2.0", "SIP/2.0 200 OK",
                                  "SIP/2.0 401 Unauthorized", f"{method} sips:[2001:db8::1]:5061 sip/2.0"]))
    lines = [
        "Via: SIP/2.0/TLS 10.0.0.1:5061;branch=z9hG4bK1",
        "From: <sip:alice@contoso.com>;tag=1",
        "To: <sip:bob@contoso.com>",
        "Call-ID: abc",
        f"CSeq: 1 {method}",
    ]
    for _ in range(draw(st.integers(0, 6))):
        name = draw(_NAMES)
        value = draw(_VALUE)
        line = f"{name}{draw(_SPACING)}:{draw(_SPACING)}{value}{draw(_SPACING)}"
        if draw(st.integers(0, 9)) == 0:
            line += "\r\n" + draw(_SPACING) + " folded"  # RFC 3261 §7.3.1 continuation
        lines.insert(draw(st.integers(0, len(lines))), line)
    body = draw(st.binary(max_size=10))
    return "\r\n".join([start, *lines]).encode(), body


@FAST
@given(generated())
def test_generated_messages_fast_path_equals_reference(message: tuple[bytes, bytes]) -> None:
    head, body = message
    _same_as_reference(head, body)
    assert _length_outcome(parse._content_length, head) == _length_outcome(_reference_content_length, head)


# ---------------------------------------------------------------------------------- keyed Headers


def _key(name: str) -> str:
    lower = name.lower()
    return COMPACT_FORMS.get(lower, lower)


class _NaiveHeaders:
    """The header-list operations written the obvious way (the oracle for the keyed Headers)."""

    def __init__(self, items: tuple[tuple[str, str], ...]) -> None:
        self.items = items

    def get_all(self, name: str) -> list[str]:
        return [v for n, v in self.items if _key(n) == _key(name)]

    def values(self, name: str) -> list[str]:
        if _key(name) not in sip.LIST_HEADERS:
            return self.get_all(name)
        return [v.strip(" \t") for line in self.get_all(name) for v in split_unquoted(line, ",", angle=True)
                if v.strip(" \t")]

    def remove_first(self, name: str) -> tuple[tuple[str, str], ...]:
        out: list[tuple[str, str]] = []
        done = False
        for n, v in self.items:
            if not done and _key(n) == _key(name):
                done = True
                if _key(n) in sip.LIST_HEADERS:
                    rest = split_unquoted(v, ",", angle=True)[1:]
                    if rest:
                        out.append((n, ",".join(rest).strip(" \t")))
                continue
            out.append((n, v))
        return tuple(out)

    def set(self, name: str, value: str) -> tuple[tuple[str, str], ...]:
        out: list[tuple[str, str]] = []
        done = False
        for n, v in self.items:
            if _key(n) != _key(name):
                out.append((n, v))
            elif not done:
                out.append((n, value))
                done = True
        if not done:
            out.append((name, value))
        return tuple(out)


def _try(function: object) -> object:
    assert callable(function)
    try:
        return function()
    except MalformedMessage as exc:
        return ("error", exc.status, exc.reason)


_ITEMS = st.lists(st.tuples(st.sampled_from(["Via", "v", "Route", "Subject", "s", "Contact", "X-A"]), _VALUE),
                  max_size=6).map(tuple)
_LOOKUP = st.sampled_from(["via", "V", "route", "subject", "S", "contact", "x-a", "absent"])


@FAST
@given(_ITEMS, _LOOKUP, st.text(max_size=5))
def test_keyed_headers_match_the_naive_operations(items: tuple[tuple[str, str], ...], name: str, value: str) -> None:
    headers = Headers(items)
    naive = _NaiveHeaders(items)
    assert headers.lookup_keys == tuple(header_key(n) for n, _ in items)
    assert (name in headers) == any(_key(n) == _key(name) for n, _ in items)
    assert headers.get(name) == next(iter(naive.get_all(name)), None)
    assert headers.get_all(name) == naive.get_all(name)
    assert _try(lambda: headers.values(name)) == _try(lambda: naive.values(name))
    derived = [
        (_try(lambda: headers.remove_first(name).items), _try(lambda: naive.remove_first(name))),
        (headers.set(name, value).items, naive.set(name, value)),
        (headers.remove(name).items, tuple(i for i in items if _key(i[0]) != _key(name))),
        (headers.add(name, value).items, (*items, (name, value))),
        (headers.prepend(name, value).items, ((name, value), *items)),
    ]
    for got, expected in derived:
        assert got == expected
    for copy in (headers.set(name, value), headers.remove(name), headers.add(name, value),
                 headers.prepend(name, value)):
        assert copy.lookup_keys == tuple(header_key(n) for n, _ in copy.items)  # keys carried, never stale
    first = _try(lambda: headers.remove_first(name))
    if isinstance(first, Headers):
        assert first.lookup_keys == tuple(header_key(n) for n, _ in first.items)


# ---------------------------------------------------------------------------------- split_unquoted

_SPLIT_TEXT = st.lists(st.sampled_from([*'ab ,;<>"\\=', "sip:x", '\\"']), max_size=40).map("".join)


@FAST
@given(_SPLIT_TEXT, st.sampled_from([",", ";", "=", "a"]), st.booleans())
def test_split_unquoted_matches_the_character_scan(text: str, sep: str, angle: bool) -> None:
    def scan() -> list[str]:
        if '"' not in text and not (angle and "<" in text):
            return text.split(sep)
        return grammar._split_unquoted_scan(text, sep, angle)

    assert _try(lambda: split_unquoted(text, sep, angle=angle)) == _try(scan)


def test_a_later_via_line_with_an_unterminated_quote_is_still_refused() -> None:
    # as before the fast paths: the mandatory check splits every Via line (RFC 3261 §7.3.1)
    data = (b"OPTIONS sip:bob@contoso.com SIP/2.0\r\nVia: SIP/2.0/TLS 10.0.0.1:5061;branch=z9hG4bK1\r\n"
            b'Via: SIP/2.0/TLS h;x="a\r\nFrom: <sip:alice@contoso.com>;tag=1\r\nTo: <sip:bob@contoso.com>\r\n'
            b"Call-ID: abc\r\nCSeq: 1 OPTIONS\r\n\r\n")
    with pytest.raises(MalformedMessage) as info:
        sip.parse_message(data)
    assert (info.value.status, info.value.reason) == (400, "unterminated quoted string")


# ------------------------------------------------------------------------- mandatory-header check


def _original_check_mandatory(items: tuple[tuple[str, str], ...], method: str | None) -> None:
    """The RFC 3261 §8.1.1 check as first written, over the naive header operations (the oracle)."""
    naive = _NaiveHeaders(items)

    def get(name: str) -> str | None:
        return next(iter(naive.get_all(name)), None)

    present = {_key(n) for n, _ in items}
    missing = [h for h in sip.MANDATORY_HEADERS if h not in present]
    if missing:
        raise MalformedMessage(f"missing mandatory header {sip.canonical_name(missing[0])}", 400)
    for name in ("from", "to", "call-id", "cseq", "max-forwards"):  # RFC 3261 §7.3.1, RFC 4475 §3.3.8
        if sum(_key(n) == name for n, _ in items) > 1:
            raise MalformedMessage(f"more than one {sip.canonical_name(name)} header", 400)
    cseq = sip.parse_cseq(get("cseq") or "")
    if method is not None and cseq.method != method:
        raise MalformedMessage("CSeq method does not match the request method", 400)
    if not (get("call-id") or "").strip():
        raise MalformedMessage("empty Call-ID", 400)
    vias = naive.values("via")
    if not vias:
        raise MalformedMessage("empty Via", 400)
    sip.parse_via(vias[0])
    sip.parse_name_addr(get("from") or "")
    sip.parse_name_addr(get("to") or "")
    max_forwards = get("max-forwards")
    if max_forwards is not None and (not grammar._is_digits(max_forwards) or int(max_forwards) > 255):
        raise MalformedMessage("bad Max-Forwards", 400)


def _check_outcome(check: object) -> object:
    assert callable(check)
    try:
        check()
    except MalformedMessage as exc:
        return ("error", exc.status, exc.reason)
    return "ok"


def _compare_mandatory(head: bytes) -> None:
    try:
        items = parse._decode_headers(head.split(b"\r\n"))
    except MalformedMessage:
        return
    for method in (None, "OPTIONS", "REGISTER"):
        new = _check_outcome(lambda m=method: parse._check_mandatory(Headers(items), m))
        original = _check_outcome(lambda m=method: _original_check_mandatory(items, m))
        assert new == original


@FAST
@given(generated())
def test_mandatory_check_matches_the_original_on_generated_heads(message: tuple[bytes, bytes]) -> None:
    _compare_mandatory(message[0])


@FAST
@given(mutated())
def test_mandatory_check_matches_the_original_on_mutated_corpus(data: bytes) -> None:
    _compare_mandatory(data.split(b"\r\n\r\n", 1)[0])
