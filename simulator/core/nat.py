"""NAT tables, sans-I/O: RFC 4787 dynamic NAT for clients, static 1:1 NAT for the Edge pool.

Theory of operation
-------------------
Both tables translate one packet at a time. The asyncio NAT box (``simulator/net``) calls
``outbound(transport, src, dst, now)`` for a packet from the inside and
``inbound(transport, src, dst, now)`` for a packet arriving at a public address. It gets back a
:class:`Translation` ``(src, dst)`` to send, or ``None`` for a drop, and each drop is counted in
``drops`` by :class:`DropReason`. Addresses are ``(ip, port)`` tuples. Time is the ``now`` passed in,
never a clock read. ``expire(now)`` collects dead state and ``next_timer()`` says when to call it
next. Lookups are dict hits, and a packet that hits an existing binding allocates nothing but the key
tuple and the returned ``Translation``.

:class:`NatTable` is a dynamic NAPT with one public IP. Its behaviour comes from :class:`NatConfig`:

* **Mapping** (RFC 4787 §4.1). A binding is keyed by (transport, internal endpoint, remote key). The
  remote key is what the behaviour keeps of the destination (table ``_REMOTE_KEY``): nothing for
  endpoint-independent, the IP for address-dependent, IP and port for address-and-port-dependent. A
  packet reuses a live binding exactly when its key matches.
* **Filtering** (RFC 4787 §5). Each internal endpoint remembers the remote keys it has sent to, using
  the same ``_REMOTE_KEY`` table with the filtering behaviour, each with an expiry. An inbound packet
  to a live binding is admitted exactly when the endpoint behind it holds an unexpired permission for
  the sender's key. Permissions belong to the internal endpoint, not to one binding, as §5 words it
  ("X:x has sent packets to Y:any"). A permission made by a packet expires with the binding that
  packet refreshed, so no permission outlives every binding of its endpoint.
* **Binding timeout** (RFC 4787 §4.3). An outbound packet refreshes its binding (REQ-6). An inbound
  packet refreshes it only with ``inbound_refresh``. A binding whose expiry is ``<= now`` is gone:
  every lookup treats it as absent, even before ``expire`` collects it.
* **Port assignment** (RFC 4787 §4.2). External ports come from a :class:`~simulator.core.ports.PortPool`
  over ``port_range`` (shuffled FIFO, no probing). With ``port_preservation`` the internal port is kept
  when it is free and inside the range.
* **Hairpinning** (RFC 4787 §6). A packet from the inside to the NAT's own public IP is translated like
  any outbound packet. It is then handed to the inbound side, with the sender's *external* address as
  its source (REQ-9), and filtered like any inbound packet. ``hairpin=False`` drops it instead.

:class:`StaticNat` is the 1:1 NAT in front of the Edge pool (research-lync-edge.md §2.1–2.2). Each
private address has one public twin. Inbound is DNAT with the source preserved, and outbound is SNAT to
the same twin with the port unchanged. A packet from one private address to another twin's public
address is hairpinned to that twin's private address, keeping the sender's public address as the
source. Misconfigurations: ``snat_inbound`` rewrites the source of inbound packets to the NAT's inside
address (one dynamic EIM binding per client, kept by an inner :class:`NatTable` so replies find their
way back), and ``hairpin=False`` drops node-to-node traffic through public addresses.
"""

from __future__ import annotations

import enum
import heapq
import ipaddress
import random
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, NamedTuple, Protocol

from simulator.core.ports import InsufficientCapacity, PortPool, Transport

Address = tuple[str, int]

DEFAULT_UDP_BINDING_TIMEOUT: Final = 300.0  # RFC 4787 §4.3 REQ-5: ≥ 2 min, 5 min recommended
DEFAULT_TCP_BINDING_TIMEOUT: Final = 7440.0  # RFC 5382 §5 REQ-5: established idle timeout ≥ 2 h 4 min
DEFAULT_TCP_TRANSITORY_TIMEOUT: Final = 240.0  # RFC 5382 §5 REQ-5: transitory (closing) idle timeout ≥ 4 min
DEFAULT_PORT_RANGE: Final = (1024, 65535)  # RFC 4787 §4.2.1 REQ-3: keep ≥1024 sources above 1023


