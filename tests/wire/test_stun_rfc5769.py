"""RFC 5769 test vectors (public, from the RFC text): parse, verify, re-serialize byte for byte."""

from __future__ import annotations

import pytest

from simulator.wire import stun, turn
from simulator.wire.errors import MalformedMessage
from simulator.wire.stun import Address, MessageClass, StunMethod

PASSWORD = "VOkJxbRl1RmTxUk/WvJxBt"  # RFC 5769 §2

# RFC 5769 §2.1 Sample Request (USERNAME/SOFTWARE padding bytes are 0x20, as in the RFC)
REQUEST = bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae"
    "802200105354554e207465737420636c69656e74"
    "002400046e0001ff"
    "80290008932ff9b151263b36"
    "000600096576746a3a683676592020200"
    "00800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2"
    "80280004e57a3bcf"
)
# RFC 5769 §2.2 Sample IPv4 Response
RESPONSE_V4 = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000080001a147e112a643"
    "000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7"
    "80280004c07d4c96"
)
# RFC 5769 §2.3 Sample IPv6 Response
RESPONSE_V6 = bytes.fromhex(
    "010100482112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d9"
    "00080014a382954e4be67bf11784c97c8292c275bfe3ed41"
    "80280004c8fb0b4c"
)
# RFC 5769 §2.4 Sample Request with Long-Term Authentication
REQUEST_LONG_TERM = bytes.fromhex(
    "000100602112a44278ad3433c6ad72c029da412e"
    "00060012e3839ee38388e383aae38383e382afe382b90000"
    "0015001c662f2f3439396b39353464364f4c33346f4c394653547679363473"
    "41"
    "0014000b6578616d706c652e6f726700"
    "00080014f67024656dd64a3e02b8e0712e85c9a28ca89666"
)
LT_USERNAME = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"
LT_PASSWORD = "The\u00adM\u00aatr\u2168"  # OpaqueString -> "TheMatrIX"
LT_NONCE = "f//499k954d6OL34oL9FSTvy64sA"
LT_REALM = "example.org"


def test_vectors_have_the_rfc_lengths() -> None:
    assert (len(REQUEST), len(RESPONSE_V4), len(RESPONSE_V6), len(REQUEST_LONG_TERM)) == (108, 80, 92, 116)


def test_sample_request() -> None:
    msg = stun.parse(REQUEST)
    assert (msg.method, msg.cls) == (StunMethod.BINDING, MessageClass.REQUEST)
    assert msg.transaction_id == bytes.fromhex("b7e7a701bc34d686fa87dfae")
    assert msg.get(stun.SOFTWARE) == "STUN test client"
    assert msg.get(stun.PRIORITY) == 0x6E0001FF
    assert msg.get(stun.ICE_CONTROLLED) == 0x932FF9B151263B36
    assert msg.get(stun.USERNAME) == "evtj:h6vY"
    key = stun.short_term_key(PASSWORD)
    assert stun.verify_integrity(msg, key)
    assert not stun.verify_integrity(msg, b"wrong")
    assert stun.verify_fingerprint(msg)
    assert msg.serialize() == REQUEST
    assert msg.serialize(key, fingerprint=True) == REQUEST  # recomputed MI + FINGERPRINT


@pytest.mark.parametrize(
    ("data", "address"),
    [
        (RESPONSE_V4, Address("192.0.2.1", 32853)),
        (RESPONSE_V6, Address("2001:db8:1234:5678:11:2233:4455:6677", 32853)),
    ],
)
def test_sample_responses(data: bytes, address: Address) -> None:
    msg = stun.parse(data)
    assert msg.cls is MessageClass.SUCCESS
    assert msg.get(stun.SOFTWARE) == "test vector"
    assert msg.get(stun.XOR_MAPPED_ADDRESS) == address
    key = stun.short_term_key(PASSWORD)
    assert stun.verify_integrity(msg, key)
    assert stun.verify_fingerprint(msg)
    assert msg.serialize() == data
    assert msg.serialize(key, fingerprint=True) == data


def test_sample_long_term_request() -> None:
    msg = turn.parse(REQUEST_LONG_TERM)
    assert msg.get(stun.USERNAME) == LT_USERNAME
    assert msg.get(stun.NONCE) == LT_NONCE
    assert msg.get(stun.REALM) == LT_REALM
    assert stun.opaque_string(LT_PASSWORD) == "TheMatrIX"
    key = stun.long_term_key(LT_USERNAME, LT_REALM, LT_PASSWORD)
    assert stun.verify_integrity(msg, key)
    assert not stun.verify_integrity(msg, stun.long_term_key(LT_USERNAME, LT_REALM, "TheMatrix"))
    assert not stun.verify_fingerprint(msg)  # the vector has none
    assert msg.serialize() == REQUEST_LONG_TERM
    assert msg.serialize(key) == REQUEST_LONG_TERM


def test_flipped_bit_fails_integrity_and_fingerprint() -> None:
    bad = bytearray(REQUEST)
    bad[30] ^= 0x01  # inside SOFTWARE
    msg = stun.parse(bytes(bad))
    assert not stun.verify_integrity(msg, stun.short_term_key(PASSWORD))
    assert not stun.verify_fingerprint(msg)


def test_sha256_integrity_round_trip() -> None:
    key = stun.long_term_key("u", "r", "p", stun.PasswordAlgorithmId.SHA256)
    msg = stun.request(StunMethod.BINDING, bytes(12), stun.attr(stun.USERNAME, "u"))
    wire = msg.serialize(
        key, integrity=(stun.IntegrityAlgorithm.SHA1, stun.IntegrityAlgorithm.SHA256), fingerprint=True
    )
    back = stun.parse(wire)
    assert stun.verify_integrity(back, key, stun.IntegrityAlgorithm.SHA256)
    assert stun.verify_integrity(back, key, stun.IntegrityAlgorithm.SHA1)
    assert len(back.get(stun.MESSAGE_INTEGRITY_SHA256) or b"") == 32
    assert stun.verify_fingerprint(back)


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"", None),
        (REQUEST[:19], None),
        (b"\xc0" + REQUEST[1:], None),  # first two bits set: not STUN
        (REQUEST[:4] + b"\x00\x00\x00\x00" + REQUEST[8:], None),  # no cookie
        (REQUEST[:-1], 400),  # length mismatch
        (REQUEST[:3] + b"\x0c" + REQUEST[4:20] + b"\x00\x06\x00\x09abcd", 400),  # attribute overruns
    ],
)
def test_malformed(data: bytes, status: int | None) -> None:
    with pytest.raises(MalformedMessage) as info:
        stun.parse(data)
    assert info.value.status == status


def test_unknown_attributes_kept_in_order_and_reported() -> None:
    head = bytes.fromhex("0001001c2112a442") + bytes(12)
    body = bytes.fromhex("7777000361626300" "000600027576" "0000" "c0010001ff000000")
    data = head[:2] + len(body).to_bytes(2, "big") + head[4:] + body
    msg = stun.parse(data)
    assert [a.code for a in msg.attributes] == [0x7777, 0x0006, 0xC001]
    assert msg.attributes[0].value == b"abc"
    assert msg.unknown_required() == (0x7777,)
    assert msg.serialize() == data
