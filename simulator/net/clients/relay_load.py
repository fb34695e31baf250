"""A lean asyncio load client for relay allocations: many Allocate → hold → release cycles, one 5-tuple each.

One :class:`ShardSpec` describes what one event loop does; :func:`run_shard` does it and returns a
:class:`ShardResult` whose figures merge exactly with other shards' (counters sum, HDR histograms add).

Each allocation (RFC 8656 §7 / MS-TURN 3.2.5) is one client flow with its own source port:

1. Allocate without credentials → 401 with REALM and NONCE (the challenge, RFC 8489 §9.2.3);
2. the authenticated Allocate → success (the relayed address: XOR-RELAYED-ADDRESS, or MAPPED-ADDRESS in MS-TURN)
   or an error (438 brings a new nonce and is retried once; 486 quota; 508 no relay port: *exhaustion*);
3. hold it ``hold`` seconds;
4. release: Refresh with LIFETIME 0 (RFC 8656 §7.3), Allocate with LIFETIME 0 in MS-TURN (3.2.5.1);
5. close the socket.

``alloc`` latency runs from the first Allocate sent to the success answer (both round trips), in µs.
UDP requests are retransmitted from RTO 0.5 s doubling (RFC 8489 §6.2.1) until ``timeout``; TCP not at all.
Transport ``tcp`` with dialect ``ms-turn`` is MS-TURN's TCP 443 form: the pseudo-TLS hello, then framed
messages (simulator/wire/framing.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import random
import resource
import socket
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from hdrh.histogram import HdrHistogram

from simulator.core.credentials import rest_password
from simulator.wire import msturn, stun, turn
from simulator.wire.errors import MalformedMessage
from simulator.wire.framing import MsTurnFrameKind, MsTurnTcpFramer, Role, TurnTcpFramer, client_hello, frame_control
from simulator.wire.stun import Attribute, MessageClass, attr

Dialect = Literal["rfc8656", "ms-turn"]
Transport = Literal["udp", "tcp"]

UDP_RTO = 0.5
HDR_LOW, HDR_HIGH, HDR_DIGITS = 1, 3_600_000_000, 3  # 1 µs .. 1 h, 3 significant digits
MS_VERSION = 2  # what Lync 2013 clients send over UDP/TCP (legacy header, HMAC-SHA1 with the MD5 key)

# Failure reasons (the report's keys). A 508 is *exhaustion*: the relay range (or capacity) ran out.
EXHAUSTION, QUOTA, AUTH, STALE_NONCE = "exhaustion", "quota", "auth", "stale-nonce"
TIMEOUT, REFUSED, RESET, PROTOCOL, BIND, REALM = "timeout", "refused", "reset", "protocol", "bind", "realm"
FD_LIMIT = "fd-limit"


def new_histogram() -> HdrHistogram:
    return HdrHistogram(HDR_LOW, HDR_HIGH, HDR_DIGITS)


def reason_for_code(code: int) -> str:
    return {508: EXHAUSTION, 486: QUOTA, 401: AUTH, 441: AUTH, 438: STALE_NONCE}.get(code, f"error-{code}")


@dataclass(frozen=True, slots=True)
class Node:
    """One server to load (a pool node): where to send, and its label in per-node figures."""

    host: str
    port: int
    name: str = ""

    @property
    def label(self) -> str:
        return self.name or f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Credentials:
    """Long-term ``username``/``password``, or a REST ``secret`` (coturn --use-auth-secret): then the username is
    ``expiry:user`` and the password base64(HMAC-SHA1(secret, username)), made fresh per shard."""

    username: str
    password: str = ""
    secret: str | None = None
    ttl: int = 86400

    def resolve(self, now: float) -> tuple[str, str]:
        if self.secret is None:
            return self.username, self.password
        username = f"{int(now) + self.ttl}:{self.username}"
        return username, rest_password(self.secret, username)


@dataclass(frozen=True, slots=True)
class ShardSpec:
    """What one event loop runs. Counts and rates are this shard's share."""

    nodes: tuple[Node, ...]
    credentials: Credentials
    dialect: Dialect = "rfc8656"
    transport: Transport = "udp"
    concurrency: int = 10
    rate: float | None = None  # allocations started per second (open loop); None: as fast as concurrency allows
    count: int | None = None  # allocations to start in all
    duration: float = 10.0  # stop starting after this many seconds
    hold: float = 0.0
    timeout: float = 5.0  # per request (with UDP retransmissions inside)
    local_hosts: tuple[str, ...] = ()  # source addresses, round robin (empty: the OS picks)
    port_slice: tuple[int, int] | None = None  # source ports to use, cyclically (None: ephemeral)
    start_at: float | None = None  # wall-clock time (time.time()) to start at, so shards start together
    seed: int = 0
    keep_raw: bool = False  # also return every latency value (tests prove the merge with them)
    shard: int = 0
    realm: str | None = None  # expected realm: a 401 naming another one fails the allocation ("realm")


