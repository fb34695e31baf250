"""SIPp behind stunnel against the Access Edge: Debian's SIPp has no TLS, so SIPp speaks TCP to a local
stunnel client on a 127.88.x.y address, which speaks TLS (lab CA, ``checkHost``) to the Edge's 443.
Shared by tests/access/test_sipp.py and benchmarks/sip.py."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

SIPP_DIR = Path(__file__).resolve().parent / "sipp"
STUNNEL_HOST = "127.88.0.1"
SIPP_HOST = "127.88.0.2"


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def stunnel_client(stunnel: str, folder: Path, ca: Path, connect: tuple[str, int], server_name: str,
                         listen_host: str = STUNNEL_HOST) -> AsyncIterator[tuple[str, int]]:
    """A stunnel client accepting TCP on (listen_host, port) and speaking TLS to ``connect``."""
    port = free_port(listen_host)
    config, log = folder / "stunnel.conf", folder / "stunnel.log"
    config.write_text(f"foreground = yes\npid =\n[sip]\nclient = yes\naccept = {listen_host}:{port}\n"
                      f"connect = {connect[0]}:{connect[1]}\nCAfile = {ca}\nverifyChain = yes\n"
                      f"checkHost = {server_name}\nsni = {server_name}\n")
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(stunnel, str(config), stdout=output, stderr=output)
    try:
        deadline = time.monotonic() + 10
        while b"Configuration successful" not in log.read_bytes():
            if process.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"stunnel did not start: {log.read_text()}")
            await asyncio.sleep(0.05)
        yield listen_host, port
    finally:
        if process.returncode is None:
            process.terminate()
        await process.wait()


@dataclass(frozen=True, slots=True)
class SippRun:
    returncode: int
    successful: int
    failed: int
    elapsed: float
    output: str


def _last_count(output: str, label: str) -> int:
    rows = re.findall(rf"{label}\s*\|\s*\d+\s*\|\s*(\d+)", output)
    return int(rows[-1]) if rows else -1


async def run_sipp(sipp: str, args: Sequence[str], timeout: float, cwd: Path) -> SippRun:
    """Run SIPp to completion (``-nostdin``); counts parsed from its final statistics screen."""
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(sipp, *args, "-nostdin", stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.STDOUT, cwd=cwd)
    try:
        raw, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.communicate()
        raise
    elapsed = time.perf_counter() - started
    output = raw.decode("utf-8", "replace")
    assert process.returncode is not None
    return SippRun(process.returncode, _last_count(output, "Successful call"), _last_count(output, "Failed call"),
                   elapsed, output)
