"""The media anchor as the SIP proxy core's media hook, in virtual time: SDP in every message, every end, no leaks."""

from __future__ import annotations

import gc
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from helpers.webrtc_peer import WebRtcPeer, rtp_packet

from mcs_edge.certs import edge_dtls_certificate
from mcs_edge.core.media.anchor import AnchorSettings, MediaAnchor
from mcs_edge.core.media.sdp import SessionDescription
from mcs_edge.core.media.session import Leg, MediaSession, SessionSettings
from mcs_edge.core.rtp.dtls import DtlsEndpoint
from mcs_edge.core.rtp.srtp import SrtpContext
from mcs_edge.core.sip.proxy import ProxySettings, SipProxy, ToBackend, ToFlow
from mcs_edge.core.stun.ice_lite import IceLiteResponder

TRACKED = (DtlsEndpoint, SrtpContext, IceLiteResponder, MediaSession, Leg)
PUBLIC = "203.0.113.10"
PRIVATE = "10.0.0.5"
PBX_SIP = ("10.1.0.10", 5060)
PBX_MEDIA = ("10.1.0.10", 30000)
IDLE = 30.0


@dataclass(frozen=True)
class Tenant:
    id: str
    media: str = "bridge"
    path: bool = True


class FakeIO:
    """RelayIO: records open ports and datagrams; ``refuse`` ports cannot be bound."""

    def __init__(self, refuse: set[int] | None = None) -> None:
        self.open: dict[int, tuple[Leg, bool]] = {}
        self.sent: list[tuple[int, bytes, Any]] = []
        self.refuse = refuse or set()
        self.opened = 0

    def open_port(self, port: int, leg: Leg, rtcp: bool) -> Any:
        if port in self.refuse:
            return None
        assert port not in self.open, "port opened twice"
        self.open[port] = (leg, rtcp)
        self.opened += 1
        return lambda data, addr: self.sent.append((port, data, addr))

    def close_port(self, port: int) -> None:
        del self.open[port]

    def take(self, addr: Any) -> list[bytes]:
        out = [d for _, d, a in self.sent if a == addr]
        self.sent = [e for e in self.sent if e[2] != addr]
        return out


def _lines(text: str, name: str) -> list[str]:
    low = name.lower() + ":"
    return [line for line in text.split("\r\n\r\n", 1)[0].split("\r\n") if line.lower().startswith(low)]


def _value(text: str, name: str) -> str:
    return _lines(text, name)[0].split(":", 1)[1].strip()


def _body(text: str) -> str:
    return text.split("\r\n\r\n", 1)[1]


class Harness:
    """A proxy core with the anchor as media hook, one tenant, a scripted client and PBX."""

    def __init__(
        self, mode: str = "bridge", ports: tuple[int, int] = (40000, 40999), refuse: set[int] | None = None
    ):
        self.tenant = Tenant("rossi", media=mode)
        self.other = Tenant("bianchi")
        self.io = FakeIO(refuse)
        self.now = 0.0
        settings = AnchorSettings(
            SessionSettings(
                client_host=PUBLIC,
                pbx_host=PRIVATE,
                idle_timeout=IDLE,
                hold_timeout=600.0,
                certificate=edge_dtls_certificate(),
                random_bytes=secrets.token_bytes,
            ),
            ports,
        )
        self.anchor = MediaAnchor(
            settings,
            self.io,
            tenant_media=lambda tid: self.tenant.media if tid == "rossi" else "bridge",
            client_transport=lambda fid: self.proxy.flows[fid].transport if fid in self.proxy.flows else None,
        )
        domains = {"rossi.example.com": self.tenant, "bianchi.example.com": self.other}
        self.proxy = SipProxy(
            ProxySettings(public_host=PUBLIC, public_port=443, backend_host=PRIVATE, backend_port=5060),
            tenant_for_domain=domains.get,
            backend_of=lambda t: ("udp", PBX_SIP),
            tenants_at=lambda ip: [self.tenant, self.other] if ip == PBX_SIP[0] else [],
            media=self.anchor,
            random_bytes=secrets.token_bytes,
        )
        self.flows = 0
        gc.collect()
        #: objects of the tracked kinds that other tests left alive (held, so their ids stay unique)
        self.preexisting = [o for o in gc.get_objects() if isinstance(o, TRACKED)]

    def flow(self, tenant: Tenant | None = None) -> int:
        self.flows += 1
        return self.proxy.open_flow(
            tenant or self.tenant, "wss", ("198.51.100.7", 30000 + self.flows), self.now
        ).id

    def _drain(self) -> tuple[list[str], dict[int, list[str]]]:
        backend: list[str] = []
        flows: dict[int, list[str]] = {}
        for action in self.proxy.drain():
            if isinstance(action, ToBackend):
                backend.append(action.data.decode())
            elif isinstance(action, ToFlow):
                flows.setdefault(action.flow_id, []).append(action.data.decode())
        return backend, flows

    def client(self, flow: int, text: str) -> tuple[list[str], list[str]]:
        """Send from the client: (to PBX, back to this client)."""
        self.proxy.receive_from_client(flow, text.encode(), self.now)
        backend, flows = self._drain()
        return backend, flows.get(flow, [])

    def pbx(self, text: str) -> tuple[list[str], dict[int, list[str]]]:
        self.proxy.receive_from_backend(text.encode(), PBX_SIP, "udp", self.now)
        return self._drain()

    def tick(self, seconds: float) -> None:
        """Advance virtual time, firing proxy and anchor timers in order."""
        end = self.now + seconds
        while True:
            deadlines = [
                d for d in (self.proxy.get_timer(), self.anchor.get_timer()) if d is not None and d <= end
            ]
            if not deadlines:
                break
            self.now = max(self.now, min(deadlines))
            self.proxy.handle_timer(self.now)
            self.anchor.handle_timer(self.now)
            self._drain()
        self.now = end


