"""Property tests: registries round-trip, messages round-trip, parsers never crash."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator.wire import msturn, stun, turn
from simulator.wire.errors import MalformedMessage
from simulator.wire.stun import Dialect, Message
from tests.wire.strategies import VALUES, messages

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DIALECTS = [stun.STUN, turn.RFC, msturn.LEGACY, msturn.RFC5389]


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.name)
def test_every_registered_attribute_has_a_strategy(dialect: Dialect) -> None:
    assert set(VALUES[dialect]) == set(dialect.attributes)


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.name)
@FAST
@given(data=st.data(), xor_key=st.binary(min_size=16, max_size=16))
def test_every_registered_attribute_round_trips(dialect: Dialect, data: st.DataObject, xor_key: bytes) -> None:
    code = data.draw(st.sampled_from(sorted(dialect.attributes)))
    spec = dialect.attributes[code]
    value: Any = data.draw(VALUES[dialect][code])
    assert spec.decode(spec.encode(value, xor_key), xor_key) == value


def _parse(dialect: Dialect, wire: bytes) -> Message:
    if dialect in (msturn.LEGACY, msturn.RFC5389):
        return msturn.parse(wire)
    return stun.parse(wire, dialect)


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.name)
@FAST
@given(data=st.data())
def test_parse_serialize_round_trip(dialect: Dialect, data: st.DataObject) -> None:
    message = data.draw(messages(dialect))
    wire = message.serialize()
    back = _parse(dialect, wire)
    assert back == message
    assert back.serialize() == wire


@pytest.mark.parametrize("dialect", [turn.RFC, msturn.LEGACY, msturn.RFC5389], ids=lambda d: d.name)
@FAST
@given(data=st.data(), key=st.binary(min_size=1, max_size=32))
def test_integrity_verifies_and_detects_tampering(dialect: Dialect, data: st.DataObject, key: bytes) -> None:
    message = data.draw(messages(dialect))
    algorithm = data.draw(st.sampled_from(list(dialect.integrity)))
    wire = message.serialize(key, integrity=(algorithm,), fingerprint=dialect.fingerprint)
    back = _parse(dialect, wire)
    assert stun.verify_integrity(back, key)
    assert not stun.verify_integrity(back, key + b"x")
    if dialect.fingerprint:
        assert stun.verify_fingerprint(back)
    covered = len(wire) - 4 - dialect.integrity[algorithm].size - (8 if dialect.fingerprint else 0)
    flip = data.draw(st.integers(2, covered - 1))  # any byte the HMAC covers except the length field
    tampered = bytearray(wire)
    tampered[flip] ^= 0x01
    try:
        bad = _parse(dialect, bytes(tampered))
    except MalformedMessage:
        return
    assert not stun.verify_integrity(bad, key)


PARSERS = {
    "stun": lambda b: stun.parse(b),
    "turn": turn.parse,
    "demux": turn.demux,
    "msturn": msturn.parse,
    "msturn-legacy-raw": lambda b: stun.parse(b, msturn.LEGACY),
    "channel-data": turn.parse_channel_data,
}


@pytest.mark.parametrize("name", sorted(PARSERS))
@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=120))
def test_random_bytes_give_a_message_or_malformed(name: str, data: bytes) -> None:
    with contextlib.suppress(MalformedMessage):
        PARSERS[name](data)


@pytest.mark.parametrize("dialect", [turn.RFC, msturn.LEGACY], ids=lambda d: d.name)
@FAST
@given(data=st.data())
def test_mutated_messages_give_a_message_or_malformed(dialect: Dialect, data: st.DataObject) -> None:
    wire = bytearray(data.draw(messages(dialect)).serialize())
    for _ in range(data.draw(st.integers(1, 4))):
        wire[data.draw(st.integers(0, len(wire) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(wire)))
    for candidate in (bytes(wire), bytes(wire[:cut])):
        with contextlib.suppress(MalformedMessage):
            _parse(dialect, candidate)
