"""IPv4 + UDP packets, sans-I/O: what the NAT box reads from and writes to a TUN device.

Public API
----------
- :func:`build_udp(datagram) <build_udp>` returns one IPv4 packet (20-byte header, no options, DF set)
  carrying one UDP datagram, with both checksums filled in.
- :func:`parse_ipv4(packet) <parse_ipv4>` returns the :class:`Ipv4Packet` (header fields and payload)
  after checking version, lengths and the header checksum.
- :func:`parse_udp(packet) <parse_udp>` returns the :class:`UdpDatagram` of an IPv4/UDP packet,
  checking the UDP length and checksum too.
- :func:`internet_checksum` is the RFC 1071 one's-complement sum.

Both parsers raise only :class:`~simulator.wire.errors.MalformedMessage` with ``status=None`` (a NAT
drops bad packets silently). Fragments are refused: the NAT box has no reassembly, and a TUN in a lab
namespace with MTU 1500 never sees UDP fragments from the small messages the lab sends.
"""

from __future__ import annotations

import ipaddress
import struct
import sys
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from simulator.wire.errors import MalformedMessage

Address = tuple[str, int]

IPV4_HEADER_SIZE: Final = 20  # RFC 791 §3.1: IHL 5, no options
UDP_HEADER_SIZE: Final = 8  # RFC 768
MAX_IPV4_PACKET: Final = 65535  # RFC 791 §3.1: Total Length is 16 bits
MAX_UDP_PAYLOAD: Final = MAX_IPV4_PACKET - IPV4_HEADER_SIZE - UDP_HEADER_SIZE
DEFAULT_TTL: Final = 64  # RFC 1700 / RFC 5735-era default

_IPV4_HEADER: Final = struct.Struct("!BBHHHBBH4s4s")
_UDP_HEADER: Final = struct.Struct("!HHHH")
_PSEUDO_HEADER: Final = struct.Struct("!4s4sBBH")
_FLAG_DF: Final = 0x4000  # RFC 791 §3.1: Don't Fragment
_FLAG_MF: Final = 0x2000  # RFC 791 §3.1: More Fragments
_FRAGMENT_OFFSET_MASK: Final = 0x1FFF


class IpProtocol(IntEnum):
    """IANA protocol numbers the NAT box names in its counters."""

    ICMP = 1
    TCP = 6
    UDP = 17


@dataclass(frozen=True, slots=True)
class Ipv4Packet:
    """An IPv4 packet: the header fields the NAT box needs and the payload (options are skipped)."""

    src: str
    dst: str
    protocol: int
    ttl: int
    identification: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class UdpDatagram:
    """A UDP datagram with its IPv4 addresses: from ``src`` to ``dst``."""

    src: Address
    dst: Address
    payload: bytes


def internet_checksum(data: bytes) -> int:
    """RFC 1071 checksum: the one's complement of the one's-complement sum of 16-bit words."""
    if len(data) % 2:
        data += b"\x00"  # RFC 1071 §4.1: pad an odd byte with zero
    total = sum(memoryview(data).cast("H"))  # native order; folded and swapped back below
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    # Summing in native order and swapping at the end is RFC 1071 §2(B): byte order independence.
    folded = int.from_bytes(total.to_bytes(2, sys.byteorder), "big")
    return ~folded & 0xFFFF


def _packed(ip: str) -> bytes:
    try:
        return ipaddress.IPv4Address(ip).packed
    except ValueError as exc:
        raise ValueError(f"not an IPv4 address: {ip!r}") from exc


def _udp_checksum(src: bytes, dst: bytes, udp: bytes) -> int:
    pseudo = _PSEUDO_HEADER.pack(src, dst, 0, IpProtocol.UDP, len(udp))  # RFC 768: pseudo-header
    checksum = internet_checksum(pseudo + udp)
    return checksum or 0xFFFF  # RFC 768: a computed zero is sent as all ones


