"""Native TCP listeners: the asyncio loop's own streams (uvloop in production) under Twisted protocols.

In: :func:`listen_tcp` (the signature of ``IReactorTCP.listenTCP``) or :func:`tcp_server` (an
``internet.TCPServer`` service whose port comes from :func:`listen_tcp`). Out: an
``IListeningPort`` whose connections are built by the listener's Twisted factory and see a Twisted
TCP transport (``ITCPTransport``, ``IConsumer``, ``IPushProducer``, ``ISystemHandle``).

Theory of operation
-------------------
Twisted's asyncio reactor drives its own TCP sockets from Python: every readable event goes
``add_reader`` -> ``_readOrWrite`` -> ``doRead`` -> ``recv``, and every ``write`` buffers, calls
``add_writer``, sends on a later loop turn and calls ``remove_writer`` (two epoll changes and one
more wake-up per write). On that reactor (:func:`~mcs_edge.tx.relay_endpoint.asyncio_loop_of`
finds its loop) :func:`listen_tcp` instead binds the socket itself and hands it to
``loop.create_server(sock=...)``: the loop reads in C and calls :meth:`StreamTransport.data_received`
once per read, and ``write`` goes to the loop's transport, which sends at once (``uv_try_write``
on uvloop, ``send`` on the standard loop) and buffers only what the kernel did not take. On any
other reactor :func:`listen_tcp` is ``reactor.listenTCP`` (slower, same behaviour).

One :class:`StreamTransport` per connection is both the loop's ``asyncio.Protocol`` and the Twisted
transport of the protocol the factory builds:

* accept: the loop creates the :class:`StreamTransport`; at ``connection_made`` the factory's
  ``buildProtocol(addr)`` is called with the peer's ``IPv4Address``/``IPv6Address`` (``TCP``) before
  anything is read, so the guard's ``GuardedFactory`` refuses first; ``None`` aborts the connection
  at once (Twisted's port closes the socket the same way).
* reading, one read per connection per loop turn under load: libuv reads a readable socket up to
  32 times in a row, so at overload one connection with a backlog was read dry (thousands of SIP
  messages) before the PBX's UDP answers or any other client, and admitted INVITEs waited seconds
  while the PBX retransmitted. A read of at least :data:`READ_TURN` bytes pauses the connection's
  reading and is handed on READ_TURN bytes per loop turn (``call_soon``), reading resuming the turn
  after the last slice; small reads (a message or two, the normal case) cost nothing more. A pause
  by the producer's consumer also pauses the slices; what is left of a held read when the connection
  is lost is dropped.
* ``write``/``writeSequence``: to the loop's transport; dropped once the connection is closing
  (``loseConnection``/``abortConnection`` called, or lost), where Twisted would still buffer them
  until its close.
* ``loseConnection``: stops reading, flushes what is buffered, then ``connectionLost`` with
  ``ConnectionDone``. ``abortConnection``: drops the buffer, ``connectionLost`` with
  ``ConnectionAborted`` on the next loop turn. Peer close: ``ConnectionDone``; a socket error:
  ``ConnectionLost``; a protocol callback that raised: the connection is aborted and its
  ``connectionLost`` gets that failure (logged rate-limited, ``EDG500``), as Twisted's reactor does.
  Nothing ever raises into the loop.
* half-close: a peer's EOF calls ``readConnectionLost`` of an ``IHalfCloseableProtocol`` and keeps
  the connection open for writing; any other protocol is closed (``ConnectionDone``) after what is
  buffered is flushed (Twisted drops that buffer). ``loseWriteConnection`` is the loop's ``write_eof``
  (later writes are dropped; ``writeConnectionLost`` of an ``IHalfCloseableProtocol`` is called at once).
* flow control: the loop's ``pause_writing``/``resume_writing`` (its write buffer above 64 KiB /
  back below 16 KiB on uvloop) pause and resume a registered streaming producer; a pull producer
  (``streaming=False``) is asked for more on the next loop turn after each of its writes while the
  buffer is below the mark. ``pauseProducing``/``resumeProducing`` (shaping, twisted.web) are the
  loop's ``pause_reading``/``resume_reading``; ``stopProducing`` is ``loseConnection``.
* the peer and local addresses are the socket's, read once; ``TCP_NODELAY`` is on (the loop's
  default, which Twisted leaves off); ``setTcpNoDelay``/``setTcpKeepAlive`` set the socket options.

:class:`NativeTCPPort` binds (``SO_REUSEADDR``; ``SO_REUSEPORT`` on the addresses worker processes
share, :func:`~mcs_edge.tx.ops.workers.reuse_port_for`) and listens with the given backlog inside
``startListening``, so a busy address raises ``CannotListenError`` there as with ``listenTCP``; the
loop starts accepting when its ``create_server`` task runs (connections wait in the backlog until
then). ``stopListening`` closes the listening socket (live connections stay, as with Twisted) and
returns a Deferred fired on the next loop turn. The port's live connections are kept so that at
reactor shutdown they get ``connectionLost`` (``ConnectionLost``), as Twisted's ``disconnectAll``
gives its own.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from twisted.application import internet
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import (
    CannotListenError,
    ConnectionAborted,
    ConnectionDone,
    ConnectionLost,
)
from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableProtocol,
    IListeningPort,
    IPushProducer,
    ISystemHandle,
    ITCPTransport,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mcs_edge.tx.ops.logs import RateLimitedLog
from mcs_edge.tx.ops.workers import reuse_port_for
from mcs_edge.tx.relay_endpoint import asyncio_loop_of

__all__ = ["NativeTCPPort", "StreamTransport", "listen_tcp", "native_tcp", "tcp_server"]

#: Twisted's ``listenTCP`` default, the backlog every listener has used so far.
BACKLOG = 50

_log = Logger(namespace="mcs_edge.tx.native_stream")
#: a protocol callback that raised: at most 5 lines per 10 s per callback name
_failures = RateLimitedLog(_log, burst=5, window=10.0)

Address = IPv4Address | IPv6Address


def _address(addr: Any) -> Address:
    """A socket address tuple as Twisted's TCP address (``(host, port[, flowinfo, scope_id])``)."""
    if len(addr) == 2:
        return IPv4Address("TCP", addr[0], addr[1])
    return IPv6Address("TCP", *addr)


