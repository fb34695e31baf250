"""HTTP Digest authentication for SIP (RFC 2617 §3.2, RFC 3261 §22.4), MD5 with ``qop=auth``.

A registrar calls :func:`make_challenge` and puts ``challenge.to_header()`` in a 401's
WWW-Authenticate (or a 407's Proxy-Authenticate). A client parses it with :func:`parse_challenge`,
answers with :func:`answer_challenge` and sends ``credentials.to_header()`` in Authorization. The
registrar parses that with :func:`parse_credentials` and checks it with :func:`verify`. Nonce freshness
and nonce-count replay tracking are the registrar's business (it knows ``now``); this module is pure.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from dataclasses import dataclass

from simulator.wire.errors import MalformedMessage
from simulator.wire.sip import quote, split_unquoted, unquote

SCHEME = "Digest"

# Parameters written as quoted-strings (RFC 2617 §3.2.1, §3.2.2); the others are tokens.
_QUOTED = frozenset({"realm", "nonce", "opaque", "domain", "username", "uri", "response", "cnonce"})


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def ha1(username: str, realm: str, password: str) -> str:
    """H(A1) = MD5(username:realm:password) (RFC 2617 §3.2.2.2); registrars may store only this."""
    return _md5(f"{username}:{realm}:{password}")


def compute_response(
    *,
    ha1_hex: str,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
) -> str:
    """request-digest of RFC 2617 §3.2.2.1 (``qop=auth`` or the RFC 2069 form when ``qop`` is None)."""
    ha2 = _md5(f"{method}:{uri}")  # RFC 2617 §3.2.2.3, qop=auth
    if qop is None:
        return _md5(f"{ha1_hex}:{nonce}:{ha2}")
    if qop != "auth" or nc is None or cnonce is None:
        raise MalformedMessage(f"unsupported digest qop {qop!r}", 400)
    return _md5(f"{ha1_hex}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


def _parse_auth_params(value: str) -> dict[str, str]:
    scheme, _, rest = value.strip(" \t").partition(" ")
    if scheme.lower() != SCHEME.lower():
        raise MalformedMessage(f"not a Digest header: {scheme!r}", 400)
    params: dict[str, str] = {}
    for item in split_unquoted(rest, ","):
        if not item.strip(" \t"):
            continue
        name, eq, raw = item.partition("=")
        name = name.strip(" \t").lower()
        if not eq or not name:
            raise MalformedMessage(f"bad auth-param {item!r}", 400)
        params[name] = unquote(raw.strip(" \t"))
    return params


def _format(params: list[tuple[str, str | None]]) -> str:
    parts = [f"{name}={quote(value) if name in _QUOTED else value}" for name, value in params if value is not None]
    return f"{SCHEME} " + ", ".join(parts)


@dataclass(frozen=True, slots=True)
class DigestChallenge:
    """WWW-Authenticate / Proxy-Authenticate: Digest … (RFC 2617 §3.2.1)."""

    realm: str
    nonce: str
    opaque: str | None = None
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ("auth",)
    stale: bool = False

    def to_header(self) -> str:
        """Header value."""
        items: list[tuple[str, str | None]] = [("realm", self.realm), ("nonce", self.nonce)]
        items.append(("opaque", self.opaque))
        items.append(("stale", "TRUE" if self.stale else None))
        items.append(("algorithm", self.algorithm))
        text = _format(items)
        if self.qop:
            text += f", qop={quote(','.join(self.qop))}"
        return text


def parse_challenge(value: str) -> DigestChallenge:
    """Parse a WWW-Authenticate/Proxy-Authenticate Digest value (MalformedMessage 400 when unusable)."""
    params = _parse_auth_params(value)
    if "realm" not in params or "nonce" not in params:
        raise MalformedMessage("Digest challenge without realm or nonce", 400)
    qop = tuple(q.strip(" \t") for q in params["qop"].split(",")) if "qop" in params else ()
    return DigestChallenge(
        realm=params["realm"],
        nonce=params["nonce"],
        opaque=params.get("opaque"),
        algorithm=params.get("algorithm", "MD5"),
        qop=qop,
        stale=params.get("stale", "").lower() == "true",
    )


@dataclass(frozen=True, slots=True)
class DigestCredentials:
    """Authorization / Proxy-Authorization: Digest … (RFC 2617 §3.2.2)."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    qop: str | None = None
    nc: str | None = None
    cnonce: str | None = None
    opaque: str | None = None

    def to_header(self) -> str:
        """Header value."""
        return _format(
            [
                ("username", self.username),
                ("realm", self.realm),
                ("nonce", self.nonce),
                ("uri", self.uri),
                ("response", self.response),
                ("algorithm", self.algorithm),
                ("qop", self.qop),
                ("nc", self.nc),
                ("cnonce", self.cnonce),
                ("opaque", self.opaque),
            ]
        )


