"""SIP header fields: the ordered header table and the parsed values a proxy needs.

Theory of operation
-------------------
A message keeps its header fields as one ordered list of ``(key, name, value, raw)`` tuples:

* ``key`` is the lower-case *long* name (compact forms ``v``, ``i``, ``m`` ... are mapped to
  ``via``, ``call-id``, ``contact`` ...), so every lookup is one string comparison per field;
* ``name`` is the name as written (its casing is kept);
* ``value`` is the unfolded value (``CRLF 1*WSP`` replaced by one SP, surrounding WSP stripped);
* ``raw`` is the original text of the whole field (all of its physical lines), or ``None`` once
  the field was built or changed by us. Serialising an unchanged field writes ``raw`` back, so an
  untouched message round-trips byte for byte.

Header fields that carry comma-separated lists (``Via``, ``Route``, ``Contact`` ...) stay as
written; ``Headers.values()`` splits them (commas inside quoted strings and ``<...>`` do not split),
and ``Headers.pop_first_value()`` removes the first element of a list, which is how a proxy pops a
``Via`` or a ``Route`` that shares a line with others.

Parsed views (``SipUri``, ``NameAddr``, ``Via``, ``CSeq``) are frozen dataclasses produced on
demand by ``parse_*`` functions; each has ``__str__`` giving its wire form. Invalid text raises
``RemoteProtocolError`` with status hint 400.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from mcs_edge.errors import LocalProtocolError, RemoteProtocolError

from . import _abnf
from ._frozen import fast_init

__all__ = [
    "CACHED_VALUE_MAX",
    "COMPACT_FORMS",
    "LIST_HEADERS",
    "MAGIC_COOKIE",
    "SINGLE_HEADERS",
    "CSeq",
    "HeaderField",
    "Headers",
    "NameAddr",
    "OtherUri",
    "Params",
    "SipUri",
    "Via",
    "header_key",
    "name_addr_template",
    "parse_cseq",
    "parse_max_forwards",
    "parse_name_addr",
    "parse_name_addrs",
    "parse_uri",
    "parse_via",
    "parse_via_tuple",
    "split_commas",
]

#: RFC 3261 s.8.1.1.7: branches of RFC 3261 elements start with this.
MAGIC_COOKIE = "z9hG4bK"

#: Compact header names (RFC 3261 s.7.3.3 and the IANA SIP parameters registry) -> long name.
COMPACT_FORMS: dict[str, str] = {
    "a": "accept-contact",
    "b": "referred-by",
    "c": "content-type",
    "d": "request-disposition",
    "e": "content-encoding",
    "f": "from",
    "i": "call-id",
    "j": "reject-contact",
    "k": "supported",
    "l": "content-length",
    "m": "contact",
    "n": "identity-info",
    "o": "event",
    "r": "refer-to",
    "s": "subject",
    "t": "to",
    "u": "allow-events",
    "v": "via",
    "x": "session-expires",
    "y": "identity",
}

#: Header fields whose value is a comma-separated list (``values()`` splits them). The auth headers
#: (``Authorization``, ``WWW-Authenticate`` ...) are *not* here: their commas separate parameters.
LIST_HEADERS: frozenset[str] = frozenset(
    {
        "accept",
        "accept-contact",
        "accept-encoding",
        "accept-language",
        "alert-info",
        "allow",
        "allow-events",
        "call-info",
        "contact",
        "content-encoding",
        "content-language",
        "error-info",
        "in-reply-to",
        "p-associated-uri",
        "path",
        "proxy-require",
        "reason",
        "record-route",
        "reject-contact",
        "request-disposition",
        "require",
        "route",
        "security-client",
        "security-server",
        "security-verify",
        "service-route",
        "supported",
        "unsupported",
        "via",
        "warning",
    }
)

#: Header fields that may appear at most once (RFC 3261 s.7.3.1, s.20; RFC 4475 s.3.3.8, 3.3.9).
SINGLE_HEADERS: frozenset[str] = frozenset(
    {"call-id", "content-length", "content-type", "cseq", "from", "max-forwards", "to"}
)

#: one header field: (key, name as written, unfolded value, original text or None)
HeaderField = tuple[str, str, str, str | None]
#: parameters as written: ((name, value-or-None), ...); look-ups ignore the case of names
Params = tuple[tuple[str, str | None], ...]

_KEY_CACHE: dict[str, str] = {}
_KEY_CACHE_MAX = 2048


def header_key(name: str) -> str:
    """Return the lookup key of a header name: lower case, compact forms expanded.

    Raises ``LocalProtocolError`` when ``name`` is not a token (callers parsing peer input check
    the name first).
    """
    key = _KEY_CACHE.get(name)
    if key is not None:
        return key
    if _abnf.TOKEN_RE.fullmatch(name) is None:
        raise LocalProtocolError(f"invalid header name {name!r}")
    low = name.lower()
    key = COMPACT_FORMS.get(low, low)
    if len(_KEY_CACHE) < _KEY_CACHE_MAX:
        _KEY_CACHE[name] = key
    return key


def split_commas(value: str) -> list[str]:
    """Split a list header value on commas outside quoted strings and ``<...>``; strip items.

    Empty items are kept (as ``""``) so that validators can reject them.
    """
    if "," not in value:
        return [value]
    if '"' not in value and "<" not in value:
        return [part.strip(" \t") for part in value.split(",")]
    items: list[str] = []
    start = 0
    in_quotes = False
    in_angle = False
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if in_quotes:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_quotes = False
        elif ch == '"':
            in_quotes = True
        elif in_angle:
            if ch == ">":
                in_angle = False
        elif ch == "<":
            in_angle = True
        elif ch == ",":
            items.append(value[start:i].strip(" \t"))
            start = i + 1
        i += 1
    items.append(value[start:].strip(" \t"))
    return items


class Headers:
    """The ordered header fields of one message, with case-insensitive look-ups.

    Names are matched by ``header_key`` (case-insensitive, compact forms expanded). Methods that
    add fields take the name as it should be written.
    """

    __slots__ = ("_fields",)

    def __init__(self, fields: Iterable[tuple[str, str]] = ()) -> None:
        self._fields: list[HeaderField] = [(header_key(n), n, v, None) for n, v in fields]

    @classmethod
    def from_fields(cls, fields: list[HeaderField]) -> Headers:
        self = cls.__new__(cls)
        self._fields = fields
        return self

    def copy(self) -> Headers:
        """Return an independent copy (fields are immutable tuples, so this is one list copy)."""
        return Headers.from_fields(self._fields.copy())

    @property
    def fields(self) -> list[HeaderField]:
        """The underlying field list (read it; change it only through the methods)."""
        return self._fields

    def __len__(self) -> int:
        return len(self._fields)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for f in self._fields:
            yield f[1], f[2]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = _KEY_CACHE.get(name) or header_key(name)
        return any(f[0] == key for f in self._fields)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return [(f[0], f[2]) for f in self._fields] == [(f[0], f[2]) for f in other._fields]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Headers({[(f[1], f[2]) for f in self._fields]!r})"

    def get(self, name: str, default: str | None = None) -> str | None:
        """Return the value of the first field called ``name`` (whole line), else ``default``."""
        key = _KEY_CACHE.get(name) or header_key(name)
        for f in self._fields:
            if f[0] == key:
                return f[2]
        return default

    def get_all(self, name: str) -> list[str]:
        """Return the values of every field called ``name``, one per header line."""
        key = _KEY_CACHE.get(name) or header_key(name)
        return [f[2] for f in self._fields if f[0] == key]

    def values(self, name: str) -> list[str]:
        """Return every element of ``name``: comma lists are split for ``LIST_HEADERS``."""
        key = _KEY_CACHE.get(name) or header_key(name)
        if key not in LIST_HEADERS:
            return [f[2] for f in self._fields if f[0] == key]
        out: list[str] = []
        for f in self._fields:
            if f[0] == key:
                out.extend(split_commas(f[2]))
        return out

    def first_value(self, name: str) -> str | None:
        """Return the first element of ``name`` (the first item of a comma list), else None."""
        key = _KEY_CACHE.get(name) or header_key(name)
        for f in self._fields:
            if f[0] == key:
                value = f[2]
                if key in LIST_HEADERS and "," in value:
                    return split_commas(value)[0]
                return value
        return None

    def count(self, name: str) -> int:
        """Return how many header lines are called ``name``."""
        key = _KEY_CACHE.get(name) or header_key(name)
        return sum(1 for f in self._fields if f[0] == key)

    def add(self, name: str, value: str) -> None:
        """Append a field at the end."""
        self._fields.append((header_key(name), name, _check_value(value), None))

    def insert_first(self, name: str, value: str) -> None:
        """Insert a field before the first field with the same name (at the top if none)."""
        key = _KEY_CACHE.get(name) or header_key(name)
        fields = self._fields
        for i, f in enumerate(fields):
            if f[0] == key:
                fields.insert(i, (key, name, _check_value(value), None))
                return
        fields.insert(0, (key, name, _check_value(value), None))

    def set(self, name: str, value: str) -> None:
        """Replace the first field called ``name`` with ``value`` and drop the others.

        Appends the field when there is none. The first field keeps its written name.
        """
        key = _KEY_CACHE.get(name) or header_key(name)
        value = _check_value(value)
        fields = self._fields
        for i, f in enumerate(fields):
            if f[0] == key:
                fields[i] = (key, f[1], value, None)
                j = i + 1
                while j < len(fields):
                    if fields[j][0] == key:
                        del fields[j]
                    else:
                        j += 1
                return
        fields.append((key, name, value, None))

    def remove(self, name: str) -> int:
        """Remove every field called ``name``; return how many were removed."""
        key = _KEY_CACHE.get(name) or header_key(name)
        before = len(self._fields)
        self._fields[:] = [f for f in self._fields if f[0] != key]
        return before - len(self._fields)

    def pop_first_value(self, name: str) -> str | None:
        """Remove and return the first element of ``name`` (see ``first_value``), else None."""
        key = _KEY_CACHE.get(name) or header_key(name)
        fields = self._fields
        for i, f in enumerate(fields):
            if f[0] == key:
                value = f[2]
                if key in LIST_HEADERS and "," in value:
                    items = split_commas(value)
                    if len(items) > 1:
                        fields[i] = (key, f[1], ", ".join(items[1:]), None)
                        return items[0]
                del fields[i]
                return value
        return None

    def replace_first_value(self, name: str, value: str) -> None:
        """Replace the first element of ``name`` (LocalProtocolError if there is none)."""
        key = _KEY_CACHE.get(name) or header_key(name)
        value = _check_value(value)
        fields = self._fields
        for i, f in enumerate(fields):
            if f[0] == key:
                if key in LIST_HEADERS and "," in f[2]:
                    items = split_commas(f[2])
                    items[0] = value
                    value = ", ".join(items)
                fields[i] = (key, f[1], value, None)
                return
        raise LocalProtocolError(f"no {name} header field to replace")


def _check_value(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise LocalProtocolError("header values must not contain CR or LF")
    return value


# ---------------------------------------------------------------------------------------------
# parsed values


def _find_param(params: Params, name: str) -> tuple[bool, str | None]:
    for k, v in params:  # names as written are nearly always lower case already
        if k == name:
            return True, v
    name = name.lower()
    for k, v in params:
        if k.lower() == name:
            return True, v
    return False, None


def _format_params(params: Params) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


def _parse_generic_params(text: str) -> Params:
    """Walk a params string that ``PARAMS`` already validated (``;name[=value]...``)."""
    if not text:
        return ()
    if '"' not in text and "[" not in text and " " not in text and "\t" not in text:
        # The common case: tokens only, no SWS, no quoted string or IPv6 reference. A token
        # holds neither ";" nor "=", so splitting is exact (and several times cheaper).
        return tuple(_split_param(item) for item in text[1:].split(";"))
    return tuple((m["name"], m["value"]) for m in _abnf.PARAM_STEP_RE.finditer(text))


def _split_param(item: str) -> tuple[str, str | None]:
    name, eq, value = item.partition("=")
    return (name, value) if eq else (name, None)


def _parse_uri_params(text: str) -> Params:
    """Walk URI parameters that ``URI_PARAMETERS`` already validated (``paramchar`` holds no ``;=``)."""
    if not text:
        return ()
    return tuple(_split_param(item) for item in text[1:].split(";"))


@fast_init
@dataclass(frozen=True, slots=True)
class SipUri:
    """A ``sip:`` or ``sips:`` URI (RFC 3261 s.19.1). ``host`` keeps IPv6 brackets."""

    host: str
    user: str | None = None
    port: int | None = None
    params: Params = ()
    headers: str | None = None
    password: str | None = None
    scheme: str = "sip"

    def param(self, name: str) -> str | None:
        """Value of a URI parameter (``None`` if absent or valueless; see ``has_param``)."""
        return _find_param(self.params, name)[1]

    def has_param(self, name: str) -> bool:
        """Whether a URI parameter is present (``lr`` has no value)."""
        return _find_param(self.params, name)[0]

    @property
    def transport(self) -> str | None:
        """The ``transport`` parameter, lower case."""
        value = self.param("transport")
        return None if value is None else value.lower()

    def __str__(self) -> str:
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out.append(":" + self.password)
            out.append("@")
        out.append(self.host)
        if self.port is not None:
            out.append(f":{self.port}")
        out.append(_format_params(self.params))
        if self.headers is not None:
            out.append("?" + self.headers)
        return "".join(out)


@dataclass(frozen=True, slots=True)
class OtherUri:
    """A URI of another scheme (``tel:``, ``urn:``, ``http:`` ...), kept as written."""

    scheme: str
    text: str

    def __str__(self) -> str:
        return self.text


#: Values longer than this are parsed without the caches (which stay small: 4096 short entries).
CACHED_VALUE_MAX = 256


def parse_uri(text: str) -> SipUri | OtherUri:
    """Parse a URI: SIP/SIPS URIs into ``SipUri``, anything else with a scheme into ``OtherUri``.

    Cached: a proxy sees the same URIs (its own Record-Route/Path, the PBX, registered contacts)
    over and over; the result is immutable, so sharing it is safe. Errors are not cached.
    """
    if len(text) <= CACHED_VALUE_MAX:
        return _parse_uri_cached(text)
    return _parse_uri(text)


def _parse_uri(text: str) -> SipUri | OtherUri:
    m = _abnf.SIP_URI_RE.fullmatch(text)
    if m is not None:
        port = m["port"]
        headers = m["headers"]
        return SipUri(
            host=m["host"],
            user=m["user"],
            port=_port(port) if port is not None else None,
            params=_parse_uri_params(m["params"]),
            headers=headers[1:] if headers else None,
            password=m["password"],
            scheme=m["scheme"].lower(),
        )
    s = _abnf.URI_SCHEME_RE.match(text)
    if s is None or s[1].lower() in ("sip", "sips") or _abnf.ABSOLUTE_URI_RE.fullmatch(text) is None:
        raise RemoteProtocolError(f"invalid URI {text[:80]!r}", 400)
    return OtherUri(s[1].lower(), text)


_parse_uri_cached = functools.lru_cache(maxsize=4096)(_parse_uri)


def _port(text: str) -> int:
    port = int(text)
    if port > 65535:
        raise RemoteProtocolError(f"port {port} out of range", 400)
    return port


def _unquote(text: str) -> str:
    inner = text[1:-1]
    if "\\" not in inner:
        return inner
    return re.sub(r"\\(.)", r"\1", inner, flags=re.DOTALL)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@fast_init
@dataclass(frozen=True, slots=True)
class NameAddr:
    """``name-addr`` or ``addr-spec`` with header parameters (From, To, Contact, Route ...).

    ``display_name`` is unquoted and unescaped (``None`` when absent). ``str()`` always writes
    the URI in ``<...>`` (safe for any URI, RFC 3261 s.20.10). A Contact of ``*`` is
    ``NameAddr.STAR``-like: ``uri`` is ``OtherUri("*", "*")`` and ``is_star`` is true.
    """

    uri: SipUri | OtherUri
    display_name: str | None = None
    params: Params = ()

    def param(self, name: str) -> str | None:
        """Value of a header parameter (``None`` if absent or valueless)."""
        return _find_param(self.params, name)[1]

    def has_param(self, name: str) -> bool:
        """Whether a header parameter is present."""
        return _find_param(self.params, name)[0]

    @property
    def tag(self) -> str | None:
        """The ``tag`` parameter (From/To)."""
        return self.param("tag")

    @property
    def is_star(self) -> bool:
        """Whether this is the ``Contact: *`` wildcard."""
        return isinstance(self.uri, OtherUri) and self.uri.scheme == "*"

    def with_params(self, *params: tuple[str, str | None]) -> NameAddr:
        """Return a copy with ``params`` appended."""
        return NameAddr(self.uri, self.display_name, self.params + params)

    def __str__(self) -> str:
        if self.is_star:
            return "*"
        out = f"<{self.uri}>" + _format_params(self.params)
        if self.display_name is not None:
            out = _quote(self.display_name) + " " + out
        return out


def parse_name_addr(text: str) -> NameAddr:
    """Parse one ``(name-addr / addr-spec) *(SEMI generic-param)`` value (cached, see ``parse_uri``)."""
    if len(text) <= CACHED_VALUE_MAX:
        return _parse_name_addr_cached(text)
    return _parse_name_addr(text)


def _parse_name_addr_new(text: str) -> NameAddr:
    """A short value not in the cache: one seen before except for its ``tag`` (the To of each new
    answer, the From of each new call) is parsed from its template (``name_addr_template``,
    cached on its own) and given its tag back."""
    split = name_addr_template(text)
    if split is None:
        return _parse_name_addr(text)
    template, tag = split
    try:
        parsed = _parse_name_addr_template(template)
    except RemoteProtocolError:
        return _parse_name_addr(text)  # the error names the text as written
    params = parsed.params
    for i, (name, value) in enumerate(params):
        if value == _TAG_SLOT and name == "tag":
            return NameAddr(parsed.uri, parsed.display_name, (*params[:i], ("tag", tag), *params[i + 1 :]))
    return _parse_name_addr(text)  # pragma: no cover - the template has its slot


_TAG_SLOT = "-tag-"


def name_addr_template(text: str) -> tuple[str, str] | None:
    """``(template, tag)`` when ``text`` is ``... <uri> ... ;tag=TOKEN ...`` with no quoted string
    after the ``>``: the template has the tag's value replaced by a fixed token, and is valid as a
    name-addr exactly when ``text`` is (the header parameters after ``>`` are generic-params, a
    token value can be exchanged for another token). ``None`` otherwise.
    """
    gt = text.rfind(">")
    if gt < 0:
        return None
    start = text.find(";tag=", gt) + 5
    if start < 5 or '"' in text[gt:]:
        return None
    end = text.find(";", start)
    if end < 0:
        end = len(text)
    tag = text[start:end]
    if _TOKEN_FULL(tag) is None:
        return None
    return text[:start] + _TAG_SLOT + text[end:], tag


def _parse_name_addr(text: str) -> NameAddr:
    m = _abnf.NAME_ADDR_RE.fullmatch(text)
    if m is None:
        if text == "*":
            return NameAddr(OtherUri("*", "*"))
        raise RemoteProtocolError(f"invalid name-addr {text[:80]!r}", 400)
    uri_text = m["uri"]
    if uri_text is None:
        uri_text = m["spec"]
    display = m["display"]
    display_name: str | None = None
    if display is not None:
        display_name = _unquote(display) if display.startswith('"') else display
    return NameAddr(parse_uri(uri_text), display_name, _parse_generic_params(m["params"]))


_parse_name_addr_cached = functools.lru_cache(maxsize=4096)(_parse_name_addr_new)
_parse_name_addr_template = functools.lru_cache(maxsize=1024)(_parse_name_addr)


def parse_name_addrs(text: str) -> list[NameAddr]:
    """Parse a comma list of name-addrs (Contact, Route, Record-Route, Path)."""
    return [parse_name_addr(item) for item in split_commas(text)]


@fast_init
@dataclass(frozen=True, slots=True)
class Via:
    """One ``via-parm`` (RFC 3261 s.20.42). ``transport`` is upper case; ``host`` as written."""

    transport: str
    host: str
    port: int | None = None
    params: Params = ()
    protocol: str = "SIP/2.0"

    def param(self, name: str) -> str | None:
        """Value of a Via parameter (``None`` if absent or valueless)."""
        return _find_param(self.params, name)[1]

    def has_param(self, name: str) -> bool:
        """Whether a Via parameter is present (``rport`` may have no value)."""
        return _find_param(self.params, name)[0]

    @property
    def branch(self) -> str | None:
        """The ``branch`` parameter."""
        return self.param("branch")

    @property
    def received(self) -> str | None:
        """The ``received`` parameter."""
        return self.param("received")

    @property
    def rport(self) -> int | None:
        """The ``rport`` value when it has one (RFC 3581); see ``has_param("rport")``."""
        value = self.param("rport")
        return int(value) if value is not None and value.isdigit() else None

    @property
    def sent_by(self) -> tuple[str, int | None]:
        """``(host, port)`` of sent-by; host lower-cased for comparisons."""
        return self.host.lower(), self.port

    @property
    def rfc3261_branch(self) -> bool:
        """Whether the branch starts with the RFC 3261 magic cookie ``z9hG4bK``."""
        branch = self.branch
        return branch is not None and branch.startswith(MAGIC_COOKIE) and len(branch) > len(MAGIC_COOKIE)

    def with_param(self, name: str, value: str | None) -> Via:
        """Return a copy with ``name`` set to ``value`` (replacing it if present)."""
        low = name.lower()
        params = list(self.params)
        for i, (k, _v) in enumerate(params):
            if k.lower() == low:
                params[i] = (k, value)
                return Via(self.transport, self.host, self.port, tuple(params), self.protocol)
        params.append((name, value))
        return Via(self.transport, self.host, self.port, tuple(params), self.protocol)

    def __str__(self) -> str:
        port = "" if self.port is None else f":{self.port}"
        return f"{self.protocol}/{self.transport} {self.host}{port}{_format_params(self.params)}"


def parse_via(text: str) -> list[Via]:
    """Parse a Via header value (one or more comma-separated via-parms)."""
    return list(parse_via_tuple(text))


@functools.lru_cache(maxsize=4096)
def parse_via_tuple(text: str) -> tuple[Via, ...]:
    """``parse_via`` without the copy: a cached tuple shared by every caller (Vias are frozen)."""
    # A proxy reads the same Via text several times per message (matching, loop check,
    # received/rport): parse each distinct value once. Vias are frozen, so sharing is safe.
    # The common form (one via-parm, tokens only) is read by the C scanner when it is built; it
    # accepts only what the grammar accepts and returns None for anything else (the paths below).
    if _via_c is not None:
        fields = _via_c(text)
        if fields is not None:
            return (Via(*fields),)
    # A new value usually differs from one seen before only in its branch (a new transaction
    # from the same sent-by): the rest is validated once, as a template, and the branch checked
    # as a token (RFC 3261 s.20.42: via-branch = "branch" EQUAL token).
    start = text.find(";branch=") + 8
    if start > 7 and len(text) <= CACHED_VALUE_MAX and "," not in text and '"' not in text:
        end = text.find(";", start)
        if end < 0:
            end = len(text)
        branch = text[start:end]
        if _TOKEN_FULL(branch) is not None:
            try:
                via = _via_template(text[:start] + _BRANCH_SLOT + text[end:])
            except RemoteProtocolError:
                return _parse_via_items(text)  # the error names the text as written
            params = via.params
            for i, (name, value) in enumerate(params):
                if value == _BRANCH_SLOT and name == "branch":
                    return (
                        Via(
                            via.transport,
                            via.host,
                            via.port,
                            (*params[:i], ("branch", branch), *params[i + 1 :]),
                            via.protocol,
                        ),
                    )
    return _parse_via_items(text)


_via_c: Callable[[str], tuple[str, str, int | None, Params, str] | None] | None
try:  # the C reader of a common Via value (setup.py, optional): the Python paths are used without it
    from mcs_edge._sipscan import via as _via_c
except ImportError:  # pragma: no cover - depends on the build
    _via_c = None

_BRANCH_SLOT = "z9hG4bK-"
_TOKEN_FULL = _abnf.TOKEN_RE.fullmatch


@functools.lru_cache(maxsize=1024)
def _via_template(text: str) -> Via:
    """A one-element Via value whose branch is ``_BRANCH_SLOT`` (errors are not cached)."""
    return _parse_via_items(text)[0]


def _parse_via_items(text: str) -> tuple[Via, ...]:
    out: list[Via] = []
    for item in split_commas(text):
        m = _abnf.VIA_RE.fullmatch(item)
        if m is None:
            raise RemoteProtocolError(f"invalid Via {item[:80]!r}", 400)
        port = m["port"]
        protocol = f"{m['protocol']}/{m['version']}"
        out.append(
            Via(
                transport=m["transport"].upper(),
                host=m["host"],
                port=_port(port) if port is not None else None,
                params=_parse_generic_params(m["params"]),
                protocol="SIP/2.0" if protocol.upper() == "SIP/2.0" else protocol,
            )
        )
    return tuple(out)


@fast_init
@dataclass(frozen=True, slots=True)
class CSeq:
    """``CSeq: seq method`` (RFC 3261 s.8.1.1.5: seq < 2**31)."""

    seq: int
    method: str = field(default="")

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


def parse_cseq(text: str) -> CSeq:
    """Parse a CSeq value; the sequence number must be below 2**31 (cached, see ``parse_uri``)."""
    if len(text) <= CACHED_VALUE_MAX:
        return _parse_cseq_cached(text)
    return _parse_cseq(text)


def _parse_cseq(text: str) -> CSeq:
    m = _abnf.CSEQ_RE.fullmatch(text)
    if m is None:
        raise RemoteProtocolError(f"invalid CSeq {text[:80]!r}", 400)
    digits = m["seq"]
    if len(digits) > 10 or int(digits) >= 2**31:
        raise RemoteProtocolError("CSeq sequence number out of range", 400)
    return CSeq(int(digits), m["method"])


_parse_cseq_cached = functools.lru_cache(maxsize=4096)(_parse_cseq)


def parse_max_forwards(text: str) -> int:
    """Parse Max-Forwards: ``1*DIGIT`` in 0..255 (leading zeros allowed, RFC 4475 s.3.1.1.1)."""
    if not text.isdigit() or not text.isascii() or len(text) > 10:
        raise RemoteProtocolError(f"invalid Max-Forwards {text[:20]!r}", 400)
    value = int(text)
    if value > 255:
        raise RemoteProtocolError(f"Max-Forwards {value} out of range", 400)
    return value
