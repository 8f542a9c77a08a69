"""SIP over WSS -> UDP PBX: the edge beside Kamailio (the reference) and an autobahn echo floor, one run.

Every server is started by this script, pinned to CPU 0 (``taskset``); the load generator (this
process, asyncio + uvloop) and the UDP PBX responder are pinned to CPU 1. Servers:

* ``edge``      mcs-edge (``--reactor=uvloop``), one tenant whose PBX is the responder;
* ``kamailio``  Debian's Kamailio with its ``tls``, ``websocket`` and ``xhttp`` modules: a WSS -> UDP
                transaction-stateful proxy (``tm``; Record-Route with double RR for INVITE, Path for
                REGISTER, loose routing of in-dialog requests), one UDP and one TCP worker process,
                configuration and a self-signed certificate written to a temporary directory;
* ``echo``      the floor: a minimal autobahn WebSocket echo server over TLS (one message in, one out).

Load, open loop at ``--rate`` transactions/s offered (each of ``--methods``), over ``--conns`` WSS
connections: REGISTER (200 from the PBX), INVITE (200 with Contact and the Record-Route echoed; the
client sends the ACK along the route set, so one INVITE transaction = INVITE + 200 + ACK through the
proxy). A transaction fails on a non-2xx final answer or no answer within 5 s. Printed per server
and method: achieved tx/s, failures, latency p50/p99, server CPU per transaction (utime + stime of
the server's whole process tree, /proc), the responder's CPU per transaction, the generator's own
CPU (% of its core: it must not be the bottleneck), and the ratio to Kamailio.

Idle connections (``--idle 1000,5000``): that many WSS connections held (edge and Kamailio:
registered), then PSS per connection (summed over the process tree), idle CPU, and the CPU of one
CRLF keepalive (``\\r\\n\\r\\n`` frame, RFC 5626 s.4.4.1) and of one WebSocket ping, each sent once on
every held connection, spread over a few seconds (CPU above idle / keepalives sent). Idle CPU is
measured over ``--idle-window`` seconds (4) starting ``--idle-settle`` seconds (3) after the last
REGISTER was answered: with the default 3 s the window still holds the registrations' tail (the
transactions RFC 3261 timers keep after the answer ending, the first full collection);
``--idle-settle 30`` measures the edge at rest.

    .venv/bin/python bench/bench_sip.py [--rate 1000] [--methods REGISTER,INVITE] [--seconds 10]
        [--conns 50] [--idle 1000,5000] [--idle-settle 3] [--idle-window 4]
        [--servers edge,kamailio,echo] [--repeat 1]

``--baseline DIR`` (or ``--baseline-src``) adds the server ``base``: the edge with ``mcs_edge`` from the
source tree ``DIR`` (e.g. an export of an older commit), for a before/after comparison in one run
(``--servers base,edge,kamailio``). It also prints the cost of RFC 6455 UTF-8 validation of a typical
INVITE (``bytes.decode``, as the edge's codec runs it, and autobahn's validator, as it ran before). Every port is a free ephemeral one.

The machine may be shared: compare ratios measured in the same run and repeat (``--repeat``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from _common import BIN, DOMAIN, WS, taskset, tree

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
KEEP = (b"via:", b"v: ", b"from", b"f: ", b"to: ", b"t: ", b"call", b"i: ", b"cseq", b"reco")
class R(asyncio.DatagramProtocol):
    n = 0
    def connection_made(self, t): self.t = t
    def datagram_received(self, data, addr):
        if data.startswith(b"ACK ") or data.startswith(b"SIP/2.0"):
            return
        head, _, _ = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        keep = [l for l in lines[1:] if l[:4].lower() in KEEP]
        extra = b""
        if data.startswith(b"INVITE "):
            R.n += 1
            keep = [l + b";tag=pbx%d" % R.n if l[:3].lower() in (b"to:", b"t: ") else l for l in keep]
            extra = b"Contact: <sip:pbx@127.0.0.1:%d>\r\n" % int(sys.argv[1])
        self.t.sendto(b"SIP/2.0 200 OK\r\n" + b"\r\n".join(keep) + b"\r\n" + extra + b"Content-Length: 0\r\n\r\n", addr)
async def main():
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(R, local_addr=("127.0.0.1", int(sys.argv[1])))
    print("READY", flush=True)
    await asyncio.Event().wait()
uvloop.run(main())
"""

