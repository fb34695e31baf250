"""report.html: one self-contained page (jinja2 template, inline SVG plots from matplotlib's Agg backend).

Nothing on the page is fetched at view time: the styles are inline, the plots are inline ``<svg>`` elements
with their glyphs drawn as paths, and a Content-Security-Policy of ``default-src 'none'`` makes the browser
refuse any request the page might still try. The page shows the summary, the verdict table (differences
first), load over time (``intervals``), probe and failover latency percentiles, the relay ports the probes
saw, and the spread of users (or rule passes) over the pool's nodes.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

from simulator.report.render import all_match, counts, ordered_rules, summary_line, why
from simulator.report.text import plain

_RELAY = re.compile(r"relay (?:\d{1,3}\.){3}\d{1,3}:(\d{1,5})")
_PERCENTILES = (50, 90, 99, 100)


def _svg(figure: Any) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # drop the XML declaration and DOCTYPE: inline SVG in HTML needs neither


def _figure(width: float = 7.0, height: float = 3.0) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=96)
    return figure, figure.add_subplot()


def _percentile(values: list[float], percentile: float) -> float:
    """Nearest-rank percentile (the definition HdrHistogram and the report's failover figures use)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * percentile // 100))
    return ordered[int(rank) - 1]


def load_plot(doc: dict[str, Any]) -> str | None:
    rows = doc.get("intervals") or []
    if not rows:
        return None
    figure, axes = _figure()
    ends = [float(row["end_s"]) for row in rows]
    widths = [max(0.05, float(row["end_s"]) - float(row["start_s"])) for row in rows]
    starts = [float(row["start_s"]) for row in rows]
    axes.bar(starts, [row["sign_in_attempts_period"] for row in rows], width=widths, align="edge",
             color="#9ecae1", label="sign-in attempts per interval")
    axes.bar(starts, [row["signed_in_period"] for row in rows], width=[w * 0.6 for w in widths], align="edge",
             color="#3182bd", label="signed in per interval")
    for key in [k for k in rows[0] if k.startswith("connections_")]:
        axes.plot(ends, [row.get(key, 0) for row in rows], marker="o", linewidth=2,
                  label=f"connected to {key.removeprefix('connections_')} (at the interval's end)")
    for event in (doc.get("load") or {}).get("events", []):
        axes.axvline(float(event["applied_at"]), color="#d62728", linestyle="--", linewidth=1.5,
                     label=f"stopped {event['service']} on {event['stop_node']}")
    axes.set_xlabel("seconds since the load started")
    axes.set_ylabel("users")
    axes.yaxis.get_major_locator().set_params(integer=True)
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=8, frameon=False)
    axes.grid(alpha=0.3)
    return _svg(figure)


def latency_plot(doc: dict[str, Any]) -> str | None:
    elapsed = [float(rule["elapsed_ms"]) for rule in doc["rules"] if rule["verdict"] in ("pass", "fail")]
    failover = ((doc.get("load") or {}).get("failover") or {})
    if not elapsed and not failover.get("count"):
        return None
    figure, axes = _figure()
    labels = ["p50", "p90", "p99", "max"]
    positions = list(range(len(labels)))
    if elapsed:
        values = [_percentile(elapsed, p) for p in _PERCENTILES]
        axes.bar([p - 0.2 for p in positions], values, width=0.4, color="#31a354",
                 label=f"rule probe time ({len(elapsed)} rules)")
    if failover.get("count"):
        values = [float(failover[key]) for key in ("p50_ms", "p90_ms", "p99_ms", "max_ms")]
        axes.bar([p + 0.2 for p in positions], values, width=0.4, color="#e6550d",
                 label=f"failover time ({failover['count']} users)")
    axes.set_xticks(positions, labels)
    axes.set_ylabel("milliseconds")
    if elapsed and max(elapsed) > 50 * max(_percentile(elapsed, 50), 0.1):
        axes.set_yscale("log")  # one slow probe would flatten every other bar
    axes.legend(loc="upper left", fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    return _svg(figure)


def relay_ports(doc: dict[str, Any]) -> list[int]:
    """The relay ports the A/V probes reported (``relay host:port`` in their details), inside the relay range."""
    span = doc.get("relay_ports") or {"first": 1, "last": 65535}
    ports = []
    for rule in doc["rules"]:
        if rule.get("service") != "av":
            continue
        for node in rule.get("nodes") or [{"detail": rule.get("detail", "")}]:
            ports += [int(p) for p in _RELAY.findall(str(node.get("detail", "")))
                      if span["first"] <= int(p) <= span["last"]]
    return ports


def relay_plot(doc: dict[str, Any]) -> str | None:
    ports = relay_ports(doc)
    if not ports:
        return None
    span = doc.get("relay_ports") or {"first": min(ports), "last": max(ports)}  # reports before schema 1
    figure, axes = _figure(7.0, 2.6)
    axes.hist(ports, bins=20, range=(span["first"], span["last"] + 1), color="#756bb1", edgecolor="white")
    axes.set_xlim(span["first"], span["last"] + 1)
    axes.set_xlabel(f"relay port (range {span['first']}-{span['last']})")
    axes.set_ylabel("allocations seen")
    axes.yaxis.get_major_locator().set_params(integer=True)
    axes.grid(axis="y", alpha=0.3)
    return _svg(figure)


def spread(doc: dict[str, Any]) -> tuple[str, dict[str, int]]:
    """Users signed in per node when the run had load; otherwise rules passed per node."""
    nodes = doc.get("nodes") or sorted({n["node"] for rule in doc["rules"] for n in rule.get("nodes", [])})
    load = doc.get("load")
    if load is not None and load.get("spread"):
        return "users signed in per node", {node: int(load["spread"].get(node, 0)) for node in nodes}
    passed = dict.fromkeys(nodes, 0)
    for rule in doc["rules"]:
        for outcome in rule.get("nodes", []):
            if outcome["verdict"] == "pass" and outcome["node"] in passed:
                passed[outcome["node"]] += 1
    return "rule probes passed per node", passed


def spread_plot(doc: dict[str, Any]) -> str | None:
    title, values = spread(doc)
    if not values:
        return None
    figure, axes = _figure(5.0, 2.6)
    axes.bar(list(values), list(values.values()), color="#dd8452")
    axes.set_ylabel(title.removesuffix(" per node"))
    axes.yaxis.get_major_locator().set_params(integer=True)
    axes.grid(axis="y", alpha=0.3)
    return _svg(figure)


def render_html(doc: dict[str, Any]) -> str:
    from jinja2 import Environment, PackageLoader, select_autoescape

    environment = Environment(loader=PackageLoader("simulator.report", "templates"),
                              autoescape=select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)
    template = environment.get_template("report.html.j2")
    rules = [{**rule, "why": why(rule), "detail": plain(rule.get("detail") or "")} for rule in ordered_rules(doc)]
    spread_title, _ = spread(doc)
    plots = [
        ("load", "Load over time", load_plot(doc), "no load phases in this run"),
        ("latency", "Latency percentiles", latency_plot(doc), "no timed probes"),
        ("relay", "Relay ports seen", relay_plot(doc), "no A/V relay allocations reported"),
        ("spread", f"Node spread: {spread_title}", spread_plot(doc), "no per-node results"),
    ]
    return template.render(doc=doc, rules=rules, counts=counts(doc), summary=summary_line(doc),
                           all_match=all_match(doc), plots=plots,
                           load_problems=[plain(p) for p in doc.get("load_problems", [])])


def write_html(doc: dict[str, Any], path: Path) -> Path:
    path.write_text(render_html(doc), encoding="utf-8")
    return path
