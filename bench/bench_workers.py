"""Capacity with 1 and 2 worker processes (``edge.workers``), side by side in one run: SIP and media.

**SIP** (``--bench sip``): OPTIONS transactions sent by WSS clients (TLS + WebSocket) through the
edge to a UDP PBX that answers 200 at once, closed loop (each connection sends its next request when
the previous one is answered). For each worker count it prints the transactions/s reached, p50/p99
latency and the edge's CPU per 1000 transactions (utime+stime of the supervisor and all workers,
from /proc).

**Media relay** (``--bench media``): calls set up over SIP/WSS through the edge (tenant media mode
``passthrough``; this process is the PBX and answers each INVITE with the call's own RTP socket),
each carrying one 50 packets/s RTP stream each way (160-byte payload; a *stream* is one direction
of one call, as in ``bench_media.py``). The RTP is sent and counted by ``bench/rtpgen.c``, compiled
here with the system's C compiler and run at ``nice -10`` (it plays the outside world and must not be
starved by the workers it measures; ``--generator python`` is a slower fallback). Streams are added
in steps of x1.25 from ``--media-start``; at each level the bench waits a second, then counts over
``--media-window`` seconds the packets sent and received (by the sequence numbers sent in the window,
so late packets count) and the CPU of the edge (supervisor + workers), of the generator and of
everything else on the machine. The ramp stops at the first level whose loss is >= 0.1% (measured
again once, and up to twice more after a pause when something else was using the machine), then two
bisection steps between the last good and the first bad level refine the figure. Other ends: the
generator could not keep its schedule (lagging > 100 ms, or below 97% of the nominal rate), the
edge could not set calls up within 15 s (saturated), the time budget (``--media-budget``). The
baseline row ``direct`` runs the same ramp (on half the budget) with the generator's sockets talking
to each other (no edge): the generator's own ceiling on this machine. CPU per 1,000 packets falls
as the load rises (an event loop handles more packets per wake-up), so it is printed at the maximum
and near ``--media-ref`` streams.

**Hold** (``--bench hold``): the issue's two-worker figure. ``--registered`` WSS connections
(TLS + WebSocket, each REGISTERed; this process is the PBX and answers 200) are opened and held,
then ``--calls`` calls are set up over ``--media-conns`` more WSS connections (tenant media mode
``--media-mode``) and each carries 50 packets/s each way, sent and counted by ``rtpgen.c``; the
calls are then held for ``--hold`` seconds while a probe call is set up every 0.5 s. What the
clients offer (``--client-srtp``, with ``--media-mode bridge``): ``none``, plain RTP/AVP;
``sdes``, RTP/SAVP with an SDES key, and ``rtpgen.c`` sends SRTP (AES_CM_128_HMAC_SHA1_80,
OpenSSL's libcrypto), so the edge bridges SRTP <-> RTP; ``dtls``, what a browser offers
(UDP/TLS/RTP/SAVPF: ICE credentials and a host candidate, ``a=fingerprint`` of a certificate made
for the run, ``a=setup:actpass``, rtcp-mux, BUNDLE), and ``rtpgen.c`` plays the browser toward the
ICE-lite edge: STUN checks with USE-CANDIDATE, MESSAGE-INTEGRITY and FINGERPRINT, the DTLS handshake
as client (OpenSSL, memory BIOs; the edge's certificate checked against its fingerprint), SRTP keys
from the exporter (RFC 5764), then SRTP, and a consent check every 4-6 s (RFC 7675); the hold starts
once every call is keyed. With SRTP clients every packet the clients receive has its tag checked
(the DTLS receive key, or the SDES answer's). Printed per worker count: agents registered (and the
edge's CPU per registration), INVITE -> 200 times while the calls are set up and of the probes
during the hold, DTLS set-up (calls keyed, answer -> keys p50/p99), loss over the hold, the
datagrams each side received (RTP or SRTP; valid and invalid tags), consent checks, the CPU of the
edge, the generator and everything else on the machine, and for each worker and the generator the
time on a CPU and runnable but waiting for one (``/proc/PID/task/*/schedstat``). ``--turns DIR``
runs the workers under ``bench/turnprobe.py`` (``bench/workerprobe/``) and prints what the probe
ticks >= 30 ms late held; ``--edge-session`` runs the edge in a session (a scheduling autogroup) of
its own.

On a 2-core machine the load generator (and for SIP the PBX responder) shares the cores with the
workers, so 2 workers cannot double the 1-worker figure here: read the CPU-per-unit columns for the
cost of the supervisor and SO_REUSEPORT spreading, and the capacity columns for what this box
reached with the generator on it.

Usage: ``python bench/bench_workers.py [--bench sip,media,hold] [--workers 1,2] [--seconds 8]
[--conns 64] [--media-start 800] [--media-window 3] [--media-budget 150] [-v]
[--media-mode passthrough|bridge] [--client-srtp none|sdes|dtls] [--registered 10000] [--calls 1000] [--hold 60]
[--retry-refused N] [--turns DIR] [--edge-session]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import os
import random
import resource
import shutil
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import WS, BenchEdge, bench_toml, cpu_ticks, tree

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

    cpu0 = sum(cpu_ticks(p) for p in pids)
    t0 = time.monotonic()
    stop_at = t0 + seconds
    await asyncio.gather(*(worker(i, ws) for i, ws in enumerate(clients)))
    elapsed = time.monotonic() - t0
    cpu = sum(cpu_ticks(p) for p in pids) - cpu0
    for ws in clients:
        ws.w.close()
    return done, lat, cpu, elapsed


class Edge(BenchEdge):
    """``twistd -n --reactor=uvloop mcs-edge`` with ``workers`` processes and one tenant ``bench``."""

    def __init__(
        self,
        tmp: str,
        workers: int,
        backend_port: int,
        extra: str = "",
        tenant: str = "",
        session: bool = False,
    ) -> None:
        """``session``: the edge runs in a session of its own (``setsid``), hence, with the kernel's
        autogroup scheduling (``kernel.sched_autogroup_enabled``), in a scheduling group of its own:
        the generator's ``nice -10`` then ranks it within the bench's group only, and the edge gets
        a group's share of the machine, as it would beside another service."""
        edge = f'workers = {workers}\npublic_address = "127.0.0.1"\nbackend_address = "127.0.0.1"\n'
        prefix = ["setsid"] if session and shutil.which("setsid") else None
        super().__init__(tmp, bench_toml(Path(tmp) / "state", backend_port, edge, extra, tenant), prefix)
        time.sleep(0.5)
        self.pids = tree(self.proc.pid)

    def cpu(self) -> float:
        return sum(cpu_ticks(p) for p in self.pids)


