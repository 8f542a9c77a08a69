"""Transactions in virtual time: every timer, retransmission schedules, absorption, matching."""

from __future__ import annotations

import pytest

from mcs_edge.core.sip.message import Request, Response, parse
from mcs_edge.core.sip.transaction import (
    ClientTransaction,
    PassAck,
    PassResponse,
    Send,
    ServerTransaction,
    State,
    Terminated,
    Timeout,
    TimerConfig,
    TransactionLayer,
    TransportError,
    server_key,
)
from mcs_edge.errors import LocalProtocolError

T1, T2, T4 = 0.5, 4.0, 5.0


def request(method: str = "INVITE", branch: str = "z9hG4bKabc", extra: str = "") -> Request:
    cseq_method = method
    data = (
        f"{method} sip:bob@example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP client.example.com:5060;branch={branch}\r\n"
        "Route: <sip:p1.example.com;lr>\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@example.com>;tag=a1\r\n"
        f"To: <sip:bob@example.com>{extra}\r\n"
        "Call-ID: call1@example.com\r\n"
        f"CSeq: 7 {cseq_method}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    msg = parse(data)
    assert isinstance(msg, Request)
    return msg


def response(req: Request, status: int) -> Response:
    return Response.for_request(req, status, "X", to_tag="b1" if status > 100 else None)


def sends(events: list[object]) -> list[Send]:
    return [e for e in events if isinstance(e, Send)]


def fire_until(tx: ClientTransaction | ServerTransaction, limit: float) -> list[float]:
    """Drive the transaction's timers up to ``limit``; return the times requests/responses went out."""
    times: list[float] = []
    tx.drain_events()
    while (deadline := tx.get_timer()) is not None and deadline <= limit:
        tx.handle_timer(deadline)
        times += [deadline for _ in sends(tx.drain_events())]
    return times


# --- INVITE client ------------------------------------------------------------------------


def test_invite_client_timer_a_schedule_and_timeout_b() -> None:
    """Timer A doubles from T1 (no T2 cap for INVITE); Timer B times out at 64*T1."""
    tx = ClientTransaction(request(), 0.0, reliable=False)
    first = tx.drain_events()
    assert isinstance(first[0], Send) and first[0].data == bytes(tx.request)
    assert tx.timer("A") == T1 and tx.timer("B") == 64 * T1
    times: list[float] = []
    events: list[object] = []
    while (deadline := tx.get_timer()) is not None:
        tx.handle_timer(deadline)
        new = tx.drain_events()
        events += new
        times += [deadline for _ in sends(new)]
    assert times == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert [type(e) for e in events[-2:]] == [Timeout, Terminated]
    assert tx.state is State.TERMINATED


def test_invite_client_reliable_has_no_retransmission() -> None:
    """Over a reliable transport only Timer B runs."""
    tx = ClientTransaction(request(), 10.0, reliable=True)
    assert tx.timer("A") is None and tx.get_timer() == 10.0 + 64 * T1


def test_invite_client_provisional_stops_retransmission() -> None:
    """A 1xx moves Calling to Proceeding, is passed up and stops timers A and B."""
    req = request()
    tx = ClientTransaction(req, 0.0, reliable=False)
    tx.drain_events()
    tx.receive_response(response(req, 180), 0.1)
    events = tx.drain_events()
    assert [type(e) for e in events] == [PassResponse]
    assert tx.state is State.PROCEEDING and tx.get_timer() is None


def test_invite_client_non_2xx_generates_ack_and_timer_d() -> None:
    """A 486 is passed up, ACKed per s.17.1.1.3, re-ACKed on retransmission; D ends it."""
    req = request()
    tx = ClientTransaction(req, 0.0, reliable=False)
    tx.drain_events()
    busy = response(req, 486)
    tx.receive_response(busy, 1.0)
    events = tx.drain_events()
    assert isinstance(events[0], PassResponse) and isinstance(events[1], Send)
    ack = events[1].message
    assert isinstance(ack, Request) and ack.method == "ACK"
    assert ack.uri == req.uri
    assert ack.top_via == req.top_via and len(ack.vias) == 1
    assert ack.to.tag == "b1" and ack.from_.tag == "a1"
    assert (ack.cseq.seq, ack.cseq.method) == (7, "ACK")
    assert ack.headers.get_all("route") == ["<sip:p1.example.com;lr>"]
    assert parse(events[1].data) == ack
    assert tx.state is State.COMPLETED and tx.timer("D") == 1.0 + 32.0
    tx.receive_response(busy, 2.0)
    again = tx.drain_events()
    assert len(again) == 1 and isinstance(again[0], Send) and again[0].data == events[1].data
    tx.handle_timer(33.0)
    assert [type(e) for e in tx.drain_events()] == [Terminated]


def test_invite_client_reliable_timer_d_is_zero() -> None:
    """Over TCP/TLS Timer D is 0: the transaction ends right after the ACK."""
    req = request()
    tx = ClientTransaction(req, 0.0, reliable=True)
    tx.drain_events()
    tx.receive_response(response(req, 404), 1.0)
    assert [type(e) for e in tx.drain_events()] == [PassResponse, Send, Terminated]
    assert tx.state is State.TERMINATED and tx.get_timer() is None


def test_invite_client_2xx_accepted_and_timer_m() -> None:
    """RFC 6026: a 2xx moves to Accepted; 2xx retransmissions pass up; Timer M ends it."""
    req = request()
    tx = ClientTransaction(req, 0.0, reliable=False)
    tx.drain_events()
    ok = response(req, 200)
    tx.receive_response(ok, 1.0)
    assert tx.state is State.ACCEPTED and tx.timer("M") == 1.0 + 64 * T1
    tx.receive_response(ok, 2.0)
    tx.receive_response(response(req, 180), 2.5)
    events = tx.drain_events()
    assert [type(e) for e in events] == [PassResponse, PassResponse]
    assert not any(isinstance(e, Send) for e in events)
    tx.handle_timer(1.0 + 64 * T1)
    assert tx.state is State.TERMINATED


def test_client_transport_error() -> None:
    """A transport error reports TransportError and terminates."""
    tx = ClientTransaction(request("OPTIONS"), 0.0, reliable=True)
    tx.drain_events()
    tx.transport_error(0.1)
    assert [type(e) for e in tx.drain_events()] == [TransportError, Terminated]
    tx.transport_error(0.2)
    assert tx.drain_events() == []


def test_client_refuses_ack_and_missing_cookie() -> None:
    """ACK never has a client transaction; a branch without the magic cookie is refused."""
    with pytest.raises(LocalProtocolError):
        ClientTransaction(request("ACK"), 0.0, reliable=False)
    with pytest.raises(LocalProtocolError):
        ClientTransaction(request("OPTIONS", branch="old2543"), 0.0, reliable=False)


# --- non-INVITE client ------------------------------------------------------------------


def test_non_invite_client_timer_e_schedule_and_timeout_f() -> None:
    """Timer E doubles from T1 up to T2; Timer F times out at 64*T1."""
    tx = ClientTransaction(request("OPTIONS"), 0.0, reliable=False)
    times = fire_until(tx, 100.0)
    # intervals 0.5, 1, 2, 4, 4, 4 ... until F at 32 s
    assert times == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert tx.state is State.TERMINATED


def test_non_invite_client_timeout_event() -> None:
    """When F fires the TU gets Timeout then Terminated."""
    tx = ClientTransaction(request("OPTIONS"), 0.0, reliable=True)
    tx.drain_events()
    tx.handle_timer(64 * T1)
    assert [type(e) for e in tx.drain_events()] == [Timeout, Terminated]


def test_non_invite_client_proceeding_retransmits_every_t2() -> None:
    """After a 1xx, Timer E keeps retransmitting at T2 intervals."""
    req = request("OPTIONS")
    tx = ClientTransaction(req, 0.0, reliable=False)
    tx.drain_events()
    tx.receive_response(response(req, 100), 0.2)
    assert tx.state is State.PROCEEDING
    times = fire_until(tx, 10.0)
    assert times == [0.5, 4.5, 8.5]


def test_non_invite_client_completed_absorbs_and_timer_k() -> None:
    """A final response completes; later responses are absorbed; K (T4) terminates."""
    req = request("OPTIONS")
    tx = ClientTransaction(req, 0.0, reliable=False)
    tx.drain_events()
    tx.receive_response(response(req, 200), 1.0)
    assert [type(e) for e in tx.drain_events()] == [PassResponse]
    assert tx.timer("K") == 1.0 + T4 and tx.timer("E") is None and tx.timer("F") is None
    tx.receive_response(response(req, 200), 2.0)
    assert tx.drain_events() == []
    tx.handle_timer(1.0 + T4)
    assert [type(e) for e in tx.drain_events()] == [Terminated]
    reliable = ClientTransaction(req, 0.0, reliable=True)
    reliable.drain_events()
    reliable.receive_response(response(req, 200), 1.0)
    assert [type(e) for e in reliable.drain_events()] == [PassResponse, Terminated]


def test_configurable_timers() -> None:
    """T1/T2/T4 come from TimerConfig."""
    config = TimerConfig(t1=0.1, t2=0.4, t4=1.0)
    tx = ClientTransaction(request("OPTIONS"), 0.0, reliable=False, config=config)
    assert tx.timer("F") == pytest.approx(6.4)
    times = fire_until(tx, 2.0)
    assert times == pytest.approx([0.1, 0.3, 0.7, 1.1, 1.5, 1.9])


# --- INVITE server ------------------------------------------------------------------------


def test_invite_server_auto_trying_and_retransmission() -> None:
    """Without a TU 1xx within 200 ms the transaction sends 100 Trying; a retransmitted
    INVITE gets the last provisional again."""
    req = request()
    tx = ServerTransaction(req, 0.0, reliable=False)
    assert tx.state is State.PROCEEDING
    tx.receive_request(req, 0.1)
    assert tx.drain_events() == []
    tx.handle_timer(0.2)
    (trying,) = tx.drain_events()
    assert isinstance(trying, Send) and isinstance(trying.message, Response) and trying.message.status == 100
    tx.receive_request(req, 0.5)
    (again,) = tx.drain_events()
    assert isinstance(again, Send) and again.data == trying.data


def test_invite_server_tu_provisional_cancels_auto_trying() -> None:
    """A TU 180 before 200 ms means no automatic 100."""
    req = request()
    tx = ServerTransaction(req, 0.0, reliable=False)
    tx.send_response(response(req, 180), 0.05)
    assert tx.get_timer() is None
    assert len(sends(tx.drain_events())) == 1


def test_invite_server_final_timer_g_h() -> None:
    """A 486 is retransmitted by G (T1 doubling, T2 cap) until H at 64*T1 reports Timeout."""
    req = request()
    tx = ServerTransaction(req, 0.0, reliable=False)
    tx.send_response(response(req, 486), 0.0)
    assert tx.state is State.COMPLETED and tx.timer("H") == 64 * T1
    times = fire_until(tx, 100.0)
    assert times[:6] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5]
    assert times[-1] == 31.5
    assert tx.state is State.TERMINATED


