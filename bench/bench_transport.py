"""The transport layers of SIP over WSS alone, in process: CPU per message, before/after in one run.

``bench_sip.py`` measures whole transactions beside Kamailio; on a loaded machine its figures move
with the load of others. This script isolates what sits between the socket and the SIP router and
counts CPU time (``time.process_time``) only, best of ``--repeat`` rounds:

* ``ws``        one SIP request frame (a 480-byte REGISTER, masked) in through the edge's WebSocket
                protocol and one 200 OK frame out (the router is a stand-in that answers at once);
* ``keepalive`` one CRLFCRLF keepalive frame in, its CRLF pong out (RFC 5626 s.4.4.1);
* ``ping``      one WebSocket ping in, its pong out;
* ``tls``       the TLS layer per message: one record in (decrypt, hand over) and one out (encrypt),
                for a REGISTER (answered 200 OK) and for a CRLFCRLF keepalive frame (answered by
                its pong): *old*, Twisted's ``TLSMemoryBIOProtocol`` over pyOpenSSL
                (``MODE_RELEASE_BUFFERS``) as the edge ran it before; *new*, the edge's own layer
                (tx/tls/stdlib_tls.py: ``ssl.SSLObject`` on memory BIOs); and the bare stdlib
                memory BIOs as the floor; and the refusal of a connection whose ClientHello
                names no tenant (old: OpenSSL fails the handshake; new: read, alert, close).

* ``tcp``       the TCP transport under a Twisted protocol on the uvloop reactor, one REGISTER-sized
                request read and one 200-sized answer written per message over loopback (``--conns``
                connections, closed loop): Twisted's own TCP transport (``listenTCP``: ``add_reader`` ->
                ``doRead`` -> ``recv``; each write through ``add_writer``/``remove_writer``) against the
                loop's native streams (:mod:`mcs_edge.tx.native_stream`). The server runs in a child
                pinned to CPU 0 (the client on CPU 1) and counts its own CPU time (process CPU: user +
                system, the kernel's TCP work included) over ``--messages`` messages, best of
                ``--repeat``.

The WebSocket rows run in a child process per source tree: ``--baseline-src DIR`` (e.g. ``git archive
main mcs_edge | tar -x -C DIR``) adds the edge from ``DIR`` for a before/after in the same run.

``--tls-conns N`` (2,000) also holds N idle server-side connections of each TLS layer in a fresh
process (after a handshake and one REGISTER each) and prints PSS per connection.

    .venv/bin/python bench/bench_transport.py [--messages 20000] [--repeat 5] [--baseline-src DIR]
        [--conns 20] [--only-tcp]
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOMAIN = "rossi.example.com"
REGISTER = (
    f"REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/WSS c1.invalid;branch=z9hG4bK0123456789\r\n"
    f"Max-Forwards: 70\r\nFrom: <sip:u1@{DOMAIN}>;tag=t1\r\nTo: <sip:u1@{DOMAIN}>\r\n"
    f"Call-ID: r1-0123456789\r\nCSeq: 1 REGISTER\r\nContact: <sip:u1@c1.invalid;transport=ws>;expires=600\r\n"
    "Supported: path, outbound\r\nUser-Agent: bench\r\nContent-Length: 0\r\n\r\n"
).encode()
OK = (
    "SIP/2.0 200 OK\r\nVia: SIP/2.0/WSS c1.invalid;branch=z9hG4bK0123456789\r\n"
    f"From: <sip:u1@{DOMAIN}>;tag=t1\r\nTo: <sip:u1@{DOMAIN}>;tag=abc\r\nCall-ID: r1-0123456789\r\n"
    "CSeq: 1 REGISTER\r\nContact: <sip:u1@c1.invalid;transport=ws>;expires=600\r\nContent-Length: 0\r\n\r\n"
).encode()


def _masked(opcode: int, payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    head = (
        bytes((0x80 | opcode, 0x80 | n)) if n < 126 else bytes((0x80 | opcode, 0x80 | 126, n >> 8, n & 0xFF))
    )
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


# -- the WebSocket layer, run in a child with one source tree's mcs_edge --------------------------
def _ws_child(messages: int, repeat: int) -> dict[str, float]:
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from mcs_edge import config as c
    from mcs_edge.tx.sip import websocket as ws

    cfg = c.loads(
        '[listen]\nhttps = "127.0.0.1:8443"\n[[tenants]]\nid = "rossi"\n'
        f'domains = ["{DOMAIN}"]\nbackend_sip = "udp:10.1.0.10:5060"\n'
    )

    class Router:
        def __init__(self) -> None:
            self.send: Any = None
            self.messages = 0
            self.touched = 0

        def open_flow(self, tenant: Any, transport: str, peer: Any, send: Any, close: Any) -> Any:
            self.send = send
            return object()

        def data_from_client(self, flow: Any, data: bytes) -> None:
            self.messages += 1
            self.send(OK)

        def touch(self, flow: Any) -> None:
            self.touched += 1

        def count(self, *args: Any) -> None:
            pass

        def close_flow(self, flow: Any, reason: str) -> None:
            pass

    class Sink(StringTransport):
        def write(self, data: bytes) -> None:
            pass

    def connect() -> Any:
        clock = Clock()
        router = Router()
        factory = ws.SipWebSocketFactory(router, cfg, clock, clock.seconds)  # type: ignore[arg-type]
        tenant = cfg.tenants[0]
        if hasattr(ws, "CLOSE_TIMEOUT"):  # the sans-IO codec
            proto = ws.SipWebSocketProtocol(factory, tenant, ("192.0.2.1", 4000))
            proto.makeConnection(Sink())
            proto.start()
            return proto, router
        else:  # autobahn, handshake replayed as take_over did
            proto = factory.buildProtocol(None)
            proto.tenant = tenant
            transport = StringTransport(peerAddress=None)
            proto.makeConnection(transport)
            proto.dataReceived(
                (
                    f"GET / HTTP/1.1\r\nHost: {DOMAIN}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                    "Sec-WebSocket-Protocol: sip\r\n\r\n"
                ).encode()
            )
            assert b" 101 " in transport.value().split(b"\r\n", 1)[0], transport.value()[:200]
            transport.write = lambda data: None  # type: ignore[method-assign]
        return proto, router

    def run(frames: list[bytes]) -> float:
        best = float("inf")
        for _ in range(repeat):
            proto, router = connect()
            receive = proto.dataReceived
            t0 = time.process_time()
            for f in frames:
                receive(f)
            best = min(best, (time.process_time() - t0) / len(frames))
            assert router.messages + router.touched + (frames[0][0] == 0x89) * len(frames) >= len(frames)
        return best * 1e6

    masks = [os.urandom(4) for _ in range(64)]
    return {
        "ws": run([_masked(0x1, REGISTER, masks[i % 64]) for i in range(messages)]),
        "keepalive": run([_masked(0x1, b"\r\n\r\n", masks[i % 64]) for i in range(messages)]),
        "ping": run([_masked(0x9, b"", masks[i % 64]) for i in range(messages)]),
    }


def _ws(src: str | None, messages: int, repeat: int) -> dict[str, float]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src or str(ROOT), env.get("PYTHONPATH")]))
    out = subprocess.run(
        [sys.executable, __file__, "--child-ws", str(messages), "--repeat", str(repeat)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


# -- the TCP transport ------------------------------------------------------------------------------
TCP_SERVER = r"""
import sys, time
import asyncio, uvloop
from twisted.internet import asyncioreactor
loop = uvloop.new_event_loop(); asyncio.set_event_loop(loop); asyncioreactor.install(loop)
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
messages, kind, size, answer = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), b"a" * int(sys.argv[4])
WARM = 2000
state = {"count": 0, "t0": 0.0}
class Answer(Protocol):
    buf = b""
    def dataReceived(self, data):
        buf = self.buf + data
        while len(buf) >= size:
            buf = buf[size:]
            self.transport.write(answer)
            state["count"] += 1
            if state["count"] == WARM:
                state["t0"] = time.process_time()
            elif state["count"] == WARM + messages:
                print("CPU", (time.process_time() - state["t0"]) / messages, flush=True)
                reactor.stop()
        self.buf = buf
