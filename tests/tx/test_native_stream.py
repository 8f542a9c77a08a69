"""tx/native_stream.py: Twisted protocols over the asyncio loop's native TCP streams, on loopback.

Each test runs a real loop (uvloop, as in production, and the standard library's selector loop, as
under ``pytest --reactor=asyncio``) in a thread of its own, with a real client socket. The reactor
handed to the port is a stand-in for its shutdown triggers only.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import CannotListenError, ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableProtocol,
    IListeningPort,
    IPushProducer,
    ISystemHandle,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mcs_edge.tx import native_stream
from mcs_edge.tx.native_stream import NativeTCPPort, StreamTransport, listen_tcp

LOOPS = {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}
BIG = 4 * 1024 * 1024


class Triggers:
    """The reactor as the port sees it: system event triggers (fired by hand)."""

    def __init__(self) -> None:
        self.triggers: dict[int, Callable[[], None]] = {}

    def addSystemEventTrigger(self, phase: str, event: str, fn: Callable[[], None]) -> int:
        assert (phase, event) == ("during", "shutdown")
        key = len(self.triggers) + 1000
        self.triggers[key] = fn
        return key

    def removeSystemEventTrigger(self, key: int) -> None:
        del self.triggers[key]

    def shutdown(self) -> None:
        for key in list(self.triggers):
            self.triggers.pop(key)()


@pytest.fixture(params=sorted(LOOPS))
def loop_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def run(
    kind: str, scenario: Callable[[asyncio.AbstractEventLoop], Awaitable[Any]], timeout: float = 20
) -> Any:
    """Run ``scenario(loop)`` on a fresh loop of ``kind`` in a thread; its result or its exception."""
    box: dict[str, Any] = {}

    def main() -> None:
        loop = LOOPS[kind]()
        errors: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        try:
            box["result"] = loop.run_until_complete(asyncio.wait_for(scenario(loop), timeout))
            assert not errors, f"the loop's exception handler was called: {errors}"
        except BaseException as exc:
            box["error"] = exc
        finally:
            loop.close()

    t = threading.Thread(target=main)
    t.start()
    t.join(timeout + 5)
    assert not t.is_alive(), "scenario did not end"
    if "error" in box:
        raise box["error"]
    return box.get("result")


class Recorder(Protocol):
    """Records what a connection sees; ``on_made``/``on_data`` let a test act."""

    def __init__(self) -> None:
        self.data = b""
        self.lost: Failure | None = None
        self.done: asyncio.Future[Failure] | None = None
        self.on_made: Callable[[Recorder], None] | None = None
        self.on_data: Callable[[Recorder, bytes], None] | None = None

    def connectionMade(self) -> None:
        if self.on_made is not None:
            self.on_made(self)

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if self.on_data is not None:
            self.on_data(self, data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost = reason
        if self.done is not None and not self.done.done():
            self.done.set_result(reason)


class Recording(Factory):
    """Builds :class:`Recorder` protocols, noting the address each was built for."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, proto: type[Recorder] = Recorder, **hooks: Any
    ) -> None:
        self.loop = loop
        self.proto = proto
        self.hooks = hooks
        self.built: list[Recorder] = []
        self.addresses: list[Any] = []
        self.made: asyncio.Future[Recorder] = loop.create_future()
        self.started = self.stopped = 0

    def startFactory(self) -> None:
        self.started += 1

    def stopFactory(self) -> None:
        self.stopped += 1

    def buildProtocol(self, addr: Any) -> Recorder:
        self.addresses.append(addr)
        p = self.proto()
        p.factory = self
        p.done = self.loop.create_future()
        for name, fn in self.hooks.items():
            setattr(p, name, fn)
        self.built.append(p)
        if not self.made.done():
            self.made.set_result(p)
        return p


def listen(loop: asyncio.AbstractEventLoop, factory: Any, reactor: Any = None, **kw: Any) -> NativeTCPPort:
    port = NativeTCPPort(
        reactor or Triggers(), loop, 0, factory, interface=kw.pop("interface", "127.0.0.1"), **kw
    )
    port.startListening()
    return port