def native_tcp(reactor: Any) -> bool:
    """True when :func:`listen_tcp` serves with the loop's native streams on this reactor."""
    return asyncio_loop_of(reactor) is not None


#: A read of at least this many bytes ends the connection's reading for the current loop turn.
READ_TURN = 16 * 1024


def listen_tcp(reactor: Any, port: int, factory: Any, backlog: int = BACKLOG, interface: str = "") -> Any:
    """``reactor.listenTCP`` with the asyncio loop's native streams where the reactor has one.

    Raises ``CannotListenError`` when the address cannot be bound (both paths)."""
    loop = asyncio_loop_of(reactor)
    if loop is None:
        return reactor.listenTCP(port, factory, backlog, interface)
    listening = NativeTCPPort(
        reactor, loop, port, factory, backlog, interface, reuse_port_for(reactor, interface, port)
    )
    listening.startListening()
    return listening


class _Listening:
    """What ``internet.TCPServer`` calls ``listenTCP`` on: :func:`listen_tcp` on ``reactor``."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def listenTCP(self, port: int, factory: Any, backlog: int = BACKLOG, interface: str = "") -> Any:  # noqa: N802
        return listen_tcp(self.reactor, port, factory, backlog, interface)


def tcp_server(
    port: int, factory: Any, *, interface: str, reactor: Any, backlog: int = BACKLOG
) -> internet.TCPServer:
    """An ``internet.TCPServer`` (a service child; drain and bound-port notes see it as before)
    whose port is :func:`listen_tcp`'s."""
    return internet.TCPServer(port, factory, backlog, interface=interface, reactor=_Listening(reactor))


