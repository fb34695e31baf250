"""``edgesim serve access-edge --workers N``: one node's Access Edge listeners served by N processes.

Every worker is a whole :class:`~simulator.net.edge.access_edge.AccessEdge` (its own SIP proxy, transactions,
event loop and outbound connections) in a process of its own (``multiprocessing`` *spawn*). The rest of the lab
(DNS, CRL, the Director and Front End, partners, MRAS on internal 5062, the A/V and other node services) stays in
the parent process. What makes N workers one Access Edge:

* **Listeners.** Each worker binds external TLS 443, external MTLS 5061 and internal MTLS 5061 itself with
  ``SO_REUSEPORT`` (:class:`ReusePortSipListener`); the kernel spreads TCP connections over the group at accept
  time (a hash of the 4-tuple) and a connection stays with the worker that accepted it. A remote user's TLS
  connection (its *flow*) therefore lives in one worker; so does each connection the Director opens to the
  internal 5061, and each connection a worker opens to the Director (every worker has its own).
* **Flow tokens name the worker.** The Path (RFC 3327) and Record-Route entries the Edge adds carry
  ``edgesim-flow=w<index>.<connection id>`` (:meth:`AccessEdge.flow_token`), so any worker can tell from a
  request's top Route which worker holds the flow it is for (:func:`~simulator.net.edge.access_edge.flow_owner`).
* **Hand-over: SIP messages over a UNIX stream link.** A request from inside that lands on a worker not holding
  its flow is *proxied* to the owner over a persistent UNIX stream socket between the two workers (abstract
  namespace ``\\0edgesim-ae-<token>-w<i>``, framed as SIP over a stream, no TLS: it never leaves the host), with
  the Route entry kept; the owner pops it, adds its Record-Route and sends the request down the flow; responses
  come back the same way through both workers' transactions (the first worker adds one Via, RFC 3261 §16.6).
  Why messages rather than descriptors (as the A/V workers pass RFC 6062 data connections): the link that
  carries the request is the Director's TLS connection, and TLS state cannot move to another process with its
  descriptor; nor can it be steered at accept time (one Director connection carries the requests for every
  user). Why proxying through the SIP element rather than a raw byte relay: the landing worker keeps a normal
  client transaction, so timeouts (408), CANCEL, a lost link (503/480) and response routing all work unchanged,
  at the cost of one extra Via and one extra Max-Forwards decrement on handed-over requests.
* **Metrics.** The parent asks every worker for a :class:`Snapshot` over its pipe when Prometheus scrapes or the
  summary is printed; SIP counters are summed into one node (responses the workers sent to each other over the
  link are left out: they never left the Edge), TLS listeners are exposed per worker (``sip-443#w<i>``).

MRAS (internal MTLS 5062) stays in the parent, single-process: it is asked by the Director only.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
import os
import random
import secrets
import signal
import socket
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simulator.net.edge.access_edge import AccessEdge, AccessEdgeConfig, EdgeContexts
from simulator.net.edge.workers import (
    collect_arrivals,
    collect_snapshots,
    receive_reply,
    serve_parent,
    stop_workers,
)
from simulator.net.transport.arrivals import ArrivalLog, start_recording
from simulator.net.transport.listener import AsyncioStream
from simulator.net.transport.resolver import StubResolver
from simulator.net.transport.sip_connection import SipConnection, SipTlsListener
from simulator.net.transport.sip_route import NextHop
from simulator.net.transport.tls import client_context, server_context

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

START_TIMEOUT = 60.0  # a spawned worker imports the simulator: seconds on a loaded machine
REPLY_TIMEOUT = 10.0
LISTENERS = ("sip-443", "sip-5061-external", "sip-5061-internal")


class ReusePortSipListener(SipTlsListener):
    """A SIP/TLS listener bound with ``SO_REUSEPORT``: every worker binds the same address and port."""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connected, self.host, self.port, reuse_address=True,
                                                  reuse_port=True, backlog=self._backlog)
        self.port = self._server.sockets[0].getsockname()[1]


# ------------------------------------------------------------------ the inter-worker link


def _link_address(token: str, index: int) -> bytes:
    return f"\0edgesim-ae-{token}-w{index}".encode()  # Linux abstract namespace: nothing to clean up


class LinkConnection(SipConnection):
    """A SIP connection between two workers; counts the responses written on it (they stay inside the Edge)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, local: tuple[str, int],
                 peer: int) -> None:
        super().__init__(AsyncioStream(reader, writer), peer=(f"worker-{peer}", 0), local=local, side="worker")
        self.responses: Counter[int] = Counter()

    def write(self, data: bytes) -> None:
        if data.startswith(b"SIP/2.0 ") and data[8:11].isdigit():
            self.responses[int(data[8:11])] += 1
        super().write(data)


