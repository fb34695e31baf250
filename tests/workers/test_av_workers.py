"""``edgesim serve av-edge --workers 2``: two processes behind one UDP and one TCP port (SO_REUSEPORT).

What must hold whichever worker the kernel picks (issue 14):

* allocations spread over both workers and no relay port is bound twice: every relay address distinct, each in
  exactly one worker's slice (announced on stdout), each bound by exactly one process (``ss -uanp``), and the
  per-worker allocation gauges (``--metrics``) summing to the total;
* one client 5-tuple always reaches the same worker (Linux hashes UDP over a reuseport group by the 4-tuple):
  Refresh from the allocating socket never gets 437 (RFC 8656 §7.3: allocation mismatch on another worker);
* a nonce handed out by one worker is accepted by the other (the Allocate from a new 5-tuple succeeds and its
  relay lies in the other worker's slice);
* HMAC-derived (MRAS, REST-scheme) credentials are accepted by every worker — checked with aioice, a real client;
* an RFC 6062 TCP relay (Connect, then ConnectionBind on a new TCP connection) carries data both ways whichever
  worker accepted the data connection (20 rounds; the workers report the connections they handed over).

Expected values come from the RFCs (8656, 6062) and from aioice; the client side here is written from the wire
codecs (tests.av.helpers.RfcClient), not from the server.
"""

from __future__ import annotations

import asyncio
import random
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import aioice.turn
import pytest

from simulator.core.credentials import derived_credential
from simulator.wire import stun, turn
from simulator.wire.stun import Address, MessageClass, attr
from simulator.wire.turn import TurnMethod
from tests.av.helpers import RfcClient, error_code
from tests.metrics.serving import Served, sample, scrape

_NET = random.Random().randrange(1, 250)  # one /24 of this helper's block 127.83.0.0/16 per run
HOST = f"127.83.{_NET}.10"
CLIENT_HOST = f"127.83.{_NET}.20"
PEER_HOST = f"127.83.{_NET}.30"
_FIRST = 40000 + 400 * random.Random().randrange(0, 40)
RELAY = (_FIRST, _FIRST + 399)
USER, PASSWORD = "alice", "wonderland"
SECRET = "shared-mras-secret"
REALM = "edgesim"
TIMEOUT = 3.0


@dataclass
class Server:
    served: Served
    udp: tuple[str, int]
    tcp: tuple[str, int]
    metrics: str
    slices: list[tuple[int, int]]

    def worker_of(self, port: int) -> int:
        owners = [index for index, (lo, hi) in enumerate(self.slices) if lo <= port <= hi]
        assert len(owners) == 1, (port, self.slices)
        return owners[0]


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    argv = ["av-edge", "--listen", HOST, "--public", HOST, "--udp-port", "0", "--tcp-port", "0",
            "--relay-range", f"{RELAY[0]}-{RELAY[1]}", "--user", f"{USER}:{PASSWORD}", "--realm", REALM,
            "--secret", SECRET, "--workers", "2", "--metrics", f"{HOST}:0"]
    served = Served(argv)
    try:
        url = served.wait_for(r"^metrics (http://\S+/metrics)$", timeout=60)[1]
        slices_line = served.wait_for(r"^av-edge workers 2 relay (.*)$", timeout=60)[1]
        ready = served.wait_for(r"^av-edge ready udp=([\d.]+):(\d+) tcp=([\d.]+):(\d+)$", timeout=60)
        slices = [(int(lo), int(hi)) for lo, hi in re.findall(r"w\d+=(\d+)-(\d+)", slices_line)]
        yield Server(served, (ready[1], int(ready[2])), (ready[3], int(ready[4])), url, slices)
    finally:
        if served.process.poll() is None:  # the last test stops it and reads the stop lines
            served.stop()


def test_relay_range_is_split_into_two_disjoint_slices(server: Server) -> None:
    (lo0, hi0), (lo1, hi1) = server.slices
    assert (lo0, hi1) == RELAY and hi0 + 1 == lo1


# ------------------------------------------------------------------ a UDP client from the wire codecs


def _udp(sock: socket.socket, client: RfcClient, data: bytes, to: tuple[str, int]) -> stun.Message:
    sock.sendto(data, to)
    answer, _ = sock.recvfrom(65536)
    return client.learn(answer)


def _new_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((CLIENT_HOST, 0))
    sock.settimeout(TIMEOUT)
    return sock


def _nonce(server: Server) -> RfcClient:
    """A client that learned realm and nonce from one 401 (from whichever worker answered)."""
    client = RfcClient(USER, PASSWORD)
    with _new_socket() as sock:
        first = _udp(sock, client, client.request(TurnMethod.ALLOCATE, attr(turn.REQUESTED_TRANSPORT, 17),
                                                  auth=False), server.udp)
    assert error_code(first) == 401 and client.nonce
    return client


