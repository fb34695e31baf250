"""The asyncio shell alone on loopback: QoE outcome and warning flags, failure, and the re-offer SDP."""

from __future__ import annotations

import asyncio
import random
import socket

import pytest

from simulator.core.ice import IceConfig
from simulator.net.clients.ice import (
    WARN_TURN_UNREACHABLE,
    WARN_UDP_ALLOCATE_FAILED,
    IceFailed,
    IceSession,
)
from simulator.wire import sdp
from simulator.wire.stun import Address

A, B, NOBODY = "127.91.7.1", "127.91.7.2", "127.91.7.9"


def closed_udp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])  # closed again when this returns: ICMP port unreachable


async def test_unreachable_turn_server_is_a_warning_and_host_pairs_still_connect() -> None:
    turn = Address(NOBODY, closed_udp_port(NOBODY))
    a = IceSession("rfc8445", "controlling", random.Random(1), hosts=[A], turn_server=turn,
                   turn_username="u", turn_password="p")
    b = IceSession("rfc8445", "controlled", random.Random(2), hosts=[B])
    try:
        await asyncio.gather(a.gather(1.0), b.gather(1.0))  # the STUN Binding to the dead server waits 1 s
        a.set_remote(b.local_sdp())
        b.set_remote(a.local_sdp())
        await asyncio.gather(a.connect(5.0), b.connect(5.0))
        outcome = a.outcome()
        assert outcome.ice == "DIRECT" and (outcome.local_type, outcome.remote_type) == ("host", "host")
        # QoE IceWarningFlags: 0x40 UDP allocate failed, 0x10 TURN unreachable
        assert outcome.warning_flags == WARN_UDP_ALLOCATE_FAILED | WARN_TURN_UNREACHABLE
        assert any("allocate failed" in w for w in outcome.warnings)
        reoffer = sdp.parse_sdp(a.selected_sdp())
        assert [(c.host, c.type) for c in reoffer.candidates] == [(A, "host")]
        assert reoffer.remote_candidates[0][1] == B
    finally:
        await a.close()
        await b.close()


async def test_no_working_pair_fails_with_a_failed_outcome() -> None:
    fast = IceConfig.for_profile("ms-ice2", rto=0.02)  # same schedule, 5x shorter: RTO 20 ms, Rc 7, Rm 16
    a = IceSession("ms-ice2", "controlling", random.Random(3), hosts=[A], config=fast)
    try:
        await a.gather(1.0)
        # the peer's only candidate is a closed port: every check gets ICMP unreachable / no answer
        line = f"a=candidate:1 1 UDP 2130706431 {NOBODY} {closed_udp_port(NOBODY)} typ host"
        a.set_remote(sdp.IceDescription("abcd", "x" * 22, (sdp.parse_candidate(line),)))
        with pytest.raises(IceFailed):
            await a.connect(5.0)  # RFC 8489 §6.2.1: the pair fails (63 + 16) * RTO = 1.58 s after its check
        outcome = a.outcome()
        assert outcome.ice == "FAILED" and outcome.checks_sent == 1 and outcome.retransmissions == 6
    finally:
        await a.close()


@pytest.mark.parametrize("profile", ["rfc8445", "ms-ice2"])
async def test_ice_tcp_host_candidates_connect_and_carry_media(profile: str) -> None:
    """RFC 6544 host candidates only (TCP active + passive, RFC 4571 framing) on real loopback sockets."""
    a = IceSession(profile, "controlling", random.Random(7), hosts=[A], transports=("tcp",))
    b = IceSession(profile, "controlled", random.Random(8), hosts=[B], transports=("tcp",))
    try:
        await asyncio.gather(a.gather(1.0), b.gather(1.0))
        offer = a.local_sdp()
        assert ("TCP-PASS" in offer and "TCP-ACT" in offer) if profile == "ms-ice2" else "tcptype passive" in offer
        a.set_remote(b.local_sdp())
        b.set_remote(offer)
        await asyncio.gather(a.connect(5.0), b.connect(5.0))
        for session in (a, b):
            outcome = session.outcome()
            assert outcome.ice == "DIRECT" and outcome.local_transport == outcome.remote_transport == "tcp"
        for i in range(20):  # media over the TCP pair, both ways, framed and deframed
            a.send(b"\x80rtp-over-tcp %d" % i)
            assert (await b.recv(3))[0] == b"\x80rtp-over-tcp %d" % i
            b.send(b"\x80back %d" % i)
            assert (await a.recv(3))[0] == b"\x80back %d" % i
    finally:
        await a.close()
        await b.close()


async def test_udp_is_preferred_over_tcp_when_both_work() -> None:
    a = IceSession("rfc8445", "controlling", random.Random(9), hosts=[A], transports=("udp", "tcp"))
    b = IceSession("rfc8445", "controlled", random.Random(10), hosts=[B], transports=("udp", "tcp"))
    try:
        await asyncio.gather(a.gather(1.0), b.gather(1.0))
        a.set_remote(b.local_sdp())
        b.set_remote(a.local_sdp())
        pair = await a.connect(5.0)
        await b.connect(5.0)
        # RFC 8445 local preference 65535 (UDP) > RFC 6544 2^13*6 + 8191 (TCP active)
        assert pair.local.transport == "udp"
    finally:
        await a.close()
        await b.close()
