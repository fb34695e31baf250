"""The ``calls`` load phase: remote users call each other through the pool, ICE then RTP media, measured.

For each call (placed at the phase's ``rate`` until ``calls.count``, round-robin over the ``pairs``):

* the caller is a remote user of its population, behind its population's NAT box; it signs in through the
  Access Edge the lab DNS and its population's resolver policy picked, and gets A/V credentials from MRAS over
  that connection (provisioning, SERVICE), as a Lync client does. The callee depends on the call's kind:

  - ``remote-remote``: another remote user, set up the same way;
  - ``remote-internal``: a user of an ``internal-user`` population, at its intranet address (no NAT). It resolves
    the pool's internal name, gets A/V credentials the way its Front End does (MRAS over mutual TLS on the
    node's internal interface, location INTRANET) and allocates its relay on that node's *internal* A/V Edge
    interface (the relay address is the public A/V one). Its SIP side is the Director (or the Front End when
    there is none): ``internal_users`` + ``on_invite`` answer for it. An :class:`IntranetGate` stands for the
    perimeter: its sockets exchange datagrams only with intranet addresses (the nodes' internal interfaces, the
    Front End, the Director, internal users), so the Internet never reaches its host candidates — on a
    loopback lab nothing else would stop it;
  - ``remote-federated``: a user of a ``federated-partner`` population, at the partner's address (the "Any" side
    of E11/E13), answered by the partner's Edge (``PartnerEdgeServer.on_invite``). Host candidates only: the
    partner's own A/V Edge (its STUN/TURN) is outside the lab, and a user on a public address needs none of
    ours, so it offers what it really has — its address;
* each resolves the pool's A/V name through the lab DNS and takes the first address its policy offers; the
  401 of the Allocate pins it to that node (ALTERNATE-SERVER, handled by the MS-TURN client);
* both run an :class:`~simulator.net.clients.ice.IceSession` (host, server-reflexive, relay candidates);
  the SDP goes through a :class:`Signalling` — SIP (INVITE / 183 / 200 / re-INVITE / BYE through the
  Access Edges, ``simulator.net.clients.call``) or an in-process hand-over (unit tests);
* after ICE both sides send the media profile for ``call_duration`` seconds (RTP + RTCP).

Recorded per call: its kind, ICE outcome as QoE names it (DIRECT / RELAY / FAILED + warning flags), the selected pair,
time to connected, checks sent, which pool node relayed each leg, the media figures each way under the
Network Assessment Tool's names. Aggregated: a caller-NAT × callee-NAT matrix, the node spread of relayed
legs and the relayed throughput per node.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from hdrh.histogram import HdrHistogram

from simulator.core.dns_policy import make_resolver_policy
from simulator.core.impairment import Impairment, PathImpairment
from simulator.core.media import MediaProfile, MediaSession, MediaStats, audio_profile, video_profile
from simulator.lab.access import SIP_TLS_PORT, Account, frontend_mras_credentials, tls_opener, user_accounts
from simulator.lab.addressing import HostKind
from simulator.lab.av import TURN_UDP_PORT
from simulator.lab.clients import nat_for
from simulator.lab.names import DNS_PORT
from simulator.lab.topology import Lab
from simulator.net.clients.ice import IceFailed, IceOutcome, IceSession
from simulator.net.clients.media import MediaRunner, ntp_offset
from simulator.net.clients.sip_client import RemoteUser, SipClient
from simulator.net.nat.gate import Gateway, IntranetGate
from simulator.net.peers.frontend import FrontEndServer
from simulator.net.peers.sip_partner import PartnerEdgeServer
from simulator.net.transport.resolver import ResolverError, StubResolver
from simulator.outcome import ProbeFailure, Reason
from simulator.spec.schema import CallKind, CallsSpec, ClientNat, ClientRole, LoadPhase, MediaSpec, Scenario
from simulator.wire import mras
from simulator.wire.stun import Address

MEDIA_LINGER = 0.3  # seconds each side keeps receiving after its BYE (the peer's last packets)
WATCH_INTERVAL = 0.25  # seconds between two looks at each side's received-packet count during a call
COMPLETED = "completed"
MEDIA_LOST = "media-lost-mid-call"
_MAPPING = {"endpoint-independent": "EIM", "address-dependent": "ADM", "address-and-port-dependent": "APDM"}
_FILTERING = {"endpoint-independent": "EIF", "address-dependent": "ADF", "address-and-port-dependent": "APDF"}


def nat_label(nat: ClientNat | None) -> str:
    """``EIM/APDF`` (RFC 4787 mapping/filtering) or ``none``."""
    if nat is None:
        return "none"
    return f"{_MAPPING[str(nat.mapping)]}/{_FILTERING[str(nat.filtering)]}"


def media_profile(spec: MediaSpec) -> MediaProfile:
    if spec.kind == "video":
        return video_profile(frame_rate=spec.frame_rate, frame_size=spec.frame_size, max_payload=spec.max_payload,
                             rtcp_interval=spec.rtcp_interval)
    return audio_profile(spec.codec, packets_per_second=spec.packets_per_second, payload_size=spec.payload_size,
                         rtcp_interval=spec.rtcp_interval)


# ----------------------------------------------------------------------------------------- records


@dataclass
class CallRecord:
    call: int
    caller: str
    callee: str
    caller_population: str
    callee_population: str
    caller_nat: str
    callee_nat: str
    signalling: str
    kind: str = "remote-remote"
    ice: str = "FAILED"
    warning_flags: int = 0
    warnings: list[str] = field(default_factory=list)
    local_type: str | None = None
    local_transport: str | None = None
    remote_type: str | None = None
    remote_transport: str | None = None
    time_to_connected_ms: float | None = None
    checks_sent: int = 0
    relay_nodes: dict[str, str | None] = field(default_factory=lambda: {"caller": None, "callee": None})
    relayed_legs: list[str] = field(default_factory=list)  # "caller"/"callee": whose selected local is a relay
    # the A/V Edge interface each relayed leg allocated on: "external" (remote users) or "internal" (internal users)
    relay_interfaces: dict[str, str | None] = field(default_factory=lambda: {"caller": None, "callee": None})
    ice_by_side: dict[str, str] = field(default_factory=dict)  # each side's own QoE Ice (its local candidate)
    media: dict[str, dict[str, float | int | None]] = field(default_factory=dict)  # "caller"/"callee" → columns
    error: str | None = None
    phase: str = ""
    # how a connected call ended: completed (its whole call_duration of media) or media-lost-mid-call (a side
    # received nothing for calls.media_timeout seconds, e.g. its relay's A/V Edge stopped); None: never connected
    ended: str | None = None
    ended_after_s: float | None = None
    ended_reason: str | None = None

    @property
    def ended_nodes(self) -> list[str]:
        """The pool nodes the call's media went through when it lost its media (its relays), else []."""
        if self.ended != MEDIA_LOST:
            return []
        return sorted({node for leg in self.relayed_legs if (node := self.relay_nodes.get(leg))})

    @property
    def pair_type(self) -> str | None:
        if self.local_type is None:
            return None
        return f"{self.local_type}/{self.local_transport}→{self.remote_type}/{self.remote_transport}"

    def to_dict(self) -> dict[str, Any]:
        return {"call": self.call, "caller": self.caller, "callee": self.callee,
                "caller_population": self.caller_population, "callee_population": self.callee_population,
                "caller_nat": self.caller_nat, "callee_nat": self.callee_nat, "signalling": self.signalling,
                "kind": self.kind, "ice": self.ice, "ice_by_side": self.ice_by_side,
                "warning_flags": self.warning_flags, "warnings": self.warnings,
                "selected_pair": {"local_type": self.local_type, "local_transport": self.local_transport,
                                  "remote_type": self.remote_type, "remote_transport": self.remote_transport},
                "pair_type": self.pair_type,
                "time_to_connected_ms": None if self.time_to_connected_ms is None
                else round(self.time_to_connected_ms, 3),
                "checks_sent": self.checks_sent, "relay_nodes": self.relay_nodes, "relayed_legs": self.relayed_legs,
                "relay_interfaces": self.relay_interfaces, "media": self.media,
                "error": self.error, "phase": self.phase, "ended": self.ended,
                "ended_after_s": None if self.ended_after_s is None else round(self.ended_after_s, 3),
                "ended_reason": self.ended_reason, "ended_nodes": self.ended_nodes}