class WorkerLinks:
    """This worker's listening link socket and its links to the other workers (one each way per pair)."""

    def __init__(self, index: int, token: str, edge: AccessEdge) -> None:
        self.index = index
        self.token = token
        self.edge = edge
        self.local = (edge.config.internal_host, edge.config.internal_port)  # what the Via of a hand-over names
        self._server: asyncio.AbstractServer | None = None
        self._out: dict[int, LinkConnection] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self.connections: set[LinkConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed_responses: Counter[int] = Counter()

    async def start(self) -> None:
        # Sockets made here, not by asyncio: uvloop refuses an abstract-namespace path given as a string.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(_link_address(self.token, self.index))
            sock.listen(64)
            sock.setblocking(False)
            self._server = await asyncio.start_unix_server(self._accepted, sock=sock)
        except BaseException:
            sock.close()
            raise

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._serve(LinkConnection(reader, writer, self.local, -1))

    async def _serve(self, connection: LinkConnection) -> None:
        self.connections.add(connection)
        try:
            await self.edge._serve(connection)  # side "worker": routed as from inside
        finally:
            self.connections.discard(connection)
            self.closed_responses.update(connection.responses)
            await connection.close()

    async def get(self, owner: int) -> SipConnection:
        """The link to worker ``owner`` (opened on first use); OSError when it cannot be reached."""
        found = self._out.get(owner)
        if found is not None and not found.closed:
            return found
        async with self._locks.setdefault(owner, asyncio.Lock()):
            found = self._out.get(owner)
            if found is not None and not found.closed:
                return found
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, _link_address(self.token, owner)),
                                       REPLY_TIMEOUT)
                reader, writer = await asyncio.open_unix_connection(sock=sock)
            except BaseException:
                sock.close()
                raise
            connection = LinkConnection(reader, writer, self.local, owner)
            self._out[owner] = connection
            task = asyncio.get_running_loop().create_task(self._serve(connection))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return connection

    def link_responses(self) -> Counter[int]:
        """Responses written to other workers (open and closed links)."""
        total = Counter(self.closed_responses)
        for connection in self.connections:
            total.update(connection.responses)
        return total

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        for connection in list(self.connections):
            await connection.close()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


# ------------------------------------------------------------------ one worker process


@dataclass(frozen=True)
class AccessWorkerSpec:
    """What a worker process needs to start (pickled to the spawned interpreter)."""

    index: int
    count: int
    token: str
    config: AccessEdgeConfig
    ca: Path
    crl: Path
    external_cert: tuple[Path, Path]  # edge-external chain and key (443, external 5061 both ways)
    internal_cert: tuple[Path, Path]  # edge-internal chain and key (internal 5061 both ways)
    next_hop: NextHop
    dns: tuple[str, int]
    port_map: Callable[[int], int]
    internal_peers: frozenset[str]
    seed: str
    record_arrivals: bool = False  # firewall lab mode: what reached the listeners (``serve edge --observations``)


@dataclass
class ListenerCounts:
    accepted: int
    rejected: Counter[str]