def build_udp(datagram: UdpDatagram, *, ttl: int = DEFAULT_TTL, identification: int = 0) -> bytes:
    """One IPv4 packet carrying ``datagram``, both checksums set.

    Raises ``ValueError`` for a bad address, port or TTL, or a payload above :data:`MAX_UDP_PAYLOAD`.
    """
    (src_ip, src_port), (dst_ip, dst_port) = datagram.src, datagram.dst
    if not (0 <= src_port <= 0xFFFF and 0 <= dst_port <= 0xFFFF):
        raise ValueError("UDP ports are 16 bits")
    if not 1 <= ttl <= 255:
        raise ValueError("TTL is 1..255")
    if len(datagram.payload) > MAX_UDP_PAYLOAD:
        raise ValueError(f"UDP payload of {len(datagram.payload)} bytes does not fit one IPv4 packet")
    src, dst = _packed(src_ip), _packed(dst_ip)
    udp_length = UDP_HEADER_SIZE + len(datagram.payload)
    udp = _UDP_HEADER.pack(src_port, dst_port, udp_length, 0) + datagram.payload
    udp = udp[:6] + _udp_checksum(src, dst, udp).to_bytes(2, "big") + udp[8:]
    total_length = IPV4_HEADER_SIZE + udp_length
    header = _IPV4_HEADER.pack(
        0x45, 0, total_length, identification & 0xFFFF, _FLAG_DF, ttl, IpProtocol.UDP, 0, src, dst
    )
    header = header[:10] + internet_checksum(header).to_bytes(2, "big") + header[12:]
    return header + udp


def parse_ipv4(packet: bytes) -> Ipv4Packet:
    """Parse and check an IPv4 header (RFC 791 §3.1). Raises ``MalformedMessage(status=None)``."""
    if len(packet) < IPV4_HEADER_SIZE:
        raise MalformedMessage("IPv4: shorter than a header", status=None)
    version_ihl, _tos, total_length, identification, flags_fragment, ttl, protocol, _sum, src, dst = (
        _IPV4_HEADER.unpack_from(packet)
    )
    if version_ihl >> 4 != 4:
        raise MalformedMessage(f"IPv4: version {version_ihl >> 4}", status=None)
    header_length = (version_ihl & 0x0F) * 4
    if header_length < IPV4_HEADER_SIZE:
        raise MalformedMessage("IPv4: IHL below 5", status=None)
    if total_length < header_length or total_length > len(packet):
        raise MalformedMessage("IPv4: total length does not match the packet", status=None)
    if internet_checksum(packet[:header_length]) != 0:
        raise MalformedMessage("IPv4: bad header checksum", status=None)
    if flags_fragment & (_FLAG_MF | _FRAGMENT_OFFSET_MASK):
        raise MalformedMessage("IPv4: fragment (no reassembly)", status=None)
    return Ipv4Packet(
        src=str(ipaddress.IPv4Address(src)),
        dst=str(ipaddress.IPv4Address(dst)),
        protocol=protocol,
        ttl=ttl,
        identification=identification,
        payload=bytes(packet[header_length:total_length]),  # RFC 791: bytes past Total Length are padding
    )


def parse_udp(packet: bytes) -> UdpDatagram:
    """Parse an IPv4/UDP packet and check the UDP checksum (RFC 768). Raises ``MalformedMessage``."""
    ip = parse_ipv4(packet)
    if ip.protocol != IpProtocol.UDP:
        raise MalformedMessage(f"IPv4: protocol {ip.protocol} is not UDP", status=None)
    udp = ip.payload
    if len(udp) < UDP_HEADER_SIZE:
        raise MalformedMessage("UDP: shorter than a header", status=None)
    src_port, dst_port, length, checksum = _UDP_HEADER.unpack_from(udp)
    if length < UDP_HEADER_SIZE or length > len(udp):
        raise MalformedMessage("UDP: length does not match the packet", status=None)
    udp = udp[:length]
    if checksum:  # RFC 768: zero means the sender computed no checksum
        pseudo = _PSEUDO_HEADER.pack(_packed(ip.src), _packed(ip.dst), 0, IpProtocol.UDP, length)
        if internet_checksum(pseudo + udp) != 0:
            raise MalformedMessage("UDP: bad checksum", status=None)
    return UdpDatagram((ip.src, src_port), (ip.dst, dst_port), bytes(udp[UDP_HEADER_SIZE:]))
