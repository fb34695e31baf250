"""A Linux TUN device: raw IPv4 packets in and out of a non-blocking file descriptor.

:meth:`TunDevice.create` opens ``/dev/net/tun`` and attaches a new interface (``IFF_TUN |
IFF_NO_PI``: no packet-information prefix, every read is one IP packet). The device lives as long
as the descriptor: :meth:`TunDevice.close` removes the interface, wherever it has been moved to
(``ip link set NAME netns NS`` keeps the descriptor working). Needs CAP_NET_ADMIN.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
from types import TracebackType
from typing import Final

TUN_CLONE_DEVICE: Final = "/dev/net/tun"
MAX_INTERFACE_NAME: Final = 15  # IFNAMSIZ - 1
_TUNSETIFF: Final = 0x400454CA  # _IOW('T', 202, int), linux/if_tun.h
_IFF_TUN: Final = 0x0001
_IFF_NO_PI: Final = 0x1000
_READ_SIZE: Final = 65535


class TunDevice:
    """One TUN interface and its descriptor; reads and writes never block."""

    def __init__(self, fd: int, name: str) -> None:
        self._fd = fd
        self.name = name

    @classmethod
    def create(cls, name: str) -> TunDevice:
        """Create interface ``name``. Raises ``OSError`` without /dev/net/tun or CAP_NET_ADMIN."""
        if not name or len(name.encode()) > MAX_INTERFACE_NAME:
            raise ValueError(f"interface name {name!r} must be 1..{MAX_INTERFACE_NAME} bytes")
        fd = os.open(TUN_CLONE_DEVICE, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TUN | _IFF_NO_PI))
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, name)

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def fileno(self) -> int:
        if self._fd < 0:
            raise ValueError("TUN device is closed")
        return self._fd

    def read(self) -> bytes | None:
        """One packet, or ``None`` when none is waiting."""
        try:
            return os.read(self.fileno(), _READ_SIZE)
        except BlockingIOError:
            return None

    def write(self, packet: bytes) -> bool:
        """Hand one packet to the kernel; ``False`` when the queue is full (the packet is dropped)."""
        try:
            os.write(self.fileno(), packet)
        except BlockingIOError:
            return False
        return True

    def close(self) -> None:
        """Close the descriptor, which deletes the interface. Idempotent."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> TunDevice:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def tun_unavailable_reason() -> str | None:
    """Why TUN devices cannot be created here, or ``None`` when they can (probes with a throwaway)."""
    if not os.path.exists(TUN_CLONE_DEVICE):
        return f"{TUN_CLONE_DEVICE} does not exist"
    try:
        with TunDevice.create(f"esprobe{os.getpid() % 100000}"):
            pass
    except OSError as exc:
        return f"cannot create a TUN device: {exc}"
    return None
