"""k6-like thresholds (``METRIC[:AGG] OP NUMBER``) and the once-a-second live line, shared by ``edgesim bench
relay`` and ``edgesim run``'s load phases.

A threshold names a metric of the run's report: a histogram (``sign_in_ms``, ``alloc_ms`` …) takes an aggregate
(``:p50``, ``:p99``, ``:max``, ``:mean``, ``:count``); a number (``sign_in_ok_ratio``) takes none. A metric with
no value (an empty histogram) fails its threshold, as in k6.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

THRESHOLD = re.compile(r"^\s*([a-z][a-z0-9_-]*)(?::(p\d+(?:\.\d+)?|min|max|mean|avg|count))?\s*"
                       r"(<=|>=|==|!=|<|>)\s*([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*$")
OPS: dict[str, Callable[[float, float], bool]] = {
    "<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
    "==": lambda a, b: a == b, "!=": lambda a, b: a != b}


class ThresholdError(ValueError):
    """A threshold expression that cannot be used (a usage error: exit 2)."""


@dataclass(frozen=True)
class LoadThreshold:
    """One ``METRIC[:AGG] OP NUMBER`` check over the load report of ``edgesim run``."""

    text: str
    metric: str
    aggregate: str | None
    op: str
    value: float

    @classmethod
    def parse(cls, text: str, histograms: Sequence[str], scalars: Sequence[str],
              prefixes: Sequence[str] = ()) -> LoadThreshold:
        match = THRESHOLD.match(text)
        if match is None:
            raise ThresholdError(f"--threshold {text!r}: expected METRIC[:AGG] OP NUMBER, e.g. 'sign_in_ms:p99<500'")
        metric, aggregate, op, value = match.groups()
        if metric in histograms:
            if aggregate is None:
                raise ThresholdError(f"--threshold {text!r}: {metric} needs an aggregate (:p99, :max, :mean …)")
        elif metric in scalars or metric.startswith(tuple(prefixes)):
            if aggregate is not None:
                raise ThresholdError(f"--threshold {text!r}: {metric} is a number, it takes no :{aggregate}")
        else:
            names = ", ".join([*scalars, *histograms, *(f"{p}<reason>" for p in prefixes)])
            raise ThresholdError(f"--threshold {text!r}: unknown metric {metric!r} (known: {names})")
        return cls(text.strip(), metric, aggregate, op, float(value))


def histogram_value(histogram: Any, aggregate: str | None) -> float | None:
    """An HDR histogram of µs read in ms: ``pNN``, ``min``, ``max``, ``mean``/``avg``, or the ``count``; None when
    it holds no value (a threshold on it then fails, as k6's does)."""
    if not histogram.get_total_count():
        return None
    chosen = aggregate or "p50"
    if chosen.startswith("p"):
        return float(histogram.get_value_at_percentile(float(chosen[1:]))) / 1000
    return float({"min": histogram.get_min_value() / 1000, "max": histogram.get_max_value() / 1000,
                  "mean": histogram.get_mean_value() / 1000, "avg": histogram.get_mean_value() / 1000,
                  "count": float(histogram.get_total_count())}[chosen])


def evaluate(thresholds: Sequence[LoadThreshold],
             actual: Callable[[LoadThreshold], float | None]) -> list[dict[str, Any]]:
    """Each threshold with its actual value and whether it held (no value: failed)."""
    out = []
    for threshold in thresholds:
        value = actual(threshold)
        ok = value is not None and OPS[threshold.op](value, threshold.value)
        out.append({"threshold": threshold.text, "actual": value, "ok": ok})
    return out


def live_line(live: dict[str, Any], terminal: bool) -> str:
    """One line of live figures: ``t``, ``rate`` (reached), optional ``target``, ``in_flight``, ``ok``, ``failed``,
    ``failures`` (reason → count), ``p50_ms``/``p99_ms`` (None: no sample yet); rich markup on a terminal,
    ``key=value`` plain text otherwise."""
    fails = " ".join(f"{k}={v}" for k, v in sorted(live["failures"].items())) or "-"
    p50 = f"{live['p50_ms']:.2f}" if live.get("p50_ms") is not None else "-"
    p99 = f"{live['p99_ms']:.2f}" if live.get("p99_ms") is not None else "-"
    target = live.get("target")
    if terminal:
        aim = f" / {target:.1f}" if target is not None else ""
        return (f"[bold]{live['t']:6.1f}s[/] rate [cyan]{live['rate']:8.1f}{aim}/s[/] "
                f"in-flight {live['in_flight']:5d} ok [green]{live['ok']}[/] failed [red]{live['failed']}[/] "
                f"({fails}) p50 {p50} ms p99 {p99} ms")
    aim = f" target={target:.1f}/s" if target is not None else ""
    return (f"t={live['t']:.1f}s rate={live['rate']:.1f}/s{aim} in_flight={live['in_flight']} ok={live['ok']} "
            f"failed={live['failed']} failures={fails} p50_ms={p50} p99_ms={p99}")


def print_live(live: dict[str, Any], console: Any, stream: TextIO | None = None) -> None:
    """Print :func:`live_line` on ``console`` (rich) when it is a terminal, else plain on ``stream`` (stderr)."""
    if console is not None and console.is_terminal:
        console.print(live_line(live, terminal=True), highlight=False)
    else:
        print(live_line(live, terminal=False), file=stream or sys.stderr, flush=True)
