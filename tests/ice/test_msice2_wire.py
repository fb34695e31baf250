"""The MS-ICE2 check form, rebuilt here byte by byte from libnice's description of it (stun/stunagent.c,
``STUN_COMPATIBILITY_MSICE2`` + ``STUN_AGENT_USAGE_NO_ALIGNED_ATTRIBUTES``), not from the code under test:
unpadded attributes; MESSAGE-INTEGRITY = HMAC-SHA1(password, header with the length of the whole message
(FINGERPRINT included) + attributes before it, zero-padded to a multiple of 64); RFC FINGERPRINT last.
The interop proof is tests/ice/test_libnice_ice.py; this pins the bytes."""

from __future__ import annotations

import binascii
import hashlib
import hmac
import random
import struct

from simulator.core.ice import IceAgent, msice2
from simulator.wire import stun
from simulator.wire.stun import Address, attr


def expected_bytes(tid: bytes, username: str, priority: int, password: str) -> bytes:
    user = username.encode()
    attrs = struct.pack("!HH", 0x0006, len(user)) + user + struct.pack("!HHI", 0x0024, 4, priority)
    total = len(attrs) + 24 + 8
    head = struct.pack("!HH", 0x0001, total) + b"\x21\x12\xa4\x42" + tid
    signed = head + attrs
    signed += bytes(-len(signed) % 64)
    mac = hmac.new(password.encode(), signed, hashlib.sha1).digest()
    body = attrs + struct.pack("!HH", 0x0008, 20) + mac
    crc = binascii.crc32(struct.pack("!HH", 0x0001, len(body) + 8) + b"\x21\x12\xa4\x42" + tid + body) ^ 0x5354554E
    body += struct.pack("!HHI", 0x8028, 4, crc)
    return struct.pack("!HH", 0x0001, len(body)) + b"\x21\x12\xa4\x42" + tid + body


def test_serialize_matches_the_libnice_form() -> None:
    tid = bytes(range(12))
    message = stun.request(stun.StunMethod.BINDING, tid, attr(stun.USERNAME, "abcd:efghi"), attr(stun.PRIORITY, 7))
    data = msice2.serialize(message, b"password123")
    assert data == expected_bytes(tid, "abcd:efghi", 7, "password123")
    assert len("abcd:efghi") % 4  # really unaligned: no padding bytes after USERNAME
    parsed = stun.parse(data, msice2.DIALECT)
    assert msice2.verify_integrity(parsed, b"password123")
    assert not msice2.verify_integrity(parsed, b"password124")
    assert stun.verify_fingerprint(parsed)


def test_ms_ice2_agent_answers_a_libnice_form_check_in_that_form() -> None:
    agent = IceAgent("ms-ice2", False, random.Random(1), ufrag="abcd", pwd="p" * 22)
    agent.add_local_candidate("host", Address("10.0.0.1", 1000), via="h0")
    tid = bytes(12)
    check = stun.request(stun.StunMethod.BINDING, tid, attr(stun.USERNAME, "abcd:xyz"),
                         attr(stun.PRIORITY, 1862270975), attr(stun.ICE_CONTROLLING, 1))
    assert agent.receive(msice2.serialize(check, b"p" * 22), ("10.0.0.2", 2000), 0.0, "h0")
    [(answer, to, via)] = agent.datagrams_to_send(0.0)
    parsed = stun.parse(answer, msice2.DIALECT)
    assert parsed.cls is stun.MessageClass.SUCCESS and (to, via) == (("10.0.0.2", 2000), "h0")
    assert msice2.verify_integrity(parsed, b"p" * 22)
    assert parsed.get(stun.XOR_MAPPED_ADDRESS) == Address("10.0.0.2", 2000)
    assert any(a.code == 0x8070 and a.value == b"\x00\x00\x00\x02" for a in parsed.attributes)  # MS-ICE2 v2


def test_ms_ice2_checks_are_four_byte_aligned_in_total() -> None:
    # A legacy MS-TURN relay rounds DATA lengths up to 4; the agent keeps its checks aligned (SOFTWARE filler).
    for ufrag_len in range(4, 12):
        agent = IceAgent("ms-ice2", True, random.Random(ufrag_len))
        agent.add_local_candidate("host", Address("10.0.0.1", 1000), via="h0")
        agent.set_remote_credentials("r" * ufrag_len, "q" * 22)
        agent.add_remote_candidate(IceAgent("ms-ice2", False, random.Random(0)).add_local_candidate(
            "host", Address("10.0.0.2", 2000), via="x"))
        agent.start(0.0)
        agent.handle_timer(0.0)
        [(check, _, _)] = agent.datagrams_to_send(0.0)
        assert len(check) % 4 == 0
        assert msice2.verify_integrity(stun.parse(check, msice2.DIALECT), b"q" * 22)
