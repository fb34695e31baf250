"""MS-TURN (Lync/Skype for Business A/V Edge) handlers: Allocate (which also refreshes), Send, Set Active
Destination, raw media to the active destination, and the Data indications towards the client.

An MS-TURN 5-tuple is pinned by its first Allocate (``Allocation.ms``): it never answers RFC TURN requests.
Send and Set Active Destination are tied to the allocation by the MS-SEQUENCE-NUMBER connection ID and
signed with the allocation's key, without a NONCE (libnice sends none).
"""

from __future__ import annotations

from simulator.core.turn.allocations import AllocationTable
from simulator.core.turn.request import REASONS, Auth, Reply, Request
from simulator.core.turn.responses import ResponseWriter
from simulator.core.turn.state import Allocation
from simulator.wire import msturn, stun
from simulator.wire.framing import frame_control, frame_data
from simulator.wire.stun import Address, Message, MessageClass, attr


class MsTurnHandlers(AllocationTable, ResponseWriter):
    """The MS-TURN methods of the handler table and the MS-TURN relay paths (a mixin of :class:`TurnServer`)."""

    def _ms_allocate(self, req: Request, now: float) -> None:
        """MS-TURN 3.2.5.1: Allocate creates, and on an existing allocation refreshes (LIFETIME 0 deletes)."""
        msg = req.msg
        assert req.auth is not None
        requested = msg.get(msturn.LIFETIME)
        alloc = self._allocations.get(req.conn)
        if alloc is not None:
            if not alloc.ms:
                raise Reply(437, REASONS[437])
            if alloc.username != req.auth.username:
                raise Reply(441, REASONS[441])
            if requested == 0:
                self._delete(alloc, now)
                self._respond(req, MessageClass.SUCCESS, (attr(msturn.LIFETIME, 0),), now)
                return
            lifetime = self._lifetime(requested)
            alloc.expires = now + lifetime
            self._schedule(alloc)
        else:
            family = msg.get(msturn.REQUESTED_ADDRESS_FAMILY)
            if family is not None and family != (0x02 if ":" in self.config.relay_host else 0x01):
                raise Reply(440, REASONS[440])
            lifetime = self._lifetime(requested)
            alloc = self._create(req, "udp", now, lifetime, ms=True)
            alloc.version = msg.get(msturn.MS_VERSION)
            alloc.connection_id = self._rng.randbytes(20)
        bandwidth = msg.get(msturn.BANDWIDTH)
        attrs = [
            attr(msturn.MAPPED_ADDRESS, alloc.public),  # MS-TURN 3.2.5.1: relay in MAPPED-ADDRESS (public)
            attr(msturn.XOR_MAPPED_ADDRESS, req.client),  # 0x8020: the client's reflexive address
            attr(msturn.LIFETIME, lifetime),
            attr(msturn.BANDWIDTH, bandwidth if bandwidth is not None else self.config.ms_bandwidth),
            attr(msturn.MS_SEQUENCE_NUMBER, msturn.SequenceNumber(alloc.connection_id, alloc.sequence)),
        ]
        self._respond(req, MessageClass.SUCCESS, attrs, now)

    def _ms_check_sequence(self, alloc: Allocation, msg: Message) -> bool:
        seq = msg.get(msturn.MS_SEQUENCE_NUMBER)
        if seq is None or seq.connection_id != alloc.connection_id:
            return False  # MS-TURN: the connection ID ties Send/SAD to the allocation
        alloc.sequence = seq.sequence
        return not msg.has(msturn.MESSAGE_INTEGRITY) or stun.verify_integrity(msg, alloc.key_bytes)

    def _ms_send(self, msg: Message, conn: object, now: float) -> None:
        """MS-TURN Send request: DATA to DESTINATION-ADDRESS, no response; implies a permission."""
        alloc = self._allocations.get(conn)
        dest = msg.get(msturn.DESTINATION_ADDRESS)
        data = msg.get(msturn.DATA)
        if alloc is None or not alloc.ms or dest is None or data is None or not self._ms_check_sequence(alloc, msg):
            self.metrics.dropped += 1
            return
        try:
            self._check_peer(alloc, dest)
        except Reply:
            self.metrics.dropped += 1
            return
        # MS-TURN 1.3: the relay accepts a peer only after the client has sent to it.
        self._permit(alloc, dest.host, now)
        alloc.dialect = msg.dialect  # answer in the attribute form the client writes (padded or not)
        self.transmits.append((alloc.relay_sink, data, dest))
        self.metrics.relayed_to_peer += 1
        self.metrics.bytes_to_peer += len(data)

    def _ms_set_active_destination(self, req: Request, now: float) -> None:
        """MS-TURN Set Active Destination: later raw data from the client goes to this peer."""
        alloc = self._allocations.get(req.conn)
        if alloc is None or alloc.dead or not alloc.ms:
            raise Reply(437, REASONS[437])  # no allocation on this 5-tuple
        if not self._ms_check_sequence(alloc, req.msg):
            raise Reply(400, "Bad Request")
        alloc.dialect = req.msg.dialect
        if req.msg.has(msturn.MESSAGE_INTEGRITY):  # signed with the allocation's key: so is the answer
            req.auth = Auth(alloc.username, alloc.key_bytes)
            req.integrity = msturn.integrity_for(req.msg.get(msturn.MS_VERSION))
        dest = req.msg.get(msturn.DESTINATION_ADDRESS)
        if dest is None or (dest.port == 0 and dest.host in ("0.0.0.0", "::")):
            alloc.active_destination = None  # no or null destination: back to Send requests
        else:
            self._check_peer(alloc, dest)
            alloc.active_destination = dest
            self._permit(alloc, dest.host, now)
        self._respond(req, MessageClass.SUCCESS, (), now)

    def _ms_raw_from_client(self, conn: object, data: bytes, now: float) -> None:
        alloc = self._allocations.get(conn)
        if alloc is None or alloc.active_destination is None:
            self.metrics.dropped += 1
            return
        dest = alloc.active_destination
        self._permit(alloc, dest.host, now)
        self.transmits.append((alloc.relay_sink, data, dest))
        self.metrics.relayed_to_peer += 1
        self.metrics.bytes_to_peer += len(data)

    def _ms_to_client(self, alloc: Allocation, data: bytes, peer: Address) -> None:
        if alloc.active_destination is not None and peer == alloc.active_destination:
            # After Set Active Destination the active peer's data goes raw (type 0x03 frame on TCP).
            out = frame_data(data) if alloc.ms_tcp else data
            self.transmits.append((alloc.client_sink, out, alloc.client))
            return
        # MS-TURN Data Indication 0x0115: REMOTE-ADDRESS and DATA.
        dialect = alloc.dialect
        if len(data) & 3 and dialect.lengths_include_padding:
            # The rounded legacy form would count padding in DATA's length, so the client would read the
            # payload with up to 3 NULs appended. DATA is the last attribute and the ones before it are
            # 4-aligned, so the exact-length form differs only in DATA's length field and the missing
            # padding: libnice (OC2007R2) reads it, and relayed bytes stay exactly the peer's bytes.
            dialect = msturn.UNALIGNED.get(dialect, dialect)
        ind = Message(
            msturn.MsTurnMethod.DATA,
            MessageClass.INDICATION,
            self._new_tid(alloc.dialect.transaction_id_size),
            (
                msturn.cookie_attribute(),
                attr(msturn.REMOTE_ADDRESS, peer),
                attr(msturn.DATA, bytes(data)),
            ),
            dialect,
        )
        raw = ind.serialize()
        self.transmits.append((alloc.client_sink, frame_control(raw) if alloc.ms_tcp else raw, alloc.client))
