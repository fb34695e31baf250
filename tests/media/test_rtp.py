"""RTP/RTCP codec: RFC 3550 byte layouts written by hand, tshark as the peer, never-crash properties.

The hand-written vectors follow the figures of RFC 3550 §5.1 (RTP fixed header), §6.4.1 (SR), §6.4.2
(RR), §6.5 (SDES) and §6.6 (BYE) field by field; tshark's RTP/RTCP dissectors must decode the values
this file puts in (derived fields — NTP halves, sequence cycles — computed here from those values).
"""

from __future__ import annotations

import io
import itertools
import json
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from simulator.core.media import MediaSession, audio_profile
from simulator.wire.errors import MalformedMessage
from simulator.wire.pcap import PcapWriter
from simulator.wire.rtp import (
    Goodbye,
    ParseError,
    RawRtcp,
    ReceiverReport,
    ReportBlock,
    RtpPacket,
    SdesChunk,
    SenderReport,
    SourceDescription,
    classify,
    encode_compound,
    ntp_middle32,
    pack_rtp,
    parse_compound,
    rtp_header,
)
from tests.peers import require_tool

SENDER = ("10.0.0.1", 5004)
RECEIVER = ("10.0.0.2", 6004)
FAST = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])  # big compounds

# --------------------------------------------------------------------------- RFC 3550 layouts by hand

# §5.1: V=2 P=0 X=0 CC=0 | M=0 PT=0 | seq 0x1234 | timestamp 0x89abcdef | SSRC 0x01020304 | payload
RTP_PLAIN = bytes.fromhex("8000123489abcdef01020304") + b"\xff\xfe"
# V=2 P=1 X=1 CC=1 = 0xb1 | M=1 PT=103 = 0xe7 | seq 0xffff | ts 0 | SSRC 0xcafebabe | CSRC 0x00000009 |
# ext profile 0xbede, length 1 word, body 4 octets | payload "ab" | padding 2 octets, last = count 2
RTP_FULL = bytes.fromhex("b1e7ffff00000000cafebabe00000009bede000111223344") + b"ab" + b"\x00\x02"
# §6.4.2: V=2 P=0 RC=1 = 0x81 | PT=201 | length 7 (8 words − 1) | SSRC of sender 0x0a0b0c0d |
# block: SSRC 0x01020304 | fraction 0x40, cumulative lost −2 = 0xfffffe | ext highest seq 0x00011000 |
# jitter 0x10 | LSR 0x12345678 | DLSR 0x00010000 (1 s)
RR_ONE_BLOCK = bytes.fromhex("81c900070a0b0c0d0102030440fffffe00011000000000101234567800010000")
# §6.4.1: V=2 RC=0 = 0x80 | PT=200 | length 6 | SSRC 0x0a0b0c0d | NTP 0xe1234567.89abcdef |
# RTP ts 0x00000640 | packet count 10 | octet count 900
SR_NO_BLOCK = bytes.fromhex("80c800060a0b0c0de123456789abcdef000006400000000a00000384")
# §6.5: V=2 SC=1 = 0x81 | PT=202 | length 3 | SSRC 0x0a0b0c0d | CNAME(1) len 5 "a@b.c" | END + pad
SDES_CNAME = bytes.fromhex("81ca00030a0b0c0d0105") + b"a@b.c" + b"\x00"
# §6.6: V=2 SC=1 | PT=203 | length 2 | SSRC 0x0a0b0c0d | reason length 3 "bye" (no padding needed)
BYE_REASON = bytes.fromhex("81cb00020a0b0c0d03") + b"bye"


def test_rtp_fixed_header_by_hand() -> None:
    packet = RtpPacket(0, 0x1234, 0x89ABCDEF, 0x01020304, b"\xff\xfe")
    assert packet.encode() == RTP_PLAIN
    assert RtpPacket.parse(RTP_PLAIN) == packet


