"""Server-side TLS on the standard library's ``ssl`` memory BIOs, certificate chosen from the ClientHello.

Theory of operation
-------------------
:class:`StdlibTLSFactory` wraps the factory of a public TLS listener (``listen.https``,
``listen.sip_tls``, ``listen.turns``); each connection gets a :class:`StdlibTLSProtocol`, a
``ProtocolWrapper`` that is the wrapped protocol's transport. It relies only on the Twisted
``ITransport`` of what is below it (a native stream of the asyncio loop or a TCP transport; the
guard's ``GuardedFactory`` puts no wrapper in between and is told of the connection's end through
:attr:`StdlibTLSProtocol.on_lost`): ``write``, ``loseConnection``, ``abortConnection``,
``getPeer``/``getHost``, producers. A connection goes through four states:

1. *hello*: bytes are buffered until :func:`mcs_edge.core.tls.client_hello.parse_client_hello`
   judges them (bounded to 16 KiB). A malformed hello gets a ``decode_error`` alert and a close.
2. The chooser (:meth:`CertificateStore.context_for_hello`, or its SIP/TLS variant) picks the
   ``ssl.SSLContext`` from the SNI name and the ALPN offer *before* any cryptography: the tenant's,
   the default tenant's, the SIP no-SNI certificate, or an RFC 8737 ``acme-tls/1`` challenge
   context (in TLS 1.2 too, since nothing has to be switched mid-handshake). An unknown name gets
   a fatal ``unrecognized_name`` alert (RFC 6066 s.3) and a close: no key exchange is done for it.
3. *handshake*: an ``ssl.SSLObject`` over two ``MemoryBIO``s is fed the buffered bytes. A failure
   flushes OpenSSL's alert and closes. ``tls.handshake_timeout`` bounds states 1-3 (one timer).
4. *open*: the wrapped protocol is connected (``makeConnection``) only now, then told
   ``handshakeCompleted`` (``IHandshakeListener``); ``negotiatedProtocol`` and :attr:`server_name`
   / :attr:`sni_sent` are set. The records of one read are decrypted and their plaintext handed on
   in one call (one pass of the protocols above per read, not per record); each ``write`` is one
   encryption, written below at once, or, when made while the records of one read are handed on
   (the answers and refusals of the requests in them), all written below in one write at the end of
   that read: one system call per read instead of one per answer (under overload a read holds tens
   of requests, most of them refused at once). ``loseConnection`` sends ``close_notify``, then keeps reading
   (and dropping) what the peer still sends until its ``close_notify`` or close, at most
   :data:`LINGER` seconds, before closing below (closing on unread bytes would reset the connection
   and lose the last answer); a peer's ``close_notify`` is answered and closes at once.

Producers are registered on the transport below (encryption is synchronous, so its pauses are the
right ones for the wrapped protocol). ``wrappedProtocol`` may be replaced after the handshake (the
TURN/HTTPS split of tx/tls/front.py, the SIP WebSocket hand-off): later reads go to the new one.

Each handshake outcome is counted in the listener's :class:`TlsStats` (``ok``; ``failed``: a TLS
error, a malformed hello, a refused name; ``aborted``: the connection ended or timed out before
the handshake finished). Bad input is logged rate-limited under ``TLS400`` (malformed, failed),
refused names under ``TLS300``; nothing raises into the reactor.

CPython creates every ``SSLContext`` with ``SSL_MODE_RELEASE_BUFFERS`` (Modules/_ssl.c,
``_ssl__SSLContext_impl``), so an idle connection holds no record buffers.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.interfaces import (
    IConsumer,
    IHandshakeListener,
    IPushProducer,
    ISSLTransport,
    ITCPTransport,
    ITransport,
)
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from mcs_edge.core.tls.client_hello import MAX_HELLO, MAX_RECORDS, Malformed, NeedMore, parse_client_hello
from mcs_edge.tx.ops.logs import RateLimitedLog

if TYPE_CHECKING:
    from twisted.internet.interfaces import IAddress, IReactorTime

    from mcs_edge.core.tls.client_hello import ClientHello

__all__ = [
    "ContextChooser",
    "StdlibTLSFactory",
    "StdlibTLSProtocol",
    "TlsStats",
    "alert_record",
]

# RFC 8446 s.6: AlertDescription values sent before or instead of a handshake
ALERT_HANDSHAKE_FAILURE = 40
ALERT_DECODE_ERROR = 50
ALERT_UNRECOGNIZED_NAME = 112
_READ_SIZE = 16384  # one record's plaintext at most (RFC 8446 s.5.1)
#: bytes buffered before the ClientHello is judged (the parser refuses more records first)
_MAX_BUFFERED = MAX_HELLO + 4 + MAX_RECORDS * 5

_HELLO, _HANDSHAKE, _OPEN, _CLOSING, _CLOSED = 0, 1, 2, 3, 4
#: seconds a closing connection keeps reading (and dropping) what the peer still sends before the
#: TCP close: closing with unread bytes would reset the connection and lose the last answer (an early
#: 413 to a client still sending its body); the peer's close_notify or close ends it sooner
LINGER = 2.0


def alert_record(description: int) -> bytes:
    """A fatal alert as a plaintext record (RFC 8446 s.6; sent before any key is agreed)."""
    return bytes((21, 3, 3, 0, 2, 2, description))


class TlsStats:
    """Handshake outcomes of one TLS listener (``mcs_edge_tls_handshakes``)."""

    __slots__ = ("aborted", "failed", "ok")

    def __init__(self) -> None:
        self.ok = 0
        self.failed = 0  # a TLS error, a malformed ClientHello, a name no tenant owns
        self.aborted = 0  # the connection ended (or timed out) before the handshake finished


class ContextChooser(Protocol):
    """Who picks the certificate context of a connection from its ClientHello."""

    def context_for_hello(self, hello: ClientHello) -> ssl.SSLContext | str:
        """The context to run the handshake with, or the refusal reason: ``"unknown_name"`` (a
        name no tenant owns: ``unrecognized_name``) or ``"no_certificate"`` (a tenant without a
        loaded certificate: ``handshake_failure``)."""
        ...


@implementer(ITransport, ITCPTransport, ISSLTransport, IConsumer, IPushProducer)
class StdlibTLSProtocol(ProtocolWrapper):
    """One server-side TLS connection (see the module docstring)."""

    log = Logger()
    factory: StdlibTLSFactory
    #: the ALPN protocol agreed, or None (Twisted's ``TLSMemoryBIOProtocol`` attribute)
    negotiatedProtocol: bytes | None = None
    #: the SNI host name the client sent (lower case), or None
    server_name: str | None = None
    #: the client sent a server_name extension (False: none at all)
    sni_sent = False
    _state = _HELLO
    _hello: bytes = b""
    _ssl: ssl.SSLObject | None = None
    _in: ssl.MemoryBIO | None = None
    _out: ssl.MemoryBIO | None = None
    _timer: Any = None
    _made = False  # the wrapped protocol has been connected
    _reading = False  # records of one read are being handed on: writes are encrypted, sent at its end
    _counted = False  # this connection's handshake outcome is counted
    #: called once when the connection is lost (the guard's release of an admitted source,
    #: tx/protect/guard.py: no wrapper protocol between the transport and this one)
    on_lost: Callable[[], None] | None = None

    def makeConnection(self, transport: Any) -> None:  # noqa: N802
        # No per-instance interface declaration (ProtocolWrapper copies the transport's): the
        # class declares what it provides. The wrapped protocol is connected after the handshake.
        TwistedProtocol.makeConnection(self, transport)

    def connectionMade(self) -> None:  # noqa: N802
        factory = self.factory
        if factory.clock is not None:
            timeout = factory.handshake_timeout()
            if timeout > 0:
                self._timer = factory.clock.callLater(timeout, self._timed_out)

    # -- bytes from below ---------------------------------------------------------------------
    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        state = self._state
        if state == _OPEN:  # _read() inline: every read of an open connection comes here
            self._in.write(data)  # type: ignore[union-attr]
            self._reading = True
            try:
                self._read_records()
            finally:
                self._reading = False
            out = self._out  # the answers to this read's records in one write below (as _flush)
            if out is not None and out.pending and self.transport is not None:
                self.transport.write(out.read())
        elif state == _HANDSHAKE:
            self._in.write(data)  # type: ignore[union-attr]
            self._handshake()
        elif state == _HELLO:
            self._hello_received(data)
        elif state == _CLOSING:
            self._linger_read(data)

    def _hello_received(self, data: bytes) -> None:
        buffered = self._hello + data if self._hello else data
        result = parse_client_hello(buffered)
        if isinstance(result, NeedMore):
            if len(buffered) > _MAX_BUFFERED:  # pragma: no cover - the parser refuses first
                self._refuse("malformed", "too_large", ALERT_DECODE_ERROR)
            else:
                self._hello = buffered
            return
        self._hello = b""
        if isinstance(result, Malformed):
            self._refuse("malformed", result.reason, ALERT_DECODE_ERROR)
            return
        hello = result
        self.server_name = hello.server_name
        self.sni_sent = hello.server_name is not None
        try:
            chosen = self.factory.chooser.context_for_hello(hello)
        except Exception as exc:  # a bug in the chooser must not reach the reactor
            self._refuse("failed", f"chooser: {exc!r}", ALERT_HANDSHAKE_FAILURE)
            return
        if isinstance(chosen, str):
            alert = ALERT_UNRECOGNIZED_NAME if chosen == "unknown_name" else ALERT_HANDSHAKE_FAILURE
            self._refuse("refused", chosen, alert)
            return
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._ssl = chosen.wrap_bio(self._in, self._out, server_side=True)
        self._state = _HANDSHAKE
        self._in.write(buffered)
        self._handshake()

    def _handshake(self) -> None:
        conn = self._ssl
        assert conn is not None
        try:
            conn.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, ValueError) as exc:
            self._flush()  # OpenSSL's alert
            self._refuse("failed", _reason(exc), None)
            return
        self._flush()
        self._state = _OPEN
        self._cancel_timer()
        self._count("ok")
        alpn = conn.selected_alpn_protocol()
        self.negotiatedProtocol = alpn.encode("ascii") if alpn else None
        self._made = True
        self.wrappedProtocol.makeConnection(self)
        if self._state == _OPEN:
            proto = self.wrappedProtocol
            if IHandshakeListener.providedBy(proto):
                proto.handshakeCompleted()
        if self._state == _OPEN and self._in.pending:  # type: ignore[union-attr]
            self._read()  # application data that came with the client's Finished

    def _read(self) -> None:
        self._reading = True  # writes made while the records of this read are handed on wait for its end
        try:
            self._read_records()
        finally:
            self._reading = False
        self._flush()  # the answers to this read's records in one write below (and post-handshake messages)

    def _read_records(self) -> None:
        """Decrypt every whole record of this read and hand the plaintext on in one call (a stream:
        the wrapped protocol frames it; one call per read instead of one per record)."""
        conn = self._ssl
        bio = self._in
        assert conn is not None and bio is not None
        read = conn.read
        try:
            data = read(_READ_SIZE)
        except ssl.SSLWantReadError:
            return
        except ssl.SSLZeroReturnError:  # pragma: no cover - the stdlib returns b"" instead
            data = b""
        except (ssl.SSLError, ValueError) as exc:
            self._flush()
            self._refuse("failed", _reason(exc), None)
            return
        if data and not bio.pending and not conn.pending():  # one record (or all of them) in one read
            self.wrappedProtocol.dataReceived(data)
            return
        plain: list[bytes] = []
        while True:
            if not data:  # the peer's close_notify: what came before it, then answer it and close
                if plain and not self._deliver(plain):
                    return
                self._shutdown(linger=False)
                return
            plain.append(data)
            if not bio.pending and not conn.pending():
                break
            try:
                data = read(_READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # pragma: no cover - the stdlib returns b"" instead
                data = b""
            except (ssl.SSLError, ValueError) as exc:
                if plain and not self._deliver(plain):
                    return
                self._flush()
                self._refuse("failed", _reason(exc), None)
                return
        self._deliver(plain)

    def _deliver(self, plain: list[bytes]) -> bool:
        """Hand ``plain`` on; False when the connection is no longer open after it."""
        self.wrappedProtocol.dataReceived(plain[0] if len(plain) == 1 else b"".join(plain))
        return self._state == _OPEN

    def _flush(self) -> None:
        out = self._out
        if out is not None and out.pending and self.transport is not None:
            self.transport.write(out.read())

    # -- the wrapped protocol's transport -----------------------------------------------------
    def write(self, data: bytes) -> None:
        if self._state != _OPEN or self.disconnecting or not data:
            return
        try:
            self._ssl.write(data)  # type: ignore[union-attr]
        except (ssl.SSLError, ValueError) as exc:
            self._refuse("failed", _reason(exc), None)
            return
        if not self._reading:
            self.transport.write(self._out.read())  # type: ignore[union-attr]

    def writeSequence(self, data: Any) -> None:  # noqa: N802
        self.write(b"".join(data))

    def loseConnection(self) -> None:  # noqa: N802
        self._shutdown(linger=True)

    def _shutdown(self, linger: bool) -> None:
        if self.disconnecting or self._state in (_CLOSING, _CLOSED) or self.transport is None:
            return
        self.disconnecting = True
        self._cancel_timer()
        if self._state == _OPEN:
            try:
                self._ssl.unwrap()  # type: ignore[union-attr]  # close_notify
            except (ssl.SSLError, ValueError):
                pass  # the peer's close_notify comes later, or never
            self._flush()
            clock = self.factory.clock
            if linger and clock is not None:  # linger: read and drop until the peer closes, at most LINGER s
                self._state = _CLOSING
                self._timer = clock.callLater(LINGER, self._linger_end)
                return
        self._state = _CLOSED
        self.transport.loseConnection()

    def _linger_read(self, data: bytes) -> None:
        conn, bio = self._ssl, self._in
        assert conn is not None and bio is not None
        bio.write(data)
        while True:
            try:
                if not conn.read(_READ_SIZE):  # the peer's close_notify
                    break
            except ssl.SSLWantReadError:
                return
            except (ssl.SSLError, ValueError):
                break
        self._linger_end()

    def _linger_end(self) -> None:
        self._cancel_timer()
        if self._state == _CLOSING:
            self._state = _CLOSED
            if self.transport is not None:
                self.transport.loseConnection()

    def abortConnection(self) -> None:  # noqa: N802
        if self.transport is None:
            return
        self.disconnecting = True
        self._cancel_timer()
        self._state = _CLOSED
        self.transport.abortConnection()  # type: ignore[attr-defined]

    def getHandle(self) -> ssl.SSLObject | None:  # noqa: N802
        """The ``ssl.SSLObject`` (None before the ClientHello was accepted)."""
        return self._ssl

    def getPeerCertificate(self) -> None:  # noqa: N802
        return None  # client certificates are not requested

    # -- outcomes -------------------------------------------------------------------------------
    def _count(self, result: str) -> None:
        if not self._counted:
            self._counted = True
            stats = self.factory.stats
            setattr(stats, result, getattr(stats, result) + 1)

    def _refuse(self, kind: str, reason: str, alert: int | None) -> None:
        """End a connection on bad or refused TLS input: count, log (rate-limited), alert, close."""
        self._count("failed")  # no-op after the handshake (counted ok)
        factory = self.factory
        code = "TLS300" if kind == "refused" else "TLS400"
        if factory.ratelog.allow(f"{code} {factory.listener} {kind}"):
            peer = getattr(self.transport.getPeer(), "host", "?") if self.transport is not None else "?"
            if kind == "refused":
                self.log.info(
                    "TLS300 {listener}: TLS from {peer} for {name} refused before the handshake: {reason}",
                    listener=factory.listener,
                    peer=peer,
                    name=self.server_name or "(no SNI)",
                    reason=reason,
                )
            else:
                self.log.info(
                    "TLS400 {listener}: bad TLS from {peer} ({kind}: {reason}); closed",
                    listener=factory.listener,
                    peer=peer,
                    kind=kind,
                    reason=reason,
                )
        if alert is not None and self.transport is not None and self._state != _CLOSED:
            self.transport.write(alert_record(alert))
        self._cancel_timer()
        self.disconnecting = True
        self._state = _CLOSED
        if self.transport is not None:
            self.transport.loseConnection()

    def _timed_out(self) -> None:
        self._timer = None
        if self._state in (_HELLO, _HANDSHAKE):
            self._count("aborted")
            self.abortConnection()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        on_lost = self.on_lost
        if on_lost is not None:
            self.on_lost = None
            on_lost()
        self._cancel_timer()
        if not self._counted:
            self._count("aborted")
        self._state = _CLOSED
        self._ssl = self._in = self._out = None
        self._hello = b""
        if self._made:
            self._made = False
            proto = self.wrappedProtocol
            if proto is not None:
                proto.connectionLost(reason)
        self.wrappedProtocol = None  # type: ignore[assignment]  # no cycle left behind


class StdlibTLSFactory(WrappingFactory["StdlibTLSProtocol"]):
    """Wraps ``wrapped`` (a listener's factory) in server-side TLS chosen by ``chooser``.

    ``stats`` counts handshake outcomes (replaceable until the port opens); ``listener`` names
    the listener in logs; ``handshake_timeout`` is read per connection (seconds, 0 = none);
    ``clock`` (the reactor) runs the handshake timeout and the linger of closing connections:
    short per-connection calls, not the service's ``Timers`` (which a stopped service empties while
    connections may still be closing), as the WebSocket's close timeout."""

    protocol = StdlibTLSProtocol
    noisy = False
    log = Logger()

    def __init__(
        self,
        chooser: ContextChooser,
        wrapped: Any,
        stats: TlsStats | None = None,
        *,
        listener: str = "tls",
        clock: IReactorTime | None = None,
        handshake_timeout: Callable[[], float] = lambda: 10.0,
    ) -> None:
        super().__init__(wrapped)
        self.chooser = chooser
        self.stats = stats if stats is not None else TlsStats()
        self.listener = listener
        self.clock = clock
        self.handshake_timeout = handshake_timeout
        self.ratelog = RateLimitedLog(self.log, burst=5, window=10.0)

    def buildProtocol(self, addr: IAddress) -> StdlibTLSProtocol | None:  # type: ignore[override]  # noqa: N802
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        return StdlibTLSProtocol(self, wrapped)

    def registerProtocol(self, p: Any) -> None:  # noqa: N802
        pass  # no per-connection table: the listener's guard counts connections

    def unregisterProtocol(self, p: Any) -> None:  # noqa: N802
        pass


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc.__class__.__name__).lower()
    return exc.__class__.__name__
