"""``edgesim serve``: one role's listeners for lab use across real hosts.

Each handler imports the role it runs when it runs, so the parser itself loads nothing but argparse. Every
serve command takes ``--metrics ADDR:PORT`` (Prometheus, :mod:`simulator.lab.metrics`) and ``--pcap FILE``
(and ``--keylog FILE`` where TLS is spoken; :mod:`simulator.net.transport.capture`), prints one summary line
when it stops, and exits 3 with one line when the host refuses something (an address in use, no capture tool
or privilege, a file it cannot write).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, cast

from simulator.cli.argtypes import port_range, user_password
from simulator.cli.scenarios import default_scenario
from simulator.core.ports import DEFAULT_FIRST_PORT, DEFAULT_LAST_PORT

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

    from simulator.lab.metrics import Sources
    from simulator.lab.topology import Lab

EXIT_ENVIRONMENT = 3  # the host cannot do it: address in use, missing capture tool or privilege, unwritable file
EXIT_CODES_HELP = ("exit codes: 0 stopped cleanly (SIGINT/SIGTERM or --duration), 2 usage error, "
                   "3 environment error (address in use, no capture tool or privilege, file not writable)")


def add_serve_parsers(serve: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Every ``edgesim serve`` kind, in the order ``--help`` lists them."""
    add_serve_access_edge(serve)
    add_serve_av_edge(serve)


# ------------------------------------------------------------------ what every serve command offers


class EnvironmentProblem(Exception):
    """One line for stderr; the command exits :data:`EXIT_ENVIRONMENT`."""


def _listen_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 0xFFFF:
        raise argparse.ArgumentTypeError(f"bad address {text!r} (want ADDR:PORT, e.g. 127.0.0.1:9641; port 0: any)")
    return host.strip("[]"), int(port)


def add_observability(parser: argparse.ArgumentParser, *, tls: bool) -> None:
    """``--metrics ADDR:PORT``, ``--pcap FILE`` and (where TLS is spoken) ``--keylog FILE``."""
    parser.add_argument("--metrics", type=_listen_address, metavar="ADDR:PORT",
                        help="serve Prometheus metrics at http://ADDR:PORT/metrics (port 0: any; the URL is printed)")
    parser.add_argument("--pcap", metavar="FILE", help="capture this server's traffic into FILE (needs tcpdump or "
                        "dumpcap, and the privilege to capture on loopback)")
    if tls:
        parser.add_argument("--keylog", metavar="FILE", help="append the TLS secrets of every connection to FILE "
                            "(NSS key log format: tshark -o tls.keylog_file:FILE); SSLKEYLOGFILE works too")
    parser.epilog = EXIT_CODES_HELP


@contextlib.asynccontextmanager
async def observed(args: argparse.Namespace, what: str, sources: Callable[[], Sources],
                   capture_hosts: str | Iterable[str], *, interface: str | None = None,
                   collectors: Iterable[Collector] = ()) -> AsyncIterator[None]:
    """Key log, metrics endpoint and capture around a serve command; the one-line summary when it ends.

    ``capture_hosts``: the prefix or addresses ``--pcap`` captures, on ``interface`` (default: loopback, where
    the embedded lab lives; a firewall-lab side on real interfaces passes ``"any"``). ``collectors``: more
    metric families for the same registry.

    Everything the environment may refuse is checked here, before the server's own listeners start, and
    raised as :class:`EnvironmentProblem`.
    """
    from simulator.lab.metrics import MetricsEndpoint, registry_for, summary_line
    from simulator.net.transport import capture

    try:
        capture.prepare_keylog(getattr(args, "keylog", None))  # --keylog, or a check of SSLKEYLOGFILE
    except capture.CaptureError as error:
        raise EnvironmentProblem(str(error)) from None
    registry = registry_for(sources)
    for collector in collectors:
        registry.register(collector)
    async with contextlib.AsyncExitStack() as stack:
        metrics, pcap_path = getattr(args, "metrics", None), getattr(args, "pcap", None)
        if metrics is not None:
            host, port = metrics
            endpoint = MetricsEndpoint(registry, host, port)
            try:
                await endpoint.start()
            except OSError as error:
                raise EnvironmentProblem(f"--metrics {host}:{port}: {error.strerror or error}") from None
            stack.push_async_callback(endpoint.stop)
            print(f"metrics {endpoint.url}", flush=True)
        pcap: capture.Capture | None = None
        if pcap_path is not None:
            try:
                pcap = await stack.enter_async_context(
                    capture.capture(pcap_path, capture_hosts, interface=interface or capture.DEFAULT_INTERFACE))
            except (capture.CaptureError, ValueError) as error:
                raise EnvironmentProblem(str(error)) from None
            print(f"pcap {pcap_path} ({pcap.tool}: {pcap.bpf})", flush=True)
        yield
        print(summary_line(registry, what), flush=True)  # the server still runs: its counters are all there
    if pcap is not None:
        print(f"pcap {pcap.path}: {pcap.summary or 'written'}", flush=True)


