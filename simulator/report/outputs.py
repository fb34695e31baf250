"""The per-run output folder: where a run's files go, and the rule that one run never overwrites another.

Default: ``reports/<UTC start time>-<scenario>/`` (a new folder per run) and ``reports/latest`` a symlink to the
newest. ``--out DIR``: that folder; when it already holds a run (a ``report.json``) it is refused unless
``force`` — then only the files a run writes are replaced. A folder with other files is fine.

Files: ``report.json`` (always), ``report.html`` (always), ``intervals.csv`` and ``sessions.csv`` (runs with
load phases).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from pathlib import Path
from typing import Any

from simulator.report.csvout import write_intervals_csv, write_sessions_csv
from simulator.report.html import write_html
from simulator.report.render import write_json

RUN_FILES = ("report.json", "report.html", "intervals.csv", "sessions.csv")
LATEST = "latest"


class FolderTaken(ValueError):
    """The output folder holds another run's report."""


def run_folder_name(scenario: str, started: dt.datetime) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", scenario).strip("-") or "run"
    return f"{started.astimezone(dt.UTC):%Y%m%dT%H%M%SZ}-{safe}"


def _started_of(folder: Path) -> str:
    try:
        return str(json.loads((folder / "report.json").read_text(encoding="utf-8")).get("started", "an earlier run"))
    except (OSError, ValueError, AttributeError):
        return "an earlier run"


def choose_folder(out: str | None, scenario: str, started: dt.datetime, force: bool,
                  root: Path = Path("reports")) -> Path:
    """The folder this run writes to (the default one is created here, so no two runs share it). Raises
    FolderTaken when ``out`` holds another run and not ``force``; OSError when the default one cannot be made."""
    if out is None:
        base = root / run_folder_name(scenario, started)
        folder, number = base, 1
        while True:  # two runs in one second (even at once): mkdir decides who gets which folder
            try:
                folder.mkdir(parents=True)
                return folder
            except FileExistsError:
                number += 1
                folder = base.with_name(f"{base.name}-{number}")
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise FolderTaken(f"--out {out} is a file, not a folder")
    if (folder / "report.json").exists() and not force:
        raise FolderTaken(f"--out {out} already holds a run (started {_started_of(folder)}); choose another "
                          "folder or add --force to replace its files")
    return folder


def write_run(doc: dict[str, Any], folder: Path) -> list[Path]:
    """Write every file of a run into ``folder`` (created); returns them."""
    folder.mkdir(parents=True, exist_ok=True)
    written = [write_json(doc, folder)]
    if doc.get("load") is not None:
        written.append(write_intervals_csv(doc, folder / "intervals.csv"))
        written.append(write_sessions_csv(doc, folder / "sessions.csv"))
    else:
        for stale in ("intervals.csv", "sessions.csv"):  # --force over a run that had load: no stale files
            (folder / stale).unlink(missing_ok=True)
    written.append(write_html(doc, folder / "report.html"))
    return written


def point_latest(folder: Path, root: Path = Path("reports")) -> Path | None:
    """Make ``root/latest`` a symlink to ``folder`` (atomically). A real ``latest`` folder (edgesim before run
    folders) is first renamed to a run folder of its own, never deleted. Returns the link, or None when the
    folder is not under ``root``."""
    try:
        target = folder.resolve().relative_to(root.resolve())
    except ValueError:
        return None
    link = root / LATEST
    if link.is_dir() and not link.is_symlink():
        started = _started_of(link)
        try:
            name = run_folder_name("earlier", dt.datetime.fromisoformat(started))
        except ValueError:
            name = f"earlier-{int(link.stat().st_mtime)}"
        destination = root / name
        if not destination.exists():
            link.rename(destination)
        else:
            return None
    temporary = root / f".{LATEST}.{os.getpid()}"
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(target)
    os.replace(temporary, link)
    return link
