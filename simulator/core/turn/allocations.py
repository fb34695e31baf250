"""The allocation lifecycle: create (quotas, relay port, bind), refresh scheduling, delete, and the policy
checks every handler applies to an allocation (its owner, its lifetime, the peers it may reach).

Lifetimes (RFC 8656 §7.2, §9, §12): allocation 600 s by default, clamped to [600, 3600]; permissions
300 s, per peer IP; channels 600 s, and an expired channel number keeps its peer for another 300 s.
Allocations expire from a heap of ``(expiry, schedule number)`` in ``handle_timer`` (a refreshed or deleted
allocation leaves a stale entry that refers to nothing; the heap is rebuilt when those outnumber the live
ones, so a deleted allocation is freed at once, not kept 600 s by its timer); permissions and channels are
checked against ``now`` where they are used, so the per-packet path needs no timer.

RFC 6062 peer connections belong to their allocation and go with it, so they are registered and closed here.
"""

from __future__ import annotations

import heapq
import ipaddress
from typing import Final

from simulator.core.ports import InsufficientCapacity, PortLease, Transport
from simulator.core.turn.request import REASONS, Reply, Request
from simulator.core.turn.state import Allocation, CloseStream, PeerConnection, ServerState, Sink
from simulator.wire.stun import Address

_RELAY_BIND_ATTEMPTS: Final = 64


