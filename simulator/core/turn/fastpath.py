"""The RFC 8656 Allocate/Refresh fast path: the requests every TURN client sends per allocation, answered
from their bytes without building a :class:`~simulator.wire.stun.Message`.

It reads only the attributes in ``_FAST_ATTRIBUTES`` and has no side effect before it decides, so whatever it
does not take (another attribute, a duplicate, a stale nonce, a wrong key, 437, 441, a TCP relay, ...) goes
through the generic pipeline (:mod:`simulator.core.turn.rfc8656`) as if it had not run; its answers are byte
for byte the generic ones (tests/av/test_fast_path.py runs both and compares).
"""

from __future__ import annotations

import hmac
import struct
from typing import Any, Final

from simulator.core.turn.allocations import AllocationTable
from simulator.core.turn.auth import Authenticator
from simulator.core.turn.binding import BindingResponder
from simulator.core.turn.request import Auth, Reply, Request
from simulator.core.turn.responses import ResponseWriter
from simulator.core.turn.state import ClientStream, Sink, as_address
from simulator.wire import stun, turn
from simulator.wire.stun import Message, MessageClass
from simulator.wire.turn import TransportProtocol, TurnMethod

_CD: Final = struct.Struct("!HH")
ALLOCATE_REQUEST: Final = 0x0003  # RFC 8656 §17: Allocate request type
REFRESH_REQUEST: Final = 0x0004
_SUCCESS_BIT: Final = 0x0100  # RFC 8489 §5: C1 (request 0x0003 -> success 0x0103)
_MI_HEAD: Final = b"\x00\x08\x00\x14"  # MESSAGE-INTEGRITY, 20 bytes (RFC 8489 §14.5)
_FAST_TEXT: Final = -1
# The RFC 8656 fast path's attribute table: code -> the exact value length the generic decoder accepts
# (_FAST_TEXT: any length, UTF-8). A request with any other attribute takes the generic path.
_FAST_ATTRIBUTES: Final[dict[int, int]] = {
    turn.REQUESTED_TRANSPORT.code: 4,
    turn.LIFETIME.code: 4,
    turn.DONT_FRAGMENT.code: 0,
    stun.USERNAME.code: _FAST_TEXT,
    stun.REALM.code: _FAST_TEXT,
    stun.NONCE.code: _FAST_TEXT,
    stun.SOFTWARE.code: _FAST_TEXT,
    stun.MESSAGE_INTEGRITY.code: 20,
    stun.FINGERPRINT.code: 4,
}
_FAST_TEXT_CODES: Final = tuple(code for code, length in _FAST_ATTRIBUTES.items() if length == _FAST_TEXT)


