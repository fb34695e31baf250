"""A tiny pcap writer (libpcap format, LINKTYPE_RAW): what tests and the lab send, for Wireshark.

Public API
----------
- ``PcapWriter(stream)``: writes the global header; ``udp(src, dst, payload, ts=...)`` writes an
  IPv4/IPv6 + UDP packet; ``tcp_open(client, server)`` writes a SYN/SYN-ACK/ACK and
  ``tcp(src, dst, payload)`` a PSH/ACK segment with per-direction sequence numbers, so tshark
  reassembles the stream. Checksums are zero (UDP over IPv4 allows it; tshark does not verify TCP
  checksums by default). ``src``/``dst`` are ``(host, port)`` tuples.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import BinaryIO

HostPort = tuple[str, int]

LINKTYPE_RAW = 101  # tcpdump.org link types: raw IPv4/IPv6
_GLOBAL = struct.Struct("<IHHiIII")
_RECORD = struct.Struct("<IIII")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_UDP = struct.Struct("!HHHH")
_TCP = struct.Struct("!HHIIBBHHH")

TCP_FIN, TCP_SYN, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x08, 0x10


class PcapWriter:
    def __init__(self, stream: BinaryIO, snaplen: int = 262144) -> None:
        self._stream = stream
        self._time = 0.0
        self._ident = 0
        self._seq: dict[tuple[HostPort, HostPort], int] = {}
        stream.write(_GLOBAL.pack(0xA1B2C3D4, 2, 4, 0, 0, snaplen, LINKTYPE_RAW))

    def _ip(self, src: str, dst: str, proto: int, payload: bytes) -> bytes:
        s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
        if s.version == 4:
            self._ident = (self._ident + 1) & 0xFFFF
            total = 20 + len(payload)
            head = _IPV4.pack(0x45, 0, total, self._ident, 0x4000, 64, proto, 0, s.packed, d.packed)
            checksum = _ones_complement(head)
            return head[:10] + struct.pack("!H", checksum) + head[12:] + payload
        return _IPV6.pack(6 << 28, len(payload), proto, 64, s.packed, d.packed) + payload

    def _record(self, packet: bytes, ts: float | None) -> None:
        self._time = self._time + 0.001 if ts is None else ts
        sec = int(self._time)
        usec = round((self._time - sec) * 1_000_000)
        self._stream.write(_RECORD.pack(sec, usec, len(packet), len(packet)) + packet)

    def udp(self, src: HostPort, dst: HostPort, payload: bytes, ts: float | None = None) -> None:
        segment = _UDP.pack(src[1], dst[1], 8 + len(payload), 0) + payload
        self._record(self._ip(src[0], dst[0], 17, segment), ts)

    def _tcp(self, src: HostPort, dst: HostPort, flags: int, payload: bytes, ts: float | None) -> None:
        seq = self._seq.setdefault((src, dst), 1000)
        ack = self._seq.get((dst, src), 0)
        segment = _TCP.pack(src[1], dst[1], seq, ack, 5 << 4, flags, 65535, 0, 0) + payload
        self._seq[(src, dst)] = (seq + len(payload) + (1 if flags & (TCP_SYN | TCP_FIN) else 0)) & 0xFFFFFFFF
        self._record(self._ip(src[0], dst[0], 6, segment), ts)

    def tcp_open(self, client: HostPort, server: HostPort) -> None:
        """Three-way handshake so Wireshark sees the stream from its start."""
        self._tcp(client, server, TCP_SYN, b"", None)
        self._tcp(server, client, TCP_SYN | TCP_ACK, b"", None)
        self._tcp(client, server, TCP_ACK, b"", None)

    def tcp(self, src: HostPort, dst: HostPort, payload: bytes, ts: float | None = None) -> None:
        self._tcp(src, dst, TCP_PSH | TCP_ACK, payload, ts)


def _ones_complement(data: bytes) -> int:
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
