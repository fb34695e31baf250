"""Words for people: what a probe wrote in a detail, with any Python repr that slipped in turned into text.

Probe details are built from f-strings; an ``{address!r}`` or ``{error!r}`` there shows ``Address(host='…',
port=…)`` or ``TimeoutError()`` to a user. :func:`plain` rewrites those shapes (``host:port``, ``timed out``,
``Connection reset by peer``) so no report, table, CSV, JUnit or HTML output ever carries a repr.
"""

from __future__ import annotations

import re

_ADDRESS = re.compile(r"\b[A-Za-z_]*Address\(host='([^']*)',\s*port=(\d+)\)")
_TUPLE_ADDRESS = re.compile(r"\('(\d{1,3}(?:\.\d{1,3}){3})',\s*(\d+)\)")
# An exception repr: SomeError(), SomeError('text'), SomeError(104, 'text'), SomeError("text").
_EXCEPTION = re.compile(r"\b([A-Z][A-Za-z]*(?:Error|Exception|Failure|Timeout|Refused|Reset))"
                        r"\(((?:[^()]|\([^()]*\))*)\)")
_QUOTED = re.compile(r"'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"")
_WORDS = {
    "TimeoutError": "timed out",
    "CancelledError": "cancelled",
    "ConnectionResetError": "connection reset",
    "ConnectionRefusedError": "connection refused",
    "ConnectionAbortedError": "connection aborted",
    "BrokenPipeError": "broken pipe",
    "IncompleteReadError": "connection closed mid-message",
    "EOFError": "connection closed",
}


def _exception_words(match: re.Match[str]) -> str:
    name, arguments = match.group(1), match.group(2).strip()
    texts = [a or b for a, b in _QUOTED.findall(arguments)]
    if texts and texts[-1]:
        text = texts[-1]
        return text if name in _WORDS or name in ("OSError", "ssl.SSLError") else f"{_WORDS.get(name, name)}: {text}"
    return _WORDS.get(name, name)


def plain(text: str) -> str:
    """``text`` with Python reprs of addresses and exceptions turned into words."""
    if "(" not in text:
        return text
    text = _ADDRESS.sub(r"\1:\2", text)
    text = _TUPLE_ADDRESS.sub(r"\1:\2", text)
    return _EXCEPTION.sub(_exception_words, text)


REPR_PATTERNS = (re.compile(r"\b[A-Z][A-Za-z]*\([a-z_]+="), re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception)\(\)"),
                 re.compile(r"<[a-zA-Z_.]+ object at 0x"))


def has_repr(text: str) -> bool:
    """Whether ``text`` still shows a Python repr (the tests grep every output with this)."""
    return any(pattern.search(text) for pattern in REPR_PATTERNS)
