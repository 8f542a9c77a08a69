"""CPU of one refusal under overload through the whole SIP-over-WSS stack, in process.

``bench_latency.py --overload`` measures goodput at 3x capacity on a live edge; its per-refusal
figure is a subtraction on a shared machine. This script isolates the refusal itself: a real
server-side TLS connection (``tx/tls/stdlib_tls.py``, a handshake with the standard library's
client on memory BIOs) inside the guard's accept-time wrapper (``GuardedFactory``: each source
counted live, as on the listener), the SIP WebSocket protocol (``tx/sip/websocket.py``, shaping on), the SIP
router (``tx/sip/router.py``) with the guard (``tx/protect/guard.py``) and the overload gate held
late (every new INVITE/REGISTER is refused by queue age), as the service composes them. Each
"read" is ``--per-read`` TLS records, one masked WebSocket frame (random mask, as browsers send)
of one SIP request each; the answers (503 + Retry-After) go to a wire that keeps only their byte
count. Printed: CPU (``time.process_time``) per refused request, best of ``--repeat`` rounds,
for REGISTER and initial INVITE at each ``--per-read``; ``--baseline-src DIR`` runs the same in a
child on the tree in DIR (before/after in one run). ``--profile`` prints a cProfile of one round. ``--live`` adds the server's CPU (user + system, so the
kernel's TCP work too) per refused REGISTER on real loopback sockets: the same stack served by
``tx/native_stream.py`` on uvloop, the gate refusing everything, ``--live-conns`` TLS connections
offering ``--live-rate`` requests/s in all (as ``bench_latency.py --overload`` spreads 3x capacity
over 200 connections; records encrypted before the run so the client is cheap), server on CPU 0,
client on CPU 1; CPU from the end of a warm-up until every request of the run was refused. The
same with CRLFCRLF keepalives (RFC 5626) instead of REGISTERs: CPU per keepalive answered.

    .venv/bin/python bench/bench_refusal.py [--messages 20000] [--per-read 1,8,32] [--repeat 5]
        [--baseline-src DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOMAIN = "rossi.example.com"


def _request(method: str, i: int) -> bytes:
    body = (
        "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
        "m=audio 40000 UDP/TLS/RTP/SAVPF 111 0\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\n"
        "a=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\na=setup:actpass\r\na=ice-ufrag:abcd\r\n"
        "a=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=mid:0\r\na=sendrecv\r\na=rtcp-mux\r\n"
        if method == "INVITE"
        else ""
    )
    ruri = f"sip:200@{DOMAIN}" if method == "INVITE" else f"sip:{DOMAIN}"
    to = f"<sip:200@{DOMAIN}>" if method == "INVITE" else f"<sip:u{i}@{DOMAIN}>"
    extra = "Content-Type: application/sdp\r\n" if body else "Expires: 600\r\n"
    return (
        f"{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/WSS c{i}.invalid;branch=z9hG4bK{i:010d}{method[0]}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:u{i}@{DOMAIN}>;tag=t{i}\r\nTo: {to}\r\n"
        f"Call-ID: {method[0]}{i}-0123456789abcdef\r\nCSeq: 1 {method}\r\n"
        f'Contact: <sip:u{i}@c{i}.invalid;transport=ws>;+sip.instance="<urn:uuid:00000000-0000-0000-0000-{i:012d}>"\r\n'
        f"Supported: path, outbound, gruu\r\nUser-Agent: JsSIP 3.10.0\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


def _masked(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    head = bytes((0x81, 0x80 | n)) if n < 126 else bytes((0x81, 0x80 | 126, n >> 8, n & 0xFF))
    key = (mask * (n // 4 + 1))[:n]
    return head + mask + (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


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


def _child(
    messages: int, per_reads: list[int], repeat: int, cert: str, key: str, profile: bool
) -> dict[str, float]:
    import time

    from twisted.internet.address import IPv4Address
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from mcs_edge import config as c
    from mcs_edge.core.load import AdmissionGate
    from mcs_edge.core.tenants import TenantTable
    from mcs_edge.tx.ops.loadprobe import overload_settings
    from mcs_edge.tx.protect.guard import GuardedFactory, Protection
    from mcs_edge.tx.protect.shaping import Shaping
    from mcs_edge.tx.sip import websocket as ws
    from mcs_edge.tx.sip.router import SipRouter
    from mcs_edge.tx.timers import Timers
    from mcs_edge.tx.tls.stdlib_tls import StdlibTLSFactory, StdlibTLSProtocol

    cfg = c.loads(
        f'[listen]\nhttps = "127.0.0.1:8443"\nbackend_sip = "127.0.0.1:5070"\n'
        f'[[tenants]]\nid = "rossi"\ndomains = ["{DOMAIN}"]\nbackend_sip = "udp:10.1.0.10:5060"\n'
    )
    clock = Clock()
    clock.advance(1000.0)
    timers = Timers(clock, clock.seconds)
    tenants = TenantTable(cfg.tenants)
    protection = Protection(cfg, timers)
    shaping = Shaping(cfg, timers)

    gate = AdmissionGate(overload_settings(cfg))
    router = SipRouter(cfg, tenants, timers, protection=protection, overload=gate)
    factory = ws.SipWebSocketFactory(router, cfg, clock, timers.now, shaping=shaping)
    tenant = cfg.tenants[0]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)

    class Chooser:
        def context_for_hello(self, hello: Any) -> ssl.SSLContext:
            return ctx

    tls_factory = StdlibTLSFactory(Chooser(), Factory.forProtocol(Protocol))
    guarded = GuardedFactory(tls_factory, protection, "https")

    class Wire(StringTransport):
        """Keeps the handshake's bytes, then only counts what is written."""

        def __init__(self) -> None:
            super().__init__(peerAddress=None)
            self.bytes = 0
            self.keep = True

        def write(self, data: bytes) -> None:
            self.bytes += len(data)
            if self.keep:
                super().write(data)

    def connect(peer: int) -> tuple[Any, Any, Any, Any, Wire]:
        host = f"192.0.2.{1 + peer % 250}"
        # as the service composes the listener: the guard's wrapper (per-source caps, the source
        # counted live) around the TLS connection
        server: Any = guarded.buildProtocol(IPv4Address("TCP", host, 40000 + peer))
        tls = (
            server if isinstance(server, StdlibTLSProtocol) else server.wrappedProtocol
        )  # unwrapped since c7961c5
        wire = Wire()
        server.makeConnection(wire)
        cctx = ssl.create_default_context()
        cctx.check_hostname = False
        cctx.verify_mode = ssl.CERT_NONE
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        client = cctx.wrap_bio(incoming, outgoing, server_hostname=DOMAIN)
        for _ in range(10):
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
        proto = ws.SipWebSocketProtocol(factory, tenant, (host, 40000 + peer))
        tls.wrappedProtocol = proto
        proto.makeConnection(tls)
        proto.start()
        wire.clear()
        wire.keep = False
        return server, proto, client, outgoing, wire

    out: dict[str, float] = {}
    for method in ("REGISTER", "INVITE"):
        payloads = [_masked(_request(method, i), os.urandom(4)) for i in range(512)]
        for per_read in per_reads:
            best = float("inf")
            for r in range(repeat):
                conns = [connect(p) for p in range(8)]
                reads = []
                for i in range(messages // per_read):
                    server, _proto, client, outgoing, _wire = conns[i % len(conns)]
                    for j in range(per_read):
                        client.write(payloads[(i * per_read + j) % len(payloads)])
                    reads.append((server, outgoing.read()))
                refused0 = sum(router.shed.values())
                prof = None
                if profile and r == 0 and per_read == per_reads[-1]:
                    import cProfile

                    prof = cProfile.Profile()
                t0 = time.process_time()
                if prof is not None:
                    prof.enable()
                for server, data in reads:
                    gate.last_tick = clock.seconds() - 1.0  # the probe last ran a second ago: late
                    gate.last_lag = 1.0
                    clock.advance(per_read / 50)  # each connection at 50 requests/s (within its shaping)
                    server.dataReceived(data)
                if prof is not None:
                    prof.disable()
                spent = time.process_time() - t0
                refused = sum(router.shed.values()) - refused0
                n = len(reads) * per_read
                assert refused == n, (refused, n)
                best = min(best, spent / n)
                for _server, proto, *_rest in conns:
                    proto.abort()
                if prof is not None:
                    import pstats

                    pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(
                        int(os.environ.get("BENCH_PROFILE_ROWS", "25"))
                    )
            out[f"{method} x{per_read}"] = best * 1e6
    return out


# -- --live: the same refusals on real sockets (uvloop, native streams, the kernel's TCP) -------------

LIVE_CLIENT = r"""
import os, select, socket, ssl, sys, time
conns, per_conn, warm, rate = (int(x) for x in sys.argv[1:5])
port, domain = int(sys.argv[5]), sys.argv[6]
frames = [bytes.fromhex(x) for x in sys.stdin.readline().split()]
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
links = []
for i in range(conns):  # TLS handshakes, then every record this connection will send, encrypted now
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    o = ctx.wrap_bio(inc, out, server_hostname=domain)
    while True:
        try:
            o.do_handshake()
            break
        except ssl.SSLWantReadError:
            data = out.read()
            if data:
                s.sendall(data)
            inc.write(s.recv(65536))
    data = out.read()
    if data:
        s.sendall(data)
    recs = []
    for k in range(warm + per_conn):
        o.write(frames[(i * 7 + k) % len(frames)])
        recs.append(out.read())
    s.setblocking(False)
    links.append((s, recs))
socks = [s for s, _ in links]
def drain(timeout):
    for s in select.select(socks, [], [], timeout)[0]:
        try:
            while s.recv(262144):
                pass
        except BlockingIOError:
            pass
def send(first, count, rate):
    # round robin over the connections, ``rate`` records/s in all (open loop); a full socket buffer
    # (the server behind) waits for the next round
    pending = [bytearray() for _ in links]
    t0 = time.monotonic()
    n = 0
    for k in range(first, first + count):
        for j, (s, recs) in enumerate(links):
            pending[j] += recs[k]
            n += 1
        due = t0 + n / rate
        while True:
            for j, (s, _) in enumerate(links):
                if pending[j]:
                    try:
                        sent = s.send(pending[j])
                        del pending[j][:sent]
                    except BlockingIOError:
                        pass
            wait = due - time.monotonic()
            drain(max(0.0, wait) if wait > 0 else 0)
            if wait <= 0:
                break
    while any(pending):
        for j, (s, _) in enumerate(links):
            if pending[j]:
                try:
                    sent = s.send(pending[j])
                    del pending[j][:sent]
                except BlockingIOError:
                    pass
        drain(0.01)
send(0, warm, rate)
print("warm", flush=True)
sys.stdin.readline()
t = time.monotonic()
send(warm, per_conn, rate)
print("sent", time.monotonic() - t, flush=True)
while sys.stdin.readline().strip() != "close":
    pass
for s in socks:
    s.close()
"""


def _live_server(cert: str, key: str) -> None:
    """The child that serves: the edge's TLS, guard, SIP WebSocket, shaping and router on uvloop,
    listening on an ephemeral loopback port, the gate refusing every new request (ratio 0).
    stdin ``mark`` lines: prints this process's CPU seconds (user + system) and refusals so far."""
    import resource
    import threading

    from mcs_edge.reactor import install

    install()
    from twisted.internet import reactor as _reactor
    from twisted.internet.protocol import Factory

    from mcs_edge import config as c
    from mcs_edge.core.load import AdmissionGate
    from mcs_edge.core.tenants import TenantTable
    from mcs_edge.tx.native_stream import listen_tcp
    from mcs_edge.tx.ops.loadprobe import overload_settings
    from mcs_edge.tx.protect.guard import GuardedFactory, Protection
    from mcs_edge.tx.protect.shaping import Shaping
    from mcs_edge.tx.sip import websocket as ws
    from mcs_edge.tx.sip.router import SipRouter
    from mcs_edge.tx.timers import Timers
    from mcs_edge.tx.tls.stdlib_tls import StdlibTLSFactory

    reactor: Any = _reactor
    cfg = c.loads(
        f'[listen]\nhttps = "127.0.0.1:8443"\nbackend_sip = "127.0.0.1:5070"\n'
        f"[guard]\nrequest_rate_per_ip = 1000000\nrequest_burst_per_ip = 1000000\nmax_connections_per_ip = 0\nconnection_rate_per_ip = 0\n"
        f'[[tenants]]\nid = "rossi"\ndomains = ["{DOMAIN}"]\nbackend_sip = "udp:10.1.0.10:5060"\n'
    )
    timers = Timers(reactor)
    protection = Protection(cfg, timers)
    shaping = Shaping(cfg, timers)
    gate = AdmissionGate(overload_settings(cfg))
    gate.ratio = 0.0  # every new INVITE/REGISTER refused (as under overload; no probe runs here)

    class Router(SipRouter):
        """Counts the keepalives answered (``--live``), the same small cost in both trees."""

        touched = 0

        def touch(self, flow: Any) -> None:  # a read that is exactly one keepalive frame
            self.touched += 1
            super().touch(flow)

        def data_from_client(self, flow: Any, data: bytes) -> None:
            if data == b"\r\n\r\n":  # keepalives that came two or more to a read: decoded
                self.touched += 1
            super().data_from_client(flow, data)

    router = Router(cfg, TenantTable(cfg.tenants), timers, protection=protection, overload=gate)
    factory = ws.SipWebSocketFactory(router, cfg, reactor, timers.now, shaping=shaping)
    tenant = cfg.tenants[0]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)

    class Chooser:
        def context_for_hello(self, hello: Any) -> ssl.SSLContext:
            return ctx

    class Sip(ws.SipWebSocketProtocol):
        """The SIP WebSocket right after the TLS handshake (the HTTP upgrade is not measured)."""

        def connectionMade(self) -> None:  # noqa: N802
            self.start()

    class SipFactory(Factory):
        def buildProtocol(self, addr: Any) -> Sip:  # noqa: N802
            return Sip(factory, tenant, (addr.host, addr.port))

    tls = StdlibTLSFactory(Chooser(), SipFactory(), clock=reactor)
    port = listen_tcp(reactor, 0, GuardedFactory(tls, protection, "https"), interface="127.0.0.1")
    print(port.getHost().port, flush=True)

    def mark() -> None:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        print(json.dumps([ru.ru_utime + ru.ru_stime, sum(router.shed.values()) + router.touched]), flush=True)

    def commands() -> None:
        for line in sys.stdin:
            if line.strip() == "mark":
                reactor.callFromThread(mark)
        reactor.callFromThread(reactor.stop)

    threading.Thread(target=commands, daemon=True).start()
    reactor.run()


