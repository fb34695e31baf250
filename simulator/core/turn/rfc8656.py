"""RFC 8656 TURN request handlers through the generic pipeline: Allocate, Refresh, CreatePermission,
ChannelBind, and the Send indication.

Each handler gets an authenticated :class:`Request` and either answers through ``_respond`` or raises
:class:`Reply`. The common Allocate/Refresh cases are answered from raw bytes first by
:mod:`simulator.core.turn.fastpath`, which must give exactly the answers written here.
"""

from __future__ import annotations

from simulator.core.ports import Transport
from simulator.core.turn.allocations import AllocationTable
from simulator.core.turn.request import REASONS, Reply, Request
from simulator.core.turn.responses import ResponseWriter
from simulator.core.turn.state import Channel
from simulator.wire import stun, turn
from simulator.wire.stun import Message, MessageClass, attr
from simulator.wire.turn import TransportProtocol


class Rfc8656Handlers(AllocationTable, ResponseWriter):
    """The RFC 8656 methods of the handler table (a mixin of :class:`TurnServer`)."""

    def _allocate(self, req: Request, now: float) -> None:
        msg = req.msg
        if req.conn in self._allocations:
            raise Reply(437, REASONS[437])  # RFC 8656 §7.2: 5-tuple already has an allocation
        requested = msg.get(turn.REQUESTED_TRANSPORT)
        if requested is None:
            raise Reply(400, "Bad Request")  # RFC 8656 §7.2: REQUESTED-TRANSPORT is mandatory
        if requested == TransportProtocol.TCP:
            if req.stream is None:
                raise Reply(400, "Bad Request")  # RFC 6062 §5.1: TCP relay needs a TCP control connection
            transport: Transport = "tcp"
        elif requested == TransportProtocol.UDP:
            transport = "udp"
        else:
            raise Reply(442, REASONS[442])  # RFC 8656 §7.2
        even = msg.get(turn.EVEN_PORT)
        token = msg.get(turn.RESERVATION_TOKEN)
        family = msg.get(turn.REQUESTED_ADDRESS_FAMILY)
        if token is not None and (even is not None or family is not None):
            raise Reply(400, "Bad Request")  # RFC 8656 §7.2: token excludes EVEN-PORT and family
        relay_family = 0x02 if ":" in self.config.relay_host else 0x01
        if family is not None and family != relay_family:
            raise Reply(440, REASONS[440])  # RFC 8656 §7.2: only the relay host's family here
        if msg.has(turn.ADDITIONAL_ADDRESS_FAMILY):
            raise Reply(440, REASONS[440])  # no dual allocation (RFC 8656 §7.2)
        lifetime = self._lifetime(msg.get(turn.LIFETIME))
        alloc = self._create(
            req, transport, now, lifetime, even_port=even is not None, reserve_next=bool(even), token=token
        )
        attrs = [
            attr(turn.XOR_RELAYED_ADDRESS, alloc.public),
            attr(turn.LIFETIME, lifetime),
        ]
        if alloc.lease.reservation_token is not None:
            attrs.append(attr(turn.RESERVATION_TOKEN, alloc.lease.reservation_token))
        attrs.append(attr(stun.XOR_MAPPED_ADDRESS, req.client))  # RFC 8656 §7.3: the reflexive address
        self._respond(req, MessageClass.SUCCESS, attrs, now)

    def _refresh(self, req: Request, now: float) -> None:
        alloc = self._own_allocation(req)
        requested = req.msg.get(turn.LIFETIME)
        if requested == 0:
            self._delete(alloc, now)  # RFC 8656 §8: LIFETIME 0 deletes
            self._respond(req, MessageClass.SUCCESS, (attr(turn.LIFETIME, 0),), now)
            return
        lifetime = self._lifetime(requested)
        alloc.expires = now + lifetime
        self._schedule(alloc)
        self._respond(req, MessageClass.SUCCESS, (attr(turn.LIFETIME, lifetime),), now)

    def _create_permission(self, req: Request, now: float) -> None:
        alloc = self._own_allocation(req)
        peers = req.msg.get_all(turn.XOR_PEER_ADDRESS)
        if not peers:
            raise Reply(400, "Bad Request")  # RFC 8656 §9.2: at least one XOR-PEER-ADDRESS
        for peer in peers:
            self._check_peer(alloc, peer)
        for peer in peers:  # RFC 8656 §9.2: all or nothing
            self._permit(alloc, peer.host, now)
        self._respond(req, MessageClass.SUCCESS, (), now)

    def _channel_bind(self, req: Request, now: float) -> None:
        alloc = self._own_allocation(req)
        msg = req.msg
        number = msg.get(turn.CHANNEL_NUMBER)
        peer = msg.get(turn.XOR_PEER_ADDRESS)
        if number is None or peer is None or not turn.CHANNEL_MIN <= number <= turn.CHANNEL_MAX:
            raise Reply(400, "Bad Request")  # RFC 8656 §11.2 / RFC 5766 §11: 0x4000-0x7FFF and a peer
        self._check_peer(alloc, peer)
        cooldown = self.config.channel_cooldown
        existing = alloc.channels.get(number)
        if existing is not None and existing.peer != peer and existing.expires + cooldown > now:
            raise Reply(400, "Bad Request")  # RFC 8656 §11.2: number bound to another peer
        other = alloc.peer_channels.get(peer)
        if other is not None and other.number != number and other.expires + cooldown > now:
            raise Reply(400, "Bad Request")  # RFC 8656 §11.2: peer bound to another number
        if existing is not None and existing.peer != peer:
            alloc.peer_channels.pop(existing.peer, None)
        if other is not None and other.number != number:
            alloc.channels.pop(other.number, None)
        channel = Channel(number, peer, now + self.config.channel_lifetime)  # RFC 8656 §12: 10 min
        alloc.channels[number] = channel
        alloc.peer_channels[peer] = channel
        self._permit(alloc, peer.host, now)  # RFC 8656 §11.2: ChannelBind installs/refreshes a permission
        self._respond(req, MessageClass.SUCCESS, (), now)

    def _send_indication(self, msg: Message, conn: object, now: float) -> None:
        """RFC 8656 §10.2: Send indication -> UDP datagram to the peer, if permitted; else drop."""
        alloc = self._allocations.get(conn)
        peer = msg.get(turn.XOR_PEER_ADDRESS)
        data = msg.get(turn.DATA)
        if alloc is None or alloc.ms or alloc.transport != "udp" or peer is None or data is None:
            self.metrics.dropped += 1
            return
        perm = alloc.permissions.get(peer.host)
        if perm is None or perm <= now:
            self.metrics.dropped += 1
            return
        self.transmits.append((alloc.relay_sink, data, peer))
        self.metrics.relayed_to_peer += 1
        self.metrics.bytes_to_peer += len(data)
