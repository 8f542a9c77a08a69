"""The HTTPS reverse proxy against real backends (twisted.web + autobahn servers on loopback).

Clients are blocking sockets in threads speaking exact bytes (tests/helpers/https.py), so hostile
requests (smuggling, oversize heads, Host/SNI games) are sent as written.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from helpers.edge import InProcessEdge, StopAfter, edge_toml, sleep, tenant_toml
from helpers.https import Conn
from helpers.ports import free_tcp_port
from helpers.wsclient import HandshakeRefused, WSClient
from twisted.internet import defer, threads
from twisted.web import server
from twisted.web.resource import Resource

pytestmark = pytest.mark.e2e


# -- the backends ---------------------------------------------------------------------------------


class _BackendRequest(server.Request):
    def handleContentChunk(self, data: bytes) -> None:
        self.channel.site.backend.bytes_in += len(data)  # type: ignore[attr-defined]
        super().handleContentChunk(data)


class _Echo(WebSocketServerProtocol):  # type: ignore[misc]
    def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N803
        self.sendMessage(b"echo:" + payload, isBinary)


class _Root(Resource):
    def __init__(self, backend: Backend) -> None:
        super().__init__()
        self.backend = backend
        factory = WebSocketServerFactory()
        factory.protocol = _Echo
        factory.setProtocolOptions(webStatus=False)
        self.chat = WebSocketResource(factory)

    def getChild(self, path: bytes, request: Any) -> Any:
        if path == b"chat":
            self.backend.hits.append((request.method, request.uri, request.requestHeaders))
            return self.chat
        return self

    def render(self, request: Any) -> Any:
        b = self.backend
        b.hits.append((request.method, request.uri, request.requestHeaders))
        path = request.path
        if path == b"/slow":
            b.slow.append(request)
            return server.NOT_DONE_YET
        if path == b"/stream":
            n = int(request.args.get(b"n", [b"1000000"])[0])
            hold = request.args.get(b"hold") == [b"1"]
            request.setHeader(b"content-type", b"application/octet-stream")
            request.setHeader(b"x-backend", b"yes")
            chunk = os.urandom(65536)
            sent = 0
            digest = hashlib.sha256()

            def send(upto: int) -> None:
                nonlocal sent
                while sent < upto:
                    part = chunk[: min(len(chunk), upto - sent)]
                    digest.update(part)
                    request.write(part)
                    sent += len(part)

            def rest(_: Any = None) -> None:
                send(n)
                b.stream_sha = digest.hexdigest()
                request.finish()

            if hold:
                send(65536)
                b.release = defer.Deferred()
                b.release.addCallback(rest)
            else:
                rest()
            return server.NOT_DONE_YET
        body = request.content.read()
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"connection", b"x-secret-hop")
        request.setHeader(b"x-secret-hop", b"must-not-pass")
        request.setHeader(b"keep-alive", b"timeout=5")
        return json.dumps(
            {
                "method": request.method.decode(),
                "uri": request.uri.decode(),
                "headers": [
                    [k.decode(), v.decode()]
                    for k, vs in request.requestHeaders.getAllRawHeaders()
                    for v in vs
                ],
                "length": len(body),
                "sha256": hashlib.sha256(body).hexdigest(),
                "backend": b.name,
            }
        ).encode()


class Backend:
    def __init__(self, reactor: Any, name: str) -> None:
        self.name = name
        self.hits: list[Any] = []
        self.slow: list[Any] = []
        self.bytes_in = 0
        self.release: defer.Deferred[Any] | None = None
        self.stream_sha = ""
        site = server.Site(_Root(self))
        site.requestFactory = _BackendRequest
        site.backend = self  # type: ignore[attr-defined]
        self.port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port.getHost().port}"

    def stop(self) -> Any:
        for r in self.slow:
            if not r.finished and not r._disconnected:
                r.finish()
        return self.port.stopListening()


class ProxyEdge(InProcessEdge):
    def __init__(self, tmp: Path) -> None:
        from twisted.internet import reactor

        super().__init__(tmp)
        self.a = Backend(reactor, "a")
        self.b = Backend(reactor, "b")
        dead = free_tcp_port()  # nothing listens there
        tenants = (
            tenant_toml("rossi", 5999, keys=f'backend_http = "{self.a.url}"\n')
            + tenant_toml("bianchi", 5998, keys=f'backend_http = "{self.b.url}"\n')
            + tenant_toml("verdi", 5997)
            + tenant_toml("morti", 5996, keys=f'backend_http = "http://127.0.0.1:{dead}"\n')
        )
        proxy = "[proxy]\nread_timeout = 1.0\nconnect_timeout = 2.0\n"
        self.start(edge_toml(self.state, tenants, sections=proxy))
        self.port = self.https

    def conn(self, sni: str = "rossi.example.com") -> Conn:
        return Conn(self.port, sni, cafile=self.ca)

    def get(self, sni: str, target: str = "/", host: str | None = None, **kw: Any) -> Any:
        conn = self.conn(sni)
        try:
            return conn.request(kw.pop("method", "GET"), target, host or sni, **kw)
        finally:
            conn.close()

    @defer.inlineCallbacks
    def stop(self) -> Any:
        yield super().stop()
        yield self.a.stop()
        yield self.b.stop()


@pytest.fixture
def edge(tmp_path: Path, stop_after: StopAfter) -> Any:
    return stop_after(ProxyEdge(tmp_path))


def in_thread(fn: Any, *args: Any, **kw: Any) -> Any:
    return threads.deferToThread(fn, *args, **kw)


def proxy_timers(edge: ProxyEdge) -> list[Any]:
    """Pending timers owned by the proxy (exchanges, tunnels) among the service's timers."""
    out = []
    for call in list(edge.service.timers._calls):
        for cell in call.func.__closure__ or ():
            owner = getattr(cell.cell_contents, "__self__", None)
            if owner is not None and type(owner).__module__ == "mcs_edge.tx.web.proxy":
                out.append(call)
    return out


