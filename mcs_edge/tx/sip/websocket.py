"""SIP over secure WebSocket (RFC 7118) from browsers, on the shared HTTPS port.

Theory of operation
-------------------
The HTTPS front (:mod:`mcs_edge.tx.web.front`) binds every request to a tenant (TLS SNI and Host must
agree). An upgrade request that offers the ``sip`` subprotocol is handed here: the WebSocket
handshake is checked (subprotocol ``sip`` required, Origin in the tenant's ``allowed_origins`` or,
when that list is empty, the same host), then each WebSocket message is one SIP message given to
the SIP router as coming from this connection's *flow*.

autobahn is never run on its defaults (see :func:`configure_factory`): frame and message sizes
are capped, compression is refused (SIP does not need it and it costs tens of KiB per
connection), there is no status page, the opening handshake times out, and the server pings
idle connections.

RFC 6455 conformance. Only version 13 is spoken: any other ``Sec-WebSocket-Version`` gets 426 with
``Sec-WebSocket-Version: 13`` (s.4.2.2, s.4.4; :func:`refuse_version`, called by the HTTPS front
before the upgrade). Text messages are UTF-8-validated incrementally as frames arrive (autobahn's
C validator, so a sequence split across fragments is accepted and an invalid one is caught in the
frame where it occurs): invalid UTF-8 closes with 1007 (s.8.1). autobahn closes with 1002 for
unmasked client frames, reserved bits or opcodes, control frames over 125 bytes or fragmented, and
invalid close codes, and with 1009 for a frame or message over ``sip.max_message_size``. Every
such close is counted (``ws_protocol_errors`` by close code).

Keepalives (RFC 5626 s.4.4.1 CRLFCRLF in a text frame, RFC 6455 pings) are the bulk of the traffic
of 10,000 idle agents: a chunk that is exactly one such frame, arriving between frames, is answered
here (CRLF pong, or a pong with the ping's payload) without autobahn's frame machinery or the SIP
core; it still passes the connection's inbound shaper and marks the flow alive. Anything else, a
keepalive split over reads or glued to other frames included, takes autobahn's path.
"""

from __future__ import annotations

from collections.abc import Callable
from types import FunctionType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import txaio
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure

from mcs_edge.tx.ops.logs import RateLimitedLog

if TYPE_CHECKING:
    from twisted.web.server import Request

    from mcs_edge.config import EdgeConfig, TenantConfig
    from mcs_edge.tx.protect.shaping import Shaping, StreamShaper
    from mcs_edge.tx.sip.router import ClientFlow, SipRouter

__all__ = [
    "SipWebSocketFactory",
    "SipWebSocketProtocol",
    "configure_factory",
    "origin_allowed",
    "refuse_version",
    "take_over",
]

#: RFC 6455 s.4.1: the one protocol version this server speaks (answered in 426 refusals).
WEBSOCKET_VERSION = b"13"
#: WSS400 lines per second at most (protocol errors are triggered by peers at will).
LOG_PER_SECOND = 10


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


_HANDSHAKE_LEFTOVERS = (
    "http_headers",
    "http_request_data",
    "http_response_data",
    "http_status_line",
    "http_request_params",
    "http_request_uri",
    "http_request_path",
    "_wskey",
)
_CRLFCRLF = int.from_bytes(b"\r\n\r\n", "big")
_CRLF_PONG = b"\x81\x02\r\n"  # unmasked text frame "\r\n" (server frames are never masked)


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


