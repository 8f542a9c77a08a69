"""RFC 6455 server side, sans-IO: opening handshake, frame decoder and encoder.

The decoder is fed what the transport reads and returns events; the encoder returns bytes to
write. Nothing here touches a socket or a clock (the adapter is ``tx/sip/websocket.py``).

Decisions (RFC 6455 section beside each):

=====================================================  ==========================================
frame or message                                       outcome
=====================================================  ==========================================
unmasked client frame (s.5.1, s.5.3)                   fail 1002
RSV1-3 set, no extension negotiated (s.5.2)            fail 1002
opcode 3-7 or 11-15 (s.5.2)                            fail 1002
control frame fragmented or over 125 octets (s.5.5)    fail 1002
continuation with no message open; new data frame      fail 1002
inside a fragmented message (s.5.4)
64-bit length with the top bit set (s.5.2)             fail 1002
message (all its fragments) over ``max_message``       fail 1009, on the header, before the payload
(s.7.4.1)                                              is buffered
text message not UTF-8, checked per fragment as it     fail 1007, in the fragment where the
arrives (s.8.1)                                        invalid sequence is
close frame of 1 octet; code outside 1000-1003,        fail 1002
1007-1014, 3000-4999 (s.5.5.1, s.7.4)
close reason not UTF-8 (s.5.5.1)                       fail 1007
ping (s.5.5.2)                                         event PING (the adapter answers a pong)
pong (s.5.5.3)                                         event PONG (ignored but as liveness)
close (s.5.5.1)                                        event CLOSE; nothing after it is read
=====================================================  ==========================================

After a failure or a close the decoder reads nothing more (s.7.1.7: the connection is failed).
Unmasking XORs the payload as one integer (``int.from_bytes``) with the repeated key; UTF-8 is
checked with ``bytes.isascii`` then ``bytes.decode`` for whole messages and the codecs module's
incremental decoder for fragmented ones (a sequence split between fragments is valid).

Between frames, the optional C extension ``mcs_edge._wirescan.ws_messages`` decodes the run of
whole, masked, unfragmented text/binary frames within ``max_message`` (text: valid UTF-8) at the
start of the data, the bulk of SIP traffic, and returns where it stopped; everything else (control
frames, fragments, every failure, an incomplete frame) is decided by the Python loop below, from
that offset (tests/core/sip/test_wirescan.py: both paths give the same events on arbitrary input).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import hashlib
import struct
from collections.abc import Callable, Sequence
from typing import Final

__all__ = [
    "BINARY",
    "CLOSE",
    "CONTINUATION",
    "FAIL",
    "MESSAGE",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "PING",
    "PONG",
    "TEXT",
    "Decoder",
    "Event",
    "accept_key",
    "close_frame",
    "connection_upgrade",
    "frame",
    "frame_header",
    "opening_answer",
    "valid_close_code",
]

#: RFC 6455 s.1.3: appended to the client's key before hashing.
GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# opcodes (s.5.2)
CONTINUATION: Final = 0x0
TEXT: Final = 0x1
BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

# event kinds returned by Decoder.feed: (kind, payload, close code, reason)
MESSAGE: Final = 1
CLOSE: Final = 8
PING: Final = 9
PONG: Final = 10
FAIL: Final = -1

Event = tuple[int, bytes, int, str]

_CRLFCRLF: Final = int.from_bytes(b"\r\n\r\n", "big")
#: An unmasked text frame "\r\n": the RFC 5626 s.4.4.1 pong to a CRLFCRLF keepalive.
CRLF_PONG: Final = b"\x81\x02\r\n"
_utf8_decoder = codecs.getincrementaldecoder("utf-8")


def accept_key(key: bytes) -> bytes | None:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key``, or None if the key is not
    the base64 of 16 octets (s.4.2.1 item 5, s.4.2.2 item 5.4)."""
    key = key.strip()
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            return None
    except (binascii.Error, ValueError):
        return None
    return base64.b64encode(hashlib.sha1(key + GUID).digest())  # noqa: S324 (RFC 6455 mandates SHA-1)