factory = Factory.forProtocol(Answer)
if kind == "native":
    from mcs_edge.tx.native_stream import listen_tcp
    port = listen_tcp(reactor, 0, factory, interface="127.0.0.1")
else:
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
print("PORT", port.getHost().port, flush=True)
reactor.run()
"""


def _tcp(kind: str, messages: int, conns: int) -> float:
    """Server CPU per message (us) of one TCP transport kind ("twisted" or "native")."""
    import asyncio
    import shutil

    pin = ["taskset", "-c", "0"] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    )
    proc = subprocess.Popen(
        [*pin, sys.executable, "-c", TCP_SERVER, str(messages), kind, str(len(REGISTER)), str(len(OK))],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline().split()[1])

    async def client() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, _context: None)  # resets when the server exits
        done = asyncio.Event()

        async def one() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                while not done.is_set():
                    writer.write(REGISTER)
                    await reader.readexactly(len(OK))
            except (ConnectionError, asyncio.IncompleteReadError):
                done.set()
            writer.close()

        tasks = [asyncio.ensure_future(one()) for _ in range(conns)]
        await loop.run_in_executor(None, proc.wait)
        done.set()
        await asyncio.gather(*tasks, return_exceptions=True)

    import uvloop

    uvloop.run(client())
    line = proc.stdout.read().strip()
    return float(line.split()[1]) * 1e6


# -- the TLS layer ----------------------------------------------------------------------------------
def _certificate(tmp: str) -> tuple[str, str]:
    cert, key = f"{tmp}/c.pem", f"{tmp}/k.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"),
            *("-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={DOMAIN}"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def _client() -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    return ctx.wrap_bio(incoming, outgoing, server_hostname=DOMAIN), incoming, outgoing


def _records(
    client: ssl.SSLObject, outgoing: ssl.MemoryBIO, n: int, payload: bytes = REGISTER
) -> list[bytes]:
    out = []
    for _ in range(n):
        client.write(payload)
        out.append(outgoing.read())
    return out


def _tls_twisted(
    cert: str, key: str, messages: int, repeat: int, payload: bytes = REGISTER, reply: bytes = OK
) -> float:
    from OpenSSL import SSL
    from twisted.internet import ssl as tssl
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.testing import StringTransport
    from twisted.protocols.tls import TLSMemoryBIOFactory

    class Clock:
        """callLater(0) of the write aggregator, run at 'the next turn' (the reactor's own cost left out)."""

        def __init__(self) -> None:
            self.calls: list[Any] = []

        def callLater(self, delay: float, fn: Any, *a: Any) -> Any:  # noqa: N802
            self.calls.append(fn)
            return self

        def advance(self, _: float) -> None:
            calls, self.calls = self.calls, []
            for fn in calls:
                fn()

    options = tssl.DefaultOpenSSLContextFactory(key, cert)
    options.getContext().set_mode(SSL.MODE_RELEASE_BUFFERS)

    class Echo(Protocol):
        def dataReceived(self, data: bytes) -> None:  # noqa: N802
            self.transport.write(reply)  # type: ignore[union-attr]

    best = float("inf")
    for _ in range(repeat):
        clock = Clock()
        factory = TLSMemoryBIOFactory(options, False, Factory.forProtocol(Echo), clock=clock)
        server = factory.buildProtocol(None)
        wire = StringTransport()
        server.makeConnection(wire)
        client, incoming, outgoing = _client()
        for _ in range(10):  # handshake
            try:
                client.do_handshake()
            except ssl.SSLWantReadError:
                pass
            data = outgoing.read()
            if data:
                server.dataReceived(data)
            clock.advance(0)
            incoming.write(wire.value())
            wire.clear()
        client.do_handshake()
        records = _records(client, outgoing, messages, payload)
        t0 = time.process_time()
        for i, record in enumerate(records):
            server.dataReceived(record)
            clock.advance(0)  # the reactor's next turn: the write aggregator flushes
            if i & 255 == 0:
                wire.clear()
        best = min(best, (time.process_time() - t0) / messages)
    return best * 1e6


def _tls_edge(
    cert: str, key: str, messages: int, repeat: int, payload: bytes = REGISTER, reply: bytes = OK
) -> float:
    """The edge's TLS layer (tx/tls/stdlib_tls.py) over a wire that drops what it is given."""
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.testing import StringTransport

    from mcs_edge.tx.tls.stdlib_tls import StdlibTLSFactory

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)

    class Chooser:
        def context_for_hello(self, hello: Any) -> ssl.SSLContext:
            return ctx

    class Echo(Protocol):
        def dataReceived(self, data: bytes) -> None:  # noqa: N802
            self.transport.write(reply)  # type: ignore[union-attr]

    best = float("inf")
    for _ in range(repeat):
        factory = StdlibTLSFactory(Chooser(), Factory.forProtocol(Echo))
        server: Any = factory.buildProtocol(None)  # type: ignore[arg-type]
        wire = StringTransport()
        server.makeConnection(wire)
        client, incoming, outgoing = _client()
        for _ in range(10):  # handshake
            try:
                client.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            data = outgoing.read()
            if data:
                server.dataReceived(data)
            incoming.write(wire.value())
            wire.clear()
        data = outgoing.read()
        if data:
            server.dataReceived(data)
        wire.clear()
        records = _records(client, outgoing, messages, payload)
        wire.write = lambda data: None  # type: ignore[method-assign]
        receive = server.dataReceived
        t0 = time.process_time()
        for record in records:
            receive(record)
        best = min(best, (time.process_time() - t0) / messages)
    return best * 1e6


