"""The TurnServer façade: the calls the shell makes, the demultiplexer, timers, outputs and request dispatch.

Theory of operation
-------------------
One :class:`TurnServer` serves one A/V Edge interface: one UDP listener and one TCP listener (the lab
starts one on the external and one on the internal address of a node). It never touches a socket or a
clock. The asyncio shell (:mod:`simulator.net.edge.av_edge`) feeds it

* ``receive_datagram(data, client, now)`` for every datagram on the UDP listener,
* ``stream_opened(sink, client, now)`` / ``receive_stream(sink, data, now)`` / ``stream_closed(sink, now)``
  for every TCP connection on the TCP listener,
* ``receive_from_peer(port, data, peer, now)`` for every datagram on a UDP relay socket,
* ``peer_stream_opened(port, sink, peer, now)`` / ``peer_connected(connection_id, sink, now)`` /
  ``peer_connect_failed(connection_id, now)`` / ``receive_peer_stream(sink, data, now)`` /
  ``peer_stream_closed(sink, now)`` for RFC 6062 peer TCP connections (:mod:`~simulator.core.turn.rfc6062`),
* ``handle_timer(now)`` at (or after) ``get_timer()``,

and drains what the core wants done: ``datagrams_to_send()`` (a list of ``(sink, bytes, address)``
transmits; the shell calls ``sink.sendto(bytes, address)``) and ``next_event()`` (close a stream, open
a peer TCP connection). A *sink* is whatever object the shell hands in for a socket or connection; the
core only stores it and hands it back. Relay sockets are bound through an injected :class:`RelayBinder`,
because a bind can fail (another program holds the port) and the Allocate answer depends on it
synchronously (RFC 8656 §7.2: try another port, else 508).

A *5-tuple* is the client address for the UDP listener, and the connection sink for TCP. Each has at
most one allocation (RFC 8656 §2.2). The dialect of a 5-tuple is decided by each message's first bytes
(MS-TURN carries the MAGIC-COOKIE attribute first; research-lync-edge.md §1.1) and pinned by the
allocation: an MS-TURN allocation never answers RFC TURN requests and vice versa.

Requests go through the same pipeline, as a table of handlers per (dialect family, method):

    parse ─▶ response cache (same 5-tuple + transaction ID: replay, RFC 8489 §6.3.1)
          ─▶ authenticate (401 / 438 / 400, RFC 8489 §9.2.4; MS-TURN 401 adds ALTERNATE-SERVER)
          ─▶ 420 for unknown comprehension-required attributes (RFC 8489 §6.3.1)
          ─▶ handler (Allocate, Refresh, CreatePermission, ChannelBind, Connect, ConnectionBind,
                      MS Allocate/Send/Set Active Destination)
          ─▶ response signed with the user's key (cached for Allocate/Refresh)

RFC 8656 Allocate and Refresh are tried first by the byte-level fast path (:mod:`~simulator.core.turn.fastpath`).

Addresses: the core knows the node's *public* A/V address (``config.public_host``, 1:1 NAT) and the
private ones it binds (``config.private_hosts``). Every address it writes into a response is either
the public host or the client's own reflexive address; it never writes a private one
(research-lync-edge.md §2.1, "NAT with DNS LB").

The hot paths are ChannelData client→peer and peer→client: one dict lookup for the allocation, one
for the channel, a ``now`` comparison, slicing, one append. No :class:`Message` is built for them. They
live here, in ``receive_datagram`` and ``receive_from_peer``, and reach every table through ``self``
(:class:`~simulator.core.turn.state.ServerState`), so splitting the handlers into modules costs them nothing.
"""

from __future__ import annotations

import heapq
import random
import struct
from collections.abc import Callable
from typing import Any, Final

