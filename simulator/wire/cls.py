"""A tiny request/response codec for the Centralized Logging Service agent ports (50001–50003).

The real CLS wire format is not public, so this one is **synthetic** and labelled so (research-lync-edge
§6.9): a firewall only sees the mutual-TLS layer, which is real. One line each way, ASCII, CRLF-ended::

    CLS/1 QUERY <token>            controller → agent
    CLS/1 200 <agent> <port> <token>   agent → controller
    CLS/1 403 <reason>             agent → controller (peer not allowed, e.g. wrong-san)
    CLS/1 400 <reason>             agent → controller (malformed request)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from simulator.wire.errors import MalformedMessage

MAX_LINE = 512
_TOKEN = re.compile(rb"^[A-Za-z0-9._-]{1,64}$")


@dataclass(frozen=True, slots=True)
class ClsQuery:
    token: str

    def serialize(self) -> bytes:
        return f"CLS/1 QUERY {self.token}\r\n".encode("ascii")


@dataclass(frozen=True, slots=True)
class ClsReply:
    status: int
    fields: tuple[str, ...]

    def serialize(self) -> bytes:
        return " ".join(("CLS/1", str(self.status), *self.fields)).encode("ascii") + b"\r\n"


def _words(line: bytes) -> list[bytes]:
    if len(line) > MAX_LINE:
        raise MalformedMessage("line too long", 400)
    if not line.endswith(b"\r\n"):
        raise MalformedMessage("line not ended by CRLF", 400)
    words = line[:-2].split(b" ")
    if len(words) < 2 or words[0] != b"CLS/1":
        raise MalformedMessage("not a CLS/1 line", 400)
    if any(not _TOKEN.match(word) for word in words[1:]):
        raise MalformedMessage("bad characters", 400)
    return words


def parse_query(line: bytes) -> ClsQuery:
    words = _words(line)
    if len(words) != 3 or words[1] != b"QUERY":
        raise MalformedMessage("expected 'CLS/1 QUERY <token>'", 400)
    return ClsQuery(words[2].decode("ascii"))


def parse_reply(line: bytes) -> ClsReply:
    words = _words(line)
    if not words[1].isdigit() or len(words[1]) != 3:
        raise MalformedMessage("bad status", 400)
    return ClsReply(int(words[1]), tuple(word.decode("ascii") for word in words[2:]))