def _live(
    src: str | None, args: argparse.Namespace, cert: str, key: str, keepalive: bool = False
) -> dict[str, float]:
    """Server CPU per refusal over real loopback sockets: ``--live-conns`` TLS connections offering
    ``--live-rate`` REGISTERs/s in all (records encrypted before the run, so the client costs little),
    the server pinned to CPU 0, the client to CPU 1 (``taskset``); CPU from the end of a warm-up
    until every request of the run was refused, best of ``--repeat``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src or str(ROOT), env.get("PYTHONPATH")]))
    pin = shutil.which("taskset")
    server = subprocess.Popen(
        [
            *((pin, "-c", "0") if pin else ()),
            sys.executable,
            __file__,
            "--live-server",
            "--cert",
            cert,
            "--key",
            key,
        ],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdin is not None and server.stdout is not None

    def mark() -> tuple[float, int]:
        server.stdin.write("mark\n")  # type: ignore[union-attr]
        server.stdin.flush()  # type: ignore[union-attr]
        cpu, shed = json.loads(server.stdout.readline())  # type: ignore[union-attr]
        return float(cpu), int(shed)

    try:
        port = int(server.stdout.readline())
        if keepalive:  # RFC 5626 s.4.4.1 CRLFCRLF in a masked text frame, answered by a CRLF pong
            frames = " ".join(_masked(b"\r\n\r\n", os.urandom(4)).hex() for _ in range(256))
        else:
            frames = " ".join(_masked(_request("REGISTER", i), os.urandom(4)).hex() for i in range(256))
        best = float("inf")
        rates: list[float] = []  # what the client achieved (below --live-rate when its CPU is taken)
        conns = args.live_conns
        per_conn = max(1, args.messages // conns)
        warm = 20
        for _ in range(args.repeat):
            client = subprocess.Popen(
                [
                    *((pin, "-c", "1") if pin else ()),
                    sys.executable,
                    "-c",
                    LIVE_CLIENT,
                    *(str(conns), str(per_conn), str(warm), str(args.live_rate), str(port), DOMAIN),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert client.stdin is not None and client.stdout is not None
            client.stdin.write(frames + "\n")
            client.stdin.flush()
            assert client.stdout.readline().strip() == "warm"
            cpu0, shed0 = mark()
            target = shed0 + per_conn * conns
            client.stdin.write("go\n")
            client.stdin.flush()
            sent, seconds = client.stdout.readline().split()
            assert sent == "sent"
            rates.append(per_conn * conns / float(seconds))
            deadline = time.monotonic() + 60
            while True:
                cpu1, shed1 = mark()
                if shed1 >= target or time.monotonic() > deadline:
                    break
                time.sleep(0.02)
            client.stdin.write("close\n")
            client.stdin.flush()
            client.wait(30)
            assert shed1 >= target, (shed1 - shed0, per_conn * conns)
            best = min(best, (cpu1 - cpu0) / (shed1 - shed0))
        what = "CRLF keepalive" if keepalive else "REGISTER refused"
        print(
            f"{what} live ({'before' if src else 'this tree'}): client sent {min(rates):.0f}-{max(rates):.0f}/s",
            file=sys.stderr,
        )
        return {f"{what} live, {conns} conns, {args.live_rate}/s": best * 1e6}
    finally:
        server.stdin.close()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()


def _run(src: str | None, args: argparse.Namespace, cert: str, key: str) -> dict[str, float]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src or str(ROOT), env.get("PYTHONPATH")]))
    cmd = [
        sys.executable,
        __file__,
        "--child",
        *("--messages", str(args.messages), "--per-read", args.per_read, "--repeat", str(args.repeat)),
        *("--cert", cert, "--key", key),
    ]
    if args.profile and src is None:
        cmd.append("--profile")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"child failed ({src or 'this tree'}):\n{done.stderr[-4000:]}")
    if args.profile:
        sys.stderr.write(done.stderr)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=20000)
    p.add_argument("--per-read", default="1,8,32", help="TLS records (requests) per read")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--baseline-src", default="")
    p.add_argument(
        "--profile", action="store_true", help="cProfile one round of this tree (largest --per-read)"
    )
    p.add_argument(
        "--live",
        action="store_true",
        help="also the server's CPU per refused REGISTER on real loopback sockets (uvloop, native streams)",
    )
    p.add_argument("--live-conns", type=int, default=200, help="--live: client TLS connections")
    p.add_argument("--live-rate", type=int, default=15000, help="--live: REGISTERs offered per second in all")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--live-server", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--cert", default="", help=argparse.SUPPRESS)
    p.add_argument("--key", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    per_reads = [int(x) for x in args.per_read.split(",")]
    if args.child:
        print(json.dumps(_child(args.messages, per_reads, args.repeat, args.cert, args.key, args.profile)))
        return
    if args.live_server:
        _live_server(args.cert, args.key)
        return
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = _certificate(tmp)
        rows = {"this tree": _run(None, args, cert, key)}
        if args.baseline_src:
            rows = {"before": _run(args.baseline_src, args, cert, key), **rows}
        for keepalive in (False, True) if args.live else ():
            rows["this tree"].update(_live(None, args, cert, key, keepalive))
            if args.baseline_src:
                rows["before"].update(_live(args.baseline_src, args, cert, key, keepalive))
    names = list(rows)
    print(f"load average {os.getloadavg()[0]:.2f}; CPU per refused request (us), best of {args.repeat}")
    print(f"{'case':28}" + "".join(f"{n:>14}" for n in names))
    for case in rows[names[-1]]:
        print(f"{case:28}" + "".join(f"{rows[n].get(case, float('nan')):14.2f}" for n in names))


if __name__ == "__main__":
    main()