def test_invite_server_timeout_event_without_ack() -> None:
    """Timer H firing gives Timeout then Terminated."""
    req = request()
    tx = ServerTransaction(req, 0.0, reliable=True)
    tx.send_response(response(req, 500), 0.0)
    assert tx.timer("G") is None
    tx.drain_events()
    tx.handle_timer(64 * T1)
    assert [type(e) for e in tx.drain_events()] == [Timeout, Terminated]


def test_invite_server_ack_confirms_and_timer_i() -> None:
    """INVITE again resends the final; ACK confirms; I (T4) terminates; later ACKs absorbed."""
    req = request()
    tx = ServerTransaction(req, 0.0, reliable=False)
    tx.send_response(response(req, 486), 0.0)
    (final,) = tx.drain_events()
    tx.receive_request(req, 0.3)
    (again,) = tx.drain_events()
    assert isinstance(final, Send) and isinstance(again, Send) and again.data == final.data
    tx.receive_request(request("ACK", extra=";tag=b1"), 0.4)
    assert tx.state is State.CONFIRMED and tx.timer("G") is None and tx.timer("I") == 0.4 + T4
    tx.receive_request(request("ACK", extra=";tag=b1"), 0.6)
    tx.receive_request(req, 0.7)
    assert tx.drain_events() == []
    tx.handle_timer(0.4 + T4)
    assert [type(e) for e in tx.drain_events()] == [Terminated]


