"""``edgesim run``: build the embedded lab of a scenario, probe its rules, run its load, report."""

from __future__ import annotations

import argparse
import datetime as dt
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from simulator.cli.scenarios import default_scenario
from simulator.lab.topology import Lab
from simulator.report.model import build_report
from simulator.report.render import render_table, write_json
from simulator.scenario.load import check_load, run_load
from simulator.scenario.runner import RuleResult, run_rules
from simulator.spec.loader import load_scenario
from simulator.spec.rules import RULES_BY_ID


async def run(args: argparse.Namespace, console: Console) -> int:
    scenario = load_scenario(args.file or default_scenario())
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
