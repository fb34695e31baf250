"""``--target FQDN``: every A record of a pool name is a node, and the report has per-node figures.

The pool name is served by a few lines of dnspython here (a real DNS codec, not edgesim's DNS server), and
each node is its own ``edgesim serve av-edge`` process listening on the same port."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.rrset

from simulator.cli import main
from tests.bench.servers import PASSWORD, USER, host, relay_range
from tests.interop.turnpeers import free_port, start_edgesim

POOL = "avpool.bench.test."


@contextlib.contextmanager
def pool_dns(address: str, records: list[str]) -> Iterator[int]:
    """A UDP DNS responder on ``address`` answering POOL A with ``records`` (anything else: NXDOMAIN)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(2048)
            except TimeoutError:
                continue
            query = dns.message.from_wire(data)
            response = dns.message.make_response(query)
            question = query.question[0]
            if question.name == dns.name.from_text(POOL) and question.rdtype == dns.rdatatype.A:
                response.answer.append(dns.rrset.from_text(POOL, 30, "IN", "A", *records))
            else:
                response.set_rcode(dns.rcode.NXDOMAIN)
            sock.sendto(response.to_wire(), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        thread.join(2)
        sock.close()


def test_pool_fqdn_gives_per_node_figures(tmp_path: Path) -> None:
    nodes = [host(31), host(33)]
    port = free_port(nodes[0])
    with contextlib.ExitStack() as stack:
        for index, node in enumerate(nodes):
            workdir = tmp_path / f"node{index}"  # own folder: the log file is named after the (shared) port
            workdir.mkdir()
            server = start_edgesim(workdir, host=node, public_host=host(32 + 2 * index),
                                   relay_bind=host(32 + 2 * index), udp_port=port, relay_range=relay_range())
            stack.callback(server.stop)
        dns_port = stack.enter_context(pool_dns(host(53), nodes))
        out = tmp_path / "pool"
        code = main(["bench", "relay", "--target", f"{POOL.rstrip('.')}:{port}", "--nameserver",
                     f"{host(53)}:{dns_port}", "--user", f"{USER}:{PASSWORD}", "--bind", host(230), "--count", "100",
                     "--concurrency", "10", "--out", str(out), "--quiet", "--json"])
        assert main(["bench", "relay", "--target", f"nowhere.bench.test:{port}", "--nameserver",
                     f"{host(53)}:{dns_port}", "--user", "a:b", "--quiet"]) == 3  # NXDOMAIN: environment error
    report = json.loads((out / "report.json").read_text())
    assert code == 0 and report["target"]["nodes"] == [f"{n}:{port}" for n in sorted(nodes)]
    assert {name: (n["ok"], n["failed"], n["share"]) for name, n in report["nodes"].items()} == {
        f"{n}:{port}": (50, 0, 0.5) for n in nodes}  # round robin over the two A records