def _run(
    workers: int, seconds: float, conns: int, responder_port: int
) -> tuple[int, list[float], float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        edge = Edge(tmp, workers, responder_port)
        try:
            return asyncio.run(_load(edge.port, conns, seconds, edge.pids))
        finally:
            edge.stop()


# =============================================================================== media relay

RTP = struct.Struct("!BBHII")
PAYLOAD = bytes(range(160))
RATE = 50  # packets/s per stream
TICK = 0.002  # each 20 ms period is spread over 10 ticks
LOSS_LIMIT = 0.001  # 0.1 %
TURN_LIMIT = 0.03  # --turns: probe ticks this late (the default overload.max_queue_age) are counted
RAMP = 1.25
OTHER_LOAD = 0.25  # cores busy with other work during a lossy window: measured again
_TS = struct.Struct("!I")


class Stream:
    """One direction of one call: sends 50 RTP packets/s to ``dest``; its receiver counts what arrives."""

    __slots__ = ("dest", "got", "hi", "lo", "n", "ssrc", "transport")

    def __init__(self, ssrc: int) -> None:
        self.ssrc = ssrc
        self.n = 0  # next sequence number to send (the RTP timestamp carries n * 160)
        self.dest: tuple[str, int] = ("127.0.0.1", 9)
        self.transport: asyncio.DatagramTransport | None = None  # the socket it sends from
        self.lo = self.hi = 1 << 62  # sequence numbers counted: [lo, hi)
        self.got = 0


class Receiver(asyncio.DatagramProtocol):
    """The socket of one end of a call: counts the packets of the stream it receives."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream

    def datagram_received(self, data: bytes, addr: object) -> None:
        s = self.stream
        if len(data) >= 12 and data[0] >> 6 == 2:
            n = _TS.unpack_from(data, 4)[0] // 160
            if s.lo <= n < s.hi:
                s.got += 1


class Pump:
    """Sends every active stream's packets on a 2 ms tick (a tenth of the streams per tick)."""

    def __init__(self) -> None:
        self.streams: list[Stream] = []
        self.active = 0
        self.slots: list[list[Stream]] = [[] for _ in range(10)]
        self.lag = 0.0  # worst lag behind the schedule since reset_lag()
        self.resyncs = 0
        self.running = True

    def set_active(self, n: int) -> None:
        self.active = n
        slots: list[list[Stream]] = [[] for _ in range(10)]
        for i, s in enumerate(self.streams[:n]):
            slots[i % 10].append(s)
        self.slots = slots

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        pack = RTP.pack
        start = loop.time()
        k = 0
        while self.running:
            for s in self.slots[k % 10]:
                n = s.n
                s.transport.sendto(  # type: ignore[union-attr]
                    pack(0x80, 0, n & 0xFFFF, (n * 160) & 0xFFFFFFFF, s.ssrc) + PAYLOAD, s.dest
                )
                s.n = n + 1
            k += 1
            delay = start + k * TICK - loop.time()
            if delay < -0.2:  # stalled (call setup, a busy machine): skip the missed ticks
                start, k = loop.time(), 0
                self.resyncs += 1
                delay = 0.0
            self.lag = max(self.lag, -delay)
            await asyncio.sleep(max(delay, 0.0))


class Pbx(asyncio.DatagramProtocol):
    """The tenants' PBX on UDP: answers each INVITE with the SDP of the call's own RTP socket."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.answers: dict[str, str] = {}  # Call-ID -> answer SDP (registered before the INVITE is sent)
        self.offers: dict[str, str] = {}  # Call-ID -> the offer the edge sent

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode(errors="replace").split("\r\n")
        method = lines[0].split(" ", 1)[0]
        if method in ("ACK", "SIP/2.0"):
            return
        keep = [
            ln
            for ln in lines[1:]
            if ln.split(":", 1)[0].strip().lower() in ("via", "from", "call-id", "cseq", "record-route")
        ]
        to = next((ln for ln in lines if ln.lower().startswith("to:")), "To: <sip:x>")
        call_id = next((ln.split(":", 1)[1].strip() for ln in lines if ln.lower().startswith("call-id:")), "")
        sdp = ""
        if method == "INVITE":
            self.offers[call_id] = body.decode()
            sdp = self.answers.get(call_id, "")
            to += ";tag=pbx" if ";tag=" not in to else ""
        port = self.transport.get_extra_info("sockname")[1]  # type: ignore[union-attr]
        out = "\r\n".join(["SIP/2.0 200 OK", *keep, to, f"Contact: <sip:pbx@127.0.0.1:{port}>"])
        if sdp:
            out += "\r\nContent-Type: application/sdp"
        out += f"\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}"
        self.transport.sendto(out.encode(), addr)  # type: ignore[union-attr]


def _sdp(port: int, extra: str = "", key: bytes | None = None) -> str:
    """A plain RTP/AVP offer or answer, RTP/SAVP with an SDES ``key`` (AES_CM_128_HMAC_SHA1_80)."""
    proto = "RTP/AVP"
    if key is not None:
        proto = "RTP/SAVP"
        extra = f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{base64.b64encode(key).decode()}\r\n{extra}"
    return (
        f"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {port} {proto} 0\r\na=rtpmap:0 PCMU/8000\r\na=rtcp-mux\r\na=sendrecv\r\n{extra}"
    )


def _webrtc_sdp(port: int, ufrag: str, pwd: str, fingerprint: str) -> str:
    """What a browser offers (UDP/TLS/RTP/SAVPF: ICE host candidate, DTLS fingerprint, setup
    actpass, rtcp-mux, BUNDLE of one audio section; RFC 8829/8843)."""
    return (
        "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
        "a=msid-semantic: WMS\r\n"
        f"m=audio {port} UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 127.0.0.1\r\n"
        f"a=candidate:1 1 udp 2130706431 127.0.0.1 {port} typ host\r\n"
        f"a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\na=ice-options:trickle\r\n"
        f"a=fingerprint:sha-256 {fingerprint}\r\na=setup:actpass\r\na=mid:0\r\na=sendrecv\r\n"
        "a=rtcp-mux\r\na=rtpmap:0 PCMU/8000\r\n"
    )


def _attribute(sdp: str, name: str) -> str:
    """The value of the first ``a=name:`` line of ``sdp`` ('' when there is none)."""
    prefix = f"a={name}:"
    for line in sdp.split("\r\n"):
        if line.startswith(prefix):
            return line[len(prefix) :].strip()
    return ""


class DtlsIdentity:
    """The WebRTC clients' DTLS certificate (ECDSA P-256, self-signed, as a browser's), in PEM files
    for ``rtpgen.c``, and its SHA-256 fingerprint for the offers."""

    def __init__(self, directory: str) -> None:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "WebRTC")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .sign(key, hashes.SHA256())
        )
        self.cert = Path(directory) / "webrtc-cert.pem"
        self.key = Path(directory) / "webrtc-key.pem"
        self.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        self.fingerprint = cert.fingerprint(hashes.SHA256()).hex(":").upper()

    def offer(self, port: int) -> tuple[str, str]:
        """A browser's offer from ``port`` with fresh ICE credentials: (SDP, our ufrag)."""
        ufrag = os.urandom(4).hex()
        return _webrtc_sdp(port, ufrag, os.urandom(12).hex(), self.fingerprint), ufrag


def _media_port(sdp: str) -> int:
    for line in sdp.split("\r\n"):
        if line.startswith("m=audio "):
            return int(line.split()[1])
    raise RuntimeError(f"no audio in {sdp!r}")


