"""SIP through the edge with real peers: a WebSocket softphone (TLS) and sipp as the tenant PBX over UDP."""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from helpers.edge import InProcessEdge, StopAfter, edge_toml, free_udp_port, sleep, tenant_toml
from helpers.phone import answer_incoming
from helpers.sipp import Sipp
from helpers.wsclient import WSClient, header, headers, status
from twisted.internet import threads

pytestmark = pytest.mark.requires_tool("sipp")


class Edge(InProcessEdge):
    """Tenants rossi (PBX: sipp) and bianchi (a bare socket on 127.0.0.2 that must hear nothing); SIP/TLS on."""

    ORIGIN = True

    def __init__(self, tmp: Path, t1: float = 0.5) -> None:
        super().__init__(tmp)
        self.pbx_port = free_udp_port()
        self.other_pbx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.other_pbx.bind(("127.0.0.1", 0))
        self.other_pbx.settimeout(0.5)
        self.closers.append(self.other_pbx.close)
        tenants = tenant_toml("rossi", self.pbx_port, origin=True) + tenant_toml(
            "bianchi", self.other_pbx.getsockname()[1], "127.0.0.2"
        )
        self.start(edge_toml(self.state, tenants, sip_tls="127.0.0.1:0", sip=f"t1 = {t1}\n"))
        self.sip_tls = self.port("sip_tls")

    def sipp(self, scenario: str, *, uac: bool = False, keys: dict[str, str] | None = None) -> Sipp:
        return Sipp(self.tmp, scenario, self.pbx_port, self.backend, keys=keys)


@pytest.fixture
def edge(tmp_path: Path, stop_after: StopAfter) -> Any:
    return stop_after(Edge(tmp_path))


def _register(ws: WSClient, user: str = "alice") -> tuple[str, str]:
    """REGISTER twice (challenge, then credentials); returns (401 text, 200 text)."""
    call_id = uuid.uuid4().hex
    contact = f'<sip:{user}x9@df7jal23ls0d.invalid;transport=ws>;+sip.ice;reg-id=1;+sip.instance="<urn:uuid:{uuid.uuid4()}>"'

    def reg(cseq: int, auth: str = "") -> str:
        return (
            f"REGISTER sip:rossi.example.com SIP/2.0\r\n"
            f"Via: SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bK{uuid.uuid4().hex[:12]}\r\n"
            f"Max-Forwards: 69\r\nTo: <sip:{user}@rossi.example.com>\r\n"
            f"From: <sip:{user}@rossi.example.com>;tag=ab{cseq}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\n"
            f"Contact: {contact};expires=600\r\nSupported: path, gruu, outbound\r\n{auth}Content-Length: 0\r\n\r\n"
        )

    ws.send(reg(1))
    first = ws.recv_sip(skip_provisional=True)
    ws.send(
        reg(
            2,
            'Authorization: Digest username="alice", realm="rossi.example.com", nonce="5d8a0cbf9d7f", uri="sip:rossi.example.com", response="00"\r\n',
        )
    )
    second = ws.recv_sip(skip_provisional=True)
    return first, second


@pytest_twisted.inlineCallbacks
def test_register_gets_401_then_200_with_path(edge: Edge) -> Any:
    """A WebSocket client registers through the edge: the PBX's 401 and 200 come back untouched; the PBX saw a Path."""
    pbx = edge.sipp("pbx_register.xml")
    ws = yield threads.deferToThread(edge.client)
    assert ws.protocol == "sip"
    first, second = yield threads.deferToThread(_register, ws)
    assert status(first) == 401
    assert (
        header(first, "WWW-Authenticate")
        == 'Digest realm="rossi.example.com", nonce="5d8a0cbf9d7f", algorithm=MD5, qop="auth"'
    )
    assert status(second) == 200
    assert "df7jal23ls0d.invalid" in (header(second, "Contact") or "")
    assert len(headers(second, "Via")) == 1  # our Via was removed
    rc = yield threads.deferToThread(pbx.result)
    assert rc == 0
    ws.close()


