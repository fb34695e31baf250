"""A/V Edge services of every node (E10–E17, I6, I7, P4–P6) and the media peers beyond the Edge.

Each node runs two A/V Edge interfaces sharing one relay port allocator (one pool per relay address and
transport, 50000–59999 by default): the external one listens on the node's public A/V address (the 1:1
NAT preserves sources, see ``Lab.external_bind``), the internal one on the internal address; both relay on
the public A/V address and advertise it. Every node checks TURN credentials against the pool's one
:class:`~simulator.core.credentials.CredentialStore`, which the Access Edge's MRAS fills, and all of them,
MRAS included, tell time by the loop's one :func:`~simulator.net.edge.av_edge.unix_loop_clock` (the pool
NAT they share needs one clock too). The node's private addresses are given to the core, which must never
put them in a response.

With ``Lab(scenario, av_workers=N)`` (``edgesim run --av-workers N``) each interface is instead served by N
worker processes (:class:`~simulator.net.edge.workers.AvEdgeWorkers`, as ``serve av-edge --workers N``):

* **Relay ports.** The two interfaces of a node relay on the same public address, so they must never bind
  the same port: the range is split in two halves — the external interface's workers own the first, the
  internal one's the second — and each half is sliced among that interface's N workers
  (:func:`~simulator.net.edge.workers.relay_slices`). An interface can then hold half the allocations it
  could in-process (where both draw from the one allocator); 2·N relay ports at least.
* **Credentials.** MRAS issues :func:`~simulator.core.credentials.derived_credential` ones (HMAC of the lab's
  ``av_secret``), which every worker verifies with the secret alone; no store is shared.
* **Pool NAT.** Each worker emulates the pool's 1:1 NAT with its own :class:`~simulator.core.nat.StaticNat`
  table of the same configuration. DNAT, source preservation and ``hairpin: false`` drops are stateless, so
  they behave exactly as in-process. ``snat_inbound``'s inside-address bindings become per worker (one table
  per worker, not one per pool): one client endpoint that reaches several workers (interfaces, nodes) gets
  one inside port per worker instead of one pool-wide (endpoint-independent) mapping, and two clients on
  different workers may be shown the same inside address and port. The NAT's drop counts stay in the
  workers (``lab.pool_nat.drops`` stays empty).
* **Metrics.** :func:`worker_av_edges` asks every worker for its counters: one ``av-external#w0``… entry
  per worker, and the relay pools of both interfaces (one address) summed once per node.
* **Clock.** Each worker runs on its own loop's Unix clock; MRAS expiries (minutes) do not notice.

Media peers: every federated and PIC partner gets one at its address — UDP 3478 (a remote A/V Edge's
STUN, and an echo), UDP 50600 (a media port: echo) and TCP 443 and 50600 (echo) — the "Any" side of the A/V rules.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, cast

from simulator.core.ports import RelayPortAllocator
from simulator.lab.addressing import HostKind
from simulator.net.edge.av_edge import AvEdgeServer, PoolNatView
from simulator.net.edge.workers import (
    AvEdgeWorkers,
    Snapshot,
    WorkerNat,
    WorkerPool,
    WorkerView,
    merge_pools,
    relay_slices,
)
from simulator.net.peers.media_peer import MediaPeer
from simulator.net.transport.service import Service
from simulator.spec.schema import ClientRole, Scenario
from simulator.spec.schema import EdgeNode as NodeSpec

if TYPE_CHECKING:
    from simulator.lab.topology import Lab

TURN_UDP_PORT = 3478
TURN_TCP_PORT = 443
PEER_TCP_MEDIA_PORT = 50600
PEER_UDP_MEDIA_PORT = 50600  # where a partner's client takes RTP over UDP (E11, E13: not its Edge's 3478)


def most_av_workers(scenario: Scenario) -> int:
    """The most A/V workers per interface ``scenario``'s relay range can slice: each worker owns at least one port
    of its interface's half of the range (two interfaces per node)."""
    return (scenario.edge_pool.relay_ports.last - scenario.edge_pool.relay_ports.first + 1) // 2


def av_workers_problem(scenario: Scenario, count: int) -> str | None:
    """Why ``count`` A/V workers per interface cannot run ``scenario`` (None: they can)."""
    first, last = scenario.edge_pool.relay_ports.first, scenario.edge_pool.relay_ports.last
    if count < 1:
        return "want 1 or more worker processes per A/V Edge interface"
    if count > most_av_workers(scenario):
        return (f"{count} workers per interface need at least {2 * count} relay ports (two interfaces per node), "
                f"the scenario's range {first}-{last} has {last - first + 1}")
    return None


