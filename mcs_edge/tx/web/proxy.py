"""HTTPS reverse proxy: requests on ``listen.https`` for a tenant with ``backend_http`` go to it.

Theory of operation
-------------------
The HTTPS site uses :class:`FrontRequest` (built by :meth:`HttpProxy.request_factory`). Twisted's
HTTP channel has parsed the request line and headers when it calls ``gotLength``, before any body
byte: that is where the request is checked and routed, so a proxied body is *streamed* to the
backend as it arrives instead of being spooled by twisted.web.

In ``gotLength``:

1. Limits for every request on the port: request target longer than ``proxy.max_url_length`` ->
   414, request line + headers over ``proxy.max_header_bytes`` -> 431 (Twisted's own parser answers
   400 beyond 16 KiB; every framing ambiguity -- several or obfuscated ``Transfer-Encoding`` or
   ``Content-Length`` fields, both together, obs-fold, bare CR/LF, several Hosts, bad chunking -- is
   refused with one 400 and a close by :class:`~mcs_edge.tx.web.framing.StrictHTTPChannel` before
   a request exists: smuggling attempts never reach a backend).
2. Routing: the tenant is the one Host *and* SNI agree on (:func:`~mcs_edge.tx.web.binding.bound_tenant`;
   otherwise the request goes to :class:`~mcs_edge.tx.web.front.FrontResource`, which answers 421/404).
   A tenant with ``backend_http`` gets everything except ``/.well-known/mcs-edge/...`` (served by
   the edge) and WebSocket upgrades (``FrontResource`` sends subprotocol ``sip`` to the SIP edge and
   passes every other upgrade through with :func:`pass_websocket`). Only that tenant's backend is
   ever contacted for the request: there is no fallback.
3. Anything not proxied keeps a small body cap (``proxy.max_local_body``, else 413): the edge's own
   pages need no body and nothing is spooled to disk for them.

A proxied request becomes an :class:`_Exchange`: the request head is rewritten (hop-by-hop headers
and those named in ``Connection`` dropped; ``Forwarded``/``X-Forwarded-*``/``X-Real-IP`` from the
client dropped and ``X-Forwarded-For``/``-Proto``/``-Host`` set from what the edge saw; the original
Host kept) and sent with Twisted's ``Agent`` over a persistent connection pool. The body flows
through :class:`_BodyPipe` (an ``IBodyProducer``) with back-pressure: when the backend stops reading,
the client's socket stops being read. The response streams back through :class:`_ResponseRelay`,
registered as a push producer on the client's TLS transport, so a slow client pauses the backend.

Errors are answered before the response starts, with a fixed text and no backend detail: refused
connection or DNS failure -> 502 (quickly), connect timeout (``proxy.connect_timeout``) or no
response within ``proxy.read_timeout`` after the request -> 504. After the response has started, a
failure (backend silent for ``read_timeout``, connection lost) aborts the client connection, so
a truncated body is never mistaken for a complete one. Errors are counted per tenant and logged
at most once per ``LOG_INTERVAL`` per tenant and kind.
"""

from __future__ import annotations

import io
import re
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from twisted.internet import defer, error
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from mcs_edge.core.tenants.table import normalise_host
from mcs_edge.tx.ops.logs import RateLimitedLog
from mcs_edge.tx.web.binding import bound_tenant
from mcs_edge.tx.web.framing import request_line

if TYPE_CHECKING:
    from mcs_edge.config import TenantConfig
    from mcs_edge.tx.seams import LiveConfig
    from mcs_edge.tx.timers import Timers

__all__ = ["FrontRequest", "HttpProxy", "forward_headers", "pass_websocket", "response_headers"]

LOG_INTERVAL = 10.0
EDGE_PREFIX = b"/.well-known/mcs-edge/"
HIGH_WATER = 256 * 1024  # request body bytes buffered before the client is paused

