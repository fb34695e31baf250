"""Interop: every TURN / MS-TURN message kind written to a pcap and decoded by tshark.

tshark is the peer: each case lists, attribute by attribute and in order, the field values tshark must
decode, written from the values this file puts into the message (and, for derived fields such as the
XOR'd forms, from the RFC's formula applied to those values), never read back from our encoder.
"""

from __future__ import annotations

import io
import ipaddress
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
ALTERNATE = Address("198.51.100.7", 3478)
USER, REALM, NONCE = "alice", "example.org", "n0nce"
MS_USER, MS_REALM, MS_NONCE = "mrasuser", "SIP Communications Service", "abcdef0123"
TOKEN = b"token678"

COOKIE = bytes.fromhex("2112a442")  # RFC 8489 §5, written here rather than taken from our codec
MS_COOKIE = "0x72c64bc6"  # MS-TURN 2.2.2.x: the MAGIC-COOKIE attribute's value

Fields = dict[str, str]


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


def _flat(tree: dict[str, Any]) -> Fields:
    """Every leaf field of one attribute subtree (tshark nests some, e.g. DATA's ``data.len``)."""
    out: Fields = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value))
        elif isinstance(value, str):
            out.setdefault(key, value)
    return out


def _stun_attrs(layers: dict[str, Any]) -> list[tuple[str, Fields]]:
    """RFC dissector: (type code '0x0012', fields) per attribute, in wire order."""
    attributes = layers["stun"]["stun.attributes"]
    codes = _list(attributes["stun.attribute"])
    trees = _list(attributes["stun.attribute_tree"])
    assert len(codes) == len(trees)
    return [(code, _flat(tree)) for code, tree in zip(codes, trees, strict=True)]


def _classic_attrs(layers: dict[str, Any]) -> list[tuple[str, Fields]]:
    """CLASSIC-STUN dissector: (attribute name, fields) per attribute, in wire order."""
    out: list[tuple[str, Fields]] = []
    for name, tree in layers["classicstun"]["classicstun.att"].items():
        out.extend((name.removeprefix("Attribute: "), _flat(item)) for item in _list(tree))
    return out


def _check(seen: list[tuple[str, Fields]], expected: list[tuple[str, Fields]]) -> None:
    assert [key for key, _ in seen] == [key for key, _ in expected], seen
    for (key, fields), (_, wanted) in zip(seen, expected, strict=True):
        assert {name: fields.get(name) for name in wanted} == wanted, key


def hexbytes(data: bytes) -> str:
    return ":".join(f"{byte:02x}" for byte in data)


def xor_address(address: Address, tid: bytes = TID12) -> Fields:
    """tshark's fields for an XOR-*-ADDRESS carrying ``address`` (RFC 8489 §14.2)."""
    ip = ipaddress.ip_address(address.host)
    kind = f"ipv{ip.version}"
    key = COOKIE if ip.version == 4 else COOKIE + tid
    return {
        "stun.att.family": "0x01" if ip.version == 4 else "0x02",
        "stun.att.port": str(address.port),
        f"stun.att.{kind}": address.host,
        "stun.att.port-xord": hexbytes((address.port ^ int.from_bytes(COOKIE[:2], "big")).to_bytes(2, "big")),
        f"stun.att.{kind}-xord": hexbytes(bytes(a ^ b for a, b in zip(ip.packed, key, strict=True))),
    }


def plain_address(address: Address) -> Fields:
    return {"stun.att.family": "0x01", "stun.att.port": str(address.port), "stun.att.ipv4": address.host}


