"""Load phases and node failures: DNS load balancing, client failover policies and their measurements.

After the rule probes, ``run_load`` replays the scenario's ``load`` phases — remote users signing in
through the Access Edge the way Lync clients do — and its ``events`` (a pool node stopped mid-run):

* each user resolves the pool's access name through the lab DNS server (one A record per node) and picks
  an address with its population's resolver policy (research-lync-edge §2.2): ``lync`` shuffles all
  records, fails over to the next on error and penalises a failed address for 10 minutes; ``legacy`` (OCS
  2007/R2 federation, PIC) takes one address and keeps it, with no failover;
* it connects through its population's NAT box when it has one, signs in (REGISTER, 401, REGISTER, 200)
  and keeps its TLS connection open;
* when the node it is on goes away its connection ends; a ``lync`` user reports the address as failed
  and signs in again through its policy (re-homing to another node), a ``legacy`` user retries its one
  address a few times and is reported lost;
* the report gives the spread of users over the nodes, who re-homed where and how long it took (HDR
  percentiles of the time from losing the connection to the next 200 OK), and who was lost.

Every loop is bounded: users by ``max_sessions``, time by the phase ``duration``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

from simulator.core.dns_policy import make_resolver_policy
from simulator.lab.access import SIP_TLS_PORT, Account, tls_opener, user_accounts
from simulator.lab.names import DNS_PORT
from simulator.lab.topology import Lab
from simulator.net.clients.sip_client import RemoteUser, SipClient
from simulator.net.transport.resolver import ResolverError, StubResolver
from simulator.net.transport.tls import client_context
from simulator.outcome import ProbeFailure
from simulator.scenario.calls import CallsReport, check_calls, phase_span, run_calls_phase
from simulator.spec.schema import DnsPolicy, LoadPhase, Scenario, StopNode

LEGACY_RETRIES = 3
LEGACY_RETRY_GAP = 0.2

# Which node services a ``stop_node`` event stops, by the service group the scenario names.
SERVICE_GROUPS: dict[str, tuple[str, ...]] = {
    "access": ("access-edge", "sip-", "mras", "xmpp-"),
    "webconf": ("psom-",),
    "av": ("av-",),
    "internal": ("cms", "cls-", "psom-internal", "xmpp-gateway", "mras", "sip-5061-internal"),
}


@dataclass
class SessionRecord:
    user: str
    population: str
    policy: DnsPolicy
    home: str | None = None
    error: str | None = None
    lost_connection_at: float | None = None
    rehomed_to: str | None = None
    failover_ms: float | None = None
    lost: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"user": self.user, "population": self.population, "policy": str(self.policy), "home": self.home,
                "error": self.error, "rehomed_to": self.rehomed_to,
                "failover_ms": None if self.failover_ms is None else round(self.failover_ms, 3), "lost": self.lost}


@dataclass
class LoadReport:
    sessions: list[SessionRecord] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    duration_s: float = 0.0
    calls: CallsReport = field(default_factory=CallsReport)
    meter: LoadMeter | None = None  # load control: per-second rates, sign-in latency (issue 12)

    def spread(self, population: str | None = None) -> dict[str, int]:
        return dict(Counter(s.home for s in self.sessions if s.home and population in (None, s.population)))

    def failover_stats(self) -> dict[str, float | int]:
        histogram = HdrHistogram(1, 60_000_000, 3)  # µs, 1 µs .. 60 s, 3 significant digits
        for session in self.sessions:
            if session.failover_ms is not None:
                histogram.record_value(max(1, int(session.failover_ms * 1000)))
        count = histogram.get_total_count()
        if not count:
            return {"count": 0}
        return {"count": count, **{f"p{p}_ms": histogram.get_value_at_percentile(p) / 1000 for p in (50, 90, 99)},
                "max_ms": histogram.get_max_value() / 1000}

    def to_dict(self, nodes: list[str], stopped: set[str]) -> dict[str, Any]:
        populations = sorted({s.population for s in self.sessions})
        return {
            "duration_s": round(self.duration_s, 3),
            "events": self.events,
            "populations": {
                population: {
                    "sessions": sum(s.population == population for s in self.sessions),
                    "signed_in": sum(s.population == population and s.home is not None for s in self.sessions),
                    "spread": {node: self.spread(population).get(node, 0) for node in nodes},
                    "on_stopped_nodes": sum(s.population == population and s.home in stopped for s in self.sessions),
                    "rehomed": sum(s.population == population and s.rehomed_to is not None for s in self.sessions),
                    "lost": sum(s.population == population and s.lost for s in self.sessions),
                }
                for population in populations
            },
            "spread": {node: self.spread().get(node, 0) for node in nodes},
            "signed_in": sum(s.home is not None for s in self.sessions),
            "sign_ins_per_s": round(sum(s.home is not None for s in self.sessions) / self.duration_s, 3)
            if self.duration_s else 0.0,
            "failures": dict(Counter(s.error.split(":")[0] for s in self.sessions if s.error)),
            "failover": self.failover_stats(),
            "sessions": [s.to_dict() for s in self.sessions],
            "calls": self.calls.to_dict(nodes) if self.calls.records else None,
            "control": self.meter.to_dict(self.duration_s) if self.meter is not None else None,
        }


class _Session:
    """One remote user's life in a load phase."""

    def __init__(self, lab: Lab, account: Account, record: SessionRecord, address_node: dict[str, str],
                 timeout: float, deadline: float) -> None:
        self.lab = lab
        self.account = account
        self.record = record
        self.address_node = address_node
        self.timeout = timeout
        self.deadline = deadline
        seed = f"{lab.scenario.seed}:load:{account.user}"
        self.rng = random.Random(seed)
        self.policy = make_resolver_policy(str(record.policy), random.Random(seed + ":policy"))
        assert lab.files is not None
        self.context = client_context(lab.files.ca)
        self.resolver = StubResolver(lab.plan.host("dns").address, lab.port_map(DNS_PORT), timeout=timeout,
                                     source=account.host)
        self.cached: list[str] = []

    async def _sign_in(self, addresses: list[str], use_policy: bool) -> SipClient:
        pool = self.lab.scenario.edge_pool
        client = await SipClient.connect(addresses, self.lab.port_map(SIP_TLS_PORT), self.context, pool.access_fqdn,
                                         self.timeout, self.rng, source=self.account.host,
                                         policy=self.policy if use_policy else None,
                                         opener=tls_opener(self.lab, self.account.host, self.timeout))
        try:
            user = RemoteUser(client, self.account.user, self.account.domain, self.account.password)
            await user.sign_in(self.timeout)
        except BaseException:
            await client.close()
            raise
        return client

    def _node_of(self, client: SipClient) -> str:
        return self.address_node.get(client.connection.peer[0], client.connection.peer[0])

    async def run(self) -> None:
        pool = self.lab.scenario.edge_pool
        try:
            records = await self.resolver.resolve_a(pool.access_fqdn)
        except (ResolverError, OSError) as error:
            self.record.error = f"DNS: {error}"
            return
        lync = self.record.policy is DnsPolicy.LYNC
        # Legacy clients take one address and keep it (no failover); Lync clients keep all records.
        self.cached = records if lync else self.policy.candidates(records, time.monotonic())[:1]
        try:
            client: SipClient | None = await self._sign_in(self.cached, use_policy=lync)
        except (ProbeFailure, OSError) as failure:
            self.record.error = str(failure)
            return
        assert client is not None
        self.record.home = self._node_of(client)
        try:
            while client is not None:
                await client.wait_closed()
                await client.close()
                if asyncio.get_running_loop().time() >= self.deadline:
                    return
                lost_at = time.perf_counter()
                self.record.lost_connection_at = lost_at
                self.policy.report_failure(client.connection.peer[0], time.monotonic())
                client = await self._recover(lync)
                if client is None:
                    self.record.lost = True
                    return
                self.record.rehomed_to = self._node_of(client)
                self.record.failover_ms = (time.perf_counter() - lost_at) * 1000
        finally:
            if client is not None:
                await client.close()

    async def _recover(self, lync: bool) -> SipClient | None:
        attempts = 1 if lync else LEGACY_RETRIES
        for attempt in range(attempts):
            try:
                return await self._sign_in(self.cached, use_policy=lync)
            except (ProbeFailure, OSError):
                if attempt + 1 < attempts:
                    await asyncio.sleep(LEGACY_RETRY_GAP)
        return None


