"""The echo service and the network check endpoints against an in-process edge, with real sockets.

A WebSocket softphone (tests/helpers/wsclient.py) speaks SIP; a simulated browser
(tests/helpers/webrtc_peer.py: ICE checks, DTLS client, SRTP) sends media from a UDP socket. The
echo answers on the edge itself (the tenant's PBX socket never sees a packet), loops the media back
through the relay with a new SSRC, and releases everything on BYE, on the connection closing and
on media timeout (then the edge sends BYE).
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from helpers.edge import InProcessEdge, StopAfter, edge_toml, free_udp_port, tenant_toml, until
from helpers.https import Conn
from helpers.webrtc_peer import WebRtcPeer, rtcp_rr
from helpers.wsclient import WSClient, header, status
from twisted.internet import threads

from mcs_edge.core.media.sdp import SessionDescription

pytestmark = pytest.mark.e2e


class Edge(InProcessEdge):
    """Tenants ``echo`` (echo on) and ``plain`` (echo off); both PBXs are bare UDP sockets."""

    def __init__(self, tmp: Path, idle: float = 30.0) -> None:
        super().__init__(tmp)
        self.pbx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.pbx.bind(("127.0.0.1", 0))
        self.pbx.settimeout(0.2)
        self.closers.append(self.pbx.close)
        pbx_port = self.pbx.getsockname()[1]
        tenants = tenant_toml("echo", pbx_port, keys="echo = true\n") + tenant_toml("plain", pbx_port)
        lo = min(max(free_udp_port() & ~1, 20000), 60000)
        text = edge_toml(
            self.state,
            tenants,
            public=True,
            tls_reload=True,
            sip="flow_grace = 1\n",
            media=(lo, lo + 63),
            media_keys=f"idle_timeout = {idle}\n",
        )
        self.start(text)

    def ws(self, tenant: str = "echo") -> WSClient:
        return WSClient(self.https, f"{tenant}.example.com", cafile=self.ca)

    def pbx_got(self) -> list[bytes]:
        out = []
        try:
            while True:
                out.append(self.pbx.recv(65536))
        except OSError:
            return out

    def media_idle(self) -> bool:
        anchor = self.service.media.anchor
        return not self.service.echo.calls and anchor.allocator.in_use == 0 and not self.service.media.ports


@pytest.fixture
def edge(tmp_path: Path, stop_after: StopAfter) -> Any:
    return stop_after(Edge(tmp_path))


class Dialog:
    """A UAC dialog toward ``echo@<domain>`` over one WebSocket."""

    def __init__(self, ws: WSClient, domain: str = "echo.example.com", user: str = "echo") -> None:
        self.ws = ws
        self.domain = domain
        self.uri = f"sip:{user}@{domain}"
        self.call_id = uuid.uuid4().hex
        self.tag = uuid.uuid4().hex[:8]
        self.to_tag: str | None = None
        self.target = self.uri
        self.cseq = 0

    def send(
        self, method: str, body: str = "", cseq: int | None = None, in_dialog: bool = True, branch: str = ""
    ) -> str:
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        branch = branch or "z9hG4bK" + uuid.uuid4().hex[:12]
        to = f"<{self.uri}>" + (f";tag={self.to_tag}" if self.to_tag and in_dialog else "")
        uri = self.target if in_dialog else self.uri
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/WSS x1.invalid;branch={branch}",
            "Max-Forwards: 70",
            f"From: <sip:alice@{self.domain}>;tag={self.tag}",
            f"To: {to}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {cseq} {method}",
            "Contact: <sip:alice@x1.invalid;transport=ws>",
        ]
        if body:
            lines.append("Content-Type: application/sdp")
        lines += [f"Content-Length: {len(body.encode())}", "", body]
        self.ws.send("\r\n".join(lines))
        return branch

    def final(self, timeout: float = 5.0) -> str:
        msg = self.ws.recv_sip(timeout, skip_provisional=True)
        assert msg.startswith("SIP/2.0 "), msg
        return msg

    def invite(self, body: str) -> str:
        branch = self.send("INVITE", body, in_dialog=False)
        msg = self.final()
        if status(msg) >= 300:  # ACK for a failure: same branch, the response's To tag (RFC 3261 s.17.1.1.3)
            self.to_tag = (header(msg, "To") or "").split("tag=", 1)[1].split(";")[0]
            self.send("ACK", cseq=self.cseq, branch=branch)
        if status(msg) == 200:
            to = header(msg, "To") or ""
            self.to_tag = to.split("tag=", 1)[1].split(";")[0]
            contact = header(msg, "Contact") or ""
            self.target = contact.split("<", 1)[1].split(">", 1)[0]
            self.send("ACK", cseq=self.cseq)
        return msg


def _body(msg: str) -> str:
    return msg.split("\r\n\r\n", 1)[1]


def _connect_media(peer: WebRtcPeer, sock: socket.socket, answer: str) -> None:
    """ICE check and DTLS handshake with the edge's client leg over real UDP."""
    peer.accept(SessionDescription.parse(answer))
    assert peer.edge_addr is not None
    sock.sendto(peer.check(), peer.edge_addr)
    sock.recvfrom(2048)  # the binding success response
    out = peer.start_dtls(time.monotonic())
    for _ in range(20):
        for data in out:
            sock.sendto(data, peer.edge_addr)
        out = []
        if peer.srtp is not None:
            return
        data, _ = sock.recvfrom(4096)
        out = peer.feed_dtls(data, time.monotonic())
    raise AssertionError("DTLS did not complete")


