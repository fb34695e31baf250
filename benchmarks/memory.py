"""Memory per held allocation: edgesim ``serve av-edge`` vs coturn ``turnserver``, same relay range.

Method (issue 14): both servers are started by this script on their own loopback addresses (127.87.1.1
coturn, 127.87.2.1 edgesim), with the same relay range and long-term credentials. For each server and
run: read VmRSS from /proc/PID/status, open ``--allocations`` (10,000) allocations with the project's bench
client (:mod:`simulator.net.clients.relay_load`, the engine of ``edgesim bench relay --hold``) at
``--rate`` per second, wait until all are held at once, read VmRSS again; then the server is stopped (the
next run starts a fresh one). Reported: the median over ``--runs`` of (RSS after - RSS before) /
allocations held, per server, and the ratio edgesim / coturn from the same invocation. coturn's RSS is its
whole process (all relay threads).

    .venv/bin/python benchmarks/memory.py --runs 3

The last line is one JSON object with the figures and ``alloc_ratio``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from simulator.net.clients.relay_load import Credentials, LoadShard, Node, ShardSpec  # noqa: E402
from simulator.net.clients.sip_client import RemoteUser, SipClient  # noqa: E402
from simulator.net.transport.tls import client_context  # noqa: E402
from tests.interop import turnpeers  # noqa: E402

COTURN_HOST = "127.87.1.1"
EDGESIM_HOST = "127.87.2.1"
CLIENT_HOSTS = tuple(f"127.87.3.{i}" for i in range(1, 9))
USER, PASSWORD, REALM = "bench", "bench-pass", "edgesim.test"
SHIPPED = ROOT / "scenarios" / "lync2013-scaled-edge-dns-nat.yaml"
LAB_PREFIX = "127.87"  # serve access-edge runs the shipped scenario's lab in 127.87.0.0/16
SESSION_CLIENTS = tuple(f"127.87.250.{i}" for i in range(1, 9))
READY = re.compile(r"access-edge ready tls=(?P<host>[\d.]+):(?P<port>\d+)")
USER_LINE = re.compile(r"user sip:(?P<user>[^@]+)@(?P<domain>\S+) password (?P<password>\S+)")


def rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB (/proc/PID/status)."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(need, soft)), hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        raise SystemExit(f"memory.py: need {need} open files, ulimit -n allows {soft}")


async def hold_allocations(server: turnpeers.TurnServer, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Open ``args.allocations`` allocations against ``server`` and sample its RSS while all are held."""
    pid = server.process.pid
    await asyncio.sleep(0.5)
    before = rss_kib(pid)
    fill_s = args.allocations / args.rate
    spec = ShardSpec(
        nodes=(Node(server.host, server.udp_port, server.kind),),
        credentials=Credentials(USER, PASSWORD), dialect="rfc8656", transport="udp",
        concurrency=args.allocations, rate=args.rate, count=args.allocations, duration=fill_s + 30,
        hold=fill_s + args.settle + 30, timeout=3.0, local_hosts=CLIENT_HOSTS, seed=seed,
    )
    shard = LoadShard(spec)
    task = asyncio.create_task(shard.run())
    started = time.monotonic()
    peak = 0
    try:
        while time.monotonic() - started < fill_s + 30:
            await asyncio.sleep(0.2)
            peak = max(peak, shard.held)
            if shard.result.started >= args.allocations and shard.in_flight == shard.held:
                break  # every allocation is answered; those that succeeded are all held now
        await asyncio.sleep(args.settle)
        held = shard.held
        after = rss_kib(pid)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for other in asyncio.all_tasks() - {asyncio.current_task()}:
            other.cancel()  # the shard's per-allocation tasks: their flows close their sockets
        await asyncio.sleep(0.1)
    failures = dict(shard.result.failures)
    return {"held": held, "rss_before_kib": before, "rss_after_kib": after,
            "bytes_per_allocation": (after - before) * 1024 / held if held else float("nan"), "failures": failures}


def start_access_edge(workdir: Path) -> tuple[subprocess.Popen[bytes], str, int, list[dict[str, str]], Path]:
    """``serve access-edge`` on the shipped scenario moved to 127.87/16; returns (process, host, port, users,
    CA file) once it printed its ready line and its users."""
    scenario = workdir / "scenario.yaml"
    text = SHIPPED.read_text(encoding="utf-8")
    scenario.write_text(text.replace("seed: 2013\n", f"seed: 2013\nlab: {{loopback_prefix: '{LAB_PREFIX}'}}\n", 1))
    log_path = workdir / "access-edge.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [str(turnpeers.EDGESIM), "serve", "access-edge", str(scenario), "--pki-out", str(workdir / "pki"),
             "--workers", "1"],  # every session in the one process whose RSS is read
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.3)
        out = log_path.read_text()
        ready = READY.search(out)
        users = [m.groupdict() for m in USER_LINE.finditer(out)]
        if ready and users:
            return process, ready["host"], int(ready["port"]), users, workdir / "pki" / "ca.pem"
    stop_process(process)
    raise RuntimeError("serve access-edge did not get ready: " + log_path.read_text()[-500:])


