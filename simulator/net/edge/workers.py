"""``edgesim serve av-edge --workers N``: one A/V Edge interface served by N processes.

Every worker is a whole :class:`~simulator.net.edge.av_edge.AvEdgeServer` (its own TURN core, event loop and
relay sockets) in a process of its own (``multiprocessing`` *spawn*: a fresh interpreter, no inherited loop).
What makes N of them one server:

* **Listeners.** Each worker binds the UDP and TCP listening ports itself with ``SO_REUSEPORT`` (worker 0
  first, so port 0 means one port for all). Linux spreads UDP datagrams over the group by a hash of the
  4-tuple (source and destination address and port), so every datagram of one client 5-tuple reaches the
  same worker as long as the group does not change (it does not while serving); TCP connections are
  spread at accept time, and a connection stays with the worker that accepted it.
* **Relay ports.** Each worker owns a disjoint contiguous slice of the relay range (:func:`relay_slices`):
  a port is bound by exactly one worker, and peers reach the owner directly at the relay address.
* **Nonces.** One nonce secret, made by the parent and passed at start
  (:meth:`~simulator.core.turn.auth.Authenticator.use_secret`): a nonce from one worker validates on
  every other (nonces are stateless: expiry + HMAC(secret, expiry, client IP)).
* **Credentials.** Static users and the REST/HMAC secret are given to every worker; MRAS credentials made
  with :func:`~simulator.core.credentials.derived_credential` (username = expiry + identity, password =
  HMAC(secret, username)) are verified by any worker without a shared store.
* **RFC 6062.** A connection ID names its worker (``cid % N == index``, :class:`WorkerRandom`). A data
  connection's ConnectionBind accepted by another worker is **handed over**: that worker passes the
  connection's file descriptor, with the bytes it read, to the owner over a UNIX datagram socket
  (``SCM_RIGHTS``); the owner adopts the socket and handles the ConnectionBind as if it had accepted the
  connection. Hand-over rather than steering at accept time (an eBPF ``SO_ATTACH_REUSEPORT_EBPF`` program)
  because which worker owns the connection is only known from the first message's CONNECTION-ID, which
  the kernel cannot read at SYN time; a hand-over costs one ``sendmsg`` per data connection and nothing on
  the packet path, and needs no privilege.
* **Metrics.** The parent asks every worker for a snapshot over its pipe when Prometheus scrapes or the
  summary is printed, and exposes one series per worker (``interface="<listen>#w<i>"``) and the relay
  pools summed.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import dataclasses
import gc
import multiprocessing
import os
import random
import secrets
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, TypeVar, cast

from simulator.core.nat import StaticNat, StaticNatConfig
from simulator.core.ports import PoolMetrics
from simulator.core.turn.state import TurnMetrics
from simulator.net.edge.av_edge import AvEdgeServer, PoolNatView, _Stream
from simulator.net.transport.arrivals import ArrivalLog, start_recording

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

SnapshotT = TypeVar("SnapshotT")

START_TIMEOUT = 60.0  # a spawned worker imports the simulator: seconds on a loaded machine
REPLY_TIMEOUT = 10.0
_CONNECTION_BIND = b"\x00\x0b"  # RFC 6062 ConnectionBind request (method 0x00B, class request)
_MAGIC_COOKIE = b"\x21\x12\xa4\x42"
_CONNECTION_ID_ATTR = 0x002A
_HEAD_LIMIT = 20 + 0xFFFF  # a whole STUN message at most


def relay_slices(first: int, last: int, count: int) -> list[tuple[int, int]]:
    """``count`` disjoint contiguous slices covering ``first..last`` (the earlier ones one port larger)."""
    size = last - first + 1
    if count < 1 or size < count:
        raise ValueError(f"cannot split relay ports {first}-{last} among {count} workers")
    out: list[tuple[int, int]] = []
    start = first
    for index in range(count):
        width = size // count + (1 if index < size % count else 0)
        out.append((start, start + width - 1))
        start += width
    return out


def connection_owner(connection_id: int, count: int) -> int:
    """The worker that made RFC 6062 connection ID ``connection_id``."""
    return connection_id % count


class WorkerRandom(random.Random):
    """The core's RNG in worker ``index`` of ``count``: 32-bit draws (RFC 6062 connection IDs) ≡ index mod count."""

    def __init__(self, seed: int, index: int, count: int) -> None:
        super().__init__(seed)
        self.index = index
        self.count = count

    def getrandbits(self, k: int, /) -> int:
        value = super().getrandbits(k)
        if k != 32 or self.count == 1:
            return value
        value += self.index - value % self.count
        return value - self.count if value > 0xFFFFFFFF else value


