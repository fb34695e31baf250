"""Peer processes for the TURN interop tests and the coturn benchmark: coturn, ``edgesim serve av-edge``,
``turnutils_peer`` and ``turnutils_uclient`` — started on their own 127.x.y.z address, waited for with a
deadline, and always stopped (SIGTERM to the process group, then SIGKILL) with their logs kept.

Addresses: every role lives in ``<P>.86.0/24``, where ``<P>`` is this process's own loopback /16
(``tests.conftest.loopback_prefix_for_tests``: ``127.(100 + pid % 100)``), so two test runs (or a run and
``make bench``) on one host bind different addresses unless their pids agree modulo 100; the lab's address
plan (simulator/lab/addressing.py) leaves ``<P>.86.0/24`` unused.

Nothing here is a test: ``tests/interop/test_*.py`` and ``benchmarks/turn_vs_coturn.py`` import it.

- :class:`PeerProcess` owns one child started in its own session (process group). ``stop()`` is idempotent,
  reaps the child and closes the log. Every child's stdout+stderr goes to a log file, never a pipe, so a
  chatty child cannot block on a full pipe and nothing has to be drained.
- :func:`start_coturn`, :func:`start_edgesim`, :func:`start_turnutils_peer` return a started, ready
  :class:`TurnServer` / :class:`PeerProcess`, or raise :class:`PeerStartError` with the log tail.
- :func:`run_uclient` runs ``turnutils_uclient`` to completion (bounded) and parses its summary into
  :class:`UclientResult`.
- :func:`free_port` picks a port free for both UDP and TCP on one loopback address (we never assume a
  well-known port is free).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from simulator.wire import stun
from simulator.wire.errors import MalformedMessage
from tests.conftest import loopback_prefix_for_tests

ROOT = Path(__file__).resolve().parents[2]
EDGESIM = ROOT / ".venv" / "bin" / "edgesim"

INTEROP_NET = f"{loopback_prefix_for_tests()}.86"  # this process's /24 for interop peers (see above)


def interop_host(last_octet: int) -> str:
    """An address of this process's interop /24 (never 127.0.0.1)."""
    if not 1 <= last_octet <= 254:
        raise ValueError(f"no host .{last_octet} in {INTEROP_NET}.0/24")
    return f"{INTEROP_NET}.{last_octet}"


# One loopback address per role: coturn, edgesim (listen / public relay), peers, clients (.31 upward), libnice.
COTURN_HOST = interop_host(1)
EDGESIM_HOST = interop_host(11)
EDGESIM_PUBLIC = interop_host(12)  # advertised and bound for relays, so a relay address is routable on lo
PEER_HOST = interop_host(21)
CLIENT_HOST = interop_host(31)
LIBNICE_LOCAL, LIBNICE_PEER = interop_host(51), interop_host(52)


def client_host(index: int) -> str:
    """The ``index``-th client address (1 = CLIENT_HOST), for runs that need one 5-tuple source per client."""
    if not 1 <= index <= 19:
        raise ValueError(f"client index {index} outside 1..19")
    return interop_host(30 + index)

USER, PASSWORD, REALM = "alice", "s3cret", "edgesim.test"
READY_LINE = re.compile(
    r"^av-edge ready udp=(?P<udp_host>[0-9.]+):(?P<udp>\d+) tcp=(?P<tcp_host>[0-9.]+):(?P<tcp>\d+)$"
)


class PeerStartError(RuntimeError):
    """A peer did not become ready before its deadline (the message carries its log tail)."""


def free_port(host: str, *, rng: random.Random | None = None, low: int = 20000, high: int = 29999) -> int:
    """A port free for both TCP and UDP on ``host``, from [low, high] (outside the relay ranges)."""
    rng = rng or random.Random()
    for _ in range(200):
        port = rng.randint(low, high)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp, socket.socket(
            socket.AF_INET, socket.SOCK_DGRAM
        ) as udp:
            try:
                tcp.bind((host, port))
                udp.bind((host, port))
            except OSError:
                continue
        return port
    raise PeerStartError(f"no free port on {host} in [{low}, {high}] after 200 tries")


