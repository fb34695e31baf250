"""Packet capture of a run's traffic (``--pcap``) and the TLS key log that lets Wireshark read it (``--keylog``).

The capture is a real one: ``tcpdump`` (or Wireshark's ``dumpcap`` when tcpdump is missing) runs as a
subprocess on the loopback interface with a BPF filter naming the lab's addresses, and writes a classic
pcap file that tshark, Wireshark and tcpdump read. :func:`capture` returns once the tool says it is
listening, so nothing the run sends afterwards is missed, and on exit waits a moment for the last packets
to reach the file before it stops the tool.

The key log is the NSS format browsers write for ``SSLKEYLOGFILE``: :func:`set_keylog` makes every TLS
context edgesim builds (:mod:`simulator.net.transport.tls`, client and server) append its secrets to
one file, so ``tshark -o tls.keylog_file:FILE`` decrypts SIP, XMPP and PSOM inside the Edge's TLS.

What the environment lacks — neither tool installed, no privilege to capture, an unwritable file — is a
:class:`CaptureError` with a one-line message (the CLI turns it into exit code 3).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from simulator.net.transport import tls

READY_TIMEOUT = 10.0  # seconds for the tool to say it is listening
SETTLE = 0.3  # seconds between the run's end and stopping tcpdump (immediate mode): the last packets reach the file
SETTLE_BUFFERED = 1.2  # the same for dumpcap, which hands packets over in ~1 s batches (no immediate mode)
STOP_TIMEOUT = 5.0  # seconds the tool gets to flush and exit before it is killed
_READY_MARKS = (b"listening on", b"File: ")  # tcpdump's and dumpcap's line once capturing (stderr)
SEARCH_DIRS: tuple[str, ...] = ("/usr/sbin", "/sbin", "/usr/bin")  # where Debian puts tcpdump and dumpcap
DEFAULT_INTERFACE = "lo" if sys.platform == "linux" else "lo0"  # loopback: where the embedded lab lives


class CaptureError(Exception):
    """The environment cannot capture or log keys (missing tool, no privilege, unwritable file)."""


@dataclass
class Capture:
    """A running capture: the tool used, its filter, and what it said when it stopped."""

    path: Path
    tool: str
    bpf: str
    stderr: list[str] = field(default_factory=list)

    @property
    def summary(self) -> str:
        """The tool's closing counts, e.g. ``12 packets captured, 0 packets dropped by kernel``."""
        counts = [line for line in self.stderr if "packets" in line]
        return ", ".join(counts) if counts else ""


def bpf_filter(hosts_or_prefix: str | Iterable[str]) -> str:
    """The BPF filter for a prefix (``127.95.0.0/16``, ``net …``) or for addresses (``host a or host b``)."""
    items = [hosts_or_prefix] if isinstance(hosts_or_prefix, str) else list(dict.fromkeys(hosts_or_prefix))
    if not items:
        raise ValueError("nothing to capture: no address or prefix")
    terms = []
    for item in items:
        try:
            network = ipaddress.ip_network(item.strip("[]"), strict=False)
        except ValueError as error:
            raise ValueError(f"not an address or prefix: {item!r}") from error
        single = network.num_addresses == 1
        terms.append(f"host {network.network_address}" if single else f"net {network}")
    return " or ".join(terms)