def test_invite_server_2xx_accepted_timer_l() -> None:
    """RFC 6026: a 2xx moves to Accepted; INVITE retransmissions are absorbed, TU 2xx
    retransmissions are sent, ACKs go to the TU, and Timer L terminates."""
    req = request()
    tx = ServerTransaction(req, 0.0, reliable=False)
    ok = response(req, 200)
    tx.send_response(ok, 0.1)
    tx.drain_events()
    assert tx.state is State.ACCEPTED and tx.timer("L") == 0.1 + 64 * T1
    tx.receive_request(req, 0.6)
    assert tx.drain_events() == []
    tx.send_response(ok, 0.6)
    assert len(sends(tx.drain_events())) == 1
    ack = request("ACK", branch="z9hG4bKabc", extra=";tag=b1")
    tx.receive_request(ack, 0.7)
    (passed,) = tx.drain_events()
    assert isinstance(passed, PassAck) and passed.ack is ack
    with pytest.raises(LocalProtocolError):
        tx.send_response(response(req, 486), 0.8)
    tx.handle_timer(0.1 + 64 * T1)
    assert tx.state is State.TERMINATED


# --- non-INVITE server ------------------------------------------------------------------


def test_non_invite_server_absorbs_and_timer_j() -> None:
    """Trying absorbs retransmissions; Proceeding and Completed resend the last response;
    J (64*T1 unreliable, 0 reliable) terminates."""
    req = request("REGISTER")
    tx = ServerTransaction(req, 0.0, reliable=False)
    assert tx.state is State.TRYING and tx.get_timer() is None
    tx.receive_request(req, 0.1)
    assert tx.drain_events() == []
    tx.send_response(response(req, 100), 0.2)
    tx.receive_request(req, 0.3)
    assert len(sends(tx.drain_events())) == 2
    tx.send_response(response(req, 200), 0.4)
    (final,) = tx.drain_events()
    tx.receive_request(req, 1.0)
    (again,) = tx.drain_events()
    assert isinstance(final, Send) and isinstance(again, Send) and again.data == final.data
    assert tx.timer("J") == 0.4 + 64 * T1
    with pytest.raises(LocalProtocolError):
        tx.send_response(response(req, 500), 1.1)
    tx.handle_timer(0.4 + 64 * T1)
    assert tx.state is State.TERMINATED
    reliable = ServerTransaction(req, 0.0, reliable=True)
    reliable.send_response(response(req, 200), 1.0)
    assert [type(e) for e in reliable.drain_events()] == [Send, Terminated]