def _echo_call(edge: Edge) -> dict[str, Any]:
    ws = edge.ws()
    d = Dialog(ws)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2.0)
    peer = WebRtcPeer(sock.getsockname())
    out: dict[str, Any] = {}
    ok = d.invite(peer.offer())
    out["invite"] = ok
    answer = _body(ok)
    _connect_media(peer, sock, answer)
    assert peer.edge_addr is not None and peer.srtp is not None
    back = []
    for seq in range(1, 21):
        sock.sendto(peer.srtp_packet(seq, payload=bytes([seq]) * 160), peer.edge_addr)
        data, _ = sock.recvfrom(4096)
        back.append(peer.srtp.unprotect_rtp(data))
    sock.sendto(peer.srtp.protect_rtcp(rtcp_rr(peer.ssrcs[0])), peer.edge_addr)
    out["back"] = back
    out["stats"] = edge.service.echo.stats(d.call_id)
    d.send("OPTIONS")
    out["options"] = d.final()
    hold = peer.offer(direction="sendonly")
    d.send("INVITE", hold)
    out["reinvite"] = d.final()
    d.send("ACK", cseq=d.cseq)
    d.send("BYE")
    out["bye"] = d.final()
    sock.close()
    ws.close()
    return out


@pytest_twisted.inlineCallbacks
def test_echo_call_loops_srtp_back_and_never_reaches_the_pbx(edge: Edge) -> Any:
    """INVITE to echo@ is answered by the edge (ICE-lite, passive, BUNDLE); SRTP comes back re-keyed with our SSRC."""
    out = yield threads.deferToThread(_echo_call, edge)
    ok = out["invite"]
    assert status(ok) == 200
    answer = _body(ok)
    assert "a=ice-lite" in answer and "a=setup:passive" in answer and "a=group:BUNDLE 0" in answer
    assert "c=IN IP4 127.0.0.1" in answer and "UDP/TLS/RTP/SAVPF" in answer
    assert (header(ok, "Contact") or "").startswith("<sip:echo@127.0.0.1:")
    back = out["back"]
    assert len(back) == 20
    for seq, pkt in enumerate(back, 1):
        assert int.from_bytes(pkt[2:4], "big") == seq  # the caller's sequence numbers
        assert pkt[12:] == bytes([seq]) * 160  # the payload, decrypted and re-encrypted
    ssrcs = {pkt[8:12] for pkt in back}
    assert len(ssrcs) == 1 and ssrcs != {(0x1111).to_bytes(4, "big")}  # the loop's own SSRC
    assert out["stats"]["looped"] == 20
    assert status(out["options"]) == 200 and "INVITE" in (header(out["options"], "Allow") or "")
    assert status(out["reinvite"]) == 200 and "a=recvonly" in _body(out["reinvite"])  # hold mirrored
    assert status(out["bye"]) == 200
    yield until(edge.media_idle, 5, raises=False)
    assert edge.media_idle()
    echo = edge.service.echo
    assert echo.outcomes == {("echo", "answered"): 1}
    assert echo.ended == {("echo", "bye"): 1}
    assert edge.pbx_got() == []  # the PBX never saw the call
    text = edge.service.metrics.render().decode()
    assert 'mcs_edge_echo_packets_total{tenant="echo"} 20.0' in text
    assert 'mcs_edge_echo_calls_ended_total{reason="bye",tenant="echo"} 1.0' in text


