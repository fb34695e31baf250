"""`edgesim rules --firewall`: the documented rules as an nftables / iptables-restore ruleset.

The expected matches are written here from port-tables.md (who opens the flow, which port) and the addresses
of scenarios/firewall-lab.yaml, not read from the code under test. The real parsers check the syntax: `nft -c`
and `iptables-restore --test`, each run inside a network namespace this module creates and deletes, so the
host's own ruleset is never touched (both only check, and the namespace is empty and private).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from simulator.cli import main
from simulator.lab.firewall import (
    Dialect,
    NoDeploymentError,
    firewall_ruleset,
    plan_firewall,
    same_packet_groups,
    without_rules,
)
from simulator.spec.loader import load_scenario
from simulator.spec.rules import RULES_BY_ID
from simulator.spec.schema import Scenario
from tests.peers import in_ci, require_tool

ROOT = Path(__file__).resolve().parents[2]
FIREWALL_LAB = ROOT / "scenarios" / "firewall-lab.yaml"
SHIPPED = ROOT / "scenarios" / "lync2013-scaled-edge-dns-nat.yaml"

# scenarios/firewall-lab.yaml, by hand.
ADDRESSES = {
    "ACC": ("10.200.2.10", "10.200.2.20"),
    "WC": ("10.200.2.11", "10.200.2.21"),
    "AV": ("10.200.2.12", "10.200.2.22"),
    "INT": ("10.200.5.10", "10.200.5.20"),
}
NAT_PAIRS = [("10.200.2.10", "10.200.3.10"), ("10.200.2.11", "10.200.3.11"), ("10.200.2.12", "10.200.3.12"),
             ("10.200.2.20", "10.200.3.20"), ("10.200.2.21", "10.200.3.21"), ("10.200.2.22", "10.200.3.22")]
RELAY = "50000-59999"

# port-tables.md: (rule, the Edge is the packet's source (s) or destination (d), which Edge addresses,
# transport, the port named is the source (s) or destination (d) port, port). Inbound flows name the Edge's
# port; outbound ones the remote service's, except the relay rules, whose range is the Edge's own port.
EXPECTED: list[tuple[str, str, str, str, str, str]] = [
    ("E1", "d", "ACC", "tcp", "d", "5269"), ("E2", "s", "ACC", "tcp", "d", "5269"),
    ("E3", "s", "ACC", "tcp", "d", "80"), ("E4", "s", "ACC", "tcp", "d", "53"),
    ("E5", "s", "ACC", "udp", "d", "53"), ("E6", "d", "ACC", "tcp", "d", "443"),
    ("E7", "d", "ACC", "tcp", "d", "5061"), ("E8", "s", "ACC", "tcp", "d", "5061"),
    ("E9", "d", "WC", "tcp", "d", "443"), ("E10", "s", "AV", "tcp", "s", RELAY),
    ("E11", "s", "AV", "udp", "s", RELAY), ("E12", "d", "AV", "tcp", "d", RELAY),
    ("E13", "d", "AV", "udp", "d", RELAY), ("E14", "s", "AV", "udp", "d", "3478"),
    ("E15", "d", "AV", "udp", "d", "3478"), ("E16", "d", "AV", "tcp", "d", "443"),
    ("E17", "s", "AV", "tcp", "d", "443"),
    ("I1", "d", "INT", "tcp", "d", "23456"), ("I2", "d", "INT", "tcp", "d", "5061"),
    ("I3", "s", "INT", "tcp", "d", "5061"), ("I4", "d", "INT", "tcp", "d", "8057"),
    ("I5", "d", "INT", "tcp", "d", "5062"), ("I6", "d", "INT", "udp", "d", "3478"),
    ("I7", "d", "INT", "tcp", "d", "443"), ("I8", "d", "INT", "tcp", "d", "4443"),
    ("I9", "d", "INT", "tcp", "d", "50001"), ("I10", "d", "INT", "tcp", "d", "50002"),
    ("I11", "d", "INT", "tcp", "d", "50003"),
    ("F1", "s", "ACC", "tcp", "d", "5061"),
    ("P1", "d", "ACC", "tcp", "d", "5061"), ("P2", "s", "ACC", "tcp", "d", "5061"),
    ("P3", "d", "ACC", "tcp", "d", "443"), ("P4", "s", "AV", "tcp", "s", RELAY),
    ("P5", "s", "AV", "udp", "d", "3478"), ("P6", "d", "AV", "udp", "d", "3478"),
    ("X1", "d", "ACC", "tcp", "d", "5269"), ("X2", "s", "ACC", "tcp", "d", "5269"),
    ("X3", "d", "INT", "tcp", "d", "23456"),
]
EXPECTED_BY_ID = {row[0]: row for row in EXPECTED}
LABELS = {"E6": "E6 Access/SIP(TLS)/TCP/443 in", "E10": "E10 A/V/RTP/TCP/50000-59999 out",
          "E1": "E1 XMPP/TCP/5269 in", "I1": "I1 XMPP/MTLS/TCP/23456 in", "F1": "F1 Access/SIP(MTLS)/TCP/5061 out",
          "E14": "E14 A/V/STUN,MSTURN/UDP/3478 out", "E9": "E9 WebConf/PSOM(TLS)/TCP/443 in"}


def nft_match(rule_id: str, *, reply: bool = False) -> str:
    _, edge, which, transport, port_end, port = EXPECTED_BY_ID[rule_id]
    if reply:  # the answers of the flow: both ends swap
        edge, port_end = ("s" if edge == "d" else "d"), ("s" if port_end == "d" else "d")
    return f"ip {edge}addr {{ {', '.join(ADDRESSES[which])} }} {transport} {port_end}port {port}"


def ipt_match(rule_id: str, *, reply: bool = False) -> str:
    _, edge, which, transport, port_end, port = EXPECTED_BY_ID[rule_id]
    if reply:
        edge, port_end = ("s" if edge == "d" else "d"), ("s" if port_end == "d" else "d")
    return (f"-{edge} {','.join(ADDRESSES[which])} -p {transport} -m {transport} --{port_end}port "
            f"{port.replace('-', ':')}")


def body(text: str) -> list[str]:
    """The ruleset without its header comments, one stripped line each."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def comment_ids(text: str) -> set[str]:
    return {comment.split()[0] for comment in re.findall(r'comment "([^"]*)"', text)}


