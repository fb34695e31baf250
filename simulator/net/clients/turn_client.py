"""The lab's TURN clients: MS-TURN over UDP 3478 and TCP 443 (what a Lync client speaks), and RFC 8656 +
RFC 6062 over TCP for TCP relays. Built on the wire codecs only; every failure is a :class:`ProbeFailure`
with a reason code.

MS-TURN sequence (research-lync-edge §1.1): an Allocate without credentials gets 401 with REALM (0x0015),
NONCE (0x0014) and ALTERNATE-SERVER — the public address of the node that answered, where the client must
send its next Allocate (pinning behind DNS load balancing); the authenticated Allocate gets MAPPED-ADDRESS
(the public relay), 0x8020 XOR-MAPPED-ADDRESS (the client's reflexive address) and MS-SEQUENCE-NUMBER.
Data goes out as Send requests (no response) and comes back as Data Indications; a peer can reach the relay
only after the client has sent to it (implicit permission).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from simulator.net.nat.gate import Gateway, GatewayEndpoint
from simulator.net.transport.tls import classify_tls_error
from simulator.outcome import ProbeFailure, Reason
from simulator.wire import msturn, stun, turn
from simulator.wire.errors import MalformedMessage
from simulator.wire.framing import MsTurnFrameKind, MsTurnTcpFramer, Role, TurnTcpFramer, client_hello, frame_control
from simulator.wire.stun import Address, Attribute, Message, MessageClass, attr

UDP_RTO = 0.5  # RFC 8489 §6.2.1: initial RTO
RELEASE_TIMEOUT = 1.0  # how long close() waits for the answer to its release (best effort)
StreamOpener = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


@dataclass(frozen=True, slots=True)
class Allocation:
    relay: Address
    reflexive: Address | None
    alternate: Address | None
    lifetime: int


def _refusal(code: stun.ErrorCode | None) -> Reason:
    """An error answer's reason: 508 (Insufficient Capacity, RFC 8656 §6.2) is the relay range used up."""
    return Reason.EXHAUSTION if code is not None and code.code == 508 else Reason.REJECTED


def _error_code(message: Message) -> int | None:
    code = message.get(stun.ERROR_CODE)
    return code.code if code is not None else None


