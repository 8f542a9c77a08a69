"""A small blocking WebSocket (RFC 6455) client over TLS, playing a browser softphone in tests.

Only what the tests need: the opening handshake with a subprotocol and Origin, masked text
frames, reading text/close/ping frames. Run it in a thread (``deferToThread``) or a plain process.
"""

from __future__ import annotations

import base64
import os
import socket
import ssl
import struct
import time


class HandshakeRefused(Exception):
    def __init__(self, status: int, head: bytes) -> None:
        super().__init__(f"handshake refused with HTTP {status}")
        self.status = status
        self.head = head


class WSClient:
    def __init__(
        self,
        port: int,
        host: str = "localhost",
        *,
        subprotocol: str | None = "sip",
        origin: str | None = None,
        cafile: str | None = None,
        path: str = "/",
        timeout: float = 5.0,
        address: str = "127.0.0.1",
        source: str | None = None,
    ) -> None:
        """``source``: the local address to connect from (e.g. 127.0.0.2: a client that moved)."""
        ctx = ssl.create_default_context(cafile=cafile) if cafile else ssl._create_unverified_context()
        raw = socket.create_connection(
            (address, port), timeout=timeout, source_address=(source, 0) if source else None
        )
        self.sock = ctx.wrap_socket(raw, server_hostname=host)
        self.buf = b""
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {host}:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if subprotocol:
            lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
        if origin:
            lines.append(f"Origin: {origin}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = self._read_until(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 101:
            raise HandshakeRefused(status, head)
        self.protocol = None
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"sec-websocket-protocol:"):
                self.protocol = line.split(b":", 1)[1].strip().decode()
        self.closed: tuple[int, str] | None = None

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed during handshake")
            self.buf += chunk
        head, self.buf = self.buf.split(marker, 1)
        return head

    def _read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _frame(self, opcode: int, payload: bytes) -> bytes:
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return head + mask + masked

    def send(self, text: str | bytes) -> None:
        data = text.encode() if isinstance(text, str) else text
        self.sock.sendall(self._frame(0x1, data))

    def send_many(self, texts: list[str]) -> None:
        """Several text messages in one write (one TLS record, read by the edge in one read)."""
        self.sock.sendall(b"".join(self._frame(0x1, t.encode()) for t in texts))

    def recv(self, timeout: float = 5.0) -> str:
        """The next text message (answers pings; raises ConnectionError on close)."""
        deadline = time.monotonic() + timeout
        while True:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            b0, b1 = self._read_exact(2)
            opcode = b0 & 0x0F
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", self._read_exact(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", self._read_exact(8))
            payload = self._read_exact(n)
            if opcode == 0x9:
                self.sock.sendall(self._frame(0xA, payload))
                continue
            if opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                self.closed = (code, payload[2:].decode(errors="replace"))
                raise ConnectionError(f"websocket closed {self.closed}")
            if opcode in (0x1, 0x2):
                return payload.decode(errors="replace")

    def recv_sip(self, timeout: float = 5.0, skip_provisional: bool = False) -> str:
        while True:
            msg = self.recv(timeout)
            if skip_provisional and msg.startswith("SIP/2.0 1"):
                continue
            return msg

    def close(self) -> None:
        try:
            self.sock.sendall(self._frame(0x8, struct.pack("!H", 1000)))
        except OSError:
            pass
        self.sock.close()


def header(msg: str, name: str) -> str | None:
    for line in msg.split("\r\n"):
        k, sep, v = line.partition(":")
        if sep and k.strip().lower() == name.lower():
            return v.strip()
    return None


def headers(msg: str, name: str) -> list[str]:
    out = []
    for line in msg.split("\r\n"):
        k, sep, v = line.partition(":")
        if sep and k.strip().lower() == name.lower():
            out.append(v.strip())
    return out


def status(msg: str) -> int:
    return int(msg.split(" ", 2)[1]) if msg.startswith("SIP/2.0 ") else 0
