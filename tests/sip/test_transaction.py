"""RFC 3261 §17 transaction state tables, driven by a virtual clock."""

from __future__ import annotations

import pytest

from simulator.core.sip_transaction import (
    INITIAL,
    TRANSITIONS,
    CompiledTable,
    Input,
    Kind,
    RequestReceived,
    ResponseReceived,
    State,
    StrayAck,
    StrayResponse,
    Timer,
    TimerSettings,
    Transaction,
    TransactionError,
    TransactionEvent,
    TransactionLayer,
    TransactionTerminated,
    TransactionTimedOut,
    TransportFailed,
    compile_table,
)
from simulator.wire.sip import SipRequest, SipResponse, make_request, make_response, parse_message

PEER = ("198.51.100.7", 5060)


def _request(method: str, transport: str = "UDP", branch: str = "z9hG4bKt1") -> SipRequest:
    return make_request(
        method,
        "sip:bob@fabrikam.com",
        via=f"SIP/2.0/{transport} 10.0.0.1:5060;branch={branch}",
        from_="<sip:alice@contoso.com>;tag=a1",
        to="<sip:bob@fabrikam.com>",
        call_id="call-1",
        cseq=1,
    )


def _state(txn: Transaction) -> State:
    return txn.state  # a call, so mypy does not narrow the attribute between steps


def _events(layer: TransactionLayer) -> list[TransactionEvent]:
    out = []
    while (event := layer.next_event()) is not None:
        out.append(event)
    return out


def _sent(layer: TransactionLayer) -> list[str]:
    """Short labels of what went out: method or status."""
    return [
        out.message.method if isinstance(out.message, SipRequest) else str(out.message.status)
        for out in layer.messages_to_send()
    ]


def _run_timers(layer: TransactionLayer, until: float) -> list[float]:
    """Fire timers up to ``until``; return the times they fired at."""
    times = []
    while (deadline := layer.get_timer()) is not None and deadline <= until:
        layer.handle_timer(deadline)
        times.append(deadline)
    return times


def test_table_covers_every_kind_and_has_no_terminated_rows() -> None:
    assert set(INITIAL) == set(Kind)
    assert all(state is not State.TERMINATED for (_, state, _) in TRANSITIONS)
    assert all((kind, state, Input.TRANSPORT_ERROR) in TRANSITIONS for (kind, state, _) in TRANSITIONS)


def test_client_non_invite_udp_retransmits_with_backoff_then_times_out() -> None:
    layer = TransactionLayer()
    txn = layer.send_request(_request("REGISTER"), 0.0, PEER)
    assert _sent(layer) == ["REGISTER"]
    times: list[float] = []
    sends = 0
    while (deadline := layer.get_timer()) is not None:
        layer.handle_timer(deadline)
        times.append(deadline)
        sends += len(_sent(layer))
    # Timer E: 0.5, 1, 2, 4, 4, … (capped at T2) until Timer F at 64*T1 = 32 s
    assert times[:6] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5]
    assert times[-1] == 32.0
    assert sends == 10
    events = _events(layer)
    assert events == [TransactionTimedOut(txn.key, Timer.F), TransactionTerminated(txn.key)]
    assert len(layer) == 0


def test_client_non_invite_proceeding_retransmits_at_t2() -> None:
    layer = TransactionLayer()
    request = _request("SUBSCRIBE")
    txn = layer.send_request(request, 0.0, PEER)
    layer.messages_to_send()
    layer.receive(make_response(request, 180, "Ringing"), 0.1, PEER)
    assert _state(txn) is State.PROCEEDING
    assert txn.timer_deadline(Timer.E) == 0.5  # E and F survive into Proceeding
    layer.handle_timer(0.5)
    assert _sent(layer) == ["SUBSCRIBE"]
    assert txn.timer_deadline(Timer.E) == 4.5  # §17.1.2.2: reset to T2 in Proceeding


def test_client_non_invite_final_response_then_timer_k() -> None:
    layer = TransactionLayer()
    request = _request("MESSAGE")
    txn = layer.send_request(request, 0.0, PEER)
    ok = make_response(request, 200, to_tag="b1")
    layer.receive(ok, 0.2, PEER)
    layer.receive(ok, 0.3, PEER)  # retransmission absorbed in Completed
    assert _state(txn) is State.COMPLETED
    assert _events(layer) == [ResponseReceived(txn.key, ok)]
    assert txn.timer_deadline(Timer.E) is None
    assert txn.timer_deadline(Timer.K) == pytest.approx(5.2)  # T4
    assert _run_timers(layer, 100) == [pytest.approx(5.2)]
    assert _events(layer) == [TransactionTerminated(txn.key)]


