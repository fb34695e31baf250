"""JUnit XML of a report: one ``<testcase>`` per rule, for CI systems that read test results.

The shape is the one CI tools read: Jenkins' ``junit-10.xsd`` (which pytest checks its own JUnit XML against):
``testsuites > testsuite > testcase`` with ``failure``/``skipped``, ``system-out``; testsuite attributes
``name tests failures errors skipped time timestamp``.
A rule whose verdict differs from the scenario's expectation is a ``<failure>`` whose ``message``
says what was expected and what came (with the reason) and whose text is the probe's detail; a rule expected and
found ``unimplemented`` is ``<skipped>``; the load expectations are one more testcase.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from simulator.report.render import why
from simulator.report.text import plain


def _seconds(milliseconds: float) -> str:
    return f"{milliseconds / 1000:.3f}"


def junit_tree(doc: dict[str, Any]) -> ET.ElementTree[ET.Element]:
    rules = doc["rules"]
    failures = sum(not rule["matches_expectation"] for rule in rules) + bool(doc.get("load_problems"))
    skipped = sum(rule["matches_expectation"] and rule["verdict"] == "unimplemented" for rule in rules)
    total_ms = sum(float(rule["elapsed_ms"]) for rule in rules)
    has_load = doc.get("load") is not None or bool(doc.get("load_problems"))
    root = ET.Element("testsuites", name="edgesim", tests=str(len(rules) + has_load), failures=str(failures),
                      errors="0", time=_seconds(total_ms))  # junit-10.xsd: testsuites has no 'skipped'
    suite = ET.SubElement(root, "testsuite", name=f"edgesim.{doc['scenario']}", tests=str(len(rules) + has_load),
                          failures=str(failures), errors="0", skipped=str(skipped), time=_seconds(total_ms),
                          timestamp=str(doc["started"]))
    properties = ET.SubElement(suite, "properties")
    for name in ("scenario", "seed", "edgesim", "schema_version"):
        ET.SubElement(properties, "property", name=name, value=str(doc.get(name, "")))
    for rule in rules:
        case = ET.SubElement(suite, "testcase", classname=f"edgesim.{doc['scenario']}.{rule['table']}",
                             name=f"{rule['id']} {rule['protocol']}/{rule['transport']} {rule['ports']} "
                                  f"{rule['direction']}", time=_seconds(float(rule["elapsed_ms"])))
        detail = plain(rule.get("detail") or "")
        got = rule["verdict"] + (f":{why(rule).removeprefix('by ')}" if why(rule) else "")
        if not rule["matches_expectation"]:
            failure = ET.SubElement(case, "failure", message=f"expected {rule['expected']}, got {got}", type=got)
            failure.text = detail
        elif rule["verdict"] == "unimplemented":
            ET.SubElement(case, "skipped", message=detail or "no probe yet")
        elif detail:
            ET.SubElement(case, "system-out").text = detail
    if has_load:
        case = ET.SubElement(suite, "testcase", classname=f"edgesim.{doc['scenario']}.load",
                             name="load expectations",
                             time=f"{float((doc.get('load') or {}).get('duration_s', 0)):.3f}")
        problems = [plain(problem) for problem in doc.get("load_problems", [])]
        if problems:
            failure = ET.SubElement(case, "failure", message=problems[0], type="load")
            failure.text = "\n".join(problems)
    ET.indent(root)
    return ET.ElementTree(root)


def write_junit(doc: dict[str, Any], path: Path) -> Path:
    junit_tree(doc).write(path, encoding="utf-8", xml_declaration=True)
    return path