async def connect(loop: asyncio.AbstractEventLoop, port: NativeTCPPort) -> socket.socket:
    host = port.getHost()
    family = socket.AF_INET6 if isinstance(host, IPv6Address) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    await loop.sock_connect(sock, (host.host, host.port))
    return sock


async def read_all(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    out = bytearray()
    while True:
        chunk = await loop.sock_recv(sock, 1 << 16)
        if not chunk:
            return bytes(out)
        out += chunk


async def until(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.005)):
        if cond():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


# -- tests --------------------------------------------------------------------------------------------
def test_transport_and_port_provide_the_twisted_interfaces(loop_kind: str) -> None:
    """The connection's transport verifies as ITCPTransport/IConsumer/IPushProducer/ISystemHandle, the port as IListeningPort."""

    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        factory = Recording(loop)
        port = listen(loop, factory)
        assert verifyObject(IListeningPort, port)
        sock = await connect(loop, port)
        proto = await factory.made
        for iface in (ITCPTransport, IConsumer, IPushProducer, ISystemHandle):
            assert verifyObject(iface, proto.transport)
        assert isinstance(proto.transport, StreamTransport)
        sock.close()
        await proto.done
        await port.stopListening().asFuture(loop)

    run(loop_kind, scenario)


def test_echo_with_the_peer_address_given_at_accept(loop_kind: str) -> None:
    """buildProtocol gets the client's IPv4Address (TCP) before any data; writes reach the client; getHost is the listener's."""

    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        factory = Recording(loop, on_data=lambda p, d: p.transport.write(d.upper()))
        port = listen(loop, factory)
        assert factory.started == 1
        sock = await connect(loop, port)
        proto = await factory.made
        assert proto.data == b""  # built before anything was read
        assert factory.addresses == [IPv4Address("TCP", "127.0.0.1", sock.getsockname()[1])]
        assert proto.transport.getPeer() == factory.addresses[0]
        assert proto.transport.getHost() == port.getHost()
        await loop.sock_sendall(sock, b"hello")
        assert await loop.sock_recv(sock, 100) == b"HELLO"
        proto.transport.writeSequence([b"a", b"b", b"c"])
        assert await loop.sock_recv(sock, 100) == b"abc"
        sock.close()
        reason = await proto.done
        assert reason.check(ConnectionDone)  # a peer's close is ConnectionDone, as with Twisted's TCP
        await port.stopListening().asFuture(loop)
        assert factory.stopped == 1

    run(loop_kind, scenario)


