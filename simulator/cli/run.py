"""``edgesim run``: build the embedded lab of a scenario, probe its rules, run its load, report.

Everything that can stop the run is checked before the lab starts: option values (exit 2), the output
folder and JUnit file (writable, not another run's: exit 2/3), and the lab's loopback addresses (exit 3 when
``--lab-prefix`` is busy; a busy scenario prefix makes the run move to a free one and say so).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from simulator.cli.errors import (
    EXIT_MISMATCH,
    EXIT_OK,
    EnvironmentFault,
    UsageError,
    busy_address,
    check_writable_file,
    check_writable_folder,
    environment_fault,
    positive,
)
from simulator.cli.scenarios import default_scenario
from simulator.lab.addressing import AddressPlan, PortMap
from simulator.lab.av import av_workers_problem
from simulator.lab.topology import Lab
from simulator.report.junit import write_junit
from simulator.report.model import build_report
from simulator.report.outputs import LATEST, FolderTaken, choose_folder, point_latest, write_run
from simulator.report.render import print_summary, render_table
from simulator.scenario.load import LoadReport, check_load, run_load
from simulator.scenario.load_sampler import LoadSampler
from simulator.scenario.runner import RuleResult, run_rules
from simulator.scenario.thresholds import LoadThreshold, ThresholdError, evaluate, histogram_value, print_live
from simulator.spec.loader import load_scenario
from simulator.spec.rules import RULES_BY_ID
from simulator.spec.schema import Scenario

REPORTS_ROOT = Path("reports")
PREFIX_CANDIDATES = 32  # how many other /16s a run tries when its scenario's is busy


@dataclass(frozen=True, slots=True)
class Plan:
    scenario: Scenario
    rule_ids: list[str]
    folder: Path
    default_folder: bool  # reports/<run>/ with reports/latest pointing at it
    created: bool  # this run made the folder: a run that fails before writing leaves no empty folder behind
    thresholds: tuple[LoadThreshold, ...] = ()  # --threshold: k6-style checks of the load (exit 1 when one fails)


def _with_prefix(scenario: Scenario, prefix: str) -> Scenario:
    return scenario.model_copy(update={"lab": scenario.lab.model_copy(update={"loopback_prefix": prefix})})


def lab_addresses(scenario: Scenario) -> list[tuple[str, int, str]]:
    """What a lab binds first and most surely: its DNS server (UDP, TCP) and each node's SIP listeners."""
    plan = AddressPlan.for_scenario(scenario)
    port_map = PortMap.for_this_process(scenario.lab.privileged_port_offset)
    dns = plan.host("dns").address
    wanted = [(dns, port_map(53), "udp"), (dns, port_map(53), "tcp")]
    for node in scenario.edge_pool.nodes:
        wanted.append((plan.host(f"{node.name}-internal").address, 5061, "tcp"))
        wanted.append((plan.host(f"{node.name}-access-public").address, port_map(443), "tcp"))
    return wanted


def free_prefix(scenario: Scenario, explicit: bool) -> tuple[Scenario, str | None]:
    """The scenario on a loopback /16 whose lab addresses are free, and a note when it moved; EnvironmentFault
    when ``explicit`` (--lab-prefix) and that one is busy, or when no candidate is free."""
    busy = busy_address(lab_addresses(scenario))
    if busy is None:
        return scenario, None
    prefix = scenario.lab.loopback_prefix
    if explicit:
        raise EnvironmentFault(f"lab prefix {prefix} is busy (another edgesim run?), {busy}")
    second = int(prefix.split(".")[1])
    for step in range(1, PREFIX_CANDIDATES + 1):
        candidate = f"127.{(second - 1 + step) % 255 + 1}"
        moved = _with_prefix(scenario, candidate)
        if busy_address(lab_addresses(moved)) is None:
            return moved, f"lab prefix {prefix} is busy (another run?), using {candidate}.0.0/16 instead; {busy}"
    raise EnvironmentFault(f"lab prefix {prefix} and the next {PREFIX_CANDIDATES} are busy, {busy}; stop the other "
                           "runs or pass --lab-prefix 127.N")