def connection_bind_id(head: bytes) -> int | bool | None:
    """The CONNECTION-ID of the ConnectionBind that ``head`` starts with; None: not one; True: need more bytes."""
    if len(head) < 20:
        return True if _CONNECTION_BIND.startswith(head[:2]) else None
    if head[:2] != _CONNECTION_BIND or head[4:8] != _MAGIC_COOKIE:
        return None
    total = 20 + int.from_bytes(head[2:4], "big")
    if len(head) < total:
        return True
    pos = 20
    while pos + 4 <= total:
        kind = int.from_bytes(head[pos:pos + 2], "big")
        length = int.from_bytes(head[pos + 2:pos + 4], "big")
        if kind == _CONNECTION_ID_ATTR and length == 4 and pos + 8 <= total:
            return int.from_bytes(head[pos + 4:pos + 8], "big")
        pos += 4 + ((length + 3) & ~3)
    return None


# ------------------------------------------------------------------ RFC 6062 hand-over between workers


def _steer_address(token: str, index: int) -> str:
    return f"\0edgesim-av-{token}-w{index}"  # Linux abstract namespace: nothing to clean up


class Steering:
    """The UNIX datagram socket through which workers hand client TCP connections to each other."""

    def __init__(self, index: int, count: int, token: str) -> None:
        self.index = index
        self.count = count
        self.token = token
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.bind(_steer_address(token, index))
        self.edge: AvEdgeServer | None = None
        self.handed_out = 0
        self.adopted = 0

    def stream(self, edge: AvEdgeServer) -> asyncio.Protocol:
        """The TCP listener's protocol factory."""
        return _SteeringStream(edge, self)

    def start(self, edge: AvEdgeServer) -> None:
        self.edge = edge
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._readable)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()

    def hand_over(self, stream: _Stream, head: bytes, owner: int) -> bool:
        """Pass ``stream``'s connection and what was read of it to worker ``owner``; False: keep it here."""
        edge = self.edge
        transport = stream.transport
        if edge is None or transport is None or not edge.running:
            return False
        raw = transport.get_extra_info("socket")
        if raw is None:
            return False
        try:
            # socket.send_fds ignores its address argument (CPython 3.11): sendmsg with SCM_RIGHTS directly
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [raw.fileno()]))]
            self.sock.sendmsg([head], rights, 0, _steer_address(self.token, owner))
        except OSError:
            return False  # the owner's queue is full or it is gone: answered here (400, unknown CONNECTION-ID)
        self.handed_out += 1
        stream.refused = True  # connection_lost: nothing left to report
        edge.streams.discard(stream)
        edge.core.stream_closed(stream, edge.time())
        edge.flush()
        transport.close()  # the descriptor in flight keeps the connection open: no FIN, no RST
        return True

    def _readable(self) -> None:
        for _ in range(64):
            try:
                head, fds, _flags, _addr = socket.recv_fds(self.sock, _HEAD_LIMIT, 4)
            except OSError:  # BlockingIOError: nothing more
                return
            for fd in fds:
                self._adopt(fd, head)

    def _adopt(self, fd: int, head: bytes) -> None:
        edge = self.edge
        sock = socket.socket(fileno=fd)
        if edge is None or not edge.running:
            sock.close()
            return
        sock.setblocking(False)
        self.adopted += 1
        loop = asyncio.get_running_loop()
        edge.spawn(loop.connect_accepted_socket(lambda: _HandedStream(edge, head), sock))


