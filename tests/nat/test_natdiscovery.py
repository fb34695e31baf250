"""RFC 5780 NAT behaviour discovery (coturn's ``turnutils_natdiscovery``) through the NAT box.

Design (all addresses exist only on this host's loopback or in namespaces the test creates):

* coturn's ``turnserver`` runs in the root namespace as a STUN-only RFC 5780 server on two loopback
  addresses, ``IP1`` and ``IP2`` (127.80.x.1/.2), ports ``P`` and ``P+1`` (the alternate port).
* Each case gets a :class:`NatBox` on a fresh loopback public IP (127.79.x.y) and a namespaced host
  (``NatBox.attach_namespace``): a new network namespace whose only interface besides ``lo`` is a TUN
  with 10.77.1.2/32 and a default route through it. ``lo`` keeps only 127.0.0.1/32, so 127.80.x.y
  is routed out of the TUN instead of being taken as local; ``route_localnet`` lets the replies (with
  127/8 sources) in.
* ``turnutils_natdiscovery -m -f`` runs inside the namespace against ``IP1:P``. Its packets leave the
  TUN, the box translates them with the table and sends them from its public sockets to coturn; the
  replies coturn sends from ``IP1``/``IP2`` and ``P``/``P+1`` (CHANGE-REQUEST) are admitted or dropped
  by the table's filtering and written back to the TUN.
* The tool's verdicts must equal the configured mapping and filtering. A filtered reply costs the
  tool a 3 s receive timeout, so an address-and-port-dependent filter takes about 6 s.
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import socket
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from simulator.core.nat import Behaviour, DropReason
from simulator.net.nat.natbox import NatBox
from tests.nat.conftest import require_namespaces, run_inside
from tests.peers import require_tool

pytestmark = pytest.mark.interop

EI, AD, APD = Behaviour.ENDPOINT_INDEPENDENT, Behaviour.ADDRESS_DEPENDENT, Behaviour.ADDRESS_AND_PORT_DEPENDENT
STUN_PORT = 34780  # on our own 127.80.x.y addresses; the alternate port is STUN_PORT + 1
STARTUP_TIMEOUT = 10.0
DISCOVERY_TIMEOUT = 25.0  # two 3 s receive timeouts at most, plus start-up
INSIDE_IP = "10.77.1.2"

_VERDICT = re.compile(
    r"NAT with (Endpoint Independent|Address Dependent|Address and Port Dependent) (Mapping|Filtering)!"
)
# RFC 5780 §4.4 filtering test: test II (change IP and port) is refused unless EIF, test III (change
# port) only by APDF. §4.3 mapping test: tests I-III make 1, 2 or 3 bindings; the filtering test one more.
EXPECTED_FILTERED = {EI: 0, AD: 1, APD: 2}
EXPECTED_BINDINGS = {EI: 2, AD: 3, APD: 4}
_BEHAVIOUR = {"Endpoint Independent": EI, "Address Dependent": AD, "Address and Port Dependent": APD}


def _binding_request() -> bytes:
    return b"\x00\x01\x00\x00\x21\x12\xa4\x42" + secrets.token_bytes(12)  # RFC 8489 §5, no attributes


def _answers(address: tuple[str, int]) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.settimeout(0.2)
        try:
            probe.sendto(_binding_request(), address)
            return len(probe.recv(2048)) >= 20
        except OSError:
            return False


@pytest.fixture(scope="module")
def rfc5780_server() -> Iterator[tuple[str, str, int]]:
    """coturn as a STUN-only RFC 5780 server on two loopback addresses: ``(ip1, ip2, port)``."""
    turnserver = require_tool("turnserver")
    third = 1 + os.getpid() % 250
    ip1, ip2 = f"127.80.{third}.1", f"127.80.{third}.2"
    with tempfile.TemporaryDirectory(prefix="edgesim-coturn-") as workdir:
        log = Path(workdir, "turnserver.log")
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                [
                    turnserver, "-n", "--stun-only", "--no-cli", "--no-tcp", "--no-tls", "--no-dtls",
                    "--listening-ip", ip1, "--listening-ip", ip2,
                    "--listening-port", str(STUN_PORT), "--alt-listening-port", str(STUN_PORT + 1),
                    "--log-file", "stdout", "--simple-log", "--no-software-attribute",
                    "--pidfile", str(Path(workdir, "turnserver.pid")),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=workdir,
            )
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT
            targets = [(ip1, STUN_PORT), (ip2, STUN_PORT + 1)]
            for _ in range(200):
                if all(_answers(target) for target in targets):
                    break
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"turnserver did not come up:\n{log.read_text(errors='replace')[-2000:]}")
                time.sleep(0.05)
            else:
                pytest.fail("turnserver did not answer STUN")
            yield ip1, ip2, STUN_PORT
        finally:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def parse_verdicts(output: str) -> dict[str, Behaviour]:
    """``{"Mapping": …, "Filtering": …}`` from natdiscovery's report."""
    return {kind: _BEHAVIOUR[behaviour] for behaviour, kind in _VERDICT.findall(output)}