def _environment_error(what: str, error: BaseException) -> int:
    print(f"edgesim: serve {what}: {error}", file=sys.stderr)
    return EXIT_ENVIRONMENT


def run_until_stopped(main: Callable[[], Awaitable[int]]) -> int:
    """Run ``main`` on a fresh event loop (``edgesim serve``); Ctrl-C exits 130."""

    async def wrapper() -> int:
        return await main()

    try:
        return asyncio.run(wrapper())
    except KeyboardInterrupt:
        return 130


@contextlib.contextmanager
def stop_signals() -> Iterator[asyncio.Event]:
    """SIGINT/SIGTERM set the event this yields, from now until the block ends.

    Entered before a server starts, so a supervisor that stops it the moment it reads the ready line (or while
    it starts) gets a clean stop, workers included, not the signal's default death.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)


async def wait_for_stop(duration: float | None, stop: asyncio.Event | None = None) -> None:
    """Return after ``duration`` seconds (forever when None) or at SIGINT/SIGTERM (``stop``, from
    :func:`stop_signals`; without it, the handlers are installed now)."""
    if stop is None:
        with stop_signals() as stop:
            await wait_for_stop(duration, stop)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), duration)


# ------------------------------------------------------------------ serve access-edge


def add_serve_access_edge(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``edgesim serve access-edge [SCENARIO] [--node N] [--duration S]``."""
    parser = subparsers.add_parser(
        "access-edge", help="run a scenario's Access Edge (TLS 443, MTLS 5061, MRAS 5062) with its Director")
    parser.add_argument("scenario", nargs="?", default=None, help="scenario file (default: the shipped one)")
    parser.add_argument("--node", help="which pool node to announce (default: the first)")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--pki-out", default=None, help="also write the lab PKI here (for peers on other hosts)")
    parser.add_argument("--workers", type=worker_count, default=None, metavar="N",
                        help="serve the node's Access Edge listeners (TLS 443, MTLS 5061 external and internal) with "
                        "N processes sharing the ports (SO_REUSEPORT); the Director, MRAS 5062 and the rest of the "
                        "lab stay in this process; 'auto' (the default): one per core; 1: everything in one process")
    add_observability(parser, tls=True)
    parser.set_defaults(handler=_cmd_serve_access_edge)


def _cmd_serve_access_edge(args: argparse.Namespace, console: object) -> int:
    return run_until_stopped(lambda: _serve_access_edge(args))