@dataclass
class NodeFigures:
    ok: int = 0
    failed: int = 0
    alloc_us: HdrHistogram = field(default_factory=new_histogram)


@dataclass
class ShardResult:
    """Everything a shard measured; :meth:`to_dict` is what crosses process boundaries."""

    shard: int = 0
    started: int = 0
    ok: int = 0
    failed: int = 0
    released: int = 0
    release_failed: int = 0
    answers: dict[int, int] = field(default_factory=dict)  # every answer code seen (200 = success)
    failures: dict[str, int] = field(default_factory=dict)
    alloc_us: HdrHistogram = field(default_factory=new_histogram)
    release_us: HdrHistogram = field(default_factory=new_histogram)
    reuse_us: HdrHistogram = field(default_factory=new_histogram)  # release answer → same port handed out again
    ports: dict[int, int] = field(default_factory=dict)
    nodes: dict[str, NodeFigures] = field(default_factory=dict)
    peak_held: int = 0
    first_508_at: float | None = None  # wall clock
    # allocations held when the first 508 came, plus those whose request was already out then (answered after
    # it: with requests in flight the server's order is not the order answers are read in)
    held_at_first_508: int | None = None
    began_at: float = 0.0  # wall clock when the first allocation started
    ended_at: float = 0.0
    client_cpu_s: float = 0.0
    raw_alloc_us: list[int] = field(default_factory=list)

    def count_failure(self, reason: str) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "shard": self.shard, "started": self.started, "ok": self.ok, "failed": self.failed,
            "released": self.released, "release_failed": self.release_failed,
            "answers": {str(k): v for k, v in self.answers.items()}, "failures": dict(self.failures),
            "alloc_us": self.alloc_us.encode().decode(), "release_us": self.release_us.encode().decode(),
            "reuse_us": self.reuse_us.encode().decode(), "ports": {str(k): v for k, v in self.ports.items()},
            "nodes": {name: {"ok": n.ok, "failed": n.failed, "alloc_us": n.alloc_us.encode().decode()}
                      for name, n in self.nodes.items()},
            "peak_held": self.peak_held, "first_508_at": self.first_508_at,
            "held_at_first_508": self.held_at_first_508, "began_at": self.began_at, "ended_at": self.ended_at,
            "client_cpu_s": self.client_cpu_s, "raw_alloc_us": list(self.raw_alloc_us),
        }


class Answer(NamedTuple):
    """What the load client needs from a response: success or error code, the challenge, the relay port."""

    success: bool
    code: int | None
    realm: str | None
    nonce: str | None
    relay_port: int | None


# RFC 8489/8656 fast path: requests are byte templates (only the transaction ID and the auth part change) and
# responses are read by one bounded attribute walk. The full codec (simulator.wire) serves MS-TURN.
_HEAD = struct.Struct("!HHI")
_TLV = struct.Struct("!HH")
_COOKIE = stun.MAGIC_COOKIE
_XOR_PORT = _COOKIE >> 16
_SUCCESS_BIT, _ERROR_BIT = 0x0100, 0x0110
_ERROR_CODE, _REALM, _NONCE, _XOR_RELAYED = 0x0009, 0x0014, 0x0015, 0x0016
_MI, _FINGERPRINT = 0x0008, 0x8028


