"""Capacity with 1 and 2 worker processes (``edge.workers``), side by side in one run: SIP and media.

**SIP** (``--bench sip``): OPTIONS transactions sent by WSS clients (TLS + WebSocket) through the
edge to a UDP PBX that answers 200 at once, closed loop (each connection sends its next request when
the previous one is answered). For each worker count it prints the transactions/s reached, p50/p99
latency and the edge's CPU per 1000 transactions (utime+stime of the supervisor and all workers,
from /proc).

**Media relay** (``--bench media``): calls set up over SIP/WSS through the edge (tenant media mode
``passthrough`` by default, ``--media-mode bridge`` for DTLS-SRTP <-> RTP; the bench itself is the
PBX), each carrying one 50 packets/s RTP stream each way (160-byte payload; a *stream* is one
direction of one call, as in ``bench_media.py``). Streams are added in steps of x1.25 from
``--media-start``; at each level the bench waits a second, then counts over ``--media-window``
seconds the packets sent and received (by the sequence numbers sent in the window, so late packets
count) and the CPU of the edge (supervisor + workers) and of the generator. The ramp stops at the
first level whose loss is >= 0.1% (re-measured once to rule out a one-off stall of this shared
machine), then two bisection steps between the last good and the first bad level refine the
figure. A level at which the generator itself could not keep its send schedule (lagging, or below
97% of the nominal rate) ends the ramp: the figure is then bounded by the generator, and printed as
such. Each configuration has a time budget (``--media-budget``). The baseline row ``direct`` runs the
same ramp with the generator's sockets talking to each other (no edge): the generator's own
ceiling on this machine.

On a 2-core machine the load generator (and for SIP the PBX responder) shares the cores with the
workers, so 2 workers cannot double the 1-worker figure here: read the CPU-per-unit columns for the
cost of the supervisor and SO_REUSEPORT spreading, and the capacity columns for what this box
reached with the generator on it.

Usage: ``python bench/bench_workers.py [--bench sip,media] [--workers 1,2] [--seconds 8]
[--conns 64] [--media-mode passthrough|bridge] [--media-window 3] [--media-budget 120]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import signal
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent

RESPONDER = r"""
import asyncio, sys
try:
    import uvloop; uvloop.install()
except ImportError:
    pass
class R(asyncio.DatagramProtocol):
    def connection_made(self, t): self.t = t
    def datagram_received(self, data, addr):
        if not data.startswith(b"OPTIONS "): return
        head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        keep = [l for l in head[1:] if l[:4].lower() in (b"via:", b"from", b"to: ", b"call", b"cseq")]
        self.t.sendto(b"SIP/2.0 200 OK\r\n" + b"\r\n".join(keep) + b"\r\nContent-Length: 0\r\n\r\n", addr)
async def main():
    loop = asyncio.get_running_loop()
    t, _ = await loop.create_datagram_endpoint(R, local_addr=("127.0.0.1", 0))
    print(t.get_extra_info("sockname")[1], flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree(pid: int) -> list[int]:
    out = [pid]
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for k in kids:
        out += _tree(int(k))
    return out


class WS:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.r, self.w = reader, writer

    @classmethod
    async def connect(cls, port: int, host: str, ctx: ssl.SSLContext) -> WS:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=host)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\n\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(head.decode(errors="replace"))
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        n = len(data)
        head = struct.pack("!BB", 0x81, 0x80 | n) if n < 126 else struct.pack("!BBH", 0x81, 0x80 | 126, n)
        self.w.write(head + b"\0\0\0\0" + data)  # a zero mask leaves the payload as is

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
                self.w.write(struct.pack("!BB", 0x8A, 0x80 | len(payload)) + b"\0\0\0\0" + payload)
                continue
            return payload


