"""``edgesim serve``: one role's listeners for lab use across real hosts.

Each handler imports the role it runs when it runs, so the parser itself loads nothing but argparse.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from simulator.cli.scenarios import default_scenario
from simulator.core.ports import DEFAULT_FIRST_PORT, DEFAULT_LAST_PORT


def add_serve_parsers(serve: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Every ``edgesim serve`` kind, in the order ``--help`` lists them."""
    add_serve_access_edge(serve)
    add_serve_av_edge(serve)


def run_until_stopped(main: Callable[[], Awaitable[int]]) -> int:
    """Run ``main`` on a fresh event loop (``edgesim serve``); Ctrl-C exits 130."""

    async def wrapper() -> int:
        return await main()

    try:
        return asyncio.run(wrapper())
    except KeyboardInterrupt:
        return 130


async def wait_for_stop(duration: float | None) -> None:
    """Return after ``duration`` seconds (forever when None) or at SIGINT/SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), duration)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)


# ------------------------------------------------------------------ serve access-edge


def add_serve_access_edge(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``edgesim serve access-edge [SCENARIO] [--node N] [--duration S]``."""
    parser = subparsers.add_parser(
        "access-edge", help="run a scenario's Access Edge (TLS 443, MTLS 5061, MRAS 5062) with its Director")
    parser.add_argument("scenario", nargs="?", default=None, help="scenario file (default: the shipped one)")
    parser.add_argument("--node", help="which pool node to announce (default: the first)")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--pki-out", default=None, help="also write the lab PKI here (for peers on other hosts)")
    parser.set_defaults(handler=_cmd_serve_access_edge)


def _cmd_serve_access_edge(args: argparse.Namespace, console: object) -> int:
    return run_until_stopped(lambda: _serve_access_edge(args))


async def _serve_access_edge(args: argparse.Namespace) -> int:
    from simulator.lab.access import SIP_MTLS_PORT, SIP_TLS_PORT, access_edge_address, user_accounts
    from simulator.lab.topology import Lab
    from simulator.spec.loader import load_scenario

    scenario = load_scenario(args.scenario or default_scenario())
    node = args.node or scenario.edge_pool.nodes[0].name
    if node not in {n.name for n in scenario.edge_pool.nodes}:
        print(f"edgesim: no node {node!r} in {scenario.name}", file=sys.stderr)
        return 2
    async with Lab(scenario) as lab:
        if args.pki_out:
            lab.pki.write(args.pki_out)
        address = access_edge_address(lab, node)
        print(f"access-edge ready tls={address}:{lab.port_map(SIP_TLS_PORT)} "
              f"mtls={address}:{lab.port_map(SIP_MTLS_PORT)}", flush=True)
        for account in user_accounts(lab):
            print(f"user {account.aor} password {account.password} from {account.host}", flush=True)
        await wait_for_stop(args.duration)
    return 0


# ------------------------------------------------------------------ serve av-edge


def _address(text: str) -> str:
    return text.strip("[]")


def _relay_range(text: str) -> tuple[int, int]:
    first, sep, last = text.partition("-")
    try:
        lo, hi = int(first), int(last if sep else first)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad port range {text!r} (want FIRST-LAST)") from exc
    if not 0 < lo <= hi <= 0xFFFF:
        raise argparse.ArgumentTypeError(f"bad port range {text!r}")
    return lo, hi


def _user(text: str) -> tuple[str, str]:
    name, sep, password = text.partition(":")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"bad user {text!r} (want USER:PASSWORD)")
    return name, password


def add_serve_av_edge(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``serve av-edge`` to the ``serve`` subcommand's subparsers."""
    p = subparsers.add_parser(
        "av-edge",
        help="run one A/V Edge (TURN + MS-TURN on UDP and TCP) any TURN client can use",
        description="Run one A/V Edge interface. Prints 'av-edge ready udp=HOST:PORT tcp=HOST:PORT' when "
        "listening; stops cleanly on SIGINT/SIGTERM.",
    )
    p.add_argument("--listen", required=True, type=_address, help="address the listeners bind (private A/V)")
    p.add_argument("--public", required=True, type=_address, help="address responses advertise (1:1 NAT public)")
    p.add_argument("--relay-bind", type=_address, help="where relay sockets bind (default: --listen)")
    p.add_argument("--udp-port", type=int, default=3478, help="UDP listener port (0: any)")
    p.add_argument("--tcp-port", type=int, default=443, help="TCP listener port (0: any)")
    p.add_argument("--relay-range", type=_relay_range, default=(DEFAULT_FIRST_PORT, DEFAULT_LAST_PORT),
                   metavar="FIRST-LAST", help="relay ports (default 50000-59999)")
    p.add_argument("--user", type=_user, action="extend", nargs="+", default=[], metavar="U:P",
                   help="static long-term credential(s)")
    p.add_argument("--realm", default="edgesim")
    p.add_argument("--secret", help="REST API shared secret (username 'expiry:user', HMAC-SHA1 password)")
    p.add_argument("--max-allocations", type=int, help="total allocation quota (486 beyond)")
    p.add_argument("--user-quota", type=int, help="allocations per username (486 beyond)")
    p.add_argument("--seed", type=int, help="seed for nonces, ports and connection IDs (default: random)")
    p.set_defaults(handler=_cmd_serve_av_edge)


async def serve_av_edge(args: argparse.Namespace) -> int:
    """Run until SIGINT/SIGTERM; print the ready line once listening."""
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
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await edge.start()
        # A dedicated server process: what was allocated until now (modules, the loop, the listeners) lives as
        # long as the process, so keep it out of every later full collection (~6% of an allocation's CPU).
        gc.collect()
        gc.freeze()
        assert edge.udp_address is not None and edge.tcp_address is not None
        udp, tcp = edge.udp_address, edge.tcp_address
        sys.stdout.write(f"av-edge ready udp={udp.host}:{udp.port} tcp={tcp.host}:{tcp.port}\n")
        sys.stdout.flush()
        await stop.wait()
    finally:
        await edge.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0


def _cmd_serve_av_edge(args: argparse.Namespace, console: Any) -> int:
    import uvloop

    try:
        return uvloop.run(serve_av_edge(args))
    except OSError as exc:
        print(f"edgesim: av-edge: {exc}", file=sys.stderr)
        return 1