def test_client_over_tcp_never_retransmits_and_k_is_zero() -> None:
    layer = TransactionLayer()
    request = _request("REGISTER", "TLS")
    txn = layer.send_request(request, 0.0, PEER)
    assert txn.reliable
    assert txn.timer_deadline(Timer.E) is None
    assert layer.get_timer() == 32.0  # only F
    layer.receive(make_response(request, 401), 0.1, PEER)
    assert _state(txn) is State.TERMINATED  # K = 0 on reliable transports
    assert len(layer) == 0
    assert _sent(layer) == ["REGISTER"]


def test_client_over_tcp_times_out_with_timer_f_only() -> None:
    layer = TransactionLayer()
    txn = layer.send_request(_request("OPTIONS", "TCP"), 0.0, PEER)
    assert _run_timers(layer, 100) == [32.0]
    assert _sent(layer) == ["OPTIONS"]
    assert TransactionTimedOut(txn.key, Timer.F) in _events(layer)


def test_client_invite_udp_timer_a_doubles_until_b() -> None:
    layer = TransactionLayer()
    txn = layer.send_request(_request("INVITE"), 0.0, PEER)
    times = _run_timers(layer, 100)
    assert times == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5, 32.0]  # A doubles without cap; B at 64*T1
    assert _sent(layer) == ["INVITE"] * 7
    assert _events(layer) == [TransactionTimedOut(txn.key, Timer.B), TransactionTerminated(txn.key)]


def test_client_invite_non_2xx_is_acked_and_retransmissions_reacked() -> None:
    layer = TransactionLayer()
    invite = _request("INVITE")
    txn = layer.send_request(invite, 0.0, PEER)
    layer.messages_to_send()
    trying = make_response(invite, 100)
    layer.receive(trying, 0.05, PEER)
    assert _state(txn) is State.PROCEEDING
    assert layer.get_timer() is None  # A and B stop in Proceeding
    busy = make_response(invite, 486, to_tag="b9")
    layer.receive(busy, 1.0, PEER)
    assert _state(txn) is State.COMPLETED
    (ack_out,) = layer.messages_to_send()
    ack = ack_out.message
    assert isinstance(ack, SipRequest) and ack.method == "ACK"
    assert ack.to.tag == "b9" and ack.top_via.branch == invite.top_via.branch and ack.cseq.seq == 1
    assert ack_out.peer == PEER
    layer.receive(busy, 1.5, PEER)
    assert [o.message for o in layer.messages_to_send()] == [ack]
    assert _events(layer) == [ResponseReceived(txn.key, trying), ResponseReceived(txn.key, busy)]
    assert _run_timers(layer, 100) == [33.0]  # Timer D: 32 s
    assert _state(txn) is State.TERMINATED


def test_client_invite_2xx_terminates_and_later_2xx_are_stray() -> None:
    layer = TransactionLayer()
    invite = _request("INVITE")
    txn = layer.send_request(invite, 0.0, PEER)
    ok = make_response(invite, 200, to_tag="b1")
    layer.receive(ok, 0.3, PEER)
    assert _state(txn) is State.TERMINATED
    layer.receive(ok, 0.8, PEER)  # §17.1.1.2: the TU (dialog) ACKs 2xx, not the transaction
    events = _events(layer)
    assert events == [ResponseReceived(txn.key, ok), TransactionTerminated(txn.key), StrayResponse(ok, PEER)]
    assert _sent(layer) == ["INVITE"]


def test_server_non_invite_absorbs_and_answers_retransmissions() -> None:
    layer = TransactionLayer()
    request = _request("REGISTER")
    layer.receive(request, 0.0, PEER)
    (event,) = _events(layer)
    assert isinstance(event, RequestReceived) and event.request == request and event.peer == PEER
    layer.receive(request, 0.4, PEER)  # retransmission in Trying: discarded, not passed up
    assert _events(layer) == [] and _sent(layer) == []
    txn = layer.send_response(make_response(request, 401, to_tag="s1"), 0.5)
    assert _state(txn) is State.COMPLETED
    assert _sent(layer) == ["401"]
    layer.receive(request, 1.0, PEER)  # retransmission in Completed: the response again
    assert _sent(layer) == ["401"]
    assert _events(layer) == []
    assert _run_timers(layer, 100) == [32.5]  # Timer J = 64*T1
    assert _events(layer) == [TransactionTerminated(txn.key)]
    layer.receive(request, 40.0, PEER)  # after J a retransmission is a new request
    assert isinstance(_events(layer)[0], RequestReceived)