@dataclass
class Snapshot:
    """One worker's counters, as the parent's metrics and summary read them."""

    responses: Counter[int]  # sent to clients, partners and the Director (not to other workers)
    refused: Counter[str]
    pending: int
    listeners: dict[str, ListenerCounts]
    flows: int
    handed_out: int
    handed_in: int


def _snapshot(edge: AccessEdge, links: WorkerLinks) -> Snapshot:
    responses = Counter(edge.proxy.responses_sent)
    responses.subtract(links.link_responses())
    listeners = {name: ListenerCounts(edge.listeners[name].accepted, Counter(edge.listeners[name].rejected))
                 for name in LISTENERS}
    return Snapshot(+responses, Counter(edge.refused), edge.proxy.pending, listeners, len(edge.flows),
                    edge.handed_out, edge.handed_in)


def worker_entry(spec: AccessWorkerSpec, conn: Connection) -> None:
    """The worker process: run one AccessEdge until the parent says stop (or goes away)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent collects the counters first, then stops us
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    import uvloop

    sys.exit(uvloop.run(_worker_main(spec, conn)))


def _edge(spec: AccessWorkerSpec) -> AccessEdge:
    contexts = EdgeContexts(
        client_tls=server_context(*spec.external_cert, ca=spec.ca, crl=spec.crl, require_client_cert=False),
        federation_server=server_context(*spec.external_cert, ca=spec.ca, crl=spec.crl, require_client_cert=True),
        federation_client=client_context(spec.ca, *spec.external_cert, crl=spec.crl),
        internal_server=server_context(*spec.internal_cert, ca=spec.ca, crl=spec.crl),
        internal_client=client_context(spec.ca, *spec.internal_cert, crl=spec.crl))
    resolver = StubResolver(spec.dns[0], spec.dns[1], timeout=3.0, source=spec.config.external_host)
    return AccessEdge(spec.config, contexts, spec.next_hop, resolver, spec.port_map,
                      random.Random(f"{spec.seed}:w{spec.index}"), spec.internal_peers, worker=spec.index,
                      listener_class=ReusePortSipListener)


async def _worker_main(spec: AccessWorkerSpec, conn: Connection) -> int:
    arrivals = ArrivalLog() if spec.record_arrivals else None
    if arrivals is not None:
        start_recording(arrivals)  # before the listeners start: they read the recorder then
    edge = _edge(spec)
    links = WorkerLinks(spec.index, spec.token, edge)
    edge.peer_link = links.get
    started: list[SipTlsListener] = []
    try:
        await edge.start()
        await links.start()
        for name in LISTENERS:
            await edge.listeners[name].start()
            started.append(edge.listeners[name])
    except OSError as error:
        for listener in started:
            await listener.stop()
        await links.close()
        await edge.stop()
        conn.send(("error", str(error)))
        return 3
    gc.collect()
    gc.freeze()  # a dedicated server process: what exists now lives as long as the process
    conn.send(("ready",))
    await serve_parent(conn, lambda: _snapshot(edge, links), arrivals)
    final = _snapshot(edge, links)
    for listener in started:
        await listener.stop()
    await links.close()
    await edge.stop()
    with contextlib.suppress(OSError):
        conn.send(("stopped", final))
    return 0


# ------------------------------------------------------------------ the parent


class _ProxyView:
    def __init__(self, responses: Counter[int], pending: int) -> None:
        self.responses_sent = responses
        self.pending = pending


class MergedAccessEdge:
    """What :class:`~simulator.lab.metrics.EdgesimCollector` reads of an AccessEdge: every worker's summed."""

    def __init__(self, snaps: list[Snapshot]) -> None:
        responses: Counter[int] = Counter()
        refused: Counter[str] = Counter()
        for snap in snaps:
            responses.update(snap.responses)
            refused.update(snap.refused)
        self.proxy = _ProxyView(responses, sum(snap.pending for snap in snaps))
        self.refused = refused