def _ttc(values: list[float]) -> dict[str, float | int]:
    histogram = HdrHistogram(1, 600_000_000, 3)  # µs
    for value in values:
        histogram.record_value(max(1, int(value * 1000)))
    count = histogram.get_total_count()
    if not count:
        return {"count": 0}
    return {"count": count, "p50_ms": histogram.get_value_at_percentile(50) / 1000,
            "p99_ms": histogram.get_value_at_percentile(99) / 1000, "max_ms": histogram.get_max_value() / 1000}


def _media_totals(records: list[CallRecord]) -> dict[str, Any]:
    sent = received = expected = lost = 0
    rtt_weighted = 0.0
    rtt_n = 0
    jitter: list[float] = []
    for record in records:
        for columns in record.media.values():
            sent += int(columns.get("PacketsSent") or 0)
            received += int(columns.get("PacketsReceived") or 0)
            expected += int(columns.get("Expected") or 0)
            lost += max(0, int(columns.get("PacketsLost") or 0))
            rtt = columns.get("RoundTripLatencyInMs")
            samples = int(columns.get("RttSamples") or 0)
            if rtt is not None and samples:
                rtt_weighted += float(rtt) * samples
                rtt_n += samples
            if columns.get("AverageJitterInMs") is not None:
                jitter.append(float(columns["AverageJitterInMs"] or 0.0))
    return {"PacketsSent": sent, "PacketsReceived": received, "PacketsLost": lost,
            "PacketLossRate": round(lost / expected, 6) if expected else 0.0,
            "RoundTripLatencyInMs": round(rtt_weighted / rtt_n, 3) if rtt_n else None,
            "AverageJitterInMs": round(sum(jitter) / len(jitter), 3) if jitter else None}


