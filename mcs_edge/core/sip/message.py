"""SIP messages: parse bytes into ``Request``/``Response``, change them cheaply, serialise.

Theory of operation
-------------------
``parse(data)`` takes one complete message (one UDP datagram, one WebSocket message, or what the
stream framer cut out of a TCP/TLS byte stream) and returns a ``Request`` or a ``Response``. The
head is decoded once as UTF-8 with ``surrogateescape`` (so any byte survives the round trip),
split on CRLF, unfolded, and each field goes into the ordered ``Headers`` table with its
original text. Then the message is validated the way a proxy must (RFC 3261 s.16.3, s.18.3,
RFC 4475):

* start line: single SPs, a token method, a Request-URI without LWS or ``<>``, version
  ``SIP/2.0`` (other versions: 505), status code 100..699;
* Request-URI scheme ``sip``/``sips``/``tel``, others 416; SIP Request-URIs may not carry
  ``?headers`` (RFC 4475 s.3.1.2.11: 400);
* mandatory fields (Via, From, To, Call-ID, CSeq, and Max-Forwards for requests unless
  ``require_max_forwards=False``), at most one of each single-valued field;
* syntax of Via, From, To, Contact, Route, Record-Route, Call-ID, CSeq, Max-Forwards,
  Content-Length; the CSeq method must equal the request method;
* body: with ``Content-Length`` the body is exactly that long; a datagram/WebSocket message
  shorter than it is a 400 and extra octets after it are discarded (RFC 3261 s.18.3, RFC 4475
  s.3.1.1.8); without it the body is the rest of the message (``content_length_required=True``,
  which the stream framer uses, makes it mandatory).

The head of a common message (printable ASCII, CRLF line ends, no folded line, token names,
within the limits) is cut into its fields by the optional C extension ``mcs_edge._sipscan``
(``_scan``), which returns exactly what the Python loop (``_scan_head``) builds, or ``None`` for
anything else, which then takes the Python path and gets its verdict; the validation below is the
same either way. Short values the checks have seen before are cached; a Via or name-addr that
differs from a known one only in its ``branch``/``tag`` token is checked from its cached template.

Errors raise ``RemoteProtocolError``. For requests ``status_hint`` is the status to answer; for
responses it is always ``None`` (a bad response is dropped, RFC 3261 s.18.1.2). Size caps
(``Limits``): a message larger than ``max_message_size`` is 513 Message Too Large; a
Content-Length above it is 413 Request Entity Too Large; too many header fields or a header
line that is too long is 400 (SIP has no 431; 494 means "Security Agreement Required").

Proxy hot path: ``Request``/``Response`` are mutable (copying a frozen message per hop would
cost more than the rest of the work); parsed views (``top_via``, ``cseq`` ...) are computed on
demand from header text, and the helpers ``push_via``/``pop_via``/``prepend_record_route``/
``pop_route``/``decrement_max_forwards``/``set_body`` change one field each. ``bytes(msg)``
writes unchanged fields from their original text.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from mcs_edge.errors import LocalProtocolError, RemoteProtocolError

from . import _abnf
from .headers import (
    _KEY_CACHE,
    _KEY_CACHE_MAX,
    CACHED_VALUE_MAX,
    COMPACT_FORMS,
    SINGLE_HEADERS,
    CSeq,
    HeaderField,
    Headers,
    NameAddr,
    OtherUri,
    SipUri,
    Via,
    header_key,
    name_addr_template,
    parse_cseq,
    parse_max_forwards,
    parse_name_addr,
    parse_uri,
    parse_via,
    parse_via_tuple,
    split_commas,
)

_Scan = Callable[
    [bytes, int, int, dict[str, str], dict[str, str], int],
    tuple[str, list[tuple[str, str, str, str | None]], int] | None,
]
_scan: _Scan | None
_call_id_c: Callable[[str], bool | None] | None
try:  # the C scanner of the head (setup.py, optional): the Python path below is used without it
    from mcs_edge._sipscan import call_id as _call_id_c
    from mcs_edge._sipscan import scan as _scan
except ImportError:  # pragma: no cover - depends on the build
    _scan = _call_id_c = None

__all__ = [
    "DEFAULT_LIMITS",
    "SIP_VERSION",
    "SUPPORTED_URI_SCHEMES",
    "Limits",
    "Message",
    "Request",
    "Response",
    "parse",
]

SIP_VERSION = "SIP/2.0"
#: Request-URI schemes this edge routes; others get 416 Unsupported URI Scheme.
SUPPORTED_URI_SCHEMES = frozenset({"sip", "sips", "tel"})
#: RFC 3261 s.16.6 step 3: Max-Forwards added by a proxy when absent.
DEFAULT_MAX_FORWARDS = 70

_ENC = "utf-8"
_ERRORS = "surrogateescape"


@dataclass(frozen=True, slots=True)
class Limits:
    """Size caps applied by ``parse`` (and by the stream framer)."""

    max_message_size: int = 65536
    max_header_count: int = 100
    max_header_line: int = 8192


DEFAULT_LIMITS = Limits()

_MANDATORY_REQUEST = ("via", "from", "to", "call-id", "cseq")
_NAME_ADDR_KEYS = frozenset({"from", "to"})
_NAME_ADDR_LIST_KEYS = frozenset({"contact", "route", "record-route", "path", "service-route"})


class Message:
    """Common part of ``Request`` and ``Response``: headers, body, proxy helpers."""

    __slots__ = ("body", "headers", "version")

    headers: Headers
    body: bytes
    version: str

    def _start_line(self) -> str:
        raise NotImplementedError

    # --- serialisation -------------------------------------------------------------------

    def __bytes__(self) -> bytes:
        return self.serialize()

    def serialize(self) -> bytes:
        """Return the wire form. A missing Content-Length is added (streams need it)."""
        fields = self.headers.fields
        parts = [self._start_line()]
        has_cl = False
        for key, name, value, raw in fields:
            if raw is not None:
                parts.append(raw)
            else:
                parts.append(f"{name}: {value}")
            if key == "content-length":
                has_cl = True
        if not has_cl:
            parts.append(f"Content-Length: {len(self.body)}")
        parts.append("")
        parts.append("")
        return "\r\n".join(parts).encode(_ENC, _ERRORS) + self.body

    # --- parsed views ----------------------------------------------------------------------

    @property
    def call_id(self) -> str:
        """The Call-ID value."""
        value = self.headers.get("call-id")
        if value is None:
            raise LocalProtocolError("message has no Call-ID")
        return value

    @property
    def cseq(self) -> CSeq:
        """The parsed CSeq."""
        value = self.headers.get("cseq")
        if value is None:
            raise LocalProtocolError("message has no CSeq")
        return parse_cseq(value)

    @property
    def from_(self) -> NameAddr:
        """The parsed From."""
        return self._name_addr("from")

    @property
    def to(self) -> NameAddr:
        """The parsed To."""
        return self._name_addr("to")

    def _name_addr(self, key: str) -> NameAddr:
        value = self.headers.get(key)
        if value is None:
            raise LocalProtocolError(f"message has no {key}")
        return parse_name_addr(value)

    @property
    def contacts(self) -> list[NameAddr]:
        """Every Contact element, in order."""
        return [parse_name_addr(v) for v in self.headers.values("contact")]

    @property
    def vias(self) -> list[Via]:
        """Every Via element, top first."""
        out: list[Via] = []
        for value in self.headers.get_all("via"):
            out.extend(parse_via(value))
        return out

    @property
    def top_via(self) -> Via:
        """The topmost Via (parsed from its first element only)."""
        value = self.headers.first_value("via")
        if value is None:
            raise LocalProtocolError("message has no Via")
        return parse_via_tuple(value)[0]

    @property
    def routes(self) -> list[NameAddr]:
        """Every Route element, in order."""
        return [parse_name_addr(v) for v in self.headers.values("route")]

    @property
    def record_routes(self) -> list[NameAddr]:
        """Every Record-Route element, in order."""
        return [parse_name_addr(v) for v in self.headers.values("record-route")]

    @property
    def max_forwards(self) -> int | None:
        """Max-Forwards, or ``None`` when absent."""
        value = self.headers.get("max-forwards")
        return None if value is None else parse_max_forwards(value)

    @property
    def content_type(self) -> str | None:
        """The Content-Type value as written."""
        return self.headers.get("content-type")

    # --- proxy operations ---------------------------------------------------------------

    def push_via(self, via: Via | str) -> None:
        """Add a Via on top (RFC 3261 s.16.6 step 8)."""
        self.headers.insert_first("Via", str(via))

    def pop_via(self) -> Via:
        """Remove the top Via (first element of the first Via field) and return it parsed."""
        value = self.headers.pop_first_value("via")
        if value is None:
            raise LocalProtocolError("message has no Via to pop")
        return parse_via_tuple(value)[0]

    def replace_top_via(self, via: Via | str) -> None:
        """Replace the top Via element (e.g. with ``received``/``rport`` added, s.18.2.1)."""
        self.headers.replace_first_value("via", str(via))

    def prepend_record_route(self, value: NameAddr | str) -> None:
        """Add a Record-Route on top (RFC 3261 s.16.6 step 4)."""
        self.headers.insert_first("Record-Route", str(value))

    def pop_route(self) -> NameAddr | None:
        """Remove the first Route element and return it parsed (``None`` if there is none)."""
        value = self.headers.pop_first_value("route")
        return None if value is None else parse_name_addr(value)

    def set_routes(self, routes: list[NameAddr | str]) -> None:
        """Replace all Route fields with one field listing ``routes`` (none: remove Route)."""
        if not routes:
            self.headers.remove("route")
        else:
            self.headers.set("Route", ", ".join(str(r) for r in routes))

    def decrement_max_forwards(self) -> int:
        """Decrement Max-Forwards (adding 70 when absent, s.16.6 step 3); return the new value.

        Raises ``LocalProtocolError`` at 0: the caller must answer 483 first (s.16.3 step 2).
        """
        current = self.max_forwards
        if current is None:
            value = DEFAULT_MAX_FORWARDS
        elif current == 0:
            raise LocalProtocolError("Max-Forwards is 0; answer 483 Too Many Hops")
        else:
            value = current - 1
        self.headers.set("Max-Forwards", str(value))
        return value

    def set_body(self, body: bytes, content_type: str | None = None) -> None:
        """Replace the body and Content-Length (and Content-Type when given)."""
        self.body = body
        self.headers.set("Content-Length", str(len(body)))
        if content_type is not None:
            self.headers.set("Content-Type", content_type)
        elif not body:
            self.headers.remove("content-type")


class Request(Message):
    """A SIP request. ``uri`` is the Request-URI text; ``request_uri`` parses it."""

    __slots__ = ("method", "uri")

    def __init__(
        self,
        method: str,
        uri: str,
        headers: Headers | None = None,
        body: bytes = b"",
        version: str = SIP_VERSION,
    ) -> None:
        self.method = method
        self.uri = uri
        self.headers = Headers() if headers is None else headers
        self.body = body
        self.version = version

    def _start_line(self) -> str:
        return f"{self.method} {self.uri} {self.version}"

    @property
    def request_uri(self) -> SipUri | OtherUri:
        """The parsed Request-URI."""
        return parse_uri(self.uri)

    def copy(self) -> Request:
        """Return a copy whose header table can be changed independently."""
        return Request(self.method, self.uri, self.headers.copy(), self.body, self.version)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Request):
            return NotImplemented
        return (self.method, self.uri, self.version, self.headers, self.body) == (
            other.method,
            other.uri,
            other.version,
            other.headers,
            other.body,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"


class Response(Message):
    """A SIP response."""

    __slots__ = ("reason", "status")

    def __init__(
        self,
        status: int,
        reason: str = "",
        headers: Headers | None = None,
        body: bytes = b"",
        version: str = SIP_VERSION,
    ) -> None:
        if not 100 <= status <= 699:
            raise LocalProtocolError(f"status {status} out of range")
        self.status = status
        self.reason = reason
        self.headers = Headers() if headers is None else headers
        self.body = body
        self.version = version

    def _start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def copy(self) -> Response:
        """Return a copy whose header table can be changed independently."""
        return Response(self.status, self.reason, self.headers.copy(), self.body, self.version)

    @classmethod
    def for_request(
        cls, request: Request, status: int, reason: str = "", to_tag: str | None = None
    ) -> Response:
        """Build a response to ``request`` (RFC 3261 s.8.2.6.2): copy Via, From, To, Call-ID,
        CSeq (and Record-Route for 18x/2xx of dialog-creating requests is the UAS's job), add a
        To tag when given and the To has none.
        """
        fields: list[HeaderField] = []
        for f in request.headers.fields:
            key = f[0]
            if key in ("via", "from", "call-id", "cseq"):
                fields.append(f)
            elif key == "to":
                if to_tag is not None and parse_name_addr(f[2]).tag is None:
                    fields.append((key, f[1], f"{f[2]};tag={to_tag}", None))
                else:
                    fields.append(f)
        fields.append(("content-length", "Content-Length", "0", None))
        return cls(status, reason, Headers.from_fields(fields))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Response):
            return NotImplemented
        return (self.status, self.reason, self.version, self.headers, self.body) == (
            other.status,
            other.reason,
            other.version,
            other.headers,
            other.body,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


# ---------------------------------------------------------------------------------------------
# parsing


def _fail(message: str, status: int | None, is_request: bool) -> RemoteProtocolError:
    return RemoteProtocolError(message, status if is_request else None)


def parse(
    data: bytes,
    *,
    limits: Limits = DEFAULT_LIMITS,
    content_length_required: bool = False,
    require_max_forwards: bool = True,
) -> Request | Response:
    """Parse one complete SIP message (see the module docstring for the rules).

    ``content_length_required``: stream transports (the framer already cut the message at
    Content-Length). ``require_max_forwards=False`` follows RFC 3261 s.16.3 step 2 (a proxy
    passes a request without Max-Forwards and adds one; RFC 4475 s.3.4.1).
    """
    if len(data) > limits.max_message_size:
        raise RemoteProtocolError(f"message of {len(data)} bytes exceeds the cap", 513)
    is_request = not data.startswith(b"SIP/")
    scanned = (
        None
        if _scan is None
        else _scan(
            data, limits.max_header_line, limits.max_header_count, _KEY_CACHE, COMPACT_FORMS, _KEY_CACHE_MAX
        )
    )
    start, fields, end = _scan_head(data, is_request, limits) if scanned is None else scanned
    headers = Headers.from_fields(fields)

    # --- start line ---
    msg: Request | Response
    if is_request:
        line = _REQUEST_LINES.get(start)
        if line is None:
            line = _request_line(start)
        msg = Request(line[0], line[1], headers, b"", SIP_VERSION)
    else:
        status = _STATUS_LINES.get(start)
        if status is None:
            status = _status_line(start)
        msg = Response(status[0], status[1], headers, b"", SIP_VERSION)

    # --- header semantics ---
    keys = [f[0] for f in fields]
    present = set(keys)
    if not present.issuperset(_MANDATORY_REQUEST):
        for key in _MANDATORY_REQUEST:
            if key not in present:
                raise _fail(f"missing mandatory header field {key}", 400, is_request)
    if is_request and require_max_forwards and "max-forwards" not in present:
        raise RemoteProtocolError("missing mandatory header field max-forwards", 400)
    if len(present) != len(keys):  # some field repeats: at most one of each single-valued field
        singles = [key for key in keys if key in SINGLE_HEADERS]
        if len(singles) != len(set(singles)):
            for key in SINGLE_HEADERS:  # the one to name, as found before the check above
                if keys.count(key) > 1:
                    raise _fail(f"more than one {key} header field", 400, is_request)
    content_length, cseq_text = _validate_fields(fields, is_request, limits)
    try:
        cseq = parse_cseq(cseq_text)
    except RemoteProtocolError as exc:
        raise _fail(str(exc), 400, is_request) from None
    if isinstance(msg, Request) and cseq.method != msg.method:
        raise RemoteProtocolError("CSeq method does not match the request method", 400)

    # --- body ---
    rest = data[end + 4 :]
    if content_length is None:
        if content_length_required:
            raise _fail("missing Content-Length on a stream transport", 400, is_request)
        msg.body = rest
    elif content_length > len(rest):
        raise _fail("Content-Length larger than the body", 400, is_request)
    elif content_length == len(rest):
        msg.body = rest
    else:
        msg.body = rest[:content_length]
    return msg


# Start lines already checked (a proxy sees the same few again and again: "SIP/2.0 200 OK", an
# ACK or BYE to a PBX's Contact, INVITEs to the same Request-URIs). Only lines that passed every
# check are kept (an invalid one is checked, and refused, every time); bounded, emptied when full.
_REQUEST_LINES: dict[str, tuple[str, str]] = {}
_STATUS_LINES: dict[str, tuple[int, str]] = {}
_START_LINES_MAX = 2048


def _request_line(start: str) -> tuple[str, str]:
    """``(method, Request-URI)`` of a request line (RFC 3261 s.7.1, s.25.1), or the error."""
    parts = start.split(" ")
    if len(parts) != 3:
        raise RemoteProtocolError(f"malformed request line {start[:80]!r}", 400)
    method, uri, version = parts
    if _abnf.METHOD_RE.fullmatch(method) is None:
        raise RemoteProtocolError(f"invalid method {method[:40]!r}", 400)
    if _abnf.SIP_VERSION_RE.fullmatch(version) is None:
        raise RemoteProtocolError(f"malformed request line {start[:80]!r}", 400)
    if version.upper() != SIP_VERSION:
        raise RemoteProtocolError(f"unsupported version {version}", 505)
    _check_request_uri(uri)
    line = (method, uri)
    if len(start) <= CACHED_VALUE_MAX:
        if len(_REQUEST_LINES) >= _START_LINES_MAX:
            _REQUEST_LINES.clear()
        _REQUEST_LINES[start] = line
    return line


def _status_line(start: str) -> tuple[int, str]:
    """``(status, reason)`` of a status line (RFC 3261 s.7.2, s.25.1), or the error."""
    parts = start.split(" ", 2)
    if len(parts) < 2 or _abnf.SIP_VERSION_RE.fullmatch(parts[0]) is None:
        raise RemoteProtocolError(f"malformed status line {start[:80]!r}", None)
    if parts[0].upper() != SIP_VERSION:
        raise RemoteProtocolError(f"unsupported version {parts[0]}", None)
    code = parts[1]
    if _abnf.STATUS_CODE_RE.fullmatch(code) is None:
        raise RemoteProtocolError(f"invalid status code {code[:20]!r}", None)
    status = (int(code), parts[2] if len(parts) == 3 else "")
    if len(start) <= CACHED_VALUE_MAX:
        if len(_STATUS_LINES) >= _START_LINES_MAX:
            _STATUS_LINES.clear()
        _STATUS_LINES[start] = status
    return status


def _scan_head(data: bytes, is_request: bool, limits: Limits) -> tuple[str, list[HeaderField], int]:
    """The head cut into its start line and header fields, and the offset of the empty line.

    The Python path: ``mcs_edge._sipscan.scan`` (C, optional) returns the same for the common
    message and ``None`` for everything else (folded lines, non-ASCII octets, any error), which
    then takes this path; tests/core/sip/test_sipscan.py checks the two agree.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        raise _fail("no empty line after the header fields", 400, is_request)
    head = data[:end].decode(_ENC, _ERRORS)
    lines = head.split("\r\n")
    nlines = len(lines)
    if head.count("\n") != nlines - 1 or head.count("\r") != nlines - 1:
        raise _fail("bare CR or LF in the message head", 400, is_request)
    if nlines - 1 > limits.max_header_count and _count_fields(lines) > limits.max_header_count:
        raise _fail("too many header fields", 400, is_request)
    max_line = limits.max_header_line

    # --- header fields ---
    if len(head) > max_line and any(len(line) > max_line for line in lines):
        raise _fail("header line too long", 400, is_request)
    fields: list[HeaderField] = []
    append = fields.append
    key_cache_get = _KEY_CACHE.get
    logical: list[str] | list[tuple[str, str]]
    if "\r\n " in head or "\r\n\t" in head:
        logical = _unfold(lines, is_request)
        if any(len(raw) > max_line for _line, raw in logical):
            raise _fail("header line too long", 400, is_request)
    else:
        logical = lines
    for item in logical[1:]:
        if type(item) is tuple:
            line, raw = item
        else:
            line = raw = item  # type: ignore[assignment]
        name, colon, value = line.partition(":")
        if not name or not colon:
            raise _fail(f"header line without a name: {line[:40]!r}", 400, is_request)
        key = key_cache_get(name)
        if key is None:
            if name[-1] in " \t":
                name = name.rstrip(" \t")
            try:
                key = header_key(name)
            except LocalProtocolError:
                raise _fail(f"invalid header name {name[:40]!r}", 400, is_request) from None
        append((key, name, value.strip(" \t"), raw))
    if len(fields) > limits.max_header_count:
        raise _fail("too many header fields", 400, is_request)
    return lines[0], fields, end


def _unfold(lines: list[str], is_request: bool) -> list[tuple[str, str]]:
    """Join continuation lines (RFC 3261 s.7.3.1): (unfolded line, original text) pairs."""
    out: list[tuple[str, str]] = [(lines[0], lines[0])]
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):
            if len(out) == 1:
                raise _fail("continuation line before the first header field", 400, is_request)
            prev, raw = out[-1]
            out[-1] = (prev.rstrip(" \t") + " " + line.strip(" \t"), raw + "\r\n" + line)
        else:
            out.append((line, line))
    return out