class AllocationTable(ServerState):
    """Allocations by 5-tuple and by relay port, their expiry and their peer connections (a mixin)."""

    # ---------------------------------------------------------------- policy

    def _lifetime(self, requested: int | None) -> int:
        """RFC 8656 §7.2: the default when absent, clamped to [default, max] otherwise."""
        cfg = self.config
        if requested is None:
            return cfg.default_lifetime
        return max(cfg.default_lifetime, min(requested, cfg.max_lifetime))

    def _check_peer(self, alloc: Allocation, peer: Address) -> None:
        try:
            ip = ipaddress.ip_address(peer.host)
        except ValueError as exc:
            raise Reply(400, "Bad Request") from exc
        if (ip.version == 6) != (":" in alloc.lease.address):
            raise Reply(443, REASONS[443])  # RFC 8656 §9.1: peer family differs from the relay's
        if peer.port == 0 or any(ip in net for net in self.config.denied_peers):
            raise Reply(403, REASONS[403])  # RFC 8656 §9.1 / §21.3: peer denied by local policy

    def _own_allocation(self, req: Request) -> Allocation:
        alloc = self._allocations.get(req.conn)
        if alloc is None or alloc.dead:
            raise Reply(437, REASONS[437])  # RFC 8656 §7.3: no allocation on this 5-tuple
        assert req.auth is not None
        if alloc.username != req.auth.username:
            raise Reply(441, REASONS[441])  # RFC 8656 §5: another user's allocation
        return alloc

    def _permit(self, alloc: Allocation, host: str, now: float) -> None:
        if not alloc.listening:
            alloc.listening = True
            self.relays.listen(alloc.transport, alloc.lease.port)  # before the first permission (RelayBinder)
        alloc.permissions[host] = now + self.config.permission_lifetime  # RFC 8656 §9: 300 s

    # ---------------------------------------------------------------- lifecycle

    def _create(
        self,
        req: Request,
        transport: Transport,
        now: float,
        lifetime: int,
        *,
        even_port: bool = False,
        reserve_next: bool = False,
        token: bytes | None = None,
        ms: bool = False,
    ) -> Allocation:
        assert req.auth is not None
        cfg = self.config
        username = req.auth.username
        if cfg.max_allocations is not None and len(self._allocations) >= cfg.max_allocations:
            raise Reply(486, REASONS[486])  # total quota (coturn --total-quota answers 486 too)
        if cfg.user_quota is not None and self._per_user.get(username, 0) >= cfg.user_quota:
            raise Reply(486, REASONS[486])  # RFC 8656 §7.2: per-user quota
        sink: Sink | None = None
        lease: PortLease | None = None
        for _ in range(_RELAY_BIND_ATTEMPTS):
            try:
                lease = self.ports.allocate(
                    cfg.relay_host, transport, now, even_port=even_port, reserve_next=reserve_next,
                    reservation_token=token,
                )
            except InsufficientCapacity as exc:
                raise Reply(508, REASONS[508]) from exc  # RFC 8656 §7.2: no relay port
            sink = self.relays.bind(transport, lease.address, lease.port)
            if sink is not None:
                break
            self.metrics.bind_failures += 1
            self.ports.bind_failed(lease, now)  # the OS holds the port: to the tail, next one
            if token is not None:
                raise Reply(508, REASONS[508])
            lease = None
        if lease is None or sink is None:
            raise Reply(508, REASONS[508])
        stream = req.stream
        alloc = Allocation(
            key=req.conn,
            client=req.client,
            client_sink=req.sink,
            stream=stream is not None,
            ms=ms,
            ms_tcp=stream is not None and stream.ms_framer is not None,
            dialect=req.msg.dialect,
            transport=transport,
            lease=lease,
            relay_sink=sink,
            public=Address(cfg.public_host, lease.port),
            username=username,
            key_bytes=req.auth.key,
            integrity=req.integrity,
            expires=now + lifetime,
        )
        self._allocations[req.conn] = alloc
        self._by_relay[(transport, lease.port)] = alloc
        self._per_user[username] = self._per_user.get(username, 0) + 1
        self._schedule(alloc)
        self.metrics.allocations_created += 1
        return alloc

    def _schedule(self, alloc: Allocation) -> None:
        scheduled = self._scheduled
        scheduled.pop(alloc.timer, None)
        self._seq += 1
        alloc.timer = self._seq
        scheduled[self._seq] = alloc
        heap = self._expiry_heap
        if len(heap) > 2 * len(scheduled) + 1024:  # mostly stale entries: rebuild from the live ones
            heap[:] = [(a.expires, seq) for seq, a in scheduled.items() if seq != self._seq]
            heapq.heapify(heap)
        heapq.heappush(heap, (alloc.expires, self._seq))

    def _delete(self, alloc: Allocation, now: float) -> None:
        if alloc.dead:
            return
        alloc.dead = True
        self._scheduled.pop(alloc.timer, None)
        self._allocations.pop(alloc.key, None)
        self._by_relay.pop((alloc.transport, alloc.lease.port), None)
        left = self._per_user.get(alloc.username, 1) - 1
        if left:
            self._per_user[alloc.username] = left
        else:
            self._per_user.pop(alloc.username, None)
        for pc in list(alloc.peer_connections.values()):
            self._close_peer(pc)
        self.relays.unbind(alloc.transport, alloc.lease.port)
        self.ports.release(alloc.lease, now)
        self.metrics.allocations_deleted += 1

    def delete_all(self, now: float) -> None:
        """Drop every allocation and release its port (shutdown)."""
        for alloc in list(self._allocations.values()):
            self._delete(alloc, now)

    # ---------------------------------------------------------------- RFC 6062 peer connections

    def _new_peer_connection(self, alloc: Allocation, peer: Address, now: float) -> PeerConnection:
        while True:
            cid = self._rng.getrandbits(32)
            if cid and cid not in self._peer_conns:
                break
        deadline = now + self.config.connection_bind_timeout
        pc = PeerConnection(cid, alloc, peer, deadline)
        self._peer_conns[cid] = pc
        alloc.peer_connections[cid] = pc
        self._bind_deadlines.append((deadline, cid))
        return pc

    def _close_peer(self, pc: PeerConnection) -> None:
        self._peer_conns.pop(pc.connection_id, None)
        pc.allocation.peer_connections.pop(pc.connection_id, None)
        if pc.sink is not None:
            self._peer_by_sink.pop(pc.sink, None)
            self._events.append(CloseStream(pc.sink))
            pc.sink = None
        if pc.data_sink is not None:
            data_sink = pc.data_sink
            pc.data_sink = None
            if self._streams.pop(data_sink, None) is not None:
                self._events.append(CloseStream(data_sink))