def connection_upgrade(values: Sequence[bytes]) -> bool:
    """True when the ``Connection`` header values carry the ``Upgrade`` token (s.4.2.1 item 4)."""
    return any(token.strip().lower() == b"upgrade" for value in values for token in value.split(b","))


def opening_answer(accept: bytes, protocol: bytes, server: bytes) -> bytes:
    """The 101 answer (s.4.2.2 item 5); no extension is ever accepted (compression is refused)."""
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nServer: " + server + b"\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Protocol: " + protocol + b"\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )


def frame(opcode: int, payload: bytes) -> bytes:
    """One unfragmented server frame (never masked, s.5.1)."""
    return frame_header(opcode, len(payload)) + payload


def frame_header(opcode: int, n: int) -> bytes:
    """The header of an unfragmented server frame of ``n`` payload octets (s.5.2)."""
    if n < 126:
        return bytes((0x80 | opcode, n))
    if n < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, n)
    return struct.pack("!BBQ", 0x80 | opcode, 127, n)


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame with ``code`` and ``reason`` (cut to fit the 125 octets of a control frame)."""
    return frame(OP_CLOSE, struct.pack("!H", code) + reason.encode()[:123].decode(errors="ignore").encode())


def valid_close_code(code: int) -> bool:
    """s.7.4.1/s.7.4.2 and the IANA registry: codes a peer may send in a close frame."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


_ws_messages: Callable[[bytes, int, int], tuple[list[Event], int]] | None
try:  # whole data frames decoded in C (mcs_edge/_wirescan.c, optional; tests/core/sip/test_wirescan.py)
    from mcs_edge._wirescan import ws_messages as _ws_messages
except ImportError:  # pragma: no cover - depends on the build
    _ws_messages = None