# RFC 9110 s.7.6.1 (+ the legacy ones every proxy drops)
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
CLIENT_FORWARDING = frozenset(
    {
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"x-real-ip",
    }
)
# applied with fullmatch (``$`` would also accept a trailing newline)
_TOKEN_RE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 s.5.6.2 token (methods)
_TARGET_RE = re.compile(rb"/[\x21-\x7e]*")  # origin-form, visible ASCII only
_NO_BODY = (204, 304)


def _connection_tokens(headers: Headers) -> set[bytes]:
    tokens: set[bytes] = set()
    for value in headers.getRawHeaders(b"connection", []):
        for tok in value.split(b","):
            tok = tok.strip().lower()
            if tok:
                tokens.add(tok)
    return tokens


def forward_headers(incoming: Headers, client_ip: str, host: bytes, upgrade: bool = False) -> Headers:
    """The headers sent to the backend for a client request (see the module docstring)."""
    drop = _connection_tokens(incoming)
    out = Headers()
    for name, values in incoming.getAllRawHeaders():
        lname = name.lower()
        if (
            lname in HOP_BY_HOP
            or lname in drop
            or lname in CLIENT_FORWARDING
            or lname in (b"content-length", b"expect", b"host")
        ):
            continue
        out.setRawHeaders(name, list(values))
    out.setRawHeaders(b"Host", [host])
    out.setRawHeaders(b"X-Forwarded-For", [client_ip.encode("ascii", "replace")])
    out.setRawHeaders(b"X-Forwarded-Proto", [b"https"])
    out.setRawHeaders(b"X-Forwarded-Host", [host])
    if upgrade:
        out.setRawHeaders(b"Connection", [b"Upgrade"])
        out.setRawHeaders(b"Upgrade", [b"websocket"])
    return out


def response_headers(incoming: Headers) -> list[tuple[bytes, list[bytes]]]:
    """The backend response headers passed to the client (hop-by-hop and lengths removed)."""
    drop = _connection_tokens(incoming)
    out = []
    for name, values in incoming.getAllRawHeaders():
        lname = name.lower()
        if lname in HOP_BY_HOP or lname in drop or lname == b"content-length":
            continue
        out.append((name, list(values)))
    return out


def _client_reader(channel: Any) -> Any:
    """The push producer that controls reading from the client (TCP under the TLS wrapper)."""
    return _client_reader_of(getattr(channel, "transport", None))


class _Refusals:
    """Counters plus at-most-one-log-line per (tenant, kind) per interval."""

    log = Logger()

    def __init__(self, now: Callable[[], float]) -> None:
        self.counters: Counter[tuple[str, str]] = Counter()
        self._logs = RateLimitedLog(self.log, burst=1, window=LOG_INTERVAL, now=now)

    def note(self, tenant: str, kind: str, detail: str = "") -> None:
        key = (tenant, kind)
        self.counters[key] += 1
        if self._logs.allow(f"WEB420 {tenant} {kind}"):
            self.log.info(
                "WEB420 {tenant} proxy {kind}{detail} ({count} so far)",
                tenant=tenant,
                kind=kind,
                detail=f": {detail}" if detail else "",
                count=self.counters[key],
            )


