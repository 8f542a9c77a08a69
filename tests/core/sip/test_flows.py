"""Flows bound to the client's instance, grace after a connection loss, and re-anchoring (virtual time)."""

from __future__ import annotations

import struct
import uuid

import pytest
from core.media.test_anchor import (
    PBX_MEDIA,
    PBX_SIP,
    PRIVATE,
    Call,
    Harness,
    Tenant,
    _body,
    _lines,
    _value,
    answered_call,
    assert_clean,
    connect_media,
    status,
)
from helpers.webrtc_peer import WebRtcPeer, rtp_packet

from mcs_edge.certs import dtls_certificate
from mcs_edge.core.media.reanchor import StreamContinuity, transport_only_change
from mcs_edge.core.media.sdp import SessionDescription
from mcs_edge.core.sip.flows import BindingKey, FlowRegistry, binding_key
from mcs_edge.core.sip.headers import parse_name_addr, parse_name_addrs
from mcs_edge.core.sip.proxy import GRACE_CALLS_PER_TURN, CloseFlow, ToFlow

INSTANCE = "<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>"
GRACE = 30.0


# ------------------------------------------------------------------------------------- registry


def test_binding_key_needs_instance_and_reg_id() -> None:
    """Only a Contact with +sip.instance and reg-id binds; expires=0 is an unregistration."""
    to = parse_name_addr("<sip:alice@rossi.example.com>")
    with_both = parse_name_addrs(f'<sip:a@x.invalid;transport=ws>;reg-id=1;+sip.instance="{INSTANCE}"')
    key, unregister = binding_key("rossi", to, with_both)
    assert key == BindingKey("rossi", "sip:alice@rossi.example.com", INSTANCE.strip("<>"), "1")
    assert not unregister
    assert binding_key("rossi", to, parse_name_addrs("<sip:a@x.invalid>;reg-id=1")) == (None, False)
    gone = parse_name_addrs(f'<sip:a@x.invalid>;reg-id=1;+sip.instance="{INSTANCE}";expires=0')
    assert binding_key("rossi", to, gone)[1]


def test_registry_replaces_resolves_and_forgets() -> None:
    """A second connection of the same key replaces the first; old tokens resolve to it; idle bindings are forgotten after grace."""
    reg = FlowRegistry(grace=10)
    key = BindingKey("rossi", "sip:alice@rossi.example.com", "urn:uuid:1", "1")
    assert reg.bind(key, 1, "tok1", {}, 0.0) is None
    lost = reg.flow_closed(1, "rossi", 1.0, keep=True)
    assert lost is not None and lost.deadline == 11.0 and reg.get_timer() == 11.0
    assert reg.resolve("tok1") is not None and reg.resolve("tok1").flow_id is None  # type: ignore[union-attr]
    replaced = reg.bind(key, 2, "tok2", {}, 2.0)
    assert replaced is not None and replaced.lost_flows == [1]
    assert reg.resolve("tok1").flow_id == 2  # type: ignore[union-attr]
    assert reg.same_instance(1, 2)
    other = BindingKey("bianchi", "sip:alice@rossi.example.com", "urn:uuid:1", "1")
    reg.bind(other, 3, "tok3", {}, 2.0)
    assert not reg.same_instance(1, 3) and not reg.same_instance(2, 3)
    reg.recovered(1)
    reg.flow_closed(2, "rossi", 5.0, keep=False)
    assert list(reg.expired(14.0)) == [] and reg.resolve("tok2") is not None
    assert list(reg.expired(15.0)) == [] and reg.resolve("tok2") is None and reg.resolve("tok1") is None
    assert key not in reg.bindings and reg.get_timer() is None


def test_stream_continuity_maps_a_restarted_stream() -> None:
    """After re-anchoring a new SSRC/sequence/timestamp is mapped onto the PBX's stream: same SSRC, next sequence, timestamp advanced by the time away."""
    last = rtp_packet(65535, 0xAAAA, ts=1000)
    cont = StreamContinuity(last, 10.0, 8000)
    first = cont.rewrite(rtp_packet(777, 0xBBBB, ts=5), 12.0)
    seq, ts, ssrc = struct.unpack_from("!HII", first, 2)
    assert (seq, ts, ssrc) == (0, 1000 + 16000, 0xAAAA)
    seq, ts, ssrc = struct.unpack_from("!HII", cont.rewrite(rtp_packet(778, 0xBBBB, ts=165), 12.02), 2)
    assert (seq, ts, ssrc) == (1, 1000 + 16160, 0xAAAA)
    other = rtp_packet(1, 0xCCCC)
    assert cont.rewrite(other, 12.03) == other


