"""The echo user agent (core/media/echo_ua.py), sans-IO: its decision table, limits and timers in virtual time."""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from mcs_edge.certs import edge_dtls_certificate
from mcs_edge.core.media.echo_ua import (
    MAX_PER_FLOW,
    MAX_SECONDS,
    EchoUA,
    MediaEnded,
    Problem,
    Schedule,
    SendRequest,
)
from mcs_edge.core.media.session import Leg, SessionSettings
from mcs_edge.core.sip.message import Request, Response, parse
from mcs_edge.core.sip.proxy import Flow, ProxySettings

DATA = Path(__file__).resolve().parent.parent.parent / "data" / "sdp"
SDES_OFFER = (DATA / "asterisk_offer_sdes.sdp").read_text()


@dataclass(frozen=True)
class Tenant:
    id: str
    echo: bool = True


class Anchor:
    """The relay's port owner: numbers from 40000, nothing sent."""

    def __init__(self) -> None:
        self.settings = SimpleNamespace(
            session=SessionSettings(
                client_host="203.0.113.10",
                pbx_host="10.0.0.5",
                certificate=edge_dtls_certificate(),
                random_bytes=secrets.token_bytes,
            )
        )
        self.next = 40000
        self.open_ports: set[int] = set()
        self.full = False

    def open(self, leg: Leg, rtcp_mux: bool) -> bool:
        if self.full:
            return False
        leg.port, self.next = self.next, self.next + 2
        leg.rtcp_port = None if rtcp_mux else leg.port + 1
        self.open_ports.add(leg.port)
        return True

    def close(self, leg: Leg) -> None:
        self.open_ports.discard(leg.port)
        leg.port = 0


class Harness:
    def __init__(self, grace: float = 0.0) -> None:
        self.anchor = Anchor()
        self.woken = 0
        counter = itertools.count(1)
        settings = ProxySettings(
            public_host="203.0.113.10", public_port=443, backend_host="10.0.0.5", backend_port=5060
        )
        self.ua = EchoUA(
            lambda: settings,
            self.anchor,  # type: ignore[arg-type]
            clock=lambda: 0.0,
            random_bytes=lambda n: next(counter).to_bytes(n, "big"),
            grace=lambda: grace,
            wake=self._wake,
        )
        self.tenant = Tenant("rossi")

    def _wake(self) -> None:
        self.woken += 1

    def flow(self, flow_id: int = 1, tenant: Tenant | None = None) -> Flow:
        return Flow(flow_id, f"f{flow_id}", tenant or self.tenant, "tls", ("198.51.100.7", 40000 + flow_id))

    def send(self, flow: Flow, raw: str, now: float = 1.0) -> Response | None:
        req = parse(raw.encode())
        assert isinstance(req, Request)
        assert self.ua.claims(flow, req)
        return self.ua.request(flow, req, now)


def req(
    method: str,
    *,
    call_id: str = "c1",
    cseq: int = 1,
    to_tag: str = "",
    body: str = "",
    ctype: str = "application/sdp",
    user: str = "echo",
) -> str:
    to = f"<sip:{user}@rossi.example.com>" + (f";tag={to_tag}" if to_tag else "")
    head = (
        f"{method} sip:{user}@rossi.example.com SIP/2.0\r\nVia: SIP/2.0/TLS x.invalid;branch=z9hG4bK{call_id}{cseq}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:alice@rossi.example.com>;tag=a1\r\nTo: {to}\r\n"
        f"Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContact: <sip:alice@10.9.9.9;transport=tls>\r\n"
    )
    if body:
        head += f"Content-Type: {ctype}\r\n"
    return head + f"Content-Length: {len(body)}\r\n\r\n{body}"


def answered(h: Harness, flow: Flow, call_id: str = "c1") -> Response:
    resp = h.send(flow, req("INVITE", call_id=call_id, body=SDES_OFFER))
    assert resp is not None and resp.status == 200, resp
    return resp


def test_claims_requests_to_the_echo_user_of_echo_tenants_only() -> None:
    """Initial requests to user echo are claimed; other users, tenants without echo, ACK/CANCEL are not."""
    h = Harness()
    flow = h.flow()
    for raw, claimed in [
        (req("INVITE"), True),
        (req("OPTIONS"), True),
        (req("INVITE", user="bob"), False),
        (req("ACK"), False),
        (req("CANCEL"), False),
        (req("INVITE", to_tag="x"), False),
    ]:
        r = parse(raw.encode())
        assert isinstance(r, Request)
        assert h.ua.claims(flow, r) is claimed, raw.split()[0]
    r = parse(req("INVITE").encode())
    assert isinstance(r, Request)
    assert not h.ua.claims(h.flow(2, Tenant("other", echo=False)), r)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (req("OPTIONS"), 200),
        (req("INFO"), 405),
        (req("BYE"), 405),
        (req("INVITE", body="hello", ctype="text/plain"), 415),
        (req("INVITE", body="v=0\r\nnot sdp"), 488),
    ],
)
def test_out_of_dialog_decisions(raw: str, status: int) -> None:
    """OPTIONS 200 with Allow/Accept; other methods 405 with Allow; non-SDP 415; bad SDP 488 (a problem)."""
    h = Harness()
    resp = h.send(h.flow(), raw)
    assert resp is not None and resp.status == status
    if status in (200, 405):
        assert "INVITE" in (resp.headers.get("allow") or "")
    assert resp.headers.get("server")
    assert not h.ua.calls
    assert h.anchor.open_ports == set()
    if status == 488:
        assert any(isinstance(a, Problem) for a in h.ua.take_actions())


