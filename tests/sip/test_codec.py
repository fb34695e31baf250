"""SIP codec: corpus round trips, typed views, bad input → the right status, builders."""

from __future__ import annotations

import random

import pytest

from simulator.wire.errors import MalformedMessage
from simulator.wire.mras import CONTENT_TYPE as MRAS_CONTENT_TYPE
from simulator.wire.mras import parse_mras_request, parse_mras_response
from simulator.wire.sip import (
    AbsoluteUri,
    CSeq,
    Headers,
    SipRequest,
    SipResponse,
    SipUri,
    canonical_name,
    make_ack,
    make_request,
    make_response,
    new_branch,
    parse_message,
    parse_name_addr,
    parse_uri,
    parse_via,
)
from tests.sip.corpus import ALL


@pytest.mark.parametrize("name", sorted(ALL))
def test_corpus_round_trips_byte_for_byte(name: str) -> None:
    data = ALL[name]
    message = parse_message(data)
    assert message.encode() == data
    assert parse_message(message.encode()) == message


def test_register_views() -> None:
    reg = parse_message(ALL["register-initial"])
    assert isinstance(reg, SipRequest)
    assert reg.method == "REGISTER"
    assert reg.uri == SipUri(host="contoso.com")
    assert reg.cseq == CSeq(1, "REGISTER")
    assert reg.from_.tag == "7d2ea2b1f5"
    assert reg.from_.param("epid") == "3c5e0b1a2d"
    assert reg.to.tag is None
    # repeated lines and comma lists merge, in order
    assert reg.headers.values("Supported") == [
        "gruu-10",
        "adhoclist",
        "msrtc-event-categories",
        "com.microsoft.msrtc.presence",
        "ms-forking",
        "ms-cluster-failover",
        "ms-userservices-state-notification",
    ]
    assert reg.headers.get("MS-KEEP-ALIVE") == "UAC;hop-hop=yes"
    (contact,) = reg.contacts
    assert contact.sip_uri.transport == "tls"
    assert contact.sip_uri.param("ms-opaque") == "d3470f2e1d"
    assert contact.param("+sip.instance") == '"<urn:uuid:6f1b9f0e-4c1a-5d2b-9e3f-0a1b2c3d4e5f>"'
    assert (
        contact.param("methods")
        == '"INVITE, MESSAGE, INFO, SUBSCRIBE, OPTIONS, BYE, CANCEL, NOTIFY, ACK, REFER, BENOTIFY"'
    )
    assert reg.top_via.reliable


def test_401_views() -> None:
    resp = parse_message(ALL["register-401"])
    assert isinstance(resp, SipResponse)
    assert (resp.status, resp.reason) == (401, "Unauthorized")
    # WWW-Authenticate is not a list header: its parameters carry commas
    challenges = resp.headers.values("www-authenticate")
    assert [c.split(" ", 1)[0] for c in challenges] == ["NTLM", "TLS-DSK", "Digest"]
    via = resp.top_via
    assert (via.received, via.param("ms-received-port"), via.param("ms-received-cid")) == (
        "203.0.113.45",
        "50123",
        "1A2B00",
    )


def test_compact_forms_and_multiple_vias() -> None:
    msg = parse_message(ALL["options-compact"])
    assert isinstance(msg, SipRequest)
    assert msg.uri == SipUri(host="[2001:db8::10]", port=5061, params=(("transport", "tls"),), scheme="sips")
    assert msg.call_id == "opt-7d0c4a92@198.51.100.7"
    assert msg.headers.get("Call-ID") == msg.headers.get("i")
    assert msg.headers.values("supported") == ["timer", "100rel"]
    assert msg.headers.get("Allow-Events") == "presence"
    assert msg.headers.get("event") == "presence"
    assert msg.headers.get("content-length") == "0"
    assert msg.from_.display_name == "Monitor"
    assert [(v.transport, v.host, v.port, v.branch) for v in msg.vias] == [
        ("TLS", "[2001:db8::20]", 50200, "z9hG4bKc0mpact"),
        ("TCP", "198.51.100.7", None, "z9hG4bK0ther"),
        ("UDP", "10.1.1.1", 5060, "z9hG4bKth1rd"),
    ]
    assert msg.top_via.param("rport") == ""
    assert msg.top_via.rport is None