def test_server_non_invite_provisional_then_final() -> None:
    layer = TransactionLayer()
    request = _request("SUBSCRIBE")
    layer.receive(request, 0.0, PEER)
    txn = layer.send_response(make_response(request, 183), 0.1)
    assert _state(txn) is State.PROCEEDING
    layer.receive(request, 0.2, PEER)
    assert _sent(layer) == ["183", "183"]
    layer.send_response(make_response(request, 200), 0.3)
    with pytest.raises(TransactionError):
        layer.send_response(make_response(request, 200), 0.4)  # one final response only


def test_server_invite_non_2xx_retransmits_until_ack() -> None:
    layer = TransactionLayer()
    invite = _request("INVITE")
    layer.receive(invite, 0.0, PEER)
    assert _sent(layer) == ["100"]  # auto 100 Trying (§17.2.1)
    layer.receive(invite, 0.2, PEER)
    assert _sent(layer) == ["100"]  # retransmitted INVITE: the last provisional again
    txn = layer.send_response(make_response(invite, 486, to_tag="s"), 1.0)
    assert _state(txn) is State.COMPLETED
    assert _sent(layer) == ["486"]
    assert _run_timers(layer, 4.0) == [1.5, 2.5]  # Timer G: T1, 2*T1 …
    assert _sent(layer) == ["486", "486"]
    ack = make_request(
        "ACK",
        "sip:bob@fabrikam.com",
        via=invite.headers.get("via") or "",
        from_="<sip:alice@contoso.com>;tag=a1",
        to="<sip:bob@fabrikam.com>;tag=s",
        call_id="call-1",
        cseq=1,
    )
    layer.receive(ack, 4.0, PEER)
    assert _state(txn) is State.CONFIRMED
    layer.receive(ack, 4.1, PEER)  # absorbed
    layer.receive(invite, 4.2, PEER)  # absorbed in Confirmed
    assert _sent(layer) == []
    assert [e for e in _events(layer) if not isinstance(e, RequestReceived)] == []
    assert _run_timers(layer, 100) == [9.0]  # Timer I = T4; G and H cancelled
    assert _state(txn) is State.TERMINATED


def test_server_invite_timer_g_caps_at_t2_and_h_times_out() -> None:
    layer = TransactionLayer(auto_trying=False)
    invite = _request("INVITE")
    layer.receive(invite, 0.0, PEER)
    txn = layer.send_response(make_response(invite, 603), 0.0)
    times = _run_timers(layer, 100)
    assert times[:6] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5]
    assert times[-1] == 32.0
    assert TransactionTimedOut(txn.key, Timer.H) in _events(layer)


def test_server_invite_over_tls_no_retransmission_and_i_is_zero() -> None:
    layer = TransactionLayer()
    invite = _request("INVITE", "TLS")
    layer.receive(invite, 0.0, PEER)
    txn = layer.send_response(make_response(invite, 404), 0.1)
    assert txn.timer_deadline(Timer.G) is None and txn.timer_deadline(Timer.H) == pytest.approx(32.1)
    ack = make_request(
        "ACK",
        "sip:bob@fabrikam.com",
        via=invite.headers.get("via") or "",
        from_="<sip:alice@contoso.com>;tag=a1",
        to="<sip:bob@fabrikam.com>",
        call_id="call-1",
        cseq=1,
    )
    layer.receive(ack, 0.2, PEER)
    assert _state(txn) is State.TERMINATED
    assert _sent(layer) == ["100", "404"]


def test_server_invite_2xx_terminates_and_ack_is_stray() -> None:
    layer = TransactionLayer()
    invite = _request("INVITE")
    layer.receive(invite, 0.0, PEER)
    txn = layer.send_response(make_response(invite, 200, to_tag="s"), 0.1)
    assert _state(txn) is State.TERMINATED
    ack = make_request(
        "ACK",
        "sip:bob@fabrikam.com",
        via="SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKnewack",
        from_="<sip:alice@contoso.com>;tag=a1",
        to="<sip:bob@fabrikam.com>;tag=s",
        call_id="call-1",
        cseq=1,
    )
    layer.receive(ack, 0.2, PEER)
    assert _events(layer)[-1] == StrayAck(ack, PEER)


