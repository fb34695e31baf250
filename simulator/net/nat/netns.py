"""Network namespaces for unmodified binaries behind a NAT box (``ip netns``, iproute2).

:class:`NamespacedHost` is one inside host: a fresh network namespace whose only way out is a TUN
device owned by this process. :meth:`NamespacedHost.create`:

1. opens the TUN device in the root namespace (the descriptor stays with us),
2. ``ip netns add`` a namespace and moves the interface into it,
3. gives the interface the inside address (``/32``), brings it up with a default route through it,
4. brings ``lo`` up with ``127.0.0.1/32`` only. The usual ``127.0.0.1/8`` would put a local route
   for all of 127/8 on ``lo``, and the lab's loopback hosts (127.x.y.z) would be unreachable, because
   the kernel delivers every local-route destination to ``lo``,
5. sets ``route_localnet=1`` (replies come from 127/8 sources, which the kernel otherwise drops as
   martians on a non-loopback interface), ``rp_filter=0``, and turns IPv6 off (router solicitations
   would only be noise on the TUN).

So every packet the inside host sends to anything but itself comes out of the TUN descriptor, and
nothing it sends can reach a real network: only the NAT box reads that descriptor.
:meth:`NamespacedHost.aclose` (or the blocking :meth:`~NamespacedHost.close`) kills nothing but
deletes the namespace and closes the TUN (which deletes the interface); it is idempotent and runs on
every failure path of ``create``.
Requires root (CAP_SYS_ADMIN and CAP_NET_ADMIN), iproute2 and /dev/net/tun.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from typing import Final

from simulator.net.nat.tun import TunDevice, tun_unavailable_reason

logger = logging.getLogger(__name__)

IP_COMMAND_TIMEOUT: Final = 5.0
_V6: Final = ("all", "default")
_serial = itertools.count(1)


class NamespaceError(RuntimeError):
    """An ``ip`` command failed while setting up or tearing down a namespace."""


async def _run(argv: Sequence[str], timeout: float = IP_COMMAND_TIMEOUT) -> None:
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    if process.returncode != 0:
        raise NamespaceError(f"{' '.join(argv)} failed ({process.returncode}): {stderr.decode().strip()}")


def _run_sync(argv: Sequence[str]) -> None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=IP_COMMAND_TIMEOUT, check=False)


def namespaces_unavailable_reason() -> str | None:
    """Why :class:`NamespacedHost` cannot work here, or ``None`` when it can."""
    if os.geteuid() != 0:
        return "network namespaces and TUN devices need root"
    if shutil.which("ip") is None:
        return "iproute2's 'ip' is not installed"
    return tun_unavailable_reason()


class NamespacedHost:
    """An inside host: a network namespace whose default route is a TUN read by this process."""

    def __init__(self, namespace: str, tun: TunDevice, inside_ip: str) -> None:
        self.namespace = namespace
        self.tun = tun
        self.inside_ip = inside_ip
        self._closed = False

    @classmethod
    async def create(cls, inside_ip: str, *, prefix: str = "edgesim") -> NamespacedHost:
        """Make the namespace and its TUN (see the module docstring). Cleans up if any step fails."""
        serial = next(_serial)
        namespace = f"{prefix}-{os.getpid()}-{serial}"
        tun = TunDevice.create(f"es{os.getpid() % 100000}t{serial % 1000}")
        host = cls(namespace, tun, inside_ip)
        created = False
        try:
            await _run(["ip", "netns", "add", namespace])
            created = True
            device = tun.name
            with contextlib.suppress(NamespaceError):  # best effort: a kernel without IPv6 has no such keys
                await _run(host.exec_argv(["sysctl", "-q", "-w", *(f"net.ipv6.conf.{c}.disable_ipv6=1" for c in _V6)]))
            for argv in (
                ["ip", "link", "set", device, "netns", namespace],
                ["ip", "-n", namespace, "addr", "add", f"{inside_ip}/32", "dev", device],
                ["ip", "-n", namespace, "link", "set", device, "up"],
                ["ip", "-n", namespace, "route", "add", "default", "dev", device],
                ["ip", "-n", namespace, "link", "set", "lo", "up"],
                ["ip", "-n", namespace, "addr", "flush", "dev", "lo"],
                ["ip", "-n", namespace, "addr", "add", "127.0.0.1/32", "dev", "lo"],
                host.exec_argv(
                    [
                        "sysctl", "-q", "-w",
                        "net.ipv4.conf.all.route_localnet=1",
                        f"net.ipv4.conf.{device}.route_localnet=1",
                        "net.ipv4.conf.all.rp_filter=0",
                        f"net.ipv4.conf.{device}.rp_filter=0",
                    ]
                ),
            ):
                await _run(argv)
        except BaseException:
            if not created:
                host._closed = True
                tun.close()
            else:
                await asyncio.shield(host.aclose())
            raise
        return host

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside the namespace (``ip netns exec``)."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    async def aclose(self) -> None:
        """Delete the namespace and the TUN device. Idempotent; never raises (a failure is logged).

        Processes still running inside keep the namespace alive: stop them first.
        """
        if self._closed:
            return
        self._closed = True
        self.tun.close()
        try:
            await _run(["ip", "netns", "delete", self.namespace])
        except (NamespaceError, OSError, TimeoutError) as exc:
            logger.error("cannot delete network namespace %s: %s", self.namespace, exc)

    def close(self) -> None:
        """:meth:`aclose` for code that cannot await (blocks for the ``ip`` command)."""
        if self._closed:
            return
        self._closed = True
        self.tun.close()
        _run_sync(["ip", "netns", "delete", self.namespace])