class PeerProcess:
    """One child process in its own process group, its output in ``log_path``."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, *, cwd: Path | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._log: IO[bytes] | None = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        try:
            self.process: subprocess.Popen[bytes] = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=cwd,
            )
        except BaseException:
            self._log.close()
            self._log = None
            raise

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after ``timeout``; reap; close the log. Returns the exit code."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        # Children the leader left behind in its group (none expected) go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.process.returncode

    def __enter__(self) -> PeerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclasses.dataclass
class TurnServer:
    """A started TURN server: where to reach it, the credentials it knows, and its process."""

    kind: str  # "coturn" | "edgesim"
    host: str
    udp_port: int
    tcp_port: int
    public_host: str
    user: str
    password: str
    realm: str
    process: PeerProcess

    def stop(self) -> int | None:
        return self.process.stop()


def _cpu_prefix(cpu_list: str | None) -> list[str]:
    if cpu_list is None:
        return []
    taskset = shutil.which("taskset")
    if taskset is None:
        raise PeerStartError("taskset (util-linux) is needed to pin a server to CPUs")
    return [taskset, "-c", cpu_list]


def stun_binding_ok(host: str, port: int, *, transport: str = "udp", timeout: float = 0.3) -> bool:
    """One STUN Binding over UDP or TCP: True if a Binding success response comes back in time."""
    request = stun.request(stun.StunMethod.BINDING, os.urandom(12)).serialize()
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
            sock.sendall(request)
            data = sock.recv(2048)
            message = stun.parse(data[: 20 + int.from_bytes(data[2:4], "big")])
        except (OSError, MalformedMessage):
            return False
    return message.cls == stun.MessageClass.SUCCESS and message.transaction_id == request[8:20]


def tcp_accepts(host: str, port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _wait(what: str, process: PeerProcess, ready: object, deadline_s: float) -> None:
    """Poll ``ready()`` every 50 ms until true; fail fast if the child exits; stop it on timeout."""
    assert callable(ready)
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if not process.alive():
            process.stop()
            raise PeerStartError(f"{what} exited with {process.process.returncode}:\n{process.log_tail()}")
        if ready():
            return
        time.sleep(0.05)
    process.stop()
    raise PeerStartError(f"{what} not ready after {deadline_s} s:\n{process.log_tail()}")


def start_coturn(
    workdir: Path,
    *,
    host: str = COTURN_HOST,
    udp_port: int | None = None,
    relay_range: tuple[int, int] = (50000, 50999),
    user: str = USER,
    password: str = PASSWORD,
    realm: str = REALM,
    cpu_list: str | None = None,
    extra: Sequence[str] = (),
    ready_timeout: float = 10.0,
) -> TurnServer:
    """coturn with long-term credentials on ``host`` (UDP and TCP on one port), loopback peers allowed."""
    turnserver = shutil.which("turnserver")
    if turnserver is None:
        raise PeerStartError("turnserver (Debian coturn) is not installed")
    port = udp_port or free_port(host)
    argv = [
        *_cpu_prefix(cpu_list), turnserver, "-n", "--lt-cred-mech", "--user", f"{user}:{password}",
        "--realm", realm, "--listening-ip", host, "--relay-ip", host, "--listening-port", str(port),
        "--min-port", str(relay_range[0]), "--max-port", str(relay_range[1]),
        "--no-tls", "--no-dtls", "--no-cli", "--no-rfc5780", "--allow-loopback-peers",
        "--log-file", "stdout", "--simple-log",
        "--pidfile", str(workdir / "turnserver.pid"), "--userdb", str(workdir / "turndb.sqlite"),
        *extra,
    ]
    process = PeerProcess("coturn", argv, workdir / f"coturn-{port}.log")
    _wait(
        f"coturn on {host}:{port}", process,
        lambda: stun_binding_ok(host, port) and tcp_accepts(host, port), ready_timeout,
    )
    return TurnServer("coturn", host, port, port, host, user, password, realm, process)


def edgesim_serve_available() -> tuple[bool, str]:
    """Whether ``edgesim serve av-edge`` exists in this checkout (``--help`` exits 0), with the reason if not."""
    if not EDGESIM.exists():
        return False, f"{EDGESIM} does not exist (run make venv)"
    try:
        done = subprocess.run(
            [str(EDGESIM), "serve", "av-edge", "--help"], capture_output=True, timeout=30, check=False,
        )
    except subprocess.TimeoutExpired:
        return False, "edgesim serve av-edge --help did not exit within 30 s"
    if done.returncode != 0:
        return False, "edgesim serve av-edge --help: " + (done.stderr or done.stdout).decode(errors="replace")[-300:]
    return True, ""


def start_edgesim(
    workdir: Path,
    *,
    host: str = EDGESIM_HOST,
    public_host: str = EDGESIM_PUBLIC,
    relay_bind: str | None = EDGESIM_PUBLIC,
    udp_port: int | None = None,
    tcp_port: int | None = None,
    relay_range: tuple[int, int] = (50000, 50999),
    user: str = USER,
    password: str = PASSWORD,
    realm: str = REALM,
    cpu_list: str | None = None,
    extra: Sequence[str] = (),
    ready_timeout: float = 15.0,
) -> TurnServer:
    """``edgesim serve av-edge``; ready when it prints ``av-edge ready udp=H:P tcp=H:P`` (the contract)."""
    udp = udp_port or free_port(host)
    tcp = tcp_port or free_port(host)
    argv = [
        *_cpu_prefix(cpu_list), str(EDGESIM), "serve", "av-edge", "--listen", host, "--public", public_host,
        "--udp-port", str(udp), "--tcp-port", str(tcp), "--relay-range", f"{relay_range[0]}-{relay_range[1]}",
        "--user", f"{user}:{password}", "--realm", realm,
        *(["--relay-bind", relay_bind] if relay_bind else []),
        "--workers", "1",  # one process unless ``extra`` asks for more (argparse: the last one given counts)
        *extra,
    ]
    process = PeerProcess("edgesim", argv, workdir / f"edgesim-{udp}.log", cwd=ROOT)
    found: dict[str, int] = {}

    def ready() -> bool:
        for line in process.log_text().splitlines():
            match = READY_LINE.match(line.strip())
            if match:
                found["udp"], found["tcp"] = int(match["udp"]), int(match["tcp"])
                return True
        return False

    _wait(f"edgesim serve av-edge on {host}", process, ready, ready_timeout)
    if (found["udp"], found["tcp"]) != (udp, tcp):
        process.stop()
        raise PeerStartError(f"edgesim announced udp={found['udp']} tcp={found['tcp']}, asked {udp}/{tcp}")
    return TurnServer("edgesim", host, udp, tcp, public_host, user, password, realm, process)


def udp_echo_ok(host: str, port: int, timeout: float = 0.3) -> bool:
    payload = os.urandom(8)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(payload, (host, port))
            return sock.recvfrom(64)[0] == payload
        except OSError:
            return False


def start_turnutils_peer(workdir: Path, *, host: str = PEER_HOST, port: int | None = None) -> tuple[PeerProcess, int]:
    """coturn's UDP echo peer; ready once it echoes a datagram."""
    tool = shutil.which("turnutils_peer")
    if tool is None:
        raise PeerStartError("turnutils_peer (Debian coturn) is not installed")
    port = port or free_port(host)
    process = PeerProcess("turnutils_peer", [tool, "-L", host, "-p", str(port)], workdir / f"peer-{port}.log")
    _wait(f"turnutils_peer on {host}:{port}", process, lambda: udp_echo_ok(host, port), 5.0)
    return process, port


