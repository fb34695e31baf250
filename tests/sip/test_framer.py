"""Stream framing over TCP/TLS: split delivery, CRLF keepalives, size limits, recovery."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator.wire.errors import MalformedMessage
from simulator.wire.sip import (
    KEEPALIVE_PING,
    KEEPALIVE_PONG,
    KeepalivePing,
    KeepalivePong,
    SipRequest,
    SipStreamFramer,
    StreamEvent,
    parse_message,
)
from tests.sip.corpus import ALL

STREAM_NAMES = sorted(ALL)


def _drain(framer: SipStreamFramer) -> list[StreamEvent]:
    return list(framer.events())


def _feed_in_chunks(data: bytes, cuts: list[int]) -> list[StreamEvent]:
    framer = SipStreamFramer()
    events: list[StreamEvent] = []
    start = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        framer.feed(data[start:cut])
        events.extend(_drain(framer))
        start = cut
    assert framer.buffered == 0
    return events


def _stream(names: list[str], pings: list[bool]) -> tuple[bytes, list[StreamEvent]]:
    data = b""
    expected: list[StreamEvent] = []
    for name, ping in zip(names, pings, strict=True):
        if ping:
            data += KEEPALIVE_PING
            expected.append(KeepalivePing())
        data += ALL[name]
        expected.append(parse_message(ALL[name]))
    return data, expected


def test_whole_stream_and_byte_by_byte_give_the_same_events() -> None:
    data, expected = _stream(STREAM_NAMES, [i % 3 == 0 for i in range(len(STREAM_NAMES))])
    assert _feed_in_chunks(data, []) == expected
    assert _feed_in_chunks(data, list(range(len(data)))) == expected


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.sampled_from(STREAM_NAMES), st.booleans()), min_size=1, max_size=6),
    st.data(),
)
def test_random_splits_with_keepalives(items: list[tuple[str, bool]], data: st.DataObject) -> None:
    stream, expected = _stream([n for n, _ in items], [p for _, p in items])
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=40))
    assert _feed_in_chunks(stream, cuts) == expected


def test_stray_crlf_before_a_message_is_skipped() -> None:
    # RFC 3261 §7.5; one CRLF is not a ping (RFC 5626 §3.5.1 pings are CRLFCRLF)
    framer = SipStreamFramer()
    framer.feed(b"\r\n")
    assert framer.next_event() is None  # might still become a ping
    framer.feed(ALL["register-initial"])
    assert _drain(framer) == [parse_message(ALL["register-initial"])]


def test_pong_only_when_expected() -> None:
    framer = SipStreamFramer()
    framer.expect_pong()
    framer.feed(KEEPALIVE_PONG)
    assert _drain(framer) == [KeepalivePong()]
    framer.feed(KEEPALIVE_PING + KEEPALIVE_PING)
    assert _drain(framer) == [KeepalivePing(), KeepalivePing()]


def test_body_arrives_later() -> None:
    data = ALL["service-mras"]
    framer = SipStreamFramer()
    framer.feed(data[:-10])
    assert framer.next_event() is None
    framer.feed(data[-10:])
    event = framer.next_event()
    assert isinstance(event, SipRequest) and event.body.endswith(b"</request>")


def test_missing_content_length_on_a_stream_means_no_body() -> None:
    data = ALL["register-initial"].replace(b"Content-Length: 0\r\n", b"")
    framer = SipStreamFramer()
    framer.feed(data + ALL["register-initial"])
    events = _drain(framer)
    assert len(events) == 2 and isinstance(events[0], SipRequest) and events[0].body == b""


def test_a_bad_message_is_reported_and_the_stream_goes_on() -> None:
    bad = ALL["service-mras"].replace(b"Call-ID:", b"X-Call-ID:")
    framer = SipStreamFramer()
    framer.feed(bad + ALL["register-initial"])
    with pytest.raises(MalformedMessage) as info:
        framer.next_event()
    assert info.value.status == 400
    assert not framer.broken
    assert _drain(framer) == [parse_message(ALL["register-initial"])]


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"INVITE sip:a@b SIP/2.0\r\n" + b"X-Pad: " + b"a" * 70000, 413),  # no end of head in sight
        (b"INVITE sip:a@b SIP/2.0\r\nX-Pad: " + b"a" * 70000 + b"\r\n\r\n", 413),
        (b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 99999999\r\n\r\n", 413),
        (b"INVITE sip:a@b SIP/2.0\r\nContent-Length: -5\r\n\r\n", 400),
        (b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 5x\r\n\r\n", 400),
    ],
)
def test_framing_errors_break_the_stream(data: bytes, status: int) -> None:
    framer = SipStreamFramer()
    framer.feed(data)
    with pytest.raises(MalformedMessage) as info:
        framer.next_event()
    assert info.value.status == status
    assert framer.broken
    framer.feed(ALL["register-initial"])
    assert framer.next_event() is None


def test_limits_are_configurable() -> None:
    framer = SipStreamFramer(max_body_bytes=100)
    framer.feed(ALL["service-mras"])
    with pytest.raises(MalformedMessage) as info:
        framer.next_event()
    assert info.value.status == 413
