"""The ``edgesim`` command: run | rules | validate | certs | serve | probe | report.

The top layer: it owns every argument parser and may import anything below it. Each handler imports what
it runs when it runs, so ``edgesim rules`` or ``edgesim --help`` load the rule catalog and argparse, not the
lab, the listeners or the TLS stack.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, NoReturn

from simulator.cli.bench import add_bench_parser
from simulator.cli.errors import EXIT_CODES_EPILOG, EXIT_ENVIRONMENT, EXIT_INTERRUPTED, EXIT_USAGE, CliError
from simulator.cli.lab_mode import add_lab_serve_parsers, add_probe_parser, add_report_parser, add_sweep_parser
from simulator.cli.report import add_report_show_parser, report_actions
from simulator.cli.run_args import add_run_arguments
from simulator.cli.scenarios import default_scenario
from simulator.cli.serve import add_serve_parsers
from simulator.spec.rules import Table as RuleTable

if TYPE_CHECKING:
    from rich.console import Console


def _version() -> str:
    try:
        return version("edgesim")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown (not installed)"


def _cmd_rules(args: argparse.Namespace, console: Console) -> int:
    if args.firewall is not None:  # the scenario's deployment as a ruleset on stdout; one line and exit 2 if unusable
        from simulator.lab.firewall import firewall_ruleset
        from simulator.spec.loader import load_scenario

        if args.scenario is None:
            print("edgesim: --firewall needs --scenario FILE, a scenario with a deployment: section "
                  "(e.g. scenarios/firewall-lab.yaml)", file=sys.stderr)
            return 2
        if args.table is not None or args.json:
            print("edgesim: --firewall writes every selected rule; --table and --json do not apply", file=sys.stderr)
            return 2
        scenario = load_scenario(args.scenario)
        try:
            text = firewall_ruleset(scenario, args.firewall, leave_out=args.leave_out or (), reject=args.reject,
                                    snat_inbound=True if args.snat_inbound else None,
                                    hairpin=False if args.no_hairpin else None, drop_return=args.drop_return or (),
                                    external_interface=args.external_interface)
        except ValueError as error:
            print(f"edgesim: {args.scenario}: {error}", file=sys.stderr)
            return 2
        sys.stdout.write(text)
        return 0
    if args.scenario is not None or args.leave_out or args.drop_return or args.reject or args.snat_inbound \
            or args.no_hairpin or args.external_interface:
        print("edgesim: --scenario, --leave-out, --drop-return, --reject, --snat-inbound, --no-hairpin and "
              "--external-interface go with --firewall", file=sys.stderr)
        return 2
    from rich import box
    from rich.table import Table

    from simulator.spec.rules import rules_for_table

    rules = rules_for_table(args.table)
    if args.json:
        print(json.dumps([rule.to_dict() for rule in rules], indent=2))
        return 0
    if console.width < 160:  # a narrow terminal: one flow column, source and destination folded at words
        table = Table(title=f"{len(rules)} documented Edge rules", header_style="bold", box=box.SIMPLE_HEAD,
                      pad_edge=False, title_justify="left")
        for column in ("id", "table", "flow", "source", "destination"):
            table.add_column(column, overflow="fold", no_wrap=column == "id")
        for rule in rules:
            table.add_row(rule.id, str(rule.table), f"{rule.protocol}/{rule.transport} {rule.ports} {rule.direction}",
                          rule.source, rule.destination)
        console.print(table)
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
    from simulator.spec.loader import load_scenario

    scenario = load_scenario(args.file)
    console.print(f"{args.file}: ok — scenario '{scenario.name}', {len(scenario.edge_pool.nodes)} pool nodes, "
                  f"{len(scenario.clients)} client populations, {len(scenario.selected_rules)} rules selected")
    return 0


def _cmd_certs(args: argparse.Namespace, console: Console) -> int:
    from simulator.lab.pki import build_pki
    from simulator.spec.loader import load_scenario

    scenario = load_scenario(args.scenario or default_scenario())
    files = build_pki(scenario).write(args.out)
    console.print(f"lab PKI for '{scenario.name}' written to {files.folder}/ (ca.pem, crl.pem, "
                  f"{len(list(files.folder.glob('*.pem'))) - 3} certificates with keys)")
    return 0


def _cmd_run(args: argparse.Namespace, console: Console) -> int:
    from simulator.cli.run import run

    if args.loop == "uvloop":
        import uvloop

        return uvloop.run(run(args, console))
    import asyncio

    return asyncio.run(run(args, console))


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (exit 2) instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = _Parser(
        prog="edgesim", description="Lync Server 2013 / Skype for Business Edge pool lab: replay every documented "
        "Edge flow, one verdict per rule.", epilog=EXIT_CODES_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"edgesim {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="build the lab of a scenario, probe its rules, report verdicts",
                              epilog=EXIT_CODES_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(run)
    run.set_defaults(handler=_cmd_run)

    rules = commands.add_parser("rules", help="list the 38 documented rules")
    rules.add_argument("--table", choices=[str(t) for t in RuleTable], help="only one table")
    rules.add_argument("--json", action="store_true", help="JSON instead of a table")
    rules.add_argument("--firewall", choices=("nftables", "iptables"), help="write the rules as a firewall "
                       "ruleset (nft -f / iptables-restore input) for the deployment of --scenario")
    rules.add_argument("--scenario", metavar="FILE", help="with --firewall: a scenario with a deployment: section")
    rules.add_argument("--leave-out", nargs="+", metavar="ID", help="with --firewall: no accept rule for these ids")
    rules.add_argument("--drop-return", nargs="+", metavar="ID", help="with --firewall: these flows arrive but "
                       "their answers are dropped")
    rules.add_argument("--reject", action="store_true", help="with --firewall: end with tcp reset / icmp "
                       "port-unreachable instead of a silent drop")
    rules.add_argument("--snat-inbound", action="store_true", help="with --firewall: misconfigure the inbound "
                       "DNAT to also SNAT (default: the scenario's edge_pool.nat.snat_inbound)")
    rules.add_argument("--no-hairpin", action="store_true", help="with --firewall: do not translate a node's "
                       "traffic to the pool's public addresses (default: the scenario's edge_pool.nat.hairpin)")
    rules.add_argument("--external-interface", metavar="NAME", help="with --firewall: the firewall's external "
                       "leg; internal-interface rules refuse flows through it")
    rules.set_defaults(handler=_cmd_rules)

    validate = commands.add_parser("validate", help="check a scenario file")
    validate.add_argument("file")
    validate.set_defaults(handler=_cmd_validate)

    certs = commands.add_parser("certs", help="write the lab PKI of a scenario (CA, certificates, CRL)")
    certs.add_argument("--scenario", default=None, help="scenario file (default: the shipped one)")
    certs.add_argument("--out", default="certs")
    certs.set_defaults(handler=_cmd_certs)

    serve = commands.add_parser("serve", help="run one Edge role's listeners for lab use across real hosts")
    kinds = serve.add_subparsers(dest="kind", required=True)
    add_serve_parsers(kinds)
    add_lab_serve_parsers(kinds)
    add_probe_parser(commands)
    add_report_parser(commands)
    add_report_show_parser(parser)
    add_sweep_parser(commands)
    add_bench_parser(commands)
    return parser


def _console() -> Console:
    """A terminal's width when there is one, else $COLUMNS, else 120 (a pipe or a CI log)."""
    import os

    from rich.console import Console

    console = Console()
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console = Console(width=120)
    return console


def main(argv: Sequence[str] | None = None) -> int:
    from simulator.spec.loader import ScenarioError

    parser = build_parser()
    arguments = list(sys.argv[1:] if argv is None else argv)
    if len(arguments) >= 2 and arguments[0] == "report" and not arguments[1].startswith("-") \
            and arguments[1] not in report_actions(parser):
        arguments.insert(1, "show")  # `edgesim report FILE …` is `edgesim report show FILE …`
    args = parser.parse_args(arguments)
    console = _console()
    try:
        code: int = args.handler(args, console)
    except ScenarioError as error:
        for problem in error.problems:
            print(f"edgesim: {problem}", file=sys.stderr)
        return EXIT_USAGE
    except CliError as error:
        print(f"edgesim: {error.message}", file=sys.stderr)
        return error.code
    except OSError as error:  # a file or address problem no handler foresaw: still one line, exit 3
        where = f"{error.filename}: " if error.filename else ""
        print(f"edgesim: {where}{error.strerror or error}", file=sys.stderr)
        return EXIT_ENVIRONMENT
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return code