class HttpProxy:
    """The reverse proxy of one service: connection pool, agent, counters."""

    def __init__(self, reactor: Any, timers: Timers, live: LiveConfig) -> None:
        """``live``: the current configuration and tenant table (``proxy.*`` keys are read at
        each use, so reloads apply)."""
        self.reactor = reactor
        self.timers = timers
        self.live = live
        self.pool = HTTPConnectionPool(self.reactor, persistent=True)
        self.pool.maxPersistentPerHost = 32
        self.pool.cachedConnectionTimeout = 30
        # Twisted retries only idempotent, body-less requests on a pooled connection the backend
        # had closed; anything else is never sent twice.
        self.pool.retryAutomatically = True
        self.refusals = _Refusals(timers.now)
        self._agent: Agent | None = None
        self._agent_timeout: float | None = None

    @property
    def counters(self) -> Counter[tuple[str, str]]:
        return self.refusals.counters

    def agent(self) -> Agent:
        timeout = self.live.config.proxy.connect_timeout
        if self._agent is None or self._agent_timeout != timeout:
            self._agent = Agent(self.reactor, connectTimeout=timeout, pool=self.pool)
            self._agent_timeout = timeout
        return self._agent

    def request_factory(self) -> type[FrontRequest]:
        """The ``requestFactory`` for the HTTPS site."""
        return type("FrontRequest", (FrontRequest,), {"proxy": self})

    def close(self) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = self.pool.closeCachedConnections()
        return d

    def route(self, request: FrontRequest, target: bytes) -> TenantConfig | None:
        """The tenant whose backend gets this request, or None (the edge answers it)."""
        if target.startswith(EDGE_PREFIX):
            return None
        upgrade = (request.getHeader("upgrade") or "").lower()
        if "websocket" in upgrade:
            return None
        tenant, _status, _reason = bound_tenant(self.live, request)
        if tenant is None or not tenant.backend_http:
            return None
        return tenant


def _raw_answer(channel: Any, status: int, phrase: bytes, extra: bytes = b"") -> None:
    body = b"%d %s\n" % (status, phrase)
    head = (
        b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n%s\r\n" % (status, phrase, len(body), extra)
    )
    transport = channel.transport
    if transport is not None:
        transport.write(head + body)


class FrontRequest(server.Request):
    """A request on the HTTPS port: limits and routing decided as soon as the headers are in."""

    proxy: HttpProxy
    _refused = False
    _exchange: _Exchange | None = None
    _local_body = 0

    @property
    def disconnected(self) -> bool:
        """The client's connection is gone (twisted.web keeps this in the private ``_disconnected``)."""
        return self._disconnected

    def gotLength(self, length: int | None) -> None:  # noqa: N802
        cfg = self.proxy.live.config.proxy
        method, target = request_line(self.channel)
        head_size = len(method) + len(target) + 11
        for name, values in self.requestHeaders.getAllRawHeaders():
            head_size += sum(len(name) + len(v) + 4 for v in values)
        if len(target) > cfg.max_url_length:
            self._refuse(414, b"URI Too Long", length, "url_too_long")
            return
        if head_size > cfg.max_header_bytes:
            self._refuse(431, b"Request Header Fields Too Large", length, "headers_too_large")
            return
        if len(self.requestHeaders.getRawHeaders(b"host", [])) > 1:  # RFC 9112 s.3.2: exactly one
            self._refuse(400, b"Bad Request", length, "several_host_headers")
            return
        tenant = self.proxy.route(self, target)
        if tenant is not None:
            if not _TOKEN_RE.fullmatch(method) or not _TARGET_RE.fullmatch(target):
                self._refuse(400, b"Bad Request", length, "bad_request_line", tenant.id)
                return
            self.content = io.BytesIO()
            self._exchange = _Exchange(self.proxy, self, tenant, method, target, length)
            return
        if length is not None and length > cfg.max_local_body:
            self._refuse(413, b"Content Too Large", length, "body_too_large")
            return
        super().gotLength(length)

    def _refuse(self, status: int, phrase: bytes, length: int | None, kind: str, tenant: str = "-") -> None:
        self._refused = True
        self.content = io.BytesIO()
        channel: Any = self.channel
        self.proxy.refusals.note(tenant, kind)
        _raw_answer(channel, status, phrase)
        channel.persistent = False
        # Stop parsing whatever else this connection sent (as twisted.web does for a closed channel).
        channel.dataReceived = channel.lineReceived = channel.rawDataReceived = lambda *a: None
        channel.loseConnection()

    def handleContentChunk(self, data: bytes) -> None:  # noqa: N802
        if self._refused:
            return
        if self._exchange is not None:
            self._exchange.body.feed(data)
            return
        self._local_body += len(data)
        if self._local_body > self.proxy.live.config.proxy.max_local_body:
            self._refuse(413, b"Content Too Large", None, "body_too_large")
            return
        super().handleContentChunk(data)

    def process(self) -> None:
        if self._refused:
            return
        if self._exchange is not None:
            self.site = self.channel.site  # type: ignore[attr-defined]
            self._exchange.client_body_done()
            return
        super().process()

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802
        if self._exchange is not None:
            self._exchange.client_gone()
        super().connectionLost(reason)