def _refusals(messages: int, repeat: int) -> tuple[float, float]:
    """CPU per refused connection whose ClientHello names no tenant: (old, new) in us.

    Old: Twisted's TLS layer over pyOpenSSL with a base context holding no certificate and a
    servername callback that finds nothing (as the edge ran it): OpenSSL parses the hello and fails
    the handshake. New: the edge's layer reads the hello, finds no context, sends the alert."""
    from OpenSSL import SSL
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.testing import StringTransport
    from twisted.protocols.tls import TLSMemoryBIOFactory
    from zope.interface import implementer

    try:
        from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
    except ImportError:  # pragma: no cover
        from twisted.internet._sslverify import IOpenSSLServerConnectionCreator  # type: ignore[attr-defined,no-redef]

    from mcs_edge.tx.tls.stdlib_tls import StdlibTLSFactory

    client, _incoming, outgoing = _client()
    try:
        client.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = outgoing.read()

    base = SSL.Context(SSL.TLS_METHOD)
    base.set_tlsext_servername_callback(lambda conn: None)

    @implementer(IOpenSSLServerConnectionCreator)
    class Creator:
        def serverConnectionForTLS(self, protocol: Any) -> SSL.Connection:  # noqa: N802
            return SSL.Connection(base, None)

    class Refuser:
        def context_for_hello(self, hello: Any) -> str:
            return "unknown_name"

    class Clock:
        def callLater(self, delay: float, fn: Any, *a: Any) -> Any:  # noqa: N802
            return self

    def run(factory: Any) -> float:
        best = float("inf")
        for _ in range(repeat):
            t0 = time.process_time()
            for _ in range(messages):
                server = factory.buildProtocol(None)
                server.makeConnection(StringTransport())
                server.dataReceived(hello)
            best = min(best, (time.process_time() - t0) / messages)
        return best * 1e6

    old = run(TLSMemoryBIOFactory(Creator(), False, Factory.forProtocol(Protocol), clock=Clock()))
    new = run(StdlibTLSFactory(Refuser(), Factory.forProtocol(Protocol)))
    return old, new