def prepare(args: argparse.Namespace) -> Plan:
    """Check every option and the environment before the lab starts (UsageError, EnvironmentFault)."""
    positive(args.timeout, "--timeout")
    scenario = load_scenario(args.file or default_scenario())
    if args.lab_prefix is not None:
        try:
            scenario = _with_prefix(scenario, args.lab_prefix)
            type(scenario.lab).model_validate(scenario.lab.model_dump())
        except ValueError:
            raise UsageError(f"--lab-prefix {args.lab_prefix}: use 127.N with N from 1 to 255") from None
    scenario = apply_load_control(scenario, args)
    av_workers = getattr(args, "av_workers", None)
    if av_workers is not None:
        problem = av_workers_problem(scenario, av_workers)
        if problem is not None:
            raise UsageError(f"--av-workers {av_workers}: {problem}")
    thresholds = parse_thresholds(getattr(args, "threshold", []))
    rule_ids = scenario.selected_rules
    if args.rules:
        unknown = [rule for rule in args.rules if rule not in RULES_BY_ID]
        if unknown:
            raise UsageError(f"unknown rule ids: {', '.join(unknown)} (see `edgesim rules`)")
        rule_ids = [rule for rule in rule_ids if rule in set(args.rules)]
        if not rule_ids:
            raise UsageError(f"none of {', '.join(args.rules)} is selected by the scenario's 'rules'")
    started = dt.datetime.now(dt.UTC)
    out = args.out
    if out is not None and Path(out).absolute() == (REPORTS_ROOT / LATEST).absolute():
        out = None  # `--out reports/latest` (edgesim before run folders): a new run folder, latest points at it
    if out is not None:  # another run's folder is a usage error, found before any environment check
        try:
            choose_folder(out, scenario.name, started, args.force, REPORTS_ROOT)
        except FolderTaken as error:
            raise UsageError(str(error)) from None
    if args.junit is not None:
        check_writable_file(Path(args.junit))
    scenario, note = free_prefix(scenario, explicit=args.lab_prefix is not None)
    try:
        created = out is None or not Path(out).exists()
        folder = choose_folder(out, scenario.name, started, args.force, REPORTS_ROOT)
    except FolderTaken as error:
        raise UsageError(str(error)) from None
    except OSError as error:
        raise environment_fault(error, f"cannot write to {REPORTS_ROOT}") from None
    check_writable_folder(folder)
    if note is not None:
        print(f"edgesim: {note}", file=sys.stderr)
    return Plan(scenario, rule_ids, folder, out is None, created, thresholds)


# ------------------------------------------------------------------------- load control and thresholds (issue 12)
LOAD_HISTOGRAMS = ("sign_in_ms", "im_ms")
LOAD_SCALARS = ("sign_in_ok_ratio", "sign_ins_per_s", "started", "ok", "failed", "im_ok_ratio", "ims")
LOAD_PREFIXES = ("fail_",)
_OVERRIDES = (("rate", "--rate"), ("rate_increase", "--rate-increase"), ("rate_interval", "--rate-interval"),
              ("rate_max", "--rate-max"), ("concurrency", "--concurrency"), ("count", "--count"),
              ("duration", "--duration"), ("closed_loop", "--closed-loop"))


def apply_load_control(scenario: Scenario, args: argparse.Namespace) -> Scenario:
    """The scenario with the load-control options set on every sign-in phase (UsageError on a bad value)."""
    given: dict[str, Any] = {field: getattr(args, field, None) for field, _ in _OVERRIDES}
    given = {field: value for field, value in given.items() if value is not None}
    for field, option in _OVERRIDES:
        value = given.get(field)
        if field != "closed_loop" and value is not None and not value > 0:
            raise UsageError(f"{option} must be above 0 (got {value:g})")
    if not given:
        return scenario
    phases = [phase for phase in scenario.load if phase.calls is None]
    if not phases:
        raise UsageError(f"{', '.join(o for f, o in _OVERRIDES if f in given)}: the scenario has no sign-in load phase")
    if given.get("rate_max") is not None and given.get("rate") is not None and given["rate_max"] < given["rate"]:
        raise UsageError(f"--rate-max ({given['rate_max']:g}) is below --rate ({given['rate']:g})")
    load = []
    for phase in scenario.load:
        if phase.calls is None:
            try:
                phase = type(phase).model_validate({**phase.model_dump(), **given})
            except ValidationError as error:
                first = error.errors()[0]
                where = ".".join(str(part) for part in first["loc"])
                problem = str(first["msg"]).removeprefix("Value error, ")
                raise UsageError(f"load phase {phase.name}: {where + ': ' if where else ''}{problem}") from None
        load.append(phase)
    return scenario.model_copy(update={"load": load})


def parse_thresholds(texts: list[str]) -> tuple[LoadThreshold, ...]:
    try:
        return tuple(LoadThreshold.parse(text, LOAD_HISTOGRAMS, LOAD_SCALARS, LOAD_PREFIXES) for text in texts)
    except ThresholdError as error:
        raise UsageError(str(error)) from None


