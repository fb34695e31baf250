"""A SIP element's transaction user (RFC 3261 §16 stateful proxy, §8 user agent) over the §17 tables, on a
virtual clock: what a proxy relays, generates and absorbs, and when it gives up.

Expected values come from the RFC's words, cited on each assertion. Mutations these tests kill: relaying the
response with the proxy's own Via left on top (§16.7 step 3), forwarding 100 Trying (§16.7 step 5), passing an
upstream ACK for an error response on instead of letting the server transaction absorb it (§17.2.1), a Timer C
that never fires or fires without the 408 (§16.8), a transport error without 503 (§16.9), a peer loss that
fails requests sent to other peers, timer queues that keep every finished transaction.
"""

from __future__ import annotations

import random

import pytest

from simulator.core.sip_element import Answered, SendFailed, SipElement, TimedOut
from simulator.core.sip_transaction import (
    RequestReceived,
    StrayAck,
    TransactionError,
    TransactionKey,
)
from simulator.wire.sip import SipRequest, SipResponse, make_request, make_response

UP, DOWN, OTHER = "upstream", "downstream", "elsewhere"
PROXY_VIA = "SIP/2.0/TLS 10.0.0.9:5061;branch=z9hG4bKproxy1"
Element = SipElement[str, str]


def _element(timeout: float = 10.0, *, auto_trying: bool = True) -> Element:
    return SipElement(random.Random(7), response_timeout=timeout, auto_trying=auto_trying,
                      response_headers=[("Server", "edgesim-test")])


def _request(method: str = "MESSAGE", branch: str = "z9hG4bKclient1", to_tag: str | None = None) -> SipRequest:
    return make_request(method, "sip:bob@contoso.com", via=f"SIP/2.0/TLS 192.0.2.1:50000;branch={branch}",
                        from_="<sip:alice@contoso.com>;tag=a1",
                        to="<sip:bob@contoso.com>" + (f";tag={to_tag}" if to_tag else ""),
                        call_id="call-1", cseq=1)


def _forwarded(request: SipRequest, via: str = PROXY_VIA) -> SipRequest:
    """The copy a proxy sends on: its own Via on top (RFC 3261 §16.6 step 8)."""
    return SipRequest(request.method, request.uri, request.headers.prepend("Via", via), request.body)


def _events(element: Element) -> list[object]:
    out = []
    while (event := element.next_event()) is not None:
        out.append(event)
    return out


def _sent(element: Element) -> list[tuple[str, str]]:
    """(peer, method or status) of what went out."""
    return [(out.peer, out.message.method if isinstance(out.message, SipRequest) else str(out.message.status))
            for out in element.messages_to_send()]


def _incoming(element: Element, request: SipRequest, now: float = 0.0) -> RequestReceived[str]:
    element.receive(request, UP, now)
    (event,) = [e for e in _events(element) if isinstance(e, RequestReceived)]
    return event


def test_a_forwarded_request_and_its_response_go_through_both_transactions() -> None:
    element = _element()
    request = _request()
    inbound = _incoming(element, request)
    assert _sent(element) == []  # §16.2: no 100 Trying for a non-INVITE
    forwarded = _forwarded(request)
    client = element.forward(inbound.key, forwarded, DOWN, 0.1, "ctx")
    assert _sent(element) == [(DOWN, "MESSAGE")]
    ok = make_response(forwarded, 200, to_tag="b1")
    element.receive(ok, DOWN, 0.2)
    (out,) = element.messages_to_send()
    assert out.peer == UP and isinstance(out.message, SipResponse) and out.message.status == 200
    # §16.7 step 3: the proxy's own Via is gone, the client's is on top again
    assert out.message.headers.values("via") == request.headers.values("via")
    assert _events(element) == [Answered(client, ok, "ctx")]
    assert len(element) == 0 and len(element.layer) == 0  # TLS: K and J are zero (§17.1.2.2, §17.2.2)
    assert element.forwarded == 1 and element.timeouts == 0


