"""SIP URIs (RFC 3261 §19.1, §25.1): :class:`SipUri` for ``sip:``/``sips:``, :class:`AbsoluteUri` for the rest."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache
from typing import TypeAlias

from simulator.wire.sip.grammar import (
    _SCHEME,
    _USER_FORBIDDEN,
    Params,
    _bad,
    _find_param,
    _format_hostport,
    _format_params,
    _has_param,
    _parse_hostport,
    _parse_params,
    _with_param,
)


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


# URIs repeat (domains, users, hops); the values are immutable, errors not cached. 1,024, as views' caches: a
# Contact or flow-token URI is new with each connection, and at a churn soak's few per second a 4,096-entry cache
# took ~30 minutes to turn over, which the 10-minute soak saw as RSS still rising (benchmarks/RESULTS.md).
@lru_cache(maxsize=1024)
def parse_uri(text: str) -> Uri:
    """Parse a URI; ``sip``/``sips`` into :class:`SipUri`, anything else into :class:`AbsoluteUri`."""
    scheme, colon, rest = text.partition(":")
    if not colon or not _SCHEME.fullmatch(scheme) or not rest:
        raise _bad(f"bad URI {text!r}")
    if scheme.lower() not in ("sip", "sips"):
        if any(ch in " \t<>" for ch in rest):
            raise _bad(f"bad URI {text!r}")
        return AbsoluteUri(scheme, rest)
    # RFC 3261 §25.1: '?' and ';' are user-unreserved, so the user part may hold them; '@' ends the userinfo and
    # is legal nowhere else. The headers start at the first '?' after the userinfo. An '@' before the first '?'
    # wins, so a raw '@' in a header value (illegal, must be %40, but seen) still reads as a header value.
    qmark = rest.find("?")
    at = rest.rfind("@", 0, qmark) if qmark >= 0 else rest.rfind("@")
    if at < 0 and qmark >= 0:
        at = rest.find("@", qmark)
    main, qmark_found, header_text = rest[at + 1 :].partition("?")
    headers: tuple[tuple[str, str], ...] = ()
    if qmark_found:
        pairs = []
        for item in header_text.split("&"):
            hname, eq, hvalue = item.partition("=")
            if not eq or not hname:
                raise _bad(f"bad URI header {item!r}")
            pairs.append((hname, hvalue))
        headers = tuple(pairs)
    user: str | None = None
    password: str | None = None
    if at >= 0:
        userinfo = rest[:at]
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