def test_matching_uses_branch_sent_by_and_method() -> None:
    layer = TransactionLayer(auto_trying=False)
    invite = _request("INVITE", branch="z9hG4bKsame")
    layer.receive(invite, 0.0, PEER)
    cancel = make_request(
        "CANCEL",
        "sip:bob@fabrikam.com",
        via=invite.headers.get("via") or "",
        from_="<sip:alice@contoso.com>;tag=a1",
        to="<sip:bob@fabrikam.com>",
        call_id="call-1",
        cseq=1,
    )
    layer.receive(cancel, 0.1, PEER)  # same branch, other method: its own transaction (§9.2)
    other_host = parse_message(invite.encode().replace(b"10.0.0.1:5060", b"10.0.0.2:5060"))
    layer.receive(other_host, 0.2, PEER)  # same branch, other sent-by: another transaction
    assert len(layer) == 3
    target = layer.invite_for_cancel(cancel)
    assert target is not None and target.request == invite


def test_transport_error_terminates() -> None:
    layer = TransactionLayer()
    txn = layer.send_request(_request("REGISTER", "TLS"), 0.0, PEER)
    layer.handle_transport_error(txn.key, 0.1)
    assert _events(layer) == [TransportFailed(txn.key), TransactionTerminated(txn.key)]
    assert layer.get_timer() is None


def test_standalone_transaction_api() -> None:
    request = _request("OPTIONS")
    txn = Transaction.client(request, 10.0, peer=PEER)
    assert [o.message for o in txn.messages_to_send()] == [request]
    assert txn.get_timer() == 10.5
    txn.handle_timer(10.5)
    assert len(txn.messages_to_send()) == 1
    txn.receive(make_response(request, 200), 11.0)
    assert isinstance(txn.next_event(), ResponseReceived)
    with pytest.raises(TransactionError):
        txn.send(make_response(request, 200), 11.0)
    with pytest.raises(TransactionError):
        Transaction.client(_request("ACK"), 0.0, peer=PEER)
    with pytest.raises(TransactionError):
        layer = TransactionLayer()
        layer.send_request(request, 0.0, PEER)
        layer.send_request(request, 0.0, PEER)  # same branch twice


@pytest.mark.parametrize("kind", list(Kind))
def test_the_merged_reliable_rows_behave_as_the_table(kind: Kind) -> None:
    # Kills a merge that drops or reorders an effect (the ACK of an INVITE error, a response) or lands in the wrong
    # state: the same inputs through the compiled reliable table and through the plain one give the same outputs.
    method = "INVITE" if kind in (Kind.CLIENT_INVITE, Kind.SERVER_INVITE) else "MESSAGE"
    request = _request(method, "TLS")
    inputs = {
        Kind.CLIENT_INVITE: [make_response(request, 180), make_response(request, 486, to_tag="x")],
        Kind.CLIENT_NON_INVITE: [make_response(request, 180), make_response(request, 200, to_tag="x")],
        Kind.SERVER_INVITE: ["send:183", "send:404", "ack"],
        Kind.SERVER_NON_INVITE: ["send:183", "send:200"],
    }[kind]

    def run(table: CompiledTable) -> list[object]:
        start = Transaction.client if kind in (Kind.CLIENT_INVITE, Kind.CLIENT_NON_INVITE) else Transaction.server
        txn = start(request, 0.0, peer=PEER, reliable=True)
        txn._rows = table.states[(kind, txn.state)]  # the initial rows are the same in both
        trace: list[object] = []
        for i, inp in enumerate(inputs, 1):
            if isinstance(inp, SipResponse):
                txn.receive(inp, float(i))
            elif inp == "ack":
                ack = make_request("ACK", "sip:bob@fabrikam.com", via=request.headers.get("via") or "",
                                   from_="<sip:alice@contoso.com>;tag=a1", to="<sip:bob@fabrikam.com>;tag=s",
                                   call_id="call-1", cseq=1)
                txn.receive(ack, float(i))
            else:
                txn.send(make_response(request, int(inp.split(":")[1]), to_tag="s"), float(i))
            sent = [o.message.method if isinstance(o.message, SipRequest) else o.message.status
                    for o in txn.messages_to_send()]
            events = []
            while (event := txn.next_event()) is not None:
                events.append(type(event).__name__)
            trace.append((txn.state, sent, events, txn.get_timer()))
        return trace

    settings = TimerSettings()
    assert run(compile_table(settings, True)) == run(compile_table(settings, True, merge=False))


