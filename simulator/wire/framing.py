"""Stream framings and the dialect detector.

Public API
----------
- ``classify(first_bytes) -> Flow | None``: what a new flow speaks, from its first bytes; None
  means "need more bytes". :data:`DIALECTS` maps a :class:`Flow` to the dialect to parse it with.
- :class:`TurnTcpFramer`: STUN/TURN over TCP or TLS (RFC 8489 §6.2.2, RFC 8656 §12.5 — ChannelData
  padded to 4). ``feed(data) -> list[Frame]``; each :class:`Frame` is one whole STUN message, or one
  ChannelData *without* its padding.
- :class:`MsTurnTcpFramer`: MS-TURN over TCP 443 (MS-TURN 2.1). First the pseudo-TLS hello (one TLS
  record, ``MsTurnFrameKind.HELLO``), then 4-byte headers: type 0x02 control (an MS-TURN message),
  0x03 end-to-end data, a zero byte, a 16-bit length. ``client_hello(random)``,
  ``server_hello(random, session_id)``, ``frame_control(msg)``, ``frame_data(payload)`` build the
  bytes the other direction needs.

Framers raise ``MalformedMessage(status=None)`` on a byte stream that cannot be framed: close the
connection. Everything is buffered until a whole frame is there, so any split of the input yields the
same frames.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from simulator.wire import msturn, turn
from simulator.wire.errors import MalformedMessage
from simulator.wire.stun import HEADER_SIZE, MAGIC_COOKIE_BYTES, Dialect

_U16 = struct.Struct("!H")
_MS_HEADER = struct.Struct("!BBH")


class Flow(IntEnum):
    UNKNOWN = 0
    STUN = 1  # RFC 5389 header cookie, no MS-TURN MAGIC-COOKIE attribute
    MSTURN = 2  # RFC 5389 header + MAGIC-COOKIE attribute first (MS-VERSION >= 3)
    MSTURN_LEGACY = 3  # no header cookie, MAGIC-COOKIE attribute first (MS-VERSION <= 2)
    CHANNEL_DATA = 4
    PSEUDO_TLS = 5  # MS-TURN over TCP 443 hello


DIALECTS: dict[Flow, Dialect] = {
    Flow.STUN: turn.RFC,
    Flow.MSTURN: msturn.RFC5389,
    Flow.MSTURN_LEGACY: msturn.LEGACY,
}


def classify(data: bytes) -> Flow | None:
    """Classify a flow from its first bytes; None until enough bytes are there to tell."""
    if not data:
        return None
    first = data[0]
    if first == 0x16:  # TLS handshake record, version 3.1 (MS-TURN 2.1 pseudo-TLS)
        if len(data) < 3:
            return None
        return Flow.PSEUDO_TLS if data[1:3] == b"\x03\x01" else Flow.UNKNOWN
    if 0x40 <= first <= 0x7F:  # ChannelData: channels 0x4000-0x7FFF (RFC 5766 §11; see turn.CHANNEL_MAX)
        return Flow.CHANNEL_DATA
    if first & 0xC0:
        return Flow.UNKNOWN
    if len(data) < 8:
        return None
    has_cookie = data[4:8] == MAGIC_COOKIE_BYTES
    if has_cookie and _U16.unpack_from(data, 2)[0] == 0:
        return Flow.STUN  # header only: nothing more to see
    if len(data) < HEADER_SIZE + 8:
        return None
    if msturn.looks_like_msturn(data):
        return Flow.MSTURN if has_cookie else Flow.MSTURN_LEGACY
    return Flow.STUN if has_cookie else Flow.UNKNOWN


class FrameKind(IntEnum):
    STUN = 0
    CHANNEL_DATA = 1


@dataclass(frozen=True, slots=True)
class Frame:
    kind: FrameKind
    data: bytes


class TurnTcpFramer:
    """STUN messages and padded ChannelData on one byte stream (RFC 8656 §12.5)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        buf = self._buffer
        buf += data
        frames: list[Frame] = []
        pos = 0
        while len(buf) - pos >= 4:
            first = buf[pos]
            length = _U16.unpack_from(buf, pos + 2)[0]
            if first & 0xC0 == 0:
                total, keep, kind = HEADER_SIZE + length, HEADER_SIZE + length, FrameKind.STUN
            elif first & 0xC0 == 0x40:
                # RFC 8656 §12.5: over TCP the ChannelData is padded to a multiple of 4.
                total, keep, kind = 4 + ((length + 3) & ~3), 4 + length, FrameKind.CHANNEL_DATA
            else:
                raise MalformedMessage("neither STUN nor ChannelData on a TURN stream", None)
            if len(buf) - pos < total:
                break
            frames.append(Frame(kind, bytes(buf[pos : pos + keep])))
            pos += total
        del buf[:pos]
        return frames