class _SteeringStream(_Stream):
    """A client connection on the shared TCP listener: its first message decides which worker serves it."""

    def __init__(self, edge: AvEdgeServer, steering: Steering) -> None:
        super().__init__(edge)
        self.steering = steering
        self.head: bytearray | None = bytearray()

    def data_received(self, data: bytes) -> None:
        head = self.head
        if head is None:
            super().data_received(data)
            return
        head += data
        found = connection_bind_id(bytes(head))
        if found is True and len(head) < _HEAD_LIMIT:
            return  # the first message is not complete yet
        self.head = None
        steering = self.steering
        if isinstance(found, int) and not isinstance(found, bool):
            owner = connection_owner(found, steering.count)
            if owner != steering.index and steering.hand_over(self, bytes(head), owner):
                return
        super().data_received(bytes(head))


class _HandedStream(_Stream):
    """A client connection another worker accepted and handed over, with the bytes it had read."""

    def __init__(self, edge: AvEdgeServer, head: bytes) -> None:
        super().__init__(edge)
        self.head = head

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.head and not self.refused:
            head, self.head = self.head, b""
            self.data_received(head)


# ------------------------------------------------------------------ one worker process


@dataclass(frozen=True)
class WorkerNat:
    """The embedded lab's pool 1:1 NAT as one worker emulates it (a :class:`PoolNatView` over its own table).

    The NAT's rules are stateless but for ``snat_inbound``'s inside-address bindings: each worker keeps its own
    table, seeded ``f"{seed}:w{index}"``, so those bindings are per worker rather than one per pool.
    """

    config: StaticNatConfig
    private_host: str
    listeners: bool
    seed: str


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process needs to start (pickled to the spawned interpreter)."""

    index: int
    count: int
    token: str
    listen: str
    public: str
    relay_bind: str | None
    udp_port: int
    tcp_port: int
    first_port: int
    last_port: int
    nonce_secret: bytes
    users: tuple[tuple[str, str], ...] = ()
    realm: str = "edgesim"
    secret: str | None = None
    max_allocations: int | None = None
    user_quota: int | None = None
    seed: int | None = None
    config: dict[str, Any] | None = None  # AvEdgeServer ``config`` (the lab: private_hosts, alternate_host)
    nat: WorkerNat | None = None  # the embedded lab's pool NAT emulation
    record_arrivals: bool = False  # firewall lab mode: what reached the listeners (``serve edge --observations``)


@dataclass
class Snapshot:
    """One worker's counters, as the parent's metrics read them."""

    metrics: TurnMetrics
    allocations_active: int
    streams: int
    relay_sockets: int
    pools: list[PoolMetrics]
    handed_out: int = 0
    adopted: int = 0


def _snapshot(edge: AvEdgeServer, steering: Steering) -> Snapshot:
    core = edge.core
    return Snapshot(core.metrics, core.allocation_count, len(edge.streams), len(edge._binder.relays),
                    edge.ports.metrics(), steering.handed_out, steering.adopted)


def worker_entry(spec: WorkerSpec, conn: Connection) -> None:
    """The worker process: run one AvEdgeServer until the parent says stop (or goes away)."""
    # Ctrl-C and a group SIGTERM reach the workers too: the parent collects their counters, then stops them; a
    # parent that dies without doing so closes the pipe, which stops them as well.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    import uvloop

    sys.exit(uvloop.run(_worker_main(spec, conn)))


async def _worker_main(spec: WorkerSpec, conn: Connection) -> int:
    from simulator.core.credentials import CredentialStore

    store = CredentialStore(rest_secret=spec.secret)
    for name, password in spec.users:
        store.add_static(name, password)
    steering = Steering(spec.index, spec.count, spec.token)
    arrivals = ArrivalLog() if spec.record_arrivals else None
    if arrivals is not None:
        start_recording(arrivals)  # before the server exists: it takes the recorder when it is made
    nat = spec.nat
    view = None if nat is None else PoolNatView(
        StaticNat(nat.config, random.Random(f"{nat.seed}:w{spec.index}")), nat.private_host, spec.public,
        listeners=nat.listeners)
    edge = AvEdgeServer(
        spec.listen, spec.public, relay_host=spec.relay_bind, udp_port=spec.udp_port, tcp_port=spec.tcp_port,
        credentials=store, realm=spec.realm, first_port=spec.first_port, last_port=spec.last_port,
        max_allocations=spec.max_allocations, user_quota=spec.user_quota, seed=spec.seed, reuse_port=True,
        nonce_secret=spec.nonce_secret, core_random=lambda seed: WorkerRandom(seed, spec.index, spec.count),
        stream_factory=steering.stream, config=spec.config, nat_view=view)
    try:
        await edge.start()
    except OSError as error:
        steering.close()
        conn.send(("error", str(error)))
        return 3
    steering.start(edge)
    gc.collect()
    gc.freeze()  # as the single-process server: what exists now lives as long as the process
    assert edge.udp_address is not None and edge.tcp_address is not None
    conn.send(("ready", edge.udp_address.port, edge.tcp_address.port))
    await serve_parent(conn, lambda: _snapshot(edge, steering), arrivals)
    final = _snapshot(edge, steering)
    steering.close()
    await edge.stop()
    with contextlib.suppress(OSError):
        conn.send(("stopped", final))
    return 0


async def serve_parent(conn: Connection, snapshot: Callable[[], Any], arrivals: ArrivalLog | None) -> None:
    """A worker's side of its pipe: answer ``metrics`` (a ``snapshot()``) and ``arrivals`` until the parent says
    ``stop`` or goes away (every kind of worker: A/V Edge here, Access Edge in :mod:`.ae_workers`)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_message() -> None:
        try:
            while conn.poll():
                what = conn.recv()
                if what == "metrics":
                    conn.send(("metrics", snapshot()))
                elif what == "arrivals":
                    conn.send(("arrivals", [] if arrivals is None else list(arrivals.entries)))
                elif what == "stop":
                    stop.set()
                    return
        except (EOFError, OSError):
            stop.set()  # the parent is gone

    loop.add_reader(conn.fileno(), on_message)
    try:
        await stop.wait()
    finally:
        loop.remove_reader(conn.fileno())