def _allocate(server: Server, client: RfcClient, sock: socket.socket) -> Address:
    answer = _udp(sock, client, client.request(TurnMethod.ALLOCATE, attr(turn.REQUESTED_TRANSPORT, 17)), server.udp)
    assert answer.cls == MessageClass.SUCCESS, (error_code(answer), answer)
    relayed = answer.get(turn.XOR_RELAYED_ADDRESS)
    assert relayed is not None
    return relayed


def _release(server: Server, client: RfcClient, sock: socket.socket) -> None:
    answer = _udp(sock, client, client.request(TurnMethod.REFRESH, attr(turn.LIFETIME, 0)), server.udp)
    assert answer.cls == MessageClass.SUCCESS, error_code(answer)


def _ss_udp_owners(ports: set[int]) -> dict[int, set[str]]:
    """Which processes hold a UDP socket bound to HOST:port, for each of ``ports`` (``ss -uanp``)."""
    done = subprocess.run(["ss", "-uanpH", "src", HOST], capture_output=True, text=True, timeout=10, check=True)
    owners: dict[int, set[str]] = {}
    for line in done.stdout.splitlines():
        match = re.search(rf"{re.escape(HOST)}:(\d+)\s.*?pid=(\d+)", line)
        if match and int(match[1]) in ports:
            owners.setdefault(int(match[1]), set()).add(match[2])
    return owners


def test_allocations_spread_over_both_workers_and_no_port_is_bound_twice(server: Server) -> None:
    client = _nonce(server)
    sockets = [_new_socket() for _ in range(200)]
    try:
        relays = [_allocate(server, client, sock) for sock in sockets]  # the same nonce from 200 new 5-tuples
        ports = [r.port for r in relays]
        assert all(r.host == HOST for r in relays)
        assert len(set(ports)) == 200  # no relay port handed out twice
        per_worker = [0, 0]
        for port in ports:
            per_worker[server.worker_of(port)] += 1
        assert min(per_worker) > 0, per_worker  # both workers allocated
        exposition = scrape(server.metrics)
        gauges = [sample(exposition, "edgesim_turn_allocations_active", interface=f"{HOST}#w{i}") for i in (0, 1)]
        assert gauges == per_worker  # each worker counts what its slice says it holds
        assert sample(exposition, "edgesim_relay_ports_in_use", transport="udp") == 200
        if shutil.which("ss"):
            owners = _ss_udp_owners(set(ports))
            assert set(owners) == set(ports)
            assert all(len(pids) == 1 for pids in owners.values())  # each relay port bound by one process
            assert len({pid for pids in owners.values() for pid in pids}) == 2
        # RFC 8656 §7.3: a Refresh from another 5-tuple finds no allocation (437); from its own 5-tuple it always
        # finds it, so every datagram of a 5-tuple reached the worker that allocated
        for sock in sockets[:40]:
            for _ in range(3):
                answer = _udp(sock, client, client.request(TurnMethod.REFRESH, attr(turn.LIFETIME, 600)), server.udp)
                assert answer.cls == MessageClass.SUCCESS, error_code(answer)
        for sock in sockets:
            _release(server, client, sock)
        exposition = scrape(server.metrics)
        assert sample(exposition, "edgesim_turn_allocations_active") == 0
    finally:
        for sock in sockets:
            sock.close()


def test_a_nonce_from_one_worker_is_accepted_by_the_other(server: Server) -> None:
    """The nonce came from one worker's 401; Allocates signed with it land on both workers and all succeed
    (a worker with its own secret would answer 438 Stale Nonce, RFC 8489 §9.2.4)."""
    client = _nonce(server)
    seen: set[int] = set()
    for _ in range(30):
        with _new_socket() as sock:
            relayed = _allocate(server, client, sock)
            seen.add(server.worker_of(relayed.port))
            _release(server, client, sock)
    assert seen == {0, 1}


async def _aioice_allocate(server: Server, username: str, password: str) -> tuple[str, int]:
    transport, _ = await aioice.turn.create_turn_endpoint(
        asyncio.DatagramProtocol, server.udp, username, password, transport="udp")
    try:
        relayed: tuple[str, int] = transport.get_extra_info("sockname")
        return relayed
    finally:
        transport.close()


async def test_hmac_derived_credentials_are_accepted_by_every_worker(server: Server) -> None:
    credential = derived_credential(SECRET, "sip:alice@contoso.com", time.time() + 3600)
    workers = set()
    for _ in range(16):
        host, port = await _aioice_allocate(server, credential.username, credential.password)
        assert host == HOST
        workers.add(server.worker_of(port))
    assert workers == {0, 1}
    expired = derived_credential(SECRET, "sip:alice@contoso.com", time.time() - 1)
    forged = derived_credential("another secret", "sip:alice@contoso.com", time.time() + 3600)
    for bad in (expired, forged):
        with pytest.raises(Exception, match="401"):
            await _aioice_allocate(server, bad.username, bad.password)


