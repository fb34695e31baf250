"""SIPp-style CSV files of a load run: ``intervals.csv`` (one row per interval) and ``sessions.csv`` (one per user).

``intervals.csv`` has, for each counter, a per-period column (``…_period``: what happened in that interval) and
a cumulative one (``…_cumulative``: since the load started), as SIPp's ``-trace_stat`` file has its ``(P)`` and
``(C)`` columns; then the gauges at the interval's end (``connections_<node>``: users connected to that node's
Access Edge). ``sessions.csv`` has one row per simulated user: where it signed in, whether it re-homed and how
long that took, or why it failed.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from simulator.report.text import plain

SESSION_COLUMNS = ("user", "population", "policy", "home", "rehomed_to", "failover_ms", "lost", "error")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return plain(str(value))


def interval_columns(rows: list[dict[str, Any]]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    return columns


def write_intervals_csv(doc: dict[str, Any], path: Path) -> Path:
    rows: list[dict[str, Any]] = doc.get("intervals") or []
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        columns = interval_columns(rows) or ["interval", "start_s", "end_s"]
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(column)) for column in columns])
    return path


def write_sessions_csv(doc: dict[str, Any], path: Path) -> Path:
    sessions: list[dict[str, Any]] = (doc.get("load") or {}).get("sessions", [])
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(SESSION_COLUMNS)
        for session in sessions:
            writer.writerow([_cell(session.get(column)) for column in SESSION_COLUMNS])
    return path