def collect_snapshots(conns: list[Connection], last: list[SnapshotT]) -> list[SnapshotT]:
    """The parent's side: every worker's counters now; a worker that does not answer gives its ``last`` ones."""
    out: list[SnapshotT] = []
    for index, conn in enumerate(conns):
        snap: SnapshotT | None = None
        with contextlib.suppress(OSError, EOFError):
            conn.send("metrics")
            if conn.poll(REPLY_TIMEOUT):
                reply = conn.recv()
                if reply[0] in ("metrics", "stopped"):
                    snap = reply[1]
        if snap is None and index < len(last):
            snap = last[index]
        if snap is not None:
            out.append(snap)
    return out


async def stop_workers(processes: list[BaseProcess], conns: list[Connection], last: list[Any]) -> None:
    """The parent's side: tell every worker to stop, keep the final counters each sends back in ``last``, wait
    for (or kill) the processes, then forget them."""
    for conn in conns:
        with contextlib.suppress(OSError):
            conn.send("stop")
    for index, (process, conn) in enumerate(zip(processes, conns, strict=True)):
        reply = await receive_reply(conn, REPLY_TIMEOUT) if process.is_alive() else None
        if reply is not None and reply[0] == "stopped" and index < len(last):
            last[index] = reply[1]
        await asyncio.get_running_loop().run_in_executor(None, process.join, REPLY_TIMEOUT)
        if process.is_alive():
            process.kill()
            process.join()
        conn.close()
    processes.clear()
    conns.clear()


def collect_arrivals(conns: list[Connection]) -> list[dict[str, Any]]:
    """The parent's side: every worker's recorded arrivals (``record_arrivals``), in time order."""
    out: list[dict[str, Any]] = []
    for conn in conns:
        with contextlib.suppress(OSError, EOFError):
            conn.send("arrivals")
            while conn.poll(REPLY_TIMEOUT):
                reply = conn.recv()
                if reply[0] == "arrivals":
                    out.extend(reply[1])
                    break
    return sorted(out, key=lambda entry: entry["at"])


# ------------------------------------------------------------------ the parent


class _CoreView:
    def __init__(self, snap: Snapshot) -> None:
        self.metrics = snap.metrics
        self.allocation_count = snap.allocations_active


