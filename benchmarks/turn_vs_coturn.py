"""TURN throughput, edgesim vs coturn, with one load client for both (research-turn.md §1 method).

Three closed-loop phases per server and run, each bounded in time (``--phase-seconds``, at most 10 s):

- **binding**: STUN Binding requests/s over UDP, ``--binding-sockets`` sockets x ``--binding-window``
  requests in flight; each success sends the next.
- **alloc**: authenticated allocations/s with ``--concurrency`` (100) workers, each doing
  Allocate -> 401 -> Allocate(USERNAME, REALM, NONCE, MESSAGE-INTEGRITY) -> Refresh(LIFETIME=0) from a
  fresh 5-tuple (client addresses and ports are handed out by the benchmark and never reused in one
  invocation: coturn keeps a deleted allocation ~1 s and answers 437 to a reused 5-tuple).
- **relay**: ``--relay-allocations`` allocations, one ChannelBind each to ``turnutils_peer`` (coturn's C
  UDP echo), then 100-byte ChannelData echoed through the relay with ``--relay-window`` in flight per
  allocation. Each round trip is two relayed packets (client->peer, peer->client): pkt/s = 2 x echoes/s.

``--workers N`` (N > 1): edgesim runs ``serve av-edge --workers N`` (N processes sharing the ports with
SO_REUSEPORT) and coturn ``--relay-threads N``; server CPU is then summed over the server's process tree.
SO_REUSEPORT spreads 5-tuples by hash, so use enough sockets/allocations for both workers to get a share
(e.g. ``--binding-sockets 32 --binding-window 8 --relay-allocations 32 --relay-window 8``).

Fairness: both servers run at the same time, each pinned with ``taskset -c SERVER_CPUS`` (coturn keeps its
per-CPU threads, but they share the same core budget as edgesim's one process); the client and the echo
peer are pinned to ``CLIENT_CPUS``. Servers and phases are interleaved per run, so drift hits both
equally. Reported: median over ``--runs`` of ops/s and of server CPU µs per op (utime+stime from
/proc/PID/stat over the phase, all threads). The last line is one JSON object with ``binding_ratio``,
``alloc_ratio``, ``relay_ratio`` = edgesim / coturn (null when a side did not run).

Encoding and decoding use the project's codecs (:mod:`simulator.wire.stun`, :mod:`simulator.wire.turn`);
Binding requests and ChannelData are templated (transaction ID / payload spliced in) so the client costs
as little per packet as the codecs' fast paths allow.

    .venv/bin/python benchmarks/turn_vs_coturn.py --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import uvloop  # noqa: E402

from simulator.wire import stun, turn  # noqa: E402
from simulator.wire.errors import MalformedMessage  # noqa: E402
from tests.interop import turnpeers  # noqa: E402

CLIENT_NET = "127.86.4"  # client addresses 127.86.4.1 ... for fresh 5-tuples
REQUEST_TIMEOUT_S = 0.5
RETRIES = 3
UDP = 17  # RFC 8656 §18.7 REQUESTED-TRANSPORT: UDP


# ------------------------------------------------------------------------------------------------
# helpers


class ClientAddresses:
    """Hands out (host, port) for client sockets without reuse: ports 30000-49999 on 127.86.4.1..N."""

    def __init__(self, first_host: int = 1, hosts: int = 16, low: int = 30000, high: int = 49999) -> None:
        self._iter = self._generate(first_host, hosts, low, high)

    @staticmethod
    def _generate(first_host: int, hosts: int, low: int, high: int) -> Iterator[tuple[str, int]]:
        for port in range(low, high + 1):
            for h in range(first_host, first_host + hosts):
                yield f"{CLIENT_NET}.{h}", port

    def next(self) -> tuple[str, int]:
        return next(self._iter)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) and of its live descendants (``serve av-edge --workers N``
    runs its workers as child processes), from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0  # exited meanwhile
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total + sum(cpu_seconds(child) for child in _children(pid))


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as handle:
                out.extend(int(child) for child in handle.read().split())
        except OSError:
            continue
    return out


class PhaseClock:
    """Counts completed operations between ``start()`` and ``stop()``, with the server's and our CPU time."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.count = 0
        self.counting = False
        self.started = self.ended = 0.0
        self.server_cpu = self.client_cpu = 0.0

    def start(self) -> None:
        self.count = 0
        self.server_cpu = -cpu_seconds(self.server_pid)
        self.client_cpu = -time.process_time()
        self.counting = True
        self.started = time.perf_counter()

    def stop(self) -> None:
        self.counting = False
        self.ended = time.perf_counter()
        self.server_cpu += cpu_seconds(self.server_pid)
        self.client_cpu += time.process_time()

    def result(self) -> PhaseResult:
        wall = self.ended - self.started
        return PhaseResult(
            rate=self.count / wall,
            server_us_per_op=self.server_cpu / self.count * 1e6 if self.count else float("nan"),
            server_cpu=self.server_cpu / wall,
            client_cpu=self.client_cpu / wall,
        )


