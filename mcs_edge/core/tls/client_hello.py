"""The first flight of a TLS client, read before any cryptography: its ClientHello.

In: the bytes a connection has received so far. Out: :data:`NEED_MORE`, a :class:`ClientHello`
(server name, ALPN offer, versions) or :class:`Malformed` (with a short stable reason). The TLS
adapter (tx/tls/stdlib_tls.py) calls :func:`parse_client_hello` on its buffer until the answer is
not ``NEED_MORE``, chooses the certificate context from the result, and only then hands the very
same bytes to OpenSSL. Nothing here is kept between calls; parsing is bounded by
:data:`MAX_HELLO` (a larger ClientHello is refused, not buffered).

The wire format, from the RFCs:

RFC 8446 s.5.1 (record layer)::

    struct { ContentType type;            /* 22 = handshake */
             ProtocolVersion legacy_record_version;   /* 0x0301..0x0303; first byte 3 */
             uint16 length;               /* MUST NOT exceed 2^14 */
             opaque fragment[length]; } TLSPlaintext;

  "Handshake messages MAY be coalesced into a single TLSPlaintext record or fragmented across
  several records"; "Implementations MUST NOT send zero-length fragments of Handshake types";
  the records of one message carry nothing else in between.

RFC 8446 s.4 and s.4.1.2 (handshake, ClientHello; RFC 5246 s.7.4.1.2 is the same layout)::

    struct { HandshakeType msg_type;  /* 1 = client_hello */
             uint24 length; ... } Handshake;
    struct { ProtocolVersion legacy_version;          /* 0x0303 */
             Random random;                           /* 32 bytes */
             opaque legacy_session_id<0..32>;
             CipherSuite cipher_suites<2..2^16-2>;
             opaque legacy_compression_methods<1..2^8-1>;
             Extension extensions<8..2^16-1>; } ClientHello;
    struct { ExtensionType extension_type; opaque extension_data<0..2^16-1>; } Extension;

  TLS 1.2 allows the extensions block to be absent (RFC 5246 s.7.4.1.2: "the presence of
  extensions can be detected by determining whether there are bytes following the
  compression_methods"). RFC 8446 s.4.2: "There MUST NOT be more than one extension of the same
  type in a given extension block."

RFC 6066 s.3 (server_name, type 0)::

    struct { NameType name_type; /* 0 = host_name */ HostName host_name<1..2^16-1>; } ServerName;
    struct { ServerName server_name_list<1..2^16-1> } ServerNameList;

  "The ServerNameList MUST NOT contain more than one name of the same name_type"; the host name is
  ASCII without a trailing dot; IP literals are not permitted.

RFC 7301 s.3.1 (application_layer_protocol_negotiation, type 16)::

    opaque ProtocolName<1..2^8-1>;
    struct { ProtocolName protocol_name_list<2..2^16-1> } ProtocolNameList;

  "Empty strings MUST NOT be included and byte strings MUST NOT be truncated."

RFC 8446 s.4.2.1 (supported_versions, type 43, in a ClientHello)::

    struct { ProtocolVersion versions<2..254>; } SupportedVersions;

Decision table (first matching row wins):

==============================================  ==========================
input                                           result
==============================================  ==========================
first byte not 22 (handshake), or a record      ``Malformed("not_tls")``
version whose first byte is not 3
a record longer than 2^14, or empty             ``Malformed("record")``
a later record of another content type          ``Malformed("record")``
a hello spread over more than                   ``Malformed("record")``
:data:`MAX_RECORDS` records
handshake type not client_hello                 ``Malformed("not_client_hello")``
handshake length over :data:`MAX_HELLO`         ``Malformed("too_large")``
bytes still missing (record or message)         ``NEED_MORE``
a length running past its container, trailing   ``Malformed("decode")``
bytes, a vector length out of its bounds
the same extension twice                        ``Malformed("duplicate_extension")``
an SNI list with no host_name or two, or a      ``Malformed("server_name")``
name that is not printable ASCII (1..255)
an empty or truncated ALPN name                 ``Malformed("alpn")``
a supported_versions vector of odd length       ``Malformed("supported_versions")``
otherwise                                       :class:`ClientHello`
==============================================  ==========================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "MAX_HELLO",
    "MAX_RECORDS",
    "NEED_MORE",
    "ClientHello",
    "Malformed",
    "NeedMore",
    "parse_client_hello",
]

#: The largest ClientHello body accepted (bytes of the handshake message). Real ones are 200-600
#: bytes (post-quantum key shares push Chromium's to about 1,800); 16 KiB is one full record.
MAX_HELLO: Final = 16384
_MAX_RECORD: Final = 16384  # RFC 8446 s.5.1: 2^14
#: Records one ClientHello may span. Clients send one (two for the largest post-quantum key
#: shares); a hello in many tiny records would make every read re-scan them all.
MAX_RECORDS: Final = 8
_HANDSHAKE: Final = 22
_CLIENT_HELLO: Final = 1
_EXT_SERVER_NAME: Final = 0
_EXT_ALPN: Final = 16
_EXT_SUPPORTED_VERSIONS: Final = 43


class NeedMore:
    """More bytes are needed before the ClientHello can be judged."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_MORE"