def test_ipv6_listener_gives_ipv6_addresses(loop_kind: str) -> None:
    """On '::1' the peer and host are IPv6Address('TCP', ...)."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6")

    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        factory = Recording(loop)
        try:
            port = listen(loop, factory, interface="::1")
        except CannotListenError:
            pytest.skip("no IPv6 loopback")
        sock = await connect(loop, port)
        proto = await factory.made
        peer = proto.transport.getPeer()
        assert isinstance(peer, IPv6Address) and peer.type == "TCP" and peer.host == "::1"
        assert peer.port == sock.getsockname()[1]
        assert isinstance(port.getHost(), IPv6Address)
        sock.close()
        await proto.done
        await port.stopListening().asFuture(loop)

    run(loop_kind, scenario)


def test_lose_connection_flushes_what_is_buffered_then_connection_done(loop_kind: str) -> None:
    """4 MiB written then loseConnection: the client reads every byte and then EOF; the reason is ConnectionDone; later writes are dropped."""

    def made(p: Recorder) -> None:
        p.transport.write(b"x" * BIG)
        p.transport.loseConnection()
        p.transport.write(b"dropped")

    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        factory = Recording(loop, on_made=made)
        port = listen(loop, factory)
        sock = await connect(loop, port)
        proto = await factory.made
        assert proto.transport.disconnecting
        data = await read_all(loop, sock)
        assert data == b"x" * BIG
        reason = await proto.done
        assert reason.check(ConnectionDone) and not reason.check(ConnectionAborted)
        assert proto.transport.disconnected and not proto.transport.connected
        assert port.connections == set()
        sock.close()
        await port.stopListening().asFuture(loop)

    run(loop_kind, scenario)


def test_abort_connection_drops_the_buffer_and_reports_connection_aborted(loop_kind: str) -> None:
    """abortConnection with 32 MiB unsent: the client gets less than that, the reason is ConnectionAborted, on a later loop turn."""

    def made(p: Recorder) -> None:
        p.transport.write(b"x" * (8 * BIG))
        p.transport.abortConnection()
        assert p.lost is None  # reported on a later turn, as Twisted does

    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        factory = Recording(loop, on_made=made)
        port = listen(loop, factory)
        sock = await connect(loop, port)
        proto = await factory.made
        reason = await proto.done
        assert reason.check(ConnectionAborted)
        try:
            data = await read_all(loop, sock)
        except ConnectionResetError:
            data = b""
        assert len(data) < 8 * BIG
        sock.close()
        await port.stopListening().asFuture(loop)

    run(loop_kind, scenario)


def test_peer_reset_is_connection_lost(loop_kind: str) -> None:
    """A client closing with RST (SO_LINGER 0) after sending: ConnectionLost, not ConnectionDone."""

    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        factory = Recording(loop)
        port = listen(loop, factory)
        sock = await connect(loop, port)
        proto = await factory.made
        proto.transport.write(b"unread by the client")
        await asyncio.sleep(0.05)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        reason = await proto.done
        assert reason.check(ConnectionLost) and not reason.check(ConnectionDone)
        await port.stopListening().asFuture(loop)

    run(loop_kind, scenario)


def test_refused_by_the_factory_closes_at_once(loop_kind: str) -> None:
    """buildProtocol returning None (the guard's refusal) closes the socket before reading; the next connection is served."""

    class Refusing(Recording):
        def buildProtocol(self, addr: Any) -> Any:
            if not self.addresses:
                self.addresses.append(addr)
                return None
            return super().buildProtocol(addr)

    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        factory = Refusing(loop, on_data=lambda p, d: p.transport.write(d))
        port = listen(loop, factory)
        first = await connect(loop, port)
        await loop.sock_sendall(first, b"never read")
        try:
            assert await read_all(loop, first) == b""
        except ConnectionResetError:
            pass  # closed with our bytes unread: RST
        assert factory.built == [] and port.connections == set()
        assert factory.addresses[0].host == "127.0.0.1"
        second = await connect(loop, port)
        proto = await factory.made
        await loop.sock_sendall(second, b"ok")
        assert await loop.sock_recv(second, 10) == b"ok"
        first.close()
        second.close()
        await proto.done
        await port.stopListening().asFuture(loop)

    run(loop_kind, scenario)


def test_guarded_factory_refuses_a_source_over_its_cap_before_tls(loop_kind: str) -> None:
    """The real GuardedFactory around a TLS factory: the second connection from 127.0.0.1 over guard.max_connections_per_ip=1 is closed unanswered."""
    from twisted.internet.task import Clock

    from mcs_edge import config as c
    from mcs_edge.tx.protect.guard import GuardedFactory, Protection
    from mcs_edge.tx.timers import Timers

    cfg = c.loads(
        '[listen]\nhttps = "127.0.0.1:0"\n[guard]\nmax_connections_per_ip = 1\n'
        '[[tenants]]\nid = "t"\ndomains = ["t.example.com"]\nbackend_sip = "udp:10.1.0.10:5060"\n'
    )
    protection = Protection(cfg, Timers(Clock()))

    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        inner = Recording(loop)
        port = listen(loop, GuardedFactory(inner, protection, "https"))
        first = await connect(loop, port)
        await inner.made
        second = await connect(loop, port)
        try:
            assert await read_all(loop, second) == b""
        except ConnectionResetError:
            pass
        assert len(inner.built) == 1
        first.close()
        await inner.built[0].done
        third = await connect(loop, port)  # the cap is free again
        await until(lambda: len(inner.built) == 2, "the third connection")
        second.close()
        third.close()
        await inner.built[1].done
        await port.stopListening().asFuture(loop)

    run(loop_kind, scenario)


def test_streaming_producer_is_paused_and_resumed_by_the_write_buffer(loop_kind: str) -> None:
    """A push producer writing 256 KiB per resume is paused when the client stops reading and resumed when it reads again."""

    @implementer(IPushProducer)
    class Pump:
        def __init__(self, transport: Any) -> None:
            self.transport = transport
            self.paused = 0
            self.resumed = 0
            self.stopped = 0
            self.sent = 0

        def pauseProducing(self) -> None:
            self.paused += 1

        def resumeProducing(self) -> None:
            self.resumed += 1
            self.fill()

        def stopProducing(self) -> None:
            self.stopped += 1

        def fill(self) -> None:
            for _ in range(8):
                self.transport.write(b"y" * 32768)
                self.sent += 32768

    pumps: list[Pump] = []

    def made(p: Recorder) -> None:
        pump = Pump(p.transport)
        pumps.append(pump)
        p.transport.registerProducer(pump, True)
        with pytest.raises(RuntimeError):
            p.transport.registerProducer(pump, True)
        pump.fill()

    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        factory = Recording(loop, on_made=made)
        port = listen(loop, factory)
        sock = await connect(loop, port)
        proto = await factory.made
        pump = pumps[0]
        while pump.paused == 0:  # the client reads nothing: the kernel buffers fill, then the loop's
            pump.fill()
            await asyncio.sleep(0)
        assert pump.resumed == 0
        received = 0
        while pump.resumed == 0:
            received += len(await loop.sock_recv(sock, 1 << 20))
        assert pump.resumed == 1
        proto.transport.unregisterProducer()
        proto.transport.loseConnection()
        received += len(await read_all(loop, sock))
        assert received == pump.sent
        assert pump.stopped == 0  # unregistered before the end
        sock.close()
        await proto.done
        await port.stopListening().asFuture(loop)

    run(loop_kind, scenario)


def test_producer_still_registered_at_the_end_is_stopped(loop_kind: str) -> None:
    """A producer registered when the connection is lost gets stopProducing before connectionLost; registering on a lost connection stops it at once."""
    order: list[str] = []

    @implementer(IPushProducer)
    class Noting:
        def pauseProducing(self) -> None:
            pass

        def resumeProducing(self) -> None:
            pass

        def stopProducing(self) -> None:
            order.append("stopProducing")

    class Lost(Recorder):
        def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
            order.append("connectionLost")
            super().connectionLost(reason)

    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        factory = Recording(loop, proto=Lost, on_made=lambda p: p.transport.registerProducer(Noting(), True))
        port = listen(loop, factory)
        sock = await connect(loop, port)
        proto = await factory.made
        transport = proto.transport
        sock.close()
        await proto.done
        assert order == ["stopProducing", "connectionLost"]
        transport.registerProducer(Noting(), True)
        assert order[-1] == "stopProducing"
        await port.stopListening().asFuture(loop)

    run(loop_kind, scenario)


def test_pull_producer_is_asked_for_each_chunk(loop_kind: str) -> None:
    """A pull producer (streaming=False) gets resumeProducing once per chunk until it unregisters: 64 chunks of 64 KiB arrive in order."""

    class Pull:
        def __init__(self, transport: Any) -> None:
            self.transport = transport
            self.left = 64

        def resumeProducing(self) -> None:
            if self.left == 0:
                self.transport.unregisterProducer()
                self.transport.loseConnection()
                return
            self.transport.write(bytes([self.left]) * 65536)
            self.left -= 1

        def stopProducing(self) -> None:
            pass

    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        factory = Recording(loop, on_made=lambda p: p.transport.registerProducer(Pull(p.transport), False))
        port = listen(loop, factory)
        sock = await connect(loop, port)
        proto = await factory.made
        data = await read_all(loop, sock)
        assert data == b"".join(bytes([n]) * 65536 for n in range(64, 0, -1))
        assert (await proto.done).check(ConnectionDone)
        sock.close()
        await port.stopListening().asFuture(loop)

    run(loop_kind, scenario)


def test_pause_producing_stops_reading_until_resumed(loop_kind: str) -> None:
    """pauseProducing (the shaper's) holds the client's bytes in the kernel; resumeProducing delivers them."""

    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        factory = Recording(loop)
        port = listen(loop, factory)
        sock = await connect(loop, port)
        proto = await factory.made
        proto.transport.pauseProducing()
        await loop.sock_sendall(sock, b"held")
        await asyncio.sleep(0.1)
        assert proto.data == b""
        proto.transport.resumeProducing()
        await until(lambda: proto.data == b"held", "the held bytes")
        proto.transport.stopProducing()  # = loseConnection
        assert (await proto.done).check(ConnectionDone)
        sock.close()
        await port.stopListening().asFuture(loop)

    run(loop_kind, scenario)


def test_a_full_read_ends_the_connections_reading_for_the_loop_turn(loop_kind: str) -> None:
    """With megabytes waiting on a connection, the loop reads it once per turn (a read of at least
    READ_TURN bytes holds it until the next turn), so other sockets are read in between; a pause
    asked for meanwhile survives the release."""

    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        turn = [0]
        reads: list[tuple[int, int]] = []  # (loop turn, bytes) per dataReceived

        def tick() -> None:
            turn[0] += 1
            if not stop.is_set():
                loop.call_soon(tick)

        stop = threading.Event()
        factory = Recording(loop, on_data=lambda p, d: reads.append((turn[0], len(d))))
        port = listen(loop, factory)
        sock = await connect(loop, port)
        proto = await factory.made
        proto.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        proto.transport.pauseProducing()
        sock.setblocking(True)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        blob = b"x" * (3 << 20)
        sender = threading.Thread(target=sock.sendall, args=(blob,))
        sender.start()
        await asyncio.sleep(0.3)
        loop.call_soon(tick)
        proto.transport.resumeProducing()
        await until(lambda: len(proto.data) == len(blob), "the upload")
        stop.set()
        sender.join()
        big = [t for t, n in reads if n >= 16 * 1024]  # READ_TURN or more
        assert big and len(big) == len(set(big)), f"a connection was read twice in one turn: {reads}"
        assert max(n for _, n in reads) <= native_stream.READ_TURN  # large reads handed on in slices
        # a pause asked for while the connection is held for the turn survives the release
        sock.setblocking(False)
        proto.transport.pauseProducing()
        await loop.sock_sendall(sock, b"y" * (64 * 1024))
        await asyncio.sleep(0.1)
        assert len(proto.data) == len(blob)
        proto.transport.resumeProducing()
        await until(lambda: len(proto.data) == len(blob) + 64 * 1024, "the bytes after the pause")
        sock.close()
        await port.stopListening().asFuture(loop)

    run(loop_kind, scenario)


def test_a_pause_midway_through_a_large_read_holds_its_remaining_slices(loop_kind: str) -> None:
    """pauseProducing from dataReceived of the first slice: nothing more is handed on until
    resumeProducing, then the rest of the read and what followed, in order."""

    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        def first_slice(proto: Recorder, data: bytes) -> None:
            if len(proto.data) == len(data):
                proto.transport.pauseProducing()

        factory = Recording(loop, on_data=first_slice)
        port = listen(loop, factory)
        sock = await connect(loop, port)
        proto = await factory.made
        proto.transport.pauseProducing()
        blob = bytes(range(256)) * 800  # 200 KiB, one read once resumed
        await loop.sock_sendall(sock, blob)
        await asyncio.sleep(0.1)
        proto.transport.resumeProducing()
        await until(lambda: len(proto.data) > 0, "the first slice")
        await asyncio.sleep(0.1)
        assert 0 < len(proto.data) < len(blob)
        await loop.sock_sendall(sock, b"after")
        proto.on_data = None
        proto.transport.resumeProducing()
        await until(lambda: proto.data == blob + b"after", "the rest, in order")
        sock.close()
        await port.stopListening().asFuture(loop)

    run(loop_kind, scenario)


def test_half_close_keeps_writing_for_half_closeable_protocols(loop_kind: str) -> None:
    """A client's FIN calls readConnectionLost of an IHalfCloseableProtocol, which can still answer; another protocol just gets ConnectionDone."""

    @implementer(IHalfCloseableProtocol)
    class Half(Recorder):
        def readConnectionLost(self) -> None:
            self.transport.write(b"answer to " + self.data)
            self.transport.loseConnection()

        def writeConnectionLost(self) -> None:
            raise AssertionError("not half-closed by us")

    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        factory = Recording(loop, proto=Half)
        port = listen(loop, factory)
        sock = await connect(loop, port)
        await loop.sock_sendall(sock, b"question")
        sock.shutdown(socket.SHUT_WR)
        assert await read_all(loop, sock) == b"answer to question"
        proto = await factory.made
        assert (await proto.done).check(ConnectionDone)
        sock.close()

        plain = Recording(loop)
        port2 = listen(loop, plain)
        sock2 = await connect(loop, port2)
        sock2.shutdown(socket.SHUT_WR)
        assert (await (await plain.made).done).check(ConnectionDone)
        sock2.close()
        await port.stopListening().asFuture(loop)
        await port2.stopListening().asFuture(loop)

    run(loop_kind, scenario)


def test_lose_write_connection_sends_fin_and_keeps_reading(loop_kind: str) -> None:
    """loseWriteConnection: the client reads EOF and can still send to the server."""

    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        factory = Recording(
            loop, on_made=lambda p: (p.transport.write(b"bye"), p.transport.loseWriteConnection())
        )
        port = listen(loop, factory)
        sock = await connect(loop, port)
        proto = await factory.made
        assert await read_all(loop, sock) == b"bye"
        await loop.sock_sendall(sock, b"still heard")
        await until(lambda: proto.data == b"still heard", "the client's bytes after our FIN")
        proto.transport.write(b"dropped after the FIN")
        proto.transport.loseConnection()  # still closes the connection
        assert (await proto.done).check(ConnectionDone)
        sock.close()
        await port.stopListening().asFuture(loop)

    run(loop_kind, scenario)


def test_lose_write_connection_tells_a_half_closeable_protocol(loop_kind: str) -> None:
    """An IHalfCloseableProtocol that half-closes gets writeConnectionLost; its peer's FIN then gets readConnectionLost."""
    seen: list[str] = []

    @implementer(IHalfCloseableProtocol)
    class Half(Recorder):
        def connectionMade(self) -> None:
            self.transport.write(b"all I say")
            self.transport.loseWriteConnection()

        def writeConnectionLost(self) -> None:
            seen.append("write")

        def readConnectionLost(self) -> None:
            seen.append("read")
            self.transport.loseConnection()

    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        factory = Recording(loop, proto=Half)
        port = listen(loop, factory)
        sock = await connect(loop, port)
        assert await read_all(loop, sock) == b"all I say"
        assert seen == ["write"]
        sock.shutdown(socket.SHUT_WR)
        proto = await factory.made
        assert (await proto.done).check(ConnectionDone)
        assert seen == ["write", "read"]
        sock.close()
        await port.stopListening().asFuture(loop)

    run(loop_kind, scenario)


def test_a_raising_callback_aborts_the_connection_and_is_its_reason(loop_kind: str, caplog: Any) -> None:
    """dataReceived raising: nothing reaches the loop's exception handler, the connection is aborted, connectionLost gets that error, EDG500 is logged."""
    from twisted.logger import globalLogPublisher

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)

    def boom(p: Recorder, data: bytes) -> None:
        raise ValueError("bad input")

    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        factory = Recording(loop, on_data=boom)
        port = listen(loop, factory)
        sock = await connect(loop, port)
        proto = await factory.made
        await loop.sock_sendall(sock, b"x")
        reason = await proto.done
        assert reason.check(ValueError)
        sock.close()
        await port.stopListening().asFuture(loop)

    try:
        run(loop_kind, scenario)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert any(
        str(e.get("log_format", "")).startswith("EDG500 ") and e.get("where") == "dataReceived"
        for e in events
    )


