"""HTTPS reverse proxy: requests/s and latency of small GETs through the edge vs the backend directly.

One run, three rows, same client, same backend:

* ``backend direct``  plain HTTP/1.1 keep-alive to the twisted.web backend (the floor);
* ``edge, own page``  HTTPS keep-alive to the edge's landing page (TLS + routing, no proxying);
* ``edge -> backend`` HTTPS keep-alive through the edge's reverse proxy to the same backend.

The server process (edge + backend in one reactor, the default epoll reactor unless
``--reactor asyncio``) is pinned to CPU 0 and the client (asyncio, C ``ssl``) to CPU 1 when the
machine has two. Each row runs ``CONNS`` connections, each sending requests back to back, for
``SECONDS``; latency is measured per request at the client. Figures only, never pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
CONNS = 16
SECONDS = 5.0
WARMUP = 1.0

SERVER = r"""
import os, sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])  # tests/: helpers.edge writes the config
if len(os.sched_getaffinity(0)) > 1:
    os.sched_setaffinity(0, {0})
reactor_name = sys.argv[2]
if reactor_name == "asyncio":
    from twisted.internet import asyncioreactor
    asyncioreactor.install()
from twisted.internet import reactor
from twisted.web import server
from twisted.web.resource import Resource
from mcs_edge import config as c
from mcs_edge.tx.service import EdgeService

class Small(Resource):
    isLeaf = True
    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/plain")
        return b"hello from the backend\n"

backend = reactor.listenTCP(0, server.Site(Small()), interface="127.0.0.1")
state = sys.argv[1]
from helpers.edge import edge_toml, tenant_toml
backend_http = f'backend_http = "http://127.0.0.1:{backend.getHost().port}"\n'
text = edge_toml(
    Path(state),
    tenant_toml("rossi", 5999, keys=backend_http) + tenant_toml("verdi", 5998),
)
svc = EdgeService(c.loads(text), reactor)
svc.privilegedStartService()
svc.startService()
print(backend.getHost().port, svc.ports["https"].getHost().port, flush=True)
reactor.run()
"""


async def _worker(
    host: str,
    port: int,
    sni: str | None,
    ctx: ssl.SSLContext | None,
    until: float,
    lat: list[float],
    warm: float,
) -> int:
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=sni)
    req = f"GET / HTTP/1.1\r\nHost: {sni or host}\r\n\r\n".encode()
    n = 0
    while True:
        t0 = time.perf_counter()
        if t0 >= until:
            break
        writer.write(req)
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        chunked = False
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            k = k.strip().lower()
            if k == b"content-length":
                length = int(v)
            elif k == b"transfer-encoding" and b"chunked" in v.lower():
                chunked = True
        if chunked:
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await reader.readexactly(size + 2)
                if size == 0:
                    break
        else:
            await reader.readexactly(length)
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head[:80])
        t1 = time.perf_counter()
        if t0 >= warm:
            lat.append(t1 - t0)
            n += 1
    writer.close()
    return n


async def _row(port: int, sni: str | None, tls: bool) -> tuple[float, float, float]:
    ctx = None
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    start = time.perf_counter()
    warm = start + WARMUP
    until = warm + SECONDS
    lat: list[float] = []
    counts = await asyncio.gather(
        *[_worker("127.0.0.1", port, sni, ctx, until, lat, warm) for _ in range(CONNS)]
    )
    lat.sort()
    total = sum(counts)
    p50 = lat[len(lat) // 2] * 1000
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
    return total / SECONDS, p50, p99


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reactor", default="epoll", choices=["epoll", "asyncio"])
    args = ap.parse_args()
    if len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {1})
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(Path(tmp) / "state"), args.reactor, str(TESTS)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert proc.stdout is not None
            backend_port, https_port = (int(x) for x in proc.stdout.readline().split())
            rows = [
                ("backend direct (HTTP)", backend_port, None, False),
                ("edge, own page (HTTPS)", https_port, "verdi.example.com", True),
                ("edge -> backend (HTTPS proxy)", https_port, "rossi.example.com", True),
            ]
            print(
                f"small GETs, {CONNS} keep-alive connections, {SECONDS:.0f} s each, server reactor {args.reactor}"
                f" (one core), client asyncio (other core)"
            )
            print(f"{'path':32} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
            for name, port, sni, tls in rows:
                rps, p50, p99 = asyncio.run(_row(port, sni, tls))
                print(f"{name:32} {rps:9.0f} {p50:8.2f} {p99:8.2f}")
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
