"""Hypothesis strategies for wire values and messages of every dialect."""

from __future__ import annotations

import ipaddress
from typing import Any

from hypothesis import strategies as st

from simulator.wire import msturn, stun, turn
from simulator.wire.stun import Address, Attribute, Dialect, Message, MessageClass

ipv4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
ipv6 = st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))
addresses = st.builds(Address, st.one_of(ipv4, ipv6), st.integers(0, 65535))
u8, u16, u32, u64 = (st.integers(0, 2**b - 1) for b in (8, 16, 32, 64))
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40).filter(lambda s: not s.endswith("\x00"))
error_codes = st.builds(stun.ErrorCode, st.integers(300, 699), text)
password_algorithm = st.builds(stun.PasswordAlgorithm, u16, st.binary(max_size=9))

STUN_VALUES: dict[int, st.SearchStrategy[Any]] = {
    stun.MAPPED_ADDRESS.code: addresses,
    stun.XOR_MAPPED_ADDRESS.code: addresses,
    stun.USERNAME.code: text,
    stun.USERHASH.code: st.binary(min_size=32, max_size=32),
    stun.MESSAGE_INTEGRITY.code: st.binary(min_size=20, max_size=20),
    stun.MESSAGE_INTEGRITY_SHA256.code: st.binary(min_size=16, max_size=32),
    stun.FINGERPRINT.code: u32,
    stun.ERROR_CODE.code: error_codes,
    stun.REALM.code: text,
    stun.NONCE.code: text,
    stun.PASSWORD_ALGORITHM.code: password_algorithm,
    stun.PASSWORD_ALGORITHMS.code: st.lists(password_algorithm, max_size=3).map(tuple),
    stun.UNKNOWN_ATTRIBUTES.code: st.lists(u16, max_size=5).map(tuple),
    stun.SOFTWARE.code: text,
    stun.ALTERNATE_SERVER.code: addresses,
    stun.ALTERNATE_DOMAIN.code: text,
    stun.PRIORITY.code: u32,
    stun.USE_CANDIDATE.code: st.just(True),
    stun.ICE_CONTROLLED.code: u64,
    stun.ICE_CONTROLLING.code: u64,
}
TURN_VALUES: dict[int, st.SearchStrategy[Any]] = {
    **STUN_VALUES,
    turn.CHANNEL_NUMBER.code: u16,
    turn.LIFETIME.code: u32,
    turn.XOR_PEER_ADDRESS.code: addresses,
    turn.DATA.code: st.binary(max_size=64),
    turn.XOR_RELAYED_ADDRESS.code: addresses,
    turn.REQUESTED_ADDRESS_FAMILY.code: u8,
    turn.EVEN_PORT.code: st.booleans(),
    turn.REQUESTED_TRANSPORT.code: u8,
    turn.DONT_FRAGMENT.code: st.just(True),
    turn.RESERVATION_TOKEN.code: st.binary(min_size=8, max_size=8),
    turn.ADDITIONAL_ADDRESS_FAMILY.code: u8,
    turn.ADDRESS_ERROR_CODE.code: st.builds(turn.AddressErrorCode, u8, st.integers(300, 699), text),
    turn.ICMP.code: st.builds(turn.Icmp, u8, u8, u32),
    turn.CONNECTION_ID.code: u32,
}
MSTURN_VALUES: dict[int, st.SearchStrategy[Any]] = {
    msturn.MAPPED_ADDRESS.code: addresses,
    msturn.USERNAME.code: text,
    msturn.MESSAGE_INTEGRITY.code: st.one_of(st.binary(min_size=20, max_size=20), st.binary(min_size=32, max_size=32)),
    msturn.ERROR_CODE.code: error_codes,
    msturn.UNKNOWN_ATTRIBUTES.code: st.lists(u16, min_size=2, max_size=6).filter(lambda x: len(x) % 2 == 0).map(tuple),
    msturn.LIFETIME.code: u32,
    msturn.ALTERNATE_SERVER.code: addresses,
    msturn.MAGIC_COOKIE.code: u32,
    msturn.BANDWIDTH.code: u32,
    msturn.DESTINATION_ADDRESS.code: addresses,
    msturn.REMOTE_ADDRESS.code: addresses,
    # legacy lengths count the padding, so opaque values round-trip when already 4-aligned
    msturn.DATA.code: st.binary(max_size=64).map(lambda b: b + bytes(-len(b) % 4)),
    msturn.NONCE.code: text,
    msturn.REALM.code: text,
    msturn.REQUESTED_ADDRESS_FAMILY.code: u8,
    msturn.MS_VERSION.code: u32,
    msturn.XOR_MAPPED_ADDRESS.code: addresses,
    msturn.MS_SEQUENCE_NUMBER.code: st.builds(msturn.SequenceNumber, st.binary(min_size=20, max_size=20), u32),
    msturn.MS_SERVICE_QUALITY.code: st.builds(msturn.ServiceQuality, u16, u16),
    msturn.MS_ALTERNATE_MAPPED_ADDRESS.code: addresses,
}

VALUES: dict[Dialect, dict[int, st.SearchStrategy[Any]]] = {
    stun.STUN: STUN_VALUES,
    turn.RFC: TURN_VALUES,
    msturn.LEGACY: MSTURN_VALUES,
    msturn.RFC5389: MSTURN_VALUES,
}


def attributes(dialect: Dialect) -> st.SearchStrategy[Attribute]:
    values = VALUES[dialect]
    known = st.sampled_from(sorted(values)).flatmap(lambda code: values[code].map(lambda v: Attribute(code, v)))
    unknown_codes = st.integers(0, 0xFFFF).filter(lambda c: c not in dialect.attributes)
    raw = st.binary(max_size=24)
    if dialect.lengths_include_padding:
        raw = raw.map(lambda b: b + bytes(-len(b) % 4))
    unknown = st.builds(Attribute, unknown_codes, raw)
    return st.one_of(known, known, unknown)


MS_KINDS = [
    (msturn.MsTurnMethod.ALLOCATE, MessageClass.REQUEST),
    (msturn.MsTurnMethod.ALLOCATE, MessageClass.SUCCESS),
    (msturn.MsTurnMethod.ALLOCATE, MessageClass.ERROR),
    (msturn.MsTurnMethod.SEND, MessageClass.REQUEST),
    (msturn.MsTurnMethod.DATA, MessageClass.INDICATION),
    (msturn.MsTurnMethod.SET_ACTIVE_DESTINATION, MessageClass.REQUEST),
    (msturn.MsTurnMethod.SET_ACTIVE_DESTINATION, MessageClass.SUCCESS),
    (msturn.MsTurnMethod.SET_ACTIVE_DESTINATION, MessageClass.ERROR),
]


@st.composite
def messages(draw: st.DrawFn, dialect: Dialect) -> Message:
    attrs = tuple(draw(st.lists(attributes(dialect), max_size=8)))
    tid = draw(st.binary(min_size=dialect.transaction_id_size, max_size=dialect.transaction_id_size))
    if dialect in (msturn.LEGACY, msturn.RFC5389):
        method, cls = draw(st.sampled_from(MS_KINDS))
        return Message(method, cls, tid, (msturn.cookie_attribute(), *attrs), dialect)
    method = dialect.methods.get(draw(st.integers(0, 0xFFF)))
    raw_method = draw(st.integers(0, 0xFFF)) if method is None else method
    cls = draw(st.sampled_from(MessageClass))
    return Message(dialect.methods.get(raw_method, raw_method), cls, tid, attrs, dialect)
