"""Cutting SIP messages out of transports: WebSocket messages, datagrams and byte streams.

Theory of operation
-------------------
* **WebSocket** (RFC 7118): every WebSocket message carries exactly one SIP message, text or
  binary. Content-Length is optional; when present it must not exceed what follows the header
  block (extra octets are dropped as for datagrams). ``parse_websocket_message`` does it all.
* **Datagram** (UDP): the same rules (RFC 3261 s.18.3). A datagram made only of CRLFs is an RFC
  5626 keepalive and yields ``None`` from ``parse_datagram``.
* **Stream** (TCP/TLS): ``StreamFramer`` is fed bytes as they arrive and returns events.
  Content-Length is mandatory (s.18.3); the framer cuts each message at ``head + CRLFCRLF +
  Content-Length`` and hands the bytes out as ``MessageBytes`` (parse them with
  ``parse(..., content_length_required=True)``). CRLFs before a start line are keepalives
  (RFC 5626 s.4.4.1, RFC 3261 s.7.5): ``CRLFCRLF`` is a ``KeepalivePing`` that the adapter must
  answer with ``PONG`` (one CRLF); a lone CRLF is a ``KeepalivePong``. Because a ping may arrive
  split, a trailing lone CRLF is held until the next byte shows what it was, unless the framer
  was built with ``expect_pongs=True`` (the side that sends pings), which reports it at once.
  Incomplete input is capped at ``Limits.max_message_size``: a head without its empty line, or a
  message that would exceed the cap, raises ``RemoteProtocolError`` (the adapter closes the
  connection: a stream cannot resynchronise after garbage).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mcs_edge.errors import RemoteProtocolError

from .message import DEFAULT_LIMITS, Limits, Request, Response, parse

__all__ = [
    "PING",
    "PONG",
    "FramerEvent",
    "KeepalivePing",
    "KeepalivePong",
    "MessageBytes",
    "StreamFramer",
    "parse_datagram",
    "parse_websocket_message",
]

#: RFC 5626 s.4.4.1 keepalive ping (client -> server) and pong (server -> client).
PING = b"\r\n\r\n"
PONG = b"\r\n"

_CONTENT_LENGTH_RE = re.compile(
    rb"\r\n(?:[Cc][Oo][Nn][Tt][Ee][Nn][Tt]-[Ll][Ee][Nn][Gg][Tt][Hh]|[Ll])[ \t]*:"
    rb"[ \t]*(?:\r\n[ \t]+)?([^\r]*?)[ \t]*(?=\r\n(?![ \t]))"
)


@dataclass(frozen=True, slots=True)
class KeepalivePing:
    """A CRLFCRLF ping arrived: send ``PONG``."""


@dataclass(frozen=True, slots=True)
class KeepalivePong:
    """A lone CRLF (pong) arrived."""


@dataclass(frozen=True, slots=True)
class MessageBytes:
    """The bytes of one complete SIP message (head, empty line and Content-Length body)."""

    data: bytes


FramerEvent = KeepalivePing | KeepalivePong | MessageBytes


def parse_websocket_message(
    payload: bytes | str, limits: Limits = DEFAULT_LIMITS, *, require_max_forwards: bool = True
) -> Request | Response:
    """Parse the SIP message carried by one WebSocket message (text or binary)."""
    data = payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else payload
    return parse(data, limits=limits, require_max_forwards=require_max_forwards)


def parse_datagram(
    data: bytes, limits: Limits = DEFAULT_LIMITS, *, require_max_forwards: bool = True
) -> Request | Response | None:
    """Parse one UDP datagram; ``None`` for an RFC 5626 keepalive (only CRLFs)."""
    if not data.strip(b"\r\n"):
        return None
    return parse(data, limits=limits, require_max_forwards=require_max_forwards)


class StreamFramer:
    """Incremental framer for SIP over TCP/TLS (see the module docstring)."""

    __slots__ = ("_buffer", "_expect_pongs", "_limits")

    def __init__(self, limits: Limits = DEFAULT_LIMITS, *, expect_pongs: bool = False) -> None:
        self._buffer = bytearray()
        self._limits = limits
        self._expect_pongs = expect_pongs

    @property
    def buffered(self) -> int:
        """How many bytes are waiting for the rest of their message."""
        return len(self._buffer)

    def pending(self) -> bytes:
        """The bytes waiting for the rest of their message (to answer a message that cannot be framed)."""
        return bytes(self._buffer)

    def feed(self, data: bytes) -> list[FramerEvent]:
        """Add received bytes; return the keepalives and complete messages they finish."""
        buf = self._buffer
        buf += data
        events: list[FramerEvent] = []
        max_size = self._limits.max_message_size
        while buf:
            if buf[0] == 0x0D or buf[0] == 0x0A:
                if buf.startswith(PING):
                    del buf[:4]
                    events.append(KeepalivePing())
                    continue
                if buf.startswith(PONG):
                    if len(buf) == 2 and not self._expect_pongs:
                        break  # maybe the first half of a ping
                    if len(buf) == 3 and buf[2] == 0x0D:
                        break
                    del buf[:2]
                    events.append(KeepalivePong())
                    continue
                if len(buf) == 1 and buf[0] == 0x0D:
                    break
                raise RemoteProtocolError("stray CR or LF before a start line", 400)
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > max_size:
                    raise RemoteProtocolError("header block exceeds the message size cap", 513)
                break
            body_len = self._content_length(bytes(buf[:end]) + b"\r\n")
            total = end + 4 + body_len
            if total > max_size:
                raise RemoteProtocolError(f"message of {total} bytes exceeds the cap", 513)
            if len(buf) < total:
                break
            events.append(MessageBytes(bytes(buf[:total])))
            del buf[:total]
        return events

    def _content_length(self, head: bytes) -> int:
        values = {m[1] for m in _CONTENT_LENGTH_RE.finditer(head)}
        if not values:
            raise RemoteProtocolError("missing Content-Length on a stream transport", 400)
        if len(values) > 1:
            raise RemoteProtocolError("conflicting Content-Length header fields", 400)
        value = values.pop()
        if not value.isdigit() or len(value) > 10:
            raise RemoteProtocolError(f"invalid Content-Length {value[:20]!r}", 400)
        length = int(value)
        if length > self._limits.max_message_size:
            raise RemoteProtocolError("Content-Length exceeds the cap", 413)
        return length
