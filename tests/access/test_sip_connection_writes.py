"""SipConnection coalesces the writes of one event-loop turn: same bytes, same order, fewer writes."""

from __future__ import annotations

import asyncio

import pytest

from simulator.net.transport.listener import READ_SIZE
from simulator.net.transport.sip_connection import FLUSH_EVERY, SipConnection
from simulator.wire.sip import SipStreamFramer, parse_message
from tests.sip.corpus import ALL


class RecordingStream:
    """A ByteStream that keeps what is written; ``drain`` fails once the peer is gone."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.drains = 0
        self.lost = False
        self.closed = False

    async def read(self, limit: int = READ_SIZE) -> bytes:
        return b""

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    async def drain(self) -> None:
        self.drains += 1
        if self.lost:
            raise ConnectionResetError("Connection lost")

    async def close(self) -> None:
        self.closed = True


def _connection(stream: RecordingStream) -> SipConnection:
    return SipConnection(stream, peer=("127.77.0.1", 5061), local=("127.77.0.2", 40000))


async def test_sends_of_one_turn_leave_in_few_writes_in_order() -> None:
    """One write per FLUSH_EVERY messages (the rest at the end of the turn), never one per message."""
    stream = RecordingStream()
    connection = _connection(stream)
    names = sorted(ALL)
    assert len(names) > FLUSH_EVERY  # the corpus crosses the threshold at least once
    await asyncio.gather(*(connection.send(parse_message(ALL[name])) for name in names))
    await asyncio.sleep(0)
    assert len(stream.writes) == -(-len(names) // FLUSH_EVERY) and stream.drains == len(names)
    framer = SipStreamFramer()
    framer.feed(b"".join(stream.writes))
    assert list(framer.events()) == [parse_message(ALL[name]) for name in names]
    written = len(stream.writes)
    await connection.send_bytes(b"\r\n")
    assert len(stream.writes) == written  # one message queued: written at the end of this turn
    await asyncio.sleep(0)
    assert stream.writes[written:] == [b"\r\n"]


async def test_close_flushes_what_is_queued_then_refuses() -> None:
    stream = RecordingStream()
    connection = _connection(stream)
    await connection.send_bytes(b"one")
    await connection.send_bytes(b"two")
    await connection.close()
    assert stream.writes == [b"onetwo"] and stream.closed
    with pytest.raises(ConnectionResetError):
        await connection.send_bytes(b"three")
    await asyncio.sleep(0)
    assert stream.writes == [b"onetwo"]


async def test_a_lost_connection_still_fails_the_sender() -> None:
    stream = RecordingStream()
    stream.lost = True
    connection = _connection(stream)
    with pytest.raises(ConnectionResetError):
        await connection.send_bytes(b"x")
    connection.flush()
    assert stream.writes == [b"x"]  # handed to the stream, which drops it as a closed transport does