async def _serve_access_edge(args: argparse.Namespace) -> int:
    from simulator.lab.access import SIP_MTLS_PORT, SIP_TLS_PORT, access_edge_address, user_accounts
    from simulator.lab.metrics import Sources
    from simulator.lab.topology import Lab
    from simulator.spec.loader import load_scenario

    scenario = load_scenario(args.scenario or default_scenario())
    node = args.node or scenario.edge_pool.nodes[0].name
    if node not in {n.name for n in scenario.edge_pool.nodes}:
        print(f"edgesim: no node {node!r} in {scenario.name}", file=sys.stderr)
        return 2
    lab: Lab | None = None
    prefix = f"{scenario.lab.loopback_prefix}.0.0/16"  # every lab host lives there (simulator.lab.addressing)

    def sources() -> Sources:
        return Sources() if lab is None else lab_worker_sources(lab)

    # --workers N (N > 1): the node's Access Edge listeners on N processes from the start (Lab's hook); the other
    # nodes, the Director, MRAS 5062 and the rest of the lab stay in this process.
    from simulator.net.edge.workers import default_workers

    args.workers = args.workers or default_workers()  # not given: one per core
    access_workers = {node: args.workers} if args.workers > 1 else None
    collectors = [] if access_workers is None else [AccessWorkerCollector(lambda: lab)]
    with stop_signals() as stop:  # before anything starts: a stop at any time is clean
        try:
            async with observed(args, "access-edge", sources, prefix, collectors=collectors):
                try:
                    lab = Lab(scenario, access_workers=access_workers)
                    await lab.start()  # stops what it started when it fails (a worker that cannot listen too)
                except OSError as error:
                    lab = None
                    raise EnvironmentProblem(str(error)) from None
                if args.pki_out:
                    lab.pki.write(args.pki_out)
                address = access_edge_address(lab, node)
                if access_workers is not None:
                    print(f"access-edge workers {args.workers}", flush=True)
                print(f"access-edge ready tls={address}:{lab.port_map(SIP_TLS_PORT)} "
                      f"mtls={address}:{lab.port_map(SIP_MTLS_PORT)}", flush=True)
                for account in user_accounts(lab):
                    print(f"user {account.aor} password {account.password} from {account.host}", flush=True)
                await wait_for_stop(args.duration, stop)
                # leaving ``observed`` prints the summary while the lab still runs; the lab stops below
            for line in worker_lines(lab, "access-edge"):
                print(line, flush=True)
        except EnvironmentProblem as error:
            return _environment_error("access-edge", error)
        finally:
            if lab is not None:
                await lab.stop()  # the workers too: they are one of the node's services
    return 0


def lab_worker_sources(lab: Lab) -> Sources:
    """A running lab's metrics sources (:func:`~simulator.lab.metrics.lab_sources`, which already reads the A/V
    Edges in workers) plus the Access Edges in workers: their SIP counters summed per node, their TLS listeners
    per worker (``sip-443#w0`` …)."""
    from simulator.lab.access import access_edge_workers
    from simulator.lab.metrics import lab_sources
    from simulator.net.edge.access_edge import AccessEdge
    from simulator.net.transport.listener import TlsListener

    found = lab_sources(lab)
    for node, workers in access_edge_workers(lab):
        merged, listeners = workers.views()
        found.access_edges.append((node, cast(AccessEdge, merged)))  # duck-typed: proxy and refused
        found.tls_listeners.extend((node, name, cast(TlsListener, view)) for name, view in listeners)
    return found


def worker_lines(lab: Lab | None, prefix: str) -> list[str]:
    """The per-worker summary lines of a lab's Access Edge workers (``<prefix> workers w0(tls443=..) ..``), one
    per node, and of its A/V Edge workers (``<prefix> av-external workers w0(...) ..``)."""
    if lab is None:
        return []
    from simulator.lab.access import access_edge_workers
    from simulator.net.edge.workers import AvEdgeWorkers

    access = access_edge_workers(lab)
    lines = [f"{prefix} {workers.describe()}" if len(access) == 1 else f"{prefix} {node} {workers.describe()}"
             for node, workers in access]
    for node_name, node in lab.nodes.items():
        for name, service in node.services.items():
            if isinstance(service, AvEdgeWorkers) and service.running:
                lines.append(f"{prefix} {node_name} {name} {service.pool.describe()}")
    return lines


