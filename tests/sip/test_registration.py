"""registrar_address_problem: what a registrar answers 400 for in a REGISTER that parsed.

Expected values come from RFC 3261 §10.2 / §6 (To and From carry addresses-of-record, which are SIP or SIPS
URIs) and RFC 4475 §3.3.4 (a registrar answers unksm2 with 400). Mutations killed: checking To only, checking
From only, treating sips as foreign, refusing in the parser instead (unksm2 would stop parsing).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from simulator.wire.sip import SipRequest, make_request, parse_message, registrar_address_problem

TORTURE = Path(__file__).resolve().parent.parent / "data" / "rfc4475"


def _register(to: str, from_: str) -> SipRequest:
    return make_request(
        "REGISTER",
        "sip:contoso.com",
        via="SIP/2.0/TLS 192.0.2.1:5061;branch=z9hG4bK1",
        from_=from_,
        to=to,
        call_id="reg1",
        cseq=1,
    )


def test_rfc4475_unksm2_parses_and_a_registrar_refuses_it() -> None:
    request = parse_message((TORTURE / "unksm2.dat").read_bytes())
    assert isinstance(request, SipRequest)
    problem = registrar_address_problem(request)
    assert problem is not None and problem.startswith("To ")


@pytest.mark.parametrize("name", ["cparam01", "cparam02", "regescrt", "escnull", "regaut01"])
def test_rfc4475_registers_with_sip_addresses_are_fine(name: str) -> None:
    request = parse_message((TORTURE / f"{name}.dat").read_bytes())
    assert isinstance(request, SipRequest)
    assert registrar_address_problem(request) is None


@pytest.mark.parametrize(
    ("to", "from_", "culprit"),
    [
        ("<sip:alice@contoso.com>", "<sip:alice@contoso.com>;tag=1", None),
        ("<sips:alice@contoso.com>", "<sips:alice@contoso.com>;tag=1", None),
        ("<SIP:alice@contoso.com>", "<Sips:alice@contoso.com>;tag=1", None),  # schemes are case-insensitive
        ("<tel:+14255550100>", "<sip:alice@contoso.com>;tag=1", "To"),
        ("isbn:2983792873", "<sip:alice@contoso.com>;tag=1", "To"),
        ("<sip:alice@contoso.com>", "<http://www.example.com>;tag=1", "From"),
        ("<mailto:alice@contoso.com>", "<http://www.example.com>;tag=1", "To"),
    ],
)
def test_from_and_to_must_be_sip_or_sips(to: str, from_: str, culprit: str | None) -> None:
    problem = registrar_address_problem(_register(to, from_))
    if culprit is None:
        assert problem is None
    else:
        assert problem is not None and problem.startswith(culprit + " ")