def test_timer_c_is_the_tus_and_outlives_a_provisional_response() -> None:
    # RFC 3261 §16.6 step 11: the TU starts Timer C with the client transaction; a 1xx does not stop it (Table 4
    # C is not one of the timers Proceeding cancels), and when it fires the transaction ends with a timeout report.
    layer = TransactionLayer()
    request = _request("MESSAGE", "TLS")
    txn = layer.send_request(request, 0.0, PEER, timer_c=3.0)
    assert txn.timer_deadline(Timer.C) == 3.0 and txn.timer_deadline(Timer.F) == 32.0
    assert layer.get_timer() == 3.0
    layer.receive(make_response(request, 180), 1.0, PEER)
    assert _state(txn) is State.PROCEEDING and txn.timer_deadline(Timer.C) == 3.0
    assert _run_timers(layer, 100) == [3.0]
    assert _events(layer)[-2:] == [TransactionTimedOut(txn.key, Timer.C), TransactionTerminated(txn.key)]
    assert len(layer) == 0 and layer.get_timer() is None


def test_a_final_response_stops_timer_c() -> None:
    layer = TransactionLayer()
    request = _request("MESSAGE", "TLS")
    layer.send_request(request, 0.0, PEER, timer_c=3.0)
    layer.receive(make_response(request, 200), 1.0, PEER)
    assert layer.get_timer() is None and layer.timer_entries == 0  # gone from the timer queues at once


def test_deadlines_out_of_order_still_fire_in_order() -> None:
    # Kills a timer structure that only appends per timer (sorted by construction while intervals and clock agree):
    # a shorter Timer C after a longer one, and a clock that went back, must still come out earliest first.
    layer = TransactionLayer()
    first = layer.send_request(_request("MESSAGE", "TLS", branch="z9hG4bKa"), 10.0, PEER, timer_c=20.0)
    second = layer.send_request(_request("MESSAGE", "TLS", branch="z9hG4bKb"), 10.0, PEER, timer_c=5.0)
    third = layer.send_request(_request("MESSAGE", "TLS", branch="z9hG4bKc"), 8.0, PEER, timer_c=5.0)
    assert layer.get_timer() == 13.0
    assert _run_timers(layer, 100) == [13.0, 15.0, 30.0]
    timed_out = [e.key for e in _events(layer) if isinstance(e, TransactionTimedOut)]
    assert timed_out == [third.key, second.key, first.key]


def test_timers_started_moves_only_for_an_earlier_deadline() -> None:
    # The shell's contract (ElementTimer): while the counter does not move, a handle armed at or before the last
    # get_timer() is early enough. Kills a counter that never moves (a new earliest deadline would be missed) and one
    # that moves for every timer (a look at get_timer() per message).
    layer = TransactionLayer()
    layer.send_request(_request("MESSAGE", "TLS", branch="z9hG4bKa"), 0.0, PEER, timer_c=10.0)
    assert layer.get_timer() == 10.0
    seen = layer.timers_started
    layer.send_request(_request("MESSAGE", "TLS", branch="z9hG4bKb"), 1.0, PEER, timer_c=10.0)  # at 11: later
    assert layer.timers_started == seen
    layer.send_request(_request("MESSAGE", "TLS", branch="z9hG4bKc"), 1.0, PEER, timer_c=2.0)  # at 3: earlier
    assert layer.timers_started != seen and layer.get_timer() == 3.0


def test_a_non_invite_client_transaction_over_tls_lets_go_of_its_request() -> None:
    # §17.1.2.2: over a reliable transport Timer E is not started, so the request is never sent again; over UDP it
    # is (E), and an INVITE keeps it for the ACK of an error (§17.1.1.3). Kills a release on either of those.
    layer = TransactionLayer()
    tls = layer.send_request(_request("MESSAGE", "TLS", branch="z9hG4bKt"), 0.0, PEER)
    udp = layer.send_request(_request("MESSAGE", "UDP", branch="z9hG4bKu"), 0.0, PEER)
    invite = layer.send_request(_request("INVITE", "TLS", branch="z9hG4bKi"), 0.0, PEER)
    assert _sent(layer) == ["MESSAGE", "MESSAGE", "INVITE"]
    assert tls.request is None and udp.request is not None and invite.request is not None
