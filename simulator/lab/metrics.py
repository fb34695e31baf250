"""Live Prometheus metrics of ``edgesim serve``: a custom collector that reads, at scrape time, the counters
the Edge objects keep anyway, and a small asyncio HTTP endpoint that serves them.

Nothing is added per packet for metrics: every figure below is a counter or a table size the TURN core
(:class:`~simulator.core.turn.state.TurnMetrics`), the relay port pools, the TLS listeners, the SIP proxy and
the lab DNS server already maintain for their own work; the collector turns them into metric families when
Prometheus asks. It runs on the event loop (the HTTP endpoint is an asyncio server, no thread), so it reads
the tables between two callbacks, never in the middle of one.

Names follow ``edgesim_<area>_<what>[_<unit>]_total`` (research-next.md §D), near coturn's and eturnal's where
they have one (``stun_binding_request`` → ``edgesim_stun_binding_requests_total``, ``turn_total_allocations``
→ ``edgesim_turn_allocations_active``, STUNner's ``_packets_total{direction}`` / ``_bytes_total{direction}``).

=====================================================  =====  ================================================
metric                                                 type   labels
=====================================================  =====  ================================================
edgesim_turn_allocations_active                        gauge  node, interface
edgesim_turn_allocations_total                         count  node, interface, result (success or error code)
edgesim_turn_allocations_ended_total                   count  node, interface, reason (expired, deleted)
edgesim_relay_ports_in_use / _free / _lingering        gauge  address, transport (one port pool each)
edgesim_relay_port_exhaustions_total                   count  address, transport
edgesim_relay_port_bind_failures_total                 count  address, transport
edgesim_turn_auth_failures_total                       count  node, interface, reason
edgesim_stun_error_responses_total                     count  node, interface, method, code
edgesim_turn_relay_packets_total / _bytes_total        count  node, interface, direction
edgesim_stun_binding_requests_total                    count  node, interface
edgesim_turn_requests_total                            count  node, interface
edgesim_turn_dropped_packets_total                     count  node, interface
edgesim_turn_malformed_messages_total                  count  node, interface
edgesim_turn_tcp_connections                           gauge  node, interface
edgesim_sip_responses_total                            count  node, code (answered or relayed by the Edge)
edgesim_sip_refusals_total                             count  node, reason
edgesim_sip_pending_transactions                       gauge  node
edgesim_tls_handshakes_total                           count  node, listener, result (accepted, refused)
edgesim_tls_refusals_total                             count  node, listener, reason
edgesim_dns_answers_total                              count  name, pool_member (the first A record)
edgesim_dns_queries_total                              count  transport, qtype
edgesim_dns_responses_total                            count  rcode
=====================================================  =====  ================================================
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from simulator.lab.av import worker_av_edges
from simulator.net.edge.access_edge import AccessEdge
from simulator.net.edge.av_edge import AvEdgeServer
from simulator.net.peers.dns import DnsServer
from simulator.net.transport.listener import TlsListener

if TYPE_CHECKING:
    from simulator.lab.topology import Lab

ALLOCATE_METHODS = frozenset({"allocate", "ms_allocate"})
REQUEST_LIMIT = 16384  # bytes of an HTTP request head the endpoint reads before it gives up
REQUEST_TIMEOUT = 5.0


@dataclass
class Sources:
    """What one ``serve`` process exposes: each object with the labels that say where it is."""

    av_edges: list[tuple[str, str, AvEdgeServer]] = field(default_factory=list)  # (node, interface, server)
    tls_listeners: list[tuple[str, str, TlsListener]] = field(default_factory=list)  # (node, listener, it)
    access_edges: list[tuple[str, AccessEdge]] = field(default_factory=list)
    dns: list[DnsServer] = field(default_factory=list)


def lab_sources(lab: Lab) -> Sources:
    """The Edge pool nodes of a running lab (A/V Edges, TLS listeners, Access Edges) and the lab DNS server."""
    sources = Sources()
    for node_name, node in lab.nodes.items():
        for name, service in node.services.items():
            if isinstance(service, AvEdgeServer):
                sources.av_edges.append((node_name, name, service))
            elif isinstance(service, TlsListener):
                sources.tls_listeners.append((node_name, service.name, service))
            elif isinstance(service, AccessEdge):
                sources.access_edges.append((node_name, service))
            listener = getattr(service, "listener", None)  # MRAS: a service around one SIP listener
            if isinstance(listener, TlsListener):
                sources.tls_listeners.append((node_name, listener.name, listener))
    sources.av_edges.extend(worker_av_edges(lab))  # A/V Edges on worker processes (edgesim run --av-workers)
    if lab.dns is not None:
        sources.dns.append(lab.dns)
    return sources


def _counter(name: str, doc: str, labels: Iterable[str]) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=list(labels))


def _gauge(name: str, doc: str, labels: Iterable[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


class EdgesimCollector(Collector):
    """Reads the Edge objects' own counters when scraped (``sources`` is called on every scrape)."""

    def __init__(self, sources: Callable[[], Sources]) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        sources = self._sources()
        yield from self._turn(sources.av_edges)
        yield from self._ports(sources.av_edges)
        yield from self._sip(sources.access_edges)
        yield from self._tls(sources.tls_listeners)
        yield from self._dns(sources.dns)

    # ------------------------------------------------------------------------------------------ TURN

    @staticmethod
    def _turn(edges: list[tuple[str, str, AvEdgeServer]]) -> Iterator[Metric]:
        where = ("node", "interface")
        active = _gauge("edgesim_turn_allocations_active", "TURN allocations alive now", where)
        allocations = _counter("edgesim_turn_allocations", "Allocate requests answered, by result: success or "
                               "the error code (401 includes the first, unauthenticated Allocate's challenge)",
                               (*where, "result"))
        ended = _counter("edgesim_turn_allocations_ended", "allocations that ended: lifetime expired, or deleted "
                         "(Refresh 0, TCP connection closed, shutdown)", (*where, "reason"))
        auth = _counter("edgesim_turn_auth_failures", "signed TURN requests refused by authentication, by reason",
                        (*where, "reason"))
        errors = _counter("edgesim_stun_error_responses", "STUN/TURN error responses sent, by request method "
                          "and error code", (*where, "method", "code"))
        packets = _counter("edgesim_turn_relay_packets", "packets relayed, by direction", (*where, "direction"))
        volume = _counter("edgesim_turn_relay_bytes", "payload bytes relayed, by direction", (*where, "direction"))
        bindings = _counter("edgesim_stun_binding_requests", "STUN Binding requests answered", where)
        requests = _counter("edgesim_turn_requests", "TURN requests handled (Binding excluded)", where)
        dropped = _counter("edgesim_turn_dropped_packets", "packets dropped: no allocation, channel or permission",
                           where)
        malformed = _counter("edgesim_turn_malformed_messages", "unparsable STUN/TURN messages", where)
        streams = _gauge("edgesim_turn_tcp_connections", "client and peer TCP connections open now", where)
        for node, interface, edge in edges:
            if not edge.running:
                continue
            core = edge.core
            m = core.metrics
            labels = [node, interface]
            active.add_metric(labels, core.allocation_count)
            allocations.add_metric([*labels, "success"], m.allocations_created)
            by_code: Counter[int] = Counter()
            for (method, code), count in list(m.errors_by_method.items()):
                errors.add_metric([*labels, method, str(code)], count)
                if method in ALLOCATE_METHODS:
                    by_code[code] += count
            for code, count in sorted(by_code.items()):
                allocations.add_metric([*labels, str(code)], count)
            ended.add_metric([*labels, "expired"], m.allocations_expired)
            ended.add_metric([*labels, "deleted"], m.allocations_deleted - m.allocations_expired)
            for reason, count in sorted(m.auth_failures.items()):
                auth.add_metric([*labels, reason], count)
            packets.add_metric([*labels, "client_to_peer"], m.relayed_to_peer)
            packets.add_metric([*labels, "peer_to_client"], m.relayed_to_client)
            volume.add_metric([*labels, "client_to_peer"], m.bytes_to_peer)
            volume.add_metric([*labels, "peer_to_client"], m.bytes_to_client)
            bindings.add_metric(labels, m.bindings)
            requests.add_metric(labels, m.requests)
            dropped.add_metric(labels, m.dropped)
            malformed.add_metric(labels, m.malformed)
            streams.add_metric(labels, len(edge.streams))
        yield from (active, allocations, ended, auth, errors, packets, volume, bindings, requests, dropped,
                    malformed, streams)

    @staticmethod
    def _ports(edges: list[tuple[str, str, AvEdgeServer]]) -> Iterator[Metric]:
        where = ("address", "transport")
        in_use = _gauge("edgesim_relay_ports_in_use", "relay ports allocated or reserved (EVEN-PORT R)", where)
        free = _gauge("edgesim_relay_ports_free", "relay ports free to allocate", where)
        lingering = _gauge("edgesim_relay_ports_lingering", "relay ports released, not yet free again", where)
        exhaustions = _counter("edgesim_relay_port_exhaustions", "allocations refused: no port left (508)", where)
        bind_failures = _counter("edgesim_relay_port_bind_failures", "relay ports the OS refused to bind", where)
        seen: set[tuple[str, str]] = set()  # a node's two interfaces share one allocator: each pool once
        for _node, _interface, edge in edges:
            if not edge.running:
                continue
            for pool in edge.ports.metrics():
                key = (pool.address, pool.transport)
                if key in seen:
                    continue
                seen.add(key)
                labels = [pool.address, pool.transport]
                in_use.add_metric(labels, pool.allocated + pool.reserved)
                free.add_metric(labels, pool.free)
                lingering.add_metric(labels, pool.lingering)
                exhaustions.add_metric(labels, pool.exhaustions)
                bind_failures.add_metric(labels, pool.bind_failures)
        yield from (in_use, free, lingering, exhaustions, bind_failures)

    # ------------------------------------------------------------------------------------ SIP, TLS, DNS

    @staticmethod
    def _sip(edges: list[tuple[str, AccessEdge]]) -> Iterator[Metric]:
        responses = _counter("edgesim_sip_responses", "SIP responses the Access Edge sent (its own answers and "
                             "those it relayed), by status code", ("node", "code"))
        refusals = _counter("edgesim_sip_refusals", "SIP requests or peers the Access Edge refused, by reason",
                            ("node", "reason"))
        pending = _gauge("edgesim_sip_pending_transactions", "forwarded SIP requests waiting for a final response",
                         ("node",))
        for node, edge in edges:
            for code, count in sorted(edge.proxy.responses_sent.items()):
                responses.add_metric([node, str(code)], count)
            for reason, count in sorted(edge.refused.items()):
                refusals.add_metric([node, reason], count)
            pending.add_metric([node], edge.proxy.pending)
        yield from (responses, refusals, pending)

    @staticmethod
    def _tls(listeners: list[tuple[str, str, TlsListener]]) -> Iterator[Metric]:
        handshakes = _counter("edgesim_tls_handshakes", "TLS connections on the Edge's listeners, by result "
                              "(refused: handshake failed or peer not allowed)", ("node", "listener", "result"))
        refusals = _counter("edgesim_tls_refusals", "TLS connections refused, by reason", ("node", "listener",
                                                                                           "reason"))
        for node, name, listener in listeners:
            handshakes.add_metric([node, name, "accepted"], listener.accepted)
            handshakes.add_metric([node, name, "refused"], sum(listener.rejected.values()))
            for reason, count in sorted(listener.rejected.items()):
                refusals.add_metric([node, name, reason], count)
        yield from (handshakes, refusals)

    @staticmethod
    def _dns(servers: list[DnsServer]) -> Iterator[Metric]:
        answers = _counter("edgesim_dns_answers", "DNS answers, by name and the pool member its first A record "
                           "names (where DNS load balancing sends the client)", ("name", "pool_member"))
        queries = _counter("edgesim_dns_queries", "DNS queries, by transport and type", ("transport", "qtype"))
        rcodes = _counter("edgesim_dns_responses", "DNS responses, by RCODE", ("rcode",))
        total_answers: Counter[tuple[str, str]] = Counter()
        total_queries: Counter[tuple[str, str]] = Counter()
        total_rcodes: Counter[str] = Counter()
        for server in servers:
            counters = server.counters
            total_answers.update(counters.first_answers)
            total_queries.update(counters.queries)
            total_rcodes.update(counters.responses_by_rcode)
        for (name, member), count in sorted(total_answers.items()):
            answers.add_metric([name, member], count)
        for (transport, qtype), count in sorted(total_queries.items()):
            queries.add_metric([transport, qtype], count)
        for rcode, count in sorted(total_rcodes.items()):
            rcodes.add_metric([rcode], count)
        yield from (answers, queries, rcodes)


