"""``edgesim bench relay``: relay-allocation load against any TURN / MS-TURN server or pool.

Live figures go to stderr once a second (rich on a terminal, plain lines when piped); the report goes to stdout
(a table, or JSON with ``--json``) and to ``--out DIR/report.json``. Exit codes: 0 ok, 1 a threshold failed,
2 a usage problem, 3 an environment problem (one line, no traceback).
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import sys
from pathlib import Path
from typing import Any

from simulator.cli.argtypes import port_range, user_password


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r}: must be > 0")
        return value

    return parse


def add_bench_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = commands.add_parser("bench", help="benchmarks against real servers (relay allocation load)")
    kinds = bench.add_subparsers(dest="bench", required=True)
    p = kinds.add_parser(
        "relay", help="allocation load (Allocate 401 → Allocate, hold, release) against a TURN/MS-TURN server",
        description="Allocate → hold → release (Refresh/Allocate LIFETIME 0) load against a TURN server or pool. "
                    "Exit 1 when a --threshold fails, 2 on a usage error, 3 on an environment error.")
    p.add_argument("--target", required=True, metavar="HOST[:PORT]|FQDN",
                   help="an IPv4 address, or a pool name: every A record is a node (per-node figures)")
    p.add_argument("--nameserver", metavar="IP[:PORT]", help="resolve an FQDN --target here (default: system)")
    p.add_argument("--user", type=user_password, metavar="U:P", help="long-term credentials (with --secret: U is the "
                   "REST username suffix, P ignored)")
    p.add_argument("--mras", metavar="SCENARIO", help="credentials from MRAS the way a Lync client gets them: a "
                   "remote user of SCENARIO (with a deployment: section) signs in on the Access Edge and asks the "
                   "node's MRAS (use --dialect ms-turn, and target that node's public A/V address)")
    p.add_argument("--pki", metavar="DIR", help="with --mras: the lab PKI (`edgesim certs`)")
    p.add_argument("--mras-node", metavar="NODE", help="with --mras: whose MRAS (default: the first node)")
    p.add_argument("--realm", help="expected realm (the server's 401 sets it; a different one is an error)")
    p.add_argument("--secret", help="REST API shared secret (coturn --use-auth-secret --static-auth-secret): "
                   "username 'expiry:user', password base64(HMAC-SHA1(secret, username))")
    p.add_argument("--dialect", choices=("rfc8656", "ms-turn"), default="rfc8656")
    p.add_argument("--transport", choices=("udp", "tcp"), default="udp",
                   help="tcp with ms-turn is the TCP 443 pseudo-TLS framing")
    p.add_argument("--concurrency", type=_positive(int), default=20, help="allocations in flight or held at most")
    p.add_argument("--rate", type=_positive(float), help="allocations started per second (default: closed loop)")
    p.add_argument("--duration", type=_positive(float), default=10.0, help="stop starting after S seconds")
    p.add_argument("--count", type=_positive(int), help="allocations to start in all")
    p.add_argument("--hold", type=float, default=0.0, help="seconds each allocation is held before release")
    p.add_argument("--timeout", type=_positive(float), default=5.0, help="seconds per request")
    p.add_argument("--bind", nargs="+", default=[], metavar="ADDR", help="source addresses (round robin; "
                   "split across workers)")
    p.add_argument("--source-ports", type=port_range, metavar="LOW-HIGH", help="source ports (split across workers)")
    p.add_argument("--relay-range", type=port_range, metavar="LOW-HIGH",
                   help="the server's relay range, for the port histogram (default: the ports seen)")
    p.add_argument("--workers", type=_positive(int), default=1, help="client processes (spawned; results merged)")
    p.add_argument("--executor", metavar="dask://HOST:PORT", help="run the shards on a Dask cluster instead")
    p.add_argument("--server-pid", type=int, help="a local server process: report its CPU from /proc")
    p.add_argument("--threshold", action="append", default=[], metavar="EXPR",
                   help="e.g. 'alloc_ok_ratio>0.999', 'alloc_ms:p99<50'; a failure exits 1")
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop", help="client event loop")
    p.add_argument("--seed", type=int, default=None, help="seed of the transaction IDs and timing (default: a random "
                   "one, so a second run never repeats a first run's transaction IDs, which a server rightly "
                   "answers from its retransmission cache)")
    p.add_argument("--out", metavar="DIR", help="write report.json and ports.csv here")
    p.add_argument("--json", action="store_true", help="the report as JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no live lines")
    p.set_defaults(handler=cmd_bench_relay)


class LiveLines:
    """One line of live figures a second on stderr: rich when stderr is a terminal, plain lines when piped."""

    def __init__(self, quiet: bool, shards: int = 1) -> None:
        from rich.console import Console

        self.quiet = quiet
        self.shards = shards
        self.console = Console(stderr=True)
        self.snapshots: dict[int, dict[str, Any]] = {}
        self._next_tick = 1

    def __call__(self, snapshot: dict[str, Any]) -> None:
        """A shard's snapshot; a line once every shard has reported the same second."""
        self.snapshots[int(snapshot.get("shard", 0))] = snapshot
        if self.quiet or snapshot.get("final") or len(self.snapshots) < self.shards:
            return
        running = [round(float(s["t"])) for s in self.snapshots.values() if not s.get("final")]
        if running and min(running) >= self._next_tick:
            self._next_tick = min(running) + 1
            self.emit()

    def emit(self, final: bool = False) -> None:
        from simulator.scenario.bench_relay import live_figures

        live = live_figures(self.snapshots)
        # each shard counts its own last second, so shards whose ticks are not aligned still add up
        rate = live["ok"] / max(live["t"], 1e-6) if final else float(live["ok_last"])
        fails = " ".join(f"{k}={v}" for k, v in sorted(live["failures"].items())) or "-"
        p50 = f"{live['p50_ms']:.2f}" if live["p50_ms"] is not None else "-"
        p99 = f"{live['p99_ms']:.2f}" if live["p99_ms"] is not None else "-"
        if self.console.is_terminal:
            self.console.print(f"[bold]{live['t']:6.1f}s[/] rate [cyan]{rate:8.1f}/s[/] "
                               f"in-flight {live['in_flight']:5d} held {live['held']:5d} "
                               f"ok [green]{live['ok']}[/] failed [red]{live['failed']}[/] "
                               f"({fails}) p50 {p50} ms p99 {p99} ms", highlight=False)
        else:
            print(f"t={live['t']:.1f}s rate={rate:.1f}/s in_flight={live['in_flight']} held={live['held']} "
                  f"ok={live['ok']} failed={live['failed']} failures={fails} p50_ms={p50} p99_ms={p99}",
                  file=sys.stderr, flush=True)