def _bind(host: str, port: int, backlog: int, reuse_port: bool) -> socket.socket:
    """A listening non-blocking TCP socket on ``host:port`` (``SO_REUSEADDR`` as Twisted sets it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setblocking(False)
        sock.bind((host or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


@implementer(IListeningPort)
class NativeTCPPort:
    """A listening TCP socket served by the asyncio loop (see the module docstring)."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        loop: asyncio.AbstractEventLoop,
        port: int,
        factory: Any,
        backlog: int = BACKLOG,
        interface: str = "",
        reuse_port: bool = False,
    ) -> None:
        self.reactor = reactor
        self.loop = loop
        self.port = port
        self.factory = factory
        self.backlog = backlog
        self.interface = interface
        self.reuse_port = reuse_port
        #: the live connections accepted on this port (closed at reactor shutdown)
        self.connections: set[StreamTransport] = set()
        self.listening = False
        self._address: Address | None = None
        self._sock: socket.socket | None = None
        self._server: asyncio.AbstractServer | None = None
        self._task: asyncio.Future[Any] | None = None
        self._trigger: Any = None
        self._stop_waiters: list[Deferred[None]] = []  # stopped before the loop served the socket

    def __repr__(self) -> str:
        return f"<NativeTCPPort {self.factory.__class__.__name__} on {self._address or self.port}>"

    def startListening(self) -> None:  # noqa: N802
        """Bind and listen now (``CannotListenError``); the loop accepts once its server task ran."""
        try:
            sock = _bind(self.interface, self.port, self.backlog, self.reuse_port)
        except OSError as exc:
            raise CannotListenError(self.interface, self.port, exc) from exc
        self._sock = sock
        self._address = _address(sock.getsockname())
        self.listening = True
        self.factory.doStart()
        task = asyncio.ensure_future(
            self.loop.create_server(self._accepted, sock=sock, backlog=self.backlog), loop=self.loop
        )
        self._task = task
        task.add_done_callback(self._served)
        if self._trigger is None:
            self._trigger = self.reactor.addSystemEventTrigger("during", "shutdown", self._shutdown)

    def _accepted(self) -> StreamTransport:
        return StreamTransport(self)

    def _served(self, task: asyncio.Future[Any]) -> None:
        self._task = None
        sock, self._sock = self._sock, None
        if task.cancelled() or task.exception() is not None:
            if not task.cancelled():
                self.log.error(
                    "EDG501 {port}: the loop could not serve the listening socket: {error}",
                    port=str(self._address),
                    error=str(task.exception()),
                )
            if sock is not None:
                sock.close()
        elif self.listening:
            self._server = task.result()
            return
        else:  # stopped while the loop was creating its server
            task.result().close()
        waiters, self._stop_waiters = self._stop_waiters, []
        for d in waiters:
            d.callback(None)

    def stopListening(self) -> Deferred[None]:  # noqa: N802
        """Stop accepting (connections stay); the Deferred fires once the listening socket is
        closed: on the next loop turn, or when the loop's server, still being created, is closed."""
        if not self.listening:
            return succeed(None)
        self.listening = False
        server, self._server = self._server, None
        self.factory.doStop()
        if not self.connections:
            self._remove_trigger()
        d: Deferred[None] = Deferred()
        if server is not None:
            server.close()
            self.loop.call_soon(d.callback, None)
        else:  # not cancelled: the standard loop's create_server may already serve, then yield once
            self._stop_waiters.append(d)
        return d

    loseConnection = stopListening  # Twisted ports have both names

    def getHost(self) -> Address:  # noqa: N802
        assert self._address is not None, "getHost before startListening"
        return self._address

    def lost(self, conn: StreamTransport) -> None:
        """A connection of this port is gone."""
        self.connections.discard(conn)
        if not self.listening and not self.connections:
            self._remove_trigger()

    def _remove_trigger(self) -> None:
        trigger, self._trigger = self._trigger, None
        if trigger is not None:
            try:
                self.reactor.removeSystemEventTrigger(trigger)
            except (ValueError, KeyError):  # already fired
                pass

    def _shutdown(self) -> None:
        """Reactor shutdown: every live connection is lost now (Twisted's ``disconnectAll``)."""
        self._trigger = None
        if self.listening:
            self.stopListening()
        for conn in list(self.connections):
            conn.lose_now(Failure(ConnectionLost("reactor shutdown")))


