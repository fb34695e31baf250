"""Shared zone data and a running lab DNS server on its own loopback address (never 127.0.0.1:53)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from simulator.core.dns_zone import Zone
from simulator.net.peers.dns import DnsServer

DNS_SERVER_HOST = "127.77.53.1"
CLIENT_HOST = "127.77.53.2"

POOL_NODES = ["127.77.1.11", "127.77.1.12", "127.77.1.13"]
BIG_NAME = "big.contoso.com"
BIG_NAME_ADDRESSES = [f"127.77.9.{i}" for i in range(1, 61)]  # 60 A records: > 512 octets


def lab_zone_records() -> list[dict[str, object]]:
    """The seed topology's external + internal DNS, as the scenario loader would pass it."""
    records: list[dict[str, object]] = []
    for index, node in enumerate(POOL_NODES):
        records.append({"name": "sip.contoso.com", "type": "A", "value": node})
        records.append({"name": "webconf.contoso.com", "type": "A", "value": f"127.77.2.{11 + index}"})
        records.append({"name": "av.contoso.com", "type": "A", "value": f"127.77.3.{11 + index}"})
        records.append({"name": "edgepool-int.contoso.local", "type": "A", "value": f"127.77.4.{11 + index}"})
    records += [
        {"name": "_sip._tls.contoso.com", "type": "SRV", "priority": 0, "weight": 0, "port": 443,
         "target": "sip.contoso.com"},
        {"name": "_sipfederationtls._tcp.contoso.com", "type": "SRV", "priority": 0, "weight": 0,
         "port": 5061, "target": "sip.contoso.com"},
        {"name": "_xmpp-server._tcp.contoso.com", "type": "SRV", "priority": 0, "weight": 0, "port": 5269,
         "target": "sip.contoso.com"},
        {"name": "_sipfederationtls._tcp.fabrikam.com", "type": "SRV", "priority": 0, "weight": 0,
         "port": 5061, "target": "sip.fabrikam.com"},
        {"name": "sip.fabrikam.com", "type": "A", "value": "127.77.20.1"},
        {"name": "lyncdiscover.contoso.com", "type": "CNAME", "value": "webconf.contoso.com"},
    ]
    records += [{"name": BIG_NAME, "type": "A", "value": address} for address in BIG_NAME_ADDRESSES]
    return records


@pytest.fixture
def lab_zone() -> Zone:
    return Zone.from_records(lab_zone_records())


@pytest.fixture
async def dns_server(lab_zone: Zone) -> AsyncIterator[DnsServer]:
    async with DnsServer(lab_zone, DNS_SERVER_HOST, 0, tcp_idle_timeout=5.0) as server:
        yield server
