"""Stream framers (whole, byte by byte, random splits) and the flow classifier."""

from __future__ import annotations

import contextlib
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.wire import framing, msturn, stun, turn
from simulator.wire.errors import MalformedMessage
from simulator.wire.framing import Flow, Frame, FrameKind, MsTurnFrame, MsTurnFrameKind, Role
from simulator.wire.stun import MessageClass, attr
from tests.wire.strategies import messages

TID16 = bytes(range(16))
LEGACY_ALLOCATE = msturn.build(msturn.MsTurnMethod.ALLOCATE, MessageClass.REQUEST, TID16).serialize()
V3_ALLOCATE = msturn.build(
    msturn.MsTurnMethod.ALLOCATE, MessageClass.REQUEST, TID16[:12], attr(msturn.MS_VERSION, 3), version=3
).serialize()
BINDING = stun.request(stun.StunMethod.BINDING, bytes(12)).serialize()
ALLOCATE = stun.request(turn.TurnMethod.ALLOCATE, bytes(12), attr(turn.LIFETIME, 1), dialect=turn.RFC).serialize()


@pytest.mark.parametrize(
    ("data", "flow"),
    [
        (BINDING, Flow.STUN),
        (ALLOCATE, Flow.STUN),
        (V3_ALLOCATE, Flow.MSTURN),
        (LEGACY_ALLOCATE, Flow.MSTURN_LEGACY),
        (turn.encode_channel_data(0x4000, b"x"), Flow.CHANNEL_DATA),
        (framing.client_hello(bytes(32)), Flow.PSEUDO_TLS),
        (b"\x80\x60" + bytes(30), Flow.UNKNOWN),  # RTP
        (b"\x5a" + bytes(30), Flow.CHANNEL_DATA),  # RFC 5766's wider channel range, still in use
        (b"\x8a" + bytes(30), Flow.UNKNOWN),  # neither STUN (00) nor ChannelData (01)
        (b"\x16\x03\x03", Flow.UNKNOWN),  # real TLS 1.2 record, not the MS pseudo-TLS
    ],
)
def test_classify(data: bytes, flow: Flow) -> None:
    assert framing.classify(data) is flow
    assert framing.DIALECTS.get(flow, None) is None or stun.parse(data, framing.DIALECTS[flow])


def test_classify_needs_more_bytes() -> None:
    assert framing.classify(b"") is None
    assert framing.classify(ALLOCATE[:10]) is None
    assert framing.classify(LEGACY_ALLOCATE[:27]) is None
    assert framing.classify(LEGACY_ALLOCATE[:28]) is Flow.MSTURN_LEGACY


def test_pseudo_tls_sizes_and_fields() -> None:
    hello = framing.client_hello(bytes(range(32)))
    assert len(hello) == 50 and hello[:11] == bytes.fromhex("160301002d010000290301")
    assert hello[-7:] == bytes.fromhex("00000200180100")
    reply = framing.server_hello(bytes(32), bytes(range(32)))
    assert len(reply) == 83 and reply[-4:] == b"\x0e\x00\x00\x00"
    assert reply[5] == 0x02 and reply[43] == 0x20 and reply[76:79] == b"\x00\x18\x00"


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def _feed_turn(chunks: list[bytes]) -> list[Frame]:
    framer = framing.TurnTcpFramer()
    out: list[Frame] = []
    for chunk in chunks:
        out += framer.feed(chunk)
    assert framer.buffered == 0
    return out


turn_items = st.one_of(
    messages(turn.RFC).map(lambda m: (FrameKind.STUN, m.serialize())),
    st.tuples(st.integers(0x4000, 0x4FFF), st.binary(max_size=40)).map(
        lambda cd: (FrameKind.CHANNEL_DATA, turn.encode_channel_data(cd[0], cd[1]))
    ),
)