@dataclass
class CallsReport:
    records: list[CallRecord] = field(default_factory=list)
    elapsed_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    def matrix(self) -> list[dict[str, Any]]:
        cells: dict[tuple[str, str], list[CallRecord]] = {}
        for record in self.records:
            cells.setdefault((record.caller_nat, record.callee_nat), []).append(record)
        return [{"caller_nat": caller, "callee_nat": callee, "calls": len(group),
                 "outcomes": dict(Counter(r.ice for r in group)),
                 "pair_types": dict(Counter(r.pair_type for r in group if r.pair_type)),
                 "ttc": _ttc([r.time_to_connected_ms for r in group if r.time_to_connected_ms is not None])}
                for (caller, callee), group in sorted(cells.items())]

    def to_dict(self, nodes: list[str]) -> dict[str, Any]:
        legs = Counter(node for r in self.records for leg in r.relayed_legs if (node := r.relay_nodes.get(leg)))
        relayed_bytes: Counter[str] = Counter()
        for record in self.records:
            for leg in record.relayed_legs:
                node = record.relay_nodes.get(leg)
                columns = record.media.get(leg, {})
                if node:
                    relayed_bytes[node] += int(columns.get("BytesSent") or 0) + int(columns.get("BytesReceived") or 0)
        elapsed = self.elapsed_s or 1.0
        by_pair = {}
        for pair_type in sorted({r.pair_type for r in self.records if r.pair_type}):
            by_pair[pair_type] = _ttc([r.time_to_connected_ms for r in self.records
                                       if r.pair_type == pair_type and r.time_to_connected_ms is not None])
        return {
            "calls": len(self.records),
            "notes": list(self.notes),
            "elapsed_s": round(self.elapsed_s, 3),
            "outcomes": dict(Counter(r.ice for r in self.records)),
            "kinds": dict(Counter(r.kind for r in self.records)),
            "connected": sum(r.ice != "FAILED" for r in self.records),
            "matrix": self.matrix(),
            "ttc": _ttc([r.time_to_connected_ms for r in self.records if r.time_to_connected_ms is not None]),
            "ttc_by_pair_type": by_pair,
            "relayed_legs": {node: legs.get(node, 0) for node in nodes},
            "relayed_bytes": {node: relayed_bytes.get(node, 0) for node in nodes},
            "relayed_kbps": {node: round(relayed_bytes.get(node, 0) * 8 / elapsed / 1000, 3) for node in nodes},
            "media": _media_totals(self.records),
            "media_completed": _media_totals([r for r in self.records if r.ended == COMPLETED]),
            "ended": dict(Counter(r.ended for r in self.records if r.ended)),
            "media_lost_by_node": dict(Counter(node for r in self.records for node in r.ended_nodes)),
            "failures": dict(Counter((r.error or "").split(":")[0] for r in self.records if r.error)),
            "records": [r.to_dict() for r in self.records],
        }


# ----------------------------------------------------------------------------------------- parties and signalling


@dataclass
class Party:
    """One user ready to call or be called: a signed-in remote user (``client``/``user`` set), an internal user
    (answered by ``answered_by``, the Director or Front End) or a federated partner's user (``answered_by``,
    the partner's Edge)."""

    account: Account
    population: str
    nat_label: str
    user: RemoteUser | None
    client: SipClient | None
    username: str
    password: str
    turn_server: Address | None
    rng: random.Random
    where: str = "remote"  # remote | internal | federated
    interface: str | None = "external"  # the A/V Edge interface its relay is allocated on (None: no relay)
    answered_by: FrontEndServer | PartnerEdgeServer | None = None
    gate: IntranetGate | None = None


Answerer = Callable[[str], Awaitable[str]]


class Dialog(Protocol):
    async def reinvite(self, sdp: str, timeout: float) -> None: ...

    async def bye(self, timeout: float) -> None: ...


class Signalling(Protocol):
    """Carries the caller's offer to the callee's ``answer`` and the answer back; then the dialog."""

    name: str

    async def invite(self, caller: Party, callee: Party, offer: str, answer: Answerer,
                     timeout: float) -> tuple[str, Dialog]: ...