@implementer(IBodyProducer)
class _BodyPipe:
    """The client's request body as the Agent's body producer, with back-pressure both ways."""

    def __init__(self, length: int | None, reader: Any) -> None:
        self.length: Any = length if length is not None else UNKNOWN_LENGTH
        self._reader = reader
        self._consumer: Any = None
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._finished = False
        self._done: defer.Deferred[None] | None = None
        self._consumer_paused = False
        self._client_paused = False
        self._stopped = False

    def feed(self, data: bytes) -> None:
        if self._stopped:
            return
        if self._consumer is not None and not self._consumer_paused and not self._buffer:
            self._consumer.write(data)
            return
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER:
            self._pause_client()

    def finish(self) -> None:
        self._finished = True
        self._resume_client()
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self._finished and not self._buffer and self._done is not None and not self._stopped:
            done, self._done = self._done, None
            done.callback(None)

    def _flush(self) -> None:
        while self._buffer and not self._consumer_paused and self._consumer is not None:
            chunk = self._buffer.pop(0)
            self._buffered -= len(chunk)
            self._consumer.write(chunk)
        if not self._buffer and not self._consumer_paused:
            self._resume_client()

    def _pause_client(self) -> None:
        if not self._client_paused and self._reader is not None and not self._finished:
            self._client_paused = True
            self._reader.pauseProducing()

    def _resume_client(self) -> None:
        if self._client_paused and self._reader is not None:
            self._client_paused = False
            self._reader.resumeProducing()

    # IBodyProducer
    def startProducing(self, consumer: Any) -> defer.Deferred[None]:  # noqa: N802
        self._consumer = consumer
        self._flush()
        if self._finished and not self._buffer:
            return defer.succeed(None)
        self._done = defer.Deferred()
        return self._done

    def pauseProducing(self) -> None:  # noqa: N802
        self._consumer_paused = True
        self._pause_client()

    def resumeProducing(self) -> None:  # noqa: N802
        self._consumer_paused = False
        self._flush()
        self._maybe_done()

    def stopProducing(self) -> None:  # noqa: N802
        self._stopped = True
        self._buffer.clear()
        self._buffered = 0
        self._done = None  # IBodyProducer: never fire after stopProducing
        self._resume_client()


