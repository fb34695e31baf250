"""Firewall lab mode: ``serve edge|internal|external``, ``probe --side`` and ``report merge``.

Every command reads the scenario's ``deployment`` section for its addresses and one shared PKI folder
(``edgesim certs``); before anything starts it checks that this host owns every address it must bind, and
exits with one line otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import errno
import json
import signal
import socket
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simulator.cli.serve import (
    AccessWorkerCollector,
    EnvironmentProblem,
    add_observability,
    lab_worker_sources,
    observed,
    run_until_stopped,
    stop_signals,
    wait_for_stop,
    worker_count,
    worker_lines,
)

if TYPE_CHECKING:
    from rich.console import Console

    from simulator.lab.topology import Lab, Placement
    from simulator.report.model import Report
    from simulator.spec.schema import Scenario

EXIT_USAGE = 2
EXIT_ENVIRONMENT = 3


class LabModeError(Exception):
    """One line for the user and the exit code it carries (2: usage/scenario, 3: environment)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _scenario(path: str) -> Scenario:
    from simulator.spec.loader import load_scenario

    scenario = load_scenario(path)
    if scenario.deployment is None:
        raise LabModeError(f"{path}: no 'deployment' section: firewall lab mode needs every part's real address "
                           "(see scenarios/firewall-lab.yaml)", EXIT_USAGE)
    return scenario


def check_addresses_here(addresses: Iterable[tuple[str, str]]) -> None:
    """Raise LabModeError (environment) naming the first address this host cannot bind."""
    for address, what in addresses:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind((address, 0))
            except OSError as error:
                if error.errno == errno.EADDRNOTAVAIL:
                    raise LabModeError(f"{address} ({what}) is not an address of this host", EXIT_ENVIRONMENT) \
                        from None
                raise LabModeError(f"cannot bind {address} ({what}): {error.strerror}", EXIT_ENVIRONMENT) from None


def _lab(scenario: Scenario, placement: Placement, pki_folder: str, workers: int | None = None) -> Lab:
    """The lab of one side; ``workers``: the node's A/V Edge interfaces and Access Edge on that many processes
    each (``serve edge --workers N``)."""
    from simulator.lab.pki import PkiFolderError, read_pki
    from simulator.lab.topology import Lab

    try:
        pki, files = read_pki(scenario, pki_folder)
    except PkiFolderError as error:
        raise LabModeError(str(error), EXIT_ENVIRONMENT) from None
    try:
        return Lab(scenario, pki, placement=placement, pki_files=files, av_workers=workers, access_workers=workers)
    except ValueError as error:
        raise LabModeError(f"--workers: {error}", EXIT_USAGE) from None


def side_addresses(scenario: Scenario, side: str, node: str | None) -> list[tuple[str, str]]:
    """(address, what) that a side binds: an Edge node's interfaces, or the side's populations and servers."""
    from simulator.spec.schema import INTERNAL_ROLES

    deployment = scenario.deployment
    assert deployment is not None
    if side == "edge":
        assert node is not None
        placed = deployment.nodes[node]
        return [(str(placed.internal), f"nodes.{node}.internal"),
                *((str(getattr(placed, s).private), f"nodes.{node}.{s}.private") for s in ("access", "webconf", "av"))]
    wanted = []
    for client in scenario.clients:
        if (client.role in INTERNAL_ROLES) == (side == "internal"):
            placed_client = deployment.clients[client.name]
            wanted += [(str(a), f"clients.{client.name}.addresses") for a in dict.fromkeys(placed_client.addresses)]
            if client.nat is not None and placed_client.nat is not None:
                wanted.append((str(placed_client.nat), f"clients.{client.name}.nat"))
    if side == "external":
        if deployment.dns.server is not None:
            wanted.append((str(deployment.dns.server), "dns.server"))
        wanted.append((str(deployment.crl), "crl"))
    return wanted


def _placement(side: str, node: str | None, *, serving: bool) -> Placement:
    from simulator.lab.topology import Placement

    if side == "edge":
        return Placement(deployed=True, nodes=frozenset({node}) if serving and node else frozenset(),
                         internal=False, external=False, client_nats=False)
    return Placement(deployed=True, nodes=frozenset(), internal=serving and side == "internal",
                     external=serving and side == "external", client_nats=not serving and side == "external")


