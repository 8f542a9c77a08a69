"""SIP over WSS through the edge to a fast UDP responder, beside a minimal autobahn echo server.

What it prints (one run, same machine, same client):
- transactions/s achieved, p50/p99 latency, edge CPU ms per 1000 transactions (utime+stime of the
  server process, /proc), for OPTIONS sent by WSS clients through the edge to a UDP PBX that answers
  200 at once;
- the same for the floor: a minimal autobahn WebSocket echo server over TLS (one message in, one out);
- resident memory (PSS) per idle connection at 1,000 and 5,000 held connections (TLS + WebSocket +,
  for the edge, a registered flow), for both.

- the cost of RFC 6455 UTF-8 validation of text messages (autobahn's validator, as the edge runs
  it) per SIP message, measured in process on a typical INVITE with SDP.

``--baseline DIR`` also runs the same load, in the same run, against an edge started from another
source tree (e.g. a ``git worktree`` of an older commit): a before/after comparison of a change.

The server under test is pinned to CPU 0 and the load generator and responder to CPU 1 when
``taskset`` is available. Usage:
``python bench/bench_sip.py [--seconds 10] [--conns 50] [--idle 1000,5000] [--baseline DIR]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import signal
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent

ECHO_SERVER = r"""
import sys
from twisted.internet import asyncioreactor
import asyncio, uvloop
loop = uvloop.new_event_loop(); asyncio.set_event_loop(loop); asyncioreactor.install(loop)
from twisted.internet import reactor, ssl
from twisted.protocols.tls import TLSMemoryBIOFactory
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
class Echo(WebSocketServerProtocol):
    def onConnect(self, request): return "sip"
    def onMessage(self, payload, isBinary): self.sendMessage(payload, isBinary)
f = WebSocketServerFactory(protocols=["sip"])
f.protocol = Echo
f.setProtocolOptions(perMessageCompressionAccept=lambda offers: None)
ctx = ssl.DefaultOpenSSLContextFactory(sys.argv[2], sys.argv[1])
from OpenSSL import SSL
ctx.getContext().set_mode(SSL.MODE_RELEASE_BUFFERS)
reactor.listenSSL(int(sys.argv[3]), f, ctx, interface="127.0.0.1", backlog=4096)
print("READY", flush=True)
reactor.run()
"""

RESPONDER = r"""
import asyncio, sys, uvloop
class R(asyncio.DatagramProtocol):
    def connection_made(self, t): self.t = t
    def datagram_received(self, data, addr):
        head, _, _ = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        keep = [l for l in lines[1:] if l[:4].lower() in (b"via:", b"from", b"to: ", b"call", b"cseq")]
        self.t.sendto(b"SIP/2.0 200 OK\r\n" + b"\r\n".join(keep) + b"\r\nContent-Length: 0\r\n\r\n", addr)
async def main():
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(R, local_addr=("127.0.0.1", int(sys.argv[1])))
    print("READY", flush=True)
    await asyncio.Event().wait()
uvloop.run(main())
"""


def _taskset(cpu: int) -> list[str]:
    return (
        ["taskset", "-c", str(cpu)]
        if shutil.which("taskset") and os.cpu_count() and os.cpu_count() > 1
        else []
    )  # type: ignore[operator]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick


def _pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


class WS:
    """A minimal asyncio WSS client (masked text frames)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.r, self.w = reader, writer

    @classmethod
    async def connect(cls, port: int, host: str, ctx: ssl.SSLContext) -> WS:
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=host)
        w.write(
            (
                f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\n\r\n"
            ).encode()
        )
        head = await r.readuntil(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(head[:200])
        return cls(r, w)

    def send(self, data: bytes) -> None:
        n = len(data)
        head = struct.pack("!BB", 0x81, 0x80 | n) if n < 126 else struct.pack("!BBH", 0x81, 0x80 | 126, n)
        self.w.write(head + b"\x00\x00\x00\x00" + data)  # zero mask: payload unchanged

    async def recv(self) -> bytes:
        while True:
            b0, b1 = await self.r.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.r.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.r.readexactly(8))
            payload = await self.r.readexactly(n)
            if b0 & 0x0F == 0x9:
                self.w.write(struct.pack("!BB", 0x8A, 0x80 | n) + b"\x00\x00\x00\x00" + payload)
                continue
            return payload


