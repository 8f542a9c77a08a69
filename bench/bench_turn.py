"""TURN relay CPU per 1,000 ChannelData packets at 100 and 500 concurrent allocations, edge vs coturn.

Each server runs in its own process pinned to CPU 0 and relays the same load: N UDP allocations
(one REST user each), each with a channel bound to one peer socket on 127.0.0.2; then

* phase "to peer":   ChannelData from the clients, round robin, relayed as UDP to the peer;
* phase "to client": UDP from the peer to every relayed address, relayed back as ChannelData.

The load generator (CPU 1) paces PACKETS packets per phase at RATE packets/s; a forked sink
drains and counts what arrives. The figure is the server's on-CPU time (all its threads, from
/proc/<pid>/task/*/schedstat) during the phase divided by the packets it relayed, per 1,000.

Servers: the edge on Twisted's asyncio reactor over uvloop (the production choice: native
datagram endpoints), the edge on the default epoll reactor (listenUDP fallback), and coturn's
``turnserver`` (one relay thread) on loopback. Figures are printed side by side; nothing passes
or fails on time.

    .venv/bin/python bench/bench_turn.py [--packets 60000] [--rate 20000] [--allocations 100,500]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import os
import secrets
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import free_port

SECRET = "bench-turn-secret-0123456789"
PAYLOAD = b"\x80" + b"r" * 171  # an RTP-sized (G.711, 20 ms) packet
PEER_IP = "127.0.0.2"
_HELD: list[socket.socket] = []  # client sockets of finished runs, closed when their server stops
EDGE_RELAYS = (40000, 44999)
COTURN_RELAYS = (45000, 49999)


# --- servers --------------------------------------------------------------------------------------


def _serve_edge(reactor_name: str, state: str, port_file: str) -> None:
    """Child mode: run the edge with TURN on loopback and write its TURN UDP port to ``port_file``."""
    if reactor_name == "uvloop":
        from mcs_edge.reactor import install

        install()
    from helpers.edge import edge_toml, tenant_toml
    from twisted.internet import reactor

    from mcs_edge import config as c
    from mcs_edge.tx.service import EdgeService

    tenant = tenant_toml(
        "bench",
        5080,
        keys=f'turn_secret = "{SECRET}"\nturn_peers = ["127.0.0.0/8"]\n',
        tail="[tenants.shaping]\nrate = 10000000\nburst = 10000000\n",
    )
    text = edge_toml(
        Path(state),
        tenant,
        edge='public_address = "127.0.0.1"\n',
        listen='turn = "127.0.0.1:0"\n',
        media=EDGE_RELAYS,
        media_bind=None,
        sections="[turn]\ntls_on_https = false\nmax_allocations_per_tenant = 100000\n",
    )
    svc = EdgeService(c.loads(text), reactor)
    svc.privilegedStartService()
    svc.startService()
    assert svc.turn is not None
    Path(port_file).write_text(str(svc.turn.ports["turn_udp"]))
    reactor.run()  # type: ignore[attr-defined]


def start_edge(reactor_name: str, tmp: str) -> tuple[subprocess.Popen[bytes], int]:
    port_file = os.path.join(tmp, f"edge-{reactor_name}.port")
    cmd = ["taskset", "-c", "0", sys.executable, __file__, "--serve-edge", reactor_name, tmp, port_file]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not os.path.exists(port_file) or not Path(port_file).read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"edge ({reactor_name}) did not start")
        time.sleep(0.05)
    time.sleep(0.3)
    return proc, int(Path(port_file).read_text())


def start_coturn(tmp: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cmd = [
        "taskset", "-c", "0", "turnserver", "-n", "--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1",
        "-p", str(port), "--min-port", str(COTURN_RELAYS[0]), "--max-port", str(COTURN_RELAYS[1]),
        "--use-auth-secret", "--static-auth-secret", SECRET, "--realm", "bench", "--relay-threads", "1",
        "--allow-loopback-peers", "--no-tls", "--no-dtls", "--no-cli", "--no-tcp",
        "--log-file", os.path.join(tmp, "coturn.log"), "--simple-log", "--no-stdout-log",
        "--total-quota", "0", "--user-quota", "0", "--no-software-attribute",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    if proc.poll() is not None:
        raise SystemExit("turnserver did not start")
    return proc, port


def cpu_ns(pid: int) -> int:
    """On-CPU nanoseconds of every thread of ``pid``."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
        except (OSError, ValueError):
            pass
    return total


