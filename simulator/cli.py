"""The ``edgesim`` command: run | rules | validate | certs."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from simulator.lab.access import add_serve_access_edge
from simulator.lab.pki import build_pki
from simulator.net.av_edge import add_serve_av_edge
from simulator.scenario.loader import ScenarioError, load_scenario
from simulator.scenario.rules import RULES_BY_ID, rules_for_table
from simulator.scenario.rules import Table as RuleTable

DEFAULT_SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "lync2013-scaled-edge-dns-nat.yaml"


def _cmd_rules(args: argparse.Namespace, console: Console) -> int:
    rules = rules_for_table(args.table)
    if args.json:
        print(json.dumps([rule.to_dict() for rule in rules], indent=2))
        return 0
    table = Table(title=f"{len(rules)} documented Edge rules", header_style="bold")
    for column in ("id", "table", "if", "service", "protocol", "transport", "port", "dir", "source",
                   "destination", "probe"):
        table.add_column(column)
    for rule in rules:
        table.add_row(rule.id, str(rule.table), str(rule.interface), str(rule.service), rule.protocol,
                      str(rule.transport), str(rule.ports), str(rule.direction), rule.source, rule.destination,
                      rule.probe)
    console.print(table)
    return 0


def _cmd_validate(args: argparse.Namespace, console: Console) -> int:
    scenario = load_scenario(args.file)
    console.print(f"{args.file}: ok — scenario '{scenario.name}', {len(scenario.edge_pool.nodes)} pool nodes, "
                  f"{len(scenario.clients)} client populations, {len(scenario.selected_rules)} rules selected")
    return 0


def _cmd_certs(args: argparse.Namespace, console: Console) -> int:
    scenario = load_scenario(args.scenario)
    files = build_pki(scenario).write(args.out)
    console.print(f"lab PKI for '{scenario.name}' written to {files.folder}/ (ca.pem, crl.pem, "
                  f"{len(list(files.folder.glob('*.pem'))) - 3} certificates with keys)")
    return 0


async def _run(args: argparse.Namespace, console: Console) -> int:
    from simulator.lab.topology import Lab
    from simulator.report.model import build_report
    from simulator.report.render import render_table, write_json
    from simulator.scenario.load import check_load, run_load
    from simulator.scenario.runner import RuleResult, run_rules

    scenario = load_scenario(args.file)
    rule_ids = scenario.selected_rules
    if args.rules:
        unknown = [rule for rule in args.rules if rule not in RULES_BY_ID]
        if unknown:
            print(f"edgesim: unknown rule ids: {', '.join(unknown)}", file=sys.stderr)
            return 2
        rule_ids = [rule for rule in rule_ids if rule in set(args.rules)]
    started = dt.datetime.now(dt.UTC)
    async with Lab(scenario) as lab:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console, transient=True,
                      disable=args.no_progress) as progress:
            task = progress.add_task("probing rules", total=len(rule_ids))

            def advance(result: RuleResult) -> None:
                progress.update(task, advance=1, description=f"{result.rule.id}: {result.verdict}")

            results = await run_rules(lab, rule_ids, args.timeout, advance)
            load: dict[str, object] | None = None
            problems: tuple[str, ...] = ()
            if scenario.load and not args.no_load:
                phase = progress.add_task("load phases", total=None)
                outcome = await run_load(lab, args.timeout)
                progress.update(phase, completed=1, total=1)
                stopped = {e["stop_node"] for e in outcome.events if e["service"] in ("all", "access")}
                load = outcome.to_dict([n.name for n in scenario.edge_pool.nodes], stopped)
                problems = tuple(check_load(outcome, scenario))
        report = build_report(scenario, lab.plan, lab.port_map, results, started, dt.datetime.now(dt.UTC), load,
                              problems)
    render_table(report, console)
    path = write_json(report, args.report_dir)
    console.print(f"report: {path}")
    return 0 if report.all_match else 1


def _cmd_run(args: argparse.Namespace, console: Console) -> int:
    if args.loop == "uvloop":
        import uvloop

        return uvloop.run(_run(args, console))
    return asyncio.run(_run(args, console))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgesim", description="Lync Server 2013 / Skype for Business Edge "
                                     "pool lab: replay every documented Edge flow, one verdict per rule.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="build the lab of a scenario, probe its rules, report verdicts")
    run.add_argument("file", nargs="?", default=str(DEFAULT_SCENARIO), help="scenario file (default: the "
                     "shipped 2-node scaled consolidated Edge scenario)")
    run.add_argument("--report-dir", default="reports/latest", help="where report.json is written")
    run.add_argument("--rules", nargs="+", metavar="ID", help="only these rule ids")
    run.add_argument("--timeout", type=float, help="seconds per probe step (default: the scenario's)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--no-load", action="store_true", help="probe the rules only; skip load phases and events")
    run.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                     help="event loop (default uvloop; the test suite runs the lab on asyncio's)")
    run.set_defaults(handler=_cmd_run)

    rules = commands.add_parser("rules", help="list the 38 documented rules")
    rules.add_argument("--table", choices=[str(t) for t in RuleTable], help="only one table")
    rules.add_argument("--json", action="store_true", help="JSON instead of a table")
    rules.set_defaults(handler=_cmd_rules)

    validate = commands.add_parser("validate", help="check a scenario file")
    validate.add_argument("file")
    validate.set_defaults(handler=_cmd_validate)

    certs = commands.add_parser("certs", help="write the lab PKI of a scenario (CA, certificates, CRL)")
    certs.add_argument("--scenario", default=str(DEFAULT_SCENARIO))
    certs.add_argument("--out", default="certs")
    certs.set_defaults(handler=_cmd_certs)

    serve = commands.add_parser("serve", help="run one Edge role's listeners for lab use across real hosts")
    kinds = serve.add_subparsers(dest="kind", required=True)
    add_serve_access_edge(kinds)
    add_serve_av_edge(kinds)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    try:
        code: int = args.handler(args, console)
    except ScenarioError as error:
        for problem in error.problems:
            print(f"edgesim: {problem}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
