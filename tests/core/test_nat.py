"""NAT tables: RFC 4787 mapping/filtering for all 9 combinations, timeouts, port preservation, hairpin,
and the Edge pool's static 1:1 NAT with its misconfigurations."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from simulator.core.nat import (
    Address,
    Behaviour,
    DropReason,
    NatConfig,
    NatTable,
    StaticNat,
    StaticNatConfig,
    Translation,
)
from simulator.core.ports import Transport

PUBLIC = "203.0.113.1"
CLIENT: Address = ("10.0.0.1", 40000)
OTHER_CLIENT: Address = ("10.0.0.2", 40000)
PEER: Address = ("198.51.100.1", 3478)
PEER_OTHER_PORT: Address = ("198.51.100.1", 3479)
OTHER_PEER: Address = ("198.51.100.2", 3478)
EI, AD, APD = Behaviour.ENDPOINT_INDEPENDENT, Behaviour.ADDRESS_DEPENDENT, Behaviour.ADDRESS_AND_PORT_DEPENDENT
COMBINATIONS = list(itertools.product(Behaviour, Behaviour))
RANGE = (40000, 40009)
UDP_TIMEOUT, TCP_TIMEOUT = 10.0, 20.0


def make_nat(
    mapping: Behaviour = EI, filtering: Behaviour = EI, port_range: tuple[int, int] = RANGE, **knobs: object
) -> NatTable:
    config = NatConfig(
        mapping=mapping,
        filtering=filtering,
        udp_binding_timeout=UDP_TIMEOUT,
        tcp_binding_timeout=TCP_TIMEOUT,
        **knobs,  # type: ignore[arg-type]
    )
    return NatTable(config, random.Random(4787), PUBLIC, port_range)


def external(nat: NatTable, src: Address, dst: Address, now: float = 0.0, transport: Transport = "udp") -> Address:
    translation = nat.outbound(transport, src, dst, now)
    assert translation is not None
    assert translation.dst == dst
    return translation.src


# ---------------------------------------------------------------- the 9 combinations, as tables

# after CLIENT -> PEER: does CLIENT reuse that mapping towards (PEER_OTHER_PORT, OTHER_PEER)? RFC 4787 §4.1
MAPPING_REUSED = {EI: (True, True), AD: (True, False), APD: (False, False)}
# after CLIENT -> PEER only: is inbound from (PEER, PEER_OTHER_PORT, OTHER_PEER) admitted? RFC 4787 §5
FILTER_ADMITS = {EI: (True, True, True), AD: (True, True, False), APD: (True, False, False)}


@pytest.mark.parametrize(("mapping", "filtering"), COMBINATIONS)
def test_mapping_reuse_follows_the_mapping_behaviour(mapping: Behaviour, filtering: Behaviour) -> None:
    nat = make_nat(mapping, filtering)
    first = external(nat, CLIENT, PEER)
    reused = tuple(external(nat, CLIENT, remote) == first for remote in (PEER_OTHER_PORT, OTHER_PEER))
    assert reused == MAPPING_REUSED[mapping]
    assert external(nat, CLIENT, PEER) == first  # the same destination always reuses
    assert external(nat, OTHER_CLIENT, PEER) != first  # another internal endpoint never shares


@pytest.mark.parametrize(("mapping", "filtering"), COMBINATIONS)
def test_filtering_admits_per_the_filtering_behaviour(mapping: Behaviour, filtering: Behaviour) -> None:
    nat = make_nat(mapping, filtering)
    public = external(nat, CLIENT, PEER)
    admitted = tuple(
        nat.inbound("udp", remote, public, 1.0) == Translation(remote, CLIENT)
        for remote in (PEER, PEER_OTHER_PORT, OTHER_PEER)
    )
    assert admitted == FILTER_ADMITS[filtering]
    assert nat.drops[DropReason.FILTERED] == admitted.count(False)
    assert nat.inbound("tcp", PEER, public, 1.0) is None  # UDP bindings say nothing about TCP
    assert nat.drops[DropReason.NO_MAPPING] == 1


def test_address_dependent_filtering_is_per_internal_endpoint_across_mappings() -> None:
    # RFC 4787 §5: "X:x has sent to Y:any" — with APDM the permission spans X:x's mappings
    nat = make_nat(APD, AD)
    via_peer = external(nat, CLIENT, PEER)
    external(nat, CLIENT, OTHER_PEER)
    assert nat.inbound("udp", OTHER_PEER, via_peer, 1.0) == Translation(OTHER_PEER, CLIENT)


# ---------------------------------------------------------------- binding timeout


def test_binding_expires_after_the_timeout_without_traffic() -> None:
    nat = make_nat()
    public = external(nat, CLIENT, PEER, now=0.0)
    assert nat.inbound("udp", PEER, public, UDP_TIMEOUT - 0.001) is not None
    assert nat.inbound("udp", PEER, public, UDP_TIMEOUT) is None  # expiry <= now: gone
    assert nat.drops[DropReason.NO_MAPPING] == 1
    assert nat.lookup("udp", CLIENT, PEER, UDP_TIMEOUT) is None
    assert nat.expire(UDP_TIMEOUT) == 1
    assert nat.binding_count == 0
    assert nat.next_timer() is None


def test_outbound_traffic_refreshes_the_binding() -> None:
    nat = make_nat()
    public = external(nat, CLIENT, PEER, now=0.0)
    assert external(nat, CLIENT, PEER, now=8.0) == public  # RFC 4787 REQ-6
    assert nat.expire(15.0) == 0
    assert nat.inbound("udp", PEER, public, 17.9) is not None
    assert nat.inbound("udp", PEER, public, 18.0) is None


def test_a_filter_permission_lapses_while_other_traffic_keeps_the_mapping_alive() -> None:
    nat = make_nat(EI, APD)
    public = external(nat, CLIENT, PEER, now=0.0)
    external(nat, CLIENT, OTHER_PEER, now=5.0)  # same EIM mapping, refreshed until 15
    assert nat.inbound("udp", PEER, public, 9.9) is not None
    assert nat.inbound("udp", PEER, public, 10.0) is None  # PEER's permission ended at 10
    assert nat.drops == Counter({DropReason.FILTERED: 1})
    assert nat.inbound("udp", OTHER_PEER, public, 14.9) is not None


@pytest.mark.parametrize("inbound_refresh", [False, True])
def test_inbound_refresh_is_a_knob(inbound_refresh: bool) -> None:
    nat = make_nat(inbound_refresh=inbound_refresh)
    public = external(nat, CLIENT, PEER, now=0.0)
    assert nat.inbound("udp", PEER, public, 8.0) is not None
    alive_at_15 = nat.inbound("udp", PEER, public, 15.0) is not None
    assert alive_at_15 is inbound_refresh


def test_timeouts_are_per_transport() -> None:
    nat = make_nat()
    nat.prepare()
    udp = external(nat, CLIENT, PEER, transport="udp")
    tcp = external(nat, CLIENT, PEER, transport="tcp")
    assert nat.inbound("udp", PEER, udp, 15.0) is None
    assert nat.inbound("tcp", PEER, tcp, 15.0) is not None
    assert nat.inbound("tcp", PEER, tcp, 20.0) is None


def test_expired_binding_gets_a_fresh_mapping_and_frees_its_port() -> None:
    nat = make_nat(port_range=(40000, 40000), port_preservation=False)
    external(nat, CLIENT, PEER, now=0.0)
    assert nat.outbound("udp", OTHER_CLIENT, PEER, 1.0) is None  # one port, taken
    assert nat.drops[DropReason.PORTS_EXHAUSTED] == 1
    assert external(nat, OTHER_CLIENT, PEER, now=10.0) == (PUBLIC, 40000)  # the first binding expired


# ---------------------------------------------------------------- port preservation


def test_port_preservation_keeps_the_internal_port_when_free() -> None:
    nat = make_nat(port_range=(40000, 40999), port_preservation=True)
    assert external(nat, CLIENT, PEER) == (PUBLIC, 40000)
    # the same internal port from another host cannot be preserved twice (RFC 4787 §4.2.1)
    assert external(nat, OTHER_CLIENT, PEER)[1] != 40000
    # outside the NAT's range the port cannot be preserved
    assert 40000 <= external(nat, ("10.0.0.3", 5060), PEER)[1] <= 40999


def test_without_port_preservation_ports_are_drawn_from_the_pool() -> None:
    nat = make_nat(port_range=(40000, 40999), port_preservation=False)
    clients = [(f"10.0.1.{i}", 40000 + i) for i in range(20)]
    ports = [external(nat, client, PEER)[1] for client in clients]
    assert len(set(ports)) == 20
    assert sum(port == client[1] for port, client in zip(ports, clients, strict=True)) < 3


# ---------------------------------------------------------------- hairpin (dynamic NAT)


@pytest.mark.parametrize("filtering", list(Behaviour))
def test_hairpin_presents_the_senders_external_address(filtering: Behaviour) -> None:
    nat = make_nat(EI, filtering, hairpin=True)
    other_public = external(nat, OTHER_CLIENT, PEER)
    client_public = external(nat, CLIENT, PEER)
    if filtering is not EI:
        # the filter applies to hairpinned packets too: OTHER_CLIENT must have sent to CLIENT's address
        assert nat.outbound("udp", CLIENT, other_public, 1.0) is None
        assert nat.drops[DropReason.FILTERED] == 1
        # CLIENT's attempt opened its own filter towards OTHER_CLIENT's external address
        assert nat.outbound("udp", OTHER_CLIENT, client_public, 1.0) == Translation(other_public, CLIENT)
    # RFC 4787 §6 REQ-9: the receiver sees the sender's external address, not its private one
    assert nat.outbound("udp", CLIENT, other_public, 2.0) == Translation(client_public, OTHER_CLIENT)


def test_hairpin_off_drops_and_counts() -> None:
    nat = make_nat(EI, EI, hairpin=False)
    other_public = external(nat, OTHER_CLIENT, PEER)
    client_public = external(nat, CLIENT, PEER)
    assert nat.outbound("udp", CLIENT, other_public, 1.0) is None
    # the same packet coming around to the public side (real loopback sockets) is dropped too
    assert nat.inbound("udp", client_public, other_public, 1.0) is None
    assert nat.drops[DropReason.HAIRPIN_DENIED] == 2
    assert nat.inbound("udp", PEER, other_public, 1.0) is not None  # ordinary inbound still works


# ---------------------------------------------------------------- state machine, one per combination

INSIDE: list[Address] = [("10.0.0.1", 40000), ("10.0.0.1", 40001), ("10.0.0.2", 40000), ("10.0.0.2", 5060)]
OUTSIDE: list[Address] = [PEER, PEER_OTHER_PORT, OTHER_PEER, ("198.51.100.2", 3479)]
HAIRPIN_TARGETS: list[Address] = [(PUBLIC, 40000), (PUBLIC, 40003)]
RANGE_PORTS = range(RANGE[0], RANGE[1] + 1)
MODEL_KEY: dict[Behaviour, Callable[[Address], object]] = {
    EI: lambda remote: "any",
    AD: lambda remote: remote[0],
    APD: lambda remote: remote,
}
TIMEOUT: dict[Transport, float] = {"udp": UDP_TIMEOUT, "tcp": TCP_TIMEOUT}


@dataclass
class ModelMapping:
    port: int
    expires: float
    remote: Address  # a destination that selects this mapping


class NatMachine(RuleBasedStateMachine):
    """Random traffic through a NatTable, checked against a brute-force model of RFC 4787."""

    mapping: Behaviour
    filtering: Behaviour

    @initialize(
        inbound_refresh=st.booleans(),
        port_preservation=st.booleans(),
        hairpin=st.booleans(),
        seed=st.integers(0, 2**32),
    )
    def setup(self, inbound_refresh: bool, port_preservation: bool, hairpin: bool, seed: int) -> None:
        self.config = NatConfig(
            mapping=self.mapping,
            filtering=self.filtering,
            udp_binding_timeout=UDP_TIMEOUT,
            tcp_binding_timeout=TCP_TIMEOUT,
            inbound_refresh=inbound_refresh,
            port_preservation=port_preservation,
            hairpin=hairpin,
        )
        self.nat = NatTable(self.config, random.Random(seed), PUBLIC, RANGE)
        self.now = 0.0
        self.mappings: dict[tuple[Transport, Address, object], ModelMapping] = {}
        # (transport, internal) -> {filter key: expires}
        self.permits: dict[tuple[Transport, Address], dict[object, float]] = {}
        self.drops: Counter[DropReason] = Counter()

    def live(self, transport: Transport) -> dict[int, Address]:
        """External port -> internal endpoint of the model's unexpired mappings."""
        return {
            entry.port: internal
            for (mapped_transport, internal, _), entry in self.mappings.items()
            if mapped_transport == transport and entry.expires > self.now
        }

    def admit(self, transport: Transport, src: Address, dst: Address) -> Address | None:
        internal = self.live(transport).get(dst[1])
        if internal is None:
            self.drops[DropReason.NO_MAPPING] += 1
            return None
        filter_key = MODEL_KEY[self.filtering](src)
        permits = self.permits.get((transport, internal), {})
        if permits.get(filter_key, -1.0) <= self.now:
            self.drops[DropReason.FILTERED] += 1
            return None
        if self.config.inbound_refresh:
            expires = self.now + TIMEOUT[transport]
            for key, entry in self.mappings.items():
                if key[0] == transport and entry.port == dst[1] and entry.expires > self.now:
                    entry.expires = expires
            permits[filter_key] = expires
        return internal

    @rule(dt=st.sampled_from([0.0, 1.0, 4.0, 9.5, 10.0, 20.0]))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule(
        transport=st.sampled_from(["udp", "tcp"]),
        src=st.sampled_from(INSIDE),
        dst=st.sampled_from(OUTSIDE + HAIRPIN_TARGETS),
    )
    def send_out(self, transport: Transport, src: Address, dst: Address) -> None:
        key = (transport, src, MODEL_KEY[self.mapping](dst))
        live = self.live(transport)
        entry = self.mappings.get(key)
        reused = entry is not None and entry.expires > self.now
        result = self.nat.outbound(transport, src, dst, self.now)
        if not reused and len(live) == len(RANGE_PORTS):
            assert result is None
            self.drops[DropReason.PORTS_EXHAUSTED] += 1
            return
        mapped = self.nat.lookup(transport, src, dst, self.now)
        assert mapped is not None and mapped[0] == PUBLIC
        port = mapped[1]
        if reused:
            assert entry is not None
            assert port == entry.port  # a live mapping with the same key is reused (RFC 4787 §4.1)
        else:
            assert port in RANGE_PORTS
            assert port not in live  # a new mapping never shares a live external port
            if self.config.port_preservation and src[1] in RANGE_PORTS and src[1] not in live:
                assert port == src[1]
        expires = self.now + TIMEOUT[transport]
        self.mappings[key] = ModelMapping(port, expires, dst)
        self.permits.setdefault((transport, src), {})[MODEL_KEY[self.filtering](dst)] = expires
        if dst[0] != PUBLIC:
            assert result == Translation(mapped, dst)
            return
        if not self.config.hairpin:
            assert result is None
            self.drops[DropReason.HAIRPIN_DENIED] += 1
            return
        internal = self.admit(transport, mapped, dst)
        assert result == (None if internal is None else Translation(mapped, internal))

    @rule(
        transport=st.sampled_from(["udp", "tcp"]),
        src=st.sampled_from([*OUTSIDE, (PUBLIC, 40001)]),
        port=st.sampled_from([*RANGE_PORTS, 5060]),
    )
    def send_in(self, transport: Transport, src: Address, port: int) -> None:
        result = self.nat.inbound(transport, src, (PUBLIC, port), self.now)
        if src[0] == PUBLIC and not self.config.hairpin:
            assert result is None
            self.drops[DropReason.HAIRPIN_DENIED] += 1
            return
        internal = self.admit(transport, src, (PUBLIC, port))
        assert result == (None if internal is None else Translation(src, internal))

    @rule()
    def collect(self) -> None:
        self.nat.expire(self.now)
        expiries = [e.expires for e in self.mappings.values() if e.expires > self.now]
        assert self.nat.binding_count == len(expiries)  # expired bindings are gone
        timer = self.nat.next_timer()
        if not expiries:
            assert timer is None
        else:
            assert timer is not None and self.now < timer <= min(expiries)

    @invariant()
    def mappings_match_the_model(self) -> None:
        if not hasattr(self, "nat"):
            return
        for (transport, internal, _), entry in self.mappings.items():
            mapped = self.nat.lookup(transport, internal, entry.remote, self.now)
            if entry.expires > self.now:
                assert mapped == (PUBLIC, entry.port)
            else:
                assert mapped is None
        assert self.nat.drops == self.drops


