"""Shaping accuracy and the CPU cost of policing, beside the unpoliced relay in the same run.

What it prints:

1. Policed UDP loop (the media relay's path: uvloop datagram endpoint, one ``Policer.admit`` per
   packet): a sender process offers 3x the configured rate of 200-byte packets; the delivered rate
   over ``--seconds`` (default 10), measured at a sink after the bucket's burst is spent, against
   the configured rate, for 16 KB/s, 60 KB/s and 1 MB/s (target within +-2%).
2. SIP over WebSocket through the edge (TLS, the RFC 6455 codec, ``StreamShaper``): a client process tries
   to send 3x the configured rate of SIP MESSAGEs (~2 KB; ~16 KB at 1 MB/s), and manages what
   TCP back-pressure lets it ("client wrote"); the rate at which they reach the SIP router
   (WebSocket frame bytes) over the same window, for the same three rates, with the number of
   read pauses (0 would mean the edge's CPU, not the shaper, set the pace). The PBX is a UDP
   responder on the edge's reactor (Twisted's asyncio reactor on uvloop).
3. Relay CPU per 1,000 packets (process CPU time of the relay, the sender in another process) at a
   fixed offered load: unpoliced; policed with every packet admitted (leg bucket; leg inside a
   tenant bucket); policed dropping about two thirds. Beside it, ``Policer.admit`` alone.

Usage: ``python bench/bench_shaping.py [--seconds 10] [--skip-ws] [--skip-udp] [--skip-cpu]``.
Figures, not verdicts: the machine is shared, so read each line against its neighbours.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from mcs_edge.core.shaping import Policer, TokenBucket  # noqa: E402

RATES = (16_000, 60_000, 1_000_000)
PACKET = 200

SENDER = r"""
import socket, sys, time
host, port, rate, size, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
payload = b"\x80" + bytes(size - 1)
pps = rate / size
t0 = time.monotonic()
sent = 0
while True:
    now = time.monotonic() - t0
    if now >= seconds:
        break
    due = int(now * pps) + 1
    while sent < due:
        try:
            s.sendto(payload, (host, port))
        except BlockingIOError:
            pass
        sent += 1
    time.sleep(0.001)
