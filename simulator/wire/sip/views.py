"""Typed views of single header values: :class:`NameAddr` (From, To, Contact, Route …), :class:`Via`,
:class:`CSeq`. The parsers are LRU-cached: the same values come back at every hop and the results are
immutable (errors are not cached).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from functools import lru_cache

from simulator.wire.sip.grammar import (
    _TOKEN,
    _VIA_PROTOCOL,
    SIP_VERSION,
    Params,
    _bad,
    _find_param,
    _format_hostport,
    _format_params,
    _is_digits,
    _parse_hostport,
    _parse_params,
    _with_param,
    quote,
    split_unquoted,
    unquote,
)
from simulator.wire.sip.uri import SipUri, Uri, parse_uri

_TOKEN_CHARS = r"A-Za-z0-9.!%*_+`'~\-"  # RFC 3261 §25.1 token, as a character-class body (grammar._TOKEN)


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


# The usual From/To: ``<uri>[;name[=value]]...`` with no display name, quote, whitespace or empty parameter; the
# URI goes to parse_uri as below. What matches gives what the general path gives; the rest goes there.
_USUAL_NAME_ADDR = re.compile(rf"<([^<>\"\s]+)>((?:;[{_TOKEN_CHARS}]+(?:=[{_TOKEN_CHARS}:\[\]]*)?)*)")


# A From/To/Route value is parsed again at every hop and in the response. 1,024, not more: a tagged From/To is
# new in every dialog, so most entries are used within one transaction and a bigger cache only holds them longer
# (the churn soak's RSS: benchmarks/RESULTS.md).
@lru_cache(maxsize=1024)
def parse_name_addr(value: str) -> NameAddr:
    """Parse one From/To/Contact/Route value."""
    usual = _USUAL_NAME_ADDR.fullmatch(value)
    if usual is not None:
        uri_text, param_text = usual.groups()
        params: Params = ()
        if param_text:
            params = tuple([(name, value if eq else None) for name, eq, value in
                            (part.partition("=") for part in param_text[1:].split(";"))])
        return NameAddr(parse_uri(uri_text), None, params)
    return parse_name_addr_general(value)


def parse_name_addr_general(value: str) -> NameAddr:
    """:func:`parse_name_addr` without its shortcut for the usual shape (the reference the shortcut must equal)."""
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


# The usual Via, written the way every stack here writes it: ``SIP/2.0/TRANSPORT host[:port][;name[=value]]...``
# with no whitespace but the one space, no quotes, no IPv6 reference, no empty parameter. What matches is split
# in one step and gives what the general path below gives (tests/sip/test_header_shortcuts.py); the rest goes there.
_USUAL_VIA = re.compile(rf"SIP/2\.0/([{_TOKEN_CHARS}]+) ([A-Za-z0-9.\-]+)(?::([0-9]{{1,5}}))?"
                        rf"((?:;[{_TOKEN_CHARS}]+(?:=[{_TOKEN_CHARS}:\[\]]*)?)*)")


# A proxy's own Via comes back, unchanged, at the top of the response (when the next hop runs in this process);
# every branch is new, so an entry is used within one transaction: 1,024 as for parse_name_addr.
@lru_cache(maxsize=1024)
def parse_via(value: str) -> Via:
    """Parse one Via value."""
    usual = _USUAL_VIA.fullmatch(value)
    if usual is not None:
        transport, host, port_text, param_text = usual.groups()
        port = None if port_text is None else int(port_text)
        if port is None or port <= 65535:
            params: Params = ()
            if param_text:
                params = tuple([(name, value if eq else None) for name, eq, value in
                                (part.partition("=") for part in param_text[1:].split(";"))])
            return Via(transport, host, port, params, SIP_VERSION)
    return parse_via_general(value)


def parse_via_general(value: str) -> Via:
    """:func:`parse_via` without its shortcut for the usual shape (the reference the shortcut must equal)."""
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