class Behaviour(enum.Enum):
    """RFC 4787 mapping (§4.1) or filtering (§5) behaviour."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"


def _any_remote(remote: Address) -> None:
    return None


def _remote_ip(remote: Address) -> str:
    return remote[0]


def _remote_ip_and_port(remote: Address) -> Address:
    return remote


# What a behaviour keeps of the remote endpoint. Two remotes with equal keys share a mapping (§4.1)
# or a filter permission (§5).
_REMOTE_KEY: Final[Mapping[Behaviour, Callable[[Address], object]]] = {
    Behaviour.ENDPOINT_INDEPENDENT: _any_remote,  # RFC 4787 §4.1 / §5: any remote IP and port
    Behaviour.ADDRESS_DEPENDENT: _remote_ip,  # RFC 4787 §4.1 / §5: same remote IP, any port
    Behaviour.ADDRESS_AND_PORT_DEPENDENT: _remote_ip_and_port,  # RFC 4787 §4.1 / §5: same remote IP and port
}


class DropReason(enum.Enum):
    """Why a NAT dropped a packet; the key of ``drops``."""

    NO_MAPPING = "no-mapping"  # inbound to a public address/port with no live binding
    FILTERED = "filtered"  # RFC 4787 §5: a binding exists, but the sender is not admitted
    HAIRPIN_DENIED = "hairpin-denied"  # RFC 4787 §6: hairpinning switched off
    PORTS_EXHAUSTED = "ports-exhausted"  # no external port left for a new binding
    NOT_TRANSLATED = "not-translated"  # static NAT: the inside source has no public twin


class Translation(NamedTuple):
    """The packet as it leaves the NAT: send from ``src`` to ``dst``."""

    src: Address
    dst: Address


class AddressTranslator(Protocol):
    """What the asyncio NAT box needs from either table."""

    drops: Counter[DropReason]

    def outbound(self, transport: Transport, src: Address, dst: Address, now: float) -> Translation | None:
        """Translate a packet from the inside, or ``None`` when it is dropped."""
        ...

    def inbound(self, transport: Transport, src: Address, dst: Address, now: float) -> Translation | None:
        """Translate a packet arriving at a public address, or ``None`` when it is dropped."""
        ...

    def tcp_closed(self, src: Address, dst: Address, now: float) -> bool:
        """The TCP connection ``src`` → ``dst`` through the NAT closed; ``True`` if a binding was shortened."""
        ...

    def expire(self, now: float) -> int:
        """Collect expired state; return how many bindings went."""
        ...

    def next_timer(self) -> float | None:
        """When to call ``expire`` next (never later than the next expiry), or ``None``."""
        ...


@dataclass(frozen=True, slots=True)
class NatConfig:
    """Behaviour of one dynamic NAT. The defaults are the RFC 4787 recommendations.

    Those are EIM mapping (REQ-1), address-dependent filtering (REQ-8 when security matters), a 5-min
    UDP timeout (REQ-5), outbound-only refresh (REQ-6), port preservation and hairpinning (REQ-9).
    """

    mapping: Behaviour = Behaviour.ENDPOINT_INDEPENDENT
    filtering: Behaviour = Behaviour.ADDRESS_DEPENDENT
    udp_binding_timeout: float = DEFAULT_UDP_BINDING_TIMEOUT
    tcp_binding_timeout: float = DEFAULT_TCP_BINDING_TIMEOUT
    tcp_transitory_timeout: float = DEFAULT_TCP_TRANSITORY_TIMEOUT  # after the connection closed
    inbound_refresh: bool = False  # RFC 4787 §4.3 REQ-6: inbound refresh MAY be true
    port_preservation: bool = True  # RFC 4787 §4.2.1
    hairpin: bool = True  # RFC 4787 §6 REQ-9: MUST support hairpinning

    def __post_init__(self) -> None:
        if self.udp_binding_timeout <= 0 or self.tcp_binding_timeout <= 0 or self.tcp_transitory_timeout <= 0:
            raise ValueError("binding timeouts must be positive")


@dataclass(slots=True)
class _Endpoint:
    """An internal endpoint (transport, ip, port): its filter permissions and live binding count."""

    permits: dict[object, float] = field(default_factory=dict)
    bindings: int = 0


@dataclass(slots=True, eq=False)
class _Binding:
    transport: Transport
    internal: Address
    external: Address
    internal_key: tuple[Transport, Address, object]
    endpoint: _Endpoint
    expires: float
    removed: bool = False


class NatTable:
    """A dynamic RFC 4787 NAPT with one public IP and external ports from ``port_range``.

    ``rng`` seeds the external-port shuffle of each transport. The port pools are created on first
    use (or by :meth:`prepare`), so an unused transport costs nothing. ``now`` must not go backwards.
    """

    def __init__(
        self,
        config: NatConfig,
        rng: random.Random,
        public_ip: str,
        port_range: tuple[int, int] = DEFAULT_PORT_RANGE,
    ) -> None:
        self.config = config
        self.public_ip = public_ip
        self.port_range = port_range
        self._rng = rng
        self._mapping_key = _REMOTE_KEY[config.mapping]
        self._filter_key = _REMOTE_KEY[config.filtering]
        self._timeout: dict[Transport, float] = {
            "udp": config.udp_binding_timeout,
            "tcp": config.tcp_binding_timeout,
        }
        self._pools: dict[Transport, PortPool] = {}
        self._by_internal: dict[tuple[Transport, Address, object], _Binding] = {}
        self._by_external: dict[tuple[Transport, int], _Binding] = {}
        self._endpoints: dict[tuple[Transport, Address], _Endpoint] = {}
        self._timers: list[tuple[float, int, _Binding]] = []
        self._timer_serial = 0
        self.drops: Counter[DropReason] = Counter()
        self.bindings_created = 0
        self.bindings_expired = 0

    def prepare(self, *transports: Transport) -> None:
        """Build the external-port pools now (default: both), not on the first packet.

        A pool over the default 1024–65535 range takes about 75 ms to shuffle on the reference machine.
        """
        for transport in transports or ("udp", "tcp"):
            self._pool(transport)

    def outbound(self, transport: Transport, src: Address, dst: Address, now: float) -> Translation | None:
        """Map ``src`` (creating or refreshing its binding) and return the packet to send.

        For a destination on the NAT's own public IP this is the hairpinned packet: from the sender's
        external address to the internal endpoint behind ``dst``. ``None`` means dropped (see
        ``drops``).
        """
        timeout = self._timeout[transport]
        key = (transport, src, self._mapping_key(dst))  # RFC 4787 §4.1: what the mapping depends on
        binding = self._by_internal.get(key)
        if binding is not None and binding.expires <= now:
            self._remove(binding, now)
            binding = None
        if binding is None:
            binding = self._create(transport, src, key, now)
            if binding is None:
                self.drops[DropReason.PORTS_EXHAUSTED] += 1
                return None
        expires = now + timeout
        binding.expires = expires  # RFC 4787 §4.3 REQ-6: outbound packets refresh the binding
        binding.endpoint.permits[self._filter_key(dst)] = expires  # RFC 4787 §5: X:x has sent to dst
        if dst[0] != self.public_ip:
            return Translation(binding.external, dst)
        if not self.config.hairpin:
            self.drops[DropReason.HAIRPIN_DENIED] += 1
            return None
        # RFC 4787 §6 REQ-9: hairpinned packets carry the sender's external address and are filtered
        internal = self._admit(transport, binding.external, dst, now)
        return None if internal is None else Translation(binding.external, internal)

    def inbound(self, transport: Transport, src: Address, dst: Address, now: float) -> Translation | None:
        """Return the packet for the internal endpoint behind ``dst`` (source unchanged), or ``None``.

        Drops: no live binding on ``dst`` (NO_MAPPING), the filter refuses ``src`` (FILTERED), or
        ``src`` is this NAT's own public IP while hairpinning is off (HAIRPIN_DENIED).
        """
        if src[0] == self.public_ip and not self.config.hairpin:
            self.drops[DropReason.HAIRPIN_DENIED] += 1  # RFC 4787 §6: a hairpinned packet came around
            return None
        internal = self._admit(transport, src, dst, now)
        return None if internal is None else Translation(src, internal)

    def lookup(self, transport: Transport, internal: Address, remote: Address, now: float) -> Address | None:
        """The external address that ``internal`` would use towards ``remote`` right now, if any.

        Read-only: creates, refreshes and removes nothing.
        """
        binding = self._by_internal.get((transport, internal, self._mapping_key(remote)))
        if binding is None or binding.expires <= now:
            return None
        return binding.external

    def expire(self, now: float) -> int:
        """Remove every binding whose expiry is ``<= now`` and free its port. Return how many."""
        timers = self._timers
        removed = 0
        while timers and timers[0][0] <= now:
            _, serial, binding = heapq.heappop(timers)
            if binding.removed:
                continue
            if binding.expires <= now:
                self._remove(binding, now)
                removed += 1
            else:
                heapq.heappush(timers, (binding.expires, serial, binding))
        return removed

    def tcp_closed(self, src: Address, dst: Address, now: float) -> bool:
        """The TCP connection from ``src`` (inside) to ``dst`` closed (FIN or RST seen, no other connection on
        the binding): its binding becomes transitory and goes ``tcp_transitory_timeout`` from now (RFC 5382 §5
        REQ-5, ≥ 4 min) instead of the established 2 h 4 min, unless a new connection refreshes it first.

        Without this a lab that opens and closes connections keeps every binding (and its port) for 2 h.
        Returns ``True`` when a binding's expiry was brought forward.
        """
        binding = self._by_internal.get(("tcp", src, self._mapping_key(dst)))
        if binding is None or binding.removed:
            return False
        expires = now + min(self.config.tcp_transitory_timeout, self._timeout["tcp"])
        if expires >= binding.expires:
            return False
        binding.expires = expires
        self._timer_serial += 1
        heapq.heappush(self._timers, (expires, self._timer_serial, binding))
        return True

    def next_timer(self) -> float | None:
        """The earliest recorded expiry, or ``None``. A refreshed binding may make this early, never late."""
        return self._timers[0][0] if self._timers else None

    @property
    def binding_count(self) -> int:
        """Bindings held, including expired ones that ``expire`` has not collected yet."""
        return len(self._by_internal)

    # ------------------------------------------------------------------ internals

    def _pool(self, transport: Transport) -> PortPool:
        pool = self._pools.get(transport)
        if pool is None:
            first, last = self.port_range
            pool = PortPool(
                self.public_ip,
                transport,
                random.Random(self._rng.getrandbits(64)),
                first_port=first,
                last_port=last,
            )
            self._pools[transport] = pool
        return pool

    def _create(
        self, transport: Transport, src: Address, key: tuple[Transport, Address, object], now: float
    ) -> _Binding | None:
        self.expire(now)  # expired bindings must not hold a port (or the preserved port) any longer
        pool = self._pool(transport)
        lease = pool.claim(src[1], now) if self.config.port_preservation else None  # RFC 4787 §4.2.1
        if lease is None:
            try:
                lease = pool.allocate(now)
            except InsufficientCapacity:
                return None
        endpoint_key = (transport, src)
        endpoint = self._endpoints.get(endpoint_key)
        if endpoint is None:
            endpoint = self._endpoints[endpoint_key] = _Endpoint()
        endpoint.bindings += 1
        binding = _Binding(transport, src, (self.public_ip, lease.port), key, endpoint, now)
        self._by_internal[key] = binding
        self._by_external[(transport, lease.port)] = binding
        self._timer_serial += 1
        # The real expiry is set by the caller right after; the timer re-arms itself when popped early.
        heapq.heappush(self._timers, (now + self._timeout[transport], self._timer_serial, binding))
        self.bindings_created += 1
        return binding

    def _remove(self, binding: _Binding, now: float) -> None:
        binding.removed = True
        del self._by_internal[binding.internal_key]
        del self._by_external[(binding.transport, binding.external[1])]
        self._pools[binding.transport].release(binding.external[1], now)
        binding.endpoint.bindings -= 1
        if binding.endpoint.bindings == 0:
            del self._endpoints[(binding.transport, binding.internal)]
        self.bindings_expired += 1

    def _admit(self, transport: Transport, src: Address, dst: Address, now: float) -> Address | None:
        binding = self._by_external.get((transport, dst[1])) if dst[0] == self.public_ip else None
        if binding is None or binding.expires <= now:
            self.drops[DropReason.NO_MAPPING] += 1
            return None
        filter_key = self._filter_key(src)
        permit = binding.endpoint.permits.get(filter_key)
        if permit is None or permit <= now:
            self.drops[DropReason.FILTERED] += 1  # RFC 4787 §5: X:x has not sent to this sender
            return None
        if self.config.inbound_refresh:  # RFC 4787 §4.3 REQ-6: inbound refresh MAY be true
            expires = now + self._timeout[transport]
            binding.expires = expires
            binding.endpoint.permits[filter_key] = expires
        return binding.internal


@dataclass(frozen=True, slots=True)
class StaticNatConfig:
    """The Edge pool's 1:1 NAT: ``public_of`` maps each private IP to its public twin.

    ``snat_inbound`` and ``hairpin=False`` are the two misconfigurations the lab can reproduce.
    ``inside_address`` (the firewall's inside IP) is required with ``snat_inbound``.
    """

    public_of: Mapping[str, str]
    hairpin: bool = True
    snat_inbound: bool = False
    inside_address: str | None = None
    snat_port_range: tuple[int, int] = DEFAULT_PORT_RANGE
    snat_binding_timeout: float = DEFAULT_UDP_BINDING_TIMEOUT

    def __post_init__(self) -> None:
        publics = list(self.public_of.values())
        if len(set(publics)) != len(publics):
            raise ValueError("static 1:1 NAT: two private addresses share one public address")
        for ip in [*self.public_of, *publics]:
            ipaddress.ip_address(ip)  # ValueError on a malformed address
        if self.snat_inbound and self.inside_address is None:
            raise ValueError("snat_inbound needs inside_address")


class StaticNat:
    """Static 1:1 NAT: DNAT inbound with the source preserved, SNAT outbound to the same public IP."""

    def __init__(self, config: StaticNatConfig, rng: random.Random) -> None:
        self.config = config
        self._public_of = dict(config.public_of)
        self._private_of = {public: private for private, public in config.public_of.items()}
        self._snat: NatTable | None = None
        if config.snat_inbound:
            assert config.inside_address is not None  # checked by StaticNatConfig
            self._snat = NatTable(
                NatConfig(
                    mapping=Behaviour.ENDPOINT_INDEPENDENT,
                    filtering=Behaviour.ENDPOINT_INDEPENDENT,
                    udp_binding_timeout=config.snat_binding_timeout,
                    tcp_binding_timeout=config.snat_binding_timeout,
                    inbound_refresh=True,
                    port_preservation=False,
                ),
                rng,
                config.inside_address,
                config.snat_port_range,
            )
        self.drops: Counter[DropReason] = Counter()

    def public_address(self, private_ip: str) -> str | None:
        """The public twin of ``private_ip`` (what an Edge advertises), or ``None``."""
        return self._public_of.get(private_ip)

    def private_address(self, public_ip: str) -> str | None:
        """The private twin of ``public_ip``, or ``None``."""
        return self._private_of.get(public_ip)

    def outbound(self, transport: Transport, src: Address, dst: Address, now: float) -> Translation | None:
        """SNAT ``src`` to its public twin, port unchanged.

        Hairpin: a destination on another twin's public IP goes to that twin's private IP. Replies to
        an ``snat_inbound`` address go back to the real client.
        """
        public = self._public_of.get(src[0])
        if public is None:
            self.drops[DropReason.NOT_TRANSLATED] += 1
            return None
        translated_src = (public, src[1])
        if self._snat is not None and dst[0] == self._snat.public_ip:
            back = self._snat.inbound(transport, src, dst, now)
            if back is None:
                self.drops[DropReason.NO_MAPPING] += 1
                return None
            return Translation(translated_src, back.dst)
        private = self._private_of.get(dst[0])
        if private is None:
            return Translation(translated_src, dst)
        if not self.config.hairpin:
            self.drops[DropReason.HAIRPIN_DENIED] += 1  # the Edge nodes cannot reach each other's public IPs
            return None
        # Hairpin between public addresses; the receiver sees the sender's public address
        return Translation(translated_src, (private, dst[1]))

    def inbound(self, transport: Transport, src: Address, dst: Address, now: float) -> Translation | None:
        """DNAT ``dst`` to its private twin. The source is preserved, unless ``snat_inbound``."""
        private = self._private_of.get(dst[0])
        if private is None:
            self.drops[DropReason.NO_MAPPING] += 1
            return None
        if src[0] in self._private_of and not self.config.hairpin:
            self.drops[DropReason.HAIRPIN_DENIED] += 1
            return None
        translated_dst = (private, dst[1])
        if self._snat is None:
            return Translation(src, translated_dst)  # the A/V Edge must see the real client address
        rewritten = self._snat.outbound(transport, src, translated_dst, now)
        if rewritten is None:
            self.drops[DropReason.PORTS_EXHAUSTED] += 1
            return None
        return Translation(rewritten.src, translated_dst)

    def tcp_closed(self, src: Address, dst: Address, now: float) -> bool:
        """Nothing to shorten: outbound 1:1 translation keeps no per-connection binding."""
        return False

    def expire(self, now: float) -> int:
        """Collect expired ``snat_inbound`` bindings (the 1:1 table itself never expires)."""
        return 0 if self._snat is None else self._snat.expire(now)

    def next_timer(self) -> float | None:
        """When to call ``expire`` next, or ``None``."""
        return None if self._snat is None else self._snat.next_timer()