# ------------------------------------------------------------------------------------------------
# phase 1: STUN Binding


class BindingFlood(asyncio.DatagramProtocol):
    """``window`` Binding requests in flight on one socket; every success response sends the next."""

    def __init__(self, clock: PhaseClock, window: int, rng: random.Random, errors: Counter[str]) -> None:
        self.clock = clock
        self.window = window
        self.errors = errors
        template = stun.request(stun.StunMethod.BINDING, bytes(12)).serialize()
        self.head = template[:8]  # type, length 0, cookie: the transaction ID is spliced in
        self.prefix = rng.getrandbits(32).to_bytes(4, "big")
        self.seq = 0
        self.received_since_tick = 0
        self.transport: Any = None
        self.checked = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def send_one(self) -> None:
        self.seq += 1
        self.transport.sendto(self.head + self.prefix + self.seq.to_bytes(8, "big"))

    def fill(self) -> None:
        for _ in range(self.window):
            self.send_one()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if data[:2] != b"\x01\x01" or data[8:12] != self.prefix:
            self.errors["binding: not a success for us"] += 1
            return
        if not self.checked:  # the first answer is decoded fully, to be sure we count real responses
            self.checked = True
            message = stun.parse(data)
            if message.get(stun.XOR_MAPPED_ADDRESS) is None:
                self.errors["binding: no XOR-MAPPED-ADDRESS"] += 1
        self.received_since_tick += 1
        if self.clock.counting:
            self.clock.count += 1
        self.send_one()

    def error_received(self, exc: Exception) -> None:
        self.errors[f"binding: {exc}"] += 1


async def phase_binding(server: turnpeers.TurnServer, args: argparse.Namespace, rng: random.Random,
                        addresses: ClientAddresses, errors: Counter[str]) -> PhaseResult:
    loop = asyncio.get_running_loop()
    clock = PhaseClock(server.process.pid)
    floods: list[tuple[Any, BindingFlood]] = []
    try:
        for _ in range(args.binding_sockets):
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: BindingFlood(clock, args.binding_window, rng, errors),
                local_addr=addresses.next(), remote_addr=(server.host, server.udp_port),
            )
            floods.append((transport, protocol))
        for _, protocol in floods:
            protocol.fill()
        return await measure(server, clock, args, floods=[p for _, p in floods])
    finally:
        for transport, _ in floods:
            transport.close()


async def measure(server: turnpeers.TurnServer, clock: PhaseClock, args: argparse.Namespace,
                  floods: list[Any]) -> PhaseResult:
    """Warm up, count for ``phase_seconds``; refill windows that stalled (loss) every 100 ms."""
    deadline = time.perf_counter() + args.warmup_seconds
    while time.perf_counter() < deadline:
        await asyncio.sleep(0.1)
        refill(floods)
    clock.start()
    deadline = clock.started + args.phase_seconds
    while time.perf_counter() < deadline:
        await asyncio.sleep(min(0.1, max(0.0, deadline - time.perf_counter())))
        refill(floods)
    clock.stop()
    return clock.result()


def refill(floods: list[Any]) -> None:
    for flood in floods:
        if flood.received_since_tick == 0:
            flood.fill()  # everything in flight was lost: start the window again
        flood.received_since_tick = 0


# ------------------------------------------------------------------------------------------------
# TURN transactions (allocation and relay phases)


