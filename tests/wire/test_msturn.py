"""MS-TURN dialect: header forms, swapped REALM/NONCE, 0x8020 XOR rule, integrity keys."""

from __future__ import annotations

import hashlib

import pytest

from simulator.wire import msturn, stun, turn
from simulator.wire.errors import MalformedMessage
from simulator.wire.msturn import MsTurnMethod, SequenceNumber, ServiceQuality
from simulator.wire.stun import Address, MessageClass, attr

TID16 = bytes(range(16))

# A v3 Allocate from the turner library's unit tests (legacy header, 32-byte HMAC-SHA256 with
# realm "realm", nonce "nonce", user "user", password "pass"): an independent vector for the
# SHA-256 key recipe and for "length includes MI, input zero-padded to 64".
TURNER_V3 = bytes.fromhex(
    "0003002c000102030405060708090a0b0c0d0e0f000f000472c64bc60008002"
    "0890e90e0fee6ed6fa33ac97ea004761627 95e25a607386cc9817fa6ed8d2cd14".replace(" ", "")
)


def test_turner_v3_vector_verifies_with_sha256_key() -> None:
    msg = msturn.parse(TURNER_V3)
    assert msg.dialect is msturn.LEGACY
    assert (msg.method, msg.cls) == (MsTurnMethod.ALLOCATE, MessageClass.REQUEST)
    key = msturn.sha256_key("user", "realm", "pass", "nonce")
    assert stun.verify_integrity(msg, key)
    assert not stun.verify_integrity(msg, msturn.sha256_key("user", "realm", "pass", "other"))
    assert not stun.verify_integrity(msg, msturn.legacy_key("user", "realm", "pass"))
    assert msg.serialize(key, integrity=(stun.IntegrityAlgorithm.SHA256,)) == TURNER_V3


def test_legacy_key_is_md5_of_user_realm_password() -> None:
    assert msturn.legacy_key("u", "r", "p") == hashlib.md5(b"u:r:p").digest()


def test_legacy_form_rounds_lengths_and_swaps_realm_nonce() -> None:
    msg = msturn.build(
        MsTurnMethod.ALLOCATE,
        MessageClass.ERROR,
        TID16,
        attr(stun.ERROR_CODE, stun.ErrorCode(401, "Unauthorized")),
        attr(msturn.REALM, "SIP Communications Service"),
        attr(msturn.NONCE, "abcde"),
        attr(msturn.ALTERNATE_SERVER, Address("198.51.100.7", 3478)),
        version=2,
    )
    wire = msg.serialize()
    assert wire[:2] == b"\x01\x13" and wire[4:20] == TID16
    assert wire[20:28] == msturn.MAGIC_COOKIE_ATTRIBUTE_BYTES
    realm_at = wire.index(b"SIP Comm") - 4
    assert wire[realm_at : realm_at + 4] == b"\x00\x15\x00\x1c"  # REALM 0x0015, 26 rounded to 28
    nonce_at = wire.index(b"abcde") - 4
    assert wire[nonce_at : nonce_at + 4] == b"\x00\x14\x00\x08"
    back = msturn.parse(wire)
    assert back == msg
    assert back.get(msturn.REALM) == "SIP Communications Service"


def test_xor_mapped_address_uses_transaction_id_in_legacy_form() -> None:
    mapped = Address("192.0.2.1", 32853)
    msg = msturn.build(
        MsTurnMethod.ALLOCATE, MessageClass.SUCCESS, TID16, attr(msturn.XOR_MAPPED_ADDRESS, mapped), version=1
    )
    wire = msg.serialize()
    at = wire.index(b"\x80\x20\x00\x08") + 4
    # port XOR txid[0:2] = 0x0001, address XOR txid[0:4] = 00 01 02 03
    assert wire[at : at + 8] == bytes.fromhex("0001 8054 c0010002".replace(" ", ""))
    assert msturn.parse(wire).get(msturn.XOR_MAPPED_ADDRESS) == mapped


def test_v3_form_has_header_cookie_and_sha256_integrity() -> None:
    key = msturn.key_for(3, "user", "realm", "pass", "nonce")
    msg = msturn.build(
        MsTurnMethod.ALLOCATE,
        MessageClass.REQUEST,
        TID16[:12],
        attr(msturn.MS_VERSION, 3),
        attr(msturn.USERNAME, "user"),
        attr(msturn.NONCE, "nonce"),
        attr(msturn.REALM, "realm"),
        attr(msturn.MS_SERVICE_QUALITY, ServiceQuality(1, 0)),
        version=3,
    )
    wire = msg.serialize(key, integrity=(msturn.integrity_for(3),))
    assert wire[4:8] == stun.MAGIC_COOKIE_BYTES
    back = msturn.parse(wire)
    assert back.dialect is msturn.RFC5389
    assert len(back.get(msturn.MESSAGE_INTEGRITY) or b"") == 32
    assert stun.verify_integrity(back, key)


def test_message_kinds_and_type_codes() -> None:
    seq = SequenceNumber(bytes(range(20)), 7)
    cases = [
        (MsTurnMethod.ALLOCATE, MessageClass.REQUEST, 0x0003),
        (MsTurnMethod.ALLOCATE, MessageClass.SUCCESS, 0x0103),
        (MsTurnMethod.ALLOCATE, MessageClass.ERROR, 0x0113),
        (MsTurnMethod.SEND, MessageClass.REQUEST, 0x0004),
        (MsTurnMethod.DATA, MessageClass.INDICATION, 0x0115),
        (MsTurnMethod.SET_ACTIVE_DESTINATION, MessageClass.REQUEST, 0x0006),
        (MsTurnMethod.SET_ACTIVE_DESTINATION, MessageClass.SUCCESS, 0x0106),
        (MsTurnMethod.SET_ACTIVE_DESTINATION, MessageClass.ERROR, 0x0116),
    ]
    for method, cls, code in cases:
        msg = msturn.build(method, cls, TID16, attr(msturn.MS_SEQUENCE_NUMBER, seq))
        wire = msg.serialize()
        assert int.from_bytes(wire[:2], "big") == code
        back = msturn.parse(wire)
        assert (back.method, back.cls) == (method, cls)
        assert back.get(msturn.MS_SEQUENCE_NUMBER) == seq


def test_unrepresentable_type_is_refused() -> None:
    msg = msturn.build(MsTurnMethod.DATA, MessageClass.ERROR, TID16)
    with pytest.raises(ValueError, match="reserved"):
        msg.serialize()


def test_missing_magic_cookie_is_dropped_silently() -> None:
    plain = stun.Message(MsTurnMethod.ALLOCATE, MessageClass.REQUEST, TID16, (), msturn.LEGACY).serialize()
    with pytest.raises(MalformedMessage) as info:
        msturn.parse(plain)
    assert info.value.status is None


def test_rfc_and_ms_method_4_differ() -> None:
    """Method 0x004 is Refresh in RFC 8656 and Send in MS-TURN: the dialect decides."""
    rfc = turn.parse(stun.request(turn.TurnMethod.REFRESH, bytes(12), dialect=turn.RFC).serialize())
    assert rfc.method is turn.TurnMethod.REFRESH
    ms = msturn.parse(msturn.build(MsTurnMethod.SEND, MessageClass.REQUEST, TID16).serialize())
    assert ms.method is MsTurnMethod.SEND
