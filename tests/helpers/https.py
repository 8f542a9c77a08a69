"""A small blocking HTTP/1.1 client over TLS (or plain TCP) for tests: exact bytes, keep-alive, SNI.

It speaks just enough HTTP to drive the edge byte-exactly: raw request heads (so tests can send
malformed or hostile ones), Content-Length and chunked response bodies, and several requests on
one connection. Run it in a thread (``deferToThread``) when the edge runs in the test's reactor.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import time
from dataclasses import dataclass, field


@dataclass
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    raw_head: bytes = b""
    elapsed: float = 0.0
    closed: bool = False
    trailers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


class Conn:
    """One connection to ``address:port``; TLS with ``sni`` unless ``tls=False``."""

    def __init__(
        self,
        port: int,
        sni: str | None = "localhost",
        *,
        cafile: str | None = None,
        tls: bool = True,
        address: str = "127.0.0.1",
        timeout: float = 10.0,
        alpn: list[str] | None = None,
    ) -> None:
        raw = socket.create_connection((address, port), timeout=timeout)
        self.sock: socket.socket
        if tls:
            ctx = ssl.create_default_context(cafile=cafile) if cafile else ssl._create_unverified_context()
            if alpn:
                ctx.set_alpn_protocols(alpn)
            self.sock = ctx.wrap_socket(raw, server_hostname=sni)
        else:
            self.sock = raw
        self.buf = b""

    # -- certificate --------------------------------------------------------------------------
    def peer_der(self) -> bytes:
        assert isinstance(self.sock, ssl.SSLSocket)
        der = self.sock.getpeercert(binary_form=True)
        assert der is not None
        return der

    def peer_sha256(self) -> str:
        return hashlib.sha256(self.peer_der()).hexdigest()

    # -- bytes ------------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def read_until(self, marker: bytes, limit: int = 1 << 20) -> bytes:
        while marker not in self.buf:
            if len(self.buf) > limit or not self._fill():
                raise ConnectionError(f"closed before {marker!r}: {self.buf[:200]!r}")
        head, self.buf = self.buf.split(marker, 1)
        return head

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise ConnectionError(f"closed with {len(self.buf)} of {n} bytes")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_all(self) -> bytes:
        while self._fill():
            pass
        out, self.buf = self.buf, b""
        return out

    # -- HTTP -------------------------------------------------------------------------------
    def request(
        self,
        method: str = "GET",
        target: str = "/",
        host: str | None = None,
        headers: list[tuple[str, str]] | None = None,
        body: bytes | None = None,
    ) -> Response:
        lines = [f"{method} {target} HTTP/1.1"]
        if host is not None:
            lines.append(f"Host: {host}")
        for k, v in headers or []:
            lines.append(f"{k}: {v}")
        if body is not None and not any(
            k.lower() in ("content-length", "transfer-encoding") for k, _ in headers or []
        ):
            lines.append(f"Content-Length: {len(body)}")
        t0 = time.monotonic()
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
        resp = self.response(head_only=method == "HEAD")
        resp.elapsed = time.monotonic() - t0
        return resp

    def response(self, head_only: bool = False) -> Response:
        while True:
            head = self.read_until(b"\r\n\r\n")
            first, *rest = head.split(b"\r\n")
            parts = first.split(b" ", 2)
            status = int(parts[1])
            if 100 <= status < 200 and status != 101:
                continue
            break
        headers = []
        for line in rest:
            k, _, v = line.partition(b":")
            headers.append((k.decode().strip(), v.decode("latin-1").strip()))
        resp = Response(status, parts[2].decode() if len(parts) > 2 else "", headers, b"", head)
        if head_only or status in (101, 204, 304):
            return resp
        te = (resp.header("transfer-encoding") or "").lower()
        if "chunked" in te:
            chunks = []
            while True:
                size_line = self.read_until(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    trailer = self.read_until(b"\r\n\r\n") if not self.buf.startswith(b"\r\n") else b""
                    if not trailer:
                        self.read_exact(2)
                    break
                chunks.append(self.read_exact(size))
                self.read_exact(2)
            resp.body = b"".join(chunks)
        elif resp.header("content-length") is not None:
            resp.body = self.read_exact(int(resp.header("content-length") or 0))
        else:
            resp.body = self.read_all()
            resp.closed = True
        return resp

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
