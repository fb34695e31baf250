"""The lab's authoritative DNS server: a :class:`~simulator.core.dns_zone.Zone` over UDP and TCP.

Theory of operation
-------------------
Two layers, as everywhere in the simulator:

* :class:`DnsResponder` is synchronous and socket free: ``respond(query_bytes, transport)`` parses
  the query with dnslib, looks it up in the zone and returns the response bytes, or ``None`` for a
  counted drop. It owns the DNS rules: FORMERR for unparsable input whose header can be read,
  NOTIMP for non-QUERY opcodes, EDNS (RFC 6891) payload negotiation and UDP truncation
  (RFC 1035 §4.2.1: TC set, answer section cut to what fits) so that clients retry over TCP.
  Bad input never raises; it becomes an error response or a drop and bumps :class:`DnsServerCounters`.
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

from dnslib import CNAME, EDNS0, QTYPE, RCODE, RR, SRV, A, DNSHeader, DNSQuestion, DNSRecord

from simulator.core.dns_zone import ARecord, CnameRecord, LookupStatus, Record, SrvRecord, Zone
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

_OPCODE_QUERY: Final = 0
_CLASS_IN: Final = 1
_CLASS_ANY: Final = 255
_RCODE_BADVERS: Final = 16  # RFC 6891 §9: extended RCODE, upper 8 bits live in the OPT TTL


class DnsTransport(StrEnum):
    """The transport a query came in on (it decides the response size limit)."""

    UDP = "udp"
    TCP = "tcp"


@dataclass
class DnsServerCounters:
    """What the server saw; ``queries`` is keyed by (transport, qtype name)."""

    queries: Counter[tuple[str, str]] = field(default_factory=Counter)
    responses_by_rcode: Counter[str] = field(default_factory=Counter)
    truncated: int = 0  # UDP responses sent with TC set
    malformed: int = 0  # all bad input: FORMERR answered + dropped
    formerr_sent: int = 0
    dropped: int = 0  # unreadable header, a response sent to us, bad TCP framing
    tcp_connections: int = 0
    internal_errors: int = 0  # a bug in the responder; counted and logged, the listener survives


def qtype_name(qtype: int) -> str:
    """``1`` → ``"A"``; unknown types as ``"TYPE<n>"`` (RFC 3597 §5)."""
    name = str(QTYPE.get(qtype))
    return f"TYPE{qtype}" if name.isdigit() else name


def _header_only_response(query: bytes, rcode: int) -> bytes:
    """A response made from the raw header alone: same ID, opcode and RD, QR set, no sections."""
    query_id, flags = struct.unpack_from("!HH", query)
    opcode_and_rd = flags & 0x7900  # RFC 1035 §4.1.1: Opcode bits 1-4 and RD are copied into the response
    return struct.pack("!HHHHHH", query_id, 0x8000 | opcode_and_rd | (rcode & 0xF), 0, 0, 0, 0)


def parse_query(data: bytes) -> DNSRecord:
    """Parse a DNS query or raise :class:`MalformedMessage`.

    ``status`` is the RCODE to answer with (1 = FORMERR), or ``None`` to drop silently.
    """
    if len(data) < DNS_HEADER_SIZE:
        raise MalformedMessage(f"{len(data)} bytes is shorter than a DNS header", status=None)
    (flags,) = struct.unpack_from("!H", data, 2)
    if flags & 0x8000:  # RFC 1035 §4.1.1 QR=1: a response; answering it could start a loop
        raise MalformedMessage("message is a response, not a query", status=None)
    try:
        record = DNSRecord.parse(data)
    except Exception as error:  # dnslib raises DNSError, struct.error, IndexError, UnicodeError …
        raise MalformedMessage(f"unparsable query: {error}", status=int(RCODE.FORMERR)) from None
    if len(record.questions) != 1:  # RFC 9619 §2: a query with QDCOUNT other than 1 gets FORMERR
        raise MalformedMessage(f"{len(record.questions)} questions", status=int(RCODE.FORMERR))
    if sum(1 for rr in record.ar if rr.rtype == QTYPE.OPT) > 1:  # RFC 6891 §6.1.1: at most one OPT
        raise MalformedMessage("more than one OPT record", status=int(RCODE.FORMERR))
    return record


def _to_rr(record: Record) -> RR:
    if isinstance(record, ARecord):
        return RR(record.name, QTYPE.A, ttl=record.ttl, rdata=A(record.address))
    if isinstance(record, SrvRecord):  # RFC 2782: priority, weight, port, target
        rdata = SRV(record.priority, record.weight, record.port, record.target)
        return RR(record.name, QTYPE.SRV, ttl=record.ttl, rdata=rdata)
    if isinstance(record, CnameRecord):
        return RR(record.name, QTYPE.CNAME, ttl=record.ttl, rdata=CNAME(record.target))
    raise TypeError(f"no wire form for {record!r}")


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
        self._max_udp_payload = max(CLASSIC_UDP_PAYLOAD, max_udp_payload)

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
            self.counters.responses_by_rcode[RCODE.get(error.status)] += 1
            return _header_only_response(data, error.status)
        question: DNSQuestion = query.questions[0]
        self.counters.queries[(transport.value, qtype_name(question.qtype))] += 1
        response = self._answer(query, question, transport)
        self.counters.responses_by_rcode[RCODE.get(response.header.rcode)] += 1
        return self._pack_within_limit(response, query, transport)

    def _answer(self, query: DNSRecord, question: DNSQuestion, transport: DnsTransport) -> DNSRecord:
        header = DNSHeader(id=query.header.id, qr=1, aa=1, rd=query.header.rd, opcode=query.header.opcode)
        response = DNSRecord(header, q=question)
        opt = next((rr for rr in query.ar if rr.rtype == QTYPE.OPT), None)
        if opt is not None:
            # RFC 6891 §7: a responder that understands EDNS includes an OPT in its response.
            version = (opt.ttl >> 16) & 0xFF
            bad_version = version != 0
            # RFC 6891 §6.1.3: unsupported version → BADVERS (16), upper 8 bits in the OPT's ext_rcode.
            extended_rcode = _RCODE_BADVERS >> 4 if bad_version else 0
            response.add_ar(EDNS0(udp_len=self._max_udp_payload, ext_rcode=extended_rcode))
            if bad_version:
                return response
        if query.header.opcode != _OPCODE_QUERY:  # RFC 1035 §4.1.1: 4 = Not Implemented
            response.header.rcode = RCODE.NOTIMP
            return response
        if question.qclass not in (_CLASS_IN, _CLASS_ANY):
            response.header.rcode = RCODE.REFUSED
            return response
        result = self.zone.lookup(str(question.qname), qtype_name(question.qtype))
        if result.status is LookupStatus.NXDOMAIN:
            response.header.rcode = RCODE.NXDOMAIN  # RFC 2308 §2.1
            return response
        answers = list(result.answers)
        if self._shuffle_rng is not None:
            self._shuffle_a_records(answers)
        for record in answers:
            response.add_answer(_to_rr(record))
        for record in result.additionals:
            response.add_ar(_to_rr(record))
        return response

    def _shuffle_a_records(self, answers: list[Record]) -> None:
        # Round-robin DNS: permute the A RRset only; a CNAME chain before it keeps its order.
        positions = [index for index, record in enumerate(answers) if isinstance(record, ARecord)]
        shuffled = [answers[index] for index in positions]
        assert self._shuffle_rng is not None
        self._shuffle_rng.shuffle(shuffled)
        for index, record in zip(positions, shuffled, strict=True):
            answers[index] = record

    def _size_limit(self, query: DNSRecord, transport: DnsTransport) -> int:
        if transport is DnsTransport.TCP:
            return MAX_TCP_MESSAGE
        opt = next((rr for rr in query.ar if rr.rtype == QTYPE.OPT), None)
        if opt is None:
            return CLASSIC_UDP_PAYLOAD  # RFC 1035 §4.2.1: no EDNS → 512 octets
        # RFC 6891 §6.2.3/§6.2.5: the requestor's payload size, never below 512, capped by ours.
        return min(max(int(opt.rclass), CLASSIC_UDP_PAYLOAD), self._max_udp_payload)

    def _pack_within_limit(self, response: DNSRecord, query: DNSRecord, transport: DnsTransport) -> bytes:
        limit = self._size_limit(query, transport)
        packed: bytes = response.pack()
        if len(packed) <= limit:
            return packed
        answers = list(response.rr)
        opt_records = [rr for rr in response.ar if rr.rtype == QTYPE.OPT]
        # RFC 2181 §9: additional data may be dropped without setting TC (the OPT stays, RFC 6891 §7).
        response.ar = list(opt_records)
        packed = response.pack()
        if len(packed) <= limit:
            return packed
        # RFC 1035 §4.2.1 / RFC 2181 §9: set TC and send only the whole answer RRs that fit; the
        # client retries over TCP (RFC 7766 §5). Binary search on the number of answers kept.
        response.header.tc = 1
        self.counters.truncated += 1
        fits, too_many = 0, len(answers)
        while too_many - fits > 1:
            middle = (fits + too_many) // 2
            response.rr = answers[:middle]
            if len(response.pack()) <= limit:
                fits = middle
            else:
                too_many = middle
        response.rr = answers[:fits]
        # Header + one question (≤ 12 + 259 octets) + OPT (11) always fits in the 512-octet minimum.
        packed = response.pack()
        return packed


class _UdpDnsProtocol(asyncio.DatagramProtocol):
    def __init__(self, responder: DnsResponder) -> None:
        self._responder = responder
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
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
