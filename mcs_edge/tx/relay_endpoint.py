"""Relay endpoints: the UDP sockets of the media relay and of TURN, bound one way.

In: ``open(host, port, received)``. Out: a :class:`RelayEndpoint` whose socket is bound before
``open`` returns (a busy port raises at once, so the caller can try another before an SDP or an
XOR-RELAYED-ADDRESS names it), whose datagrams go to ``received(data, addr)``, and whose
``sendto(data, addr)`` works at once and never raises (errors go to ``on_error``).

Theory of operation
-------------------
On Twisted's asyncio reactor (uvloop in production) the socket becomes a native datagram endpoint
of the loop (``loop.create_datagram_endpoint(sock=...)``): the loop calls ``received`` itself, one
Python call per datagram, and the transport's ``sendto`` (a C method on uvloop) is handed to the
owner through ``on_ready`` so the hot path calls it directly. Creating the endpoint is a task: until
it completes, ``sendto`` writes on the bound socket (uvloop reads several datagrams per wake-up
before running ready callbacks, so a quick peer can be answered before the endpoint exists). The
pending tasks are kept in :class:`RelayEndpoints` (a task nobody references can be collected) and
cancelled by :meth:`RelayEndpoints.close`. On any other reactor the socket is Twisted's
``listenUDP`` with the same ``received`` (slower, same behaviour).

With ``open_fast`` (the media relay when ``media.offload`` allows it and the C module
``mcs_edge._fastfwd`` is built) the socket is instead read by a :class:`mcs_edge._fastfwd.Port`
registered with ``loop.add_reader``: the loop calls C, which reads a batch with ``recvmmsg``,
forwards the datagrams its rule takes (core/media/offload.py) and hands every other one to
``received(data, addr)``; ``sendto`` is the Port's (C, ``sendto(2)``, errors to ``on_error``).
Closing removes the reader, frees the rule and closes the socket.

``reuse_port`` sets ``SO_REUSEADDR`` + ``SO_REUSEPORT`` before binding: the listeners that worker
processes share (``edge.workers``, :mod:`mcs_edge.tx.ops.workers`).

Failures: ``OSError`` (or Twisted's ``CannotListenError``) from ``open`` when the port cannot be
bound; ``on_failed(exc)`` when the loop could not create the endpoint (the socket is closed); send
errors and ICMP errors reported by the loop call ``on_error("send")`` / ``on_error("icmp")``.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet.error import MessageLengthError
from twisted.internet.protocol import DatagramProtocol

try:
    import mcs_edge._fastfwd as _fastfwd
except ImportError:  # the optional extension was not built: the Python path only
    _fastfwd = None  # type: ignore[assignment]

__all__ = [
    "Received",
    "RelayEndpoint",
    "RelayEndpoints",
    "asyncio_loop_of",
    "bind_socket",
    "fastfwd",
]

Received = Callable[[bytes, Any], Any]
Sendto = Callable[[bytes, Any], None]


def fastfwd() -> Any:
    """The C module ``mcs_edge._fastfwd``, or None when it was not built."""
    return _fastfwd


def asyncio_loop_of(reactor: Any) -> asyncio.AbstractEventLoop | None:
    """The asyncio loop under Twisted's asyncio reactor (uvloop in production), or None on other reactors."""
    loop = getattr(reactor, "_asyncioEventloop", None)
    return loop if isinstance(loop, asyncio.AbstractEventLoop) else None


_NONBLOCK: int = getattr(socket, "SOCK_NONBLOCK", 0)


def bind_socket(
    host: str, port: int, kind: int = socket.SOCK_DGRAM, *, reuse_port: bool = False
) -> socket.socket:
    """A non-blocking socket bound to ``host:port`` (``SO_REUSEPORT`` when ``reuse_port``); raises OSError."""
    # non-blocking from its creation (one system call less than setblocking, per relay port)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind | _NONBLOCK)
    try:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if not _NONBLOCK:
            sock.setblocking(False)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _ignore(_kind: str) -> None:
    return None


