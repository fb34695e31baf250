"""The asyncio shell around a sans-I/O :class:`~simulator.core.media.MediaSession`.

A :class:`MediaRunner` moves bytes and time only: it arms one ``loop.call_at(session.get_timer())``,
hands ``session.datagrams_to_send(loop.time())`` to a ``send(data)`` function, and feeds every datagram
from the peer to ``session.receive(data, loop.time())``. What carries the datagrams is the caller's: an
ICE selected pair, a NAT box endpoint, a TURN channel, or :class:`UdpMediaSocket` (a plain UDP socket
bound to a local address, sending to a fixed remote or latching onto the first one heard from).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Final, cast

from simulator.core.media import MediaSession, MediaStats
from simulator.wire.rtp import NTP_UNIX_OFFSET

Address = tuple[str, int]
SendFunction = Callable[[bytes], None]

READ_BUDGET: Final = 64  # datagrams read per wake-up, so one busy socket cannot starve the loop
MAX_DATAGRAM: Final = 65535


def ntp_offset(loop: asyncio.AbstractEventLoop) -> float:
    """The ``ntp_offset`` that makes a session's SR timestamps wall-clock NTP time on ``loop``'s clock."""
    return NTP_UNIX_OFFSET + time.time() - loop.time()


class MediaRunner:
    """Runs ``session`` over ``send``: ``start()``, ``datagram_received(data)``, ``await stop()``.

    Errors raised by ``send`` (``OSError``, ``ConnectionError``) are counted in ``send_errors`` and the
    stream goes on, as a real sender's would.
    """

    def __init__(self, session: MediaSession, send: SendFunction) -> None:
        self.session = session
        self._send = send
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.send_errors = 0

    @property
    def running(self) -> bool:
        return self._loop is not None

    def start(self) -> None:
        """Start sending now, on the running loop."""
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._on_timer()

    def datagram_received(self, data: bytes) -> None:
        """One datagram from the peer (callable before ``start``: the loop's clock is used)."""
        loop = self._loop or asyncio.get_running_loop()
        self.session.receive(data, loop.time())

    def _on_timer(self) -> None:
        self._timer = None
        loop = self._loop
        if loop is None:
            return
        send = self._send
        for data in self.session.datagrams_to_send(loop.time()):
            try:
                send(data)
            except (OSError, ConnectionError):
                self.send_errors += 1
        when = self.session.get_timer()
        if when is not None:
            self._timer = loop.call_at(when, self._on_timer)

    async def stop(self, linger: float = 0.0) -> MediaStats:
        """Send the final report with a BYE, keep receiving for ``linger`` seconds, return the stats."""
        loop = self._loop
        if loop is not None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self.session.stop(loop.time())
            self._on_timer()
            if self._timer is not None:  # the session asked for more time after its BYE: refuse it
                self._timer.cancel()
                self._timer = None
            self._loop = None
        if linger > 0:
            await asyncio.sleep(linger)
        return self.session.stats()

    async def run_for(self, duration: float, linger: float = 0.0) -> MediaStats:
        """Start, send for ``duration`` seconds, stop; the stats."""
        self.start()
        try:
            await asyncio.sleep(duration)
        finally:
            stats = await self.stop(linger)
        return stats


class UdpMediaSocket:
    """A UDP socket carrying one :class:`MediaRunner`.

    ``remote`` fixes the peer; without it the socket latches onto the source of the first datagram
    (symmetric RTP) and drops what it sends before that (counted in ``unsent``). Datagrams from other
    sources than the peer are ignored (counted in ``foreign``). The socket is read with
    ``loop.add_reader`` up to :data:`READ_BUDGET` datagrams per wake-up (an asyncio datagram transport
    reads one per wake-up, which costs an ``epoll_wait`` per packet at media rates).
    """

    def __init__(self, session: MediaSession, sock: socket.socket, remote: Address | None) -> None:
        self.remote = remote
        self.runner = MediaRunner(session, self._sendto)
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self.local: Address = cast(Address, tuple(sock.getsockname()[:2]))
        self.unsent = 0
        self.foreign = 0
        self.send_failed = 0
        self._loop.add_reader(sock.fileno(), self._on_readable)

    @classmethod
    async def open(cls, session: MediaSession, local: Address, remote: Address | None = None) -> UdpMediaSocket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind(local)
            return cls(session, sock, remote)
        except BaseException:
            sock.close()
            raise

    @property
    def closed(self) -> bool:
        return self._sock.fileno() < 0

    def _on_readable(self) -> None:
        sock = self._sock
        runner = self.runner
        for _ in range(READ_BUDGET):
            try:
                data, addr = sock.recvfrom(MAX_DATAGRAM)
            except BlockingIOError:
                return
            except OSError:  # an ICMP error reported on the socket: nothing to read
                continue
            source = (addr[0], addr[1])
            if self.remote is None:
                self.remote = source  # latch: symmetric RTP
            elif source != self.remote:
                self.foreign += 1
                continue
            runner.datagram_received(data)
            if sock.fileno() < 0:  # the runner's owner closed us from a callback
                return

    def _sendto(self, data: bytes) -> None:
        if self.remote is None or self._sock.fileno() < 0:
            self.unsent += 1
            return
        try:
            self._sock.sendto(data, self.remote)
        except BlockingIOError:
            self.send_failed += 1  # the socket buffer is full: a real sender drops too

    def close(self) -> None:
        """Stop reading and close the socket (the runner is the caller's to stop). Idempotent."""
        if self._sock.fileno() >= 0:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