KAMAILIO_CFG = """#!KAMAILIO
debug=0
log_stderror=yes
fork=yes
children=1
tcp_children=1
auto_aliases=no
enable_tls=yes
tcp_accept_no_cl=yes
tcp_max_connections=30000
tls_max_connections=30000
tcp_connection_lifetime=3605
open_files_limit={fd_limit}
listen=udp:127.0.0.1:{udp_port}
listen=tls:127.0.0.1:{wss_port}
mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"
loadmodule "tls.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xhttp.so"
loadmodule "websocket.so"
loadmodule "path.so"
loadmodule "pv.so"
modparam("tls", "config", "{tmp}/kamailio-tls.cfg")
modparam("rr", "enable_double_rr", 1)
modparam("websocket", "keepalive_mechanism", 0)

request_route {{
    force_rport();
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (has_totag()) {{
        if (loose_route()) {{ t_relay(); exit; }}
        if (is_method("ACK")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
        sl_send_reply("404", "Not here");
        exit;
    }}
    if (is_method("CANCEL")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
    if (t_check_trans()) {{ exit; }}
    if (is_method("REGISTER")) {{ add_path_received(); }} else {{ record_route(); }}
    $du = "sip:127.0.0.1:{pbx_port}";
    if (!t_relay()) {{ sl_reply_error(); }}
    exit;
}}

event_route[xhttp:request] {{
    if ($hdr(Upgrade) =~ "websocket" && $hdr(Connection) =~ "Upgrade" && $rm =~ "GET") {{
        if (ws_handle_handshake()) {{ exit; }}
    }}
    xhttp_reply("404", "Not Found", "", "");
}}
"""

KAMAILIO_TLS = """[server:default]
method = TLSv1.2+
verify_certificate = no
require_certificate = no
private_key = {key}
certificate = {cert}
"""