def _requests(edge: Edge) -> dict[str, Any]:
    ws = edge.ws()
    out: dict[str, Any] = {}
    d = Dialog(ws)
    d.send("OPTIONS", in_dialog=False)
    out["options"] = d.final()
    d = Dialog(ws)
    d.send("MESSAGE", in_dialog=False)
    out["message"] = d.final()
    d = Dialog(ws)
    out["garbage_sdp"] = d.invite("v=0\r\nthis is not sdp\r\n")
    # delayed offer: ours in the 200, the answer in the ACK
    d = Dialog(ws)
    d.send("INVITE", in_dialog=False)
    ok = d.final()
    out["delayed"] = ok
    d.to_tag = (header(ok, "To") or "").split("tag=", 1)[1]
    peer = WebRtcPeer(("127.0.0.1", 9))
    d.send("ACK", peer.answer(SessionDescription.parse(_body(ok))), cseq=d.cseq)
    d.send("OPTIONS")  # answered after the ACK was handled (one connection, in order)
    out["delayed_options"] = d.final()
    out["delayed_session"] = edge.service.echo.calls[d.call_id].session.established
    d.send("CANCEL", cseq=1, in_dialog=False)
    out["cancel_late"] = d.final()
    # the per-connection limit: a third echo call on this flow is busy
    d2 = Dialog(ws)
    out["second"] = d2.invite(WebRtcPeer(("127.0.0.1", 9)).offer())
    d3 = Dialog(ws)
    out["third"] = d3.invite(WebRtcPeer(("127.0.0.1", 9)).offer())
    d3.send("OPTIONS", in_dialog=False)  # after the ACKs were handled (one connection, in order)
    d3.final()
    out["live_before_close"] = len(edge.service.echo.calls)
    ws.close()
    return out


@pytest_twisted.inlineCallbacks
def test_echo_answers_options_refuses_what_it_cannot_and_releases_on_close(edge: Edge) -> Any:
    """OPTIONS 200, MESSAGE 405, bad SDP 488, delayed offer, late CANCEL, 486 past the limit, close frees all (after sip.flow_grace)."""
    out = yield threads.deferToThread(_requests, edge)
    assert status(out["options"]) == 200 and header(out["options"], "Accept") == "application/sdp"
    assert status(out["message"]) == 405 and "BYE" in (header(out["message"], "Allow") or "")
    assert status(out["garbage_sdp"]) == 488
    assert status(out["delayed"]) == 200 and "a=setup:actpass" in _body(out["delayed"])
    assert out["delayed_session"] is True
    assert status(out["cancel_late"]) in (200, 481)  # the INVITE was answered: CANCEL has no effect
    assert status(out["second"]) == 200
    assert status(out["third"]) == 486
    assert out["live_before_close"] == 2
    yield until(edge.media_idle, 5, raises=False)
    assert edge.media_idle()
    ended = edge.service.echo.ended
    assert ended == {("echo", "flow_closed"): 2}
    assert edge.service.echo.outcomes[("echo", "busy")] == 1
    assert edge.pbx_got() == []


def _disabled(edge: Edge) -> list[bytes]:
    ws = edge.ws("plain")
    d = Dialog(ws, domain="plain.example.com")
    d.send("INVITE", WebRtcPeer(("127.0.0.1", 9)).offer(), in_dialog=False)
    got: list[bytes] = []
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        got = edge.pbx_got()
    ws.close()
    return got


@pytest_twisted.inlineCallbacks
def test_echo_user_of_a_tenant_without_echo_goes_to_its_pbx(edge: Edge) -> Any:
    """With echo = false, INVITE echo@ is an ordinary call: forwarded to the tenant's PBX."""
    got = yield threads.deferToThread(_disabled, edge)
    assert got and got[0].startswith(b"INVITE sip:echo@plain.example.com SIP/2.0")
    assert edge.service.echo.outcomes == {}


def _silent_call(edge: Edge) -> tuple[str, str]:
    ws = edge.ws()
    d = Dialog(ws)
    ok = d.invite(WebRtcPeer(("127.0.0.1", 9)).offer())
    bye = ws.recv_sip(timeout=10)
    via = header(bye, "Via") or ""
    ws.send(
        f"SIP/2.0 200 OK\r\nVia: {via}\r\nFrom: {header(bye, 'From')}\r\nTo: {header(bye, 'To')}\r\n"
        f"Call-ID: {header(bye, 'Call-ID')}\r\nCSeq: {header(bye, 'CSeq')}\r\nContent-Length: 0\r\n\r\n"
    )
    time.sleep(0.2)
    ws.close()
    return ok, bye