class _NoDialog:
    async def reinvite(self, sdp: str, timeout: float) -> None:
        return None

    async def bye(self, timeout: float) -> None:
        return None


class InProcessSignalling:
    """The SDP handed over in the process (unit tests; no SIP)."""

    name = "in-process"

    async def invite(self, caller: Party, callee: Party, offer: str, answer: Answerer,
                     timeout: float) -> tuple[str, Dialog]:
        return await asyncio.wait_for(answer(offer), timeout), _NoDialog()


class _SipDialog:
    def __init__(self, call: Any) -> None:
        self.call = call

    async def reinvite(self, sdp: str, timeout: float) -> None:
        await self.call.reinvite(sdp, timeout)

    async def bye(self, timeout: float) -> None:
        await self.call.bye(timeout)


class SipSignalling:
    """INVITE with the offer through the caller's Access Edge, answer in the 183/200, re-INVITE, BYE
    (``simulator.net.clients.call``). Several calls to one callee are told apart by the caller's URI."""

    name = "sip"

    def __init__(self) -> None:
        self.module: Any = importlib.import_module("simulator.net.clients.call")
        self._pending: dict[tuple[str, str], list[Answerer]] = {}
        self._last: dict[tuple[str, str], str] = {}
        self._hooked: set[str] = set()

    async def _answer(self, key: tuple[str, str], request_sdp: str) -> str:
        waiting = self._pending.get(key)
        if not waiting:  # a re-INVITE: same answer as before
            return self._last.get(key, "")
        answer = await waiting.pop(0)(request_sdp)
        self._last[key] = answer
        return answer

    def _hook(self, callee: Party) -> None:
        server = callee.answered_by
        if server is not None:  # the Director / Front End (internal users) or the partner's Edge answers
            if isinstance(server, FrontEndServer):
                server.internal_users.add(callee.account.aor)
            if f"server:{id(server)}" in self._hooked:
                return
            self._hooked.add(f"server:{id(server)}")

            async def on_server_invite(request_sdp: str, caller_uri: str, callee_uri: str) -> str:
                return await self._answer((_bare(callee_uri), _bare(caller_uri)), request_sdp)

            server.on_invite = on_server_invite
            return
        if callee.account.user in self._hooked:
            return
        self._hooked.add(callee.account.user)
        aor = callee.account.aor

        async def on_invite(request_sdp: str, caller_uri: str) -> str:
            return await self._answer((aor, _bare(caller_uri)), request_sdp)

        assert callee.client is not None
        callee.client.on_invite = on_invite

    async def invite(self, caller: Party, callee: Party, offer: str, answer: Answerer,
                     timeout: float) -> tuple[str, Dialog]:
        self._hook(callee)
        self._pending.setdefault((callee.account.aor, caller.account.aor), []).append(answer)
        assert caller.client is not None
        call = await self.module.SipCall.invite(caller.client, callee_uri=callee.account.aor, offer_sdp=offer,
                                                timeout=timeout, caller_uri=caller.account.aor)
        return str(call.answer_sdp), _SipDialog(call)


def _bare(uri: str) -> str:
    """``<sip:a@b>;tag=x`` → ``sip:a@b``."""
    uri = uri.strip()
    if "<" in uri:
        uri = uri[uri.index("<") + 1:uri.index(">")] if ">" in uri else uri[uri.index("<") + 1:]
    return uri.split(";")[0]


def make_signalling(spec: CallsSpec) -> tuple[Signalling, str | None]:
    """The signalling the spec asks for; SIP falls back to in-process (with the reason) if not available."""
    if spec.signalling == "in-process":
        return InProcessSignalling(), None
    try:
        return SipSignalling(), None
    except ImportError as error:
        return InProcessSignalling(), f"SIP calls unavailable ({error}): SDP exchanged in-process"


# ----------------------------------------------------------------------------------------- the phase