def test_an_invite_gets_100_from_the_proxy_and_the_next_hops_100_is_not_relayed() -> None:
    element = _element()
    invite = _request("INVITE")
    inbound = _incoming(element, invite)
    assert _sent(element) == [(UP, "100")]  # §16.2 / §17.2.1: the proxy's own 100 Trying
    forwarded = _forwarded(invite)
    element.forward(inbound.key, forwarded, DOWN, 0.0, "ctx")
    element.messages_to_send()
    element.receive(make_response(forwarded, 100), DOWN, 0.1)
    assert _sent(element) == []  # §16.7 step 5: a 100 is not forwarded
    element.receive(make_response(forwarded, 180, to_tag="b1"), DOWN, 0.2)
    assert _sent(element) == [(UP, "180")]
    assert _events(element) == []  # a provisional response is not final


def test_an_error_to_an_invite_is_acked_downstream_and_the_upstream_ack_is_absorbed() -> None:
    element = _element()
    invite = _request("INVITE")
    inbound = _incoming(element, invite)
    forwarded = _forwarded(invite)
    element.forward(inbound.key, forwarded, DOWN, 0.0, "ctx")
    element.messages_to_send()
    element.receive(make_response(forwarded, 486, to_tag="b1"), DOWN, 0.5)
    # §17.1.1.3: the client transaction ACKs the error itself; the error goes upstream
    assert sorted(_sent(element)) == [(DOWN, "ACK"), (UP, "486")]
    ack = make_request("ACK", "sip:bob@contoso.com", via=invite.headers.values("via")[0],
                       from_="<sip:alice@contoso.com>;tag=a1", to="<sip:bob@contoso.com>;tag=b1",
                       call_id="call-1", cseq=1)
    element.receive(ack, UP, 0.6)
    assert [e for e in _events(element) if isinstance(e, StrayAck)] == []  # §17.2.1: the transaction's
    assert _sent(element) == [] and len(element.layer) == 0  # Confirmed, then Timer I = 0 on TLS


def test_the_ack_for_a_2xx_matches_no_transaction_and_goes_on_statelessly() -> None:
    element = _element()
    ack = _request("ACK", branch="z9hG4bKnewack", to_tag="b1")
    element.receive(ack, UP, 0.0)
    assert _events(element) == [StrayAck(ack, UP)]  # §17.2.3, §16.6: the TU forwards it end to end
    element.send_stateless(_forwarded(ack), DOWN)
    assert _sent(element) == [(DOWN, "ACK")]


def test_timer_c_answers_408_upstream_and_a_late_response_is_stray() -> None:
    element = _element(timeout=10.0)
    request = _request()
    inbound = _incoming(element, request, 1.0)
    forwarded = _forwarded(request)
    client = element.forward(inbound.key, forwarded, DOWN, 1.0, "ctx")
    element.messages_to_send()
    assert element.get_timer() == 11.0  # the response deadline, before Timer F (64·T1 = 33 s)
    element.handle_timer(10.9)
    assert _sent(element) == []
    element.handle_timer(11.0)
    (out,) = element.messages_to_send()
    assert out.peer == UP and isinstance(out.message, SipResponse)
    assert out.message.status == 408  # §16.8: as if the client transaction had received a 408
    assert out.message.headers.get("server") == "edgesim-test" and out.message.to.tag is not None
    assert _events(element) == [TimedOut(client, "ctx", 10.0)]
    element.receive(make_response(forwarded, 200, to_tag="b1"), DOWN, 12.0)
    assert _sent(element) == [] and element.stray_responses == 1  # the client transaction was given up
    assert element.timeouts == 1 and len(element) == 0 and len(element.layer) == 0
    assert element.get_timer() is None


def test_timer_f_ends_the_wait_when_it_comes_before_the_response_deadline() -> None:
    element = _element(timeout=100.0)
    request = _request()
    inbound = _incoming(element, request)
    client = element.forward(inbound.key, _forwarded(request), DOWN, 0.0, "ctx")
    element.messages_to_send()
    assert element.get_timer() == 32.0  # Timer F = 64·T1 (RFC 3261 Table 4)
    element.handle_timer(32.0)
    assert _sent(element) == [(UP, "408")]
    assert _events(element) == [TimedOut(client, "ctx", 100.0)]


def test_a_transport_error_answers_503_upstream() -> None:
    element = _element()
    request = _request()
    inbound = _incoming(element, request)
    client = element.forward(inbound.key, _forwarded(request), DOWN, 0.0, "ctx")
    element.messages_to_send()
    element.transport_error(client, 0.1, [("ms-diagnostics", '1000;reason="next hop lost"')])
    (out,) = element.messages_to_send()
    assert isinstance(out.message, SipResponse) and out.message.status == 503  # §16.9
    assert out.message.headers.get("ms-diagnostics") == '1000;reason="next hop lost"'
    assert _events(element) == [SendFailed(client, "ctx")]
    assert element.get_timer() is None and len(element.layer) == 0