@dataclasses.dataclass(frozen=True)
class UclientResult:
    """What ``turnutils_uclient`` reported: its final summary lines, parsed."""

    returncode: int | None
    sent: int | None
    received: int | None
    lost: int | None
    send_dropped: int | None
    error_lines: tuple[str, ...]
    output: str

    @property
    def clean(self) -> bool:
        return (
            self.returncode == 0 and self.lost == 0 and self.send_dropped == 0 and not self.error_lines
            and self.sent is not None and self.sent == self.received
        )


_SUMMARY_MSGS = re.compile(r"start_mclient: tot_send_msgs=(\d+), tot_recv_msgs=(\d+)\s*$", re.M)
_SUMMARY_LOST = re.compile(r"Total lost packets (\d+) \([^)]*\), total send dropped (\d+)", re.M)
# Lines uclient prints when something went wrong (errno texts, STUN error responses, integrity, timeouts).
_ERROR_LINE = re.compile(
    r"error|refused|cannot|wrong|failure|failed|timeout|invalid|not completed|unknown|mismatch", re.I
)


def parse_uclient(output: str, returncode: int | None) -> UclientResult:
    msgs = _SUMMARY_MSGS.findall(output)
    lost = _SUMMARY_LOST.findall(output)
    errors = tuple(line for line in output.splitlines() if _ERROR_LINE.search(line))
    return UclientResult(
        returncode,
        int(msgs[-1][0]) if msgs else None,
        int(msgs[-1][1]) if msgs else None,
        int(lost[-1][0]) if lost else None,
        int(lost[-1][1]) if lost else None,
        errors,
        output,
    )