class FastPath(AllocationTable, ResponseWriter, BindingResponder):
    """``_fast_turn_request``, tried by ``TurnServer._receive_message`` first (a mixin of :class:`TurnServer`)."""

    _auth: Authenticator  # set by TurnServer.__init__

    def _fast_turn_request(
        self, data: bytes, conn: object, client: Any, sink: Sink, stream: ClientStream | None, now: float
    ) -> bool:
        """Answer an RFC 8656 Allocate or Refresh request from its bytes; False: take the generic path.

        Handles what a TURN client does on every allocation, exactly as the generic pipeline answers it:
        the 401 to an unsigned request, Allocate of a UDP relay, Refresh and Refresh(0). It reads only the
        attributes in ``_FAST_ATTRIBUTES``, and everything up to the answer has no side effect, so any
        other request (another attribute, a duplicate, a stale nonce, a wrong key, 437, 441, TCP relay,
        ...) goes to the generic path as if this had not run. tests/av/test_fast_path.py compares both.
        """
        size = len(data)
        if size != 20 + ((data[2] << 8) | data[3]) or size & 3:
            return False
        found: dict[int, tuple[int, int]] = {}  # code -> (value offset, value length)
        table = _FAST_ATTRIBUTES
        pos = 20
        while pos < size:
            code, length = _CD.unpack_from(data, pos)
            want = table.get(code)
            end = pos + 4 + ((length + 3) & ~3)
            if want is None or (want != length and want != _FAST_TEXT) or code in found or end > size:
                return False
            found[code] = (pos + 4, length)
            pos = end
        texts: dict[int, str] = {}
        try:
            for code in _FAST_TEXT_CODES:
                at = found.get(code)
                if at is not None:
                    texts[code] = data[at[0] : at[0] + at[1]].decode("utf-8")
        except UnicodeDecodeError:
            return False  # the generic parser answers 400
        cache_key = (conn, data[8:20])
        cached = self._cache.get(cache_key)
        if cached is not None:
            # RFC 8489 §6.3.1: a retransmission gets the same answer.
            self.metrics.requests += 1
            self.metrics.cache_hits += 1
            self.transmits.append((sink, cached, client))
            return True
        mi = found.get(stun.MESSAGE_INTEGRITY.code)
        if mi is None:
            self.metrics.requests += 1
            self._count_error(401, "allocate" if data[1] == ALLOCATE_REQUEST else "refresh")
            # RFC 8489 §9.2.4: no MESSAGE-INTEGRITY: 401 with REALM and NONCE.
            self.transmits.append((sink, self._auth.challenge_bytes(data, client[0], now), client))
            return True
        username = texts.get(stun.USERNAME.code)
        realm = texts.get(stun.REALM.code)
        nonce = texts.get(stun.NONCE.code)
        if (
            username is None
            or realm is None
            or nonce is None
            or realm != self.config.realm
            or not self._auth.nonce_valid(nonce, client[0], now)
        ):
            return False
        password = self.credentials.password_for(username, now)
        if password is None:
            return False
        key = self._auth.key(False, None, username, realm, password, nonce)
        mi_at = mi[0] - 4
        # RFC 8489 §14.5: HMAC over the message up to MESSAGE-INTEGRITY, length field ending just after it.
        signed = data[:2] + (mi_at + 24 - 20).to_bytes(2, "big") + data[4:mi_at]
        if not hmac.compare_digest(stun.hmac_digest(key, signed, "sha1"), data[mi[0] : mi[0] + 20]):
            return False  # RFC 8489 §9.2.4: the generic path answers the 401
        lifetime_at = found.get(turn.LIFETIME.code)
        requested = int.from_bytes(data[lifetime_at[0] : lifetime_at[0] + 4], "big") if lifetime_at else None
        method = data[1]
        if method == ALLOCATE_REQUEST:
            transport_at = found.get(turn.REQUESTED_TRANSPORT.code)
            if conn in self._allocations or transport_at is None or data[transport_at[0]] != TransportProtocol.UDP:
                return False  # 437, 400, TCP relay, 442: the generic path
            self.metrics.requests += 1
            client_address = as_address(client)
            req = Request(
                Message(TurnMethod.ALLOCATE, MessageClass.REQUEST, data[8:20], (), turn.RFC, data),
                conn, client_address, sink, stream, False, Auth(username, key),
            )
            lifetime = self._lifetime(requested)
            try:
                alloc = self._create(req, "udp", now, lifetime)
            except Reply as reply:
                req.msg = turn.parse(data)  # quota or no port: the generic error answer
                self._reply_error(req, reply, now)
                return True
            xor_key = data[4:20]
            public = alloc.public
            body = self._xor_address_attribute(turn.XOR_RELAYED_ADDRESS.code, public.host, public.port, xor_key)
            body += b"\x00\x0d\x00\x04" + lifetime.to_bytes(4, "big")
            token = alloc.lease.reservation_token
            if token is not None:
                body += b"\x00\x22\x00\x08" + token
            # RFC 8656 §7.3: the client's reflexive address.
            body += self._xor_address_attribute(stun.XOR_MAPPED_ADDRESS.code, client_address.host,
                                                client_address.port, xor_key)
        else:
            alloc_ = self._allocations.get(conn)
            if alloc_ is None or alloc_.dead or alloc_.username != username:
                return False  # 437 / 441: the generic path
            self.metrics.requests += 1
            if requested == 0:
                self._delete(alloc_, now)  # RFC 8656 §8: LIFETIME 0 deletes
                lifetime = 0
            else:
                lifetime = self._lifetime(requested)
                alloc_.expires = now + lifetime
                self._schedule(alloc_)
            body = b"\x00\x0d\x00\x04" + lifetime.to_bytes(4, "big")
        head = _CD.pack(method | _SUCCESS_BIT, len(body) + 24) + data[4:20]
        signed_body = head + body
        out = signed_body + _MI_HEAD + stun.hmac_digest(key, signed_body, "sha1")
        self._cache_put(cache_key, out, now)
        self.transmits.append((sink, out, client))
        return True