def test_parse_verdicts() -> None:
    output = (
        "========================================\nNAT with Address Dependent Mapping!\n"
        "========================================\nNAT with Address and Port Dependent Filtering!\n"
    )
    assert parse_verdicts(output) == {"Mapping": AD, "Filtering": APD}


@pytest.mark.parametrize(
    ("mapping", "filtering"),
    list(itertools.product([EI, AD, APD], repeat=2)),
    ids=[f"{m}-{f}" for m, f in itertools.product(["EIM", "ADM", "APDM"], ["EIF", "ADF", "APDF"])],
)
async def test_natdiscovery_reports_the_configured_behaviour(
    rfc5780_server: tuple[str, str, int],
    nat_boxes: Callable[..., Awaitable[NatBox]],
    mapping: Behaviour,
    filtering: Behaviour,
) -> None:
    natdiscovery = require_tool("turnutils_natdiscovery")
    require_namespaces()
    ip1, _, port = rfc5780_server
    box = await nat_boxes(mapping=mapping, filtering=filtering)
    host = await box.attach_namespace(INSIDE_IP)

    output = await run_inside(host, [natdiscovery, "-m", "-f", "-p", str(port), ip1], DISCOVERY_TIMEOUT)

    assert parse_verdicts(output) == {"Mapping": mapping, "Filtering": filtering}, output
    # The verdicts came from the table, not from lost packets: every reply coturn sent reached the box,
    # the filter dropped exactly the CHANGE-REQUEST replies it should, and the mapping test made the
    # bindings its behaviour implies (one more binding is the filtering test's fresh local port).
    assert not box.counters.drops, box.counters
    assert box.counters.received == box.counters.sent, box.counters
    assert box.table.drops == Counter({DropReason.FILTERED: EXPECTED_FILTERED[filtering]}) - Counter()
    assert box.table.bindings_created == EXPECTED_BINDINGS[mapping]


@pytest.mark.parametrize("hairpin", [True, False], ids=["hairpin", "no-hairpin"])
async def test_natdiscovery_hairpinning(
    rfc5780_server: tuple[str, str, int], nat_boxes: Callable[..., Awaitable[NatBox]], hairpin: bool
) -> None:
    """``-H``: a second socket sends to the first one's reflexive address; it arrives only with hairpin."""
    natdiscovery = require_tool("turnutils_natdiscovery")
    require_namespaces()
    ip1, _, port = rfc5780_server
    box = await nat_boxes(mapping=EI, filtering=EI, hairpin=hairpin)
    host = await box.attach_namespace(INSIDE_IP)

    output = await run_inside(host, [natdiscovery, "-H", "-p", str(port), ip1], DISCOVERY_TIMEOUT)

    assert ("Received a request (maybe a successful hairpinning)" in output) is hairpin, output
    assert box.counters.hairpinned == int(hairpin)
    assert box.table.drops[DropReason.HAIRPIN_DENIED] == int(not hairpin)