def _count_fields(lines: list[str]) -> int:
    return sum(1 for line in lines[1:] if line[:1] not in (" ", "\t"))


def _check_request_uri(uri: str) -> None:
    # A proxy sees the same Request-URIs (its domains, registered contacts) again and again: short
    # ones go through a cache of successes (an invalid URI raises every time).
    if len(uri) <= CACHED_VALUE_MAX:
        _check_request_uri_cached(uri)
    else:
        _check_request_uri_uncached(uri)


def _check_request_uri_uncached(uri: str) -> None:
    m = _abnf.URI_SCHEME_RE.match(uri)
    if m is None:
        raise RemoteProtocolError(f"invalid Request-URI {uri[:80]!r}", 400)
    scheme = m[1].lower()
    if scheme in ("sip", "sips"):
        if _abnf.REQUEST_URI_SIP_RE.fullmatch(uri) is None:
            raise RemoteProtocolError(f"invalid Request-URI {uri[:80]!r}", 400)
        return
    if _abnf.ABSOLUTE_URI_RE.fullmatch(uri) is None:
        raise RemoteProtocolError(f"invalid Request-URI {uri[:80]!r}", 400)
    if scheme not in SUPPORTED_URI_SCHEMES:
        raise RemoteProtocolError(f"unsupported URI scheme {scheme!r}", 416)