def error_code(code: int, reason: str, prefix: str = "stun") -> Fields:
    # RFC 8489 §14.8: class = hundreds, number = code modulo 100
    return {f"{prefix}.att.error.class": str(code // 100), f"{prefix}.att.error": str(code % 100),
            f"{prefix}.att.error.reason": reason}


# Every RFC case ends with MESSAGE-INTEGRITY (HMAC-SHA1, 20 bytes) and a FINGERPRINT tshark verifies itself.
SIGNED: list[tuple[str, Fields]] = [("0x0008", {"stun.att.length": "20"}), ("0x8028", {"stun.att.crc32.status": "1"})]

TURN_CASES: list[tuple[str, Message, int, list[tuple[str, Fields]]]] = [
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
            attr(stun.USERNAME, USER),
            attr(stun.REALM, REALM),
            attr(stun.NONCE, NONCE),
            dialect=turn.RFC,
        ),
        0x0003,
        [
            ("0x0019", {"stun.att.transp": "0x11", "stun.att.reserved": "00:00:00"}),  # UDP is protocol 17
            ("0x000d", {"stun.att.lifetime": "600"}),
            ("0x001a", {"stun.att.length": "0"}),  # RFC 8656 §18.8: no value
            ("0x0018", {"stun.att.even-port.reserve-next": "1"}),
            ("0x0017", {"stun.att.family": "0x01", "stun.att.reserved": "00:00:00"}),
            ("0x8000", {"stun.value": "02:00:00:00"}),  # RFC 8656 §18.12: IPv6, then 3 reserved bytes
            ("0x0006", {"stun.att.username": USER}),
            ("0x0014", {"stun.att.realm": REALM}),
            ("0x0015", {"stun.att.nonce": NONCE}),
            *SIGNED,
        ],
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
                attr(turn.RESERVATION_TOKEN, TOKEN),
            ),
            turn.RFC,
        ),
        0x0103,
        [
            ("0x0016", xor_address(RELAY)),
            ("0x0020", xor_address(MAPPED)),
            ("0x000d", {"stun.att.lifetime": "600"}),
            ("0x0022", {"stun.att.token": hexbytes(TOKEN)}),
            *SIGNED,
        ],
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
                attr(stun.ALTERNATE_SERVER, ALTERNATE),
            ),
            turn.RFC,
        ),
        0x0113,
        [
            ("0x0009", {**error_code(440, "Address Family not Supported"), "stun.att.reserved": "00:00"}),
            # RFC 8656 §18.14: family, reserved, class, number, reason (tshark 4.0 shows it raw)
            ("0x8001", {"stun.value": hexbytes(bytes([2, 0, 4, 40]) + b"no v6")}),
            ("0x8023", plain_address(ALTERNATE)),
            *SIGNED,
        ],
    ),
    (
        "refresh",
        stun.request(TurnMethod.REFRESH, TID12, attr(turn.LIFETIME, 0), dialect=turn.RFC),
        0x0004,
        [("0x000d", {"stun.att.lifetime": "0"}), *SIGNED],
    ),
    (
        "send",
        stun.indication(
            TurnMethod.SEND, TID12, attr(turn.XOR_PEER_ADDRESS, PEER6), attr(turn.DATA, b"xyz"), dialect=turn.RFC
        ),
        0x0016,
        [
            ("0x0012", xor_address(PEER6)),
            ("0x0013", {"stun.value": hexbytes(b"xyz"), "data.len": "3"}),
            *SIGNED,
        ],
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
        [
            ("0x0012", xor_address(PEER4)),
            ("0x0013", {"stun.value": hexbytes(b"hello"), "data.len": "5"}),
            # RFC 8656 §18.13: 2 reserved (zero) bytes, then type and code. Wireshark (4.0 and its current
            # dissector) reads type/code at offsets 0 and 1, i.e. the reserved bytes: they must read 0.
            ("0x8004", {"stun.att.length": "8", "stun.att.icmp.type": "0", "stun.att.icmp.code": "0"}),
            *SIGNED,
        ],
    ),
    (
        "create-permission",
        stun.request(TurnMethod.CREATE_PERMISSION, TID12, attr(turn.XOR_PEER_ADDRESS, PEER4), dialect=turn.RFC),
        0x0008,
        [("0x0012", xor_address(PEER4)), *SIGNED],
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
        [("0x000c", {"stun.att.channelnum": "0x4001", "stun.att.reserved": "00:00"}), ("0x0012", xor_address(PEER4)),
         *SIGNED],
    ),
    (
        "connect",
        stun.request(TurnMethod.CONNECT, TID12, attr(turn.XOR_PEER_ADDRESS, PEER4), dialect=turn.RFC),
        0x000A,
        [("0x0012", xor_address(PEER4)), *SIGNED],
    ),
    (
        "connection-bind",
        stun.request(TurnMethod.CONNECTION_BIND, TID12, attr(turn.CONNECTION_ID, 0xDEADBEEF), dialect=turn.RFC),
        0x000B,
        [("0x002a", {"stun.att.length": "4", "stun.value": "de:ad:be:ef"}), *SIGNED],
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
        [("0x002a", {"stun.value": "00:00:00:07"}), ("0x0012", xor_address(PEER4)), *SIGNED],
    ),
]


@pytest.mark.parametrize(("name", "message", "wire_type", "expected"), TURN_CASES, ids=[c[0] for c in TURN_CASES])
def test_turn_message_kinds(tmp_path: Path, name: str, message: Message, wire_type: int,
                            expected: list[tuple[str, Fields]]) -> None:
    key = stun.long_term_key(USER, REALM, "secret")
    layers = _tshark(tmp_path, lambda w: w.udp(CLIENT, SERVER, message.serialize(key, fingerprint=True)))[0]
    header = layers["stun"]
    assert int(header["stun.type"], 16) == wire_type
    assert (header["stun.cookie"], header["stun.id"]) == (hexbytes(COOKIE), hexbytes(TID12))
    _check(_stun_attrs(layers), expected)


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


