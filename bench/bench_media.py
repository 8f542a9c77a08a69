"""Media relay cost: edge CPU per 1,000 relayed packets, loss and added latency, beside a Twisted UDP floor.

For 100 and 500 concurrent streams of 50 packets/s (RTP, 160-byte payload; half of the streams go
client -> PBX, half PBX -> client, i.e. N/2 calls carrying audio both ways), it prints one row per
relay:

* ``direct``      the load generator's sockets talk to each other (latency baseline, no relay)
* ``floor``       a minimal Twisted ``listenUDP`` forwarder (epoll reactor): two ports per call,
                  each forwarding to the other side's last source
* ``native``      the same forwarder as a native uvloop datagram endpoint (the floor of the relay)
* ``reader``      the same forwarder on ``loop.add_reader`` with one ``recvfrom`` per readable event
                  (drains the socket ourselves instead of libuv's read loop; measured the same as
                  ``native``, see docs/performance.md)
* ``passthrough`` the edge's relay (MediaRelay on Twisted's asyncio reactor over uvloop, native
                  datagram endpoints), both legs PASSTHROUGH: opaque packets, latching, policing
* ``bridge``      the same relay bridging DTLS-SRTP (client side, keys from a real DTLS handshake
                  per call) <-> plain RTP (PBX side): SRTP unprotect one way, protect the other
* ``rtp bridge``  the same relay, both sides plain RTP (a SIP client offering RTP/AVP, tenant
                  ``bridge``): latching, policing, loss accounting, no SRTP
* ``rtp+ice``     the same with ICE-lite on the client leg (the mobile app over SIP/TLS offering
                  RTP/AVP with ICE credentials; one nominating check before media)
* ``rtpengine``   the reference: Debian's ``rtpengine`` daemon (userspace forwarding, no kernel
                  table, ``--num-threads=1``), driven over its ng control protocol (bencode over
                  UDP: offer/answer/delete), relaying plain RTP both ways like ``rtp bridge``

Ratios to rtpengine (CPU per packet) are printed under each table. The issue's targets: passthrough
and plain RTP bridge <= 1.0x rtpengine, SRTP bridge <= 2.0x.

Columns: packets relayed in the measuring window, relay CPU ms per 1,000 packets (process CPU time
of the relay process, read over its control pipe), loss, one-way latency p50/p99 through the relay
and the latency it adds over ``direct``. The relay process is pinned to CPU 0 (``taskset``) and the
generator to CPU 1 when the machine has two CPUs. Never pass/fail: figures only.

    .venv/bin/python bench/bench_media.py [--streams 100,500] [--seconds 5] [--epoll] [--repeat 1]
        [--baseline-src DIR]
    .venv/bin/python bench/bench_media.py --packet-cost [--baseline DIR]

``--epoll`` also runs the relay on Twisted's default epoll reactor (``listenUDP`` path).
``--baseline-src DIR`` also runs the edge rows with ``mcs_edge`` from the source tree ``DIR`` (e.g. an
export of main) in the same run: before/after.

``--packet-cost`` prints, instead, the in-process cost per packet of a passthrough leg's receive
path (``Leg.receive``, sans-IO, no sockets): RTP and STUN from the latched source, a verified ICE
check from a new address (one HMAC-SHA1), and an injector's RTP and STUN (dropped). With
``--baseline DIR`` the same figures are measured, in the same run, on the source tree ``DIR``
(e.g. an export of an older commit), for a before/after comparison.
The same script is the relay process when called with ``--serve``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import secrets
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from mcs_edge.certs import edge_dtls_certificate

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

PAYLOAD = bytes(range(160))
RATE = 50  # packets/s per stream
TICK = 0.002  # the generator spreads each 20 ms period over 10 ticks


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ================================================================================= relay process


def serve(kind: str, reactor_name: str, mode: str, lo: int) -> None:
    """The relay process: a control line protocol on stdin/stdout, the relay on the chosen reactor."""
    _raise_fd_limit()
    if reactor_name == "uvloop":
        from mcs_edge.reactor import install

        install()
    else:
        from twisted.internet import epollreactor

        epollreactor.install()
    from twisted.internet import reactor, stdio
    from twisted.internet.protocol import DatagramProtocol
    from twisted.protocols.basic import LineReceiver

    handlers: dict[str, Any] = {}

    if kind == "relay":
        from mcs_edge import config as c
        from mcs_edge.core.sip.message import parse
        from mcs_edge.tx.media.relay import MediaRelay
        from mcs_edge.tx.timers import Timers

        cfg = c.loads(
            f'[edge]\nstate_dir = "{tempfile.gettempdir()}/bench-media-state"\n'
            f'[media]\nports = [{lo}, {lo + 3999}]\nbind = "127.0.0.1"\nidle_timeout = 3600\n'
            '[[tenants]]\nid = "t"\ndomains = ["t.example.com"]\nbackend_sip = "udp:127.0.0.1:5999"\n'
            'certificate = "self-signed"\n',
            ".",
        )
        timers = Timers(reactor)
        # "rtp": a plain RTP client, tenant bridge; "rtp-ice": the same over SIP/TLS with ICE-lite
        tenant_mode = "bridge" if mode in ("rtp", "rtp-ice") else mode
        transport = "tls" if mode == "rtp-ice" else "wss"
        relay = MediaRelay(
            cfg, reactor, timers, tenant_media=lambda _tid: tenant_mode, client_transport=lambda _f: transport
        )

        class Pair:
            tenant_id = "t"
            flow_id = 1

        def message(start: str, call_id: str, body: str) -> Any:
            head = (
                f"{start}\r\nVia: SIP/2.0/WSS x.invalid;branch=z9hG4bK1\r\nMax-Forwards: 70\r\nFrom: <sip:a@t.example.com>;tag=1\r\n"
                f"To: <sip:b@t.example.com>;tag=2\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
                f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            return parse(head.encode() + body.encode())

        def call(msg: dict[str, Any]) -> dict[str, Any]:
            call_id = uuid.uuid4().hex
            invite = message("INVITE sip:b@t.example.com SIP/2.0", call_id, msg["offer"])
            status = relay.on_message(Pair(), invite, True, timers.now())
            if status is not None:
                return {"error": status}
            ok = message("SIP/2.0 200 OK", call_id, msg["answer"])
            status = relay.on_message(Pair(), ok, False, timers.now())
            return {"offer": invite.body.decode(), "answer": ok.body.decode(), "error": status}

        def stats(_msg: dict[str, Any]) -> dict[str, Any]:
            sync = getattr(relay, "sync", None)  # counters of legs held by C forwarding rules
            if sync is not None:
                sync()
            dropped: dict[str, int] = {}
            for session in relay.anchor.sessions.values():
                for leg in session.legs:
                    for reason, n in leg.counters.dropped.items():
                        dropped[reason] = dropped.get(reason, 0) + n
            return {
                "dropped": dropped,
                "native": relay.native,
                "sessions": len(relay.anchor.sessions),
                "offloaded": len(getattr(relay, "held", ())),
            }

        handlers["call"] = call
        handlers["stats"] = stats
    else:
        readers: list[socket.socket] = []

        class Fwd(DatagramProtocol):
            """Forward to the other side's last source (or its initial address): the minimal relay."""

            def __init__(self, dest: tuple[str, int]) -> None:
                self.remote = dest
                self.peer: Fwd | None = None

            def datagramReceived(self, datagram: bytes, addr: Any) -> None:  # noqa: N802
                self.remote = addr
                peer = self.peer
                peer.transport.write(datagram, peer.remote)  # type: ignore[union-attr]

        class NativeFwd(asyncio.DatagramProtocol):
            """The same forwarder as a native datagram endpoint of the loop (uvloop)."""

            def __init__(self, dest: tuple[str, int]) -> None:
                self.remote: Any = dest
                self.peer: NativeFwd | None = None
                self.transport: Any = None

            def connection_made(self, transport: Any) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: Any) -> None:
                self.remote = addr
                peer = self.peer
                peer.transport.sendto(data, peer.remote)  # type: ignore[union-attr]

        def pair(msg: dict[str, Any]) -> dict[str, Any]:
            if kind == "floor-reader":
                loop = reactor._asyncioEventloop  # type: ignore[attr-defined]
                socks = []
                for _ in range(2):
                    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    sock.bind(("127.0.0.1", 0))
                    sock.setblocking(False)
                    socks.append(sock)
                remote = [tuple(msg["a"]), tuple(msg["b"])]

                def reader(i: int) -> Any:
                    recv = socks[i].recvfrom
                    send = socks[1 - i].sendto

                    def readable() -> None:
                        try:
                            data, addr = recv(2048)
                        except OSError:
                            return
                        remote[i] = addr
                        send(data, remote[1 - i])

                    return readable

                for i, sock in enumerate(socks):
                    loop.add_reader(sock.fileno(), reader(i))
                readers.extend(socks)
                return {"a": socks[0].getsockname()[1], "b": socks[1].getsockname()[1]}
            if kind == "floor-native":
                loop = reactor._asyncioEventloop  # type: ignore[attr-defined]
                na, nb = NativeFwd(tuple(msg["a"])), NativeFwd(tuple(msg["b"]))  # type: ignore[arg-type]
                na.peer, nb.peer = nb, na
                ports = []
                for proto in (na, nb):
                    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    sock.bind(("127.0.0.1", 0))
                    sock.setblocking(False)
                    ports.append(sock.getsockname()[1])
                    loop.create_task(loop.create_datagram_endpoint(lambda p=proto: p, sock=sock))
                return {"a": ports[0], "b": ports[1]}
            a, b = Fwd(tuple(msg["a"])), Fwd(tuple(msg["b"]))  # type: ignore[arg-type]
            a.peer, b.peer = b, a
            pa = reactor.listenUDP(0, a, interface="127.0.0.1")
            pb = reactor.listenUDP(0, b, interface="127.0.0.1")
            return {"a": pa.getHost().port, "b": pb.getHost().port}

        handlers["pair"] = pair
        handlers["stats"] = lambda _msg: {"dropped": {}, "native": False}

    def cpu(_msg: dict[str, Any]) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {"cpu": usage.ru_utime + usage.ru_stime, "user": usage.ru_utime}

    handlers["cpu"] = cpu

    class Control(LineReceiver):
        delimiter = b"\n"
        MAX_LENGTH = 1 << 20

        def lineReceived(self, line: bytes) -> None:  # noqa: N802
            msg = json.loads(line)
            if msg["op"] == "quit":
                if profiler is not None:
                    profiler.disable()
                    profiler.dump_stats(os.environ["MCS_BENCH_PROFILE"])
                reactor.stop()
                return
            self.sendLine(json.dumps(handlers[msg["op"]](msg)).encode())

        def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
            if reactor.running:
                reactor.stop()

    profiler = None
    if os.environ.get("MCS_BENCH_PROFILE"):  # profile the relay process (cProfile stats to that file)
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    stdio.StandardIO(Control(), reactor=reactor)
    reactor.run()