class Call:
    """A client-side dialog (INVITE from the client to the PBX)."""

    def __init__(self, h: Harness, flow: int, domain: str = "rossi.example.com") -> None:
        self.h = h
        self.flow = flow
        self.domain = domain
        self.call_id = uuid.uuid4().hex
        self.cseq = 0
        self.to = f"<sip:200@{domain}>"
        self.route = ""
        self.target = f"sip:200@{domain}"
        self.branch = ""
        self.forwarded = ""  # the last request as the PBX got it
        self.invite = ""  # the last INVITE as the PBX got it
        self.pbx_tag = uuid.uuid4().hex[:6]

    def request(self, method: str, body: str = "", cseq: int | None = None) -> tuple[list[str], list[str]]:
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        if method != "CANCEL" and method != "ACK":
            self.branch = "z9hG4bK" + uuid.uuid4().hex[:10]
        route = f"Route: {self.route}\r\n" if self.route and method != "CANCEL" else ""
        ctype = "Content-Type: application/sdp\r\n" if body else ""
        text = (
            f"{method} {self.target} SIP/2.0\r\nVia: SIP/2.0/WSS x.invalid;branch={self.branch}\r\n"
            f"Max-Forwards: 70\r\n{route}From: <sip:alice@{self.domain}>;tag=c1\r\nTo: {self.to}\r\n"
            f"Call-ID: {self.call_id}\r\nCSeq: {cseq} {method}\r\nContact: <sip:alice@x.invalid;transport=ws>\r\n"
            f"{ctype}Content-Length: {len(body)}\r\n\r\n{body}"
        )
        backend, back = self.h.client(self.flow, text)
        for msg in backend:
            if not msg.startswith("SIP/2.0"):
                self.forwarded = msg
                if msg.startswith("INVITE "):
                    self.invite = msg
        return backend, back

    def pbx_reply(self, status: int, reason: str, body: str = "", request: str | None = None) -> list[str]:
        req = request or self.forwarded
        to = _value(req, "To")
        if status > 100 and ";tag=" not in to:
            to += f";tag={self.pbx_tag}"
        ctype = "Content-Type: application/sdp\r\n" if body else ""
        lines = "".join(f"{line}\r\n" for line in _lines(req, "Via"))
        lines += "".join(f"{line}\r\n" for line in _lines(req, "Record-Route"))
        text = (
            f"SIP/2.0 {status} {reason}\r\n{lines}From: {_value(req, 'From')}\r\nTo: {to}\r\n"
            f"Call-ID: {self.call_id}\r\nCSeq: {_value(req, 'CSeq')}\r\nContact: <sip:pbx@10.1.0.10:5060>\r\n"
            f"{ctype}Content-Length: {len(body)}\r\n\r\n{body}"
        )
        _backend, flows = self.h.pbx(text)
        out = flows.get(self.flow, [])
        for msg in out:
            if msg.startswith("SIP/2.0 2") and " INVITE" in _value(msg, "CSeq") and not self.route:
                self.to = _value(msg, "To")
                routes = [
                    r.strip()
                    for line in _lines(msg, "Record-Route")
                    for r in line.split(":", 1)[1].split(",")
                ]
                self.route = ", ".join(reversed(routes))
                self.target = "sip:pbx@10.1.0.10:5060"
        return out

    def pbx_request(self, method: str, body: str = "") -> dict[int, list[str]]:
        """An in-dialog request from the PBX (Route = the Record-Route it got)."""
        routes = ", ".join(r.split(":", 1)[1].strip() for r in _lines(self.invite, "Record-Route"))
        ctype = "Content-Type: application/sdp\r\n" if body else ""
        text = (
            f"{method} sip:alice@x.invalid;transport=ws SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 10.1.0.10:5060;branch=z9hG4bK{uuid.uuid4().hex[:10]}\r\nMax-Forwards: 70\r\n"
            f"Route: {routes}\r\nFrom: {self.to.replace('<sip:200', '<sip:200')}\r\n"
            f"To: <sip:alice@{self.domain}>;tag=c1\r\nCall-ID: {self.call_id}\r\nCSeq: 100 {method}\r\n"
            f"{ctype}Content-Length: {len(body)}\r\n\r\n{body}"
        )
        return self.h.pbx(text)[1]


