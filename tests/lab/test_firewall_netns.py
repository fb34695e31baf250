"""The emitted ruleset loaded into a real Linux router between network namespaces, checked with plain sockets.

Each test builds its own four namespaces (suffixed with the pid and a counter, so two runs never collide):

    ext  (10.200.1.0/24) ─ext0─┐          ┌─dmz0─ (10.200.2.0/24) dmz: the nodes' private external addresses
                               fw (router)
    int  (10.200.4.0/24) ─int0─┘          └─eint0─ (10.200.5.0/24) dmz: the nodes' internal interfaces

with the addresses of scenarios/firewall-lab.yaml. The public addresses (10.200.3.0/24) exist nowhere: ext
and dmz route everything through fw, whose ruleset DNATs them. Listeners and clients are ``python -c`` runs
inside the namespaces (``ip netns exec``), every socket operation bounded by a timeout. The veth pairs are
created inside the namespaces, so the host never sees them, and deleting the namespaces removes everything,
also when a test fails. Nothing leaves the namespaces.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from simulator.lab.fwlab import Dialect, Namespaces
from simulator.spec.loader import load_scenario
from simulator.spec.schema import Scenario
from tests.peers import in_ci, require_tool

pytestmark = pytest.mark.interop

FIREWALL_LAB = Path(__file__).resolve().parents[2] / "scenarios" / "firewall-lab.yaml"
BLOCKED_WAIT = 1.5  # seconds a client waits before calling a flow dropped
ARRIVE_WAIT = 4.0  # seconds a listener waits for a flow that should arrive

TCP_LISTENER = """
import socket, sys
host, port, wait = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
with socket.socket() as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port)); s.listen(4); s.settimeout(wait)
    print("ready", flush=True)
    try:
        conn, peer = s.accept()
    except TimeoutError:
        print("none", flush=True); sys.exit(0)
    with conn:
        conn.settimeout(wait)
        conn.sendall(f"{peer[0]}:{peer[1]}".encode())
        print(f"from {peer[0]}:{peer[1]}", flush=True)
"""

TCP_CLIENT = """
import socket, sys, time
src, sport, dst, port, wait = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
start = time.monotonic()
with socket.socket() as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.settimeout(wait); s.bind((src, sport))
    try:
        s.connect((dst, port))
        peer = s.getpeername()
        print(f"connected {peer[0]}:{peer[1]} {s.recv(100).decode()} {time.monotonic() - start:.3f}", flush=True)
    except ConnectionRefusedError:
        print(f"refused - - {time.monotonic() - start:.3f}", flush=True)
    except TimeoutError:
        print(f"timeout - - {time.monotonic() - start:.3f}", flush=True)
"""

UDP_LISTENER = """
import socket, sys
host, port, wait = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.bind((host, port)); s.settimeout(wait)
    print("ready", flush=True)
    try:
        data, peer = s.recvfrom(2048)
    except TimeoutError:
        print("none", flush=True); sys.exit(0)
    s.sendto(f"{peer[0]}:{peer[1]}".encode(), peer)
    print(f"from {peer[0]}:{peer[1]}", flush=True)
"""

UDP_CLIENT = """
import socket, sys
src, dst, port, wait = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.bind((src, 0)); s.settimeout(wait)
    s.sendto(b"probe", (dst, port))
    try:
        data, peer = s.recvfrom(2048)
        print(f"reply {peer[0]}:{peer[1]} {data.decode()}", flush=True)
    except TimeoutError:
        print("timeout - -", flush=True)
