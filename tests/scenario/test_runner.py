"""The runner: verdicts per rule, blocked dependants, unimplemented never pass, stopped listeners fail."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from simulator.lab.pki import build_pki
from simulator.lab.topology import Lab
from simulator.outcome import Outcome, Reason, Verdict
from simulator.scenario.probes import PROBES, ProbeContext
from simulator.scenario.runner import run_rules
from simulator.spec.rules import RULES_BY_ID
from simulator.spec.schema import CertificateVariant, ClientRole, Scenario

from ..conftest import ROOT, SHIPPED, shipped_text_for_tests

MGMT = ["I8", "I9", "I10", "I11"]

PASS = (Verdict.PASS, None)
# What the shipped scenario must give, rule by rule, written out from docs/port-tables.md (the five tables,
# in their order) and not read from the probe registry or the rule table: the shipped Edge pool is healthy,
# so every documented flow passes on both nodes and nothing is blocked. A rule whose probe goes missing
# turns "unimplemented" and fails the tests below. (verdict, blocked_by) per rule id:
SHIPPED_EXPECTED: dict[str, tuple[Verdict, str | None]] = {
    # Table 1 — external interface, Node 1 and Node 2
    "E1": PASS, "E2": PASS, "E3": PASS, "E4": PASS, "E5": PASS, "E6": PASS, "E7": PASS, "E8": PASS, "E9": PASS,
    "E10": PASS, "E11": PASS, "E12": PASS, "E13": PASS, "E14": PASS, "E15": PASS, "E16": PASS, "E17": PASS,
    # Table 2 — internal interface, Node 1 and Node 2
    "I1": PASS, "I2": PASS, "I3": PASS, "I4": PASS, "I5": PASS, "I6": PASS, "I7": PASS, "I8": PASS,
    "I9": PASS, "I10": PASS, "I11": PASS,
    # Table 3 — federation
    "F1": PASS,
    # Table 4 — public IM connectivity
    "P1": PASS, "P2": PASS, "P3": PASS, "P4": PASS, "P5": PASS, "P6": PASS,
    # Table 5 — XMPP
    "X1": PASS, "X2": PASS, "X3": PASS,
}


def test_the_expectation_table_covers_the_documented_rules() -> None:
    assert len(SHIPPED_EXPECTED) == 38  # port-tables.md: "38 rules in 5 tables"
    assert set(SHIPPED_EXPECTED) == set(RULES_BY_ID)


async def test_every_documented_rule_passes_on_the_shipped_scenario(shipped_scenario: Scenario) -> None:
    async with Lab(shipped_scenario) as lab:
        results = {r.rule.id: r for r in await run_rules(lab, shipped_scenario.selected_rules)}
    assert {rule_id: (r.verdict, r.blocked_by) for rule_id, r in results.items()} == SHIPPED_EXPECTED
    for result in results.values():
        assert [o.node for o in result.outcomes] == ["edge1", "edge2"], result  # run on both pool nodes


async def test_stopping_a_listener_fails_its_rule_with_refused(shipped_scenario: Scenario) -> None:
    async with Lab(shipped_scenario) as lab:
        await lab.nodes["edge2"].stop_service("cms")
        await lab.nodes["edge1"].stop_service("cls-50002")
        results = {r.rule.id: r for r in await run_rules(lab, MGMT)}
    assert results["I8"].verdict is Verdict.FAIL and results["I8"].reason == "refused"
    assert [o.verdict for o in results["I8"].outcomes] == [Verdict.PASS, Verdict.FAIL]  # only edge2 is down
    assert results["I10"].verdict is Verdict.FAIL and results["I10"].reason == "refused"
    assert results["I9"].verdict is Verdict.PASS and results["I11"].verdict is Verdict.PASS


async def test_a_silent_listener_fails_with_timeout(shipped_scenario: Scenario) -> None:
    async with Lab(shipped_scenario) as lab:
        listener = lab.nodes["edge1"].services["cls-50001"]
        host, port = listener.host, listener.port
        await listener.stop()
        held: list[asyncio.StreamWriter] = []

        async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)  # accept, then never answer: a firewall that blackholes after the SYN

        server = await asyncio.start_server(swallow, host, port)
        try:
            results = await run_rules(lab, ["I9"], timeout=0.5)
        finally:
            for writer in held:
                writer.close()
            server.close()
            await server.wait_closed()
    assert results[0].verdict is Verdict.FAIL and results[0].reason == "timeout"


async def test_dns_down_fails_e4_e5_and_blocks_the_crl_fetch(shipped_scenario: Scenario) -> None:
    async with Lab(shipped_scenario) as lab:
        assert lab.dns is not None
        await lab.dns.stop()
        results = {r.rule.id: r for r in await run_rules(lab, ["E3", "E4", "E5"], timeout=0.5)}
    assert (results["E4"].verdict, results["E4"].reason) == (Verdict.FAIL, "refused")  # TCP: RST
    assert (results["E5"].verdict, results["E5"].reason) == (Verdict.FAIL, "timeout")  # UDP: silence
    assert results["E3"].verdict is Verdict.BLOCKED and results["E3"].blocked_by == "E5"


async def test_crl_server_down_fails_e3_with_refused(shipped_scenario: Scenario) -> None:
    async with Lab(shipped_scenario) as lab:
        assert lab.crl_server is not None
        await lab.crl_server.stop()
        results = await run_rules(lab, ["E3"])
    assert (results[0].verdict, results[0].reason) == (Verdict.FAIL, "refused")


async def test_a_crl_from_another_ca_is_untrusted(shipped_scenario: Scenario) -> None:
    async with Lab(shipped_scenario) as lab:
        assert lab.crl_server is not None
        other = build_pki(shipped_scenario)  # same names, another root CA
        lab.crl_server.documents["/lab-root.crl"] = (
            "application/pkix-crl", x509.load_pem_x509_crl(other.crl_pem).public_bytes(Encoding.DER))
        results = await run_rules(lab, ["E3"])
    assert (results[0].verdict, results[0].reason) == (Verdict.FAIL, "untrusted")


@pytest.mark.parametrize("variant", [CertificateVariant.EXPIRED, CertificateVariant.WRONG_SAN])
async def test_front_end_with_a_bad_certificate_fails_every_management_rule(
        shipped_scenario: Scenario, variant: CertificateVariant) -> None:
    clients = [c.model_copy(update={"certificate": variant}) if c.role is ClientRole.FRONT_END else c
               for c in shipped_scenario.clients]
    scenario = shipped_scenario.model_copy(update={"clients": clients})
    async with Lab(scenario) as lab:
        results = await run_rules(lab, MGMT)
    assert {(r.verdict, r.reason) for r in results} == {(Verdict.FAIL, str(variant))}


async def test_failed_prerequisite_blocks_its_dependants(shipped_scenario: Scenario,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    async def failing(ctx: ProbeContext, node: str) -> Outcome:
        calls.append(ctx.rule.id)
        return Outcome.failed(node, Reason.REFUSED, "test double: the Director refuses")

    async def passing(ctx: ProbeContext, node: str) -> Outcome:
        calls.append(ctx.rule.id)
        return Outcome.passed(node, "test double")

    monkeypatch.setitem(PROBES, "sip-internal-out", failing)  # I3
    monkeypatch.setitem(PROBES, "sip-remote-signin", passing)  # E6, P3
    monkeypatch.setitem(PROBES, "mras-in", passing)  # I5
    monkeypatch.setitem(PROBES, "av-turn-udp-in", passing)  # E15, P6
    monkeypatch.delitem(PROBES, "av-turn-udp-internal")  # I6: as if its probe were not written yet
    async with Lab(shipped_scenario) as lab:
        results = {r.rule.id: r for r in await run_rules(lab, ["E15", "E6", "I3", "I5", "I6", "P3"])}
    # design.md's chain SIP 443 → internal 5061 → MRAS 5062 → MS-TURN, with I3 failing in this test:
    # E6 and P3 (client SIP 443) need I3; E15 (TURN) needs E6 and I5, so it is blocked by E6, root I3.
    assert {rule_id: (r.verdict, r.blocked_by) for rule_id, r in results.items()} == {
        "I3": (Verdict.FAIL, None),
        "E6": (Verdict.BLOCKED, "I3"),
        "P3": (Verdict.BLOCKED, "I3"),
        "I5": (Verdict.PASS, None),
        "E15": (Verdict.BLOCKED, "E6"),
        "I6": (Verdict.UNIMPLEMENTED, None),
    }
    assert "root: I3" in results["E15"].detail
    assert sorted(calls) == ["I3", "I3", "I5", "I5"]  # once per node; blocked probes never ran, I6 has none


def _edgesim(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "simulator.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120, check=False)


def test_cli_run_writes_the_report_and_exits_0_on_the_shipped_scenario(tmp_path: Path) -> None:
    scenario = tmp_path / "shipped.yaml"
    scenario.write_text(shipped_text_for_tests(), encoding="utf-8")
    result = _edgesim("run", str(scenario), "--report-dir", str(tmp_path), "--no-progress")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert "38 rules: 38 pass, 0 fail, 0 blocked, 0 unimplemented" in result.stdout
    assert [rule["id"] for rule in report["rules"]] == list(SHIPPED_EXPECTED)  # port-tables.md order
    for rule in report["rules"]:
        assert {"id", "verdict", "reason", "blocked_by"} <= set(rule)
        verdict, blocked_by = SHIPPED_EXPECTED[rule["id"]]
        assert (rule["verdict"], rule["blocked_by"]) == (str(verdict), blocked_by), rule
        assert rule["matches_expectation"] is True
    assert report["summary"]["all_match_expectations"] is True
    assert all(not host["address"].startswith("127.0.") for host in report["hosts"])


def test_cli_run_exits_1_when_verdicts_differ_from_expectations(tmp_path: Path) -> None:
    scenario = tmp_path / "strict.yaml"
    scenario.write_text(shipped_text_for_tests().replace("  default: pass", "  default: pass\n  I9: fail:refused"),
                        encoding="utf-8")
    result = _edgesim("run", str(scenario), "--report-dir", str(tmp_path), "--no-progress", "--rules", "I8", "I9")
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert {r["id"]: r["matches_expectation"] for r in report["rules"]} == {"I8": True, "I9": False}


def test_cli_validate_and_rules(tmp_path: Path) -> None:
    assert _edgesim("validate", str(SHIPPED)).returncode == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(SHIPPED.read_text().replace("count: 4", "cuont: 4"), encoding="utf-8")
    result = _edgesim("validate", str(bad))
    assert result.returncode == 2
    assert f"{bad}:" in result.stderr and "clients[2].cuont: unknown field" in result.stderr
    listing = json.loads(_edgesim("rules", "--json").stdout)
    assert len(listing) == 38
    assert len(json.loads(_edgesim("rules", "--json", "--table", "pic").stdout)) == 6


def test_cli_certs_writes_the_pki(tmp_path: Path) -> None:
    result = _edgesim("certs", "--out", str(tmp_path / "certs"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "certs" / "ca.pem").exists() and (tmp_path / "certs" / "crl.pem").exists()
    assert (tmp_path / "certs" / "edge-external.pem").exists()
