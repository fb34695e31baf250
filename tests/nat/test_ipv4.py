"""IPv4/UDP packet codec: a packet captured from the kernel, round trips, and never-crash parsing."""

from __future__ import annotations

import contextlib
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.wire.errors import MalformedMessage
from simulator.wire.ipv4 import (
    IPV4_HEADER_SIZE,
    MAX_UDP_PAYLOAD,
    UdpDatagram,
    build_udp,
    internet_checksum,
    parse_ipv4,
    parse_udp,
)

# Written by the Linux kernel (6.18) to a TUN device: a UDP socket in a namespace sent b"hi" from
# 10.77.0.2:34600 to 127.79.53.1:3478 (DF set, id 0x9857, TTL 64).
KERNEL_PACKET = bytes.fromhex("4500001e985740004011e3d80a4d00027f4f350187280d96000a44136869")

ipv4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
ports = st.integers(0, 65535)
datagrams = st.builds(
    UdpDatagram, st.tuples(ipv4, ports), st.tuples(ipv4, ports), st.binary(max_size=1500)
)


def test_kernel_packet_parses_with_valid_checksums() -> None:
    datagram = parse_udp(KERNEL_PACKET)
    assert datagram == UdpDatagram(("10.77.0.2", 34600), ("127.79.53.1", 3478), b"hi")
    header = parse_ipv4(KERNEL_PACKET)
    assert (header.ttl, header.identification, header.protocol) == (64, 0x9857, 17)


def test_build_reproduces_the_kernel_packet_byte_for_byte() -> None:
    datagram = parse_udp(KERNEL_PACKET)
    assert build_udp(datagram, identification=0x9857) == KERNEL_PACKET


def test_rfc1071_example() -> None:
    # RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to 0xddf2 (checksum = its complement)
    assert internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == ~0xDDF2 & 0xFFFF


@pytest.mark.parametrize(
    ("offset", "reason"),
    [(10, "header checksum"), (26, "UDP: bad checksum"), (29, "UDP: bad checksum"), (0, "version")],
)
def test_corruption_is_detected(offset: int, reason: str) -> None:
    corrupted = bytearray(KERNEL_PACKET)
    corrupted[offset] ^= 0x20 if offset == 0 else 0x01
    with pytest.raises(MalformedMessage, match=reason) as caught:
        parse_udp(bytes(corrupted))
    assert caught.value.status is None


def test_fragments_and_other_protocols_are_refused() -> None:
    fragment = bytearray(KERNEL_PACKET)
    fragment[6] |= 0x20  # More Fragments
    fragment[10:12] = b"\x00\x00"
    fragment[10:12] = internet_checksum(bytes(fragment[:IPV4_HEADER_SIZE])).to_bytes(2, "big")
    with pytest.raises(MalformedMessage, match="fragment"):
        parse_udp(bytes(fragment))
    tcp = bytearray(KERNEL_PACKET)
    tcp[9] = 6
    tcp[10:12] = b"\x00\x00"
    tcp[10:12] = internet_checksum(bytes(tcp[:IPV4_HEADER_SIZE])).to_bytes(2, "big")
    assert parse_ipv4(bytes(tcp)).protocol == 6
    with pytest.raises(MalformedMessage, match="not UDP"):
        parse_udp(bytes(tcp))


def test_zero_udp_checksum_means_none() -> None:
    packet = bytearray(KERNEL_PACKET)
    packet[26:28] = b"\x00\x00"  # RFC 768: no checksum
    assert parse_udp(bytes(packet)).payload == b"hi"


def test_build_refuses_bad_input() -> None:
    with pytest.raises(ValueError):
        build_udp(UdpDatagram(("10.0.0.1", 1), ("::1", 2), b""))
    with pytest.raises(ValueError):
        build_udp(UdpDatagram(("10.0.0.1", 70000), ("10.0.0.2", 2), b""))
    with pytest.raises(ValueError):
        build_udp(UdpDatagram(("10.0.0.1", 1), ("10.0.0.2", 2), bytes(MAX_UDP_PAYLOAD + 1)))


@settings(max_examples=300, deadline=None)
@given(datagrams, st.integers(1, 255), st.integers(0, 65535))
def test_round_trip(datagram: UdpDatagram, ttl: int, identification: int) -> None:
    packet = build_udp(datagram, ttl=ttl, identification=identification)
    assert parse_udp(packet) == datagram
    header = parse_ipv4(packet)
    assert (header.ttl, header.identification) == (ttl, identification)
    assert internet_checksum(packet[:IPV4_HEADER_SIZE]) == 0


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_crash(data: bytes) -> None:
    with contextlib.suppress(MalformedMessage):
        parse_udp(data)


@settings(max_examples=500, deadline=None)
@given(datagrams, st.data())
def test_mutated_packets_parse_or_raise_malformed(datagram: UdpDatagram, data: st.DataObject) -> None:
    packet = bytearray(build_udp(datagram))
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(packet) - 1))
        packet[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(packet)))
    with contextlib.suppress(MalformedMessage):
        parse_udp(bytes(packet[:cut]))
