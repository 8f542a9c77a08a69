"""Record-Route and Route handling for SIP/TLS clients (the mobile app) next to WebSocket clients."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from mcs_edge.core.sip.message import Request, Response, parse
from mcs_edge.core.sip.proxy import ProxySettings, SipProxy, ToBackend, ToFlow

PUBLIC = "203.0.113.10"
PBX = ("10.1.0.10", 5060)


@dataclass(frozen=True)
class Tenant:
    id: str
    path: bool = True


ROSSI, BIANCHI = Tenant("rossi"), Tenant("bianchi")
DOMAINS = {"rossi.example.com": ROSSI, "bianchi.example.com": BIANCHI}


def _proxy() -> SipProxy:
    return SipProxy(
        ProxySettings(
            public_host=PUBLIC,
            public_port=443,
            backend_host="10.0.0.5",
            backend_port=5070,
            public_tls_port=5061,
            listen_addresses=frozenset({("0.0.0.0", 5061), ("10.0.0.5", 5070)}),
        ),
        tenant_for_domain=DOMAINS.get,
        backend_of=lambda t: ("udp", PBX),
        tenants_at=lambda ip: [ROSSI, BIANCHI] if ip == PBX[0] else [],
        random_bytes=secrets.token_bytes,
    )


def _request(
    method: str,
    *,
    branch: str,
    routes: tuple[str, ...] = (),
    to_tag: str = "",
    cseq: int = 1,
    call_id: str = "c1",
    domain: str = "rossi.example.com",
) -> bytes:
    to = f"<sip:200@{domain}>" + (f";tag={to_tag}" if to_tag else "")
    lines = [
        f"{method} sip:200@{domain} SIP/2.0",
        f"Via: SIP/2.0/TLS 192.168.1.7:40000;branch={branch};rport",
        *(f"Route: {r}" for r in routes),
        "Max-Forwards: 70",
        f"From: <sip:alice@{domain}>;tag=a1",
        f"To: {to}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        "Contact: <sip:alice@192.168.1.7:40000;transport=tls>",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _split(proxy: SipProxy) -> tuple[list[ToFlow], list[ToBackend]]:
    actions = proxy.drain()
    return [a for a in actions if isinstance(a, ToFlow)], [a for a in actions if isinstance(a, ToBackend)]


def _answer(req: Request, status: int = 200, tag: str = "p1") -> bytes:
    resp = Response.for_request(req, status, "OK", to_tag=tag)
    for rr in req.headers.get_all("record-route"):
        resp.headers.add("Record-Route", rr)
    resp.headers.add("Contact", "<sip:200@10.1.0.10:5060>")
    return resp.serialize()


def _sent(action: Any) -> Any:
    return parse(action.data)


def test_record_route_names_the_listener_of_the_flows_transport() -> None:
    """A TLS client's Record-Route has the SIP/TLS port; a WebSocket client's the HTTPS port."""
    proxy = _proxy()
    for transport, port, kind in (("tls", 5061, "tls"), ("wss", 443, "ws")):
        flow = proxy.open_flow(ROSSI, transport, ("192.168.1.7", 40000), 0.0)
        proxy.receive_from_client(
            flow.id, _request("INVITE", branch=f"z9hG4bK{transport}", call_id=transport), 1.0
        )
        _to_flow, to_backend = _split(proxy)
        invite = _sent(to_backend[0])
        rr = invite.headers.get_all("record-route")
        assert rr[1] == f"<sip:{flow.token}@{PUBLIC}:{port};transport={kind};lr;r2=on>"
        # and the PBX's answer reaches the client with that entry
        proxy.receive_from_backend(_answer(invite), PBX, "udp", 1.1)
        to_flow, _ = _split(proxy)
        assert f"{PUBLIC}:{port};transport={kind}" in to_flow[-1].data.decode()


def test_routes_naming_the_edge_on_any_listener_are_removed() -> None:
    """RFC 3261 s.16.4: Routes naming the SIP/TLS listener (address or tenant domain) are ours; others stay."""
    proxy = _proxy()
    flow = proxy.open_flow(ROSSI, "tls", ("192.168.1.7", 40000), 0.0)
    ours = (
        f"<sip:{PUBLIC}:5061;transport=tls;lr>",
        "<sip:rossi.example.com;transport=tls;lr>",
        "<sip:rossi.example.com:5061;lr>",
    )
    for i, route in enumerate(ours):
        proxy.receive_from_client(flow.id, _request("REGISTER", branch=f"z9hG4bKr{i}", routes=(route,)), 1.0)
        _f, to_backend = _split(proxy)
        assert _sent(to_backend[0]).headers.get_all("route") == [], route
    foreign = "<sip:sbc.elsewhere.example:5061;transport=tls;lr>"
    proxy.receive_from_client(flow.id, _request("INVITE", branch="z9hG4bKi1", routes=(ours[0], foreign)), 1.0)
    _f, to_backend = _split(proxy)
    assert _sent(to_backend[0]).headers.get_all("route") == [foreign]


def test_in_dialog_requests_on_a_new_connection_follow_the_flow_token() -> None:
    """ACK and BYE sent on a new TLS connection to the Record-Route URI reach the PBX; the 200 comes back there."""
    proxy = _proxy()
    first = proxy.open_flow(ROSSI, "tls", ("192.168.1.7", 40000), 0.0)
    proxy.receive_from_client(first.id, _request("INVITE", branch="z9hG4bKi1"), 1.0)
    _f, to_backend = _split(proxy)
    invite = _sent(to_backend[0])
    proxy.receive_from_backend(_answer(invite), PBX, "udp", 1.1)
    to_flow, _ = _split(proxy)
    ok = _sent(to_flow[-1])
    routes = tuple(reversed(ok.headers.get_all("record-route")))  # the UAC's route set (RFC 3261 s.12.1.2)
    assert ":5061;transport=tls" in routes[0]
    second = proxy.open_flow(ROSSI, "tls", ("192.168.1.7", 40001), 1.2)
    proxy.receive_from_client(second.id, _request("ACK", branch="z9hG4bKa1", routes=routes, to_tag="p1"), 1.2)
    proxy.receive_from_client(
        second.id, _request("BYE", branch="z9hG4bKb1", routes=routes, to_tag="p1", cseq=2), 1.3
    )
    _f, to_backend = _split(proxy)
    sent = [_sent(a) for a in to_backend]
    assert [m.method for m in sent] == ["ACK", "BYE"]
    assert all(m.headers.get_all("route") == [] for m in sent)
    proxy.receive_from_backend(_answer(sent[1]), PBX, "udp", 1.4)
    to_flow, _ = _split(proxy)
    assert [(a.flow_id, _sent(a).status) for a in to_flow] == [(second.id, 200)]
    assert len(proxy.calls) == 0


def test_a_route_to_another_tenants_flow_is_refused() -> None:
    """A connection of one tenant cannot send in-dialog requests along another tenant's flow token."""
    proxy = _proxy()
    victim = proxy.open_flow(BIANCHI, "tls", ("192.168.1.8", 40000), 0.0)
    attacker = proxy.open_flow(ROSSI, "tls", ("192.168.1.7", 40000), 0.0)
    route = f"<sip:{victim.token}@{PUBLIC}:5061;transport=tls;lr;r2=on>"
    proxy.receive_from_client(
        attacker.id, _request("BYE", branch="z9hG4bKb9", routes=(route,), to_tag="p1", cseq=2), 1.0
    )
    to_flow, to_backend = _split(proxy)
    assert to_backend == [] and [_sent(a).status for a in to_flow] == [403]
    assert proxy.counters["sip_foreign_flow"] == 1