def tlv(kind: int, value: bytes) -> bytes:
    return _TLV.pack(kind, len(value)) + value + bytes(-len(value) % 4)


def rfc_request(method: int, tid: bytes, body: bytes, key: bytes | None = None) -> bytes:
    """A request with MESSAGE-INTEGRITY (HMAC-SHA1, RFC 8489 §14.5) and FINGERPRINT (§14.7) when ``key``."""
    if key is None:
        return _HEAD.pack(method, len(body), _COOKIE) + tid + body
    mac = hmac.digest(key, _HEAD.pack(method, len(body) + 24, _COOKIE) + tid + body, "sha1")
    body += _TLV.pack(_MI, 20) + mac
    head = _HEAD.pack(method, len(body) + 8, _COOKIE) + tid
    crc = (zlib.crc32(head + body) ^ stun.FINGERPRINT_XOR) & 0xFFFFFFFF
    return head + body + _TLV.pack(_FINGERPRINT, 4) + crc.to_bytes(4, "big")


def rfc_answer(data: bytes) -> Answer | None:
    """Read a success/error response (None: not one, or malformed)."""
    if len(data) < 20:
        return None
    kind, length, cookie = _HEAD.unpack_from(data)
    if cookie != _COOKIE or length + 20 > len(data) or kind & 0xC000:
        return None
    cls = kind & 0x0110
    if cls not in (_SUCCESS_BIT, _ERROR_BIT):
        return None
    code = realm = nonce = relay = None
    pos, end = 20, 20 + length
    while pos + 4 <= end:
        attr_type, attr_len = _TLV.unpack_from(data, pos)
        value = data[pos + 4 : pos + 4 + attr_len]
        if len(value) != attr_len:
            return None
        if attr_type == _ERROR_CODE and attr_len >= 4:
            code = (value[2] & 0x07) * 100 + value[3]
        elif attr_type == _REALM:
            realm = value.decode("utf-8", "replace")
        elif attr_type == _NONCE:
            nonce = value.decode("utf-8", "replace")
        elif attr_type == _XOR_RELAYED and attr_len >= 4:
            relay = int.from_bytes(value[2:4], "big") ^ _XOR_PORT
        pos += 4 + attr_len + (-attr_len % 4)
    if cls == _ERROR_BIT and code is None:
        return None
    return Answer(cls == _SUCCESS_BIT, code if cls == _ERROR_BIT else None, realm, nonce, relay)


def ms_answer(data: bytes) -> Answer | None:
    try:
        message = msturn.parse(data)
    except MalformedMessage:
        return None
    if message.cls not in (MessageClass.SUCCESS, MessageClass.ERROR):
        return None
    error = message.get(stun.ERROR_CODE)
    relay = message.get(msturn.MAPPED_ADDRESS)
    return Answer(message.cls is MessageClass.SUCCESS, error.code if error is not None else None,
                  message.get(msturn.REALM), message.get(msturn.NONCE), relay.port if relay is not None else None)


