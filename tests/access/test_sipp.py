"""SIPp (a SIP tester nobody here wrote) against the Access Edge on 443, through stunnel."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulator.lab.access import access_edge_address, remote_user_session, user_accounts
from simulator.lab.topology import Lab
from simulator.net.edge.access_edge import AccessEdge
from simulator.net.peers.frontend import FrontEndServer
from tests.peers import require_tool

from .sipp_harness import SIPP_DIR, SIPP_HOST, free_port, run_sipp, stunnel_client

pytestmark = pytest.mark.interop


async def test_sipp_registers_and_sends_messages_through_the_access_edge(lab: Lab, tmp_path: Path) -> None:
    sipp, stunnel = require_tool("sipp"), require_tool("stunnel4")
    assert lab.files is not None
    user, target = user_accounts(lab)[0], user_accounts(lab)[1]
    (tmp_path / "users.csv").write_text(f"SEQUENTIAL\n{user.domain};{target.user}\n")
    edge = (access_edge_address(lab, "edge1"), lab.port_map(443))
    async with stunnel_client(stunnel, tmp_path, lab.files.ca, edge, "sip.contoso.com") as (host, port):
        run = await run_sipp(sipp, [
            f"{host}:{port}", "-sf", str(SIPP_DIR / "register_message.xml"), "-inf", "users.csv",
            "-s", user.user, "-au", user.user, "-ap", user.password, "-t", "t1", "-i", SIPP_HOST,
            "-p", str(free_port(SIPP_HOST)), "-m", "40", "-r", "40", "-l", "20", "-nd", "-timeout", "30"],
            timeout=45, cwd=tmp_path)
    assert (run.returncode, run.successful, run.failed) == (0, 40, 0), run.output[-2000:]
    director = lab.services["sip-director"]
    assert isinstance(director, FrontEndServer)
    assert director.counters["registered"] == 40 and len(director.messages) == 40
    assert all(m[:2] == (user.aor, target.aor) for m in director.messages)


async def test_sipp_malformed_requests_get_400_and_the_listener_stays_up(lab: Lab, tmp_path: Path) -> None:
    sipp, stunnel = require_tool("sipp"), require_tool("stunnel4")
    assert lab.files is not None
    edge = (access_edge_address(lab, "edge1"), lab.port_map(443))
    async with stunnel_client(stunnel, tmp_path, lab.files.ca, edge, "sip.contoso.com") as (host, port):
        run = await run_sipp(sipp, [
            f"{host}:{port}", "-sf", str(SIPP_DIR / "malformed.xml"), "-s", "sip.contoso.com", "-t", "t1",
            "-i", SIPP_HOST, "-p", str(free_port(SIPP_HOST)), "-m", "5", "-r", "20", "-nd", "-timeout", "20"],
            timeout=30, cwd=tmp_path)
    assert (run.returncode, run.successful, run.failed) == (0, 5, 0), run.output[-2000:]
    edge_service = lab.nodes["edge1"].services["access-edge"]
    assert isinstance(edge_service, AccessEdge)
    listener = edge_service.listeners["sip-443"]
    assert listener.running and listener.malformed == 20  # 4 malformed requests per call
    async with remote_user_session(lab, "edge1") as signed_in:  # and it still serves a real client
        assert signed_in.aor == user_accounts(lab)[0].aor
