"""Web Conferencing Edge: a client's join is bridged over the Front End's 8057 links (synthetic PSOM)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.lab.topology import Lab
from simulator.lab.webconf import PSOM_EXTERNAL_PORT
from simulator.net.clients.psom import psom_join
from simulator.net.edge.webconf import PsomExternalListener, PsomInternalListener
from simulator.net.peers.webconf_frontend import LINKS_PER_NODE
from simulator.net.transport.tls import client_context
from simulator.outcome import ProbeFailure, Reason, Verdict
from simulator.scenario.runner import run_rules
from simulator.spec.schema import Scenario
from simulator.wire.errors import MalformedMessage
from simulator.wire.psom import PsomFramer, PsomRecord, PsomType


@pytest.fixture
async def lab(shipped_scenario: Scenario) -> AsyncIterator[Lab]:
    async with Lab(shipped_scenario) as running:
        yield running


async def _join(lab: Lab, node: str, key: str | None = None) -> str:
    assert lab.files is not None
    return await psom_join(lab.external_bind(node, "webconf"), lab.port_map(PSOM_EXTERNAL_PORT),
                           client_context(lab.files.ca), lab.scenario.edge_pool.webconf_fqdn,
                           key or lab.conference_key, 3)


async def test_front_end_holds_four_links_per_node_and_joins_are_bridged(lab: Lab) -> None:
    for node in ("edge1", "edge2"):
        internal = lab.nodes[node].services["psom-internal"]
        assert isinstance(internal, PsomInternalListener) and len(internal.links) == LINKS_PER_NODE
        assert await _join(lab, node) == f"{node}/fepool.contoso.local"
    external = lab.nodes["edge1"].services["psom-external"]
    assert isinstance(external, PsomExternalListener) and external.joins == 1


async def test_wrong_conference_key_is_rejected_by_the_front_end(lab: Lab) -> None:
    with pytest.raises(ProbeFailure) as caught:
        await _join(lab, "edge1", key="conf-guess")
    assert caught.value.reason is Reason.REJECTED and "rejected" in caught.value.detail


async def test_without_front_end_links_the_join_fails_and_e9_says_so(lab: Lab) -> None:
    await lab.services["frontend-webconf"].stop()
    internal = lab.nodes["edge1"].services["psom-internal"]
    assert isinstance(internal, PsomInternalListener)
    for _ in range(100):
        if not internal.links:
            break
        await asyncio.sleep(0.01)
    with pytest.raises(ProbeFailure, match="no-frontend"):
        await _join(lab, "edge1")
    results = await run_rules(lab, ["E9"])
    assert results[0].verdict is Verdict.FAIL and results[0].reason == "rejected"


async def test_stopped_8057_fails_i4_and_blocks_e9(lab: Lab) -> None:
    await lab.nodes["edge2"].stop_service("psom-internal")
    results = {r.rule.id: r for r in await run_rules(lab, ["I4", "E9"])}
    assert (results["I4"].verdict, results["I4"].reason) == (Verdict.FAIL, "refused")
    assert results["E9"].verdict is Verdict.BLOCKED and results["E9"].blocked_by == "I4"


async def test_client_checks_the_webconf_certificate_name(lab: Lab) -> None:
    assert lab.files is not None
    with pytest.raises(ProbeFailure) as caught:
        await psom_join(lab.external_bind("edge1", "webconf"), lab.port_map(PSOM_EXTERNAL_PORT),
                        client_context(lab.files.ca), "webconf.fabrikam.com", lab.conference_key, 3)
    assert caught.value.reason is Reason.WRONG_SAN


async def test_garbage_records_do_not_stop_the_listener(lab: Lab) -> None:
    assert lab.files is not None
    context = client_context(lab.files.ca)
    address, port = lab.external_bind("edge1", "webconf"), lab.port_map(PSOM_EXTERNAL_PORT)
    reader, writer = await asyncio.open_connection(address, port, ssl=context,
                                                   server_hostname=lab.scenario.edge_pool.webconf_fqdn)
    writer.write(b"\xff\xff\xff\xff\x00\x01junk")
    await writer.drain()
    assert await asyncio.wait_for(reader.read(100), 3) == b""  # framing lost: the Edge closes
    writer.close()
    await writer.wait_closed()
    assert await _join(lab, "edge1") == "edge1/fepool.contoso.local"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=7))
def test_framer_is_split_invariant_and_raises_only_malformed(data: bytes, step: int) -> None:
    records = [PsomRecord(PsomType.JOIN, data[:20]), PsomRecord(PsomType.PING, b"")]
    stream = b"".join(r.serialize() for r in records)
    framer = PsomFramer()
    got = [r for i in range(0, len(stream), step) for r in framer.feed(stream[i:i + step])]
    assert got == records
    try:
        PsomFramer().feed(data)
    except MalformedMessage as error:
        assert error.status is None


async def test_tls_is_real_on_the_external_port(lab: Lab) -> None:
    plain = ssl.create_default_context()  # system trust store: the lab CA is not in it
    with pytest.raises(ProbeFailure) as caught:
        await psom_join(lab.external_bind("edge1", "webconf"), lab.port_map(PSOM_EXTERNAL_PORT), plain,
                        lab.scenario.edge_pool.webconf_fqdn, lab.conference_key, 3)
    assert caught.value.reason is Reason.UNTRUSTED