from simulator.core.credentials import CredentialStore
from simulator.core.ports import RelayPortAllocator
from simulator.core.turn.auth import Authenticator
from simulator.core.turn.binding import _BINDING_SUCCESS, _COOKIE_PORT, _XMA_V4_HEAD, BindingResponder
from simulator.core.turn.fastpath import ALLOCATE_REQUEST, REFRESH_REQUEST, FastPath
from simulator.core.turn.msturn import MsTurnHandlers
from simulator.core.turn.request import REASONS, Reply, Request
from simulator.core.turn.rfc6062 import Rfc6062Handlers
from simulator.core.turn.rfc8656 import Rfc8656Handlers
from simulator.core.turn.state import (
    Allocation,
    ClientStream,
    CloseStream,
    Event,
    RelayBinder,
    Sink,
    Transmit,
    TurnServerConfig,
    as_address,
)
from simulator.wire import msturn, stun, turn
from simulator.wire.errors import MalformedMessage
from simulator.wire.framing import (
    Frame,
    FrameKind,
    MsTurnFrameKind,
    MsTurnTcpFramer,
    Role,
    TurnTcpFramer,
    server_hello,
)
from simulator.wire.stun import Address, Message, MessageClass, attr
from simulator.wire.turn import TurnMethod

_CD: Final = struct.Struct("!HH")
_MS_COOKIE_ATTR: Final = msturn.MAGIC_COOKIE_ATTRIBUTE_BYTES