def _unmask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    if not n:
        return payload
    key = (mask * ((n >> 2) + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


class Decoder:
    """Client frames in, events out; one per connection.

    ``feed`` returns the events completed by ``data`` in order; bytes of an incomplete frame are
    kept (at most one frame header plus ``max_message`` octets). After a ``FAIL`` or ``CLOSE``
    event the decoder is finished and ignores what it is fed.
    """

    __slots__ = ("_buf", "_decoder", "_opcode", "_parts", "_size", "finished", "max_message")

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self._buf = b""
        self._opcode = 0  # data opcode of the fragmented message open, 0 = none
        self._parts: list[bytes] = []
        self._size = 0
        self._decoder: codecs.IncrementalDecoder | None = None
        self.finished = False

    @property
    def idle(self) -> bool:
        """Between frames: nothing buffered, no fragmented message open."""
        return not self._buf and not self._opcode and not self.finished

    def keepalive_reply(self, data: bytes) -> bytes | None:
        """The answer when ``data`` is exactly one CRLFCRLF text frame (RFC 5626 s.4.4.1: CRLF) or one
        ping (s.5.5.2: pong with its payload) arriving between frames, else None (feed it)."""
        n = len(data)
        if n < 6 or n > 131 or self._buf or self._opcode or self.finished:
            return None
        b0, b1 = data[0], data[1]
        length = b1 & 0x7F
        if not b1 & 0x80 or length != n - 6:  # unmasked (an error) or not exactly one frame
            return None
        if b0 == 0x81:  # FIN + text
            if length != 4 or int.from_bytes(data[6:], "big") ^ int.from_bytes(data[2:6], "big") != _CRLFCRLF:
                return None
            return CRLF_PONG
        if b0 == 0x89:  # FIN + ping
            return bytes((0x8A, length)) + _unmask(data[6:], data[2:6])
        return None

    def feed(self, data: bytes) -> list[Event]:
        if self.finished:
            return []
        if self._buf:
            data = self._buf + data
            self._buf = b""
        n = len(data)
        out: list[Event]
        if self._opcode or _ws_messages is None:
            out = []
            pos = 0
        else:  # between frames: the whole data frames in C, the rest (if any) below
            out, pos = _ws_messages(data, 0, self.max_message)
            if pos == n:
                return out
        while n - pos >= 2:
            b0 = data[pos]
            b1 = data[pos + 1]
            length = b1 & 0x7F
            head = pos + 2
            if length == 126:
                if n - pos < 4:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                head = pos + 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                head = pos + 10
                if length >> 63:
                    return self._fail(out, 1002, "64-bit length with the most significant bit set")
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            if b0 & 0x70:
                return self._fail(out, 1002, "reserved bits set")
            if not b1 & 0x80:
                return self._fail(out, 1002, "unmasked client frame")
            if opcode >= OP_CLOSE:
                if opcode > OP_PONG:
                    return self._fail(out, 1002, f"reserved opcode {opcode}")
                if not fin:
                    return self._fail(out, 1002, "fragmented control frame")
                if length > 125:
                    return self._fail(out, 1002, "control frame over 125 octets")
            elif opcode > BINARY:
                return self._fail(out, 1002, f"reserved opcode {opcode}")
            elif opcode == CONTINUATION:
                if not self._opcode:
                    return self._fail(out, 1002, "continuation frame with no message open")
                if self._size + length > self.max_message:
                    return self._fail(out, 1009, "message too big")
            else:
                if self._opcode:
                    return self._fail(out, 1002, "new message inside a fragmented message")
                if length > self.max_message:
                    return self._fail(out, 1009, "message too big")
            end = head + 4 + length
            if end > n:
                break
            payload = _unmask(data[head + 4 : end], data[head : head + 4])
            pos = end
            if opcode in (TEXT, BINARY):
                if fin:
                    if opcode == TEXT and not payload.isascii():
                        try:
                            payload.decode()
                        except UnicodeDecodeError:
                            return self._fail(out, 1007, "invalid UTF-8 in a text message")
                    out.append((MESSAGE, payload, 0, ""))
                    continue
                self._opcode = opcode
                self._parts = [payload]
                self._size = length
                if opcode == TEXT:
                    first = _utf8_decoder()
                    self._decoder = first
                    try:
                        first.decode(payload, False)
                    except UnicodeDecodeError:
                        return self._fail(out, 1007, "invalid UTF-8 in a text message")
                continue
            if opcode == CONTINUATION:
                self._parts.append(payload)
                self._size += length
                decoder = self._decoder
                if decoder is not None:
                    try:
                        decoder.decode(payload, bool(fin))
                    except UnicodeDecodeError:
                        return self._fail(out, 1007, "invalid UTF-8 in a text message")
                if fin:
                    out.append((MESSAGE, b"".join(self._parts), 0, ""))
                    self._opcode = 0
                    self._parts = []
                    self._size = 0
                    self._decoder = None
                continue
            if opcode == OP_PING:
                out.append((PING, payload, 0, ""))
            elif opcode == OP_PONG:
                out.append((PONG, payload, 0, ""))
            else:  # close
                return self._close(out, payload)
        if pos < n:
            self._buf = data[pos:] if pos else data
        return out

    def _close(self, out: list[Event], payload: bytes) -> list[Event]:
        if not payload:
            code, reason = 1005, ""  # s.7.1.5: no status code present
        elif len(payload) == 1:
            return self._fail(out, 1002, "close frame of one octet")
        else:
            code = (payload[0] << 8) | payload[1]
            if not valid_close_code(code):
                return self._fail(out, 1002, f"invalid close code {code}")
            try:
                reason = payload[2:].decode()
            except UnicodeDecodeError:
                return self._fail(out, 1007, "close reason not UTF-8")
        self._finish()
        out.append((CLOSE, b"", code, reason))
        return out

    def _fail(self, out: list[Event], code: int, reason: str) -> list[Event]:
        self._finish()
        out.append((FAIL, b"", code, reason))
        return out

    def _finish(self) -> None:
        self.finished = True
        self._buf = b""
        self._parts = []
        self._decoder = None