def test_server_refuses_ack() -> None:
    """An ACK never creates a server transaction."""
    with pytest.raises(LocalProtocolError):
        ServerTransaction(request("ACK"), 0.0, reliable=False)


# --- matching and the layer -------------------------------------------------------------


def test_server_keys() -> None:
    """ACK matches its INVITE; CANCEL and other branches or sent-bys do not; RFC 2543 fallback."""
    invite = request()
    assert server_key(request("ACK", extra=";tag=b1")) == server_key(invite)
    assert server_key(request("CANCEL")) != server_key(invite)
    assert server_key(request(branch="z9hG4bKother")) != server_key(invite)
    old = request(branch="2543branch")
    assert server_key(request("ACK", branch="2543branch", extra=";tag=b1")) == server_key(old)
    assert server_key(old)[0] == "2543"


def test_layer_routes_requests_and_responses() -> None:
    """The layer creates, matches and forgets transactions, with one event queue and timer."""
    layer = TransactionLayer()
    invite = request()
    stx, new = layer.receive_request(invite, 0.0, reliable=False)
    assert new and stx is not None
    again, new_again = layer.receive_request(invite, 0.1, reliable=False)
    assert again is stx and not new_again
    assert layer.receive_request(request("ACK", branch="z9hG4bKunknown"), 0.1, reliable=False) == (
        None,
        False,
    )
    cancel, new_cancel = layer.receive_request(request("CANCEL"), 0.1, reliable=False)
    assert new_cancel and cancel is not stx

    out = request("INVITE", branch="z9hG4bKout1")
    ctx = layer.send_request(out, 0.0, reliable=False)
    with pytest.raises(LocalProtocolError):
        layer.send_request(out, 0.0, reliable=False)
    assert layer.get_timer() == 0.2  # 100 Trying of the server INVITE
    layer.handle_timer(0.5)
    kinds = [type(e).__name__ for e in layer.drain_events()]
    assert kinds.count("Send") == 3  # client INVITE, 100 Trying, one retransmission of the INVITE
    assert layer.receive_response(response(out, 180), 0.6) is ctx
    stray = response(request("INVITE", branch="z9hG4bKnobody"), 200)
    assert layer.receive_response(stray, 0.6) is None
    assert isinstance(layer.next_event(), PassResponse)
    assert len(layer) == 3
    layer.send_response(stx, response(invite, 486), 1.0)
    layer.receive_request(request("ACK", extra=";tag=b1"), 1.1, reliable=False)
    layer.send_response(cancel, response(request("CANCEL"), 200), 1.0)
    layer.receive_response(response(out, 603), 1.2)
    layer.handle_timer(100.0)
    assert len(layer) == 0
    assert layer.get_timer() is None
    terminated = [e for e in layer.drain_events() if isinstance(e, Terminated)]
    assert {e.transaction for e in terminated} == {stx, cancel, ctx}