def lines_with(text: str, rule_id: str) -> list[str]:
    return [line for line in body(text) if re.search(rf'comment "{rule_id} ', line)]


@pytest.fixture(scope="module")
def lab() -> Scenario:
    return load_scenario(FIREWALL_LAB)


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    """An empty network namespace for the syntax checks; deleted afterwards."""
    if os.geteuid() != 0:
        if in_ci():
            pytest.fail("network namespaces need root")
        pytest.skip("network namespaces need root")
    ip = require_tool("ip")
    name = f"edgesim-fw-{os.getpid()}"
    subprocess.run([ip, "netns", "add", name], check=True, timeout=10, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run([ip, "netns", "delete", name], check=False, timeout=10, capture_output=True)


def check_in(netns: str, argv: list[str], text: str, tmp_path: Path) -> None:
    path = tmp_path / "ruleset"
    path.write_text(text, encoding="utf-8")
    done = subprocess.run(["ip", "netns", "exec", netns, *argv, str(path)], capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 0, f"{' '.join(argv)} rejected the ruleset:\n{done.stderr}\n{text}"


OPTION_SETS: list[dict[str, Any]] = [
    {},
    {"reject": True},
    {"snat_inbound": True},
    {"hairpin": False},
    {"leave_out": ["E6", "P3"], "drop_return": ["E15", "E10", "E5", "I3"]},
    {"external_interface": "eth0", "drop_return": ["I2", "I3"]},
    {"reject": True, "snat_inbound": True, "hairpin": False, "drop_return": list(RULES_BY_ID),
     "external_interface": "ext0"},
]


@pytest.mark.interop
@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: ",".join(o) or "defaults")
def test_nft_accepts_the_nftables_ruleset(lab: Scenario, netns: str, tmp_path: Path, options: dict[str, Any]) -> None:
    nft = require_tool("nft")
    check_in(netns, [nft, "-c", "-f"], firewall_ruleset(lab, "nftables", **options), tmp_path)


@pytest.mark.interop
@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: ",".join(o) or "defaults")
def test_iptables_restore_accepts_the_iptables_ruleset(lab: Scenario, netns: str, tmp_path: Path,
                                                       options: dict[str, Any]) -> None:
    restore = require_tool("iptables-restore")
    check_in(netns, [restore, "--test"], firewall_ruleset(lab, "iptables", **options), tmp_path)