# --- a minimal TURN client (RFC 8656 over UDP) ------------------------------------------------------


def _client_modules():  # type: ignore[no-untyped-def]
    from mcs_edge.core.stun import message as m

    return m


def _rest(user: str) -> tuple[str, str]:
    username = f"{int(time.time()) + 3600}:{user}@bench"
    password = base64.b64encode(hmac.digest(SECRET.encode(), username.encode(), hashlib.sha1)).decode()
    return username, password


def _request(sock: socket.socket, server: tuple[str, int], msg_bytes: bytes, txid: bytes) -> object:
    m = _client_modules()
    sock.sendto(msg_bytes, server)
    while True:
        data = sock.recv(65536)
        if data and data[0] < 0x40:
            resp = m.Message.parse(data)
            if resp.transaction_id == txid:
                return resp


def allocate(
    sock: socket.socket, server: tuple[str, int], user: str, peer: tuple[str, int], channel: int
) -> tuple[tuple[str, int], Callable[[], None]]:
    """Allocate (answering the 401) and bind ``channel`` to ``peer``; returns the relayed address
    and a function that deletes the allocation (Refresh with LIFETIME 0)."""
    m = _client_modules()
    username, password = _rest(user)
    txid = m.Message.new_transaction_id(secrets.token_bytes)
    req = m.Message(m.METHOD_ALLOCATE, m.CLASS_REQUEST, txid, (m.RequestedTransport(17),))
    challenge: Any = _request(sock, server, req.serialize(), txid)
    if challenge.get(m.Realm) is None or challenge.get(m.Nonce) is None:
        raise SystemExit(
            f"unexpected answer to an unauthenticated Allocate from {sock.getsockname()}: {challenge}"
        )
    realm = challenge.get(m.Realm).value
    nonce = challenge.get(m.Nonce).value
    key = m.long_term_key(username, realm, password)
    auth = (m.Username(username), m.Realm(realm), m.Nonce(nonce))
    txid = m.Message.new_transaction_id(secrets.token_bytes)
    req = m.Message(m.METHOD_ALLOCATE, m.CLASS_REQUEST, txid, (m.RequestedTransport(17), *auth))
    resp = _request(sock, server, req.serialize(integrity_key=key, fingerprint=True), txid)
    relayed = resp.get(m.XorRelayedAddress)  # type: ignore[attr-defined]
    if relayed is None:
        raise SystemExit(f"allocation failed: {resp}")
    txid = m.Message.new_transaction_id(secrets.token_bytes)
    attrs = (m.ChannelNumber(channel), m.XorPeerAddress(*peer), *auth)
    req = m.Message(m.METHOD_CHANNEL_BIND, m.CLASS_REQUEST, txid, attrs)
    resp = _request(sock, server, req.serialize(integrity_key=key, fingerprint=True), txid)
    if resp.cls != m.CLASS_SUCCESS:  # type: ignore[attr-defined]
        raise SystemExit(f"channel bind failed: {resp}")

    def delete() -> None:
        txid = m.Message.new_transaction_id(secrets.token_bytes)
        req = m.Message(m.METHOD_REFRESH, m.CLASS_REQUEST, txid, (m.Lifetime(0), *auth))
        sock.setblocking(True)
        sock.settimeout(5)
        _request(sock, server, req.serialize(integrity_key=key, fingerprint=True), txid)

    return relayed.address, delete


def _sink(socks: list[socket.socket], stop_fd: int, report_fd: int) -> None:
    """Child: count datagrams on ``socks`` until ``stop_fd`` is readable; report on each request."""
    ep = select.epoll()
    for s in socks:
        s.setblocking(False)
        ep.register(s.fileno(), select.EPOLLIN)
    ep.register(stop_fd, select.EPOLLIN)
    by_fd = {s.fileno(): s for s in socks}
    count = 0
    while True:
        for fd, _ev in ep.poll(1.0):
            if fd == stop_fd:
                cmd = os.read(stop_fd, 1)
                os.write(report_fd, struct.pack("!Q", count))
                if cmd == b"q":
                    os._exit(0)
                continue
            s = by_fd[fd]
            try:
                while True:
                    s.recv(4096)
                    count += 1
            except BlockingIOError:
                pass


