"""SipConnection cuts whole messages out of a read itself and hands the rest to the codec's stream framer: what
it yields (messages) and what it writes back (keepalive answers, answers to malformed requests) is what the framer
gives for the same bytes, however the stream is cut into reads.
"""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.net.transport.sip_connection import SipConnection
from simulator.wire.errors import MalformedMessage
from simulator.wire.sip import SipStreamFramer


class _Stream:
    """A ByteStream that hands out given chunks, then EOF; records what is written."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.written: list[bytes] = []

    async def read(self, limit: int = 65536) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""

    def write(self, data: bytes) -> None:
        self.written.append(data)

    async def drain(self) -> None:
        return None

    async def close(self) -> None:
        return None


_GOOD = (b"MESSAGE sip:b@contoso.com SIP/2.0\r\nVia: SIP/2.0/TLS h;branch=z9hG4bK%d\r\nFrom: <sip:a@contoso.com>;tag=1"
         b"\r\nTo: <sip:b@contoso.com>\r\nCall-ID: %d\r\nCSeq: 1 MESSAGE\r\nContent-Length: 3\r\n\r\nabc")
_RESPONSE = (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TLS h;branch=z9hG4bK%d\r\nFrom: <sip:a@contoso.com>;tag=1\r\n"
             b"To: <sip:b@contoso.com>;tag=2\r\nCall-ID: %d\r\nCSeq: 1 MESSAGE\r\nl: 0\r\n\r\n")
_SIPFRAG = _RESPONSE % (7, 7)  # a body that is itself a message: never to be read as one
_PIECES = [_GOOD, _RESPONSE, b"\r\n\r\n", b"\r\n",
           b"NOTIFY sip:b@contoso.com SIP/2.0\r\nVia: SIP/2.0/TLS h;branch=z9hG4bKn%d\r\nFrom: <sip:a@contoso.com>;"
           b"tag=1\r\nTo: <sip:b@contoso.com>;tag=2\r\nCall-ID: %d\r\nCSeq: 2 NOTIFY\r\nEvent: refer\r\n"
           b"Content-Type: message/sipfrag\r\nContent-Length: " + str(len(_SIPFRAG)).encode() + b"\r\n\r\n"
           + _SIPFRAG.replace(b"%", b"%%"),
           b"MESSAGE sip:b@contoso.com SIP/2.0\r\nVia: SIP/2.0/TLS h;branch=z9hG4bKq\r\nCSeq: 1 MESSAGE\r\n"
           b"Content-Length: 0\r\n\r\n",  # no From, To, Call-ID: answered 400
           b"MESSAGE sip:b@contoso.com SIP/2.0\r\nVia: SIP/2.0/TLS h;branch=z9hG4bKz\r\nContent-Length: x\r\n\r\n"]


async def _through_connection(chunks: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    stream = _Stream(list(chunks))
    connection = SipConnection(stream, peer=("127.67.0.2", 1), local=("127.67.0.1", 2))
    seen: list[bytes] = []
    async for message in connection.messages():
        seen.append(message.encode())
    connection.flush()
    return seen, stream.written


def _through_framer(data: bytes) -> tuple[list[bytes], int]:
    framer = SipStreamFramer()
    framer.feed(data)
    seen: list[bytes] = []
    faults = 0
    while not framer.broken:
        try:
            event = framer.next_event()
        except MalformedMessage:
            faults += 1
            continue
        if event is None:
            break
        if hasattr(event, "encode"):
            seen.append(event.encode())
    return seen, faults


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(_PIECES) - 1), st.integers(0, 9)), min_size=1, max_size=8),
       st.lists(st.integers(1, 400), min_size=1, max_size=12))
def test_the_connection_yields_what_the_framer_yields(picks: list[tuple[int, int]], cuts: list[int]) -> None:
    data = b"".join(_PIECES[p] % (n, n) if b"%d" in _PIECES[p] else _PIECES[p] for p, n in picks)
    chunks: list[bytes] = []
    rest = data
    for cut in cuts:
        if not rest:
            break
        chunks.append(rest[:cut])
        rest = rest[cut:]
    if rest:
        chunks.append(rest)
    seen, written = asyncio.run(_through_connection(chunks))
    expected, _ = _through_framer(data)
    assert seen == expected
    # what the connection wrote back (pongs, 400s) is what one read of the whole stream gives
    _, written_whole = asyncio.run(_through_connection([data]))
    assert b"".join(written) == b"".join(written_whole)


def test_a_body_that_arrives_on_its_own_is_not_read_as_a_message() -> None:
    """The head in one read, its body (a whole message/sipfrag response) in the next: one NOTIFY, no response."""
    notify = _PIECES[4] % (1, 1)
    cut = notify.index(b"\r\n\r\n") + 4
    for chunks in ([notify[:cut], notify[cut:]], [notify[:cut - 2], notify[cut - 2:cut], notify[cut:]]):
        seen, _ = asyncio.run(_through_connection(chunks))
        assert seen == [notify]
