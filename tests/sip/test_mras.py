"""MRAS bodies (application/msrtc-media-relay-auth+xml)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from simulator.wire.errors import MalformedMessage
from simulator.wire.mras import (
    NAMESPACE,
    MediaRelay,
    MrasCredentials,
    MrasLocation,
    MrasRequest,
    MrasResponse,
    parse_mras_request,
    parse_mras_response,
)


def test_request_round_trip_and_shape() -> None:
    request = MrasRequest(
        request_id="35112960",
        from_uri="sip:alice@contoso.com",
        to_uri="sip:alice@contoso.com;gruu;opaque=srvr:MRAS:abc",
        credentials_request_id="35112960",
        identity="sip:alice@contoso.com",
        location=MrasLocation.INTRANET,
        duration=60,
    )
    body = request.to_xml()
    root = ET.fromstring(body)
    assert root.tag == f"{{{NAMESPACE}}}request"
    assert root.findtext(f"{{{NAMESPACE}}}credentialsRequest/{{{NAMESPACE}}}location") == "intranet"
    assert parse_mras_request(body) == request


def test_response_round_trip() -> None:
    response = MrasResponse(
        request_id="1",
        from_uri="sip:alice@contoso.com",
        to_uri="sip:alice@contoso.com;gruu;opaque=srvr:MRAS:abc",
        credentials_request_id="1",
        credentials=MrasCredentials("user==", "pass/+=", 480),
        relays=(
            MediaRelay(MrasLocation.INTERNET, "av.contoso.com", 3478, 443),
            MediaRelay(MrasLocation.INTRANET, "edge01.contoso.local", None, 443),
        ),
    )
    assert parse_mras_response(response.to_xml()) == response


def test_refusal_without_credentials() -> None:
    response = MrasResponse("1", "a", "b", "1", None, reason_phrase="RequestMalformed")
    parsed = parse_mras_response(response.to_xml())
    assert parsed.credentials is None and parsed.reason_phrase == "RequestMalformed" and parsed.relays == ()


_NS = f'xmlns="{NAMESPACE}"'


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<request",
        b"\xff\xfe<request/>",
        f'<request requestID="1" {_NS}/>'.encode(),  # no credentialsRequest
        b'<request requestID="1"><credentialsRequest credentialsRequestID="1"/></request>',  # wrong namespace
        f'<request requestID="1" {_NS}><credentialsRequest credentialsRequestID="1"><identity>x</identity>'
        f"<location>moon</location><duration>480</duration></credentialsRequest></request>".encode(),
        f'<request requestID="1" {_NS}><credentialsRequest credentialsRequestID="1"><identity>x</identity>'
        f"<location>internet</location><duration>-4</duration></credentialsRequest></request>".encode(),
        f'<request {_NS}><credentialsRequest credentialsRequestID="1"><identity>x</identity>'
        f"<location>internet</location><duration>4</duration></credentialsRequest></request>".encode(),
        b'<!DOCTYPE r [<!ENTITY a "aaaa">]><request>&a;</request>',
    ],
)
def test_bad_request_bodies(body: bytes) -> None:
    with pytest.raises(MalformedMessage) as info:
        parse_mras_request(body)
    assert info.value.status == 400


def test_bad_response_port() -> None:
    body = MrasResponse("1", "a", "b", "1", None, relays=(MediaRelay(MrasLocation.INTERNET, "h"),)).to_xml()
    with pytest.raises(MalformedMessage):
        parse_mras_response(body.replace(b">3478<", b">port<"))
    with pytest.raises(MalformedMessage):
        parse_mras_response(b"<request/>")