class _PortsView:
    def __init__(self, pools: list[PoolMetrics]) -> None:
        self._pools = pools

    def metrics(self) -> list[PoolMetrics]:
        return self._pools


class WorkerView:
    """What :class:`~simulator.lab.metrics.EdgesimCollector` reads of an AvEdgeServer, from a worker's snapshot."""

    running = True

    def __init__(self, snap: Snapshot, pools: list[PoolMetrics]) -> None:
        self.core = _CoreView(snap)
        self.streams = range(snap.streams)  # only its length is read
        self.ports = _PortsView(pools)


def merge_pools(snaps: list[Snapshot]) -> list[PoolMetrics]:
    """The relay pools of all workers, one per (address, transport), every figure summed."""
    merged: dict[tuple[str, str], PoolMetrics] = {}
    for snap in snaps:
        for pool in snap.pools:
            key = (pool.address, pool.transport)
            have = merged.get(key)
            if have is None:
                merged[key] = pool
            else:
                sums = {f.name: getattr(have, f.name) + getattr(pool, f.name)
                        for f in dataclasses.fields(PoolMetrics) if f.name not in ("address", "transport")}
                merged[key] = dataclasses.replace(have, **sums)
    return list(merged.values())


@dataclass
class WorkerPool:
    """The parent's side: start N workers, ask them for counters, stop them."""

    specs: list[WorkerSpec]
    processes: list[BaseProcess] = field(default_factory=list)
    conns: list[Connection] = field(default_factory=list)
    udp_port: int = 0
    tcp_port: int = 0
    last: list[Snapshot] = field(default_factory=list)

    @classmethod
    def plan(cls, count: int, *, listen: str, public: str, relay_bind: str | None, udp_port: int, tcp_port: int,
             first_port: int, last_port: int, users: tuple[tuple[str, str], ...] = (), realm: str = "edgesim",
             secret: str | None = None, max_allocations: int | None = None, user_quota: int | None = None,
             seed: int | None = None, config: dict[str, Any] | None = None,
             nat: WorkerNat | None = None, record_arrivals: bool = False) -> WorkerPool:
        """The workers of one interface: relay slices, quota shares, seeds and one nonce secret."""
        rng = random.Random(seed) if seed is not None else random.SystemRandom()
        nonce_secret = rng.randbytes(20)
        # Never from the seed: two pools of one process (the lab's interfaces and nodes) need distinct sockets.
        token = f"{os.getpid()}-{secrets.token_hex(6)}"
        specs = []
        for index, (first, last) in enumerate(relay_slices(first_port, last_port, count)):
            quota = None if max_allocations is None else max_allocations // count + (
                1 if index < max_allocations % count else 0)
            specs.append(WorkerSpec(
                index, count, token, listen, public, relay_bind, udp_port, tcp_port, first, last, nonce_secret,
                users, realm, secret, quota, user_quota, None if seed is None else seed + index, config, nat,
                record_arrivals))
        return cls(specs)

    async def start(self) -> None:
        """Start worker 0 (it binds the ports, 0 meaning any), then the others on the same ports; OSError if one
        cannot listen (every started one is stopped again)."""
        spec = self.specs[0]
        _probe(spec.listen, spec.udp_port, socket.SOCK_DGRAM)
        _probe(spec.listen, spec.tcp_port, socket.SOCK_STREAM)
        try:
            first = await self._start_one(self.specs[0])
            self.udp_port, self.tcp_port = first
            rest = [dataclasses.replace(spec, udp_port=first[0], tcp_port=first[1]) for spec in self.specs[1:]]
            await asyncio.gather(*(self._start_one(spec) for spec in rest))
        except BaseException:
            await self.stop()
            raise

    async def _start_one(self, spec: WorkerSpec) -> tuple[int, int]:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        process = ctx.Process(target=worker_entry, args=(spec, child), name=f"av-edge-w{spec.index}", daemon=True)
        process.start()
        child.close()
        self.processes.append(process)
        self.conns.append(parent)
        reply = await receive_reply(parent, START_TIMEOUT)
        if reply is None or reply[0] != "ready":
            text = reply[1] if reply is not None and reply[0] == "error" else "did not start"
            raise OSError(f"worker {spec.index}: {text}")
        return int(reply[1]), int(reply[2])

    def snapshots(self) -> list[Snapshot]:
        """Every worker's counters now (the last ones known for a worker that does not answer; once stopped, the
        final ones each sent back)."""
        if not self.conns:
            return list(self.last)
        out = collect_snapshots(self.conns, self.last)
        if len(out) == len(self.conns):
            self.last = out
        return out

    def arrivals(self) -> list[dict[str, Any]]:
        """What reached every worker's listeners so far (``record_arrivals``; empty otherwise), in time order."""
        return collect_arrivals(self.conns)

    def av_edges(self, node: str, interface: str) -> list[tuple[str, str, AvEdgeServer]]:
        """The ``Sources.av_edges`` entries: one per worker, the relay pools (summed) on the first."""
        snaps = self.snapshots()
        pools = merge_pools(snaps)
        views = [WorkerView(snap, pools if index == 0 else []) for index, snap in enumerate(snaps)]
        # Duck-typed: the collector reads running, core.metrics, core.allocation_count, streams and ports.
        return [(node, f"{interface}#w{index}", cast(AvEdgeServer, view)) for index, view in enumerate(views)]

    def slices(self) -> str:
        """Which relay ports each worker owns."""
        return " ".join(f"w{spec.index}={spec.first_port}-{spec.last_port}" for spec in self.specs)

    def describe(self) -> str:
        """One line per-worker: allocations, relay sockets and RFC 6062 hand-overs."""
        snaps = self.snapshots()
        return "workers " + " ".join(
            f"w{index}(allocations={snap.metrics.allocations_created} active={snap.allocations_active} "
            f"relays={snap.relay_sockets} handed_out={snap.handed_out} adopted={snap.adopted})"
            for index, snap in enumerate(snaps))

    async def stop(self) -> None:
        await stop_workers(self.processes, self.conns, self.last)


