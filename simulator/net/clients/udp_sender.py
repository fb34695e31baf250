"""A datagram sender bound to one simulated host's address: a peer that speaks first.

The E13 probe needs a federated peer to send to a relay before the relay has sent it anything — then the datagram
is a new inbound flow for the firewall (its accept rule), not the answer to one the relay opened.
"""

from __future__ import annotations

import contextlib
import socket


class UdpSender:
    """One UDP socket on ``host`` (an ephemeral port); :meth:`send` never blocks, :meth:`close` frees it."""

    def __init__(self, host: str) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self._sock.setblocking(False)
            self._sock.bind((host, 0))
        except BaseException:
            self._sock.close()
            raise
        bound = self._sock.getsockname()
        self.local: tuple[str, int] = (str(bound[0]), int(bound[1]))

    def send(self, destination: tuple[str, int], payload: bytes) -> None:
        # UDP: a full buffer or an earlier ICMP error is a lost datagram, as on the wire
        with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
            self._sock.sendto(payload, destination)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> UdpSender:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
