"""Servers for the ``bench relay`` tests: coturn and ``edgesim serve av-edge`` on this run's own addresses.

Addresses: ``127.93.<N>.x`` with ``N = 10 + pid % 200`` (127.93.0.0/16 is the bench helper's block), so two
runs on one host bind different addresses unless their pids agree modulo 200. Relay ranges are 200-port blocks
picked at random in 40000–49999 (never a well-known port assumed free).
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from pathlib import Path

from tests.interop.turnpeers import PASSWORD, REALM, USER, TurnServer, start_coturn, start_edgesim
from tests.peers import require_tool

NET = f"127.93.{10 + os.getpid() % 200}"
RANGE_SIZE = 200
_rng = random.Random()


def host(last: int) -> str:
    return f"{NET}.{last}"


def relay_range(size: int = RANGE_SIZE) -> tuple[int, int]:
    first = _rng.randrange(40000, 50000 - size, 2)
    return first, first + size - 1


@contextlib.contextmanager
def coturn(workdir: Path, last: int, *, size: int = RANGE_SIZE, secret: str | None = None) -> Iterator[TurnServer]:
    """coturn (long-term credentials, or REST ``secret``) on ``NET.last`` with a ``size``-port relay range."""
    require_tool("turnserver")
    extra = ["--use-auth-secret", "--static-auth-secret", secret] if secret else []
    server = start_coturn(workdir, host=host(last), relay_range=relay_range(size), extra=extra)
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def edgesim(workdir: Path, last: int, *, size: int = RANGE_SIZE) -> Iterator[TurnServer]:
    """``edgesim serve av-edge`` listening on ``NET.last``, relays on ``NET.last+1``, a ``size``-port range."""
    server = start_edgesim(workdir, host=host(last), public_host=host(last + 1), relay_bind=host(last + 1),
                           relay_range=relay_range(size))
    try:
        yield server
    finally:
        server.stop()


def relay_range_of(server: TurnServer) -> tuple[int, int]:
    """The relay range the server was started with (from its argv)."""
    argv = server.process.argv
    if "--relay-range" in argv:
        low, high = argv[argv.index("--relay-range") + 1].split("-")
        return int(low), int(high)
    return int(argv[argv.index("--min-port") + 1]), int(argv[argv.index("--max-port") + 1])


__all__ = ["NET", "PASSWORD", "RANGE_SIZE", "REALM", "USER", "coturn", "edgesim", "host", "relay_range_of"]
