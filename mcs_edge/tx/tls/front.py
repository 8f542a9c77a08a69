"""One TLS port, two protocols: TURN over TLS beside HTTPS/WSS, told apart once per connection.

Theory of operation
-------------------
:class:`TlsFrontFactory` is the factory the TLS layer (tx/tls/stdlib_tls.py ``StdlibTLSFactory``)
wraps on ``listen.https``. Each connection first gets a small :class:`_FrontProtocol`:

* when the TLS handshake completes with ALPN ``stun.turn`` (RFC 7443), the connection goes to the
  TURN factory at once;
* otherwise (no ALPN, ``http/1.1``, or both offered, as coturn's client does) the first byte of
  application data decides: a STUN message starts with two zero bits (``< 0x40``), an HTTP
  request with an upper-case method letter, so ``< 0x40`` goes to TURN and anything else to the
  web site (which then serves HTTPS and SIP over WebSocket as before). A TURN client's first
  message is always STUN (Allocate or Binding), never ChannelData, whose first byte 0x40..0x7F
  would collide with method letters.

The chosen protocol replaces the front as the TLS layer's wrapped protocol (the same hand-over the
SIP WebSocket upgrade uses), so the front costs nothing afterwards. A connection that sends nothing
is aborted after ``idle_timeout`` seconds (one timer, cancelled at the decision or on close).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.policies import ProtocolWrapper
from zope.interface import implementer

if TYPE_CHECKING:
    from twisted.internet.interfaces import IAddress
    from twisted.python.failure import Failure

    from mcs_edge.tx.timers import Timers

__all__ = ["TlsFrontFactory"]


@implementer(IHandshakeListener)
class _FrontProtocol(Protocol):
    """Decides, once per TLS connection, between the second protocol and the web site."""

    transport: Any = None

    def __init__(self, front: TlsFrontFactory, addr: IAddress) -> None:
        self.front = front
        self.addr = addr
        self._timeout: Any = None

    def connectionMade(self) -> None:  # noqa: N802
        timers = self.front.timers
        if timers is not None and self.front.idle_timeout > 0:
            self._timeout = timers.call_later(self.front.idle_timeout, self._idle)

    def _idle(self) -> None:
        self._timeout = None
        if self.transport is not None:
            self.transport.abortConnection()

    def handshakeCompleted(self) -> None:  # noqa: N802
        if getattr(self.transport, "negotiatedProtocol", None) == self.front.alpn:
            self._switch(self.front.turn_factory, b"")

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if not data:
            return
        factory = self.front.turn_factory if data[0] < 0x40 else self.front.web_factory
        self._switch(factory, data)

    def _switch(self, factory: Any, data: bytes) -> None:
        self._cancel()
        transport = self.transport
        proto = factory.buildProtocol(self.addr)
        if proto is None:
            transport.loseConnection()
            return
        if isinstance(transport, ProtocolWrapper):
            transport.wrappedProtocol = proto
        else:  # pragma: no cover - the front always sits under the TLS wrapper
            transport.protocol = proto
        proto.makeConnection(transport)
        if data:
            proto.dataReceived(data)

    def _cancel(self) -> None:
        if self._timeout is not None:
            self.front.timers.cancel(self._timeout)  # type: ignore[union-attr]
            self._timeout = None

    def connectionLost(self, reason: Failure | None = None) -> None:  # noqa: N802
        self._cancel()


class TlsFrontFactory(Factory):
    """Wrapped by the TLS factory of a shared port: ``turn_factory`` (ALPN ``alpn`` or a first
    byte below 0x40) or ``web_factory`` (everything else)."""

    noisy = False

    def __init__(
        self,
        web_factory: Factory,
        turn_factory: Factory,
        timers: Timers | None = None,
        idle_timeout: float = 60.0,
        alpn: bytes = b"stun.turn",
    ) -> None:
        self.web_factory = web_factory
        self.turn_factory = turn_factory
        self.alpn = alpn
        self.timers = timers
        self.idle_timeout = idle_timeout

    def buildProtocol(self, addr: Any) -> _FrontProtocol:  # noqa: N802
        return _FrontProtocol(self, addr)

    def doStart(self) -> None:  # noqa: N802
        self.web_factory.doStart()
        self.turn_factory.doStart()

    def doStop(self) -> None:  # noqa: N802
        self.web_factory.doStop()
        self.turn_factory.doStop()
