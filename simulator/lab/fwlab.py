"""A firewall lab in network namespaces, and the one-rule-at-a-time sweep users run against a ruleset.

Four namespaces (suffixed with the pid and a counter, so two runs never collide) are joined by veth pairs::

    ext  (10.200.1.0/24) ─ext0─┐          ┌─dmz0─ (10.200.2.0/24) dmz: the nodes' private external addresses
                               fw (router)
    int  (10.200.4.0/24) ─int0─┘          └─eint0─ (10.200.5.0/24) dmz: the nodes' internal interfaces

with the addresses of ``scenarios/firewall-lab.yaml``'s deployment (the public addresses, 10.200.3.0/24, exist
nowhere: ext and dmz route through fw, whose ruleset DNATs them). :class:`SplitLab` then runs edgesim as a user
would on three real hosts — ``serve edge`` (each node) in dmz, ``serve internal`` in int, ``serve external`` in
ext, the ``probe`` of each side where it lives, ``report merge`` — and :func:`sweep` repeats that once per group
of same-packet rules with that group's accept rules taken out of the ruleset, and says what moved.

Everything here needs root (``ip netns``, ``nft``, ``conntrack``); :meth:`Namespaces.close` deletes the namespaces
and with them every interface, also when a step fails. Nothing leaves the namespaces.
"""

from __future__ import annotations

import itertools
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from simulator.lab.firewall import firewall_ruleset, overlapping_rules, same_packet_groups, without_rules
from simulator.spec.rules import RULES_BY_ID
from simulator.spec.schema import Scenario

Dialect = Literal["nftables", "iptables"]

READY_WAIT = 30.0  # seconds a server gets to say "ready"
PROBE_WAIT = 240.0  # seconds a side's probes get, all of them
STOP_WAIT = 20.0
NEEDED_TOOLS = ("ip", "nft", "conntrack")
_serial = itertools.count(1)


class FirewallLabError(RuntimeError):
    """A step of the namespace lab failed (a command, a server that did not start, a probe that did not end)."""


def missing_tools(dialect: Dialect = "nftables") -> list[str]:
    tools = [*NEEDED_TOOLS[:1], "nft" if dialect == "nftables" else "iptables-restore", "conntrack"]
    return [tool for tool in tools if shutil.which(tool) is None]


def _ip(*argv: str) -> None:
    done = subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=10, check=False)
    if done.returncode != 0:
        raise FirewallLabError(f"ip {' '.join(argv)}: {done.stderr.strip()}")