class _Failure(Exception):
    def __init__(self, reason: str, code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class _Flow:
    """One client 5-tuple: UDP socket or TCP connection, requests matched by transaction ID."""

    def __init__(self, loop: asyncio.AbstractEventLoop, dialect: Dialect, transport: Transport,
                 timeout: float) -> None:
        self.loop = loop
        self.ms = dialect == "ms-turn"
        self.transport = transport
        self.timeout = timeout
        self.waiters: dict[bytes, asyncio.Future[Answer]] = {}
        self.sock: socket.socket | None = None
        self.tcp: asyncio.Transport | None = None
        self.hello: asyncio.Future[None] | None = None
        self._tid_slice = slice(4, 20) if self.ms else slice(8, 20)  # MS-TURN v2: the legacy 16-byte ID
        self._read = ms_answer if self.ms else rfc_answer

    # ------------------------------------------------------------------ open / close
    async def open(self, node: Node, local: tuple[str, int] | None, rng: random.Random) -> None:
        if self.transport == "udp":
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                if local is not None:
                    sock.bind(local)
                sock.connect((node.host, node.port))
            except OSError:
                sock.close()
                raise
            self.sock = sock
            self.loop.add_reader(sock.fileno(), self._udp_readable)
            return
        flow = self

        class _Protocol(asyncio.Protocol):
            def __init__(self) -> None:
                self.framer: MsTurnTcpFramer | TurnTcpFramer = (
                    MsTurnTcpFramer(Role.CLIENT) if flow.ms else TurnTcpFramer())

            def data_received(self, data: bytes) -> None:
                try:
                    frames = self.framer.feed(data)
                except MalformedMessage:
                    flow._fail_all(_Failure(PROTOCOL))
                    if flow.tcp is not None:
                        flow.tcp.abort()
                    return
                for frame in frames:
                    if frame.kind is MsTurnFrameKind.HELLO:
                        if flow.hello is not None and not flow.hello.done():
                            flow.hello.set_result(None)
                    elif not (flow.ms and frame.kind is MsTurnFrameKind.DATA):
                        flow._deliver(frame.data)

            def connection_lost(self, exc: Exception | None) -> None:
                flow._fail_all(_Failure(RESET))
                if flow.hello is not None and not flow.hello.done():
                    flow.hello.set_exception(_Failure(RESET))

        sockopts: dict[str, Any] = {"local_addr": local} if local is not None else {}
        transport, _ = await asyncio.wait_for(
            self.loop.create_connection(_Protocol, node.host, node.port, **sockopts), self.timeout)
        self.tcp = transport
        if self.ms:  # MS-TURN 2.1: pseudo-TLS ClientHello, then wait for the server's hello
            self.hello = self.loop.create_future()
            transport.write(client_hello(rng.getrandbits(256).to_bytes(32, "big")))
            await asyncio.wait_for(self.hello, self.timeout)

    def close(self) -> None:
        if self.sock is not None:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
        if self.tcp is not None:
            self.tcp.abort()
            self.tcp = None

    # ------------------------------------------------------------------ receive
    def _udp_readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        while True:
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                return
            except OSError as error:  # ICMP port unreachable → ECONNREFUSED on a connected socket
                self._fail_all(_Failure(REFUSED if error.errno == errno.ECONNREFUSED else RESET))
                return
            self._deliver(data)

    def _deliver(self, data: bytes) -> None:
        waiter = self.waiters.get(data[self._tid_slice])
        if waiter is None or waiter.done():
            return  # not ours (or a late retransmission answer)
        answer = self._read(data)
        if answer is not None:  # malformed or not a response: ignored, the timer decides
            del self.waiters[data[self._tid_slice]]
            waiter.set_result(answer)

    def _fail_all(self, error: Exception) -> None:
        for waiter in self.waiters.values():
            if not waiter.done():
                waiter.set_exception(error)
        self.waiters.clear()

    # ------------------------------------------------------------------ transact
    def _send(self, data: bytes) -> None:
        if self.sock is not None:
            try:
                self.sock.send(data)
            except BlockingIOError:
                pass  # a full socket buffer: the retransmission timer tries again
            except OSError as error:
                self._fail_all(_Failure(REFUSED if error.errno == errno.ECONNREFUSED else RESET))
        elif self.tcp is not None:
            self.tcp.write(frame_control(data) if self.ms else data)

    async def transact(self, tid: bytes, data: bytes) -> Answer:
        loop = self.loop
        waiter: asyncio.Future[Answer] = loop.create_future()
        self.waiters[tid] = waiter
        deadline = loop.time() + self.timeout
        udp = self.sock is not None
        handle: list[asyncio.TimerHandle] = []

        def on_timer(rto: float) -> None:  # one timer: retransmission (UDP) and the overall deadline
            if waiter.done():
                return
            now = loop.time()
            if now >= deadline:
                waiter.set_exception(_Failure(TIMEOUT))
                return
            self._send(data)
            handle[0] = loop.call_at(min(deadline, now + rto), on_timer, rto * 2)

        self._send(data)
        handle.append(loop.call_at(min(deadline, loop.time() + UDP_RTO) if udp else deadline, on_timer,
                                   UDP_RTO * 2))
        try:
            return await waiter
        finally:
            self.waiters.pop(tid, None)
            handle[0].cancel()


class _Messages:
    """Requests of one dialect; with ``realm``/``nonce`` they carry USERNAME/REALM/NONCE and MESSAGE-INTEGRITY."""

    def __init__(self, dialect: Dialect, rng: random.Random, username: str, password: str) -> None:
        self.ms = dialect == "ms-turn"
        self.rng = rng
        self.username = username
        self.password = password
        self._keys: dict[str, bytes] = {}
        self._auth: dict[tuple[str, str], bytes] = {}
        self._transport = tlv(turn.REQUESTED_TRANSPORT.code, bytes((turn.TransportProtocol.UDP, 0, 0, 0)))
        self._lifetime0 = tlv(turn.LIFETIME.code, bytes(4))

    def _tid(self) -> bytes:  # RFC 8489 §5: 96 bits
        return self.rng.getrandbits(96).to_bytes(12, "big")

    def _rfc_auth(self, realm: str, nonce: str) -> tuple[bytes, bytes]:
        key = self._keys.get(realm)
        if key is None:  # RFC 8489 §9.2.2: MD5(username:realm:password), the same for every nonce
            key = self._keys[realm] = stun.long_term_key(self.username, realm, self.password)
        attrs = self._auth.get((realm, nonce))
        if attrs is None:
            if len(self._auth) > 4096:
                self._auth.clear()
            attrs = self._auth[(realm, nonce)] = (
                tlv(stun.USERNAME.code, self.username.encode()) + tlv(stun.REALM.code, realm.encode())
                + tlv(stun.NONCE.code, nonce.encode()))
        return attrs, key

    def allocate(self, realm: str | None = None, nonce: str | None = None) -> tuple[bytes, bytes]:
        if self.ms:
            return self._ms(msturn.MsTurnMethod.ALLOCATE, [], realm, nonce)
        tid = self._tid()
        if realm is None or nonce is None:
            return tid, rfc_request(turn.TurnMethod.ALLOCATE, tid, self._transport)
        attrs, key = self._rfc_auth(realm, nonce)
        return tid, rfc_request(turn.TurnMethod.ALLOCATE, tid, self._transport + attrs, key)

    def release(self, realm: str, nonce: str) -> tuple[bytes, bytes]:
        if self.ms:  # MS-TURN 3.2.5.1: Allocate with LIFETIME 0 deletes the allocation
            return self._ms(msturn.MsTurnMethod.ALLOCATE, [attr(msturn.LIFETIME, 0)], realm, nonce)
        tid = self._tid()  # RFC 8656 §7.3: Refresh with LIFETIME 0
        attrs, key = self._rfc_auth(realm, nonce)
        return tid, rfc_request(turn.TurnMethod.REFRESH, tid, self._lifetime0 + attrs, key)

    def _ms(self, method: int, attrs: list[Attribute], realm: str | None, nonce: str | None) -> tuple[bytes, bytes]:
        tid = stun.new_transaction_id(self.rng, msturn.dialect_for(MS_VERSION))
        extra: list[Attribute] = [attr(msturn.MS_VERSION, MS_VERSION), *attrs]
        if realm is None or nonce is None:
            return tid, msturn.build(method, MessageClass.REQUEST, tid, *extra, version=MS_VERSION).serialize()
        extra += [attr(msturn.USERNAME, self.username), attr(msturn.REALM, realm), attr(msturn.NONCE, nonce)]
        message = msturn.build(method, MessageClass.REQUEST, tid, *extra, version=MS_VERSION)
        key = msturn.key_for(MS_VERSION, self.username, realm, self.password, nonce)
        return tid, message.serialize(key=key, integrity=(msturn.integrity_for(MS_VERSION),))


Tick = Callable[[dict[str, Any]], None]


class LoadShard:
    """Runs one :class:`ShardSpec` on the running loop."""

    def __init__(self, spec: ShardSpec) -> None:
        self.spec = spec
        self.rng = random.Random(spec.seed * 7919 + spec.shard)
        username, password = spec.credentials.resolve(time.time())
        self.messages = _Messages(spec.dialect, self.rng, username, password)
        self.result = ShardResult(shard=spec.shard)
        self.held = 0
        self.in_flight = 0
        self._released_at: dict[tuple[str, int], int] = {}  # (node, port) → perf_counter_ns of its release
        self._first_508_ns = 0
        self._next_port = 0
        self._next_host = 0

    def _local(self) -> tuple[str, int] | None:
        spec = self.spec
        host = ""
        if spec.local_hosts:
            host = spec.local_hosts[self._next_host % len(spec.local_hosts)]
            self._next_host += 1
        if spec.port_slice is None:
            return (host, 0) if host else None
        low, high = spec.port_slice
        port = low + self._next_port % (high - low + 1)
        self._next_port += 1
        return (host or "0.0.0.0", port)

    async def _open(self, flow: _Flow, node: Node) -> None:
        tries = 1 if self.spec.port_slice is None else self.spec.port_slice[1] - self.spec.port_slice[0] + 1
        for attempt in range(tries):
            try:
                await flow.open(node, self._local(), self.rng)
                return
            except OSError as error:
                if error.errno == errno.EADDRINUSE and attempt + 1 < tries:
                    continue  # that source port is busy (TIME_WAIT, another tool): the next one of the slice
                if error.errno in (errno.EMFILE, errno.ENFILE):
                    raise _Failure(FD_LIMIT) from None  # too many sockets: lower --concurrency or raise ulimit -n
                raise _Failure(REFUSED if error.errno == errno.ECONNREFUSED else BIND) from None
            except TimeoutError:
                raise _Failure(TIMEOUT) from None

    def _answer(self, answer: Answer) -> int | None:
        key = 200 if answer.success else (answer.code or 0)
        self.result.answers[key] = self.result.answers.get(key, 0) + 1
        return answer.code

    async def one(self, index: int) -> None:
        spec, result, msgs = self.spec, self.result, self.messages
        node = spec.nodes[index % len(spec.nodes)]
        figures = result.nodes.get(node.label)
        if figures is None:
            figures = result.nodes[node.label] = NodeFigures()
        flow = _Flow(asyncio.get_running_loop(), spec.dialect, spec.transport, spec.timeout)
        holding = False
        try:
            t0 = time.perf_counter_ns()
            await self._open(flow, node)
            answer = await flow.transact(*msgs.allocate())
            code = self._answer(answer)
            if code != 401:
                raise _Failure(PROTOCOL if code is None else reason_for_code(code), code)
            realm, nonce = answer.realm, answer.nonce
            if realm is None or nonce is None:
                raise _Failure(PROTOCOL)
            if spec.realm is not None and realm != spec.realm:
                raise _Failure(REALM)
            for attempt in range(2):
                sent = time.perf_counter_ns()
                answer = await flow.transact(*msgs.allocate(realm, nonce))
                code = self._answer(answer)
                if code == 438 and attempt == 0:  # stale nonce: once more with the new one (RFC 8489 §9.2.4)
                    realm, nonce = answer.realm, answer.nonce
                    if realm is None or nonce is None:
                        raise _Failure(PROTOCOL)
                    continue
                break
            if not answer.success:
                if code == 508 and result.first_508_at is None:
                    result.first_508_at = time.time()
                    result.held_at_first_508 = self.held
                    self._first_508_ns = time.perf_counter_ns()
                raise _Failure(PROTOCOL if code is None else reason_for_code(code), code)
            port = answer.relay_port
            if port is None:
                raise _Failure(PROTOCOL)
            t1 = time.perf_counter_ns()
            latency = max(1, (t1 - t0) // 1000)
            result.ok += 1
            figures.ok += 1
            result.alloc_us.record_value(latency)
            figures.alloc_us.record_value(latency)
            if spec.keep_raw:
                result.raw_alloc_us.append(latency)
            result.ports[port] = result.ports.get(port, 0) + 1
            released_at = self._released_at.pop((node.label, port), None)
            if released_at is not None:
                result.reuse_us.record_value(max(1, (t1 - released_at) // 1000))
            self.held += 1
            holding = True
            if result.held_at_first_508 is not None and sent < self._first_508_ns:
                result.held_at_first_508 += 1  # asked before the 508 came: the server may have served it first
            result.peak_held = max(result.peak_held, self.held)
            if spec.hold > 0:
                await asyncio.sleep(spec.hold)
            await self._release(flow, node.label, port, realm, nonce)
        except _Failure as failure:
            result.failed += 1
            figures.failed += 1
            result.count_failure(failure.reason)
        finally:
            if holding:
                self.held -= 1
            flow.close()

    async def _release(self, flow: _Flow, node: str, port: int, realm: str, nonce: str) -> None:
        result = self.result
        t0 = time.perf_counter_ns()
        try:
            for attempt in range(2):
                answer = await flow.transact(*self.messages.release(realm, nonce))
                code = self._answer(answer)
                if code == 438 and attempt == 0:
                    fresh_realm, fresh_nonce = answer.realm, answer.nonce
                    if fresh_realm is not None and fresh_nonce is not None:
                        realm, nonce = fresh_realm, fresh_nonce
                        continue
                break
        except _Failure:
            result.release_failed += 1
            return
        if answer.success:
            t1 = time.perf_counter_ns()
            result.released += 1
            result.release_us.record_value(max(1, (t1 - t0) // 1000))
            self._released_at[(node, port)] = t1
        else:
            result.release_failed += 1

    def snapshot(self, last_ok: int, elapsed: float) -> dict[str, Any]:
        r = self.result
        return {"shard": self.spec.shard, "t": elapsed, "started": r.started, "ok": r.ok, "failed": r.failed,
                "in_flight": self.in_flight, "held": self.held, "failures": dict(r.failures),
                "alloc_us": r.alloc_us.encode().decode(), "ok_last": r.ok - last_ok}

    async def run(self, tick: Tick | None = None) -> ShardResult:
        spec, result = self.spec, self.result
        if spec.start_at is not None:
            await asyncio.sleep(max(0.0, spec.start_at - time.time()))
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        result.began_at = time.time()
        start = time.monotonic()
        deadline = start + spec.duration
        limit = spec.count if spec.count is not None else 1 << 62
        slots = asyncio.Semaphore(max(1, spec.concurrency))
        tasks: set[asyncio.Task[None]] = set()
        ticker = asyncio.create_task(self._tick(tick, start)) if tick is not None else None

        def done(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            self.in_flight -= 1
            slots.release()

        try:
            while result.started < limit and time.monotonic() < deadline:
                await slots.acquire()
                if spec.rate:
                    due = start + result.started / spec.rate
                    if due >= deadline:  # rate x duration allocations, not one more
                        slots.release()
                        break
                    delay = due - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                if time.monotonic() >= deadline:
                    slots.release()
                    break
                task = asyncio.create_task(self.one(result.started))
                result.started += 1
                self.in_flight += 1
                tasks.add(task)
                task.add_done_callback(done)
            if tasks:  # bounded: every step has its own timeout, the hold is finite
                await asyncio.wait(set(tasks), timeout=spec.hold + 4 * spec.timeout + 5)
            for task in list(tasks):
                task.cancel()
        finally:
            if ticker is not None:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        result.ended_at = time.time()
        result.client_cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        if tick is not None:
            tick({**self.snapshot(0, time.monotonic() - start), "final": True})
        return result

    async def _tick(self, tick: Tick, start: float) -> None:
        last_ok = 0
        while True:
            await asyncio.sleep(1.0)
            snap = self.snapshot(last_ok, time.monotonic() - start)
            last_ok = self.result.ok
            tick(snap)


async def run_shard(spec: ShardSpec, tick: Tick | None = None) -> ShardResult:
    return await LoadShard(spec).run(tick)