# ------------------------------------------------------------------ RFC 6062 over TCP


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "connection closed"
        data += chunk
    return data


def _tcp_request(sock: socket.socket, client: RfcClient, data: bytes) -> stun.Message:
    sock.sendall(data)
    header = _recv_exact(sock, 20)
    return client.learn(header + _recv_exact(sock, int.from_bytes(header[2:4], "big")))


def _tcp_client(server: Server) -> socket.socket:
    sock = socket.create_connection(server.tcp, timeout=TIMEOUT, source_address=(CLIENT_HOST, 0))
    sock.settimeout(TIMEOUT)
    return sock


def test_rfc6062_connection_bind_works_whichever_worker_accepts_it(server: Server) -> None:
    peer_listener = socket.create_server((PEER_HOST, 0))
    peer_listener.settimeout(TIMEOUT)
    peer = Address(PEER_HOST, peer_listener.getsockname()[1])
    relay_workers: set[int] = set()
    try:
        for round_ in range(20):
            client = RfcClient(USER, PASSWORD)
            with _tcp_client(server) as control:
                first = _tcp_request(control, client, client.request(
                    TurnMethod.ALLOCATE, attr(turn.REQUESTED_TRANSPORT, 6), auth=False))
                assert error_code(first) == 401
                allocated = _tcp_request(control, client, client.request(
                    TurnMethod.ALLOCATE, attr(turn.REQUESTED_TRANSPORT, 6)))
                assert allocated.cls == MessageClass.SUCCESS, error_code(allocated)
                relayed = allocated.get(turn.XOR_RELAYED_ADDRESS)
                assert relayed is not None
                relay_workers.add(server.worker_of(relayed.port))
                connected = _tcp_request(control, client, client.request(
                    TurnMethod.CONNECT, attr(turn.XOR_PEER_ADDRESS, peer)))
                assert connected.cls == MessageClass.SUCCESS, error_code(connected)
                cid = connected.get(turn.CONNECTION_ID)
                assert cid is not None
                peer_conn, from_addr = peer_listener.accept()
                with peer_conn:
                    assert from_addr == (HOST, relayed.port)  # RFC 6062 §5.2: from the relayed transport address
                    peer_conn.settimeout(TIMEOUT)
                    with _tcp_client(server) as data_conn:  # a new TCP connection: either worker may accept it
                        bound = _tcp_request(data_conn, client, client.request(
                            TurnMethod.CONNECTION_BIND, attr(turn.CONNECTION_ID, cid)))
                        assert bound.cls == MessageClass.SUCCESS, (round_, error_code(bound))
                        data_conn.sendall(b"to peer %d" % round_)
                        assert _recv_exact(peer_conn, len(b"to peer %d" % round_)) == b"to peer %d" % round_
                        peer_conn.sendall(b"to client %d" % round_)
                        assert _recv_exact(data_conn, len(b"to client %d" % round_)) == b"to client %d" % round_
                _release_tcp(control, client)
    finally:
        peer_listener.close()
    assert relay_workers == {0, 1}


def _release_tcp(control: socket.socket, client: RfcClient) -> None:
    answer = _tcp_request(control, client, client.request(TurnMethod.REFRESH, attr(turn.LIFETIME, 0)))
    assert answer.cls == MessageClass.SUCCESS, error_code(answer)


def test_zz_stop_reports_each_worker_and_the_handovers(server: Server) -> None:
    """Runs last (module order): the stop line names both workers; the 20 RFC 6062 data connections were
    accepted by a random worker, so (with probability 1 - 2^-20) some were handed over to the other."""
    code, stderr = server.served.stop()
    assert code == 0, stderr
    line = next(line for line in server.served.lines if line.startswith("av-edge workers w0("))
    handed = [int(n) for n in re.findall(r"handed_out=(\d+)", line)]
    adopted = [int(n) for n in re.findall(r"adopted=(\d+)", line)]
    assert len(handed) == 2 and sum(handed) == sum(adopted) > 0, line
    stopped = next(line for line in server.served.lines if line.startswith("av-edge stopped: "))
    assert "0 active at exit" in stopped
    deadline = time.monotonic() + 10
    while shutil.which("ss") and time.monotonic() < deadline:  # no worker left behind
        done = subprocess.run(["ss", "-uanpH", "src", HOST], capture_output=True, text=True, timeout=10, check=False)
        if not done.stdout.strip():
            break
        time.sleep(0.2)
    else:
        if shutil.which("ss"):
            pytest.fail(f"sockets left on {HOST}")
