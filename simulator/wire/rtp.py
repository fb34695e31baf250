"""RTP and RTCP on the wire (RFC 3550), and telling them apart on one port (RFC 5761).

Public API
----------
- :class:`RtpPacket` — the RTP fixed header (RFC 3550 §5.1), CSRC list, header extension (§5.3.1),
  payload and padding. ``packet.encode()`` / ``RtpPacket.parse(data)``.
- RTCP packets (RFC 3550 §6.4–6.6): :class:`SenderReport`, :class:`ReceiverReport` (both carrying
  :class:`ReportBlock` s), :class:`SourceDescription` (SDES, §6.5), :class:`Goodbye` (BYE, §6.6) and
  :class:`RawRtcp` for any other packet type, kept as bytes. ``encode_compound(packets)`` /
  ``parse_compound(data)`` handle compound packets (§6.1) with the validity checks of Appendix A.2.
- :func:`classify` — ``"rtp"``, ``"rtcp"`` or ``None`` for a datagram on a shared port: version 2 in the
  top bits of the first byte, then the second byte (marker bit + payload type) in 192..223 means RTCP
  (RFC 5761 §4: RTP payload types 64–95 are not to be used when RTP and RTCP share a port).
- :func:`ntp_middle32` — the middle 32 bits of a 64-bit NTP timestamp (LSR, §6.4.1).

Bad input raises :class:`ParseError` (a :class:`~simulator.wire.errors.MalformedMessage` with no
response status: RTP and RTCP have no error response, a receiver drops and counts).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar, Final, Literal

from simulator.wire.errors import MalformedMessage

RTP_VERSION: Final = 2
RTP_HEADER_SIZE: Final = 12  # RFC 3550 §5.1: fixed header, before CSRCs
RTCP_HEADER_SIZE: Final = 4
REPORT_BLOCK_SIZE: Final = 24  # RFC 3550 §6.4.1: one reception report block
MAX_REPORT_BLOCKS: Final = 31  # RC is 5 bits
NTP_UNIX_OFFSET: Final = 2_208_988_800  # seconds from 1900-01-01 (NTP era 0) to 1970-01-01

_RTP: Final = struct.Struct("!BBHII")
_EXT: Final = struct.Struct("!HH")
_RTCP: Final = struct.Struct("!BBH")
_SR_INFO: Final = struct.Struct("!IQIII")  # SSRC, NTP timestamp, RTP timestamp, packet count, octet count
_BLOCK: Final = struct.Struct("!IIIIII")
_U32: Final = struct.Struct("!I")


class ParseError(MalformedMessage):
    """A datagram that is not valid RTP/RTCP. Drop it silently (``status`` is ``None``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, status=None)


class RtcpType(enum.IntEnum):
    """RTCP packet types (RFC 3550 §12.1)."""

    SR = 200
    RR = 201
    SDES = 202
    BYE = 203
    APP = 204


class SdesItem(enum.IntEnum):
    """SDES item types (RFC 3550 §12.2)."""

    END = 0
    CNAME = 1
    NAME = 2
    EMAIL = 3
    PHONE = 4
    LOC = 5
    TOOL = 6
    NOTE = 7
    PRIV = 8


def _require(condition: bool, reason: str) -> None:
    if not condition:
        raise ParseError(reason)


def _u32(name: str, value: int) -> None:
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{name} {value} does not fit 32 bits")


# ---------------------------------------------------------------------------------------------- RTP


