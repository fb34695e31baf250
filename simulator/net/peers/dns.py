"""The lab's authoritative DNS server: a :class:`~simulator.core.dns_zone.Zone` over UDP and TCP.

Theory of operation
-------------------
Two layers, as everywhere in the simulator:

* :class:`DnsResponder` is synchronous and socket free: ``respond(query_bytes, transport)`` parses
  the query with dnspython (``dns.message.from_wire``), looks it up in the zone and returns the
  response bytes (``dns.message.make_response`` plus the zone's RRsets), or ``None`` for a counted
  drop. It owns the DNS rules: FORMERR for unparsable input whose header can be read, NOTIMP for
  non-QUERY opcodes, EDNS (RFC 6891) payload negotiation and UDP truncation (RFC 1035 §4.2.1: TC
  set, answer section cut to the whole RRs that fit) so that clients retry over TCP; a TCP answer is
  capped at 65535 octets the same way. Bad input never raises; it becomes an error response or a
  drop and bumps :class:`DnsServerCounters`.
* :class:`DnsServer` is the asyncio shell: one UDP endpoint and one TCP listener on the *same*
  address and port (with port 0 it picks an ephemeral port free for both and reports it in
  :attr:`DnsServer.port`). TCP uses the 2-byte length framing of RFC 1035 §4.2.2 and serves several
  queries per connection (RFC 7766 §6.2.1) until the peer closes or stays idle. Every connection task
  is tracked and cancelled and awaited by :meth:`DnsServer.stop`; every socket is closed.

Round-robin shuffling of A records (what a BIND ``rrset-order random`` server does) is optional and
uses a seeded ``random.Random`` so runs replay. Lync DNS load balancing does not need it — the
client shuffles (``simulator.core.dns_policy``) — but it lets a scenario model a "cyclic" DNS server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import struct
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Final, cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from simulator.core.dns_zone import ARecord, CnameRecord, LookupStatus, Record, SrvRecord, Zone
from simulator.net.transport.arrivals import recorder
from simulator.wire.errors import MalformedMessage

logger = logging.getLogger(__name__)

DNS_HEADER_SIZE: Final = 12
CLASSIC_UDP_PAYLOAD: Final = 512  # RFC 1035 §2.3.4 / §4.2.1: UDP messages are limited to 512 octets
SERVER_EDNS_PAYLOAD: Final = 1232  # RFC 6891 §6.2.5 (and the DNS Flag Day 2020 value): our own limit
MAX_TCP_MESSAGE: Final = 65535  # RFC 1035 §4.2.2: 16-bit length prefix
MAX_QUERIES_PER_TCP_CONNECTION: Final = 10_000
DEFAULT_TCP_IDLE_TIMEOUT: Final = 10.0  # RFC 7766 §6.2.3: servers may close idle connections (seconds)
MAX_BIND_ATTEMPTS: Final = 20
STOP_GRACE_SECONDS: Final = 1.0

_IN: Final = dns.rdataclass.IN
_ANSWERABLE_CLASSES: Final = frozenset({dns.rdataclass.IN, dns.rdataclass.ANY})


class DnsTransport(StrEnum):
    """The transport a query came in on (it decides the response size limit)."""

    UDP = "udp"
    TCP = "tcp"


@dataclass
class DnsServerCounters:
    """What the server saw; ``queries`` is keyed by (transport, qtype name)."""

    queries: Counter[tuple[str, str]] = field(default_factory=Counter)
    responses_by_rcode: Counter[str] = field(default_factory=Counter)  # extended RCODEs too: "BADVERS"
    truncated: int = 0  # responses sent with TC set
    malformed: int = 0  # all bad input: FORMERR answered + dropped
    formerr_sent: int = 0
    dropped: int = 0  # unreadable header, a response sent to us, bad TCP framing
    tcp_connections: int = 0
    internal_errors: int = 0  # a bug in the responder; counted and logged, the listener survives
    first_answers: Counter[tuple[str, str]] = field(default_factory=Counter)  # (name, first A address): DNS LB spread


def qtype_name(qtype: int) -> str:
    """``1`` → ``"A"``; unknown types as ``"TYPE<n>"`` (RFC 3597 §5)."""
    return dns.rdatatype.to_text(dns.rdatatype.RdataType.make(qtype))


def _header_only_response(query: bytes, rcode: int) -> bytes:
    """A response made from the raw header alone: same ID, opcode and RD, QR set, no sections."""
    query_id, flags = struct.unpack_from("!HH", query)
    opcode_and_rd = flags & 0x7900  # RFC 1035 §4.1.1: Opcode bits 1-4 and RD are copied into the response
    return struct.pack("!HHHHHH", query_id, 0x8000 | opcode_and_rd | (rcode & 0xF), 0, 0, 0, 0)


def parse_query(data: bytes) -> dns.message.Message:
    """Parse a DNS query or raise :class:`MalformedMessage`.

    ``status`` is the RCODE to answer with (1 = FORMERR), or ``None`` to drop silently.
    """
    if len(data) < DNS_HEADER_SIZE:
        raise MalformedMessage(f"{len(data)} bytes is shorter than a DNS header", status=None)
    (flags,) = struct.unpack_from("!H", data, 2)
    if flags & 0x8000:  # RFC 1035 §4.1.1 QR=1: a response; answering it could start a loop
        raise MalformedMessage("message is a response, not a query", status=None)
    try:
        # keyring=False: a TSIG record is parsed but not checked (the lab holds no keys) and the
        # query is answered unsigned; ignore_trailing: octets after the last record are ignored.
        # bytes(): dnspython needs bytes, not a bytearray or memoryview.
        query = dns.message.from_wire(bytes(data), keyring=False, ignore_trailing=True)
    except Exception as error:
        # dnspython raises FormError (its rdata parsers wrap their own errors into it), BadEDNS (a
        # second OPT — RFC 6891 §6.1.1 — or an OPT outside the additional section or not owned by
        # the root), BadTSIG (a TSIG that is not the last record, RFC 8945 §5.1) … Whatever it is,
        # bad input stops here as FORMERR.
        reason = str(error) or type(error).__name__
        raise MalformedMessage(f"unparsable query: {reason}", status=dns.rcode.FORMERR) from None
    if len(query.question) != 1:  # RFC 9619 §2: a query with QDCOUNT other than 1 gets FORMERR
        raise MalformedMessage(f"{len(query.question)} questions", status=dns.rcode.FORMERR)
    return query


def _rdata(record: Record) -> dns.rdata.Rdata:
    # Zone names are validated letters/digits/hyphen/underscore labels, so their text form is exact;
    # origin=root and relativize=False make targets absolute ("sip.contoso.com" → "sip.contoso.com.").
    if isinstance(record, ARecord):
        return dns.rdata.from_text(_IN, dns.rdatatype.A, record.address)
    if isinstance(record, SrvRecord):  # RFC 2782: priority, weight, port, target
        text = f"{record.priority} {record.weight} {record.port} {record.target}"
        return dns.rdata.from_text(_IN, dns.rdatatype.SRV, text, origin=dns.name.root, relativize=False)
    if isinstance(record, CnameRecord):
        return dns.rdata.from_text(_IN, dns.rdatatype.CNAME, record.target, origin=dns.name.root, relativize=False)
    raise TypeError(f"no wire form for {record!r}")


def _add_record(response: dns.message.Message, section: list[dns.rrset.RRset], record: Record) -> None:
    """Add ``record`` to the RRset of its name and type in ``section`` (RFC 2181 §5), keeping order."""
    rdata = _rdata(record)
    rrset = response.find_rrset(section, dns.name.from_text(record.name), _IN, rdata.rdtype, create=True)
    rrset.add(rdata, record.ttl)


def _to_wire(response: dns.message.Message, limit: int, *, prefer_truncation: bool = False) -> bytes | None:
    """``response`` in wire format if it fits in ``limit`` octets (OPT included), else ``None``."""
    try:
        # want_shuffle=False: dnspython shuffles every RRset when rendering unless told not to; the
        # order on the wire must be the zone's (or our seeded shuffle's) so that runs replay.
        wire: bytes = response.to_wire(max_size=limit, prefer_truncation=prefer_truncation, want_shuffle=False)
    except dns.exception.TooBig:
        return None
    return wire


class DnsResponder:
    """Turns query bytes into response bytes for one zone; no sockets, never raises on bad input."""

    def __init__(
        self,
        zone: Zone,
        *,
        shuffle_rng: random.Random | None = None,
        max_udp_payload: int = SERVER_EDNS_PAYLOAD,
    ) -> None:
        self.zone = zone
        self.counters = DnsServerCounters()
        self._shuffle_rng = shuffle_rng
        self._max_udp_payload = min(max(CLASSIC_UDP_PAYLOAD, max_udp_payload), MAX_TCP_MESSAGE)

    def respond(self, data: bytes, transport: DnsTransport) -> bytes | None:
        """The response to ``data`` received over ``transport``, or ``None`` to send nothing."""
        try:
            query = parse_query(data)
        except MalformedMessage as error:
            self.counters.malformed += 1
            if error.status is None:
                self.counters.dropped += 1
                return None
            self.counters.formerr_sent += 1
            self.counters.responses_by_rcode[dns.rcode.to_text(dns.rcode.Rcode.make(error.status))] += 1
            return _header_only_response(data, error.status)
        question = query.question[0]
        self.counters.queries[(transport.value, qtype_name(question.rdtype))] += 1
        response = self._answer(query, question)
        self.counters.responses_by_rcode[dns.rcode.to_text(response.rcode())] += 1
        return self._render_within_limit(response, self._size_limit(query, transport))

    def _answer(self, query: dns.message.Message, question: dns.rrset.RRset) -> dns.message.Message:
        # Copies ID, opcode, RD and the question; with EDNS in the query, adds our OPT (RFC 6891 §7:
        # version 0, our payload size, no options). pad=0: no RFC 8467 padding on plain UDP/TCP.
        response = dns.message.make_response(query, our_payload=self._max_udp_payload, pad=0)
        response.flags |= dns.flags.AA
        if query.edns > 0:
            # RFC 6891 §6.1.3: unsupported version → BADVERS (16); dnspython puts the upper 8 bits
            # of the extended RCODE in the OPT and the lower 4 in the header.
            response.set_rcode(dns.rcode.BADVERS)
            return response
        if query.opcode() != dns.opcode.QUERY:  # RFC 1035 §4.1.1: 4 = Not Implemented
            response.set_rcode(dns.rcode.NOTIMP)
            return response
        if question.rdclass not in _ANSWERABLE_CLASSES:
            response.set_rcode(dns.rcode.REFUSED)
            return response
        result = self.zone.lookup(question.name.to_text(), qtype_name(question.rdtype))
        if result.status is LookupStatus.NXDOMAIN:
            response.set_rcode(dns.rcode.NXDOMAIN)  # RFC 2308 §2.1
            return response
        answers = list(result.answers)
        if self._shuffle_rng is not None:
            self._shuffle_a_records(answers)
        for record in answers:
            _add_record(response, response.answer, record)
        first = next((record for record in answers if isinstance(record, ARecord)), None)
        if first is not None:
            self.counters.first_answers[(question.name.to_text().rstrip(".").lower(), first.address)] += 1
        for record in result.additionals:
            _add_record(response, response.additional, record)
        return response

    def _shuffle_a_records(self, answers: list[Record]) -> None:
        # Round-robin DNS: permute the A RRset only; a CNAME chain before it keeps its order.
        positions = [index for index, record in enumerate(answers) if isinstance(record, ARecord)]
        shuffled = [answers[index] for index in positions]
        assert self._shuffle_rng is not None
        self._shuffle_rng.shuffle(shuffled)
        for index, record in zip(positions, shuffled, strict=True):
            answers[index] = record

    def _size_limit(self, query: dns.message.Message, transport: DnsTransport) -> int:
        if transport is DnsTransport.TCP:
            return MAX_TCP_MESSAGE
        if query.edns < 0:
            return CLASSIC_UDP_PAYLOAD  # RFC 1035 §4.2.1: no EDNS → 512 octets
        # RFC 6891 §6.2.3/§6.2.5: the requestor's payload size, never below 512, capped by ours.
        return min(max(query.payload, CLASSIC_UDP_PAYLOAD), self._max_udp_payload)

    def _render_within_limit(self, response: dns.message.Message, limit: int) -> bytes:
        wire = _to_wire(response, limit)
        if wire is not None:
            return wire
        # RFC 2181 §9: additional data may be dropped without setting TC (the OPT stays, RFC 6891 §7).
        response.additional = []
        wire = _to_wire(response, limit)
        if wire is not None:
            return wire
        # RFC 1035 §4.2.1 / RFC 2181 §9: set TC and send only the whole answer RRs that fit (a partial
        # RRset included); a UDP client retries over TCP (RFC 7766 §5). One RR per RRset lets
        # dnspython's prefer_truncation stop at the first RR that does not fit, not at the RRset.
        response.flags |= dns.flags.TC
        self.counters.truncated += 1
        response.answer = [
            dns.rrset.from_rdata(rrset.name, rrset.ttl, rdata) for rrset in response.answer for rdata in rrset
        ]
        # Header + one question (≤ 12 + 259 octets) + OPT (11) always fits in the 512-octet minimum.
        wire = _to_wire(response, limit, prefer_truncation=True)
        assert wire is not None
        return wire


class _UdpDnsProtocol(asyncio.DatagramProtocol):
    def __init__(self, responder: DnsResponder) -> None:
        self._responder = responder
        self._transport: asyncio.DatagramTransport | None = None
        self.arrivals = recorder()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if self.arrivals is not None and self._transport is not None:
            local = self._transport.get_extra_info("sockname")
            self.arrivals.udp("dns-udp", (local[0], local[1]), (str(addr[0]), int(addr[1])))
        try:
            response = self._responder.respond(data, DnsTransport.UDP)
        except Exception:  # a responder bug must not kill the listener
            self._responder.counters.internal_errors += 1
            logger.exception("DNS responder failed on a UDP query from %s", addr)
            return
        if response is not None and self._transport is not None:
            self._transport.sendto(response, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable for a reply to a client that went away; nothing to do.
        logger.debug("DNS UDP socket error: %s", exc)


class DnsServer:
    """Serves ``zone`` on ``host``: UDP and TCP on one port (``port=0`` → ephemeral, see :attr:`port`).

    Use ``async with DnsServer(zone, "127.77.53.1") as server:`` or call :meth:`start`/:meth:`stop`.
    """

    def __init__(
        self,
        zone: Zone,
        host: str,
        port: int = 0,
        *,
        shuffle_rng: random.Random | None = None,
        max_udp_payload: int = SERVER_EDNS_PAYLOAD,
        tcp_idle_timeout: float = DEFAULT_TCP_IDLE_TIMEOUT,
    ) -> None:
        self.host = host
        self.responder = DnsResponder(zone, shuffle_rng=shuffle_rng, max_udp_payload=max_udp_payload)
        self._requested_port = port
        self._tcp_idle_timeout = tcp_idle_timeout
        self._port: int | None = None
        self._udp_transport: asyncio.DatagramTransport | None = None
        self._tcp_server: asyncio.Server | None = None
        self._connection_tasks: set[asyncio.Task[None]] = set()
        self._connection_writers: set[asyncio.StreamWriter] = set()

    @property
    def counters(self) -> DnsServerCounters:
        """The responder's counters (queries by transport/qtype, truncated, malformed …)."""
        return self.responder.counters

    @property
    def port(self) -> int:
        """The bound port, shared by UDP and TCP; only valid after :meth:`start`."""
        if self._port is None:
            raise RuntimeError("DNS server is not started")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` to point a resolver at."""
        return self.host, self.port

    async def start(self) -> None:
        """Bind UDP and TCP on the same port and start serving."""
        if self._port is not None:
            raise RuntimeError("DNS server is already started")
        loop = asyncio.get_running_loop()
        last_error: OSError | None = None
        for _ in range(MAX_BIND_ATTEMPTS if self._requested_port == 0 else 1):
            udp_transport, _protocol = await loop.create_datagram_endpoint(
                lambda: _UdpDnsProtocol(self.responder), local_addr=(self.host, self._requested_port)
            )
            port = int(udp_transport.get_extra_info("sockname")[1])
            try:
                self._tcp_server = await asyncio.start_server(self._serve_tcp_connection, self.host, port)
            except OSError as error:  # the ephemeral UDP port is taken for TCP: try another one
                udp_transport.close()
                last_error = error
                continue
            self._udp_transport = udp_transport
            self._port = port
            return
        raise OSError(f"could not bind DNS UDP+TCP on {self.host}: {last_error}")

    async def stop(self) -> None:
        """Stop listening, cancel and await every connection task, close every socket."""
        if self._udp_transport is not None:
            self._udp_transport.close()
            self._udp_transport = None
        if self._tcp_server is not None:
            self._tcp_server.close()
        # Closing a connection's transport ends its handler (the read sees EOF); a handler stuck in
        # drain() is cancelled after a short grace period.
        for writer in list(self._connection_writers):
            writer.close()
        if self._connection_tasks:
            _done, stuck = await asyncio.wait(set(self._connection_tasks), timeout=STOP_GRACE_SECONDS)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
        if self._tcp_server is not None:
            await self._tcp_server.wait_closed()
            self._tcp_server = None
        self._port = None

    async def __aenter__(self) -> DnsServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _serve_tcp_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connection_tasks.add(cast("asyncio.Task[None]", task))
        self._connection_writers.add(writer)
        self.counters.tcp_connections += 1
        log = recorder()
        if log is not None:
            local, remote = writer.get_extra_info("sockname"), writer.get_extra_info("peername")
            log.tcp("dns-tcp", (local[0], local[1]), (remote[0], remote[1]))
        try:
            for _ in range(MAX_QUERIES_PER_TCP_CONNECTION):
                query = await self._read_tcp_message(reader)
                if query is None:
                    break
                try:
                    response = self.responder.respond(query, DnsTransport.TCP)
                except Exception:  # a responder bug must not kill the listener
                    self.counters.internal_errors += 1
                    logger.exception("DNS responder failed on a TCP query")
                    break
                if response is not None:
                    # RFC 1035 §4.2.2 / RFC 7766 §8: two-octet length prefix.
                    writer.write(struct.pack("!H", len(response)) + response)
                    await writer.drain()
        except (ConnectionError, TimeoutError):
            pass
        except asyncio.CancelledError:
            # Only stop() cancels this task. Ending normally keeps Python 3.11's StreamReaderProtocol
            # done-callback from calling exception() on a cancelled task and logging an error.
            pass
        finally:
            self._connection_writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()
            if task is not None:
                self._connection_tasks.discard(cast("asyncio.Task[None]", task))

    async def _read_tcp_message(self, reader: asyncio.StreamReader) -> bytes | None:
        """One length-prefixed message, or ``None`` when the peer closed, idled or broke framing."""
        try:
            # RFC 7766 §6.2.3: an idle connection is closed after the timeout.
            prefix = await asyncio.wait_for(reader.readexactly(2), self._tcp_idle_timeout)
            (length,) = struct.unpack("!H", prefix)
            if length == 0:
                self.counters.malformed += 1
                self.counters.dropped += 1
                return None
            return await asyncio.wait_for(reader.readexactly(length), self._tcp_idle_timeout)
        except asyncio.IncompleteReadError as error:
            if error.partial:  # closed mid-message: a framing error, counted
                self.counters.malformed += 1
                self.counters.dropped += 1
            return None
