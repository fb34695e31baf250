"""RFC 4571 framing for ICE over TCP (RFC 6544 §3): each STUN message or media packet is preceded by its
length as a 16-bit big-endian integer. ``frame()`` adds it; :class:`Rfc4571Framer` cuts a byte stream back
into packets, whatever the split of the reads."""

from __future__ import annotations

MAX_PACKET = 0xFFFF


def frame(packet: bytes) -> bytes:
    if len(packet) > MAX_PACKET:
        raise ValueError("RFC 4571 packets are at most 65535 bytes")
    return len(packet).to_bytes(2, "big") + packet


class Rfc4571Framer:
    """Incremental deframer: ``feed(data)`` returns the complete packets so far, keeps the rest."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer
        buffer += data
        out: list[bytes] = []
        pos = 0
        while len(buffer) - pos >= 2:
            size = int.from_bytes(buffer[pos : pos + 2], "big")
            if len(buffer) - pos - 2 < size:
                break
            out.append(bytes(buffer[pos + 2 : pos + 2 + size]))
            pos += 2 + size
        del buffer[:pos]
        return out
