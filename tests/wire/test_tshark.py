"""Interop: every TURN / MS-TURN message kind written to a pcap and decoded by tshark."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from simulator.wire import framing, msturn, stun, turn
from simulator.wire.msturn import MsTurnMethod, SequenceNumber, ServiceQuality
from simulator.wire.pcap import PcapWriter
from simulator.wire.stun import Address, Message, MessageClass, attr
from simulator.wire.turn import TurnMethod
from tests.peers import require_tool

pytestmark = pytest.mark.interop

CLIENT = ("10.0.0.1", 50000)
SERVER = ("10.0.0.2", 3478)
TID12 = bytes(range(1, 13))
TID16 = bytes(range(0x10, 0x20))
PEER4 = Address("192.0.2.9", 4000)
PEER6 = Address("2001:db8::1", 4000)
RELAY = Address("203.0.113.5", 50001)
MAPPED = Address("198.51.100.20", 61000)


def _tshark(tmp_path: Path, write: Any) -> list[dict[str, Any]]:
    tshark = require_tool("tshark")
    buf = io.BytesIO()
    write(PcapWriter(buf))
    path = tmp_path / "capture.pcap"
    path.write_bytes(buf.getvalue())
    out = subprocess.run(
        [tshark, "-r", str(path), "-T", "json", "--no-duplicate-keys"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return [frame["_source"]["layers"] for frame in json.loads(out.stdout)]


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _stun_attrs(layers: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """RFC dissector: attribute tree by type code '0x0012'."""
    trees = _list(layers["stun"]["stun.attributes"]["stun.attribute_tree"])
    return {tree["stun.att.type"]: tree for tree in trees}


def _classic_attrs(layers: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """CLASSIC-STUN dissector: attribute subtree by type code."""
    out: dict[str, dict[str, Any]] = {}
    for name, tree in layers["classicstun"]["classicstun.att"].items():
        for item in _list(tree):
            out[item["classicstun.att.type"]] = {"name": name, **item}
    return out


TURN_CASES: list[tuple[str, Message, int]] = [
    (
        "allocate",
        stun.request(
            TurnMethod.ALLOCATE,
            TID12,
            attr(turn.REQUESTED_TRANSPORT, turn.TransportProtocol.UDP),
            attr(turn.LIFETIME, 600),
            attr(turn.DONT_FRAGMENT, True),
            attr(turn.EVEN_PORT, True),
            attr(turn.REQUESTED_ADDRESS_FAMILY, turn.AddressFamily.IPV4),
            attr(turn.ADDITIONAL_ADDRESS_FAMILY, turn.AddressFamily.IPV6),
            attr(stun.USERNAME, "alice"),
            attr(stun.REALM, "example.org"),
            attr(stun.NONCE, "n0nce"),
            dialect=turn.RFC,
        ),
        0x0003,
    ),
    (
        "allocate-success",
        Message(
            TurnMethod.ALLOCATE,
            MessageClass.SUCCESS,
            TID12,
            (
                attr(turn.XOR_RELAYED_ADDRESS, RELAY),
                attr(stun.XOR_MAPPED_ADDRESS, MAPPED),
                attr(turn.LIFETIME, 600),
                attr(turn.RESERVATION_TOKEN, b"token678"),
            ),
            turn.RFC,
        ),
        0x0103,
    ),
    (
        "allocate-error",
        Message(
            TurnMethod.ALLOCATE,
            MessageClass.ERROR,
            TID12,
            (
                attr(stun.ERROR_CODE, stun.ErrorCode(440, "Address Family not Supported")),
                attr(turn.ADDRESS_ERROR_CODE, turn.AddressErrorCode(2, 440, "no v6")),
                attr(stun.ALTERNATE_SERVER, Address("198.51.100.7", 3478)),
            ),
            turn.RFC,
        ),
        0x0113,
    ),
    ("refresh", stun.request(TurnMethod.REFRESH, TID12, attr(turn.LIFETIME, 0), dialect=turn.RFC), 0x0004),
    (
        "send",
        stun.indication(
            TurnMethod.SEND, TID12, attr(turn.XOR_PEER_ADDRESS, PEER6), attr(turn.DATA, b"xyz"), dialect=turn.RFC
        ),
        0x0016,
    ),
    (
        "data",
        Message(
            TurnMethod.DATA,
            MessageClass.INDICATION,
            TID12,
            (attr(turn.XOR_PEER_ADDRESS, PEER4), attr(turn.DATA, b"hello"), attr(turn.ICMP, turn.Icmp(3, 1))),
            turn.RFC,
        ),
        0x0017,
    ),
    (
        "create-permission",
        stun.request(TurnMethod.CREATE_PERMISSION, TID12, attr(turn.XOR_PEER_ADDRESS, PEER4), dialect=turn.RFC),
        0x0008,
    ),
    (
        "channel-bind",
        stun.request(
            TurnMethod.CHANNEL_BIND,
            TID12,
            attr(turn.CHANNEL_NUMBER, 0x4001),
            attr(turn.XOR_PEER_ADDRESS, PEER4),
            dialect=turn.RFC,
        ),
        0x0009,
    ),
    ("connect", stun.request(TurnMethod.CONNECT, TID12, attr(turn.XOR_PEER_ADDRESS, PEER4), dialect=turn.RFC), 0x000A),
    (
        "connection-bind",
        stun.request(TurnMethod.CONNECTION_BIND, TID12, attr(turn.CONNECTION_ID, 0xDEADBEEF), dialect=turn.RFC),
        0x000B,
    ),
    (
        "connection-attempt",
        stun.indication(
            TurnMethod.CONNECTION_ATTEMPT,
            TID12,
            attr(turn.CONNECTION_ID, 7),
            attr(turn.XOR_PEER_ADDRESS, PEER4),
            dialect=turn.RFC,
        ),
        0x001C,
    ),
]

# expected tshark field values per attribute code, for the RFC dissector
EXPECTED_RFC: dict[str, dict[str, str]] = {
    "0x0019": {"stun.att.transp": "0x11"},
    "0x000d": {},
    "0x0012": {},
    "0x0018": {"stun.att.even-port.reserve-next": "1"},
    "0x0017": {"stun.att.family": "0x01"},
    "0x0006": {"stun.att.username": "alice"},
    "0x0014": {"stun.att.realm": "example.org"},
    "0x0015": {"stun.att.nonce": "n0nce"},
    "0x0016": {"stun.att.ipv4": "203.0.113.5", "stun.att.port": "50001"},
    "0x0020": {"stun.att.ipv4": "198.51.100.20", "stun.att.port": "61000"},
    "0x0022": {"stun.att.token": "74:6f:6b:65:6e:36:37:38"},
    "0x0009": {"stun.att.error.class": "4", "stun.att.error": "40"},
    "0x8023": {"stun.att.ipv4": "198.51.100.7", "stun.att.port": "3478"},
    "0x000c": {"stun.att.channelnum": "0x4001"},
    "0x002a": {},
    "0x0013": {},
    "0x8000": {},
    "0x8001": {},
    "0x8004": {},  # Wireshark 4.0 reads ICMP type/code at offset 0, ignoring RFC 8656 §18.13's Reserved
    "0x001a": {},
}


@pytest.mark.parametrize(("name", "message", "wire_type"), TURN_CASES, ids=[c[0] for c in TURN_CASES])
def test_turn_message_kinds(tmp_path: Path, name: str, message: Message, wire_type: int) -> None:
    key = stun.long_term_key("alice", "example.org", "secret")
    layers = _tshark(tmp_path, lambda w: w.udp(CLIENT, SERVER, message.serialize(key, fingerprint=True)))[0]
    assert int(layers["stun"]["stun.type"], 16) == wire_type
    attrs = _stun_attrs(layers)
    for a in message.attributes:
        code = f"0x{a.code:04x}"
        assert code in attrs, f"tshark did not see {code}"
        for field_name, value in EXPECTED_RFC[code].items():
            assert attrs[code][field_name] == value, (code, field_name)
    if message.has(turn.XOR_PEER_ADDRESS):
        peer = message.get(turn.XOR_PEER_ADDRESS)
        assert peer is not None
        family_field = "stun.att.ipv6" if peer.family == 2 else "stun.att.ipv4"
        assert attrs["0x0012"][family_field] == peer.host
        assert attrs["0x0012"]["stun.att.port"] == str(peer.port)
    if message.has(turn.LIFETIME):
        assert attrs["0x000d"]["stun.att.lifetime"] == str(message.get(turn.LIFETIME))
    assert "0x0008" in attrs and "0x8028" in attrs


def test_channel_data_udp_and_tcp(tmp_path: Path) -> None:
    def write(w: PcapWriter) -> None:
        w.udp(CLIENT, SERVER, turn.encode_channel_data(0x4001, b"hello"))
        w.tcp_open(CLIENT, SERVER)
        stream = (
            stun.request(TurnMethod.CONNECTION_BIND, TID12, attr(turn.CONNECTION_ID, 99), dialect=turn.RFC).serialize()
            + turn.encode_channel_data(0x4002, b"abcde", pad=True)
            + turn.encode_channel_data(0x4003, b"q", pad=True)
        )
        w.tcp(CLIENT, SERVER, stream)

    frames = _tshark(tmp_path, write)
    udp = frames[0]["stun"]
    assert (udp["stun.channel"], udp["stun.length"]) == ("0x4001", "5")
    tcp = _list(frames[-1]["stun"])
    assert tcp[0]["stun.type"] == "0x000b"
    assert [(p["stun.channel"], p["stun.length"]) for p in tcp[1:]] == [("0x4002", "5"), ("0x4003", "1")]
    assert [d["data.data"] for d in _list(frames[-1]["data"])] == ["61:62:63:64:65", "71"]


SEQ = SequenceNumber(bytes(range(20)), 5)

MS_CASES: list[tuple[str, Message, int]] = [
    (
        "allocate",
        msturn.build(
            MsTurnMethod.ALLOCATE,
            MessageClass.REQUEST,
            TID16,
            attr(msturn.MS_VERSION, 2),
            attr(msturn.USERNAME, "mrasuser"),
            attr(msturn.REALM, "SIP Communications Service"),
            attr(msturn.NONCE, "abcdef0123"),
            attr(msturn.BANDWIDTH, 1000),
            attr(msturn.LIFETIME, 480),
            attr(msturn.MS_SERVICE_QUALITY, ServiceQuality(1, 0)),
        ),
        0x0003,
    ),
    (
        "allocate-401",
        msturn.build(
            MsTurnMethod.ALLOCATE,
            MessageClass.ERROR,
            TID16,
            attr(msturn.ERROR_CODE, stun.ErrorCode(401, "Unauthorized")),
            attr(msturn.REALM, "SIP Communications Service"),
            attr(msturn.NONCE, "abcdef0123"),
            attr(msturn.ALTERNATE_SERVER, Address("198.51.100.7", 3478)),
        ),
        0x0113,
    ),
    (
        "allocate-success",
        msturn.build(
            MsTurnMethod.ALLOCATE,
            MessageClass.SUCCESS,
            TID16,
            attr(msturn.MAPPED_ADDRESS, RELAY),
            attr(msturn.XOR_MAPPED_ADDRESS, MAPPED),
            attr(msturn.LIFETIME, 480),
            attr(msturn.MS_SEQUENCE_NUMBER, SEQ),
        ),
        0x0103,
    ),
    (
        "send",
        msturn.build(
            MsTurnMethod.SEND,
            MessageClass.REQUEST,
            TID16,
            attr(msturn.DESTINATION_ADDRESS, PEER4),
            attr(msturn.DATA, b"rtp!"),
            attr(msturn.MS_SEQUENCE_NUMBER, SEQ),
        ),
        0x0004,
    ),
    (
        "data-indication",
        msturn.build(
            MsTurnMethod.DATA,
            MessageClass.INDICATION,
            TID16,
            attr(msturn.REMOTE_ADDRESS, PEER4),
            attr(msturn.DATA, b"rtp?"),
        ),
        0x0115,
    ),
    (
        "set-active-destination",
        msturn.build(
            MsTurnMethod.SET_ACTIVE_DESTINATION,
            MessageClass.REQUEST,
            TID16,
            attr(msturn.DESTINATION_ADDRESS, PEER4),
            attr(msturn.MS_SEQUENCE_NUMBER, SEQ),
        ),
        0x0006,
    ),
    (
        "set-active-destination-success",
        msturn.build(MsTurnMethod.SET_ACTIVE_DESTINATION, MessageClass.SUCCESS, TID16),
        0x0106,
    ),
]

EXPECTED_CLASSIC: dict[str, tuple[str, dict[str, str]]] = {
    "0x000f": ("MAGIC_COOKIE", {"classicstun.att.magic.cookie": "0x72c64bc6"}),
    "0x0015": ("REALM", {}),
    "0x0014": ("NONCE", {}),
    "0x0001": ("MAPPED-ADDRESS", {"classicstun.att.ipv4": "203.0.113.5", "classicstun.att.port": "50001"}),
    "0x8020": ("XOR_MAPPED_ADDRESS", {"classicstun.att.ipv4": "198.51.100.20", "classicstun.att.port": "61000"}),
    "0x000d": ("LIFETIME", {"classicstun.att.lifetime": "480"}),
    "0x0010": ("BANDWIDTH", {"classicstun.att.bandwidth": "1000"}),
    "0x0011": ("DESTINATION_ADDRESS", {"classicstun.att.ipv4": "192.0.2.9", "classicstun.att.port": "4000"}),
    "0x0012": ("REMOTE_ADDRESS", {"classicstun.att.ipv4": "192.0.2.9", "classicstun.att.port": "4000"}),
    "0x000e": ("ALTERNATE_SERVER", {"classicstun.att.ipv4": "198.51.100.7", "classicstun.att.port": "3478"}),
    "0x0009": ("ERROR-CODE", {"classicstun.att.error.class": "4", "classicstun.att.error": "1"}),
}


@pytest.mark.parametrize(("name", "message", "wire_type"), MS_CASES, ids=[c[0] for c in MS_CASES])
def test_msturn_legacy_message_kinds(tmp_path: Path, name: str, message: Message, wire_type: int) -> None:
    key = msturn.legacy_key("mrasuser", "SIP Communications Service", "pw")
    layers = _tshark(tmp_path, lambda w: w.udp(SERVER, CLIENT, message.serialize(key)))[0]
    classic = layers["classicstun"]
    assert int(classic["classicstun.type"], 16) == wire_type
    assert classic["classicstun.id"].replace(":", "") == TID16.hex()
    attrs = _classic_attrs(layers)
    assert next(iter(layers["classicstun"]["classicstun.att"])) == "Attribute: MAGIC_COOKIE"
    for a in message.attributes:
        code = f"0x{a.code:04x}"
        assert code in attrs, f"tshark did not see {code}"
        if code in EXPECTED_CLASSIC:
            name_, fields = EXPECTED_CLASSIC[code]
            assert attrs[code]["name"] == f"Attribute: {name_}"
            for field_name, value in fields.items():
                assert attrs[code][field_name] == value, (code, field_name)
    if message.has(msturn.REALM):
        # legacy lengths count the padding: 26 bytes of realm -> 28
        assert attrs["0x0015"]["classicstun.att.length"] == "28"
        realm = bytes.fromhex(attrs["0x0015"]["classicstun.att.value"].replace(":", ""))
        assert realm.rstrip(b"\0") == b"SIP Communications Service"
    assert attrs["0x0008"]["classicstun.att.length"] == "20"


def test_msturn_v3_form_is_dissected_as_stun(tmp_path: Path) -> None:
    message = msturn.build(
        MsTurnMethod.ALLOCATE,
        MessageClass.SUCCESS,
        TID12,
        attr(msturn.MS_VERSION, 3),
        attr(msturn.XOR_MAPPED_ADDRESS, MAPPED),
        attr(msturn.MAPPED_ADDRESS, RELAY),
        version=3,
    )
    key = msturn.sha256_key("u", "r", "p", "n")
    wire = message.serialize(key, integrity=(msturn.integrity_for(3),))
    layers = _tshark(tmp_path, lambda w: w.udp(SERVER, CLIENT, wire))[0]
    assert layers["stun"]["stun.type"] == "0x0103"
    assert layers["stun"]["stun.network_version"] == "3"
    attrs = _stun_attrs(layers)
    assert attrs["0x8020"]["stun.att.ipv4"] == MAPPED.host
    assert attrs["0x8020"]["stun.att.port"] == str(MAPPED.port)
    assert attrs["0x0001"]["stun.att.ipv4"] == RELAY.host
    assert attrs["0x0008"]["stun.att.length"] == "32"


def test_msturn_over_tcp_443_pseudo_tls(tmp_path: Path) -> None:
    """tshark sees the pseudo-TLS hellos; the framed MS-TURN after them is opaque to it."""
    edge = ("10.0.0.2", 443)
    allocate = msturn.build(MsTurnMethod.ALLOCATE, MessageClass.REQUEST, TID16, attr(msturn.MS_VERSION, 2))

    def write(w: PcapWriter) -> None:
        w.tcp_open(CLIENT, edge)
        w.tcp(CLIENT, edge, framing.client_hello(bytes(32)))
        w.tcp(edge, CLIENT, framing.server_hello(bytes(range(32)), bytes(range(32, 64))))
        w.tcp(CLIENT, edge, framing.frame_control(allocate.serialize()))

    frames = _tshark(tmp_path, write)
    text = json.dumps(frames)
    assert '"tls.handshake.type": "1"' in text  # Client Hello
    assert '"tls.handshake.type": "2"' in text and '"tls.handshake.type": "14"' in text
    assert '"tls.handshake.ciphersuite": "0x0018"' in text
