"""The one error type for bad input on the wire (style.md §5).

A parser either returns a message or raises :class:`MalformedMessage`; nothing else may escape it.
The listener turns the error into the protocol's error response (``status``) or a counted drop.
"""

from __future__ import annotations


class MalformedMessage(ValueError):
    """Bad input from the peer.

    ``status`` is the response code the receiver should answer with (STUN 400/420, SIP 400/413/505, …),
    or ``None`` when the protocol says to drop silently.
    """

    def __init__(self, reason: str, status: int | None = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status

    def __repr__(self) -> str:
        return f"MalformedMessage({self.reason!r}, status={self.status!r})"
