"""STUN (RFC 8489) codec machinery shared by every dialect: header, attribute registry, integrity.

Theory of operation
-------------------
A :class:`Dialect` is data: an attribute registry (type code -> :class:`AttributeSpec`), the header
form (RFC 5389 cookie + 12-byte transaction ID, or the legacy 16-byte transaction ID), whether
attribute lengths count their padding, the integrity algorithms it knows and a message-type table.
:func:`parse` and :meth:`Message.serialize` are written once against that data; STUN, RFC 8656 TURN
(:mod:`simulator.wire.turn`) and MS-TURN (:mod:`simulator.wire.msturn`) are three tables, not three
codecs.

Public API
----------
- ``parse(data, dialect=STUN) -> Message``: decode one datagram/frame, or raise
  :class:`~simulator.wire.errors.MalformedMessage` (400 by default). Nothing else escapes.
- ``Message(method, cls, transaction_id, attributes, dialect)``: frozen; ``get(spec)``,
  ``get_all(spec)``, ``has(spec)``, ``unknown_required()``, ``with_attributes(*attrs)``,
  ``serialize(key=None, *, integrity=(SHA1,), fingerprint=False)``.
- ``Attribute(code, value)``: one attribute; unknown types keep their raw ``bytes`` value, in order.
  ``attr(spec, value)`` builds one type-checked against a spec.
- ``verify_integrity(message, key) -> bool`` works on the raw bytes the message was parsed from;
  ``verify_fingerprint(message) -> bool`` likewise.
- Keys: ``short_term_key(password)``, ``long_term_key(username, realm, password, algorithm)``.
- Values: :class:`Address` (a ``(host, port)`` NamedTuple, drop-in for asyncio addresses),
  :class:`ErrorCode`, :class:`PasswordAlgorithm`; enums :class:`MessageClass`, :class:`StunMethod`,
  :class:`IntegrityAlgorithm`, :class:`PasswordAlgorithmId`.
- ``transaction_id_of(data) -> bytes | None`` to answer a malformed request with a 400.

Byte-level machinery: precompiled :class:`struct.Struct` and slicing. aioquic's C ``Buffer`` was
measured slower for these short fields (``benchmarks/codec.py --compare``; see benchmarks/RESULTS.md).
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import hmac
import ipaddress
import stringprep
import struct
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Generic, NamedTuple, TypeVar

from simulator.wire.errors import MalformedMessage

T = TypeVar("T")

MAGIC_COOKIE = 0x2112A442  # RFC 8489 §5
MAGIC_COOKIE_BYTES = b"\x21\x12\xa4\x42"
FINGERPRINT_XOR = 0x5354554E  # RFC 8489 §14.7
HEADER_SIZE = 20

_HEADER = struct.Struct("!HH")
_ATTR_HEADER = struct.Struct("!HH")
_U8 = struct.Struct("!B")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")


class MessageClass(IntEnum):
    """RFC 8489 §5: the two class bits C1 C0."""

    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS = 0b10
    ERROR = 0b11


class StunMethod(IntEnum):
    BINDING = 0x001  # RFC 8489 §18.2


class IntegrityAlgorithm(IntEnum):
    SHA1 = 1  # MESSAGE-INTEGRITY, RFC 8489 §14.5
    SHA256 = 2  # MESSAGE-INTEGRITY-SHA256, RFC 8489 §14.6


class PasswordAlgorithmId(IntEnum):
    MD5 = 0x0001  # RFC 8489 §18.5
    SHA256 = 0x0002


class AttrType(IntEnum):
    """RFC 8489 §18.3 comprehension-required (< 0x8000) and -optional attribute codes."""

    MAPPED_ADDRESS = 0x0001
    USERNAME = 0x0006
    MESSAGE_INTEGRITY = 0x0008
    ERROR_CODE = 0x0009
    UNKNOWN_ATTRIBUTES = 0x000A
    REALM = 0x0014
    NONCE = 0x0015
    MESSAGE_INTEGRITY_SHA256 = 0x001C
    PASSWORD_ALGORITHM = 0x001D
    USERHASH = 0x001E
    XOR_MAPPED_ADDRESS = 0x0020
    PRIORITY = 0x0024  # RFC 8445 §16.1
    USE_CANDIDATE = 0x0025
    PASSWORD_ALGORITHMS = 0x8002
    ALTERNATE_DOMAIN = 0x8003
    SOFTWARE = 0x8022
    ALTERNATE_SERVER = 0x8023
    FINGERPRINT = 0x8028
    ICE_CONTROLLED = 0x8029
    ICE_CONTROLLING = 0x802A


def message_type(method: int, cls: int) -> int:
    """RFC 8489 §5: interleave the 12 method bits M11..M0 with the class bits C1 C0."""
    return (method & 0x000F) | ((method & 0x0070) << 1) | ((method & 0x0F80) << 2) | ((cls & 1) << 4) | (
        (cls & 2) << 7
    )


def split_message_type(msg_type: int) -> tuple[int, MessageClass]:
    method = (msg_type & 0x000F) | ((msg_type & 0x00E0) >> 1) | ((msg_type & 0x3E00) >> 2)
    cls = ((msg_type >> 4) & 1) | ((msg_type >> 7) & 2)
    return method, MessageClass(cls)


# --------------------------------------------------------------------------------------------
# Typed values
# --------------------------------------------------------------------------------------------


class Address(NamedTuple):
    """A transport address; a plain ``(host, port)`` tuple for asyncio, ``host`` canonical text."""

    host: str
    port: int

    @property
    def family(self) -> int:
        """STUN address family: 0x01 IPv4, 0x02 IPv6 (RFC 8489 §14.1)."""
        return 0x02 if ":" in self.host else 0x01


@dataclass(frozen=True, slots=True)
class ErrorCode:
    """ERROR-CODE (RFC 8489 §14.8): ``code`` 300–699 and a UTF-8 reason phrase."""

    code: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class PasswordAlgorithm:
    """PASSWORD-ALGORITHM / one entry of PASSWORD-ALGORITHMS (RFC 8489 §14.11–14.12)."""

    algorithm: int
    parameters: bytes = b""


@dataclass(frozen=True, slots=True)
class AttributeSpec(Generic[T]):
    """One registry row: code, name, value type and the codec for the value bytes.

    ``decode(value, xor_key)`` and ``encode(value, xor_key)`` get the 16 header bytes 4..20 as
    ``xor_key`` (cookie + transaction ID in RFC 5389 form, the 16-byte ID in legacy MS-TURN).
    """

    code: int
    name: str
    value_type: type[Any]
    decode: Callable[[bytes, bytes], T]
    encode: Callable[[T, bytes], bytes]


@dataclass(frozen=True, slots=True)
class Attribute:
    """An attribute in a message. ``value`` is typed for registered codes, raw ``bytes`` otherwise.

    ``padding`` keeps the received padding bytes (RFC 5769 pads with spaces) so that a parsed
    message re-serializes byte for byte; it takes no part in equality.
    """

    code: int
    value: Any
    padding: bytes = field(default=b"", compare=False, repr=False)


def attr(spec: AttributeSpec[T], value: T) -> Attribute:
    """Build an :class:`Attribute` for ``spec`` (type-checked by mypy through the spec's ``T``)."""
    return Attribute(spec.code, value)


# --------------------------------------------------------------------------------------------
# Value codecs (used by every registry)
# --------------------------------------------------------------------------------------------


def _bad(reason: str) -> MalformedMessage:
    return MalformedMessage(reason, 400)


@functools.lru_cache(maxsize=65536)
def _pack_host(host: str) -> bytes:
    # Cached: a server writes the same few relay and client addresses into every response.
    try:
        return ipaddress.ip_address(host).packed
    except ValueError as exc:
        raise ValueError(f"not an IP address: {host!r}") from exc


def _unpack_host(raw: bytes) -> str:
    if len(raw) == 4:
        return f"{raw[0]}.{raw[1]}.{raw[2]}.{raw[3]}"
    return str(ipaddress.IPv6Address(raw))


def decode_address(value: bytes, xor_key: bytes) -> Address:
    """MAPPED-ADDRESS (RFC 8489 §14.1): reserved, family, port, address."""
    family = value[1] if len(value) > 1 else 0
    if family == 0x01 and len(value) == 8:
        return Address(_unpack_host(value[4:8]), _U16.unpack_from(value, 2)[0])
    if family == 0x02 and len(value) == 20:
        return Address(_unpack_host(value[4:20]), _U16.unpack_from(value, 2)[0])
    raise _bad("bad address attribute")


def encode_address(value: Address, xor_key: bytes) -> bytes:
    packed = _pack_host(value.host)
    return bytes((0, 0x01 if len(packed) == 4 else 0x02)) + _U16.pack(value.port) + packed


def _xor(data: bytes, key: bytes) -> bytes:
    return (int.from_bytes(data, "big") ^ int.from_bytes(key[: len(data)], "big")).to_bytes(len(data), "big")


def decode_xor_address(value: bytes, xor_key: bytes) -> Address:
    """XOR-MAPPED-ADDRESS (RFC 8489 §14.2): port XOR cookie>>16, address XOR cookie||tid.

    Legacy MS-TURN uses the same rule with the first bytes of its 16-byte transaction ID, which
    is why the key is header bytes 4..20 (MS-TURN 2.2.2.x XOR-MAPPED-ADDRESS).
    """
    family = value[1] if len(value) > 1 else 0
    if (family == 0x01 and len(value) == 8) or (family == 0x02 and len(value) == 20):
        port = _U16.unpack_from(value, 2)[0] ^ _U16.unpack_from(xor_key, 0)[0]
        return Address(_unpack_host(_xor(value[4:], xor_key)), port)
    raise _bad("bad XOR address attribute")


def encode_xor_address(value: Address, xor_key: bytes) -> bytes:
    packed = _pack_host(value.host)
    port = value.port ^ _U16.unpack_from(xor_key, 0)[0]
    return bytes((0, 0x01 if len(packed) == 4 else 0x02)) + _U16.pack(port) + _xor(packed, xor_key)


def decode_text(value: bytes, xor_key: bytes) -> str:
    return value.decode("utf-8")


def encode_text(value: str, xor_key: bytes) -> bytes:
    return value.encode("utf-8")


def decode_raw(value: bytes, xor_key: bytes) -> bytes:
    return value


def encode_raw(value: bytes, xor_key: bytes) -> bytes:
    return bytes(value)


def fixed_bytes(size: int) -> tuple[Callable[[bytes, bytes], bytes], Callable[[bytes, bytes], bytes]]:
    """Codec pair for an opaque value of exactly ``size`` bytes."""

    def decode(value: bytes, xor_key: bytes) -> bytes:
        if len(value) != size:
            raise _bad(f"expected {size} bytes, got {len(value)}")
        return value

    def encode(value: bytes, xor_key: bytes) -> bytes:
        if len(value) != size:
            raise ValueError(f"expected {size} bytes")
        return bytes(value)

    return decode, encode


def uint(size: int, leading: int = 0) -> tuple[Callable[[bytes, bytes], int], Callable[[int, bytes], bytes]]:
    """Codec pair for an unsigned ``size``-byte integer after ``leading`` reserved zero bytes."""
    fmt = {1: _U8, 2: _U16, 4: _U32, 8: _U64}[size]
    total = size + leading

    def decode(value: bytes, xor_key: bytes) -> int:
        if len(value) != total:
            raise _bad(f"expected {total} bytes, got {len(value)}")
        result: int = fmt.unpack_from(value, leading)[0]
        return result

    def encode(value: int, xor_key: bytes) -> bytes:
        return bytes(leading) + fmt.pack(value)

    return decode, encode


def uint_then_rffu(
    size: int, total: int
) -> tuple[Callable[[bytes, bytes], int], Callable[[int, bytes], bytes]]:
    """Unsigned ``size``-byte integer followed by RFFU bytes up to ``total`` (e.g. REQUESTED-TRANSPORT)."""
    fmt = {1: _U8, 2: _U16, 4: _U32}[size]

    def decode(value: bytes, xor_key: bytes) -> int:
        if len(value) != total:
            raise _bad(f"expected {total} bytes, got {len(value)}")
        result: int = fmt.unpack_from(value, 0)[0]
        return result

    def encode(value: int, xor_key: bytes) -> bytes:
        return fmt.pack(value) + bytes(total - size)

    return decode, encode


def decode_flag(value: bytes, xor_key: bytes) -> bool:
    if value:
        raise _bad("flag attribute with a value")
    return True


def encode_flag(value: bool, xor_key: bytes) -> bytes:
    return b""


def decode_error_code(value: bytes, xor_key: bytes) -> ErrorCode:
    """RFC 8489 §14.8: 21 reserved bits, class (3 bits), number (8 bits), reason."""
    if len(value) < 4:
        raise _bad("short ERROR-CODE")
    number = value[3]
    if number > 99:
        raise _bad("ERROR-CODE number > 99")
    # coturn NUL-pads reason phrases (research-turn.md §5.8): strip trailing NULs.
    return ErrorCode((value[2] & 0x07) * 100 + number, value[4:].decode("utf-8").rstrip("\x00"))


def encode_error_code(value: ErrorCode, xor_key: bytes) -> bytes:
    return bytes((0, 0, (value.code // 100) & 0x07, value.code % 100)) + value.reason.encode("utf-8")


def decode_u16_list(value: bytes, xor_key: bytes) -> tuple[int, ...]:
    """UNKNOWN-ATTRIBUTES (RFC 8489 §14.9): a list of 16-bit types."""
    if len(value) % 2:
        raise _bad("odd UNKNOWN-ATTRIBUTES length")
    return struct.unpack(f"!{len(value) // 2}H", value)


def encode_u16_list(value: tuple[int, ...], xor_key: bytes) -> bytes:
    return struct.pack(f"!{len(value)}H", *value)


def _pad4(n: int) -> int:
    return (n + 3) & ~3


def decode_password_algorithm(value: bytes, xor_key: bytes) -> PasswordAlgorithm:
    """RFC 8489 §14.12: algorithm (16), parameters length (16), parameters, padding."""
    algs = decode_password_algorithms(value, xor_key)
    if len(algs) != 1:
        raise _bad("PASSWORD-ALGORITHM must hold exactly one algorithm")
    return algs[0]


def encode_password_algorithm(value: PasswordAlgorithm, xor_key: bytes) -> bytes:
    return encode_password_algorithms((value,), xor_key)


def decode_password_algorithms(value: bytes, xor_key: bytes) -> tuple[PasswordAlgorithm, ...]:
    """RFC 8489 §14.11: a list of (algorithm, length, parameters padded to 4)."""
    out: list[PasswordAlgorithm] = []
    pos = 0
    while pos < len(value):
        if pos + 4 > len(value):
            raise _bad("truncated password algorithm")
        alg, plen = _ATTR_HEADER.unpack_from(value, pos)
        end = pos + 4 + plen
        if end > len(value):
            raise _bad("truncated password algorithm parameters")
        out.append(PasswordAlgorithm(alg, value[pos + 4 : end]))
        pos = pos + 4 + _pad4(plen)
    return tuple(out)


def encode_password_algorithms(value: tuple[PasswordAlgorithm, ...], xor_key: bytes) -> bytes:
    parts = []
    for item in value:
        params = bytes(item.parameters)
        pad = bytes(_pad4(len(params)) - len(params))
        parts.append(_ATTR_HEADER.pack(item.algorithm, len(params)) + params + pad)
    return b"".join(parts)


def _decode_mi(size_min: int, size_max: int) -> Callable[[bytes, bytes], bytes]:
    def decode(value: bytes, xor_key: bytes) -> bytes:
        if not size_min <= len(value) <= size_max:
            raise _bad("bad MESSAGE-INTEGRITY length")
        return value

    return decode


# --------------------------------------------------------------------------------------------
# Registry rows
# --------------------------------------------------------------------------------------------

_u32 = uint(4)
_u64 = uint(8)

MAPPED_ADDRESS = AttributeSpec(
    AttrType.MAPPED_ADDRESS, "MAPPED-ADDRESS", Address, decode_address, encode_address
)
XOR_MAPPED_ADDRESS = AttributeSpec(
    AttrType.XOR_MAPPED_ADDRESS, "XOR-MAPPED-ADDRESS", Address, decode_xor_address, encode_xor_address
)
USERNAME = AttributeSpec(AttrType.USERNAME, "USERNAME", str, decode_text, encode_text)
USERHASH = AttributeSpec(AttrType.USERHASH, "USERHASH", bytes, *fixed_bytes(32))  # RFC 8489 §14.4
MESSAGE_INTEGRITY = AttributeSpec(
    AttrType.MESSAGE_INTEGRITY, "MESSAGE-INTEGRITY", bytes, _decode_mi(20, 20), encode_raw
)
MESSAGE_INTEGRITY_SHA256 = AttributeSpec(  # RFC 8489 §14.6: may be truncated to 16 bytes
    AttrType.MESSAGE_INTEGRITY_SHA256, "MESSAGE-INTEGRITY-SHA256", bytes, _decode_mi(16, 32), encode_raw
)
FINGERPRINT = AttributeSpec(AttrType.FINGERPRINT, "FINGERPRINT", int, *_u32)
ERROR_CODE = AttributeSpec(AttrType.ERROR_CODE, "ERROR-CODE", ErrorCode, decode_error_code, encode_error_code)
REALM = AttributeSpec(AttrType.REALM, "REALM", str, decode_text, encode_text)
NONCE = AttributeSpec(AttrType.NONCE, "NONCE", str, decode_text, encode_text)
PASSWORD_ALGORITHM = AttributeSpec(
    AttrType.PASSWORD_ALGORITHM,
    "PASSWORD-ALGORITHM",
    PasswordAlgorithm,
    decode_password_algorithm,
    encode_password_algorithm,
)
PASSWORD_ALGORITHMS = AttributeSpec(
    AttrType.PASSWORD_ALGORITHMS,
    "PASSWORD-ALGORITHMS",
    tuple,
    decode_password_algorithms,
    encode_password_algorithms,
)
UNKNOWN_ATTRIBUTES = AttributeSpec(
    AttrType.UNKNOWN_ATTRIBUTES, "UNKNOWN-ATTRIBUTES", tuple, decode_u16_list, encode_u16_list
)
SOFTWARE = AttributeSpec(AttrType.SOFTWARE, "SOFTWARE", str, decode_text, encode_text)
ALTERNATE_SERVER = AttributeSpec(
    AttrType.ALTERNATE_SERVER, "ALTERNATE-SERVER", Address, decode_address, encode_address
)
ALTERNATE_DOMAIN = AttributeSpec(AttrType.ALTERNATE_DOMAIN, "ALTERNATE-DOMAIN", str, decode_text, encode_text)
PRIORITY = AttributeSpec(AttrType.PRIORITY, "PRIORITY", int, *_u32)  # RFC 8445 §7.1.1
USE_CANDIDATE = AttributeSpec(AttrType.USE_CANDIDATE, "USE-CANDIDATE", bool, decode_flag, encode_flag)
ICE_CONTROLLED = AttributeSpec(AttrType.ICE_CONTROLLED, "ICE-CONTROLLED", int, *_u64)
ICE_CONTROLLING = AttributeSpec(AttrType.ICE_CONTROLLING, "ICE-CONTROLLING", int, *_u64)

STUN_ATTRIBUTES: tuple[AttributeSpec[Any], ...] = (
    MAPPED_ADDRESS,
    XOR_MAPPED_ADDRESS,
    USERNAME,
    USERHASH,
    MESSAGE_INTEGRITY,
    MESSAGE_INTEGRITY_SHA256,
    FINGERPRINT,
    ERROR_CODE,
    REALM,
    NONCE,
    PASSWORD_ALGORITHM,
    PASSWORD_ALGORITHMS,
    UNKNOWN_ATTRIBUTES,
    SOFTWARE,
    ALTERNATE_SERVER,
    ALTERNATE_DOMAIN,
    PRIORITY,
    USE_CANDIDATE,
    ICE_CONTROLLED,
    ICE_CONTROLLING,
)


def registry(*tables: Iterable[AttributeSpec[Any]]) -> dict[int, AttributeSpec[Any]]:
    """Merge attribute tables into one registry; a duplicate code is a programming error."""
    out: dict[int, AttributeSpec[Any]] = {}
    for table in tables:
        for spec in table:
            if spec.code in out and out[spec.code] is not spec:
                raise ValueError(f"duplicate attribute code 0x{spec.code:04x}")
            out[spec.code] = spec
    return out


# --------------------------------------------------------------------------------------------
# Integrity and dialects
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IntegrityScheme:
    """How one integrity attribute is computed: code, HMAC digest, size, RFC 3489 64-byte padding."""

    algorithm: IntegrityAlgorithm
    code: int
    digest: str
    size: int
    pad_to_64: bool = False


@dataclass(frozen=True, eq=False)
class Dialect:
    """A wire dialect as data (style.md §3). Compared by identity."""

    name: str
    attributes: Mapping[int, AttributeSpec[Any]]
    methods: Mapping[int, IntEnum]
    integrity: Mapping[IntegrityAlgorithm, IntegrityScheme]
    cookie: bool = True  # RFC 5389 header (cookie + 12-byte ID) vs legacy 16-byte ID
    lengths_include_padding: bool = False  # legacy MS-TURN: attribute length rounded up to 4
    fingerprint: bool = True
    type_table: Mapping[int, tuple[int, MessageClass]] = field(default_factory=dict)
    strip_text_nul: bool = False  # legacy: string values arrive NUL-padded
    pad_attributes: bool = True  # False: no padding bytes at all, exact lengths (libnice's OC2007 form)

    @property
    def transaction_id_size(self) -> int:
        return 12 if self.cookie else 16

    def __repr__(self) -> str:
        return f"Dialect({self.name!r})"

    def integrity_codes(self) -> frozenset[int]:
        return frozenset(s.code for s in self.integrity.values())


def enum_table(*enums: type[IntEnum]) -> dict[int, IntEnum]:
    out: dict[int, IntEnum] = {}
    for enum in enums:
        for member in enum:
            out[int(member)] = member
    return out


_STUN_INTEGRITY = {
    IntegrityAlgorithm.SHA1: IntegrityScheme(IntegrityAlgorithm.SHA1, AttrType.MESSAGE_INTEGRITY, "sha1", 20),
    IntegrityAlgorithm.SHA256: IntegrityScheme(
        IntegrityAlgorithm.SHA256, AttrType.MESSAGE_INTEGRITY_SHA256, "sha256", 32
    ),
}

STUN = Dialect(
    name="stun",
    attributes=registry(STUN_ATTRIBUTES),
    methods=enum_table(StunMethod),
    integrity=_STUN_INTEGRITY,
)
"""RFC 8489 STUN only. :data:`simulator.wire.turn.RFC` adds the TURN rows."""


def rfc_integrity() -> dict[IntegrityAlgorithm, IntegrityScheme]:
    """The RFC 8489 integrity table (shared with :mod:`simulator.wire.turn`)."""
    return dict(_STUN_INTEGRITY)


# --------------------------------------------------------------------------------------------
# Message
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """A STUN-family message. ``method`` is the dialect's IntEnum member when known.

    ``raw`` is the exact bytes it was parsed from (empty when built locally); integrity and
    fingerprint verification use it. It takes no part in equality.
    """

    method: int
    cls: MessageClass
    transaction_id: bytes
    attributes: tuple[Attribute, ...] = ()
    dialect: Dialect = STUN
    raw: bytes = field(default=b"", compare=False, repr=False)

    def get(self, spec: AttributeSpec[T]) -> T | None:
        """The first value of ``spec``'s attribute, or None."""
        code = spec.code
        for a in self.attributes:
            if a.code == code:
                value: T = a.value
                return value
        return None

    def get_all(self, spec: AttributeSpec[T]) -> list[T]:
        return [a.value for a in self.attributes if a.code == spec.code]

    def has(self, spec: AttributeSpec[Any]) -> bool:
        return any(a.code == spec.code for a in self.attributes)

    def unknown_required(self) -> tuple[int, ...]:
        """Comprehension-required codes (< 0x8000) the dialect does not know: answer 420 (RFC 8489 §6.3.1)."""
        known = self.dialect.attributes
        return tuple(a.code for a in self.attributes if a.code < 0x8000 and a.code not in known)

    def with_attributes(self, *attributes: Attribute) -> Message:
        return Message(self.method, self.cls, self.transaction_id, self.attributes + attributes, self.dialect)

    @property
    def xor_key(self) -> bytes:
        return (MAGIC_COOKIE_BYTES + self.transaction_id) if self.dialect.cookie else self.transaction_id

    def serialize(
        self,
        key: bytes | None = None,
        *,
        integrity: Iterable[IntegrityAlgorithm] = (IntegrityAlgorithm.SHA1,),
        fingerprint: bool = False,
    ) -> bytes:
        """Encode the message.

        Without ``key`` and ``fingerprint`` the attributes are written as they are (a parsed
        message re-serializes byte for byte). With ``key``, existing integrity/fingerprint
        attributes are dropped and fresh ones computed for each algorithm in ``integrity``
        (RFC 8489 §14.5/§14.6 order: SHA1 then SHA256); ``fingerprint`` appends FINGERPRINT
        (RFC 8489 §14.7), which must be last.
        """
        dialect = self.dialect
        if len(self.transaction_id) != dialect.transaction_id_size:
            raise ValueError(f"transaction ID must be {dialect.transaction_id_size} bytes")
        xor_key = self.xor_key
        attrs = self.attributes
        if key is not None or fingerprint:
            drop = {int(AttrType.FINGERPRINT)}
            if key is not None:
                drop |= dialect.integrity_codes()
            attrs = tuple(a for a in attrs if a.code not in drop)
        body = bytearray()
        _encode_attributes(body, attrs, dialect, xor_key)
        head = _type_of(self.method, self.cls, dialect)
        prefix = MAGIC_COOKIE_BYTES + self.transaction_id if dialect.cookie else self.transaction_id
        if key is not None:
            for algorithm in integrity:
                scheme = dialect.integrity[algorithm]
                length = len(body) + 4 + scheme.size
                signed = _HEADER.pack(head, length) + prefix + body
                mac = _mac(scheme, key, signed)
                body += _ATTR_HEADER.pack(scheme.code, scheme.size) + mac
        if fingerprint:
            length = len(body) + 8
            crc = binascii.crc32(_HEADER.pack(head, length) + prefix + body) ^ FINGERPRINT_XOR
            body += _ATTR_HEADER.pack(AttrType.FINGERPRINT, 4) + _U32.pack(crc)
        if len(body) > 0xFFFF:
            raise ValueError("message too long")
        return _HEADER.pack(head, len(body)) + prefix + bytes(body)


def _type_of(method: int, cls: MessageClass, dialect: Dialect) -> int:
    table = dialect.type_table
    if table:
        for code, pair in table.items():
            if pair == (method, cls):
                return code
    code = message_type(method, cls)
    if code in table:
        raise ValueError(f"{dialect.name}: type 0x{code:04x} is reserved for {table[code]}")
    return code


def _encode_attributes(out: bytearray, attrs: Iterable[Attribute], dialect: Dialect, xor_key: bytes) -> None:
    registry_ = dialect.attributes
    rounded = dialect.lengths_include_padding
    for a in attrs:
        spec = registry_.get(a.code)
        value = spec.encode(a.value, xor_key) if spec is not None else bytes(a.value)
        n = len(value)
        if not dialect.pad_attributes:  # exact length, value, next attribute right after it
            out += _ATTR_HEADER.pack(a.code, n)
            out += value
            continue
        padded = _pad4(n)
        pad = a.padding if len(a.padding) == padded - n else bytes(padded - n)
        # MS-TURN legacy (libnice stun_message_append): the length field counts the padding.
        out += _ATTR_HEADER.pack(a.code, padded if rounded else n)
        out += value
        out += pad


_HMAC_BLOCK = 64  # SHA-1 and SHA-256 block size (RFC 2104 B)
_HMAC_PADS_LIMIT = 4096
_hmac_pads: dict[tuple[bytes, str], tuple[Any, Any]] = {}


def hmac_digest(key: bytes, data: bytes, digest: str) -> bytes:
    """``hmac.digest(key, data, digest)`` for ``"sha1"``/``"sha256"``, with the key's pads computed once.

    RFC 2104: H((K ^ opad) || H((K ^ ipad) || data)). The two keyed hash states are cached per key (a
    server signs with a handful of long-term keys), so a MAC costs two hash copies and two short updates
    instead of a fresh HMAC set-up: about half of ``hmac.digest`` for STUN-sized messages.
    """
    if type(key) is not bytes:
        key = bytes(key)
    pads = _hmac_pads.get((key, digest))
    if pads is None:
        new = hashlib.sha1 if digest == "sha1" else hashlib.sha256 if digest == "sha256" else None
        if new is None:
            return hmac.digest(key, data, digest)
        block = new(key).digest() if len(key) > _HMAC_BLOCK else key
        block = block.ljust(_HMAC_BLOCK, b"\x00")
        inner = new(bytes(b ^ 0x36 for b in block))
        outer = new(bytes(b ^ 0x5C for b in block))
        if len(_hmac_pads) >= _HMAC_PADS_LIMIT:
            _hmac_pads.clear()
        pads = _hmac_pads[(key, digest)] = (inner, outer)
    inner = pads[0].copy()
    inner.update(data)
    outer = pads[1].copy()
    outer.update(inner.digest())
    result: bytes = outer.digest()
    return result


def _mac(scheme: IntegrityScheme, key: bytes, signed: bytes) -> bytes:
    if scheme.pad_to_64:
        # RFC 3489 §11.2.8 / MS-TURN: HMAC input zero-padded to a multiple of 64 bytes.
        signed = signed + bytes(-len(signed) % 64)
    return hmac_digest(key, signed, scheme.digest)[: scheme.size]


# --------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------


def transaction_id_of(data: bytes, dialect: Dialect = STUN) -> bytes | None:
    """The transaction ID of something that looks like a request, to answer it with 400."""
    if len(data) < HEADER_SIZE or data[0] & 0xC0:
        return None
    return data[8:20] if dialect.cookie else data[4:20]


def parse(data: bytes, dialect: Dialect = STUN) -> Message:
    """Decode one message. Raises :class:`MalformedMessage` and nothing else."""
    try:
        return _parse(bytes(data), dialect)
    except MalformedMessage:
        raise
    except (ValueError, IndexError, struct.error, UnicodeDecodeError, TypeError) as exc:
        raise MalformedMessage(f"bad attribute value: {exc}", 400) from exc


def _parse(data: bytes, dialect: Dialect) -> Message:
    size = len(data)
    if size < HEADER_SIZE:
        raise MalformedMessage("shorter than a STUN header", None)
    msg_type, length = _HEADER.unpack_from(data, 0)
    if msg_type & 0xC000:
        raise MalformedMessage("first two bits not zero", None)  # RFC 8489 §5: not STUN
    if HEADER_SIZE + length != size or (length & 3 and dialect.pad_attributes):
        raise MalformedMessage("length field does not match", 400)
    if dialect.cookie:
        if data[4:8] != MAGIC_COOKIE_BYTES:
            raise MalformedMessage("no magic cookie", None)
        tid = data[8:20]
    else:
        tid = data[4:20]
    xor_key = data[4:20]
    pair = dialect.type_table.get(msg_type) if dialect.type_table else None
    method, cls = pair if pair is not None else split_message_type(msg_type)
    method = dialect.methods.get(method, method)
    registry_ = dialect.attributes
    rounded = dialect.lengths_include_padding
    strip = dialect.strip_text_nul
    attrs: list[Attribute] = []
    pos = HEADER_SIZE
    while pos < size:
        if pos + 4 > size:
            raise MalformedMessage("truncated attribute header", 400)
        code, alen = _ATTR_HEADER.unpack_from(data, pos)
        start = pos + 4
        end = start + alen
        padded_end = start + _pad4(alen) if dialect.pad_attributes else end
        if padded_end > size:
            raise MalformedMessage(f"attribute 0x{code:04x} overruns the message", 400)
        value = data[start:end]
        padding = data[end:padded_end]
        spec = registry_.get(code)
        if spec is None:
            attrs.append(Attribute(code, value, padding))
        else:
            if rounded and strip and spec.value_type is str:
                stripped = value.rstrip(b"\x00")
                padding = value[len(stripped) :]
                value = stripped
            attrs.append(Attribute(code, spec.decode(value, xor_key), padding))
        pos = padded_end
    return Message(method, cls, tid, tuple(attrs), dialect, data)


# --------------------------------------------------------------------------------------------
# Verification on raw bytes
# --------------------------------------------------------------------------------------------


def _walk(raw: bytes, padded: bool = True) -> Iterable[tuple[int, int, int]]:
    """(code, offset of attribute header, value length) for each attribute of a well-formed message."""
    pos = HEADER_SIZE
    size = len(raw)
    while pos + 4 <= size:
        code, alen = _ATTR_HEADER.unpack_from(raw, pos)
        yield code, pos, alen
        pos += 4 + (_pad4(alen) if padded else alen)


def verify_integrity(message: Message, key: bytes, algorithm: IntegrityAlgorithm | None = None) -> bool:
    """Check the first integrity attribute (or the first one for ``algorithm``) against ``key``.

    Works on ``message.raw`` (RFC 8489 §14.5: HMAC over the message up to the attribute, with
    the length field adjusted to end just after it). False when absent or not parsed.
    """
    raw = message.raw
    if not raw:
        return False
    by_code: dict[int, list[IntegrityScheme]] = {}
    for scheme in message.dialect.integrity.values():
        by_code.setdefault(scheme.code, []).append(scheme)
    for code, pos, alen in _walk(raw, message.dialect.pad_attributes):
        candidates = by_code.get(code)
        if not candidates:
            continue
        # MS-TURN: 0x0008 carries 20 bytes for HMAC-SHA1, 32 for HMAC-SHA256 (MS-VERSION >= 3).
        chosen = next((s for s in candidates if s.size == alen), None)
        only = candidates[0]
        truncatable = len(candidates) == 1 and only.algorithm == IntegrityAlgorithm.SHA256
        if chosen is None and truncatable and 16 <= alen <= 32 and alen % 4 == 0:
            chosen = only  # RFC 8489 §14.6: MESSAGE-INTEGRITY-SHA256 may be truncated to >= 16 bytes
        if chosen is None:
            return False
        if algorithm is not None and chosen.algorithm != algorithm:
            continue
        received = raw[pos + 4 : pos + 4 + alen]
        signed = raw[:2] + _U16.pack(pos + 4 + alen - HEADER_SIZE) + raw[4:pos]
        return hmac.compare_digest(_mac(chosen, key, signed)[:alen], received)
    return False


def verify_fingerprint(message: Message) -> bool:
    """RFC 8489 §14.7: CRC-32 of the message up to FINGERPRINT, XOR 0x5354554E."""
    raw = message.raw
    for code, pos, alen in _walk(raw, message.dialect.pad_attributes):
        if code == AttrType.FINGERPRINT and alen == 4:
            signed = raw[:2] + _U16.pack(pos + 8 - HEADER_SIZE) + raw[4:pos]
            received: int = _U32.unpack_from(raw, pos + 4)[0]
            return received == binascii.crc32(signed) ^ FINGERPRINT_XOR
    return False


# --------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------


def opaque_string(text: str) -> str:
    """RFC 8489 §9.2.2 OpaqueString (RFC 8265) approximated by SASLprep's mapping + NFKC.

    Maps non-ASCII spaces to U+0020, removes "commonly mapped to nothing" code points
    (RFC 3454 B.1), then NFKC. Enough for RFC 5769 §2.4 ("The\u00adM\u00aatr\u2168" -> "TheMatrIX").
    """
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch for ch in text if not stringprep.in_table_b1(ch)
    )
    return unicodedata.normalize("NFKC", mapped)


def short_term_key(password: str) -> bytes:
    """RFC 8489 §9.1.1: key = OpaqueString(password)."""
    return opaque_string(password).encode("utf-8")


def long_term_key(
    username: str, realm: str, password: str, algorithm: PasswordAlgorithmId = PasswordAlgorithmId.MD5
) -> bytes:
    """RFC 8489 §9.2.2: MD5 or SHA-256 of ``username ":" OpaqueString(realm) ":" OpaqueString(password)``."""
    text = f"{username}:{opaque_string(realm)}:{opaque_string(password)}".encode()
    if algorithm == PasswordAlgorithmId.SHA256:
        return hashlib.sha256(text).digest()
    return hashlib.md5(text).digest()


def userhash(username: str, realm: str) -> bytes:
    """RFC 8489 §14.4: SHA-256(OpaqueString(username) ":" OpaqueString(realm))."""
    return hashlib.sha256(f"{opaque_string(username)}:{opaque_string(realm)}".encode()).digest()


# --------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------


def new_transaction_id(rng: Any, dialect: Dialect = STUN) -> bytes:
    """A fresh transaction ID from a seeded ``random.Random`` (style.md §2: randomness passed in)."""
    value: int = rng.getrandbits(8 * dialect.transaction_id_size)
    return value.to_bytes(dialect.transaction_id_size, "big")


def request(method: int, transaction_id: bytes, *attributes: Attribute, dialect: Dialect = STUN) -> Message:
    return Message(method, MessageClass.REQUEST, transaction_id, attributes, dialect)


def indication(
    method: int, transaction_id: bytes, *attributes: Attribute, dialect: Dialect = STUN
) -> Message:
    return Message(method, MessageClass.INDICATION, transaction_id, attributes, dialect)


def success_response(to: Message, *attributes: Attribute) -> Message:
    """A success response to ``to``: same method, transaction ID and dialect (RFC 8489 §6.3.1.1)."""
    return Message(to.method, MessageClass.SUCCESS, to.transaction_id, attributes, to.dialect)


def error_response(to: Message, code: int, reason: str, *attributes: Attribute) -> Message:
    """An error response to ``to`` with ERROR-CODE first, then ``attributes``."""
    first = Attribute(AttrType.ERROR_CODE, ErrorCode(int(code), reason))
    if to.dialect.attributes.get(AttrType.ERROR_CODE) is not ERROR_CODE:
        raise ValueError("dialect has no RFC ERROR-CODE at 0x0009")
    return Message(to.method, MessageClass.ERROR, to.transaction_id, (first, *attributes), to.dialect)
