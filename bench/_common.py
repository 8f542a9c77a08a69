"""What the bench scripts share: the edge under twistd with the bench tenant, a WSS client, /proc figures.

Imported by bench/bench_*.py (run as scripts: ``python bench/bench_X.py``, so this folder is on
``sys.path``). The edge itself is started by tests/helpers/twistd.py (the same runner as the
e2e tests); that folder is put on ``sys.path`` here.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import struct
import sys
from collections.abc import AsyncIterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

from helpers.twistd import TwistdEdge  # noqa: E402

BIN = Path(sys.executable).parent
DOMAIN = "bench.example.com"

__all__ = ["BIN", "DOMAIN", "WS", "BenchEdge", "bench_toml", "cpu_ticks", "free_port", "taskset", "tree"]


def free_port(kind: socket.SocketKind = socket.SOCK_DGRAM) -> int:
    """A loopback port free now (the machine is shared: no fixed ports)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def taskset(cpu: int) -> list[str]:
    """``taskset -c cpu`` when the machine has more than one CPU and taskset is there."""
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Kamailio and the edge's supervisor fork workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_ticks(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (clock ticks); 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_toml(state: Path, pbx_port: int, edge: str = "", extra: str = "", tenant: str = "") -> str:
    """The benches' edge: one tenant ``bench`` whose PBX is ``udp:127.0.0.1:pbx_port``, every client on
    loopback allowed, keepalives out of the way; ``edge`` more ``[edge]`` keys, ``extra`` more tables,
    ``tenant`` more lines of the tenant."""
    return (
        f'[edge]\nstate_dir = "{state}"\ndrain_timeout = 1\n{edge}'
        '[listen]\nhttps = "127.0.0.1:0"\nsip_tls = "off"\nbackend_sip = "127.0.0.1:0"\nadmin = "127.0.0.1:0"\n'
        "[tls]\nreload_interval = 0\n[sip]\nkeepalive_timeout = 600\n"
        '[guard]\nallow_networks = ["127.0.0.0/8"]\n'  # every bench client comes from loopback
        "max_connections_per_ip = 0\n"  # thousands of agents come from one address
        f"{extra}"
        f'[[tenants]]\nid = "bench"\ndomains = ["{DOMAIN}"]\nbackend_sip = "udp:127.0.0.1:{pbx_port}"\n'
        f'certificate = "self-signed"\n{tenant}'
    )


class BenchEdge(TwistdEdge):
    """``twistd -n --reactor=uvloop mcs-edge`` (behind ``prefix``, e.g. taskset) with :func:`bench_toml`."""

    def __init__(
        self,
        tmp: str,
        text: str,
        prefix: list[str] | None = None,
        src: str | None = None,
        launcher: list[str] | None = None,
    ) -> None:
        """``src``: run the edge from that source tree instead (``--baseline-src``: before/after in one run)."""
        env = dict(os.environ)
        if src:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
        try:
            super().__init__(Path(tmp), text, prefix=prefix or [], timeout=60, env=env, launcher=launcher)
        except AssertionError as exc:
            raise SystemExit(f"edge did not start: {str(exc)[-3000:]}") from None
        self.port = self.https
        self.pid = self.proc.pid


class WS:
    """A minimal asyncio WSS client (masked text frames with a zero mask, pings answered)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.r, self.w = reader, writer

    @classmethod
    async def connect(cls, port: int, host: str, ctx: ssl.SSLContext) -> WS:
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=host)
        w.write(
            (
                f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                "Sec-WebSocket-Protocol: sip\r\n\r\n"
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
        """The next text/binary message (one await per frame)."""
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

    async def messages(self) -> AsyncIterator[bytes]:
        """Every text/binary message, parsed from large reads (one await per read, not per frame)."""
        buf = b""
        reader = self.r
        while True:
            chunk = await reader.read(262144)
            if not chunk:
                raise ConnectionError("closed by the edge")
            buf = buf + chunk if buf else chunk
            pos = 0
            end = len(buf)
            out = []
            while end - pos >= 2:
                b0, b1 = buf[pos], buf[pos + 1]
                n = b1 & 0x7F
                head = 2
                if n == 126:
                    if end - pos < 4:
                        break
                    n = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                    head = 4
                elif n == 127:
                    if end - pos < 10:
                        break
                    n = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                    head = 10
                if end - pos < head + n:
                    break
                payload = buf[pos + head : pos + head + n]
                pos += head + n
                opcode = b0 & 0x0F
                if opcode == 0x9:
                    self.w.write(struct.pack("!BB", 0x8A, 0x80 | n) + b"\x00\x00\x00\x00" + payload)
                elif opcode == 0x8:
                    raise ConnectionError("closed by the edge")
                else:
                    out.append(payload)
            buf = buf[pos:]
            for payload in out:
                yield payload