def _header(msg: str, name: str) -> list[str]:
    low = name.lower() + ":"
    return [
        ln.split(":", 1)[1].strip()
        for ln in msg.split("\r\n\r\n", 1)[0].split("\r\n")
        if ln.lower().startswith(low)
    ]


class SipConn:
    """One WSS connection carrying many calls; a reader task hands final responses to their caller."""

    def __init__(self, ws: WS) -> None:
        self.ws = ws
        self.waiting: dict[str, asyncio.Future[str]] = {}
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            while True:
                msg = (await self.ws.recv()).decode(errors="replace")
                if not msg.startswith("SIP/2.0 ") or msg[8] == "1":
                    continue
                call_id = (_header(msg, "Call-ID") or [""])[0]
                fut = self.waiting.pop(call_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            for fut in self.waiting.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("edge closed the connection"))

    async def invite(self, call_id: str, offer: str) -> str:
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.waiting[call_id] = fut
        d = "bench.example.com"
        self.ws.send(
            (
                f"INVITE sip:200@{d} SIP/2.0\r\nVia: SIP/2.0/WSS b.invalid;branch=z9hG4bK{call_id}\r\n"
                f"Max-Forwards: 70\r\nTo: <sip:200@{d}>\r\nFrom: <sip:gen@{d}>;tag=g{call_id}\r\n"
                f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:gen@b.invalid;transport=ws;ob>\r\n"
                f"Content-Type: application/sdp\r\nContent-Length: {len(offer)}\r\n\r\n{offer}"
            ).encode()
        )
        msg = await asyncio.wait_for(fut, 15)
        if not msg.startswith("SIP/2.0 200"):
            raise RuntimeError(f"call refused: {msg.splitlines()[0]}")
        routes = [r.strip() for line in _header(msg, "Record-Route") for r in line.split(",")]
        route = f"Route: {', '.join(reversed(routes))}\r\n" if routes else ""
        target = (_header(msg, "Contact") or ["<sip:pbx@127.0.0.1>"])[0].strip("<>").split(">")[0]
        self.ws.send(
            (
                f"ACK {target} SIP/2.0\r\nVia: SIP/2.0/WSS b.invalid;branch=z9hG4bKa{call_id}\r\n"
                f"Max-Forwards: 70\r\n{route}To: {(_header(msg, 'To') or [''])[0]}\r\n"
                f"From: <sip:gen@{d}>;tag=g{call_id}\r\nCall-ID: {call_id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
            ).encode()
        )
        return msg.split("\r\n\r\n", 1)[1]

    def close(self) -> None:
        self.task.cancel()
        self.ws.w.close()


class PyGenerator:
    """The generator in this process (uvloop datagram endpoints and a 2 ms tick): no compiler needed."""

    name = "python"

    def __init__(self) -> None:
        self.pump = Pump()
        self.transports: list[asyncio.BaseTransport] = []
        self.task = asyncio.ensure_future(self.pump.run())
        self._resyncs = 0

    async def _socket(self, stream: Stream) -> tuple[asyncio.DatagramTransport, int]:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: Receiver(stream), local_addr=("127.0.0.1", 0)
        )
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 18)
        self.transports.append(transport)
        return transport, transport.get_extra_info("sockname")[1]

    async def alloc(self, k: int) -> list[tuple[int, int]]:
        out = []
        for _ in range(k):
            i = len(self.pump.streams) // 2
            up, down = Stream(0x10000000 + i), Stream(0x20000000 + i)  # client -> PBX, PBX -> client
            up.transport, client_port = await self._socket(down)  # the client's socket receives ``down``
            down.transport, pbx_port = await self._socket(up)
            self.pump.streams += [up, down]
            out.append((client_port, pbx_port))
        return out

    def set_dest(self, call: int, up: int, down: int) -> None:
        self.pump.streams[2 * call].dest = ("127.0.0.1", up)
        self.pump.streams[2 * call + 1].dest = ("127.0.0.1", down)

    def set_active(self, n: int) -> None:
        self.pump.set_active(n)

    def start(self) -> None:
        for s in self.pump.streams:
            s.lo, s.hi, s.got = s.n, 1 << 62, 0
        self.pump.lag = 0.0
        self._resyncs = self.pump.resyncs

    def stop(self) -> None:
        for s in self.pump.streams:
            s.hi = s.n

    def report(self) -> tuple[int, int, float, int]:
        counted = self.pump.streams[: self.pump.active]
        sent = sum(s.hi - s.lo for s in counted)
        return sent, sum(s.got for s in counted), self.pump.lag, self.pump.resyncs - self._resyncs

    def cpu(self) -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    async def close(self) -> None:
        self.pump.running = False
        await asyncio.gather(self.task, return_exceptions=True)
        for tr in self.transports:
            tr.close()


class CGenerator:
    """``bench/rtpgen.c``, compiled with the system's C compiler: a few microseconds per packet."""

    name = "c"

    def __init__(self, binary: Path) -> None:
        self.proc = subprocess.Popen(
            [str(binary)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            preexec_fn=_raise_priority,  # the outside world: never starved by the workers it measures
        )

    def _cmd(self, line: str, reply: bool = True) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        if not reply:
            return ""
        answer = self.proc.stdout.readline()
        if not answer:
            raise RuntimeError("rtpgen died")
        return answer.strip()

    async def alloc(self, k: int) -> list[tuple[int, int]]:
        words = self._cmd(f"alloc {k}").split()
        if words[:1] != ["ports"] or "error" in words:
            raise RuntimeError(f"rtpgen: {' '.join(words)}")
        ports = [int(w) for w in words[1:]]
        return list(zip(ports[::2], ports[1::2], strict=True))

    def set_dest(self, call: int, up: int, down: int) -> None:
        self._cmd(f"dest {call} {up} {down}", reply=False)

    def sizes(self) -> tuple[int, ...]:
        """Datagrams of 172 (RTP) and 182 bytes (SRTP) the client and the PBX sockets received in the
        window: (client 172, client 182, PBX 172, PBX 182)."""
        return tuple(int(w) for w in self._cmd("sizes").split())

    def set_key(self, call: int, key: bytes) -> None:
        """The call's client stream is SDES-SRTP with this master key||salt."""
        self._cmd(f"key {call} {key.hex()}", reply=False)

    def set_rx_key(self, call: int, key: bytes) -> None:
        """What the edge sends to the call's client is SRTP with this master key||salt: checked."""
        self._cmd(f"rkey {call} {key.hex()}", reply=False)

    def dtls_certificate(self, identity: DtlsIdentity) -> None:
        answer = self._cmd(f"dtlscert {identity.cert} {identity.key}")
        if answer != "ok":
            raise RuntimeError(f"rtpgen: {answer}")

    def start_ice(self, call: int, edge_ufrag: str, edge_pwd: str, ufrag: str, fingerprint: str) -> None:
        """The call's client runs ICE, then DTLS as client, toward its destination (rtpgen.c)."""
        fp = fingerprint.replace(":", "")
        self._cmd(f"ice {call} {edge_ufrag} {edge_pwd} {ufrag} {fp}", reply=False)

    def dtls(self) -> dict[str, int]:
        """WebRTC clients: keyed, failed, pending, consent checks sent / answered, time to keys (us)."""
        words = [int(w) for w in self._cmd("dtls").split()]
        return dict(
            zip(
                ("keyed", "failed", "pending", "consent_sent", "consent_ok", "p50_us", "p99_us"),
                words,
                strict=True,
            )
        )

    def auth(self) -> dict[str, int]:
        """Received on the client sockets since start: SRTP whose tag verified / did not, RTCP, STUN, DTLS."""
        words = [int(w) for w in self._cmd("auth").split()]
        return dict(zip(("srtp_ok", "srtp_bad", "rtcp", "stun", "dtls"), words, strict=True))

    def set_active(self, n: int) -> None:
        self._cmd(f"active {n}")

    def start(self) -> None:
        self._cmd("start")

    def stop(self) -> None:
        self._cmd("stop")

    def report(self) -> tuple[int, int, float, int]:
        sent, got, lag_us, resyncs = (int(w) for w in self._cmd("report").split())
        return sent, got, lag_us / 1e6, resyncs

    def cpu(self) -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)  # this process sets calls up, then idles
        return cpu_ticks(self.proc.pid) + usage.ru_utime + usage.ru_stime

    async def close(self) -> None:
        try:
            self._cmd("quit", reply=False)
            self.proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