def av_services(lab: Lab, node: NodeSpec) -> dict[str, Service]:
    if lab.av_workers is not None:
        return av_worker_services(lab, node, lab.av_workers)
    pool = lab.scenario.edge_pool
    bind = lab.external_bind(node.name, "av")  # the public address embedded, the private one deployed
    public = lab.public_address(node.name, "av")
    index = [n.name for n in pool.nodes].index(node.name)
    seed = lab.scenario.seed * 1000 + index
    ports = RelayPortAllocator(random.Random(seed), first_port=pool.relay_ports.first,
                               last_port=pool.relay_ports.last)
    internal = lab.plan.one(node.name, HostKind.EDGE_INTERNAL).address
    private = lab.plan.one(node.name, HostKind.EDGE_AV_PRIVATE).address
    # (listen address, where ALTERNATE-SERVER points, whether its listeners face the pool NAT): the external
    # interface is behind the 1:1 NAT; the internal one is not, but its relays are (they are on the public side).
    listeners = {"av-external": (bind, public, True), "av-internal": (internal, internal, False)}
    nat = lab.pool_nat  # None when deployed: the real firewall NATs, nothing to emulate
    return {
        name: AvEdgeServer(listen, public, relay_host=bind, udp_port=lab.port_map(TURN_UDP_PORT),
                           tcp_port=lab.port_map(TURN_TCP_PORT), credentials=lab.credentials,
                           realm=lab.scenario.domain, seed=seed + offset, ports=ports,
                           config={"private_hosts": lab.private_addresses(node.name), "alternate_host": alternate},
                           nat_view=None if nat is None else PoolNatView(nat, private, public, listeners=behind_nat))
        for offset, (name, (listen, alternate, behind_nat)) in enumerate(listeners.items())
    }


def av_worker_services(lab: Lab, node: NodeSpec, count: int) -> dict[str, Service]:
    """The node's two A/V Edge interfaces, each on ``count`` worker processes (see the module's docstring)."""
    pool = lab.scenario.edge_pool
    bind = lab.external_bind(node.name, "av")
    public = lab.public_address(node.name, "av")
    index = [n.name for n in pool.nodes].index(node.name)
    internal = lab.plan.one(node.name, HostKind.EDGE_INTERNAL).address
    private = lab.plan.one(node.name, HostKind.EDGE_AV_PRIVATE).address
    listeners = {"av-external": (bind, public, True), "av-internal": (internal, internal, False)}
    halves = relay_slices(pool.relay_ports.first, pool.relay_ports.last, 2)
    nat = lab.pool_nat
    services: dict[str, Service] = {}
    for offset, (name, (listen, alternate, behind_nat)) in enumerate(listeners.items()):
        first, last = halves[offset]
        # Seeds apart by more than ``count`` (a pool's workers take seed + index).
        seed = (lab.scenario.seed * 1000 + index * 2 + offset) * 1024
        view = None if nat is None else WorkerNat(nat.config, private, behind_nat,
                                                  f"{lab.scenario.seed}:pool-nat:{node.name}:{name}")
        services[name] = AvEdgeWorkers(WorkerPool.plan(
            count, listen=listen, public=public, relay_bind=bind, udp_port=lab.port_map(TURN_UDP_PORT),
            tcp_port=lab.port_map(TURN_TCP_PORT), first_port=first, last_port=last, realm=lab.scenario.domain,
            secret=lab.av_secret, seed=seed, nat=view,
            config={"private_hosts": lab.private_addresses(node.name), "alternate_host": alternate},
            record_arrivals=lab.arrival_log is not None))  # a serving side of firewall lab mode
    return services


def worker_av_edges(lab: Lab) -> list[tuple[str, str, AvEdgeServer]]:
    """The metrics sources (``Sources.av_edges``) of the A/V Edges running in workers: one per worker, labelled
    ``<interface>#w<i>``; a node's two interfaces relay on one address, so their relay pools (every worker's,
    summed) go on the node's first entry only, as the collector counts each (address, transport) once. Stopped
    interfaces are left out."""
    out: list[tuple[str, str, AvEdgeServer]] = []
    for node_name, node in lab.nodes.items():
        entries: list[tuple[str, Snapshot]] = []
        for name, service in node.services.items():
            if isinstance(service, AvEdgeWorkers) and service.running:
                entries += [(f"{name}#w{index}", snap) for index, snap in enumerate(service.pool.snapshots())]
        pools = merge_pools([snap for _, snap in entries])
        # Duck-typed: the collector reads running, core.metrics, core.allocation_count, streams and ports.
        out += [(node_name, label, cast(AvEdgeServer, WorkerView(snap, pools if index == 0 else [])))
                for index, (label, snap) in enumerate(entries)]
    return out


def av_worker_arrivals(lab: Lab) -> list[dict[str, Any]]:
    """What reached the listeners of the A/V Edges running in workers (firewall lab mode records it)."""
    return [entry for node in lab.nodes.values() for service in node.services.values()
            if isinstance(service, AvEdgeWorkers) and service.running for entry in service.pool.arrivals()]


def media_peers(lab: Lab) -> dict[str, Service]:
    services: dict[str, Service] = {}
    for role in (ClientRole.FEDERATED_PARTNER, ClientRole.PIC_PARTNER):
        for client in lab.scenario.clients_with_role(role):
            if not lab.placement.runs(client):
                continue
            host = lab.plan.of(client.name, HostKind.CLIENT)[0].address
            services[f"media-{client.name}"] = MediaPeer(client.name, host, lab.port_map(TURN_UDP_PORT),
                                                         (lab.port_map(TURN_TCP_PORT), PEER_TCP_MEDIA_PORT),
                                                         rtp_port=PEER_UDP_MEDIA_PORT)
    return services