def cmd_bench_relay(args: argparse.Namespace, console: Any) -> int:
    from simulator.net.clients.relay_load import Credentials, ShardSpec
    from simulator.scenario import bench_relay as bench

    try:
        thresholds = [bench.Threshold.parse(text) for text in args.threshold]
        if args.mras is not None:
            if args.pki is None:
                raise bench.BenchError("--mras needs --pki DIR (the lab PKI written by `edgesim certs`)")
            if args.user is not None or args.secret is not None:
                raise bench.BenchError("--mras replaces --user/--secret: give one of them")
            args.user = bench.mras_credentials(args.mras, args.pki, args.mras_node, args.timeout)
        if args.user is None and args.secret is None:
            raise bench.BenchError("--user U:P, --secret S or --mras SCENARIO is needed")
        user, password = args.user if args.user is not None else ("edgesim", "")
        if args.executor is not None and not re.fullmatch(r"(dask|tcp)://[^:/\s]+:\d{1,5}", args.executor):
            raise bench.BenchError(f"--executor {args.executor!r}: expected dask://HOST:PORT")
        nodes = bench.resolve_targets(args.target, bench.default_port(args.dialect, args.transport),
                                      args.nameserver)
        spec = ShardSpec(
            nodes=nodes, credentials=Credentials(user, password, secret=args.secret), dialect=args.dialect,
            transport=args.transport, concurrency=args.concurrency, rate=args.rate, count=args.count,
            duration=args.duration, hold=max(0.0, args.hold), timeout=args.timeout, local_hosts=tuple(args.bind),
            port_slice=args.source_ports, seed=secrets.randbits(31) if args.seed is None else args.seed,
            realm=args.realm)
        specs = bench.shard_specs(spec, args.workers)
        cpu0 = bench.read_process_cpu(args.server_pid) if args.server_pid else None
        host0 = bench.read_host_cpu()
        live = LiveLines(args.quiet, len(specs))
        if args.executor is not None:
            results = bench.run_dask(specs, args.executor, args.loop)
        elif len(specs) == 1:
            results = bench.run_inline(specs[0], live, args.loop)
        else:
            results = bench.run_processes(specs, live, loop=args.loop)
        server_cpu = bench.read_process_cpu(args.server_pid) - cpu0 if cpu0 is not None and args.server_pid \
            else None
        busy = bench.host_busy(host0, bench.read_host_cpu()) if args.executor is None else None
    except bench.BenchError as error:
        print(f"edgesim: {error}", file=sys.stderr)
        return 3 if error.environment else 2
    except (FileNotFoundError, ProcessLookupError) as error:  # --server-pid gone
        print(f"edgesim: --server-pid {args.server_pid}: no such process ({error.strerror})", file=sys.stderr)
        return 3
    if not args.quiet and args.executor is None and live.snapshots:
        live.emit(final=True)  # the whole run: its average rate
    report = bench.merge(results, port_range=args.relay_range, server_cpu_s=server_cpu, host_busy=busy)
    report["target"] = {"target": args.target, "nodes": [n.label for n in nodes], "dialect": args.dialect,
                        "transport": args.transport, "workers": len(specs),
                        "executor": args.executor or ("inline" if len(specs) == 1 else "processes"),
                        "relay_range": list(args.relay_range) if args.relay_range else None}
    report["thresholds"] = bench.evaluate(thresholds, report)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        hist = report["ports"].get("histogram", {})
        (out / "ports.csv").write_text("port,allocations\n" + "".join(f"{p},{n}\n" for p, n in hist.items()))
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k != "histograms"}, indent=2))
    else:
        _print_report(report, console)
    return 0 if all(t["ok"] for t in report["thresholds"]) else 1