class SipWebSocketProtocol(WebSocketServerProtocol):  # type: ignore[misc]
    """One browser connection: a flow of SIP messages."""

    # not ``log``: autobahn logs every frame through ``self.log.debug``; our own logger must not
    # shadow its (level-filtered) txaio logger
    edge_log = Logger()
    # autobahn's own logger: it logs every failed connection (info/warn), which a peer can trigger
    # at will; those are counted and logged rate-limited here instead (WSS400)
    log = txaio.make_logger(level="error")  # type: ignore[attr-defined]
    tenant: TenantConfig
    flow: ClientFlow | None = None
    shaper: StreamShaper | None = None  # rate in both directions (tx/protect/shaping.py), once open
    abort_call: Any = None  # DelayedCall: abort a connection whose error close frame is not read

    def onConnect(self, request: Any) -> str:  # noqa: N802
        router: SipRouter = self.factory.router
        if "sip" not in request.protocols:
            router.count("ws_refused", self.tenant.id, "no_sip_subprotocol")
            raise ConnectionDeny(ConnectionDeny.BAD_REQUEST, "WebSocket subprotocol 'sip' required")
        origin = request.headers.get("origin")
        if not origin_allowed(self.tenant, origin, request.headers.get("host")):
            router.count("ws_refused", self.tenant.id, "origin")
            self.edge_log.info(
                "WSS403 {tenant} origin {origin} refused from {peer}",
                tenant=self.tenant.id,
                origin=origin,
                peer=request.peer,
            )
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "Origin not allowed")
        return "sip"

    def onOpen(self) -> None:  # noqa: N802
        # What the opening handshake left behind is never read again: an idle connection keeps
        # only what it needs (10,000 of them are held).
        for name in _HANDSHAKE_LEFTOVERS:
            setattr(self, name, None)
        router: SipRouter = self.factory.router
        peer: Any = self.transport.getPeer()  # type: ignore[union-attr]
        self.flow = router.open_flow(
            self.tenant, "wss", (peer.host, peer.port), self._send_sip, self._close_flow
        )
        if self.flow is None:
            self.sendClose(4008, "connection limit")
            return
        shaping: Shaping | None = self.factory.shaping
        if shaping is not None:
            self.shaper = shaping.stream(
                self.tenant, self.transport, self._deliver, self._write_sip, self._abort, "wss", peer.host
            )

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if len(data) <= 131 and self._keepalive(data):
            return
        shaper = self.shaper
        if shaper is None:
            WebSocketServerProtocol.dataReceived(self, data)
        else:  # paced: delivered now or, while reading is paused, later and in order
            shaper.data_received(data)

    def _keepalive(self, data: bytes) -> bool:
        """Answer ``data`` if it is exactly one CRLF keepalive or ping frame (see the module docstring)."""
        n = len(data)
        if (
            n < 6
            or self.flow is None
            or self.data  # autobahn holds part of a frame: keep the byte order
            or self.current_frame is not None
            or self.inside_message  # a fragmented message is open: a new text frame is an error there
            or self.autoPingTimeoutCall is not None  # our ping awaits its pong: autobahn's business
            or self.state != WebSocketServerProtocol.STATE_OPEN
        ):
            return False
        b0, b1 = data[0], data[1]
        length = b1 & 0x7F
        if not b1 & 0x80 or length != n - 6:  # unmasked (a protocol error) or not one whole frame
            return False
        if b0 == 0x81:  # FIN + text
            if length != 4 or int.from_bytes(data[6:], "big") ^ int.from_bytes(data[2:6], "big") != _CRLFCRLF:
                return False
            reply = _CRLF_PONG
        elif b0 == 0x89:  # FIN + ping (control frames carry at most 125 octets)
            if length:
                mask = int.from_bytes(data[2:6] * 32, "big") >> (8 * (128 - length))
                payload = (int.from_bytes(data[6:], "big") ^ mask).to_bytes(length, "big")
            else:
                payload = b""
            reply = bytes((0x8A, length)) + payload
        else:
            return False
        shaper = self.shaper
        if shaper is not None and not shaper.admit(data):
            return True  # held by the pacer (replayed through autobahn later) or refused
        self.factory.router.touch(self.flow)
        self.transport.write(reply)  # type: ignore[union-attr]
        return True

    def _deliver(self, data: bytes) -> None:
        WebSocketServerProtocol.dataReceived(self, data)

    def _abort(self) -> None:
        self.dropConnection(abort=True)

    def _closeConnection(self, abort: bool = False) -> None:  # noqa: N802
        shaper = self.shaper
        if shaper is not None:
            shaper.stop()  # unregisters its producer: a TLS transport closes only after that
        transport = self.transport
        if abort and self.failedByMe and self.localCloseCode is not None and transport is not None:
            # We failed the connection (1002, 1007, 1009) and the peer's close frame came in the
            # same read: an abort would discard our close frame. Flush it, abort later if unread.
            if self.abort_call is None:
                transport.loseConnection()
                self.abort_call = self.factory.reactor.callLater(
                    self.closeHandshakeTimeout or 5, transport.abortConnection
                )
            return
        super()._closeConnection(abort)

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        call, self.abort_call = self.abort_call, None
        if call is not None and call.active():
            call.cancel()
        super().connectionLost(reason)

    def _fail_connection(self, code: int = 1001, reason: str = "going away") -> None:
        # autobahn's one exit for protocol errors (1002), invalid UTF-8 (1007), too big (1009)
        if self.state == WebSocketServerProtocol.STATE_OPEN:  # once: a second error only drops
            factory: SipWebSocketFactory = self.factory
            factory.router.count("ws_protocol_errors", self.tenant.id, str(code))
            if factory.may_log():
                self.edge_log.info(
                    "WSS400 {tenant} WebSocket from {peer} closed with {code}: {reason}",
                    tenant=self.tenant.id,
                    peer=self.peer,
                    code=code,
                    reason=reason[:120],
                )
            else:
                factory.router.count("log_suppressed", "", "wss")
        super()._fail_connection(code, reason)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N802, N803
        if self.flow is not None:
            self.factory.router.data_from_client(self.flow, payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:  # noqa: N802, N803
        flow, self.flow = self.flow, None
        shaper = self.shaper
        if shaper is not None:
            shaper.stop()
        if flow is not None:
            self.factory.router.close_flow(flow, reason or f"websocket closed ({code})")

    # -- called by the router ------------------------------------------------------------------
    def _send_sip(self, data: bytes) -> None:
        shaper = self.shaper
        if shaper is None:
            self.sendMessage(data, isBinary=False)
        else:
            shaper.send(data)

    def _write_sip(self, data: bytes) -> None:
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            self.sendMessage(data, isBinary=False)

    def _close_flow(self, code: int, reason: str) -> None:
        # autobahn lets applications send 1000 or 3000-4999 only (1001 "going away" is its own)
        if code != 1000 and not 3000 <= code <= 4999:
            code = 1000
        self.sendClose(code, reason[:120])


class SipWebSocketFactory(WebSocketServerFactory):  # type: ignore[misc]
    protocol = SipWebSocketProtocol

    def __init__(
        self,
        router: SipRouter,
        config: EdgeConfig,
        reactor: Any,
        now: Callable[[], float],
        shaping: Shaping | None = None,
    ) -> None:
        txaio.use_twisted()
        # autobahn logs every frame at debug level through txaio: filter at the source
        txaio.set_global_log_level("info")  # type: ignore[attr-defined]
        super().__init__(reactor=reactor, protocols=["sip"], server="mcs-edge")
        self.router = router
        #: Per-connection buckets (tx/protect/shaping.py); None = unshaped.
        self.shaping = shaping
        self._logs = RateLimitedLog(Logger(), burst=LOG_PER_SECOND, window=1.0, now=now)
        configure_factory(self, config)

    def may_log(self) -> bool:
        """At most :data:`LOG_PER_SECOND` protocol-error lines per second (the rest are counted)."""
        return self._logs.allow("WSS400")


def configure_factory(factory: WebSocketServerFactory, config: EdgeConfig) -> None:
    """Every WebSocket option set explicitly, in one place."""
    max_size = config.sip.max_message_size
    factory.setProtocolOptions(
        webStatus=False,
        maxFramePayloadSize=max_size,
        maxMessagePayloadSize=max_size,
        autoFragmentSize=0,
        failByDrop=False,
        openHandshakeTimeout=config.tls.handshake_timeout,
        closeHandshakeTimeout=5,
        tcpNoDelay=True,
        autoPingInterval=config.sip.keepalive_timeout / 2,
        autoPingTimeout=max(10.0, config.sip.keepalive_timeout / 4),
        perMessageCompressionAccept=_refuse_compression,
        allowedOrigins=["*"],  # checked per tenant in onConnect
        requireMaskedClientFrames=True,
        trustXForwardedFor=0,
        versions=[13],  # RFC 6455 only (the front answers 426 to any other version first)
        utf8validateIncoming=True,  # RFC 6455 s.8.1: invalid UTF-8 in a text message -> 1007
    )
    # autobahn copies every option from the factory into each connection's __dict__ (and
    # pretty-prints them for a debug line) unless the protocol class already has them: give the
    # factory a protocol class that carries them, so a connection holds only its own state.
    options: dict[str, Any] = {name: getattr(factory, name) for name in WebSocketServerProtocol.CONFIG_ATTRS}
    base = factory.protocol
    # a function among the options (perMessageCompressionAccept) must stay a plain function on the
    # class, not become a method that autobahn would call with the connection as first argument
    attrs = {k: staticmethod(v) if isinstance(v, FunctionType) else v for k, v in options.items()}
    factory.protocol = type(base.__name__, (base,), {**attrs, "CONFIG_ATTRS": ()})  # type: ignore[assignment]


def _refuse_compression(offers: Any) -> None:
    return None


def take_over(request: Request, factory: SipWebSocketFactory, tenant: TenantConfig) -> bool:
    """Hand an HTTP upgrade request's connection to a new SIP WebSocket protocol."""
    channel: Any = request.channel
    transport: Any = channel.transport
    if transport is None:
        return False
    proto: Any = factory.buildProtocol(transport.getPeer())
    if proto is None:
        return False
    proto.tenant = tenant
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
    data = request.method + b" " + request.uri + b" HTTP/1.1\r\n"
    for name, values in request.requestHeaders.getAllRawHeaders():
        data += name + b": " + b",".join(values) + b"\r\n"
    data += b"\r\n"
    proto.dataReceived(data)
    return True
