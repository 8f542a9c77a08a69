"""A threaded UDP PBX that echoes RTP: answers and places calls, holds, hangs up; for native-client tests.

It registers nothing itself: REGISTER gets 200 (Contact and Path mirrored) and the binding is kept so
that :meth:`EchoPbx.call` can reach the client through the edge (Request-URI = the registered
Contact, Route = the Path). Every call gets its own RTP echo socket (plain RTP/AVP, PCMU): each RTP
packet is sent back to its source and counted. Requests in a dialog follow RFC 3261 s.12: the
route set from Record-Route (reversed for the caller), the remote target from Contact.
"""

from __future__ import annotations

import secrets
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from helpers.wsclient import header, headers


@dataclass
class PbxDialog:
    call_id: str
    local_tag: str
    remote_uri: str  # the other end's From/To value without tag params of ours
    local_uri: str
    remote_target: str
    routes: list[str]
    echo: socket.socket
    incoming: bool  # the client called the PBX
    cseq: int = 1
    rtp_in: int = 0
    rtp_out: int = 0
    acked: int = 0
    byes_received: int = 0
    ended: bool = False
    offers: list[str] = field(default_factory=list)  # SDP the edge sent us (offers and answers)


@dataclass
class Binding:
    contact: str
    path: list[str]


def _uri_of(value: str) -> str:
    value = value.strip()
    if "<" in value:
        return value.split("<", 1)[1].split(">", 1)[0]
    return value.split(";", 1)[0]


def _split_list(values: list[str]) -> list[str]:
    out: list[str] = []
    for v in values:
        out += [x.strip() for x in v.split(",") if x.strip()]
    return out


def _route_hostport(route: str) -> tuple[str, int]:
    hostport = _uri_of(route).split(":", 1)[1].split(";", 1)[0]
    if "@" in hostport:
        hostport = hostport.split("@", 1)[1]
    host, port = hostport.rsplit(":", 1)
    return host, int(port)


def _direction(sdp: str) -> str:
    for line in sdp.split("\r\n"):
        if line in ("a=sendonly", "a=recvonly", "a=inactive", "a=sendrecv"):
            return line[2:]
    return "sendrecv"


_MIRROR = {"sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive", "sendrecv": "sendrecv"}


