"""Scenario file schema (pydantic): the Edge pool, its NAT and DNS, the clients, what to replay and expect.

A scenario describes *logical* topology. Where each simulated host lives (its own 127.x.y.z address in the
embedded lab) is derived by :mod:`simulator.lab.addressing`; the documentary addresses a scenario may carry
(``private``/``public`` of a node's external services) are reported, not bound.
"""

from __future__ import annotations

import re
from enum import StrEnum
from ipaddress import IPv4Address
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from simulator.outcome import Verdict
from simulator.spec.deployment import Deployment
from simulator.spec.rules import RULES_BY_ID, Direction, Interface

_HOSTNAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")


def _check_fqdn(value: str) -> str:
    value = value.lower().rstrip(".")
    if not _HOSTNAME.match(value) or "." not in value:
        raise ValueError(f"{value!r} is not a fully qualified domain name")
    return value


Fqdn = Annotated[str, AfterValidator(_check_fqdn), Field(description="fully qualified domain name")]
Name = Annotated[str, Field(pattern=_NAME.pattern, description="short lowercase name: a-z, 0-9, '-'")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NatBehaviour(StrEnum):
    """RFC 4787 §4.1 mapping / §5 filtering behaviours."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"


class LinkImpairment(_Model):
    """netem-like impairment of one direction (simulator.core.impairment.Impairment)."""

    loss: float = Field(0.0, ge=0, le=1, description="probability a packet is dropped")
    delay_ms: float = Field(0.0, ge=0, le=10000)
    jitter_ms: float = Field(0.0, ge=0, le=10000, description="uniform ± around delay_ms, per packet")
    reorder: float = Field(0.0, ge=0, le=1, description="probability a packet skips the delay (needs delay)")


class NatImpairment(_Model):
    inbound: LinkImpairment = LinkImpairment()  # outside → inside
    outbound: LinkImpairment = LinkImpairment()  # inside → outside


class ClientNat(_Model):
    """A NAT in front of a client population (RFC 4787 knobs)."""

    mapping: NatBehaviour = NatBehaviour.ENDPOINT_INDEPENDENT
    filtering: NatBehaviour = NatBehaviour.ADDRESS_AND_PORT_DEPENDENT
    binding_timeout: float = Field(120.0, gt=0, description="seconds; RFC 4787 REQ-5 says at least 120")
    port_preservation: bool = False
    hairpin: bool = False
    impairment: NatImpairment | None = Field(None, description="netem-like impairment per direction (calls media)")


class PoolNat(_Model):
    """The Edge pool's static 1:1 NAT between each node's external private and public addresses."""

    type: Literal["static-1to1"] = "static-1to1"
    hairpin: bool = True
    snat_inbound: bool = Field(False, description="misconfiguration: rewrite inbound sources (A/V breaks)")


class ServiceAddresses(_Model):
    """Documentary addresses of one external service of a node in the real deployment (optional)."""

    private: IPv4Address | None = None
    public: IPv4Address | None = None


class EdgeNode(_Model):
    name: Name
    internal_fqdn: Fqdn | None = None
    access: ServiceAddresses = ServiceAddresses()
    webconf: ServiceAddresses = ServiceAddresses()
    av: ServiceAddresses = ServiceAddresses()



class PortSpan(_Model):
    first: int = Field(ge=1024, le=65535)
    last: int = Field(ge=1024, le=65535)

    @model_validator(mode="after")
    def _ordered(self) -> PortSpan:
        if self.first > self.last:
            raise ValueError(f"first ({self.first}) is above last ({self.last})")
        return self

    @property
    def size(self) -> int:
        return self.last - self.first + 1


class EdgePool(_Model):
    """A scaled consolidated Edge pool: N nodes behind DNS load balancing."""

    internal_fqdn: Fqdn
    access_fqdn: Fqdn
    webconf_fqdn: Fqdn
    av_fqdn: Fqdn
    nodes: list[EdgeNode] = Field(min_length=1, max_length=20)
    nat: PoolNat = PoolNat()
    relay_ports: PortSpan = PortSpan(first=50000, last=59999)


    @field_validator("nodes")
    @classmethod
    def _unique_nodes(cls, nodes: list[EdgeNode]) -> list[EdgeNode]:
        names = [node.name for node in nodes]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"duplicate node names: {', '.join(duplicates)}")
        return nodes


class DnsPolicy(StrEnum):
    """How a client picks among the A records of a DNS-load-balanced name (research-lync-edge §2)."""

    LYNC = "lync"  # all records, shuffled, fail over, 10-minute penalty (UCMA)
    LEGACY = "legacy"  # one record, no failover (OCS 2007/R2 federation, PIC)


class ClientRole(StrEnum):
    REMOTE_USER = "remote-user"
    FEDERATED_PARTNER = "federated-partner"
    PIC_PARTNER = "pic-partner"
    XMPP_PARTNER = "xmpp-partner"
    FRONT_END = "front-end"
    DIRECTOR = "director"
    INTERNAL_USER = "internal-user"


INTERNAL_ROLES = frozenset({ClientRole.FRONT_END, ClientRole.DIRECTOR, ClientRole.INTERNAL_USER})
SERVER_ROLES = frozenset({ClientRole.FRONT_END, ClientRole.DIRECTOR, ClientRole.FEDERATED_PARTNER,
                          ClientRole.PIC_PARTNER, ClientRole.XMPP_PARTNER})


class CertificateVariant(StrEnum):
    """Which certificate a peer presents: the valid one or a negative variant of the lab PKI."""

    VALID = "valid"
    WRONG_SAN = "wrong-san"
    EXPIRED = "expired"
    UNTRUSTED = "untrusted"
    REVOKED = "revoked"


class Client(_Model):
    """A population of simulated peers of one role."""

    name: Name
    role: ClientRole
    count: int = Field(1, ge=1, le=10000)
    fqdn: Fqdn | None = Field(None, description="server-like peers: the name in their certificate")
    domain: Fqdn | None = Field(None, description="partners: their SIP/XMPP domain")
    nat: ClientNat | None = None
    dns_policy: DnsPolicy | None = None
    certificate: CertificateVariant = CertificateVariant.VALID


    @model_validator(mode="after")
    def _consistent(self) -> Client:
        if self.nat is not None and self.role in INTERNAL_ROLES:
            raise ValueError(f"role {self.role} is internal: it sits behind no client NAT")
        if self.role in SERVER_ROLES and self.fqdn is None:
            raise ValueError(f"role {self.role} needs 'fqdn' (the name in its certificate)")
        return self

    @property
    def effective_dns_policy(self) -> DnsPolicy:
        if self.dns_policy is not None:
            return self.dns_policy
        return DnsPolicy.LEGACY if self.role is ClientRole.PIC_PARTNER else DnsPolicy.LYNC


class DnsRecord(_Model):
    name: Fqdn
    type: Literal["A", "SRV", "CNAME"]
    value: str | None = None
    priority: int = Field(0, ge=0, le=65535)
    weight: int = Field(0, ge=0, le=65535)
    port: int | None = Field(None, ge=1, le=65535)
    target: Fqdn | None = None

    @model_validator(mode="after")
    def _fields_of_type(self) -> DnsRecord:
        if self.type == "SRV" and (self.port is None or self.target is None):
            raise ValueError("an SRV record needs 'port' and 'target'")
        if self.type == "A":
            try:
                IPv4Address(self.value or "")
            except ValueError:
                raise ValueError("an A record needs an IPv4 address in 'value'") from None
        if self.type == "CNAME" and not self.value:
            raise ValueError("a CNAME record needs the target name in 'value'")
        return self


class DnsSpec(_Model):
    """The lab's DNS: pool A records are derived from the pool; extra records are served as given."""

    shuffle: bool = True
    extra_records: list[DnsRecord] = []


class LoadPhase(_Model):
    """A load phase (filled in by the load issues): who, how fast, how long — always bounded."""

    name: Name
    clients: Name
    rate: float = Field(gt=0, le=100000, description="new sessions per second (open loop)")
    duration: float = Field(gt=0, le=3600, description="seconds")
    max_sessions: int = Field(1000, ge=1, le=1_000_000)
    # --- load control (issue 12, SIPp semantics: -r, -rate_increase/-rate_interval/-rate_max, -l, -m) ---
    workload: Literal["sign-in", "im", "relay"] = Field("sign-in", description="what each session does: sign-in "
                                                        "(REGISTER through the Access Edge); im: sign in, then send "
                                                        "`messages` IMs (INVITE, MESSAGE, BYE) `message_interval` s "
                                                        "apart; relay is named and refused until it lands")
    messages: int = Field(3, ge=1, le=10000, description="workload im: IMs each signed-in user sends")
    message_interval: float = Field(0.5, gt=0, le=3600, description="workload im: seconds between a user's IMs")
    rate_increase: float | None = Field(None, gt=0, le=100000, description="ramp: add this many sessions/s to the "
                                        "rate every rate_interval seconds")
    rate_interval: float = Field(1.0, gt=0, le=3600, description="ramp period, seconds")
    rate_max: float | None = Field(None, gt=0, le=100000, description="ramp ceiling (sessions/s)")
    concurrency: int | None = Field(None, ge=1, le=1_000_000, description="at most this many sessions in flight "
                                    "(started, not yet answered); a start waits for a slot")
    count: int | None = Field(None, ge=1, le=1_000_000, description="sessions in all (also bounded by "
                              "max_sessions and the population's size)")
    closed_loop: bool = Field(False, description="closed loop: a new session starts when one is answered "
                                                 "(concurrency of them at a time, rate ignored)")
    calls: CallsSpec | None = Field(None, description="place calls instead of only signing in: rate is calls "
                                    "per second, clients the default caller population")

    @model_validator(mode="after")
    def _load_control(self) -> LoadPhase:
        if self.rate_max is not None and self.rate_max < self.rate:
            raise ValueError(f"rate_max ({self.rate_max:g}) is below rate ({self.rate:g})")
        if self.workload == "relay":
            raise ValueError("workload 'relay' is not implemented yet (sign-in and im are; for relay allocation "
                             "load use `edgesim bench relay --mras`)")
        return self


class MediaSpec(_Model):
    """The media a call sends each way after ICE (simulator.core.media profiles)."""

    kind: Literal["audio", "video"] = "audio"
    codec: str = Field("SILK-WB", description="audio: a key of simulator.core.media.AUDIO_CODECS")
    packets_per_second: float = Field(50.0, gt=0, le=1000)
    payload_size: int | None = Field(None, gt=0, le=1400)
    frame_rate: float = Field(30.0, gt=0, le=120)
    frame_size: int = Field(6250, gt=0, le=1_000_000)
    max_payload: int = Field(1200, gt=0, le=1400)
    rtcp_interval: float = Field(5.0, gt=0, le=60)


CallKind = Literal["remote-remote", "remote-internal", "remote-federated"]
# The callee population's role each call kind needs (the caller is always a remote user, behind the Access Edge).
CALLEE_ROLES: dict[str, ClientRole] = {"remote-remote": ClientRole.REMOTE_USER,
                                       "remote-internal": ClientRole.INTERNAL_USER,
                                       "remote-federated": ClientRole.FEDERATED_PARTNER}


class CallPair(_Model):
    """Who calls whom: a caller population (default: the phase's ``clients``) and a callee population."""

    caller: Name | None = None
    callee: Name
    kind: CallKind | None = Field(None, description="this pair's call kind (default: the phase's calls.kind)")


class CallsExpectation(_Model):
    """What a calls phase must show for ``edgesim run`` to exit 0 (all optional)."""

    all_connected: bool = Field(False, description="every call's ICE connected (DIRECT or RELAY)")
    relay_spread_tolerance: float | None = Field(None, gt=0, lt=1, description="each pool node relayed 1/N ± this "
                                                 "of the relayed legs (DNS load balancing of the A/V Edge)")
    max_loss: float | None = Field(None, ge=0, le=1, description="media loss over all calls below this "
                                   "(PacketsLost / expected, RFC 3550 A.3)")
    min_relayed_legs: int = Field(1, ge=0, description="the spread is judged on at least this many legs")


class CallsSpec(_Model):
    """What makes a load phase a ``calls`` phase: remote users of the pairs' caller populations call users of the
    callee populations (remote, internal or federated: ``kind``)."""

    kind: CallKind = Field("remote-remote", description="remote-remote: the callee is a remote user (its "
                           "Access Edge, its NAT); remote-internal: an internal-user population, answered at the "
                           "Director (or Front End), relaying through the internal A/V Edge; remote-federated: a "
                           "federated-partner population's users, answered at the partner's Edge, host candidates "
                           "on the partner's address")
    pairs: list[CallPair] = Field(min_length=1)
    count: int = Field(1, ge=1, le=100_000, description="calls in all, spread round-robin over the pairs")
    call_duration: float = Field(3.0, gt=0, le=3600, description="seconds of media per call")
    media: MediaSpec = MediaSpec()
    ice: Literal["ms-ice2", "rfc8445"] = "ms-ice2"
    signalling: Literal["sip", "in-process"] = Field("sip", description="sip: INVITE/183/200/re-INVITE/BYE through "
                                                     "the Access Edges; in-process: SDP handed over directly")
    connect_timeout: float = Field(10.0, gt=0, le=120)
    sign_in_first: bool = Field(False, description="sign every user the calls will use in (and get its MRAS "
                                "credentials) before the first call, as users are long signed in when they call; "
                                "the rate then paces calls only")
    media_timeout: float = Field(2.0, gt=0, le=60, description="a connected call whose side hears no media for "
                                 "this long ends as media-lost-mid-call (no ICE restart)")
    expect: CallsExpectation | None = Field(None, description="checked after the run: edgesim run exits 1 when "
                                            "one does not hold")

    def kind_of(self, pair: CallPair) -> CallKind:
        return pair.kind or self.kind


def calls_pair_problems(index: int, phase: LoadPhase, by_name: dict[str, Client]) -> list[tuple[FieldPath, str]]:
    """What a calls phase's pairs name wrongly: a caller that is not a remote-user population, a callee whose role
    is not the one its call kind needs (``CALLEE_ROLES``), each at its own field."""
    calls = phase.calls
    assert calls is not None
    problems: list[tuple[FieldPath, str]] = []
    label = f"load phase {phase.name!r}"
    for number, pair in enumerate(calls.pairs):
        caller = pair.caller or phase.clients
        where: FieldPath = ("load", index, "calls", "pairs", number, "caller") if pair.caller else ("load", index,
                                                                                                  "clients")
        if (population := by_name.get(caller)) is None:
            problems.append((where, f"{label}: no client named {caller!r}"))
        elif population.role is not ClientRole.REMOTE_USER:
            problems.append((where, f"{label}: the caller {caller!r} is a {population.role} population; calls "
                             "are placed by remote-user populations"))
        kind = calls.kind_of(pair)
        want = CALLEE_ROLES[kind]
        at: FieldPath = ("load", index, "calls", "pairs", number, "callee")
        if (callee := by_name.get(pair.callee)) is None:
            problems.append((at, f"{label}: no client named {pair.callee!r}"))
        elif callee.role is not want:
            problems.append((at, f"{label}: callee {pair.callee!r} is a {callee.role} population; a {kind} call "
                             f"(kind from {'pairs[].kind' if pair.kind else 'calls.kind'}) needs a callee of role "
                             f"{want}"))
        elif kind == "remote-internal" and not any(c.role is ClientRole.FRONT_END for c in by_name.values()):
            problems.append((at, f"{label}: a remote-internal call needs a front-end population (an internal "
                             "user's A/V credentials come from MRAS through the Front End)"))
    return problems


class StopNode(_Model):
    """A scenario step that stops a pool node (or one service on it) mid-run."""

    at: float = Field(ge=0, description="seconds after the load starts")
    stop_node: Name
    service: Literal["all", "access", "webconf", "av", "internal"] = "all"


class LoadExpectation(_Model):
    """What the load phases must show for ``edgesim run`` to exit 0 (all optional)."""

    spread_tolerance: float | None = Field(None, gt=0, lt=1, description="each node's share of signed-in users "
                                           "within 1/N ± this (DNS load balancing)")
    failover: Literal["complete"] | None = Field(None, description="complete: every lync user on a stopped node "
                                                 "re-homed to another node, every legacy one reported lost")


class LabSpec(_Model):
    """How the embedded lab lays out addresses and ports (simulator.lab.addressing)."""

    loopback_prefix: str = Field("127.77", pattern=r"^127\.(\d{1,3})$",
                                 description="the /16 inside 127.0.0.0/8 every lab host is placed in")
    privileged_port_offset: int = Field(40000, ge=1024, le=60000,
                                        description="added to ports < 1024 when the process may not bind them")
    probe_timeout: float = Field(3.0, gt=0, le=60)

    @field_validator("loopback_prefix")
    @classmethod
    def _not_loopback_default(cls, value: str) -> str:
        second = int(value.split(".")[1])
        if second == 0 or second > 255:
            raise ValueError("use a prefix other than 127.0 (never 127.0.0.1) and at most 127.255")
        return value


RuleId = Annotated[str, Field(description="a rule id of port-tables.md, e.g. E6")]
_EXPECT = re.compile(r"^(pass|fail|blocked|unimplemented)(:[a-z0-9-]+|(?<=blocked):[A-Z]\d{1,2})?$")


FieldPath = tuple[str | int, ...]


class CrossReferenceError(ValueError):
    """Fields that name things the scenario does not have (or cannot use), each with its own path so the loader
    can point at the field's line: ``problems`` is ``[(path, message), …]``."""

    def __init__(self, problems: list[tuple[FieldPath, str]]) -> None:
        super().__init__("; ".join(message for _, message in problems))
        self.problems = problems


# What a load phase does to its population (simulator.scenario.load): remote users sign in through the Access Edge.
LOAD_ROLES = frozenset({ClientRole.REMOTE_USER})


def external_listening_ports(offset: int) -> dict[int, str]:
    """Ports the Edge listens on at its external interface (from the rule catalog) → the rule ids, with the port a
    port below 1024 moves to in an unprivileged embedded lab (``port + offset``)."""
    ports: dict[int, str] = {}
    for rule in RULES_BY_ID.values():
        first = rule.ports.first
        if rule.interface is Interface.EXTERNAL and rule.direction is Direction.IN and first == rule.ports.last:
            for port in {first, first + offset if first < 1024 else first}:
                ports[port] = f"{ports[port]}, {rule.id}" if port in ports else rule.id
    return ports


def _deployment_problems(deployment: Deployment, node_names: set[str],
                         client_names: set[str]) -> list[tuple[FieldPath, str]]:
    """Every pool node and client population is placed, and nothing the scenario does not have."""
    problems: list[tuple[FieldPath, str]] = []
    for what, key, placed, known in (("node", "nodes", set(deployment.nodes), node_names),
                                     ("client population", "clients", set(deployment.clients), client_names)):
        if missing := sorted(known - placed):
            problems.append((("deployment", key), f"deployment: no addresses for {what}s {', '.join(missing)}"))
        for unknown in sorted(placed - known):
            problems.append((("deployment", key, unknown), f"deployment: the scenario has no {what} named {unknown}"))
    return problems


class Scenario(_Model):
    """A whole scenario file."""

    schema_version: Literal[1] = 1
    name: str = Field(min_length=1)
    description: str = ""
    seed: int = 1
    domain: Fqdn
    internal_domain: Fqdn
    lab: LabSpec = LabSpec()
    edge_pool: EdgePool
    dns: DnsSpec = DnsSpec()
    clients: list[Client] = []
    rules: Literal["all"] | list[RuleId] = "all"
    expect: dict[str, str] = Field(default_factory=dict, description="rule id or 'default' → verdict[:reason]")
    load: list[LoadPhase] = []
    events: list[StopNode] = []
    expect_load: LoadExpectation = LoadExpectation()
    deployment: Deployment | None = Field(None, description="real addresses for firewall lab mode (absent: "
                                          "the embedded loopback lab)")


    @field_validator("rules")
    @classmethod
    def _known_rules(cls, rules: Literal["all"] | list[str]) -> Literal["all"] | list[str]:
        if rules == "all":
            return rules
        problems: list[tuple[FieldPath, str]] = [((index,), f"unknown rule id {rule!r} (see `edgesim rules`)")
                                                 for index, rule in enumerate(rules) if rule not in RULES_BY_ID]
        if problems:
            raise CrossReferenceError(problems)
        return rules

    @field_validator("expect")
    @classmethod
    def _known_expectations(cls, expect: dict[str, str]) -> dict[str, str]:
        problems: list[tuple[FieldPath, str]] = []
        for key, value in expect.items():
            if key != "default" and key not in RULES_BY_ID:
                problems.append(((key,), f"unknown rule id {key!r} (see `edgesim rules`)"))
            elif not _EXPECT.match(value):
                problems.append(((key,), f"{value!r} is not pass, fail[:reason], blocked[:rule] or unimplemented"))
            elif value.startswith("blocked:") and value.partition(":")[2] not in RULES_BY_ID:
                problems.append(((key,), f"{value!r}: no rule {value.partition(':')[2]!r} to be blocked by"))
        if problems:
            raise CrossReferenceError(problems)
        return expect

    @model_validator(mode="after")
    def _references(self) -> Scenario:
        problems: list[tuple[FieldPath, str]] = []
        seen: dict[str, int] = {}
        for index, client in enumerate(self.clients):
            if client.name in seen:
                problems.append((("clients", index, "name"), f"duplicate client names: {client.name} (also "
                                 f"clients[{seen[client.name]}])"))
            seen.setdefault(client.name, index)
        by_name = {client.name: client for client in self.clients}
        for index, phase in enumerate(self.load):
            population = by_name.get(phase.clients)
            if population is None:
                problems.append((("load", index, "clients"), f"load phase {phase.name!r}: no client named "
                                 f"{phase.clients!r}"))
            elif phase.calls is not None and (call_problems := calls_pair_problems(index, phase, by_name)):
                problems += call_problems
            elif population.role not in LOAD_ROLES:
                problems.append((("load", index, "clients"), f"load phase {phase.name!r}: {phase.clients!r} is a "
                                 f"{population.role} population; load phases sign users in through the Access Edge, "
                                 f"which only {', '.join(sorted(LOAD_ROLES))} populations do"))
        node_names = {node.name for node in self.edge_pool.nodes}
        for index, event in enumerate(self.events):
            if event.stop_node not in node_names:
                problems.append((("events", index, "stop_node"), f"event at {event.at}s: no pool node named "
                                 f"{event.stop_node!r}"))
        relay = self.edge_pool.relay_ports
        listening = external_listening_ports(self.lab.privileged_port_offset)
        clashes = sorted(port for port in listening if relay.first <= port <= relay.last)
        if clashes:
            named = ", ".join(f"{port} ({listening[port]})" for port in clashes)
            problems.append((("edge_pool", "relay_ports"), f"relay ports {relay.first}-{relay.last} overlap the "
                             f"Edge's external listeners: {named}"
                             " (ports below 1024 move up by lab.privileged_port_offset in an unprivileged lab)"))
        if self.deployment is not None:
            problems += _deployment_problems(self.deployment, node_names, set(seen))
        if problems:
            raise CrossReferenceError(problems)
        return self

    @property
    def selected_rules(self) -> list[str]:
        return list(RULES_BY_ID) if self.rules == "all" else list(self.rules)

    def expected(self, rule_id: str) -> tuple[Verdict, str | None]:
        """The expected verdict of a rule and, optionally, its reason (``fail:refused``) or blocker."""
        text = self.expect.get(rule_id, self.expect.get("default", "pass"))
        verdict, _, detail = text.partition(":")
        return Verdict(verdict), (detail or None)

    def clients_with_role(self, role: ClientRole) -> list[Client]:
        return [client for client in self.clients if client.role is role]
