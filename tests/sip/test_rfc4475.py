"""RFC 4475 torture messages through the datagram parser and, one byte at a time, the stream framer.

The messages are ``tests/data/rfc4475/<name>.dat`` (see the README there); ``expected.toml`` gives, for each,
the RFC section and the class of answer the RFC's own words call for. Nothing here is derived from the code.

Mutations these tests kill: a URI parser that ends the user part at the first ``?`` (intmeth; ``?`` is
RFC 3261 user-unreserved), a header decoder that refuses a quoted NUL (intmeth), a mandatory-header check
that lets a second Call-ID/CSeq/From/To/Max-Forwards through (multi01), a framer that hands out a message
before its body is complete (clerr) or keeps reading after a framing error (ncl, mcl01), a parser that answers
a malformed response instead of dropping it (bigcode, scalarlg).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from simulator.wire.errors import MalformedMessage
from simulator.wire.sip import SipMessage, SipRequest, SipResponse, SipStreamFramer, SipUri, parse_message

DATA = Path(__file__).resolve().parent.parent / "data" / "rfc4475"
EXPECTED: dict[str, dict[str, object]] = tomllib.loads((DATA / "expected.toml").read_text(encoding="utf-8"))
MESSAGES: dict[str, bytes] = {path.stem: path.read_bytes() for path in sorted(DATA.glob("*.dat"))}
CLASSES = {"parse", "application", "reject", "discard", "reject-or-accept"}


def _outcome(data: bytes) -> SipMessage | int | None:
    """The parsed message, or the status the parser said to answer (``None``: drop)."""
    try:
        return parse_message(data)
    except MalformedMessage as exc:
        return exc.status


def _framing(data: bytes) -> tuple[int | None, int]:
    """(Content-Length declared in the head, octets after the head), read independently of the codec.

    The declared length is ``None`` when there is none or the lines disagree or are not plain digits.
    """
    head, _, body = data.partition(b"\r\n\r\n")
    values = {m.group(1).strip(b" \t") for m in re.finditer(rb"\r\n(?:content-length|l)[ \t]*:([^\r\n]*)", head, re.I)}
    if len(values) != 1:
        return None, len(body)
    (value,) = values
    return (int(value) if value.isdigit() else None), len(body)


def _one_message_on_a_stream(name: str) -> bool:
    declared, body = _framing(MESSAGES[name])
    return declared is not None and declared == body


STREAMED = sorted(n for n in MESSAGES if "stream" not in EXPECTED[n] and _one_message_on_a_stream(n))


def test_the_table_covers_every_message_and_every_parser_test_of_the_rfc() -> None:
    assert set(MESSAGES) == set(EXPECTED)
    sections = {str(row["section"]) for row in EXPECTED.values()}
    # RFC 4475 §3.1.1 has 13 valid messages, §3.1.2 has 19 invalid ones.
    assert {f"3.1.1.{i}" for i in range(1, 14)} <= sections
    assert {f"3.1.2.{i}" for i in range(1, 20)} <= sections
    for name, row in EXPECTED.items():
        assert row["expect"] in CLASSES, name
        assert ("status" in row) == (row["expect"] in ("reject", "reject-or-accept")), name
        assert row.get("stream", "same") in ("same", "wait", "close"), name


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_datagram_gets_the_answer_the_rfc_calls_for(name: str) -> None:
    row = EXPECTED[name]
    outcome = _outcome(MESSAGES[name])
    expect = row["expect"]
    if expect in ("parse", "application"):
        is_response = MESSAGES[name].startswith(b"SIP/")
        assert isinstance(outcome, SipResponse if is_response else SipRequest), (name, outcome)
    elif expect == "reject":
        assert outcome == row["status"], name
    elif expect == "discard":
        assert outcome is None, name  # RFC 3261 §18.1.2: a malformed response is dropped, never answered
    else:
        assert outcome == row["status"] or isinstance(outcome, SipRequest), (name, outcome)


@pytest.mark.parametrize("name", [n for n in sorted(MESSAGES) if EXPECTED[n]["expect"] in ("parse", "application")])
def test_accepted_messages_round_trip(name: str) -> None:
    message = parse_message(MESSAGES[name])
    if _one_message_on_a_stream(name):  # encode() adds a Content-Length where the RFC message has none
        assert parse_message(message.encode()) == message


@pytest.mark.parametrize("name", STREAMED)
def test_stream_fed_one_byte_at_a_time_frames_as_the_datagram_parses(name: str) -> None:
    data = MESSAGES[name]
    framer = SipStreamFramer()
    events: list[SipMessage | int | None] = []
    for i in range(len(data)):
        framer.feed(data[i : i + 1])
        try:
            while (event := framer.next_event()) is not None:
                assert isinstance(event, SipRequest | SipResponse)
                events.append(event)
        except MalformedMessage as exc:
            events.append(exc.status)
    assert events == [_outcome(data)]
    assert framer.buffered == 0
    assert not framer.broken  # a fault in one message leaves the stream usable


def test_content_length_beyond_the_data_waits_on_a_stream() -> None:
    # RFC 4475 §3.1.2.2 (clerr): "wait for more data on the stream"
    framer = SipStreamFramer()
    for byte in MESSAGES["clerr"]:
        framer.feed(bytes([byte]))
        assert framer.next_event() is None
    assert not framer.broken


@pytest.mark.parametrize("name", sorted(n for n in MESSAGES if EXPECTED[n].get("stream") == "close"))
def test_a_framing_error_closes_the_stream(name: str) -> None:
    # RFC 4475 §3.1.2.3 (ncl), §3.3.9 (mcl01): "the framing error is not recoverable"
    framer = SipStreamFramer()
    statuses: list[int | None] = []
    for byte in MESSAGES[name]:
        framer.feed(bytes([byte]))
        try:
            assert framer.next_event() is None
        except MalformedMessage as exc:
            statuses.append(exc.status)
    assert statuses == [EXPECTED[name]["status"]]
    assert framer.broken


# ----------------------------------------------------------------- what the RFC says the messages contain


def _request(name: str) -> SipRequest:
    message = parse_message(MESSAGES[name])
    assert isinstance(message, SipRequest)
    return message


def test_wsinv_views() -> None:
    # RFC 4475 §3.1.1.1: folding, an empty subject, long and compact forms of Via mixed, leading zeros
    request = _request("wsinv")
    assert [(v.transport, v.host, v.branch) for v in request.vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert (request.cseq.seq, request.cseq.method) == (9, "INVITE")
    assert request.headers.get("Max-Forwards") == "0068"
    assert request.headers.get("Subject") == ""
    assert request.to.tag == "1918181833n"
    assert request.from_.tag == "98asjd8"
    assert request.from_.display_name == 'J Rosenberg \\"'
    (contact,) = request.contacts
    assert contact.display_name == 'Quoted string ""'
    assert contact.param("newparam") == "newvalue"
    assert request.uri == SipUri(host="chair-dnrc.example.com", user="vivekg", params=(("unknownparam", None),))
    assert len(request.body) == 150


def test_intmeth_unusual_but_legal_characters() -> None:
    # RFC 4475 §3.1.1.2: "The Request-URI contains unusual, but legal, characters."
    request = _request("intmeth")
    assert request.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert isinstance(request.uri, SipUri)
    assert request.uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert request.uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert request.uri.host == "example.com"
    assert request.to.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"  # quoted-pairs, RFC 3261 §25.1
    assert isinstance(request.to.uri, SipUri)
    assert request.to.uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert request.from_.tag == "_token~1'+`*%!-."
    assert request.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"


def test_escapes_stay_as_received() -> None:
    # RFC 4475 §3.1.1.5: % is not an escape in a method or a header name
    request = _request("esc02")
    assert request.method == "RE%47IST%45R"
    assert len(request.contacts) == 2  # "two Contact header field values, not three"
    # RFC 4475 §3.1.1.4: two distinct contacts
    contacts = _request("escnull").contacts
    assert [c.uri for c in contacts] == [SipUri(host="host5.example.com", user="%00"),
                                         SipUri(host="host5.example.com", user="%00%00")]
    # RFC 4475 §3.1.1.9: the user part is "user;par=u@example.net" (kept escaped here)
    uri = _request("semiuri").uri
    assert isinstance(uri, SipUri)
    assert (uri.user, uri.host) == ("user;par=u%40example.net", "example.com")


def test_datagram_trailing_octets_are_ignored() -> None:
    # RFC 4475 §3.1.1.8, RFC 3261 §18.3
    request = _request("dblreq")
    assert (request.method, request.body) == ("REGISTER", b"")


def test_other_valid_messages() -> None:
    assert [v.transport for v in _request("transports").vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]
    assert _request("lwsdisp").from_.display_name == "caller"
    mpart = _request("mpart01")
    assert len(mpart.body) == 553 and b"\x00" in mpart.body  # RFC 4475 §3.1.1.11: binary part with NULs
    unreason = parse_message(MESSAGES["unreason"])
    assert isinstance(unreason, SipResponse)
    assert unreason.reason == "= 2**3 * 5**2 но сто девяносто девять - простое"
    noreason = parse_message(MESSAGES["noreason"])
    assert isinstance(noreason, SipResponse)
    assert (noreason.status, noreason.reason) == (100, "")
    assert len(_request("longreq").vias) == 34
