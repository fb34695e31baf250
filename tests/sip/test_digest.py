"""Digest (RFC 2617 / RFC 3261 §22.4): known answer, challenge → response → verify."""

from __future__ import annotations

import random

import pytest

from simulator.wire.digest import (
    DigestChallenge,
    answer_challenge,
    compute_response,
    ha1,
    make_challenge,
    parse_challenge,
    parse_credentials,
    verify,
)
from simulator.wire.errors import MalformedMessage
from simulator.wire.sip import parse_message
from tests.sip.corpus import ALL


def test_rfc2617_section_3_5_known_answer() -> None:
    response = compute_response(
        ha1_hex=ha1("Mufasa", "testrealm@host.com", "Circle Of Life"),
        method="GET",
        uri="/dir/index.html",
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        qop="auth",
        nc="00000001",
        cnonce="0a4f113b",
    )
    assert response == "6629fae49393a05397450978507c4ef1"


def test_rfc2617_example_header_parses() -> None:
    creds = parse_credentials(
        'Digest username="Mufasa", realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", '
        'uri="/dir/index.html", qop=auth, nc=00000001, cnonce="0a4f113b", '
        'response="6629fae49393a05397450978507c4ef1", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    assert verify(creds, ha1_hex=ha1("Mufasa", "testrealm@host.com", "Circle Of Life"), method="GET")
    assert not verify(creds, ha1_hex=ha1("Mufasa", "testrealm@host.com", "circle of life"), method="GET")
    assert not verify(creds, ha1_hex=ha1("Mufasa", "testrealm@host.com", "Circle Of Life"), method="POST")


def test_register_challenge_round_trip() -> None:
    challenge = make_challenge("contoso.com", random.Random(1))
    header = challenge.to_header()
    assert header.startswith("Digest ") and 'qop="auth"' in header
    parsed = parse_challenge(header)
    assert parsed == challenge
    creds = answer_challenge(
        parsed, username="alice", password="P@ss, word", method="REGISTER", uri="sip:contoso.com", cnonce="c0ffee"
    )
    back = parse_credentials(creds.to_header())
    assert back == creds
    assert (back.qop, back.nc, back.opaque) == ("auth", "00000001", challenge.opaque)
    assert verify(back, ha1_hex=ha1("alice", "contoso.com", "P@ss, word"), method="REGISTER")
    assert not verify(back, ha1_hex=ha1("alice", "contoso.com", "wrong"), method="REGISTER")


def test_rfc2069_form_without_qop() -> None:
    challenge = DigestChallenge(realm="r", nonce="n", qop=())
    creds = answer_challenge(challenge, username="u", password="p", method="REGISTER", uri="sip:r", cnonce="c")
    assert creds.qop is None and creds.cnonce is None
    assert verify(parse_credentials(creds.to_header()), ha1_hex=ha1("u", "r", "p"), method="REGISTER")


def test_challenge_in_a_real_401() -> None:
    response = parse_message(ALL["register-401"])
    digest = [v for v in response.headers.values("WWW-Authenticate") if v.startswith("Digest")]
    challenge = parse_challenge(digest[0])
    assert (challenge.realm, challenge.opaque, challenge.qop) == ("contoso.com", "0123456789abcdef", ("auth",))


@pytest.mark.parametrize(
    "value", ['NTLM realm="x"', 'Digest nonce="n"', 'Digest realm="r", nonce="unterminated', "Digest realm"]
)
def test_bad_headers(value: str) -> None:
    with pytest.raises(MalformedMessage):
        parse_challenge(value)


def test_verify_never_raises_on_odd_input() -> None:
    creds = parse_credentials('Digest username="u", realm="r", nonce="n", uri="sip:r", response="\u00e9", qop=auth-int')
    assert not verify(creds, ha1_hex=ha1("u", "r", "p"), method="REGISTER")