def registry_for(sources: Callable[[], Sources], *, process: bool = True) -> CollectorRegistry:
    """A registry with the Edge collector (and the process's CPU/memory figures, ``process_*``)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EdgesimCollector(sources))
    if process:
        ProcessCollector(registry=registry)
    return registry


# ---------------------------------------------------------------------------------------- summary line


Totals = dict[str, dict[tuple[tuple[str, str], ...], float]]  # sample name -> sorted labels -> value


def _totals(registry: CollectorRegistry) -> Totals:
    out: Totals = {}
    for family in registry.collect():
        for sample in family.samples:
            series = out.setdefault(sample.name, {})
            key = tuple(sorted(sample.labels.items()))
            series[key] = series.get(key, 0.0) + sample.value
    return out


def _sum(totals: Totals, name: str, **match: str) -> int:
    return int(sum(value for labels, value in totals.get(name, {}).items()
                   if all((key, want) in labels for key, want in match.items())))


def _by(totals: Totals, name: str, label: str, skip: str = "") -> str:
    counts: Counter[str] = Counter()
    for labels, value in totals.get(name, {}).items():
        found = dict(labels)
        if value and found.get(label) != skip:
            counts[found.get(label, "")] += int(value)
    return " ".join(f"{key}={count}" for key, count in sorted(counts.items()))


def _size(octets: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if octets >= scale:
            return f"{octets / scale:.1f} {unit}"
    return f"{octets} B"


def summary_line(registry: CollectorRegistry, what: str) -> str:
    """One line of what a ``serve`` process did, from its metrics (printed when it stops)."""
    t = _totals(registry)
    parts: list[str] = []
    if "edgesim_turn_allocations_active" in t or "edgesim_turn_allocations_total" in t:
        created = _sum(t, "edgesim_turn_allocations_total", result="success")
        answered = _by(t, "edgesim_turn_allocations_total", "result", skip="success")
        parts.append(f"allocations {created} ({_sum(t, 'edgesim_turn_allocations_active')} active at exit, "
                     f"{_sum(t, 'edgesim_turn_allocations_ended_total', reason='expired')} expired"
                     + (f"; Allocate errors {answered}" if answered else "") + ")")
        packets = _sum(t, "edgesim_turn_relay_packets_total")
        parts.append(f"relayed {packets} packets / {_size(_sum(t, 'edgesim_turn_relay_bytes_total'))}")
        errors = _by(t, "edgesim_stun_error_responses_total", "code")
        if errors:
            parts.append(f"STUN errors {errors}")
        auth = _by(t, "edgesim_turn_auth_failures_total", "reason")
        if auth:
            parts.append(f"auth failures {auth}")
    if "edgesim_tls_handshakes_total" in t:
        parts.append(f"TLS {_sum(t, 'edgesim_tls_handshakes_total', result='accepted')} accepted / "
                     f"{_sum(t, 'edgesim_tls_handshakes_total', result='refused')} refused")
    sip = _by(t, "edgesim_sip_responses_total", "code")
    if sip:
        parts.append(f"SIP answers {sip}")
    dns = _sum(t, "edgesim_dns_answers_total")
    if dns:
        parts.append(f"DNS answers {dns}")
    return f"{what} stopped: " + ", ".join(parts) if parts else f"{what} stopped: no traffic"


# ---------------------------------------------------------------------------------------- HTTP endpoint


class MetricsEndpoint:
    """``GET /metrics`` (or ``/``) on ``host:port``, served on the running event loop; port 0 picks one."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self._server: asyncio.AbstractServer | None = None
        self.scrapes = 0

    async def start(self) -> None:
        """Listen (OSError when the address is in use or not local)."""
        self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=REQUEST_LIMIT)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    async def __aenter__(self) -> MetricsEndpoint:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            status, body, kind = self._answer(head)
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                         "Connection: close\r\n\r\n".encode() + (b"" if head.startswith(b"HEAD ") else body))
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a client that went away, sent too much or too little: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _answer(self, head: bytes) -> tuple[str, bytes, str]:
        method, _, rest = head.partition(b" ")
        target = rest.partition(b" ")[0].partition(b"?")[0]
        if method not in (b"GET", b"HEAD"):
            return "405 Method Not Allowed", b"GET /metrics\n", "text/plain"
        if target not in (b"/metrics", b"/"):
            return "404 Not Found", b"GET /metrics\n", "text/plain"
        self.scrapes += 1
        # The classic text format (every edgesim name is a legacy name): what Prometheus 2 and 3 both scrape.
        return "200 OK", generate_latest(self.registry), CONTENT_TYPE_PLAIN_0_0_4


def parse_listen(text: str) -> tuple[str, int]:
    """``ADDR:PORT`` (``[v6]:PORT`` for IPv6) → (host, port); ValueError when it is not one."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 0xFFFF:
        raise ValueError(f"bad metrics address {text!r} (want ADDR:PORT, e.g. 127.0.0.1:9641)")
    return host.strip("[]"), int(port)