def _free_port() -> int:
    """A port free for TCP and UDP on loopback now (the machine is shared: no fixed ports)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port: int = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port


PBX_PORT = _free_port()


def _cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and every descendant, every thread, in seconds (schedstat: ns, not ticks)."""
    total = 0
    for p in tree(pid):
        try:
            tasks = list(Path(f"/proc/{p}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return total / 1e9


def _pss_kib(pid: int) -> int:
    total = 0
    for p in tree(pid):
        try:
            text = Path(f"/proc/{p}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1])
    return total


def _header(msg: bytes, name: bytes) -> bytes:
    """The value of the first header ``name`` (with its CRLF-colon prefix, e.g. ``b"\r\nCall-ID:"``)."""
    i = msg.find(name)
    if i < 0:
        return b""
    j = msg.find(b"\r\n", i + len(name))
    return msg[i + len(name) : j].strip()


def _register(i: int, seq: int, branch: str, conn_id: int) -> bytes:
    return (
        f"REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/WSS c{conn_id}.invalid;branch=z9hG4bK{branch}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:u{i}@{DOMAIN}>;tag=t{i}\r\nTo: <sip:u{i}@{DOMAIN}>\r\n"
        f"Call-ID: r{i}\r\nCSeq: {seq} REGISTER\r\nContact: <sip:u{i}@c{conn_id}.invalid;transport=ws>;expires=600\r\n"
        "Supported: path, outbound\r\nUser-Agent: bench\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def _invite(i: int, call: str, branch: str, conn_id: int) -> bytes:
    return (
        f"INVITE sip:pbx@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/WSS c{conn_id}.invalid;branch=z9hG4bK{branch}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:u{i}@{DOMAIN}>;tag=t{i}\r\nTo: <sip:pbx@{DOMAIN}>\r\n"
        f"Call-ID: {call}\r\nCSeq: 1 INVITE\r\nContact: <sip:u{i}@c{conn_id}.invalid;transport=ws;ob>\r\n"
        "Supported: outbound\r\nUser-Agent: bench\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def _ack(ok: bytes, branch: str, conn_id: int) -> bytes:
    """The ACK for a 2xx: to its Contact along the reversed Record-Route set (RFC 3261 s.12.1.2, 13.2.2.4)."""
    lines = ok.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    routes: list[bytes] = []
    to = from_ = call = cseq = contact = b""
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        key = name.strip().lower()
        value = value.strip()
        if key == b"record-route":
            routes.extend(v.strip() for v in value.split(b","))
        elif key in (b"to", b"t"):
            to = value
        elif key in (b"from", b"f"):
            from_ = value
        elif key in (b"call-id", b"i"):
            call = value
        elif key == b"cseq":
            cseq = value.split()[0]
        elif key in (b"contact", b"m"):
            contact = value
    uri = contact[contact.find(b"<") + 1 : contact.find(b">")] if b"<" in contact else contact
    route = b"".join(b"Route: " + r + b"\r\n" for r in reversed(routes))
    return (
        b"ACK "
        + uri
        + b" SIP/2.0\r\nVia: SIP/2.0/WSS c%d.invalid;branch=z9hG4bK%s\r\n" % (conn_id, branch.encode())
        + b"Max-Forwards: 70\r\n"
        + route
        + b"From: "
        + from_
        + b"\r\nTo: "
        + to
        + b"\r\nCall-ID: "
        + call
        + b"\r\nCSeq: "
        + cseq
        + b" ACK\r\nContent-Length: 0\r\n\r\n"
    )


class Load:
    """Open-loop load at a fixed offered rate over WSS connections; matches answers by Call-ID + CSeq."""

    def __init__(self, port: int, method: str, rate: float, seconds: float, conns: int, pid: int) -> None:
        self.port, self.method, self.rate, self.seconds, self.conns, self.pid = (
            port,
            method,
            rate,
            seconds,
            conns,
            pid,
        )
        self.pending: dict[bytes, float] = {}
        self.latencies: list[float] = []
        self.failures = 0
        self.statuses: dict[bytes, int] = {}
        self.n = 0

    async def reader(self, k: int, ws: WS) -> None:
        try:
            while True:
                msg = await ws.recv()
                if self.method == "ECHO":  # the floor echoes the request itself
                    status = b"200"
                elif msg.startswith(b"SIP/2.0 "):
                    status = msg[8:11]
                else:
                    continue
                if status[:1] == b"1":
                    continue
                key = _header(msg, b"\r\nCall-ID:") + b" " + _header(msg, b"\r\nCSeq:").split()[0]
                sent = self.pending.pop(key, None)
                if sent is None:
                    continue
                if status[:1] == b"2":
                    self.latencies.append(time.perf_counter() - sent)
                    if self.method == "INVITE":
                        self.n += 1
                        ws.send(_ack(msg, f"a{self.n}", k))
                else:
                    self.failures += 1
                    self.statuses[status] = self.statuses.get(status, 0) + 1
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            return

    async def run(self) -> dict[str, Any]:
        ctx = ssl._create_unverified_context()
        clients = [await WS.connect(self.port, DOMAIN, ctx) for _ in range(self.conns)]
        readers = [asyncio.create_task(self.reader(k, ws)) for k, ws in enumerate(clients)]
        if self.method == "INVITE":  # register first, as a browser would (not measured)
            for k, ws in enumerate(clients):
                ws.send(_register(k, 1, f"pre{k}", k))
            await asyncio.sleep(1.0)
        loop = asyncio.get_running_loop()
        total = int(self.rate * self.seconds)
        cseq = [1] * self.conns
        sent = 0
        cpu0, gen0, t0 = _cpu_seconds(self.pid), time.process_time(), loop.time()
        while sent < total:
            due = min(total, int((loop.time() - t0) * self.rate) + 1)
            while sent < due:
                k = sent % self.conns
                branch = f"{self.method[0]}{sent}"
                if self.method in ("REGISTER", "ECHO"):
                    cseq[k] += 1
                    key = f"r{k} {cseq[k]}".encode()
                    data = _register(k, cseq[k], branch, k)
                else:
                    call = f"c{sent}-{k}"
                    key = f"{call} 1".encode()
                    data = _invite(k, call, branch, k)
                self.pending[key] = time.perf_counter()
                clients[k].send(data)
                sent += 1
            await asyncio.sleep(0.002)
        offered_for = loop.time() - t0
        deadline = loop.time() + 5.0
        while self.pending and loop.time() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)  # the last ACKs
        elapsed = loop.time() - t0
        cpu, gen = _cpu_seconds(self.pid) - cpu0, time.process_time() - gen0
        self.failures += len(self.pending)
        for task in readers:
            task.cancel()
        for ws in clients:
            ws.w.close()
        await asyncio.sleep(0.5)
        return {
            "offered": sent / offered_for,
            "done": len(self.latencies),
            "failures": self.failures,
            "statuses": self.statuses,
            "lat": sorted(self.latencies),
            "cpu": cpu,
            "gen": 100.0 * gen / elapsed,
            "elapsed": offered_for,
        }


async def _idle(
    port: int, count: int, pid: int, register: bool, settle: float = 3.0, window: float = 4.0
) -> dict[str, float]:
    """Hold ``count`` connections: PSS per connection, idle CPU, CPU per CRLF keepalive and per WS ping."""
    ctx = ssl._create_unverified_context()
    await asyncio.sleep(0.5)
    base = _pss_kib(pid)
    clients: list[WS] = []

    async def open_one(i: int) -> None:
        ws = await WS.connect(port, DOMAIN, ctx)
        if register:
            ws.send(_register(100000 + i, 1, f"i{i}", 100000 + i))
            await ws.recv()
        clients.append(ws)

    for start in range(0, count, 50):
        await asyncio.gather(*(open_one(i) for i in range(start, min(count, start + 50))))
    await asyncio.sleep(settle)
    held = _pss_kib(pid)
    cpu0 = _cpu_seconds(pid)
    await asyncio.sleep(window)
    idle_cpu = _cpu_seconds(pid) - cpu0
    drains = [asyncio.create_task(_drain(ws)) for ws in clients]
    costs = {}
    for kind, frame in (
        ("crlf", b"\x81\x84\x00\x00\x00\x00\r\n\r\n"),  # masked text frame, zero mask
        ("ping", b"\x89\x80\x00\x00\x00\x00"),  # masked empty ping
    ):
        perf = _perf_start(pid, kind)
        cpu0 = _cpu_seconds(pid)
        t0 = time.monotonic()
        step = window / max(1, len(clients)) * 50
        for start in range(0, len(clients), 50):
            for ws in clients[start : start + 50]:
                ws.w.write(frame)
            await asyncio.sleep(max(0.0, t0 + step * (start // 50 + 1) - time.monotonic()))
        await asyncio.sleep(max(0.0, t0 + window - time.monotonic()))
        costs[kind] = max(0.0, _cpu_seconds(pid) - cpu0 - idle_cpu) / max(1, len(clients))
        _perf_stop(perf)
    for task in drains:
        task.cancel()
    for ws in clients:
        ws.w.close()
    await asyncio.sleep(1.0)
    return {
        "pss": (held - base) / count,
        "idle_pct": 100.0 * idle_cpu / window,
        "crlf_us": 1e6 * costs["crlf"],
        "ping_us": 1e6 * costs["ping"],
    }


def _perf_start(pid: int, kind: str) -> subprocess.Popen[bytes] | None:
    """``MCS_BENCH_PERF=file``: ``perf record -g`` of the server over one keepalive window, into
    ``file.KIND`` (``perf report -i ... --sort dso`` splits kernel, libpython, libssl, uvloop; the
    sampling adds a little to the figure of that window)."""
    out = os.environ.get("MCS_BENCH_PERF")
    if not out or shutil.which("perf") is None:
        return None
    return subprocess.Popen(
        ["perf", "record", "-F", "999", "-g", "-p", str(pid), "-o", f"{out}.{kind}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _perf_stop(perf: subprocess.Popen[bytes] | None) -> None:
    if perf is not None:
        perf.send_signal(signal.SIGINT)
        perf.wait(timeout=30)


async def _drain(ws: WS) -> None:
    try:
        while True:
            if not await ws.r.read(4096):
                return
    except (ConnectionError, asyncio.CancelledError):
        return


def _utf8_cost(rounds: int = 20000) -> tuple[int, float, float]:
    """(message bytes, us per message with autobahn's validator, us with bytes.decode)."""
    from autobahn.websocket.utf8validator import Utf8Validator

    sdp = "".join(f"a=candidate:{i} 1 udp 2122260223 192.0.2.{i} 5{i:04d} typ host\r\n" for i in range(12))
    msg = _register(0, 1, "u", 0).replace(b"REGISTER", b"INVITE") + sdp.encode()
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


def _start(
    cmd: list[str], cwd: str, ready: str, name: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    log_path = Path(cwd) / f"{name}.log"
    with log_path.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + 90  # a shared, loaded machine starts slowly
    while time.monotonic() < deadline:
        if ready in log_path.read_text(errors="replace"):
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise SystemExit(f"{name} did not start: {log_path.read_text(errors='replace')[-2000:]}")


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _edge(tmp: str, src: str | None = None) -> tuple[subprocess.Popen[str], int]:
    https = _free_port()
    conf = Path(tmp) / "edge.toml"
    conf.write_text(
        textwrap.dedent(
            f"""
            [edge]
            state_dir = "{tmp}/state"
            [listen]
            https = "127.0.0.1:{https}"
            sip_tls = "off"
            backend_sip = "127.0.0.1:{_free_port()}"
            admin = "127.0.0.1:{_free_port()}"
            [sip]
            keepalive_timeout = 600
            [guard]
            allow_networks = ["127.0.0.0/8"]
            [[tenants]]
            id = "bench"
            domains = ["{DOMAIN}"]
            backend_sip = "udp:127.0.0.1:{PBX_PORT}"
            certificate = "self-signed"
            [tenants.limits]
            max_connections = 100000
            """
        )
    )
    cmd = [
        *taskset(0),
        str(BIN / "twistd"),
        "-n",
        "--pidfile=",
        "--reactor=uvloop",
        "mcs-edge",
        "--config",
        str(conf),
    ]
    if os.environ.get("MCS_BENCH_PROFILE"):  # cProfile stats of the edge to that file
        cmd = [
            *taskset(0),
            str(BIN / "twistd"),
            "-n",
            "--pidfile=",
            "--profile",
            os.environ["MCS_BENCH_PROFILE"],
            "--profiler=cprofile",
            "--savestats",
            *cmd[len(taskset(0)) + 3 :],
        ]
    env = dict(os.environ)
    if src:  # another source tree's mcs_edge (e.g. main, for before/after in one run)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    return _start(cmd, tmp, "EDG101", "edge-base" if src else "edge", env), https


def _self_signed(tmp: str) -> tuple[Path, Path]:
    cert, key = Path(tmp) / "bench-cert.pem", Path(tmp) / "bench-key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            f"/CN={DOMAIN}",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def _kamailio(tmp: str) -> tuple[subprocess.Popen[str], int]:
    cert, key = _self_signed(tmp)
    (Path(tmp) / "kamailio-tls.cfg").write_text(KAMAILIO_TLS.format(key=key, cert=cert))
    cfg = Path(tmp) / "kamailio.cfg"
    wss = _free_port()
    cfg.write_text(
        KAMAILIO_CFG.format(
            udp_port=_free_port(),
            wss_port=wss,
            pbx_port=PBX_PORT,
            tmp=tmp,
            fd_limit=resource.getrlimit(resource.RLIMIT_NOFILE)[1],
        )
    )
    kamailio = shutil.which("kamailio") or "/usr/sbin/kamailio"
    cmd = [
        *taskset(0),
        kamailio,
        "-DD",
        "-E",
        "-f",
        str(cfg),
        "-m",
        "2048",
        "-M",
        "32",
        "-P",
        f"{tmp}/kamailio.pid",
    ]
    proc = _start(cmd, tmp, "Aliases:", "kamailio")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # its workers are forked after that line
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", wss), timeout=1):
            time.sleep(0.5)
            return proc, wss
        time.sleep(0.1)
    raise SystemExit("kamailio does not listen")


def _echo(tmp: str) -> tuple[subprocess.Popen[str], int]:
    cert, key = _self_signed(tmp)
    port = _free_port()
    cmd = [*taskset(0), str(BIN / "python"), "-c", ECHO_SERVER, str(cert), str(key), str(port)]
    return _start(cmd, tmp, "READY", "echo"), port


SERVERS = {"edge": _edge, "kamailio": _kamailio, "echo": _echo}
LABELS = {
    "edge": "mcs-edge (uvloop)",
    "kamailio": "Kamailio 5.6 (tm, 1+1 workers)",
    "echo": "floor: autobahn WSS echo",
    "base": "mcs-edge baseline tree (uvloop)",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--rate", default="1000", help="offered transactions/s, comma-separated")
    ap.add_argument("--methods", default="REGISTER,INVITE")
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--idle", default="1000,5000", help="held connections, comma-separated ('' = none)")
    ap.add_argument(
        "--idle-settle", type=float, default=3.0, help="seconds from the last REGISTER to the idle window"
    )
    ap.add_argument("--idle-window", type=float, default=4.0, help="seconds of the idle CPU measurement")
    ap.add_argument("--servers", default="edge,kamailio,echo")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument(
        "--baseline-src",
        "--baseline",
        dest="baseline_src",
        default="",
        help="server 'base': the edge with mcs_edge from this source tree (e.g. a checkout of main)",
    )
    args = ap.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if taskset(1):
        os.sched_setaffinity(0, {1})
    idle_counts = [int(x) for x in args.idle.split(",") if x]
    rates = [float(x) for x in args.rate.split(",") if x]
    methods = [m.strip().upper() for m in args.methods.split(",") if m.strip()]
    servers = [x for x in args.servers.split(",") if x]
    if args.baseline_src and "base" not in servers:
        servers.insert(0, "base")
    import uvloop

    results: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    idle: dict[tuple[str, int], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        responder = _start(
            [*taskset(1), str(BIN / "python"), "-c", RESPONDER, str(PBX_PORT)], tmp, "READY", "pbx"
        )
        try:
            for _round in range(args.repeat):
                for name in servers:
                    if name == "base":
                        proc, port = _edge(tmp, args.baseline_src)
                    else:
                        proc, port = SERVERS[name](tmp)
                    try:
                        for method in methods if name != "echo" else ["ECHO"]:
                            for rate in rates:
                                pbx0 = _cpu_seconds(responder.pid)
                                load = Load(port, method, rate, args.seconds, args.conns, proc.pid)
                                r = uvloop.run(load.run())
                                r["pbx"] = _cpu_seconds(responder.pid) - pbx0
                                results.setdefault((name, method, rate), []).append(r)
                                _print_load(name, method, rate, r)
                        for n in idle_counts:
                            i = uvloop.run(
                                _idle(port, n, proc.pid, name != "echo", args.idle_settle, args.idle_window)
                            )
                            idle.setdefault((name, n), []).append(i)
                            print(
                                f"  idle {LABELS[name]:34} {n:6d} conns: PSS {i['pss']:.1f} KiB/conn,"
                                f" idle CPU {i['idle_pct']:.2f}%, CRLF {i['crlf_us']:.1f} us, ping {i['ping_us']:.1f} us",
                                flush=True,
                            )
                    finally:
                        _stop(proc)
        finally:
            _stop(responder)
    _summary(results, idle, servers, methods, rates, idle_counts)
    size, validator_us, decode_us = _utf8_cost()
    print(
        f"UTF-8 validation of a {size}-byte INVITE: {validator_us:.2f} us (autobahn validator, as run before the codec), "
        f"{decode_us:.2f} us (bytes.decode, as the edge runs it)"
    )


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _print_load(name: str, method: str, rate: float, r: dict[str, Any]) -> None:
    lat = r["lat"]
    p50 = 1000 * lat[len(lat) // 2] if lat else float("nan")
    p99 = 1000 * lat[int(len(lat) * 0.99)] if lat else float("nan")
    per_tx = 1e6 * r["cpu"] / max(1, r["done"])
    print(
        f"  {LABELS[name]:34} {method:8} offered {r['offered']:6.0f}/s done {r['done'] / r['elapsed']:6.0f}/s"
        f" fail {r['failures']:5d} p50 {p50:7.2f} ms p99 {p99:7.2f} ms CPU {per_tx:6.0f} us/tx"
        f" PBX {1e6 * r['pbx'] / max(1, r['done']):4.0f} us/tx gen {r['gen']:3.0f}%"
        + (f" {r['statuses']}" if r["statuses"] else ""),
        flush=True,
    )


def _summary(
    results: dict[tuple[str, str, float], list[dict[str, Any]]],
    idle: dict[tuple[str, int], list[dict[str, float]]],
    servers: list[str],
    methods: list[str],
    rates: list[float],
    idle_counts: list[int],
) -> None:
    print()
    print("Summary (median over rounds; ratio = server / Kamailio)")
    print(
        f"{'server':34} {'method':8} {'offered':>8} {'done/s':>7} {'fail':>6} {'p99 ms':>7} {'us/tx':>7} {'ratio':>6} {'gen %':>6}"
    )
    for method in [*methods, "ECHO"]:
        for rate in rates:
            ref = results.get(("kamailio", method, rate))
            ref_tx = _median([1e6 * r["cpu"] / max(1, r["done"]) for r in ref]) if ref else float("nan")
            for name in servers:
                rows = results.get((name, method, rate))
                if not rows:
                    continue
                per_tx = _median([1e6 * r["cpu"] / max(1, r["done"]) for r in rows])
                p99 = _median([1000 * r["lat"][int(len(r["lat"]) * 0.99)] for r in rows if r["lat"]])
                print(
                    f"{LABELS[name]:34} {method:8} {rate:8.0f} {_median([r['done'] / r['elapsed'] for r in rows]):7.0f}"
                    f" {max(r['failures'] for r in rows):6d} {p99:7.2f} {per_tx:7.0f} {per_tx / ref_tx:6.2f}"
                    f" {_median([r['gen'] for r in rows]):6.0f}"
                )
    if idle_counts:
        print()
        print(
            f"{'idle connections':34} {'held':>6} {'PSS KiB/conn':>12} {'idle CPU %':>10} {'CRLF us':>8} {'ping us':>8}"
        )
        for n in idle_counts:
            for name in servers:
                rows = idle.get((name, n))
                if not rows:
                    continue
                print(
                    f"{LABELS[name]:34} {n:6d} {_median([r['pss'] for r in rows]):12.1f}"
                    f" {_median([r['idle_pct'] for r in rows]):10.2f} {_median([r['crlf_us'] for r in rows]):8.1f}"
                    f" {_median([r['ping_us'] for r in rows]):8.1f}"
                )


if __name__ == "__main__":
    main()