class AvEdgeWorkers:
    """One A/V Edge interface on a :class:`WorkerPool`, as a lab service (``running``, ``start``, ``stop``).

    The embedded lab's ``Lab(scenario, av_workers=N)`` runs each node's interfaces this way; stopping the service
    (a scenario's ``stop_node`` with service ``av``) stops its workers, and their last counters stay readable.
    """

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self._running = False

    @property
    def running(self) -> bool:
        return self._running

    async def start(self) -> None:
        if self._running:
            return
        await self.pool.start()
        self._running = True

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        await self.pool.stop()


def _probe(host: str, port: int, kind: socket.SocketKind) -> None:
    """OSError when ``port`` is taken: without this, a process holding it with SO_REUSEPORT (another server of this
    user; coturn sets it too) would silently share its traffic with our workers."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind) as sock:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the listener: TIME_WAIT is no conflict
        try:
            sock.bind((host, port))
        except OSError as error:
            what = "UDP" if kind == socket.SOCK_DGRAM else "TCP"
            raise OSError(error.errno, f"{what} {host}:{port}: {error.strerror or error}") from None


async def receive_reply(conn: Connection, timeout: float) -> Any:
    """The next message on ``conn`` (skipping metrics replies), or None after ``timeout`` or at EOF."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(conn.fileno(), _wake, ready)
        try:
            await asyncio.wait_for(ready, max(0.0, deadline - loop.time()))
        except TimeoutError:
            return None
        finally:
            loop.remove_reader(conn.fileno())
        try:
            reply = conn.recv()
        except (EOFError, OSError):
            return None
        if reply[0] != "metrics":
            return reply


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


def cores() -> int:
    """The cores this process may run on (its CPU affinity: ``taskset`` and cgroup cpusets count), at least 1."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # no affinity API on this platform
        return os.cpu_count() or 1


def default_workers(most: int | None = None) -> int:
    """What ``--workers`` means when not given: one per core, at most ``most`` (what the relay range allows)."""
    count = cores()
    return max(1, count if most is None else min(count, most))


def parse_workers(text: str) -> int:
    """``--workers N`` or ``auto`` (one per core)."""
    if text == "auto":
        return cores()
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"bad worker count {text!r} (want a number >= 1 or 'auto')")
    return int(text)