"""


@dataclass
class Outcome:
    """What the listener saw (``from ADDR:PORT`` or ``none``) and what the client saw."""

    listener: str
    client: str

    @property
    def client_words(self) -> list[str]:
        return self.client.split()


class FirewallLab(Namespaces):
    """The namespace lab of :mod:`simulator.lab.fwlab`, with plain-socket listeners and clients in its sides."""

    def _python(self, side: str, code: str, *args: object) -> list[str]:
        return ["ip", "netns", "exec", self.ns[side], sys.executable, "-I", "-c", code, *map(str, args)]

    def _listen(self, side: str, code: str, host: str, port: int, wait: float) -> subprocess.Popen[str]:
        listener = subprocess.Popen(self._python(side, code, host, port, wait), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
        self._processes.append(listener)
        assert listener.stdout is not None
        ready, _, _ = select.select([listener.stdout], [], [], 10)
        line = listener.stdout.readline().strip() if ready else ""
        if line != "ready":
            listener.kill()
            raise RuntimeError(f"listener on {host}:{port} did not start: {line!r} {listener.stderr}")
        return listener

    def _finish(self, listener: subprocess.Popen[str], client_argv: list[str], client_wait: float) -> Outcome:
        client = subprocess.run(client_argv, capture_output=True, text=True, timeout=client_wait + 10, check=False)
        assert client.returncode == 0, client.stderr
        out, err = listener.communicate(timeout=ARRIVE_WAIT + 10)
        assert listener.returncode == 0, err
        return Outcome(out.strip(), client.stdout.strip())

    def tcp(self, client_side: str, src: str, dst: str, port: int, listen_on: tuple[str, str], *,
            arrives: bool, sport: int = 0) -> Outcome:
        """Connect ``src`` → ``dst:port`` with a listener on ``listen_on`` (side, address) at the same port."""
        client_wait = ARRIVE_WAIT if arrives else BLOCKED_WAIT
        listener = self._listen(listen_on[0], TCP_LISTENER, listen_on[1], port,
                                ARRIVE_WAIT if arrives else BLOCKED_WAIT + 1)
        return self._finish(listener, self._python(client_side, TCP_CLIENT, src, sport, dst, port, client_wait),
                            client_wait)

    def udp(self, client_side: str, src: str, dst: str, port: int, listen_on: tuple[str, str], *,
            arrives: bool) -> Outcome:
        listener = self._listen(listen_on[0], UDP_LISTENER, listen_on[1], port,
                                ARRIVE_WAIT if arrives else BLOCKED_WAIT + 1)
        return self._finish(listener, self._python(client_side, UDP_CLIENT, src, dst, port, BLOCKED_WAIT),
                            BLOCKED_WAIT)


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return load_scenario(FIREWALL_LAB)


@pytest.fixture
def fw_lab(scenario: Scenario) -> Iterator[FirewallLab]:
    if os.geteuid() != 0:
        if in_ci():
            pytest.fail("network namespaces need root")
        pytest.skip("network namespaces need root")
    require_tool("ip")
    require_tool("nft")
    lab = FirewallLab(scenario)
    try:
        lab.build()
        yield lab
    finally:
        lab.close()
        leftovers = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=False)
        assert not any(name in leftovers.stdout for name in lab.ns.values()), leftovers.stdout


EDGE1 = 0


@pytest.mark.parametrize("dialect", ["nftables", "iptables"])
def test_sip_443_to_the_public_access_address_arrives_with_the_clients_own_source(fw_lab: FirewallLab,
                                                                                 dialect: Dialect) -> None:
    if dialect == "iptables":
        require_tool("iptables-restore")
    fw_lab.load(dialect)
    access = fw_lab.nodes[EDGE1].access
    seen = fw_lab.tcp("ext", fw_lab.ext_client, str(access.public), 443, ("dmz", str(access.private)), arrives=True)
    assert seen.listener.startswith(f"from {fw_lab.ext_client}:"), seen  # DNAT only: the source is kept
    verdict, peer, told, _ = seen.client_words
    assert verdict == "connected" and peer == f"{access.public}:443"
    assert told.startswith(f"{fw_lab.ext_client}:")


@pytest.mark.parametrize("dialect", ["nftables", "iptables"])
def test_an_undocumented_port_never_arrives(fw_lab: FirewallLab, dialect: Dialect) -> None:
    if dialect == "iptables":
        require_tool("iptables-restore")
    fw_lab.load(dialect)
    access = fw_lab.nodes[EDGE1].access
    seen = fw_lab.tcp("ext", fw_lab.ext_client, str(access.public), 444, ("dmz", str(access.private)), arrives=False)
    assert seen.listener == "none"
    assert seen.client_words[0] == "timeout", seen  # dropped silently


@pytest.mark.parametrize("dialect", ["nftables", "iptables"])
def test_stun_3478_to_the_public_av_address_arrives_and_is_answered(fw_lab: FirewallLab, dialect: Dialect) -> None:
    if dialect == "iptables":
        require_tool("iptables-restore")
    fw_lab.load(dialect)
    av = fw_lab.nodes[1].av
    seen = fw_lab.udp("ext", fw_lab.ext_client, str(av.public), 3478, ("dmz", str(av.private)), arrives=True)
    assert seen.listener.startswith(f"from {fw_lab.ext_client}:"), seen
    verdict, peer, told = seen.client_words
    assert verdict == "reply" and peer == f"{av.public}:3478" and told.startswith(fw_lab.ext_client)


def test_reject_refuses_a_blocked_connect_at_once(fw_lab: FirewallLab) -> None:
    fw_lab.load("nftables", reject=True)
    access = fw_lab.nodes[EDGE1].access
    seen = fw_lab.tcp("ext", fw_lab.ext_client, str(access.public), 444, ("dmz", str(access.private)), arrives=False)
    assert seen.listener == "none"  # the firewall answered, not the Edge
    verdict, _, _, elapsed = seen.client_words
    assert verdict == "refused" and float(elapsed) < 1.0, seen


def test_snat_inbound_shows_the_edge_the_firewalls_address(fw_lab: FirewallLab) -> None:
    fw_lab.load("nftables", snat_inbound=True)
    access = fw_lab.nodes[EDGE1].access
    seen = fw_lab.tcp("ext", fw_lab.ext_client, str(access.public), 443, ("dmz", str(access.private)), arrives=True)
    assert seen.listener.startswith("from 10.200.2.1:"), seen  # fw's DMZ leg, not the client
    assert seen.client_words[0] == "connected"


def test_the_relay_sends_from_its_range_and_keeps_its_port_through_the_nat(fw_lab: FirewallLab) -> None:
    """E10: the A/V Edge's relay opens TCP from a relay port to any peer port; the peer sees public:same port."""
    fw_lab.load("nftables")
    av = fw_lab.nodes[EDGE1].av
    seen = fw_lab.tcp("dmz", str(av.private), fw_lab.ext_client, 8080, ("ext", fw_lab.ext_client), arrives=True,
                      sport=50123)
    assert seen.listener == f"from {av.public}:50123", seen
    blocked = fw_lab.tcp("dmz", str(av.private), fw_lab.ext_client, 8081, ("ext", fw_lab.ext_client),
                         arrives=False, sport=49999)
    assert blocked.listener == "none" and blocked.client_words[0] == "timeout", blocked