def test_invite_is_answered_then_bye_releases_everything() -> None:
    """INVITE with SDES offer -> 200 with an SDP answer and Contact; media scheduled; BYE -> 200, ports freed."""
    h = Harness()
    flow = h.flow()
    resp = answered(h, flow)
    tag = resp.to.tag
    assert tag and len(tag) == 12 and b"RTP/SAVP" in resp.body
    assert "sip:echo@203.0.113.10" in (resp.headers.get("contact") or "")
    assert any(isinstance(a, Schedule) for a in h.ua.take_actions())
    assert h.anchor.open_ports and h.ua.outcomes == {("rossi", "answered"): 1}
    assert h.ua.get_timer() == 1.0 + MAX_SECONDS
    assert h.send(flow, req("ACK", to_tag=tag)) is None
    bye = h.send(flow, req("BYE", cseq=2, to_tag=tag))
    assert bye is not None and bye.status == 200
    assert not h.ua.calls and h.anchor.open_ports == set()
    assert h.ua.ended == {("rossi", "bye"): 1} and h.ua.get_timer() is None


def test_wrong_tag_is_481_and_another_flow_is_403() -> None:
    """In a call: a request with the wrong To tag gets 481; the same call from another flow 403 (no grace)."""
    h = Harness()
    flow = h.flow()
    tag = answered(h, flow).to.tag
    resp = h.send(flow, req("INFO", cseq=2, to_tag="nope"))
    assert resp is not None and resp.status == 481
    resp = h.ua.request(h.flow(2), parse(req("INFO", cseq=3, to_tag=tag).encode()), 2.0)  # type: ignore[arg-type]
    assert resp is not None and resp.status == 403


def test_limits_busy_and_stop() -> None:
    """MAX_PER_FLOW calls per flow, then 486; stop() sends BYE for each call and refuses new ones with 503."""
    h = Harness()
    flow = h.flow()
    for i in range(MAX_PER_FLOW):
        answered(h, flow, f"c{i}")
    resp = h.send(flow, req("INVITE", call_id="more", body=SDES_OFFER))
    assert resp is not None and resp.status == 486
    h.ua.take_actions()
    h.ua.stop()
    byes = [a for a in h.ua.take_actions() if isinstance(a, SendRequest)]
    assert len(byes) == MAX_PER_FLOW and all(a.request.method == "BYE" and a.flow_id == 1 for a in byes)
    assert 'text="echo shutdown"' in (byes[0].request.headers.get("reason") or "")
    resp = h.send(flow, req("INVITE", call_id="late", body=SDES_OFFER))
    assert resp is not None and resp.status == 503
    assert h.anchor.open_ports == set()


def test_no_port_is_503() -> None:
    h = Harness()
    h.anchor.full = True
    resp = h.send(h.flow(), req("INVITE", body=SDES_OFFER))
    assert resp is not None and resp.status == 503
    assert h.ua.outcomes == {("rossi", "no_port"): 1}


def test_time_limit_hangs_up_with_bye() -> None:
    """At created + MAX_SECONDS the UA releases the call and sends a BYE from our side (our tag in From)."""
    h = Harness()
    flow = h.flow()
    tag = answered(h, flow).to.tag
    h.ua.take_actions()
    h.ua.handle_timer(MAX_SECONDS)  # not yet
    assert h.ua.calls
    h.ua.handle_timer(1.0 + MAX_SECONDS)
    (bye,) = h.ua.take_actions()
    assert isinstance(bye, SendRequest) and bye.request.uri == "sip:alice@10.9.9.9;transport=tls"
    assert f"tag={tag}" in (bye.request.headers.get("from") or "")
    assert h.ua.ended == {("rossi", "max_duration"): 1} and not h.ua.calls


def test_lost_connection_grace_then_take_over_or_end() -> None:
    """A confirmed call whose flow closes waits the grace: the same dialog from the same tenant on a new flow
    takes it over; otherwise it ends (flow_closed) at the deadline, without BYE."""
    h = Harness(grace=30.0)
    flow = h.flow()
    tag = answered(h, flow).to.tag
    h.send(flow, req("ACK", to_tag=tag))
    h.ua.on_flow_closed(1, 10.0)
    assert h.ua.get_timer() == 40.0
    new = h.flow(2)
    resp = h.send(new, req("INVITE", cseq=3, to_tag=tag, body=SDES_OFFER), 20.0)
    assert resp is not None and resp.status == 200
    assert h.ua.outcomes[("rossi", "recovered")] == 1 and h.ua.calls["c1"].flow_id == 2
    h.ua.on_flow_closed(2, 50.0)
    h.ua.take_actions()
    h.ua.handle_timer(80.0)
    assert not h.ua.calls and h.ua.ended == {("rossi", "flow_closed"): 1}
    assert not [a for a in h.ua.take_actions() if isinstance(a, SendRequest)]


def test_unconfirmed_call_ends_at_once_when_its_flow_closes() -> None:
    h = Harness(grace=30.0)
    answered(h, h.flow())
    h.ua.on_flow_closed(1, 2.0)
    assert not h.ua.calls and h.ua.ended == {("rossi", "flow_closed"): 1}


def test_media_ending_is_deferred_then_hangs_up_and_is_reported() -> None:
    """A session ending from inside (idle, DTLS) wakes the adapter; at the timer: ECH200 notice and BYE."""
    h = Harness()
    answered(h, h.flow())
    h.ua.take_actions()
    session = h.ua.calls["c1"].session
    session.end("idle")
    assert h.woken == 1 and h.ua.get_timer() == float("-inf") and h.ua.calls
    h.ua.handle_timer(5.0)
    actions = h.ua.take_actions()
    assert any(isinstance(a, MediaEnded) and a.tenant == "rossi" for a in actions)
    assert any(isinstance(a, SendRequest) for a in actions)
    assert h.ua.ended == {("rossi", "media"): 1}
