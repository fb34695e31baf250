"""The lab's stub resolver against the lab DNS server: A/SRV, TC→TCP retry, errors, timeouts."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from simulator.core.dns_policy import LyncFailoverPolicy
from simulator.net.peers.dns import DnsServer
from simulator.net.transport.resolver import NameNotFound, ResolverTimeout, SrvTarget, StubResolver
from tests.dns.conftest import BIG_NAME, BIG_NAME_ADDRESSES, CLIENT_HOST, DNS_SERVER_HOST, POOL_NODES


def resolver_for(server: DnsServer, **options: object) -> StubResolver:
    return StubResolver(server.host, server.port, source=CLIENT_HOST, timeout=2.0, **options)  # type: ignore[arg-type]


async def test_resolves_a_over_udp(dns_server: DnsServer) -> None:
    resolver = resolver_for(dns_server)
    answer = await resolver.query("sip.contoso.com", "A")
    assert answer.addresses == tuple(POOL_NODES)
    assert not answer.used_tcp
    assert dns_server.counters.queries == {("udp", "A"): 1}


async def test_truncated_udp_answer_is_retried_over_tcp(dns_server: DnsServer) -> None:
    resolver = resolver_for(dns_server)
    answer = await resolver.query(BIG_NAME, "A")
    assert answer.used_tcp
    assert list(answer.addresses) == BIG_NAME_ADDRESSES
    assert dns_server.counters.queries == {("udp", "A"): 1, ("tcp", "A"): 1}
    assert dns_server.counters.truncated == 1
    assert resolver.counters.tcp_retries == 1


async def test_edns_payload_avoids_the_tcp_retry(dns_server: DnsServer) -> None:
    answer = await resolver_for(dns_server, edns_payload=1232).query(BIG_NAME, "A")
    assert not answer.used_tcp
    assert list(answer.addresses) == BIG_NAME_ADDRESSES


async def test_resolves_srv_with_target_addresses(dns_server: DnsServer) -> None:
    targets = await resolver_for(dns_server).resolve_srv("_sipfederationtls._tcp.contoso.com")
    assert targets == [SrvTarget(0, 0, 5061, "sip.contoso.com", tuple(POOL_NODES))]


async def test_nxdomain_and_nodata(dns_server: DnsServer) -> None:
    resolver = resolver_for(dns_server)
    with pytest.raises(NameNotFound):
        await resolver.resolve_a("missing.contoso.com")
    assert await resolver.resolve_a("_tcp.contoso.com") == []


async def test_resolved_addresses_feed_the_client_policy(dns_server: DnsServer) -> None:
    policy = LyncFailoverPolicy(random.Random(11))
    addresses = await resolver_for(dns_server).resolve_a("sip.contoso.com")
    order = policy.candidates(addresses, now=0.0)
    policy.report_failure(order[0], now=0.0)
    assert order[0] not in policy.candidates(addresses, now=1.0)


class _SilentServer(asyncio.DatagramProtocol):
    """Swallows every datagram: a DNS server that never answers."""


async def test_timeout_when_the_server_never_answers() -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(_SilentServer, local_addr=(DNS_SERVER_HOST, 0))
    try:
        port = transport.get_extra_info("sockname")[1]
        resolver = StubResolver(DNS_SERVER_HOST, port, timeout=0.3, source=CLIENT_HOST)
        started = time.monotonic()
        with pytest.raises(ResolverTimeout):
            await resolver.resolve_a("sip.contoso.com")
        assert time.monotonic() - started < 2.0
        assert resolver.counters.timeouts == 1
    finally:
        transport.close()
