"""RFC 4571 framing (ICE-TCP, RFC 6544 §3): 16-bit big-endian length then the packet; split delivery."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulator.core.ice.rfc4571 import Rfc4571Framer, frame


def test_frame_is_length_then_packet() -> None:
    assert frame(b"abc") == b"\x00\x03abc"
    assert frame(b"") == b"\x00\x00"
    with pytest.raises(ValueError):
        frame(bytes(65536))


def test_split_delivery_byte_by_byte_and_at_every_cut() -> None:
    packets = [b"\x00\x01" + bytes(18), b"\x80rtp", b"", bytes(300)]
    stream = b"".join(frame(p) for p in packets)
    for cut in range(len(stream) + 1):
        framer = Rfc4571Framer()
        assert framer.feed(stream[:cut]) + framer.feed(stream[cut:]) == packets
        assert framer.buffered == 0
    framer = Rfc4571Framer()
    got = [p for i in range(len(stream)) for p in framer.feed(stream[i : i + 1])]
    assert got == packets


@given(st.lists(st.binary(max_size=300), max_size=8), st.lists(st.integers(1, 64), min_size=1, max_size=20))
def test_any_chunking_gives_back_the_packets(packets: list[bytes], sizes: list[int]) -> None:
    stream = b"".join(frame(p) for p in packets)
    framer = Rfc4571Framer()
    out: list[bytes] = []
    pos, i = 0, 0
    while pos < len(stream):
        step = sizes[i % len(sizes)]
        out += framer.feed(stream[pos : pos + step])
        pos, i = pos + step, i + 1
    assert out == packets and framer.buffered == 0
