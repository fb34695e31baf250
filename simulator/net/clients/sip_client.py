"""SIP clients of the lab: a remote Lync user, a partner's Edge, an internal server, over TLS/MTLS.

:class:`SipClient` is one user agent over one persistent TLS connection, the asyncio shell of a sans-I/O
:class:`~simulator.core.sip_element.SipElement`: :meth:`SipClient.request` starts a client transaction and
returns its final response (provisional ones are skipped; RFC 3261 §17.1 over a reliable transport needs no
retransmission) or fails when the request's own timeout — the element's response deadline — passes; requests
arriving from the far end (NOTIFY, MESSAGE, BYE …) are answered 200 through their server transactions and kept
in :attr:`SipClient.inbox` (the newest :data:`INBOX_LIMIT`: a long-signed-in user nobody reads for kept every
request of every call). One timer handle per client, at the element's ``get_timer()``, and one clock, the
event loop's. :meth:`SipClient.connect` takes every address of a
DNS-load-balanced name and tries them in the order a :class:`~simulator.core.dns_policy.ResolverPolicy`
gives, reporting failures to it (a Lync client goes on to the next address, a legacy one does not).

:class:`RemoteUser` is what a Lync client does through the Access Edge on 443 (research §4.1): REGISTER →
401 → REGISTER with Digest credentials → 200, the provisioning SUBSCRIBE that returns the ``mrasUri``,
a presence SUBSCRIBE (whose NOTIFY comes back through the Edge), a SERVICE publication, IM (INVITE,
MESSAGE, BYE) and the MRAS SERVICE for A/V credentials.

Failures raise :class:`~simulator.outcome.ProbeFailure` with the reason code: TLS and socket
errors classified, 4xx/5xx as ``rejected`` (or the ``edgesim-reason`` a hop put in ``ms-diagnostics``),
no answer as ``timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import ssl
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass

from simulator.core.dns_policy import ResolverPolicy
from simulator.core.sip_element import Answered, Provisional, SendFailed, SipElement, TimedOut
from simulator.core.sip_transaction import RequestReceived, StrayAck, TransactionKey
from simulator.net.transport.sip_connection import SipConnection, diagnostic_reason, open_sip_tls, sip_connection_over
from simulator.net.transport.sip_proxy import ElementTimer
from simulator.net.transport.tls import classify_tls_error
from simulator.outcome import ProbeFailure, Reason
from simulator.wire import digest, mras
from simulator.wire.errors import MalformedMessage
from simulator.wire.sip import (
    SipRequest,
    SipResponse,
    make_request,
    make_response,
    new_branch,
    new_call_id,
    new_tag,
    parse_name_addr,
)

USER_AGENT = "edgesim-client (Lync 2013 emulation)"
DEFAULT_TIMEOUT = 32.0  # a request's deadline when the caller names none: Timer F (64·T1)
REGISTER_CONTACT_METHODS = "INVITE, MESSAGE, INFO, SUBSCRIBE, OPTIONS, BYE, CANCEL, NOTIFY, ACK, REFER, BENOTIFY"
_MRAS_URI = re.compile(r"<mrasUri>([^<]+)</mrasUri>")

InviteHandler = Callable[[str, str], Awaitable[str]]
"""A callee's answer to an INVITE or re-INVITE: (offer SDP, caller's URI) → answer SDP (see clients/call.py)."""
ByeHandler = Callable[[str], Awaitable[None]]
"""Told of a BYE (the URI of the side that hung up); the BYE is answered 200 either way."""

TlsOpener = Callable[[str], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
"""Opens a TLS connection to one address (port, context and name bound by the caller)."""


INBOX_LIMIT = 64  # unread requests from the far end a client keeps (the newest)


@dataclass
class ConnectAttempt:
    address: str
    reason: Reason | None
    detail: str = ""


class SipClient:
    """One UA on one TLS connection."""

    def __init__(self, connection: SipConnection, rng: random.Random) -> None:
        self.connection = connection
        self.rng = rng
        self.attempts: list[ConnectAttempt] = []
        self.inbox: asyncio.Queue[SipRequest] = asyncio.Queue(INBOX_LIMIT)
        self.inbox_dropped = 0  # the oldest unread requests let go for newer ones
        self._loop = asyncio.get_running_loop()
        self._core: SipElement[SipConnection, asyncio.Future[SipResponse]] = SipElement(
            rng, response_timeout=DEFAULT_TIMEOUT, report_provisional=True)
        self.on_invite: InviteHandler | None = None  # None: an INVITE is answered 200 without SDP, as before
        self.on_bye: ByeHandler | None = None
        self._provisional: dict[TransactionKey, Callable[[SipResponse], None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer = ElementTimer(self._core.get_timer, self._core.timers_started, self._on_timer)
        self._reader = self._loop.create_task(self._read())

    @classmethod
    async def connect(cls, addresses: Sequence[str], port: int, context: ssl.SSLContext, server_name: str,
                      timeout: float, rng: random.Random, *, source: str | None = None,
                      policy: ResolverPolicy | None = None, opener: TlsOpener | None = None) -> SipClient:
        """Connect to the first address that completes TLS, in ``policy`` order (all, in order, without).

        ``opener(address)`` opens the TLS stream pair itself (a lab client behind a NAT box); by default a
        plain connection from ``source``.
        """
        now = asyncio.get_running_loop().time()
        order = policy.candidates(addresses, now) if policy is not None else list(dict.fromkeys(addresses))
        attempts: list[ConnectAttempt] = []
        for address in order:
            try:
                if opener is None:
                    connection = await open_sip_tls(address, port, context, server_name, timeout, source=source)
                else:
                    reader, writer = await opener(address)
                    connection = sip_connection_over(reader, writer, address, port)
            except (OSError, ssl.SSLError, TimeoutError) as error:
                attempts.append(ConnectAttempt(address, classify_tls_error(error), f"{address}:{port}: {error}"))
                if policy is not None:
                    policy.report_failure(address, now)
                continue
            if policy is not None:
                policy.report_success(address, now)
            attempts.append(ConnectAttempt(address, None))
            client = cls(connection, rng)
            client.attempts = attempts
            return client
        if not attempts:
            raise ProbeFailure(Reason.NO_PEER, f"no address to connect to for {server_name}")
        last = attempts[-1]
        assert last.reason is not None
        tried = ", ".join(a.address for a in attempts)
        raise ProbeFailure(last.reason, f"{last.detail} (tried {tried})")

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self.connection.close()
        self._timer.cancel()

    async def wait_closed(self) -> None:
        """Return when the connection has ended (the Edge closed it, or the node went away)."""
        await asyncio.wait({self._reader})  # never raises the reader's outcome; a cancel of ours propagates

    @property
    def is_closed(self) -> bool:
        return self._reader.done()

    async def __aenter__(self) -> SipClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def local(self) -> tuple[str, int]:
        return self.connection.local

    def via(self) -> str:
        host, port = self.connection.local
        return f"SIP/2.0/TLS {host}:{port};branch={new_branch(self.rng)}"

    def build(self, method: str, uri: str, from_: str, to: str, *, call_id: str | None = None, cseq: int = 1,
              headers: Sequence[tuple[str, str]] = (), body: bytes = b"") -> SipRequest:
        """A request with a fresh Via (this connection's local address) and a From tag."""
        sender = parse_name_addr(from_)
        if sender.tag is None:
            from_ = str(sender.with_tag(new_tag(self.rng)))
        return make_request(method, uri, via=self.via(), from_=from_, to=to, call_id=call_id or new_call_id(self.rng),
                            cseq=cseq, headers=[("User-Agent", USER_AGENT), *headers], body=body)

    async def request(self, request: SipRequest, timeout: float,
                      on_provisional: Callable[[SipResponse], None] | None = None) -> SipResponse:
        """Send and wait for the final response; ProbeFailure(timeout/reset) when there is none.

        ``on_provisional`` sees each 101–199 response (a 183 with early SDP) before the final one.
        """
        future: asyncio.Future[SipResponse] = self._loop.create_future()
        key = self._core.send_request(request, self.connection, self._loop.time(), future, timeout=timeout)
        if on_provisional is not None:
            self._provisional[key] = on_provisional
        try:
            self._write()
            await self.connection.drain()
        except (OSError, ssl.SSLError) as error:
            self._core.abandon(key)
            raise ProbeFailure(classify_tls_error(error), f"{request.method}: {error}") from None
        self._timer.arm()
        try:
            return await future
        finally:
            self._provisional.pop(key, None)
            if not future.done():  # our caller gave up
                self._core.abandon(key)

    async def send(self, request: SipRequest) -> None:
        """Send without waiting (an ACK for a 2xx: no transaction, RFC 3261 §17.1.1.3)."""
        self._core.send_stateless(request, self.connection)
        try:
            self._write()
            await self.connection.drain()
        except (OSError, ssl.SSLError) as error:
            raise ProbeFailure(classify_tls_error(error), f"{request.method}: {error}") from None

    def _write(self) -> bool:
        """Write what the element queued (flushed in the loop's next turn); False when there was nothing."""
        outbox = self._core.outbox
        if not outbox:
            return False
        while outbox:
            out = outbox.popleft()
            out.peer.write(out.message.encode())
        return True

    def _dispatch(self, now: float) -> None:
        """Act on what the element reports: answer and keep requests, settle the futures of requests."""
        core = self._core
        events = core.events
        while events:
            event = events.popleft()
            if isinstance(event, Answered):
                if not event.context.done():
                    event.context.set_result(event.response)
            elif isinstance(event, Provisional):
                callback = self._provisional.get(event.key)
                if callback is not None:
                    callback(event.response)
            elif isinstance(event, RequestReceived):
                method = event.request.method
                if (method == "INVITE" and self.on_invite is not None) or (method == "BYE" and self.on_bye is not None):
                    self._spawn(self._answer(event))  # the callback may take its time; the reader goes on
                else:
                    core.respond(event.key, make_response(event.request, 200, to_tag=new_tag(self.rng)), now)
                self._keep(event.request)
            elif isinstance(event, StrayAck):
                self._keep(event.request)
            elif not event.context.done():
                event.context.set_exception(self._failure(event))

    def _keep(self, request: SipRequest) -> None:
        """Keep ``request`` for :meth:`next_request`, letting the oldest unread one go when the inbox is full."""
        inbox = self.inbox
        if inbox.full():
            inbox.get_nowait()
            self.inbox_dropped += 1
        inbox.put_nowait(request)

    def _spawn(self, coroutine: Coroutine[object, object, None]) -> None:
        task = self._loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, event: RequestReceived[SipConnection]) -> None:
        """A callee's answer through the server transaction: BYE → on_bye, 200; INVITE → on_invite(offer, caller),
        then 183 and 200 with its SDP (a re-INVITE: 200 only), Record-Route copied (RFC 3261 §12.1.1), our Contact;
        488 when the callback fails.
        """
        request = event.request
        caller = str(request.from_.uri)
        if request.method == "BYE":
            assert self.on_bye is not None
            with contextlib.suppress(Exception):
                await self.on_bye(caller)
            self._respond(event.key, make_response(request, 200, to_tag=new_tag(self.rng)))
            return
        assert self.on_invite is not None
        tag = request.to.tag or new_tag(self.rng)
        try:
            answer = (await self.on_invite(request.body.decode("utf-8", "replace"), caller)).encode()
        except Exception as error:  # the far end hears 488
            self._respond(event.key, make_response(request, 488, to_tag=tag, headers=[
                ("Warning", f'399 edgesim "{type(error).__name__}: {error}"')]))
            return
        host, port = self.connection.local
        headers = [("Contact", f"<sip:{host}:{port};transport=tls>"), ("Content-Type", "application/sdp")]
        if request.to.tag is None:
            self._respond(event.key, make_response(request, 183, to_tag=tag, headers=headers, body=answer,
                                                   copy_record_route=True))
        self._respond(event.key, make_response(request, 200, to_tag=tag, headers=headers, body=answer,
                                               copy_record_route=True))
        with contextlib.suppress(OSError, ssl.SSLError):
            await self.connection.drain()

    def _respond(self, key: TransactionKey, response: SipResponse) -> None:
        self._core.respond(key, response, self._loop.time())
        with contextlib.suppress(OSError, ssl.SSLError):
            self._write()
        self._timer.arm()

    def _failure(self, event: TimedOut[asyncio.Future[SipResponse]] | SendFailed[asyncio.Future[SipResponse]]
                 ) -> ProbeFailure:
        if isinstance(event, TimedOut):
            return ProbeFailure(Reason.TIMEOUT, f"no final response to {event.key.method} within {event.after} s")
        error = self.connection.error
        if error is None:
            return ProbeFailure(Reason.RESET, "connection closed before the response")
        return ProbeFailure(classify_tls_error(error), f"connection lost: {error}")

    def _on_timer(self, now: float) -> None:
        self._core.handle_timer(now)
        self._dispatch(now)
        with contextlib.suppress(OSError):
            self._write()  # nothing over TLS (no retransmissions), but the element decides

    async def _read(self) -> None:
        core = self._core
        connection = self.connection
        try:
            async with contextlib.aclosing(connection.messages()) as messages:
                async for message in messages:
                    now = self._loop.time()
                    core.receive(message, connection, now)
                    self._dispatch(now)
                    with contextlib.suppress(OSError, ssl.SSLError):
                        if self._write():
                            await connection.drain()
                    self._timer.arm()
        finally:
            now = self._loop.time()
            core.peer_lost(connection, now)  # RFC 3261 §17.1.4: every request still waiting fails
            self._dispatch(now)

    async def next_request(self, method: str, timeout: float) -> SipRequest:
        """The next request of ``method`` the far end sent (others are dropped while waiting)."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    request = await self.inbox.get()
                    if request.method == method:
                        return request
        except TimeoutError:
            raise ProbeFailure(Reason.TIMEOUT, f"no {method} arrived within {timeout} s") from None


def require_success(response: SipResponse, what: str) -> SipResponse:
    """The response when 2xx; otherwise ProbeFailure (the hop's reason, or ``rejected``)."""
    if 200 <= response.status < 300:
        return response
    reason = diagnostic_reason(response) or Reason.REJECTED
    diagnostics = response.headers.get("ms-diagnostics") or ""
    server = response.headers.get("server") or "?"
    raise ProbeFailure(reason, f"{what}: {response.status} {response.reason} from {server}"
                       + (f" ({diagnostics})" if diagnostics else ""))


@dataclass(frozen=True, slots=True)
class SignIn:
    challenge: SipResponse
    accepted: SipResponse


class RemoteUser:
    """A Lync remote user signed in through the Access Edge (TLS 443)."""

    def __init__(self, client: SipClient, user: str, domain: str, password: str) -> None:
        self.client = client
        self.user = user
        self.domain = domain
        self.password = password
        self.aor = f"sip:{user}@{domain}"
        self.instance = f"<urn:uuid:{client.rng.getrandbits(128):032x}>"
        self._call_id = new_call_id(client.rng)
        self._tag = new_tag(client.rng)
        self._cseq = 0
        self.mras_uri: str | None = None

    @property
    def from_(self) -> str:
        return f"<{self.aor}>;tag={self._tag}"

    def _contact(self) -> str:
        host, port = self.client.local
        return (f"<sip:{host}:{port};transport=tls;ms-opaque={self._tag}>;methods=\"{REGISTER_CONTACT_METHODS}\";"
                f'proxy=replace;+sip.instance="{self.instance}"')

    async def sign_in(self, timeout: float) -> SignIn:
        """REGISTER → 401 → REGISTER with Digest → 200 (research §4.1 item 3; Digest for NTLM/TLS-DSK)."""
        registrar = f"sip:{self.domain}"
        headers = [("Contact", self._contact()), ("Supported", "gruu-10, adhoclist, msrtc-event-categories"),
                   ("Event", "registration"), ("ms-keep-alive", "UAC;hop-hop=yes"), ("Expires", "3600")]
        self._cseq += 1
        first = await self.client.request(self.client.build("REGISTER", registrar, self.from_, f"<{self.aor}>",
                                                            call_id=self._call_id, cseq=self._cseq,
                                                            headers=headers), timeout)
        if first.status != 401:
            require_success(first, "REGISTER without credentials")
            raise ProbeFailure(Reason.PROTOCOL_ERROR, f"REGISTER without credentials accepted ({first.status}), "
                               "expected a 401 challenge")
        value = first.headers.get("www-authenticate")
        if value is None:
            raise ProbeFailure(Reason.PROTOCOL_ERROR, "401 without WWW-Authenticate")
        try:
            challenge = digest.parse_challenge(value)
            credentials = digest.answer_challenge(challenge, username=self.user, password=self.password,
                                                  method="REGISTER", uri=registrar,
                                                  cnonce=f"{self.client.rng.getrandbits(64):016x}")
        except MalformedMessage as error:
            raise ProbeFailure(Reason.PROTOCOL_ERROR, f"unusable challenge: {error.reason}") from None
        self._cseq += 1
        second = await self.client.request(self.client.build(
            "REGISTER", registrar, self.from_, f"<{self.aor}>", call_id=self._call_id, cseq=self._cseq,
            headers=[*headers, ("Authorization", credentials.to_header())]), timeout)
        require_success(second, "REGISTER with credentials")
        return SignIn(first, second)

    async def provisioning(self, timeout: float) -> str:
        """SUBSCRIBE vnd-microsoft-provisioning-v2; returns the mrasUri from the piggybacked answer."""
        request = self.client.build(
            "SUBSCRIBE", self.aor, self.from_, f"<{self.aor}>",
            headers=[("Event", "vnd-microsoft-provisioning-v2"), ("Accept", "application/vnd-microsoft-roaming-"
                     "provisioning-v2+xml"), ("Supported", "ms-piggyback-first-notify"), ("Expires", "0"),
                     ("Contact", self._contact())])
        response = require_success(await self.client.request(request, timeout), "provisioning SUBSCRIBE")
        match = _MRAS_URI.search(response.body.decode("utf-8", "replace"))
        if match is None:
            raise ProbeFailure(Reason.PROTOCOL_ERROR, "provisioning answer without mrasUri")
        self.mras_uri = match.group(1)
        return self.mras_uri

    async def subscribe_presence(self, target: str, timeout: float) -> SipRequest:
        """SUBSCRIBE presence of ``target``; returns the NOTIFY that came back through the Edge."""
        request = self.client.build("SUBSCRIBE", target, self.from_, f"<{target}>",
                                    headers=[("Event", "presence"), ("Accept", "application/pidf+xml"),
                                             ("Supported", "eventlist"), ("Expires", "3600"),
                                             ("Contact", self._contact())])
        require_success(await self.client.request(request, timeout), "presence SUBSCRIBE")
        return await self.client.next_request("NOTIFY", timeout)

    async def publish_presence(self, timeout: float) -> SipResponse:
        body = (b'<publish xmlns="http://schemas.microsoft.com/2006/09/sip/rich-presence"><publications uri="'
                + self.aor.encode() + b'"><publication categoryName="state" instance="0" container="2" '
                b'version="0" expireType="endpoint"><state xmlns="http://schemas.microsoft.com/2006/09/sip/state"'
                b' type="userState"><availability>3500</availability></state></publication></publications>'
                b"</publish>")
        request = self.client.build("SERVICE", self.aor, self.from_, f"<{self.aor}>",
                                    headers=[("Content-Type", "application/msrtc-category-publish+xml")], body=body)
        return require_success(await self.client.request(request, timeout), "presence SERVICE")

    async def instant_message(self, target: str, text: str, timeout: float) -> SipResponse:
        """INVITE (m=message) → 200 → ACK, MESSAGE → 200, BYE → 200; returns the MESSAGE's answer."""
        host, port = self.client.local
        sdp = (f"v=0\r\no=- 0 0 IN IP4 {host}\r\ns=session\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
               f"m=message {port} sip null\r\na=accept-types:text/plain\r\n").encode()
        call_id, tag = new_call_id(self.client.rng), new_tag(self.client.rng)
        from_ = f"<{self.aor}>;tag={tag}"
        invite = self.client.build("INVITE", target, from_, f"<{target}>", call_id=call_id, cseq=1,
                                   headers=[("Contact", self._contact()), ("Content-Type", "application/sdp")],
                                   body=sdp)
        answer = require_success(await self.client.request(invite, timeout), "IM INVITE")
        to = answer.headers.get("to") or f"<{target}>"
        routes = list(reversed(answer.headers.values("record-route")))  # RFC 3261 §12.1.2: UAC route set
        remote = answer.contacts[0].uri if answer.contacts and answer.contacts[0].uri is not None else target
        in_dialog = [("Route", route) for route in routes]
        await self.client.send(self.client.build("ACK", str(remote), from_, to, call_id=call_id, cseq=1,
                                                 headers=in_dialog))
        message = self.client.build("MESSAGE", str(remote), from_, to, call_id=call_id, cseq=2,
                                    headers=[*in_dialog, ("Content-Type", "text/plain; charset=UTF-8")],
                                    body=text.encode())
        delivered = require_success(await self.client.request(message, timeout), "IM MESSAGE")
        bye = self.client.build("BYE", str(remote), from_, to, call_id=call_id, cseq=3, headers=in_dialog)
        require_success(await self.client.request(bye, timeout), "IM BYE")
        return delivered

    async def request_mras(self, timeout: float, mras_uri: str | None = None,
                           location: mras.MrasLocation = mras.MrasLocation.INTERNET) -> mras.MrasResponse:
        """SERVICE to the mrasUri (research §1.3); returns the parsed credentials response."""
        uri = mras_uri or self.mras_uri or await self.provisioning(timeout)
        body = mras_request_body(self.client.rng, self.aor, uri, location)
        request = self.client.build("SERVICE", uri, self.from_, f"<{uri}>",
                                    headers=[("Content-Type", mras.CONTENT_TYPE)], body=body)
        response = require_success(await self.client.request(request, timeout), "MRAS SERVICE")
        return parse_mras_answer(response)


def parse_mras_answer(response: SipResponse) -> mras.MrasResponse:
    """The MRAS body of a 200, checked: credentials present and reasonPhrase OK."""
    if response.content_type != mras.CONTENT_TYPE:
        raise ProbeFailure(Reason.PROTOCOL_ERROR, f"MRAS answer has Content-Type {response.content_type}")
    try:
        answer = mras.parse_mras_response(response.body)
    except MalformedMessage as error:
        raise ProbeFailure(Reason.PROTOCOL_ERROR, f"bad MRAS answer: {error.reason}") from None
    if answer.credentials is None or answer.reason_phrase != "OK":
        raise ProbeFailure(Reason.REJECTED, f"MRAS refused: {answer.reason_phrase}")
    return answer


async def one_request(host: str, port: int, context: ssl.SSLContext, server_name: str, timeout: float,
                      rng: random.Random, method: str, uri: str, from_: str, to: str, *,
                      source: str | None = None, headers: Sequence[tuple[str, str]] = (),
                      body: bytes = b"") -> SipResponse:
    """Connect, send one request, return its final response (any status), close."""
    client = await SipClient.connect([host], port, context, server_name, timeout, rng, source=source)
    async with client:
        return await client.request(client.build(method, uri, from_, to, headers=headers, body=body), timeout)


def mras_request_body(rng: random.Random, identity: str, to_uri: str,
                      location: mras.MrasLocation = mras.MrasLocation.INTERNET) -> bytes:
    return mras.MrasRequest(request_id=str(rng.getrandbits(31)), from_uri=identity, to_uri=to_uri,
                            credentials_request_id=str(rng.getrandbits(31)), identity=identity,
                            location=location).to_xml()