# -- tests ------------------------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_get_reaches_own_backend_with_forwarding_headers(edge: ProxyEdge) -> Any:
    """A GET is proxied to the tenant's backend: original Host, X-Forwarded-* set, hop-by-hop gone."""
    resp = yield in_thread(
        edge.get,
        "rossi.example.com",
        "/echo?q=1",
        headers=[
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Forwarded-Host", "evil.example"),
            ("Forwarded", "for=6.6.6.6"),
            ("Connection", "keep-alive, X-Drop-Me"),
            ("X-Drop-Me", "1"),
            ("Keep-Alive", "timeout=1"),
            ("TE", "trailers"),
            ("X-Kept", "yes"),
        ],
    )
    assert resp.status == 200
    got = json.loads(resp.body)
    headers = {k.lower(): v for k, v in got["headers"]}
    assert got["backend"] == "a" and got["uri"] == "/echo?q=1"
    assert headers["host"] == "rossi.example.com"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "https"
    assert headers["x-forwarded-host"] == "rossi.example.com"
    assert headers["x-kept"] == "yes"
    for gone in ("forwarded", "x-drop-me", "keep-alive", "te"):
        assert gone not in headers
    assert [v for k, v in got["headers"] if k.lower() == "x-forwarded-for"] == ["127.0.0.1"]
    # response side: hop-by-hop headers stripped (Twisted's client keeps Connection to itself, so
    # response headers a backend nominates in Connection are not known to the proxy: documented)
    assert resp.header("keep-alive") is None and resp.header("connection") is None
    assert resp.header("content-type") == "application/json"