class RefusingMedia:
    """A media hook that refuses every SDP answer (a body starting with ``bad``) in a 2xx."""

    def __init__(self) -> None:
        self.ended: list[str] = []

    def on_message(self, pair: Any, message: Any, from_client: bool, now: float) -> int | None:
        return 488 if message.body.startswith(b"bad") else None

    def on_end(self, call_id: str, reason: str, tenant_id: str | None = None) -> None:
        self.ended.append(call_id)

    def on_flow_closed(self, flow_id: int, now: float) -> None:
        return None


def _with_body(data: bytes, body: bytes) -> bytes:
    head = data.split(b"\r\n\r\n", 1)[0].replace(b"Content-Length: 0", b"Content-Type: application/sdp")
    return head + f"\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


def test_an_unusable_answer_from_the_pbx_is_acked_and_byed_there_and_refused_to_the_app() -> None:
    """App calls, the PBX's 200 carries an answer the relay cannot use: the PBX gets ACK + BYE (its 2xx
    retransmissions are ACKed again), the app gets 488, no call is left in either direction."""
    proxy = _proxy()
    proxy.media = media = RefusingMedia()
    flow = proxy.open_flow(ROSSI, "tls", ("192.168.1.7", 40000), 0.0)
    proxy.receive_from_client(flow.id, _with_body(_request("INVITE", branch="z9hG4bKi1"), b"v=0 offer"), 1.0)
    _f, to_backend = _split(proxy)
    invite = _sent(to_backend[0])
    ok = _with_body(
        _answer(invite).replace(
            b"Contact: <sip:200@10.1.0.10:5060>\r\n",
            b"Record-Route: <sip:pbx.example:5060;lr>\r\nContact: <sip:200@10.1.0.10:5060>\r\n",
        ),
        b"bad answer",
    )
    proxy.receive_from_backend(ok, PBX, "udp", 1.1)
    to_flow, to_backend = _split(proxy)
    assert [_sent(a).status for a in to_flow if _sent(a).status >= 200] == [488]
    sent = [_sent(a) for a in to_backend]
    assert [m.method for m in sent] == ["ACK", "BYE"]
    for m in sent:
        assert m.uri == "sip:200@10.1.0.10:5060" and m.to.tag == "p1" and m.call_id == "c1"
        assert [str(r.uri) for r in m.routes] == ["sip:pbx.example:5060;lr"]
    assert sent[0].cseq.seq == 1 and sent[1].cseq.seq == 2
    proxy.receive_from_backend(ok, PBX, "udp", 1.3)  # 2xx retransmission
    to_flow, to_backend = _split(proxy)
    assert to_flow == [] and [_sent(a).method for a in to_backend] == ["ACK"]
    proxy.receive_from_backend(_answer(sent[1]), PBX, "udp", 1.4)  # the PBX accepts the BYE
    to_flow, to_backend = _split(proxy)
    assert to_flow == [] and to_backend == []
    assert len(proxy.calls) == 0 and media.ended == ["c1"]
    assert proxy.counters["sip_answer_refused_after_2xx"] == 1