def pbx_sdp(port: int = PBX_MEDIA[1], direction: str = "sendrecv") -> str:
    return (
        f"v=0\r\no=pbx 1 1 IN IP4 {PBX_MEDIA[0]}\r\ns=-\r\nc=IN IP4 {PBX_MEDIA[0]}\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na={direction}\r\n"
    )


def status(msgs: list[str]) -> list[int]:
    return [int(m.split(" ", 2)[1]) for m in msgs if m.startswith("SIP/2.0")]


def answered_call(
    h: Harness, flow: int | None = None, direction: str = "sendrecv"
) -> tuple[Call, WebRtcPeer, str]:
    """INVITE with a WebRTC offer, 180, 200 with an RTP answer, ACK. Returns (call, browser, answer)."""
    call = Call(h, flow if flow is not None else h.flow())
    browser = WebRtcPeer(("198.51.100.7", 50000 + h.flows % 10000))
    backend, back = call.request("INVITE", browser.offer(direction=direction))
    assert status(back) == [100] and len(backend) == 1
    assert " RTP/AVP " in _body(backend[0]) and PRIVATE in _body(backend[0])
    call.pbx_reply(180, "Ringing")
    out = call.pbx_reply(200, "OK", pbx_sdp(direction="inactive" if direction == "inactive" else "sendrecv"))
    assert status(out) == [200], out
    answer = _body(out[0])
    call.request("ACK", cseq=call.cseq)
    return call, browser, answer


def connect_media(h: Harness, call: Call, browser: WebRtcPeer, answer: str) -> Leg:
    """ICE + DTLS between the simulated browser and the client leg; one packet each way."""
    sdp = SessionDescription.parse(answer)
    browser.accept(sdp)
    port = sdp.media[0].port
    leg = h.io.open[port][0]
    leg.receive(browser.check(), browser.addr, h.now)
    h.anchor.poke(leg.session)
    h.io.take(browser.addr)
    out = browser.start_dtls(h.now)
    for _ in range(10):
        for data in out:
            leg.receive(data, browser.addr, h.now)
        out = []
        for data in h.io.take(browser.addr):
            out += browser.feed_dtls(data, h.now)
        if browser.srtp is not None and leg.srtp is not None and not out:
            break
    assert browser.srtp is not None and leg.srtp is not None
    leg.receive(browser.srtp_packet(1), browser.addr, h.now)
    assert h.io.take(PBX_MEDIA) == [rtp_packet(1, browser.ssrcs[0])]
    pbx_leg = next(
        entry[0] for entry in h.io.open.values() if entry[0].session is leg.session and entry[0] is not leg
    )
    pbx_leg.receive(rtp_packet(1, 0x7777), PBX_MEDIA, h.now)
    assert browser.srtp.unprotect_rtp(h.io.take(browser.addr)[0]) == rtp_packet(1, 0x7777)
    return leg