def parse_credentials(value: str) -> DigestCredentials:
    """Parse an Authorization/Proxy-Authorization Digest value (MalformedMessage 400 when unusable)."""
    params = _parse_auth_params(value)
    missing = [p for p in ("username", "realm", "nonce", "uri", "response") if p not in params]
    if missing:
        raise MalformedMessage(f"Digest credentials without {missing[0]}", 400)
    return DigestCredentials(
        username=params["username"],
        realm=params["realm"],
        nonce=params["nonce"],
        uri=params["uri"],
        response=params["response"],
        algorithm=params.get("algorithm", "MD5"),
        qop=params.get("qop"),
        nc=params.get("nc"),
        cnonce=params.get("cnonce"),
        opaque=params.get("opaque"),
    )


def make_challenge(realm: str, rng: random.Random, *, stale: bool = False) -> DigestChallenge:
    """A fresh challenge with a random nonce and opaque, ``qop="auth"``."""
    return DigestChallenge(
        realm=realm,
        nonce=f"{rng.getrandbits(128):032x}",
        opaque=f"{rng.getrandbits(64):016x}",
        stale=stale,
    )


def answer_challenge(
    challenge: DigestChallenge,
    *,
    username: str,
    password: str,
    method: str,
    uri: str,
    cnonce: str,
    nonce_count: int = 1,
) -> DigestCredentials:
    """Credentials answering ``challenge`` (qop=auth when offered, RFC 2069 form otherwise)."""
    if challenge.algorithm.upper() != "MD5":
        raise MalformedMessage(f"unsupported digest algorithm {challenge.algorithm!r}", 400)
    qop = "auth" if "auth" in challenge.qop else None
    nc = f"{nonce_count:08x}" if qop else None
    response = compute_response(
        ha1_hex=ha1(username, challenge.realm, password),
        method=method,
        uri=uri,
        nonce=challenge.nonce,
        qop=qop,
        nc=nc,
        cnonce=cnonce if qop else None,
    )
    return DigestCredentials(
        username=username,
        realm=challenge.realm,
        nonce=challenge.nonce,
        uri=uri,
        response=response,
        algorithm=challenge.algorithm,
        qop=qop,
        nc=nc,
        cnonce=cnonce if qop else None,
        opaque=challenge.opaque,
    )


def verify(credentials: DigestCredentials, *, ha1_hex: str, method: str) -> bool:
    """True when ``credentials.response`` is right for ``method`` (constant-time compare).

    The caller also checks that ``credentials.nonce`` is one it issued and still fresh, that ``realm``
    is its own, and that ``uri`` matches the Request-URI (RFC 3261 §22.4).
    """
    try:
        expected = compute_response(
            ha1_hex=ha1_hex,
            method=method,
            uri=credentials.uri,
            nonce=credentials.nonce,
            qop=credentials.qop,
            nc=credentials.nc,
            cnonce=credentials.cnonce,
        )
    except MalformedMessage:
        return False
    return hmac.compare_digest(expected.encode(), credentials.response.lower().encode("utf-8"))