def test_a_user_agents_own_request_ends_with_its_final_response_or_its_own_deadline() -> None:
    element = _element(auto_trying=False)
    first, second = _request(branch="z9hG4bKown1"), _request(branch="z9hG4bKown2")
    one = element.send_request(first, DOWN, 0.0, "first", timeout=3.0)
    two = element.send_request(second, DOWN, 0.0, "second", timeout=5.0)
    assert _sent(element) == [(DOWN, "MESSAGE"), (DOWN, "MESSAGE")]
    element.receive(make_response(first, 180), DOWN, 0.5)
    ok = make_response(first, 200, to_tag="x")
    element.receive(ok, DOWN, 1.0)
    assert _events(element) == [Answered(one, ok, "first")]  # provisional responses are not reported
    assert element.get_timer() == 5.0
    element.handle_timer(5.0)
    assert _events(element) == [TimedOut(two, "second", 5.0)] and _sent(element) == []
    with pytest.raises(TransactionError):
        element.send_request(first, DOWN, 6.0, "again")
        element.send_request(first, DOWN, 6.0, "twice")  # same branch while pending


def test_a_lost_peer_fails_only_the_requests_sent_to_it() -> None:
    element = _element()
    lost = element.send_request(_request(branch="z9hG4bKa"), DOWN, 0.0, "a")
    kept = element.send_request(_request(branch="z9hG4bKb"), OTHER, 0.0, "b")
    element.peer_lost(DOWN, 1.0)
    assert _events(element) == [SendFailed(lost, "a")]  # §17.1.4
    assert len(element) == 1 and element.abandon(kept) == "b" and len(element) == 0


def test_answering_a_request_and_a_gone_transaction() -> None:
    element = _element()
    inbound = _incoming(element, _request())
    assert element.respond(inbound.key, make_response(inbound.request, 200, to_tag="s"), 0.1)
    assert _sent(element) == [(UP, "200")]
    assert not element.respond(inbound.key, make_response(inbound.request, 200, to_tag="s"), 0.2)  # J = 0: gone
    assert not element.respond(TransactionKey("z9hG4bKnone", "MESSAGE", "x", True),
                               make_response(inbound.request, 500), 0.3)


def test_finished_transactions_leave_no_timer_behind() -> None:
    element = _element()
    for i in range(20_000):
        request = _request(branch=f"z9hG4bK{i}")
        inbound = _incoming(element, request, float(i))
        forwarded = _forwarded(request, f"SIP/2.0/TLS 10.0.0.9:5061;branch=z9hG4bKp{i}")
        element.forward(inbound.key, forwarded, DOWN, float(i), "ctx")
        element.receive(make_response(forwarded, 200, to_tag="t"), DOWN, float(i))
        element.messages_to_send()
        _events(element)
    assert len(element) == 0 and len(element.layer) == 0
    # every forward armed Timer F and Timer C; a transaction that ends leaves the timer queues at once
    assert element.layer.timer_entries == 0
    assert element.get_timer() is None


def test_a_request_sent_without_context_reports_nothing() -> None:
    # A caller that passes no context waits on nothing: the final response (or the 408 the element generates) is
    # still relayed upstream, but no Answered/TimedOut comes out for nobody to read.
    element = _element(timeout=5.0)
    request = _request()
    inbound = _incoming(element, request)
    forwarded = _forwarded(request)
    element.forward(inbound.key, forwarded, DOWN, 0.0, None)
    element.messages_to_send()
    element.receive(make_response(forwarded, 200, to_tag="b1"), DOWN, 0.1)
    assert _sent(element) == [(UP, "200")] and _events(element) == []
    second = _incoming(element, _request(branch="z9hG4bKclient2"))
    element.forward(second.key, _forwarded(second.request, "SIP/2.0/TLS 10.0.0.9:5061;branch=z9hG4bKproxy2"),
                    DOWN, 1.0, None)
    element.messages_to_send()
    element.handle_timer(6.0)
    assert _sent(element) == [(UP, "408")] and _events(element) == []  # §16.8
    assert element.timeouts == 1 and len(element) == 0
