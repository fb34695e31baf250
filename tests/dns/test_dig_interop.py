"""Interop: BIND's dig (Debian dnsutils) against the lab DNS server, over UDP and TCP."""

from __future__ import annotations

import asyncio
import re

import pytest

from simulator.net.peers.dns import DnsServer
from tests.dns.conftest import BIG_NAME, BIG_NAME_ADDRESSES, POOL_NODES
from tests.peers import require_tool

pytestmark = pytest.mark.interop


async def dig(server: DnsServer, *arguments: str) -> str:
    """Run dig against the server (one try, 2 s) and return its output."""
    process = await asyncio.create_subprocess_exec(
        require_tool("dig"), f"@{server.host}", "-p", str(server.port), "+tries=1", "+time=2", *arguments,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 10)
    assert process.returncode == 0, stderr.decode()
    return stdout.decode()


def flags(output: str) -> set[str]:
    match = re.search(r";; flags: ([a-z ]+);", output)
    assert match, output
    return set(match.group(1).split())


def answer_values(output: str, rdtype: str) -> list[str]:
    return [line.split(None, 4)[4] for line in output.splitlines()
            if not line.startswith(";") and len(line.split(None, 4)) == 5 and line.split()[3] == rdtype]


@pytest.mark.parametrize("transport", ["+notcp", "+tcp"])
async def test_dig_gets_a_and_srv_records(dns_server: DnsServer, transport: str) -> None:
    assert (await dig(dns_server, transport, "+short", "sip.contoso.com", "A")).split() == POOL_NODES
    srv = await dig(dns_server, transport, "+short", "_sipfederationtls._tcp.contoso.com", "SRV")
    assert srv.split() == ["0", "0", "5061", "sip.contoso.com."]
    full = await dig(dns_server, transport, "_xmpp-server._tcp.contoso.com", "SRV")
    assert "status: NOERROR" in full
    assert "aa" in flags(full)
    assert answer_values(full, "SRV") == ["0 0 5269 sip.contoso.com."]
    assert sorted(answer_values(full, "A")) == POOL_NODES  # additional section
    expected = ("udp" if transport == "+notcp" else "tcp", "SRV")
    assert dns_server.counters.queries[expected] == 2


async def test_dig_sees_nxdomain(dns_server: DnsServer) -> None:
    assert "status: NXDOMAIN" in await dig(dns_server, "missing.contoso.com", "A")


async def test_dig_large_answer_truncated_over_udp_and_whole_over_tcp(dns_server: DnsServer) -> None:
    truncated = await dig(dns_server, "+ignore", "+noedns", BIG_NAME, "A")
    assert "tc" in flags(truncated)
    assert "(UDP)" in truncated
    assert 0 < len(answer_values(truncated, "A")) < len(BIG_NAME_ADDRESSES)
    whole = await dig(dns_server, "+tcp", BIG_NAME, "A")
    assert "tc" not in flags(whole)
    assert answer_values(whole, "A") == BIG_NAME_ADDRESSES
    # Without +ignore dig itself retries over TCP and gets all 60.
    retried = await dig(dns_server, "+noedns", "+short", BIG_NAME, "A")
    assert retried.split() == BIG_NAME_ADDRESSES
    assert dns_server.counters.truncated == 2