def test_stop_listening_refuses_new_connections_and_keeps_live_ones(loop_kind: str) -> None:
    """After stopListening's Deferred fires a new connect is refused; a connection accepted before still echoes."""

    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        factory = Recording(loop, on_data=lambda p, d: p.transport.write(d))
        port = listen(loop, factory)
        where = port.getHost()
        sock = await connect(loop, port)
        proto = await factory.made
        fired: list[object] = []
        port.stopListening().addCallback(fired.append)
        await until(lambda: bool(fired), "stopListening's Deferred")
        late = socket.socket()
        late.setblocking(False)
        with pytest.raises(ConnectionRefusedError):
            await loop.sock_connect(late, (where.host, where.port))
        late.close()
        await loop.sock_sendall(sock, b"still")
        assert await loop.sock_recv(sock, 10) == b"still"
        sock.close()
        await proto.done
        assert (await port.stopListening().asFuture(loop)) is None  # twice is harmless

    run(loop_kind, scenario)


def test_stop_listening_before_the_loop_served_the_socket(loop_kind: str) -> None:
    """Stopped in the same turn it started: once stopListening's Deferred fired the socket is closed (the port binds again at once)."""

    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        factory = Recording(loop)
        port = listen(loop, factory)
        number = port.getHost().port
        await port.stopListening().asFuture(loop)
        again = NativeTCPPort(Triggers(), loop, number, factory, interface="127.0.0.1")
        again.startListening()
        await again.stopListening().asFuture(loop)

    run(loop_kind, scenario)