def assert_clean(h: Harness) -> None:
    """No session, port, timer or flow index left; no DTLS/SRTP/ICE/session object alive."""
    assert h.anchor.sessions == {}
    assert h.anchor.allocator.in_use == 0 and h.io.open == {}
    assert h.anchor.get_timer() is None and h.anchor._heap == []
    assert h.anchor._by_flow == {}
    gc.collect()
    before = {id(o) for o in h.preexisting}
    alive = [type(o).__name__ for o in gc.get_objects() if isinstance(o, TRACKED) and id(o) not in before]
    assert alive == []


# ------------------------------------------------------------------------------------------ tests


def test_invite_answer_ack_and_bye_rewrite_sdp_and_release_everything() -> None:
    """The client's WebRTC offer reaches the PBX as RTP, the PBX's answer reaches the client as WebRTC; media flows; BYE frees it all."""
    h = Harness()
    call, browser, answer = answered_call(h)
    assert "a=ice-lite" in answer and "a=setup:passive" in answer and PUBLIC in answer
    assert len(h.io.open) == 3  # client port + PBX RTP/RTCP pair
    connect_media(h, call, browser, answer)
    _backend, _back = call.request("BYE")
    assert status(call.pbx_reply(200, "OK")) == [200]
    assert h.anchor.counters["media_sessions_ended:BYE"] == 1
    h.tick(40)
    del call, browser
    assert_clean(h)


def _answer(request: str, code: int, reason: str) -> str:
    """The client's response to a request it received (Via, From, To, Call-ID, CSeq copied)."""
    keep = [
        line
        for line in request.split("\r\n")[1:]
        if line.split(":", 1)[0].lower() in ("via", "from", "to", "call-id", "cseq")
    ]
    return f"SIP/2.0 {code} {reason}\r\n" + "\r\n".join(keep) + "\r\nContent-Length: 0\r\n\r\n"


def test_pbx_bye_releases_the_session() -> None:
    """A BYE from the PBX ends the media once the client accepts it."""
    h = Harness()
    call, _browser, _answer_sdp = answered_call(h)
    flows = call.pbx_request("BYE")
    bye = next(m for m in flows.get(call.flow, []) if m.startswith("BYE "))
    assert h.anchor.sessions != {}  # not before the client's 2xx
    backend, _ = h.client(call.flow, _answer(bye, 200, "OK"))
    assert status(backend) == [200]
    assert h.anchor.sessions == {} and h.io.open == {}


def test_bye_with_a_guessed_call_id_ends_nothing() -> None:
    """A BYE the far side refuses (481: no such dialog) leaves the call's media alone."""
    h = Harness()
    call, _browser, _answer_sdp = answered_call(h)
    flows = call.pbx_request("BYE")
    bye = next(m for m in flows.get(call.flow, []) if m.startswith("BYE "))
    h.client(call.flow, _answer(bye, 481, "Call/Transaction Does Not Exist"))
    assert len(h.anchor.sessions) == 1 and len(h.io.open) == 3


def test_a_bye_from_another_tenant_never_ends_the_call() -> None:
    """on_end with another tenant's id is refused and counted (tenancy is a boundary)."""
    h = Harness()
    call, _browser, _answer_sdp = answered_call(h)
    h.anchor.on_end(call.call_id, "BYE", "intruder")
    assert len(h.anchor.sessions) == 1
    assert h.anchor.counters["media_foreign_call"] == 1


def test_cancel_and_failed_invite_release_the_session() -> None:
    """CANCEL (487) and a rejected INVITE (486) release the ports taken by the offer."""
    h = Harness()
    call = Call(h, h.flow())
    call.request("INVITE", WebRtcPeer(("198.51.100.7", 50000)).offer())
    invite = call.forwarded
    call.pbx_reply(180, "Ringing")
    assert len(h.io.open) == 3
    backend, back = call.request("CANCEL", cseq=1)
    assert 200 in status(back)
    cancel = next(m for m in backend if m.startswith("CANCEL"))
    call.pbx_reply(200, "OK", request=cancel)
    out = call.pbx_reply(487, "Request Terminated", request=invite)
    assert status(out) == [487] and h.io.open == {}
    call2 = Call(h, call.flow)
    call2.request("INVITE", WebRtcPeer(("198.51.100.7", 50000)).offer())
    assert status(call2.pbx_reply(486, "Busy Here")) == [486]
    assert h.io.open == {} and h.anchor.sessions == {}