class TurnServer(FastPath, Rfc8656Handlers, Rfc6062Handlers, MsTurnHandlers, BindingResponder):
    """The TURN/MS-TURN server of one A/V Edge interface (see the module docstring)."""

    def __init__(
        self,
        config: TurnServerConfig,
        *,
        credentials: CredentialStore,
        ports: RelayPortAllocator,
        relays: RelayBinder,
        rng: random.Random,
        udp_sink: Sink | None = None,
    ) -> None:
        self._auth = Authenticator(config, credentials, rng.randbytes(20))  # the nonce secret: rng's first draw
        super().__init__(config, credentials=credentials, ports=ports, relays=relays, rng=rng, udp_sink=udp_sink)
        self.metrics.auth_failures = self._auth.failures  # one dict: the metrics show the authenticator's count
        self.fast_path = True  # RFC 8656 Allocate/Refresh without a Message (tests switch it off to compare)
        self._handlers: dict[tuple[bool, int], Callable[[Request, float], None]] = {
            (False, TurnMethod.ALLOCATE): self._allocate,
            (False, TurnMethod.REFRESH): self._refresh,
            (False, TurnMethod.CREATE_PERMISSION): self._create_permission,
            (False, TurnMethod.CHANNEL_BIND): self._channel_bind,
            (False, TurnMethod.CONNECT): self._connect,
            (False, TurnMethod.CONNECTION_BIND): self._connection_bind,
            (True, msturn.MsTurnMethod.ALLOCATE): self._ms_allocate,
            (True, msturn.MsTurnMethod.SET_ACTIVE_DESTINATION): self._ms_set_active_destination,
        }

    # ================================================================== outputs

    def datagrams_to_send(self) -> list[Transmit]:
        """Everything to send since the last call, as ``(sink, data, address)``."""
        out = self.transmits
        self.transmits = []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    @property
    def pending_events(self) -> bool:
        return bool(self._events)

    @property
    def allocation_count(self) -> int:
        return len(self._allocations)

    def allocations(self) -> list[Allocation]:
        return list(self._allocations.values())

    def allocation_for(self, five_tuple: object) -> Allocation | None:
        return self._allocations.get(five_tuple)

    # ================================================================== timers

    def get_timer(self) -> float | None:
        """When ``handle_timer`` has something to do next (None: nothing pending)."""
        heap = self._expiry_heap
        while heap and heap[0][1] not in self._scheduled:
            heapq.heappop(heap)
        candidates = [heap[0][0]] if heap else []
        if self._cache_order:
            candidates.append(self._cache_order[0][0])
        if self._bind_deadlines:
            candidates.append(self._bind_deadlines[0][0])
        port_timer = self.ports.next_timer()
        if port_timer is not None:
            candidates.append(port_timer)
        return min(candidates) if candidates else None

    def handle_timer(self, now: float) -> None:
        """Expire allocations, cached responses, unbound peer connections and port lingering."""
        heap = self._expiry_heap
        while heap and heap[0][0] <= now:
            expires, seq = heapq.heappop(heap)
            alloc = self._scheduled.get(seq)
            if alloc is None:
                continue  # refreshed (a newer entry exists) or deleted
            if alloc.expires != expires:
                heapq.heappush(heap, (alloc.expires, seq))  # moved without _schedule: keep it on time
                continue
            del self._scheduled[seq]
            if not alloc.dead:
                self.metrics.allocations_expired += 1
                self._delete(alloc, now)  # RFC 8656 §7: the allocation is deleted when its lifetime ends
        self._evict_cache(now)
        deadlines = self._bind_deadlines
        while deadlines and deadlines[0][0] <= now:
            _, cid = deadlines.popleft()
            pc = self._peer_conns.get(cid)
            if pc is not None and pc.data_sink is None and pc.expires <= now:
                self._close_peer(pc)  # RFC 6062 §5.3: no ConnectionBind within 30 s
        self.ports.expire(now)

    # ================================================================== UDP listener

    def receive_datagram(self, data: bytes, client: Any, now: float) -> None:
        """One datagram on the UDP listener from ``client``."""
        if not data:
            return
        first = data[0]
        if 0x40 <= first <= 0x7F:  # ChannelData (turn.CHANNEL_MIN..CHANNEL_MAX)
            # RFC 8656 §12.4: ChannelData fast path.
            alloc = self._allocations.get(client)
            if alloc is not None and alloc.ms:
                # MS-TURN has no ChannelData: after Set Active Destination this is the client's raw media,
                # whatever its first byte (an ASCII payload starts at 0x41..0x7A).
                self._ms_raw_from_client(client, data, now)
                return
            if alloc is None or len(data) < 4:
                self.metrics.dropped += 1
                return
            number, length = _CD.unpack_from(data, 0)
            channel = alloc.channels.get(number)
            if channel is None or channel.expires <= now or 4 + length > len(data):
                self.metrics.dropped += 1  # RFC 8656 §12.4: unbound channel: discard
                return
            payload = data[4 : 4 + length]
            self.transmits.append((alloc.relay_sink, payload, channel.peer))
            self.metrics.relayed_to_peer += 1
            self.metrics.bytes_to_peer += length
            return
        sink = self.udp_sink
        if sink is None:
            raise RuntimeError("udp_sink is not set")
        if first == 0 and len(data) == 20 and data[1] == 1 and data[4:8] == stun.MAGIC_COOKIE_BYTES:
            # A bare Binding request (RFC 8489 §7.3), the common keep-alive/ICE case, unless an MS-TURN
            # 5-tuple may forward it end to end (see _receive_message).
            alloc = self._allocations.get(client)
            if alloc is None or not alloc.ms:
                host = client[0]
                if ":" in host:
                    self._binding(data, client, sink, now)
                    return
                # _binding's IPv4 template, inlined (one Python call less on the Binding benchmark's path)
                self.metrics.bindings += 1
                xaddr = self._xored_hosts.get(host) or self._xor_host(host)
                port = (client[1] ^ _COOKIE_PORT).to_bytes(2, "big")
                self.transmits.append((sink, _BINDING_SUCCESS + data[4:20] + _XMA_V4_HEAD + port + xaddr, client))
                return
        self._receive_message(data, client, client, sink, None, now)

    # ================================================================== TCP listener

    def stream_opened(self, sink: Sink, client: Any, now: float) -> None:
        """A client connected to the TCP listener."""
        self._streams[sink] = ClientStream(sink, as_address(client))

    def stream_closed(self, sink: Sink, now: float) -> None:
        """The client TCP connection is gone: its allocation goes with it (RFC 6062 §5.1, RFC 8656 §3.1)."""
        stream = self._streams.pop(sink, None)
        alloc = self._allocations.get(sink)
        if alloc is not None:
            self._delete(alloc, now)
        if stream is not None and stream.peer is not None:
            self._close_peer(stream.peer)

    def receive_stream(self, sink: Sink, data: bytes, now: float) -> None:
        """Bytes from a client TCP connection."""
        stream = self._streams.get(sink)
        if stream is None or not data:
            return
        if stream.peer is not None:
            # RFC 6062 §5.5: after ConnectionBind the data connection is a raw pipe to the peer.
            pc = stream.peer
            if pc.sink is not None:
                self.transmits.append((pc.sink, data, pc.peer))
                self.metrics.relayed_to_peer += 1
                self.metrics.bytes_to_peer += len(data)
            return
        try:
            if stream.turn_framer is None and stream.ms_framer is None:
                head = stream.pending + data
                if head[0] == 0x16:  # MS-TURN 2.1: pseudo-TLS ClientHello
                    stream.ms_framer = MsTurnTcpFramer(Role.SERVER)
                elif head[0] & 0xC0 in (0x00, 0x40):
                    stream.turn_framer = TurnTcpFramer()  # RFC 8656 §3.1: STUN/TURN over TCP
                else:
                    self._drop_stream(stream)
                    return
                data = head
                stream.pending = b""
            if stream.turn_framer is not None:
                for frame in stream.turn_framer.feed(data):
                    self._stream_frame(stream, frame, now)
                    if stream.sink not in self._streams or stream.peer is not None:
                        break
                if stream.peer is not None and stream.turn_framer.buffered:
                    # bytes after ConnectionBind on the same segment belong to the peer
                    rest = bytes(stream.turn_framer._buffer)
                    stream.turn_framer = None
                    self.receive_stream(sink, rest, now)
            elif stream.ms_framer is not None:
                for ms_frame in stream.ms_framer.feed(data):
                    if ms_frame.kind == MsTurnFrameKind.HELLO:
                        # MS-TURN 2.1: answer the fake ClientHello with ServerHello + ServerHelloDone.
                        hello = server_hello(self._rng.randbytes(32), self._rng.randbytes(32))
                        self.transmits.append((sink, hello, stream.client))
                    elif ms_frame.kind == MsTurnFrameKind.CONTROL:
                        self._receive_message(ms_frame.data, sink, stream.client, sink, stream, now)
                    else:
                        self._ms_raw_from_client(sink, ms_frame.data, now)
                    if stream.sink not in self._streams:
                        break
        except MalformedMessage:
            self.metrics.malformed += 1
            self._drop_stream(stream)  # framing lost: close (MS-TURN 3.1.10, RFC 8489 §6.2.2)

    def _stream_frame(self, stream: ClientStream, frame: Frame, now: float) -> None:
        sink = stream.sink
        if frame.kind == FrameKind.CHANNEL_DATA:
            data = frame.data
            alloc = self._allocations.get(sink)
            number, length = _CD.unpack_from(data, 0)
            channel = alloc.channels.get(number) if alloc is not None else None
            if alloc is None or channel is None or channel.expires <= now:
                self.metrics.dropped += 1
                return
            self.transmits.append((alloc.relay_sink, data[4 : 4 + length], channel.peer))
            self.metrics.relayed_to_peer += 1
            self.metrics.bytes_to_peer += length
            return
        self._receive_message(frame.data, sink, stream.client, sink, stream, now)

    def _drop_stream(self, stream: ClientStream) -> None:
        self._events.append(CloseStream(stream.sink))

    # ================================================================== relay sockets

    def receive_from_peer(self, port: int, data: bytes, peer: Any, now: float) -> None:
        """A datagram from ``peer`` on the UDP relay socket bound to ``port``."""
        alloc = self._by_relay.get(("udp", port))
        if alloc is None:
            self.metrics.dropped += 1
            return
        # RFC 8656 §10.3/§11.5: only peers with a permission get through.
        perm = alloc.permissions.get(peer[0])
        if perm is None or perm <= now:
            self.metrics.dropped += 1
            return
        self.metrics.relayed_to_client += 1
        self.metrics.bytes_to_client += len(data)
        if alloc.ms:
            self._ms_to_client(alloc, data, as_address(peer))
            return
        channel = alloc.peer_channels.get(peer)
        if channel is not None and channel.expires > now:
            # RFC 8656 §12.5: ChannelData, padded to 4 over TCP.
            head = _CD.pack(channel.number, len(data))
            out = head + data + bytes(-len(data) & 3) if alloc.stream and len(data) & 3 else head + data
            self.transmits.append((alloc.client_sink, out, alloc.client))
            return
        # RFC 8656 §11.5: no channel: a Data indication with XOR-PEER-ADDRESS and DATA.
        ind = stun.indication(
            TurnMethod.DATA,
            self._new_tid(12),
            attr(turn.XOR_PEER_ADDRESS, as_address(peer)),
            attr(turn.DATA, bytes(data)),
            dialect=turn.RFC,
        )
        self.transmits.append((alloc.client_sink, ind.serialize(), alloc.client))

    # ================================================================== message pipeline

    def _receive_message(
        self, data: bytes, conn: object, client: Any, sink: Sink, stream: ClientStream | None, now: float
    ) -> None:
        alloc = self._allocations.get(conn)
        size = len(data)
        is_ms = size >= 28 and data[20:28] == _MS_COOKIE_ATTR
        if size < 20 or data[0] & 0xC0 or (not is_ms and data[4:8] != stun.MAGIC_COOKIE_BYTES):
            # Not a STUN message: raw media after MS-TURN Set Active Destination, else noise.
            if alloc is not None and alloc.ms and stream is None:
                self._ms_raw_from_client(conn, data, now)
            else:
                self.metrics.dropped += 1
            return
        if alloc is not None and alloc.ms and not is_ms:
            # MS-TURN 5-tuple: a non-MS-TURN STUN message is end-to-end (ICE checks) once a
            # destination is active; otherwise it is not for us.
            if alloc.active_destination is not None and stream is None:
                self._ms_raw_from_client(conn, data, now)
            elif data[0:2] == b"\x00\x01" and not is_ms:
                self._binding(data, client, sink, now)
            else:
                self.metrics.dropped += 1
            return
        if not is_ms and data[0:2] == b"\x00\x01":
            self._binding(data, client, sink, now)
            return
        if alloc is not None and not alloc.ms and is_ms:
            self.metrics.dropped += 1  # the 5-tuple speaks RFC TURN: an MS-TURN message is foreign
            return
        if (
            not is_ms
            and data[0] == 0
            and (data[1] == ALLOCATE_REQUEST or data[1] == REFRESH_REQUEST)
            and (stream is None or stream.ms_framer is None)
            and self.fast_path
            and self._fast_turn_request(data, conn, client, sink, stream, now)
        ):
            return
        try:
            msg = msturn.parse(data) if is_ms else turn.parse(data)
        except MalformedMessage as exc:
            self.metrics.malformed += 1
            dialect = (msturn.RFC5389 if data[4:8] == stun.MAGIC_COOKIE_BYTES else msturn.LEGACY) if is_ms else turn.RFC
            tid = stun.transaction_id_of(data, dialect)
            ms_send = is_ms and struct.unpack_from("!H", data, 0)[0] == msturn.MsTurnMethod.SEND
            if ms_send:
                return  # MS-TURN: a Send never gets a response, not even an error
            if exc.status is not None and tid is not None and (data[0] & 0x01) == 0 and (data[1] & 0x10) == 0:
                # RFC 8489 §6.3: a malformed *request* gets its error (400) when it has a transaction ID.
                self._send_bare_error(dialect, data, tid, exc.status, client, sink, is_ms)
            return
        self._dispatch(msg, conn, as_address(client), sink, stream, is_ms, now)

    def _dispatch(
        self, msg: Message, conn: object, client: Address, sink: Sink, stream: ClientStream | None, ms: bool, now: float
    ) -> None:
        if msg.cls == MessageClass.INDICATION:
            if not ms and msg.method == TurnMethod.SEND:
                self._send_indication(msg, conn, now)
            else:
                self.metrics.dropped += 1
            return
        if msg.cls != MessageClass.REQUEST:
            self.metrics.dropped += 1  # responses from a client: nothing to do
            return
        if ms and msg.method == msturn.MsTurnMethod.SEND:
            self._ms_send(msg, conn, now)  # MS-TURN: Send is a request that gets no response
            return
        self.metrics.requests += 1
        cache_key = (conn, msg.transaction_id)
        cached = self._cache.get(cache_key)
        if cached is not None:
            # RFC 8489 §6.3.1 / RFC 8656 §7.2: a retransmission gets the same answer, not a 437.
            self.metrics.cache_hits += 1
            self._send(sink, cached, client, stream is not None and stream.ms_framer is not None)
            return
        req = Request(msg, conn, client, sink, stream, ms)
        handler = self._handlers.get((ms, msg.method))
        try:
            if handler is None:
                raise Reply(400, "Bad Request")  # RFC 8489 §6.3.1: unknown method
            if not (ms and msg.method == msturn.MsTurnMethod.SET_ACTIVE_DESTINATION):
                # MS-TURN: Set Active Destination, like Send, is tied to its allocation by the
                # MS-SEQUENCE-NUMBER connection ID and signed with the allocation's key, without a NONCE
                # (libnice sends none); _ms_check_sequence verifies it.
                self._auth.authenticate(req, now)
            unknown = msg.unknown_required()
            if unknown:
                raise Reply(420, REASONS[420], attr(stun.UNKNOWN_ATTRIBUTES, unknown))
            handler(req, now)
        except Reply as reply:
            self._reply_error(req, reply, now)