def test_busy_address_raises_cannot_listen_unless_reuse_port(loop_kind: str) -> None:
    """A second listener on a bound port raises CannotListenError at once; two with SO_REUSEPORT (workers) both bind."""

    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        factory = Recording(loop)
        port = listen(loop, factory)
        with pytest.raises(CannotListenError):
            NativeTCPPort(
                Triggers(), loop, port.getHost().port, factory, interface="127.0.0.1"
            ).startListening()
        await port.stopListening().asFuture(loop)
        shared = listen(loop, factory, reuse_port=True)
        other = NativeTCPPort(
            Triggers(), loop, shared.getHost().port, factory, interface="127.0.0.1", reuse_port=True
        )
        other.startListening()
        sock = await connect(loop, other)
        await factory.made
        sock.close()
        await shared.stopListening().asFuture(loop)
        await other.stopListening().asFuture(loop)

    run(loop_kind, scenario)


def test_reactor_shutdown_loses_every_live_connection(loop_kind: str) -> None:
    """The reactor's shutdown trigger gives each live connection connectionLost(ConnectionLost) at once and stops listening."""

    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        reactor = Triggers()
        factory = Recording(loop)
        port = listen(loop, factory, reactor=reactor)
        socks = [await connect(loop, port) for _ in range(3)]
        await until(lambda: len(port.connections) == 3, "three connections")
        reactor.shutdown()
        assert all(p.lost is not None and p.lost.check(ConnectionLost) for p in factory.built)
        assert not port.listening and port.connections == set()
        assert reactor.triggers == {}
        await asyncio.sleep(0.01)  # the loop's own connection_lost calls come after: ignored
        for s in socks:
            s.close()

    run(loop_kind, scenario)


def test_listen_tcp_is_twisteds_on_a_reactor_without_asyncio() -> None:
    """listen_tcp on a reactor with no asyncio loop is that reactor's listenTCP (the default-reactor path)."""
    from twisted.internet.testing import MemoryReactor

    reactor = MemoryReactor()
    factory = Factory.forProtocol(Protocol)
    listen_tcp(reactor, 4321, factory, 77, "127.0.0.1")
    assert reactor.tcpServers == [(4321, factory, 77, "127.0.0.1")]
    assert not native_stream.native_tcp(reactor)