class _Phase:
    def __init__(self, lab: Lab, phase: LoadPhase, spec: CallsSpec, report: CallsReport, timeout: float) -> None:
        self.lab = lab
        self.phase = phase
        self.spec = spec
        self.report = report
        self.timeout = timeout
        self.signalling, self.note = make_signalling(spec)
        self.parties: dict[str, asyncio.Task[Party]] = {}
        self.clients = {client.name: client for client in lab.scenario.clients}
        self.accounts: dict[str, list[Account]] = {}
        for account in user_accounts(lab):
            self.accounts.setdefault(lab.plan.host(account.user).owner, []).append(account)
        for client in lab.scenario.clients:  # internal users and partner users: accounts with no password
            if client.role in (ClientRole.INTERNAL_USER, ClientRole.FEDERATED_PARTNER):
                domain = lab.scenario.domain if client.role is ClientRole.INTERNAL_USER else str(
                    client.domain or client.fqdn)
                self.accounts[client.name] = [Account(host.name, domain, "", host.address)
                                              for host in lab.plan.of(client.name, HostKind.CLIENT)]
        self.av_node = {lab.public_address(node.name, "av"): node.name for node in lab.scenario.edge_pool.nodes}
        nodes = lab.scenario.edge_pool.nodes
        self.internal_node = {lab.plan.one(node.name, HostKind.EDGE_INTERNAL).address: node.name for node in nodes}
        intranet = set(self.internal_node)
        for client in lab.scenario.clients:
            if client.role in (ClientRole.FRONT_END, ClientRole.DIRECTOR, ClientRole.INTERNAL_USER):
                intranet |= {host.address for host in lab.plan.of(client.name, HostKind.CLIENT)}
        self.intranet = frozenset(intranet)
        self.profile = media_profile(spec.media)
        self._next_user: Counter[str] = Counter()

    def apply_impairments(self) -> None:
        names = {pair.caller or self.phase.clients for pair in self.spec.pairs} | {p.callee for p in self.spec.pairs}
        for name in sorted(names):
            nat = self.clients[name].nat
            accounts = self.accounts.get(name, [])
            if nat is None or nat.impairment is None or not accounts:
                continue
            box = nat_for(self.lab, accounts[0].host)
            if box is not None:
                path = PathImpairment(inbound=Impairment(**nat.impairment.inbound.model_dump()),
                                      outbound=Impairment(**nat.impairment.outbound.model_dump()))
                box.set_impairment(path, random.Random(f"{self.lab.scenario.seed}:impairment:{name}"))

    def pick(self, population: str, avoid: Account | None = None) -> Account:
        accounts = self.accounts.get(population, [])
        if not accounts:
            raise ProbeFailure(Reason.NO_PEER, f"population {population} has no users")
        for _ in range(len(accounts)):
            account = accounts[self._next_user[population] % len(accounts)]
            self._next_user[population] += 1
            if account != avoid:
                return account
        return accounts[0]

    async def party(self, account: Account) -> Party:
        task = self.parties.get(account.user)
        if task is None:
            task = self.parties[account.user] = asyncio.ensure_future(self._sign_in(account))
        return await asyncio.shield(task)

    def _internal_server(self) -> FrontEndServer:
        """The internal users' SIP side: the Director when there is one (the Edges' next hop), else the Front End."""
        for role in (ClientRole.DIRECTOR, ClientRole.FRONT_END):
            for client in self.lab.scenario.clients_with_role(role):
                server = self.lab.services.get(f"sip-{client.name}")
                if isinstance(server, FrontEndServer):
                    return server
        raise ProbeFailure(Reason.NO_PEER, "no Director or Front End runs in this lab to answer for internal users")

    async def _internal_party(self, account: Account, population: str) -> Party:
        """An internal user: the pool's internal name through the lab DNS, A/V credentials the Front End's way
        (MRAS on that node's internal interface, INTRANET), its relay on that node's internal A/V Edge."""
        lab = self.lab
        pool = lab.scenario.edge_pool
        seed = f"{lab.scenario.seed}:calls:{account.user}"
        policy = make_resolver_policy(str(self.clients[population].effective_dns_policy),
                                      random.Random(seed + ":policy"))
        resolver = StubResolver(lab.plan.host("dns").address, lab.port_map(DNS_PORT), timeout=self.timeout,
                                source=account.host)
        try:
            internal = await resolver.resolve_a(pool.internal_fqdn)
        except (ResolverError, OSError) as error:
            raise ProbeFailure(Reason.PROTOCOL_ERROR, f"DNS: {error}") from error
        edge = policy.candidates(internal, time.monotonic())[0]
        node = self.internal_node.get(edge)
        if node is None:
            raise ProbeFailure(Reason.PROTOCOL_ERROR, f"{pool.internal_fqdn} gave {edge}, no node's internal address")
        rng = random.Random(seed)
        _, answer = await frontend_mras_credentials(lab, node, random.Random(rng.getrandbits(64)),
                                                    timeout=self.timeout, location=mras.MrasLocation.INTRANET,
                                                    identity=account.aor)
        if answer.credentials is None:
            raise ProbeFailure(Reason.PROTOCOL_ERROR, "MRAS answered the Front End without credentials")
        return Party(account, population, "intranet", None, None, answer.credentials.username,
                     answer.credentials.password, Address(edge, lab.port_map(TURN_UDP_PORT)), rng,
                     where="internal", interface="internal", answered_by=self._internal_server(),
                     gate=IntranetGate(self.intranet))

    def _federated_party(self, account: Account, population: str) -> Party:
        server = self.lab.services.get(f"sip-{population}")
        if not isinstance(server, PartnerEdgeServer):
            raise ProbeFailure(Reason.NO_PEER, f"federated partner {population}: its Edge does not run in this lab")
        rng = random.Random(f"{self.lab.scenario.seed}:calls:{account.user}")
        return Party(account, population, "partner", None, None, "", "", None, rng, where="federated",
                     interface=None, answered_by=server)

    async def _sign_in(self, account: Account) -> Party:
        lab = self.lab
        population = lab.plan.host(account.user).owner
        client_spec = self.clients[population]
        if client_spec.role is ClientRole.INTERNAL_USER:
            return await self._internal_party(account, population)
        if client_spec.role is ClientRole.FEDERATED_PARTNER:
            return self._federated_party(account, population)
        seed = f"{lab.scenario.seed}:calls:{account.user}"
        policy = make_resolver_policy(str(client_spec.effective_dns_policy), random.Random(seed + ":policy"))
        resolver = StubResolver(lab.plan.host("dns").address, lab.port_map(DNS_PORT), timeout=self.timeout,
                                source=account.host)
        pool = lab.scenario.edge_pool
        try:
            access = await resolver.resolve_a(pool.access_fqdn)
            av = await resolver.resolve_a(pool.av_fqdn)
        except (ResolverError, OSError) as error:
            raise ProbeFailure(Reason.PROTOCOL_ERROR, f"DNS: {error}") from error
        assert lab.files is not None
        rng = random.Random(seed)
        client = await SipClient.connect(access, lab.port_map(SIP_TLS_PORT), lab.user_client_context(),
                                         pool.access_fqdn, self.timeout, rng, source=account.host, policy=policy,
                                         opener=tls_opener(lab, account.host, self.timeout))
        try:
            user = RemoteUser(client, account.user, account.domain, account.password)
            await user.sign_in(self.timeout)
            await user.provisioning(self.timeout)
            answer = await user.request_mras(self.timeout, location=mras.MrasLocation.INTERNET)
            if answer.credentials is None:
                raise ProbeFailure(Reason.PROTOCOL_ERROR, "MRAS answered without credentials")
        except BaseException:
            await client.close()
            raise
        edge = policy.candidates(av, time.monotonic())[0]
        return Party(account, population, nat_label(client_spec.nat), user, client, answer.credentials.username,
                     answer.credentials.password, Address(edge, lab.port_map(TURN_UDP_PORT)), rng)

    def _ice(self, party: Party, role: str, runner: MediaRunner) -> IceSession:
        # An internal user's sockets go through its gate (a Gateway, as a NAT box is; no translation).
        nat: Gateway | None = party.gate if party.gate is not None else nat_for(self.lab, party.account.host)
        return IceSession(self.spec.ice, "controlling" if role == "caller" else "controlled",
                          random.Random(party.rng.getrandbits(64)), hosts=[party.account.host],
                          nat=nat, turn_server=party.turn_server,
                          turn_username=party.username, turn_password=party.password,
                          on_data=lambda data, _src: runner.datagram_received(data))

    def _media(self, party: Party) -> MediaSession:
        return MediaSession(self.profile, party.rng.getrandbits(32), random.Random(party.rng.getrandbits(64)),
                            cname=party.account.aor.removeprefix("sip:"),
                            ntp_offset=ntp_offset(asyncio.get_running_loop()))

    def _relay_node(self, session: IceSession) -> str | None:
        pair = session.selected
        if pair is None or str(pair.local.type) != "relay":
            return None
        host = str(pair.local.address.host)
        return self.av_node.get(host, host)

    def plan(self, caller_population: str, callee_population: str) -> tuple[Account, Account]:
        caller_account = self.pick(caller_population)
        return caller_account, self.pick(callee_population, avoid=caller_account)

    async def sign_in_all(self, accounts: list[Account], concurrency: int = 32) -> None:
        """Sign these users in ahead of the calls, ``concurrency`` at a time (failures show in their calls)."""
        slots = asyncio.Semaphore(concurrency)

        async def one(account: Account) -> None:
            async with slots:
                with contextlib.suppress(ProbeFailure, OSError, TimeoutError):
                    await self.party(account)

        await asyncio.gather(*(one(account) for account in accounts))

    def _nat_label(self, population: str) -> str:
        role = self.clients[population].role
        if role is ClientRole.INTERNAL_USER:
            return "intranet"
        if role is ClientRole.FEDERATED_PARTNER:
            return "partner"
        return nat_label(self.clients[population].nat)

    async def call(self, index: int, caller_population: str, callee_population: str,
                   accounts: tuple[Account, Account] | None = None, kind: CallKind = "remote-remote") -> None:
        caller_account, callee_account = accounts or self.plan(caller_population, callee_population)
        record = CallRecord(index, caller_account.user, callee_account.user, caller_population, callee_population,
                            self._nat_label(caller_population), self._nat_label(callee_population),
                            self.signalling.name, kind=kind, phase=self.phase.name)
        self.report.records.append(record)
        sessions: list[IceSession] = []
        try:
            caller, callee = await asyncio.gather(self.party(caller_account), self.party(callee_account))
            ice: dict[str, IceSession] = {}
            media = {"caller": MediaRunner(self._media(caller), lambda data: ice["caller"].send(data)),
                     "callee": MediaRunner(self._media(callee), lambda data: ice["callee"].send(data))}
            ice["caller"] = self._ice(caller, "caller", media["caller"])
            ice["callee"] = self._ice(callee, "callee", media["callee"])
            parties = {"caller": caller, "callee": callee}
            sessions = list(ice.values())
            await ice["caller"].gather(self.timeout)

            async def answer(offer: str) -> str:
                await ice["callee"].gather(self.timeout)
                ice["callee"].set_remote(offer)
                return ice["callee"].local_sdp()

            answer_sdp, dialog = await self.signalling.invite(caller, callee, ice["caller"].local_sdp(), answer,
                                                              self.timeout + self.spec.connect_timeout)
            ice["caller"].set_remote(answer_sdp)
            results = await asyncio.gather(*(s.connect(self.spec.connect_timeout) for s in sessions),
                                           return_exceptions=True)
            self._record_ice(record, ice, parties)
            failed = [r for r in results if isinstance(r, BaseException)]
            if failed:
                record.error = f"ICE: {failed[0]}"
                with contextlib.suppress(ProbeFailure, OSError, TimeoutError):
                    await dialog.bye(self.timeout)
                return
            await dialog.reinvite(ice["caller"].selected_sdp(), self.timeout)
            for runner in media.values():
                runner.start()
            await self._talk(record, media)
            stats = await asyncio.gather(*(runner.stop() for runner in media.values()))
            await asyncio.sleep(MEDIA_LINGER)
            for role, runner in media.items():
                record.media[role] = _columns(runner.session.stats(), stats[0 if role == "caller" else 1])
            with contextlib.suppress(ProbeFailure, OSError, TimeoutError):
                await dialog.bye(self.timeout)
        except (ProbeFailure, OSError, TimeoutError, IceFailed) as error:
            record.error = record.error or f"{type(error).__name__}: {error}"
        finally:
            for session in sessions:
                with contextlib.suppress(Exception):
                    await session.close()

    async def _talk(self, record: CallRecord, media: dict[str, MediaRunner]) -> None:
        """Media for ``call_duration``; ends early (media-lost-mid-call) when a side hears nothing for
        ``media_timeout`` seconds — what a client does when its relay goes away (no ICE restart here)."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        end = began + self.spec.call_duration
        heard = {role: (0, began) for role in media}
        while (now := loop.time()) < end:
            await asyncio.sleep(min(WATCH_INTERVAL, end - now))
            now = loop.time()
            for role, runner in media.items():
                received = runner.session.stats().packets_received
                if received != heard[role][0]:
                    heard[role] = (received, now)
                elif now - heard[role][1] >= self.spec.media_timeout:
                    record.ended, record.ended_after_s = MEDIA_LOST, now - began
                    record.ended_reason = (f"{role} received no media for {self.spec.media_timeout:g} s "
                                           f"({received} packets before)")
                    return
        record.ended, record.ended_after_s = COMPLETED, loop.time() - began

    def _record_ice(self, record: CallRecord, ice: dict[str, IceSession], parties: dict[str, Party]) -> None:
        outcome: IceOutcome = ice["caller"].outcome()
        callee_outcome = ice["callee"].outcome()
        record.ice_by_side = {"caller": outcome.ice, "callee": callee_outcome.ice}
        record.ice = outcome.ice if callee_outcome.ice != "FAILED" else "FAILED"
        record.warning_flags = outcome.warning_flags | callee_outcome.warning_flags
        record.warnings = [*outcome.warnings, *callee_outcome.warnings]
        record.local_type, record.local_transport = outcome.local_type, outcome.local_transport
        record.remote_type, record.remote_transport = outcome.remote_type, outcome.remote_transport
        record.time_to_connected_ms = None if outcome.time_to_connected is None else outcome.time_to_connected * 1000
        record.checks_sent = outcome.checks_sent + callee_outcome.checks_sent
        for role, session in ice.items():
            node = self._relay_node(session)
            record.relay_nodes[role] = node
            if node is not None:
                record.relayed_legs.append(role)
                record.relay_interfaces[role] = parties[role].interface

    async def close(self) -> None:
        for task in self.parties.values():
            if task.done() and not task.cancelled() and task.exception() is None:
                client = task.result().client
                if client is not None:
                    with contextlib.suppress(Exception):
                        await client.close()
            else:
                task.cancel()
        await asyncio.gather(*self.parties.values(), return_exceptions=True)


def _columns(final: MediaStats, _stopped: MediaStats) -> dict[str, float | int | None]:
    columns = final.columns()
    columns["Expected"] = final.expected
    columns["RttSamples"] = final.rtt_samples
    for key in ("PacketLossRate", "PacketReorderRatio", "AverageJitterInMs", "RoundTripLatencyInMs", "JitterInMs",
                "MaxJitterInMs"):
        value = columns.get(key)
        if isinstance(value, float):
            columns[key] = round(value, 6)
    return columns


def check_calls(report: CallsReport, scenario: Scenario) -> list[str]:
    """What the calls contradict in their phases' ``calls.expect``; empty when all holds."""
    nodes = [node.name for node in scenario.edge_pool.nodes]
    problems: list[str] = []
    for phase in scenario.load:
        expect = phase.calls.expect if phase.calls is not None else None
        if expect is None:
            continue
        label = f"calls phase {phase.name!r}"
        records = [r for r in report.records if r.phase == phase.name]
        if not records:
            problems.append(f"{label}: no call was placed")
            continue
        if expect.all_connected and (failed := [r for r in records if r.ice == "FAILED"]):
            problems.append(f"{label}: {len(failed)}/{len(records)} calls did not connect (call {failed[0].call}: "
                            f"{failed[0].error})")
        if expect.relay_spread_tolerance is not None:
            legs = Counter(node for r in records for leg in r.relayed_legs if (node := r.relay_nodes.get(leg)))
            total = sum(legs.values())
            if total < max(1, expect.min_relayed_legs):
                problems.append(f"{label}: {total} relayed legs, fewer than {max(1, expect.min_relayed_legs)} to "
                                "judge the relay spread on")
            else:
                for node in nodes:
                    share = legs.get(node, 0) / total
                    if abs(share - 1 / len(nodes)) > expect.relay_spread_tolerance:
                        problems.append(f"{label}: {node} relayed {share:.0%} of {total} relayed legs, outside "
                                        f"{1 / len(nodes):.0%} ± {expect.relay_spread_tolerance:.0%}")
        if expect.max_loss is not None:
            media = _media_totals([r for r in records if r.ended == COMPLETED])
            if not media["PacketsSent"]:
                problems.append(f"{label}: no call completed its media")
            elif media["PacketLossRate"] >= expect.max_loss:
                problems.append(f"{label}: media loss {media['PacketLossRate']:.3%} over the completed calls, not "
                                f"below {expect.max_loss:.3%}")
    return problems