def test_mras_bodies_in_corpus_parse() -> None:
    service = parse_message(ALL["service-mras"])
    assert service.content_type == MRAS_CONTENT_TYPE
    request = parse_mras_request(service.body)
    assert request.identity == "sip:alice@contoso.com"
    ok = parse_message(ALL["service-mras-200"])
    response = parse_mras_response(ok.body)
    assert response.credentials is not None and response.credentials.duration == 480
    assert [r.host_name for r in response.relays] == ["av.contoso.com", "edge01.contoso.local"]


def test_folded_header_and_leading_crlf() -> None:
    data = (
        b"\r\n\r\nOPTIONS sip:edge.contoso.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060\r\n ;branch=z9hG4bKf0ld\r\n"
        b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\n\r\n"
    )
    msg = parse_message(data)
    assert msg.top_via.branch == "z9hG4bKf0ld"
    assert msg.headers.get("via") == "SIP/2.0/UDP 10.0.0.1:5060 ;branch=z9hG4bKf0ld"


def test_datagram_body_without_content_length_is_the_rest_and_extra_bytes_are_dropped() -> None:
    head = (
        b"MESSAGE sip:b@c SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
        b"From: <sip:a@b>;tag=1\r\nTo: <sip:b@c>\r\nCall-ID: x\r\nCSeq: 1 MESSAGE\r\n"
    )
    assert parse_message(head + b"\r\nhello").body == b"hello"
    assert parse_message(head + b"Content-Length: 2\r\n\r\nhello").body == b"he"


_GOOD_HEAD = {
    "via": "Via: SIP/2.0/TLS 10.0.0.1:5061;branch=z9hG4bK1",
    "from": "From: <sip:alice@contoso.com>;tag=1",
    "to": "To: <sip:bob@contoso.com>",
    "call-id": "Call-ID: abc",
    "cseq": "CSeq: 1 OPTIONS",
}


def _request(
    start: str = "OPTIONS sip:bob@contoso.com SIP/2.0", drop: str = "", extra: str = "", body: bytes = b""
) -> bytes:
    lines = [start] + [line for key, line in _GOOD_HEAD.items() if key != drop]
    if extra:
        lines.append(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (_request("OPTIONS sip:bob@contoso.com SIP/3.0"), 505),
        (_request("OPTIONS sip:bob@contoso.com SIP/2.1"), 505),
        (_request("OPTIONS sip:bob@contoso.com HTTP/1.1"), 400),
        (_request(drop="call-id"), 400),
        (_request(drop="cseq"), 400),
        (_request(drop="via"), 400),
        (_request(drop="from"), 400),
        (_request(drop="to"), 400),
        (_request(extra="Content-Length: -1"), 400),
        (_request(extra="Content-Length: abc"), 400),
        (_request(extra="Content-Length: ²"), 400),
        (_request(extra="Content-Length: 10", body=b"short"), 400),
        (_request(extra="l: 1\r\nContent-Length: 2", body=b"xx"), 400),
        (_request("OPTIONS http://bob@contoso.com SIP/2.0"), 416),
        (_request("OPTIONS tel:+14255550100 SIP/2.0"), 416),
        (_request("OPTIONS sip:bob@contoso.com:99999 SIP/2.0"), 400),
        (_request("OPTIONS  sip:bob@contoso.com SIP/2.0"), 400),
        (_request("REGISTER sip:contoso.com SIP/2.0"), 400),  # CSeq method mismatch
        (_request(extra="CSeq: 2147483648 OPTIONS").replace(b"CSeq: 1 OPTIONS\r\n", b""), 400),
        (_request(extra="Max-Forwards: many"), 400),
        # RFC 3261 §7.3.1, RFC 4475 §3.3.8: a single-value header appears once (compact forms count)
        (_request(extra="Call-ID: def"), 400),
        (_request(extra="i: abc"), 400),
        (_request(extra="f: <sip:carol@contoso.com>;tag=2"), 400),
        (_request(extra="To: <sip:bob@contoso.com>"), 400),
        (_request(extra="CSeq: 1 OPTIONS"), 400),
        (_request(extra="Max-Forwards: 70\r\nMax-Forwards: 70"), 400),
        (_request(extra="X-Quoted: a\x00b"), 400),  # a NUL outside a quoted-pair
        (_request(extra='X-Quoted: "a\x00b"'), 400),  # inside quotes but not escaped
        (_request(extra="Bad Header: x"), 400),
        (_request(extra="Subject: caf\xe9").replace("caf\xe9".encode(), b"caf\xe9"), 400),  # not UTF-8
        (_request().replace(b"Via: SIP/2.0/TLS", b"Via: SIP/3.0/TLS"), 400),
        (b"OPTIONS sip:bob@contoso.com SIP/2.0\r\nVia: x", 400),  # no end of headers
        (b"x" * 70000, 413),
    ],
)
def test_bad_requests_give_the_status_to_answer(data: bytes, status: int) -> None:
    with pytest.raises(MalformedMessage) as info:
        parse_message(data)
    assert info.value.status == status


