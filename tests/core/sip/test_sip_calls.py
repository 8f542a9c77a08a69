"""The proxy core's call table and drain flag, in virtual time with no sockets."""

from __future__ import annotations

from helpers.sipcore import Tenant, one_tenant_proxy

from mcs_edge.core.sip.calls import CallTable
from mcs_edge.core.sip.proxy import ProxySettings, SipProxy, ToBackend, ToFlow

PBX = ("10.1.0.10", 5060)


T = Tenant("rossi")


def _proxy() -> SipProxy:
    return one_tenant_proxy(T, "rossi.example.com", PBX, ProxySettings("203.0.113.1", 443, "10.0.0.5", 5070))


def _invite(call_id: str, branch: str) -> bytes:
    return (
        f"INVITE sip:200@rossi.example.com SIP/2.0\r\nVia: SIP/2.0/WSS c.invalid;branch={branch}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:a@rossi.example.com>;tag=a1\r\nTo: <sip:200@rossi.example.com>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:a@c.invalid;transport=ws>\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def _answer(req: bytes, status: str) -> bytes:
    lines = req.decode().split("\r\n")
    keep = [ln for ln in lines if ln.split(":", 1)[0] in ("Via", "From", "Call-ID", "CSeq")]
    to = next(ln for ln in lines if ln.startswith("To:"))
    return (
        "SIP/2.0 " + status + "\r\n" + "\r\n".join([*keep, to + ";tag=p1"]) + "\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def _to_backend(actions: list[object]) -> list[bytes]:
    return [a.data for a in actions if isinstance(a, ToBackend)]


def _to_flow(actions: list[object]) -> list[bytes]:
    return [a.data for a in actions if isinstance(a, ToFlow)]


def test_call_lives_from_invite_to_bye_and_failures_end_early_calls() -> None:
    """An INVITE opens a call, its 2xx confirms it, BYE ends it; a 486 ends an unanswered one."""
    p = _proxy()
    flow = p.open_flow(T, "wss", ("198.51.100.7", 40000), 0.0)
    p.receive_from_client(flow.id, _invite("c1", "z9hG4bKc1"), 0.0)
    fwd = _to_backend(p.drain())
    assert len(fwd) == 1 and len(p.calls) == 1 and p.calls.calls["c1"].answered is None
    p.receive_from_backend(_answer(fwd[0], "200 OK"), PBX, "udp", 0.1)
    assert any(d.startswith(b"SIP/2.0 200") for d in _to_flow(p.drain()))
    assert p.calls.calls["c1"].answered == 0.1
    assert p.calls.by_tenant() == {"rossi": 1} and p.calls.on_flow(flow.id) == 1
    p.receive_from_client(flow.id, _invite("c2", "z9hG4bKc2"), 0.2)
    fwd = _to_backend(p.drain())
    p.receive_from_backend(_answer(fwd[0], "486 Busy Here"), PBX, "udp", 0.3)
    p.drain()
    assert set(p.calls.calls) == {"c1"}
    bye = (
        b"BYE sip:pbx@10.1.0.10 SIP/2.0\r\nVia: SIP/2.0/WSS c.invalid;branch=z9hG4bKb1\r\nMax-Forwards: 70\r\n"
        b"From: <sip:a@rossi.example.com>;tag=a1\r\nTo: <sip:200@rossi.example.com>;tag=p1\r\nCall-ID: c1\r\n"
        b"CSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    )
    p.receive_from_client(flow.id, bye, 0.4)
    fwd = _to_backend(p.drain())
    assert len(p.calls) == 1  # a BYE ends the call when the far side accepts it
    p.receive_from_backend(_answer(fwd[0], "200 OK"), PBX, "udp", 0.5)
    p.drain()
    assert len(p.calls) == 0 and p.calls.started_total == 2 and p.calls.ended_total == 2
    assert p.counters["sip_responses_relayed_2xx"] == 2 and p.counters["sip_responses_relayed_4xx"] == 1


def test_draining_refuses_new_invites_with_503_retry_after_but_not_in_dialog_requests() -> None:
    """With draining set, an initial INVITE gets 503 + Retry-After and reaches no PBX; a BYE still passes."""
    p = _proxy()
    flow = p.open_flow(T, "wss", ("198.51.100.7", 40000), 0.0)
    p.draining = True
    p.receive_from_client(flow.id, _invite("c9", "z9hG4bKc9"), 0.0)
    actions = p.drain()
    assert _to_backend(actions) == []
    final = [d for d in _to_flow(actions) if d.startswith(b"SIP/2.0 503")]
    assert len(final) == 1 and b"Retry-After: " in final[0]
    assert p.counters["sip_refused_draining"] == 1 and len(p.calls) == 0
    bye = (
        b"BYE sip:pbx@10.1.0.10 SIP/2.0\r\nVia: SIP/2.0/WSS c.invalid;branch=z9hG4bKb9\r\nMax-Forwards: 70\r\n"
        b"From: <sip:a@rossi.example.com>;tag=a1\r\nTo: <sip:200@rossi.example.com>;tag=p1\r\nCall-ID: old\r\n"
        b"CSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    )
    p.receive_from_client(flow.id, bye, 0.1)
    assert len(_to_backend(p.drain())) == 1


def test_a_closed_flow_ends_its_calls() -> None:
    """Calls belong to their client flow: closing it removes them (bounded by the flows)."""
    t = CallTable()
    t.invite("a", "rossi", 1, True, 0.0)
    t.invite("b", "rossi", 1, False, 0.0)
    t.invite("c", "bianchi", 2, True, 0.0)
    t.answered("a", 1.0)
    assert t.failed("a") is None  # a failed re-INVITE does not end an answered call
    assert {c.call_id for c in t.flow_closed(1)} == {"a", "b"}
    assert set(t.calls) == {"c"} and t.on_flow(1) == 0 and t.ended_total == 2


def test_answered_invite_keeps_compact_records_and_relays_2xx_retransmissions() -> None:
    """After the 2xx, Timer L/M keep the pair without parsed messages; a 2xx retransmission still reaches the client."""
    p = _proxy()
    flow = p.open_flow(T, "wss", ("198.51.100.7", 40000), 0.0)
    p.receive_from_client(flow.id, _invite("c9", "z9hG4bKc9"), 0.0)
    fwd = _to_backend(p.drain())
    answer = _answer(fwd[0], "200 OK")
    p.receive_from_backend(answer, PBX, "udp", 0.1)
    first = [d for d in _to_flow(p.drain()) if d.startswith(b"SIP/2.0 200")]
    (pair,) = p._pairs_by_server.values()
    assert pair.request is None and pair.method == "INVITE" and pair.call_id == "c9" and pair.initial
    assert pair.server.released and pair.client is not None and pair.client.released
    p.receive_from_backend(answer, PBX, "udp", 0.6)  # the PBX did not get the ACK yet
    again = [d for d in _to_flow(p.drain()) if d.startswith(b"SIP/2.0 200")]
    assert len(first) == len(again) == 1
    p.handle_timer(0.1 + 64 * 0.5)
    p.drain()
    assert len(p.layer) == 0 and p.pairs == 0


def test_answered_call_keeps_the_pbx_route_set_as_written_and_its_contact() -> None:
    """The dialog noted at the 2xx (for the edge's own BYE after grace) holds the PBX side's
    Record-Route entries as the PBX wrote them, toward the PBX, without the edge's own entries,
    and the PBX's Contact URI as target."""
    p = _proxy()
    flow = p.open_flow(T, "wss", ("198.51.100.7", 40000), 0.0)
    p.receive_from_client(flow.id, _invite("c7", "z9hG4bKc7"), 0.0)
    (fwd,) = _to_backend(p.drain())
    ours = [ln for ln in fwd.decode().split("\r\n") if ln.startswith("Record-Route:")]
    assert len(ours) == 2
    pbx_rr = "<sip:sbc.pbx.example.com;lr;ftag=a1> , <sip:10.1.0.20:5060;lr>"
    answer = _answer(fwd, "200 OK").replace(
        b"Content-Length",
        f"Record-Route: {pbx_rr}\r\n{ours[0]}\r\n{ours[1]}\r\nContact: <sip:200@10.1.0.10:5060>\r\nContent-Length".encode(),
    )
    p.receive_from_backend(answer, PBX, "udp", 0.1)
    assert any(d.startswith(b"SIP/2.0 200") for d in _to_flow(p.drain()))
    dialog = p.calls.calls["c7"].dialog
    assert dialog is not None
    assert dialog.routes == ("<sip:10.1.0.20:5060;lr>", "<sip:sbc.pbx.example.com;lr;ftag=a1>")
    assert dialog.target == "sip:200@10.1.0.10:5060"
    assert dialog.local == "<sip:a@rossi.example.com>;tag=a1" and dialog.remote.endswith(";tag=p1")