print(sent)
"""


def _loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()


class _Sink(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.arrivals: list[tuple[float, int]] = []

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.arrivals.append((time.monotonic(), len(data)))


class _Relay(asyncio.DatagramProtocol):
    """One leg: police (optionally) and forward to the sink."""

    def __init__(
        self, policer: Policer | None, sink: tuple[str, int], loop: asyncio.AbstractEventLoop
    ) -> None:
        self.policer = policer
        self.sink = sink
        self.time = loop.time
        self.transport: Any = None
        self.received = 0
        self.first_drop: float | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received += 1
        policer = self.policer
        if policer is None or policer.admit(len(data), self.time()):
            self.transport.sendto(data, self.sink)
        elif self.first_drop is None:
            self.first_drop = time.monotonic()


async def _udp_run(
    policer: Policer | None, offered: float, size: int, seconds: float, count: bool = True
) -> tuple[_Relay, _Sink, float]:
    """Relay (and police) ``offered`` bytes/s for ``seconds``; returns the relay, the sink, relay CPU s.

    With ``count`` the sink is an endpoint of this process recording arrivals; without, it is a
    socket nobody reads (the kernel drops), so the process CPU time is the relay's alone.
    """
    loop = asyncio.get_running_loop()
    sink = _Sink()
    quiet: socket.socket | None = None
    sink_t: Any = None
    if count:
        sink_t, sink = await loop.create_datagram_endpoint(_Sink, local_addr=("127.0.0.1", 0))
        sink_addr = sink_t.get_extra_info("sockname")
    else:
        quiet = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        quiet.bind(("127.0.0.1", 0))
        sink_addr = quiet.getsockname()
    relay_t, relay = await loop.create_datagram_endpoint(
        lambda: _Relay(policer, sink_addr, loop), local_addr=("127.0.0.1", 0)
    )
    relay_t.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    port = relay_t.get_extra_info("sockname")[1]
    cpu0 = time.process_time()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SENDER, "127.0.0.1", str(port), str(offered), str(size), str(seconds),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    await proc.communicate()
    await asyncio.sleep(0.2)
    cpu = time.process_time() - cpu0
    relay_t.close()
    if sink_t is not None:
        sink_t.close()
    if quiet is not None:
        quiet.close()
    return relay, sink, cpu


def udp_accuracy(seconds: float) -> None:
    print(
        f"\n1. Policed UDP loop: {PACKET}-byte packets offered at 3x the rate; delivered over {seconds:g} s"
    )
    print(f"   {'configured':>12} {'delivered':>12} {'error':>8} {'dropped':>9}")
    loop = _loop()
    try:
        for rate in RATES:
            burst = 2 * rate
            policer = Policer(TokenBucket(rate, burst, loop.time()))
            warm = burst / (2 * rate) + 1.0  # the burst is spent after burst / (offered - rate)
            relay, sink, _cpu = loop.run_until_complete(
                _udp_run(policer, 3 * rate, PACKET, warm + seconds + 1)
            )
            start = (relay.first_drop or sink.arrivals[0][0]) + 0.5
            end = start + seconds
            got = sum(n for t, n in sink.arrivals if start <= t < end)
            measured = got / seconds
            dropped = policer.dropped_packets / max(1, relay.received)
            print(
                f"   {rate / 1000:>9g} KB/s {measured / 1000:>9.2f} KB/s {100 * (measured / rate - 1):>+7.2f}% {100 * dropped:>8.1f}%"
            )
    finally:
        loop.close()


def cpu_cost(seconds: float, rounds: int = 3) -> None:
    pps = 20_000
    print(
        f"\n3. Relay CPU per 1,000 packets at {pps} packets/s offered ({PACKET} B), {seconds:g} s x {rounds}"
        " rounds interleaved, median (same run)"
    )
    loop = _loop()
    big = 1e12
    cases: list[tuple[str, Any]] = [
        ("unpoliced relay", lambda now: None),
        ("policed, all admitted (leg)", lambda now: Policer(TokenBucket(big, big, now))),
        (
            "policed, all admitted (leg in tenant)",
            lambda now: Policer(TokenBucket(big, big, now), TokenBucket(big, big, now)),
        ),
        ("policed, ~2/3 dropped (leg)", lambda now: Policer(TokenBucket(pps * PACKET / 3, PACKET * 10, now))),
    ]
    results: dict[str, list[float]] = {name: [] for name, _ in cases}
    forwarded: dict[str, float] = {}
    try:
        for _ in range(rounds):
            for name, make in cases:
                policer = make(loop.time())
                relay, _sink, cpu = loop.run_until_complete(
                    _udp_run(policer, pps * PACKET, PACKET, seconds, count=False)
                )
                results[name].append(1e6 * cpu / max(1, relay.received))
                dropped = policer.dropped_packets if policer is not None else 0
                forwarded[name] = 1 - dropped / max(1, relay.received)
    finally:
        loop.close()
    base = statistics.median(results[cases[0][0]])
    for name, _ in cases:
        med = statistics.median(results[name])
        spread = f"{min(results[name]):.2f}-{max(results[name]):.2f}"
        print(
            f"   {name:<40} {med:6.2f} ms CPU / 1000 pkts ({med - base:+.2f} vs unpoliced; rounds {spread});"
            f" {100 * forwarded[name]:.0f}% forwarded"
        )
    n = 1_000_000
    for label, policer in (
        ("Policer.admit alone (leg), admitted", Policer(TokenBucket(big, big, 0.0))),
        (
            "Policer.admit alone (leg in tenant), admitted",
            Policer(TokenBucket(big, big, 0.0), TokenBucket(big, big, 0.0)),
        ),
    ):
        admit = policer.admit
        t0 = time.perf_counter()
        now = 0.0
        for _ in range(n):
            now += 0.00005
            admit(PACKET, now)
        dt = time.perf_counter() - t0
        print(f"   {label:<46} {1000 * dt / n * 1000:7.3f} ms / 1000 calls")


# -- WebSocket through the edge (child process: one Twisted reactor per process) -------------------

WS_CLIENT = r"""
import os, socket, ssl, struct, sys, threading, time, uuid
port, ca, rate, seconds, size = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
ctx = ssl.create_default_context(cafile=ca)
sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="rossi.example.com")
key = "dGhlIHNhbXBsZSBub25jZQ=="
sock.sendall((f"GET / HTTP/1.1\r\nHost: rossi.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\n\r\n").encode())
buf = b""
while b"\r\n\r\n" not in buf:
    buf += sock.recv(4096)