def test_bad_response_is_dropped_not_answered() -> None:
    # RFC 3261 §18.1.2: status None tells the listener to drop it
    for data in (
        b"SIP/2.0 2000 OK\r\n\r\n",
        b"SIP/3.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n",
        _request().replace(b"OPTIONS sip:bob@contoso.com SIP/2.0", b"SIP/2.0 200 OK").replace(b"Call-ID: abc\r\n", b""),
    ):
        with pytest.raises(MalformedMessage) as info:
            parse_message(data)
        assert info.value.status is None


@pytest.mark.parametrize(
    "text",
    [
        "sip:a?b@example.com",  # RFC 3261 §25.1: '?' is user-unreserved
        "sip:user;par=u%40example.net@example.com",  # RFC 4475 §3.1.1.9
        "sip:alice@contoso.com",
        "sips:alice:secret@contoso.com:5061;transport=tls;lr?Subject=hi&Priority=urgent",
        "sip:192.168.1.10:50123;transport=tls;ms-opaque=d3470f2e1d",
        "sip:alice@contoso.com;gruu;opaque=srvr:MRAS:2Pxr8yQ1U0G4F1s9XmV7zgAA",
        "sip:+14255550100;phone-context=contoso.com@contoso.com;user=phone",
        "sip:[2001:db8::1]:5060",
    ],
)
def test_sip_uri_round_trip(text: str) -> None:
    uri = parse_uri(text)
    assert isinstance(uri, SipUri)
    assert str(uri) == text


def test_sip_uri_fields() -> None:
    uri = parse_uri("sips:alice:secret@contoso.com:5061;transport=TLS;lr?Subject=hi")
    assert isinstance(uri, SipUri)
    assert (uri.scheme, uri.user, uri.password, uri.host, uri.port) == ("sips", "alice", "secret", "contoso.com", 5061)
    assert uri.transport == "tls"
    assert uri.param("lr") == "" and uri.has_param("LR") and uri.param("maddr") is None
    assert uri.headers == (("Subject", "hi"),)
    assert uri.aor == "sips:alice@contoso.com"
    assert str(uri.with_param("transport", "tcp")).endswith(";lr;transport=tcp?Subject=hi")
    assert parse_uri("tel:+14255550100") == AbsoluteUri("tel", "+14255550100")