def uclient_argv(
    server: TurnServer,
    transport: str,
    *,
    peer: tuple[str, int] | None,
    messages: int,
    clients: int,
    local_host: str = CLIENT_HOST,
) -> list[str]:
    """``transport``: "udp" (client over UDP, ChannelBind + ChannelData), "udp-send" (CreatePermission +
    Send/Data indications, ``-s``), "tcp" (client over TCP, ``-t``), "tcp-relay" (RFC 6062, ``-T``).

    ``-c`` (no RTCP sessions) keeps the count at exactly ``clients * messages``; the UDP-relay modes need an
    echo ``peer``, "tcp-relay" implies client-to-client (``-y``) so the clients are each other's peers.
    uclient 4.6.1 picks ChannelBind numbers anywhere in RFC 5766's 0x4000-0x7FFF.
    """
    tool = shutil.which("turnutils_uclient")
    if tool is None:
        raise PeerStartError("turnutils_uclient (Debian coturn) is not installed")
    flags = {"udp": [], "udp-send": ["-s"], "tcp": ["-t"], "tcp-relay": ["-T"]}[transport]
    port = server.udp_port if transport.startswith("udp") else server.tcp_port
    argv = [tool, *flags, "-c", "-u", server.user, "-w", server.password, "-p", str(port), "-L", local_host,
            "-n", str(messages), "-m", str(clients), "-z", "5"]
    if transport != "tcp-relay":
        assert peer is not None, "udp/tcp uclient runs need an echo peer"
        argv += ["-e", peer[0], "-r", str(peer[1])]
    return [*argv, server.host]


def expected_uclient_messages(transport: str, clients: int, messages: int) -> int:
    """How many messages uclient sends with ``-c``: ``-y``/``-T`` rounds the client count up to even."""
    if transport == "tcp-relay":
        clients += clients & 1
    return clients * messages


@contextlib.contextmanager
def uclient_running(argv: Sequence[str], log_path: Path) -> Iterator[PeerProcess]:
    process = PeerProcess("turnutils_uclient", argv, log_path)
    try:
        yield process
    finally:
        process.stop()


def wait_uclient(process: PeerProcess, timeout: float) -> UclientResult:
    """Wait (bounded) for a started uclient and parse its output; on timeout it is killed and reported."""
    try:
        returncode: int | None = process.process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.stop()
        returncode = None
    process.stop()
    output = process.log_text()
    if returncode is None:
        output += f"\n[harness] killed after {timeout} s timeout"
    return parse_uclient(output, returncode)


def run_uclient(server: TurnServer, transport: str, workdir: Path, *, peer: tuple[str, int] | None,
                messages: int = 50, clients: int = 4, local_host: str = CLIENT_HOST,
                timeout: float = 30.0) -> UclientResult:
    argv = uclient_argv(server, transport, peer=peer, messages=messages, clients=clients, local_host=local_host)
    with uclient_running(argv, workdir / f"uclient-{server.kind}-{transport}.log") as process:
        return wait_uclient(process, timeout)