NAT_MACHINE_SETTINGS = settings(
    max_examples=100,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def machine_for(mapping: Behaviour, filtering: Behaviour) -> type[NatMachine]:
    class Machine(NatMachine):
        pass

    Machine.mapping, Machine.filtering = mapping, filtering
    Machine.__name__ = Machine.__qualname__ = f"NatMachine_{mapping.name}_mapping_{filtering.name}_filtering"
    return Machine


for _mapping, _filtering in COMBINATIONS:
    _machine = machine_for(_mapping, _filtering)
    _machine.TestCase.settings = NAT_MACHINE_SETTINGS
    globals()[f"Test{_machine.__name__}"] = _machine.TestCase


# ---------------------------------------------------------------- static 1:1 NAT (Edge pool)

EDGE1_PRIVATE, EDGE1_PUBLIC = "172.16.0.11", "198.51.100.11"
EDGE2_PRIVATE, EDGE2_PUBLIC = "172.16.0.12", "198.51.100.12"
FIREWALL_INSIDE = "172.16.0.1"
REMOTE_CLIENT: Address = ("192.0.2.50", 61000)


def make_static(**knobs: object) -> StaticNat:
    config = StaticNatConfig(
        public_of={EDGE1_PRIVATE: EDGE1_PUBLIC, EDGE2_PRIVATE: EDGE2_PUBLIC},
        **knobs,  # type: ignore[arg-type]
    )
    return StaticNat(config, random.Random(2013))


def test_static_nat_dnats_inbound_and_preserves_the_source() -> None:
    nat = make_static()
    translated = nat.inbound("udp", REMOTE_CLIENT, (EDGE1_PUBLIC, 3478), 0.0)
    assert translated == Translation(REMOTE_CLIENT, (EDGE1_PRIVATE, 3478))
    assert nat.inbound("tcp", REMOTE_CLIENT, (EDGE2_PUBLIC, 443), 0.0) == Translation(
        REMOTE_CLIENT, (EDGE2_PRIVATE, 443)
    )
    assert nat.inbound("udp", REMOTE_CLIENT, ("198.51.100.99", 3478), 0.0) is None
    assert nat.drops == Counter({DropReason.NO_MAPPING: 1})


def test_static_nat_snats_outbound_to_the_same_public_address_keeping_the_port() -> None:
    nat = make_static()
    assert nat.outbound("udp", (EDGE1_PRIVATE, 50123), REMOTE_CLIENT, 0.0) == Translation(
        (EDGE1_PUBLIC, 50123), REMOTE_CLIENT
    )
    assert nat.outbound("udp", ("172.16.0.99", 5000), REMOTE_CLIENT, 0.0) is None
    assert nat.drops == Counter({DropReason.NOT_TRANSLATED: 1})
    assert nat.public_address(EDGE2_PRIVATE) == EDGE2_PUBLIC
    assert nat.private_address(EDGE2_PUBLIC) == EDGE2_PRIVATE
    assert nat.next_timer() is None


def test_static_nat_hairpins_between_public_addresses() -> None:
    nat = make_static()
    # relay-to-relay across nodes: N1 sends to N2's public relay address and N2 sees N1's public address
    assert nat.outbound("udp", (EDGE1_PRIVATE, 50001), (EDGE2_PUBLIC, 50002), 0.0) == Translation(
        (EDGE1_PUBLIC, 50001), (EDGE2_PRIVATE, 50002)
    )
    assert nat.inbound("udp", (EDGE1_PUBLIC, 50001), (EDGE2_PUBLIC, 50002), 0.0) == Translation(
        (EDGE1_PUBLIC, 50001), (EDGE2_PRIVATE, 50002)
    )


def test_static_nat_without_hairpin_drops_node_to_node_traffic() -> None:
    nat = make_static(hairpin=False)
    assert nat.outbound("udp", (EDGE1_PRIVATE, 50001), (EDGE2_PUBLIC, 50002), 0.0) is None
    assert nat.inbound("udp", (EDGE1_PUBLIC, 50001), (EDGE2_PUBLIC, 50002), 0.0) is None
    assert nat.drops == Counter({DropReason.HAIRPIN_DENIED: 2})
    assert nat.inbound("udp", REMOTE_CLIENT, (EDGE2_PUBLIC, 3478), 0.0) is not None


def test_static_nat_snat_inbound_hides_the_client_and_still_routes_replies() -> None:
    nat = make_static(snat_inbound=True, inside_address=FIREWALL_INSIDE, snat_binding_timeout=30.0)
    seen = nat.inbound("udp", REMOTE_CLIENT, (EDGE1_PUBLIC, 3478), 0.0)
    assert seen is not None
    assert seen.dst == (EDGE1_PRIVATE, 3478)
    assert seen.src[0] == FIREWALL_INSIDE  # the A/V Edge sees the firewall, not the client
    assert seen.src != REMOTE_CLIENT
    again = nat.inbound("udp", REMOTE_CLIENT, (EDGE1_PUBLIC, 3478), 1.0)
    assert again is not None and again.src == seen.src  # stable per client
    reply = nat.outbound("udp", (EDGE1_PRIVATE, 3478), seen.src, 2.0)
    assert reply == Translation((EDGE1_PUBLIC, 3478), REMOTE_CLIENT)
    assert nat.next_timer() is not None
    assert nat.expire(40.0) == 1
    assert nat.outbound("udp", (EDGE1_PRIVATE, 3478), seen.src, 40.0) is None


def test_static_nat_config_is_checked() -> None:
    with pytest.raises(ValueError):
        StaticNatConfig(public_of={EDGE1_PRIVATE: EDGE1_PUBLIC, EDGE2_PRIVATE: EDGE1_PUBLIC})
    with pytest.raises(ValueError):
        StaticNatConfig(public_of={EDGE1_PRIVATE: EDGE1_PUBLIC}, snat_inbound=True)
    with pytest.raises(ValueError):
        StaticNatConfig(public_of={"edge1": EDGE1_PUBLIC})
