"""Building requests and responses (RFC 3261 §8.1.1, §8.2.6, §17.1.1.3) and fresh identifiers."""

from __future__ import annotations

import random
from collections.abc import Iterable

from simulator.wire.sip.grammar import BRANCH_MAGIC_COOKIE, CANONICAL_NAMES, REASON_PHRASES
from simulator.wire.sip.headers import Headers
from simulator.wire.sip.message import SipRequest, SipResponse
from simulator.wire.sip.uri import Uri, parse_uri
from simulator.wire.sip.views import NameAddr, Via, parse_name_addr


def new_branch(rng: random.Random) -> str:
    """A fresh RFC 3261 branch (magic cookie + 64 random bits, §8.1.1.7)."""
    return f"{BRANCH_MAGIC_COOKIE}{rng.getrandbits(64):016x}"


def new_tag(rng: random.Random) -> str:
    """A fresh From/To tag (32 random bits, RFC 3261 §19.3)."""
    return f"{rng.getrandbits(32):08x}"


def new_call_id(rng: random.Random) -> str:
    """A fresh Call-ID (RFC 3261 §8.1.1.4)."""
    return f"{rng.getrandbits(128):032x}"


def make_request(
    method: str,
    uri: Uri | str,
    *,
    via: Via | str,
    from_: NameAddr | str,
    to: NameAddr | str,
    call_id: str,
    cseq: int,
    max_forwards: int = 70,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> SipRequest:
    """Build a request with the RFC 3261 §8.1.1 header set, then ``headers``, then Content-Length."""
    items: list[tuple[str, str]] = [
        ("Via", str(via)),
        ("Max-Forwards", str(max_forwards)),
        ("From", str(from_)),
        ("To", str(to)),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} {method}"),
    ]
    items.extend(headers)
    items.append(("Content-Length", str(len(body))))
    request_uri = parse_uri(uri) if isinstance(uri, str) else uri
    return SipRequest(method, request_uri, Headers(tuple(items)), body)


def make_response(
    request: SipRequest,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    copy_record_route: bool = False,
) -> SipResponse:
    """Response to ``request`` (RFC 3261 §8.2.6): Via lines, From, To (+``to_tag`` when it has none),
    Call-ID, CSeq copied; Timestamp copied into 100 (§8.2.6.1); Record-Route when asked (§12.1.1);
    then ``headers`` and Content-Length.
    """
    copied: list[tuple[str, str]] = []
    for key, (_, value) in zip(request.headers.lookup_keys, request.headers.items, strict=True):
        if key == "via" or (copy_record_route and key == "record-route"):
            copied.append((CANONICAL_NAMES[key], value))
    copied.append(("From", request.headers.get("from") or ""))
    to_value = request.headers.get("to") or ""
    if to_tag is not None:
        to_addr = parse_name_addr(to_value)
        if to_addr.tag is None:
            to_value = f"{to_value};tag={to_tag}"
    copied.append(("To", to_value))
    copied.append(("Call-ID", request.call_id))
    copied.append(("CSeq", request.headers.get("cseq") or ""))
    timestamp = request.headers.get("timestamp")
    if status == 100 and timestamp is not None:
        copied.append(("Timestamp", timestamp))
    copied.extend(headers)
    copied.append(("Content-Length", str(len(body))))
    phrase = reason if reason is not None else REASON_PHRASES.get(status, "Unknown")
    return SipResponse(status, phrase, Headers(tuple(copied)), body)


def make_ack(request: SipRequest, response: SipResponse) -> SipRequest:
    """ACK for a non-2xx final response to INVITE (RFC 3261 §17.1.1.3): same Request-URI, top Via,
    Call-ID, From, CSeq number and Route set as the INVITE; To from the response.
    """
    items: list[tuple[str, str]] = [("Via", request.headers.values("via")[0])]
    max_forwards = request.headers.get("max-forwards")
    if max_forwards is not None:
        items.append(("Max-Forwards", max_forwards))
    items.append(("From", request.headers.get("from") or ""))
    items.append(("To", response.headers.get("to") or ""))
    items.append(("Call-ID", request.call_id))
    items.append(("CSeq", f"{request.cseq.seq} ACK"))
    items.extend(("Route", v) for v in request.headers.get_all("route"))
    items.append(("Content-Length", "0"))
    return SipRequest("ACK", request.uri, Headers(tuple(items)))