def _print_report(report: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    t = report["target"]
    a, ex, ports, cpu = report["alloc_ms"], report["exhaustion"], report["ports"], report["cpu"]
    table = Table(title=f"bench relay {t['target']} ({t['dialect']}/{t['transport']}, {t['workers']} "
                        f"{t['executor']} shard(s))", show_header=False)
    table.add_column("figure")
    table.add_column("value")
    table.add_row("allocations", f"started {report['started']}, ok {report['ok']}, failed {report['failed']}, "
                                 f"released {report['released']} (release failed {report['release_failed']})")
    table.add_row("rate", f"{report['allocs_per_s']} allocs/s over {report['elapsed_s']} s; "
                          f"ok ratio {report['alloc_ok_ratio']:.4f}")
    if a.get("count"):
        table.add_row("alloc latency ms", f"p50 {a['p50']} p90 {a['p90']} p99 {a['p99']} max {a['max']}")
    table.add_row("answers", " ".join(f"{k}={v}" for k, v in report["answers"].items()) or "-")
    table.add_row("failures", " ".join(f"{k}={v}" for k, v in report["failures"].items()) or "-")
    if ex["seen"]:
        note = ""
        if t.get("relay_range") and ex["held_at_first_508"] < ports.get("range_size", 0):
            note = "; fewer held than the range: released ports were not handed out again yet (server linger)"
        table.add_row("exhaustion", f"first 508 after {ex['time_to_exhaustion_s']} s with {ex['held_at_first_508']} "
                                    f"held (peak held {ex['peak_held']}, {ex['count']} refused){note}")
    if ports.get("allocations"):
        table.add_row("relay ports", f"{ports['distinct']} distinct of {ports['range_size']} in {ports['range']}; "
                                     f"even {ports['even']} odd {ports['odd']}; chi-square {ports['chi_square']} "
                                     f"(bins of {ports['bin_width']}, df {ports['df']}, p {ports['uniform_p']})")
    reuse = report["reuse_ms"]
    if reuse.get("count"):
        table.add_row("port reuse after release", f"min {reuse['min']} ms, p50 {reuse['p50']} ms ({reuse['count']})")
    if len(report["nodes"]) > 1:
        for name, node in report["nodes"].items():
            p = node["alloc_ms"]
            table.add_row(f"node {name}", f"ok {node['ok']} ({node['share']:.1%}) failed {node['failed']} "
                                          f"p50 {p.get('p50', '-')} p99 {p.get('p99', '-')} ms")
    server = f", server {cpu['server_cpu_s']} s ({cpu['server_util']:.0%})" if "server_cpu_s" in cpu else ""
    if "host_busy" in cpu:
        server += f", host {cpu['host_busy']:.0%} busy"
    table.add_row("cpu", f"client {cpu['client_cpu_s']} s ({cpu['client_util_per_process']:.0%}/process){server}; "
                         f"limit: {cpu['limit']}")
    for check in report["thresholds"]:
        table.add_row("threshold", f"{'ok' if check['ok'] else 'FAILED'} {check['threshold']} "
                                   f"(actual {check['actual']})")
    console.print(table)
