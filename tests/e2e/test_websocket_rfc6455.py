"""SIP over WSS against RFC 6455 at the frame level: raw TLS sockets to an in-process edge.

What a WebSocket abuse suite tries: other protocol versions (426), invalid UTF-8 in text messages
(1007, also when a sequence spans fragments), unmasked or reserved-bit frames, reserved opcodes,
big or fragmented control frames, invalid close codes (1002), oversize messages (1009).
"""

from __future__ import annotations

import base64
import os
import socket
import ssl
import struct
import uuid
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from helpers.edge import LocalEdge, StopAfter
from twisted.internet import threads

MAX = 4096  # sip.max_message_size in these tests


@pytest.fixture
def edge(tmp_path: Path, stop_after: StopAfter) -> Any:
    return stop_after(LocalEdge(tmp_path, tail=f"[sip]\nmax_message_size = {MAX}\n"))


class RawWS:
    """A WebSocket client that can send any frame, right or wrong."""

    def __init__(
        self, edge: LocalEdge, version: str | None = "13", extra: tuple[str, ...] = (), key: str | None = None
    ) -> None:
        ctx = ssl.create_default_context(cafile=edge.ca)
        raw = socket.create_connection(("127.0.0.1", edge.https), timeout=10)
        self.sock = ctx.wrap_socket(raw, server_hostname="rossi.example.com")
        self.buf = b""
        lines = [
            "GET / HTTP/1.1",
            f"Host: rossi.example.com:{edge.https}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key or base64.b64encode(os.urandom(16)).decode()}",
            "Sec-WebSocket-Protocol: sip",
        ]
        if version is not None:
            lines.append(f"Sec-WebSocket-Version: {version}")
        lines.extend(extra)
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.buf += chunk
        self.head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        self.status = int(self.head.split(b" ", 2)[1])

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == name.lower().encode():
                return v.strip().decode()
        return None

    def frame(
        self, opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, masked: bool = True
    ) -> None:
        n = len(payload)
        b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
        mbit = 0x80 if masked else 0
        if n < 126:
            head = struct.pack("!BB", b0, mbit | n)
        elif n < 65536:
            head = struct.pack("!BBH", b0, mbit | 126, n)
        else:
            head = struct.pack("!BBQ", b0, mbit | 127, n)
        if masked:
            mask = os.urandom(4)
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            head += mask
        self.sock.sendall(head + payload)

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def next_message(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next data or close frame (pings answered)."""
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", self._read(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", self._read(8))
            payload = self._read(n)
            if b0 & 0x0F == 0x9:
                self.frame(0xA, payload)
                continue
            return b0 & 0x0F, payload

    def close_code(self) -> int:
        """The code of the close frame the server sends next (data frames before it are skipped)."""
        while True:
            opcode, payload = self.next_message()
            if opcode == 0x8:
                return int(struct.unpack("!H", payload[:2])[0]) if len(payload) >= 2 else 1005

    def close(self) -> None:
        self.sock.close()


def _options(display: str = "Jos\u00e9") -> bytes:
    branch = uuid.uuid4().hex[:12]
    return (
        f"OPTIONS sip:rossi.example.com SIP/2.0\r\nVia: SIP/2.0/WSS x.invalid;branch=z9hG4bK{branch}\r\n"
        f'Max-Forwards: 70\r\nFrom: "{display}" <sip:a@rossi.example.com>;tag=1\r\n'
        f"To: <sip:rossi.example.com>\r\nCall-ID: {branch}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def _in_thread(fn: Any, *args: Any) -> Any:
    return threads.deferToThread(fn, *args)


@pytest.mark.parametrize("version", ["8", "12", "14", "13, 8", None])
@pytest_twisted.inlineCallbacks
def test_other_websocket_versions_get_426_naming_13(edge: LocalEdge, version: str | None) -> Any:
    """RFC 6455 s.4.2.2: any Sec-WebSocket-Version but 13 (or none) gets 426 with Sec-WebSocket-Version: 13."""
    ws = yield _in_thread(RawWS, edge, version)
    ws.close()
    assert ws.status == 426 and ws.head.startswith(b"HTTP/1.1 426 Upgrade Required\r\n")
    assert ws.header("sec-websocket-version") == "13"
    assert edge.service.sip.counters[("ws_refused", "rossi", "version")] == 1


@pytest_twisted.inlineCallbacks
def test_version_13_is_upgraded(edge: LocalEdge) -> Any:
    """The one version spoken is upgraded (101)."""
    ws = yield _in_thread(RawWS, edge)
    ws.close()
    assert ws.status == 101


@pytest_twisted.inlineCallbacks
def test_compression_offer_is_declined_and_the_connection_works(edge: LocalEdge) -> Any:
    """Browsers offer permessage-deflate (RFC 7692): the edge upgrades without it and SIP flows."""
    offer = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"
    ws = yield _in_thread(RawWS, edge, "13", (offer,))
    assert ws.status == 101
    assert ws.header("sec-websocket-extensions") is None
    ws.frame(0x1, _options())
    opcode, payload = yield _in_thread(ws.next_message)
    ws.close()
    assert opcode == 0x1 and payload.startswith(b"SIP/2.0 200 "), payload


@pytest_twisted.inlineCallbacks
def test_invalid_utf8_text_message_closes_with_1007(edge: LocalEdge) -> Any:
    """RFC 6455 s.8.1: a text frame that is not UTF-8 closes the connection with 1007; nothing reaches the PBX."""
    ws = yield _in_thread(RawWS, edge)
    ws.frame(0x1, _options().replace("Jos\u00e9".encode(), b"Jos\xc3\x28"))
    code = yield _in_thread(ws.close_code)
    ws.close()
    assert code == 1007
    assert edge.pbx.methods() == []
    assert edge.service.sip.counters[("ws_protocol_errors", "rossi", "1007")] == 1


@pytest_twisted.inlineCallbacks
def test_utf8_sequence_split_across_fragments_is_accepted(edge: LocalEdge) -> Any:
    """A two-byte sequence cut between two fragments of one text message is valid: the SIP request goes through."""
    ws = yield _in_thread(RawWS, edge)
    msg = _options()
    cut = msg.index(b"\xc3") + 1
    ws.frame(0x1, msg[:cut], fin=False)
    ws.frame(0x0, msg[cut:])
    opcode, payload = yield _in_thread(ws.next_message)
    ws.close()
    assert opcode == 0x1 and payload.startswith(b"SIP/2.0 200 "), payload


@pytest_twisted.inlineCallbacks
def test_invalid_utf8_in_a_later_fragment_closes_with_1007(edge: LocalEdge) -> Any:
    """A sequence started in one fragment and broken in the next is caught: 1007."""
    ws = yield _in_thread(RawWS, edge)
    msg = _options()
    cut = msg.index(b"\xc3") + 1
    ws.frame(0x1, msg[:cut], fin=False)
    ws.frame(0x0, b"(" + msg[cut + 1 :])
    code = yield _in_thread(ws.close_code)
    ws.close()
    assert code == 1007
    assert edge.pbx.methods() == []


VIOLATIONS = {
    "unmasked": dict(opcode=0x1, payload=b"x", masked=False),
    "rsv1": dict(opcode=0x1, payload=b"x", rsv=4),
    "rsv3": dict(opcode=0x1, payload=b"x", rsv=1),
    "opcode-3": dict(opcode=0x3, payload=b"x"),
    "opcode-11": dict(opcode=0xB, payload=b"x"),
    "ping-126": dict(opcode=0x9, payload=b"p" * 126),
    "ping-fragmented": dict(opcode=0x9, payload=b"p", fin=False),
    "continuation-first": dict(opcode=0x0, payload=b"x"),
    "close-1-byte": dict(opcode=0x8, payload=b"\x03"),
    "close-code-999": dict(opcode=0x8, payload=struct.pack("!H", 999)),
    "close-code-1005": dict(opcode=0x8, payload=struct.pack("!H", 1005)),
    "close-code-1006": dict(opcode=0x8, payload=struct.pack("!H", 1006)),
    "close-code-1015": dict(opcode=0x8, payload=struct.pack("!H", 1015)),
    "close-code-5000": dict(opcode=0x8, payload=struct.pack("!H", 5000)),
    "close-reason-not-utf8": dict(opcode=0x8, payload=struct.pack("!H", 1000) + b"\xff"),
}


@pytest.mark.parametrize("name", list(VIOLATIONS))
@pytest_twisted.inlineCallbacks
def test_protocol_violations_close_with_1002_or_1007(edge: LocalEdge, name: str) -> Any:
    """RFC 6455 s.5.1-5.5, 7.4: frames a server must refuse close the connection with 1002 (1007 for a bad close reason)."""
    ws = yield _in_thread(RawWS, edge)
    kw = dict(VIOLATIONS[name])
    ws.frame(kw.pop("opcode"), kw.pop("payload"), **kw)
    code = yield _in_thread(ws.close_code)
    ws.close()
    expected = 1007 if name == "close-reason-not-utf8" else 1002
    assert code == expected
    assert edge.service.sip.counters[("ws_protocol_errors", "rossi", str(expected))] == 1


@pytest.mark.parametrize("fragmented", [False, True])
@pytest_twisted.inlineCallbacks
def test_oversize_message_closes_with_1009(edge: LocalEdge, fragmented: bool) -> Any:
    """RFC 6455 s.7.4.1: a message over sip.max_message_size, whole or in fragments, closes with 1009."""
    ws = yield _in_thread(RawWS, edge)
    if fragmented:
        for _ in range(4):
            ws.frame(0x1 if _ == 0 else 0x0, b"a" * (MAX // 2), fin=False)
    else:
        ws.frame(0x1, b"a" * (MAX + 1))
    code = yield _in_thread(ws.close_code)
    ws.close()
    assert code == 1009


@pytest_twisted.inlineCallbacks
def test_protocol_errors_are_logged_with_a_stable_code_and_rate_limited(edge: LocalEdge) -> Any:
    """Each protocol error gives one WSS400 line or, over the budget, a log_suppressed count; autobahn's own lines are off."""
    from twisted.logger import globalLogPublisher

    seen: list[str] = []

    def observer(event: dict[str, Any]) -> None:
        seen.append(str(event.get("log_format", "")))

    globalLogPublisher.addObserver(observer)
    try:
        for _ in range(12):
            ws = yield _in_thread(RawWS, edge)
            ws.frame(0x1, b"x", masked=False)
            yield _in_thread(ws.close_code)
            ws.close()
    finally:
        globalLogPublisher.removeObserver(observer)
    wss400 = [f for f in seen if f.startswith("WSS400")]
    assert (
        wss400
    )  # the budget itself (10 a second) is tested in virtual time in tests/tx/test_sip_websocket.py
    assert not [f for f in seen if "failing WebSocket" in f]
    counters = edge.service.sip.counters
    assert counters[("ws_protocol_errors", "rossi", "1002")] == 12
    assert len(wss400) + counters.get(("log_suppressed", "", "wss"), 0) == 12


@pytest_twisted.inlineCallbacks
def test_foreign_origin_is_refused_with_403_and_a_bad_key_with_400(edge: LocalEdge) -> Any:
    """RFC 6455 s.10.2 / s.4.2.1: an Origin not allowed for the tenant gets 403; a key that is not 16 octets 400."""
    ws = yield _in_thread(RawWS, edge, "13", ("Origin: https://evil.example.com",))
    ws.close()
    assert ws.status == 403
    assert edge.service.sip.counters[("ws_refused", "rossi", "origin")] == 1
    ws = yield _in_thread(RawWS, edge, "13", (), "c2hvcnQ=")
    ws.close()
    assert ws.status == 400
    assert edge.service.sip.counters[("ws_refused", "rossi", "handshake")] == 1