def test_rtp_with_csrc_extension_marker_and_padding_by_hand() -> None:
    packet = RtpPacket(103, 0xFFFF, 0, 0xCAFEBABE, b"ab", True, (9,), 0xBEDE, bytes.fromhex("11223344"), padding=2)
    assert packet.encode() == RTP_FULL
    assert RtpPacket.parse(RTP_FULL) == packet


def test_rtcp_packets_by_hand() -> None:
    block = ReportBlock(0x01020304, 0x40, -2, 0x11000, 0x10, 0x12345678, 0x10000)
    rr = ReceiverReport(0x0A0B0C0D, (block,))
    sr = SenderReport(0x0A0B0C0D, 0xE1234567_89ABCDEF, 0x640, 10, 900)
    sdes = SourceDescription((SdesChunk(0x0A0B0C0D, ((1, b"a@b.c"),)),))
    bye = Goodbye((0x0A0B0C0D,), b"bye")
    compound = SR_NO_BLOCK + SDES_CNAME + BYE_REASON
    assert encode_compound([rr]) == RR_ONE_BLOCK
    assert encode_compound([sr, sdes, bye]) == compound
    assert parse_compound(RR_ONE_BLOCK) == [rr]
    assert parse_compound(compound) == [sr, sdes, bye]
    assert ntp_middle32(sr.ntp_timestamp) == 0x456789AB  # §6.4.1: LSR = middle 32 bits


def test_rtcp_validity_checks_of_appendix_a2() -> None:
    with pytest.raises(ParseError):  # the first packet of a compound is SR or RR
        parse_compound(SDES_CNAME)
    assert parse_compound(SDES_CNAME, strict=False) == [SourceDescription.with_cname(0x0A0B0C0D, "a@b.c")]
    with pytest.raises(ParseError):  # lengths must add up to the datagram
        parse_compound(RR_ONE_BLOCK + b"\x00\x00\x00\x00")
    with pytest.raises(ParseError):  # version 2
        parse_compound(bytes([0x41]) + RR_ONE_BLOCK[1:])
    padded_first = bytes([RR_ONE_BLOCK[0] | 0x20]) + RR_ONE_BLOCK[1:]
    with pytest.raises(ParseError):  # only the last packet may carry padding
        parse_compound(padded_first + SDES_CNAME)
    assert isinstance(parse_compound(RR_ONE_BLOCK + bytes.fromhex("80cc0000"))[1], RawRtcp)  # APP kept raw


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (RTP_PLAIN, "rtp"),
        (RTP_FULL, "rtp"),
        (RR_ONE_BLOCK, "rtcp"),
        (SR_NO_BLOCK, "rtcp"),
        (bytes.fromhex("80cd0000"), "rtcp"),  # RTPFB 205 (RFC 4585) is RTCP too
        (bytes.fromhex("80df0000"), "rtcp"),  # 223: top of the RFC 5761 §4 RTCP range
        (bytes.fromhex("80e00000"), "rtp"),  # 224 = M bit + PT 96: RTP
        (bytes.fromhex("00010000") + bytes(16), None),  # STUN binding request (RFC 7983 §7: 0..3)
        (bytes.fromhex("16fefd00"), None),  # DTLS (20..63)
        (b"\x80", None),
    ],
)
def test_rtp_rtcp_demux_on_one_port(data: bytes, kind: str | None) -> None:
    assert classify(data) == kind


# --------------------------------------------------------------------------------------- tshark


