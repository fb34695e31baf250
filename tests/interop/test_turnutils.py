"""Interop: coturn's ``turnutils_uclient`` against ``edgesim serve av-edge`` — client over UDP, over TCP, and
RFC 6062 TCP relays (``-T``), and over UDP with Send/Data indications instead of channels (``-s``) — with

The coturn case proves the harness: the same argv and the same summary parser must report 0 lost and
exactly ``clients x messages`` echoed against a server nobody here wrote. The edgesim case is the point.

uclient 4.6.1 starts each session 1-6 s after allocating (``1000 + random() % 5000`` ms), so one run takes
~7 s whatever its size; the four modes therefore run concurrently against one server instance, from
three client addresses, and each transport is then asserted on its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop import turnpeers
from tests.interop.turnpeers import PeerProcess, TurnServer, UclientResult
from tests.peers import require_tool

pytestmark = pytest.mark.interop

TRANSPORTS = ("udp", "udp-send", "tcp", "tcp-relay")
CLIENTS, MESSAGES = 4, 50  # -m 4 -n 50: 200 messages per transport
UCLIENT_TIMEOUT_S = 30.0


def _start(kind: str, workdir: Path) -> TurnServer:
    if kind == "coturn":
        require_tool("turnserver")
        return turnpeers.start_coturn(workdir)
    available, why = turnpeers.edgesim_serve_available()
    if not available:
        pytest.fail(f"edgesim serve av-edge is not available: {why}")
    return turnpeers.start_edgesim(workdir)


@dataclasses.dataclass
class Runs:
    server: TurnServer
    results: dict[str, UclientResult]


@pytest.fixture(scope="module", params=["coturn", "edgesim"])
def uclient_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    for tool in ("turnutils_uclient", "turnutils_peer"):
        require_tool(tool)
    workdir = tmp_path_factory.mktemp(f"uclient-{request.param}")
    server = _start(request.param, workdir)
    peer: PeerProcess | None = None
    started: dict[str, PeerProcess] = {}
    try:
        peer, peer_port = turnpeers.start_turnutils_peer(workdir)
        for index, transport in enumerate(TRANSPORTS, start=1):
            argv = turnpeers.uclient_argv(
                server, transport, peer=(turnpeers.PEER_HOST, peer_port), messages=MESSAGES, clients=CLIENTS,
                local_host=turnpeers.client_host(index),
            )
            started[transport] = PeerProcess("turnutils_uclient", argv, workdir / f"uclient-{transport}.log")
        results = {t: turnpeers.wait_uclient(p, UCLIENT_TIMEOUT_S) for t, p in started.items()}
        yield Runs(server, results)
    finally:
        for process in started.values():
            process.stop()
        if peer is not None:
            peer.stop()
        server.stop()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_uclient_echoes_every_message(uclient_runs: Runs, transport: str) -> None:
    result = uclient_runs.results[transport]
    context = f"{uclient_runs.server.kind} {transport}:\n{result.output[-3000:]}"
    expected = turnpeers.expected_uclient_messages(transport, CLIENTS, MESSAGES)
    assert result.returncode == 0, context
    assert result.error_lines == (), context
    assert (result.sent, result.received) == (expected, expected), context
    assert (result.lost, result.send_dropped) == (0, 0), context
    assert uclient_runs.server.process.alive(), uclient_runs.server.process.log_tail()


def test_wrong_password_is_reported_as_failure(tmp_path: Path) -> None:
    """The parser's negative control: a refused allocation must not look clean (coturn, real output)."""
    for tool in ("turnserver", "turnutils_uclient", "turnutils_peer"):
        require_tool(tool)
    server = turnpeers.start_coturn(tmp_path)
    try:
        peer, peer_port = turnpeers.start_turnutils_peer(tmp_path)
        with peer:
            wrong = dataclasses.replace(server, password="not-" + server.password)
            result = turnpeers.run_uclient(
                wrong, "udp", tmp_path, peer=(turnpeers.PEER_HOST, peer_port), messages=5, clients=1, timeout=20,
            )
    finally:
        server.stop()
    assert not result.clean
    assert result.returncode != 0
    assert any("Cannot complete Allocation" in line for line in result.error_lines), result.output


LOSSY_SUMMARY = """\
0: : Total connect time is 0
5: : start_mclient: tot_send_msgs=200, tot_recv_msgs=190
5: : start_mclient: tot_send_bytes ~ 20000, tot_recv_bytes ~ 19000
5: : Total transmit time is 5
5: : Total lost packets 10 (5.000000%), total send dropped 0 (0.000000%)
5: : Average round trip delay 0.100000 ms; min = 0 ms, max = 3 ms
"""


def test_parser_reads_counts_and_loss() -> None:
    result = turnpeers.parse_uclient(LOSSY_SUMMARY, 0)
    assert (result.sent, result.received, result.lost, result.send_dropped) == (200, 190, 10, 0)
    assert result.error_lines == ()
    assert not result.clean
    assert not turnpeers.parse_uclient("", 0).clean  # no summary at all is a failure, not a pass