@pytest_twisted.inlineCallbacks
def test_post_large_body_is_streamed_to_backend(edge: ProxyEdge) -> Any:
    """An 8 MiB chunked upload reaches the backend while the client is still sending it."""
    part = os.urandom(1 << 20)
    conn = yield in_thread(edge.conn)
    head = b"POST /echo HTTP/1.1\r\nHost: rossi.example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
    first = head + b"%x\r\n" % len(part) + part + b"\r\n"
    yield in_thread(conn.send, first)
    deadline = time.monotonic() + 10
    while edge.a.bytes_in < len(part):  # the backend has the first MiB before the rest is sent
        assert time.monotonic() < deadline, "upload was not streamed"
        yield sleep(0.02)
    rest = b"".join(b"%x\r\n" % len(part) + part + b"\r\n" for _ in range(7)) + b"0\r\n\r\n"
    yield in_thread(conn.send, rest)
    resp = yield in_thread(conn.response)
    conn.close()
    got = json.loads(resp.body)
    assert resp.status == 200 and got["length"] == 8 << 20
    assert got["sha256"] == hashlib.sha256(part * 8).hexdigest()


@pytest_twisted.inlineCallbacks
def test_post_with_content_length_and_keepalive(edge: ProxyEdge) -> Any:
    """Content-Length bodies are forwarded exactly; the client connection is reused for a second request."""
    body = os.urandom(300_000)
    conn = yield in_thread(edge.conn)
    r1 = yield in_thread(conn.request, "POST", "/echo", "rossi.example.com", None, body)
    r2 = yield in_thread(conn.request, "PUT", "/echo", "rossi.example.com", None, b"")
    conn.close()
    assert json.loads(r1.body)["sha256"] == hashlib.sha256(body).hexdigest()
    assert json.loads(r2.body)["method"] == "PUT" and json.loads(r2.body)["length"] == 0