def test_the_syntax_checks_can_fail(netns: str, tmp_path: Path) -> None:
    """A broken ruleset is refused, so the checks above mean something."""
    nft = require_tool("nft")
    restore = require_tool("iptables-restore")
    with pytest.raises(AssertionError):
        check_in(netns, [nft, "-c", "-f"], "table inet edgesim { chain forward { tcp dport 99999 accept } }\n",
                 tmp_path)
    with pytest.raises(AssertionError):
        check_in(netns, [restore, "--test"], "*filter\n-A FORWARD -p tcp --dport 99999 -j ACCEPT\nCOMMIT\n", tmp_path)


@pytest.mark.parametrize("dialect", ["nftables", "iptables"])
def test_every_selected_rule_has_its_id_in_a_comment(lab: Scenario, dialect: Dialect) -> None:
    text = firewall_ruleset(lab, dialect)
    ids = comment_ids(text)
    assert set(RULES_BY_ID) <= ids
    for rule_id in RULES_BY_ID:
        assert len(lines_with(text, rule_id)) == 1, rule_id
    for label in LABELS.values():
        assert f'"{label}"' in text


@pytest.mark.parametrize("dialect", ["nftables", "iptables"])
def test_only_the_scenarios_selected_rules_are_written(lab: Scenario, dialect: Dialect) -> None:
    chosen = lab.model_copy(update={"rules": ["E6", "I2", "E12"]})
    ids = comment_ids(firewall_ruleset(chosen, dialect)) & set(RULES_BY_ID)
    assert ids == {"E6", "I2", "E12"}


@pytest.mark.parametrize("rule_id", list(EXPECTED_BY_ID))
def test_each_rule_matches_the_documented_flow(lab: Scenario, rule_id: str) -> None:
    [nft_line] = lines_with(firewall_ruleset(lab, "nftables"), rule_id)
    assert nft_line.startswith(f"{nft_match(rule_id)} accept comment"), nft_line
    [ipt_line] = lines_with(firewall_ruleset(lab, "iptables"), rule_id)
    assert ipt_line.startswith(f"-A FORWARD {ipt_match(rule_id)} -m comment"), ipt_line
    assert ipt_line.endswith("-j ACCEPT")


def test_the_relay_rules_follow_the_scenarios_relay_range(lab: Scenario) -> None:
    pool = lab.edge_pool.model_copy(update={"relay_ports": lab.edge_pool.relay_ports.model_copy(
        update={"first": 40000, "last": 40999})})
    text = firewall_ruleset(lab.model_copy(update={"edge_pool": pool}), "nftables")
    for rule_id in ("E10", "E11", "E12", "E13", "P4"):
        [line] = lines_with(text, rule_id)
        assert "port 40000-40999 accept" in line and "50000" not in line
    # the CLS ports 50001-50003 (I9-I11) are not relay ports
    [line] = lines_with(text, "I9")
    assert "tcp dport 50001 accept" in line


def test_the_forward_chain_is_stateful_with_policy_drop(lab: Scenario) -> None:
    nft = body(firewall_ruleset(lab, "nftables"))
    assert "type filter hook forward priority filter; policy drop;" in nft
    established = nft.index('ct state established,related accept comment "return traffic of accepted flows"')
    first_rule = min(nft.index(lines_with("\n".join(nft), rule_id)[0]) for rule_id in RULES_BY_ID)
    assert established < first_rule
    ipt = body(firewall_ruleset(lab, "iptables"))
    assert ":FORWARD DROP [0:0]" in ipt
    assert any("--ctstate RELATED,ESTABLISHED" in line and line.endswith("-j ACCEPT") for line in ipt)