def test_an_unusable_answer_from_the_app_is_acked_and_byed_there_and_refused_to_the_pbx() -> None:
    """The PBX calls the app, the app's 200 is unusable: the app gets ACK + BYE on its flow, the PBX 488."""
    proxy = _proxy()
    proxy.media = RefusingMedia()
    flow = proxy.open_flow(ROSSI, "tls", ("192.168.1.7", 40000), 0.0)
    invite = (
        "INVITE sip:alice@192.168.1.7:40000;transport=tls SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 10.1.0.10:5060;branch=z9hG4bKp1\r\n"
        f"Route: <sip:{flow.token}@10.0.0.5:5070;lr;ob>\r\nMax-Forwards: 70\r\n"
        "From: <sip:200@rossi.example.com>;tag=p1\r\nTo: <sip:alice@rossi.example.com>\r\n"
        "Call-ID: c2\r\nCSeq: 7 INVITE\r\nContact: <sip:200@10.1.0.10:5060>\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    proxy.receive_from_backend(_with_body(invite, b"v=0 offer"), PBX, "udp", 1.0)
    to_flow, to_backend = _split(proxy)
    forwarded = _sent(to_flow[0])
    resp = Response.for_request(forwarded, 200, "OK", to_tag="a1")
    resp.headers.add("Contact", "<sip:alice@192.168.1.7:40000;transport=tls>")
    proxy.receive_from_client(flow.id, _with_body(resp.serialize(), b"bad answer"), 1.1)
    to_flow, to_backend = _split(proxy)
    assert [_sent(a).status for a in to_backend] == [488]
    sent = [_sent(a) for a in to_flow]
    assert [m.method for m in sent] == ["ACK", "BYE"]
    assert all(m.uri == "sip:alice@192.168.1.7:40000;transport=tls" and m.routes == [] for m in sent)
    assert sent[1].cseq.seq == 8 and sent[1].to.tag == "a1"
    proxy.receive_from_client(flow.id, Response.for_request(sent[1], 200, "OK").serialize(), 1.2)
    to_flow, to_backend = _split(proxy)
    assert to_flow == [] and to_backend == [] and len(proxy.calls) == 0


def test_an_unusable_early_answer_cancels_the_invite_and_a_late_2xx_is_acked_and_byed() -> None:
    """A 183 whose answer cannot be used: the PBX gets CANCEL, the app 488; a 200 that crossed the
    CANCEL is ACKed and BYEd; the 487 is absorbed; no call is left."""
    proxy = _proxy()
    proxy.media = RefusingMedia()
    flow = proxy.open_flow(ROSSI, "tls", ("192.168.1.7", 40000), 0.0)
    proxy.receive_from_client(flow.id, _with_body(_request("INVITE", branch="z9hG4bKi1"), b"v=0 offer"), 1.0)
    _f, to_backend = _split(proxy)
    invite = _sent(to_backend[0])
    early = Response.for_request(invite, 183, "Session Progress", to_tag="p1")
    early.headers.add("Contact", "<sip:200@10.1.0.10:5060>")
    proxy.receive_from_backend(_with_body(early.serialize(), b"bad early answer"), PBX, "udp", 1.1)
    to_flow, to_backend = _split(proxy)
    assert [_sent(a).status for a in to_flow if _sent(a).status >= 200] == [488]
    assert [_sent(a).method for a in to_backend] == ["CANCEL"]
    proxy.receive_from_backend(_with_body(_answer(invite), b"v=0 fine"), PBX, "udp", 1.2)
    to_flow, to_backend = _split(proxy)
    assert to_flow == [] and [_sent(a).method for a in to_backend] == ["ACK", "BYE"]
    proxy.receive_from_backend(_answer(invite, 487), PBX, "udp", 1.3)
    to_flow, _ = _split(proxy)
    assert to_flow == [] and len(proxy.calls) == 0
    assert proxy.counters["sip_answer_refused_early"] == 1