@pytest_twisted.inlineCallbacks
def test_large_response_is_streamed_to_client(edge: ProxyEdge) -> Any:
    """The client reads the start of a response the backend has not finished; then all 16 MiB arrive intact."""
    n = 16 << 20
    conn = yield in_thread(edge.conn)
    yield in_thread(conn.send, b"GET /stream?n=%d&hold=1 HTTP/1.1\r\nHost: rossi.example.com\r\n\r\n" % n)
    head = yield in_thread(conn.read_until, b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"x-backend: yes" in head.lower()
    assert b"transfer-encoding: chunked" in head.lower()
    first = yield in_thread(conn.read_exact, 1000)  # bytes of a response still held by the backend
    assert first and edge.a.release is not None and not edge.a.stream_sha
    edge.a.release.callback(None)
    conn.buf = head + b"\r\n\r\n" + first + conn.buf  # parse the whole response from its start
    resp = yield in_thread(conn.response)
    conn.close()
    assert len(resp.body) == n
    assert hashlib.sha256(resp.body).hexdigest() == edge.a.stream_sha


@pytest_twisted.inlineCallbacks
def test_websocket_echo_through_proxy_and_sip_still_goes_to_sip_edge(edge: ProxyEdge) -> Any:
    """A non-SIP WebSocket (widget chat) is passed to the backend and echoes; 'sip' is not passed."""

    def chat() -> tuple[str, str]:
        ws = WSClient(edge.port, "rossi.example.com", subprotocol=None, cafile=edge.ca, path="/chat")
        ws.send("hello")
        one = ws.recv()
        ws.send("x" * 70000)
        two = ws.recv()
        ws.close()
        return one, two

    one, two = yield in_thread(chat)
    yield sleep(0.1)
    assert proxy_timers(edge) == []  # tunnel closed: its timer released
    assert one == "echo:hello" and two == "echo:" + "x" * 70000
    hit = next(h for h in edge.a.hits if h[1] == b"/chat")
    assert hit[2].getRawHeaders(b"x-forwarded-for") == [b"127.0.0.1"]
    hits_before = len(edge.a.hits)

    def sip() -> str:
        ws = WSClient(edge.port, "rossi.example.com", subprotocol="sip", cafile=edge.ca, path="/chat")
        proto = ws.protocol
        ws.close()
        return str(proto)

    assert (yield in_thread(sip)) == "sip"
    assert len(edge.a.hits) == hits_before  # the SIP edge answered, not the backend


@pytest_twisted.inlineCallbacks
def test_host_sni_mismatch_is_421_and_other_tenant_backend_never_hit(edge: ProxyEdge) -> Any:
    """SNI rossi with Host bianchi gets 421; bianchi's backend sees nothing, whatever the target says."""
    resp = yield in_thread(edge.get, "rossi.example.com", "/echo", host="bianchi.example.com")
    assert resp.status == 421
    resp = yield in_thread(
        edge.get, "rossi.example.com", "http://bianchi.example.com/echo", host="rossi.example.com"
    )
    assert resp.status == 400
    resp = yield in_thread(
        edge.get,
        "rossi.example.com",
        "/echo",
        host="rossi.example.com",
        headers=[("Host", "bianchi.example.com")],
    )
    assert resp.status == 400  # two Host headers
    assert edge.b.hits == []
    own = yield in_thread(edge.get, "bianchi.example.com", "/echo")
    assert json.loads(own.body)["backend"] == "b" and len(edge.b.hits) == 1


@pytest_twisted.inlineCallbacks
def test_tenant_without_backend_keeps_landing_page(edge: ProxyEdge) -> Any:
    """verdi has no backend_http: the edge's own page answers, and a body is capped."""
    resp = yield in_thread(edge.get, "verdi.example.com", "/")
    assert resp.status == 200 and b"verdi.example.com" in resp.body
    resp = yield in_thread(edge.get, "verdi.example.com", "/", method="POST", body=b"x" * 100_000)
    assert resp.status == 413


@pytest.mark.parametrize(
    "head",
    [
        b"POST /echo HTTP/1.1\r\nHost: rossi.example.com\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: rossi.example.com\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: rossi.example.com\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST /echo HTTP/1.1\r\nHost: rossi.example.com\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: rossi.example.com\r\nContent-Length: +5\r\n\r\nhello",
        b"POST /echo HTTP/1.1\r\nHost: rossi.example.com\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost: rossi.example.com\r\nX-Bad: a\x00b\r\n\r\n",
    ],
    ids=["cl-te", "te-cl", "cl-cl", "te-gzip", "cl-sign", "bad-chunk", "nul-header"],
)
@pytest_twisted.inlineCallbacks
def test_smuggling_attempts_are_refused_and_never_reach_backend(edge: ProxyEdge, head: bytes) -> Any:
    """Conflicting or malformed framing is answered 400 and the connection closed; the backend sees no request."""

    def send() -> bytes:
        conn = edge.conn()
        conn.send(head + b"GET /echo HTTP/1.1\r\nHost: rossi.example.com\r\n\r\n")
        data = conn.read_all()
        conn.close()
        return data

    data = yield in_thread(send)
    assert data.startswith(b"HTTP/1.1 400"), data[:100]
    assert data.count(b"HTTP/1.1 ") == 1  # the smuggled second request was not answered
    yield sleep(0.1)
    assert edge.a.hits == []


_H = b"Host: {host}\r\n"
_FRAMING = {
    # several or obfuscated Transfer-Encoding fields
    "te-chunked-then-identity": b"POST /echo HTTP/1.1\r\n"
    + _H
    + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "te-identity-then-chunked": b"POST /echo HTTP/1.1\r\n"
    + _H
    + b"Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-chunked-twice": b"POST /echo HTTP/1.1\r\n"
    + _H
    + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-list-chunked-identity": b"POST /echo HTTP/1.1\r\n"
    + _H
    + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "te-space-before-colon": b"POST /echo HTTP/1.1\r\n"
    + _H
    + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "te-xchunked": b"POST /echo HTTP/1.1\r\n" + _H + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "te-vertical-tab": b"POST /echo HTTP/1.1\r\n" + _H + b"Transfer-Encoding: chunked\x0b\r\n\r\n0\r\n\r\n",
    "te-identity-with-cl": b"POST /echo HTTP/1.1\r\n"
    + _H
    + b"Transfer-Encoding: identity\r\nContent-Length: 5\r\n\r\nhello",
    "te-in-http10": b"POST /echo HTTP/1.0\r\n" + _H + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    # several or malformed Content-Length fields, TE plus CL
    "cl-twice-same": b"POST /echo HTTP/1.1\r\n" + _H + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "cl-list": b"POST /echo HTTP/1.1\r\n" + _H + b"Content-Length: 5, 5\r\n\r\nhello",
    "cl-negative": b"POST /echo HTTP/1.1\r\n" + _H + b"Content-Length: -5\r\n\r\nhello",
    "cl-then-te": b"POST /echo HTTP/1.1\r\n"
    + _H
    + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-then-cl": b"POST /echo HTTP/1.1\r\n"
    + _H
    + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    # Host
    "host-twice": b"GET /echo HTTP/1.1\r\n" + _H + b"Host: bianchi.example.com\r\n\r\n",
    "host-missing": b"GET /echo HTTP/1.1\r\nX-A: b\r\n\r\n",
    "host-list": b"GET /echo HTTP/1.1\r\nHost: {host}, bianchi.example.com\r\n\r\n",
    # obs-fold, whitespace before the first field, bare LF / CR
    "obs-fold": b"GET /echo HTTP/1.1\r\n" + _H + b"X-A: b\r\n c\r\n\r\n",
    "obs-fold-te": b"POST /echo HTTP/1.1\r\n" + _H + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    "space-before-first-field": b"GET /echo HTTP/1.1\r\n " + _H + b"\r\n",
    "bare-lf-in-head": b"POST /echo HTTP/1.1\r\n"
    + _H
    + b"X-A: b\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "bare-cr-in-head": b"POST /echo HTTP/1.1\r\n" + _H + b"X-A: b\rContent-Length: 5\r\n\r\nhello",
    # bad chunk sizes and chunk framing
    "chunk-0x": b"POST /echo HTTP/1.1\r\n"
    + _H
    + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
    "chunk-plus": b"POST /echo HTTP/1.1\r\n"
    + _H
    + b"Transfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n",
    "chunk-negative": b"POST /echo HTTP/1.1\r\n"
    + _H
    + b"Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
    "chunk-trailing-space": b"POST /echo HTTP/1.1\r\n"
    + _H
    + b"Transfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n",
    "chunk-bare-lf": b"POST /echo HTTP/1.1\r\n"
    + _H
    + b"Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
    "chunk-too-long": b"POST /echo HTTP/1.1\r\n"
    + _H
    + b"Transfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("sni", ["rossi.example.com", "verdi.example.com"], ids=["proxied", "front"])
@pytest.mark.parametrize("head", list(_FRAMING.values()), ids=list(_FRAMING))
@pytest_twisted.inlineCallbacks
def test_framing_ambiguity_gets_one_400_and_a_close(edge: ProxyEdge, head: bytes, sni: str) -> Any:
    """Every framing ambiguity, toward backend_http (rossi) or on the front alone (verdi): exactly one
    400 with Connection: close, the connection closed, the request after it never answered, and the
    backend never sees a request."""
    smuggled = b"GET /echo?smuggled HTTP/1.1\r\nHost: %s\r\n\r\n" % sni.encode()

    def send() -> bytes:
        conn = edge.conn(sni)
        conn.send(head.replace(b"{host}", sni.encode()) + smuggled)
        data = conn.read_all()  # returns once the edge has closed the connection
        conn.close()
        return data

    data = yield in_thread(send)
    assert data.startswith(b"HTTP/1.1 400"), data[:200]
    assert data.count(b"HTTP/1.") == 1, data  # never a second response
    assert b"connection: close" in data.lower()
    yield sleep(0.1)
    assert edge.a.hits == [] and edge.b.hits == []
    assert (
        sum(n for (t, kind), n in edge.service.http_proxy.counters.items() if kind.startswith("framing_"))
        + sum(
            n for (t, kind), n in edge.service.http_proxy.counters.items() if kind == "several_host_headers"
        )
        >= 1
    )


@pytest_twisted.inlineCallbacks
def test_valid_chunked_and_keepalive_still_work_after_strict_framing(edge: ProxyEdge) -> Any:
    """A clean chunked POST then a GET on the same connection: two 200s, the body reaches the backend whole."""

    def send() -> tuple[Any, Any]:
        conn = edge.conn()
        try:
            conn.send(
                b"POST /echo HTTP/1.1\r\nHost: rossi.example.com\r\nTransfer-Encoding: Chunked\r\n\r\n"
                b"5;ext=1\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n"
            )
            first = conn.response()
            second = conn.request("GET", "/echo", "rossi.example.com")
            return first, second
        finally:
            conn.close()

    first, second = yield in_thread(send)
    assert first.status == 200 and json.loads(first.body)["length"] == 5
    assert second.status == 200


@pytest_twisted.inlineCallbacks
def test_oversize_url_and_headers_are_refused(edge: ProxyEdge) -> Any:
    """A 9000-byte target gets 414, 13 KB of headers 431, a 20 KB header line 400; none reaches the backend."""
    resp = yield in_thread(edge.get, "rossi.example.com", "/echo?" + "a" * 9000)
    assert resp.status == 414
    many = [(f"X-Pad-{i}", "v" * 100) for i in range(130)]
    resp = yield in_thread(edge.get, "rossi.example.com", "/echo", headers=many)
    assert resp.status == 431

    def huge() -> bytes:
        conn = edge.conn()
        conn.send(b"GET /echo HTTP/1.1\r\nHost: rossi.example.com\r\nX-Huge: " + b"v" * 20000 + b"\r\n\r\n")
        try:
            return conn.read_all()
        except OSError:
            return b""
        finally:
            conn.close()

    data = yield in_thread(huge)
    assert data == b"" or data.startswith(b"HTTP/1.1 4")
    assert edge.a.hits == []


@pytest_twisted.inlineCallbacks
def test_dead_backend_is_502_quickly_without_details(edge: ProxyEdge) -> Any:
    """Nothing listens at morti's backend: 502 in well under a second, no address or error text leaked."""
    resp = yield in_thread(edge.get, "morti.example.com", "/anything")
    assert resp.status == 502 and resp.elapsed < 1.0
    assert resp.body == b"502 Bad Gateway\n"
    assert b"127.0.0.1" not in resp.raw_head + resp.body and b"refused" not in resp.body.lower()


@pytest_twisted.inlineCallbacks
def test_slow_backend_is_504_after_read_timeout(edge: ProxyEdge) -> Any:
    """A backend that never answers gets the client a 504 after proxy.read_timeout (1 s here)."""
    resp = yield in_thread(edge.get, "rossi.example.com", "/slow")
    assert proxy_timers(edge) == []  # the exchange's timer is gone with it
    assert resp.status == 504 and 0.9 <= resp.elapsed < 3.0
    assert resp.body == b"504 Gateway Timeout\n"
    counters = edge.service.http_proxy.counters
    assert counters[("rossi", "backend_read_timeout")] == 1
    assert counters[("morti", "backend_unavailable")] == 0


@pytest_twisted.inlineCallbacks
def test_websocket_to_dead_backend_is_502(edge: ProxyEdge) -> Any:
    """A chat upgrade for a tenant whose backend is down is refused with 502, not hung."""

    def chat() -> int:
        try:
            WSClient(edge.port, "morti.example.com", subprotocol=None, cafile=edge.ca, path="/chat")
        except HandshakeRefused as exc:
            return exc.status
        return 101

    assert (yield in_thread(chat)) == 502