@pytest.mark.parametrize(
    ("value", "display", "uri", "tag"),
    [
        ('"Alice \\"Al\\" Example" <sip:alice@contoso.com>;tag=1', 'Alice "Al" Example', "sip:alice@contoso.com", "1"),
        ("Alice Example <sip:alice@contoso.com>", "Alice Example", "sip:alice@contoso.com", None),
        ("<sip:alice@contoso.com;transport=tls>;tag=x;epid=y", None, "sip:alice@contoso.com;transport=tls", "x"),
        ("sip:alice@contoso.com;tag=z", None, "sip:alice@contoso.com", "z"),  # §20.10: params are the header's
        ("<tel:+14255550100>;tag=t", None, "tel:+14255550100", "t"),
    ],
)
def test_name_addr(value: str, display: str | None, uri: str, tag: str | None) -> None:
    addr = parse_name_addr(value)
    assert addr.display_name == display
    assert str(addr.uri) == uri
    assert addr.tag == tag
    assert parse_name_addr(str(addr)) == addr


def test_contact_wildcard() -> None:
    assert parse_name_addr("*").uri is None


@pytest.mark.parametrize("value", ['"unterminated <sip:a@b>', "<sip:a@b", "<sip:a@b> junk", "<>", "nonsense"])
def test_bad_name_addr(value: str) -> None:
    with pytest.raises(MalformedMessage):
        parse_name_addr(value)


def test_via_round_trip_and_params() -> None:
    text = (
        "SIP/2.0/TLS 192.168.1.10:50123;branch=z9hG4bK8a7d6c5b;received=203.0.113.45;ms-received-port=50123;rport=50123"
    )
    via = parse_via(text)
    assert str(via) == text
    assert (via.branch, via.received, via.rport, via.sent_by) == (
        "z9hG4bK8a7d6c5b",
        "203.0.113.45",
        50123,
        "192.168.1.10:50123",
    )
    assert parse_via("SIP / 2.0 / UDP  host").transport == "UDP"
    assert not parse_via("SIP/2.0/UDP host").reliable
    with pytest.raises(MalformedMessage):
        parse_via("SIP/2.0/UDP")


def test_headers_are_case_insensitive_ordered_and_immutable() -> None:
    headers = Headers((("Via", "a"), ("v", "b, c"), ("Contact", "<sip:x@y>"), ("Subject", "s")))
    assert headers.values("VIA") == ["a", "b", "c"]
    assert "s" in headers and "Call-ID" not in headers
    assert headers.remove_first("via").values("via") == ["b", "c"]
    assert headers.remove_first("via").remove_first("via").values("via") == ["c"]
    assert headers.prepend("Via", "z").values("via")[0] == "z"
    assert headers.set("subject", "t").get("Subject") == "t"
    assert headers.set("Via", "only").values("via") == ["only"]
    assert headers.remove("v").get("via") is None
    assert headers.add("X-Y", "1").items[-1] == ("X-Y", "1")
    assert canonical_name("i") == "Call-ID" and canonical_name("ms-keep-alive") == "Ms-Keep-Alive"


def test_make_response_copies_rfc3261_8_2_6_headers() -> None:
    request = parse_message(ALL["register-initial"])
    assert isinstance(request, SipRequest)
    response = make_response(
        request, 401, to_tag="srv1", headers=[("WWW-Authenticate", 'Digest realm="contoso.com", nonce="n"')]
    )
    assert response.reason == "Unauthorized"
    assert response.headers.get_all("via") == request.headers.get_all("via")
    assert response.headers.get("from") == request.headers.get("from")
    assert response.to.tag == "srv1"
    assert response.call_id == request.call_id
    assert response.cseq == request.cseq
    assert parse_message(response.encode()) == response
    # an existing To tag is kept (RFC 3261 §8.2.6.2)
    tagged = make_request(
        "BYE",
        "sip:b@c",
        via="SIP/2.0/UDP h;branch=z9hG4bK1",
        from_="<sip:a@b>;tag=1",
        to="<sip:b@c>;tag=old",
        call_id="x",
        cseq=2,
    )
    assert make_response(tagged, 200, to_tag="new").to.tag == "old"


