"""A/V Edge services of every node (E10–E17, I6, I7, P4–P6) and the media peers beyond the Edge.

Each node runs two A/V Edge interfaces sharing one relay port allocator (one pool per relay address and
transport, 50000–59999 by default): the external one listens on the node's public A/V address (the 1:1
NAT preserves sources, see ``Lab.external_bind``), the internal one on the internal address; both relay on
the public A/V address and advertise it. Every node checks TURN credentials against the pool's one
:class:`~simulator.core.credentials.CredentialStore`, which the Access Edge's MRAS fills, and all of them,
MRAS included, tell time by the loop's one :func:`~simulator.net.edge.av_edge.unix_loop_clock` (the pool
NAT they share needs one clock too). The node's private addresses are given to the core, which must never
put them in a response.

Media peers: every federated and PIC partner gets one at its address — UDP 3478 (a remote A/V Edge's
STUN, and an echo), UDP 50600 (a media port: echo) and TCP 443 and 50600 (echo) — the "Any" side of the A/V rules.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from simulator.core.ports import RelayPortAllocator
from simulator.lab.addressing import HostKind
from simulator.net.edge.av_edge import AvEdgeServer, PoolNatView
from simulator.net.peers.media_peer import MediaPeer
from simulator.net.transport.service import Service
from simulator.spec.schema import ClientRole
from simulator.spec.schema import EdgeNode as NodeSpec

if TYPE_CHECKING:
    from simulator.lab.topology import Lab

TURN_UDP_PORT = 3478
TURN_TCP_PORT = 443
PEER_TCP_MEDIA_PORT = 50600
PEER_UDP_MEDIA_PORT = 50600  # where a partner's client takes RTP over UDP (E11, E13: not its Edge's 3478)


def av_services(lab: Lab, node: NodeSpec) -> dict[str, Service]:
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