def legacy_text(text: str) -> Fields:
    """MS-TURN legacy text attribute: NUL-padded to 4, and the length counts the padding."""
    padded = text.encode().ljust(-(-len(text) // 4) * 4, b"\0")
    return {"classicstun.att.length": str(len(padded)), "classicstun.att.value": hexbytes(padded)}


def legacy_address(address: Address) -> Fields:
    return {"classicstun.att.family": "0x0001", "classicstun.att.port": str(address.port),
            "classicstun.att.ipv4": address.host}


def legacy_xor_address(address: Address) -> Fields:
    """The legacy header has no magic cookie: the XOR key is the transaction ID's first 4 bytes."""
    key = TID16[:4]
    xored = bytes(a ^ b for a, b in zip(ipaddress.ip_address(address.host).packed, key, strict=True))
    return {**legacy_address(address), "classicstun.att.port-xord": str(address.port ^ int.from_bytes(key[:2], "big")),
            "classicstun.att.ipv4-xord": str(ipaddress.ip_address(xored))}


COOKIE_ATTR = ("MAGIC_COOKIE", {"classicstun.att.length": "4", "classicstun.att.magic.cookie": MS_COOKIE})
# tshark's classic dissector does not know MS-VERSION (0x8008), MS-SEQUENCE-NUMBER (0x8050) or
# MS-SERVICE-QUALITY (0x8055): only their lengths (MS-TURN 2.2.2.17, .19, .20) can be compared there;
# test_msturn_v3_form_is_dissected_as_stun compares their values with the RFC dissector.
MS_VERSION_LEN = ("Unknown (0x8008)", {"classicstun.att.length": "4"})
SEQUENCE_LEN = ("Unknown (0x8050)", {"classicstun.att.length": "24"})
LEGACY_MI = ("MESSAGE-INTEGRITY", {"classicstun.att.length": "20"})

MS_CASES: list[tuple[str, Message, int, list[tuple[str, Fields]]]] = [
    (
        "allocate",
        msturn.build(
            MsTurnMethod.ALLOCATE,
            MessageClass.REQUEST,
            TID16,
            attr(msturn.MS_VERSION, 2),
            attr(msturn.USERNAME, MS_USER),
            attr(msturn.REALM, MS_REALM),
            attr(msturn.NONCE, MS_NONCE),
            attr(msturn.BANDWIDTH, 1000),
            attr(msturn.LIFETIME, 480),
            attr(msturn.MS_SERVICE_QUALITY, ServiceQuality(1, 0)),
        ),
        0x0003,
        [
            COOKIE_ATTR,
            MS_VERSION_LEN,
            ("USERNAME", legacy_text(MS_USER)),
            ("REALM", legacy_text(MS_REALM)),  # 26 bytes of realm: length 28
            ("NONCE", legacy_text(MS_NONCE)),
            ("BANDWIDTH", {"classicstun.att.bandwidth": "1000"}),
            ("LIFETIME", {"classicstun.att.lifetime": "480"}),
            ("Unknown (0x8055)", {"classicstun.att.length": "4"}),
            LEGACY_MI,
        ],
    ),
    (
        "allocate-401",
        msturn.build(
            MsTurnMethod.ALLOCATE,
            MessageClass.ERROR,
            TID16,
            attr(msturn.ERROR_CODE, stun.ErrorCode(401, "Unauthorized")),
            attr(msturn.REALM, MS_REALM),
            attr(msturn.NONCE, MS_NONCE),
            attr(msturn.ALTERNATE_SERVER, ALTERNATE),
        ),
        0x0113,
        [
            COOKIE_ATTR,
            ("ERROR-CODE", error_code(401, "Unauthorized", "classicstun")),
            ("REALM", legacy_text(MS_REALM)),
            ("NONCE", legacy_text(MS_NONCE)),
            ("ALTERNATE_SERVER", legacy_address(ALTERNATE)),
            LEGACY_MI,
        ],
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
        [
            COOKIE_ATTR,
            ("MAPPED-ADDRESS", legacy_address(RELAY)),
            ("XOR_MAPPED_ADDRESS", legacy_xor_address(MAPPED)),
            ("LIFETIME", {"classicstun.att.lifetime": "480"}),
            SEQUENCE_LEN,
            LEGACY_MI,
        ],
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
        [
            COOKIE_ATTR,
            ("DESTINATION_ADDRESS", legacy_address(PEER4)),
            ("DATA", {"classicstun.att.data": hexbytes(b"rtp!"), "data.len": "4"}),
            SEQUENCE_LEN,
            LEGACY_MI,
        ],
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
        0x0115,  # MS-TURN 2.2.1: the Data indication's own type
        [
            COOKIE_ATTR,
            ("REMOTE_ADDRESS", legacy_address(PEER4)),
            ("DATA", {"classicstun.att.data": hexbytes(b"rtp?"), "data.len": "4"}),
            LEGACY_MI,
        ],
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
        [COOKIE_ATTR, ("DESTINATION_ADDRESS", legacy_address(PEER4)), SEQUENCE_LEN, LEGACY_MI],
    ),
    (
        "set-active-destination-success",
        msturn.build(MsTurnMethod.SET_ACTIVE_DESTINATION, MessageClass.SUCCESS, TID16),
        0x0106,
        [COOKIE_ATTR, LEGACY_MI],
    ),
]


@pytest.mark.parametrize(("name", "message", "wire_type", "expected"), MS_CASES, ids=[c[0] for c in MS_CASES])
def test_msturn_legacy_message_kinds(tmp_path: Path, name: str, message: Message, wire_type: int,
                                     expected: list[tuple[str, Fields]]) -> None:
    key = msturn.legacy_key(MS_USER, MS_REALM, "pw")
    layers = _tshark(tmp_path, lambda w: w.udp(SERVER, CLIENT, message.serialize(key)))[0]
    classic = layers["classicstun"]
    assert int(classic["classicstun.type"], 16) == wire_type
    assert classic["classicstun.id"] == hexbytes(TID16)
    _check(_classic_attrs(layers), expected)


def test_msturn_v3_form_is_dissected_as_stun(tmp_path: Path) -> None:
    """MS-TURN v3 (RFC 5389 header): tshark's STUN dissector decodes the MS-TURN attributes' values."""
    message = msturn.build(
        MsTurnMethod.ALLOCATE,
        MessageClass.SUCCESS,
        TID12,
        attr(msturn.MS_VERSION, 3),
        attr(msturn.USERNAME, MS_USER),
        attr(msturn.REALM, MS_REALM),
        attr(msturn.NONCE, MS_NONCE),
        attr(msturn.BANDWIDTH, 1500),
        attr(msturn.LIFETIME, 480),
        attr(msturn.MS_SERVICE_QUALITY, ServiceQuality(2, 1)),
        attr(msturn.MS_SEQUENCE_NUMBER, SequenceNumber(bytes(range(40, 60)), 77)),
        attr(msturn.DESTINATION_ADDRESS, PEER4),
        attr(msturn.XOR_MAPPED_ADDRESS, MAPPED),
        attr(msturn.MAPPED_ADDRESS, RELAY),
        attr(msturn.MS_ALTERNATE_MAPPED_ADDRESS, ALTERNATE),
        version=3,
    )
    key = msturn.sha256_key(MS_USER, MS_REALM, "p", MS_NONCE)
    wire = message.serialize(key, integrity=(msturn.integrity_for(3),))
    layers = _tshark(tmp_path, lambda w: w.udp(SERVER, CLIENT, wire))[0]
    assert layers["stun"]["stun.type"] == "0x0103"
    assert layers["stun"]["stun.network_version"] == "3"
    _check(_stun_attrs(layers), [
        ("0x000f", {"stun.att.magic_cookie": MS_COOKIE}),
        ("0x8008", {"stun.att.ms.version": "3"}),
        ("0x0006", {"stun.att.username": MS_USER}),
        # MS-TURN 2.2.2.13/.14 swap REALM (0x0015) and NONCE (0x0014); tshark names them by RFC 5389 codes.
        ("0x0015", {"stun.att.nonce": MS_REALM, "stun.att.length": "26"}),
        ("0x0014", {"stun.att.realm": MS_NONCE, "stun.att.length": "10"}),
        ("0x0010", {"stun.port.bandwidth": "1500"}),
        ("0x000d", {"stun.att.lifetime": "480"}),
        ("0x8055", {"stun.att.ms.stream_type": "2", "stun.att.ms.service_quality": "1"}),
        ("0x8050", {"stun.att.ms.connection_id": hexbytes(bytes(range(40, 60))), "stun.att.ms.sequence_number": "77"}),
        ("0x0011", plain_address(PEER4)),
        ("0x8020", xor_address(MAPPED)),
        ("0x0001", plain_address(RELAY)),
        ("0x8090", plain_address(ALTERNATE)),
        ("0x0008", {"stun.att.length": "32"}),  # MS-TURN v3: HMAC-SHA256
    ])


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