def run_load(server_pid: int, server: tuple[str, int], n: int, packets: int, rate: float) -> dict[str, float]:
    """Set up ``n`` allocations against ``server``, run both phases, return us of CPU per packet."""
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind((PEER_IP, 0))
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    clients: list[socket.socket] = []
    relays: list[tuple[str, int]] = []
    deletes: list[Callable[[], None]] = []
    for i in range(n):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        relay, delete = allocate(sock, server, f"u{i}", peer.getsockname(), 0x4000 + (i % 0x1000))
        relays.append(relay)
        deletes.append(delete)
        clients.append(sock)
    stop_r, stop_w = os.pipe()
    rep_r, rep_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.sched_setaffinity(0, {1})
        _sink([peer, *clients], stop_r, rep_w)
    out: dict[str, float] = {}
    try:
        frames = [struct.pack("!HH", 0x4000 + (i % 0x1000), len(PAYLOAD)) + PAYLOAD for i in range(n)]
        for phase in ("to peer", "to client"):
            time.sleep(0.3)
            os.write(stop_w, b"r")
            before_count = struct.unpack("!Q", os.read(rep_r, 8))[0]
            before = cpu_ns(server_pid)
            start = time.perf_counter()
            for k in range(packets):
                i = k % n
                if phase == "to peer":
                    clients[i].sendto(frames[i], server)
                else:
                    peer.sendto(PAYLOAD, relays[i])
                if k % 64 == 63:
                    due = start + (k + 1) / rate
                    delay = due - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
            time.sleep(0.3)  # let the server finish the queue
            spent = cpu_ns(server_pid) - before
            os.write(stop_w, b"r")
            relayed = struct.unpack("!Q", os.read(rep_r, 8))[0] - before_count
            out[phase] = spent / 1000.0 / max(relayed, 1)  # us per packet
            out[phase + " delivered"] = relayed / packets
    finally:
        os.write(stop_w, b"q")
        os.read(rep_r, 8)
        os.waitpid(pid, 0)
        for delete in deletes:  # the next size starts from an empty server
            delete()
        # Keep the client sockets until the server stops: a new client bound to a just-closed
        # ephemeral port would meet its predecessor's allocation if the server kept it (437).
        _HELD.extend([peer, *clients])
    return out


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-edge":
        _serve_edge(sys.argv[2], sys.argv[3], sys.argv[4])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=60000, help="packets per phase")
    parser.add_argument("--rate", type=float, default=20000.0, help="offered packets/s")
    parser.add_argument("--allocations", default="100,500")
    parser.add_argument("--servers", default="edge-uvloop,edge-epoll,coturn")
    args = parser.parse_args()
    os.sched_setaffinity(0, {1})
    sizes = [int(x) for x in args.allocations.split(",")]
    servers = args.servers.split(",")
    if "coturn" in servers and shutil.which("turnserver") is None:
        print("turnserver (Debian coturn) not found: coturn column skipped")
        servers.remove("coturn")
    print(
        f"TURN relay CPU, us per relayed ChannelData packet ({len(PAYLOAD)}-byte payload), "
        f"{args.packets} packets/phase at {args.rate:.0f} pkt/s; server pinned to CPU 0"
    )
    results: dict[tuple[str, int], dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in servers:
            if name == "coturn":
                proc, port = start_coturn(tmp)
            else:
                proc, port = start_edge(name.split("-", 1)[1], tmp)
            try:
                for n in sizes:
                    print(f"  {name}: {n} allocations ...", file=sys.stderr, flush=True)
                    results[(name, n)] = run_load(proc.pid, ("127.0.0.1", port), n, args.packets, args.rate)
                    # a fresh set of allocations per size: the old ones expire; new users, new ports
            finally:
                for sock in _HELD:
                    sock.close()
                _HELD.clear()
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
    header = f"{'server':<14}{'allocs':>7}  {'to peer':>9}  {'to client':>9}  {'per 1000 pkts (ms CPU)':>24}  delivered"
    print(header)
    print("-" * len(header))
    for (name, n), r in results.items():
        mean = (r["to peer"] + r["to client"]) / 2
        print(
            f"{name:<14}{n:>7}  {r['to peer']:>7.2f}us  {r['to client']:>7.2f}us  {mean:>21.2f} ms"
            f"  {r['to peer delivered']:.0%}/{r['to client delivered']:.0%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