@pytest.mark.parametrize("dialect", ["nftables", "iptables"])
def test_the_pools_1to1_nat(lab: Scenario, dialect: Dialect) -> None:
    text = body(firewall_ruleset(lab, dialect))
    for private, public in NAT_PAIRS:
        if dialect == "nftables":
            dnat, snat = f"ip daddr {public} dnat ip to {private}", f"ip saddr {private} snat ip to {public}"
        else:
            dnat, snat = f"-A PREROUTING -d {public} ", f"-A POSTROUTING -s {private} "
        assert sum(line.startswith(dnat) for line in text) == 1
        assert sum(line.startswith(snat) for line in text) == 1
        if dialect == "iptables":
            assert any(line.startswith(dnat) and line.endswith(f"-j DNAT --to-destination {private}") for line in text)
            assert any(line.startswith(snat) and line.endswith(f"-j SNAT --to-source {public}") for line in text)
    # hairpin (the scenario's default): nothing exempts the nodes' own traffic from the DNAT
    assert not any("no hairpin" in line for line in text)
    assert not any("masquerade" in line.lower() for line in text)


def changed(before: str, after: str) -> tuple[list[str], list[str]]:
    """Lines only in ``before``, lines only in ``after`` (header comments aside)."""
    old, new = body(before), body(after)
    return [line for line in old if line not in new], [line for line in new if line not in old]


@pytest.mark.parametrize("dialect", ["nftables", "iptables"])
def test_leave_out_removes_only_that_rules_line(lab: Scenario, dialect: Dialect) -> None:
    base = firewall_ruleset(lab, dialect)
    removed, added = changed(base, firewall_ruleset(lab, dialect, leave_out=["E6"]))
    assert removed == lines_with(base, "E6") and added == []
    assert lines_with(base, "P3")  # the same packets' other rule stays


@pytest.mark.parametrize("dialect", ["nftables", "iptables"])
def test_reject_ends_the_chain_with_reset_and_port_unreachable(lab: Scenario, dialect: Dialect) -> None:
    base = firewall_ruleset(lab, dialect)
    text = firewall_ruleset(lab, dialect, reject=True)
    removed, added = changed(base, text)
    assert removed == []
    if dialect == "nftables":
        assert [line.split(" comment")[0] for line in added] == ["meta l4proto tcp reject with tcp reset",
                                                                 "reject with icmpx type port-unreachable"]
        forward = body(text)
        assert forward.index(added[1]) == forward.index("}") - 1  # the chain's last rules
    else:
        assert [line.split(" -j ")[1] for line in added] == ["REJECT --reject-with tcp-reset",
                                                             "REJECT --reject-with icmp-port-unreachable"]
        lines = body(text)
        assert lines.index(added[1]) == len(lines) - 2  # just before the filter table's COMMIT


@pytest.mark.parametrize("dialect", ["nftables", "iptables"])
def test_snat_inbound_masquerades_dnated_flows_only(lab: Scenario, dialect: Dialect) -> None:
    removed, added = changed(firewall_ruleset(lab, dialect),
                             firewall_ruleset(lab, dialect, snat_inbound=True))
    assert removed == [] and len(added) == 1
    privates = [private for private, _ in NAT_PAIRS]
    if dialect == "nftables":
        assert added[0].startswith(f"ct status dnat ip daddr {{ {', '.join(privates)} }} masquerade")
    else:
        assert added[0].startswith(f"-A POSTROUTING -d {','.join(privates)} -m conntrack --ctstate DNAT")
        assert added[0].endswith("-j MASQUERADE")


@pytest.mark.parametrize("dialect", ["nftables", "iptables"])
def test_without_hairpin_a_nodes_traffic_to_public_addresses_is_not_translated(lab: Scenario,
                                                                              dialect: Dialect) -> None:
    base = firewall_ruleset(lab, dialect)
    text = firewall_ruleset(lab, dialect, hairpin=False)
    removed, added = changed(base, text)
    assert removed == [] and len(added) == 1
    privates = [private for private, _ in NAT_PAIRS]
    publics = [public for _, public in NAT_PAIRS]
    lines = body(text)
    first_dnat = min(i for i, line in enumerate(lines) if "dnat" in line.lower())
    assert lines.index(added[0]) < first_dnat
    if dialect == "nftables":
        assert added[0].startswith(f"ip saddr {{ {', '.join(privates)} }} ip daddr {{ {', '.join(publics)} }} return")
    else:
        assert added[0].startswith(f"-A PREROUTING -s {','.join(privates)} -d {','.join(publics)} ")
        assert added[0].endswith("-j RETURN")


