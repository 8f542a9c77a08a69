"""HTTP/1.1 request framing on ``listen.https`` with no ambiguity: one 400, then the connection closes.

Theory of operation
-------------------
Request smuggling needs two parsers that frame the same bytes differently (the edge and the
tenant's ``backend_http``, or the edge and a client-side proxy). The edge therefore accepts a
request head only when its framing has exactly one reading, and answers anything else with a
single ``400 Bad Request`` (``Connection: close``) before closing the connection: the bytes that
follow are never parsed, so they can never become a second request or a second response.

:class:`StrictHTTPChannel` is Twisted's ``HTTPChannel`` with these checks in front of its own
parser (which already refuses bad request lines, header names that are not tokens, NUL/CR/LF in
values, non-hex chunk sizes and malformed chunk extensions):

=====================================================  =================================  =========
what                                                    rule                              kind
=====================================================  =================================  =========
a line starting with SP/HTAB (obs-fold, or whitespace   RFC 9112 s.5.2, s.2.2              obs_fold
before the first field)
CR or LF inside a line (bare CR, bare LF)               RFC 9112 s.2.2                     bare_cr_lf
a field name that is not a token (``Transfer-Encoding   RFC 9112 s.5.1                     field_name
 : chunked``)
``Transfer-Encoding`` other than exactly ``chunked``    RFC 9112 s.6.1 (the edge decodes   transfer_encoding
(``identity``, ``chunked, identity``, ``xchunked``,     only chunked; any other coding
``gzip, chunked``), more than one, or in HTTP/1.0       is ambiguous between parsers)
``Content-Length`` not ``1*DIGIT``, more than one       RFC 9112 s.6.3, RFC 9110 s.8.6     content_length
(``5, 5`` included)
``Transfer-Encoding`` together with ``Content-Length``  RFC 9112 s.6.3 item 3              te_and_cl
no ``Host`` in HTTP/1.1, several, or an invalid one     RFC 9112 s.3.2                     host
a malformed chunk (size not hex, no CRLF after data)    RFC 9112 s.7.1                     chunk
=====================================================  =================================  =========

Each refusal is reported to ``site.framing_refused(kind)`` (counted and logged rate-limited by the
reverse proxy, ``mcs_edge_http_proxy_events{tenant="-"}``). When the refused request already has
a response under way (a proxied backend answered before the client finished a malformed chunked
body), no 400 is written into it: the connection is aborted, so the client never sees a second
response.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from twisted.web.http import HTTPChannel
from twisted.web.server import Site

__all__ = ["FrontSite", "StrictHTTPChannel", "request_line"]

_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 s.5.6.2
_DIGITS = re.compile(rb"[0-9]{1,18}")
# Host = uri-host [ ":" port ] (RFC 9110 s.7.2); reg-name kept to what a DNS name or IPv4 can be
_HOST = re.compile(rb"(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{0,5})?")

_BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 16\r\n"
    b"Connection: close\r\n\r\n400 bad request\n"
)


def request_line(channel: Any) -> tuple[bytes, bytes]:
    """(method, target) of the request being read on ``channel``, from ``HTTPChannel``'s private
    ``_command``/``_path`` (twisted.web has no public accessor before the Request exists): the one
    place that reads them."""
    return getattr(channel, "_command", b""), getattr(channel, "_path", b"")


class StrictHTTPChannel(HTTPChannel):
    """``HTTPChannel`` that refuses every framing ambiguity with one 400 and a close."""

    site: Any
    _dead = False
    _seen: frozenset[bytes] = frozenset()

    # -- the head, line by line ------------------------------------------------------------------
    def lineReceived(self, line: bytes) -> None:  # noqa: N802
        if self._dead:
            return
        if line[:1] in (b" ", b"\t"):
            self._refuse("obs_fold")
            return
        if b"\r" in line or b"\n" in line:
            self._refuse("bare_cr_lf")
            return
        super().lineReceived(line)

    def headerReceived(self, line: bytes) -> bool:  # noqa: N802
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name):
            self._refuse("field_name")
            return False
        lname = name.lower()
        value = value.strip(b" \t")
        if lname == b"transfer-encoding":
            if b"transfer-encoding" in self._seen or getattr(self, "_version", b"") != b"HTTP/1.1":
                return self._refuse("transfer_encoding")
            if value.lower() != b"chunked":
                return self._refuse("transfer_encoding")
            if b"content-length" in self._seen:
                return self._refuse("te_and_cl")
        elif lname == b"content-length":
            if b"content-length" in self._seen or not _DIGITS.fullmatch(value):
                return self._refuse("content_length")
            if b"transfer-encoding" in self._seen:
                return self._refuse("te_and_cl")
        elif lname == b"host" and (b"host" in self._seen or not _HOST.fullmatch(value)):
            return self._refuse("host")
        self._seen = self._seen | {lname}
        ok: bool = super().headerReceived(line)
        return ok

    def allHeadersReceived(self) -> None:  # noqa: N802
        seen, self._seen = self._seen, frozenset()
        if b"host" not in seen and getattr(self, "_version", b"") == b"HTTP/1.1":
            self._refuse("host")
            return
        super().allHeadersReceived()

    def allContentReceived(self) -> None:  # noqa: N802
        if self._dead:  # refused at the end of the head: the request is never dispatched
            return
        super().allContentReceived()

    def rawDataReceived(self, data: bytes) -> None:  # noqa: N802
        if self._dead:
            return
        super().rawDataReceived(data)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self._dead:
            return
        super().dataReceived(data)

    # -- refusing --------------------------------------------------------------------------------
    def _respondToBadRequestAndDisconnect(self) -> None:  # noqa: N802
        """Twisted's own parser found the request malformed (bad chunk, request line, field)."""
        self._refuse("chunk" if self._in_body() else "malformed")

    def _in_body(self) -> bool:
        return bool(self.requests) and getattr(self, "_command", None) is not None and self.line_mode == 0

    def _refuse(self, kind: str) -> bool:
        """One 400 (or an abort when a response already started), then nothing more is parsed."""
        if self._dead:
            return False
        self._dead = True
        self.persistent = False
        report: Callable[[str], None] | None = getattr(self.site, "framing_refused", None)
        if report is not None:
            report(kind)
        transport: Any = self.transport
        if transport is None:
            return False
        current = self.requests[-1] if self.requests else None
        if current is not None and getattr(current, "startedWriting", False):
            transport.abortConnection()  # a response is under way: never append a second one
            return False
        transport.write(_BAD_REQUEST)
        self.loseConnection()
        return False


class FrontSite(Site):
    """The HTTPS site: :class:`StrictHTTPChannel` connections; framing refusals reported."""

    protocol = StrictHTTPChannel  # type: ignore[assignment]

    def __init__(self, resource: Any, framing_refused: Callable[[str], None] | None = None) -> None:
        super().__init__(resource, logPath=None)
        self.framing_refused = framing_refused or (lambda _kind: None)
