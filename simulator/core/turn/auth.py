"""Long-term-credential authentication for TURN and MS-TURN: nonces, keys, the 401/438 challenges.

Nonces are stateless: ``<expiry hex>-<HMAC(server secret, expiry, client IP)>``, so nothing is stored
per unauthenticated client and an expired nonce is a 438 (RFC 8656 §5 / RFC 8489 §9.2.4). Long-term
keys are cached per (username, password), so an allocation costs one MD5 at most once per user.

:class:`Authenticator` is a plain collaborator of the server: it keeps its own caches, emits nothing, and
answers a request either by filling in :attr:`Request.auth` or by returning/raising a :class:`Reply`.
"""

from __future__ import annotations

import hmac
import itertools
from typing import Any, Final

from simulator.core.credentials import CredentialStore
from simulator.core.turn.request import REASONS, Auth, Reply, Request
from simulator.core.turn.state import TurnServerConfig
from simulator.wire import msturn, stun, turn
from simulator.wire.stun import Address, Attribute, Message, MessageClass, attr

_NONCE_CACHE_SIZE: Final = 65536
_NONCE_STEPS: Final = 60  # a host's nonce string changes this many times per nonce lifetime (every 60 s at 1 h)
_EXPIRED_DROPPED: Final = 8  # expired validated nonces forgotten per insertion, at most