@pytest.mark.parametrize("dialect", ["nftables", "iptables"])
@pytest.mark.parametrize("rule_id", ["E15", "E6", "E5", "E10", "E12", "I3", "I2"])
def test_drop_return_drops_only_that_flows_answers(lab: Scenario, dialect: Dialect, rule_id: str) -> None:
    base = firewall_ruleset(lab, dialect)
    text = firewall_ruleset(lab, dialect, drop_return=[rule_id])
    removed, added = changed(base, text)
    assert removed == [] and len(added) == 1
    lines = body(text)
    established = next(i for i, line in enumerate(lines) if "established" in line.lower())
    assert lines.index(added[0]) < established
    if dialect == "nftables":
        assert added[0].startswith(f"ct direction reply {nft_match(rule_id, reply=True)} drop comment \"{rule_id} ")
    else:
        assert added[0].startswith(f"-A FORWARD {ipt_match(rule_id, reply=True)} -m conntrack --ctdir REPLY")
        assert added[0].endswith("-j DROP")


INTERNAL_RULES = ["I1", "I2", "I3", "I4", "I5", "I6", "I7", "I8", "I9", "I10", "I11", "X3"]


def test_an_external_interface_keeps_only_the_internal_rules_off_it(lab: Scenario) -> None:
    base = firewall_ruleset(lab, "nftables")
    text = firewall_ruleset(lab, "nftables", external_interface="ext0", drop_return=["I3"])
    removed, added = changed(base, text)
    assert sorted(removed, key=body(base).index) == [lines_with(base, rule_id)[0] for rule_id in INTERNAL_RULES]
    assert len(added) == len(INTERNAL_RULES) + 1  # the same rules with the guard, and I3's dropped answers
    for rule_id in INTERNAL_RULES:
        [line] = [line for line in lines_with(text, rule_id) if " accept " in line]
        # I3 is the Edge opening the flow: its other end is where the packet goes; the rest arrive from it
        guard = 'oifname != "ext0"' if rule_id == "I3" else 'iifname != "ext0"'
        assert line.startswith(f"{nft_match(rule_id)} {guard} accept"), line
    [answers] = [line for line in lines_with(text, "I3") if " drop " in line]
    assert answers.startswith(f'ct direction reply {nft_match("I3", reply=True)} iifname != "ext0" drop')
    ipt = firewall_ruleset(lab, "iptables", external_interface="ext0")
    assert lines_with(ipt, "I2")[0].startswith(f"-A FORWARD ! -i ext0 {ipt_match('I2')} ")
    assert lines_with(ipt, "I3")[0].startswith(f"-A FORWARD ! -o ext0 {ipt_match('I3')} ")
    with pytest.raises(ValueError, match="interface name"):
        firewall_ruleset(lab, "nftables", external_interface='eth0" accept')


def test_the_answers_of_an_inbound_flow_come_from_the_edges_port(lab: Scenario) -> None:
    """Spelled out for two rules, independently of the helper above."""
    text = firewall_ruleset(lab, "nftables", drop_return=["E15", "E11"])
    assert 'ct direction reply ip saddr { 10.200.2.12, 10.200.2.22 } udp sport 3478 drop comment "E15 ' in text
    assert 'ct direction reply ip daddr { 10.200.2.12, 10.200.2.22 } udp dport 50000-59999 drop comment "E11 ' in text