# ================================================================================ load generator


class Control:
    """The generator's end of the relay process's control pipe."""

    def __init__(self, kind: str, reactor_name: str, mode: str, pin: bool, src: str | None = None) -> None:
        lo = random.randrange(20000, 28000, 2)  # below the kernel's ephemeral range (32768-)
        cmd = [
            sys.executable,
            __file__,
            "--serve",
            kind,
            "--reactor",
            reactor_name,
            "--mode",
            mode,
            "--lo",
            str(lo),
        ]
        if pin:
            cmd = ["taskset", "-c", "0", *cmd]
        env = dict(os.environ)
        if src:  # another source tree's mcs_edge (e.g. main, for before/after in one run)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, env=env)
        self.name = f"{kind}.{mode}" + (".base" if src else "")

    def request(self, **msg: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(msg).encode() + b"\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("relay process died")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def close(self) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(b'{"op": "quit"}\n')
            self.proc.stdin.flush()
            self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


def bencode(value: Any) -> bytes:
    """bencode (the ng protocol's encoding): dict, list, str/bytes, int. A few lines for a bench."""
    if isinstance(value, dict):
        return b"d" + b"".join(bencode(str(k)) + bencode(v) for k, v in sorted(value.items())) + b"e"
    if isinstance(value, list):
        return b"l" + b"".join(bencode(v) for v in value) + b"e"
    if isinstance(value, int):
        return b"i%de" % value
    raw = value.encode() if isinstance(value, str) else value
    return b"%d:%s" % (len(raw), raw)


def bdecode(data: bytes, i: int = 0) -> tuple[Any, int]:
    """Decode one bencoded value at ``data[i:]``; returns (value, next index). Strings come back as str."""
    c = data[i : i + 1]
    if c == b"d":
        out: dict[str, Any] = {}
        i += 1
        while data[i : i + 1] != b"e":
            key, i = bdecode(data, i)
            out[key], i = bdecode(data, i)
        return out, i + 1
    if c == b"l":
        items = []
        i += 1
        while data[i : i + 1] != b"e":
            item, i = bdecode(data, i)
            items.append(item)
        return items, i + 1
    if c == b"i":
        end = data.index(b"e", i)
        return int(data[i + 1 : end]), end + 1
    colon = data.index(b":", i)
    n = int(data[i:colon])
    return data[colon + 1 : colon + 1 + n].decode(errors="replace"), colon + 1 + n


def _task_cpu(pid: int) -> float:
    """CPU seconds of every thread of ``pid`` (schedstat: nanoseconds, finer than /proc ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


class RtpEngine:
    """The reference relay: Debian's rtpengine (userspace, one worker thread), same interface as Control."""

    def __init__(self, pin: bool) -> None:
        lo = random.randrange(20000, 28000, 2)
        self.ng = ("127.0.0.1", random.randrange(40000, 50000))
        cmd = [
            "rtpengine",
            "--config-file=none",
            "--foreground",
            "--log-stderr",
            "--log-level=3",
            "--interface=127.0.0.1",
            f"--listen-ng={self.ng[0]}:{self.ng[1]}",
            f"--port-min={lo}",
            f"--port-max={lo + 3999}",
            "--num-threads=1",
            "--table=-1",
            "--delete-delay=0",
        ]
        if pin:
            cmd = ["taskset", "-c", "0", *cmd]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(1.0)
        self.calls: list[tuple[str, str]] = []
        for _ in range(50):
            try:
                if self.ng_request({"command": "ping"}).get("result") == "pong":
                    return
            except TimeoutError:
                continue
        raise RuntimeError("rtpengine did not answer ping")

    def ng_request(self, msg: dict[str, Any]) -> dict[str, Any]:
        cookie = uuid.uuid4().hex[:12].encode()
        self.sock.sendto(cookie + b" " + bencode(msg), self.ng)
        while True:
            data, _ = self.sock.recvfrom(65536)
            head, _, body = data.partition(b" ")
            if head == cookie:
                reply, _ = bdecode(body)
                return dict(reply)

    def request(self, **msg: Any) -> dict[str, Any]:
        op = msg["op"]
        if op == "cpu":
            cpu = _task_cpu(self.proc.pid)
            return {"cpu": cpu, "user": float("nan")}
        if op == "stats":
            return {"dropped": {}, "native": False}
        if op != "call":
            raise ValueError(op)
        call_id, from_tag, to_tag = uuid.uuid4().hex, uuid.uuid4().hex[:8], uuid.uuid4().hex[:8]
        common = {"call-id": call_id, "from-tag": from_tag, "replace": ["origin"], "ICE": "remove"}
        offer = self.ng_request({"command": "offer", "sdp": msg["offer"], **common})
        if offer.get("result") != "ok":
            return {"error": offer}
        answer = self.ng_request({"command": "answer", "sdp": msg["answer"], "to-tag": to_tag, **common})
        if answer.get("result") != "ok":
            return {"error": answer}
        self.calls.append((call_id, from_tag))
        return {"offer": offer["sdp"], "answer": answer["sdp"], "error": None}

    def close(self) -> None:
        self.sock.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _plain_sdp(addr: tuple[str, int], user: str) -> str:
    return (
        f"v=0\r\no={user} 1 1 IN IP4 {addr[0]}\r\ns=-\r\nc=IN IP4 {addr[0]}\r\nt=0 0\r\n"
        f"m=audio {addr[1]} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
    )


def _sock() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    return s


def _rtp(seq: int, ssrc: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, seq * 160, ssrc) + PAYLOAD


class Stream:
    """One direction of one call: packets to send, where to, and when each went out."""

    def __init__(self, packets: list[bytes], dest: tuple[str, int], count: int) -> None:
        self.packets = packets
        self.dest = dest
        self.sent_at = [0.0] * count
        self.transport: Any = None  # the sending socket's transport


class Receiver(asyncio.DatagramProtocol):
    """Records (send time, one-way latency) of every packet of its stream; filtered by window at the end."""

    def __init__(self, stream: Stream, records: list[tuple[float, float]]) -> None:
        self.stream = stream
        self.records = records

    def datagram_received(self, data: bytes, addr: Any) -> None:
        now = time.perf_counter()
        sent = self.stream.sent_at[(data[2] << 8) | data[3]]
        self.records.append((sent, now - sent))


def _handshake(sock: socket.socket, peer: Any, edge: tuple[str, int]) -> None:
    """ICE check and DTLS client handshake with the relay's client leg over a real socket."""
    sock.settimeout(2)
    sock.sendto(peer.check(), edge)
    sock.recvfrom(2048)
    out = peer.start_dtls(0.0)
    for _ in range(20):
        for data in out:
            sock.sendto(data, edge)
        out = []
        try:
            data, _ = sock.recvfrom(4096)
        except TimeoutError:
            break
        out = peer.feed_dtls(data, 0.0)
        if peer.srtp is not None and not out:
            break
    if peer.srtp is None:
        raise RuntimeError("DTLS handshake with the relay failed")
    sock.setblocking(False)


def setup_calls(
    kind: str, mode: str, ctl: Control | RtpEngine | None, calls: int, count: int
) -> tuple[list[Stream], list[Any]]:
    """Create the calls; returns the streams and the (socket, stream received there) pairs."""
    from helpers.webrtc_peer import WebRtcPeer

    from mcs_edge.core.media.sdp import SessionDescription

    streams: list[Stream] = []
    sockets: list[Any] = []
    for i in range(calls):
        client, pbx = _sock(), _sock()
        caddr, paddr = client.getsockname(), pbx.getsockname()
        ssrc_c, ssrc_p = 0x10000000 + i, 0x20000000 + i
        plain_c = [_rtp(seq, ssrc_c) for seq in range(count)]
        plain_p = [_rtp(seq, ssrc_p) for seq in range(count)]
        if kind == "direct":
            to_pbx, to_client = paddr, caddr
            packets_c = plain_c
        elif kind in ("floor", "floor-native", "floor-reader"):
            assert ctl is not None
            ports = ctl.request(op="pair", a=list(caddr), b=list(paddr))
            to_pbx, to_client = ("127.0.0.1", ports["a"]), ("127.0.0.1", ports["b"])
            packets_c = plain_c
        elif kind == "rtpengine" or mode in ("rtp", "rtp-ice"):
            assert ctl is not None
            app = WebRtcPeer(caddr)
            offer = _plain_sdp(caddr, "client")
            if mode == "rtp-ice":  # the mobile app: plain RTP with ICE (rtcp-mux, one host candidate)
                offer += (
                    f"a=rtcp-mux\r\na=ice-ufrag:{app.ufrag}\r\na=ice-pwd:{app.pwd}\r\n"
                    f"a=candidate:1 1 UDP 2113929471 {caddr[0]} {caddr[1]} typ host\r\n"
                )
            reply = ctl.request(op="call", offer=offer, answer=_plain_sdp(paddr, "pbx"))
            if reply.get("error") is not None:
                raise RuntimeError(f"relay refused the call: {reply}")
            to_client = ("127.0.0.1", SessionDescription.parse(reply["offer"]).media[0].port)
            client_side = SessionDescription.parse(reply["answer"])
            to_pbx = ("127.0.0.1", client_side.media[0].port)
            if mode == "rtp-ice":  # a nominating check: the relay sends to (and hears) the app
                app.accept(client_side)
                client.settimeout(2)
                client.sendto(app.check(), to_pbx)
                client.recvfrom(2048)
            packets_c = plain_c
        else:
            assert ctl is not None
            browser = WebRtcPeer(caddr)
            offer = browser.offer()
            if mode == "passthrough":
                pbx_peer = WebRtcPeer(paddr)
                reply = ctl.request(
                    op="call", offer=offer, answer=pbx_peer.answer(SessionDescription.parse(offer))
                )
            else:
                answer = (
                    f"v=0\r\no=pbx 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                    f"m=audio {paddr[1]} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
                )
                reply = ctl.request(op="call", offer=offer, answer=answer)
            if reply.get("error") is not None:
                raise RuntimeError(f"relay refused the call: {reply}")
            pbx_side = SessionDescription.parse(reply["offer"])
            client_side = SessionDescription.parse(reply["answer"])
            to_client = ("127.0.0.1", pbx_side.media[0].port)  # the PBX sends here, it reaches the client
            to_pbx = ("127.0.0.1", client_side.media[0].port)
            if mode == "bridge":
                browser.accept(client_side)
                _handshake(client, browser, to_pbx)
                packets_c = [browser.srtp.protect_rtp(p) for p in plain_c]
            else:
                packets_c = plain_c
        client.setblocking(False)
        pbx.setblocking(False)
        up = Stream(packets_c, to_pbx, count)  # client -> PBX
        down = Stream(plain_p, to_client, count)  # PBX -> client
        streams += [up, down]
        sockets += [(client, up, down), (pbx, down, up)]  # (socket, stream it sends, stream it receives)
    return streams, sockets


async def load(
    sockets: list[Any], streams: list[Stream], seconds: float, ctl: Control | RtpEngine | None
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    records: list[tuple[float, float]] = []
    window = [float("inf"), float("inf")]
    for sock, sends, receives in sockets:
        transport, _ = await loop.create_datagram_endpoint(
            lambda r=receives: Receiver(r, records),
            sock=sock,  # type: ignore[misc]
        )
        sends.transport = transport
    slots: list[list[Stream]] = [[] for _ in range(10)]
    for i, stream in enumerate(streams):
        slots[i % 10].append(stream)
    warmup, tail = 1.0, 0.5
    total_ticks = int((warmup + seconds + tail) / TICK)
    start = loop.time() + 0.05
    done = loop.create_future()

    def tick(k: int) -> None:
        seq = k // 10
        now = time.perf_counter()
        for stream in slots[k % 10]:
            stream.sent_at[seq] = now
            stream.transport.sendto(stream.packets[seq], stream.dest)
        if k + 1 < total_ticks:
            loop.call_at(start + (k + 1) * TICK, tick, k + 1)
        else:
            done.set_result(None)

    async def cpu() -> tuple[float, float]:
        if ctl is None:
            return 0.0, 0.0
        reply = await loop.run_in_executor(None, lambda: ctl.request(op="cpu"))
        return float(reply["cpu"]), float(reply["user"])

    loop.call_at(start, tick, 0)
    await asyncio.sleep(start - loop.time() + warmup)
    perf = None
    if os.environ.get("MCS_BENCH_PERF") and isinstance(ctl, Control):
        # sample the relay process over the measuring window only: `perf report -i FILE.KIND.MODE`
        out = f"{os.environ['MCS_BENCH_PERF']}.{ctl.name}"
        perf = subprocess.Popen(["perf", "record", "-q", "-g", "-p", str(ctl.proc.pid), "-o", out])
    cpu0 = await cpu()
    window[0] = time.perf_counter()
    await asyncio.sleep(seconds)
    window[1] = time.perf_counter()
    cpu1 = await cpu()
    if perf is not None:
        perf.send_signal(2)
        perf.wait(30)
    await done
    await asyncio.sleep(0.3)
    sent = sum(1 for s in streams for t in s.sent_at if window[0] <= t < window[1])
    for _sock, stream, _r in sockets:
        if stream.transport is not None:
            stream.transport.close()
            stream.transport = None
    samples = sorted(latency for sent_at, latency in records if window[0] <= sent_at < window[1])
    return {
        "sent": sent,
        "got": len(samples),
        "cpu": cpu1[0] - cpu0[0],
        "user": cpu1[1] - cpu0[1],
        "p50": samples[len(samples) // 2] if samples else float("nan"),
        "p99": samples[int(len(samples) * 0.99)] if samples else float("nan"),
        "mean": statistics.fmean(samples) if samples else float("nan"),
    }


def run_one(
    kind: str, mode: str, reactor_name: str, n_streams: int, seconds: float, pin: bool, src: str | None = None
) -> dict[str, Any]:
    calls = n_streams // 2
    count = int((1.0 + seconds + 0.5) * RATE) + 20
    ctl: Control | RtpEngine | None = None
    if kind == "rtpengine":
        ctl = RtpEngine(pin)
    elif kind != "direct":
        ctl = Control(kind, reactor_name, mode, pin, src)
    try:
        streams, sockets = setup_calls(kind, mode, ctl, calls, count)
        if kind == "floor-native":
            time.sleep(0.2)  # its endpoints are created on the relay's next loop iterations
        result = asyncio.run(load(sockets, streams, seconds, ctl))
        if ctl is not None:
            result.update(ctl.request(op="stats"))
        return result
    finally:
        if ctl is not None:
            ctl.close()


def packet_cost(rounds: int = 100_000) -> dict[str, float]:
    """ns per packet through a passthrough leg's receive path, per kind of packet (see module doc)."""
    from helpers.webrtc_peer import WebRtcPeer, rtp_packet

    from mcs_edge.core.media.sdp import Profile, SessionDescription
    from mcs_edge.core.media.session import CLIENT, PBX, MediaSession, SessionSettings
    from mcs_edge.core.stun import message as m

    class Ports:
        def __init__(self) -> None:
            self.next = 40000

        def open(self, leg: Any, rtcp_mux: bool) -> bool:
            leg.port, leg.rtcp_port = self.next, None
            self.next += 2
            leg.send = lambda data, addr: None
            return True

        def close(self, leg: Any) -> None:
            leg.port = 0

    settings = SessionSettings(
        client_host="203.0.113.10",
        pbx_host="10.0.0.5",
        rate=1e15,
        burst=1e15,
        certificate=edge_dtls_certificate(),
        random_bytes=secrets.token_bytes,
    )
    session = MediaSession("bench", settings, Ports(), pbx_profile=Profile.PASSTHROUGH)
    a, b = WebRtcPeer(("198.51.100.7", 50000)), WebRtcPeer(("10.1.0.10", 30000))
    to_b = session.offer(CLIENT, SessionDescription.parse(a.offer()), 0.0)
    a.accept(session.answer(PBX, SessionDescription.parse(b.answer(to_b)), 0.0))
    leg = session.mline_legs[CLIENT][0]
    assert leg is not None
    rtp = rtp_packet(1, 0x1111, payload=PAYLOAD)
    check = a.check(use_candidate=False)
    forged = m.Message(m.METHOD_BINDING, m.CLASS_REQUEST, bytes(12), (m.Username(f"{b.ufrag}:x"),)).serialize(
        integrity_key=b"guessed", fingerprint=True
    )
    latched = a.addr
    new_sources = [("198.51.100.8", 10000 + i) for i in range(1000)]
    injector = ("192.0.2.66", 40000)
    cases: list[tuple[str, bytes, Any]] = [
        ("RTP from the latched source", rtp, lambda i: latched),
        ("STUN check from the latched source", check, lambda i: latched),
        ("STUN check from a new source (verified)", check, lambda i: new_sources[i % 1000]),
        ("injected RTP (dropped)", rtp, lambda i: injector),
        ("injected STUN, guessed key (dropped)", forged, lambda i: injector),
    ]
    out: dict[str, float] = {}
    receive = leg.receive
    batch = rounds // 10
    for name, data, source in cases:
        addrs = [source(i) for i in range(rounds)]
        best = float("inf")  # best of 10 batches: robust on a shared machine
        for b in range(10):
            t0 = time.process_time()
            for i in range(b * batch, (b + 1) * batch):
                receive(data, addrs[i], 1.0 + i * 1e-6)
            best = min(best, time.process_time() - t0)
        out[name] = best / batch * 1e9
        if source(0) is not latched:
            leg.remote = latched  # undo a latch a verified source may have taken
    return out


def print_packet_cost(baseline: str | None) -> None:
    pin = (os.cpu_count() or 1) >= 2 and os.path.exists("/usr/bin/taskset")
    if pin:
        os.sched_setaffinity(0, {0})
    mine = packet_cost()
    before: dict[str, float] = {}
    if baseline:
        env = dict(os.environ, PYTHONPATH=str(Path(baseline).resolve()))
        proc = subprocess.run(
            [sys.executable, __file__, "--packet-cost-json"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        before = json.loads(proc.stdout)
    label = f"baseline {Path(baseline).name}" if baseline else ""
    print(f"passthrough leg, ns per packet (in process, pinned: {pin})")
    print(f"{'packet':42} {'this tree':>10} {label:>18}")
    for name, ns in mine.items():
        old = f"{before[name]:.0f}" if name in before else ""
        print(f"{name:42} {ns:>10.0f} {old:>18}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--serve", choices=("relay", "floor", "floor-native", "floor-reader"))
    parser.add_argument("--reactor", default="uvloop", choices=("uvloop", "epoll"))
    parser.add_argument("--mode", default="bridge", choices=("bridge", "passthrough", "rtp", "rtp-ice"))
    parser.add_argument("--lo", type=int, default=30000)
    parser.add_argument("--streams", default="100,500")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--epoll", action="store_true", help="also run the relay on the epoll reactor")
    parser.add_argument("--repeat", type=int, default=1, help="run every row this many times (noisy machine)")
    parser.add_argument("--packet-cost", action="store_true", help="per-packet cost of a passthrough leg")
    parser.add_argument("--packet-cost-json", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--baseline", default=None, help="with --packet-cost: another source tree to compare")
    parser.add_argument("--only", default="", help="comma-separated row keys to run (default: all)")
    parser.add_argument(
        "--baseline-src",
        default="",
        help="also run the edge rows with mcs_edge from this source tree (e.g. a checkout of main): before/after",
    )
    args = parser.parse_args()
    if args.packet_cost_json:
        print(json.dumps(packet_cost()))
        return
    if args.packet_cost:
        print_packet_cost(args.baseline)
        return
    if args.serve:
        serve(args.serve, args.reactor, args.mode, args.lo)
        return
    _raise_fd_limit()
    pin = (os.cpu_count() or 1) >= 2 and os.path.exists("/usr/bin/taskset")
    if pin:
        os.sched_setaffinity(0, {1})
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    rows = [
        ("direct", "direct", "passthrough", "epoll", "no relay (baseline)"),
        ("floor", "floor", "passthrough", "epoll", "Twisted listenUDP forwarder (floor)"),
        ("native", "floor-native", "passthrough", "uvloop", "uvloop endpoint forwarder (floor)"),
        ("reader", "floor-reader", "passthrough", "uvloop", "uvloop add_reader forwarder (floor)"),
        ("rtpengine", "rtpengine", "rtp", "-", "rtpengine userspace, 1 thread (ref)"),
        ("passthrough", "relay", "passthrough", "uvloop", "mcs_edge passthrough (uvloop)"),
        ("rtp", "relay", "rtp", "uvloop", "mcs_edge bridge RTP<->RTP (uvloop)"),
        ("rtp-ice", "relay", "rtp-ice", "uvloop", "mcs_edge bridge RTP+ICE<->RTP (uvloop)"),
        ("bridge", "relay", "bridge", "uvloop", "mcs_edge bridge SRTP<->RTP (uvloop)"),
    ]
    if args.epoll:
        rows += [
            ("passthrough-epoll", "relay", "passthrough", "epoll", "mcs_edge passthrough (epoll)"),
            ("bridge-epoll", "relay", "bridge", "epoll", "mcs_edge bridge SRTP<->RTP (epoll)"),
        ]
    if args.baseline_src:
        rows += [
            (f"{key}@base", kind, mode, reactor_name, f"{label.replace('mcs_edge', 'base')}")
            for key, kind, mode, reactor_name, label in list(rows)
            if kind == "relay"
        ]
    only = {x for x in args.only.split(",") if x}
    if only:
        rows = [row for row in rows if row[0].split("@")[0] in only or row[0] in ("direct", "rtpengine")]
    print(
        f"relay pinned to CPU 0, generator to CPU 1: {pin}; {args.seconds:.0f} s window, {RATE} pkt/s per stream;"
        f" rows interleaved, {args.repeat} round(s)"
    )
    header = f"{'relay':40} {'streams':>7} {'packets':>8} {'CPU us/pkt':>10} {'(user)':>7} {'loss %':>7} {'p50 us':>7} {'p99 us':>7} {'+p50 us':>7} {'+p99 us':>7} {'gen CPU%':>8}"
    for n in (int(x) for x in args.streams.split(",")):
        print()
        print(header)
        per_packet: dict[str, list[float]] = {}
        for _round in range(args.repeat):
            base: dict[str, Any] | None = None
            for key, kind, mode, reactor_name, label in rows:
                gen0 = time.process_time()
                src = args.baseline_src if key.endswith("@base") else None
                r = run_one(kind, mode, reactor_name, n, args.seconds, pin, src)
                gen = 100.0 * (time.process_time() - gen0) / (args.seconds + 1.5)
                if kind == "direct":
                    base = r
                loss = 100.0 * (1 - r["got"] / r["sent"]) if r["sent"] else float("nan")
                cpu = user = add50 = add99 = "-"
                if kind != "direct" and r["got"]:
                    per_packet.setdefault(key, []).append(1e6 * r["cpu"] / r["got"])
                    cpu = f"{1e6 * r['cpu'] / r['got']:.1f}"
                    user = f"{1e6 * r['user'] / r['got']:.1f}"
                if base is not None and kind != "direct":
                    add50 = f"{1e6 * (r['p50'] - base['p50']):.0f}"
                    add99 = f"{1e6 * (r['p99'] - base['p99']):.0f}"
                print(
                    f"{label:40} {n:>7} {r['got']:>8} {cpu:>10} {user:>7} {loss:>7.2f} {1e6 * r['p50']:>7.0f} {1e6 * r['p99']:>7.0f}"
                    f" {add50:>7} {add99:>7} {gen:>8.0f}"
                )
                dropped = {k: v for k, v in r.get("dropped", {}).items() if v}
                if dropped:
                    print(f"{'':40} relay drops: {dropped}")
                if r.get("offloaded"):
                    print(f"{'':40} legs held by C forwarding rules at the end: {r['offloaded']}")
        ref = per_packet.get("rtpengine")
        if ref:
            ref_median = statistics.median(ref)
            print(
                f"  CPU per packet, median of {args.repeat} round(s), ratio to rtpengine ({ref_median:.1f} us):"
            )
            for key, values in per_packet.items():
                if key == "rtpengine":
                    continue
                median = statistics.median(values)
                print(f"    {key:20} {median:7.1f} us  {median / ref_median:5.2f}x")


if __name__ == "__main__":
    main()
