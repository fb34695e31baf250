"""SDP candidate lines: RFC 8839 §5.1 grammar and examples, the MS-ICE2 spelling (TCP-ACT / TCP-PASS), the
lines aioice writes, and a parser that raises only MalformedMessage."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.wire import sdp
from simulator.wire.errors import MalformedMessage

# RFC 8839 §5.1 / RFC 8445 examples: host and srflx lines.
RFC_HOST = "a=candidate:1 1 UDP 2130706431 10.0.1.1 8998 typ host"
RFC_SRFLX = "a=candidate:2 1 UDP 1694498815 192.0.2.3 45664 typ srflx raddr 10.0.1.1 rport 8998"
MS_TCP_PASS = "a=candidate:4 1 TCP-PASS 174455807 192.0.2.20 50402 typ relay raddr 198.51.100.7 rport 40001"
MS_TCP_ACT = "a=candidate:5 1 TCP-ACT 1684797439 198.51.100.7 40002 typ srflx raddr 10.0.1.1 rport 40002"


def test_rfc8839_lines_parse_and_round_trip() -> None:
    host = sdp.parse_candidate(RFC_HOST)
    assert (host.foundation, host.component, host.transport, host.priority, host.host, host.port, host.type) == (
        "1", 1, "udp", 2130706431, "10.0.1.1", 8998, "host")
    srflx = sdp.parse_candidate(RFC_SRFLX)
    assert (srflx.related_host, srflx.related_port) == ("10.0.1.1", 8998)
    assert "a=" + host.to_sdp() == RFC_HOST
    assert "a=" + srflx.to_sdp() == RFC_SRFLX


def test_ms_ice2_tcp_tokens() -> None:
    passive = sdp.parse_candidate(MS_TCP_PASS)
    active = sdp.parse_candidate(MS_TCP_ACT)
    assert (passive.transport, passive.tcptype, active.tcptype) == ("tcp", "passive", "active")
    assert "a=" + passive.to_sdp("ms-ice2") == MS_TCP_PASS
    assert "a=" + active.to_sdp("ms-ice2") == MS_TCP_ACT
    # the RFC 6544 spelling of the same candidate
    assert passive.to_sdp("rfc8839").endswith("raddr 198.51.100.7 rport 40001 tcptype passive")
    assert " TCP " in passive.to_sdp("rfc8839")


def test_aioice_lines_parse() -> None:
    aioice = pytest.importorskip("aioice")
    theirs = aioice.Candidate(foundation="6815297761", component=1, transport="udp", priority=659136,
                              host="1.2.3.4", port=31102, type="relay", related_address="10.0.0.1", related_port=9)
    ours = sdp.parse_candidate("candidate:" + theirs.to_sdp())  # aioice adds "generation 0"
    assert (ours.foundation, ours.priority, ours.host, ours.port, ours.type, ours.related_port) == (
        "6815297761", 659136, "1.2.3.4", 31102, "relay", 9)
    back = aioice.Candidate.from_sdp(ours.to_sdp()[len("candidate:"):])
    assert (back.host, back.port, back.priority, back.type) == ("1.2.3.4", 31102, 659136, "relay")


def test_body_round_trip_and_media_level_credentials() -> None:
    desc = sdp.IceDescription("abcd", "p" * 22, (sdp.parse_candidate(RFC_HOST), sdp.parse_candidate(MS_TCP_PASS)),
                              "10.0.1.1", 8998)
    text = sdp.build_sdp(desc, form="ms-ice2")
    assert "a=ice-ufrag:abcd\r\n" in text and "TCP-PASS" in text
    back = sdp.parse_sdp(text)
    assert back == desc
    session_level = "v=0\r\na=ice-ufrag:sess\r\na=ice-pwd:" + "s" * 22 + "\r\nm=audio 9 RTP/AVP 0\r\n" \
        "a=ice-ufrag:medi\r\na=ice-pwd:" + "m" * 22 + "\r\n"
    assert (sdp.parse_sdp(session_level).ufrag, sdp.parse_sdp(session_level).pwd) == ("medi", "m" * 22)


@pytest.mark.parametrize("line", [
    "a=candidate:1 1 UDP 2130706431 10.0.1.1 8998 typ",  # no type
    "a=candidate:1 1 SCTP 2130706431 10.0.1.1 8998 typ host",
    "a=candidate:1 0 UDP 2130706431 10.0.1.1 8998 typ host",  # component 0
    "a=candidate:1 1 UDP 2130706431 10.0.1.1 70000 typ host",
    "a=candidate:1 1 UDP 2130706431 host.example 8998 typ host",
    "a=candidate:1 1 UDP 2130706431 10.0.1.1 8998 typ srflx raddr 10.0.0.1",
    "a=candidate:f*o 1 UDP 1 10.0.1.1 8998 typ host",
])
def test_bad_lines_raise_malformed(line: str) -> None:
    with pytest.raises(MalformedMessage):
        sdp.parse_candidate(line)


def test_sdp_without_credentials_is_rejected() -> None:
    with pytest.raises(MalformedMessage):
        sdp.parse_sdp("v=0\r\nm=audio 9 RTP/AVP 0\r\n")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_parsers_raise_only_malformed(text: str) -> None:
    for parse in (sdp.parse_candidate, sdp.parse_sdp):
        with contextlib.suppress(MalformedMessage):
            parse(text)
        with contextlib.suppress(MalformedMessage):
            parse("a=candidate:" + text)