# --- what a completed transaction keeps ------------------------------------------------------


def test_completed_server_keeps_only_bytes_and_still_answers_retransmissions() -> None:
    """Once final, a server transaction releases the parsed messages; a retransmission gets the same bytes."""
    req = request("OPTIONS")
    tx = ServerTransaction(req, 0.0, reliable=False)
    tx.send_response(response(req, 200), 0.1)
    (final,) = sends(tx.drain_events())
    assert tx.released and tx.last_response is None and tx.method == "OPTIONS"
    with pytest.raises(LocalProtocolError):
        _ = tx.request
    tx.receive_request(req, 1.0)
    (again,) = sends(tx.drain_events())
    assert again.data == final.data and again.message is None


def test_completed_invite_client_resends_its_ack_from_bytes() -> None:
    """A non-2xx final keeps the ACK's bytes only; a retransmitted final gets the same ACK."""
    req = request()
    tx = ClientTransaction(req, 0.0, reliable=False)
    tx.drain_events()
    tx.receive_response(response(req, 486), 0.1)
    (ack,) = sends(tx.drain_events())
    assert tx.released and isinstance(ack.message, Request) and ack.message.method == "ACK"
    tx.receive_response(response(req, 486), 0.2)
    (again,) = sends(tx.drain_events())
    assert again.data == ack.data


def test_retained_keys_share_method_and_sent_by_with_no_string_of_the_parsed_message() -> None:
    """Two transactions from two parsed messages share the method name and the sent-by string of
    their keys: a completed transaction keeps no string of its message beyond its own branch."""
    a, b = request("OPTIONS", "z9hG4bKa"), request("OPTIONS", "z9hG4bKb")
    b.method = "".join(["OPTI", "ONS"])  # a start line seen before shares its strings: b gets its own
    assert a.method is not b.method
    ta, tb = ServerTransaction(a, 0.0, reliable=False), ServerTransaction(b, 0.0, reliable=False)
    assert ta.method is tb.method
    assert ta.key[1] == "client.example.com:5060" and ta.key[1] is tb.key[1]
    assert ta.key[2] is tb.key[2] is ta.method
    ca, cb = ClientTransaction(a, 0.0, reliable=False), ClientTransaction(b, 0.0, reliable=False)
    assert ca.method is cb.method is ca.key[1] is cb.key[1]