def check_thresholds(thresholds: tuple[LoadThreshold, ...], outcome: LoadReport | None) -> list[dict[str, Any]]:
    """Each threshold against the load's figures (no load, or no sample: the threshold fails, as in k6)."""
    meter = outcome.meter if outcome is not None else None
    duration = outcome.duration_s if outcome is not None else 0.0

    def actual(threshold: LoadThreshold) -> float | None:
        if meter is None:
            return None
        if threshold.metric in LOAD_HISTOGRAMS:
            return histogram_value(meter.latency if threshold.metric == "sign_in_ms" else meter.im_latency,
                                   threshold.aggregate)
        figures = meter.to_dict(duration)
        if threshold.metric.startswith("fail_"):
            return float(figures["failures"].get(threshold.metric.removeprefix("fail_"), 0))
        if threshold.metric == "sign_ins_per_s":
            return meter.ok / duration if duration else None
        if threshold.metric in ("im_ok_ratio", "ims"):
            im = figures["im"]
            return None if im is None else float(im["im_ok_ratio"] if threshold.metric == "im_ok_ratio" else im["ok"])
        value = figures[threshold.metric]
        return None if value is None else float(value)

    return evaluate(thresholds, actual)


async def run(args: argparse.Namespace, console: Console) -> int:
    plan = prepare(args)
    scenario = plan.scenario
    started = dt.datetime.now(dt.UTC)
    from simulator.net.transport import capture

    try:
        capture.prepare_keylog(args.keylog)  # before the lab builds any TLS context
        async with contextlib.AsyncExitStack() as stack:
            if args.pcap:
                prefix = f"{scenario.lab.loopback_prefix}.0.0/16"
                await stack.enter_async_context(capture.capture(args.pcap, prefix))
            checks: list[dict[str, Any]] = []
            report = await _run_lab(args, console, scenario, plan.rule_ids, started, plan.thresholds, checks)
    except capture.CaptureError as error:  # no tcpdump/dumpcap, no privilege, a file not writable
        _forget(plan)
        raise EnvironmentFault(str(error)) from None
    except OSError as error:  # a lab address taken between the check and the start, a file limit …
        _forget(plan)
        raise environment_fault(error, "the lab could not start or run") from None
    except BaseException:
        _forget(plan)
        raise
    doc = report.to_dict()
    if plan.thresholds:
        doc["thresholds"] = checks
        for check in checks:
            mark = "[green]ok[/]" if check["ok"] else "[red]FAILED[/]"
            console.print(f"threshold {mark} {check['threshold']} (actual {check['actual']})", highlight=False)
    render_table(doc, console, details=args.details, summary=False)
    try:
        written = write_run(doc, plan.folder)
        if plan.default_folder:
            point_latest(plan.folder, REPORTS_ROOT)
        if args.junit is not None:
            written.append(write_junit(doc, Path(args.junit)))
    except OSError as error:
        raise environment_fault(error, f"cannot write the report to {plan.folder}") from None
    console.print(f"report: {plan.folder}/ ({', '.join(path.name for path in written)})", overflow="fold")
    print_summary(doc, console)
    thresholds_hold = all(check["ok"] for check in doc.get("thresholds", []))
    return EXIT_OK if report.all_match and thresholds_hold else EXIT_MISMATCH


def _forget(plan: Plan) -> None:
    if plan.created:
        with contextlib.suppress(OSError):
            plan.folder.rmdir()  # only when still empty


async def _run_lab(args: argparse.Namespace, console: Console, scenario: Scenario, rule_ids: list[str],
                   started: dt.datetime, thresholds: tuple[LoadThreshold, ...] = (),
                   checks: list[dict[str, Any]] | None = None) -> Any:
    async with Lab(scenario, av_workers=getattr(args, "av_workers", None)) as lab:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console, transient=True,
                      disable=args.no_progress) as progress:
            task = progress.add_task("probing rules", total=len(rule_ids))

            def advance(result: RuleResult) -> None:
                progress.update(task, advance=1, description=f"{result.rule.id}: {result.verdict}")

            results = await run_rules(lab, rule_ids, args.timeout, advance)
            load: dict[str, object] | None = None
            problems: tuple[str, ...] = ()
            intervals: tuple[dict[str, Any], ...] = ()
            if scenario.load and not args.no_load:
                phase = progress.add_task("load phases", total=None)
                sampler = LoadSampler(lab)
                sampling = asyncio.create_task(sampler.run())
                try:
                    live = None if args.no_progress else (lambda figures: print_live(figures, console))
                    outcome = await run_load(lab, args.timeout, on_second=live)
                finally:
                    await sampler.stop(sampling)
                intervals = tuple(sampler.intervals())
                progress.update(phase, completed=1, total=1)
                stopped = {e["stop_node"] for e in outcome.events if e["service"] in ("all", "access")}
                load = outcome.to_dict([n.name for n in scenario.edge_pool.nodes], stopped)
                problems = tuple(check_load(outcome, scenario))
            if checks is not None and thresholds:
                checks.extend(check_thresholds(thresholds, outcome if load is not None else None))
        return build_report(scenario, lab.plan, lab.port_map, results, started, dt.datetime.now(dt.UTC), load,
                            problems, intervals)
