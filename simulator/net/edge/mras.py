"""The A/V Authentication service (MRAS) on the Edge's internal MTLS 5062 (I5).

It answers SIP SERVICE ``application/msrtc-media-relay-auth+xml`` from the Front End or Director with
time-limited A/V credentials and the pool's ``mediaRelayList`` (research-lync-edge §1.3), and issues the
credentials into the pool's :class:`~simulator.core.credentials.CredentialStore` that every A/V Edge checks.
Given the pool's ``secret`` (the A/V Edges run in worker processes, which share no store), it issues
:func:`~simulator.core.credentials.derived_credential` ones instead: HMAC of the secret, which every worker
verifies on its own (they are recorded in the store as well).
"""

from __future__ import annotations

import contextlib
import random
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from simulator.core.credentials import CredentialStore, IssuedCredential, derived_credential
from simulator.net.edge.access_edge import SERVER_HEADER
from simulator.net.transport.sip_connection import SipConnection, SipTlsListener, format_diagnostic
from simulator.wire import mras
from simulator.wire.errors import MalformedMessage
from simulator.wire.sip import SipRequest, SipResponse, make_response

# -------------------------------------------------------------------------------------------- MRAS


@dataclass(frozen=True, slots=True)
class MrasConfig:
    node: str
    relays: tuple[mras.MediaRelay, ...]
    max_duration: int = mras.DEFAULT_DURATION_MINUTES


class MrasService:
    """The A/V Authentication service on internal 5062: SERVICE (MRAS body) → credentials + relays.

    ``clock`` gives Unix seconds; issued credentials expire at ``clock() + duration``, so it must be the clock
    the A/V Edges check them with (the lab passes :func:`~simulator.net.edge.av_edge.loop_unix_time`, the
    clock of the loop they all run on). Standalone, it defaults to the wall clock.
    """

    def __init__(self, config: MrasConfig, host: str, port: int, context: ssl.SSLContext,
                 internal_peers: frozenset[str], store: CredentialStore, rng: random.Random,
                 clock: Callable[[], float] = time.time, secret: str | None = None) -> None:
        self.config = config
        self._secret = secret
        self._store = store
        self._rng = rng
        self._clock = clock
        self.issued = 0
        self.refused: Counter[str] = Counter()
        self.listener = SipTlsListener("mras-5062", host, port, context, self._serve, side="mras",
                                       allowed_peers=internal_peers)

    @property
    def running(self) -> bool:
        return self.listener.running

    async def start(self) -> None:
        await self.listener.start()

    async def stop(self) -> None:
        await self.listener.stop()

    async def _serve(self, connection: SipConnection) -> None:
        async with contextlib.aclosing(connection.messages()) as messages:
            async for message in messages:
                if isinstance(message, SipRequest):
                    with contextlib.suppress(OSError, ssl.SSLError):
                        await connection.send(self.answer(message))

    def answer(self, request: SipRequest) -> SipResponse:
        """The response to one request (pure but for the store and the RNG)."""
        headers = [("Server", f"{SERVER_HEADER}/{self.config.node} mras")]
        tag = f"{self._rng.getrandbits(32):08x}"
        if request.method != "SERVICE":
            self.refused["method"] += 1
            return make_response(request, 405, to_tag=tag, headers=[*headers, ("Allow", "SERVICE")])
        if request.content_type != mras.CONTENT_TYPE:
            self.refused["content-type"] += 1
            return make_response(request, 415, to_tag=tag, headers=[*headers, ("Accept", mras.CONTENT_TYPE)])
        try:
            body = mras.parse_mras_request(request.body)
        except MalformedMessage as error:
            self.refused["malformed"] += 1
            return make_response(request, 400, to_tag=tag, headers=[*headers, format_diagnostic(1000, error.reason)])
        duration = max(1, min(body.duration, self.config.max_duration))
        expires_at = self._clock() + duration * 60
        if self._secret is not None:
            credential = derived_credential(self._secret, body.identity, expires_at)
        else:
            credential = IssuedCredential(f"{self._rng.getrandbits(160):040x}", f"{self._rng.getrandbits(128):032x}",
                                          expires_at, body.identity)
        self._store.issue(credential)
        username, password = credential.username, credential.password
        self.issued += 1
        answer = mras.MrasResponse(
            request_id=body.request_id, from_uri=body.to_uri, to_uri=body.from_uri,
            credentials_request_id=body.credentials_request_id,
            credentials=mras.MrasCredentials(username, password, duration), relays=self.config.relays)
        return make_response(request, 200, to_tag=tag, headers=[*headers, ("Content-Type", mras.CONTENT_TYPE)],
                             body=answer.to_xml())

