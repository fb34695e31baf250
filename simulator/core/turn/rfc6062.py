"""RFC 6062 TCP relays: the Connect and ConnectionBind requests, and the peer side of a TCP allocation
(a peer connecting to the relay, the outcome of a Connect, peer bytes and closes).

The client side of a bound data connection (a raw pipe to the peer, RFC 6062 §5.5) is demultiplexed by
``TurnServer.receive_stream``; the peer connections themselves are registered in
:mod:`simulator.core.turn.allocations`, because they die with their allocation.
"""

from __future__ import annotations

from typing import Any, Final

from simulator.core.turn.allocations import AllocationTable
from simulator.core.turn.request import REASONS, Reply, Request
from simulator.core.turn.responses import ResponseWriter
from simulator.core.turn.state import CloseStream, ConnectPeer, Sink, as_address
from simulator.wire import stun, turn
from simulator.wire.stun import Attribute, Message, MessageClass, attr
from simulator.wire.turn import TurnMethod

_PEER_BUFFER_LIMIT: Final = 65536  # RFC 6062 §5.3: buffer peer data until ConnectionBind, bounded


class Rfc6062Handlers(AllocationTable, ResponseWriter):
    """Connect, ConnectionBind and the peer TCP connections of TCP allocations (a mixin of :class:`TurnServer`)."""

    # ---------------------------------------------------------------- requests

    def _connect(self, req: Request, now: float) -> None:
        alloc = self._own_allocation(req)
        if alloc.transport != "tcp":
            raise Reply(400, "Bad Request")  # RFC 6062 §5.2: Connect on a UDP allocation
        peer = req.msg.get(turn.XOR_PEER_ADDRESS)
        if peer is None:
            raise Reply(400, "Bad Request")
        self._check_peer(alloc, peer)
        if any(pc.peer == peer for pc in alloc.peer_connections.values()):
            raise Reply(446, REASONS[446])  # RFC 6062 §5.2: already connected to that peer
        pc = self._new_peer_connection(alloc, peer, now)
        pc.connect_tid = req.msg.transaction_id
        self._permit(alloc, peer.host, now)  # RFC 6062 §5.2: a Connect installs a permission
        self._events.append(ConnectPeer(pc.connection_id, alloc.lease.address, alloc.lease.port, peer))

    def _connection_bind(self, req: Request, now: float) -> None:
        stream = req.stream
        cid = req.msg.get(turn.CONNECTION_ID)
        pc = self._peer_conns.get(cid) if cid is not None else None
        if stream is None or pc is None or pc.data_sink is not None or pc.sink is None:
            raise Reply(400, "Bad Request")  # RFC 6062 §5.4: unknown or used CONNECTION-ID
        if req.conn in self._allocations:
            raise Reply(400, "Bad Request")  # RFC 6062 §5.4: a control connection cannot be a data one
        assert req.auth is not None
        if pc.allocation.username != req.auth.username:
            raise Reply(441, REASONS[441])
        self._respond(req, MessageClass.SUCCESS, (), now)
        pc.data_sink = stream.sink
        stream.peer = pc
        if pc.buffer:
            self.transmits.append((stream.sink, bytes(pc.buffer), pc.peer))
            pc.buffer.clear()

    # ---------------------------------------------------------------- peer connections

    def peer_stream_opened(self, port: int, sink: Sink, peer: Any, now: float) -> bool:
        """A peer connected to the TCP relay listener on ``port``. False: close it (no permission)."""
        alloc = self._by_relay.get(("tcp", port))
        peer = as_address(peer)
        if alloc is None:
            return False
        perm = alloc.permissions.get(peer.host)
        if perm is None or perm <= now:
            return False  # RFC 6062 §5.3: no permission for this peer: reject the connection
        pc = self._new_peer_connection(alloc, peer, now)
        pc.sink = sink
        self._peer_by_sink[sink] = pc
        # RFC 6062 §5.3: ConnectionAttempt indication with CONNECTION-ID and XOR-PEER-ADDRESS.
        ind = stun.indication(
            TurnMethod.CONNECTION_ATTEMPT,
            self._new_tid(12),
            attr(turn.CONNECTION_ID, pc.connection_id),
            attr(turn.XOR_PEER_ADDRESS, peer),
            dialect=turn.RFC,
        )
        self.transmits.append((alloc.client_sink, ind.serialize(), alloc.client))
        return True

    def peer_connected(self, connection_id: int, sink: Sink, now: float) -> None:
        """The outgoing connection of a Connect request is up (RFC 6062 §5.2)."""
        pc = self._peer_conns.get(connection_id)
        if pc is None or pc.allocation.dead:
            self._events.append(CloseStream(sink))
            return
        pc.sink = sink
        self._peer_by_sink[sink] = pc
        alloc = pc.allocation
        tid = pc.connect_tid
        pc.connect_tid = None
        if tid is not None:
            resp = Message(
                TurnMethod.CONNECT, MessageClass.SUCCESS, tid, (attr(turn.CONNECTION_ID, connection_id),), turn.RFC
            )
            self.transmits.append((alloc.client_sink, resp.serialize(key=alloc.key_bytes), alloc.client))

    def peer_connect_failed(self, connection_id: int, now: float) -> None:
        """The outgoing connection failed or timed out: 447 (RFC 6062 §5.2)."""
        pc = self._peer_conns.pop(connection_id, None)
        if pc is None:
            return
        alloc = pc.allocation
        alloc.peer_connections.pop(connection_id, None)
        if pc.connect_tid is not None and not alloc.dead:
            resp = Message(
                TurnMethod.CONNECT,
                MessageClass.ERROR,
                pc.connect_tid,
                (Attribute(stun.AttrType.ERROR_CODE, stun.ErrorCode(447, REASONS[447])),),
                turn.RFC,
            )
            self._count_error(447, "connect")
            self.transmits.append((alloc.client_sink, resp.serialize(key=alloc.key_bytes), alloc.client))

    def receive_peer_stream(self, sink: Sink, data: bytes, now: float) -> None:
        """Bytes from a peer TCP connection."""
        pc = self._peer_by_sink.get(sink)
        if pc is None:
            return
        if pc.data_sink is not None:
            self.transmits.append((pc.data_sink, data, pc.peer))
            self.metrics.relayed_to_client += 1
            self.metrics.bytes_to_client += len(data)
        elif len(pc.buffer) + len(data) <= _PEER_BUFFER_LIMIT:
            pc.buffer += data  # RFC 6062 §5.3: hold data until the client binds a data connection
        else:
            self._close_peer(pc)

    def peer_stream_closed(self, sink: Sink, now: float) -> None:
        pc = self._peer_by_sink.pop(sink, None)
        if pc is not None:
            pc.sink = None
            self._close_peer(pc)
