"""Writing answers: success and error responses in the request's dialect, signed with the user's key, and the
response cache that replays them to retransmissions (RFC 8489 §6.3.1).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any, Final

from simulator.core.turn.request import REASONS, Reply, Request
from simulator.core.turn.state import ServerState, Sink
from simulator.wire import msturn, stun
from simulator.wire.framing import frame_control
from simulator.wire.stun import Attribute, Message, MessageClass, attr
from simulator.wire.turn import TurnMethod

# Requests whose answers are replayed from the cache on retransmission (RFC 8489 §6.3.1):
# the ones that change state so that a second execution would answer differently (437).
_CACHED_METHODS: Final[frozenset[tuple[bool, int]]] = frozenset(
    {
        (False, TurnMethod.ALLOCATE),
        (False, TurnMethod.REFRESH),
        (True, msturn.MsTurnMethod.ALLOCATE),
    }
)


def method_name(ms: bool, method: int) -> str:
    """A request method's name for the error counters: ``allocate``, ``ms_allocate``, ``0x00f`` if unknown."""
    if ms and method in msturn.MsTurnMethod.__members__.values():
        return "ms_" + msturn.MsTurnMethod(method).name.lower()
    if method in TurnMethod.__members__.values():
        return TurnMethod(method).name.lower()
    return f"0x{method:03x}"


class ResponseWriter(ServerState):
    """Responses, error responses and the response cache (a mixin of :class:`TurnServer`)."""

    def _respond(self, req: Request, cls: MessageClass, attrs: Iterable[Attribute], now: float) -> None:
        msg = req.msg
        attributes = tuple(attrs)
        if req.ms:
            version = msg.get(msturn.MS_VERSION)
            head: tuple[Attribute, ...] = (msturn.cookie_attribute(),)
            if version is not None:
                head += (attr(msturn.MS_VERSION, version),)
            resp = Message(msg.method, cls, msg.transaction_id, head + attributes, msg.dialect)
        else:
            resp = Message(msg.method, cls, msg.transaction_id, attributes, msg.dialect)
        key = req.auth.key if req.auth is not None else None
        data = resp.serialize(key=key, integrity=(req.integrity,))
        if key is not None and (req.ms, msg.method) in _CACHED_METHODS:
            self._cache_put((req.conn, msg.transaction_id), data, now)
        self._send(req.sink, data, req.client, req.stream is not None and req.stream.ms_framer is not None)

    def _reply_error(self, req: Request, reply: Reply, now: float) -> None:
        self._count_error(reply.code, method_name(req.ms, req.msg.method))
        err = Attribute(stun.AttrType.ERROR_CODE, stun.ErrorCode(reply.code, reply.reason))
        if req.auth is None or reply.code in (401, 438):
            req.auth = None  # challenges are not signed (RFC 8489 §9.2.4)
        self._respond(req, MessageClass.ERROR, (err, *reply.attributes), now)

    def _send_bare_error(
        self, dialect: stun.Dialect, data: bytes, tid: bytes, code: int, client: Any, sink: Sink, ms: bool
    ) -> None:
        method, _ = stun.split_message_type(struct.unpack_from("!H", data, 0)[0])
        err = Attribute(stun.AttrType.ERROR_CODE, stun.ErrorCode(code, REASONS.get(code, "Bad Request")))
        attrs: tuple[Attribute, ...] = (msturn.cookie_attribute(), err) if ms else (err,)
        try:
            msg = Message(method, MessageClass.ERROR, tid, attrs, dialect)
            out = msg.serialize()
        except ValueError:
            return
        self._count_error(code, method_name(ms, method))
        self._send(sink, out, client, self._is_ms_stream(sink))

    def _is_ms_stream(self, sink: Any) -> bool:
        stream = self._streams.get(sink)
        return stream is not None and stream.ms_framer is not None

    def _send(self, sink: Sink, data: bytes, client: Any, ms_framed: bool) -> None:
        self.transmits.append((sink, frame_control(data) if ms_framed else data, client))

    def _count_error(self, code: int, method: str) -> None:
        errors = self.metrics.errors
        errors[code] = errors.get(code, 0) + 1
        by_method = self.metrics.errors_by_method
        by_method[(method, code)] = by_method.get((method, code), 0) + 1

    def _cache_put(self, key: tuple[object, bytes], data: bytes, now: float) -> None:
        self._evict_cache(now)
        if len(self._cache) >= self.config.response_cache_size:
            _, oldest = self._cache_order.popleft()
            self._cache.pop(oldest, None)
        self._cache[key] = data
        self._cache_order.append((now + self.config.response_cache_ttl, key))

    def _evict_cache(self, now: float) -> None:
        order = self._cache_order
        while order and order[0][0] <= now:
            _, key = order.popleft()
            self._cache.pop(key, None)

    def _new_tid(self, size: int) -> bytes:
        self._tid_counter = (self._tid_counter + 1) & 0xFFFFFFFFFFFFFFFF
        return self._tid_counter.to_bytes(8, "big").rjust(size, b"\x5a")
