"""MS-ICE2 connectivity-check wire form, as libnice's ``NICE_COMPATIBILITY_OC2007R2`` agent speaks it.

What differs from RFC 8489 STUN ([code] libnice ``stun/stunagent.c``, ``agent.c`` ``STUN_COMPATIBILITY_MSICE2``
with ``STUN_AGENT_USAGE_NO_ALIGNED_ATTRIBUTES``; MS-ICE2 §3.1.4.8.2):

- attributes are written without padding: exact length, the next attribute right after the value;
- MESSAGE-INTEGRITY (HMAC-SHA1, short-term key = the password) is computed with the header length field
  set to the length of the **whole** message, i.e. counting the FINGERPRINT that follows it, and over an
  input zero-padded to a multiple of 64 bytes (the RFC 3489 rule);
- FINGERPRINT is the RFC 8489 one; MS-ICE2 agents also send a "legacy" copy of each check with a CRC-32
  typo and no IMPLEMENTATION-VERSION, until the peer answers with IMPLEMENTATION-VERSION (0x8070, value 2).

The header (cookie + 12-byte transaction ID), the attribute codes and values are RFC 5389's, so the STUN
registry is reused with a :class:`~simulator.wire.stun.Dialect` that only turns padding off.
"""

from __future__ import annotations

import binascii
import hmac
import struct

from simulator.wire import stun
from simulator.wire.stun import Message

DIALECT = stun.Dialect(name="ms-ice2", attributes=stun.STUN.attributes, methods=stun.STUN.methods,
                       integrity=stun.rfc_integrity(), pad_attributes=False)
_U16 = struct.Struct("!H")
_ATTR = struct.Struct("!HH")
_MI_SIZE = 24  # header + HMAC-SHA1
_FP_SIZE = 8


def serialize(message: Message, key: bytes | None, *, fingerprint: bool = True) -> bytes:
    """Encode ``message`` in the MS-ICE2 form, signed with ``key`` when given."""
    plain = Message(message.method, message.cls, message.transaction_id, message.attributes, DIALECT).serialize()
    head, prefix, body = plain[:2], plain[4:20], bytearray(plain[20:])
    if key is not None:
        total = len(body) + _MI_SIZE + (_FP_SIZE if fingerprint else 0)
        signed = head + _U16.pack(total) + prefix + bytes(body)
        signed += bytes(-len(signed) % 64)
        body += _ATTR.pack(stun.AttrType.MESSAGE_INTEGRITY, 20) + stun.hmac_digest(key, signed, "sha1")
    if fingerprint:
        crc = binascii.crc32(head + _U16.pack(len(body) + _FP_SIZE) + prefix + bytes(body)) ^ stun.FINGERPRINT_XOR
        body += _ATTR.pack(stun.AttrType.FINGERPRINT, 4) + struct.pack("!I", crc)
    return head + _U16.pack(len(body)) + prefix + bytes(body)


def verify_integrity(message: Message, key: bytes) -> bool:
    """The MS-ICE2 MESSAGE-INTEGRITY of a message parsed with :data:`DIALECT`."""
    raw = message.raw
    pos = 20
    while pos + 4 <= len(raw):
        code, length = _ATTR.unpack_from(raw, pos)
        if code == stun.AttrType.MESSAGE_INTEGRITY and length == 20:
            signed = raw[:2] + _U16.pack(len(raw) - 20) + raw[4:pos]
            signed += bytes(-len(signed) % 64)
            return hmac.compare_digest(stun.hmac_digest(key, signed, "sha1"), raw[pos + 4 : pos + 24])
        pos += 4 + length
    return False