class ListenerView:
    """What the collector reads of a TLS listener (``accepted``, ``rejected``), from a worker's snapshot."""

    def __init__(self, name: str, counts: ListenerCounts) -> None:
        self.name = name
        self.accepted = counts.accepted
        self.rejected = counts.rejected


@dataclass
class AccessEdgeWorkers:
    """The parent's side: N worker processes serving one node's Access Edge listeners, as a lab service."""

    node: str
    specs: list[AccessWorkerSpec]
    processes: list[BaseProcess] = field(default_factory=list)
    conns: list[Connection] = field(default_factory=list)
    last: list[Snapshot] = field(default_factory=list)
    _running: bool = False

    @classmethod
    def plan(cls, count: int, *, config: AccessEdgeConfig, ca: Path, crl: Path, external_cert: tuple[Path, Path],
             internal_cert: tuple[Path, Path], next_hop: NextHop, dns: tuple[str, int],
             port_map: Callable[[int], int], internal_peers: frozenset[str], seed: str,
             record_arrivals: bool = False) -> AccessEdgeWorkers:
        if count < 1:
            raise ValueError(f"bad worker count {count}")
        token = f"{os.getpid()}-{secrets.token_hex(6)}"  # never from the seed: two pools must not share sockets
        specs = [AccessWorkerSpec(index, count, token, config, ca, crl, external_cert, internal_cert, next_hop, dns,
                                  port_map, internal_peers, seed, record_arrivals) for index in range(count)]
        return cls(config.node, specs)

    @property
    def running(self) -> bool:
        return self._running

    async def start(self) -> None:
        """Start every worker (they bind the same fixed ports); OSError if one cannot listen (all are stopped)."""
        if self._running:
            return
        try:
            await asyncio.gather(*(self._start_one(spec) for spec in self.specs))
        except BaseException:
            await self._stop_processes()
            raise
        self._running = True

    async def _start_one(self, spec: AccessWorkerSpec) -> None:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        process = ctx.Process(target=worker_entry, args=(spec, child), name=f"access-edge-w{spec.index}",
                              daemon=True)
        process.start()
        child.close()
        self.processes.append(process)
        self.conns.append(parent)
        reply = await receive_reply(parent, START_TIMEOUT)
        if reply is None or reply[0] != "ready":
            text = reply[1] if reply is not None and reply[0] == "error" else "did not start"
            raise OSError(f"access-edge worker {spec.index}: {text}")

    def snapshots(self) -> list[Snapshot]:
        """Every worker's counters now (the last ones known for a worker that does not answer)."""
        if not self._running:
            return list(self.last)
        out = collect_snapshots(self.conns, self.last)
        if len(out) == len(self.conns):
            self.last = out
        return out

    def arrivals(self) -> list[dict[str, Any]]:
        """What reached every worker's listeners so far (``record_arrivals``; empty otherwise), in time order."""
        return collect_arrivals(self.conns) if self._running else []

    def views(self) -> tuple[MergedAccessEdge, list[tuple[str, ListenerView]]]:
        """The SIP counters summed over the workers, and each worker's listeners (``sip-443#w0`` …)."""
        snaps = self.snapshots()
        listeners = [(f"{name}#w{index}", ListenerView(f"{name}#w{index}", counts))
                     for index, snap in enumerate(snaps) for name, counts in snap.listeners.items()]
        return MergedAccessEdge(snaps), listeners

    def describe(self) -> str:
        """One line: per worker, TLS connections accepted on 443, flows open, requests handed out and in."""
        snaps = self.snapshots()
        return "workers " + " ".join(
            f"w{index}(tls443={snap.listeners['sip-443'].accepted} flows={snap.flows} "
            f"handed_out={snap.handed_out} handed_in={snap.handed_in})" for index, snap in enumerate(snaps))

    async def stop(self) -> None:
        if not self._running:
            return
        self.snapshots()
        self._running = False
        await self._stop_processes()

    async def _stop_processes(self) -> None:
        await stop_workers(self.processes, self.conns, self.last)