_check_request_uri_cached = functools.lru_cache(maxsize=1024)(_check_request_uri_uncached)


# what _validate_fields checks per header key (other fields are not interpreted by a proxy)
_VIA, _NAME_ADDR, _NAME_ADDR_LIST, _CALL_ID, _MAX_FORWARDS, _CONTENT_LENGTH, _CSEQ = range(7)
_CHECKS: dict[str, int] = {
    "via": _VIA,
    **dict.fromkeys(_NAME_ADDR_KEYS, _NAME_ADDR),
    **dict.fromkeys(_NAME_ADDR_LIST_KEYS, _NAME_ADDR_LIST),
    "call-id": _CALL_ID,
    "max-forwards": _MAX_FORWARDS,
    "content-length": _CONTENT_LENGTH,
    "cseq": _CSEQ,
}


def _validate_fields(fields: list[HeaderField], is_request: bool, limits: Limits) -> tuple[int | None, str]:
    """Check the syntax of the fields a proxy relies on; return Content-Length (or None) and the
    CSeq value (the caller parses it)."""
    content_length: int | None = None
    cseq = ""
    checks_get = _CHECKS.get
    try:
        for key, _name, value, _raw in fields:
            check = checks_get(key)
            if check is None:
                continue
            if check == _VIA:
                parse_via_tuple(value)  # validates each via-parm; the proxy reads it next
            elif check == _NAME_ADDR:
                if not _valid_name_addr(value):
                    raise RemoteProtocolError(f"invalid {key} {value[:80]!r}", 400)
            elif check == _NAME_ADDR_LIST:
                if key == "contact" and value == "*":
                    continue
                if "," not in value:
                    if not _valid_name_addr(value):
                        raise RemoteProtocolError(f"invalid {key} {value[:80]!r}", 400)
                    continue
                for item in split_commas(value):
                    if not _valid_name_addr(item):
                        raise RemoteProtocolError(f"invalid {key} {item[:80]!r}", 400)
            elif check == _CALL_ID:
                valid = None if _call_id_c is None else _call_id_c(value)
                if not (_CALL_ID_FULL(value) is not None if valid is None else valid):
                    raise RemoteProtocolError(f"invalid Call-ID {value[:80]!r}", 400)
            elif check == _CSEQ:
                cseq = value
            elif check == _MAX_FORWARDS:
                if is_request:
                    parse_max_forwards(value)
            elif not value.isdigit() or not value.isascii():  # Content-Length
                raise RemoteProtocolError(f"invalid Content-Length {value[:20]!r}", 400)
            elif len(value) > 10 or int(value) > limits.max_message_size:
                raise RemoteProtocolError("Content-Length exceeds the cap", 413)
            else:
                content_length = int(value)
    except RemoteProtocolError as exc:
        if not is_request:
            raise RemoteProtocolError(str(exc), None) from None
        raise
    return content_length, cseq


_CALL_ID_FULL = _abnf.CALL_ID_RE.fullmatch


def _valid_name_addr(value: str) -> bool:
    """Whether ``value`` is a name-addr/addr-spec with params (short values cached: the From, To,
    Contact, Path and Record-Route of a registered agent repeat)."""
    if len(value) <= CACHED_VALUE_MAX:
        return _valid_name_addr_cached(value)
    return _abnf.NAME_ADDR_RE.fullmatch(value) is not None


@functools.lru_cache(maxsize=4096)
def _valid_name_addr_cached(value: str) -> bool:
    split = name_addr_template(value)  # a known value with a new tag: its template checked once
    if split is not None:
        return _valid_name_addr_template(split[0])
    return _abnf.NAME_ADDR_RE.fullmatch(value) is not None


@functools.lru_cache(maxsize=1024)
def _valid_name_addr_template(value: str) -> bool:
    return _abnf.NAME_ADDR_RE.fullmatch(value) is not None