def test_the_nat_defaults_come_from_the_scenario(lab: Scenario) -> None:
    nat = lab.edge_pool.nat.model_copy(update={"snat_inbound": True, "hairpin": False})
    misconfigured = lab.model_copy(update={"edge_pool": lab.edge_pool.model_copy(update={"nat": nat})})
    plan = plan_firewall(misconfigured)
    assert plan.snat_inbound is not None and plan.no_hairpin is not None
    plan = plan_firewall(misconfigured, snat_inbound=False, hairpin=True)
    assert plan.snat_inbound is None and plan.no_hairpin is None


def test_the_output_is_deterministic(lab: Scenario) -> None:
    assert firewall_ruleset(lab, "nftables") == firewall_ruleset(lab, "nftables")


def test_a_scenario_without_deployment_is_a_clear_error() -> None:
    with pytest.raises(NoDeploymentError, match="no deployment: section"):
        firewall_ruleset(load_scenario(SHIPPED), "nftables")


def test_unknown_rule_ids_and_dialects_are_refused(lab: Scenario) -> None:
    with pytest.raises(ValueError, match="E99"):
        firewall_ruleset(lab, "nftables", leave_out=["E99"])
    with pytest.raises(ValueError, match="E0"):
        firewall_ruleset(lab, "nftables", drop_return=["E0"])
    with pytest.raises(ValueError, match="pf"):
        firewall_ruleset(lab, "pf")  # type: ignore[arg-type]


def test_cli_writes_the_ruleset(lab: Scenario, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "--firewall", "iptables", "--scenario", str(FIREWALL_LAB), "--leave-out", "E6",
                 "--drop-return", "E15", "--reject", "--snat-inbound", "--no-hairpin"]) == 0
    expected = firewall_ruleset(lab, "iptables", leave_out=["E6"], drop_return=["E15"], reject=True,
                                snat_inbound=True, hairpin=False)
    assert capsys.readouterr().out == expected


@pytest.mark.parametrize("argv", [
    ["rules", "--firewall", "nftables", "--scenario", str(SHIPPED)],
    ["rules", "--firewall", "nftables"],
    ["rules", "--firewall", "nftables", "--scenario", str(FIREWALL_LAB), "--leave-out", "E99"],
    ["rules", "--reject"],
])
def test_cli_prints_one_line_and_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1 and captured.err.startswith("edgesim: ")


# ------------------------------------------------------------------------------------------------ the sweep's input


def test_same_packet_groups_are_the_rules_port_tables_gives_the_same_flow(lab: Scenario) -> None:
    # rows of EXPECTED (written from port-tables.md) that differ only in their id
    by_flow: dict[tuple[str, ...], list[str]] = {}
    for row in EXPECTED:
        by_flow.setdefault(row[1:], []).append(row[0])
    want = sorted(sorted(ids) for ids in by_flow.values())
    assert sorted(sorted(group) for group in same_packet_groups(lab)) == want
    shared = {frozenset(group) for group in same_packet_groups(lab) if len(group) > 1}
    assert frozenset({"E8", "F1", "P2"}) in shared and frozenset({"E6", "P3"}) in shared
    assert len(same_packet_groups(lab)) == 28  # 38 rules, 9 groups of shared packets (one of three)


@pytest.mark.parametrize("dialect", ["nftables", "iptables"])
def test_without_rules_takes_out_exactly_the_groups_accept_lines(lab: Scenario, dialect: Dialect) -> None:
    base = firewall_ruleset(lab, dialect, drop_return=["E15"])
    text, missing = without_rules(base, ["E15", "P6"])
    removed, added = changed(base, text)
    assert missing == [] and added == []
    accepts = [line for line in lines_with(base, "E15") if "return traffic dropped" not in line]
    assert sorted(removed) == sorted([*lines_with(base, "P6"), *accepts])
    assert any("return traffic dropped" in line for line in lines_with(text, "E15"))  # a drop rule is not an accept
    # a user's ruleset that never had the line: said, not silently ignored
    _, missing = without_rules(text, ["E15", "E9"])
    assert missing == ["E15"]


def test_a_ruleset_without_a_groups_lines_still_loads(lab: Scenario, netns: str, tmp_path: Path) -> None:
    text, _ = without_rules(firewall_ruleset(lab, "nftables"), ["E8", "F1", "P2"])
    check_in(netns, [require_tool("nft"), "-c", "-f"], text, tmp_path)