@pytest.mark.parametrize("hairpin", [True, False])
def test_hairpin_between_nodes_public_av_addresses(fw_lab: FirewallLab, hairpin: bool) -> None:
    fw_lab.load("nftables", hairpin=hairpin)
    one, two = fw_lab.nodes[0].av, fw_lab.nodes[1].av
    seen = fw_lab.udp("dmz", str(one.private), str(two.public), 3478, ("dmz", str(two.private)), arrives=hairpin)
    if hairpin:  # DNATed to node 2 and SNATed to node 1's public address, so the answer comes back through fw
        assert seen.listener.startswith(f"from {one.public}:"), seen
        assert seen.client_words[:2] == ["reply", f"{two.public}:3478"], seen
    else:
        assert seen.listener == "none" and seen.client_words[0] == "timeout", seen


def test_drop_return_lets_the_flow_arrive_but_not_its_answer(fw_lab: FirewallLab) -> None:
    fw_lab.load("nftables", drop_return=["E15"])
    av = fw_lab.nodes[EDGE1].av
    seen = fw_lab.udp("ext", fw_lab.ext_client, str(av.public), 3478, ("dmz", str(av.private)), arrives=True)
    assert seen.listener.startswith(f"from {fw_lab.ext_client}:"), seen
    assert seen.client_words[0] == "timeout", seen


@pytest.mark.parametrize("guarded", [False, True])
def test_the_internal_interface_is_for_the_internal_side(fw_lab: FirewallLab, guarded: bool) -> None:
    """I2 from the Front End arrives; from outside it arrives only while no external interface is given."""
    fw_lab.load("nftables", external_interface="ext0" if guarded else None)
    internal = str(fw_lab.nodes[EDGE1].internal)
    seen = fw_lab.tcp("int", fw_lab.int_client, internal, 5061, ("dmz", internal), arrives=True)
    assert seen.listener.startswith(f"from {fw_lab.int_client}:"), seen
    outside = fw_lab.tcp("ext", fw_lab.ext_client, internal, 5061, ("dmz", internal), arrives=not guarded)
    if guarded:
        assert outside.listener == "none" and outside.client_words[0] == "timeout", outside
    else:
        assert outside.listener.startswith(f"from {fw_lab.ext_client}:"), outside


def test_a_build_that_fails_halfway_leaves_no_namespace(scenario: Scenario, monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() != 0:
        if in_ci():
            pytest.fail("network namespaces need root")
        pytest.skip("network namespaces need root")
    require_tool("ip")
    lab = FirewallLab(scenario)

    def broken(*_: object, **__: object) -> str:
        raise RuntimeError("sysctl failed")

    monkeypatch.setattr(lab, "run_in", broken)  # the last step of build()
    try:
        with pytest.raises(RuntimeError, match="sysctl failed"):
            lab.build()
        # build() removed what it had made before the error reached the caller
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10,
                                check=True).stdout
        assert not any(name in listed for name in lab.ns.values())
    finally:
        lab.close()