class _Exchange:
    """One proxied request: client request -> backend, backend response -> client."""

    log = Logger()

    def __init__(
        self,
        proxy: HttpProxy,
        request: FrontRequest,
        tenant: TenantConfig,
        method: bytes,
        target: bytes,
        length: int | None,
    ) -> None:
        self.proxy = proxy
        self.request = request
        self.tenant = tenant
        self.method = method
        self.timers = proxy.timers
        self.cfg = proxy.live.config.proxy
        self.response_started = False
        self.finished = False
        self._timer: Any = None
        self._relay: _ResponseRelay | None = None
        self._writer_registered: Any = None
        request.defaultContentType = None  # the backend's Content-Type (or none) goes through
        host = (request.getHeader("host") or "").encode("ascii", "replace")
        client_ip = str(getattr(request.getClientAddress(), "host", ""))
        headers = forward_headers(request.requestHeaders, client_ip, host)
        self.body = _BodyPipe(length, _client_reader(request.channel))
        base = (tenant.backend_http or "").rstrip("/").encode("ascii")
        producer = self.body if (length is None or length > 0) else None
        self.d: defer.Deferred[Any] | None = defer.maybeDeferred(
            proxy.agent().request, method, base + target, headers, producer
        )
        self.d.addCallbacks(self._got_response, self._no_response)
        self.d.addErrback(self._bug)

    # -- client side -------------------------------------------------------------------------
    def client_body_done(self) -> None:
        self.body.finish()
        if not self.response_started and not self.finished:
            self._arm(self._read_timeout)

    def client_gone(self) -> None:
        if self.finished:
            return
        self.finished = True
        self._disarm()
        self.body.stopProducing()
        if self.d is not None:
            d, self.d = self.d, None
            d.cancel()
        if self._relay is not None:
            self._relay.abort()

    # -- timers ------------------------------------------------------------------------------
    def _arm(self, fn: Any) -> None:
        self._disarm()
        self._timer = self.timers.call_later(self.cfg.read_timeout, fn)

    def _disarm(self) -> None:
        if self._timer is not None:
            self.timers.cancel(self._timer)
            self._timer = None

    def _read_timeout(self) -> None:
        self._timer = None
        if self.d is not None and not self.response_started:
            self._timed_out = True
            d, self.d = self.d, None
            d.cancel()  # -> _no_response with CancelledError -> 504

    def _idle_timeout(self) -> None:
        self._timer = None
        self.proxy.refusals.note(self.tenant.id, "backend_idle_timeout")
        if self._relay is not None:
            self._relay.abort()

    # -- backend side ------------------------------------------------------------------------
    def _got_response(self, response: Any) -> None:
        self.d = None
        if self.finished:
            response.deliverBody(_Discard())
            return
        self.response_started = True
        req = self.request
        req.setResponseCode(response.code, response.phrase or None)
        for name, values in response_headers(response.headers):
            req.responseHeaders.setRawHeaders(name, values)
        if self.method == b"HEAD":
            cl = response.headers.getRawHeaders(b"content-length")
            if cl and len(set(cl)) == 1:
                req.responseHeaders.setRawHeaders(b"content-length", [cl[0]])
        elif response.code not in _NO_BODY and response.length is not UNKNOWN_LENGTH:
            req.responseHeaders.setRawHeaders(b"content-length", [str(response.length).encode()])
        self._relay = _ResponseRelay(self)
        self._arm(self._idle_timeout)
        response.deliverBody(self._relay)

    def _no_response(self, failure: Failure) -> None:
        self.d = None
        if self.finished:
            return
        self._disarm()
        self.body.stopProducing()
        if getattr(self, "_timed_out", False):
            status, kind = 504, "backend_read_timeout"
        elif failure.check(error.TimeoutError, error.ConnectingCancelledError):
            status, kind = 504, "backend_connect_timeout"
        else:
            status, kind = 502, "backend_unavailable"
        detail = failure.getErrorMessage()[:200] if status == 502 else ""
        self.proxy.refusals.note(self.tenant.id, kind, detail)
        self._answer_error(status)

    def _answer_error(self, status: int) -> None:
        req = self.request
        self.finished = True
        if req.disconnected:
            return
        phrase = {502: b"Bad Gateway", 504: b"Gateway Timeout"}[status]
        req.setResponseCode(status, phrase)
        req.responseHeaders = Headers()
        req.setHeader(b"content-type", b"text/plain; charset=utf-8")
        req.setHeader(b"cache-control", b"no-store")
        body = b"%d %s\n" % (status, phrase)
        req.setHeader(b"content-length", str(len(body)).encode())
        req.write(body)
        req.finish()

    def _bug(self, failure: Failure) -> None:
        self.log.failure("WEB500 {tenant} proxy exchange failed", failure, tenant=self.tenant.id)
        self.client_gone()
        if not self.request.disconnected:
            self.request.channel.loseConnection()

    # -- called by the relay -----------------------------------------------------------------
    def register_writer(self, relay: _ResponseRelay) -> None:
        channel: Any = self.request.channel
        transport = channel.transport
        try:
            if IPushProducer.providedBy(transport):
                self.request.registerProducer(relay, True)
                self._writer_registered = self.request
            elif transport is not None:
                transport.registerProducer(relay, True)
                self._writer_registered = transport
        except RuntimeError:  # someone else already produces on this transport
            self._writer_registered = None

    def unregister_writer(self) -> None:
        holder, self._writer_registered = self._writer_registered, None
        if holder is not None:
            try:
                holder.unregisterProducer()
            except Exception as exc:  # the transport went away
                self.log.debug("unregisterProducer: {exc!r}", exc=exc)

    def data(self, data: bytes) -> None:
        if not self.finished and not self.request.disconnected:
            self._arm(self._idle_timeout)
            self.request.write(data)

    def response_done(self, reason: Failure) -> None:
        self._disarm()
        self.unregister_writer()
        if self.finished:
            return
        self.finished = True
        req = self.request
        if req.disconnected:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            req.finish()
        else:
            self.proxy.refusals.note(self.tenant.id, "backend_response_broken")
            req.channel.loseConnection()  # never pass a truncated body off as complete