def test_make_request_and_ack() -> None:
    rng = random.Random(5)
    invite = make_request(
        "INVITE",
        "sip:bob@fabrikam.com",
        via=f"SIP/2.0/UDP 10.0.0.1:5060;branch={new_branch(rng)}",
        from_="<sip:alice@contoso.com>;tag=a1",
        to="<sip:bob@fabrikam.com>",
        call_id="c1",
        cseq=7,
        headers=[("Route", "<sip:edge.contoso.com;lr>"), ("Content-Type", "application/sdp")],
        body=b"v=0\r\n",
    )
    assert invite.top_via.branch is not None and invite.top_via.branch.startswith("z9hG4bK")
    assert parse_message(invite.encode()) == invite
    busy = make_response(invite, 486, to_tag="b2")
    ack = make_ack(invite, busy)
    assert ack.method == "ACK" and ack.uri == invite.uri
    assert ack.cseq == CSeq(7, "ACK")
    assert ack.top_via == invite.top_via
    assert ack.to.tag == "b2"
    assert ack.headers.get_all("route") == ["<sip:edge.contoso.com;lr>"]
    assert parse_message(ack.encode()) == ack


def test_encode_fixes_a_stale_content_length() -> None:
    msg = parse_message(ALL["message-im"])
    assert isinstance(msg, SipRequest)
    changed = SipRequest(msg.method, msg.uri, msg.headers, b"hi")
    reparsed = parse_message(changed.encode())
    assert reparsed.body == b"hi" and reparsed.headers.get("content-length") == "2"


def test_empty_mandatory_values_are_400() -> None:
    for header in (b"Via", b"From", b"To", b"Call-ID", b"CSeq"):
        data = _request().replace(header + b": ", header + b": \r\nX-Old: ", 1)
        with pytest.raises(MalformedMessage) as info:
            parse_message(data)
        assert info.value.status == 400, header


def test_question_mark_and_semicolon_in_the_user_part() -> None:
    uri = parse_uri("sip:a?b:p?w@example.com;lr?Subject=hi")
    assert isinstance(uri, SipUri)
    assert (uri.user, uri.password, uri.host, uri.params, uri.headers) == (
        "a?b", "p?w", "example.com", (("lr", None),), (("Subject", "hi"),)
    )
    # an '@' in a header value after a userinfo is illegal (it must be %40) but stays a header value
    uri = parse_uri("sip:bob@contoso.com?Replaces=abc@host")
    assert isinstance(uri, SipUri)
    assert (uri.user, uri.host, uri.headers) == ("bob", "contoso.com", (("Replaces", "abc@host"),))


def test_repeated_list_headers_are_not_single_value_faults() -> None:
    data = _request(extra="Via: SIP/2.0/TLS 10.0.0.2:5061;branch=z9hG4bK2\r\nContact: <sip:a@b>\r\nContact: <sip:c@d>")
    message = parse_message(data)
    assert len(message.vias) == 2 and len(message.contacts) == 2


def test_a_response_with_a_repeated_single_value_header_is_dropped() -> None:
    data = _request(extra="Call-ID: def").replace(b"OPTIONS sip:bob@contoso.com SIP/2.0", b"SIP/2.0 200 OK")
    with pytest.raises(MalformedMessage) as info:
        parse_message(data)
    assert info.value.status is None  # RFC 3261 §18.1.2


def test_a_quoted_nul_is_legal() -> None:
    # RFC 3261 §25.1 quoted-pair = "\" (%x00-09 / %x0B-0C / %x0E-7F); RFC 4475 §3.1.1.2 quotes one
    data = _request().replace(b"To: <sip:bob", b'To: "N\\\x00L" <sip:bob')
    assert parse_message(data).to.display_name == "N\x00L"
    # the quoted string may span a folded line (RFC 3261 §7.3.1)
    folded = _request().replace(b"To: <sip:bob", b'To: "N\r\n \\\x00L" <sip:bob')
    assert parse_message(folded).to.display_name == "N \x00L"
