"""A tiny scripted UDP PBX for tests: answers REGISTER/INVITE/BYE/OPTIONS, records what it saw.

It answers every request to the address it came from (like rport), so it works with several edge
workers, each on its own backend port. It can also end a call itself (``hangup``): the BYE goes to
the first Record-Route of the dialog (the worker that owns the client's connection), as a real
PBX does.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

from helpers.wsclient import header, headers


@dataclass
class Seen:
    method: str
    text: str
    addr: tuple[str, int]


@dataclass
class Dialog:
    call_id: str
    invite: str
    addr: tuple[str, int]
    to_tag: str
    routes: list[str] = field(default_factory=list)


class Pbx:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.seen: list[Seen] = []
        self.dialogs: dict[str, Dialog] = {}
        self.responses: list[Seen] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()

    def methods(self) -> list[str]:
        with self._lock:
            return [s.method for s in self.seen]

    def wait_for(self, method: str, count: int = 1, timeout: float = 10.0) -> list[Seen]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                got = [s for s in self.seen if s.method == method]
            if len(got) >= count:
                return got
            time.sleep(0.02)
        raise TimeoutError(f"PBX saw {self.methods()}, wanted {count} x {method}")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65536)
            except (TimeoutError, OSError):
                continue
            text = data.decode(errors="replace")
            if not text.strip():
                continue
            if text.startswith("SIP/2.0 "):
                with self._lock:
                    self.responses.append(Seen("response", text, addr))
                continue
            method = text.split(" ", 1)[0]
            with self._lock:
                self.seen.append(Seen(method, text, addr))
            try:
                self._answer(method, text, addr)
            except OSError:
                return

    def _reply(
        self,
        text: str,
        addr: tuple[str, int],
        status: str,
        extra: str = "",
        body: str = "",
        tag: str | None = None,
    ) -> None:
        vias = "".join(f"Via: {v}\r\n" for v in headers(text, "Via"))
        to = header(text, "To") or ""
        if tag and ";tag=" not in to:
            to += f";tag={tag}"
        rr = "".join(f"Record-Route: {r}\r\n" for r in headers(text, "Record-Route"))
        resp = (
            f"SIP/2.0 {status}\r\n{vias}From: {header(text, 'From')}\r\nTo: {to}\r\n"
            f"Call-ID: {header(text, 'Call-ID')}\r\nCSeq: {header(text, 'CSeq')}\r\n{rr}{extra}"
            f"Content-Length: {len(body)}\r\n\r\n{body}"
        )
        self.sock.sendto(resp.encode(), addr)

    def _answer(self, method: str, text: str, addr: tuple[str, int]) -> None:
        if method == "REGISTER":
            contact = header(text, "Contact") or ""
            path = "".join(f"Path: {p}\r\n" for p in headers(text, "Path"))
            self._reply(text, addr, "200 OK", f"Contact: {contact}\r\n{path}", tag="reg1")
        elif method == "INVITE":
            call_id = header(text, "Call-ID") or ""
            tag = "pbx" + uuid.uuid4().hex[:6]
            routes = [r.strip() for line in headers(text, "Record-Route") for r in line.split(",")]
            self.dialogs[call_id] = Dialog(call_id, text, addr, tag, routes)
            sdp = "v=0\r\no=pbx 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 30000 RTP/AVP 0\r\n"
            contact = f"Contact: <sip:pbx@127.0.0.1:{self.port};transport=udp>\r\n"
            self._reply(text, addr, "180 Ringing", contact, tag=tag)
            self._reply(text, addr, "200 OK", contact + "Content-Type: application/sdp\r\n", sdp, tag=tag)
        elif method in ("BYE", "OPTIONS", "CANCEL", "UPDATE", "INFO"):
            self._reply(text, addr, "200 OK", tag="pbx")
        # ACK: nothing

    def hangup(self, call_id: str) -> None:
        """Send BYE for an answered call toward the first Record-Route (the edge worker)."""
        d = self.dialogs[call_id]
        first = d.routes[0]
        hostport = first.split("sip:", 1)[1].split(";", 1)[0].split(">", 1)[0]
        if "@" in hostport:
            hostport = hostport.split("@", 1)[1]
        host, port = hostport.rsplit(":", 1)
        inv = d.invite
        client_contact = (header(inv, "Contact") or "").split(">")[0].lstrip("<")
        route = "".join(f"Route: {r}\r\n" for r in d.routes)
        bye = (
            f"BYE {client_contact} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{uuid.uuid4().hex[:10]};rport\r\n"
            f"{route}From: {header(inv, 'To')};tag={d.to_tag}\r\nTo: {header(inv, 'From')}\r\nCall-ID: {d.call_id}\r\n"
            f"CSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
        self.sock.sendto(bye.encode(), (host, int(port)))