def _raise_priority() -> None:
    try:
        os.nice(-10)
    except OSError:  # not root: the figures may then be generator-bound sooner
        pass


def build_rtpgen(tmp: str, srtp: bool = False) -> Path | None:
    """Compile ``bench/rtpgen.c`` (None when there is no C compiler; with ``srtp`` (SDES and DTLS-SRTP
    clients), none without OpenSSL's libssl, libcrypto and headers either)."""
    src = Path(__file__).resolve().parent / "rtpgen.c"
    out = Path(tmp) / "rtpgen"
    flags = ["-DWITH_SRTP", str(src), "-lssl", "-lcrypto"] if srtp else [str(src)]
    for cc in ("cc", "gcc", "clang"):
        try:
            subprocess.run([cc, "-O2", "-o", str(out), *flags], check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError):
            continue
        return out
    return None


Generator = PyGenerator | CGenerator


class MediaLoad:
    """Calls (through the edge, or ``direct``) and their streams, sent by ``gen``."""

    def __init__(
        self, mode: str, gen: Generator, pbx: Pbx | None, conns: list[SipConn], client: str = "none"
    ) -> None:
        self.mode = mode
        #: what the clients offer: "none" (RTP/AVP), "sdes" (RTP/SAVP + a=crypto), "dtls" (a browser's
        #: UDP/TLS/RTP/SAVPF: ICE, DTLS-SRTP); SRTP needs the CGenerator
        self.client = client
        self.identity: DtlsIdentity | None = None  #: "dtls": the clients' certificate
        #: "dtls": call -> (edge ufrag, edge pwd, our ufrag, edge fingerprint) from the answer
        self.webrtc: dict[int, tuple[str, str, str, str]] = {}
        #: set-up INVITEs answered 503 (overload) are sent again after 1 s, as a phone would
        #: (Retry-After), this many times at most; ``refused`` counts them
        self.retries = 0
        self.refused = 0
        self.gen = gen
        self.pbx = pbx
        self.conns = conns
        self.calls = 0
        self.streams = 0
        #: (seconds from INVITE to 200, streams already flowing) per call set up through the edge
        self.setups: list[tuple[float, int]] = []
        self.probe_failures: dict[str, int] = {}  # hold: probe calls refused or timed out, by reason
        self.pbx_not_plain = 0  #: calls whose offer to the PBX was not plain RTP/AVP

    async def _dests(self, i: int, client_port: int, pbx_port: int) -> tuple[int, int]:
        """(where the client sends, where the PBX sends) for call ``i``."""
        if self.mode == "direct":
            return pbx_port, client_port
        assert self.pbx is not None
        for attempt in range(self.retries + 1):
            try:
                return await self._call(
                    f"bench{i}x{os.getpid()}" + (f"r{attempt}" if attempt else ""), i, client_port, pbx_port
                )
            except RuntimeError as exc:
                if " 503 " not in str(exc) or attempt == self.retries:
                    raise
                self.refused += 1
                await asyncio.sleep(1.0)
        raise AssertionError("not reached")

    async def _call(self, call_id: str, i: int, client_port: int, pbx_port: int) -> tuple[int, int]:
        assert self.pbx is not None
        self.pbx.answers[call_id] = _sdp(pbx_port)
        key = None
        ufrag = ""
        if self.client == "dtls":
            assert self.identity is not None, "DTLS-SRTP clients need their certificate"
            offer, ufrag = self.identity.offer(client_port)
        else:
            if self.client == "sdes":
                assert isinstance(self.gen, CGenerator), "SDES-SRTP clients need rtpgen.c"
                key = os.urandom(30)
                self.gen.set_key(i, key)
            offer = _sdp(client_port, key=key)
        t0 = time.perf_counter()
        try:
            answer = await self.conns[i % len(self.conns)].invite(call_id, offer)
        finally:
            self.pbx.answers.pop(call_id, None)
        self.setups.append((time.perf_counter() - t0, self.streams))
        if self.client == "sdes":
            crypto = _attribute(answer, "crypto").split()
            if len(crypto) < 3 or not crypto[2].startswith("inline:"):
                raise RuntimeError(f"no SDES key in the answer: {answer!r}")
            self.gen.set_rx_key(i, base64.b64decode(crypto[2][7:].split("|")[0]))  # type: ignore[union-attr]
        elif self.client == "dtls":
            setup = _attribute(answer, "setup")
            if setup != "passive":  # the clients are DTLS clients (a browser's actpass, answered passive)
                raise RuntimeError(f"answer a=setup:{setup!r}, expected passive")
            fingerprint = _attribute(answer, "fingerprint").split()
            self.webrtc[i] = (
                _attribute(answer, "ice-ufrag"),
                _attribute(answer, "ice-pwd"),
                ufrag,
                fingerprint[1] if len(fingerprint) == 2 and fingerprint[0] == "sha-256" else "",
            )
        # the relay's client-side port (from the answer), its PBX-side port (from the offer the PBX got)
        to_pbx = self.pbx.offers.pop(call_id)
        if " RTP/AVP " not in to_pbx or "a=crypto:" in to_pbx or "a=fingerprint:" in to_pbx:
            self.pbx_not_plain += 1  # the bridge must offer the PBX plain RTP
        return _media_port(answer), _media_port(to_pbx)

    async def ensure(self, streams: int) -> None:
        """At least ``streams`` streams exist (calls set up 32 at a time) and exactly that many send."""
        while 2 * self.calls < streams:
            batch = min(32, (streams - 2 * self.calls + 1) // 2)
            first = self.calls
            ports = await self.gen.alloc(batch)
            self.calls += batch
            dests = await asyncio.gather(*(self._dests(first + j, c, p) for j, (c, p) in enumerate(ports)))
            for j, (up, down) in enumerate(dests):
                self.gen.set_dest(first + j, up, down)
                webrtc = self.webrtc.pop(first + j, None)
                if webrtc is not None:
                    self.gen.start_ice(first + j, *webrtc)  # type: ignore[union-attr]
            self.gen.set_active(2 * self.calls)  # the calls set up so far send while the next are set up
            self.streams = 2 * self.calls
        self.gen.set_active(streams)
        self.streams = streams

    async def close(self) -> None:
        await self.gen.close()
        for c in self.conns:
            c.close()


def _machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all cores, /proc/stat)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