class Role(IntEnum):
    CLIENT = 0
    SERVER = 1


class MsTurnFrameKind(IntEnum):
    HELLO = 0x16  # the pseudo-TLS record
    CONTROL = 0x02  # MS-TURN 2.1: an MS-TURN message
    DATA = 0x03  # end-to-end data after Set Active Destination


@dataclass(frozen=True, slots=True)
class MsTurnFrame:
    kind: MsTurnFrameKind
    data: bytes


_CLIENT_HELLO_HEAD = bytes.fromhex("160301002d010000290301")
_CLIENT_HELLO_TAIL = bytes.fromhex("00000200180100")  # no session, 1 suite 0x0018, null compression
_SERVER_HELLO_HEAD = bytes.fromhex("160301004e020000460301")
_SERVER_HELLO_DONE = bytes.fromhex("0e000000")


def client_hello(random: bytes) -> bytes:
    """The fake TLS 1.0 ClientHello (50 bytes) offering only TLS_DH_anon_WITH_RC4_128_MD5 (0x0018)."""
    if len(random) != 32:
        raise ValueError("random must be 32 bytes")
    return _CLIENT_HELLO_HEAD + random + _CLIENT_HELLO_TAIL


def server_hello(random: bytes, session_id: bytes) -> bytes:
    """One 83-byte record: ServerHello (session ID of 32 bytes, suite 0x0018) + ServerHelloDone."""
    if len(random) != 32 or len(session_id) != 32:
        raise ValueError("random and session_id must be 32 bytes")
    return _SERVER_HELLO_HEAD + random + b"\x20" + session_id + b"\x00\x18\x00" + _SERVER_HELLO_DONE


def frame_control(message: bytes) -> bytes:
    return _MS_HEADER.pack(MsTurnFrameKind.CONTROL, 0, len(message)) + message


def frame_data(payload: bytes) -> bytes:
    return _MS_HEADER.pack(MsTurnFrameKind.DATA, 0, len(payload)) + payload


class MsTurnTcpFramer:
    """MS-TURN over TCP 443: expects the peer's pseudo-TLS hello first, then framed messages."""

    def __init__(self, role: Role) -> None:
        self.role = role
        self._buffer = bytearray()
        self._hello_done = False

    @property
    def hello_done(self) -> bool:
        return self._hello_done

    def feed(self, data: bytes) -> list[MsTurnFrame]:
        buf = self._buffer
        buf += data
        frames: list[MsTurnFrame] = []
        pos = 0
        if not self._hello_done:
            if len(buf) < 6:
                return frames
            # the server reads a ClientHello (handshake type 1), the client a ServerHello (type 2)
            expected = 0x01 if self.role == Role.SERVER else 0x02
            if buf[0] != 0x16 or buf[1:3] != b"\x03\x01" or buf[5] != expected:
                raise MalformedMessage("not the MS-TURN pseudo-TLS hello", None)
            total = 5 + _U16.unpack_from(buf, 3)[0]
            if len(buf) < total:
                return frames
            frames.append(MsTurnFrame(MsTurnFrameKind.HELLO, bytes(buf[:total])))
            pos = total
            self._hello_done = True
        while len(buf) - pos >= 4:
            kind, reserved, length = _MS_HEADER.unpack_from(buf, pos)
            if kind not in (MsTurnFrameKind.CONTROL, MsTurnFrameKind.DATA) or reserved:
                raise MalformedMessage(f"bad MS-TURN TCP frame type 0x{kind:02x}", None)
            if len(buf) - pos - 4 < length:
                break
            frames.append(MsTurnFrame(MsTurnFrameKind(kind), bytes(buf[pos + 4 : pos + 4 + length])))
            pos += 4 + length
        del buf[:pos]
        return frames