class RelayEndpoint:
    """One bound UDP socket: datagrams to ``received``; ``sendto`` at once (see the module docstring)."""

    __slots__ = (
        "_loop",
        "_on_ready",
        "_sock",
        "_twisted",
        "closed",
        "fast",
        "on_error",
        "port",
        "sendto",
        "transport",
    )

    def __init__(self, on_error: Callable[[str], None]) -> None:
        #: the bound port (the one asked for, or the kernel's choice for port 0)
        self.port = 0
        self.closed = False
        self.on_error = on_error
        #: the asyncio transport once the loop's endpoint exists (None before, and on other reactors)
        self.transport: asyncio.DatagramTransport | None = None
        self._sock: socket.socket | None = None
        self._twisted: Any = None
        self._on_ready: Callable[[Sendto], None] | None = None
        self.sendto: Sendto = self._send_socket
        #: the C reader of the socket (``open_fast``), None otherwise
        self.fast: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def native(self) -> bool:
        """True once the socket is a native datagram endpoint of the asyncio loop."""
        return self.transport is not None

    def listen_twisted(self, reactor: Any, host: str, port: int, received: Received) -> None:
        """Twisted's ``listenUDP`` (raises ``CannotListenError``)."""
        self._twisted = reactor.listenUDP(port, _Twisted(received), interface=host)
        self.port = self._twisted.getHost().port
        self.sendto = self._send_twisted

    def listen_native(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        received: Received,
        on_ready: Callable[[Sendto], None] | None,
        on_failed: Callable[[BaseException], None] | None,
    ) -> asyncio.Future[Any]:
        """Make the bound ``sock`` a datagram endpoint of ``loop``; returns the creating task."""
        self._sock = sock
        self.port = sock.getsockname()[1]
        self._on_ready = on_ready
        proto = _Native(self, received)
        task = asyncio.ensure_future(loop.create_datagram_endpoint(lambda: proto, sock=sock), loop=loop)
        task.add_done_callback(lambda t: self._created(t, on_failed))
        return task

    def listen_fast(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        received: Received,
        tally: Any,
        port: int = 0,
    ) -> None:
        """Read the bound ``sock`` with a C Port registered as the loop's reader of its fd
        (``port``: the port it was bound to, when not 0: no system call to ask it)."""
        if not port:
            port = sock.getsockname()[1]  # before the reader exists: nothing can fail after it
        fast = _fastfwd.Port(sock.fileno(), received, self.on_error, None, tally)
        loop.add_reader(sock.fileno(), fast)
        self._sock = sock
        self._loop = loop
        self.fast = fast
        self.port = port
        self.sendto = fast.sendto

    def ready(self, transport: asyncio.DatagramTransport) -> None:
        """The loop's endpoint exists (its protocol's ``connection_made``)."""
        self._sock = None  # owned by the transport now
        if self.closed:
            transport.close()
            return
        self.transport = transport
        self.sendto = transport.sendto
        on_ready, self._on_ready = self._on_ready, None
        if on_ready is not None:
            on_ready(transport.sendto)

    def _created(self, task: asyncio.Future[Any], on_failed: Callable[[BaseException], None] | None) -> None:
        failed = task.cancelled() or task.exception() is not None
        if failed:
            if not task.cancelled() and not self.closed and on_failed is not None:
                on_failed(task.exception())  # type: ignore[arg-type]
            self.sendto = _discard
        if self.transport is None and self._sock is not None and (failed or self.closed):
            self._sock.close()
            self._sock = None

    def _send_socket(self, data: bytes, addr: Any) -> None:
        """Before the loop's endpoint exists: write on the bound socket (a sender kept from then
        goes through the loop's transport once it owns the socket)."""
        sock = self._sock
        if sock is None or self.closed:
            transport = self.transport
            if transport is not None and not self.closed:
                transport.sendto(data, addr)
            return
        try:
            sock.sendto(data, addr)
        except OSError:
            self.on_error("send")

    def _send_twisted(self, data: bytes, addr: Any) -> None:
        """Twisted's ``write`` raises on some socket errors: counted here, never raised into the reactor."""
        port = self._twisted
        if port is None:
            return
        try:
            port.write(data, addr)
        except (OSError, MessageLengthError):
            self.on_error("send")

    def close(self) -> Any:
        """Close the socket (one whose endpoint is still being created closes when the task ends);
        returns ``listenUDP``'s ``stopListening`` Deferred on Twisted's reactors, else None."""
        self.closed = True
        self.sendto = _discard
        fast, self.fast = self.fast, None
        if fast is not None:
            sock, self._sock = self._sock, None
            loop, self._loop = self._loop, None
            if sock is not None:
                if loop is not None and not loop.is_closed():
                    loop.remove_reader(sock.fileno())
                fast.close()  # the rule is freed, the fd forgotten before the socket closes
                sock.close()
            return None
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        port, self._twisted = self._twisted, None
        return port.stopListening() if port is not None else None