def _options(i: int, j: int) -> bytes:
    return (
        f"OPTIONS sip:bench.example.com SIP/2.0\r\nVia: SIP/2.0/WSS c{i}.invalid;branch=z9hG4bK{i}x{j}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:u{i}@bench.example.com>;tag=t{i}\r\nTo: <sip:bench.example.com>\r\n"
        f"Call-ID: b{i}-{j}\r\nCSeq: {j} OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()


async def _load(
    port: int, conns: int, seconds: float, pids: list[int]
) -> tuple[int, list[float], float, float]:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    clients = [await WS.connect(port, "bench.example.com", ctx) for _ in range(conns)]
    lat: list[float] = []
    done = 0
    stop_at = 0.0

    async def worker(i: int, ws: WS) -> None:
        nonlocal done
        j = 0
        while time.monotonic() < stop_at:
            j += 1
            t0 = time.perf_counter()
            ws.send(_options(i, j))
            while not (await ws.recv()).startswith(b"SIP/2.0 200"):
                pass
            lat.append(time.perf_counter() - t0)
            done += 1

    cpu0 = sum(_cpu_seconds(p) for p in pids)
    t0 = time.monotonic()
    stop_at = t0 + seconds
    await asyncio.gather(*(worker(i, ws) for i, ws in enumerate(clients)))
    elapsed = time.monotonic() - t0
    cpu = sum(_cpu_seconds(p) for p in pids) - cpu0
    for ws in clients:
        ws.w.close()
    return done, lat, cpu, elapsed


def _run(
    workers: int, seconds: float, conns: int, responder_port: int
) -> tuple[int, list[float], float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "edge.toml"
        conf.write_text(
            f'[edge]\nstate_dir = "{tmp}/state"\nworkers = {workers}\ndrain_timeout = 1\n'
            '[listen]\nhttps = "127.0.0.1:0"\nsip_tls = "off"\nbackend_sip = "127.0.0.1:0"\nadmin = "127.0.0.1:0"\n'
            "[tls]\nreload_interval = 0\n[sip]\nkeepalive_timeout = 600\n"
            '[guard]\nallow_networks = ["127.0.0.0/8"]\n'  # every bench client comes from loopback
            f'[[tenants]]\nid = "bench"\ndomains = ["bench.example.com"]\n'
            f'backend_sip = "udp:127.0.0.1:{responder_port}"\ncertificate = "self-signed"\n'
        )
        log = Path(tmp) / "edge.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    str(BIN / "twistd"),
                    "-n",
                    "--pidfile=",
                    "--reactor=uvloop",
                    "mcs-edge",
                    "--config",
                    str(conf),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=tmp,
            )
        try:
            pattern = re.compile(r"^\S+ \[(?!worker)[^\]]*\] EDG101 .*https://[^:]+:(\d+)/", re.M)
            deadline = time.monotonic() + 60
            while not (m := pattern.search(log.read_text())):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"edge did not start:\n{log.read_text()}")
                time.sleep(0.05)
            port = int(m.group(1))
            time.sleep(0.5)
            pids = _tree(proc.pid)
            return asyncio.run(_load(port, conns, seconds, pids))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--workers", default="1,2")
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    responder = subprocess.Popen([sys.executable, "-c", RESPONDER], stdout=subprocess.PIPE, text=True)
    try:
        assert responder.stdout is not None
        rport = int(responder.stdout.readline())
        rows = []
        for n in (int(x) for x in args.workers.split(",")):
            done, lat, cpu, elapsed = _run(n, args.seconds, args.conns, rport)
            lat.sort()
            p50 = statistics.median(lat) * 1000 if lat else 0.0
            p99 = lat[int(len(lat) * 0.99) - 1] * 1000 if lat else 0.0
            rows.append((n, done / elapsed, p50, p99, cpu * 1e6 / max(done, 1), cpu / elapsed))
        print(
            f"SIP OPTIONS over WSS -> UDP PBX, {args.conns} connections, closed loop, {args.seconds:.0f} s each"
        )
        print(f"{os.cpu_count()} CPU(s); the load generator and the responder run on the same machine")
        print(
            f"{'workers':>8} {'tx/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'edge CPU ms/1000 tx':>20} {'edge cores busy':>16}"
        )
        for n, rate, p50, p99, cpu_per, busy in rows:
            print(f"{n:8d} {rate:8.0f} {p50:8.2f} {p99:8.2f} {cpu_per:20.1f} {busy:16.2f}")
    finally:
        responder.send_signal(signal.SIGTERM)
        responder.wait(5)


if __name__ == "__main__":
    main()