class Namespaces:
    """ext, dmz, int and the router fw, joined by veth pairs; :meth:`close` deletes them all."""

    def __init__(self, scenario: Scenario) -> None:
        deployment = scenario.deployment
        if deployment is None:
            raise FirewallLabError(f"scenario '{scenario.name}' has no deployment: section")
        self.scenario = scenario
        self.nodes = [deployment.nodes[node.name] for node in scenario.edge_pool.nodes]
        self.ext_client = str(deployment.clients["fabrikam"].addresses[0])
        self.int_client = str(deployment.clients["frontend"].addresses[0])
        tag = f"esfw{os.getpid()}-{next(_serial)}"
        self.ns = {side: f"{tag}-{side}" for side in ("ext", "dmz", "int", "fw")}
        self._processes: list[subprocess.Popen[str]] = []

    def build(self) -> None:
        ns = self.ns
        try:
            for name in ns.values():
                _ip("netns", "add", name)
            for name in ns.values():
                _ip("-n", name, "link", "set", "lo", "up")
            legs = [("ext0", "ext", "eth0", "10.200.1"), ("dmz0", "dmz", "eth0", "10.200.2"),
                    ("eint0", "dmz", "eth1", "10.200.5"), ("int0", "int", "eth0", "10.200.4")]
            for fw_end, side, side_end, net in legs:
                _ip("-n", ns["fw"], "link", "add", fw_end, "type", "veth", "peer", "name", side_end, "netns",
                    ns[side])
                _ip("-n", ns["fw"], "addr", "add", f"{net}.1/24", "dev", fw_end)
                _ip("-n", ns["fw"], "link", "set", fw_end, "up")
                _ip("-n", ns[side], "link", "set", side_end, "up")
            _ip("-n", ns["ext"], "addr", "add", f"{self.ext_client}/24", "dev", "eth0")
            _ip("-n", ns["ext"], "route", "add", "default", "via", "10.200.1.1")
            _ip("-n", ns["int"], "addr", "add", f"{self.int_client}/24", "dev", "eth0")
            _ip("-n", ns["int"], "route", "add", "default", "via", "10.200.4.1")
            for node in self.nodes:
                for pair in (node.access, node.webconf, node.av):
                    _ip("-n", ns["dmz"], "addr", "add", f"{pair.private}/24", "dev", "eth0")
                _ip("-n", ns["dmz"], "addr", "add", f"{node.internal}/24", "dev", "eth1")
            _ip("-n", ns["dmz"], "route", "add", "default", "via", "10.200.2.1")
            _ip("-n", ns["dmz"], "route", "add", "10.200.4.0/24", "via", "10.200.5.1")
            sysctls = ["net.ipv4.ip_forward=1", "net.ipv4.conf.all.send_redirects=0",
                       "net.ipv4.conf.dmz0.send_redirects=0", "net.ipv4.conf.all.rp_filter=0"]
            self.run_in("fw", ["sysctl", "-q", "-w", *sysctls])
        except BaseException:
            self.close()
            raise

    def run_in(self, side: str, argv: list[str], stdin: str | None = None) -> str:
        done = subprocess.run(["ip", "netns", "exec", self.ns[side], *argv], input=stdin, capture_output=True,
                              text=True, timeout=30, check=False)
        if done.returncode != 0:
            raise FirewallLabError(f"{' '.join(argv)} in {side}: {done.stderr.strip()}")
        return done.stdout

    def load_text(self, dialect: Dialect, text: str) -> None:
        self.run_in("fw", ["nft", "-f", "-"] if dialect == "nftables" else ["iptables-restore"], stdin=text)

    def load(self, dialect: Dialect, **options: Any) -> str:
        text = firewall_ruleset(self.scenario, dialect, **options)
        self.load_text(dialect, text)
        return text

    def close(self) -> None:
        for process in self._processes:
            if process.poll() is None:
                process.kill()
            process.communicate(timeout=10)
        self._processes = []
        for name in self.ns.values():
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=10, check=False)


def _edgesim(*args: str) -> list[str]:
    return [sys.executable, "-m", "simulator.cli", *args]


