"""A **synthetic** record framing for the Web Conferencing Edge (PSOM, rules E9 and I4).

MS-PSOM's message syntax is not public here (research-lync-edge §3.1), and a firewall sees only the TLS
layer, which the lab runs for real. Inside TLS the lab speaks this labelled-synthetic framing, shaped like
the research recommendation: ``u32 length | u16 type | payload`` (length counts type + payload).

Types: ``JOIN`` (client → Edge, payload the conference key), ``JOINED`` (payload ``node/frontend``),
``REGISTER`` (Front End → Edge on 8057, payload the Front End's name), ``REGISTERED``, ``PING``/``PONG``,
``ERROR`` (payload a reason code).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from simulator.wire.errors import MalformedMessage

MAX_RECORD = 64 * 1024
_HEADER = struct.Struct("!IH")


class PsomType(IntEnum):
    JOIN = 1
    JOINED = 2
    REGISTER = 3
    REGISTERED = 4
    PING = 5
    PONG = 6
    ERROR = 0xFF


@dataclass(frozen=True, slots=True)
class PsomRecord:
    type: PsomType
    payload: bytes = b""

    def serialize(self) -> bytes:
        return _HEADER.pack(len(self.payload) + 2, self.type) + self.payload

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8", "replace")


class PsomFramer:
    """Stream framer: ``feed(bytes)`` returns the complete records; raises MalformedMessage(None) when lost."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[PsomRecord]:
        self._buffer += data
        records = []
        while len(self._buffer) >= _HEADER.size:
            length, kind = _HEADER.unpack_from(self._buffer)
            if length < 2 or length > MAX_RECORD:
                raise MalformedMessage(f"record length {length} out of range", None)
            if len(self._buffer) < 4 + length:
                break
            try:
                record_type = PsomType(kind)
            except ValueError:
                raise MalformedMessage(f"unknown record type {kind}", None) from None
            records.append(PsomRecord(record_type, bytes(self._buffer[6:4 + length])))
            del self._buffer[:4 + length]
        return records