def _pss_kib() -> float:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return float(line.split()[1])
    raise RuntimeError("no Pss in /proc/self/smaps_rollup")


def _tls_memory_child(layer: str, cert: str, key: str, conns: int) -> float:
    """KiB of PSS per idle server-side TLS connection of ``layer`` ("old" or "new"), each after a
    handshake and one REGISTER in + 200 OK out, measured in a fresh process."""
    import gc

    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.testing import StringTransport

    class Echo(Protocol):
        def dataReceived(self, data: bytes) -> None:  # noqa: N802
            self.transport.write(OK)  # type: ignore[union-attr]

    class Wire(StringTransport):
        def write(self, data: bytes) -> None:
            self.out = data

    if layer == "old":
        from OpenSSL import SSL
        from twisted.internet import ssl as tssl
        from twisted.protocols.tls import TLSMemoryBIOFactory

        options = tssl.DefaultOpenSSLContextFactory(key, cert)
        options.getContext().set_mode(SSL.MODE_RELEASE_BUFFERS)

        class Clock:
            def callLater(self, delay: float, fn: Any, *a: Any) -> Any:  # noqa: N802
                fn(*a)
                return self

        factory: Any = TLSMemoryBIOFactory(options, False, Factory.forProtocol(Echo), clock=Clock())
    else:
        from mcs_edge.tx.tls.stdlib_tls import StdlibTLSFactory

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)

        class Chooser:
            def context_for_hello(self, hello: Any) -> ssl.SSLContext:
                return ctx

        factory = StdlibTLSFactory(Chooser(), Factory.forProtocol(Echo))

    def connect() -> Any:
        server = factory.buildProtocol(None)
        wire = Wire()
        wire.out = b""
        server.makeConnection(wire)
        client, incoming, outgoing = _client()
        for _ in range(10):
            try:
                client.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            wire.out = b""
            server.dataReceived(outgoing.read())
            incoming.write(wire.out)
        server.dataReceived(outgoing.read())
        client.write(REGISTER)
        server.dataReceived(outgoing.read())
        return server

    held = [connect() for _ in range(50)]  # warm the allocator and the session cache
    gc.collect()
    before = _pss_kib()
    held += [connect() for _ in range(conns)]
    gc.collect()
    return (_pss_kib() - before) / conns


