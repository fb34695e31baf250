"""The catalog holds exactly the 38 rules of port-tables.md, field for field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from simulator.spec.rules import RULES, RULES_BY_ID, Direction, Table, Transport, topological_order

TABLES = Path(__file__).resolve().parent.parent / "data" / "port-tables.md"
_TABLE_HEADINGS = {"Table 1": Table.EXTERNAL, "Table 2": Table.INTERNAL, "Table 3": Table.FEDERATION,
                   "Table 4": Table.PIC, "Table 5": Table.XMPP}


def _documented_rows() -> dict[str, tuple[Table, list[str]]]:
    rows: dict[str, tuple[Table, list[str]]] = {}
    table: Table | None = None
    for line in TABLES.read_text(encoding="utf-8").splitlines():
        heading = re.match(r"## (Table \d)", line)
        if heading:
            table = _TABLE_HEADINGS[heading.group(1)]
        match = re.match(r"\| ([EIFPX]\d+) \|(.*)\|$", line)
        if match and table is not None:
            rows[match.group(1)] = (table, [cell.strip() for cell in match.group(2).split("|")])
    return rows


DOCUMENTED = _documented_rows()


def test_exactly_the_38_documented_ids() -> None:
    expected = ([f"E{i}" for i in range(1, 18)] + [f"I{i}" for i in range(1, 12)] + ["F1"]
                + [f"P{i}" for i in range(1, 7)] + ["X1", "X2", "X3"])
    assert len(RULES) == 38
    assert sorted(RULES_BY_ID) == sorted(expected)
    assert sorted(DOCUMENTED) == sorted(expected)


@pytest.mark.parametrize("rule_id", sorted(DOCUMENTED))
def test_rule_fields_match_the_document(rule_id: str) -> None:
    table, (spec, source, destination, note) = DOCUMENTED[rule_id]
    rule = RULES_BY_ID[rule_id]
    assert rule.table is table
    assert (rule.source, rule.destination, rule.note) == (source, destination, note)
    parts = spec.split("/")
    port, transport = parts[-1], parts[-2]
    assert str(rule.ports) == port
    assert rule.transport is Transport(transport.lower())
    protocol = "/".join(parts[:-2])
    # Table 1/3/4 specs start with the role ("Access/SIP(TLS)", "A/V/RTP"); the catalog keeps the protocol part.
    role = next((r for r in ("Access/", "WebConf/", "A/V/") if protocol.startswith(r)), "")
    assert rule.protocol and protocol.removeprefix(role) == rule.protocol
    def is_edge(text: str) -> bool:
        return "Edge" in text or "XMPP proxy" in text

    opened_by_edge = is_edge(source) and not is_edge(destination)
    assert rule.direction is (Direction.OUT if opened_by_edge else Direction.IN)


def test_dependencies_exist_and_form_a_dag() -> None:
    for rule in RULES:
        assert all(dep in RULES_BY_ID for dep in rule.depends_on), rule.id
    order = topological_order([rule.id for rule in RULES])
    assert sorted(order) == sorted(RULES_BY_ID)
    position = {rule_id: index for index, rule_id in enumerate(order)}
    for rule in RULES:
        for dep in rule.depends_on:
            assert position[dep] < position[rule.id], (dep, rule.id)


def test_av_rules_wait_for_mras_credentials() -> None:
    # research-lync-edge §1.3: A/V needs the MRAS credentials issued on 5062 (I5).
    for rule in RULES:
        if rule.service == "av" and rule.id != "I5":
            assert "I5" in rule.depends_on, rule.id


def test_port_range_membership() -> None:
    relay = RULES_BY_ID["E11"].ports
    assert 50000 in relay and 59999 in relay and 49999 not in relay and 60000 not in relay