def test_failed_reinvite_keeps_the_call_media() -> None:
    """A re-INVITE the PBX refuses (488) leaves the session and its ports alone."""
    h = Harness()
    call, browser, answer = answered_call(h)
    leg = connect_media(h, call, browser, answer)
    call.request("INVITE", browser.offer(direction="sendonly"))
    assert status(call.pbx_reply(488, "Not Acceptable Here")) == [488]
    assert len(h.anchor.sessions) == 1 and len(h.io.open) == 3
    leg.receive(browser.srtp_packet(2), browser.addr, h.now)
    assert h.io.take(PBX_MEDIA) == [rtp_packet(2, browser.ssrcs[0])]


def test_reinvite_hold_is_relayed_with_the_same_ports() -> None:
    """Hold: the sendonly re-offer reaches the PBX on the same relay port; its recvonly answer comes back."""
    h = Harness()
    call, browser, _answer = answered_call(h)
    first_port = SessionDescription.parse(_body(call.invite)).media[0].port
    call.request("INVITE", browser.offer(direction="sendonly"))
    held = SessionDescription.parse(_body(call.forwarded))
    assert held.media[0].port == first_port and held.media[0].direction == "sendonly"
    out = call.pbx_reply(200, "OK", pbx_sdp(direction="recvonly"))
    assert SessionDescription.parse(_body(out[0])).media[0].direction == "recvonly"


def test_pbx_call_to_browser_offer_in_invite() -> None:
    """The PBX calls the client: its RTP offer becomes a WebRTC actpass offer; the browser's answer becomes RTP for the PBX."""
    h = Harness()
    flow = h.flow()
    h.proxy.flows[flow].registered = True
    token = h.proxy.flows[flow].token
    call_id = uuid.uuid4().hex
    text = (
        f"INVITE sip:alice@x.invalid;transport=ws SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.0.10:5060;branch=z9hG4bKpbx1\r\n"
        f"Max-Forwards: 70\r\nRoute: <sip:{token}@{PRIVATE}:5060;lr>\r\nFrom: <sip:100@rossi.example.com>;tag=p1\r\n"
        f"To: <sip:alice@rossi.example.com>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
        f"Contact: <sip:pbx@10.1.0.10:5060>\r\nContent-Type: application/sdp\r\n"
        f"Content-Length: {len(pbx_sdp())}\r\n\r\n{pbx_sdp()}"
    )
    _backend, flows = h.pbx(text)
    invite = next(m for m in flows[flow] if m.startswith("INVITE"))
    offer = SessionDescription.parse(_body(invite))
    assert offer.media[0].proto == "UDP/TLS/RTP/SAVPF" and offer.transport(0).setup == "actpass"
    browser = WebRtcPeer(("198.51.100.7", 50000))
    answer = browser.answer(offer)
    vias = "".join(f"{line}\r\n" for line in _lines(invite, "Via"))
    rrs = "".join(f"{line}\r\n" for line in _lines(invite, "Record-Route"))
    resp = (
        f"SIP/2.0 200 OK\r\n{vias}{rrs}From: {_value(invite, 'From')}\r\nTo: {_value(invite, 'To')};tag=c9\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@x.invalid;transport=ws>\r\n"
        f"Content-Type: application/sdp\r\nContent-Length: {len(answer)}\r\n\r\n{answer}"
    )
    backend, _ = h.client(flow, resp)
    ok = next(m for m in backend if m.startswith("SIP/2.0 200"))
    assert " RTP/AVP " in _body(ok) and PRIVATE in _body(ok)
    session = h.anchor.sessions[call_id]
    client_leg = session.mline_legs[0][0]
    assert client_leg is not None and client_leg.dtls is not None and not client_leg.dtls.is_client