@dataclass(frozen=True, slots=True)
class RtpPacket:
    """One RTP packet (RFC 3550 §5.1). ``padding`` is the number of padding octets (0: P bit clear)."""

    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes = b""
    marker: bool = False
    csrcs: tuple[int, ...] = ()
    extension_profile: int | None = None  # RFC 3550 §5.3.1: "defined by profile" 16 bits; None: X bit clear
    extension: bytes = b""  # header extension body, a multiple of 4 octets
    padding: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.payload_type <= 127:
            raise ValueError("payload type is 7 bits")
        if not 0 <= self.sequence <= 0xFFFF:
            raise ValueError("sequence number is 16 bits")
        _u32("timestamp", self.timestamp)
        _u32("SSRC", self.ssrc)
        if len(self.csrcs) > 15:
            raise ValueError("at most 15 CSRCs (CC is 4 bits)")
        for csrc in self.csrcs:
            _u32("CSRC", csrc)
        if len(self.extension) % 4 or len(self.extension) > 4 * 0xFFFF:
            raise ValueError("header extension length is a multiple of 4 octets, at most 65535 words")
        if self.extension and self.extension_profile is None:
            raise ValueError("a header extension needs its profile field")
        if self.extension_profile is not None and not 0 <= self.extension_profile <= 0xFFFF:
            raise ValueError("extension profile is 16 bits")
        if not 0 <= self.padding <= 255:
            raise ValueError("padding is 0..255 octets")

    def encode(self) -> bytes:
        has_extension = self.extension_profile is not None
        first = RTP_VERSION << 6 | (0x20 if self.padding else 0) | (0x10 if has_extension else 0) | len(self.csrcs)
        parts = [
            _RTP.pack(first, (0x80 if self.marker else 0) | self.payload_type, self.sequence, self.timestamp, self.ssrc)
        ]
        parts.extend(_U32.pack(csrc) for csrc in self.csrcs)
        if self.extension_profile is not None:
            parts.append(_EXT.pack(self.extension_profile, len(self.extension) // 4))
            parts.append(self.extension)
        parts.append(self.payload)
        if self.padding:
            # RFC 3550 §5.1: the last padding octet counts the padding octets, itself included
            parts.append(bytes(self.padding - 1) + bytes((self.padding,)))
        return b"".join(parts)

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        """Parse one RTP packet; :class:`ParseError` when it is not one (RFC 3550 §5.1, A.1 checks)."""
        size = len(data)
        _require(size >= RTP_HEADER_SIZE, "RTP packet shorter than the 12-octet fixed header")
        first, second, sequence, timestamp, ssrc = _RTP.unpack_from(data)
        _require(first >> 6 == RTP_VERSION, "RTP version is not 2")
        offset = RTP_HEADER_SIZE + 4 * (first & 0x0F)
        _require(size >= offset, "RTP packet shorter than its CSRC list")
        csrcs = struct.unpack_from(f"!{first & 0x0F}I", data, RTP_HEADER_SIZE)
        profile: int | None = None
        extension = b""
        if first & 0x10:
            _require(size >= offset + 4, "RTP header extension truncated")
            profile, words = _EXT.unpack_from(data, offset)
            offset += 4
            _require(size >= offset + 4 * words, "RTP header extension longer than the packet")
            extension = bytes(data[offset : offset + 4 * words])
            offset += 4 * words
        end = size
        padding = 0
        if first & 0x20:
            padding = data[-1]
            # RFC 3550 §5.1: the count includes itself, so it is at least 1 and fits after the header
            _require(padding >= 1 and size - padding >= offset, "RTP padding count is invalid")
            end -= padding
        return cls(
            payload_type=second & 0x7F,
            sequence=sequence,
            timestamp=timestamp,
            ssrc=ssrc,
            payload=bytes(data[offset:end]),
            marker=bool(second & 0x80),
            csrcs=tuple(csrcs),
            extension_profile=profile,
            extension=extension,
            padding=padding,
        )


def pack_rtp(payload_type: int, marker: bool, sequence: int, timestamp: int, ssrc: int, payload: bytes) -> bytes:
    """A plain RTP packet (no CSRC, extension or padding) without building an :class:`RtpPacket`.

    The sender's fast path: the same bytes as ``RtpPacket(...).encode()``; arguments are not checked
    beyond what ``struct`` refuses.
    """
    return _RTP.pack(0x80, (0x80 if marker else 0) | payload_type, sequence, timestamp, ssrc) + payload


def rtp_header(data: bytes) -> tuple[int, int, int, int]:
    """``(payload_type, sequence, timestamp, ssrc)`` of a valid RTP packet, else :class:`ParseError`.

    The receiver's fast path: the checks of :meth:`RtpPacket.parse` (version, CSRC list, extension and
    padding lengths) without building the packet.
    """
    size = len(data)
    _require(size >= RTP_HEADER_SIZE, "RTP packet shorter than the 12-octet fixed header")
    first, second, sequence, timestamp, ssrc = _RTP.unpack_from(data)
    if first != 0x80:  # anything but the plain header: the full parser checks it
        packet = RtpPacket.parse(data)
        return packet.payload_type, packet.sequence, packet.timestamp, packet.ssrc
    return second & 0x7F, sequence, timestamp, ssrc


# --------------------------------------------------------------------------------------------- RTCP


@dataclass(frozen=True, slots=True)
class ReportBlock:
    """One reception report block (RFC 3550 §6.4.1) about source ``ssrc``.

    ``fraction_lost`` is the 8-bit fixed-point fraction (lost/expected × 256); ``cumulative_lost`` is
    signed 24 bits (duplicates can make it negative); ``highest_sequence`` is the extended highest
    sequence number; ``lsr``/``dlsr`` are in 1/65536 s.
    """

    ssrc: int
    fraction_lost: int = 0
    cumulative_lost: int = 0
    highest_sequence: int = 0
    jitter: int = 0
    lsr: int = 0
    dlsr: int = 0

    def __post_init__(self) -> None:
        _u32("SSRC", self.ssrc)
        if not 0 <= self.fraction_lost <= 255:
            raise ValueError("fraction lost is 8 bits")
        if not -(1 << 23) <= self.cumulative_lost < (1 << 23):
            raise ValueError("cumulative lost is a signed 24-bit value")
        for name in ("highest_sequence", "jitter", "lsr", "dlsr"):
            _u32(name, getattr(self, name))

    def encode(self) -> bytes:
        lost = (self.fraction_lost << 24) | (self.cumulative_lost & 0xFFFFFF)
        return _BLOCK.pack(self.ssrc, lost, self.highest_sequence, self.jitter, self.lsr, self.dlsr)

    @classmethod
    def parse(cls, data: bytes, offset: int) -> ReportBlock:
        ssrc, lost, highest, jitter, lsr, dlsr = _BLOCK.unpack_from(data, offset)
        cumulative = lost & 0xFFFFFF
        if cumulative & 0x800000:
            cumulative -= 1 << 24
        return cls(ssrc, lost >> 24, cumulative, highest, jitter, lsr, dlsr)


@dataclass(frozen=True, slots=True)
class SenderReport:
    """RTCP SR (RFC 3550 §6.4.1). ``ntp_timestamp`` is the 64-bit NTP time (32.32 fixed point)."""

    ssrc: int
    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: tuple[ReportBlock, ...] = ()
    extension: bytes = b""  # profile-specific extension (§6.4.1), a multiple of 4 octets

    packet_type: ClassVar[int] = RtcpType.SR

    def body(self) -> tuple[int, bytes]:
        _u32("SSRC", self.ssrc)
        if not 0 <= self.ntp_timestamp < 1 << 64:
            raise ValueError("NTP timestamp is 64 bits")
        info = _SR_INFO.pack(self.ssrc, self.ntp_timestamp, self.rtp_timestamp, self.packet_count, self.octet_count)
        return len(self.reports), info + b"".join(r.encode() for r in self.reports) + self.extension


@dataclass(frozen=True, slots=True)
class ReceiverReport:
    """RTCP RR (RFC 3550 §6.4.2)."""

    ssrc: int
    reports: tuple[ReportBlock, ...] = ()
    extension: bytes = b""

    packet_type: ClassVar[int] = RtcpType.RR

    def body(self) -> tuple[int, bytes]:
        _u32("SSRC", self.ssrc)
        return len(self.reports), _U32.pack(self.ssrc) + b"".join(r.encode() for r in self.reports) + self.extension


@dataclass(frozen=True, slots=True)
class SdesChunk:
    """One SDES chunk: a source and its items ``(type, value)`` in order (RFC 3550 §6.5)."""

    ssrc: int
    items: tuple[tuple[int, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class SourceDescription:
    """RTCP SDES (RFC 3550 §6.5)."""

    chunks: tuple[SdesChunk, ...] = ()

    packet_type: ClassVar[int] = RtcpType.SDES

    def body(self) -> tuple[int, bytes]:
        out = bytearray()
        for chunk in self.chunks:
            _u32("SSRC", chunk.ssrc)
            out += _U32.pack(chunk.ssrc)
            for kind, value in chunk.items:
                if not 1 <= kind <= 255 or len(value) > 255:
                    raise ValueError("SDES item type is 1..255 and its value at most 255 octets")
                out += bytes((kind, len(value))) + value
            # §6.5: the item list ends with a null octet, then nulls up to the next 32-bit boundary
            out += bytes(4 - (len(out) % 4))
        return len(self.chunks), bytes(out)

    @classmethod
    def with_cname(cls, ssrc: int, cname: str) -> SourceDescription:
        return cls((SdesChunk(ssrc, ((SdesItem.CNAME, cname.encode()),)),))


@dataclass(frozen=True, slots=True)
class Goodbye:
    """RTCP BYE (RFC 3550 §6.6)."""

    ssrcs: tuple[int, ...] = ()
    reason: bytes = b""

    packet_type: ClassVar[int] = RtcpType.BYE

    def body(self) -> tuple[int, bytes]:
        for ssrc in self.ssrcs:
            _u32("SSRC", ssrc)
        if len(self.reason) > 255:
            raise ValueError("BYE reason is at most 255 octets")
        out = b"".join(_U32.pack(s) for s in self.ssrcs)
        if self.reason:
            reason = bytes((len(self.reason),)) + self.reason
            out += reason + bytes(-len(reason) % 4)
        return len(self.ssrcs), out


@dataclass(frozen=True, slots=True)
class RawRtcp:
    """An RTCP packet of a type this module does not decode (APP, feedback, XR …), kept as bytes."""

    packet_type: int
    count: int
    payload: bytes = field(default=b"")

    def body(self) -> tuple[int, bytes]:
        if len(self.payload) % 4:
            raise ValueError("an RTCP packet body is a multiple of 4 octets")
        return self.count, self.payload


RtcpPacket = SenderReport | ReceiverReport | SourceDescription | Goodbye | RawRtcp


def encode_rtcp(packet: RtcpPacket, padding: int = 0) -> bytes:
    """One RTCP packet with its common header (RFC 3550 §6.4.1); ``padding`` octets, a multiple of 4."""
    count, body = packet.body()
    if not 0 <= count <= 31:
        raise ValueError("RTCP count (RC/SC) is 5 bits")
    if padding % 4 or not 0 <= padding <= 255:
        raise ValueError("RTCP padding is a multiple of 4 octets, at most 255")
    if padding:
        body += bytes(padding - 1) + bytes((padding,))
    words = len(body) // 4  # length field: 32-bit words minus one, header included
    if words > 0xFFFF:
        raise ValueError("RTCP packet too long")
    first = RTP_VERSION << 6 | (0x20 if padding else 0) | count
    return _RTCP.pack(first, int(packet.packet_type), words) + body


def encode_compound(packets: Iterable[RtcpPacket]) -> bytes:
    """A compound RTCP packet (RFC 3550 §6.1): the packets back to back, in the order given."""
    return b"".join(encode_rtcp(p) for p in packets)


def _parse_blocks(data: bytes, offset: int, count: int, end: int) -> tuple[tuple[ReportBlock, ...], int]:
    _require(offset + count * REPORT_BLOCK_SIZE <= end, "RTCP report blocks longer than the packet")
    blocks = tuple(ReportBlock.parse(data, offset + i * REPORT_BLOCK_SIZE) for i in range(count))
    return blocks, offset + count * REPORT_BLOCK_SIZE


def _parse_sdes(data: bytes, offset: int, count: int, end: int) -> SourceDescription:
    chunks = []
    for _ in range(count):
        _require(offset + 4 <= end, "SDES chunk truncated")
        (ssrc,) = _U32.unpack_from(data, offset)
        offset += 4
        items: list[tuple[int, bytes]] = []
        while True:
            _require(offset < end, "SDES item list does not end with a null octet")
            kind = data[offset]
            if kind == SdesItem.END:
                offset += 4 - (offset % 4)  # §6.5: skip the nulls to the next 32-bit boundary
                break
            _require(offset + 2 <= end, "SDES item truncated")
            length = data[offset + 1]
            _require(offset + 2 + length <= end, "SDES item longer than the packet")
            items.append((kind, bytes(data[offset + 2 : offset + 2 + length])))
            offset += 2 + length
        chunks.append(SdesChunk(ssrc, tuple(items)))
    _require(offset <= end, "SDES chunks longer than the packet")
    return SourceDescription(tuple(chunks))


def _parse_one(data: bytes, start: int, end: int, packet_type: int, count: int) -> RtcpPacket:
    offset = start + RTCP_HEADER_SIZE
    if packet_type == RtcpType.SR:
        _require(offset + _SR_INFO.size <= end, "RTCP SR shorter than its sender info")
        ssrc, ntp, rtp_ts, packets, octets = _SR_INFO.unpack_from(data, offset)
        blocks, offset = _parse_blocks(data, offset + _SR_INFO.size, count, end)
        return SenderReport(ssrc, ntp, rtp_ts, packets, octets, blocks, bytes(data[offset:end]))
    if packet_type == RtcpType.RR:
        _require(offset + 4 <= end, "RTCP RR shorter than its SSRC")
        (ssrc,) = _U32.unpack_from(data, offset)
        blocks, offset = _parse_blocks(data, offset + 4, count, end)
        return ReceiverReport(ssrc, blocks, bytes(data[offset:end]))
    if packet_type == RtcpType.SDES:
        return _parse_sdes(data, offset, count, end)
    if packet_type == RtcpType.BYE:
        _require(offset + 4 * count <= end, "RTCP BYE shorter than its SSRC list")
        ssrcs = struct.unpack_from(f"!{count}I", data, offset)
        offset += 4 * count
        reason = b""
        if offset < end:
            length = data[offset]
            _require(offset + 1 + length <= end, "RTCP BYE reason longer than the packet")
            reason = bytes(data[offset + 1 : offset + 1 + length])
        return Goodbye(tuple(ssrcs), reason)
    return RawRtcp(packet_type, count, bytes(data[offset:end]))


def parse_compound(data: bytes, *, strict: bool = True) -> list[RtcpPacket]:
    """Parse a compound RTCP packet (RFC 3550 §6.1) into its packets, in order.

    The checks of RFC 3550 Appendix A.2: every packet has version 2 and a length inside the datagram,
    the lengths add up to the datagram, only the last packet may be padded; with ``strict`` the first
    packet is also an SR or RR (§6.1; RFC 5506 reduced-size RTCP needs ``strict=False``).
    """
    size = len(data)
    _require(size >= RTCP_HEADER_SIZE, "RTCP packet shorter than its 4-octet header")
    if strict:
        _require(data[1] in (RtcpType.SR, RtcpType.RR), "compound RTCP does not start with SR or RR")
    packets: list[RtcpPacket] = []
    start = 0
    while start < size:
        _require(start + RTCP_HEADER_SIZE <= size, "RTCP header truncated")
        first, packet_type, words = _RTCP.unpack_from(data, start)
        _require(first >> 6 == RTP_VERSION, "RTCP version is not 2")
        end = start + 4 * (words + 1)
        _require(end <= size, "RTCP length field runs past the datagram")
        body_end = end
        if first & 0x20:
            _require(end == size, "RTCP padding on a packet that is not the last one")  # A.2
            padding = data[end - 1]
            _require(padding >= 1 and end - padding >= start + RTCP_HEADER_SIZE, "RTCP padding count invalid")
            body_end -= padding
        packets.append(_parse_one(data, start, body_end, packet_type, first & 0x1F))
        start = end
    return packets


# ------------------------------------------------------------------------------------------- demux


def classify(data: bytes) -> Literal["rtp", "rtcp"] | None:
    """``"rtp"``, ``"rtcp"`` or ``None`` (neither) for a datagram on a port shared by RTP and RTCP.

    RFC 7983 §7: first byte 128..191 is RTP or RTCP (STUN is 0..3, DTLS 20..63). RFC 5761 §4: then the
    second byte (M bit and PT together) in 192..223 is RTCP (SR 200, RR 201 … of RFC 3550 and the
    feedback and XR types), everything else RTP; which is why RTP must not use payload types 64–95.
    """
    if len(data) < RTCP_HEADER_SIZE or not 128 <= data[0] <= 191:
        return None
    return "rtcp" if 192 <= data[1] <= 223 else "rtp"


def ntp_middle32(ntp_timestamp: int) -> int:
    """The middle 32 bits of a 64-bit NTP timestamp: the LSR value of RFC 3550 §6.4.1."""
    return (ntp_timestamp >> 16) & 0xFFFFFFFF


def ntp_from_seconds(seconds: float) -> int:
    """A 64-bit NTP timestamp (32.32 fixed point, RFC 3550 §4) for ``seconds`` since 1900-01-01."""
    return int(seconds * (1 << 32)) & 0xFFFFFFFFFFFFFFFF
