"""MS-TURN (Lync / OCS "TURN Extensions") as its own registry on the STUN machinery.

Facts (research-lync-edge.md §1.1, MS-TURN 2.2): MS-VERSION <= 2 uses the legacy header (type,
length, 16-byte transaction ID, no header cookie) and attribute lengths that count their padding;
MS-VERSION >= 3 uses the RFC 5389 header. Every message carries MAGIC-COOKIE (0x000F = 0x72C64BC6)
as its first attribute. NONCE is 0x0014 and REALM 0x0015 (swapped against RFC 5389). The relay
address comes back in MAPPED-ADDRESS, the reflexive one in XOR-MAPPED-ADDRESS 0x8020.

Message types are a table (MS-TURN 2.2.1), not the RFC 5389 bit layout: Data Indication is 0x0115,
whose bits would read "error response".

Integrity (MESSAGE-INTEGRITY 0x0008, HMAC input zero-padded to a multiple of 64 bytes):
- v < 3: HMAC-SHA1, key = MD5(username ":" realm ":" password) -> :func:`legacy_key`.
- v >= 3: HMAC-SHA256 (32-byte value, same code), key from :func:`sha256_key`:
  K = HMAC-SHA256(key=nonce, msg=password); key = HMAC-SHA256(K, 0x01 "TURN" 0x00 username realm
  0x00000100), i.e. one round of an SP 800-108 counter-mode KDF with label "TURN", context
  username||realm, L = 256. Source: the turner MS-TURN library (its unit-test vector is in
  tests/wire/test_msturn.py and reproduces); the MS-TURN spec text itself could not be read here.

Public API
----------
- :data:`LEGACY` (v <= 2 header) and :data:`RFC5389` (v >= 3 header) dialects; ``dialect_for(version)``.
- ``parse(data) -> Message``: picks the header form from the bytes, insists on MAGIC-COOKIE first
  (else ``MalformedMessage(status=None)``: MS-TURN 3.1.10 says ignore, and drop TCP).
- ``build(method, cls, transaction_id, *attributes, version=...)``: MAGIC-COOKIE prepended.
- Keys: ``legacy_key``, ``sha256_key``, ``key_for(version, ...)``, ``integrity_for(version)``.
- :class:`MsTurnMethod`, :class:`MsTurnError`, values :class:`SequenceNumber`, :class:`ServiceQuality`,
  and specs ``MAGIC_COOKIE``, ``MS_VERSION``, ``XOR_MAPPED_ADDRESS``, ``MS_SEQUENCE_NUMBER``,
  ``MS_SERVICE_QUALITY``, ``BANDWIDTH``, ``DESTINATION_ADDRESS``, ``REMOTE_ADDRESS``, ``DATA``,
  ``ALTERNATE_SERVER``, ``MS_ALTERNATE_MAPPED_ADDRESS``, ``NONCE``, ``REALM``, ``LIFETIME`` …
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from simulator.wire import stun
from simulator.wire.errors import MalformedMessage
from simulator.wire.stun import (
    Address,
    Attribute,
    AttributeSpec,
    Dialect,
    IntegrityAlgorithm,
    IntegrityScheme,
    Message,
    MessageClass,
    decode_address,
    decode_raw,
    decode_text,
    decode_xor_address,
    encode_address,
    encode_raw,
    encode_text,
    encode_xor_address,
    uint,
    uint_then_rffu,
)

MS_MAGIC_COOKIE = 0x72C64BC6  # MS-TURN 2.2.2.x Magic Cookie
MAGIC_COOKIE_ATTRIBUTE_BYTES = b"\x00\x0f\x00\x04\x72\xc6\x4b\xc6"


class MsTurnMethod(IntEnum):
    ALLOCATE = 0x003  # MS-TURN 2.2.1: 0x0003 / 0x0103 / 0x0113
    SEND = 0x004  # 0x0004, request without a response
    DATA = 0x005  # Data Indication, type 0x0115 (table below)
    SET_ACTIVE_DESTINATION = 0x006  # 0x0006 / 0x0106 / 0x0116


class MsTurnError(IntEnum):
    """Error codes the MS-TURN server uses (research-lync-edge.md §1.1; Wireshark's table)."""

    TRY_ALTERNATE = 300
    BAD_REQUEST = 400
    UNAUTHORIZED = 401
    UNKNOWN_ATTRIBUTE = 420
    STALE_CREDENTIALS = 430
    INTEGRITY_CHECK_FAILURE = 431
    MISSING_USERNAME = 432
    MISSING_REALM = 434
    MISSING_NONCE = 435
    UNKNOWN_USERNAME = 436
    SERVER_ERROR = 500


class StreamType(IntEnum):
    AUDIO = 1  # MS-TURN 2.2.2.x MS-Service Quality
    VIDEO = 2
    SUPPLEMENTAL_VIDEO = 3
    DATA = 4


@dataclass(frozen=True, slots=True)
class SequenceNumber:
    """MS-SEQUENCE-NUMBER (0x8050): 20-byte connection ID, then a u32 sequence number."""

    connection_id: bytes
    sequence: int


@dataclass(frozen=True, slots=True)
class ServiceQuality:
    """MS-SERVICE-QUALITY (0x8055): stream type, quality (0 best effort, 1 reliable)."""

    stream_type: int
    quality: int = 0


_SEQ = struct.Struct("!20sI")
_QOS = struct.Struct("!HH")


def _decode_seq(value: bytes, xor_key: bytes) -> SequenceNumber:
    if len(value) != 24:
        raise MalformedMessage("bad MS-SEQUENCE-NUMBER", 400)
    cid, seq = _SEQ.unpack(value)
    return SequenceNumber(cid, seq)


def _encode_seq(value: SequenceNumber, xor_key: bytes) -> bytes:
    if len(value.connection_id) != 20:
        raise ValueError("connection ID must be 20 bytes")
    return _SEQ.pack(value.connection_id, value.sequence)


def _decode_qos(value: bytes, xor_key: bytes) -> ServiceQuality:
    if len(value) != 4:
        raise MalformedMessage("bad MS-SERVICE-QUALITY", 400)
    stream_type, quality = _QOS.unpack(value)
    return ServiceQuality(stream_type, quality)


def _encode_qos(value: ServiceQuality, xor_key: bytes) -> bytes:
    return _QOS.pack(value.stream_type, value.quality)


def _decode_mi(value: bytes, xor_key: bytes) -> bytes:
    if len(value) not in (20, 32):  # HMAC-SHA1 (v < 3) or HMAC-SHA256 (v >= 3)
        raise MalformedMessage("bad MESSAGE-INTEGRITY length", 400)
    return value


MAPPED_ADDRESS = AttributeSpec(0x0001, "MAPPED-ADDRESS", Address, decode_address, encode_address)
USERNAME = AttributeSpec(0x0006, "USERNAME", str, decode_text, encode_text)
MESSAGE_INTEGRITY = AttributeSpec(0x0008, "MESSAGE-INTEGRITY", bytes, _decode_mi, encode_raw)
ERROR_CODE = stun.ERROR_CODE
UNKNOWN_ATTRIBUTES = stun.UNKNOWN_ATTRIBUTES
LIFETIME = AttributeSpec(0x000D, "LIFETIME", int, *uint(4))
ALTERNATE_SERVER = AttributeSpec(0x000E, "ALTERNATE-SERVER", Address, decode_address, encode_address)
MAGIC_COOKIE = AttributeSpec(0x000F, "MAGIC-COOKIE", int, *uint(4))
BANDWIDTH = AttributeSpec(0x0010, "BANDWIDTH", int, *uint(4))  # kbit/s
DESTINATION_ADDRESS = AttributeSpec(
    0x0011, "DESTINATION-ADDRESS", Address, decode_address, encode_address
)
REMOTE_ADDRESS = AttributeSpec(0x0012, "REMOTE-ADDRESS", Address, decode_address, encode_address)
DATA = AttributeSpec(0x0013, "DATA", bytes, decode_raw, encode_raw)
NONCE = AttributeSpec(0x0014, "NONCE", str, decode_text, encode_text)  # MS-TURN 2.2.2.13: swapped
REALM = AttributeSpec(0x0015, "REALM", str, decode_text, encode_text)  # MS-TURN 2.2.2.14: swapped
REQUESTED_ADDRESS_FAMILY = AttributeSpec(0x0017, "REQUESTED-ADDRESS-FAMILY", int, *uint_then_rffu(1, 4))
MS_VERSION = AttributeSpec(0x8008, "MS-VERSION", int, *uint(4))  # MS-TURN 2.2.2.17
XOR_MAPPED_ADDRESS = AttributeSpec(
    0x8020, "XOR-MAPPED-ADDRESS", Address, decode_xor_address, encode_xor_address
)
MS_SEQUENCE_NUMBER = AttributeSpec(0x8050, "MS-SEQUENCE-NUMBER", SequenceNumber, _decode_seq, _encode_seq)
MS_SERVICE_QUALITY = AttributeSpec(0x8055, "MS-SERVICE-QUALITY", ServiceQuality, _decode_qos, _encode_qos)
MS_ALTERNATE_MAPPED_ADDRESS = AttributeSpec(
    0x8090, "MS-ALTERNATE-MAPPED-ADDRESS", Address, decode_address, encode_address
)

MSTURN_ATTRIBUTES: tuple[AttributeSpec[Any], ...] = (
    MAPPED_ADDRESS,
    USERNAME,
    MESSAGE_INTEGRITY,
    ERROR_CODE,
    UNKNOWN_ATTRIBUTES,
    LIFETIME,
    ALTERNATE_SERVER,
    MAGIC_COOKIE,
    BANDWIDTH,
    DESTINATION_ADDRESS,
    REMOTE_ADDRESS,
    DATA,
    NONCE,
    REALM,
    REQUESTED_ADDRESS_FAMILY,
    MS_VERSION,
    XOR_MAPPED_ADDRESS,
    MS_SEQUENCE_NUMBER,
    MS_SERVICE_QUALITY,
    MS_ALTERNATE_MAPPED_ADDRESS,
)

_INTEGRITY = {
    IntegrityAlgorithm.SHA1: IntegrityScheme(IntegrityAlgorithm.SHA1, 0x0008, "sha1", 20, pad_to_64=True),
    IntegrityAlgorithm.SHA256: IntegrityScheme(
        IntegrityAlgorithm.SHA256, 0x0008, "sha256", 32, pad_to_64=True
    ),
}
_TYPES = {0x0115: (MsTurnMethod.DATA, MessageClass.INDICATION)}  # MS-TURN 2.2.1
_REGISTRY = stun.registry(MSTURN_ATTRIBUTES)
_METHODS = stun.enum_table(MsTurnMethod)

LEGACY = Dialect(
    name="msturn-legacy",
    attributes=_REGISTRY,
    methods=_METHODS,
    integrity=_INTEGRITY,
    cookie=False,
    lengths_include_padding=True,
    fingerprint=False,
    type_table=_TYPES,
    strip_text_nul=True,
)
"""MS-VERSION <= 2: "RFC3489bis-02" header, 16-byte transaction ID, lengths rounded to 4."""

RFC5389 = Dialect(
    name="msturn",
    attributes=_REGISTRY,
    methods=_METHODS,
    integrity=_INTEGRITY,
    cookie=True,
    fingerprint=False,
    type_table=_TYPES,
)
"""MS-VERSION >= 3: RFC 5389 header; MS attribute codes unchanged."""


LEGACY_UNALIGNED = dataclasses.replace(LEGACY, name="msturn-legacy-unaligned", lengths_include_padding=False,
                                       pad_attributes=False)
"""Legacy header, attributes neither padded nor rounded: exact lengths back to back. libnice's OC2007R2
mode writes this (``STUN_AGENT_USAGE_NO_ALIGNED_ATTRIBUTES``); the server answers a client in the form it
used, so a 29-byte DATA stays 29 bytes."""

RFC5389_UNALIGNED = dataclasses.replace(RFC5389, name="msturn-unaligned", pad_attributes=False)
"""MS-VERSION >= 3 header with unpadded attributes (the same tolerance for the RFC 5389 form)."""

UNALIGNED: dict[Dialect, Dialect] = {LEGACY: LEGACY_UNALIGNED, RFC5389: RFC5389_UNALIGNED}


def dialect_for(version: int | None) -> Dialect:
    """Header form for an MS-VERSION value (absent = 1)."""
    return RFC5389 if (version or 1) >= 3 else LEGACY


def integrity_for(version: int | None) -> IntegrityAlgorithm:
    return IntegrityAlgorithm.SHA256 if (version or 1) >= 3 else IntegrityAlgorithm.SHA1


def legacy_key(username: str, realm: str, password: str) -> bytes:
    """v < 3 (MS-TURN 3.1.12 digest challenge, RFC 3489bis-02): MD5(username ":" realm ":" password)."""
    return hashlib.md5(f"{username}:{realm}:{password}".encode()).digest()


def sha256_key(username: str, realm: str, password: str, nonce: str) -> bytes:
    """v >= 3 HMAC-SHA256 key (see module docstring for the recipe and how sure it is)."""
    k = hmac.new(nonce.encode(), password.encode(), hashlib.sha256).digest()
    fixed = b"\x01TURN\x00" + username.encode() + realm.encode() + b"\x00\x00\x01\x00"
    return hmac.new(k, fixed, hashlib.sha256).digest()


def key_for(version: int | None, username: str, realm: str, password: str, nonce: str) -> bytes:
    if (version or 1) >= 3:
        return sha256_key(username, realm, password, nonce)
    return legacy_key(username, realm, password)


def cookie_attribute() -> Attribute:
    return Attribute(MAGIC_COOKIE.code, MS_MAGIC_COOKIE)


def build(
    method: int, cls: MessageClass, transaction_id: bytes, *attributes: Attribute, version: int | None = None
) -> Message:
    """An MS-TURN message with MAGIC-COOKIE first, in the header form ``version`` calls for."""
    return Message(method, cls, transaction_id, (cookie_attribute(), *attributes), dialect_for(version))


def looks_like_msturn(data: bytes) -> bool:
    """MAGIC-COOKIE attribute right after the header (either header form)."""
    return data[20:28] == MAGIC_COOKIE_ATTRIBUTE_BYTES


def parse(data: bytes) -> Message:
    """Parse either header form; MAGIC-COOKIE must be the first attribute (MS-TURN 3.1.10)."""
    data = bytes(data)
    if not looks_like_msturn(data):
        raise MalformedMessage("no MS-TURN MAGIC-COOKIE attribute first", None)
    dialect = RFC5389 if data[4:8] == stun.MAGIC_COOKIE_BYTES else LEGACY
    try:
        return stun.parse(data, dialect)
    except MalformedMessage:
        # Attributes without padding (libnice OC2007R2) misalign the padded walk: read them as written.
        try:
            return stun.parse(data, UNALIGNED[dialect])
        except MalformedMessage:
            pass
        raise