def stop_process(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def hold_sessions(args: argparse.Namespace, pid: int, host: str, port: int, users: list[dict[str, str]],
                        ca: Path, fqdn: str) -> dict[str, Any]:
    """``args.sessions`` signed-in TLS sessions held idle: the server's VmRSS before the first and after the
    last sign-in (``serve access-edge`` is its whole lab: Access Edge, Director, ... in one process)."""
    await asyncio.sleep(1.0)
    before = rss_kib(pid)
    context = client_context(ca)
    rng = random.Random(2013)
    failures: dict[str, int] = {}
    slots = asyncio.Semaphore(20)
    clients: list[SipClient] = []

    async def one(index: int) -> None:
        account = users[index % len(users)]
        async with slots:
            try:
                client = await SipClient.connect([host], port, context, fqdn, 10.0, rng,
                                                 source=SESSION_CLIENTS[index % len(SESSION_CLIENTS)])
                clients.append(client)
                await RemoteUser(client, account["user"], account["domain"], account["password"]).sign_in(10.0)
            except Exception as exc:  # counted and reported
                key = f"{type(exc).__name__}: {str(exc)[:60]}"
                failures[key] = failures.get(key, 0) + 1

    try:
        await asyncio.gather(*(one(i) for i in range(args.sessions)))
        await asyncio.sleep(args.settle + 1.0)
        after = rss_kib(pid)
    finally:
        for client in clients:
            with contextlib.suppress(TimeoutError, OSError):
                await asyncio.wait_for(client.close(), 2)
    held = args.sessions - sum(failures.values())
    return {"held": held, "rss_before_kib": before, "rss_after_kib": after,
            "bytes_per_session": (after - before) * 1024 / held if held else float("nan"), "failures": failures}


def load_fqdn(scenario: Path) -> str:
    from simulator.spec.loader import load_scenario

    return load_scenario(scenario).edge_pool.access_fqdn


def start(name: str, workdir: Path, args: argparse.Namespace) -> turnpeers.TurnServer:
    relay = (args.relay_low, args.relay_low + args.allocations + 999)
    if name == "coturn":
        return turnpeers.start_coturn(workdir, host=COTURN_HOST, relay_range=relay, user=USER, password=PASSWORD,
                                      realm=REALM)
    return turnpeers.start_edgesim(workdir, host=EDGESIM_HOST, public_host=EDGESIM_HOST, relay_bind=EDGESIM_HOST,
                                   relay_range=relay, user=USER, password=PASSWORD, realm=REALM)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--allocations", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=1500.0, help="allocations started per second")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--settle", type=float, default=1.0, help="seconds between the last answer and the RSS read")
    parser.add_argument("--relay-low", type=int, default=40000, help="first relay port (range: allocations + 1000)")
    parser.add_argument("--servers", default="edgesim,coturn")
    parser.add_argument("--sessions", type=int, default=1000, help="idle signed-in TLS sessions (0: skip)")
    args = parser.parse_args(argv)
    if not 0 <= args.allocations <= 15_000 or not 0 <= args.sessions <= 5000 or args.runs < 1 or args.runs > 10:
        parser.error("--allocations 0..15000, --sessions 0..5000, --runs 1..10")
    raise_fd_limit(args.allocations + 1000)
    names = [n for n in args.servers.split(",") if n and args.allocations]
    results: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="edgesim-memory-") as tmp:
        for run in range(args.runs):
            for name in names:  # interleaved, so machine drift hits both
                try:
                    server = start(name, Path(tmp), args)
                except turnpeers.PeerStartError as error:
                    print(f"memory.py: {name} did not start: {error}", file=sys.stderr)
                    return 3
                try:
                    figure = asyncio.run(hold_allocations(server, args, seed=2013 + run))
                finally:
                    server.stop()
                results[name].append(figure)
                print(f"run {run + 1} {name:8s} held {figure['held']:6d}  RSS {figure['rss_before_kib']:7d} -> "
                      f"{figure['rss_after_kib']:7d} KiB  {figure['bytes_per_allocation']:8.0f} B/allocation"
                      f"  failures {figure['failures'] or 0}", flush=True)
        sessions: list[dict[str, Any]] = []
        for run in range(args.runs if args.sessions else 0):
            workdir = Path(tempfile.mkdtemp(dir=tmp))
            process, host, port, users, ca = start_access_edge(workdir)
            try:
                figure = asyncio.run(hold_sessions(args, process.pid, host, port, users, ca,
                                                   load_fqdn(workdir / "scenario.yaml")))
            finally:
                stop_process(process)
            sessions.append(figure)
            print(f"run {run + 1} access-edge held {figure['held']:5d} sessions  RSS {figure['rss_before_kib']:7d} -> "
                  f"{figure['rss_after_kib']:7d} KiB  {figure['bytes_per_session']:8.0f} B/session"
                  f"  failures {figure['failures'] or 0}", flush=True)
    medians = {n: statistics.median(r["bytes_per_allocation"] for r in results[n]) for n in names}
    per_session = statistics.median(f["bytes_per_session"] for f in sessions) if sessions else None
    print(f"\nmachine: {platform.processor() or platform.machine()}, Python {platform.python_version()}; "
          f"{args.allocations} allocations held, median of {args.runs}")
    for name in names:
        print(f"  {name:8s} {medians[name]:8.0f} B per held allocation")
    ratio = (medians["edgesim"] / medians["coturn"]) if {"edgesim", "coturn"} <= set(medians) else None
    if ratio is not None:
        print(f"  edgesim / coturn = {ratio:.2f}")
    if per_session is not None:
        print(f"  access-edge (whole lab process) {per_session:8.0f} B per idle signed-in TLS session "
              f"({args.sessions} held)")
    print(json.dumps({"bytes_per_allocation": medians, "alloc_ratio": ratio, "bytes_per_session": per_session,
                      "runs": results, "session_runs": sessions}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
