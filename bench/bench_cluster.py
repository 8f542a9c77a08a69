"""Replication cost (docs/ha.md): CPU per call set-up and per call per second of the write-behind,
and the Redis write of the records through txredisapi, beside a raw redis-cli pipe.

For N calls (default 100 and 1000) with real media sessions (SDES client leg <-> RTP PBX leg, so
SRTP keys and ICE-less SDES keys are sealed), it prints:

* ``record``   CPU µs per call to build, seal, encode and digest its record the first time (what a
               call set-up costs the active node; bindings excluded)
* ``tick``     CPU µs per call of one unchanged sync (snapshot + digest compare); at the default
               ``sync_interval`` of 0.1 s a call costs 10 x this per second
* ``write``    wall ms and process CPU µs per record to SET the N records in txredisapi pipelines of
               ``cluster.batch`` (200; BENCH_BATCH changes it: 1000 is superlinear in txredisapi) against a local redis-server (started here, loopback)
* ``cli``      wall ms for the same N SETs through ``redis-cli --pipe`` (the floor)

Pinned with taskset to CPU 0 when available. Figures only, never pass/fail.

    .venv/bin/python bench/bench_cluster.py [--calls 100,1000]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from _common import free_port
from helpers.redis import redis_args

from mcs_edge.certs import edge_dtls_certificate
from mcs_edge.core.cluster.records import key_for_call, snapshot
from mcs_edge.core.cluster.replication import CachingBox, ChangeTracker
from mcs_edge.core.cluster.secrets import SecretBox
from mcs_edge.core.media.sdp import Profile, SessionDescription
from mcs_edge.core.media.session import CLIENT, PBX, Leg, MediaSession, SessionSettings
from mcs_edge.core.sip.calls import CallTable, Dialog
from mcs_edge.core.sip.flows import FlowRegistry

KEY64 = "YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXoxMjM0NTY="  # 32 bytes, bench only


class Ports:
    def __init__(self) -> None:
        self.next = 20000

    def open(self, leg: Leg, rtcp_mux: bool) -> bool:
        leg.port = self.next
        leg.rtcp_port = None if rtcp_mux else self.next + 1
        self.next += 2
        return True

    def close(self, leg: Leg) -> None:
        leg.port = 0


def client_offer(i: int) -> SessionDescription:
    key = os.urandom(30)
    import base64

    return SessionDescription.parse(
        "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
        f"m=audio {30000 + 2 * (i % 10000)} RTP/SAVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{base64.b64encode(key).decode()}\r\n"
    )


PBX_ANSWER = SessionDescription.parse(
    "v=0\r\no=pbx 1 1 IN IP4 10.1.0.10\r\ns=-\r\nc=IN IP4 10.1.0.10\r\nt=0 0\r\n"
    "m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
)


def build(n: int) -> tuple[CallTable, dict[str, Any]]:
    calls = CallTable()
    sessions: dict[str, Any] = {}
    ports = Ports()
    settings = SessionSettings(certificate=edge_dtls_certificate(), random_bytes=secrets.token_bytes)
    for i in range(n):
        cid = f"call-{i}"
        calls.invite(cid, "acme", i, True, 0.0)
        calls.answered(cid, 1.0)
        calls.calls[cid].dialog = Dialog(
            f"<sip:a{i}@x>;tag=1", "<sip:b@y>;tag=2", "sip:b@10.1.0.10", ("<sip:10.1.0.10;lr>",), 2
        )
        s = MediaSession(cid, settings, ports, pbx_profile=Profile.RTP, client_profile=Profile.SDES)
        s.offer(CLIENT, client_offer(i), 0.0, 1)
        s.answer(PBX, PBX_ANSWER, 0.0)
        sessions[cid] = s
    return calls, sessions


def core_costs(n: int) -> tuple[float, float, dict[str, bytes]]:
    calls, sessions = build(n)
    box = CachingBox(SecretBox(__import__("base64").b64decode(KEY64), os.urandom))
    reg = FlowRegistry()
    tracker = ChangeTracker(refresh=5.0)
    cache: dict[str, Any] = {}
    t0 = time.process_time()
    records = snapshot(calls, {}, reg, sessions, box, "mcs:bench:", "n1", 1.0, cache)
    writes = tracker.sync(records, 1.0)
    first = (time.process_time() - t0) / n * 1e6
    ticks = 10
    t0 = time.process_time()
    for k in range(ticks):
        t = 1.1 + k * 0.1
        tracker.sync(snapshot(calls, {}, reg, sessions, box, "mcs:bench:", "n1", t, cache), t)
    tick = (time.process_time() - t0) / n / ticks * 1e6
    assert len(writes) == n and key_for_call("mcs:bench:", "call-0") in records
    return first, tick, {k: v for k, v in writes if v is not None}


def redis_writes(port: int, records: dict[str, bytes]) -> tuple[float, float]:
    """(wall ms, CPU µs per record) of txredisapi pipelines of 1000 SETs."""
    import txredisapi
    from twisted.internet import defer, task

    result: list[float] = []

    @defer.inlineCallbacks
    def run(reactor: Any) -> Any:
        conn = yield txredisapi.Connection("127.0.0.1", port, charset=None, convertNumbers=False)
        items = list(records.items())
        t_wall, t_cpu = time.monotonic(), time.process_time()
        batch = int(os.environ.get("BENCH_BATCH", "200"))
        for i in range(0, len(items), batch):
            pipe = yield conn.pipeline()
            for k, v in items[i : i + batch]:
                pipe.set(k, v, expire=120)
            yield pipe.execute_pipeline()
        result.extend([(time.monotonic() - t_wall) * 1e3, (time.process_time() - t_cpu) / len(items) * 1e6])
        print(result[0], result[1], flush=True)  # react() exits the process when run() ends
        yield conn.disconnect()

    task.react(run)
    return result[0], result[1]


def cli_writes(port: int, records: dict[str, bytes]) -> float:
    def resp(*parts: bytes) -> bytes:
        return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)

    payload = b"".join(resp(b"SET", k.encode(), v, b"EX", b"120") for k, v in records.items())
    t = time.monotonic()
    subprocess.run(["redis-cli", "-p", str(port), "--pipe"], input=payload, capture_output=True, check=True)
    return (time.monotonic() - t) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", default="100,1000")
    args = ap.parse_args()
    if shutil.which("taskset") and not os.environ.get("BENCH_PINNED"):
        os.environ["BENCH_PINNED"] = "1"
        os.execvp("taskset", ["taskset", "-c", "0", sys.executable, *sys.argv])
    port = free_port(socket.SOCK_STREAM)
    with tempfile.TemporaryDirectory() as tmp:
        redis = subprocess.Popen(redis_args(port, "127.0.0.1", tmp, notify=False), stdout=subprocess.DEVNULL)
        try:
            time.sleep(0.3)
            print(
                f"{'calls':>6} {'record µs/call':>15} {'tick µs/call':>13} {'write ms':>9} "
                f"{'write µs/rec':>13} {'cli ms':>7}"
            )
            for n in (int(x) for x in args.calls.split(",")):
                first, tick, records = core_costs(n)
                wall, cpu = run_writes_in_child(port, n)
                cli = cli_writes(port, records)
                print(f"{n:>6} {first:>15.1f} {tick:>13.1f} {wall:>9.1f} {cpu:>13.1f} {cli:>7.1f}")
        finally:
            redis.kill()
            redis.wait()
    print("(machine shared with other sessions; relative figures only)")


def run_writes_in_child(port: int, n: int) -> tuple[float, float]:
    """task.react stops its reactor: one child process per run."""
    out = subprocess.run(
        [sys.executable, __file__, "--write-child", str(port), str(n)],
        capture_output=True,
        check=True,
        text=True,
    )
    wall, cpu = out.stdout.split()
    return float(wall), float(cpu)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--write-child":
        _, records = core_costs(int(sys.argv[3]))[1:]
        redis_writes(int(sys.argv[2]), records)
    else:
        main()