async def _measure(load: MediaLoad, edge: Edge | None, window: float) -> dict[str, float]:
    """One measuring window at the current level (after a second of warm-up)."""
    gen = load.gen
    await asyncio.sleep(1.0)
    gen.start()
    gen0 = gen.cpu()
    edge0 = edge.cpu() if edge is not None else 0.0
    busy0 = _machine_busy()
    t0 = time.monotonic()
    await asyncio.sleep(window)
    gen.stop()
    elapsed = time.monotonic() - t0
    edge1 = edge.cpu() if edge is not None else 0.0
    gen1 = gen.cpu()
    busy1 = _machine_busy()
    await asyncio.sleep(0.3)  # stragglers of the window
    sent, got, lag, stalled = gen.report()
    return {
        "streams": load.streams,
        "sent": sent,
        "got": got,
        "loss": 1 - got / sent if sent else 1.0,
        "rate": sent / elapsed,
        "nominal": load.streams * RATE,
        "lag": lag,
        "stalled": stalled,
        "edge_cpu": edge1 - edge0,
        "gen_cpu": gen1 - gen0,
        # everything else on this shared machine (other people's tests, the kernel's softirqs)
        "other_cpu": max(0.0, (busy1 - busy0) - (edge1 - edge0) - (gen1 - gen0)),
        "elapsed": elapsed,
    }


def _generator_bound(r: dict[str, float]) -> bool:
    return bool(r["stalled"] or r["lag"] > 0.1 or r["rate"] < 0.97 * r["nominal"])


