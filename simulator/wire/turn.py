"""TURN (RFC 8656) and TURN-TCP (RFC 6062) on the STUN machinery, plus the ChannelData fast path.

Public API
----------
- :data:`RFC`: the RFC 8489 + RFC 8656 + RFC 6062 dialect (one registry). ``parse(data)`` decodes
  a message with it; ``demux(data)`` returns a :class:`ChannelData` or a ``Message`` (RFC 8656
  §12: first byte 0x40–0x7F is ChannelData, 0x00–0x3F STUN).
- :class:`TurnMethod`, :class:`StunErrorCode` (300/400/401/403/420/437/438/440–443/446/447/486/
  487/500/508), attribute specs ``CHANNEL_NUMBER``, ``LIFETIME``, ``XOR_PEER_ADDRESS``, ``DATA``,
  ``XOR_RELAYED_ADDRESS``, ``REQUESTED_ADDRESS_FAMILY``, ``EVEN_PORT``, ``REQUESTED_TRANSPORT``,
  ``DONT_FRAGMENT``, ``RESERVATION_TOKEN``, ``ADDITIONAL_ADDRESS_FAMILY``, ``ADDRESS_ERROR_CODE``,
  ``ICMP``, ``CONNECTION_ID`` (and every STUN spec re-exported by :mod:`simulator.wire.stun`).
- ChannelData: ``encode_channel_data(channel, payload, pad=False) -> bytes`` and
  ``decode_channel_data(buf) -> (channel, payload)`` are the per-packet fast path;
  :class:`ChannelData` is the typed value (``parse_channel_data``, ``ChannelData.serialize``).
  Malformed ChannelData raises ``MalformedMessage(status=None)``: RFC 8656 §12.4 says discard.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from simulator.wire import stun
from simulator.wire.errors import MalformedMessage
from simulator.wire.stun import (
    Address,
    AttributeSpec,
    Dialect,
    Message,
    decode_flag,
    decode_raw,
    decode_xor_address,
    encode_flag,
    encode_raw,
    encode_xor_address,
    fixed_bytes,
    uint,
    uint_then_rffu,
)


class TurnMethod(IntEnum):
    BINDING = 0x001
    ALLOCATE = 0x003  # RFC 8656 §17
    REFRESH = 0x004
    SEND = 0x006
    DATA = 0x007
    CREATE_PERMISSION = 0x008
    CHANNEL_BIND = 0x009
    CONNECT = 0x00A  # RFC 6062 §6.1
    CONNECTION_BIND = 0x00B
    CONNECTION_ATTEMPT = 0x00C


class StunErrorCode(IntEnum):
    TRY_ALTERNATE = 300  # RFC 8489 §14.8
    BAD_REQUEST = 400
    UNAUTHORIZED = 401
    FORBIDDEN = 403  # RFC 8656 §19
    UNKNOWN_ATTRIBUTE = 420
    ALLOCATION_MISMATCH = 437
    STALE_NONCE = 438
    ADDRESS_FAMILY_NOT_SUPPORTED = 440
    WRONG_CREDENTIALS = 441
    UNSUPPORTED_TRANSPORT_PROTOCOL = 442
    PEER_ADDRESS_FAMILY_MISMATCH = 443
    CONNECTION_ALREADY_EXISTS = 446  # RFC 6062 §6.3
    CONNECTION_TIMEOUT_OR_FAILURE = 447
    ALLOCATION_QUOTA_REACHED = 486
    ROLE_CONFLICT = 487  # RFC 8445 §7.3.1.1
    SERVER_ERROR = 500
    INSUFFICIENT_CAPACITY = 508


class TransportProtocol(IntEnum):
    """REQUESTED-TRANSPORT protocol numbers (RFC 8656 §18.7, RFC 6062 §6.1)."""

    TCP = 6
    UDP = 17


class AddressFamily(IntEnum):
    IPV4 = 0x01  # RFC 8656 §18.8
    IPV6 = 0x02


@dataclass(frozen=True, slots=True)
class AddressErrorCode:
    """ADDRESS-ERROR-CODE (RFC 8656 §18.12): which family failed and why."""

    family: int
    code: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Icmp:
    """ICMP (RFC 8656 §18.13): type, code and the 32-bit error data."""

    type: int
    code: int
    data: int = 0


def _decode_address_error(value: bytes, xor_key: bytes) -> AddressErrorCode:
    if len(value) < 4 or value[3] > 99:
        raise MalformedMessage("bad ADDRESS-ERROR-CODE", 400)
    return AddressErrorCode(value[0], (value[2] & 0x07) * 100 + value[3], value[4:].decode("utf-8"))


def _encode_address_error(value: AddressErrorCode, xor_key: bytes) -> bytes:
    head = bytes((value.family, 0, (value.code // 100) & 0x07, value.code % 100))
    return head + value.reason.encode("utf-8")


_ICMP = struct.Struct("!HBBI")


def _decode_icmp(value: bytes, xor_key: bytes) -> Icmp:
    if len(value) != 8:
        raise MalformedMessage("bad ICMP attribute", 400)
    _, icmp_type, code, data = _ICMP.unpack(value)
    return Icmp(icmp_type, code, data)


def _encode_icmp(value: Icmp, xor_key: bytes) -> bytes:
    return _ICMP.pack(0, value.type, value.code, value.data)


def _decode_even_port(value: bytes, xor_key: bytes) -> bool:
    if len(value) != 1:
        raise MalformedMessage("bad EVEN-PORT", 400)
    return bool(value[0] & 0x80)  # RFC 8656 §18.6: R bit asks to reserve port + 1


def _encode_even_port(value: bool, xor_key: bytes) -> bytes:
    return b"\x80" if value else b"\x00"


CHANNEL_NUMBER = AttributeSpec(0x000C, "CHANNEL-NUMBER", int, *uint_then_rffu(2, 4))  # RFC 8656 §18.1
LIFETIME = AttributeSpec(0x000D, "LIFETIME", int, *uint(4))  # RFC 8656 §18.2
XOR_PEER_ADDRESS = AttributeSpec(0x0012, "XOR-PEER-ADDRESS", Address, decode_xor_address, encode_xor_address)
DATA = AttributeSpec(0x0013, "DATA", bytes, decode_raw, encode_raw)  # RFC 8656 §18.4
XOR_RELAYED_ADDRESS = AttributeSpec(
    0x0016, "XOR-RELAYED-ADDRESS", Address, decode_xor_address, encode_xor_address
)
REQUESTED_ADDRESS_FAMILY = AttributeSpec(0x0017, "REQUESTED-ADDRESS-FAMILY", int, *uint_then_rffu(1, 4))
EVEN_PORT = AttributeSpec(0x0018, "EVEN-PORT", bool, _decode_even_port, _encode_even_port)
REQUESTED_TRANSPORT = AttributeSpec(0x0019, "REQUESTED-TRANSPORT", int, *uint_then_rffu(1, 4))
DONT_FRAGMENT = AttributeSpec(0x001A, "DONT-FRAGMENT", bool, decode_flag, encode_flag)
RESERVATION_TOKEN = AttributeSpec(0x0022, "RESERVATION-TOKEN", bytes, *fixed_bytes(8))  # RFC 8656 §18.10
CONNECTION_ID = AttributeSpec(0x002A, "CONNECTION-ID", int, *uint(4))  # RFC 6062 §6.2.1
ADDITIONAL_ADDRESS_FAMILY = AttributeSpec(
    0x8000, "ADDITIONAL-ADDRESS-FAMILY", int, *uint_then_rffu(1, 4)
)  # RFC 8656 §18.11
ADDRESS_ERROR_CODE = AttributeSpec(
    0x8001, "ADDRESS-ERROR-CODE", AddressErrorCode, _decode_address_error, _encode_address_error
)
ICMP = AttributeSpec(0x8004, "ICMP", Icmp, _decode_icmp, _encode_icmp)

TURN_ATTRIBUTES: tuple[AttributeSpec[Any], ...] = (
    CHANNEL_NUMBER,
    LIFETIME,
    XOR_PEER_ADDRESS,
    DATA,
    XOR_RELAYED_ADDRESS,
    REQUESTED_ADDRESS_FAMILY,
    EVEN_PORT,
    REQUESTED_TRANSPORT,
    DONT_FRAGMENT,
    RESERVATION_TOKEN,
    ADDITIONAL_ADDRESS_FAMILY,
    ADDRESS_ERROR_CODE,
    ICMP,
    CONNECTION_ID,
)

RFC = Dialect(
    name="rfc8656",
    attributes=stun.registry(stun.STUN_ATTRIBUTES, TURN_ATTRIBUTES),
    methods=stun.enum_table(TurnMethod),
    integrity=stun.rfc_integrity(),
)
"""STUN + TURN + TURN-TCP: what standard clients (aioice, coturn tools) speak."""


def parse(data: bytes) -> Message:
    """Parse an RFC 8489/8656 message; raises :class:`MalformedMessage` only."""
    return stun.parse(data, RFC)


# --------------------------------------------------------------------------------------------
# ChannelData (RFC 8656 §12.4)
# --------------------------------------------------------------------------------------------

CHANNEL_MIN = 0x4000
# RFC 8656 §12 narrowed channel numbers to 0x4000-0x4FFF; RFC 5766 §11 allowed 0x4000-0x7FFF, and deployed
# clients (coturn's turnutils_uclient picks 0x73ad) still use the wider range, so it is accepted, as coturn does.
CHANNEL_MAX = 0x7FFF
_CD_HEADER = struct.Struct("!HH")


@dataclass(frozen=True, slots=True)
class ChannelData:
    channel: int
    data: bytes

    def serialize(self, pad: bool = False) -> bytes:
        return encode_channel_data(self.channel, self.data, pad)


def is_channel_data(buf: bytes) -> bool:
    """RFC 8656 §12 / RFC 7983: a first byte of 0x40–0x7F (first two bits 01) is ChannelData."""
    return len(buf) > 0 and 0x40 <= buf[0] <= 0x7F


def encode_channel_data(channel: int, payload: bytes, pad: bool = False) -> bytes:
    """Channel number, length, data; ``pad`` to 4 for TCP/TLS (RFC 8656 §12.5)."""
    head = _CD_HEADER.pack(channel, len(payload))
    if pad and len(payload) & 3:
        return head + payload + bytes(-len(payload) & 3)
    return head + payload


def decode_channel_data(buf: bytes) -> tuple[int, bytes]:
    """Fast path: ``(channel, payload)``. Trailing padding is ignored (RFC 8656 §12.5)."""
    if len(buf) < 4:
        raise MalformedMessage("short ChannelData", None)
    channel, length = _CD_HEADER.unpack_from(buf, 0)
    if not CHANNEL_MIN <= channel <= CHANNEL_MAX:
        raise MalformedMessage(f"channel 0x{channel:04x} outside 0x4000-0x7FFF", None)
    if 4 + length > len(buf):
        raise MalformedMessage("ChannelData length exceeds the datagram", None)
    return channel, bytes(buf[4 : 4 + length])


def parse_channel_data(buf: bytes) -> ChannelData:
    channel, payload = decode_channel_data(buf)
    return ChannelData(channel, payload)


def demux(data: bytes) -> Message | ChannelData:
    """Classify and parse one datagram received on a TURN port (RFC 8656 §12)."""
    if is_channel_data(data):
        return parse_channel_data(data)
    return parse(data)