def _tls_memory(cert: str, key: str, conns: int) -> dict[str, float]:
    out = {}
    for layer in ("old", "new"):
        proc = subprocess.run(
            [sys.executable, __file__, "--child-tls-memory", layer, cert, key, str(conns)],
            capture_output=True,
            text=True,
            check=True,
        )
        out[layer] = float(proc.stdout.strip().splitlines()[-1])
    return out


def _tls_stdlib(cert: str, key: str, messages: int, repeat: int) -> float:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    best = float("inf")
    for _ in range(repeat):
        s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        server = ctx.wrap_bio(s_in, s_out, server_side=True)
        client, incoming, outgoing = _client()
        for _ in range(10):
            for side in (client, server):
                try:
                    side.do_handshake()
                except ssl.SSLWantReadError:
                    pass
            s_in.write(outgoing.read())
            incoming.write(s_out.read())
        records = _records(client, outgoing, messages)
        t0 = time.process_time()
        for record in records:
            s_in.write(record)
            try:
                while True:
                    if not server.read(65536):
                        break
            except ssl.SSLWantReadError:
                pass
            server.write(OK)
            s_out.read()
        best = min(best, (time.process_time() - t0) / messages)
    return best * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--baseline-src", "--baseline", dest="baseline_src", default=None)
    ap.add_argument(
        "--tls-conns", type=int, default=2000, help="idle TLS connections held per layer (0: skip)"
    )
    ap.add_argument("--conns", type=int, default=20, help="TCP rows: connections, each closed loop")
    ap.add_argument("--only-tcp", action="store_true", help="only the TCP transport rows")
    ap.add_argument("--child-ws", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--child-tls-memory", nargs=4, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_tls_memory:
        layer, cert, key, conns = args.child_tls_memory
        print(_tls_memory_child(layer, cert, key, int(conns)))
        return
    if args.child_ws:
        print(json.dumps(_ws_child(args.child_ws, args.repeat)))
        return
    if os.cpu_count() and os.cpu_count() > 1 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {1})  # the clients; the TCP server child is pinned to CPU 0
    twisted_tcp = min(_tcp("twisted", args.messages, args.conns) for _ in range(args.repeat))
    native_tcp = min(_tcp("native", args.messages, args.conns) for _ in range(args.repeat))
    print(f"TCP transport, server CPU per message (one {len(REGISTER)}-byte read + one {len(OK)}-byte write,")
    print(f"  {args.conns} connections, best of {args.repeat} x {args.messages}): Twisted's TCP transport")
    print(
        f"  {twisted_tcp:.2f} us, the loop's native streams {native_tcp:.2f} us (ratio {twisted_tcp / native_tcp:.2f})"
    )
    if args.only_tcp:
        return
    rows: list[tuple[str, dict[str, float]]] = []
    if args.baseline_src:
        rows.append(("baseline tree", _ws(args.baseline_src, args.messages, args.repeat)))
    rows.append(("this tree", _ws(None, args.messages, args.repeat)))
    print(f"CPU per message, best of {args.repeat} x {args.messages} (us)")
    print(f"{'edge':<16}{'ws REGISTER+200':>18}{'CRLF keepalive':>16}{'ping':>8}")
    for name, r in rows:
        print(f"{name:<16}{r['ws']:>18.2f}{r['keepalive']:>16.2f}{r['ping']:>8.2f}")
    keepalive, pong = _masked(0x1, b"\r\n\r\n", b"\x01\x02\x03\x04"), b"\x81\x02\r\n"
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = _certificate(tmp)
        rows_tls = {
            "REGISTER in + 200 OK out": (
                _tls_twisted(cert, key, args.messages, args.repeat),
                _tls_edge(cert, key, args.messages, args.repeat),
            ),
            "CRLF keepalive in + pong out": (
                _tls_twisted(cert, key, args.messages, args.repeat, keepalive, pong),
                _tls_edge(cert, key, args.messages, args.repeat, keepalive, pong),
            ),
        }
        stdlib_tls = _tls_stdlib(cert, key, args.messages, args.repeat)
        memory = _tls_memory(cert, key, args.tls_conns) if args.tls_conns else None
    print("TLS layer per message, one record in + one out (us):")
    print(f"{'':<32}{'old: Twisted/pyOpenSSL':>24}{'new: edge stdlib_tls':>22}{'ratio':>8}")
    for name, (old, new) in rows_tls.items():
        print(f"{name:<32}{old:>24.2f}{new:>22.2f}{old / new:>8.2f}")
    print(f"  (bare stdlib ssl memory BIOs, REGISTER: {stdlib_tls:.2f} us)")
    old_refusal, new_refusal = _refusals(max(1000, args.messages // 10), args.repeat)
    print(
        f"{'unknown-name ClientHello refused':<32}{old_refusal:>24.2f}{new_refusal:>22.2f}"
        f"{old_refusal / new_refusal:>8.2f}   (per connection)"
    )
    if memory is not None:
        print(
            f"TLS layer, PSS per idle connection ({args.tls_conns} held, after one REGISTER): "
            f"old {memory['old']:.1f} KiB, new {memory['new']:.1f} KiB"
        )


if __name__ == "__main__":
    main()