def _writable(path: Path, what: str) -> None:
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise CaptureError(f"{what} {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise CaptureError(f"{what} {path}: not writable")


def _command(tool: str, path: Path, interface: str, bpf: str) -> list[str]:
    if Path(tool).name == "tcpdump":
        # -U: each packet written when captured; -Z: as root, keep root (Debian's tcpdump drops to the user
        # 'tcpdump' after opening the device, and could then not write into the caller's folder).
        user = ["-Z", "root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
        return [tool, "-i", interface, "-n", "-U", "--immediate-mode", "-s", "0", *user, "-w", str(path), bpf]
    return [tool, "-i", interface, "-q", "-P", "-s", "0", "-f", bpf, "-w", str(path)]  # -P: pcap, not pcapng


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies (Linux prctl PR_SET_PDEATHSIG; elsewhere nothing)."""
    if sys.platform == "linux":
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def find_tool() -> str:
    """tcpdump, else dumpcap, on PATH or in the sbin folders a user's PATH often lacks; CaptureError if neither."""
    search = os.pathsep.join([os.environ.get("PATH", ""), *SEARCH_DIRS])
    for name in ("tcpdump", "dumpcap"):
        found = shutil.which(name, path=search)
        if found:
            return found
    raise CaptureError("--pcap needs tcpdump or dumpcap, and neither is installed (Debian: apt install tcpdump)")


@contextlib.asynccontextmanager
async def capture(pcap_path: str | os.PathLike[str], hosts_or_prefix: str | Iterable[str], *,
                  interface: str = DEFAULT_INTERFACE) -> AsyncIterator[Capture]:
    """Capture the traffic to and from ``hosts_or_prefix`` on ``interface`` into ``pcap_path`` while inside.

    Raises :class:`CaptureError` when no tool is installed, the tool cannot capture (no privilege, no such
    interface) or the file cannot be written.
    """
    path = Path(pcap_path)
    _writable(path, "--pcap")
    bpf = bpf_filter(hosts_or_prefix)
    tool = find_tool()
    try:
        # Its own session: a Ctrl-C on the terminal reaches edgesim, which stops the tool after the last packets;
        # and the tool dies with edgesim if edgesim is killed (PR_SET_PDEATHSIG).
        process = await asyncio.create_subprocess_exec(
            *_command(tool, path, interface, bpf), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, start_new_session=True,
            preexec_fn=_die_with_parent)
    except OSError as error:
        raise CaptureError(f"cannot start {tool}: {error.strerror or error}") from None
    result = Capture(path, Path(tool).name, bpf)
    assert process.stderr is not None
    stderr = process.stderr
    try:
        await _wait_ready(process, stderr, result, interface)
    except BaseException:
        await _stop(process)
        raise
    reader = asyncio.get_running_loop().create_task(_drain(stderr, result))
    try:
        yield result
    finally:
        await asyncio.sleep(SETTLE if result.tool == "tcpdump" else SETTLE_BUFFERED)
        await _stop(process)
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(reader, 1.0)


async def _wait_ready(process: asyncio.subprocess.Process, stderr: asyncio.StreamReader, result: Capture,
                      interface: str) -> None:
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            while True:
                line = await stderr.readline()
                if not line:  # the tool exited: no privilege, no such interface …
                    await process.wait()
                    said = " ".join(result.stderr)[-300:] or f"exit status {process.returncode}"
                    hint = " (capturing needs root or CAP_NET_RAW)" if "ermi" in said else ""
                    raise CaptureError(f"{result.tool} cannot capture on {interface}: {said}{hint}")
                result.stderr.append(line.decode(errors="replace").strip())
                if any(mark in line for mark in _READY_MARKS):
                    return
    except TimeoutError:
        raise CaptureError(f"{result.tool} did not start capturing within {READY_TIMEOUT:.0f} s") from None


async def _drain(stderr: asyncio.StreamReader, result: Capture) -> None:
    while line := await stderr.readline():
        result.stderr.append(line.decode(errors="replace").strip())


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGINT)  # both tools flush and close the file on SIGINT
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


def set_keylog(path: str | os.PathLike[str] | None) -> None:
    """Make every TLS context edgesim builds from now on append its secrets to ``path`` (NSS key log format).

    Raises :class:`CaptureError` when the file cannot be written.
    """
    if path is not None:
        check_keylog(path)
    tls.set_keylog_file(path)


def check_keylog(path: str | os.PathLike[str], what: str = "--keylog") -> None:
    """CaptureError unless ``path`` can be appended to (``what`` names where it came from in the message)."""
    target = Path(path)
    _writable(target, what)
    try:
        with open(target, "a"):
            pass
    except OSError as error:
        raise CaptureError(f"{what} {target}: {error.strerror or error}") from None


def prepare_keylog(path: str | os.PathLike[str] | None) -> None:
    """``--keylog PATH`` for every TLS context made from now on; without it, check that SSLKEYLOGFILE (if set) can
    be written, so a bad one is a CaptureError now rather than an error at the first TLS connection."""
    if path is not None:
        set_keylog(path)
        return
    current = tls.keylog_file()
    if current is not None:
        check_keylog(current, "SSLKEYLOGFILE")


def keylog_in_use() -> str | None:
    """The key log new TLS contexts write to (``--keylog`` or SSLKEYLOGFILE), if any."""
    return tls.keylog_file()