def _options(i: int, j: int) -> bytes:
    return (
        f"OPTIONS sip:bench.example.com SIP/2.0\r\nVia: SIP/2.0/WSS c{i}.invalid;branch=z9hG4bK{i}x{j}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:u{i}@bench.example.com>;tag=t{i}\r\nTo: <sip:bench.example.com>\r\n"
        f"Call-ID: {i}-{j}\r\nCSeq: {j + 1} OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def _register(i: int) -> bytes:
    return (
        f"REGISTER sip:bench.example.com SIP/2.0\r\nVia: SIP/2.0/WSS c{i}.invalid;branch=z9hG4bKr{i}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:u{i}@bench.example.com>;tag=t{i}\r\nTo: <sip:u{i}@bench.example.com>\r\n"
        f"Call-ID: r{i}\r\nCSeq: 1 REGISTER\r\nContact: <sip:u{i}@c{i}.invalid;transport=ws>;expires=600\r\n"
        "Supported: path, outbound\r\nContent-Length: 0\r\n\r\n"
    ).encode()


async def _load(port: int, conns: int, seconds: float, pid: int) -> tuple[int, list[float], float]:
    ctx = ssl._create_unverified_context()
    clients = [await WS.connect(port, "bench.example.com", ctx) for _ in range(conns)]
    latencies: list[float] = []
    done = 0
    stop = time.monotonic() + seconds
    cpu0 = _cpu_seconds(pid)

    async def worker(i: int, ws: WS) -> None:
        nonlocal done
        j = 0
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            ws.send(_options(i, j))
            while True:
                msg = await ws.recv()
                if not msg.startswith(b"SIP/2.0 1"):
                    break
            latencies.append(time.perf_counter() - t0)
            done += 1
            j += 1

    t0 = time.monotonic()
    await asyncio.gather(*(worker(i, ws) for i, ws in enumerate(clients)))
    elapsed = time.monotonic() - t0
    cpu = _cpu_seconds(pid) - cpu0
    for ws in clients:
        ws.w.close()
    return done, latencies, cpu if elapsed else 0.0


async def _idle(port: int, count: int, pid: int, register: bool) -> float:
    ctx = ssl._create_unverified_context()
    await asyncio.sleep(0.5)
    base = _pss_kib(pid)
    clients = []
    for i in range(count):
        ws = await WS.connect(port, "bench.example.com", ctx)
        if register:
            ws.send(_register(100000 + i))
            await ws.recv()
        clients.append(ws)
    await asyncio.sleep(2.0)
    held = _pss_kib(pid)
    for ws in clients:
        ws.w.close()
    await asyncio.sleep(1.0)
    return (held - base) / count


def _utf8_cost(rounds: int = 20000) -> tuple[int, float, float]:
    """(message bytes, µs per message with autobahn's validator, µs with bytes.decode)."""
    from autobahn.websocket.utf8validator import Utf8Validator

    sdp = "".join(f"a=candidate:{i} 1 udp 2122260223 192.0.2.{i} 5{i:04d} typ host\r\n" for i in range(12))
    msg = (_register(0).replace(b"REGISTER", b"INVITE") + sdp.encode()) * 1
    validator = Utf8Validator()
    t0 = time.perf_counter()
    for _ in range(rounds):
        validator.reset()
        ok, end, _a, _b = validator.validate(msg)
        assert ok and end
    t1 = time.perf_counter()
    for _ in range(rounds):
        msg.decode("utf-8")
    t2 = time.perf_counter()
    return len(msg), (t1 - t0) / rounds * 1e6, (t2 - t1) / rounds * 1e6


def _start(cmd: list[str], cwd: str, ready: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    log_path = Path(cwd) / f"{abs(hash(tuple(cmd)))}.log"
    with log_path.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if ready in log_path.read_text():
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise SystemExit(f"{cmd[0]} did not start: {log_path.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--idle", default="1000,5000")
    ap.add_argument("--baseline", default=None, help="source tree of an edge to compare with (same run)")
    ap.add_argument("--port-base", type=int, default=47000, help="ports used: base+60, +70, +90, +443, +444")
    args = ap.parse_args()
    b = args.port_base
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    idle_counts = [int(x) for x in args.idle.split(",") if x]
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        responder = _start([*_taskset(1), str(BIN / "python"), "-c", RESPONDER, str(b + 60)], tmp, "READY")
        conf = Path(tmp) / "edge.toml"
        conf.write_text(
            textwrap.dedent(
                f"""
                [edge]
                state_dir = "{tmp}/state"
                [listen]
                https = "127.0.0.1:{b + 443}"
                sip_tls = "off"
                backend_sip = "127.0.0.1:{b + 70}"
                admin = "127.0.0.1:{b + 90}"
                [sip]
                keepalive_timeout = 600
                [guard]
                allow_networks = ["127.0.0.0/8"]
                [[tenants]]
                id = "bench"
                domains = ["bench.example.com"]
                backend_sip = "udp:127.0.0.1:{b + 60}"
                certificate = "self-signed"
                [tenants.limits]
                max_connections = 100000
                """
            )
        )
        edges = [("mcs-edge", None)]
        if args.baseline:
            env = dict(os.environ, PYTHONPATH=str(Path(args.baseline).resolve()))
            edges.append((f"baseline {Path(args.baseline).name}", env))
        idle: list[float] = []
        for label, env in edges:
            edge = _start(
                [
                    *_taskset(0),
                    str(BIN / "twistd"),
                    "-n",
                    "--pidfile=",
                    "--reactor=uvloop",
                    "mcs-edge",
                    "--config",
                    str(conf),
                ],
                tmp,
                "EDG101",
                env,
            )
            try:
                done, lat, cpu = asyncio.run(_load(b + 443, args.conns, args.seconds, edge.pid))
                rows.append((f"{label} WSS -> UDP PBX (OPTIONS)", done, lat, cpu, args.seconds))
                if env is None:
                    idle = [asyncio.run(_idle(b + 443, n, edge.pid, True)) for n in idle_counts]
            finally:
                _stop(edge)
        _stop(responder)
        chain = Path(tmp) / "state" / "certs" / "bench" / "fullchain.pem"
        key = Path(tmp) / "state" / "certs" / "bench" / "privkey.pem"
        echo = _start(
            [*_taskset(0), str(BIN / "python"), "-c", ECHO_SERVER, str(chain), str(key), str(b + 444)],
            tmp,
            "READY",
        )
        try:
            done, lat, cpu = asyncio.run(_load(b + 444, args.conns, args.seconds, echo.pid))
            rows.append(("floor: autobahn echo over TLS", done, lat, cpu, args.seconds))
            idle_floor = [asyncio.run(_idle(b + 444, n, echo.pid, False)) for n in idle_counts]
        finally:
            _stop(echo)
    print(f"{'server':38} {'tx/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms/1000 tx':>15}")
    for name, n, lat, cpu, secs in rows:
        lat.sort()
        p50 = statistics.median(lat) * 1000 if lat else 0
        p99 = lat[int(len(lat) * 0.99) - 1] * 1000 if lat else 0
        print(f"{name:38} {n / secs:8.0f} {p50:8.2f} {p99:8.2f} {cpu * 1e6 / max(n, 1):15.1f}")
    size, validator_us, decode_us = _utf8_cost()
    print(
        f"UTF-8 validation of a {size}-byte INVITE: {validator_us:.2f} µs (autobahn validator, as run), "
        f"{decode_us:.2f} µs (bytes.decode)"
    )
    print()
    print(
        f"{'idle connections':38} "
        + " ".join(f"{n:>10d}" for n in idle_counts)
        + "   (PSS KiB per connection)"
    )
    print(f"{'mcs-edge (TLS+WS+registered flow)':38} " + " ".join(f"{v:10.1f}" for v in idle))
    print(f"{'floor: autobahn echo (TLS+WS)':38} " + " ".join(f"{v:10.1f}" for v in idle_floor))


if __name__ == "__main__":
    main()
