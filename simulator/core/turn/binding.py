"""STUN Binding answers (RFC 8489 §7.3) and the packed XOR addresses they and the fast path write.

A bare 20-byte Binding request over IPv4 (keep-alives, ICE checks) is answered by splicing its transaction ID
and the client's cached XOR-packed address into a fixed success header; anything else goes through the codec.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any, Final

from simulator.core.turn.request import REASONS
from simulator.core.turn.state import ServerState, Sink, as_address
from simulator.wire import stun, turn
from simulator.wire.errors import MalformedMessage
from simulator.wire.stun import Address, MessageClass, attr

_CD: Final = struct.Struct("!HH")
_BINDING_SUCCESS: Final = b"\x01\x01\x00\x0c"
_XMA_V4_HEAD: Final = b"\x00\x20\x00\x08\x00\x01"
_COOKIE_PORT: Final = 0x2112
_COOKIE_INT: Final = 0x2112A442


class BindingResponder(ServerState):
    """Binding requests and XOR-*-ADDRESS packing with a per-host cache (a mixin of :class:`TurnServer`)."""

    def _binding(self, data: bytes, client: Any, sink: Sink, now: float) -> None:
        """RFC 8489 §7.3: Binding request -> success with XOR-MAPPED-ADDRESS; fast path for the bare one."""
        self.metrics.bindings += 1
        host = client[0]
        if len(data) == 20 and data[4:8] == stun.MAGIC_COOKIE_BYTES and ":" not in host:
            xaddr = self._xored_hosts.get(host) or self._xor_host(host)
            port = (client[1] ^ _COOKIE_PORT).to_bytes(2, "big")
            self.transmits.append((sink, _BINDING_SUCCESS + data[4:20] + _XMA_V4_HEAD + port + xaddr, client))
            return
        try:
            msg = turn.parse(data)
        except MalformedMessage:
            self.metrics.malformed += 1
            return
        if msg.cls != MessageClass.REQUEST:
            return
        unknown = msg.unknown_required()
        if unknown:
            resp = stun.error_response(msg, 420, REASONS[420], attr(stun.UNKNOWN_ATTRIBUTES, unknown))
        else:
            resp = stun.success_response(msg, attr(stun.XOR_MAPPED_ADDRESS, as_address(client)))
        self.transmits.append((sink, resp.serialize(fingerprint=msg.has(stun.FINGERPRINT)), client))

    def _xor_host(self, host: str) -> bytes:
        """An IPv4 address XOR the magic cookie (RFC 8489 §14.2), cached per host."""
        if len(self._xored_hosts) > 65536:
            self._xored_hosts.clear()
        packed = ipaddress.IPv4Address(host).packed
        xaddr = self._xored_hosts[host] = (int.from_bytes(packed, "big") ^ _COOKIE_INT).to_bytes(4, "big")
        return xaddr

    def _xor_address_attribute(self, code: int, host: str, port: int, xor_key: bytes) -> bytes:
        """One XOR-*-ADDRESS attribute, header included, as ``stun.encode_xor_address`` writes it."""
        if ":" in host:
            value = stun.encode_xor_address(Address(host, port), xor_key)
            return _CD.pack(code, len(value)) + value
        xaddr = self._xored_hosts.get(host) or self._xor_host(host)
        return _CD.pack(code, 8) + b"\x00\x01" + (port ^ _COOKIE_PORT).to_bytes(2, "big") + xaddr
