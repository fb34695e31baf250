from __future__ import annotations

import base64
import hashlib
import hmac

from simulator.core.credentials import CredentialStore, IssuedCredential, rest_password


def test_static_issued_and_rest_credentials() -> None:
    store = CredentialStore(rest_secret="s3cret")
    store.add_static("alice", "wonderland")
    store.issue(IssuedCredential("mras-1", "pw-1", expires_at=100.0, identity="sip:bob@contoso.com"))
    assert store.password_for("alice", now=1e9) == "wonderland"
    assert store.password_for("mras-1", now=99.9) == "pw-1"
    assert store.password_for("mras-1", now=100.0) is None  # expired, and forgotten
    assert store.issued("mras-1") is None
    assert store.password_for("nobody", now=0) is None
    username = "2000:carol"
    expected = base64.b64encode(hmac.new(b"s3cret", username.encode(), hashlib.sha1).digest()).decode()
    assert rest_password("s3cret", username) == expected
    assert store.password_for(username, now=1999) == expected
    assert store.password_for(username, now=2000) is None  # the expiry in the name has passed
    assert store.password_for("x:carol", now=0) is None


def test_expire_counts_what_went() -> None:
    store = CredentialStore()
    for index in range(5):
        store.issue(IssuedCredential(f"u{index}", "p", expires_at=float(index)))
    assert store.expire(now=2.5) == 3
    assert len(store) == 2
