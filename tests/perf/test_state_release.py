"""State a sign-in leaves behind must go when it ends (the 10-minute soak's RSS growth, issue 14).

Measured cause (helpers/leak/NOTES.md): per sign-in, the remote user's NAT kept the closed TCP connection's
binding for the *established* timeout (2 h 4 min) and the Director kept the Digest nonce until 200,000 were
held. Expected values come from the RFCs, not from the code: RFC 5382 §5 REQ-5 lets a NAT drop a binding
whose connection closed after the transitory idle timeout (>= 4 min); a Digest nonce past its lifetime is
only needed to answer stale=true (RFC 7616 §3.3 / RFC 2617 §3.2.1).
"""

from __future__ import annotations

import asyncio
import random

from simulator.core.nat import NatConfig, NatTable
from simulator.lab.access import remote_user_session, user_accounts
from simulator.lab.topology import Lab
from simulator.net.nat.natbox import NatBox
from simulator.net.peers.frontend import NONCE_LIFETIME, FrontEndServer
from simulator.spec.schema import Scenario

TRANSITORY = 4 * 60.0  # RFC 5382 §5 REQ-5: transitory connection idle-timeout MUST NOT be less than 4 minutes
ESTABLISHED = 2 * 3600 + 4 * 60.0  # ... established connection idle-timeout MUST NOT be less than 2 h 4 min


def test_closed_tcp_binding_goes_after_the_transitory_timeout() -> None:
    table = NatTable(NatConfig(), random.Random(1), "203.0.113.7")
    for n in range(50):
        src, dst = ("10.0.0.2", 20000 + n), ("198.51.100.1", 443)
        assert table.outbound("tcp", src, dst, 0.0) is not None
        assert table.tcp_closed(src, dst, 10.0)
    assert table.binding_count == 50
    table.expire(10.0 + TRANSITORY - 1)
    assert table.binding_count == 50  # not before 4 min
    assert table.next_timer() == 10.0 + TRANSITORY
    table.expire(10.0 + TRANSITORY)
    assert table.binding_count == 0


def test_open_tcp_binding_keeps_the_established_timeout() -> None:
    table = NatTable(NatConfig(), random.Random(1), "203.0.113.7")
    src, dst = ("10.0.0.2", 20000), ("198.51.100.1", 443)
    table.outbound("tcp", src, dst, 0.0)
    table.expire(ESTABLISHED - 1)
    assert table.binding_count == 1
    assert not table.tcp_closed(("10.0.0.2", 20001), dst, 5.0)  # no such connection: nothing shortened


async def test_sign_ins_leave_no_long_lived_nat_binding_or_nonce(shipped_scenario: Scenario) -> None:
    async with Lab(shipped_scenario) as lab:
        accounts = user_accounts(lab)
        for i in range(12):
            async with remote_user_session(lab, "edge1", index=i % len(accounts), timeout=5, seed=i):
                pass
        await asyncio.sleep(0.2)  # the NAT sees the connections close
        now = asyncio.get_running_loop().time()
        boxes = [s for s in lab.services.values() if isinstance(s, NatBox)]
        tcp = [b for box in boxes for b in box.table._by_internal.values() if b.transport == "tcp"]
        assert len(tcp) >= 12  # every sign-in went through a client NAT
        assert all(b.expires <= now + TRANSITORY for b in tcp), sorted(b.expires - now for b in tcp)
        directors = [s for s in lab.services.values() if isinstance(s, FrontEndServer)]
        held = sum(len(d._nonces) for d in directors)
        assert held >= 12
        # a later challenge forgets the nonces that expired more than one lifetime ago
        for director in directors:
            director._prune_nonces(now + 2 * NONCE_LIFETIME + 1)
        assert sum(len(d._nonces) for d in directors) == 0


def test_validated_nonces_do_not_pile_up_with_client_churn() -> None:
    """New clients from one host all the while (the soak): the server's caches of nonces hold a bounded number per
    host, not one per second — a nonce past its expiry is worth nothing (RFC 8489 §9.2.4: stale, 438) and is
    checked by its MAC again if it ever comes back."""
    from simulator.core.credentials import CredentialStore
    from simulator.core.turn.auth import Authenticator
    from simulator.core.turn.state import TurnServerConfig

    lifetime = 600.0
    auth = Authenticator(TurnServerConfig(public_host="127.68.9.1", relay_host="127.68.9.1", nonce_lifetime=lifetime),
                         CredentialStore(), b"k" * 20)
    hosts = [f"127.68.9.{n}" for n in range(10, 14)]
    now = 1_000_000.0
    for _ in range(int(3 * lifetime)):  # a fresh client per host each second, for three lifetimes
        for host in hosts:
            nonce = auth.make_nonce(host, now)
            assert auth.nonce_valid(nonce, host, now)
        now += 1.0
    held = len(auth._good_nonces)
    # a lifetime's worth of distinct nonces at most per host (plus the few not yet dropped), not 3 x 600 per host
    assert held <= len(hosts) * (lifetime // 10 + 1) + 8, held
    stale = auth.make_nonce(hosts[0], now - 2 * lifetime)
    assert not auth.nonce_valid(stale, hosts[0], now)  # expired: still refused


async def test_a_long_signed_in_user_keeps_a_bounded_inbox_of_unread_requests(shipped_scenario: Scenario) -> None:
    """A callee signed in for the whole soak is sent INVITE, ACK and BYE for every call; nobody reads them back
    (``next_request``). Its client keeps the newest INBOX_LIMIT, not every request of every call (the soak's
    per-call growth, found by tracemalloc: five requests kept per call)."""
    from simulator.net.clients.call import SipCall
    from simulator.net.clients.sip_client import INBOX_LIMIT

    calls = 40  # 3 requests each reach the callee: 120 > the limit
    sdp = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=s\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 5004 RTP/AVP 0\r\n"
    async with Lab(shipped_scenario) as lab:
        accounts = user_accounts(lab)
        async with remote_user_session(lab, "edge1", index=0, timeout=5) as alice, \
                remote_user_session(lab, "edge2", index=1, timeout=5) as bob:

            async def on_invite(offer: str, caller: str) -> str:
                return sdp

            async def on_bye(caller: str) -> None:
                return None

            bob.client.on_invite, bob.client.on_bye = on_invite, on_bye  # a callee's client, as in the calls phase
            for _ in range(calls):
                call = await SipCall.invite(alice.client, accounts[1].aor, sdp, 5.0, caller_uri=alice.aor)
                assert (await call.bye(5.0)).status == 200
            for _ in range(100):  # the last ACK/BYE are answered before they are kept
                if bob.client.inbox.qsize() + bob.client.inbox_dropped >= 3 * calls:
                    break
                await asyncio.sleep(0.01)
            assert bob.client.inbox.qsize() == INBOX_LIMIT
            assert bob.client.inbox_dropped == 3 * calls - INBOX_LIMIT
            assert (await bob.client.next_request("BYE", 1.0)).method == "BYE"  # the newest are the ones kept