def check_load(report: LoadReport, scenario: Scenario) -> list[str]:
    """What in the load report contradicts the scenario's ``expect_load``; empty when all holds."""
    expect = scenario.expect_load
    nodes = [node.name for node in scenario.edge_pool.nodes]
    stopped = {event["stop_node"] for event in report.events if event["service"] in ("all", "access")}
    problems: list[str] = []
    if expect.spread_tolerance is not None:
        spread = report.spread()
        total = sum(spread.values())
        if total == 0:
            problems.append("no user signed in")
        for node in nodes:
            share = spread.get(node, 0) / total if total else 0.0
            if abs(share - 1 / len(nodes)) > expect.spread_tolerance:
                problems.append(f"{node} took {share:.0%} of the users, outside {1 / len(nodes):.0%} "
                                f"± {expect.spread_tolerance:.0%}")
    if expect.failover == "complete":
        for session in report.sessions:
            if session.home not in stopped:
                continue
            if session.policy is DnsPolicy.LYNC and (session.rehomed_to is None or session.rehomed_to in stopped):
                problems.append(f"{session.user} (lync) was not re-homed off {session.home}")
            if session.policy is DnsPolicy.LEGACY and not session.lost:
                problems.append(f"{session.user} (legacy) was not reported lost")
        if not stopped:
            problems.append("expect_load.failover is set but no event stopped a node's Access Edge")
    return problems + check_calls(report.calls, scenario)