class SplitLab:
    """The namespaces with every address of the deployment, and the edgesim processes started in them."""

    def __init__(self, scenario: Scenario, scenario_file: Path, work: Path, probe_timeout: float = 3.0) -> None:
        self.scenario = scenario
        self.scenario_file = scenario_file
        self.net = Namespaces(scenario)
        self.tmp = work
        self.pki = work / "pki"
        self.probe_timeout = probe_timeout
        self.servers: list[tuple[str, subprocess.Popen[str]]] = []
        self.said: list[str] = []  # what the servers printed before "ready"

    def build(self) -> None:
        self.net.build()
        try:
            deployment = self.scenario.deployment
            assert deployment is not None
            ext = {str(deployment.crl), str(deployment.dns.address)}
            internal: set[str] = set()
            for client in self.scenario.clients:
                placed = deployment.clients[client.name]
                side = internal if client.role in ("front-end", "director", "internal-user") else ext
                side.update(str(address) for address in placed.addresses)
                if placed.nat is not None:
                    side.add(str(placed.nat))
            for name, addresses, already in (("ext", ext, self.net.ext_client),
                                             ("int", internal, self.net.int_client)):
                for address in sorted(addresses - {already}):
                    self.net.run_in(name, ["ip", "addr", "add", f"{address}/24", "dev", "eth0"])
            done = subprocess.run(_edgesim("certs", "--scenario", str(self.scenario_file), "--out", str(self.pki)),
                                  capture_output=True, text=True, timeout=120, check=False)
            if done.returncode != 0:
                raise FirewallLabError(f"edgesim certs: {done.stderr.strip()}")
        except BaseException:
            self.close()
            raise

    def forget_flows(self) -> None:
        """No external flow left over from the last ruleset: conntrack would let an established one through a rule
        that is now gone. The Front End's persistent links to the Edge's internal interface stay, as they would
        through a real firewall's reload."""
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

    def load(self, dialect: Dialect = "nftables", **options: Any) -> None:
        self.net.load(dialect, **options)
        self.forget_flows()

    def load_text(self, dialect: Dialect, text: str) -> None:
        self.net.load_text(dialect, text)
        self.forget_flows()

    def _in(self, side: str, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.net.ns[side], *_edgesim(*args)]

    def _start(self, side: str, kind: str, *extra: str) -> tuple[Path, subprocess.Popen[str]]:
        observations = self.tmp / f"observed-{kind}{'-' + extra[1] if extra[:1] == ('--node',) else ''}.json"
        observations.unlink(missing_ok=True)
        argv = self._in(side, "serve", kind, str(self.scenario_file), "--pki", str(self.pki), "--observations",
                        str(observations), *extra)
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.servers.append((kind, process))
        return observations, process

    def _ready(self, kind: str, process: subprocess.Popen[str]) -> None:
        """Wait for ``<kind> ready``; lines before it (``metrics URL``) are kept in :attr:`said`. Reads the pipe's
        descriptor directly: a buffered readline could take both lines at once and leave select() waiting."""
        assert process.stdout is not None
        fd = process.stdout.fileno()
        deadline = time.monotonic() + READY_WAIT
        pending = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(fd, 4096) if ready else b""
            if not chunk:
                break  # timed out, or the server ended
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace").strip()
                if line.startswith(f"{kind} ready"):
                    return
                if line:
                    self.said.append(line)
        process.kill()
        _, err = process.communicate(timeout=10)
        raise FirewallLabError(f"serve {kind} did not start: {pending.decode(errors='replace')!r}\n{err[-3000:]}")

    def serve_all(self, metrics: str | None = None) -> list[Path]:
        """Both Edge nodes in dmz first (the Front End links to them at start), then the internal and the external
        side; returns the observation files. ``metrics``: ADDR:PORT for the external side's ``--metrics``."""
        edges = [self._start("dmz", "edge", "--node", node.name) for node in self.scenario.edge_pool.nodes]
        for _, process in edges:
            self._ready("edge", process)
        external = ("--metrics", metrics) if metrics else ()
        others = [("internal", self._start("int", "internal")), ("external", self._start("ext", "external", *external))]
        for kind, (_, process) in others:
            self._ready(kind, process)
        return [path for path, _ in edges] + [path for _, (path, _) in others]

    def probe_all(self, *, load: bool = False) -> list[dict[str, Any]]:
        """Every side's probes, as people on the three sides would run them: each Edge node's own lookups in dmz and
        the Front End's in int at once, then the outside's in ext, given what the others found."""
        for old in self.tmp.glob("side-*.json"):
            old.unlink()
        first = self._probe_runs([*(("dmz", "edge", "--node", node.name) for node in self.scenario.edge_pool.nodes),
                                  ("int", "internal")])
        given = ["--given", *map(str, sorted(self.tmp.glob("side-*.json")))]
        return first + self._probe_runs([("ext", "external", *(["--load"] if load else []), *given)])

    def _probe_runs(self, runs: list[tuple[str, ...]]) -> list[dict[str, Any]]:
        started = []
        for side, probe_side, *extra in runs:
            out = self.tmp / f"side-{probe_side}{'-' + extra[-1] if extra and probe_side == 'edge' else ''}.json"
            argv = self._in(side, "probe", str(self.scenario_file), "--side", probe_side, "--pki", str(self.pki),
                            "--out", str(out), "--timeout", str(self.probe_timeout), *extra)
            started.append((out, subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
        documents = []
        for out, process in started:
            try:
                stdout, stderr = process.communicate(timeout=PROBE_WAIT)
            except subprocess.TimeoutExpired:
                process.kill()
                stdout, stderr = process.communicate(timeout=10)
            if process.returncode != 0:
                last = (stderr.strip() or stdout.strip() or "no output").splitlines()[-1]
                (self.tmp / f"{out.stem}.log").write_text(stdout + stderr, encoding="utf-8")
                raise FirewallLabError(f"probe {out.name} exited {process.returncode}: {last} "
                                       f"(whole output: {self.tmp / (out.stem + '.log')})")
            documents.append(json.loads(out.read_text()))
        return documents

    def snapshot(self, observed: list[Path]) -> None:
        """Ask every server for what arrived so far (SIGUSR1) and wait until each file is written."""
        for path in observed:
            path.unlink(missing_ok=True)
        for _, process in self.servers:
            process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if all(path.exists() for path in observed):
                time.sleep(0.2)  # let the last write finish
                return
            time.sleep(0.05)
        raise FirewallLabError("the servers did not write their observations at SIGUSR1")

    def stop_servers(self) -> None:
        for _, process in self.servers:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        failed = []
        for kind, process in self.servers:
            try:
                _, err = process.communicate(timeout=STOP_WAIT)
            except subprocess.TimeoutExpired:
                process.kill()
                _, err = process.communicate(timeout=10)
            if process.returncode != 0:
                failed.append(f"serve {kind} exited {process.returncode}: {err[-2000:]}")
        self.servers = []
        if failed:
            raise FirewallLabError("\n".join(failed))

    def merge(self, files: list[Path], out: Path | None = None) -> tuple[int, dict[str, Any], str]:
        folder = out or self.tmp / "merged"
        done = subprocess.run(_edgesim("report", "merge", *map(str, files), "--scenario", str(self.scenario_file),
                                       "--out", str(folder)),
                              capture_output=True, text=True, timeout=60, check=False,
                              env={**os.environ, "COLUMNS": "200"})
        report_file = folder / "report.json"
        if not report_file.exists():
            raise FirewallLabError(f"report merge wrote nothing: {done.stdout[-2000:]}{done.stderr[-2000:]}")
        return done.returncode, json.loads(report_file.read_text()), done.stdout + done.stderr

    def round(self, out: Path | None = None) -> dict[str, Any]:
        """Fresh servers (nothing one ruleset left, such as a held connection, leaks into the next), every side's
        probes, the merged report."""
        observed = self.serve_all()
        try:
            self.probe_all()
        finally:
            self.stop_servers()  # each writes what reached it
        _, report, _ = self.merge(sorted(self.tmp.glob("side-*.json")) + observed, out)
        return report

    def close(self) -> None:
        for _, process in self.servers:
            if process.poll() is None:
                process.kill()
            process.communicate(timeout=10)
        self.servers = []
        self.net.close()


# ------------------------------------------------------------------------------------------------------ the sweep


@dataclass
class SweepStep:
    """One ruleset with one group of same-packet rules taken out, and what the merged report said."""

    left_out: tuple[str, ...]
    seconds: float
    failed: dict[str, str] = field(default_factory=dict)  # rule id -> reason
    blocked: dict[str, str] = field(default_factory=dict)  # rule id -> the rule it waits for
    not_in_ruleset: list[str] = field(default_factory=list)  # ids no accept line carried
    # rules still in the ruleset that accept some of the group's packets too (E11 for E14's relay-sourced STUN)
    overlapped_by: tuple[str, ...] = ()

    @property
    def caught(self) -> bool:
        """Every rule of the group failed (the lab saw the hole) — the one thing a sweep step must show."""
        return all(rule_id in self.failed for rule_id in self.left_out)

    @property
    def collateral(self) -> dict[str, str]:
        """Rules outside the group that failed on their own (not blocked): an unexpected dependency or a ruleset
        that opens more than it says."""
        return {rule_id: why for rule_id, why in self.failed.items() if rule_id not in self.left_out}

    @property
    def still_open(self) -> list[str]:
        """Rules of the group that kept passing."""
        return [rule_id for rule_id in self.left_out if rule_id not in self.failed and rule_id not in self.blocked]

    @property
    def explained(self) -> bool:
        """Caught, or what stayed open is accepted by an overlapping rule the sweep left in."""
        return self.caught or (bool(self.overlapped_by) and not self.collateral)

    def to_dict(self) -> dict[str, Any]:
        return {"left_out": list(self.left_out), "seconds": round(self.seconds, 1), "caught": self.caught,
                "still_open": self.still_open, "overlapped_by": list(self.overlapped_by),
                "failed": self.failed, "blocked": self.blocked, "collateral": self.collateral,
                "not_in_ruleset": self.not_in_ruleset}


@dataclass
class SweepResult:
    baseline: SweepStep
    steps: list[SweepStep]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline.to_dict(), "steps": [step.to_dict() for step in self.steps],
                "seconds": round(self.seconds, 1), "groups": len(self.steps),
                "caught": sum(step.caught for step in self.steps),
                "open_by_overlap": sum(step.explained and not step.caught for step in self.steps)}


def _moved(report: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    failed, blocked = {}, {}
    for rule in report["rules"]:
        if rule["verdict"] == "blocked":
            blocked[rule["id"]] = str(rule.get("blocked_by") or "")
        elif rule["verdict"] != "pass":
            failed[rule["id"]] = str(rule.get("reason") or rule["verdict"])
    return failed, blocked


def sweep(scenario: Scenario, scenario_file: Path, work: Path, *, ruleset: str | None = None,
          dialect: Dialect = "nftables", only: Iterable[str] = (), probe_timeout: float = 3.0,
          progress: Callable[[SweepStep, int, int], None] | None = None) -> SweepResult:
    """The baseline (``ruleset``, or the emitted one, whole), then one round per group of same-packet rules with that
    group's accept lines removed. ``only``: just the groups holding these ids."""
    base = ruleset if ruleset is not None else firewall_ruleset(scenario, dialect)
    chosen = set(only)
    overlaps = overlapping_rules(scenario)
    groups = [group for group in same_packet_groups(scenario) if not chosen or chosen & set(group)]
    started = time.monotonic()
    lab = SplitLab(scenario, scenario_file, work, probe_timeout)
    lab.build()
    try:
        def step(left_out: tuple[str, ...]) -> SweepStep:
            text, missing = without_rules(base, left_out)
            began = time.monotonic()
            lab.load_text(dialect, text)
            folder = work / ("baseline" if not left_out else "without-" + "-".join(left_out))
            failed, blocked = _moved(lab.round(folder))
            over = tuple(dict.fromkeys(o for rule_id in left_out for o in overlaps[rule_id] if o not in left_out))
            return SweepStep(left_out, time.monotonic() - began, failed, blocked, missing, over)

        baseline = step(())
        if progress is not None:
            progress(baseline, 0, len(groups))
        steps = []
        for index, group in enumerate(groups, 1):
            steps.append(step(group))
            if progress is not None:
                progress(steps[-1], index, len(groups))
    finally:
        lab.close()
    return SweepResult(baseline, steps, time.monotonic() - started)


def known_ids(ids: Iterable[str]) -> list[str]:
    return [rule_id for rule_id in ids if rule_id not in RULES_BY_ID]