def test_offer_in_200_and_answer_in_ack() -> None:
    """An INVITE without SDP: the PBX's 2xx carries the offer (rewritten to WebRTC), the client's ACK the answer (rewritten to RTP)."""
    h = Harness()
    call = Call(h, h.flow())
    call.request("INVITE")
    out = call.pbx_reply(200, "OK", pbx_sdp())
    offer = SessionDescription.parse(_body(out[0]))
    assert offer.media[0].proto == "UDP/TLS/RTP/SAVPF"
    browser = WebRtcPeer(("198.51.100.7", 50000))
    backend, _ = call.request("ACK", browser.answer(offer), cseq=call.cseq)
    ack = next(m for m in backend if m.startswith("ACK"))
    assert " RTP/AVP " in _body(ack)
    assert h.anchor.sessions[call.call_id].established


def test_ports_exhausted_gives_503_and_leaks_nothing() -> None:
    """With the range used up the next INVITE is refused with 503 (not forwarded); its partial legs are released."""
    h = Harness(
        ports=(40000, 40003)
    )  # two slots: one call (a single port + a pair) fits, the second does not
    answered_call(h)
    in_use = h.anchor.allocator.in_use
    call = Call(h, h.flow())
    backend, back = call.request("INVITE", WebRtcPeer(("198.51.100.7", 50000)).offer())
    assert backend == [] and 503 in status(back)
    assert h.anchor.allocator.in_use == in_use and len(h.anchor.sessions) == 1
    assert h.anchor.counters["media_ports_exhausted"] == 1


def test_a_port_that_cannot_be_bound_is_skipped() -> None:
    """A port of the range held by someone else: the anchor takes the next one; the SDP never names it."""
    h = Harness(refuse={40000, 40002})
    _call, _browser, answer = answered_call(h)
    ports = {p for p in h.io.open}
    assert 40000 not in ports and 40002 not in ports and h.anchor.counters["media_port_bind_failed"] == 2
    assert SessionDescription.parse(answer).media[0].port in ports


def test_another_tenant_cannot_touch_a_call() -> None:
    """A message of another tenant's flow for a live Call-ID is refused (403) and counted."""
    h = Harness()
    call, browser, _ = answered_call(h)
    intruder = Call(h, h.flow(h.other), domain="bianchi.example.com")
    intruder.call_id = call.call_id
    backend, back = intruder.request("INVITE", browser.offer())
    assert backend == [] and 403 in status(back)
    assert h.anchor.counters["media_foreign_call"] == 1 and len(h.anchor.sessions) == 1


def test_flow_loss_ends_its_calls_after_grace() -> None:
    """The client's WebSocket closes: the media of its calls is kept for the grace period, then released."""
    h = Harness()
    call, _browser, _ = answered_call(h)
    h.proxy.close_flow(call.flow, h.now)
    assert len(h.anchor.sessions) == 1 and len(h.io.open) == 3
    h.tick(h.proxy.flow_registry.grace + 0.5)
    assert h.anchor.sessions == {} and h.io.open == {}


def test_idle_session_ends_after_idle_timeout_and_frees_its_ports() -> None:
    """Nobody sends anything after the answer: the session ends at answer + idle_timeout (virtual time)."""
    h = Harness()
    answered_call(h)
    h.tick(IDLE - 1)
    assert len(h.anchor.sessions) == 1
    h.tick(2)
    assert h.anchor.sessions == {} and h.io.open == {}
    assert h.anchor.counters["media_sessions_ended:idle timeout"] == 1


