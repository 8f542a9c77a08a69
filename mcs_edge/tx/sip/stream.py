"""SIP over TLS (``listen.sip_tls``) for the TVox Team mobile app: Content-Length framing.

Theory of operation
-------------------
A TLS connection is bound to its tenant by SNI when the handshake completes (the same
CertificateStore as the HTTPS port serves the certificate); it then becomes a *flow* of the SIP
router exactly like a WebSocket. Bytes go through :class:`~mcs_edge.core.sip.framing.StreamFramer`:
each complete message is handed to the router; a CRLFCRLF keepalive is answered with CRLF
(RFC 5626 s.4.4.1); garbage that cannot be resynchronised closes the connection (a stream has no
message boundaries to recover from). A connection silent for ``sip.keepalive_timeout`` is closed by
the router's idle sweep.

A client that sends no SNI at all (baresip and other native stacks) is refused, unless
``tls.unknown_sni = "default"`` (bound to the default tenant) or ``tls.sip_no_sni_certificate`` is
set: then the connection stays *unbound* until its first complete message, which binds it
(:mod:`mcs_edge.core.sip.binding`: a REGISTER by its domain, an in-dialog request by the flow token
in its Route); a first message that binds nothing closes the connection (counted, logged).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mcs_edge.core.sip.framing import PONG, KeepalivePing, MessageBytes, StreamFramer
from mcs_edge.core.sip.message import Limits
from mcs_edge.errors import RemoteProtocolError
from mcs_edge.tx.tls.certificates import sent_no_sni, tenant_of_tls

if TYPE_CHECKING:
    from mcs_edge.tx.protect.shaping import StreamShaper
    from mcs_edge.tx.service import EdgeService
    from mcs_edge.tx.sip.router import ClientFlow

__all__ = ["SipStreamFactory", "SipStreamProtocol"]


@implementer(IHandshakeListener)
class SipStreamProtocol(Protocol):
    log = Logger()

    def __init__(self, service: EdgeService) -> None:
        self.service = service
        self.flow: ClientFlow | None = None
        self.framer = StreamFramer(Limits(max_message_size=service.config.sip.max_message_size))
        self._pending = b""
        self.shaper: StreamShaper | None = None  # rate in both directions (tx/protect/shaping.py)
        self.unbound = False  # no SNI: bound by the first SIP message

    def handshakeCompleted(self) -> None:  # noqa: N802
        svc = self.service
        tenant = tenant_of_tls(self.transport, svc.tenants, svc.config)
        if tenant is None:
            if svc.config.tls.sip_no_sni_certificate and sent_no_sni(self.transport):
                self.unbound = True
                if self._pending:
                    data, self._pending = self._pending, b""
                    self._received(data)
                return
            svc.sip.count("tls_refused", "", "unknown_tenant")
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        self._bind(tenant)

    def _bind(self, tenant: Any) -> None:
        svc = self.service
        peer: Any = self.transport.getPeer()  # type: ignore[union-attr]
        self.flow = svc.sip.open_flow(tenant, "tls", (peer.host, peer.port), self._send, self._close)
        if self.flow is None:
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        shaping = getattr(svc, "shaping", None)
        if shaping is not None:
            self.shaper = shaping.stream(
                tenant, self.transport, self._received, self._write, self._abort, "tls", peer.host
            )
        if self._pending:
            data, self._pending = self._pending, b""
            self.dataReceived(data)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        shaper = self.shaper
        if shaper is not None:
            shaper.data_received(data)  # paced: handed to _received now or later, in order
        else:
            self._received(data)

    def _received(self, data: bytes) -> None:
        flow = self.flow
        if flow is None and not self.unbound:  # data before the handshake listener ran
            self._pending += data
            return
        try:
            events = self.framer.feed(data)
        except RemoteProtocolError as exc:
            tenant_id = flow.tenant.id if flow is not None else ""
            self.service.sip.count("sip_stream_garbage", tenant_id, "framing")
            if flow is not None:
                # a request whose head parses gets its final answer (400, 413, 513) before the close
                self.service.sip.reject_unframed(flow, self.framer.pending(), exc)
            self.log.info(
                "SIP401 {tenant} TLS stream from {peer} closed: {reason}",
                tenant=tenant_id,
                peer=flow.peer if flow is not None else None,
                reason=str(exc),
            )
            self._lose()
            return
        router = self.service.sip
        for ev in events:
            if flow is None:  # unbound (no SNI): the first message binds the connection
                if isinstance(ev, KeepalivePing):
                    self.transport.write(PONG)  # type: ignore[union-attr]
                if not isinstance(ev, MessageBytes):
                    continue
                flow = self._bind_by_message(ev.data)
                if flow is None:
                    return
            if isinstance(ev, MessageBytes):
                router.data_from_client(flow, ev.data)
            elif isinstance(ev, KeepalivePing):
                router.touch(flow)
                self.transport.write(PONG)  # type: ignore[union-attr]
            else:
                router.touch(flow)
            if self.flow is None:
                return

    def _bind_by_message(self, data: bytes) -> ClientFlow | None:
        svc = self.service
        self.unbound = False
        tenant = svc.sip.tenant_for_first_request(data)
        if tenant is None:
            svc.sip.count("tls_refused", "", "no_sni_unbound")
            peer: Any = self.transport.getPeer()  # type: ignore[union-attr]
            self.log.info(
                "SIP402 TLS connection from {peer} without SNI closed: its first message names no tenant",
                peer=peer.host,
            )
            self._lose()
            return None
        svc.sip.count("tls_bound_by_request", tenant.id)
        self._bind(tenant)
        return self.flow

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: N802, B008
        flow, self.flow = self.flow, None
        if self.shaper is not None:
            self.shaper.stop()
        if flow is not None:
            self.service.sip.close_flow(flow, "connection lost")

    def _send(self, data: bytes) -> None:
        if self.shaper is not None:
            self.shaper.send(data)
        else:
            self._write(data)

    def _write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def _close(self, code: int, reason: str) -> None:
        self._lose()

    def _lose(self) -> None:
        if self.shaper is not None:
            self.shaper.stop()  # unregisters its producer: a TLS transport closes only after that
        if self.transport is not None:
            self.transport.loseConnection()

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]


class SipStreamFactory(Factory):
    def __init__(self, service: EdgeService) -> None:
        self.service = service

    def buildProtocol(self, addr: Any) -> SipStreamProtocol:  # noqa: N802
        p = SipStreamProtocol(self.service)
        p.factory = self
        return p