class _ResponseRelay(Protocol):
    """Receives the backend response body; pauses the backend while the client is slow."""

    transport: Any

    def __init__(self, exchange: _Exchange) -> None:
        self.exchange = exchange

    def connectionMade(self) -> None:  # noqa: N802
        self.exchange.register_writer(self)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.exchange.data(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: N802, B008
        self.exchange.response_done(reason)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()

    # IPushProducer, for the client's transport
    def pauseProducing(self) -> None:  # noqa: N802
        if self.transport is not None:
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:  # noqa: N802
        if self.transport is not None:
            self.transport.resumeProducing()

    def stopProducing(self) -> None:  # noqa: N802
        self.exchange.client_gone()


class _Discard(Protocol):
    def connectionMade(self) -> None:  # noqa: N802
        self.transport.stopProducing()  # type: ignore[union-attr]


# -- WebSocket pass-through ----------------------------------------------------------------------


class _TunnelSide(Protocol):
    """One side of a byte tunnel; ``peer`` is the other side."""

    peer: _TunnelSide | None = None
    transport: Any

    def __init__(self, tunnel: _Tunnel, name: str) -> None:
        self.tunnel = tunnel
        self.name = name

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.tunnel.data(self, data)

    def connectionLost(self, reason: Failure = Failure(error.ConnectionDone())) -> None:  # noqa: N802, B008
        self.tunnel.lost(self)


class _Tunnel:
    """A WebSocket upgrade passed through to the tenant's backend as raw bytes after the head."""

    log = Logger()

    def __init__(self, proxy: HttpProxy, tenant: TenantConfig, head: bytes) -> None:
        self.proxy = proxy
        self.tenant = tenant
        self.head = head
        self.client = _TunnelSide(self, "client")
        self.backend: _TunnelSide | None = None
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._timer: Any = None
        self._answered = False  # the backend has sent something: errors are no longer ours to answer
        self.closed = False

    def start(self, backend_url: str) -> None:
        cfg = self.proxy.live.config.proxy
        parts = urlsplit(backend_url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        endpoint: Any = HostnameEndpoint(self.proxy.reactor, host, port, timeout=cfg.connect_timeout)
        if parts.scheme == "https":
            endpoint = wrapClientTLS(optionsForClientTLS(host), endpoint)
        side = _TunnelSide(self, "backend")
        d = endpoint.connect(_OneShotFactory(side))
        d.addCallbacks(self._connected, self._failed)
        self._timer = self.proxy.timers.call_later(cfg.connect_timeout + cfg.read_timeout, self._timeout)

    def _connected(self, side: _TunnelSide) -> None:
        if self.closed:
            side.transport.loseConnection()
            return
        self.backend = side
        side.transport.write(self.head)
        for chunk in self._pending:
            side.transport.write(chunk)
        self._pending = []
        # each side stops reading while the other cannot take more
        _register(self.client.transport, side.transport)
        _register(side.transport, _client_reader_of(self.client.transport))

    def _failed(self, failure: Failure) -> None:
        kind = (
            "websocket_connect_timeout"
            if failure.check(error.TimeoutError)
            else "websocket_backend_unavailable"
        )
        self.proxy.refusals.note(self.tenant.id, kind, failure.getErrorMessage()[:200])
        self._error(504 if kind == "websocket_connect_timeout" else 502)

    def _timeout(self) -> None:
        self._timer = None
        if not self._answered and not self.closed:
            self.proxy.refusals.note(self.tenant.id, "websocket_backend_timeout")
            self._error(504)

    def _error(self, status: int) -> None:
        if self.closed:
            return
        transport = self.client.transport
        if transport is not None and not self._answered:
            phrase = {502: b"Bad Gateway", 504: b"Gateway Timeout"}[status]
            _raw_answer(self.client, status, phrase)
        self.close()

    def data(self, side: _TunnelSide, data: bytes) -> None:
        if self.closed:
            return
        if side is self.client:
            if self.backend is not None:
                self.backend.transport.write(data)
            else:
                self._pending.append(data)
                self._pending_size += len(data)
                if self._pending_size > HIGH_WATER:
                    self.close()
        else:
            if not self._answered:
                self._answered = True
                if self._timer is not None:
                    self.proxy.timers.cancel(self._timer)
                    self._timer = None
            self.client.transport.write(data)

    def lost(self, side: _TunnelSide) -> None:
        if side is self.backend and not self._answered and not self.closed:
            self.proxy.refusals.note(self.tenant.id, "websocket_backend_closed")
            self._error(502)
            return
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self.proxy.timers.cancel(self._timer)
            self._timer = None
        for side in (self.client, self.backend):
            if side is not None and side.transport is not None:
                try:
                    side.transport.unregisterProducer()
                except Exception as exc:  # already closing
                    self.log.debug("unregisterProducer: {exc!r}", exc=exc)
                side.transport.loseConnection()


class _OneShotFactory(Factory):
    noisy = False

    def __init__(self, proto: Protocol) -> None:
        self.proto = proto

    def buildProtocol(self, addr: Any) -> Protocol:  # noqa: N802
        return self.proto


def _client_reader_of(transport: Any) -> Any:
    """The first push producer down the wrapper chain (TLS, guard...) to the TCP connection."""
    for _ in range(6):
        if transport is None or IPushProducer.providedBy(transport):
            return transport
        transport = getattr(transport, "transport", None)
    return None


def _register(consumer: Any, producer: Any) -> None:
    if consumer is None or producer is None:
        return
    try:
        consumer.registerProducer(producer, True)
    except RuntimeError:
        pass  # already has a producer: no back-pressure on this direction


def pass_websocket(proxy: HttpProxy, request: server.Request, tenant: TenantConfig) -> bool:
    """Hand a (non-SIP) WebSocket upgrade's connection to a byte tunnel to ``tenant.backend_http``."""
    channel: Any = request.channel
    transport: Any = channel.transport
    if transport is None or not tenant.backend_http:
        return False
    host = (request.getHeader("host") or "").encode("ascii", "replace")
    if normalise_host(host) is None or not _TARGET_RE.fullmatch(request.uri):
        return False
    client_ip = str(getattr(request.getClientAddress(), "host", ""))
    headers = forward_headers(request.requestHeaders, client_ip, host, upgrade=True)
    base = urlsplit(tenant.backend_http).path.rstrip("/").encode("ascii")
    lines = [request.method + b" " + base + request.uri + b" HTTP/1.1"]
    for name, values in headers.getAllRawHeaders():
        for v in values:
            lines.append(name + b": " + v)
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    tunnel = _Tunnel(proxy, tenant, head)
    channel.setTimeout(None)
    channel.transport = None
    if isinstance(transport, ProtocolWrapper):
        transport.wrappedProtocol = tunnel.client
    else:
        transport.protocol = tunnel.client
    tunnel.client.makeConnection(transport)
    tunnel.start(tenant.backend_http)
    proxy.refusals.counters[(tenant.id, "websocket_passed")] += 1
    return True
