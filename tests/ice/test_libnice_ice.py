"""Interop: libnice 0.1.21 in ``Nice.Compatibility.OC2007R2`` (MS-ICE2, the open-source Lync-compatible agent)
↔ edgesim's agent in the ms-ice2 profile, both gathering from edgesim's A/V Edge (in-process), libnice with
``force-relay`` so its only candidate is an MS-TURN relay: the selected pair goes through the relay.

libnice runs under the system python in a subprocess (tests/ice/libnice_ice.py); the exchange of
ufrag/pwd and ``a=candidate`` lines (MS-ICE2 spelling) goes over its stdin/stdout as JSON lines.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from simulator.core.credentials import CredentialStore
from simulator.core.ice import CandidateType, IceState
from simulator.net.clients.ice import IceSession
from simulator.net.edge.av_edge import AvEdgeServer
from simulator.wire import sdp
from tests.interop.test_libnice import SYSTEM_PYTHON, require_libnice

pytestmark = pytest.mark.interop

SCRIPT = Path(__file__).with_name("libnice_ice.py")
EDGE = "127.91.3.1"
LIBNICE_LOCAL = "127.91.3.2"
OURS = "127.91.3.3"
USER, PASSWORD = "msice201", "pass1234"  # 8 bytes: libnice writes OC2007 attributes unpadded (test_libnice.py)


def libnice(edge: AvEdgeServer, controlling: bool,
            compat: str = "oc2007r2") -> AbstractAsyncContextManager[tuple[Any, asyncio.Queue[dict[str, Any]]]]:
    assert edge.udp_address is not None
    argv = [SYSTEM_PYTHON, str(SCRIPT), "--server", edge.udp_address.host, "--port", str(edge.udp_address.port),
            "--user", USER, "--password", PASSWORD, "--local", LIBNICE_LOCAL, "--timeout", "15", "--compat", compat,
            *(["--controlling"] if controlling else [])]
    return spawn(argv)


@asynccontextmanager
async def spawn(argv: list[str]) -> AsyncIterator[tuple[Any, asyncio.Queue[dict[str, Any]]]]:
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    log: list[str] = []

    async def read() -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            text = line.decode(errors="replace").strip()
            log.append(text)
            if text.startswith("{"):
                events.put_nowait(json.loads(text))

    reader = asyncio.create_task(read())
    try:
        yield proc, events
    except BaseException:
        print("\n".join(log[-60:]), file=sys.stderr)
        raise
    finally:
        if proc.returncode is None:
            with suppress(ProcessLookupError):
                proc.terminate()
        with suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 10)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await reader


async def next_event(events: asyncio.Queue[dict[str, Any]], name: str, timeout: float = 10.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            event = await events.get()
            if event.get("event") == name:
                return event
            if event.get("event") == "result":
                raise AssertionError(f"libnice ended before {name!r}: {event}")


@pytest.mark.parametrize(("compat", "edgesim_controlling", "relay_only"), [
    ("oc2007r2", True, False), ("oc2007r2", False, False), ("oc2007r2", True, True), ("rfc5245", False, False)],
    ids=["edgesim-controlling", "edgesim-controlled", "edgesim-controlling-relay-only", "rfc5245-control"])
async def test_libnice_oc2007r2_selects_a_pair_through_the_msturn_relay(compat: str, edgesim_controlling: bool,
                                                                       relay_only: bool) -> None:
    """OC2007R2 ↔ ms-ice2 (MS-TURN relay on libnice's side); the rfc5245 case (libnice RFC 5245 ICE with an
    RFC TURN relay on the same Edge ↔ our rfc8445 profile) is the control for the harness."""
    require_libnice()
    store = CredentialStore()
    store.add_static(USER, PASSWORD)
    edge = AvEdgeServer(EDGE, EDGE, udp_port=0, tcp_port=0, credentials=store, realm="ice.test",
                        first_port=55000, last_port=55199, seed=3)
    profile = "ms-ice2" if compat == "oc2007r2" else "rfc8445"
    async with edge, libnice(edge, controlling=not edgesim_controlling, compat=compat) as (proc, events):
        assert edge.udp_address is not None
        ours = IceSession(profile, "controlling" if edgesim_controlling else "controlled", random.Random(5),
                          hosts=[OURS], turn_server=edge.udp_address, turn_username=USER, turn_password=PASSWORD,
                          relay_only=relay_only)
        try:
            gathered, _ = await asyncio.gather(next_event(events, "gathered"), ours.gather(3.0))
            relays = [c for c in gathered["described"] if c["type"] == "relay"]
            assert relays and relays[0]["host"] == EDGE, gathered  # libnice's MS-TURN relay on edgesim
            ours.set_remote(sdp.IceDescription(gathered["ufrag"], gathered["pwd"],
                                               tuple(sdp.parse_candidate(line) for line in gathered["candidates"])))
            mine = sdp.parse_sdp(ours.local_sdp())  # ms-ice2 spelling in that profile
            assert proc.stdin is not None
            form = "ms-ice2" if profile == "ms-ice2" else "rfc8839"
            lines = ["a=" + c.to_sdp(form) for c in mine.candidates]
            proc.stdin.write((json.dumps({"ufrag": mine.ufrag, "pwd": mine.pwd, "candidates": lines}) + "\n").encode())
            await proc.stdin.drain()
            selected = await ours.connect(10.0)
            theirs = await next_event(events, "selected")
            assert ours.state is IceState.COMPLETED
            assert theirs["local"]["type"] == "relay" and theirs["local"]["host"] == EDGE
            # both ends agree: our remote is libnice's relayed address, libnice's remote is our local address
            assert (selected.remote.address.host, selected.remote.address.port) == (
                theirs["local"]["host"], theirs["local"]["port"])
            assert (theirs["remote"]["host"], theirs["remote"]["port"]) == tuple(selected.local.address)
            assert selected.local.type is (CandidateType.RELAY if relay_only else CandidateType.HOST)
            # application data both ways on the selected pair, through the relay
            hello, _ = await ours.recv(5)
            assert hello == b"hello from libnice"
            ours.send(b"ECHO" + hello)
            ours.send(b"from edgesim")
            async with asyncio.timeout(5):
                while (await ours.recv(5))[0] != b"ECHOfrom edgesim":
                    pass
            proc.stdin.write(b'{"bye": true}\n')
            await proc.stdin.drain()
            result = await next_event(events, "result")
            assert result["ok"] is True, result
            print(f"libnice-{compat} edgesim={'controlling' if edgesim_controlling else 'controlled'} "
                  f"relay_only={relay_only} "
                  f"pair={selected.local.type}->{theirs['local']['type']} ttc={selected.time_to_connected:.3f}s "
                  f"checks_sent={ours.stats.checks_sent} retransmissions={ours.stats.retransmissions}")
        finally:
            await ours.close()


@pytest.mark.parametrize(("compat", "edgesim_controlling"), [("rfc5245", True), ("rfc5245", False),
                                                            ("oc2007r2", True), ("oc2007r2", False)])
async def test_libnice_ice_tcp_host_candidates(compat: str, edgesim_controlling: bool) -> None:
    """RFC 6544: libnice (ice-tcp only) ↔ our agent with TCP host candidates only; RFC 5245 mode ↔ rfc8445,
    OC2007R2 mode ↔ ms-ice2."""
    require_libnice()
    profile = "ms-ice2" if compat == "oc2007r2" else "rfc8445"
    argv = [SYSTEM_PYTHON, str(SCRIPT), "--server", "0.0.0.0", "--port", "1", "--user", USER, "--password", PASSWORD,
            "--local", LIBNICE_LOCAL, "--timeout", "15", "--compat", compat, "--no-relay", "--tcp-only",
            *([] if edgesim_controlling else ["--controlling"])]
    async with spawn(argv) as (proc, events):
        ours = IceSession(profile, "controlling" if edgesim_controlling else "controlled", random.Random(9),
                          hosts=[OURS], transports=("tcp",))
        try:
            gathered, _ = await asyncio.gather(next_event(events, "gathered"), ours.gather(1.0))
            kinds = {(c["type"], c["sdp"].split()[2].upper()) for c in gathered["described"]}
            assert kinds == {("host", "TCP")}, gathered
            ours.set_remote(sdp.IceDescription(gathered["ufrag"], gathered["pwd"],
                                               tuple(sdp.parse_candidate(line) for line in gathered["candidates"])))
            mine = sdp.parse_sdp(ours.local_sdp())
            # libnice reads both spellings (TCP-ACT/TCP-PASS and TCP … tcptype); each profile writes its own
            lines = ["a=" + c.to_sdp("ms-ice2" if profile == "ms-ice2" else "rfc8839") for c in mine.candidates]
            assert proc.stdin is not None
            proc.stdin.write((json.dumps({"ufrag": mine.ufrag, "pwd": mine.pwd, "candidates": lines}) + "\n").encode())
            await proc.stdin.drain()
            selected = await ours.connect(10.0)
            theirs = await next_event(events, "selected")
            assert selected.local.transport == selected.remote.transport == "tcp"
            hello, _ = await ours.recv(5)
            assert hello == b"hello from libnice"
            ours.send(b"ECHO" + hello)
            ours.send(b"from edgesim")
            async with asyncio.timeout(5):
                while (await ours.recv(5))[0] != b"ECHOfrom edgesim":
                    pass
            proc.stdin.write(b'{"bye": true}\n')
            await proc.stdin.drain()
            result = await next_event(events, "result")
            assert result["ok"] is True, result
            print(f"libnice-{compat}-ice-tcp edgesim={'controlling' if edgesim_controlling else 'controlled'} "
                  f"pair={selected.local.type}/{selected.local.tcptype}->{theirs['local']['type']} "
                  f"ttc={selected.time_to_connected:.3f}s checks_sent={ours.stats.checks_sent}")
        finally:
            await ours.close()