class Authenticator:
    """Checks MESSAGE-INTEGRITY against the credential store and writes the challenges of one server."""

    def __init__(self, config: TurnServerConfig, credentials: CredentialStore, secret: bytes) -> None:
        self.config = config
        self.credentials = credentials
        self._secret = secret
        # Expiries are floored to a step, so one host is handed one nonce per step rather than one per second: the
        # caches below then hold a few entries per host, not one per second of churn (the soak's slow growth).
        self._nonce_step = max(1, int(config.nonce_lifetime // _NONCE_STEPS))
        self._keys: dict[tuple[Any, ...], bytes] = {}
        self._nonce_by_host: dict[str, tuple[int, str]] = {}  # host -> (expiry, nonce) last handed out
        self._good_nonces: dict[tuple[str, str], int] = {}  # (nonce, host) with a valid MAC -> expiry
        self._challenges: dict[tuple[str, int], tuple[int, bytes]] = {}  # (host, method) -> (expiry, 401)
        self.failures: dict[str, int] = {}  # signed requests refused, by reason (the first 401 is no failure)
        alternate = config.alternate_host or config.public_host
        self._public_udp = Address(alternate, config.udp_port)
        self._public_tcp = Address(alternate, config.tcp_port)

    def use_secret(self, secret: bytes) -> None:
        """Sign nonces with ``secret`` from now on (the workers of one ``serve av-edge --workers N`` share one,
        so a nonce handed out by one worker is valid on every other); forgets what the old secret made."""
        self._secret = secret
        self._nonce_by_host.clear()
        self._good_nonces.clear()
        self._challenges.clear()

    def _expiry(self, now: float) -> int:
        """When a nonce handed out at ``now`` expires: the lifetime later, floored to the step (never later)."""
        step = self._nonce_step
        return int(now + self.config.nonce_lifetime) // step * step

    def make_nonce(self, host: str, now: float) -> str:
        """The nonce for ``host`` this step (the same string for the same host and expiry)."""
        expiry = self._expiry(now)
        last = self._nonce_by_host.get(host)
        if last is not None and last[0] == expiry:
            return last[1]  # same host, same second: the same nonce (it is a function of both)
        mac = stun.hmac_digest(self._secret, f"{expiry:x}/{host}".encode(), "sha1").hex()[:16]
        nonce = f"{expiry:x}-{mac}"
        if len(self._nonce_by_host) >= _NONCE_CACHE_SIZE:
            self._nonce_by_host.clear()
        self._nonce_by_host[host] = (expiry, nonce)
        return nonce

    def nonce_valid(self, nonce: str, host: str, now: float) -> bool:
        """True when ``nonce`` was made by this server for ``host`` and has not expired."""
        expiry = self._good_nonces.get((nonce, host))
        if expiry is None:
            stamp, sep, mac = nonce.partition("-")
            if not sep or len(mac) != 16:
                return False
            try:
                expiry = int(stamp, 16)
            except ValueError:
                return False
            good = stun.hmac_digest(self._secret, f"{stamp}/{host}".encode(), "sha1").hex()[:16]
            if not hmac.compare_digest(good, mac):
                return False
            # Inserted in about expiry order: forget a few expired ones from the front (a stale nonce is checked
            # by MAC again and fails on its expiry), the whole cache only if it still fills.
            good_nonces = self._good_nonces
            for key in list(itertools.islice(good_nonces, _EXPIRED_DROPPED)):
                if good_nonces[key] > now:
                    break
                del good_nonces[key]
            if len(good_nonces) >= _NONCE_CACHE_SIZE:
                good_nonces.clear()
            self._good_nonces[(nonce, host)] = expiry  # ours and untampered: only the expiry is left to check
        return expiry > now

    def challenge_bytes(self, data: bytes, host: str, now: float) -> bytes:
        """The 401 to an unsigned RFC 8656 request: built once per host and nonce step, then spliced."""
        expiry = self._expiry(now)
        method = data[1]
        cached = self._challenges.get((host, method))
        if cached is None or cached[0] != expiry:
            nonce = self.make_nonce(host, now)
            template = Message(
                method,
                MessageClass.ERROR,
                bytes(12),
                (
                    Attribute(stun.AttrType.ERROR_CODE, stun.ErrorCode(401, REASONS[401])),
                    attr(stun.REALM, self.config.realm),
                    attr(stun.NONCE, nonce),
                ),
                turn.RFC,
            ).serialize()
            if len(self._challenges) >= _NONCE_CACHE_SIZE:
                self._challenges.clear()
            cached = self._challenges[(host, method)] = (expiry, template)
        template = cached[1]
        return template[:4] + data[4:20] + template[20:]

    def challenge(self, req: Request, code: int, now: float) -> Reply:
        """401/438 with REALM and a fresh NONCE (RFC 8489 §9.2.4); MS-TURN adds ALTERNATE-SERVER."""
        nonce = self.make_nonce(req.client.host, now)
        if req.ms:
            public = self._public_tcp if req.stream is not None else self._public_udp
            # MS-TURN 2.2.2.x: the 401 names the answering node's public address, which pins the
            # client to this pool member behind DNS load balancing (research-lync-edge.md §2.2).
            return Reply(
                code,
                REASONS[code],
                attr(msturn.REALM, self.config.realm),
                attr(msturn.NONCE, nonce),
                attr(msturn.ALTERNATE_SERVER, public),
            )
        return Reply(code, REASONS[code], attr(stun.REALM, self.config.realm), attr(stun.NONCE, nonce))

    def authenticate(self, req: Request, now: float) -> None:
        """Set ``req.auth`` and ``req.integrity`` from a valid signature, else raise the challenge."""
        msg = req.msg
        ms = req.ms
        mi_spec = msturn.MESSAGE_INTEGRITY if ms else stun.MESSAGE_INTEGRITY
        if not msg.has(mi_spec):
            raise self.challenge(req, 401, now)  # RFC 8489 §9.2.4: no MESSAGE-INTEGRITY
        username = msg.get(msturn.USERNAME if ms else stun.USERNAME)
        realm = msg.get(msturn.REALM if ms else stun.REALM)
        nonce = msg.get(msturn.NONCE if ms else stun.NONCE)
        if username is None or realm is None or nonce is None:
            self._failed("missing_attributes")
            raise Reply(400, "Bad Request")  # RFC 8489 §9.2.4: MI without USERNAME/REALM/NONCE
        if not self.nonce_valid(nonce, req.client.host, now):
            self._failed("stale_nonce")
            raise self.challenge(req, 438, now)  # RFC 8489 §9.2.4: stale nonce
        password = self.credentials.password_for(username, now)
        if password is None or realm != self.config.realm:
            self._failed("unknown_user" if password is None else "wrong_realm")
            raise self.challenge(req, 401, now)
        version = msg.get(msturn.MS_VERSION) if ms else None
        key = self.key(ms, version, username, realm, password, nonce)
        if not stun.verify_integrity(msg, key):
            self._failed("bad_integrity")
            raise self.challenge(req, 401, now)  # RFC 8489 §9.2.4: bad MESSAGE-INTEGRITY
        req.auth = Auth(username, key)
        req.integrity = msturn.integrity_for(version) if ms else stun.IntegrityAlgorithm.SHA1

    def _failed(self, reason: str) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + 1

    def key(self, ms: bool, version: int | None, username: str, realm: str, password: str, nonce: str) -> bytes:
        """The long-term key (RFC 8489 §9.2.2) or the MS-TURN key of this MS-VERSION, cached."""
        if ms and (version or 1) >= 3:
            ckey: tuple[Any, ...] = ("ms3", username, password, nonce)
        else:
            ckey = (ms, username, password)
        key = self._keys.get(ckey)
        if key is None:
            if len(self._keys) > 100_000:
                self._keys.clear()
            if ms:
                key = msturn.key_for(version, username, realm, password, nonce)
            else:
                key = stun.long_term_key(username, realm, password)  # RFC 8489 §9.2.2
            self._keys[ckey] = key
        return key