def _tshark(tmp_path: Path, datagrams: list[bytes]) -> list[dict[str, Any]]:
    tshark = require_tool("tshark")
    buf = io.BytesIO()
    writer = PcapWriter(buf)
    for index, data in enumerate(datagrams):
        writer.udp(SENDER, RECEIVER, data, ts=1.0 + index * 0.02)
    path = tmp_path / "rtp.pcap"
    path.write_bytes(buf.getvalue())
    out = subprocess.run(  # decode-as RTP on the port; Wireshark sends rtcp-mux packets to RTCP itself
        [tshark, "-r", str(path), "-d", f"udp.port=={RECEIVER[1]},rtp", "-T", "json", "--no-duplicate-keys"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return [frame["_source"]["layers"] for frame in json.loads(out.stdout)]


def _find(tree: Any, key: str) -> Any:
    """The first value of ``key`` anywhere in a tshark JSON subtree."""
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        for value in tree.values():
            found = _find(value, key)
            if found is not None:
                return found
    elif isinstance(tree, list):
        for value in tree:
            found = _find(value, key)
            if found is not None:
                return found
    return None


@pytest.mark.interop
def test_tshark_decodes_rtp_and_compound_rtcp(tmp_path: Path) -> None:
    rtp = RtpPacket(103, 65535, 0xDEADBEEF, 0x11223344, b"x" * 90, True, (7, 8), 0xBEDE, b"\x10\x01\x00\x00", padding=4)
    block = ReportBlock(0x55667788, 64, -3, 70000, 123, 0x45678901, 65536)
    sr = SenderReport(0x11223344, 0xE1234567_89ABCDEF, 1000, 50, 4500, (block,))
    rr = ReceiverReport(0x55667788, (ReportBlock(0x11223344, 0, 0, 65535, 7, 0, 0),))
    layers = _tshark(
        tmp_path,
        [
            rtp.encode(),
            encode_compound([sr, SourceDescription.with_cname(0x11223344, "alice@example"), Goodbye((0x11223344,))]),
            encode_compound([rr, SourceDescription.with_cname(0x55667788, "bob@example")]),
        ],
    )
    decoded = layers[0]["rtp"]
    assert {k: decoded[k] for k in ("rtp.version", "rtp.padding", "rtp.ext", "rtp.cc", "rtp.marker")} == {
        "rtp.version": "2",
        "rtp.padding": "1",
        "rtp.ext": "1",
        "rtp.cc": "2",
        "rtp.marker": "1",
    }
    assert (decoded["rtp.p_type"], decoded["rtp.seq"], decoded["rtp.timestamp"]) == ("103", "65535", "3735928559")
    assert decoded["rtp.ssrc"] == "0x11223344"
    assert decoded["rtp.csrc.items"]["rtp.csrc.item"] == ["0x00000007", "0x00000008"]
    assert (decoded["rtp.ext.profile"], decoded["rtp.ext.len"]) == ("0xbede", "1")
    assert decoded["rtp.payload"] == ":".join(["78"] * 90)
    assert decoded["rtp.padding.count"] == "4"

    sr_layer, sdes_layer, bye_layer = layers[1]["rtcp"]
    assert sr_layer["rtcp.pt"] == "200" and sr_layer["rtcp.rc"] == "1" and sr_layer["rtcp.length"] == "12"
    assert sr_layer["rtcp.senderssrc"] == "0x11223344"
    assert sr_layer["rtcp.timestamp.ntp.msw"] == str(0xE1234567)
    assert sr_layer["rtcp.timestamp.ntp.lsw"] == str(0x89ABCDEF)
    assert (sr_layer["rtcp.timestamp.rtp"], sr_layer["rtcp.sender.packetcount"]) == ("1000", "50")
    assert sr_layer["rtcp.sender.octetcount"] == "4500"
    assert _find(sr_layer, "rtcp.ssrc.identifier") == "0x55667788"
    assert (_find(sr_layer, "rtcp.ssrc.fraction"), _find(sr_layer, "rtcp.ssrc.cum_nr")) == ("64", "-3")
    assert _find(sr_layer, "rtcp.ssrc.ext_high") == "70000"
    assert (_find(sr_layer, "rtcp.ssrc.high_cycles"), _find(sr_layer, "rtcp.ssrc.high_seq")) == ("1", "4464")
    assert _find(sr_layer, "rtcp.ssrc.jitter") == "123"
    assert (_find(sr_layer, "rtcp.ssrc.lsr"), _find(sr_layer, "rtcp.ssrc.dlsr")) == (str(0x45678901), "65536")
    assert sdes_layer["rtcp.pt"] == "202" and _find(sdes_layer, "rtcp.sdes.text") == "alice@example"
    assert bye_layer["rtcp.pt"] == "203" and bye_layer["rtcp.ssrc.identifier"] == "0x11223344"
    rr_layer = layers[2]["rtcp"][0]
    assert rr_layer["rtcp.pt"] == "201" and rr_layer["rtcp.senderssrc"] == "0x55667788"
    assert _find(rr_layer, "rtcp.ssrc.jitter") == "7"


@pytest.mark.interop
def test_tshark_sees_a_sessions_stream_as_rfc3550_says(tmp_path: Path) -> None:
    """What MediaSession sends for 0.2 s: consecutive sequence numbers, 320 timestamp units per 20 ms
    packet (SILK-WB: 16 kHz), one SSRC, and an SR whose counts are the packets and octets before it."""
    profile = audio_profile("SILK-WB", rtcp_interval=0.05)
    session = MediaSession(profile, 0x0BADCAFE, random.Random(7))
    datagrams: list[bytes] = []
    now = 100.0
    while now < 100.2:
        datagrams += session.datagrams_to_send(now)
        now += 0.001
    layers = _tshark(tmp_path, datagrams)
    rtp = [frame["rtp"] for frame in layers if "rtp" in frame]
    rtcp = [frame["rtcp"] for frame in layers if "rtcp" in frame]
    assert len(rtp) == 10 and rtcp
    seqs = [int(p["rtp.seq"]) for p in rtp]
    stamps = [int(p["rtp.timestamp"]) for p in rtp]
    assert all((b - a) % 65536 == 1 for a, b in itertools.pairwise(seqs))
    assert all((b - a) % 2**32 == 320 for a, b in itertools.pairwise(stamps))
    assert {p["rtp.ssrc"] for p in rtp} == {"0x0badcafe"}
    assert {p["rtp.p_type"] for p in rtp} == {"103"}
    assert rtp[0]["rtp.marker"] == "1" and {p["rtp.marker"] for p in rtp[1:]} == {"0"}
    assert all(p["rtp.payload"].count(":") == 89 for p in rtp)  # 90 octets per 20 ms (36 kbit/s)
    first_sr_frame = next(i for i, frame in enumerate(layers) if "rtcp" in frame)
    sr = layers[first_sr_frame]["rtcp"][0] if isinstance(layers[first_sr_frame]["rtcp"], list) else None
    assert sr is not None and sr["rtcp.pt"] == "200" and sr["rtcp.senderssrc"] == "0x0badcafe"
    sent_before = sum(1 for frame in layers[:first_sr_frame] if "rtp" in frame)
    assert sr["rtcp.sender.packetcount"] == str(sent_before)
    assert sr["rtcp.sender.octetcount"] == str(90 * sent_before)


# --------------------------------------------------------------------------------------- properties

u32 = st.integers(0, 2**32 - 1)
blocks = st.builds(ReportBlock, u32, st.integers(0, 255), st.integers(-(2**23), 2**23 - 1), u32, u32, u32, u32)
words = st.binary(max_size=12).map(lambda b: b[: len(b) // 4 * 4])
rtp_packets = st.builds(
    RtpPacket,
    st.integers(0, 127),
    st.integers(0, 65535),
    u32,
    u32,
    st.binary(max_size=40),
    st.booleans(),
    st.lists(u32, max_size=15).map(tuple),
    st.none() | st.integers(0, 65535),
    st.just(b""),
    st.integers(0, 255),
).flatmap(
    lambda p: (
        st.just(p)
        if p.extension_profile is None
        else words.map(
            lambda ext: RtpPacket(
                p.payload_type,
                p.sequence,
                p.timestamp,
                p.ssrc,
                p.payload,
                p.marker,
                p.csrcs,
                p.extension_profile,
                ext,
                p.padding,
            )
        )
    )
)
rtcp_packets = st.one_of(
    st.builds(SenderReport, u32, st.integers(0, 2**64 - 1), u32, u32, u32, st.lists(blocks, max_size=3).map(tuple)),
    st.builds(ReceiverReport, u32, st.lists(blocks, max_size=3).map(tuple)),
    st.builds(
        SourceDescription,
        st.lists(
            st.builds(
                SdesChunk, u32, st.lists(st.tuples(st.integers(1, 255), st.binary(max_size=20)), max_size=3).map(tuple)
            ),
            max_size=3,
        ).map(tuple),
    ),
    st.builds(Goodbye, st.lists(u32, max_size=3).map(tuple), st.binary(max_size=20)),
    st.builds(RawRtcp, st.integers(205, 210), st.integers(0, 31), words),
)


@FAST
@given(rtp_packets)
def test_rtp_round_trip(packet: RtpPacket) -> None:
    data = packet.encode()
    assert RtpPacket.parse(data) == packet
    assert rtp_header(data) == (packet.payload_type, packet.sequence, packet.timestamp, packet.ssrc)
    if not (packet.csrcs or packet.padding or packet.extension_profile is not None):  # the sender's fast path
        assert (
            pack_rtp(packet.payload_type, packet.marker, packet.sequence, packet.timestamp, packet.ssrc, packet.payload)
            == data
        )


@SLOW
@given(
    st.one_of(
        st.builds(SenderReport, u32, st.integers(0, 2**64 - 1), u32, u32, u32),
        rtcp_packets.filter(lambda p: isinstance(p, ReceiverReport)),
    ),
    st.lists(rtcp_packets, max_size=4),
)
def test_compound_rtcp_round_trip(first: SenderReport | ReceiverReport, rest: list[Any]) -> None:
    packets = [first, *rest]
    assert parse_compound(encode_compound(packets)) == packets


def _never_crash(data: bytes) -> None:
    kind = classify(data)
    assert kind in ("rtp", "rtcp", None)
    for parse in (RtpPacket.parse, parse_compound, rtp_header):
        try:
            parse(data)
        except ParseError as exc:
            assert isinstance(exc, MalformedMessage) and exc.status is None


@FAST
@given(st.binary(max_size=200))
def test_random_bytes_never_crash(data: bytes) -> None:
    """Kills a parser that indexes past the end, trusts a length field or lets struct.error escape."""
    _never_crash(data)
    session = MediaSession(audio_profile(), 1, random.Random(0))
    session.receive(data, 0.0)
    assert session.malformed + session.packets_received + session.rtcp_received + session.foreign <= 1


_CORPUS = [RTP_PLAIN, RTP_FULL, RR_ONE_BLOCK, SR_NO_BLOCK + SDES_CNAME + BYE_REASON]


@FAST
@given(
    st.sampled_from(_CORPUS),
    st.lists(st.tuples(st.integers(0, 80), st.integers(0, 255)), max_size=6),
    st.integers(0, 90),
)
def test_mutated_packets_never_crash(base: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    """Valid packets with bytes changed and truncated: deep in the length, count and padding checks."""
    data = bytearray(base)
    for index, value in flips:
        if index < len(data):
            data[index] = value
    data = data[:cut] if cut < len(data) else data
    _never_crash(bytes(data))
    session = MediaSession(audio_profile(), 1, random.Random(0))
    session.receive(bytes(data), 0.0)


_bodies = st.lists(st.tuples(st.integers(200, 204), st.integers(0, 31), st.binary(max_size=40)), min_size=1, max_size=4)


@FAST
@given(_bodies)
@example([(202, 1, bytes.fromhex("0a0b0c0d05014101"))])  # an item type as the datagram's last octet
def test_well_framed_rtcp_with_random_bodies_never_crashes(packets: list[tuple[int, int, bytes]]) -> None:
    """Right headers and lengths around random bodies: reaches every body parser (SR/RR blocks, SDES
    items, BYE reasons). Kills e.g. dropping the "SDES item truncated" check (an IndexError escapes)."""
    data = b"".join(
        bytes([0x80 | count, pt])
        + (len(body) // 4 + (1 if len(body) % 4 else 0)).to_bytes(2, "big")
        + body
        + bytes(-len(body) % 4)
        for pt, count, body in packets
    )
    _never_crash(encode_compound([ReceiverReport(1)]) + data)