async def _ramp(
    load: MediaLoad, edge: Edge | None, start: int, window: float, budget: float, cap: int, log: bool
) -> tuple[list[dict[str, float]], str]:
    """Raise the streams until loss >= 0.1% (confirmed), then bisect twice; returns the rows and why it stopped."""
    t_end = time.monotonic() + budget
    rows: list[dict[str, float]] = []

    async def level(n: int) -> dict[str, float]:
        await load.ensure(n)
        r = await _measure(load, edge, window)
        if r["loss"] >= LOSS_LIMIT and not _generator_bound(r):
            r = await _measure(load, edge, window)  # confirm: one stall of a shared machine is not a limit
        for _ in range(2):  # someone else's load on this shared machine: wait and measure again
            if r["loss"] < LOSS_LIMIT or r["other_cpu"] < OTHER_LOAD * r["elapsed"]:
                break
            await asyncio.sleep(3.0)
            r = await _measure(load, edge, window)
        rows.append(r)
        if log:
            print(
                f"    {load.mode:>11} {n:6d} streams: loss {100 * r['loss']:.3f}%, {r['rate']:.0f} pkt/s sent,"
                f" lag {1000 * r['lag']:.0f} ms, edge {1e6 * r['edge_cpu'] / max(r['got'], 1):.1f} us/pkt,"
                f" other load {r['other_cpu'] / r['elapsed']:.2f} cores",
                file=sys.stderr,
                flush=True,
            )
        return r

    good, bad, why = 0, 0, "time budget"
    n = start
    while time.monotonic() < t_end:
        try:
            r = await level(n)
        except (TimeoutError, RuntimeError, ConnectionError) as exc:  # the edge is too busy to set calls up
            print(f"    call setup failed at {n} streams: {exc!r}", file=sys.stderr, flush=True)
            why = "setup"
            break
        if _generator_bound(r):
            why = "generator"
            break
        if r["loss"] >= LOSS_LIMIT:
            bad, why = n, "loss"
            break
        good = n
        if n >= cap:
            why = "stream cap"
            break
        n = min(cap, max(n + 2, int(n * RAMP) // 2 * 2))
    if bad:
        for _ in range(2):
            mid = (good + bad) // 4 * 2
            if mid <= good or time.monotonic() > t_end:
                break
            r = await level(mid)
            if r["loss"] < LOSS_LIMIT and not _generator_bound(r):
                good = mid
            else:
                bad = mid
    return rows, why


async def _media_run(
    mode: str, workers: int, args: argparse.Namespace
) -> tuple[list[dict[str, float]], str, int]:
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory() as tmp:
        edge: Edge | None = None
        pbx: Pbx | None = None
        conns: list[SipConn] = []
        pbx_transport = None
        try:
            if mode != "direct":
                pbx_transport, pbx = await loop.create_datagram_endpoint(Pbx, local_addr=("127.0.0.1", 0))
                lo = random.randrange(20000, 21000, 2)  # below the kernel's ephemeral range (32768-)
                extra = (
                    f'[media]\nports = [{lo}, {lo + 11499}]\nbind = "127.0.0.1"\nidle_timeout = 600\n'
                    "[shaping]\nrate = 100000\nburst = 200000\n"
                )
                edge = await loop.run_in_executor(
                    None,
                    lambda: Edge(
                        tmp,
                        workers,
                        pbx_transport.get_extra_info("sockname")[1],  # type: ignore[union-attr]
                        extra,
                        f'media = "{args.media_mode}"\n[tenants.limits]\nmax_connections = 10000\n',
                    ),
                )
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                for _ in range(args.media_conns):
                    conns.append(SipConn(await WS.connect(edge.port, "bench.example.com", ctx)))
            gen: Generator = CGenerator(args.rtpgen) if args.rtpgen is not None else PyGenerator()
            load = MediaLoad(mode, gen, pbx, conns)
            try:
                rows, why = await _ramp(
                    load,
                    edge,
                    args.media_start,
                    args.media_window,
                    args.media_budget / 2
                    if mode == "direct"
                    else args.media_budget,  # the baseline: a glance
                    args.media_cap,
                    args.verbose,
                )
            finally:
                await load.close()
            return rows, why, load.calls
        finally:
            if pbx_transport is not None:
                pbx_transport.close()
            if edge is not None:
                await loop.run_in_executor(None, edge.stop)


def _per_1000(r: dict[str, float], key: str) -> float:
    return 1e6 * r[key] / r["got"] if r["got"] else float("nan")


def _media_summary(label: str, rows: list[dict[str, float]], why: str, ref: int) -> str:
    good = [r for r in rows if r["loss"] < LOSS_LIMIT and not _generator_bound(r)]
    if not good:
        return f"{label:18} no level under 0.1% loss ({why})"
    best = max(good, key=lambda r: r["streams"])
    near = min(good, key=lambda r: abs(r["streams"] - ref))
    bound = {
        "loss": "",
        "generator": " generator-bound",
        "time budget": " time budget",
        "stream cap": " cap",
        "setup": " setup timeout",
    }[why]
    edge = best["edge_cpu"] > 0

    def ms(r: dict[str, float], key: str) -> str:
        return f"{_per_1000(r, key):.1f}" if edge or key != "edge_cpu" else "-"

    return (
        f"{label:18} {int(best['streams']):>6}{bound:16} {best['rate']:>8.0f} {100 * best['loss']:>6.3f}"
        f" {ms(best, 'edge_cpu'):>9} {best['edge_cpu'] / best['elapsed']:>6.2f}"
        f" {ms(near, 'edge_cpu'):>9} {int(near['streams']):>6}"
        f" {_per_1000(best, 'gen_cpu'):>9.1f} {best['gen_cpu'] / best['elapsed']:>6.2f}"
        f" {best['other_cpu'] / best['elapsed']:>6.2f}"
    )


def media_bench(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as build:
        args.rtpgen = build_rtpgen(build) if args.generator == "c" else None
        if args.generator == "c" and args.rtpgen is None:
            print("no C compiler: using the Python generator (--generator python)", file=sys.stderr)
        _media_bench(args)


def _media_bench(args: argparse.Namespace) -> None:
    rows_out = []
    t0 = time.monotonic()
    runs = [("direct", 0)] + [("edge", int(n)) for n in args.workers.split(",")]
    for mode, n in runs:
        label = "direct (no edge)" if mode == "direct" else f"{n} worker(s)"
        rows, why, calls = asyncio.run(_media_run(mode, n, args))
        rows_out.append(_media_summary(label, rows, why, args.media_ref))
        if args.verbose:
            print(f"  {label}: {calls} calls set up, stopped by {why}", file=sys.stderr)
    print(
        f"Media relay ({args.media_mode}) capacity: {RATE} pkt/s streams (160-byte RTP, one direction of a call),"
        f" max at < {100 * LOSS_LIMIT:.1f}% loss over {args.media_window:.0f} s windows"
    )
    gen = "rtpgen.c, nice -10" if args.rtpgen else "Python"
    print(
        f"{os.cpu_count()} CPU(s); the generator ({gen}; this process is the PBX) runs on the same machine;"
        f" {time.monotonic() - t0:.0f} s"
    )
    print(
        f"{'':18} {'max streams':>22} {'pkt/s':>8} {'loss%':>6} {'edge CPU':>9} {'edge':>6}"
        f" {'edge CPU':>9} {'at':>6} {'gen CPU':>9} {'gen':>6} {'other':>6}"
    )
    print(
        f"{'':18} {'':>22} {'':>8} {'':>6} {'ms/1k pkt':>9} {'cores':>6}"
        f" {'ms/1k pkt':>9} {'streams':>6} {'ms/1k pkt':>9} {'cores':>6} {'cores':>6}"
    )
    for line in rows_out:
        print(line)


# ============================================================= hold: agents + bridged calls


def _register(i: int) -> bytes:
    d = "bench.example.com"
    return (
        f"REGISTER sip:{d} SIP/2.0\r\nVia: SIP/2.0/WSS r{i}.invalid;branch=z9hG4bKr{i}\r\nMax-Forwards: 70\r\n"
        f"To: <sip:agent{i}@{d}>\r\nFrom: <sip:agent{i}@{d}>;tag=r{i}\r\nCall-ID: reg{i}x{os.getpid()}\r\n"
        f"CSeq: 1 REGISTER\r\nContact: <sip:agent{i}@r{i}.invalid;transport=ws>;expires=3600\r\n"
        "Expires: 3600\r\nContent-Length: 0\r\n\r\n"
    ).encode()


async def _agents(port: int, n: int, ctx: ssl.SSLContext) -> tuple[list[WS], dict[str, int]]:
    """``n`` WSS connections, each REGISTERed (200 from the PBX); returns them and the failures by reason."""
    held: list[WS] = []
    failed: dict[str, int] = {}
    sem = asyncio.Semaphore(64)

    async def one(i: int) -> None:
        async with sem:
            try:
                ws = await asyncio.wait_for(WS.connect(port, "bench.example.com", ctx), 30)
                ws.send(_register(i))
                while not (msg := await asyncio.wait_for(ws.recv(), 30)).startswith(b"SIP/2.0 2"):
                    if not msg.startswith(b"SIP/2.0 1"):
                        raise RuntimeError(msg.split(b"\r\n", 1)[0].decode(errors="replace"))
                held.append(ws)
            except (OSError, RuntimeError, TimeoutError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
                reason = str(exc)[:40] if isinstance(exc, RuntimeError) else type(exc).__name__
                failed[reason] = failed.get(reason, 0) + 1

    await asyncio.gather(*(one(i) for i in range(n)))
    return held, failed


async def _probe_calls(load: MediaLoad, stop: asyncio.Event, out: list[float]) -> None:
    """A new call every 0.5 s while the others flow (no media of its own): its INVITE -> 200 time."""
    assert load.pbx is not None
    k = 0
    while not stop.is_set():
        k += 1
        call_id = f"probe{k}x{os.getpid()}"
        load.pbx.answers[call_id] = _sdp(9)
        offer = _sdp(9) if load.identity is None else load.identity.offer(9)[0]
        t0 = time.perf_counter()
        try:
            await load.conns[k % len(load.conns)].invite(call_id, offer)
            out.append(time.perf_counter() - t0)
        except (TimeoutError, RuntimeError, ConnectionError) as exc:
            out.append(float("inf"))
            load.probe_failures[str(exc)[:40]] = load.probe_failures.get(str(exc)[:40], 0) + 1
        load.pbx.answers.pop(call_id, None)
        load.pbx.offers.pop(call_id, None)
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except TimeoutError:
            pass


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _hold_run(workers: int, args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    out: dict[str, Any] = {"workers": workers}
    with tempfile.TemporaryDirectory() as tmp:
        pbx_transport, pbx = await loop.create_datagram_endpoint(Pbx, local_addr=("127.0.0.1", 0))
        lo = random.randrange(20000, 21000, 2)
        extra = (
            f'[media]\nports = [{lo}, {lo + 11499}]\nbind = "127.0.0.1"\nidle_timeout = 600\n'
            "[shaping]\nrate = 100000\nburst = 200000\n"
        )
        limit = args.registered + args.media_conns + 100
        edge = await loop.run_in_executor(
            None,
            lambda: Edge(
                tmp,
                workers,
                pbx_transport.get_extra_info("sockname")[1],
                extra,
                f'media = "{args.media_mode}"\n[tenants.limits]\nmax_connections = {limit}\n',
                args.edge_session,
            ),
        )
        agents: list[WS] = []
        load: MediaLoad | None = None
        try:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            cpu0, t0 = edge.cpu(), time.monotonic()
            agents, failed = await _agents(edge.port, args.registered, ctx)
            out["register_failures"] = failed  # type: ignore[assignment]
            out.update(
                registered=len(agents),
                register_failed=sum(failed.values()),
                register_s=time.monotonic() - t0,
                register_cpu=edge.cpu() - cpu0,
            )
            conns = [
                SipConn(await WS.connect(edge.port, "bench.example.com", ctx))
                for _ in range(args.media_conns)
            ]
            gen: Generator = CGenerator(args.rtpgen) if args.rtpgen is not None else PyGenerator()
            load = MediaLoad("edge", gen, pbx, conns, client=args.client_srtp)
            if args.client_srtp == "dtls":
                assert isinstance(gen, CGenerator)
                load.identity = DtlsIdentity(tmp)
                gen.dtls_certificate(load.identity)
            load.retries = args.retry_refused
            t0 = time.monotonic()
            try:
                await load.ensure(2 * args.calls)
            except (TimeoutError, RuntimeError, ConnectionError) as exc:
                print(f"  call setup failed after {load.calls} calls: {exc!r}", file=sys.stderr)
            out.update(calls=load.calls, setup_s=time.monotonic() - t0, setup_refused=load.refused)
            out["pbx_not_plain"] = load.pbx_not_plain
            if args.client_srtp == "dtls":
                assert isinstance(gen, CGenerator)
                deadline = time.monotonic() + 40
                while (state := gen.dtls())["pending"] and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                out["dtls_setup"] = state  # type: ignore[assignment]
                out["keyed_s"] = time.monotonic() - t0
            ramp = [d for d, _ in load.setups]
            late = [d for d, flowing in load.setups if flowing >= 2 * args.calls * 0.9]
            out.update(setup_p50=_pct(ramp, 0.5), setup_p99=_pct(ramp, 0.99), setup_late_p99=_pct(late, 0.99))
            stop = asyncio.Event()
            probes: list[float] = []
            probe = asyncio.ensure_future(_probe_calls(load, stop, probes))
            watched = {f"worker {pid}": pid for pid in edge.pids if pid != edge.pid}
            if isinstance(gen, CGenerator):
                watched["generator"] = gen.proc.pid
            sched0 = {k: _schedstat(pid) for k, pid in watched.items()}
            out["hold_from"] = time.monotonic()
            r = await _measure(load, edge, args.hold)
            out["hold_to"] = time.monotonic()
            out["sched"] = {  # type: ignore[assignment]
                k: tuple(b - a for a, b in zip(sched0[k], _schedstat(pid), strict=True))
                for k, pid in watched.items()
            }
            if args.turns:  # the workers write their turn probe reports now (bench/workerprobe)
                for pid in edge.pids:
                    if pid != edge.pid:
                        os.kill(pid, signal.SIGUSR2)
                await asyncio.sleep(3.0)
            if isinstance(gen, CGenerator):
                out["sizes"] = gen.sizes()
                if args.client_srtp != "none":
                    out["auth"] = gen.auth()  # type: ignore[assignment]
                if args.client_srtp == "dtls":
                    out["dtls_hold"] = gen.dtls()  # type: ignore[assignment]
            stop.set()
            await probe
            out.update(r)
            out.update(probe_p50=_pct(probes, 0.5), probe_p99=_pct(probes, 0.99), probes=len(probes))
            out["probe_failures"] = load.probe_failures
            out["connections_alive"] = sum(1 for ws in agents if not ws.w.is_closing())
        finally:
            if load is not None:
                await load.close()
            for ws in agents:
                ws.w.close()
            pbx_transport.close()
            await loop.run_in_executor(None, edge.stop)
    return out


def _schedstat(pid: int) -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting for one) of ``pid``'s threads so far
    (``/proc/PID/task/*/schedstat``; (0, 0) once it is gone)."""
    run = wait = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0.0, 0.0
    for task in tasks:
        try:
            fields = (task / "schedstat").read_text().split()
        except OSError:
            continue
        run += int(fields[0])
        wait += int(fields[1])
    return run / 1e9, wait / 1e9


def _turns_summary(directory: str, since: float, until: float) -> list[str]:
    """The workers' late loop-lag probe ticks over the hold (``--turns``: bench/workerprobe), per
    worker: how many were ``TURN_LIMIT`` or more late, how many of those followed another such
    tick (what the overload gate's queue-age rule needs before it refuses), and what their windows
    held: time the process was not on a CPU (runnable but not running, or idle in the poll), time in
    timed Python entry points (SIP, timers, media handed to Python), the rest (uvloop and the C
    forwarding Ports: the relay's packets)."""
    import json

    lines = []
    for path in sorted(Path(directory).glob("turns-worker-*.json")):
        data = json.loads(path.read_text())
        ticks = [t for t in data["ticks"] if since <= t[0] <= until]
        lags = [t[1] for t in ticks]
        late = [e for e in data["late"] if since <= e["t"] <= until and e["lag"] >= TURN_LIMIT]
        paired = sum(1 for a, b in itertools.pairwise(lags) if a >= TURN_LIMIT and b >= TURN_LIMIT)
        cpu = (ticks[-1][5] - ticks[0][5]) / max(ticks[-1][0] - ticks[0][0], 1e-9) if len(ticks) > 1 else 0.0
        line = (
            f"    worker pid {path.stem.rsplit('-', 1)[1]}: {len(ticks)} probe ticks over the hold, process CPU"
            f" {cpu:.2f} cores; {len(late)} ticks >= {TURN_LIMIT * 1e3:.0f} ms late, {paired} of them right"
            " after another"
        )
        if late:
            n = len(late)
            off = sum(e["off_cpu"] or 0.0 for e in late) / n
            timed: dict[str, float] = {}
            for e in late:
                for label, (_, seconds) in e["top"].items():
                    timed[label] = timed.get(label, 0.0) + seconds / n
            top = ", ".join(f"{k} {1e3 * v:.1f}" for k, v in sorted(timed.items(), key=lambda kv: -kv[1])[:4])
            line += (
                f"; per such tick: lag {1e3 * sum(e['lag'] for e in late) / n:.1f} ms, off CPU {1e3 * off:.1f} ms,"
                f" untimed (uvloop, C Ports) {1e3 * sum(e['rest'] for e in late) / n:.1f} ms; timed ms: {top}"
            )
        lines.append(line)
    return lines


def hold_bench(args: argparse.Namespace) -> None:
    if args.client_srtp != "none" and args.media_mode != "bridge":
        raise SystemExit(
            f"--client-srtp {args.client_srtp} needs --media-mode bridge (the PBX speaks plain RTP)"
        )
    if args.turns:  # the workers run bench/turnprobe.py's wrapping (bench/workerprobe/sitecustomize.py)
        Path(args.turns).mkdir(parents=True, exist_ok=True)
        probe_site = str(Path(__file__).resolve().parent / "workerprobe")
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [probe_site, os.environ.get("PYTHONPATH")]))
        os.environ["MCS_EDGE_TURNPROBE"] = str(Path(args.turns).resolve())
        os.environ["MCS_EDGE_TURNPROBE_LATE"] = str(TURN_LIMIT * 1e3 / 3)
    with tempfile.TemporaryDirectory() as build:
        srtp = args.client_srtp != "none"
        args.rtpgen = build_rtpgen(build, srtp) if args.generator == "c" else None
        if srtp and args.rtpgen is None:
            raise SystemExit(
                f"--client-srtp {args.client_srtp} needs rtpgen.c built with OpenSSL (cc, libssl-dev)"
            )
        rows = [asyncio.run(_hold_run(int(n), args)) for n in args.workers.split(",")]
    clients = {"sdes": "SDES-SRTP clients, ", "dtls": "WebRTC DTLS-SRTP clients, "}.get(args.client_srtp, "")
    print(
        f"Hold: {args.registered} registered WSS agents + {args.calls} calls ({clients}{args.media_mode}; {RATE} pkt/s"
        f" each way) held {args.hold:.0f} s, a new probe call every 0.5 s; {os.cpu_count()} CPU(s) shared with"
        " the generator (rtpgen.c, nice -10) and this process (agents, PBX)"
    )
    for r in rows:
        gone = r["registered"] - r["connections_alive"]
        print(
            f"  {int(r['workers'])} worker(s): {int(r['registered'])} agents registered"
            f" ({int(r['register_failed'])} failed, {r['register_s']:.0f} s, edge {1e3 * r['register_cpu'] / max(r['registered'], 1):.2f} ms CPU each),"
            f" {int(gone)} dropped during the hold"
        )
        if r["register_failures"]:
            print(f"    registration failures: {r['register_failures']}")
        print(
            f"    {int(r['calls'])} calls set up in {r['setup_s']:.0f} s: INVITE->200 p50 {1e3 * r['setup_p50']:.0f} ms,"
            f" p99 {1e3 * r['setup_p99']:.0f} ms (p99 {1e3 * r['setup_late_p99']:.0f} ms for the last 10%)"
            f"{'; ' + str(r['setup_refused']) + ' INVITEs refused with 503 and sent again' if r['setup_refused'] else ''}"
        )
        if "dtls_setup" in r:
            d = r["dtls_setup"]
            print(
                f"    ICE + DTLS: {d['keyed']} calls keyed ({d['failed']} failed, {d['pending']} pending) in"
                f" {r['keyed_s']:.0f} s from the first INVITE; from the answer to keys p50"
                f" {d['p50_us'] / 1e3:.0f} ms, p99 {d['p99_us'] / 1e3:.0f} ms"
            )
        print(
            f"    hold: {int(r['sent'])} packets sent, loss {100 * r['loss']:.3f}%, {r['rate']:.0f} pkt/s"
            f" (nominal {int(r['nominal'])}), generator lag {1e3 * r['lag']:.0f} ms;"
            f" probe calls ({int(r['probes'])}): p50 {1e3 * r['probe_p50']:.0f} ms, p99 {1e3 * r['probe_p99']:.0f} ms"
        )
        if r["probe_failures"]:
            print(f"    probe calls failed: {r['probe_failures']}")
        if "sizes" in r:
            c172, c182, p172, p182 = r["sizes"]
            print(
                f"    datagrams received, RTP (172 bytes) / SRTP (182): clients {c172} / {c182}, PBX {p172} / {p182}"
            )
        if r["pbx_not_plain"]:
            print(f"    {int(r['pbx_not_plain'])} offers to the PBX were not plain RTP/AVP")
        if "auth" in r:
            a = r["auth"]
            print(
                f"    clients received over the hold: SRTP with a valid tag {a['srtp_ok']}, invalid {a['srtp_bad']};"
                f" RTCP {a['rtcp']}, STUN {a['stun']}, DTLS {a['dtls']}"
            )
        if "dtls_hold" in r:
            d = r["dtls_hold"]
            print(
                f"    ICE consent checks sent {d['consent_sent']}, answered {d['consent_ok']} (whole run);"
                f" keyed {d['keyed']}, failed {d['failed']}"
            )
        span = r["hold_to"] - r["hold_from"]
        print(
            "    on a CPU / runnable but waiting for one, over the hold (cores): "
            + ", ".join(f"{k} {run / span:.2f} / {wait / span:.2f}" for k, (run, wait) in r["sched"].items())
        )
        if args.turns:
            for line in _turns_summary(args.turns, r["hold_from"], r["hold_to"]):
                print(line)
        print(
            f"    CPU: edge {r['edge_cpu'] / r['elapsed']:.2f} cores ({1e6 * r['edge_cpu'] / max(r['got'], 1):.1f} us/pkt),"
            f" generator {r['gen_cpu'] / r['elapsed']:.2f}, everything else {r['other_cpu'] / r['elapsed']:.2f}"
        )


def sip_bench(args: argparse.Namespace) -> None:
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", default="sip,media", help="sip, media, hold (comma-separated)")
    ap.add_argument("--seconds", type=float, default=8.0, help="SIP: seconds of load per worker count")
    ap.add_argument("--conns", type=int, default=64, help="SIP: WSS connections")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument(
        "--media-mode",
        default="passthrough",
        choices=("passthrough", "bridge"),
        help="tenant media mode (bridge: the clients offer what --client-srtp says, the PBX plain RTP)",
    )
    ap.add_argument("--registered", type=int, default=10000, help="hold: registered WSS agents held")
    ap.add_argument("--calls", type=int, default=1000, help="hold: concurrent calls")
    ap.add_argument("--hold", type=float, default=60.0, help="hold: seconds the calls are measured")
    ap.add_argument(
        "--retry-refused",
        type=int,
        default=0,
        help="hold: a set-up INVITE answered 503 is sent again after 1 s, at most this many times (counted)",
    )
    ap.add_argument(
        "--client-srtp",
        default="none",
        choices=("none", "sdes", "dtls"),
        help="hold: the clients offer SDES-SRTP (RTP/SAVP + a=crypto) and rtpgen.c sends SRTP; dtls: "
        "they offer as a browser (UDP/TLS/RTP/SAVPF, ICE, a=setup:actpass) and rtpgen.c runs ICE, the "
        "DTLS handshake and SRTP with the exported keys, ICE consent every 4-6 s",
    )
    ap.add_argument(
        "--edge-session",
        action="store_true",
        help="hold: run the edge in a session (so an autogroup) of its own: see Edge",
    )
    ap.add_argument(
        "--turns",
        default="",
        help="hold: DIR: run the workers under bench/turnprobe.py (bench/workerprobe) and print what the"
        " probe ticks late by the overload gate's queue age held (a diagnosis: it perturbs the figures)",
    )
    ap.add_argument("--generator", default="c", choices=("c", "python"), help="media: RTP load generator")
    ap.add_argument("--media-start", type=int, default=800, help="media: streams at the first level")
    ap.add_argument("--media-window", type=float, default=3.0, help="media: seconds per measuring window")
    ap.add_argument(
        "--media-budget", type=float, default=150.0, help="media: seconds per configuration (half for direct)"
    )
    ap.add_argument("--media-cap", type=int, default=20000, help="media: most streams tried")
    ap.add_argument(
        "--media-ref", type=int, default=1000, help="media: CPU per packet also shown near this load"
    )
    ap.add_argument("--media-conns", type=int, default=16, help="media: WSS connections carrying the calls")
    ap.add_argument("-v", "--verbose", action="store_true", help="media: print every level on stderr")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    benches = args.bench.split(",")
    if "sip" in benches:
        sip_bench(args)
    if "media" in benches:
        if "sip" in benches:
            print()
        media_bench(args)
    if "hold" in benches:
        hold_bench(args)


if __name__ == "__main__":
    main()