@pytest_twisted.inlineCallbacks
def test_silent_echo_call_ends_with_a_bye_from_the_edge(tmp_path: Path) -> Any:
    """A caller that sends no media for media.idle_timeout gets a BYE from the edge; the call is released."""
    edge = Edge(tmp_path, idle=1.0)
    try:
        ok, bye = yield threads.deferToThread(_silent_call, edge)
        assert status(ok) == 200
        assert bye.startswith("BYE sip:alice@x1.invalid;transport=ws SIP/2.0")
        assert "echo media" in (header(bye, "Reason") or "")
        assert (header(bye, "To") or "").endswith(f"tag={(header(ok, 'From') or '').split('tag=')[1]}")
        yield until(edge.media_idle, 5, raises=False)
        assert edge.media_idle()
        assert edge.service.echo.ended == {("echo", "media"): 1}
    finally:
        yield edge.stop()


# --------------------------------------------------------------------------- the check page


def _check_http(edge: Edge) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def req(method: str, path: str, tenant: str = "echo", body: bytes | None = None) -> Any:
        conn = Conn(edge.https, f"{tenant}.example.com", cafile=edge.ca)
        try:
            return conn.request(method, path, host=f"{tenant}.example.com:{edge.https}", body=body)
        finally:
            conn.close()

    out["page"] = req("GET", "/check")
    out["well_known"] = req("GET", "/.well-known/mcs-edge/check")
    out["js"] = req("GET", "/check/check.js")
    out["css"] = req("GET", "/.well-known/mcs-edge/check/check.css")
    out["missing"] = req("GET", "/check/nothing")
    out["disabled"] = req("GET", "/check", tenant="plain")
    report = {
        "result": "warn",
        "rtt_ms": 42.5,
        "loss_pct": 0.5,
        "bitrate_Bps": 55000,
        "jitter_ms": "x",
        "who": "me",
    }
    out["report"] = req("POST", "/check/report", body=json.dumps(report).encode())
    out["again"] = req("POST", "/check/report", body=json.dumps(report).encode())
    out["get_report"] = req("GET", "/check/report")
    out["bad_json"] = req("POST", "/.well-known/mcs-edge/check/report", body=b"{nope")
    out["bad_result"] = req("POST", "/check/report", body=b'{"result": "great"}')
    out["too_large"] = req("POST", "/check/report", body=b'{"result": "pass", "x": "' + b"a" * 5000 + b'"}')
    return out


@pytest_twisted.inlineCallbacks
def test_check_page_and_report_endpoint(edge: Edge) -> Any:
    """The page, its assets and the report endpoint per tenant: validation, rate limit, metrics."""
    out = yield threads.deferToThread(_check_http, edge)
    page = out["page"]
    assert page.status == 200 and page.header("Content-Type") == "text/html; charset=utf-8"
    assert "script-src 'self'" in (page.header("Content-Security-Policy") or "")
    assert b'"domain": "echo.example.com"' in page.body and b'"report": "/check/report"' in page.body
    assert b'src="/check/check.js"' in page.body
    wk = out["well_known"]
    assert wk.status == 200 and b'"report": "/.well-known/mcs-edge/check/report"' in wk.body
    assert out["js"].status == 200 and b"class SipSocket" in out["js"].body
    assert out["css"].status == 200
    assert out["missing"].status == 404
    assert out["disabled"].status == 404
    assert out["report"].status == 200 and json.loads(out["report"].body) == {"ok": True, "kept": 3}
    assert out["again"].status == 429  # one report per source every few seconds
    assert out["get_report"].status == 405
    assert out["bad_json"].status == 400 and out["bad_result"].status == 400
    assert out["too_large"].status == 413
    text = edge.service.metrics.render().decode()
    assert 'mcs_edge_check_reports_total{result="warn",tenant="echo"} 1.0' in text
    assert 'mcs_edge_check_rtt_seconds_sum{tenant="echo"} 0.0425' in text
    assert 'mcs_edge_check_loss_ratio_sum{tenant="echo"} 0.005' in text
    assert 'mcs_edge_check_reports_refused_total{reason="rate"} 1.0' in text
