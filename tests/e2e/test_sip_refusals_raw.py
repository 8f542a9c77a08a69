"""Requests the edge will not forward get a final answer on every transport, over raw sockets.

RFC 4475 messages (tests/data/sip/rfc4475) sent from a PBX over UDP to ``listen.backend_sip``, and
from clients over WSS and over TLS (``listen.sip_tls``): a large valid request is read whole (s.3.1.1.7),
an unsupported Request-URI scheme gets 416 (s.3.3.2, s.3.3.3), a request that cannot be framed on a
stream gets 400 before the connection closes; every refusal is counted by status.
"""

from __future__ import annotations

import socket
import ssl
import uuid
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from helpers.edge import InProcessEdge, StopAfter, edge_toml, tenant_toml
from helpers.pbx import Pbx
from helpers.wsclient import WSClient, headers
from twisted.internet import threads

RFC4475 = Path(__file__).resolve().parent.parent / "data" / "sip" / "rfc4475"


class Edge(InProcessEdge):
    """An in-process edge with WSS, SIP over TLS and the backend UDP port on ephemeral ports."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.pbx = Pbx()
        self.closers.append(self.pbx.close)
        tenant = tenant_toml(
            "rossi", self.pbx.port, domains=("rossi.example.com", "example.com", "example.net")
        )
        self.start(edge_toml(self.state, tenant, sip_tls="127.0.0.1:0"))
        self.sip_tls = self.port("sip_tls")

    def counter(self, name: str) -> int:
        return int(self.service.sip.core.counters.get(name, 0))


@pytest.fixture
def edge(tmp_path: Path, stop_after: StopAfter) -> Any:
    return stop_after(Edge(tmp_path))


def _udp_exchange(port: int, data: bytes, want: int = 1, timeout: float = 5.0) -> list[bytes]:
    """Send one datagram from 127.0.0.1 (the tenant's PBX address) and collect ``want`` final answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(timeout)
    try:
        sock.sendto(data, ("127.0.0.1", port))
        finals: list[bytes] = []
        while len(finals) < want:
            reply, _ = sock.recvfrom(65535)
            if not reply.startswith(b"SIP/2.0 1"):
                finals.append(reply)
        return finals
    finally:
        sock.close()


def _tls_exchange(edge: Edge, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` on a SIP-over-TLS connection; return everything read until the first final answer or EOF."""
    ctx = ssl.create_default_context(cafile=edge.ca)
    raw = socket.create_connection(("127.0.0.1", edge.sip_tls), timeout=timeout)
    with ctx.wrap_socket(raw, server_hostname="rossi.example.com") as sock:
        sock.sendall(data)
        got = b""
        while b"\r\n\r\n" not in got or got.startswith(b"SIP/2.0 1"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
            if got.startswith(b"SIP/2.0 1") and b"\r\n\r\n" in got:
                got = got.split(b"\r\n\r\n", 1)[1]
        return got


def _wss_exchange(edge: Edge, data: bytes) -> str:
    ws = WSClient(edge.https, "rossi.example.com", cafile=edge.ca)
    try:
        ws.send(data)
        return ws.recv_sip(skip_provisional=True)
    finally:
        ws.close()


def _big_request(vias: int = 25, size: int = 12_000) -> bytes:
    """A valid request of about ``size`` bytes with ``vias`` Via header fields (RFC 4475 s.3.1.1.7 style)."""
    branch = uuid.uuid4().hex
    pad = "p" * 300
    via = [
        f"Via: SIP/2.0/UDP 127.0.0.1:{5000 + i};branch=z9hG4bK{branch}{i};x-pad={pad}" for i in range(vias)
    ]
    head = [
        "OPTIONS sip:nobody@rossi.example.com SIP/2.0",
        *via,
        "Max-Forwards: 70",
        "From: <sip:pbx@rossi.example.com>;tag=98asjd8",
        "To: <sip:nobody@rossi.example.com>",
        f"Call-ID: {branch}",
        "CSeq: 8 OPTIONS",
    ]
    filler = (size - len("\r\n".join(head)) - 100) // 4
    head += [f"X-Long-Value-{i}: {'x' * filler}" for i in range(4)] + ["Content-Length: 0"]
    return ("\r\n".join(head) + "\r\n\r\n").encode()


@pytest_twisted.inlineCallbacks
def test_a_12kb_request_with_25_vias_on_the_backend_udp_port_is_read_whole(edge: Edge) -> Any:
    """RFC 4475 s.3.1.1.7: a 12 KB datagram is parsed whole; the answer (404: no such flow) carries all 25 Vias."""
    request = _big_request()
    assert len(request) > 11_500
    (reply,) = yield threads.deferToThread(_udp_exchange, edge.backend, request)
    text = reply.decode()
    assert text.startswith("SIP/2.0 404 "), text[:200]
    assert len(headers(text, "Via")) == 25
    assert edge.counter("sip_bad_from_backend") == 0


@pytest.mark.parametrize("name", ["unkscm", "novelsc"])
@pytest_twisted.inlineCallbacks
def test_unsupported_request_uri_scheme_gets_416_on_udp_from_the_pbx(edge: Edge, name: str) -> Any:
    """RFC 4475 s.3.3.2/3.3.3 on the backend UDP port: 416, counted, never silently dropped."""
    (reply,) = yield threads.deferToThread(
        _udp_exchange, edge.backend, (RFC4475 / f"{name}.sip").read_bytes()
    )
    assert reply.startswith(b"SIP/2.0 416 "), reply[:100]
    assert edge.counter("sip_refused_416") == 1


@pytest.mark.parametrize("name", ["unkscm", "novelsc"])
@pytest_twisted.inlineCallbacks
def test_unsupported_request_uri_scheme_gets_416_over_wss_and_tls(edge: Edge, name: str) -> Any:
    """The same requests from clients, over a WebSocket and over SIP/TLS: 416 on both."""
    data = (RFC4475 / f"{name}.sip").read_bytes()
    over_wss = yield threads.deferToThread(_wss_exchange, edge, data)
    over_tls = yield threads.deferToThread(_tls_exchange, edge, data)
    assert over_wss.startswith("SIP/2.0 416 "), over_wss[:100]
    assert over_tls.startswith(b"SIP/2.0 416 "), over_tls[:100]
    assert edge.counter("sip_refused_416") == 2


@pytest.mark.parametrize("name", ["mcl01", "badvers", "ltgtruri"])
@pytest_twisted.inlineCallbacks
def test_broken_requests_from_the_pbx_get_a_final_error(edge: Edge, name: str) -> Any:
    """Requests that cannot be parsed (RFC 4475 s.3.1.2) get their 4xx/5xx on the backend UDP port too."""
    (reply,) = yield threads.deferToThread(
        _udp_exchange, edge.backend, (RFC4475 / f"{name}.sip").read_bytes()
    )
    assert reply[8:9] in (b"4", b"5"), reply[:100]


@pytest_twisted.inlineCallbacks
def test_unframeable_request_on_tls_gets_400_before_the_close(edge: Edge) -> Any:
    """SIP over TLS: conflicting Content-Length values cannot be framed; the request is answered 400, then closed."""
    data = (RFC4475 / "mcl01.sip").read_bytes()
    got = yield threads.deferToThread(_tls_exchange, edge, data)
    assert got.startswith(b"SIP/2.0 400 "), got[:100]
    assert edge.counter("sip_refused_400") == 1


@pytest_twisted.inlineCallbacks
def test_ack_is_never_answered(edge: Edge) -> Any:
    """An unparseable ACK gets no answer (RFC 3261 s.17.2.3): nothing comes back on UDP."""
    data = (RFC4475 / "unkscm.sip").read_bytes().replace(b"OPTIONS", b"ACK")
    with pytest.raises(socket.timeout):
        yield threads.deferToThread(_udp_exchange, edge.backend, data, 1, 1.0)
