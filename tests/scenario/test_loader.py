"""Scenario files: errors name file, line and field; the shipped scenario is the seed's topology."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulator.outcome import Verdict
from simulator.spec.loader import ScenarioError, load_scenario, load_scenario_text
from simulator.spec.schema import ClientRole, DnsPolicy

from ..conftest import SHIPPED

BASE = SHIPPED.read_text(encoding="utf-8")


def _line_of(text: str, needle: str) -> int:
    return next(number for number, line in enumerate(text.splitlines(), start=1) if needle in line)


def _problems(text: str) -> list[str]:
    with pytest.raises(ScenarioError) as caught:
        load_scenario_text(text, "lab.yaml")
    return [str(problem) for problem in caught.value.problems]


def test_shipped_scenario_is_the_seed_topology(shipped_scenario) -> None:  # type: ignore[no-untyped-def]
    pool = shipped_scenario.edge_pool
    assert [node.name for node in pool.nodes] == ["edge1", "edge2"]
    for node in pool.nodes:
        for service in (node.access, node.webconf, node.av):
            assert service.private is not None and service.public is not None
            assert service.private.is_private and not service.public.is_private
    roles = {client.role for client in shipped_scenario.clients}
    assert roles >= {ClientRole.REMOTE_USER, ClientRole.FEDERATED_PARTNER, ClientRole.PIC_PARTNER,
                     ClientRole.XMPP_PARTNER, ClientRole.FRONT_END, ClientRole.DIRECTOR}
    remote = shipped_scenario.clients_with_role(ClientRole.REMOTE_USER)[0]
    assert remote.nat is not None
    assert shipped_scenario.clients_with_role(ClientRole.PIC_PARTNER)[0].effective_dns_policy is DnsPolicy.LEGACY
    assert len(shipped_scenario.selected_rules) == 38
    assert shipped_scenario.expected("I8") == (Verdict.PASS, None)
    assert shipped_scenario.expected("E15") == (Verdict.PASS, None)  # every rule has a probe now


def test_typo_in_a_key_names_line_and_field() -> None:
    text = BASE.replace("      webconf: {private: 172.25.33.21", "      webconfx: {private: 172.25.33.21")
    problems = _problems(text)
    line = _line_of(text, "webconfx:")
    assert f"lab.yaml:{line}:7: edge_pool.nodes[1].webconfx: unknown field (a typo?)" in problems


def test_bad_value_names_line_and_field() -> None:
    text = BASE.replace("count: 4", "count: -3")
    problems = _problems(text)
    line = _line_of(text, "count: -3")
    assert any(p.startswith(f"lab.yaml:{line}:") and "clients[2].count" in p and "greater than" in p
               for p in problems), problems


def test_bad_nat_behaviour_and_bad_address() -> None:
    text = BASE.replace("mapping: endpoint-independent", "mapping: full-cone").replace(
        "public: 63.123.155.22", "public: 63.123.155.300")
    problems = _problems(text)
    nat_line, address_line = _line_of(text, "full-cone"), _line_of(text, "63.123.155.300")
    assert any(p.startswith(f"lab.yaml:{nat_line}:") and "clients[2].nat.mapping" in p for p in problems)
    assert any(p.startswith(f"lab.yaml:{address_line}:") and "edge_pool.nodes[1].av.public" in p
               for p in problems)


def test_missing_field_points_at_its_mapping() -> None:
    text = BASE.replace("  av_fqdn: av.contoso.com\n", "")
    problems = _problems(text)
    assert any("edge_pool.av_fqdn: required field is missing" in p and p.startswith(
        f"lab.yaml:{_line_of(text, 'edge_pool:')}:") for p in problems), problems


def test_unknown_rule_and_bad_expectation() -> None:
    problems = _problems(BASE.replace("rules: all", "rules: [E6, E99]"))
    assert any("rules" in p and "E99" in p for p in problems)
    problems = _problems(BASE.replace("  default: pass", "  default: pass\n  I9: maybe"))
    assert any("expect" in p and "maybe" in p for p in problems)


def test_duplicate_key_and_yaml_syntax() -> None:
    text = BASE.replace("seed: 2013", "seed: 2013\nseed: 7")
    assert any(p.startswith(f"lab.yaml:{_line_of(text, 'seed: 7')}:") and "given twice" in p for p in _problems(text))
    text = BASE.replace("rules: all", "rules: [E6")
    assert any("YAML syntax" in p for p in _problems(text))


def test_duplicate_names_and_dangling_references() -> None:
    problems = _problems(BASE.replace("name: director", "name: frontend"))
    assert any("duplicate client names: frontend" in p for p in problems)
    problems = _problems(BASE.replace("{name: sign-in, clients: remote-users", "{name: sign-in, clients: nobody"))
    assert any("no client named 'nobody'" in p for p in problems)
    problems = _problems(BASE + "events:\n  - {at: 3, stop_node: edge9}\n")
    assert any("no pool node named 'edge9'" in p for p in problems)


def test_loopback_prefix_may_not_be_127_0() -> None:
    problems = _problems(BASE.replace("seed: 2013", "seed: 2013\nlab: {loopback_prefix: '127.0'}"))
    assert any("lab.loopback_prefix" in p for p in problems)


def test_missing_file_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "nope.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(ScenarioError, match="empty"):
        load_scenario(empty)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(ScenarioError, match="mapping at the top level"):
        load_scenario(listing)