class EchoPbx:
    """See the module docstring. ``host`` is where both SIP and RTP listen (the edge's backend side)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.port = self.sock.getsockname()[1]
        self.edge: tuple[str, int] | None = None  # where requests came from (the edge's backend socket)
        self.bindings: dict[str, Binding] = {}
        self.dialogs: dict[str, PbxDialog] = {}
        self.responses: list[tuple[str, int, str]] = []  # (call-id, status, cseq method)
        self.requests: list[tuple[str, str]] = []  # (method, call-id)
        self.pending_invites: dict[str, str] = {}
        self._lock = threading.Lock()
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.sock, selectors.EVENT_READ, None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------------------- waiting
    def wait(self, predicate: Any, timeout: float = 15.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                got = predicate()
            if got:
                return got
            time.sleep(0.05)
        raise AssertionError(
            f"PBX: {what} not met within {timeout}s; requests {self.requests}, responses {self.responses}"
        )

    def wait_response(self, call_id: str, method: str, timeout: float = 15.0) -> int:
        def final() -> int | None:
            for cid, status, m in self.responses:
                if cid == call_id and m == method and status >= 200:
                    return status
            return None

        return int(self.wait(final, timeout, f"final response to {method}"))

    # ---------------------------------------------------------------------------- loop
    def close(self) -> None:
        self._stop.set()
        self._thread.join(3)
        for d in self.dialogs.values():
            d.echo.close()
        self.sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._sel.select(0.1):
                sock = key.fileobj
                try:
                    data, addr = sock.recvfrom(65536)  # type: ignore[union-attr]
                except OSError:
                    continue
                with self._lock:
                    if key.data is None:
                        self._sip(data.decode(errors="replace"), addr)
                    else:
                        self._rtp(key.data, data, addr)

    def _rtp(self, dialog: PbxDialog, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < 12 or not 128 <= data[0] <= 191 or 192 <= data[1] <= 223:
            return
        dialog.rtp_in += 1
        try:
            dialog.echo.sendto(data, addr)
            dialog.rtp_out += 1
        except OSError:
            pass

    def _new_echo(self) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((self.host, 0))
        return s

    def _sdp(self, echo: socket.socket, direction: str) -> str:
        port = echo.getsockname()[1]
        return (
            f"v=0\r\no=pbx {secrets.randbelow(10**9)} 1 IN IP4 {self.host}\r\ns=pbx\r\nc=IN IP4 {self.host}\r\n"
            f"t=0 0\r\nm=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
            f"a=ptime:20\r\na={direction}\r\n"
        )

    def _send(self, text: str, addr: tuple[str, int]) -> None:
        self.sock.sendto(text.encode(), addr)

    def _reply(self, text: str, addr: tuple[str, int], status: str, tag: str, body: str = "") -> None:
        vias = "".join(f"Via: {v}\r\n" for v in headers(text, "Via"))
        to = header(text, "To") or ""
        if ";tag=" not in to:
            to += f";tag={tag}"
        rr = "".join(f"Record-Route: {r}\r\n" for r in headers(text, "Record-Route"))
        extra = f"Contact: <sip:pbx@{self.host}:{self.port}>\r\n"
        if body:
            extra += "Content-Type: application/sdp\r\n"
        self._send(
            f"SIP/2.0 {status}\r\n{vias}From: {header(text, 'From')}\r\nTo: {to}\r\n"
            f"Call-ID: {header(text, 'Call-ID')}\r\nCSeq: {header(text, 'CSeq')}\r\n{rr}{extra}"
            f"Content-Length: {len(body.encode())}\r\n\r\n{body}",
            addr,
        )

    def _sip(self, text: str, addr: tuple[str, int]) -> None:
        if not text.strip():
            return
        call_id = header(text, "Call-ID") or ""
        if text.startswith("SIP/2.0 "):
            self._response(text, call_id, addr)
            return
        method = text.split(" ", 1)[0]
        self.requests.append((method, call_id))
        self.edge = addr
        dialog = self.dialogs.get(call_id)
        if method == "REGISTER":
            to = _uri_of(header(text, "To") or "")
            contact = header(text, "Contact") or ""
            path = _split_list(headers(text, "Path"))
            self.bindings[to] = Binding(_uri_of(contact), path)
            paths = "".join(f"Path: {p}\r\n" for p in path)
            vias = "".join(f"Via: {v}\r\n" for v in headers(text, "Via"))
            self._send(
                f"SIP/2.0 200 OK\r\n{vias}From: {header(text, 'From')}\r\nTo: {header(text, 'To')};tag=reg\r\n"
                f"Call-ID: {call_id}\r\nCSeq: {header(text, 'CSeq')}\r\nContact: {contact};expires=600\r\n{paths}"
                "Content-Length: 0\r\n\r\n",
                addr,
            )
        elif method == "INVITE":
            body = text.split("\r\n\r\n", 1)[1]
            if dialog is None:
                echo = self._new_echo()
                routes = _split_list(headers(text, "Record-Route"))
                dialog = PbxDialog(
                    call_id,
                    "pbx" + secrets.token_hex(3),
                    header(text, "From") or "",
                    _uri_of(header(text, "To") or ""),
                    _uri_of(header(text, "Contact") or ""),
                    routes,
                    echo,
                    incoming=True,
                )
                self.dialogs[call_id] = dialog
                self._sel.register(echo, selectors.EVENT_READ, dialog)
            dialog.offers.append(body)
            self._reply(text, addr, "100 Trying", dialog.local_tag)
            self._reply(
                text, addr, "200 OK", dialog.local_tag, self._sdp(dialog.echo, _MIRROR[_direction(body)])
            )
        elif method == "ACK":
            if dialog is not None:
                dialog.acked += 1
        elif method == "BYE":
            self._reply(text, addr, "200 OK", dialog.local_tag if dialog else "x")
            if dialog is not None:
                dialog.byes_received += 1
                dialog.ended = True
        elif method != "CANCEL":
            self._reply(text, addr, "200 OK", dialog.local_tag if dialog else "x")

    def _response(self, text: str, call_id: str, addr: tuple[str, int]) -> None:
        status = int(text.split(" ", 2)[1])
        cseq = header(text, "CSeq") or "0 X"
        method = cseq.split()[-1]
        self.responses.append((call_id, status, method))
        dialog = self.dialogs.get(call_id)
        if method != "INVITE" or status < 200 or dialog is None or status >= 300:
            return  # the edge's transaction absorbs a non-2xx (its ACK is hop by hop, not needed here)
        if True:
            to = header(text, "To") or ""
            if not dialog.routes:
                dialog.routes = list(reversed(_split_list(headers(text, "Record-Route"))))
            dialog.remote_uri = to
            dialog.remote_target = _uri_of(header(text, "Contact") or "") or dialog.remote_target
            body = text.split("\r\n\r\n", 1)[1]
            if body:
                dialog.offers.append(body)
        self._send(self._in_dialog("ACK", dialog, cseq=int(cseq.split()[0])), addr)

    # ---------------------------------------------------------------------------- our requests
    def _in_dialog(self, method: str, d: PbxDialog, cseq: int | None = None, body: str = "") -> str:
        if cseq is None:
            d.cseq += 1
            cseq = d.cseq
        routes = "".join(f"Route: {r}\r\n" for r in d.routes)
        ctype = "Content-Type: application/sdp\r\n" if body else ""
        return (
            f"{method} {d.remote_target} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {self.host}:{self.port};branch=z9hG4bK{secrets.token_hex(6)};rport\r\n"
            f"{routes}Max-Forwards: 70\r\nFrom: <{d.local_uri}>;tag={d.local_tag}\r\nTo: {d.remote_uri}\r\n"
            f"Call-ID: {d.call_id}\r\nCSeq: {cseq} {method}\r\nContact: <sip:pbx@{self.host}:{self.port}>\r\n"
            f"{ctype}Content-Length: {len(body.encode())}\r\n\r\n{body}"
        )

    def _first_hop(self, d: PbxDialog) -> tuple[str, int]:
        assert d.routes, "no route set toward the client"
        return _route_hostport(d.routes[0])

    def call(self, aor: str) -> str:
        """INVITE the client registered as ``aor`` through the edge; returns the Call-ID."""
        with self._lock:
            binding = self.bindings[aor]
            echo = self._new_echo()
            call_id = secrets.token_hex(8) + "@pbx"
            d = PbxDialog(
                call_id,
                "pbx" + secrets.token_hex(3),
                f"<{aor}>",
                f"sip:pbx@{aor.split('@', 1)[1]}",
                binding.contact,
                list(binding.path),
                echo,
                incoming=False,
            )
            self.dialogs[call_id] = d
            self._sel.register(echo, selectors.EVENT_READ, d)
            invite = self._in_dialog("INVITE", d, cseq=1, body=self._sdp(echo, "sendrecv"))
            d.routes = []  # the dialog's route set comes from the 200's Record-Route
            self._send(invite, _route_hostport(binding.path[0]))
        return call_id

    def hangup(self, call_id: str) -> None:
        with self._lock:
            d = self.dialogs[call_id]
            self._send(self._in_dialog("BYE", d), self._first_hop(d))
            d.ended = True

    def reinvite(self, call_id: str, direction: str) -> None:
        """A re-INVITE from the PBX (hold: ``sendonly``, resume: ``sendrecv``)."""
        with self._lock:
            d = self.dialogs[call_id]
            self._send(self._in_dialog("INVITE", d, body=self._sdp(d.echo, direction)), self._first_hop(d))
