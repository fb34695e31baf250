"""MS-TURN v2 (legacy header): relayed DATA keeps its exact length in both directions, whatever form
(padded / rounded legacy, or libnice's unpadded OC2007R2 form) the client last wrote.

Expected values: the relay moves application bytes unchanged (MS-TURN 3.2.5.4 / 3.2.5.5: DATA carries
the data as the client or peer sent it); libnice 0.1.21 in OC2007R2 mode writes and reads attributes
with exact lengths and no padding (``STUN_AGENT_USAGE_NO_ALIGNED_ATTRIBUTES``, research-lync-edge.md
§1.1), so a DATA length field on the wire must equal the payload length. A client whose messages all
happen to be 4-aligned is parsed in the padded legacy form; the Data indication it gets must still carry
the exact length (before the fix: 101 bytes arrived as 104 with three NULs).
"""

from __future__ import annotations

import dataclasses
import struct

import pytest

from simulator.wire import msturn
from simulator.wire.stun import Attribute, MessageClass, attr
from tests.av.helpers import CLIENT, PEER, Harness, MsClient, make_harness

MS = msturn.MsTurnMethod
SIZES = [*range(1, 10), 101]


def _payload(n: int) -> bytes:
    return bytes((7 * i + n) % 251 + 1 for i in range(n))  # no NULs: trailing padding would show


def _allocate(h: Harness, c: MsClient) -> int:
    """Allocate -> 401 -> Allocate in the padded legacy form (a 4-aligned client: the Edge pins LEGACY)."""
    first = c.learn(h.to_client(c.request(MS.ALLOCATE, auth=False))[0])
    assert first.get(msturn.NONCE)
    resp = c.learn(h.to_client(c.request(MS.ALLOCATE, attr(msturn.LIFETIME, 3600)))[0])
    assert resp.cls == MessageClass.SUCCESS and resp.dialect is msturn.LEGACY
    relay = resp.get(msturn.MAPPED_ADDRESS)
    assert relay is not None
    return relay.port


def _send(c: MsClient, data: bytes, *, unpadded: bool) -> bytes:
    """A Send request signed with the allocation's key, in libnice's unpadded form or the padded legacy one."""
    c.sequence += 1
    body: tuple[Attribute, ...] = (
        attr(msturn.MS_VERSION, 2), attr(msturn.USERNAME, c.username),
        attr(msturn.MS_SEQUENCE_NUMBER, msturn.SequenceNumber(c.connection_id, c.sequence)),
        attr(msturn.REALM, c.realm or ""), attr(msturn.DESTINATION_ADDRESS, PEER), attr(msturn.DATA, data),
    )
    message = msturn.build(MS.SEND, MessageClass.REQUEST, c.tid(), *body, version=2)
    if unpadded:
        message = dataclasses.replace(message, dialect=msturn.LEGACY_UNALIGNED)
    return message.serialize(key=c.key, integrity=(msturn.integrity_for(2),))


def _data_length_on_wire(raw: bytes) -> int:
    """The DATA (0x0013) attribute's length field, found by walking exact lengths after the cookie."""
    pos = 20
    while pos + 4 <= len(raw):
        code, length = struct.unpack_from("!HH", raw, pos)
        assert isinstance(length, int)
        if code == msturn.DATA.code:
            return length
        pos += 4 + length  # attributes before DATA (cookie, REMOTE-ADDRESS) are 4-aligned in every form
    raise AssertionError("no DATA attribute")


@pytest.mark.parametrize("n", SIZES)
def test_unpadded_send_reaches_the_peer_with_its_exact_bytes(n: int) -> None:
    h = make_harness(users={"edgeuser": "s3cret"})
    c = MsClient(version=2, username="edgeuser")  # 8 characters: the Allocate is 4-aligned (libnice's case)
    port = _allocate(h, c)
    relay = h.binder.bound[("udp", port)]
    payload = _payload(n)
    assert h.deliver(_send(c, payload, unpadded=True)) == [(relay, payload, PEER)]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("last_form", ["padded", "unpadded"])
def test_data_indication_carries_the_exact_length(n: int, last_form: str) -> None:
    h = make_harness(users={"edgeuser": "s3cret"})
    c = MsClient(version=2, username="edgeuser")
    port = _allocate(h, c)
    # the client's last message: aligned (padded legacy form) or libnice's unpadded one; 4 bytes of DATA
    # keep the padded form exactly 4-aligned, so the Edge keeps answering in the legacy form
    h.deliver(_send(c, b"ping", unpadded=last_form == "unpadded"))
    payload = _payload(n)
    [(sink, raw, addr)] = h.from_peer(port, payload)
    assert sink is h.udp and addr == CLIENT
    assert raw[0:2] == b"\x01\x15"  # MS-TURN 2.2.1 Data Indication
    assert _data_length_on_wire(raw) == n
    assert raw.endswith(payload)  # DATA is last and nothing follows it
    ind = msturn.parse(raw)
    assert ind.get(msturn.DATA) == payload and ind.get(msturn.REMOTE_ADDRESS) == PEER


def test_round_trip_echo_keeps_101_bytes() -> None:
    """The reported case: peer -> client (Data indication) -> client echoes DATA back -> peer gets 101 bytes."""
    h = make_harness(users={"edgeuser": "s3cret"})
    c = MsClient(version=2, username="edgeuser")
    port = _allocate(h, c)
    relay = h.binder.bound[("udp", port)]
    h.deliver(_send(c, b"ping", unpadded=False))
    payload = _payload(101)
    [(_, raw, _)] = h.from_peer(port, payload)
    received = msturn.parse(raw).get(msturn.DATA)
    assert received == payload
    assert h.deliver(_send(c, received, unpadded=True)) == [(relay, payload, PEER)]


def test_aligned_payloads_are_unchanged_in_the_legacy_form() -> None:
    """A 4-multiple payload is written exactly as before: rounded and exact lengths coincide."""
    h = make_harness(users={"edgeuser": "s3cret"})
    c = MsClient(version=2, username="edgeuser")
    port = _allocate(h, c)
    h.deliver(_send(c, b"ping", unpadded=False))
    [(_, raw, _)] = h.from_peer(port, b"12345678")
    assert _data_length_on_wire(raw) == 8 and msturn.parse(raw).dialect is msturn.LEGACY