def test_accepted_invite_transactions_release_their_messages() -> None:
    """RFC 6026 Accepted (Timers L and M, 64*T1): both sides keep no parsed message."""
    req = request()
    server = ServerTransaction(req, 0.0, reliable=True)
    server.send_response(response(req, 200), 0.1)
    client = ClientTransaction(req, 0.0, reliable=False)
    client.receive_response(response(req, 200), 0.1)
    assert server.state is client.state is State.ACCEPTED
    assert server.released and client.released and client.last_response is None
    client.drain_events()
    client.receive_response(response(req, 200), 0.5)  # a 2xx retransmission still goes up
    assert [type(e) for e in client.drain_events()] == [PassResponse]


def test_layer_timers_hold_no_terminated_transaction() -> None:
    """A transaction that ends before its other timers leaves nothing in the layer's timer index."""
    layer = TransactionLayer()
    out = request("OPTIONS", branch="z9hG4bKk1")
    ctx = layer.send_request(out, 0.0, reliable=False)  # E at T1, F at 64*T1
    layer.receive_response(response(out, 200), 0.1)  # K at 0.1 + T4, long before F
    assert layer.get_timer() == 0.1 + T4  # re-filed under K: E stopped, F later
    layer.handle_timer(0.1 + T4)
    assert ctx.state is State.TERMINATED and len(layer) == 0
    assert layer.get_timer() is None
    assert all(isinstance(key, float) for key in layer._heap)  # no reference to the transaction


def test_layer_timers_with_equal_deadlines_all_fire() -> None:
    """Two transactions with the same deadline both fire (keys are kept distinct)."""
    layer = TransactionLayer()
    a = layer.send_request(request("OPTIONS", branch="z9hG4bKa"), 0.0, reliable=False)
    b = layer.send_request(request("OPTIONS", branch="z9hG4bKb"), 0.0, reliable=False)
    layer.drain_events()
    layer.handle_timer(0.5)
    assert len(sends(layer.drain_events())) == 2
    layer.handle_timer(64 * T1)
    assert a.state is b.state is State.TERMINATED


def test_layer_timer_grid_coalesces_deadlines_and_never_fires_early() -> None:
    """On a 1/64 s grid, transactions started 1 ms apart share one due point (one timer turn fires
    them all), no timer fires before its own deadline, none more than one step after it."""
    grid = 1 / 64
    layer = TransactionLayer(TimerConfig(granularity=grid))
    exact = TransactionLayer()
    starts = [10.0 + 0.001 * i for i in range(1, 11)]  # ten REGISTERs 1 ms apart
    for i, start in enumerate(starts):
        for each in (layer, exact):
            each.send_request(request("REGISTER", branch=f"z9hG4bKg{i}"), start, reliable=False)
    layer.drain_events()
    exact.drain_events()
    first = starts[0] + T1
    due = layer.get_timer()
    assert due is not None and first <= due < first + grid and (due / grid).is_integer()
    assert exact.get_timer() == first
    turns = 0
    while (at := exact.get_timer()) is not None and at < starts[-1] + T1 + grid:
        exact.handle_timer(at)
        turns += 1
    assert turns == 10  # exact deadlines: one timer turn per transaction
    layer.handle_timer(first - 0.0005)  # before every deadline: nothing fires
    assert sends(layer.drain_events()) == []
    assert due is not None
    layer.handle_timer(due)
    assert len(sends(layer.drain_events())) == 10  # all ten deadlines lie in [10.501, 10.510]: one turn
    again = layer.get_timer()  # the second retransmission (T2 doubling from each deadline), on the grid
    assert again is not None and first + 2 * T1 <= again < first + 2 * T1 + grid
