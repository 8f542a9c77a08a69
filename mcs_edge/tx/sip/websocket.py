"""SIP over secure WebSocket (RFC 7118) from browsers, on the shared HTTPS port.

Theory of operation
-------------------
The HTTPS front (:mod:`mcs_edge.tx.web.front`) binds every request to a tenant (TLS SNI and Host must
agree). An upgrade request that offers the ``sip`` subprotocol is handed to :func:`take_over`: the
opening handshake is checked (RFC 6455 s.4.2.1: GET, ``Connection: Upgrade``, a valid
``Sec-WebSocket-Key``, subprotocol ``sip``, Origin in the tenant's ``allowed_origins`` or, when that
list is empty, the same host) and answered 101 on the connection, which then belongs to a
:class:`SipWebSocketProtocol`: each WebSocket message is one SIP message given to the SIP router as
coming from this connection's *flow*. Refusals are plain HTTP answers (400, 403) from the front.

Frames are decoded and encoded by the sans-IO codec :mod:`mcs_edge.core.websocket.rfc6455` (its
docstring has the decision table: 1002 for protocol errors, 1007 for invalid UTF-8, checked per
fragment, 1009 for a message over ``sip.max_message_size``). No extension is accepted (compression
costs tens of KiB per connection and SIP does not need it). Every failed connection is counted
(``ws_protocol_errors`` by close code) and logged rate-limited (WSS400). Only version 13 is spoken:
any other ``Sec-WebSocket-Version`` gets 426 (:func:`refuse_version`, called by the front first).

Keepalives (RFC 5626 s.4.4.1 CRLFCRLF in a text frame, RFC 6455 pings) are the bulk of the traffic
of 10,000 idle agents: a read that is exactly one such frame, between frames, is answered at once
(CRLF, or a pong with the ping's payload) without the SIP core; it still passes the connection's
inbound shaper and marks the flow alive. Liveness costs no timer per connection: one sweep of the
factory every ``sip.keepalive_timeout / 3`` pings each connection that was silent for a whole
period and aborts one still silent a period after its ping (``ws_ping_timeouts``), so a dead
connection goes within ``sip.keepalive_timeout``.

Writes: the frames written while the messages of one read are handed on (the router's answers to
them; under overload mostly 503s written at once) are joined and written below at the end of that
read, one TLS record instead of one per answer; a close frame first flushes what was answered before
it. Frames written at any other time (answers from the PBX, pings) go below at once.

Closing: the edge's close frame is written, the transport is closed once flushed (RFC 6455 s.7.1.1:
the server closes TCP first) and aborted if that has not happened :data:`CLOSE_TIMEOUT` seconds later;
a peer's close frame is echoed (s.5.5.1) before the same.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure

from mcs_edge.core.websocket.rfc6455 import (
    CLOSE,
    FAIL,
    MESSAGE,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    PING,
    TEXT,
    Decoder,
    accept_key,
    close_frame,
    connection_upgrade,
    frame,
    frame_header,
    opening_answer,
)
from mcs_edge.tx.ops.logs import RateLimitedLog

if TYPE_CHECKING:
    from twisted.web.server import Request

    from mcs_edge.config import EdgeConfig, TenantConfig
    from mcs_edge.tx.protect.shaping import Shaping, StreamShaper
    from mcs_edge.tx.sip.router import ClientFlow, SipRouter

__all__ = [
    "CLOSE_TIMEOUT",
    "SipWebSocketFactory",
    "SipWebSocketProtocol",
    "origin_allowed",
    "refuse_version",
    "take_over",
]

#: RFC 6455 s.4.1: the one protocol version this server speaks (answered in 426 refusals).
WEBSOCKET_VERSION = b"13"
#: WSS400 lines per second at most (protocol errors are triggered by peers at will).
LOG_PER_SECOND = 10
#: Seconds a closing connection may take to flush before it is aborted.
CLOSE_TIMEOUT = 5.0
_PING = frame(OP_PING, b"")
_TEXT16 = struct.Struct("!BBH").pack
_SERVER = b"mcs-edge"


def refuse_version(request: Request, tenant: TenantConfig, router: SipRouter | None) -> bytes | None:
    """The 426 body when the upgrade request does not ask for exactly version 13, else None.

    RFC 6455 s.4.2.2: a server that does not understand the requested version aborts the handshake
    with an HTTP error (426 Upgrade Required) and a ``Sec-WebSocket-Version`` listing the versions
    it speaks. A missing or repeated header is refused the same way.
    """
    values = request.requestHeaders.getRawHeaders(b"sec-websocket-version") or []
    if len(values) == 1 and values[0].strip() == WEBSOCKET_VERSION:
        return None
    if router is not None:
        router.count("ws_refused", tenant.id, "version")
    request.setResponseCode(426, b"Upgrade Required")
    request.setHeader(b"sec-websocket-version", WEBSOCKET_VERSION)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return b"426 WebSocket version 13 required\n"


def origin_allowed(tenant: TenantConfig, origin: str | None, host: str | None) -> bool:
    """True when a browser page at ``origin`` may open a SIP WebSocket to ``tenant``.

    Non-browser clients send no Origin and are allowed (RFC 6455 s.10.2: Origin protects browsers).
    """
    if origin is None or origin == "":
        return True
    origin = origin.rstrip("/").lower()
    if tenant.allowed_origins:
        return origin in tenant.allowed_origins
    parts = urlsplit(origin)
    if parts.scheme != "https" or not host:
        return False
    return (parts.netloc or "").lower() == host.lower()


class SipWebSocketProtocol(Protocol):
    """One browser connection after its opening handshake: a flow of SIP messages."""

    edge_log = Logger()

    def __init__(self, factory: SipWebSocketFactory, tenant: TenantConfig, peer: tuple[str, int]) -> None:
        self.factory = factory
        self.tenant = tenant
        self.peer = peer
        self.decoder = Decoder(factory.max_message)
        self.flow: ClientFlow | None = None
        self.shaper: StreamShaper | None = None  # rate in both directions (tx/protect/shaping.py)
        self.open = False  # between the 101 and the first close frame (either side)
        self.heard = True  # something was read since the last sweep
        self.pinged = False  # the last sweep pinged (and nothing was read since)
        self.close_code = 1006  # s.7.1.5: abnormal closure until a close frame is exchanged
        self.close_reason = ""
        self.abort_call: Any = None  # DelayedCall: abort a closing connection that does not flush
        #: frames written while the messages of one read are handed on, written below at its end
        self._out: list[bytes] | None = None

    def start(self) -> None:
        """The 101 is written: open the flow (or close with 4008 when refused)."""
        factory = self.factory
        self.open = True
        factory.connections.add(self)
        shaping = factory.shaping
        send = self._write_sip
        if shaping is not None:  # the router sends through the shaper (a stopped one writes at once)
            shaper = self.shaper = shaping.stream(
                self.tenant, self.transport, self._deliver, self._write_sip, self._abort, "wss", self.peer[0]
            )
            send = shaper.send
        self.flow = factory.router.open_flow(self.tenant, "wss", self.peer, send, self._close_flow)
        if self.flow is None:
            self._close(4008, "connection limit")

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.heard = True
        if len(data) <= 131 and self.flow is not None:
            reply = self.decoder.keepalive_reply(data)
            if reply is not None:
                shaper = self.shaper
                if shaper is not None and not shaper.admit(data):
                    return  # held by the pacer (replayed through _deliver later) or refused
                self.factory.router.touch(self.flow)
                self.transport.write(reply)  # type: ignore[union-attr]
                return
        shaper = self.shaper
        # paced: delivered now or, while reading is paused, later and in order (through _deliver)
        if shaper is None or shaper.admit(data):
            self._deliver(data)

    def _deliver(self, data: bytes) -> None:
        events = self.decoder.feed(data)
        if not events:
            return
        # The answers to the messages of this read (under overload mostly 503s, written at once by
        # the router) go below in one write at its end: one TLS record, not one per answer.
        out: list[bytes] = []
        self._out = out
        try:
            to_router = self.factory.router.data_from_client
            for kind, payload, code, reason in events:
                if kind == MESSAGE:
                    flow = self.flow
                    if flow is not None and self.open:
                        to_router(flow, payload)
                elif kind == PING:
                    if self.open:
                        self._write_frame(OP_PONG, payload)
                elif kind == CLOSE:
                    self.close_code, self.close_reason = code, reason
                    if self.open:  # s.5.5.1: echo the status code (none when none was given)
                        self._close(code, "", echo=code != 1005)
                elif kind == FAIL:
                    self._fail(code, reason)
                # PONG: the read itself marked the connection alive
        finally:
            if self._out is out:
                self._out = None
                if out:
                    self.transport.write(b"".join(out))  # type: ignore[union-attr]

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (1002, 1007, 1009): counted, logged rate-limited, closed with ``code``."""
        if not self.open:
            return
        factory = self.factory
        factory.router.count("ws_protocol_errors", self.tenant.id, str(code))
        if factory.may_log():
            self.edge_log.info(
                "WSS400 {tenant} WebSocket from {peer} closed with {code}: {reason}",
                tenant=self.tenant.id,
                peer=f"{self.peer[0]}:{self.peer[1]}",
                code=code,
                reason=reason[:120],
            )
        else:
            factory.router.count("log_suppressed", "", "wss")
        self.close_code, self.close_reason = code, reason
        self._close(code, reason)

    def _close(self, code: int, reason: str, echo: bool = True) -> None:
        """Write the close frame, close once flushed, abort after :data:`CLOSE_TIMEOUT`."""
        if not self.open:
            return
        self.open = False
        transport: Any = self.transport
        self._flush_out()  # what was answered before the close frame goes first
        transport.write(close_frame(code, reason) if echo else frame(OP_CLOSE, b""))
        shaper = self.shaper
        if shaper is not None:
            shaper.stop()  # unregisters its producer: a TLS transport closes only after that
        self._release_flow()
        transport.loseConnection()
        if self.abort_call is None:
            self.abort_call = self.factory.reactor.callLater(CLOSE_TIMEOUT, self._abort_closing)

    def _abort_closing(self) -> None:
        self.abort_call = None
        self.transport.abortConnection()  # type: ignore[union-attr]

    def abort(self) -> None:
        """Drop the connection without a close frame (as a lost network would)."""
        self._abort()

    def _abort(self) -> None:
        self.open = False
        self._out = None
        shaper = self.shaper
        if shaper is not None:
            shaper.stop()
        self._release_flow()
        self.transport.abortConnection()  # type: ignore[union-attr]

    def sweep(self) -> None:
        """Called once a period by the factory: ping a silent connection, abort a dead one."""
        if self.heard:
            self.heard = False
            self.pinged = False
        elif not self.pinged:
            self.pinged = True
            if self.open:
                self.transport.write(_PING)  # type: ignore[union-attr]
        elif self.open:
            self.factory.router.count("ws_ping_timeouts", self.tenant.id)
            self.close_reason = "ping timeout"
            self._abort()

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        self.open = False
        self.factory.connections.discard(self)
        call, self.abort_call = self.abort_call, None
        if call is not None and call.active():
            call.cancel()
        shaper = self.shaper
        if shaper is not None:
            shaper.stop()
        self._release_flow()

    def _release_flow(self) -> None:
        """The flow ends when the closing starts, not when TCP closes (which may linger for seconds
        under TLS): from the first close frame no SIP can cross it (RFC 6455 s.5.5.1), so the router
        forgets it at once and requests for it fail over now instead of being dropped on the way."""
        flow, self.flow = self.flow, None
        if flow is not None:
            self.factory.router.close_flow(flow, self.close_reason or f"websocket closed ({self.close_code})")

    # -- called by the router (through the shaper when there is one) ----------------------------
    def _write_sip(self, data: bytes) -> None:
        if not self.open:
            return
        out = self._out
        n = len(data)
        if n < 126:
            head = bytes((0x81, n))
        elif n < 65536:  # RFC 6455 s.5.2: 16-bit extended length (most SIP messages)
            head = _TEXT16(0x81, 126, n)
        else:
            head = frame_header(TEXT, n)
        if out is None:
            self.transport.write(head + data)  # type: ignore[union-attr]
        else:  # joined at the end of the read (``_deliver``)
            out.append(head)
            out.append(data)

    def _write_frame(self, opcode: int, payload: bytes) -> None:
        out = self._out
        if out is None:
            self.transport.write(frame(opcode, payload))  # type: ignore[union-attr]
        else:  # joined at the end of the read (``_deliver``)
            out.append(frame_header(opcode, len(payload)))
            out.append(payload)

    def _flush_out(self) -> None:
        out, self._out = self._out, None
        if out:
            self.transport.write(b"".join(out))  # type: ignore[union-attr]

    def _close_flow(self, code: int, reason: str) -> None:
        # applications close with 1000 or 3000-4999 (RFC 6455 s.7.4.2); anything else becomes 1000
        if code != 1000 and not 3000 <= code <= 4999:
            code = 1000
        self._close(code, reason[:120])