assert b" 101 " in buf.split(b"\r\n", 1)[0], buf
def drain():
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass
threading.Thread(target=drain, daemon=True).start()
body = "x" * size
def frame(i):
    cid = f"{i}-{uuid.uuid4().hex}"
    msg = (f"MESSAGE sip:bob@rossi.example.com SIP/2.0\r\nVia: SIP/2.0/WSS x.invalid;branch=z9hG4bK{cid[:20]}\r\n"
           f"Max-Forwards: 70\r\nFrom: <sip:a@rossi.example.com>;tag=1\r\nTo: <sip:bob@rossi.example.com>\r\n"
           f"Call-ID: {cid}\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode()
    return struct.pack("!BBH", 0x81, 0x80 | 126, len(msg)) + b"\0\0\0\0" + msg  # zero mask: payload as is
frames = [frame(i) for i in range(max(100, 8_000_000 // size))]
t0 = time.monotonic(); sent = 0; i = 0
while time.monotonic() - t0 < seconds:
    due = (time.monotonic() - t0) * rate
    while sent < due:
        f = frames[i % len(frames)]; i += 1
        sock.sendall(f); sent += len(f)
    time.sleep(0.002)
print(sent)
"""


def _body_size(rate: int) -> int:
    # ~2 KB messages; at 1 MB/s ~16 KB ones (one TLS record each), so that the SIP proxy's
    # per-message CPU (about 500 2-KB messages/s fill a core here) does not become the limit.
    return 1800 if rate < 500_000 else 16000


def ws_child(rate: int, seconds: float) -> None:
    """Run one edge on the asyncio/uvloop reactor and measure what reaches its SIP router."""
    import uvloop
    from twisted.internet import asyncioreactor

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    asyncioreactor.install(loop)
    from twisted.internet import reactor
    from twisted.internet.protocol import DatagramProtocol

    from mcs_edge import config as c
    from mcs_edge.tx.service import EdgeService

    class Pbx(DatagramProtocol):
        def datagramReceived(self, data: bytes, addr: Any) -> None:  # noqa: N802
            head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
            keep = [h for h in head[1:] if h[:4].lower() in (b"via:", b"from", b"call", b"cseq")]
            to = [h for h in head[1:] if h[:3].lower() == b"to:"]
            out = (
                b"SIP/2.0 200 OK\r\n"
                + b"\r\n".join(keep + [t + b";tag=p" for t in to])
                + b"\r\nContent-Length: 0\r\n\r\n"
            )
            self.transport.write(out, addr)

    pbx_port = reactor.listenUDP(0, Pbx(), interface="127.0.0.1")  # type: ignore[attr-defined]
    tmp = tempfile.mkdtemp(prefix="bench-shaping-")
    from helpers.edge import edge_toml, tenant_toml

    text = edge_toml(
        Path(tmp) / "state",
        tenant_toml("rossi", pbx_port.getHost().port),
        sip="t1 = 2\n",
        sections=(
            f"[shaping]\nrate = {rate}\nburst = {2 * rate}\nsend_queue = {64 * 1024 * 1024}\n"
            "[guard]\nrequest_rate_per_ip = 100000\nrequest_burst_per_ip = 100000\n"
        ),
    )
    svc = EdgeService(c.loads(text), reactor)
    svc.privilegedStartService()
    svc.startService()
    arrivals: list[tuple[float, int]] = []
    router = svc.sip
    original = router.data_from_client

    def counting(flow: Any, data: bytes) -> None:
        arrivals.append((time.monotonic(), len(data) + 8))  # + the WebSocket frame header (client frames)
        original(flow, data)

    router.data_from_client = counting  # type: ignore[method-assign]
    https = svc.ports["https"].getHost().port
    warm = 2 * rate / (2 * rate) + 1.0
    total = warm + seconds + 1.0
    client = subprocess.Popen(
        [
            sys.executable,
            "-c",
            WS_CLIENT,
            str(https),
            f"{tmp}/state/dev-ca/ca.pem",
            str(3 * rate),
            str(total),
            str(_body_size(rate)),
        ],
        stdout=subprocess.PIPE,
    )
    cpu0 = time.process_time()

    def done() -> None:
        if client.poll() is None:
            reactor.callLater(0.2, done)  # type: ignore[attr-defined]
            return
        cpu = time.process_time() - cpu0
        t_start = arrivals[0][0] + warm
        got = sum(n for t, n in arrivals if t_start <= t < t_start + seconds)
        offered = int((client.stdout.read() if client.stdout else b"0").strip() or 0)
        paused = sum(v for k, v in svc.shaping.counters.items() if k[0] == "reads_paused")
        print(
            json.dumps(
                {
                    "delivered": got / seconds,
                    "offered": offered / total,
                    "cpu": cpu,
                    "paused": paused,
                    "messages": len(arrivals),
                }
            )
        )
        svc.stopService().addBoth(lambda _: reactor.stop())  # type: ignore[attr-defined]

    reactor.callLater(0.5, done)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


def ws_accuracy(seconds: float) -> None:
    print(
        f"\n2. SIP over WebSocket through the edge: MESSAGEs offered at 3x the rate; delivered over {seconds:g} s"
    )
    head = f"{'configured':>12} {'message':>8} {'client wrote':>13} {'delivered':>12} {'error':>8} {'edge CPU':>9} {'pauses':>7}"
    print(f"   {head}")
    for rate in RATES:
        out = subprocess.run(
            [sys.executable, __file__, "--ws-child", str(rate), "--seconds", str(seconds)],
            capture_output=True,
            text=True,
            timeout=seconds + 120,
        )
        line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
        if not line.startswith("{"):
            print(f"   {rate / 1000:>9g} KB/s  failed: {out.stderr.strip()[-400:]}")
            continue
        r = json.loads(line)
        d = r["delivered"]
        note = "" if r["paused"] else "  (never paused: CPU-bound, not shaped)"
        print(
            f"   {rate / 1000:>9g} KB/s {_body_size(rate) / 1000:>6.1f}KB {r['offered'] / 1000:>10.1f} KB/s"
            f" {d / 1000:>9.2f} KB/s {100 * (d / rate - 1):>+7.2f}% {r['cpu']:>8.1f}s {r['paused']:>7}{note}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--skip-udp", action="store_true")
    ap.add_argument("--skip-ws", action="store_true")
    ap.add_argument("--skip-cpu", action="store_true")
    ap.add_argument("--ws-child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ws_child:
        ws_child(args.ws_child, args.seconds)
        return
    print(
        textwrap.dedent(f"""\
        bench_shaping: python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}""")
    )
    if not args.skip_udp:
        udp_accuracy(args.seconds)
    if not args.skip_ws:
        ws_accuracy(args.seconds)
    if not args.skip_cpu:
        cpu_cost(min(args.seconds, 5.0))


if __name__ == "__main__":
    main()
