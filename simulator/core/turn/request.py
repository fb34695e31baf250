"""One request in flight through the TURN pipeline, the error that aborts it, and the reason phrases.

A handler raises :class:`Reply` to answer with an error; :meth:`ResponseWriter._reply_error` turns it into the
response (signed unless it is a 401/438 challenge, RFC 8489 §9.2.4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from simulator.core.turn.state import ClientStream, Sink
from simulator.wire import stun
from simulator.wire.stun import Address, Attribute, Message

REASONS: Final[dict[int, str]] = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    420: "Unknown Attribute",
    437: "Allocation Mismatch",
    438: "Stale Nonce",
    440: "Address Family not Supported",
    441: "Wrong Credentials",
    442: "Unsupported Transport Protocol",
    443: "Peer Address Family Mismatch",
    446: "Connection Already Exists",
    447: "Connection Timeout or Failure",
    486: "Allocation Quota Reached",
    500: "Server Error",
    508: "Insufficient Capacity",
}


class Reply(Exception):
    """Abort a request with an error response (code, reason, extra attributes)."""

    def __init__(self, code: int, reason: str, *attributes: Attribute) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason
        self.attributes = attributes


@dataclass(slots=True)
class Auth:
    """Who signed a request, and the key its answer is signed with."""

    username: str
    key: bytes


@dataclass(slots=True)
class Request:
    """One request in flight through the pipeline."""

    msg: Message
    conn: object
    client: Address
    sink: Sink
    stream: ClientStream | None
    ms: bool
    auth: Auth | None = None
    integrity: stun.IntegrityAlgorithm = stun.IntegrityAlgorithm.SHA1