class SipWebSocketFactory:
    """What every SIP WebSocket shares: router, limits, shaping, the log budget, the liveness sweep."""

    def __init__(
        self,
        router: SipRouter,
        config: EdgeConfig,
        reactor: Any,
        now: Callable[[], float],
        shaping: Shaping | None = None,
    ) -> None:
        self.router = router
        self.reactor = reactor
        self.max_message = config.sip.max_message_size
        #: Seconds between liveness sweeps (:meth:`sweep`, driven by the service's timers).
        self.sweep_interval = config.sip.keepalive_timeout / 3
        #: Per-connection buckets (tx/protect/shaping.py); None = unshaped.
        self.shaping = shaping
        self.connections: set[SipWebSocketProtocol] = set()
        self._logs = RateLimitedLog(Logger(), burst=LOG_PER_SECOND, window=1.0, now=now)

    def may_log(self) -> bool:
        """At most :data:`LOG_PER_SECOND` protocol-error lines per second (the rest are counted)."""
        return self._logs.allow("WSS400")

    def sweep(self) -> None:
        """Ping connections silent for a period, abort those silent a period after their ping."""
        for proto in list(self.connections):
            proto.sweep()


def _refuse(request: Request, code: int, body: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return f"{code} {body}\n".encode()


def take_over(request: Request, factory: SipWebSocketFactory, tenant: TenantConfig) -> bytes | None:
    """Answer a SIP WebSocket upgrade: None once the connection is the WebSocket's, else the body of
    the HTTP refusal (its status set on ``request``)."""
    router = factory.router
    headers = request.requestHeaders
    key = headers.getRawHeaders(b"sec-websocket-key") or []
    accept = accept_key(key[0]) if len(key) == 1 else None
    if (
        request.method != b"GET"
        or accept is None
        or not connection_upgrade(headers.getRawHeaders(b"connection") or [])
    ):
        router.count("ws_refused", tenant.id, "handshake")
        return _refuse(request, 400, "invalid WebSocket opening handshake")
    offered = b",".join(headers.getRawHeaders(b"sec-websocket-protocol") or [])
    if b"sip" not in (p.strip() for p in offered.split(b",")):
        router.count("ws_refused", tenant.id, "no_sip_subprotocol")
        return _refuse(request, 400, "WebSocket subprotocol 'sip' required")
    origin = request.getHeader("origin")
    peer: Any = request.getClientAddress()
    if not origin_allowed(tenant, origin, request.getHeader("host")):
        router.count("ws_refused", tenant.id, "origin")
        SipWebSocketProtocol.edge_log.info(
            "WSS403 {tenant} origin {origin} refused from {peer}",
            tenant=tenant.id,
            origin=origin,
            peer=getattr(peer, "host", "?"),
        )
        return _refuse(request, 403, "Origin not allowed")
    channel: Any = request.channel
    transport: Any = channel.transport
    if transport is None:
        return _refuse(request, 400, "connection gone")
    proto = SipWebSocketProtocol(factory, tenant, (peer.host, peer.port))
    channel.setTimeout(None)  # the HTTP idle timer must not fire on the upgraded connection
    # The channel registered itself as the transport's producer; the WebSocket's shaper takes its
    # place (and a TLS transport with a producer left registered never closes).
    if hasattr(transport, "unregisterProducer"):
        transport.unregisterProducer()
    channel.transport = None
    if isinstance(transport, ProtocolWrapper):
        transport.wrappedProtocol = proto
    elif isinstance(getattr(transport, "protocol", None), ProtocolWrapper):
        transport.protocol.wrappedProtocol = proto
    else:
        transport.protocol = proto
    proto.makeConnection(transport)
    producer = getattr(transport, "_networkProducer", None)
    if producer is not None:
        producer.resumeProducing()
    elif hasattr(transport, "resumeProducing"):
        transport.resumeProducing()
    nodelay = getattr(transport, "setTcpNoDelay", None)
    if nodelay is not None:
        nodelay(True)
    transport.write(opening_answer(accept, b"sip", _SERVER))
    proto.start()
    # The HTTP channel and its request point at each other (``channel.requests``,
    # ``request.channel``) and the channel never finishes this request: with the WebSocket owning
    # the transport, drop the channel's side so both are freed by reference counting, not by the
    # cycle collector (one cycle per connection otherwise).
    requests = getattr(channel, "requests", None)
    if isinstance(requests, list):
        requests.clear()
    return None
