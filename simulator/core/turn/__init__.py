"""The A/V Edge TURN server core: RFC 8656 TURN, RFC 6062 TCP relays and MS-TURN, sans-I/O.

:class:`TurnServer` is the one entry point (its module, :mod:`~simulator.core.turn.server`, has the theory of
operation). The package is split one idea per module:

* ``state`` — configuration, allocations, channels, peer connections, metrics, events, and the tables one
  server keeps (:class:`~simulator.core.turn.state.ServerState`);
* ``request`` — a request in flight, the :class:`~simulator.core.turn.request.Reply` that aborts it, reasons;
* ``auth`` — nonces, long-term and MS-TURN keys, authenticate or challenge (401/438);
* ``responses`` — responses in the request's dialect, signed, and the retransmission cache;
* ``allocations`` — create (quotas, ports, bind), schedule, delete; lifetimes and peer policy;
* ``binding`` — STUN Binding answers and the packed XOR addresses;
* ``rfc8656`` — Allocate, Refresh, CreatePermission, ChannelBind, Send indication (generic pipeline);
* ``fastpath`` — RFC 8656 Allocate/Refresh answered from raw bytes;
* ``rfc6062`` — Connect, ConnectionBind and the peer side of TCP allocations;
* ``msturn`` — MS-TURN Allocate, Send, Set Active Destination and its relay paths;
* ``server`` — the façade: demultiplexing, timers, outputs, dispatch.
"""

from __future__ import annotations

from simulator.core.turn.server import TurnServer
from simulator.core.turn.state import (
    DEFAULT_DENIED_PEERS,
    Allocation,
    Channel,
    CloseStream,
    ConnectPeer,
    Event,
    PeerConnection,
    RelayBinder,
    Sink,
    Transmit,
    TurnMetrics,
    TurnServerConfig,
)

__all__ = [
    "DEFAULT_DENIED_PEERS",
    "Allocation",
    "Channel",
    "CloseStream",
    "ConnectPeer",
    "Event",
    "PeerConnection",
    "RelayBinder",
    "Sink",
    "Transmit",
    "TurnMetrics",
    "TurnServer",
    "TurnServerConfig",
]