class _Connection:
    """Request/response matching by transaction ID, data indications queued, over UDP or a stream."""

    def __init__(self) -> None:
        self.waiters: dict[bytes, asyncio.Future[Message]] = {}
        self.data: asyncio.Queue[tuple[Address | None, bytes]] = asyncio.Queue()
        self.indications: asyncio.Queue[Message] = asyncio.Queue()
        self.closed: asyncio.Future[None] | None = None

    def deliver(self, message: Message) -> None:
        if message.cls in (MessageClass.SUCCESS, MessageClass.ERROR):
            waiter = self.waiters.pop(message.transaction_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(message)
        elif message.cls is MessageClass.INDICATION:
            self.indications.put_nowait(message)


class MsTurnClient:
    """One MS-TURN client flow to an A/V Edge listener (``transport`` udp → 3478, tcp → 443)."""

    def __init__(self, transport: Literal["udp", "tcp"], server: Address, username: str, password: str,
                 rng: random.Random, *, version: int = 2, local_host: str | None = None,
                 nat: Gateway | None = None, tcp_opener: StreamOpener | None = None) -> None:
        """``nat``: send UDP through this NAT box (the client sits behind it); ``tcp_opener``: how to open the
        TCP connection (e.g. through the NAT box); by default a plain connection from ``local_host``."""
        self.transport = transport
        self.server = server
        self.username = username
        self.password = password
        self.rng = rng
        self.version = version
        self.local_host = local_host
        self.realm: str | None = None
        self.nonce: str | None = None
        self.connection_id = b""
        self.sequence = 0
        self.allocated = False  # an allocation exists that close() must release
        self.local: Address | None = None
        self._nat = nat
        self._nat_endpoint: GatewayEndpoint | None = None
        self._tcp_opener = tcp_opener
        self._conn = _Connection()
        self._udp: asyncio.DatagramTransport | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._hello: asyncio.Future[bytes] | None = None
        # Relayed data straight to its consumer (ICE, media) as it arrives; None: queued for :meth:`receive`
        self.on_data: Callable[[Address | None, bytes], None] | None = None
        # MESSAGE-INTEGRITY key of the current credentials (MD5 or two HMACs): derived once, not per Send
        self._key_cache: tuple[tuple[int, str, str, str, str], bytes] | None = None

    # -------------------------------------------------------------------------------- transport
    async def open(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        where = f"{self.server.host}:{self.server.port}/{self.transport}"
        try:
            async with asyncio.timeout(timeout):
                if self.transport == "udp" and self._nat is not None:
                    self._nat_endpoint = await self._nat.open_udp(
                        (self.local_host or "127.0.0.2", 0), on_datagram=lambda data, _src: self._received(data))
                    sockname = self._nat_endpoint.internal_address
                elif self.transport == "udp":
                    client = self

                    class _Protocol(asyncio.DatagramProtocol):
                        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                            client._received(data)

                        def error_received(self, exc: Exception) -> None:  # ICMP unreachable
                            for waiter in client._conn.waiters.values():
                                if not waiter.done():
                                    waiter.set_exception(ConnectionRefusedError(str(exc)))

                    transport, _ = await loop.create_datagram_endpoint(
                        _Protocol, local_addr=(self.local_host or "0.0.0.0", 0),
                        remote_addr=(self.server.host, self.server.port))
                    self._udp = transport
                    sockname = transport.get_extra_info("sockname")
                else:
                    local = (self.local_host, 0) if self.local_host else None
                    if self._tcp_opener is not None:
                        reader, writer = await self._tcp_opener()
                    else:
                        reader, writer = await asyncio.open_connection(self.server.host, self.server.port,
                                                                       local_addr=local)
                    self._writer = writer
                    sockname = writer.get_extra_info("sockname")
                    self._hello = loop.create_future()
                    self._reader_task = asyncio.create_task(self._read_stream(reader))
                    # MS-TURN 2.1: the pseudo-TLS hello, and nothing more until the server's answer.
                    writer.write(client_hello(self.rng.getrandbits(256).to_bytes(32, "big")))
                    await writer.drain()
                    await self._hello
        except (OSError, TimeoutError) as error:
            await self.close()
            raise ProbeFailure(classify_tls_error(error), f"{where}: {error}") from None
        except BaseException:  # cancelled mid-open: leave no reader task, socket or NAT endpoint behind
            await self.close()
            raise
        self.local = Address(sockname[0], sockname[1])

    async def _read_stream(self, reader: asyncio.StreamReader) -> None:
        framer = MsTurnTcpFramer(Role.CLIENT)
        try:
            while data := await reader.read(65536):
                for frame in framer.feed(data):
                    if frame.kind is MsTurnFrameKind.HELLO:
                        if self._hello is not None and not self._hello.done():
                            self._hello.set_result(frame.data)
                    elif frame.kind is MsTurnFrameKind.DATA:
                        self._conn.data.put_nowait((None, frame.data))
                    else:
                        self._received(frame.data)
        except (OSError, MalformedMessage):
            pass
        finally:
            error = ConnectionResetError("the A/V Edge closed the connection")
            if self._hello is not None and not self._hello.done():
                self._hello.set_exception(error)
            for waiter in self._conn.waiters.values():
                if not waiter.done():
                    waiter.set_exception(error)

    def _received(self, data: bytes) -> None:
        try:
            message = msturn.parse(data)
        except MalformedMessage:
            return
        if message.cls is MessageClass.INDICATION and message.method == msturn.MsTurnMethod.DATA:
            # relayed data is not an indication anyone waits for: kept out of that queue, which nothing drains
            peer, payload = message.get(msturn.REMOTE_ADDRESS), message.get(msturn.DATA)
            if payload is None:
                return
            if self.on_data is not None:
                self.on_data(peer, payload)
            else:
                self._conn.data.put_nowait((peer, payload))
            return
        self._conn.deliver(message)

    @property
    def public(self) -> Address | None:
        """The address the server sees: the NAT's mapping towards the server, else the local address."""
        if self._nat_endpoint is not None:
            mapped = self._nat_endpoint.mapped_address(self.server)
            return Address(mapped[0], mapped[1]) if mapped is not None else None
        return self.local

    def _send_raw(self, data: bytes) -> None:
        if self._nat_endpoint is not None:
            self._nat_endpoint.sendto(data, self.server)
        elif self._udp is not None:
            self._udp.sendto(data)
        elif self._writer is not None:
            self._writer.write(frame_control(data))

    async def release(self, timeout: float = RELEASE_TIMEOUT) -> bool:
        """MS-TURN 3.2.5.1: Allocate with LIFETIME 0 deletes the allocation. Over UDP nothing else would end it
        before its lifetime: a later run from the same NAT mapping would meet it (441). True when answered."""
        if not self.allocated:
            return True
        self.allocated = False
        tid, data = self._build(msturn.MsTurnMethod.ALLOCATE, attr(msturn.LIFETIME, 0), auth=True)
        try:
            answer = await self._transact(tid, data, timeout)
        except ProbeFailure:
            return False
        return answer.cls is MessageClass.SUCCESS

    async def close(self) -> None:
        if self.allocated and (self._udp is not None or self._nat_endpoint is not None):
            await self.release()  # over TCP, closing the connection ends the allocation (MS-TURN 3.2.5.1)
        if self._nat_endpoint is not None:
            self._nat_endpoint.close()
            self._nat_endpoint = None
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
            self._reader_task = None
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
            self._writer = None

    # -------------------------------------------------------------------------------- messages
    def _build(self, method: int, *attrs: Attribute, auth: bool, seq: bool = False) -> tuple[bytes, bytes]:
        tid = stun.new_transaction_id(self.rng, msturn.dialect_for(self.version))
        extra: list[Attribute] = [attr(msturn.MS_VERSION, self.version), *attrs]
        if seq:
            self.sequence += 1
            extra.append(attr(msturn.MS_SEQUENCE_NUMBER, msturn.SequenceNumber(self.connection_id, self.sequence)))
        if auth and self.nonce is not None and self.realm is not None:
            extra += [attr(msturn.USERNAME, self.username), attr(msturn.REALM, self.realm),
                      attr(msturn.NONCE, self.nonce)]
            key = self._key(self.realm, self.nonce)
            message = msturn.build(method, MessageClass.REQUEST, tid, *extra, version=self.version)
            return tid, message.serialize(key=key, integrity=(msturn.integrity_for(self.version),))
        return tid, msturn.build(method, MessageClass.REQUEST, tid, *extra, version=self.version).serialize()

    def _key(self, realm: str, nonce: str) -> bytes:
        """The allocation's key, re-derived only when version, username, realm, password or nonce change."""
        inputs = (self.version, self.username, realm, self.password, nonce)
        cached = self._key_cache
        if cached is not None and cached[0] == inputs:
            return cached[1]
        key = msturn.key_for(self.version, self.username, realm, self.password, nonce)
        self._key_cache = (inputs, key)
        return key

    async def _transact(self, tid: bytes, data: bytes, timeout: float) -> Message:
        waiter: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._conn.waiters[tid] = waiter
        where = f"{self.server.host}:{self.server.port}/{self.transport}"
        try:
            async with asyncio.timeout(timeout):
                rto = UDP_RTO
                while True:
                    self._send_raw(data)
                    if self._udp is None and self._nat_endpoint is None:  # reliable: no retransmission (§6.2.2)
                        return await waiter
                    try:
                        return await asyncio.wait_for(asyncio.shield(waiter), rto)
                    except TimeoutError:
                        rto *= 2
        except TimeoutError:
            raise ProbeFailure(Reason.TIMEOUT, f"{where}: no answer") from None
        except OSError as error:
            raise ProbeFailure(classify_tls_error(error), f"{where}: {error}") from None
        finally:
            self._conn.waiters.pop(tid, None)

    async def allocate(self, timeout: float) -> Allocation:
        """Allocate: 401 challenge first, then the authenticated request (MS-TURN 3.1.2, 3.2.5)."""
        where = f"{self.server.host}:{self.server.port}/{self.transport}"
        tid, data = self._build(msturn.MsTurnMethod.ALLOCATE, auth=False)
        challenge = await self._transact(tid, data, timeout)
        if _error_code(challenge) != 401:
            raise ProbeFailure(Reason.PROTOCOL_ERROR, f"{where}: expected 401, got {challenge.cls.name} "
                                                      f"{_error_code(challenge)}")
        self.realm, self.nonce = challenge.get(msturn.REALM), challenge.get(msturn.NONCE)
        alternate = challenge.get(msturn.ALTERNATE_SERVER)
        if self.realm is None or self.nonce is None:
            raise ProbeFailure(Reason.PROTOCOL_ERROR, f"{where}: 401 without REALM/NONCE")
        tid, data = self._build(msturn.MsTurnMethod.ALLOCATE, auth=True)
        answer = await self._transact(tid, data, timeout)
        if answer.cls is MessageClass.ERROR:
            code = answer.get(stun.ERROR_CODE)
            raise ProbeFailure(_refusal(code), f"{where}: Allocate refused: {code.code if code else '?'} "
                                                f"{code.reason if code else ''}")
        relay = answer.get(msturn.MAPPED_ADDRESS)
        if relay is None:
            raise ProbeFailure(Reason.PROTOCOL_ERROR, f"{where}: Allocate answer without MAPPED-ADDRESS")
        sequence = answer.get(msturn.MS_SEQUENCE_NUMBER)
        if sequence is not None:
            self.connection_id, self.sequence = sequence.connection_id, sequence.sequence
        self.allocated = True
        return Allocation(relay, answer.get(msturn.XOR_MAPPED_ADDRESS), alternate, answer.get(msturn.LIFETIME) or 0)

    def send(self, peer: Address, payload: bytes) -> None:
        """A Send request to ``peer`` (MS-TURN: no response) — also opens the implicit permission."""
        _, data = self._build(msturn.MsTurnMethod.SEND, attr(msturn.DESTINATION_ADDRESS, peer),
                              attr(msturn.DATA, payload), auth=True, seq=True)
        self._send_raw(data)

    async def receive(self, timeout: float) -> tuple[Address | None, bytes]:
        """The next Data Indication (peer, payload)."""
        try:
            return await asyncio.wait_for(self._conn.data.get(), timeout)
        except TimeoutError:
            raise ProbeFailure(Reason.NO_RETURN_PATH, "no data came back through the relay") from None


class RfcTcpRelayClient:
    """RFC 8656 over TCP with a TCP relay (RFC 6062): Allocate, CreatePermission, Connect, ConnectionBind."""

    def __init__(self, server: Address, username: str, password: str, rng: random.Random,
                 local_host: str | None = None, tcp_opener: StreamOpener | None = None) -> None:
        self.tcp_opener = tcp_opener
        self.server = server
        self.username = username
        self.password = password
        self.rng = rng
        self.local_host = local_host
        self.realm: str | None = None
        self.nonce: str | None = None
        self._conn = _Connection()
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._data: list[asyncio.StreamWriter] = []

    @property
    def where(self) -> str:
        return f"{self.server.host}:{self.server.port}/tcp"

    async def _open(self, timeout: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            if self.tcp_opener is not None:
                return await asyncio.wait_for(self.tcp_opener(), timeout)
            return await asyncio.wait_for(asyncio.open_connection(
                self.server.host, self.server.port, local_addr=(self.local_host, 0) if self.local_host else None),
                timeout)
        except (OSError, TimeoutError) as error:
            raise ProbeFailure(classify_tls_error(error), f"{self.where}: {error}") from None

    async def open(self, timeout: float) -> None:
        reader, self._writer = await self._open(timeout)
        self._task = asyncio.create_task(self._read(reader, self._conn))

    @staticmethod
    async def _read(reader: asyncio.StreamReader, conn: _Connection) -> None:
        framer = TurnTcpFramer()
        with contextlib.suppress(OSError, MalformedMessage):
            while data := await reader.read(65536):
                for frame in framer.feed(data):
                    with contextlib.suppress(MalformedMessage):
                        conn.deliver(turn.parse(frame.data))

    def _message(self, method: int, *attrs: Attribute) -> tuple[bytes, bytes]:
        tid = stun.new_transaction_id(self.rng, turn.RFC)
        if self.nonce is None or self.realm is None:
            return tid, stun.request(method, tid, *attrs, dialect=turn.RFC).serialize()
        attrs = (*attrs, attr(stun.USERNAME, self.username), attr(stun.REALM, self.realm),
                 attr(stun.NONCE, self.nonce))
        key = stun.long_term_key(self.username, self.realm, self.password)
        return tid, stun.request(method, tid, *attrs, dialect=turn.RFC).serialize(key=key, fingerprint=True)

    async def _request(self, writer: asyncio.StreamWriter, conn: _Connection, method: int, timeout: float,
                       *attrs: Attribute) -> Message:
        for _ in range(2):  # once more after a 401/438 that brings a (new) nonce
            tid, data = self._message(method, *attrs)
            waiter: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
            conn.waiters[tid] = waiter
            writer.write(data)
            try:
                answer = await asyncio.wait_for(waiter, timeout)
            except TimeoutError:
                raise ProbeFailure(Reason.TIMEOUT, f"{self.where}: no answer to {method:#x}") from None
            finally:
                conn.waiters.pop(tid, None)
            if _error_code(answer) in (401, 438) and answer.get(stun.NONCE) is not None:
                self.realm, self.nonce = answer.get(stun.REALM) or self.realm, answer.get(stun.NONCE)
                continue
            if answer.cls is MessageClass.ERROR:
                code = answer.get(stun.ERROR_CODE)
                raise ProbeFailure(_refusal(code), f"{self.where}: {method:#x} refused: "
                                                    f"{code.code if code else '?'} {code.reason if code else ''}")
            return answer
        raise ProbeFailure(Reason.REJECTED, f"{self.where}: credentials refused")

    async def allocate(self, timeout: float) -> Address:
        assert self._writer is not None
        answer = await self._request(self._writer, self._conn, turn.TurnMethod.ALLOCATE, timeout,
                                     attr(turn.REQUESTED_TRANSPORT, turn.TransportProtocol.TCP))
        relay = answer.get(turn.XOR_RELAYED_ADDRESS)
        if relay is None:
            raise ProbeFailure(Reason.PROTOCOL_ERROR, f"{self.where}: Allocate answer without XOR-RELAYED-ADDRESS")
        return relay

    async def permit(self, peer: Address, timeout: float) -> None:
        assert self._writer is not None
        await self._request(self._writer, self._conn, turn.TurnMethod.CREATE_PERMISSION, timeout,
                            attr(turn.XOR_PEER_ADDRESS, peer))

    async def connect(self, peer: Address, timeout: float) -> int:
        """RFC 6062 §4.3: ask the relay to open TCP to ``peer``; returns the CONNECTION-ID."""
        assert self._writer is not None
        answer = await self._request(self._writer, self._conn, turn.TurnMethod.CONNECT, timeout,
                                     attr(turn.XOR_PEER_ADDRESS, peer))
        connection_id = answer.get(turn.CONNECTION_ID)
        if connection_id is None:
            raise ProbeFailure(Reason.PROTOCOL_ERROR, f"{self.where}: Connect answer without CONNECTION-ID")
        return connection_id

    async def attempt(self, timeout: float) -> tuple[int, Address | None]:
        """RFC 6062 §4.4: wait for a ConnectionAttempt indication (a peer connected to the relay)."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    message = await self._conn.indications.get()
                    if message.method == turn.TurnMethod.CONNECTION_ATTEMPT:
                        connection_id = message.get(turn.CONNECTION_ID)
                        if connection_id is not None:
                            return connection_id, message.get(turn.XOR_PEER_ADDRESS)
        except TimeoutError:
            raise ProbeFailure(Reason.NO_RETURN_PATH, f"{self.where}: no ConnectionAttempt") from None

    async def bind(self, connection_id: int, timeout: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """RFC 6062 §4.3/4.4: a new data connection bound to ``connection_id``; then raw bytes flow."""
        reader, writer = await self._open(timeout)
        self._data.append(writer)
        framer = TurnTcpFramer()
        _, data = self._message(turn.TurnMethod.CONNECTION_BIND, attr(turn.CONNECTION_ID, connection_id))
        writer.write(data)
        try:
            async with asyncio.timeout(timeout):
                while True:  # read exactly one STUN message; what follows belongs to the peer
                    header = await reader.readexactly(20)
                    length = int.from_bytes(header[2:4], "big")
                    frames = framer.feed(header + await reader.readexactly(length))
                    if frames:
                        answer = turn.parse(frames[0].data)
                        break
        except MalformedMessage as error:
            raise ProbeFailure(Reason.PROTOCOL_ERROR, f"{self.where}: ConnectionBind answer: {error.reason}") from None
        except asyncio.IncompleteReadError:
            raise ProbeFailure(Reason.RESET, f"{self.where}: closed before the ConnectionBind answer") from None
        except (TimeoutError, OSError) as error:
            raise ProbeFailure(classify_tls_error(error), f"{self.where}: ConnectionBind: {error!r}") from None
        if answer.cls is not MessageClass.SUCCESS:
            raise ProbeFailure(Reason.REJECTED, f"{self.where}: ConnectionBind refused ({_error_code(answer)})")
        return reader, writer

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for writer in [*self._data, *([self._writer] if self._writer else [])]:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        self._data.clear()
        self._writer = None