def test_transport_only_change() -> None:
    """An ICE restart (new ufrag/pwd, certificate, address) is transport-only; a direction or codec change is not; nothing changed is not."""
    a = WebRtcPeer(("198.51.100.7", 50000))
    b = WebRtcPeer(("192.0.2.9", 40000))
    first = SessionDescription.parse(a.offer())
    assert transport_only_change(first, SessionDescription.parse(b.offer()))
    assert not transport_only_change(first, SessionDescription.parse(a.offer()))
    assert not transport_only_change(first, SessionDescription.parse(b.offer(direction="sendonly")))
    assert not transport_only_change(first, SessionDescription.parse(b.offer().replace(" 111 0", " 0")))


# ------------------------------------------------------------------------------- through the proxy


def register(
    h: Harness,
    flow: int,
    instance: str | None = INSTANCE,
    user: str = "alice",
    reg_id: str = "1",
    closed: list[int] | None = None,
) -> int:
    """REGISTER on ``flow`` (with +sip.instance/reg-id unless None), the PBX answers 200; the status relayed."""
    if closed is None:
        closed = []
    params = f';reg-id={reg_id};+sip.instance="{instance}"' if instance else ""
    text = (
        f"REGISTER sip:rossi.example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/WSS x.invalid;branch=z9hG4bK{uuid.uuid4().hex[:10]}\r\nMax-Forwards: 70\r\n"
        f"From: <sip:{user}@rossi.example.com>;tag=r1\r\nTo: <sip:{user}@rossi.example.com>\r\n"
        f"Call-ID: {uuid.uuid4().hex}\r\nCSeq: 1 REGISTER\r\n"
        f"Contact: <sip:{user}@x.invalid;transport=ws>{params}\r\nContent-Length: 0\r\n\r\n"
    )
    backend, _ = h.client(flow, text)
    req = backend[0]
    vias = "".join(f"{line}\r\n" for line in _lines(req, "Via"))
    reply = (
        f"SIP/2.0 200 OK\r\n{vias}From: {_value(req, 'From')}\r\nTo: {_value(req, 'To')};tag=p\r\n"
        f"Call-ID: {_value(req, 'Call-ID')}\r\nCSeq: 1 REGISTER\r\nContact: {_value(req, 'Contact')};expires=300\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    h.proxy.receive_from_backend(reply.encode(), PBX_SIP, "udp", h.now)
    actions = h.proxy.drain()
    closed.extend(a.flow_id for a in actions if isinstance(a, CloseFlow))
    return status([a.data.decode() for a in actions if isinstance(a, ToFlow) and a.flow_id == flow])[0]


def path_of(h: Harness, flow: int) -> str:
    return f"<sip:{h.proxy.flows[flow].token}@{PRIVATE}:5060;lr;ob>"


def lost_call(h: Harness, instance: str | None = INSTANCE) -> tuple[Call, WebRtcPeer, str, int]:
    """A registered client in an answered call with media up; its connection then closes."""
    flow = h.flow()
    assert register(h, flow, instance) == 200
    call, browser, answer = answered_call(h, flow)
    connect_media(h, call, browser, answer)
    h.proxy.close_flow(flow, h.now)
    return call, browser, answer, flow


def client_leg(h: Harness, call: Call) -> object:
    session = h.anchor.sessions[call.call_id]
    return next(leg for leg in session.legs if leg.side.name == "CLIENT")


def pbx_leg(h: Harness, call: Call) -> object:
    session = h.anchor.sessions[call.call_id]
    return next(leg for leg in session.legs if leg.side.name == "PBX")


def test_lost_connection_keeps_call_and_media_for_grace() -> None:
    """The WebSocket closes: the call and both relay ports stay; media toward the lost client is dropped and counted; the PBX hears nothing."""
    h = Harness()
    call, _browser, _answer, _flow = lost_call(h)
    assert call.call_id in h.anchor.sessions and len(h.io.open) == 3
    assert h.proxy.calls.calls[call.call_id].state == "grace"
    backend, _ = h._drain()
    assert backend == []
    leg = pbx_leg(h, call)
    for seq in range(2, 7):
        leg.receive(rtp_packet(seq, 0x7777), PBX_MEDIA, h.now)  # type: ignore[attr-defined]
    assert client_leg(h, call).counters.dropped["no-destination"] == 5  # type: ignore[attr-defined]
    h.tick(GRACE - 1)
    assert call.call_id in h.anchor.sessions


def test_no_reconnect_within_grace_sends_bye_with_reason_and_frees_everything() -> None:
    """Nobody comes back: at grace end the PBX gets a BYE (Reason: connection lost) in the client's dialog; every port and timer is released."""
    h = Harness()
    call, browser, _answer, _flow = lost_call(h)
    h.now += GRACE
    h.proxy.handle_timer(h.now)
    backend, _ = h._drain()
    (bye,) = [m for m in backend if m.startswith("BYE ")]
    assert bye.startswith("BYE sip:pbx@10.1.0.10:5060 SIP/2.0")
    assert _value(bye, "Reason") == 'SIP;cause=430;text="Client connection lost"'
    assert _value(bye, "Call-ID") == call.call_id and _value(bye, "CSeq") == "2 BYE"
    assert ";tag=c1" in _value(bye, "From") and f";tag={call.pbx_tag}" in _value(bye, "To")
    assert h.proxy.counters["calls_lost_after_grace"] == 1
    assert h.anchor.counters["media_sessions_ended:flow grace expired"] == 1
    assert h.proxy.calls.calls == {} and h.proxy.flow_registry.lost == {}
    call.pbx_reply(200, "OK", request=bye)
    h.tick(120)
    assert h.proxy.get_timer() is None
    del call, browser
    assert_clean(h)


def test_client_without_instance_gets_its_call_ended_after_grace() -> None:
    """A client that registered without +sip.instance cannot be recognised: its call ends after grace, as before, with a BYE to the PBX."""
    h = Harness()
    call, _browser, _answer, _flow = lost_call(h, instance=None)
    newflow = h.flow()
    assert register(h, newflow, None) == 200
    call.flow = newflow
    backend, back = call.request("INVITE", WebRtcPeer(("192.0.2.9", 40000)).offer())
    assert 403 in status(back) and backend == []
    h.tick(GRACE + 1)
    assert h.proxy.counters["calls_lost_after_grace"] == 1 and h.anchor.sessions == {}


@pytest.mark.parametrize("moved", [True, False], ids=["new-address", "same-address"])
def test_reconnect_re_register_and_ice_restart_recovers_the_call_without_the_pbx(moved: bool) -> None:
    """Same instance on a new connection (media from a new address, or the same one): re-REGISTER replaces the flow, the re-INVITE with an ICE restart is answered by the edge (PBX sees nothing), media flows again with the same SSRC and continuous sequence toward the PBX."""
    h = Harness()
    call, browser, first_answer, _flow = lost_call(h)
    pbx_in = pbx_leg(h, call)
    old_client_port = SessionDescription.parse(first_answer).media[0].port
    h.now += 2.0
    newflow = h.flow()
    assert register(h, newflow) == 200
    assert h.proxy.counters["flows_replaced"] == 1 and h.proxy.counters["calls_recovered"] == 1
    assert h.proxy.recovery.count == 1 and h.proxy.recovery.sum == 2.0
    call.flow = newflow
    fresh = WebRtcPeer(
        ("192.0.2.9", 40000) if moved else browser.addr,
        certificate=dtls_certificate("moved"),
        ssrcs=(0x5555, 0x6666),
    )
    backend, back = call.request("INVITE", fresh.offer())
    assert backend == [] and status(back) == [100, 200]
    answer = _body(back[-1])
    assert _value(back[-1], "Contact") == "<sip:pbx@10.1.0.10:5060>"
    assert SessionDescription.parse(answer).media[0].port == old_client_port
    backend, back = call.request("ACK", cseq=call.cseq)
    assert backend == [] and back == []  # the ACK of the local answer is absorbed
    sdp = SessionDescription.parse(answer)
    fresh.accept(sdp)
    leg = h.io.open[old_client_port][0]
    leg.receive(fresh.check(), fresh.addr, h.now)
    h.anchor.poke(leg.session, h.now)
    h.io.take(fresh.addr)
    out = fresh.start_dtls(h.now)
    for _ in range(10):
        for data in out:
            leg.receive(data, fresh.addr, h.now)
        out = []
        for data in h.io.take(fresh.addr):
            out += fresh.feed_dtls(data, h.now)
        if fresh.srtp is not None and not out:
            break
    assert fresh.srtp is not None
    leg.receive(fresh.srtp_packet(9000), fresh.addr, h.now)
    (to_pbx,) = h.io.take(PBX_MEDIA)
    seq, _ts, ssrc = struct.unpack_from("!HII", to_pbx, 2)
    assert ssrc == 0x1111 and seq == 2  # connect_media sent seq 1 with SSRC 0x1111
    pbx_in.receive(rtp_packet(2, 0x7777), PBX_MEDIA, h.now)  # type: ignore[attr-defined]
    assert fresh.srtp.unprotect_rtp(h.io.take(fresh.addr)[0]) == rtp_packet(2, 0x7777)
    assert h.proxy.counters["sip_reinvites_answered_locally"] == 1
    assert h.proxy.calls.calls[call.call_id].flow_id == newflow
    # the call still ends normally, and the PBX's BYE reaches the new connection
    flows = call.pbx_request("BYE")
    assert any(m.startswith("BYE ") for m in flows.get(newflow, []))


def test_incoming_call_after_replacement_reaches_the_new_connection() -> None:
    """The PBX calls the agent through the old Path token after the instance reconnected: the INVITE goes to the new connection."""
    h = Harness()
    old = h.flow()
    assert register(h, old) == 200
    old_path = path_of(h, old)
    new = h.flow()
    closed: list[int] = []
    assert register(h, new, closed=closed) == 200
    assert closed == [old]  # the replaced connection is closed by the edge
    h.proxy.close_flow(old, h.now)
    invite = (
        "INVITE sip:alice@x.invalid;transport=ws SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {PBX_SIP[0]}:5060;branch=z9hG4bK{uuid.uuid4().hex[:10]}\r\nMax-Forwards: 70\r\n"
        f"Route: {old_path}\r\nFrom: <sip:200@rossi.example.com>;tag=p9\r\nTo: <sip:alice@rossi.example.com>\r\n"
        f"Call-ID: {uuid.uuid4().hex}\r\nCSeq: 1 INVITE\r\nContact: <sip:pbx@10.1.0.10:5060>\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    _, flows = h.pbx(invite)
    assert [m.split(" ", 1)[0] for m in flows.get(new, [])] == ["INVITE"] and old not in flows


def test_strangers_with_the_old_token_are_refused() -> None:
    """During grace, another connection of the same tenant without the binding gets 403, another tenant 430, the same instance under another AOR 403; the call stays."""
    h = Harness()
    call, _browser, _answer, _flow = lost_call(h)
    offer = WebRtcPeer(("192.0.2.66", 40000)).offer()
    stranger = h.flow()
    call.flow = stranger
    backend, back = call.request("INVITE", offer)
    assert backend == [] and 403 in status(back)
    other_aor = h.flow()
    assert register(h, other_aor, user="bob") == 200
    call.flow = other_aor
    backend, back = call.request("INVITE", offer)
    assert backend == [] and 403 in status(back)
    foreign = h.flow(h.other)
    call.flow = foreign
    call.domain = "bianchi.example.com"
    backend, back = call.request("BYE")
    assert backend == [] and 430 in status(back)
    assert h.proxy.calls.calls[call.call_id].state == "grace"
    assert h.proxy.counters["sip_dialog_refused"] == 3


def test_pbx_requests_during_grace() -> None:
    """In grace a PBX re-INVITE gets 491 and an INFO 480 (not 430); a PBX BYE is accepted and ends the call; after grace the old token gets 430."""
    h = Harness()
    call, _browser, _answer, _flow = lost_call(h)
    assert h.proxy.counters.get("sip_flow_failed", 0) == 0
    # responses to the PBX go to PBX_SIP through the backend
    backend_before = h.proxy.counters.get("sip_requests_in_grace", 0)
    h.proxy.receive_from_backend(_pbx_in_dialog(call, "INVITE").encode(), PBX_SIP, "udp", h.now)
    h.proxy.receive_from_backend(_pbx_in_dialog(call, "INFO").encode(), PBX_SIP, "udp", h.now)
    codes = [
        int(a.data.split(b" ", 2)[1]) for a in h.proxy.drain() if getattr(a, "data", b"").startswith(b"SIP/")
    ]
    assert 491 in codes and 480 in codes and 430 not in codes
    assert h.proxy.counters["sip_requests_in_grace"] == backend_before + 2
    h.proxy.receive_from_backend(_pbx_in_dialog(call, "BYE").encode(), PBX_SIP, "udp", h.now)
    codes = [
        int(a.data.split(b" ", 2)[1]) for a in h.proxy.drain() if getattr(a, "data", b"").startswith(b"SIP/")
    ]
    assert 200 in codes and h.anchor.sessions == {} and h.proxy.calls.calls == {}
    assert h.proxy.flow_registry.lost == {}
    h.proxy.receive_from_backend(_pbx_in_dialog(call, "INFO").encode(), PBX_SIP, "udp", h.now)
    codes = [
        int(a.data.split(b" ", 2)[1]) for a in h.proxy.drain() if getattr(a, "data", b"").startswith(b"SIP/")
    ]
    assert 430 in codes


def _pbx_in_dialog(call: Call, method: str) -> str:
    routes = ", ".join(r.split(":", 1)[1].strip() for r in _lines(call.invite, "Record-Route"))
    return (
        f"{method} sip:alice@x.invalid;transport=ws SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 10.1.0.10:5060;branch=z9hG4bK{uuid.uuid4().hex[:10]}\r\nMax-Forwards: 70\r\n"
        f"Route: {routes}\r\nFrom: {call.to}\r\nTo: <sip:alice@{call.domain}>;tag=c1\r\n"
        f"Call-ID: {call.call_id}\r\nCSeq: 100 {method}\r\nContent-Length: 0\r\n\r\n"
    )


def test_live_connection_replaced_moves_its_calls() -> None:
    """The instance registers on a new connection while the old one still looks alive: the old one is closed, its call moves (no grace) and the PBX's in-dialog requests follow."""
    h = Harness()
    old = h.flow()
    assert register(h, old) == 200
    call, _browser, _answer = answered_call(h, old)
    new = h.flow()
    assert register(h, new) == 200
    assert h.proxy.calls.calls[call.call_id].flow_id == new
    h.proxy.close_flow(old, h.now)
    assert call.call_id in h.anchor.sessions and h.proxy.calls.calls[call.call_id].state == "up"
    flows = call.pbx_request("INFO")
    assert any(m.startswith("INFO ") for m in flows.get(new, []))


_ = Tenant


def test_zero_grace_ends_calls_at_once_with_the_bye() -> None:
    """sip.flow_grace = 0: the lost connection's call ends at the next timer, with the BYE and its Reason."""
    h = Harness()
    h.proxy.flow_registry.grace = 0.0
    _call, _browser, _answer, _flow = lost_call(h)
    assert h.proxy.get_timer() == h.now
    h.proxy.handle_timer(h.now)
    backend, _ = h._drain()
    assert [m.split(" ", 1)[0] for m in backend] == ["BYE"]
    assert h.anchor.sessions == {} and h.proxy.calls.calls == {}


def test_reinvite_that_changes_more_than_the_transport_goes_to_the_pbx() -> None:
    """After a reconnect, a re-INVITE that also puts the call on hold is forwarded to the PBX (not answered by the edge)."""
    h = Harness()
    call, _browser, _answer, _flow = lost_call(h)
    newflow = h.flow()
    assert register(h, newflow) == 200
    call.flow = newflow
    backend, back = call.request("INVITE", WebRtcPeer(("192.0.2.9", 40000)).offer(direction="sendonly"))
    assert [m.split(" ", 1)[0] for m in backend] == ["INVITE"] and status(back) == [100]
    assert h.proxy.counters.get("sip_reinvites_answered_locally", 0) == 0


def test_passthrough_call_resumes_when_the_relayed_reoffer_is_answered() -> None:
    """A passthrough tenant: the client's ICE restart must reach the PBX (its ICE is end to end); once the PBX answers, media toward the client flows again, to its new address."""
    h = Harness(mode="passthrough")
    flow = h.flow()
    assert register(h, flow) == 200
    call = Call(h, flow)
    browser = WebRtcPeer(("198.51.100.7", 50002))
    pbx_peer = WebRtcPeer(("10.1.0.10", 30002))
    backend, _ = call.request("INVITE", browser.offer())
    out = call.pbx_reply(200, "OK", pbx_peer.answer(SessionDescription.parse(_body(backend[0]))))
    assert status(out) == [200]
    call.request("ACK", cseq=call.cseq)
    h.proxy.close_flow(flow, h.now)
    pbx_leg(h, call).receive(rtp_packet(4, 0x7777), pbx_peer.addr, h.now)  # type: ignore[attr-defined]
    newflow = h.flow()
    assert register(h, newflow) == 200
    call.flow = newflow
    fresh = WebRtcPeer(("192.0.2.9", 40000), certificate=dtls_certificate("moved"))
    backend, _back = call.request("INVITE", fresh.offer())
    assert [m.split(" ", 1)[0] for m in backend] == ["INVITE"]  # end-to-end ICE: the PBX must see it
    out = call.pbx_reply(200, "OK", pbx_peer.answer(SessionDescription.parse(_body(backend[0]))))
    assert status(out) == [200]
    assert h.anchor.counters["media_dropped_client_lost"] == 1  # resumed (and counted) at the answer
    pbx_side = pbx_leg(h, call)
    pbx_side.receive(rtp_packet(5, 0x7777), pbx_peer.addr, h.now)  # type: ignore[attr-defined]
    assert h.io.take(fresh.addr) == [rtp_packet(5, 0x7777)]


def test_stream_continuity_rewrites_rtcp_of_the_mapped_stream() -> None:
    """Sender reports, SDES and BYE of the mapped stream carry the PBX's SSRC and a shifted RTP timestamp; other SSRCs are untouched."""
    cont = StreamContinuity(rtp_packet(100, 0xAAAA, ts=1000), 10.0, 8000)
    assert cont.rewrite_rtcp(b"\x80\xc8" + bytes(26)) == b"\x80\xc8" + bytes(26)  # nothing mapped yet
    cont.rewrite(rtp_packet(5, 0xBBBB, ts=50), 11.0)  # ts offset: 1000 + 8000 - 50
    sr = struct.pack("!BBHIIIIII", 0x80, 200, 6, 0xBBBB, 1, 2, 60, 7, 8)
    sdes = struct.pack("!BBHI", 0x81, 202, 2, 0xBBBB) + b"\x01\x00\x00\x00"
    bye = struct.pack("!BBHII", 0x82, 203, 2, 0xCCCC, 0xBBBB)
    out = cont.rewrite_rtcp(sr + sdes + bye)
    assert struct.unpack_from("!I", out, 4)[0] == 0xAAAA
    assert struct.unpack_from("!I", out, 16)[0] == 60 + 1000 + 8000 - 50
    assert struct.unpack_from("!I", out, len(sr) + 4)[0] == 0xAAAA
    assert struct.unpack_from("!II", out, len(sr) + len(sdes) + 4) == (0xCCCC, 0xAAAA)
    rr_other = struct.pack("!BBHI", 0x80, 201, 1, 0xDDDD)
    assert cont.rewrite_rtcp(rr_other) == rr_other
    assert cont.rewrite_rtcp(b"\x80\xc8\x00") == b"\x80\xc8\x00"  # truncated: unchanged


def test_a_burst_of_lost_connections_ends_over_several_turns() -> None:
    """20 connections lost at the same moment: their grace ends at most ``limit`` per call of
    ``expired``; the rest stay due (get_timer says so), so the proxy ends them over several reactor
    turns instead of all calls in one (issue 21)."""
    reg = FlowRegistry(grace=30)
    for flow_id in range(20):
        reg.flow_closed(flow_id, "t", 0.0, keep=True)
    first = list(reg.expired(30.0, 8))
    assert len(first) == 8
    assert reg.get_timer() == 30.0  # the rest still due
    assert len(list(reg.expired(30.0, 8))) == 8
    assert len(list(reg.expired(30.0, 8))) == 4
    assert reg.get_timer() is None and not reg.lost


def test_grace_ending_for_many_lost_connections_is_spread_over_turns() -> None:
    """Ten clients lost at once: when their grace ends, the proxy ends at most GRACE_CALLS_PER_TURN
    calls per timer turn and stays due for the rest (one reactor turn per slice, issue 21)."""
    h = Harness()
    for _ in range(10):
        lost_call(h, instance=None)
    h.now += GRACE
    h.proxy.handle_timer(h.now)
    assert h.proxy.counters["calls_lost_after_grace"] == GRACE_CALLS_PER_TURN
    timer = h.proxy.get_timer()
    assert timer is not None and timer <= h.now
    h.proxy.handle_timer(h.now)
    assert h.proxy.counters["calls_lost_after_grace"] == 10
    assert h.proxy.flow_registry.lost == {}
