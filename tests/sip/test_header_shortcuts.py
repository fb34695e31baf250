"""The SIP header shortcuts (one regex for the usual From/To/Route and Via shapes) give exactly what the general
parser gives, on every string of those shapes hypothesis makes, and leave every other string to it.

The reference is the general path (``parse_*_general``), which the RFC 4475 torture tests and the SIPp interop
tests check; the shortcut must never differ from it, error or value.
"""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.wire.errors import MalformedMessage
from simulator.wire.sip.views import parse_name_addr, parse_name_addr_general, parse_via, parse_via_general

TOKEN = string.ascii_letters + string.digits + ".!%*_+`'~-"
tokens = st.text(TOKEN, min_size=1, max_size=8)
values = st.text(TOKEN + ":[]", max_size=8)
params = st.lists(st.tuples(tokens, st.one_of(st.none(), values)), max_size=4).map(
    lambda items: "".join(f";{name}" if value is None else f";{name}={value}" for name, value in items))
hosts = st.one_of(st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z][a-z0-9-]{0,10}){0,3}", fullmatch=True),
                  st.tuples(*[st.integers(0, 255)] * 4).map(lambda q: ".".join(map(str, q))))
ports = st.one_of(st.none(), st.integers(0, 99999))
users = st.text(string.ascii_lowercase + string.digits + "._-", min_size=1, max_size=10)


def _same(fast: object, general: object) -> None:
    assert fast == general


def _both(parse: object, general: object, text: str) -> None:
    try:
        expected = general(text)  # type: ignore[operator]
    except MalformedMessage:
        try:
            parse(text)  # type: ignore[operator]
        except MalformedMessage:
            return
        raise AssertionError(f"the shortcut accepted {text!r}, the general parser refuses it") from None
    _same(parse(text), expected)  # type: ignore[operator]


@settings(max_examples=400, deadline=None)
@given(scheme=st.sampled_from(["sip", "sips"]), user=users, host=hosts, port=ports, uri_params=params,
       header_params=params)
def test_name_addr_shortcut_equals_the_general_parser(scheme: str, user: str, host: str, port: int | None,
                                                      uri_params: str, header_params: str) -> None:
    parse_name_addr.cache_clear()
    hostport = host if port is None else f"{host}:{port}"
    _both(parse_name_addr, parse_name_addr_general, f"<{scheme}:{user}@{hostport}{uri_params}>{header_params}")


@settings(max_examples=400, deadline=None)
@given(transport=st.sampled_from(["TLS", "TCP", "UDP", "tls", "WS", "x-tok"]), host=hosts, port=ports,
       via_params=params)
def test_via_shortcut_equals_the_general_parser(transport: str, host: str, port: int | None, via_params: str) -> None:
    parse_via.cache_clear()
    hostport = host if port is None else f"{host}:{port}"
    _both(parse_via, parse_via_general, f"SIP/2.0/{transport} {hostport}{via_params}")


def test_unusual_shapes_still_go_to_the_general_parser() -> None:
    # a display name, whitespace, a quoted parameter: not the usual shape, same answer as before
    for value in ['"Alice" <sip:alice@example.com>;tag=1', "<sip:a@b> ;tag=2", '<sip:a@b>;p="x;y"']:
        assert parse_name_addr(value) == parse_name_addr_general(value)
    for value in ["SIP/2.0/TLS host ;branch=z9hG4bK1", 'SIP/2.0/TCP [2001:db8::1]:5061;branch=z9hG4bK2']:
        assert parse_via(value) == parse_via_general(value)