@implementer(ITCPTransport, IConsumer, IPushProducer, ISystemHandle)
class StreamTransport(asyncio.Protocol):
    """One accepted connection: the loop's protocol and the Twisted protocol's transport."""

    __slots__ = (
        "_aborted",
        "_held",
        "_paused",
        "_peer",
        "_pending",
        "_port",
        "_producer",
        "_pulling",
        "_reason",
        "_stepping",
        "_streaming",
        "_transport",
        "_writable",
        "_write_paused",
        "connected",
        "disconnected",
        "disconnecting",
        "protocol",
    )

    def __init__(self, port: NativeTCPPort) -> None:
        self._port = port
        self._transport: Any = None
        self._peer: Address | None = None
        self._producer: Any = None
        self._streaming = True
        self._write_paused = False
        self._writable = False  # until the protocol is built; False again once closing
        self._pulling = False
        self._aborted = False
        self._paused = False  # reading paused by the producer's consumer (shaping, twisted.web)
        self._held = False  # reading paused while a large read is handed on, READ_TURN bytes a turn
        self._pending: memoryview | None = None  # what is left of that read
        self._stepping = False  # the next slice is scheduled
        self._reason: Failure | None = None
        #: the Twisted protocol (settable: a hand-over replaces it, as with Twisted's transports)
        self.protocol: Any = None
        self.connected = False
        self.disconnecting = False
        self.disconnected = False

    def __repr__(self) -> str:
        return f"<StreamTransport {self.protocol.__class__.__name__} from {self._peer}>"

    # -- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:  # uvloop's is no asyncio.Transport subclass
        self._transport = transport
        port = self._port
        peername = transport.get_extra_info("peername")
        if peername is None:  # reset by the peer before we got to it: nothing to serve
            self.disconnecting = self.disconnected = True
            transport.abort()
            return
        try:
            self._peer = peer = _address(peername)
            protocol = port.factory.buildProtocol(peer)
        except Exception:
            self._fail("buildProtocol")
            return
        if protocol is None:  # refused (the guard): closed at once, nothing read
            self.disconnecting = self.disconnected = True
            transport.abort()
            return
        self.protocol = protocol
        self.connected = self._writable = True
        port.connections.add(self)
        try:
            protocol.makeConnection(self)
        except Exception:
            self._fail("connectionMade")

    def data_received(self, data: bytes) -> None:
        if len(data) < READ_TURN:
            try:
                self.protocol.dataReceived(data)
            except Exception:
                self._fail("dataReceived")
            return
        # A large read: more is likely waiting, and libuv reads up to 256 KiB at once and reads this
        # socket again (up to 32 times) before any other descriptor of this turn. Under load one
        # busy connection would then hold the PBX's answers, the load probe and every other client
        # back: hand on READ_TURN bytes per loop turn, reading paused until the last is handed on.
        self._pending = memoryview(data)
        if not self._held:
            self._held = True
            transport = self._transport
            if transport is not None and not self.disconnected:
                transport.pause_reading()
        self._step()

    def _step(self) -> None:
        """Hand on one READ_TURN slice of the held read, the next one on the next loop turn; the
        turn after the last slice, reading resumes (unless the consumer paused it)."""
        self._stepping = False
        if self.disconnected:
            self._pending = None
            return
        pending = self._pending
        if pending is None:
            self._held = False
            transport = self._transport
            if transport is not None and not self._paused:
                transport.resume_reading()
            return
        if self._paused:
            return  # resumeProducing continues
        rest = pending[READ_TURN:]
        self._pending = rest if len(rest) else None
        try:
            self.protocol.dataReceived(bytes(pending[:READ_TURN]))
        except Exception:
            self._fail("dataReceived")
            return
        if not self.disconnected and not self._stepping:
            self._stepping = True
            self._port.loop.call_soon(self._step)

    def eof_received(self) -> bool:
        protocol = self.protocol
        if protocol is not None and IHalfCloseableProtocol.providedBy(protocol):
            try:
                protocol.readConnectionLost()
            except Exception:
                self._fail("readConnectionLost")
                return False
            return True
        self.disconnecting = True  # the loop closes the transport after flushing its buffer
        self._writable = False
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.disconnected:
            self._transport = None
            return
        reason = self._reason
        if reason is None:
            if self._aborted:
                reason = Failure(ConnectionAborted())
            elif exc is None:
                reason = Failure(ConnectionDone())
            else:
                reason = Failure(ConnectionLost(str(exc) or exc.__class__.__name__))
        self._lost(reason)

    def pause_writing(self) -> None:
        self._write_paused = True
        producer = self._producer
        if producer is not None and self._streaming:
            try:
                producer.pauseProducing()
            except Exception:
                self._fail("pauseProducing")

    def resume_writing(self) -> None:
        self._write_paused = False
        producer = self._producer
        if producer is None:
            return
        if not self._streaming:
            self._pull_soon()
            return
        try:
            producer.resumeProducing()
        except Exception:
            self._fail("resumeProducing")

    # -- the end of a connection ---------------------------------------------------------------
    def _fail(self, where: str) -> None:
        """A protocol callback raised: log it (rate-limited), abort, report that failure."""
        failure = Failure()
        self._report(where, failure)
        if self._reason is None:
            self._reason = failure
        self._close(abort=True)

    def _close(self, *, abort: bool) -> None:
        self.disconnecting = True
        self._writable = False
        transport = self._transport
        if self.disconnected or transport is None:
            return
        if abort:
            self._aborted = True
            transport.abort()
        else:
            transport.close()

    def lose_now(self, reason: Failure) -> None:
        """Reactor shutdown: abort and report ``reason`` at once (the loop may not turn again)."""
        if self.disconnected:
            return
        self._close(abort=True)
        self._lost(reason)

    def _lost(self, reason: Failure) -> None:
        self.connected = self._writable = False
        self.disconnecting = True
        self.disconnected = True
        self._port.lost(self)
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.stopProducing()
            except Exception:
                self._report("stopProducing", Failure())
        protocol, self.protocol = self.protocol, None  # no cycle left through the transport
        if protocol is not None:
            try:
                protocol.connectionLost(reason)
            except Exception:
                self._report("connectionLost", Failure())

    def _report(self, where: str, failure: Failure) -> None:
        if _failures.allow(f"EDG500 {where}"):
            _log.failure(
                "EDG500 {where} raised on a connection from {peer}",
                failure,
                where=where,
                peer=str(self._peer),
            )

    # -- ITransport ------------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if not self._writable:
            return
        self._transport.write(data)
        if self._producer is not None and not self._streaming:
            self._pull_soon()

    def writeSequence(self, data: Any) -> None:  # noqa: N802
        if not self._writable:
            return
        self._transport.writelines(data)
        if self._producer is not None and not self._streaming:
            self._pull_soon()

    def loseConnection(self) -> None:  # noqa: N802
        """Stop reading, flush what is buffered, then close (``ConnectionDone``)."""
        if not self.disconnecting:
            self._close(abort=False)

    def abortConnection(self) -> None:  # noqa: N802
        """Close now, dropping what is buffered (``ConnectionAborted``)."""
        if not self.disconnected and not self._aborted:
            self._close(abort=True)

    def loseWriteConnection(self) -> None:  # noqa: N802
        """Half-close: send FIN after what is buffered; reading goes on. An ``IHalfCloseableProtocol``
        gets ``writeConnectionLost`` at once (Twisted calls it once the FIN is sent)."""
        transport = self._transport
        if not self._writable or transport is None or transport.is_closing():
            return
        self._writable = False  # no more writes; loseConnection still closes
        transport.write_eof()
        protocol = self.protocol
        if protocol is not None and IHalfCloseableProtocol.providedBy(protocol):
            try:
                protocol.writeConnectionLost()
            except Exception:
                self._fail("writeConnectionLost")

    def getPeer(self) -> Address:  # noqa: N802
        assert self._peer is not None
        return self._peer

    def getHost(self) -> Address:  # noqa: N802
        transport = self._transport
        sockname = transport.get_extra_info("sockname") if transport is not None else None
        return _address(sockname) if sockname is not None else self._port.getHost()

    def getHandle(self) -> Any:  # noqa: N802
        """The socket (the loop's socket object), or None once closed."""
        transport = self._transport
        return transport.get_extra_info("socket") if transport is not None else None

    def logPrefix(self) -> str:  # noqa: N802
        return self.protocol.__class__.__name__ if self.protocol is not None else "StreamTransport"

    def _sockopt(self, level: int, name: int, value: int | None = None) -> int:
        sock = self.getHandle()
        if sock is None:
            return 0
        if value is None:
            return int(sock.getsockopt(level, name))
        try:
            sock.setsockopt(level, name, value)
        except OSError:  # the connection is going away
            pass
        return value

    def getTcpNoDelay(self) -> bool:  # noqa: N802
        return bool(self._sockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    def setTcpNoDelay(self, enabled: bool) -> None:  # noqa: N802
        self._sockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(enabled))

    def getTcpKeepAlive(self) -> bool:  # noqa: N802
        return bool(self._sockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))

    def setTcpKeepAlive(self, enabled: bool) -> None:  # noqa: N802
        self._sockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, int(enabled))

    # -- IConsumer -------------------------------------------------------------------------------
    def registerProducer(self, producer: Any, streaming: bool) -> None:  # noqa: N802
        if self._producer is not None:
            raise RuntimeError(
                f"Cannot register producer {producer}, because producer {self._producer} was never unregistered."
            )
        if self.disconnected:
            producer.stopProducing()
            return
        self._producer = producer
        self._streaming = bool(streaming)
        if not streaming:
            self._pull_soon()
        elif self._write_paused:
            producer.pauseProducing()

    def unregisterProducer(self) -> None:  # noqa: N802
        self._producer = None

    def _pull_soon(self) -> None:
        if not self._pulling and not self._write_paused:
            self._pulling = True
            self._port.loop.call_soon(self._pull)

    def _pull(self) -> None:
        """A pull producer's turn: asked for more while the write buffer is below its mark."""
        self._pulling = False
        producer = self._producer
        if producer is None or self._streaming or self._write_paused or not self._writable:
            return
        try:
            producer.resumeProducing()
        except Exception:
            self._fail("resumeProducing")

    # -- IPushProducer (reading) ---------------------------------------------------------------
    def pauseProducing(self) -> None:  # noqa: N802
        self._paused = True
        transport = self._transport
        if transport is not None and not self.disconnected:
            transport.pause_reading()

    def resumeProducing(self) -> None:  # noqa: N802
        self._paused = False
        transport = self._transport
        if transport is None or self.disconnected:
            return
        if not self._held:
            transport.resume_reading()
        elif not self._stepping:  # a held read paused midway: go on with it next turn
            self._stepping = True
            self._port.loop.call_soon(self._step)

    def stopProducing(self) -> None:  # noqa: N802
        self.loseConnection()