def test_a_thousand_short_calls_leave_nothing_behind() -> None:
    """1,000 calls ending every way (BYE either side, CANCEL, 486, flow loss, idle timeout, shutdown): no port, timer or DTLS object survives."""
    h = Harness(ports=(40000, 49999))
    ends: dict[str, int] = {}
    for i in range(1000):
        kind = ("bye", "pbx-bye", "cancel", "busy", "flow", "idle", "shutdown")[i % 7]
        ends[kind] = ends.get(kind, 0) + 1
        h.now += 0.01
        if kind in ("cancel", "busy"):
            call = Call(h, h.flow())
            call.request("INVITE", WebRtcPeer(("198.51.100.7", 50000)).offer())
            invite = call.invite
            call.pbx_reply(180, "Ringing")
            if kind == "cancel":
                backend, _ = call.request("CANCEL", cseq=1)
                call.pbx_reply(200, "OK", request=next(m for m in backend if m.startswith("CANCEL")))
                call.pbx_reply(487, "Request Terminated", request=invite)
            else:
                call.pbx_reply(486, "Busy Here")
            h.proxy.close_flow(call.flow, h.now)
            continue
        # "shutdown" calls are on hold both ways (inactive): the hold timeout keeps them until shutdown()
        call, browser, answer = answered_call(h, direction="inactive" if kind == "shutdown" else "sendrecv")
        if i % 10 == 0 and kind != "shutdown":
            connect_media(h, call, browser, answer)
        if kind == "bye":
            call.request("BYE")
            call.pbx_reply(200, "OK")
            h.proxy.close_flow(call.flow, h.now)
        elif kind == "pbx-bye":
            flows = call.pbx_request("BYE")
            bye = next(m for m in flows.get(call.flow, []) if m.startswith("BYE "))
            h.client(call.flow, _answer(bye, 200, "OK"))
            h.proxy.close_flow(call.flow, h.now)
        elif kind == "flow":
            h.proxy.close_flow(call.flow, h.now)
        if i % 100 == 99:
            h.tick(1.0)
    # calls whose connection was lost wait out the grace period (30 s), longer than this loop
    assert len(h.anchor.sessions) == ends["idle"] + ends["shutdown"] + ends["flow"]
    assert len(h.io.open) == 3 * len(h.anchor.sessions)
    h.tick(IDLE + 5)
    counters = h.anchor.counters
    # calls whose ICE was up lose consent at the same moment as their idle deadline (30 s either way)
    consent = counters.get("media_sessions_ended:consent lost", 0)
    assert consent > 0 and counters["media_sessions_ended:idle timeout"] + consent == ends["idle"]
    assert len(h.anchor.sessions) == ends["shutdown"]
    h.anchor.shutdown()
    assert counters["media_sessions_ended:shutdown"] == ends["shutdown"]
    assert counters["media_sessions_ended:BYE"] == ends["bye"] + ends["pbx-bye"]
    assert counters["media_sessions_ended:flow grace expired"] == ends["flow"]
    assert counters["media_sessions_ended:487"] == ends["cancel"]
    assert counters["media_sessions_ended:486"] == ends["busy"]
    assert counters["media_sessions_created"] == 1000
    for flow in list(h.proxy.flows):
        h.proxy.close_flow(flow, h.now)
    h.tick(120)  # transaction timers (J, K ...) run out
    del call, browser
    assert_clean(h)
    assert h.io.opened >= 2000


# ---------------------------------------------------------------------------- call-end records


def test_released_sessions_are_reported_once_with_agent_and_quality() -> None:
    """on_released hears each live session once, before its legs close: tenant, agent AOR, reason, figures."""
    h = Harness()
    seen: list[tuple[str, str, str, dict[str, Any]]] = []

    def released(session: MediaSession, reason: str) -> None:
        info = session.owner_data
        seen.append((info.tenant_id, info.agent, reason, session.quality.summary()))

    h.anchor.on_released = released
    call, browser, answer = answered_call(h)
    connect_media(h, call, browser, answer)
    call.request("BYE")
    call.pbx_reply(200, "OK")
    h.anchor.on_end(call.call_id, "BYE")  # a second end of the same call reports nothing
    assert len(seen) == 1
    tenant, agent, reason, quality = seen[0]
    assert (tenant, agent, reason) == ("rossi", "sip:alice@rossi.example.com", "BYE")
    assert quality["legs"]["client"]["packets_in"] == 1 and quality["legs"]["pbx"]["packets_in"] == 1
    assert quality["loss"] == 0.0 and quality["mos"] is not None
    del call, browser
    assert_clean(h)


def test_a_failing_release_hook_never_keeps_ports() -> None:
    """A hook that raises is counted; the session's ports and objects are released all the same."""
    h = Harness()

    def broken(session: MediaSession, reason: str) -> None:
        raise RuntimeError("boom")

    h.anchor.on_released = broken
    call, _browser, _answer = answered_call(h)
    call.request("BYE")
    call.pbx_reply(200, "OK")
    assert h.anchor.counters["media_release_hook_failed"] == 1
    del call, _browser, _answer
    assert_clean(h)