def _outgoing_call(ws: WSClient) -> list[int]:
    call_id = uuid.uuid4().hex
    branch = "z9hG4bK" + uuid.uuid4().hex[:12]
    sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n"
    common = f"From: <sip:alice@rossi.example.com>;tag=c1\r\nCall-ID: {call_id}\r\n"
    ws.send(
        f"INVITE sip:200@rossi.example.com SIP/2.0\r\nVia: SIP/2.0/WSS x.invalid;branch={branch}\r\nMax-Forwards: 70\r\n"
        f"To: <sip:200@rossi.example.com>\r\n{common}CSeq: 1 INVITE\r\nContact: <sip:alice@x.invalid;transport=ws;ob>\r\n"
        f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}"
    )
    seen = []
    while True:
        msg = ws.recv_sip(timeout=10)
        seen.append(status(msg))
        if status(msg) >= 200:
            break
    ok = msg
    to = header(ok, "To")
    rr = headers(ok, "Record-Route")
    routes = ", ".join(
        v for line in rr for v in [line]
    )  # UAC route set = Record-Route as received (s.12.1.2: reversed for UAC)
    route_list = [r.strip() for line in rr for r in line.split(",")]
    route_hdr = ", ".join(reversed(route_list))
    target = (header(ok, "Contact") or "").strip("<>").split(">")[0]
    assert routes
    ws.send(
        f"ACK {target} SIP/2.0\r\nVia: SIP/2.0/WSS x.invalid;branch=z9hG4bK{uuid.uuid4().hex[:12]}\r\nMax-Forwards: 70\r\n"
        f"Route: {route_hdr}\r\nTo: {to}\r\n{common}CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    )
    ws.send(
        f"BYE {target} SIP/2.0\r\nVia: SIP/2.0/WSS x.invalid;branch=z9hG4bK{uuid.uuid4().hex[:12]}\r\nMax-Forwards: 70\r\n"
        f"Route: {route_hdr}\r\nTo: {to}\r\n{common}CSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    )
    bye_ok = ws.recv_sip(timeout=10)
    seen.append(status(bye_ok))
    return seen


@pytest_twisted.inlineCallbacks
def test_outgoing_call_completes(edge: Edge) -> Any:
    """A client calls the PBX: 100 from the edge, 180 and 200 from the PBX, ACK and BYE reach the PBX."""
    pbx = edge.sipp("pbx_answer.xml")
    ws = yield threads.deferToThread(edge.client)
    seen = yield threads.deferToThread(_outgoing_call, ws)
    assert seen[0] == 100 and 180 in seen and seen[-2:] == [200, 200]
    rc = yield threads.deferToThread(pbx.result)
    assert rc == 0
    ws.close()


@pytest_twisted.inlineCallbacks
def test_incoming_call_reaches_registered_client_through_its_flow(edge: Edge) -> Any:
    """The PBX calls the registered client via the Path it stored: INVITE/180/200/ACK/BYE complete."""
    reg = edge.sipp("pbx_register.xml")
    ws = yield threads.deferToThread(edge.client)
    _first, ok = yield threads.deferToThread(_register, ws)
    assert (yield threads.deferToThread(reg.result)) == 0
    path = header(ok, "Path")
    assert path and path.startswith("<sip:")
    contact = (header(ok, "Contact") or "").split(">")[0].lstrip("<")
    call = edge.sipp("pbx_call_client.xml", uac=True, keys={"route": path, "contact": contact})
    inv = yield threads.deferToThread(answer_incoming, ws)
    assert inv.split(" ")[1] == contact  # the Request-URI is the client's own contact
    assert (yield threads.deferToThread(call.result)) == 0
    ws.close()


@pytest_twisted.inlineCallbacks
def test_disconnected_client_gets_430_flow_failed(edge: Edge) -> Any:
    """After the client's WebSocket closes, the PBX's next request to it gets 430 Flow Failed."""
    reg = edge.sipp("pbx_register.xml")
    ws = yield threads.deferToThread(edge.client)
    _first, ok = yield threads.deferToThread(_register, ws)
    assert (yield threads.deferToThread(reg.result)) == 0
    path = header(ok, "Path") or ""
    contact = (header(ok, "Contact") or "").split(">")[0].lstrip("<")
    ws.close()
    yield sleep(0.3)
    call = edge.sipp("pbx_expect_430.xml", uac=True, keys={"route": path, "contact": contact})
    assert (yield threads.deferToThread(call.result)) == 0
    assert edge.service.sip.core.counters.get("sip_flow_failed") == 1


def _cancel_call(ws: WSClient) -> list[int]:
    call_id = uuid.uuid4().hex
    branch = "z9hG4bK" + uuid.uuid4().hex[:12]
    via = f"Via: SIP/2.0/WSS x.invalid;branch={branch}\r\n"
    common = f"From: <sip:alice@rossi.example.com>;tag=c1\r\nTo: <sip:200@rossi.example.com>\r\nCall-ID: {call_id}\r\nMax-Forwards: 70\r\n"
    ws.send(
        f"INVITE sip:200@rossi.example.com SIP/2.0\r\n{via}{common}CSeq: 1 INVITE\r\nContact: <sip:a@x.invalid;transport=ws>\r\nContent-Length: 0\r\n\r\n"
    )
    seen = []
    while True:
        msg = ws.recv_sip(timeout=10)
        seen.append(status(msg))
        if status(msg) == 180:
            break
    ws.send(
        f"CANCEL sip:200@rossi.example.com SIP/2.0\r\n{via}{common}CSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n"
    )
    for _ in range(2):
        seen.append(status(ws.recv_sip(timeout=10)))
    to = "To: <sip:200@rossi.example.com>"
    ws.send(
        f"ACK sip:200@rossi.example.com SIP/2.0\r\n{via}{common.replace(to, to)}CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    )
    return seen


@pytest_twisted.inlineCallbacks
def test_cancel_before_answer(edge: Edge) -> Any:
    """CANCEL while ringing: the client gets 200 for the CANCEL and 487 for the INVITE; the PBX saw the CANCEL."""
    pbx = edge.sipp("pbx_cancel.xml")
    ws = yield threads.deferToThread(edge.client)
    seen = yield threads.deferToThread(_cancel_call, ws)
    assert 180 in seen and sorted(seen[-2:]) == [200, 487]
    assert (yield threads.deferToThread(pbx.result)) == 0
    ws.close()


def _invite_foreign(ws: WSClient) -> str:
    ws.send(
        "INVITE sip:200@bianchi.example.com SIP/2.0\r\nVia: SIP/2.0/WSS x.invalid;branch=z9hG4bKforeign1\r\nMax-Forwards: 70\r\n"
        "From: <sip:alice@rossi.example.com>;tag=c1\r\nTo: <sip:200@bianchi.example.com>\r\nCall-ID: foreign1\r\n"
        "CSeq: 1 INVITE\r\nContact: <sip:a@x.invalid;transport=ws>\r\nContent-Length: 0\r\n\r\n"
    )
    return ws.recv_sip(timeout=5, skip_provisional=True)


@pytest_twisted.inlineCallbacks
def test_request_for_another_tenant_gets_403_and_reaches_no_pbx(edge: Edge) -> Any:
    """A rossi connection asking for bianchi's domain gets 403; nothing reaches any PBX."""
    ws = yield threads.deferToThread(edge.client)
    resp = yield threads.deferToThread(_invite_foreign, ws)
    assert status(resp) == 403
    assert edge.service.sip.core.counters.get("sip_foreign_domain") == 1
    assert edge.service.sip.core.counters.get("sip_requests_to_backend") is None
    with pytest.raises(TimeoutError):
        edge.other_pbx.recvfrom(65536)
    ws.close()


def _options(ws: WSClient) -> str:
    ws.send(
        "OPTIONS sip:rossi.example.com SIP/2.0\r\nVia: SIP/2.0/WSS x.invalid;branch=z9hG4bKopt1\r\nMax-Forwards: 70\r\n"
        "From: <sip:alice@rossi.example.com>;tag=c1\r\nTo: <sip:rossi.example.com>\r\nCall-ID: opt1\r\n"
        "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    return ws.recv_sip(timeout=15, skip_provisional=True)


def _lossy_pbx(sock: socket.socket) -> tuple[int, float]:
    """Drop the first copy of a request, answer the retransmission: (copies seen, gap in s)."""
    sock.settimeout(10)
    first, _ = sock.recvfrom(65536)
    t0 = time.monotonic()
    second, addr = sock.recvfrom(65536)
    gap = time.monotonic() - t0
    assert first == second
    text = second.decode()
    vias = "".join(f"Via: {v}\r\n" for v in headers(text, "Via"))
    resp = (
        f"SIP/2.0 200 OK\r\n{vias}From: {header(text, 'From')}\r\nTo: {header(text, 'To')};tag=p1\r\n"
        f"Call-ID: {header(text, 'Call-ID')}\r\nCSeq: {header(text, 'CSeq')}\r\nContent-Length: 0\r\n\r\n"
    )
    sock.sendto(resp.encode(), addr)
    return 2, gap


@pytest_twisted.inlineCallbacks
def test_udp_retransmission_toward_pbx(edge: Edge) -> Any:
    """The PBX drops the first copy; the edge retransmits after T1 (Timer E) and the 200 reaches the client."""
    pbx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    pbx.bind(("127.0.0.1", edge.pbx_port))
    try:
        lossy = threads.deferToThread(_lossy_pbx, pbx)
        ws = yield threads.deferToThread(edge.client)
        resp = yield threads.deferToThread(_options, ws)
        copies, gap = yield lossy
        assert status(resp) == 200
        assert copies == 2 and 0.4 <= gap <= 1.5  # T1 = 0.5 s
        ws.close()
    finally:
        pbx.close()


@pytest_twisted.inlineCallbacks
def test_silent_pbx_gives_408(tmp_path: Path) -> Any:
    """A PBX that never answers: after Timer F (64*T1, T1 = 50 ms here) the client gets 408."""
    e = Edge(tmp_path, t1=0.05)
    try:
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        silent.bind(("127.0.0.1", e.pbx_port))
        ws = yield threads.deferToThread(e.client)
        resp = yield threads.deferToThread(_options, ws)
        assert status(resp) == 408
        assert e.service.sip.core.counters.get("sip_backend_timeout") == 1
        copies = 0
        silent.setblocking(False)
        while True:
            try:
                silent.recvfrom(65536)
                copies += 1
            except BlockingIOError:
                break
        assert copies >= 5  # the first send plus Timer E retransmissions
        silent.close()
        ws.close()
    finally:
        yield e.stop()


@pytest_twisted.inlineCallbacks
def test_websocket_without_sip_subprotocol_or_bad_origin_is_refused(edge: Edge) -> Any:
    """The handshake needs subprotocol 'sip' and an allowed Origin."""
    from helpers.wsclient import HandshakeRefused

    with pytest.raises(HandshakeRefused) as no_sip:
        yield threads.deferToThread(edge.client, subprotocol=None)
    assert no_sip.value.status == 400
    with pytest.raises(HandshakeRefused) as bad_origin:
        yield threads.deferToThread(edge.client, origin="https://evil.example.net")
    assert bad_origin.value.status == 403


def _keepalive(ws: WSClient) -> str:
    ws.send("\r\n\r\n")
    return ws.recv(timeout=5)


@pytest_twisted.inlineCallbacks
def test_crlf_keepalive_is_answered(edge: Edge) -> Any:
    """A CRLFCRLF keepalive gets a CRLF pong (RFC 5626), not an error."""
    ws = yield threads.deferToThread(edge.client)
    pong = yield threads.deferToThread(_keepalive, ws)
    assert pong == "\r\n"
    ws.close()


def _ping_then_keepalive_glued_to_request(ws: WSClient) -> tuple[bytes, str, str]:
    # a ping with a payload: the pong carries the same payload (RFC 6455 s.5.5.3)
    ws.sock.sendall(ws._frame(0x9, b"hello-ping-0123456789"))
    ws.sock.settimeout(5)
    b0, b1 = ws._read_exact(2)
    pong = bytes([b0]) + ws._read_exact(b1 & 0x7F)
    # a keepalive and a request in one write, then a keepalive split over two writes: byte order kept
    options = (  # Max-Forwards 0: the edge answers 483 itself
        "OPTIONS sip:rossi.example.com SIP/2.0\r\nVia: SIP/2.0/WSS k.invalid;branch=z9hG4bKka1\r\n"
        "Max-Forwards: 0\r\nFrom: <sip:100@rossi.example.com>;tag=k1\r\nTo: <sip:100@rossi.example.com>\r\n"
        "Call-ID: ka-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    ws.sock.sendall(ws._frame(0x1, b"\r\n\r\n") + ws._frame(0x1, options.encode()))
    first = ws.recv(timeout=5)
    frame = ws._frame(0x1, b"\r\n\r\n")
    ws.sock.sendall(frame[:3])
    time.sleep(0.1)
    ws.sock.sendall(frame[3:])
    messages = [first]
    while messages.count("\r\n") < 2 or not any(m.startswith("SIP/2.0 ") for m in messages):
        messages.append(ws.recv(timeout=5))
    sip = next(m for m in messages if m.startswith("SIP/2.0"))
    return pong, messages[0], sip


@pytest_twisted.inlineCallbacks
def test_ping_and_keepalives_are_answered_in_order(edge: Edge) -> Any:
    """Pings get their payload back; a keepalive glued to a request or split over reads still works."""
    ws = yield threads.deferToThread(edge.client)
    pong, first, sip = yield threads.deferToThread(_ping_then_keepalive_glued_to_request, ws)
    assert pong == b"\x8ahello-ping-0123456789"
    assert first == "\r\n"  # the keepalive's pong comes before the request's answer
    assert sip.startswith("SIP/2.0 483 ")
    ws.close()


class TLSClient:
    """The mobile app's transport: SIP over TLS with Content-Length framing."""

    def __init__(self, port: int, ca: str, host: str = "rossi.example.com") -> None:
        import ssl

        ctx = ssl.create_default_context(cafile=ca)
        self.sock = ctx.wrap_socket(
            socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname=host
        )
        self.buf = b""

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode())

    def recv_raw(self, n: int = 65536) -> bytes:
        return self.sock.recv(n)

    def recv_sip(self, skip_provisional: bool = True) -> str:
        while True:
            while b"\r\n\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed")
                self.buf += chunk
            head, rest = self.buf.split(b"\r\n\r\n", 1)
            length = int(header(head.decode(), "Content-Length") or 0)
            while len(rest) < length:
                rest += self.sock.recv(65536)
            self.buf = rest[length:]
            msg = head.decode() + "\r\n\r\n" + rest[:length].decode()
            if skip_provisional and msg.startswith("SIP/2.0 1"):
                continue
            return msg


def _tls_session(port: int, ca: str) -> tuple[str, str, bytes, bytes]:
    cl = TLSClient(port, ca)
    first, second = _register(cl)  # type: ignore[arg-type]
    cl.send("\r\n\r\n")
    pong = cl.recv_raw(2)
    cl.send("INVITE garbage\r\n\r\n" + "x" * 10)
    data = b"x"
    try:
        while data:
            data = cl.recv_raw()  # anything the edge still sends, then EOF
    except (ConnectionError, OSError):
        data = b""
    return first, second, pong, data


@pytest_twisted.inlineCallbacks
def test_sip_over_tls_registers_and_answers_keepalives(edge: Edge) -> Any:
    """The mobile app's SIP over TLS: REGISTER through the edge, CRLFCRLF gets CRLF, stream garbage closes."""
    pbx = edge.sipp("pbx_register.xml")
    first, second, pong, _eof = yield threads.deferToThread(_tls_session, edge.sip_tls, edge.ca)
    assert status(first) == 401 and status(second) == 200
    assert pong == b"\r\n"
    assert (yield threads.deferToThread(pbx.result)) == 0
    counts = edge.service.sip.counters
    assert counts.get(("flows_opened", "rossi", "tls")) == 1
    assert _eof == b""
    yield sleep(0.1)
    assert counts.get(("sip_stream_garbage", "rossi", "framing")) == 1
    assert counts.get(("flows_closed", "rossi", "tls")) == 1