async def _apply(lab: Lab, event: StopNode) -> dict[str, Any]:
    node = lab.nodes[event.stop_node]
    if event.service == "all":
        names = list(node.services)
        await node.stop()
    else:
        prefixes = SERVICE_GROUPS[event.service]
        names = [name for name in node.services if name.startswith(prefixes)]
        for name in names:
            await node.stop_service(name)
    return {"at": event.at, "stop_node": event.stop_node, "service": event.service, "stopped": names}


# ------------------------------------------------------------------------------ load control (issue 12)
# SIPp semantics: ``rate`` new sessions per second (open loop), raised by ``rate_increase`` every
# ``rate_interval`` seconds up to ``rate_max`` (-rate_increase/-rate_interval/-rate_max); at most
# ``concurrency`` sessions in flight (-l); ``count`` sessions in all (-m); ``closed_loop``: a session starts when
# one is answered, ``concurrency`` (default 1) at a time. "In flight": started, its sign-in not answered yet.


def target_rate(phase: LoadPhase, elapsed: float) -> float | None:
    """The phase's target start rate (sessions/s) ``elapsed`` seconds into it; None in closed loop."""
    if phase.closed_loop:
        return None
    if phase.rate_increase is None:
        return phase.rate
    raised = phase.rate + phase.rate_increase * int(elapsed // phase.rate_interval)
    return min(raised, phase.rate_max) if phase.rate_max is not None else raised


def phase_total(phase: LoadPhase, available: int) -> int:
    """How many sessions the phase starts at most: its count, max_sessions and the population's users."""
    return min(available, phase.max_sessions, phase.count if phase.count is not None else phase.max_sessions)


def failure_reason(error: BaseException) -> str:
    if isinstance(error, ProbeFailure):
        return str(error.reason)
    if isinstance(error, ResolverError):
        return "dns"
    return type(error).__name__.lower()


class LoadMeter:
    """Counts of the load as it runs: starts, answers and failures per second, sign-in latency (HDR, µs)."""

    def __init__(self, phases: list[LoadPhase], now: float) -> None:
        self.phases = phases
        self.start = now
        self.started: Counter[int] = Counter()  # second index → sessions started in it
        self.ok_at: Counter[int] = Counter()
        self.failed_at: Counter[int] = Counter()
        self.failures: Counter[str] = Counter()
        self.in_flight = 0
        self.in_flight_of: Counter[str] = Counter()  # phase name → its sessions in flight
        self.ok = 0
        self.failed = 0
        self.latency = HdrHistogram(1, 60_000_000, 3)  # µs
        self.answered = asyncio.Event()
        # workload im: each IM (INVITE, MESSAGE, BYE through the Access Edge) after a sign-in
        self.im_ok = 0
        self.im_failures: Counter[str] = Counter()
        self.im_latency = HdrHistogram(1, 60_000_000, 3)  # µs

    def _second(self, now: float) -> int:
        return max(0, int(now - self.start))

    def target(self, elapsed: float) -> float | None:
        """The summed target of the phases running ``elapsed`` s in; None when every running one is closed-loop."""
        rates = [target_rate(p, elapsed) for p in self.phases if elapsed < p.duration]
        known = [rate for rate in rates if rate is not None]
        return round(sum(known), 3) if known else None

    def began(self, now: float, phase: str) -> None:
        self.started[self._second(now)] += 1
        self.in_flight += 1
        self.in_flight_of[phase] += 1

    def left(self, phase: str) -> None:
        """A session no longer in flight (answered, or cancelled unanswered)."""
        self.in_flight -= 1
        self.in_flight_of[phase] -= 1
        self.answered.set()

    def answer(self, now: float, began: float, error: BaseException | None, phase: str) -> None:
        self.left(phase)
        if error is None:
            self.ok += 1
            self.ok_at[self._second(now)] += 1
            self.latency.record_value(max(1, int((now - began) * 1_000_000)))
        else:
            self.failed += 1
            self.failed_at[self._second(now)] += 1
            self.failures[failure_reason(error)] += 1

    def message(self, now: float, began: float, error: BaseException | None) -> None:
        """One IM answered (``error`` None) or failed."""
        if error is None:
            self.im_ok += 1
            self.im_latency.record_value(max(1, int((now - began) * 1_000_000)))
        else:
            self.im_failures[failure_reason(error)] += 1

    def im_dict(self) -> dict[str, Any] | None:
        failed = sum(self.im_failures.values())
        if not self.im_ok and not failed:
            return None
        histogram: dict[str, Any] = {"count": self.im_latency.get_total_count()}
        if histogram["count"]:
            histogram |= {f"p{p}_ms": self.im_latency.get_value_at_percentile(p) / 1000 for p in (50, 90, 99)}
            histogram |= {"max_ms": self.im_latency.get_max_value() / 1000}
        return {"sent": self.im_ok + failed, "ok": self.im_ok, "failed": failed,
                "im_ok_ratio": round(self.im_ok / (self.im_ok + failed), 6), "failures": dict(self.im_failures),
                "im_ms": histogram}

    async def slot(self, phase: str, limit: int) -> None:
        """Wait until fewer than ``limit`` sessions of ``phase`` are in flight."""
        while self.in_flight_of[phase] >= limit:
            self.answered.clear()
            await self.answered.wait()

    def percentile_ms(self, percentile: float) -> float | None:
        if not self.latency.get_total_count():
            return None
        return float(self.latency.get_value_at_percentile(percentile)) / 1000

    def live(self, now: float) -> dict[str, Any]:
        """The live figures at ``now``: the last full second's start rate against its target."""
        elapsed = now - self.start
        last = max(0, int(elapsed) - 1)
        return {"t": round(elapsed, 1), "rate": float(self.started[last]), "target": self.target(last + 0.5),
                "in_flight": self.in_flight, "ok": self.ok, "failed": self.failed,
                "failures": dict(self.failures), "p50_ms": self.percentile_ms(50), "p99_ms": self.percentile_ms(99)}

    def per_second(self, duration: float) -> list[dict[str, Any]]:
        """One row per second of the run: target and achieved start rate, answers."""
        seconds = max(1, int(duration + 0.9))  # a last partial second under 0.1 s (the phases' wind-down) is left out
        return [{"t": second, "target": self.target(second + 0.5), "started": self.started[second],
                 "ok": self.ok_at[second], "failed": self.failed_at[second]} for second in range(seconds)]

    def to_dict(self, duration: float) -> dict[str, Any]:
        histogram = {"count": self.latency.get_total_count()}
        if histogram["count"]:
            histogram |= {f"p{p}_ms": self.latency.get_value_at_percentile(p) / 1000 for p in (50, 90, 99)}
            histogram |= {"max_ms": self.latency.get_max_value() / 1000,
                          "mean_ms": round(self.latency.get_mean_value() / 1000, 3)}
        answered = self.ok + self.failed
        return {"started": sum(self.started.values()), "ok": self.ok, "failed": self.failed,
                "sign_in_ok_ratio": round(self.ok / answered, 6) if answered else None,
                "failures": dict(self.failures), "sign_in_ms": histogram,
                "per_second": self.per_second(duration), "im": self.im_dict()}


class _MeteredSession(_Session):
    """A session whose first sign-in (from the start of its DNS look-up to the 200 OK) is counted."""

    def __init__(self, meter: LoadMeter, phase: str, *args: Any) -> None:
        super().__init__(*args)
        self.meter = meter
        self.phase = phase
        self.began = asyncio.get_running_loop().time()
        self.pending = True
        meter.began(self.began, phase)
        self.workload: LoadPhase | None = None  # set for workload im, with im_target
        self.im_target = ""
        self.im_task: asyncio.Task[None] | None = None

    def settle(self, error: BaseException | None) -> None:
        if self.pending:
            self.pending = False
            self.meter.answer(asyncio.get_running_loop().time(), self.began, error, self.phase)

    async def _sign_in(self, addresses: list[str], use_policy: bool) -> SipClient:
        try:
            client = await super()._sign_in(addresses, use_policy)
        except (ProbeFailure, OSError) as error:
            self.settle(error)
            raise
        self.settle(None)
        if self.workload is not None and self.im_task is None:
            self.im_task = asyncio.create_task(self._instant_messages(client))
        return client

    async def _instant_messages(self, client: SipClient) -> None:
        """Workload im: ``messages`` IMs ``message_interval`` s apart to the next user of the population (the
        Director answers for every user of the directory), each timed from INVITE to the BYE's 200."""
        phase, target = self.workload, self.im_target
        assert phase is not None
        user = RemoteUser(client, self.account.user, self.account.domain, self.account.password)
        loop = asyncio.get_running_loop()
        for index in range(phase.messages):
            await asyncio.sleep(phase.message_interval)
            if loop.time() >= self.deadline or client.is_closed:
                return
            began = loop.time()
            try:
                await user.instant_message(target, f"edgesim load IM {index + 1}", self.timeout)
            except (ProbeFailure, OSError) as error:
                self.meter.message(loop.time(), began, error)
            else:
                self.meter.message(loop.time(), began, None)

    async def run(self) -> None:
        try:
            await super().run()
        finally:
            if self.im_task is not None:
                self.im_task.cancel()
                await asyncio.gather(self.im_task, return_exceptions=True)
            if self.pending and self.record.error is not None:  # DNS failed before any sign-in
                self.settle(ResolverError(self.record.error))
            elif self.pending:  # cancelled at the end of the phase: not answered, no longer in flight
                self.pending = False
                self.meter.left(self.phase)


async def pace(phase: LoadPhase, total: int, meter: LoadMeter, phase_end: float,
               start_one: Callable[[int], None]) -> None:
    """Call ``start_one(index)`` ``total`` times at most, before ``phase_end``, as the phase's load control says."""
    loop = asyncio.get_running_loop()
    limit = phase.concurrency or (1 if phase.closed_loop else None)
    next_at = meter.start
    for index in range(total):
        if limit is not None and meter.in_flight_of[phase.name] >= limit:
            try:
                await asyncio.wait_for(meter.slot(phase.name, limit), max(0.001, phase_end - loop.time()))
            except TimeoutError:
                return
            next_at = max(next_at, loop.time())  # SIPp -l: a start held back is not caught up with a burst
        rate = target_rate(phase, next_at - meter.start)
        if rate is not None:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at += 1 / rate
        if loop.time() >= phase_end:
            return
        start_one(index)


async def run_load(lab: Lab, timeout: float | None = None, *, events: bool = True,
                   on_second: Callable[[dict[str, Any]], None] | None = None) -> LoadReport:
    """Run the scenario's load phases (concurrently) and events; returns the measurements.

    ``on_second``: called once a second with the live figures (:meth:`LoadMeter.live`).

    ``events=False``: the phases only (firewall lab mode: the nodes run in other processes, on other hosts).
    """
    scenario = lab.scenario
    timeout = timeout if timeout is not None else scenario.lab.probe_timeout
    loop = asyncio.get_running_loop()
    start = loop.time()
    report = LoadReport()
    meter = report.meter = LoadMeter([phase for phase in scenario.load if phase.calls is None], start)
    address_node = {lab.public_address(node.name, "access"): node.name for node in scenario.edge_pool.nodes}
    clients = {client.name: client for client in scenario.clients}
    accounts_by_population: dict[str, list[Account]] = {}
    for account in user_accounts(lab):
        accounts_by_population.setdefault(lab.plan.host(account.user).owner, []).append(account)
    end = start + max((phase_span(phase) for phase in scenario.load), default=0.0)
    tasks: list[asyncio.Task[None]] = []

    async def phase_runner(phase: LoadPhase) -> None:
        """Start the phase's sessions at its rate; at the end of its own duration, end them."""
        if phase.calls is not None:  # a calls phase: simulator.scenario.calls
            await run_calls_phase(lab, phase, report.calls, timeout)
            return
        population = clients[phase.clients]
        accounts = accounts_by_population.get(phase.clients, [])
        phase_end = start + phase.duration
        mine: list[asyncio.Task[None]] = []

        def start_one(index: int) -> None:
            record = SessionRecord(accounts[index].user, phase.clients, population.effective_dns_policy)
            report.sessions.append(record)
            session = _MeteredSession(meter, phase.name, lab, accounts[index], record, address_node, timeout,
                                      phase_end)
            if phase.workload == "im":
                session.workload = phase
                session.im_target = accounts[(index + 1) % len(accounts)].aor
            mine.append(asyncio.create_task(session.run()))
            tasks.append(mine[-1])

        try:
            await pace(phase, phase_total(phase, len(accounts)), meter, phase_end, start_one)
            await asyncio.sleep(max(0.0, phase_end - loop.time()))
        finally:
            for task in mine:
                task.cancel()
            await asyncio.gather(*mine, return_exceptions=True)

    async def event_runner(event: StopNode) -> None:
        await asyncio.sleep(max(0.0, start + event.at - loop.time()))
        report.events.append({**await _apply(lab, event), "applied_at": round(loop.time() - start, 3)})

    runners = [asyncio.create_task(phase_runner(phase)) for phase in scenario.load]
    runners += [asyncio.create_task(event_runner(event)) for event in scenario.events if events]

    ticked = [0]  # the last second a live line was given for

    async def ticker(report_to: Callable[[dict[str, Any]], None]) -> None:
        for second in range(1, int(end - start) + 2):  # bounded: the load's own length
            await asyncio.sleep(max(0.0, start + second - loop.time()))
            report_to(meter.live(loop.time()))
            ticked[0] = second

    ticking = [asyncio.create_task(ticker(on_second))] if on_second is not None and meter.phases else []
    try:
        if runners:  # a calls phase may end before its span; the others end at their duration
            await asyncio.wait(runners, timeout=max(0.0, end - loop.time()))
    finally:
        for task in [*runners, *tasks, *ticking]:
            task.cancel()
        await asyncio.gather(*runners, *tasks, *ticking, return_exceptions=True)
        if ticking and on_second is not None:  # the last whole second, when the load ended just as it did
            for second in range(ticked[0] + 1, int(loop.time() - start + 0.05) + 1):
                on_second(meter.live(start + second))
    report.duration_s = loop.time() - start
    return report