class TurnSocket(asyncio.DatagramProtocol):
    """One client 5-tuple: request/response matching by transaction ID, ChannelData to a callback."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.pending: dict[bytes, asyncio.Future[stun.Message]] = {}
        self.on_channel_data: Callable[[bytes], None] | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if 0x40 <= data[0] <= 0x7F:
            if self.on_channel_data is not None:
                self.on_channel_data(data)
            return
        try:
            message = turn.parse(data)
        except MalformedMessage:
            return
        future = self.pending.pop(message.transaction_id, None)
        if future is not None and not future.done():
            future.set_result(message)

    def error_received(self, exc: Exception) -> None:
        pass

    async def transact(self, request: stun.Message, key: bytes | None) -> stun.Message:
        wire = request.serialize(key) if key is not None else request.serialize()
        future: asyncio.Future[stun.Message] = asyncio.get_running_loop().create_future()
        self.pending[request.transaction_id] = future
        try:
            for _ in range(RETRIES):
                self.transport.sendto(wire)
                try:
                    return await asyncio.wait_for(asyncio.shield(future), REQUEST_TIMEOUT_S)
                except TimeoutError:
                    continue
            raise TimeoutError(f"{request.method!r}: no answer after {RETRIES} tries")
        finally:
            self.pending.pop(request.transaction_id, None)
            if not future.done():
                future.cancel()


def error_of(message: stun.Message) -> str:
    code = message.get(stun.ERROR_CODE)
    return f"{code.code} {code.reason.rstrip(chr(0))}" if code is not None else "error without ERROR-CODE"


@dataclass
class Allocation:
    sock: TurnSocket
    transport: Any
    key: bytes
    realm: str
    nonce: str
    relayed: stun.Address
    user: str


async def allocate(server: turnpeers.TurnServer, rng: random.Random, local: tuple[str, int],
                   lifetime: int = 600) -> Allocation:
    """Allocate -> 401 -> authenticated Allocate; returns the open allocation (caller closes it)."""
    loop = asyncio.get_running_loop()
    transport, sock = await loop.create_datagram_endpoint(
        TurnSocket, local_addr=local, remote_addr=(server.host, server.udp_port),
    )
    try:
        attrs = (stun.attr(turn.REQUESTED_TRANSPORT, UDP), stun.attr(turn.LIFETIME, lifetime))
        first = stun.request(turn.TurnMethod.ALLOCATE, stun.new_transaction_id(rng), *attrs, dialect=turn.RFC)
        challenge = await sock.transact(first, None)
        code = challenge.get(stun.ERROR_CODE)
        if code is None or code.code != 401:
            raise RuntimeError(f"first Allocate: expected 401, got {error_of(challenge)}")
        realm, nonce = challenge.get(stun.REALM), challenge.get(stun.NONCE)
        assert realm is not None and nonce is not None, "401 without REALM/NONCE"
        key = stun.long_term_key(server.user, realm, server.password)
        second = stun.request(
            turn.TurnMethod.ALLOCATE, stun.new_transaction_id(rng), *attrs,
            stun.attr(stun.USERNAME, server.user), stun.attr(stun.REALM, realm), stun.attr(stun.NONCE, nonce),
            dialect=turn.RFC,
        )
        answer = await sock.transact(second, key)
        relayed = answer.get(turn.XOR_RELAYED_ADDRESS)
        if answer.cls != stun.MessageClass.SUCCESS or relayed is None:
            raise RuntimeError(f"authenticated Allocate: {error_of(answer)}")
        return Allocation(sock, transport, key, realm, nonce, relayed, server.user)
    except BaseException:
        transport.close()
        raise


async def authenticated(alloc: Allocation, rng: random.Random, method: int, *attrs: stun.Attribute) -> stun.Message:
    def build() -> stun.Message:
        return stun.request(
            method, stun.new_transaction_id(rng), *attrs, stun.attr(stun.USERNAME, alloc.user),
            stun.attr(stun.REALM, alloc.realm), stun.attr(stun.NONCE, alloc.nonce), dialect=turn.RFC,
        )

    answer = await alloc.sock.transact(build(), alloc.key)
    code = answer.get(stun.ERROR_CODE)
    if code is not None and code.code == 438:  # RFC 8656 §9.2: stale nonce: retry once with the new one
        alloc.nonce = answer.get(stun.NONCE) or alloc.nonce
        answer = await alloc.sock.transact(build(), alloc.key)
    return answer


async def release(alloc: Allocation, rng: random.Random) -> stun.Message:
    try:
        return await authenticated(alloc, rng, turn.TurnMethod.REFRESH, stun.attr(turn.LIFETIME, 0))
    finally:
        alloc.transport.close()


# ------------------------------------------------------------------------------------------------
# phase 2: allocations/s


async def phase_alloc(server: turnpeers.TurnServer, args: argparse.Namespace, rng: random.Random,
                      addresses: ClientAddresses, errors: Counter[str]) -> PhaseResult:
    clock = PhaseClock(server.process.pid)
    stop_at = time.perf_counter() + args.warmup_seconds + args.phase_seconds

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            try:
                alloc = await allocate(server, rng, addresses.next())
                answer = await release(alloc, rng)
            except (RuntimeError, TimeoutError, OSError, AssertionError) as exc:
                errors[f"alloc: {str(exc)[:80]}"] += 1
                continue
            if answer.cls != stun.MessageClass.SUCCESS:
                errors[f"alloc: Refresh(0) {error_of(answer)}"] += 1
            elif clock.counting:
                clock.count += 1

    tasks = [asyncio.create_task(worker()) for _ in range(args.concurrency)]
    try:
        await asyncio.sleep(args.warmup_seconds)
        clock.start()
        await asyncio.sleep(args.phase_seconds)
        clock.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), REQUEST_TIMEOUT_S * RETRIES * 4 + 5)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return clock.result()


# ------------------------------------------------------------------------------------------------
# phase 3: relayed ChannelData echo


class ChannelEcho:
    """``window`` ChannelData messages in flight on one allocation's channel to the echo peer."""

    def __init__(self, alloc: Allocation, channel: int, window: int, clock: PhaseClock, size: int) -> None:
        self.alloc = alloc
        self.channel = channel
        self.window = window
        self.clock = clock
        self.packet = turn.encode_channel_data(channel, bytes(range(size % 256)) * (size // 256) + bytes(size % 256))
        self.received_since_tick = 0
        self.bad = 0
        alloc.sock.on_channel_data = self.received

    def fill(self) -> None:
        sendto = self.alloc.transport.sendto
        for _ in range(self.window):
            sendto(self.packet)

    def received(self, data: bytes) -> None:
        channel, payload = turn.decode_channel_data(data)
        if channel != self.channel or len(payload) + 4 != len(self.packet):
            self.bad += 1
            return
        self.received_since_tick += 1
        if self.clock.counting:
            self.clock.count += 2  # two relayed packets per echo: client->peer and peer->client
        self.alloc.transport.sendto(self.packet)


async def phase_relay(server: turnpeers.TurnServer, args: argparse.Namespace, rng: random.Random,
                      addresses: ClientAddresses, errors: Counter[str], peer: tuple[str, int]) -> PhaseResult:
    clock = PhaseClock(server.process.pid)
    allocations: list[Allocation] = []
    echoes: list[ChannelEcho] = []
    try:
        for index in range(args.relay_allocations):
            alloc = await allocate(server, rng, addresses.next())
            allocations.append(alloc)
            channel = turn.CHANNEL_MIN + index  # RFC 8656 §12: 0x4000-0x4FFF
            answer = await authenticated(
                alloc, rng, turn.TurnMethod.CHANNEL_BIND,
                stun.attr(turn.CHANNEL_NUMBER, channel), stun.attr(turn.XOR_PEER_ADDRESS, stun.Address(*peer)),
            )
            if answer.cls != stun.MessageClass.SUCCESS:
                raise RuntimeError(f"ChannelBind: {error_of(answer)}")
            echoes.append(ChannelEcho(alloc, channel, args.relay_window, clock, args.payload))
        for echo in echoes:
            echo.fill()
        result = await measure(server, clock, args, floods=echoes)
        bad = sum(e.bad for e in echoes)
        if bad:
            errors["relay: unexpected ChannelData"] += bad
        return result
    finally:
        for alloc in allocations:
            try:
                await release(alloc, rng)
            except (TimeoutError, OSError, RuntimeError):
                errors["relay: Refresh(0) failed"] += 1


# ------------------------------------------------------------------------------------------------
# orchestration


@dataclass
class PhaseResult:
    rate: float  # operations/s (relay: relayed packets/s)
    server_us_per_op: float  # server CPU (all threads) per operation
    server_cpu: float  # server CPU seconds per wall second (1.0 = one core busy)
    client_cpu: float  # this client's CPU seconds per wall second


@dataclass
class ServerRuns:
    server: turnpeers.TurnServer
    results: dict[str, list[PhaseResult]] = field(default_factory=lambda: {"binding": [], "alloc": [], "relay": []})
    errors: Counter[str] = field(default_factory=Counter)


def versions() -> dict[str, str]:
    def run(*argv: str) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"

    coturn = next((line for line in run("dpkg-query", "-W", "coturn").splitlines()), "?")
    return {
        "coturn": coturn.replace("\t", " "),
        "edgesim": run("git", "-C", str(ROOT), "describe", "--always", "--dirty") or "?",
        "python": platform.python_version(),
        "uvloop": uvloop.__version__,
        "kernel": platform.release(),
    }


def machine() -> str:
    model = "?"
    try:
        with open("/proc/cpuinfo") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "?")
    except OSError:
        pass
    return f"nproc={os.cpu_count()} cpu={model!r}"


def pin_self(cpus: str) -> None:
    wanted = {int(c) for part in cpus.split(",") for c in _expand(part)}
    os.sched_setaffinity(0, wanted & os.sched_getaffinity(0) or os.sched_getaffinity(0))


def _expand(part: str) -> list[int]:
    if "-" in part:
        low, high = part.split("-")
        return list(range(int(low), int(high) + 1))
    return [int(part)]


async def bench(args: argparse.Namespace, servers: list[ServerRuns], peer: tuple[str, int]) -> None:
    rng = random.Random(args.seed)
    addresses = ClientAddresses()
    for run in range(args.runs):
        for phase in ("binding", "alloc", "relay"):
            for entry in servers if run % 2 == 0 else list(reversed(servers)):
                if phase == "binding":
                    result = await phase_binding(entry.server, args, rng, addresses, entry.errors)
                elif phase == "alloc":
                    result = await phase_alloc(entry.server, args, rng, addresses, entry.errors)
                else:
                    result = await phase_relay(entry.server, args, rng, addresses, entry.errors, peer)
                entry.results[phase].append(result)
                print(f"run {run + 1}/{args.runs} {entry.server.kind:8s} {phase:8s} {result.rate:10.0f}/s  "
                      f"server {result.server_us_per_op:6.1f} µs/op, server CPU {result.server_cpu:4.0%}, "
                      f"client CPU {result.client_cpu:4.0%}", flush=True)
                await asyncio.sleep(args.pause_seconds)  # let deleted allocations linger out (coturn ~1 s)


def median(results: list[PhaseResult]) -> PhaseResult:
    return PhaseResult(*(statistics.median(getattr(r, f) for r in results)
                         for f in ("rate", "server_us_per_op", "server_cpu", "client_cpu")))


def ratio(medians: dict[str, dict[str, PhaseResult]], phase: str) -> float | None:
    """edgesim / coturn for one phase, or None when either side did not run."""
    if "edgesim" not in medians or "coturn" not in medians or not medians["coturn"][phase].rate:
        return None
    return round(medians["edgesim"][phase].rate / medians["coturn"][phase].rate, 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--phase-seconds", type=float, default=3.0)
    parser.add_argument("--warmup-seconds", type=float, default=0.5)
    parser.add_argument("--pause-seconds", type=float, default=1.5)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--binding-sockets", type=int, default=8)
    parser.add_argument("--binding-window", type=int, default=32)
    parser.add_argument("--relay-allocations", type=int, default=8)
    parser.add_argument("--relay-window", type=int, default=32)
    parser.add_argument("--payload", type=int, default=100)
    parser.add_argument("--server-cpus", default="0", help="taskset CPU list for both servers ('' = no pinning)")
    parser.add_argument("--client-cpus", default="1", help="CPU list for this client and the echo peer")
    parser.add_argument("--servers", default="coturn,edgesim", help="comma list of coturn, edgesim")
    parser.add_argument("--workers", type=int, default=1,
                        help="edgesim serve av-edge --workers N against coturn --relay-threads N (default 1: "
                        "both as before)")
    args = parser.parse_args(argv)
    if not 0 < args.phase_seconds <= 10 or not 0 < args.runs <= 20:
        parser.error("--phase-seconds must be in (0, 10] and --runs in 1..20")
    args.seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    wanted = [s.strip() for s in args.servers.split(",") if s.strip()]
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    coturn_threads = ["--relay-threads", str(args.workers)] if args.workers > 1 else []
    edgesim_workers = ["--workers", str(args.workers)] if args.workers > 1 else []

    print(f"seed={args.seed} {machine()}")
    print("versions: " + " ".join(f"{k}={v}" for k, v in versions().items()))
    print(f"servers pinned to CPU {args.server_cpus or '-'}; "
          f"client + echo peer pinned to CPU {args.client_cpus or '-'}; "
          f"{args.runs} runs x {args.phase_seconds} s per phase (+{args.warmup_seconds} s warm-up)"
          + (f"; edgesim --workers {args.workers}, coturn --relay-threads {args.workers}" if args.workers > 1 else ""))
    server_cpus = args.server_cpus or None
    if args.client_cpus:
        pin_self(args.client_cpus)

    servers: list[ServerRuns] = []
    peer_process: turnpeers.PeerProcess | None = None
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="edgesim-turnbench-") as tmp:
        workdir = Path(tmp)
        try:
            if "coturn" in wanted:
                servers.append(ServerRuns(turnpeers.start_coturn(
                    workdir, relay_range=(50000, 59999), cpu_list=server_cpus,
                    extra=["--max-allocate-lifetime", "3600", "--total-quota", "0", "--user-quota", "0",
                           *coturn_threads],
                )))
            if "edgesim" in wanted:
                available, why = turnpeers.edgesim_serve_available()
                if available:
                    servers.append(ServerRuns(turnpeers.start_edgesim(
                        workdir, relay_range=(50000, 59999), cpu_list=server_cpus,
                        extra=["--seed", str(args.seed), *edgesim_workers], ready_timeout=60.0,
                    )))
                else:
                    skipped["edgesim"] = why
            peer_process, peer_port = turnpeers.start_turnutils_peer(workdir)
            if args.client_cpus and shutil.which("taskset"):
                subprocess.run(["taskset", "-pc", args.client_cpus, str(peer_process.pid)],
                               capture_output=True, check=False, timeout=10)
            budget = args.runs * 3 * len(servers) * (args.phase_seconds + 10) + 60
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(asyncio.wait_for(bench(args, servers, (turnpeers.PEER_HOST, peer_port)), budget))
        finally:
            if peer_process is not None:
                peer_process.stop()
            for entry in servers:
                alive = entry.server.process.alive()
                entry.server.stop()
                if not alive:
                    print(f"!! {entry.server.kind} died during the run:\n{entry.server.process.log_tail()}")

    print()
    print("medians: rate (relay = relayed pkt/s), server CPU µs per op, server and client CPU (1.0 = one core)")
    print(f"{'phase':8s} " + "".join(f"{e.server.kind + ' /s':>15s} {'µs/op':>7s} {'srv':>5s} {'cli':>5s}"
                                      for e in servers) + ("   ratio" if len(servers) == 2 else ""))
    medians: dict[str, dict[str, PhaseResult]] = {}
    for phase in ("binding", "alloc", "relay"):
        row = f"{phase:8s} "
        for entry in servers:
            m = median(entry.results[phase])
            medians.setdefault(entry.server.kind, {})[phase] = m
            row += f"{m.rate:15.0f} {m.server_us_per_op:7.1f} {m.server_cpu:5.2f} {m.client_cpu:5.2f}"
        print(row + (f"   {ratio(medians, phase)}" if len(servers) == 2 else ""))
    for entry in servers:
        if entry.errors:
            print(f"{entry.server.kind} errors: {dict(entry.errors)}")
    for name, why in skipped.items():
        print(f"{name} skipped: {why}")

    summary: dict[str, Any] = {
        "seed": args.seed,
        "runs": args.runs,
        "workers": args.workers,
        **{f"{kind}_{phase}_per_s": round(m.rate) for kind, phases in medians.items() for phase, m in phases.items()},
        **{f"{kind}_{phase}_server_us": round(m.server_us_per_op, 2) for kind, phases in medians.items()
           for phase, m in phases.items()},
        **{f"{phase}_ratio": ratio(medians, phase) for phase in ("binding", "alloc", "relay")},
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
