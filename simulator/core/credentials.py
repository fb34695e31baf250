"""The long-term TURN credentials an A/V Edge accepts, and where they come from.

Three sources, checked in this order by :meth:`CredentialStore.password_for`:

* **static** users (``edgesim serve av-edge --user U:P``);
* **issued** credentials — what the Access Edge's A/V Authentication service (MRAS, SIP 5062) hands
  out: a username/password pair valid until ``expires_at`` (MRAS ``duration`` minutes; 480 by default);
  one store is shared by every A/V Edge of a pool, as MRAS credentials are valid on any node;
* **REST API** ephemeral credentials (draft-uberti-behave-turn-rest, as coturn's ``use-auth-secret``;
  :func:`derived_credential` issues MRAS credentials this way, for A/V Edges running several workers):
  username ``"<expiry unix time>:<user>"``, password ``base64(HMAC-SHA1(secret, username))``.

Sans-I/O: ``now`` is passed in (seconds, the same clock the TURN core runs on).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class IssuedCredential:
    username: str
    password: str
    expires_at: float
    identity: str = ""  # the SIP URI it was issued to (MRAS credentialsRequest/identity)


def rest_password(secret: str, username: str) -> str:
    """The REST API password of ``username`` under ``secret``."""
    digest = hmac.new(secret.encode("utf-8"), username.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def derived_credential(secret: str, identity: str, expires_at: float) -> IssuedCredential:
    """An MRAS credential any A/V Edge process holding ``secret`` can verify without a shared store.

    The username encodes the expiry (``"<expiry unix time>:<identity>"``) and the password is
    ``base64(HMAC-SHA1(secret, username))``, coturn's REST API scheme (``use-auth-secret``): a store built
    with ``rest_secret=secret`` accepts it until ``expires_at`` (whole seconds), whichever worker checks it.
    """
    expiry = int(expires_at)
    username = f"{expiry}:{identity}"
    return IssuedCredential(username, rest_password(secret, username), float(expiry), identity)


class CredentialStore:
    """Usernames → passwords for the TURN long-term mechanism (RFC 8489 §9.2)."""

    def __init__(self, rest_secret: str | None = None) -> None:
        self.rest_secret = rest_secret
        self._static: dict[str, str] = {}
        self._issued: dict[str, IssuedCredential] = {}

    def add_static(self, username: str, password: str) -> None:
        self._static[username] = password

    def issue(self, credential: IssuedCredential) -> None:
        """Record a credential handed out by MRAS; it is accepted until ``expires_at``."""
        self._issued[credential.username] = credential

    def issued(self, username: str) -> IssuedCredential | None:
        return self._issued.get(username)

    def password_for(self, username: str, now: float) -> str | None:
        """The password to check ``username``'s MESSAGE-INTEGRITY with, or None (unknown or expired)."""
        password = self._static.get(username)
        if password is not None:
            return password
        issued = self._issued.get(username)
        if issued is not None:
            if issued.expires_at > now:
                return issued.password
            del self._issued[username]
            return None
        if self.rest_secret is not None:
            expiry, sep, _ = username.partition(":")
            if sep and expiry.isdigit() and int(expiry) > now:
                return rest_password(self.rest_secret, username)
        return None

    def expire(self, now: float) -> int:
        """Forget issued credentials past their expiry; returns how many went."""
        stale = [name for name, credential in self._issued.items() if credential.expires_at <= now]
        for name in stale:
            del self._issued[name]
        return len(stale)

    def __len__(self) -> int:
        return len(self._static) + len(self._issued)
