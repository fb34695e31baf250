"""``edgesim report FILE`` (``report show FILE``): show a saved report.json again, and render it to other files.

The terminal table always; ``--html FILE`` the one-file HTML report, ``--junit FILE`` JUnit XML, ``--csv DIR``
intervals.csv and sessions.csv. The exit code is the saved run's: 0 when every verdict matched, 1 when not.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simulator.cli.errors import EXIT_CODES_EPILOG, EXIT_MISMATCH, EXIT_OK, UsageError, environment_fault

if TYPE_CHECKING:
    from rich.console import Console

SHOW = "show"


def _report_subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    report = commands.choices["report"]
    return next(a for a in report._actions if isinstance(a, argparse._SubParsersAction))


def report_actions(parser: argparse.ArgumentParser) -> set[str]:
    """The actions of ``edgesim report`` (merge, show …): anything else after ``report`` is a FILE."""
    return set(_report_subparsers(parser).choices)


def add_report_show_parser(parser: argparse.ArgumentParser) -> None:
    """Add ``show`` to the ``report`` command (which :mod:`simulator.cli.lab_mode` creates with ``merge``)."""
    show = _report_subparsers(parser).add_parser(
        SHOW, help="show a saved report.json (also: edgesim report FILE) and render it as HTML, JUnit or CSV",
        epilog=EXIT_CODES_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    show.add_argument("file", metavar="FILE", help="a report.json written by edgesim run or report merge")
    show.add_argument("--html", metavar="OUT", help="write the one-file HTML report here")
    show.add_argument("--junit", metavar="OUT", help="write JUnit XML here")
    show.add_argument("--csv", metavar="DIR", help="write intervals.csv and sessions.csv into this folder")
    show.add_argument("--details", action="store_true", help="print every rule's probe detail")
    show.set_defaults(handler=_cmd_show)


def read_report(name: str) -> dict[str, Any]:
    try:
        document = json.loads(Path(name).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{name} is a folder; give its report.json") from None
    except OSError as error:
        raise environment_fault(error, f"cannot read {name}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{name}: not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise UsageError(f"{name}: not JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(document, dict) or not isinstance(document.get("rules"), list) or "scenario" not in document:
        raise UsageError(f"{name}: not an edgesim report (no 'scenario' and 'rules')")
    if document.get("edgesim_side_report") == 1:
        raise UsageError(f"{name}: a side report; merge it first (edgesim report merge)")
    return document


def _cmd_show(args: argparse.Namespace, console: Console) -> int:
    from simulator.report.csvout import write_intervals_csv, write_sessions_csv
    from simulator.report.html import write_html
    from simulator.report.junit import write_junit
    from simulator.report.render import all_match, render_table

    doc = read_report(args.file)
    written: list[Path] = []
    try:
        render_table(doc, console, details=args.details)
        if args.html:
            written.append(write_html(doc, Path(args.html)))
        if args.junit:
            written.append(write_junit(doc, Path(args.junit)))
        if args.csv:
            folder = Path(args.csv)
            folder.mkdir(parents=True, exist_ok=True)
            written += [write_intervals_csv(doc, folder / "intervals.csv"),
                        write_sessions_csv(doc, folder / "sessions.csv")]
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise UsageError(f"{args.file}: not an edgesim report of a known schema ({type(error).__name__}: "
                         f"{error})") from None
    except OSError as error:
        raise environment_fault(error, f"cannot write {error.filename or 'the output'}") from None
    for path in written:
        console.print(f"wrote {path}", overflow="fold")
    return EXIT_OK if all_match(doc) else EXIT_MISMATCH