def _node_of(scenario: Scenario, node: str | None, required: bool) -> str | None:
    names = [n.name for n in scenario.edge_pool.nodes]
    if node is None:
        if required:
            raise LabModeError(f"--node is required (one of {', '.join(names)})", EXIT_USAGE)
        return None
    if node not in names:
        raise LabModeError(f"no pool node {node!r} in scenario {scenario.name!r} (nodes: {', '.join(names)})",
                           EXIT_USAGE)
    return node


# ------------------------------------------------------------------------------------------------ serve


def add_lab_serve_parsers(serve: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for side, text in (("edge", "one pool node's Edge listeners on its deployment addresses"),
                       ("internal", "the Front End/Director emulation and the internal peers"),
                       ("external", "the partners' servers, media peers, XMPP partner, DNS and CRL servers")):
        parser = serve.add_parser(side, help=f"firewall lab mode: {text}")
        parser.add_argument("scenario", help="scenario file with a 'deployment' section")
        parser.add_argument("--pki", required=True, metavar="DIR", help="the lab PKI written by `edgesim certs`")
        if side == "edge":
            parser.add_argument("--node", required=True, help="which pool node this host is")
            parser.add_argument("--workers", type=worker_count, default=None, metavar="N",
                                help="serve the node's Access Edge (TLS 443, MTLS 5061 external and internal) and "
                                "each of its A/V Edge interfaces (TURN 3478/UDP, 443/TCP; the relay range halved "
                                "between the interfaces and sliced per worker) with N processes each, sharing "
                                "the ports (SO_REUSEPORT); Web Conferencing, MRAS 5062, XMPP and the management "
                                "listeners stay single-process, in the parent; 'auto' (the default): one per "
                                "core, as many as the relay range allows; 1: everything in one process")
        parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
        parser.add_argument("--observations", metavar="FILE",
                            help="write what reached this side (JSON) on exit, and at SIGUSR1")
        add_observability(parser, tls=True)
        parser.set_defaults(handler=_cmd_serve_side, side=side)


def _cmd_serve_side(args: argparse.Namespace, console: Console) -> int:
    return _guard(lambda: run_until_stopped(lambda: _serve_side(args)))


async def _serve_side(args: argparse.Namespace) -> int:
    scenario = _scenario(args.scenario)
    node = _node_of(scenario, getattr(args, "node", None), args.side == "edge")
    workers = getattr(args, "workers", 1)
    if workers is None:  # one per core, as many as the relay range allows
        from simulator.lab.av import most_av_workers
        from simulator.net.edge.workers import default_workers

        workers = default_workers(most_av_workers(scenario))
    workers = workers if workers > 1 else None
    check_addresses_here(side_addresses(scenario, args.side, node))
    lab = _lab(scenario, _placement(args.side, node, serving=True), args.pki, workers)
    started = dt.datetime.now(dt.UTC)

    def dump() -> None:
        if args.observations:
            _write_json(args.observations, {
                "edgesim_observations": 1, "scenario": scenario.name, "side": args.side, "node": node,
                "started": started.isoformat(), "finished": dt.datetime.now(dt.UTC).isoformat(),
                "arrivals": lab.arrivals() + worker_arrivals()})

    def worker_arrivals() -> list[dict[str, Any]]:
        """What reached the Access Edge and A/V Edge workers' listeners."""
        from simulator.lab.access import access_edge_workers
        from simulator.lab.av import av_worker_arrivals

        access = [entry for _node, pool in access_edge_workers(lab) for entry in pool.arrivals()]
        return access + av_worker_arrivals(lab)

    hosts = sorted({address for address, _what in side_addresses(scenario, args.side, node)})
    collectors = [] if workers is None else [AccessWorkerCollector(lambda: lab)]
    running = False
    with stop_signals() as stop:  # before anything starts: a stop at any time is clean
        try:
            # deployed sides sit on real interfaces: --pcap captures on all of them, filtered to this side's addresses
            async with observed(args, f"serve {args.side}", lambda: lab_worker_sources(lab), hosts, interface="any",
                                collectors=collectors):
                try:
                    await lab.start()  # stops what it started when it fails (a worker that cannot listen too)
                except OSError as error:
                    raise EnvironmentProblem(str(error)) from None
                running = True
                loop = asyncio.get_running_loop()
                loop.add_signal_handler(signal.SIGUSR1, dump)  # write what arrived so far, keep serving
                try:
                    if workers is not None:
                        print(f"{args.side} workers {workers} (access-edge, av-external, av-internal; webconf, mras, "
                              "xmpp and management in the parent)", flush=True)
                    print(f"{args.side} ready" + (f" node={node}" if node else ""), flush=True)
                    await wait_for_stop(args.duration, stop)
                finally:
                    loop.remove_signal_handler(signal.SIGUSR1)
                dump()
                # leaving ``observed`` prints the summary while the lab still runs; the lab stops below
            for line in worker_lines(lab, args.side):
                print(line, flush=True)
        except EnvironmentProblem as error:
            raise LabModeError(str(error), EXIT_ENVIRONMENT) from None
        finally:
            if running:
                await lab.stop()
    return 0


# ------------------------------------------------------------------------------------------------ probe


def add_probe_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("probe", help="firewall lab mode: run the probes that start on one side")
    parser.add_argument("scenario", help="scenario file with a 'deployment' section")
    parser.add_argument("--side", required=True, choices=("external", "internal", "edge"))
    parser.add_argument("--node", help="with --side edge: which pool node this host is")
    parser.add_argument("--pki", required=True, metavar="DIR", help="the lab PKI written by `edgesim certs`")
    parser.add_argument("--out", required=True, metavar="FILE", help="where the side report (JSON) goes")
    parser.add_argument("--rules", nargs="+", metavar="ID", help="only these rule ids")
    parser.add_argument("--timeout", type=float, help="seconds per probe step (default: the scenario's)")
    parser.add_argument("--load", action="store_true",
                        help="--side external: after the probes, run the scenario's load phases through the "
                        "firewall (events that stop nodes need the embedded lab and are skipped)")
    parser.add_argument("--given", nargs="+", default=[], metavar="FILE",
                        help="side reports already written (e.g. the internal side's): a rule whose prerequisite "
                        "failed there is reported blocked instead of probed")
    parser.set_defaults(handler=_cmd_probe)


def _cmd_probe(args: argparse.Namespace, console: Console) -> int:
    return _guard(lambda: run_until_stopped(lambda: _probe(args)))


async def _probe(args: argparse.Namespace) -> int:
    from simulator.scenario.runner import run_rules
    from simulator.scenario.sides import ProbeSide, rules_for_side
    from simulator.spec.rules import RULES_BY_ID

    scenario = _scenario(args.scenario)
    node = _node_of(scenario, args.node, args.side == "edge")
    if args.timeout is not None and args.timeout <= 0:
        raise LabModeError(f"--timeout must be above 0 (got {args.timeout})", EXIT_USAGE)
    selected = scenario.selected_rules
    if args.rules:
        unknown = [rule for rule in args.rules if rule not in RULES_BY_ID]
        if unknown:
            raise LabModeError(f"unknown rule ids: {', '.join(unknown)}", EXIT_USAGE)
        selected = [rule for rule in selected if rule in set(args.rules)]
    side = ProbeSide(args.side)
    rule_ids = rules_for_side(selected, side)
    sources = side_addresses(scenario, "edge" if side is ProbeSide.EDGE else args.side, node)
    check_addresses_here(sources)
    given = _given_results(scenario, args.given)
    lab = _lab(scenario, _placement(args.side, node, serving=False), args.pki)
    nodes = [node] if node is not None else None
    started = dt.datetime.now(dt.UTC)
    if args.load and side is not ProbeSide.EXTERNAL:
        raise LabModeError("--load runs from the external side (--side external)", EXIT_USAGE)
    load: dict[str, Any] | None = None
    async with lab:
        results = await run_rules(lab, rule_ids, args.timeout, nodes=nodes, given=given)
        if args.load and scenario.load:
            from simulator.scenario.load import run_load

            outcome = await run_load(lab, args.timeout, events=False)
            load = outcome.to_dict([n.name for n in scenario.edge_pool.nodes], set())
    finished = dt.datetime.now(dt.UTC)
    _write_json(args.out, {
        "edgesim_side_report": 1, "scenario": scenario.name, "side": args.side, "node": node,
        "started": started.isoformat(), "finished": finished.isoformat(),
        "rules": [_result_dict(result) for result in results], "load": load})
    print(f"{args.side} side: {len(results)} rules probed, report {args.out}", flush=True)
    return 0


def _given_results(scenario: Scenario, files: list[str]) -> dict[str, Any]:
    """The verdicts of side reports already written, merged as ``report merge`` would."""
    if not files:
        return {}
    documents = _read_documents(files)
    report = _merged(scenario, documents)
    probed = {entry["id"] for document in documents for entry in document.get("rules", [])}
    return {entry.result.rule.id: entry.result for entry in report.rules if entry.result.rule.id in probed}


def _result_dict(result: Any) -> dict[str, Any]:
    return {"id": result.rule.id, "verdict": str(result.verdict), "reason": result.reason,
            "blocked_by": result.blocked_by, "detail": result.detail, "elapsed_ms": round(result.elapsed_ms, 3),
            "nodes": [{"node": o.node, "verdict": str(o.verdict), "reason": None if o.reason is None else str(o.reason),
                       "detail": o.detail, "elapsed_ms": round(o.elapsed_ms, 3)} for o in result.outcomes]}


# ------------------------------------------------------------------------------------------------ report


def add_report_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    report = commands.add_parser("report", help="work with reports")
    actions = report.add_subparsers(dest="action", required=True)
    merge = actions.add_parser("merge", help="merge side reports (and observations) into one verdict table")
    merge.add_argument("files", nargs="+", metavar="FILE", help="side reports and observation files")
    merge.add_argument("--scenario", required=True, help="the scenario the sides ran")
    merge.add_argument("--out", default="reports/merged", metavar="DIR",
                       help="where report.json, report.html (and the load's CSV files) are written")
    merge.add_argument("--junit", metavar="FILE", help="also write JUnit XML: one testcase per rule")
    merge.set_defaults(handler=_cmd_merge)


def _cmd_merge(args: argparse.Namespace, console: Console) -> int:
    return _guard(lambda: _merge(args, console))


def _merge(args: argparse.Namespace, console: Console) -> int:
    from simulator.report.junit import write_junit
    from simulator.report.outputs import write_run
    from simulator.report.render import render_table

    scenario = _scenario(args.scenario)
    report = _merged(scenario, _read_documents(args.files))
    render_table(report, console)
    doc = report.to_dict()
    try:
        written = write_run(doc, Path(args.out))
        if args.junit is not None:
            written.append(write_junit(doc, Path(args.junit)))
    except OSError as error:
        raise LabModeError(f"{args.out}: {error.strerror}", EXIT_ENVIRONMENT) from None
    console.print(f"report: {args.out}/ ({', '.join(path.name for path in written)})", overflow="fold")
    return 0 if report.all_match else 1


# ------------------------------------------------------------------------------------------------ helpers


def _read_documents(files: list[str]) -> list[dict[str, Any]]:
    documents = []
    for name in files:
        try:
            documents.append(json.loads(Path(name).read_text(encoding="utf-8")))
        except OSError as error:
            raise LabModeError(f"{name}: {error.strerror}", EXIT_ENVIRONMENT) from None
        except json.JSONDecodeError as error:
            raise LabModeError(f"{name}: not JSON ({error.msg} at line {error.lineno})", EXIT_USAGE) from None
    return documents


def _merged(scenario: Scenario, documents: list[dict[str, Any]]) -> Report:
    from simulator.report.merge import merge_side_reports

    try:
        return merge_side_reports(scenario, documents)
    except ValueError as error:
        raise LabModeError(str(error), EXIT_USAGE) from None


def _write_json(path: str, document: dict[str, Any]) -> None:
    try:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    except OSError as error:
        raise LabModeError(f"{path}: {error.strerror}", EXIT_ENVIRONMENT) from None


def _guard(run: Any) -> int:
    try:
        code: int = run()
    except LabModeError as error:
        print(f"edgesim: {error}", file=sys.stderr)
        return error.code
    return code


# ------------------------------------------------------------------------------------------------ the sweep


def add_sweep_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sweep = commands.add_parser(
        "sweep", help="take the documented rules out of a firewall ruleset one group at a time and say what broke",
        description="Builds the firewall lab in network namespaces (ext, dmz, int and a router fw; needs root, ip, "
                    "nft and conntrack), loads the ruleset whole, then once per group of rules that accept the same "
                    "packets (E6+P3, E8+F1+P2, ...) with that group's accept lines removed, runs every side "
                    "(serve edge per node, internal, external; probe each side; merge) and reports which rules "
                    "failed, with what reason, and which were blocked. The ruleset is the one `edgesim rules "
                    "--firewall` emits, or yours (--ruleset) if its accept rules carry the rule id first in their "
                    "comment. Exit 0 when the baseline passes every rule and each group's removal is caught.")
    sweep.add_argument("--scenario", required=True, metavar="FILE",
                       help="a scenario with the deployment of the namespace lab (e.g. scenarios/firewall-lab.yaml)")
    sweep.add_argument("--ruleset", metavar="FILE", help="your ruleset (default: the emitted one)")
    sweep.add_argument("--dialect", choices=("nftables", "iptables"), default="nftables")
    sweep.add_argument("--only", nargs="+", metavar="ID", default=[], help="only the groups holding these rule ids")
    sweep.add_argument("--timeout", type=float, default=3.0, metavar="S", help="seconds per probe step")
    sweep.add_argument("--out", default="reports/sweep", metavar="DIR",
                       help="where sweep.json and each step's merged report are written")
    sweep.set_defaults(handler=_cmd_sweep)


def _cmd_sweep(args: argparse.Namespace, console: Console) -> int:
    return _guard(lambda: _sweep(args, console))


def _sweep(args: argparse.Namespace, console: Console) -> int:
    import os
    import tempfile

    from simulator.lab import fwlab
    from simulator.spec.rules import RULES_BY_ID

    scenario = _scenario(args.scenario)
    if scenario.deployment is None:
        raise LabModeError(f"{args.scenario}: no deployment: section (see scenarios/firewall-lab.yaml)", EXIT_USAGE)
    if args.timeout <= 0:
        raise LabModeError(f"--timeout: must be above 0, not {args.timeout}", EXIT_USAGE)
    unknown = [rule_id for rule_id in args.only if rule_id not in RULES_BY_ID]
    if unknown:
        raise LabModeError(f"--only: unknown rule ids {', '.join(unknown)} (see `edgesim rules`)", EXIT_USAGE)
    ruleset = None
    if args.ruleset is not None:
        try:
            ruleset = Path(args.ruleset).read_text(encoding="utf-8")
        except OSError as error:
            raise LabModeError(f"{args.ruleset}: {error.strerror}", EXIT_ENVIRONMENT) from None
    if os.geteuid() != 0:
        raise LabModeError("sweep: network namespaces need root", EXIT_ENVIRONMENT)
    missing = fwlab.missing_tools(args.dialect)
    if missing:
        raise LabModeError(f"sweep: missing {', '.join(missing)} (Debian: iproute2, nftables/iptables, conntrack)",
                           EXIT_ENVIRONMENT)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="sweep-", dir=out))
    except OSError as error:
        raise LabModeError(f"{out}: {error.strerror}", EXIT_ENVIRONMENT) from None

    def progress(step: fwlab.SweepStep, index: int, total: int) -> None:
        name = "+".join(step.left_out) or "baseline (whole ruleset)"
        failed = ", ".join(f"{rule} {why}" for rule, why in step.failed.items()) or "-"
        mark = "" if not step.left_out else "caught" if step.caught else \
            f"open via {'+'.join(step.overlapped_by)}" if step.explained else "NOT CAUGHT"
        print(f"[{index:2}/{total}] {name:<14} {step.seconds:5.1f}s {mark:<10} failed: {failed}"
              f"{'; blocked: ' + str(len(step.blocked)) if step.blocked else ''}", flush=True)

    try:
        result = fwlab.sweep(scenario, Path(args.scenario), work, ruleset=ruleset, dialect=args.dialect,
                             only=args.only, probe_timeout=args.timeout, progress=progress)
    except fwlab.FirewallLabError as error:
        raise LabModeError(f"sweep: {error}".splitlines()[0], EXIT_ENVIRONMENT) from None
    document = result.to_dict()
    total = len(scenario.selected_rules)
    _write_json(str(out / "sweep.json"), document)
    print(f"sweep: {document['caught']}/{document['groups']} groups caught, "
          f"{document['open_by_overlap']} open through an overlapping rule, baseline "
          f"{total - len(result.baseline.failed) - len(result.baseline.blocked)}/{total} pass, "
          f"{result.seconds:.0f} s; {out / 'sweep.json'}", flush=True)
    clean = not result.baseline.failed and not result.baseline.blocked
    return 0 if clean and all(step.explained for step in result.steps) else 1
