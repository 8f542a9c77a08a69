"""The mobile app's SIP/TLS side for the push wake-up tests (RFC 8599): registers with the push
parameters, sleeps (closes its connection), reconnects, answers with plain RTP and echoes/counts it.

Shared by tests/e2e/test_push_apns_fcm.py (echo PBX) and tests/e2e/test_push_sipp.py (sipp as PBX)."""

from __future__ import annotations

import secrets
import socket
import ssl
import struct
import threading
import time
import uuid

from helpers.push_providers import TEAM_ID, TOPIC
from helpers.wsclient import header

__all__ = ["App", "all_headers"]


class App:
    """The mobile app's SIP/TLS side: one connection at a time, blocking, Content-Length framing."""

    def __init__(self, port: int, user: str, provider: str, token: str) -> None:
        self.port = port
        self.user = user
        self.aor = f"sip:{user}@rossi.example.com"
        self.provider = provider
        self.token = token
        self.instance = f"<urn:uuid:{uuid.uuid4()}>"
        self.call_id = uuid.uuid4().hex
        self.cseq = 0
        self.sock: ssl.SSLSocket | None = None
        self.buf = b""
        self.rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rtp.bind(("127.0.0.1", 0))
        self.rtp.settimeout(0.2)

    def connect(self) -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the tenant's self-signed certificate
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        self.sock = ctx.wrap_socket(raw, server_hostname="rossi.example.com")
        self.buf = b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def send(self, text: str) -> None:
        assert self.sock is not None
        self.sock.sendall(text.encode())

    def read(self, timeout: float = 10.0) -> str:
        assert self.sock is not None
        deadline = time.monotonic() + timeout
        while True:
            if b"\r\n\r\n" in self.buf:
                head, rest = self.buf.split(b"\r\n\r\n", 1)
                length = int(header(head.decode() + "\r\n", "Content-Length") or "0")
                if len(rest) >= length:
                    self.buf = rest[length:]
                    return (head + b"\r\n\r\n" + rest[:length]).decode()
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.user}: nothing from the edge in {timeout}s")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise AssertionError(f"{self.user}: nothing from the edge in {timeout}s") from None
            if not data:
                raise AssertionError(f"{self.user}: the edge closed the connection")
            self.buf += data.lstrip(b"\r\n") if not self.buf else data

    def register(self, expires: int = 600) -> str:
        """REGISTER with the RFC 8599 parameters; returns the final response."""
        self.cseq += 1
        pn = f";pn-provider={self.provider};pn-prid={self.token};pn-param={TEAM_ID}.{TOPIC}"
        self.send(
            f"REGISTER sip:rossi.example.com SIP/2.0\r\n"
            f"Via: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bK{secrets.token_hex(6)};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <{self.aor}>;tag=app1\r\nTo: <{self.aor}>\r\n"
            f"Call-ID: {self.call_id}\r\nCSeq: {self.cseq} REGISTER\r\n"
            f'Contact: <sip:{self.user}@127.0.0.1:5999;transport=tls{pn}>;reg-id=1;+sip.instance="{self.instance}"\r\n'
            f"Supported: outbound, path\r\nExpires: {expires}\r\nContent-Length: 0\r\n\r\n"
        )
        while True:
            msg = self.read()
            if msg.startswith("SIP/2.0 ") and not msg.startswith("SIP/2.0 1"):
                return msg

    def answer(self, invite: str) -> None:
        """200 OK with plain RTP (PCMU) toward our RTP socket."""
        port = self.rtp.getsockname()[1]
        sdp = (
            f"v=0\r\no=app 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
        )
        vias = "".join(f"Via: {v}\r\n" for v in all_headers(invite, "Via"))
        rr = "".join(f"Record-Route: {v}\r\n" for v in all_headers(invite, "Record-Route"))
        self.send(
            f"SIP/2.0 200 OK\r\n{vias}{rr}From: {header(invite, 'From')}\r\nTo: {header(invite, 'To')};tag=app2\r\n"
            f"Call-ID: {header(invite, 'Call-ID')}\r\nCSeq: {header(invite, 'CSeq')}\r\n"
            f"Contact: <sip:{self.user}@127.0.0.1:5999;transport=tls>\r\nContent-Type: application/sdp\r\n"
            f"Content-Length: {len(sdp)}\r\n\r\n{sdp}"
        )

    def media_echo(self, invite: str, packets: int = 50) -> int:
        """Send RTP to the edge's address in the offer; count the packets echoed back by the PBX."""
        body = invite.split("\r\n\r\n", 1)[1]
        host = next(line[9:] for line in body.split("\r\n") if line.startswith("c=IN IP4 "))
        port = int(next(line.split()[1] for line in body.split("\r\n") if line.startswith("m=audio ")))
        ssrc = secrets.randbits(32)
        got = 0
        for seq in range(packets):
            self.rtp.sendto(
                struct.pack("!BBHII", 0x80, 0, seq, seq * 160, ssrc) + b"\xff" * 160, (host, port)
            )
            try:
                while True:
                    data, _ = self.rtp.recvfrom(2048)
                    if len(data) >= 12 and data[1] & 0x7F == 0:
                        got += 1
            except TimeoutError:
                pass
            if got >= 10:
                break
        return got

    def respond(self, request: str, status: str = "200 OK") -> None:
        """A response without body to an in-dialog request (the PBX's BYE)."""
        vias = "".join(f"Via: {v}\r\n" for v in all_headers(request, "Via"))
        self.send(
            f"SIP/2.0 {status}\r\n{vias}From: {header(request, 'From')}\r\nTo: {header(request, 'To')}\r\n"
            f"Call-ID: {header(request, 'Call-ID')}\r\nCSeq: {header(request, 'CSeq')}\r\nContent-Length: 0\r\n\r\n"
        )

    def media_until(self, invite: str, stop: threading.Event, interval: float = 0.02) -> tuple[int, int]:
        """Send a PCMU RTP packet every ``interval`` s to the edge's address in the offer and count the RTP
        packets coming back, until ``stop`` is set: (sent, received)."""
        body = invite.split("\r\n\r\n", 1)[1]
        host = next(line[9:] for line in body.split("\r\n") if line.startswith("c=IN IP4 "))
        port = int(next(line.split()[1] for line in body.split("\r\n") if line.startswith("m=audio ")))
        ssrc = secrets.randbits(32)
        sent = got = 0
        self.rtp.settimeout(interval)
        try:
            while not stop.is_set():
                self.rtp.sendto(
                    struct.pack("!BBHII", 0x80, 0, sent & 0xFFFF, sent * 160, ssrc) + b"\xff" * 160,
                    (host, port),
                )
                sent += 1
                try:
                    while True:
                        data, _ = self.rtp.recvfrom(2048)
                        if len(data) >= 12 and data[0] >> 6 == 2 and data[1] & 0x7F == 0:
                            got += 1
                except TimeoutError:
                    pass
        finally:
            self.rtp.settimeout(0.2)
        return sent, got


def all_headers(text: str, name: str) -> list[str]:
    head = text.split("\r\n\r\n", 1)[0]
    return [
        line.split(":", 1)[1].strip()
        for line in head.split("\r\n")[1:]
        if line.split(":", 1)[0].lower() == name.lower()
    ]