NEED_MORE: Final = NeedMore()


@dataclass(frozen=True, slots=True)
class Malformed:
    """Not a ClientHello the edge accepts; ``reason`` is one of the codes of the table above."""

    reason: str


@dataclass(frozen=True, slots=True)
class ClientHello:
    """What the edge needs from a ClientHello to choose a certificate."""

    #: the SNI host name, lower case, or None when the client sent no server_name extension
    server_name: str | None
    #: the ALPN protocols offered, in the client's order (empty: no ALPN extension)
    alpn: tuple[bytes, ...]
    #: ClientHello.legacy_version (0x0303 for TLS 1.2 and 1.3)
    legacy_version: int
    #: supported_versions (RFC 8446 s.4.2.1), empty when absent (a TLS 1.2 client)
    supported_versions: tuple[int, ...]

    @property
    def offers_tls13(self) -> bool:
        return 0x0304 in self.supported_versions


class _Decode(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_client_hello(data: bytes | bytearray | memoryview) -> ClientHello | NeedMore | Malformed:
    """Judge the first bytes of a TLS connection (see the module's decision table)."""
    buf = memoryview(data)
    n = len(buf)
    message = bytearray()
    pos = 0
    need: int | None = None  # the handshake message's full length, once its header is in
    records = 0
    while True:
        if pos >= n:
            return NEED_MORE
        records += 1
        if records > MAX_RECORDS:
            return Malformed("record")
        if buf[pos] != _HANDSHAKE:
            return Malformed("not_tls" if pos == 0 else "record")
        if pos + 1 < n and buf[pos + 1] != 3:
            return Malformed("not_tls")
        if pos + 5 > n:
            return NEED_MORE
        length = (buf[pos + 3] << 8) | buf[pos + 4]
        if length == 0 or length > _MAX_RECORD:
            return Malformed("record")
        chunk = buf[pos + 5 : pos + 5 + length]
        message += chunk
        if need is None and len(message) >= 1 and message[0] != _CLIENT_HELLO:
            return Malformed("not_client_hello")
        if need is None and len(message) >= 4:
            need = int.from_bytes(message[1:4], "big")
            if need > MAX_HELLO:
                return Malformed("too_large")
        if need is not None and len(message) >= 4 + need:
            break
        if len(chunk) < length:
            return NEED_MORE  # the record itself is still arriving
        pos += 5 + length
    try:
        return _client_hello(memoryview(message)[4 : 4 + need])
    except _Decode as exc:
        return Malformed(exc.reason)


def _vector(body: memoryview, pos: int, size: int, low: int, high: int) -> tuple[memoryview, int]:
    """The vector at ``pos`` with a ``size``-byte length, within [low, high]; and the next position."""
    if pos + size > len(body):
        raise _Decode("decode")
    length = int.from_bytes(body[pos : pos + size], "big")
    end = pos + size + length
    if length < low or length > high or end > len(body):
        raise _Decode("decode")
    return body[pos + size : end], end


def _client_hello(body: memoryview) -> ClientHello:
    if len(body) < 2 + 32:
        raise _Decode("decode")
    legacy_version = (body[0] << 8) | body[1]
    pos = 2 + 32
    _, pos = _vector(body, pos, 1, 0, 32)  # legacy_session_id
    suites, pos = _vector(body, pos, 2, 2, 0xFFFE)
    if len(suites) % 2:
        raise _Decode("decode")
    _, pos = _vector(body, pos, 1, 1, 0xFF)  # legacy_compression_methods
    server_name: str | None = None
    alpn: tuple[bytes, ...] = ()
    versions: tuple[int, ...] = ()
    if pos == len(body):  # TLS 1.2 without extensions
        return ClientHello(None, (), legacy_version, ())
    extensions, pos = _vector(body, pos, 2, 0, 0xFFFF)
    if pos != len(body):
        raise _Decode("decode")
    seen: set[int] = set()
    epos = 0
    while epos < len(extensions):
        if epos + 4 > len(extensions):
            raise _Decode("decode")
        ext_type = (extensions[epos] << 8) | extensions[epos + 1]
        ext, epos = _vector(extensions, epos + 2, 2, 0, 0xFFFF)
        if ext_type in seen:
            raise _Decode("duplicate_extension")
        seen.add(ext_type)
        if ext_type == _EXT_SERVER_NAME:
            server_name = _server_name(ext)
        elif ext_type == _EXT_ALPN:
            alpn = _alpn(ext)
        elif ext_type == _EXT_SUPPORTED_VERSIONS:
            versions = _supported_versions(ext)
    return ClientHello(server_name, alpn, legacy_version, versions)


def _server_name(ext: memoryview) -> str | None:
    try:
        names, end = _vector(ext, 0, 2, 1, 0xFFFF)
    except _Decode:
        raise _Decode("server_name") from None
    if end != len(ext):
        raise _Decode("server_name")
    host: bytes | None = None
    pos = 0
    while pos < len(names):
        name_type = names[pos]
        try:
            name, pos = _vector(names, pos + 1, 2, 1, 0xFFFF)
        except _Decode:
            raise _Decode("server_name") from None
        if name_type != 0:
            continue  # unknown name types are skipped (none is defined besides host_name)
        if host is not None:
            raise _Decode("server_name")
        host = bytes(name)
    if host is None or len(host) > 255 or any(b < 0x21 or b > 0x7E for b in host):
        raise _Decode("server_name")
    return host.decode("ascii").lower()


def _alpn(ext: memoryview) -> tuple[bytes, ...]:
    try:
        names, end = _vector(ext, 0, 2, 2, 0xFFFF)
    except _Decode:
        raise _Decode("alpn") from None
    if end != len(ext):
        raise _Decode("alpn")
    out: list[bytes] = []
    pos = 0
    while pos < len(names):
        try:
            name, pos = _vector(names, pos, 1, 1, 0xFF)
        except _Decode:
            raise _Decode("alpn") from None
        out.append(bytes(name))
    return tuple(out)


def _supported_versions(ext: memoryview) -> tuple[int, ...]:
    try:
        versions, end = _vector(ext, 0, 1, 2, 254)
    except _Decode:
        raise _Decode("supported_versions") from None
    if end != len(ext) or len(versions) % 2:
        raise _Decode("supported_versions")
    return tuple((versions[i] << 8) | versions[i + 1] for i in range(0, len(versions), 2))
