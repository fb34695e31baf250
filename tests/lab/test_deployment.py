"""The deployment section: what validate refuses (with file:line), and the address plan it gives."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulator.cli.scenarios import shipped_scenario
from simulator.lab.addressing import AddressPlan, HostKind
from simulator.spec.loader import ScenarioError, load_scenario

FIREWALL_LAB = shipped_scenario("firewall-lab.yaml")


def _variant(tmp_path: Path, old: str, new: str) -> Path:
    text = FIREWALL_LAB.read_text(encoding="utf-8")
    assert old in text, old
    path = tmp_path / "variant.yaml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


def _problems(path: Path) -> str:
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    return "\n".join(str(problem) for problem in caught.value.problems)


def test_the_shipped_firewall_lab_places_every_part_on_its_deployment_address() -> None:
    scenario = load_scenario(FIREWALL_LAB)
    plan = AddressPlan.for_deployment(scenario)
    # values as written in the scenario file, not derived
    assert plan.one("edge1", HostKind.EDGE_INTERNAL).address == "10.200.5.10"
    assert plan.one("edge2", HostKind.EDGE_ACCESS_PRIVATE).address == "10.200.2.20"
    assert plan.one("edge2", HostKind.EDGE_AV_PUBLIC).address == "10.200.3.22"
    assert plan.host("dns").address == "10.200.1.53"
    assert plan.host("crl").address == "10.200.1.80"
    assert plan.one("remote-users", HostKind.CLIENT_NAT).address == "10.200.1.20"
    users = [host.address for host in plan.of("remote-users", HostKind.CLIENT)]
    # instances share the population's two addresses round-robin
    assert users[:4] == ["10.200.1.21", "10.200.1.22", "10.200.1.21", "10.200.1.22"]
    assert not any(host.address.startswith("127.") for host in plan.hosts)


def test_a_scenario_without_deployment_has_no_deployment_plan(shipped_scenario: object) -> None:
    with pytest.raises(ValueError, match="no deployment section"):
        AddressPlan.for_deployment(shipped_scenario)  # type: ignore[arg-type]


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("internal: 10.200.5.10", "internal: 10.200.2.11", "one address serves two parts: 10.200.2.11"),
    ("internal: 10.200.5.20", "internal: 10.200.5.300", "deployment.nodes.edge2.internal"),
    ("    director: {addresses: [10.200.4.20]}\n", "", "no addresses for client populations director"),
    ("    edge2:\n      internal", "    edge3:\n      internal", "the scenario has no node named edge3"),
    ("dns: {server: 10.200.1.53}", "dns: {server: 10.200.1.53, resolver: 10.200.4.53}", "exactly one of"),
    ("crl: 10.200.1.80", "crl: 0.0.0.0", "is not a host address"),
])
def test_validate_names_the_bad_deployment_field(tmp_path: Path, old: str, new: str, expected: str) -> None:
    problems = _problems(_variant(tmp_path, old, new))
    assert expected in problems, problems
    assert "variant.yaml:" in problems  # file and line
