"""Property: bytes from the wire give a message or MalformedMessage, never another exception."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator.wire.errors import MalformedMessage
from simulator.wire.sip import SipRequest, SipResponse, SipStreamFramer, parse_message
from tests.sip.corpus import ALL

CORPUS = list(ALL.values())
FAST = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Bytes that matter to the grammar, so mutations reach deep into the parser.
_INTERESTING = [
    b"\r\n",
    b"\r",
    b"\n",
    b":",
    b";",
    b",",
    b'"',
    b"<",
    b">",
    b"@",
    b"[",
    b"]",
    b"=",
    b" ",
    b"\t",
    b"\x00",
    b"\xff",
    b"SIP/2.0",
    b"0",
    b"99999999999",
]


def _check(data: bytes) -> None:
    try:
        message = parse_message(data)
    except MalformedMessage as exc:
        assert exc.status in (None, 400, 413, 416, 505)
        return
    assert isinstance(message, SipRequest | SipResponse)
    # anything accepted survives the views the core uses and re-encodes to the same message
    assert message.top_via.host
    assert message.cseq.method
    assert message.from_ is not None
    assert message.to is not None
    again = parse_message(message.encode())
    assert again.body == message.body
    if "content-length" in message.headers:
        assert again == message
    else:  # encode() adds the Content-Length a stream needs (RFC 3261 §18.3)
        assert again.headers == message.headers.add("Content-Length", str(len(message.body)))


def _check_stream(data: bytes, step: int) -> None:
    framer = SipStreamFramer()
    for i in range(0, len(data), step):
        framer.feed(data[i : i + step])
        while True:
            try:
                if framer.next_event() is None:
                    break
            except MalformedMessage as exc:
                assert exc.status in (None, 400, 413, 416, 505)
                if framer.broken:
                    return


@FAST
@given(st.binary(max_size=600))
def test_random_bytes(data: bytes) -> None:
    _check(data)
    _check_stream(data, 7)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(CORPUS)))
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(data)))
        kind = draw(st.integers(0, 3))
        if kind == 0:
            del data[pos : pos + draw(st.integers(1, 20))]
        elif kind == 1:
            data[pos:pos] = draw(st.sampled_from(_INTERESTING))
        elif kind == 2:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif pos < len(data):
            data[pos] = draw(st.integers(0, 255))
    return bytes(data)


@FAST
@given(mutated())
def test_mutated_corpus(data: bytes) -> None:
    _check(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutated(), min_size=1, max_size=3), st.integers(1, 50))
def test_mutated_streams(parts: list[bytes], step: int) -> None:
    _check_stream(b"".join(parts), step)