@settings(max_examples=120, deadline=None)
@given(items=st.lists(turn_items, min_size=1, max_size=6), cuts=st.lists(st.integers(0, 10_000), max_size=12))
def test_turn_tcp_framer_any_split(items: list[tuple[FrameKind, bytes]], cuts: list[int]) -> None:
    stream = b"".join(
        turn.encode_channel_data(*turn.decode_channel_data(data), pad=True) if kind == FrameKind.CHANNEL_DATA else data
        for kind, data in items
    )
    expected = [Frame(kind, data) for kind, data in items]
    assert _feed_turn([stream]) == expected
    assert _feed_turn([stream[i : i + 1] for i in range(len(stream))]) == expected
    assert _feed_turn(_split(stream, cuts)) == expected
    for frame, (kind, _) in zip(expected, items, strict=True):
        parsed = turn.demux(frame.data)
        assert isinstance(parsed, turn.ChannelData) == (kind == FrameKind.CHANNEL_DATA)


def test_turn_tcp_framer_rejects_garbage() -> None:
    with pytest.raises(MalformedMessage) as info:
        framing.TurnTcpFramer().feed(b"\x80\x00\x00\x00")
    assert info.value.status is None


ms_items = st.one_of(
    messages(msturn.LEGACY).map(lambda m: (MsTurnFrameKind.CONTROL, m.serialize())),
    st.binary(max_size=60).map(lambda b: (MsTurnFrameKind.DATA, b)),
)


@settings(max_examples=120, deadline=None)
@given(
    items=st.lists(ms_items, max_size=6),
    random=st.binary(min_size=32, max_size=32),
    cuts=st.lists(st.integers(0, 10_000), max_size=12),
)
def test_msturn_tcp_framer_any_split(
    items: list[tuple[MsTurnFrameKind, bytes]], random: bytes, cuts: list[int]
) -> None:
    hello = framing.client_hello(random)
    body = b"".join(
        framing.frame_control(d) if kind == MsTurnFrameKind.CONTROL else framing.frame_data(d) for kind, d in items
    )
    stream = hello + body
    expected = [MsTurnFrame(MsTurnFrameKind.HELLO, hello)] + [MsTurnFrame(k, d) for k, d in items]

    def feed(chunks: list[bytes]) -> list[MsTurnFrame]:
        framer = framing.MsTurnTcpFramer(Role.SERVER)
        out: list[MsTurnFrame] = []
        for chunk in chunks:
            out += framer.feed(chunk)
        return out

    assert feed([stream]) == expected
    assert feed([stream[i : i + 1] for i in range(len(stream))]) == expected
    assert feed(_split(stream, cuts)) == expected
    for frame in expected[1:]:
        if frame.kind == MsTurnFrameKind.CONTROL:
            msturn.parse(frame.data)


def test_msturn_client_side_reads_server_hello() -> None:
    framer = framing.MsTurnTcpFramer(Role.CLIENT)
    reply = framing.server_hello(bytes(32), bytes(32))
    frames = framer.feed(reply + framing.frame_control(LEGACY_ALLOCATE))
    assert [f.kind for f in frames] == [MsTurnFrameKind.HELLO, MsTurnFrameKind.CONTROL]
    assert framer.hello_done


@pytest.mark.parametrize(
    ("role", "data"),
    [
        (Role.SERVER, framing.server_hello(bytes(32), bytes(32))),  # server must get a ClientHello
        (Role.SERVER, LEGACY_ALLOCATE),  # no pseudo-TLS first
        (Role.CLIENT, framing.server_hello(bytes(32), bytes(32)) + b"\x05\x00\x00\x01x"),  # bad frame type
    ],
)
def test_msturn_framer_rejects(role: Role, data: bytes) -> None:
    with pytest.raises(MalformedMessage):
        framing.MsTurnTcpFramer(role).feed(data)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=80), role=st.sampled_from(Role))
def test_framers_never_crash(data: bytes, role: Role) -> None:
    for framer in (framing.TurnTcpFramer(), framing.MsTurnTcpFramer(role)):
        with contextlib.suppress(MalformedMessage):
            framer.feed(data)
    framing.classify(data)