class AccessWorkerCollector:
    """Per-worker figures of the Access Edges in workers: flows held and requests handed over."""

    def __init__(self, lab: Callable[[], Lab | None]) -> None:
        self._lab = lab

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from simulator.lab.access import access_edge_workers

        flows = GaugeMetricFamily("edgesim_sip_worker_flows", "remote users' and partners' connections a worker "
                                  "holds now", labels=["node", "worker"])
        handovers = CounterMetricFamily("edgesim_sip_worker_handovers", "requests from inside passed between "
                                        "workers to the one holding their flow: out (passed on) and in (sent down "
                                        "a flow here)", labels=["node", "worker", "direction"])
        lab = self._lab()
        for node, workers in [] if lab is None else access_edge_workers(lab):
            for index, snap in enumerate(workers.snapshots()):
                flows.add_metric([node, f"w{index}"], snap.flows)
                handovers.add_metric([node, f"w{index}", "out"], snap.handed_out)
                handovers.add_metric([node, f"w{index}", "in"], snap.handed_in)
        yield from (flows, handovers)


# ------------------------------------------------------------------ serve av-edge


def _address(text: str) -> str:
    return text.strip("[]")






def add_serve_av_edge(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``serve av-edge`` to the ``serve`` subcommand's subparsers."""
    p = subparsers.add_parser(
        "av-edge",
        help="run one A/V Edge (TURN + MS-TURN on UDP and TCP) any TURN client can use",
        description="Run one A/V Edge interface. Prints 'av-edge ready udp=HOST:PORT tcp=HOST:PORT' when "
        "listening; stops cleanly on SIGINT/SIGTERM. With --workers N (N > 1) N processes serve it: each owns a "
        "slice of the relay range (printed before the ready line), --max-allocations is split among them and "
        "--user-quota counts per worker.",
    )
    p.add_argument("--listen", required=True, type=_address, help="address the listeners bind (private A/V)")
    p.add_argument("--public", required=True, type=_address, help="address responses advertise (1:1 NAT public)")
    p.add_argument("--relay-bind", type=_address, help="where relay sockets bind (default: --listen)")
    p.add_argument("--udp-port", type=int, default=3478, help="UDP listener port (0: any)")
    p.add_argument("--tcp-port", type=int, default=443, help="TCP listener port (0: any)")
    p.add_argument("--relay-range", type=port_range, default=(DEFAULT_FIRST_PORT, DEFAULT_LAST_PORT),
                   metavar="FIRST-LAST", help="relay ports (default 50000-59999)")
    p.add_argument("--user", type=user_password, action="extend", nargs="+", default=[], metavar="U:P",
                   help="static long-term credential(s)")
    p.add_argument("--realm", default="edgesim")
    p.add_argument("--secret", help="REST API shared secret (username 'expiry:user', HMAC-SHA1 password)")
    p.add_argument("--max-allocations", type=int, help="total allocation quota (486 beyond)")
    p.add_argument("--user-quota", type=int, help="allocations per username (486 beyond)")
    p.add_argument("--seed", type=int, help="seed for nonces, ports and connection IDs (default: random)")
    p.add_argument("--workers", type=worker_count, default=None, metavar="N",
                   help="serve with N processes sharing the listening ports (SO_REUSEPORT), each with its own "
                   "slice of the relay range; 'auto' (the default): one per core, at most one per relay port; "
                   "1: one process")
    add_observability(p, tls=False)
    p.set_defaults(handler=_cmd_serve_av_edge)


def worker_count(text: str) -> int:
    """`--workers N|auto`: a count of 1 or more, or one per core (argparse type; one-line error otherwise)."""
    from simulator.net.edge.workers import parse_workers

    try:
        return parse_workers(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


async def serve_av_edge(args: argparse.Namespace) -> int:
    """Run until SIGINT/SIGTERM; print the ready line once listening."""
    from simulator.net.edge.workers import default_workers

    if args.workers is None:  # one per core, as many as the relay range has ports for
        args.workers = default_workers(args.relay_range[1] - args.relay_range[0] + 1)
    if args.workers > 1:
        return await serve_av_edge_workers(args)
    from simulator.core.credentials import CredentialStore
    from simulator.net.edge.av_edge import AvEdgeServer

    store = CredentialStore(rest_secret=args.secret)
    for name, password in args.user:
        store.add_static(name, password)
    first, last = args.relay_range
    edge = AvEdgeServer(
        args.listen,
        args.public,
        relay_host=args.relay_bind,
        udp_port=args.udp_port,
        tcp_port=args.tcp_port,
        credentials=store,
        realm=args.realm,
        first_port=first,
        last_port=last,
        max_allocations=args.max_allocations,
        user_quota=args.user_quota,
        seed=args.seed,
    )
    from simulator.lab.metrics import Sources

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sources = Sources(av_edges=[(args.public, args.listen, edge)])
    hosts = [args.listen, args.public, *([args.relay_bind] if args.relay_bind else [])]
    try:
        async with observed(args, "av-edge", lambda: sources, hosts):
            try:
                await edge.start()
            except OSError as error:
                raise EnvironmentProblem(str(error)) from None
            # A dedicated server process: what was allocated until now (modules, the loop, the listeners) lives as
            # long as the process, so keep it out of every later full collection (~6% of an allocation's CPU).
            gc.collect()
            gc.freeze()
            assert edge.udp_address is not None and edge.tcp_address is not None
            udp, tcp = edge.udp_address, edge.tcp_address
            sys.stdout.write(f"av-edge ready udp={udp.host}:{udp.port} tcp={tcp.host}:{tcp.port}\n")
            sys.stdout.flush()
            await stop.wait()
    except EnvironmentProblem as error:
        return _environment_error("av-edge", error)
    finally:
        await edge.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0


async def serve_av_edge_workers(args: argparse.Namespace) -> int:
    """``serve av-edge --workers N`` (N > 1): the parent starts the workers, serves the merged metrics, stops them."""
    from simulator.lab.metrics import Sources
    from simulator.net.edge.workers import WorkerPool

    first, last = args.relay_range
    if last - first + 1 < args.workers:
        print(f"edgesim: serve av-edge: relay range {first}-{last} is smaller than {args.workers} workers",
              file=sys.stderr)
        return 2
    pool = WorkerPool.plan(
        args.workers, listen=args.listen, public=args.public, relay_bind=args.relay_bind, udp_port=args.udp_port,
        tcp_port=args.tcp_port, first_port=first, last_port=last, users=tuple(args.user), realm=args.realm,
        secret=args.secret, max_allocations=args.max_allocations, user_quota=args.user_quota, seed=args.seed)
    hosts = [args.listen, args.public, *([args.relay_bind] if args.relay_bind else [])]
    started = False

    def sources() -> Sources:
        return Sources(av_edges=pool.av_edges(args.public, args.listen) if started else [])

    with stop_signals() as stop:  # before anything starts: a stop at any time is clean
        try:
            async with observed(args, "av-edge", sources, hosts):
                try:
                    await pool.start()
                except OSError as error:
                    raise EnvironmentProblem(str(error)) from None
                started = True
                sys.stdout.write(f"av-edge workers {args.workers} relay {pool.slices()}\n"
                                 f"av-edge ready udp={args.listen}:{pool.udp_port} tcp={args.listen}:{pool.tcp_port}\n")
                sys.stdout.flush()
                await wait_for_stop(None, stop)
                print(f"av-edge {pool.describe()}", flush=True)  # per worker; the merged summary line comes last
        except EnvironmentProblem as error:
            return _environment_error("av-edge", error)
        finally:
            started = False
            await pool.stop()
    return 0


def _cmd_serve_av_edge(args: argparse.Namespace, console: Any) -> int:
    import uvloop

    return uvloop.run(serve_av_edge(args))