def _discard(_data: bytes, _addr: Any) -> None:
    return None


class _Native(asyncio.DatagramProtocol):
    """The loop's protocol: ``datagram_received`` *is* the owner's handler (no extra frame)."""

    def __init__(self, endpoint: RelayEndpoint, received: Received) -> None:
        self.endpoint = endpoint
        self.datagram_received = received  # type: ignore[method-assign,assignment]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.endpoint.ready(transport)  # type: ignore[arg-type]

    def error_received(self, exc: Exception) -> None:
        self.endpoint.on_error("icmp")  # e.g. ICMP unreachable from a gone peer: counted, nothing else

    def connection_lost(self, exc: Exception | None) -> None:
        return None


class _Twisted(DatagramProtocol):
    """``listenUDP``'s protocol: ``datagramReceived`` *is* the owner's handler."""

    noisy = False

    def __init__(self, received: Received) -> None:
        self.datagramReceived = received  # type: ignore[method-assign,assignment]


class RelayEndpoints:
    """Opens relay endpoints on one reactor and keeps the loop's pending endpoint tasks."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.loop = asyncio_loop_of(reactor)
        self._tasks: set[asyncio.Future[Any]] = set()

    @property
    def native(self) -> bool:
        """True when endpoints are native datagram endpoints of the asyncio loop (uvloop)."""
        return self.loop is not None

    def open(
        self,
        host: str,
        port: int,
        received: Received,
        *,
        on_ready: Callable[[Sendto], None] | None = None,
        on_error: Callable[[str], None] = _ignore,
        on_failed: Callable[[BaseException], None] | None = None,
        reuse_port: bool = False,
    ) -> RelayEndpoint:
        """Bind ``host:port`` now (raises ``OSError``/``CannotListenError``) and deliver its datagrams
        to ``received``; ``on_ready(sendto)`` when the loop's faster ``sendto`` is available."""
        endpoint = RelayEndpoint(on_error)
        loop = self.loop
        if loop is None:
            # SO_REUSEPORT here comes from the workers' reactor, whose listenUDP sets it on shared addresses
            endpoint.listen_twisted(self.reactor, host, port, received)
            if on_ready is not None:
                on_ready(endpoint.sendto)
            return endpoint
        sock = bind_socket(host, port, reuse_port=reuse_port)
        task = endpoint.listen_native(loop, sock, received, on_ready, on_failed)
        if on_ready is not None and not endpoint.native:
            # until the loop's endpoint exists the owner sends on the bound socket (a TURN client's
            # first ChannelData can arrive before it); on_ready is called again with the loop's sendto
            on_ready(endpoint.sendto)
        if not task.done():
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return endpoint

    @property
    def can_offload(self) -> bool:
        """True when ``open_fast`` is available: the asyncio loop and the built C module."""
        return self.loop is not None and _fastfwd is not None

    def open_fast(
        self,
        host: str,
        port: int,
        received: Received,
        *,
        on_error: Callable[[str], None] = _ignore,
        tally: Any = None,
        reuse_port: bool = False,
    ) -> RelayEndpoint:
        """Bind ``host:port`` now (raises ``OSError``) and read it with a C Port (``can_offload``
        must be True): datagrams its rule does not take go to ``received``; ``endpoint.fast`` is the
        Port, ``endpoint.sendto`` its ``sendto``."""
        loop = self.loop
        if loop is None or _fastfwd is None:
            raise RuntimeError("open_fast needs the asyncio reactor and the built mcs_edge._fastfwd")
        endpoint = RelayEndpoint(on_error)
        sock = bind_socket(host, port, reuse_port=reuse_port)
        try:
            endpoint.listen_fast(loop, sock, received, tally, port)
        except BaseException:
            sock.close()
            raise
        return endpoint

    def close(self) -> None:
        """Shutdown: cancel the endpoints still being created (their sockets close)."""
        for task in list(self._tasks):
            task.cancel()