def phase_span(phase: LoadPhase) -> float:
    """How long a phase may run: a calls phase also lets its last calls connect, talk and hang up."""
    if phase.calls is None:
        return phase.duration
    sign_in = 2 * phase.calls.count / 25 if phase.calls.sign_in_first else 0.0  # ≥ 25 sign-ins/s
    return phase.duration + sign_in + phase.calls.connect_timeout + phase.calls.call_duration + 15.0


async def run_calls_phase(lab: Lab, phase: LoadPhase, report: CallsReport, timeout: float) -> None:
    """Place the phase's calls at its rate (bounded by ``calls.count`` and the phase duration); wait for them."""
    spec = phase.calls
    assert spec is not None
    loop = asyncio.get_running_loop()
    began = start = loop.time()
    runner = _Phase(lab, phase, spec, report, timeout)
    if runner.note:
        report.notes.append(runner.note)
    runner.apply_impairments()
    tasks: list[asyncio.Task[None]] = []
    pairs = [(pair.caller or phase.clients, pair.callee) for pair in spec.pairs]
    kinds = [spec.kind_of(pair) for pair in spec.pairs]
    plans = [runner.plan(*pairs[index % len(pairs)]) for index in range(spec.count)]
    try:
        if spec.sign_in_first:
            await runner.sign_in_all(list(dict.fromkeys(account for plan in plans for account in plan)))
            start = loop.time()
            report.notes.append(f"{len(runner.parties)} users signed in before the first call "
                                f"({start - began:.1f} s)")
        for index in range(spec.count):
            await asyncio.sleep(max(0.0, start + index / phase.rate - loop.time()))
            if loop.time() >= start + phase.duration:
                break
            tasks.append(asyncio.create_task(runner.call(len(report.records), *pairs[index % len(pairs)],
                                                         accounts=plans[index], kind=kinds[index % len(pairs)])))
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await runner.close()
        report.elapsed_s += loop.time() - start  # the calls' own time, sign-in ahead of them left out
