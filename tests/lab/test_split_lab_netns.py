"""Firewall lab mode end to end: edgesim on every side of a real nftables firewall between network namespaces.

The namespaces of :mod:`tests.lab.test_firewall_netns` (ext, dmz, int and the router fw) get every address of
``scenarios/firewall-lab.yaml``'s deployment; fw loads the ruleset ``edgesim rules --firewall nftables`` emits
(the seed's rules plus the pool's 1:1 NAT). Then, as a user would on real hosts:

* ``serve edge --node edge1`` and ``--node edge2`` in dmz, ``serve internal`` in int, ``serve external`` in ext;
* ``probe --side edge`` (each node) in dmz, ``probe --side internal`` in int, ``probe --side external`` in ext;
* ``report merge`` of the side reports gives the one 38-rule table.

Every address and port comes from the deployment: nothing here is on 127.x.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from simulator.spec.loader import load_scenario
from simulator.spec.rules import RULES_BY_ID
from tests.lab.test_firewall_netns import FIREWALL_LAB, FirewallLab
from tests.peers import in_ci, require_tool

pytestmark = pytest.mark.interop

READY_WAIT = 30.0
PROBE_TIMEOUT = 3.0  # seconds per probe step (the scenario's own)
PROBE_WAIT = 240.0


class SplitLab:
    """The namespaces with the deployment's addresses, and the edgesim processes started in them."""

    def __init__(self, tmp: Path) -> None:
        self.scenario = load_scenario(FIREWALL_LAB)
        self.net = FirewallLab(self.scenario)
        self.tmp = tmp
        self.pki = tmp / "pki"
        self.servers: list[tuple[str, subprocess.Popen[str]]] = []

    def build(self) -> None:
        self.net.build()
        deployment = self.scenario.deployment
        assert deployment is not None
        ext = {str(deployment.crl), str(deployment.dns.address)}
        internal = set()
        for client in self.scenario.clients:
            placed = deployment.clients[client.name]
            side = internal if client.role in ("front-end", "director", "internal-user") else ext
            side.update(str(address) for address in placed.addresses)
            if placed.nat is not None:
                side.add(str(placed.nat))
        for side, addresses, already in (("ext", ext, self.net.ext_client), ("int", internal, self.net.int_client)):
            for address in sorted(addresses - {already}):
                self.net.run_in(side, ["ip", "addr", "add", f"{address}/24", "dev", "eth0"])
        done = subprocess.run(self._edgesim("certs", "--scenario", str(FIREWALL_LAB), "--out", str(self.pki)),
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr

    def load(self, **options: Any) -> None:
        """A fresh ruleset, and no external flow left over from the last one: the Edge keeps its connections (as
        Lync servers do), and conntrack would let an established one through a rule that is now gone. The
        Front End's persistent links to the Edge's internal interface (8057, 23456) stay up, as they would
        through a real firewall's reload."""
        self.net.load("nftables", **options)
        deployment = self.scenario.deployment
        assert deployment is not None
        outside = {str(a) for name, placed in deployment.clients.items()
                   for a in [*placed.addresses, *([placed.nat] if placed.nat else [])]
                   if name not in ("frontend", "director")}
        outside |= {str(deployment.crl), str(deployment.dns.address)}
        edge_external = {str(getattr(node, s).private) for node in deployment.nodes.values()
                         for s in ("access", "webconf", "av")}
        for address in sorted(outside | edge_external):
            for direction in ("-s", "-d"):
                subprocess.run(["ip", "netns", "exec", self.net.ns["fw"], "conntrack", "-D", direction, address],
                               capture_output=True, timeout=10, check=False)  # exit 1: nothing to delete

    def _edgesim(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "simulator.cli", *args]

    def _in(self, side: str, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.net.ns[side], *self._edgesim(*args)]

    def _start(self, side: str, kind: str, *extra: str) -> tuple[Path, subprocess.Popen[str]]:
        observations = self.tmp / f"observed-{kind}{'-' + extra[-1] if extra else ''}.json"
        observations.unlink(missing_ok=True)
        argv = self._in(side, "serve", kind, str(FIREWALL_LAB), "--pki", str(self.pki), "--observations",
                        str(observations), *extra)
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.servers.append((kind, process))
        return observations, process

    def _ready(self, kind: str, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], READY_WAIT)
        line = process.stdout.readline().strip() if ready else ""
        if not line.startswith(f"{kind} ready"):
            process.kill()
            _, err = process.communicate(timeout=10)
            raise AssertionError(f"serve {kind} did not start: {line!r}\n{err[-3000:]}")

    def serve_all(self) -> list[Path]:
        """Both Edge nodes in dmz first (the Front End links to them at start), then the internal and the
        external side; returns the observation files."""
        edges = [self._start("dmz", "edge", "--node", "edge1"), self._start("dmz", "edge", "--node", "edge2")]
        for _, process in edges:
            self._ready("edge", process)
        others = [("internal", self._start("int", "internal")), ("external", self._start("ext", "external"))]
        for kind, (_, process) in others:
            self._ready(kind, process)
        return [path for path, _ in edges] + [path for _, (path, _) in others]

    def probe_all(self, *, load: bool = False) -> list[dict[str, Any]]:
        """Every side's probes, as people on the three sides would run them: each Edge node's own lookups in dmz
        and the Front End's in int at once, then the outside's in ext, given what the others found."""
        first = self._probe_runs([("dmz", "edge", "--node", "edge1"), ("dmz", "edge", "--node", "edge2"),
                                  ("int", "internal")])
        given = ["--given", *map(str, sorted(self.tmp.glob("side-*.json")))]
        return first + self._probe_runs([("ext", "external", *(["--load"] if load else []), *given)])

    def _probe_runs(self, runs: list[tuple[str, ...]]) -> list[dict[str, Any]]:
        started = []
        for side, probe_side, *extra in runs:
            out = self.tmp / f"side-{probe_side}{'-' + extra[-1] if extra and probe_side == 'edge' else ''}.json"
            out.unlink(missing_ok=True)
            argv = self._in(side, "probe", str(FIREWALL_LAB), "--side", probe_side, "--pki", str(self.pki), "--out",
                            str(out), "--timeout", str(PROBE_TIMEOUT), *extra)
            started.append((out, subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
        documents = []
        for out, process in started:
            try:
                stdout, stderr = process.communicate(timeout=PROBE_WAIT)
            except subprocess.TimeoutExpired:
                process.kill()
                stdout, stderr = process.communicate(timeout=10)
            assert process.returncode == 0, stdout[-3000:] + stderr[-3000:]
            documents.append(json.loads(out.read_text()))
        return documents

    def stop_servers(self) -> None:
        for _, process in self.servers:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for kind, process in self.servers:
            try:
                _, err = process.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                _, err = process.communicate(timeout=10)
            assert process.returncode == 0, f"serve {kind} exited {process.returncode}: {err[-2000:]}"
        self.servers = []

    def merge(self, files: list[Path]) -> tuple[int, dict[str, Any], str]:
        out = self.tmp / "merged"
        done = subprocess.run(self._edgesim("report", "merge", *map(str, files), "--scenario", str(FIREWALL_LAB),
                                            "--out", str(out)),
                              capture_output=True, text=True, timeout=60, check=False,
                              env={**os.environ, "COLUMNS": "200"})
        return done.returncode, json.loads((out / "report.json").read_text()), done.stdout + done.stderr

    def close(self) -> None:
        for _, process in self.servers:
            if process.poll() is None:
                process.kill()
            process.communicate(timeout=10)
        self.net.close()


@pytest.fixture
def split_lab(tmp_path: Path) -> Iterator[SplitLab]:
    if os.geteuid() != 0:
        if in_ci():
            pytest.fail("network namespaces need root")
        pytest.skip("network namespaces need root")
    require_tool("ip")
    require_tool("nft")
    require_tool("conntrack")
    lab = SplitLab(tmp_path)
    try:
        lab.build()
        yield lab
    finally:
        lab.close()


def _snapshot(lab: SplitLab, observed: list[Path]) -> None:
    """Ask every server for what arrived so far (SIGUSR1) and wait until each file is written."""
    for path in observed:
        path.unlink(missing_ok=True)
    for _, process in lab.servers:
        process.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if all(path.exists() for path in observed):
            time.sleep(0.2)  # let the last write finish
            return
        time.sleep(0.05)
    raise AssertionError("the servers did not write their observations at SIGUSR1")


def test_every_rule_passes_on_both_nodes_across_a_real_firewall(split_lab: SplitLab) -> None:
    split_lab.load()
    observed = split_lab.serve_all()
    sides = split_lab.probe_all(load=True)
    _snapshot(split_lab, observed)  # SIGUSR1: what arrived so far, while serving goes on
    assert all(json.loads(path.read_text())["arrivals"] for path in observed)
    split_lab.stop_servers()
    files = sorted(split_lab.tmp.glob("side-*.json")) + observed
    code, report, output = split_lab.merge(files)
    verdicts = {rule["id"]: (rule["verdict"], rule["reason"], rule["detail"][:300]) for rule in report["rules"]}
    failing = {rule_id: v for rule_id, v in verdicts.items() if v[0] != "pass"}
    assert failing == {}, output[-6000:]
    assert sorted(verdicts) == sorted(RULES_BY_ID)  # all 38, from the catalog
    for rule in report["rules"]:
        assert sorted(node["node"] for node in rule["nodes"]) == ["edge1", "edge2"], rule
    assert code == 0
    # the probes really ran where the deployment says: every side report names only its own rules
    assert {side["side"] for side in sides} == {"edge", "internal", "external"}
    hosts = {host["address"] for host in report["hosts"]}
    assert not any(address.startswith("127.") for address in hosts)
    # the scenario's sign-in load ran through the firewall from outside: every remote user signed in, on both nodes
    load = report["load"]
    users = len(json.loads((split_lab.tmp / "side-external.json").read_text())["load"]["sessions"])
    assert users >= 1 and load["signed_in"] == users and load["failures"] == {}, load
    assert all(count > 0 for count in load["spread"].values()), load["spread"]
    # the serving sides saw the flows arrive on their deployment addresses
    arrivals = [json.loads(path.read_text())["arrivals"] for path in observed]
    access_private = str(split_lab.scenario.deployment.nodes["edge1"].access.private)  # type: ignore[union-attr]
    assert any(entry["local"] == f"{access_private}:443" for entry in arrivals[0]), arrivals[0][:20]


# ------------------------------------------------------------------------------------------- mutations
# Each mutation is a fresh ruleset with one change. What it must do comes from the seed's tables and what each
# probe sends (README "What works today"): a rule fails when its own flow (or the flow its probe needs, e.g. the
# relay's way out for the echo) is closed; a rule whose prerequisite fails is blocked by it; nothing else moves.
AV_EXTERNAL = ["E10", "E11", "E12", "E13", "E14", "E15", "E16", "E17", "P4", "P5", "P6"]
UDP_MS_TURN = ["E11", "E13", "E14", "E15", "P5", "P6"]  # MS-TURN sessions over UDP 3478 from outside

MUTATIONS: dict[str, tuple[dict[str, Any], dict[str, tuple[str, str | None]]]] = {
    # (1) no TCP 443 to the Access Edge's public address: sign-in fails; A/V (credentials need it) is blocked.
    "no-443-in": ({"leave_out": ["E6", "P3"]},
                  {"E6": ("fail", "never-arrived"), "P3": ("fail", "never-arrived"),
                   **{rule: ("blocked", "E6") for rule in AV_EXTERNAL}}),
    # (2) no UDP 3478 in to the A/V public address: every UDP MS-TURN session from outside.
    "no-3478-udp-in": ({"leave_out": ["E15", "P6"]},
                       {**{rule: ("fail", None) for rule in UDP_MS_TURN},
                        "E15": ("fail", "never-arrived"), "P6": ("fail", "never-arrived")}),
    # (4) 5062 from the Front End to the Edge's internal interface: MRAS fails, every A/V rule is blocked by it.
    "no-5062": ({"leave_out": ["I5"]},
                {"I5": ("fail", "never-arrived"), **{rule: ("blocked", "I5") for rule in [*AV_EXTERNAL, "I6", "I7"]}}),
    # (3) the relay range closed outbound for UDP: RTP from the relay to a peer's media port never arrives; E13's
    # probe needs that way out too (the peer answers what the relay sent it). 3478 out (E14) is its own rule.
    "no-relay-udp-out": ({"leave_out": ["E11"]},
                         {"E11": ("fail", "never-arrived"), "E13": ("fail", None)}),
    # (6) DNS over UDP out closed, TCP open: E5 fails, E4 passes; what needs E5 is blocked by it (the Edge looks
    # partners up to reach them and to check the certificate of one that connects in).
    "no-dns-udp": ({"leave_out": ["E5"]},
                   {"E5": ("fail", "never-arrived"),
                    **{rule: ("blocked", "E5") for rule in ("E2", "E3", "E7", "E8", "F1", "P1", "P2", "X2")}}),
    # (8) inbound DNAT that also SNATs: the rules whose flows start outside and must keep the sender's address (the
    # client's Allocate, a peer opening to the relay). A flow the relay starts comes back as its reply, un-NATed.
    "snat-inbound": ({"snat_inbound": True},
                     {rule: ("fail", "snat-inbound") for rule in ("E12", "E13", "E15", "E16", "P6")}),
    # (7) REJECT instead of DROP: the closed 443 is refused at once, not timed out.
    "reject-443": ({"leave_out": ["E6", "P3"], "reject": True},
                   {"E6": ("fail", "refused"), "P3": ("fail", "refused"),
                    **{rule: ("blocked", "E6") for rule in AV_EXTERNAL}}),
    # (9) the answers of UDP 3478 dropped on their way back: the Allocates arrive, nothing comes back.
    "no-return-3478": ({"drop_return": ["E15", "P6"]},
                       {**{rule: ("fail", None) for rule in UDP_MS_TURN},
                        "E15": ("fail", "no-return-path"), "P6": ("fail", "no-return-path")}),
    # (5) 5061 out to partners (E8, F1 and P2 match the same packets).
    "no-5061-out": ({"leave_out": ["E8", "F1", "P2"]},
                    {rule: ("fail", "never-arrived") for rule in ("E8", "F1", "P2")}),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_one_firewall_change_moves_exactly_the_rules_it_must(split_lab: SplitLab, mutation: str) -> None:
    lab = split_lab
    options, expected = MUTATIONS[mutation]
    lab.load(**options)
    observed = lab.serve_all()  # fresh servers: nothing one mutation left (a held connection) leaks into the next
    lab.probe_all()
    lab.stop_servers()  # each writes what reached it
    code, report, output = lab.merge(sorted(lab.tmp.glob("side-*.json")) + observed)
    got = {rule["id"]: (rule["verdict"], rule["blocked_by"] if rule["verdict"] == "blocked" else rule["reason"])
           for rule in report["rules"]}
    moved = {rule_id: verdict for rule_id, verdict in got.items() if verdict[0] != "pass"}
    (lab.tmp / f"moved-{mutation}.json").write_text(json.dumps(
        {rule["id"]: [rule["verdict"], rule["reason"], rule["blocked_by"], rule["detail"][:500]]
         for rule in report["rules"] if rule["verdict"] != "pass"}, indent=1))
    want = {rule_id: verdict for rule_id, verdict in expected.items()}
    assert set(moved) == set(want), output[-6000:]
    for rule_id, (verdict, why) in want.items():
        assert moved[rule_id][0] == verdict, (rule_id, moved[rule_id], output[-4000:])
        if why is not None:
            assert moved[rule_id][1] == why, (rule_id, moved[rule_id], output[-4000:])
    assert code == 1  # the shipped expectations (all pass) no longer hold
