"""STUN message codec (RFC 8489), with the ICE (RFC 8445) and TURN (RFC 8656) attributes.

Theory of operation
-------------------
A STUN message is a 20-byte header followed by TLV attributes padded to 4 bytes::

    0                   1                   2                   3
    |0 0|  STUN message type (14)  |        message length         |
    |                  magic cookie 0x2112A442                      |
    |                 transaction id (96 bits) ...                  |

The 14-bit type interleaves a 12-bit *method* with a 2-bit *class* (request, indication, success
response, error response): ``M11..M7 C1 M6..M4 C0 M3..M0``.

Parsing is done in two layers:

* :func:`parse_view` is the fast path. It checks the header and walks the attributes once,
  recording ``type -> (value offset, value length)`` for the first occurrence of each attribute and
  the offsets of MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and FINGERPRINT. It decodes nothing
  and copies no attribute values; the ICE-lite responder runs on it for every connectivity check.
  A :class:`MessageView` verifies integrity (:meth:`MessageView.check_integrity`, HMAC over the
  prefix up to the integrity attribute with the length field adjusted, compared with
  :func:`hmac.compare_digest`) and the fingerprint (CRC-32 xor ``0x5354554E``).
* :meth:`Message.parse` builds on the view and decodes every attribute into a frozen dataclass
  (:class:`XorMappedAddress`, :class:`Username`, :class:`ErrorCode` ...). Attributes of unknown
  type are kept as :class:`UnknownAttribute`; the comprehension-required ones (type < 0x8000) are
  listed by :meth:`Message.unknown_comprehension_required` so a server can answer 420.

As RFC 8489 s.14.5 requires, every attribute after MESSAGE-INTEGRITY is ignored except
MESSAGE-INTEGRITY-SHA256 and FINGERPRINT, and FINGERPRINT must be the last attribute.

Serialising (:meth:`Message.serialize`) writes the attributes in order and, on request, appends
MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and FINGERPRINT computed over the bytes before them.
Padding bytes are arbitrary on the wire; a parsed message remembers the padding byte it saw
(``padding``) so that messages whose padding is uniform (all RFC 5769 vectors) round-trip
byte-exactly.

Errors: header problems (not STUN at all) raise :class:`RemoteProtocolError` with
``status_hint=None`` (drop silently); a well-formed header with malformed attributes raises it with
``status_hint=400`` (a request may be answered with 400 Bad Request). No other exception escapes
the parsers.

Keys: short-term credentials use the password itself (:func:`short_term_key`); long-term ones use
``MD5(username ":" realm ":" password)`` or its SHA-256 variant (:func:`long_term_key`). SASLprep
is not applied: ICE passwords and TURN REST passwords are ASCII.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar, TypeVar

from mcs_edge.core.randomness import RandomBytes
from mcs_edge.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "ADDRESS_FAMILY_IPV4",
    "ADDRESS_FAMILY_IPV6",
    "CLASS_ERROR",
    "CLASS_INDICATION",
    "CLASS_REQUEST",
    "CLASS_SUCCESS",
    "FINGERPRINT_XOR",
    "HEADER_LENGTH",
    "MAGIC_COOKIE",
    "METHOD_ALLOCATE",
    "METHOD_BINDING",
    "METHOD_CHANNEL_BIND",
    "METHOD_CREATE_PERMISSION",
    "METHOD_DATA",
    "METHOD_REFRESH",
    "METHOD_SEND",
    "PASSWORD_ALGORITHM_MD5",
    "PASSWORD_ALGORITHM_SHA256",
    "REASON_PHRASES",
    "TRANSPORT_UDP",
    "AlternateDomain",
    "AlternateServer",
    "Attribute",
    "ChannelNumber",
    "Data",
    "DontFragment",
    "ErrorCode",
    "EvenPort",
    "Fingerprint",
    "IceControlled",
    "IceControlling",
    "Lifetime",
    "MappedAddress",
    "Message",
    "MessageIntegrity",
    "MessageIntegritySha256",
    "MessageView",
    "Nonce",
    "PasswordAlgorithm",
    "PasswordAlgorithms",
    "Priority",
    "Realm",
    "RequestedAddressFamily",
    "RequestedTransport",
    "ReservationToken",
    "Software",
    "UnknownAttribute",
    "UnknownAttributes",
    "UseCandidate",
    "Userhash",
    "Username",
    "XorMappedAddress",
    "XorPeerAddress",
    "XorRelayedAddress",
    "append_fingerprint",
    "append_integrity",
    "append_integrity_sha256",
    "decode_type",
    "encode_type",
    "encode_xor_address",
    "is_stun",
    "long_term_key",
    "parse_view",
    "short_term_key",
]

# --- header -------------------------------------------------------------------------------------

MAGIC_COOKIE = 0x2112A442
MAGIC_COOKIE_BYTES = MAGIC_COOKIE.to_bytes(4, "big")
HEADER_LENGTH = 20
FINGERPRINT_XOR = 0x5354554E

METHOD_BINDING = 0x001
METHOD_ALLOCATE = 0x003
METHOD_REFRESH = 0x004
METHOD_SEND = 0x006
METHOD_DATA = 0x007
METHOD_CREATE_PERMISSION = 0x008
METHOD_CHANNEL_BIND = 0x009

CLASS_REQUEST = 0b00
CLASS_INDICATION = 0b01
CLASS_SUCCESS = 0b10
CLASS_ERROR = 0b11

ADDRESS_FAMILY_IPV4 = 0x01
ADDRESS_FAMILY_IPV6 = 0x02
TRANSPORT_UDP = 17
PASSWORD_ALGORITHM_MD5 = 0x0001
PASSWORD_ALGORITHM_SHA256 = 0x0002

# --- attribute types (IANA "STUN Attributes" registry) ------------------------------------------

ATTR_MAPPED_ADDRESS = 0x0001
ATTR_USERNAME = 0x0006
ATTR_MESSAGE_INTEGRITY = 0x0008
ATTR_ERROR_CODE = 0x0009
ATTR_UNKNOWN_ATTRIBUTES = 0x000A
ATTR_CHANNEL_NUMBER = 0x000C
ATTR_LIFETIME = 0x000D
ATTR_XOR_PEER_ADDRESS = 0x0012
ATTR_DATA = 0x0013
ATTR_REALM = 0x0014
ATTR_NONCE = 0x0015
ATTR_XOR_RELAYED_ADDRESS = 0x0016
ATTR_REQUESTED_ADDRESS_FAMILY = 0x0017
ATTR_EVEN_PORT = 0x0018
ATTR_REQUESTED_TRANSPORT = 0x0019
ATTR_DONT_FRAGMENT = 0x001A
ATTR_MESSAGE_INTEGRITY_SHA256 = 0x001C
ATTR_PASSWORD_ALGORITHM = 0x001D
ATTR_USERHASH = 0x001E
ATTR_XOR_MAPPED_ADDRESS = 0x0020
ATTR_RESERVATION_TOKEN = 0x0022
ATTR_PRIORITY = 0x0024
ATTR_USE_CANDIDATE = 0x0025
ATTR_PASSWORD_ALGORITHMS = 0x8002
ATTR_ALTERNATE_DOMAIN = 0x8003
ATTR_SOFTWARE = 0x8022
ATTR_ALTERNATE_SERVER = 0x8023
ATTR_FINGERPRINT = 0x8028
ATTR_ICE_CONTROLLED = 0x8029
ATTR_ICE_CONTROLLING = 0x802A

REASON_PHRASES: dict[int, str] = {
    300: "Try Alternate",
    400: "Bad Request",
    401: "Unauthenticated",
    403: "Forbidden",
    420: "Unknown Attribute",
    437: "Allocation Mismatch",
    438: "Stale Nonce",
    440: "Address Family not Supported",
    441: "Wrong Credentials",
    442: "Unsupported Transport Protocol",
    443: "Peer Address Family Mismatch",
    486: "Allocation Quota Reached",
    487: "Role Conflict",
    500: "Server Error",
    508: "Insufficient Capacity",
}

_HEADER = struct.Struct("!HHI")
_ATTR_HEADER = struct.Struct("!HH")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_ADDR_HEADER = struct.Struct("!xBH")
_PAD = (b"", b"\x00\x00\x00", b"\x00\x00", b"\x00")

_AFTER_INTEGRITY = frozenset((ATTR_MESSAGE_INTEGRITY_SHA256, ATTR_FINGERPRINT))
_MAX_TEXT = {ATTR_USERNAME: 513, ATTR_REALM: 763, ATTR_NONCE: 763, ATTR_SOFTWARE: 763}


def encode_type(method: int, cls: int) -> int:
    """Interleave a 12-bit method and a 2-bit class into the 14-bit STUN message type."""
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((cls & 1) << 4)
        | ((cls & 2) << 7)
    )


def decode_type(msg_type: int) -> tuple[int, int]:
    """Split a 14-bit STUN message type into ``(method, class)``."""
    method = (msg_type & 0x000F) | ((msg_type >> 1) & 0x0070) | ((msg_type >> 2) & 0x0F80)
    cls = ((msg_type >> 4) & 1) | ((msg_type >> 7) & 2)
    return method, cls


def is_stun(data: bytes) -> bool:
    """Cheap test: could ``data`` be a STUN message (RFC 7983 first byte, cookie, length)?"""
    return (
        len(data) >= HEADER_LENGTH and data[0] < 0x40 and data[4:8] == MAGIC_COOKIE_BYTES and not data[3] & 3
    )


def short_term_key(password: str) -> bytes:
    """The HMAC key of a short-term credential (ICE): the password itself, UTF-8."""
    return password.encode()


def long_term_key(username: str, realm: str, password: str, algorithm: int = PASSWORD_ALGORITHM_MD5) -> bytes:
    """The long-term credential key: ``H(username ":" realm ":" password)``, H = MD5 or SHA-256."""
    material = f"{username}:{realm}:{password}".encode()
    if algorithm == PASSWORD_ALGORITHM_MD5:
        return hashlib.md5(material, usedforsecurity=False).digest()
    if algorithm == PASSWORD_ALGORITHM_SHA256:
        return hashlib.sha256(material).digest()
    raise LocalProtocolError(f"unknown password algorithm {algorithm:#x}")


# --- fast path: the view ------------------------------------------------------------------------


class MessageView:
    """A checked, undecoded STUN message: header fields plus attribute offsets (see module doc)."""

    __slots__ = (
        "attrs",
        "cls",
        "data",
        "fingerprint_at",
        "integrity_at",
        "integrity_sha256_at",
        "method",
        "msg_type",
        "transaction_id",
    )

    def __init__(
        self,
        data: bytes,
        msg_type: int,
        attrs: dict[int, tuple[int, int]],
        integrity_at: int,
        integrity_sha256_at: int,
        fingerprint_at: int,
    ) -> None:
        self.data = data
        self.msg_type = msg_type
        self.method, self.cls = decode_type(msg_type)
        self.transaction_id = data[8:20]
        #: first occurrence of each attribute type -> (value offset, value length); attributes
        #: after MESSAGE-INTEGRITY and the integrity/fingerprint attributes themselves are not here
        self.attrs = attrs
        #: offsets of the TLV headers of these attributes, -1 when absent
        self.integrity_at = integrity_at
        self.integrity_sha256_at = integrity_sha256_at
        self.fingerprint_at = fingerprint_at

    def iter_attributes(self) -> Iterator[tuple[int, int, int]]:
        """Every processed attribute in wire order as ``(type, value offset, value length)``,
        duplicates included, those ignored after MESSAGE-INTEGRITY left out."""
        data = self.data
        size = len(data)
        pos = HEADER_LENGTH
        after_integrity = False
        while pos < size:
            attr_type, attr_len = _ATTR_HEADER.unpack_from(data, pos)
            if not after_integrity or (
                attr_type in _AFTER_INTEGRITY
                and pos
                in (
                    self.integrity_sha256_at,
                    self.fingerprint_at,
                )
            ):
                yield attr_type, pos + 4, attr_len
            if attr_type in _AFTER_INTEGRITY or attr_type == ATTR_MESSAGE_INTEGRITY:
                after_integrity = True
            pos += 4 + attr_len + (-attr_len & 3)

    def value(self, attr_type: int) -> bytes | None:
        """The raw value of the first attribute of ``attr_type``, or None."""
        where = self.attrs.get(attr_type)
        if where is None:
            return None
        return self.data[where[0] : where[0] + where[1]]

    def has(self, attr_type: int) -> bool:
        """True if the message carries an attribute of ``attr_type`` (before MESSAGE-INTEGRITY)."""
        return attr_type in self.attrs

    def check_integrity(self, key: bytes) -> bool:
        """Verify MESSAGE-INTEGRITY (HMAC-SHA1) with ``key``; False if absent or wrong."""
        at = self.integrity_at
        if at < 0:
            return False
        data = self.data
        buf = bytearray(data[:at])
        _U16.pack_into(buf, 2, at + 24 - HEADER_LENGTH)
        return hmac.compare_digest(hmac.digest(key, buf, "sha1"), data[at + 4 : at + 24])

    def check_integrity_sha256(self, key: bytes) -> bool:
        """Verify MESSAGE-INTEGRITY-SHA256 (possibly truncated) with ``key``; False if absent or wrong."""
        at = self.integrity_sha256_at
        if at < 0:
            return False
        data = self.data
        size = _U16.unpack_from(data, at + 2)[0]
        buf = bytearray(data[:at])
        _U16.pack_into(buf, 2, at + 4 + size - HEADER_LENGTH)
        mac = hmac.digest(key, buf, "sha256")[:size]
        return hmac.compare_digest(mac, data[at + 4 : at + 4 + size])

    def check_fingerprint(self) -> bool:
        """Verify FINGERPRINT; False if absent or wrong."""
        at = self.fingerprint_at
        if at < 0:
            return False
        data = self.data
        expected = (zlib.crc32(data[:at]) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
        return bool(_U32.unpack_from(data, at + 4)[0] == expected)

    def unknown_comprehension_required(self) -> list[int]:
        """Comprehension-required attribute types (< 0x8000) that this codec does not know."""
        return [t for t in self.attrs if t < 0x8000 and t not in _DECODERS]


def parse_view(data: bytes) -> MessageView:
    """Check the header and index the attributes of one STUN message (the fast path).

    ``data`` must be exactly one message (a UDP datagram, or one frame cut from a stream).
    Raises :class:`RemoteProtocolError`: hint None for a bad header, 400 for bad attributes.
    """
    size = len(data)
    if size < HEADER_LENGTH:
        raise RemoteProtocolError("STUN: shorter than a header", None)
    msg_type, length, cookie = _HEADER.unpack_from(data)
    if msg_type & 0xC000 or cookie != MAGIC_COOKIE:
        raise RemoteProtocolError("STUN: bad first bits or magic cookie", None)
    if length & 3 or length + HEADER_LENGTH != size:
        raise RemoteProtocolError("STUN: length field does not match the datagram", None)
    attrs: dict[int, tuple[int, int]] = {}
    integrity_at = integrity_sha256_at = fingerprint_at = -1
    pos = HEADER_LENGTH
    unpack = _ATTR_HEADER.unpack_from
    while pos < size:
        if fingerprint_at >= 0:
            raise RemoteProtocolError("STUN: attribute after FINGERPRINT", 400)
        if pos + 4 > size:
            raise RemoteProtocolError("STUN: truncated attribute header", 400)
        attr_type, attr_len = unpack(data, pos)
        if pos + 4 + attr_len > size:
            raise RemoteProtocolError(f"STUN: attribute {attr_type:#06x} overruns the message", 400)
        if attr_type == ATTR_FINGERPRINT:
            if attr_len != 4:
                raise RemoteProtocolError("STUN: FINGERPRINT length is not 4", 400)
            fingerprint_at = pos
        elif attr_type == ATTR_MESSAGE_INTEGRITY_SHA256:
            if integrity_sha256_at < 0:
                if attr_len < 16 or attr_len > 32 or attr_len & 3:
                    raise RemoteProtocolError("STUN: bad MESSAGE-INTEGRITY-SHA256 length", 400)
                integrity_sha256_at = pos
        elif integrity_at >= 0 or integrity_sha256_at >= 0:
            pass  # RFC 8489 s.14.5: ignored after MESSAGE-INTEGRITY
        elif attr_type == ATTR_MESSAGE_INTEGRITY:
            if attr_len != 20:
                raise RemoteProtocolError("STUN: MESSAGE-INTEGRITY length is not 20", 400)
            integrity_at = pos
        elif attr_type not in attrs:
            attrs[attr_type] = (pos + 4, attr_len)
        pos += 4 + attr_len + (-attr_len & 3)
    if pos != size:
        raise RemoteProtocolError("STUN: last attribute padding overruns the message", 400)
    return MessageView(data, msg_type, attrs, integrity_at, integrity_sha256_at, fingerprint_at)


# --- typed attributes ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attribute:
    """Base of every typed attribute; ``TYPE`` is the IANA attribute number."""

    TYPE: ClassVar[int] = -1

    @property
    def attr_type(self) -> int:
        """The attribute number on the wire."""
        return self.TYPE

    @classmethod
    def decode(cls, value: bytes, transaction_id: bytes) -> Attribute:
        """Decode an attribute value (without the TLV header and padding)."""
        raise NotImplementedError

    def encode(self, transaction_id: bytes) -> bytes:
        """The attribute value (without the TLV header and padding)."""
        raise NotImplementedError


_A = TypeVar("_A", bound=Attribute)


def _bad(name: str, why: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"STUN: {name}: {why}", 400)


def _decode_address(name: str, value: bytes) -> tuple[int, int, bytes]:
    if len(value) < 4:
        raise _bad(name, "too short")
    family, port = _ADDR_HEADER.unpack_from(value)
    if family == ADDRESS_FAMILY_IPV4:
        if len(value) != 8:
            raise _bad(name, "IPv4 address length is not 8")
    elif family == ADDRESS_FAMILY_IPV6:
        if len(value) != 20:
            raise _bad(name, "IPv6 address length is not 20")
    else:
        raise _bad(name, f"unknown address family {family}")
    return family, port, value[4:]


def _ip_to_str(packed: bytes) -> str:
    if len(packed) == 4:
        return f"{packed[0]}.{packed[1]}.{packed[2]}.{packed[3]}"
    return str(ipaddress.IPv6Address(packed))


def _ip_to_bytes(ip: str) -> bytes:
    try:
        return ipaddress.ip_address(ip).packed
    except ValueError:
        raise LocalProtocolError(f"STUN: not an IP address: {ip!r}") from None


def _xor_ip(packed: bytes, transaction_id: bytes) -> bytes:
    mask = MAGIC_COOKIE_BYTES + transaction_id if len(packed) == 16 else MAGIC_COOKIE_BYTES
    n = len(packed)
    return (int.from_bytes(packed, "big") ^ int.from_bytes(mask[:n], "big")).to_bytes(n, "big")


def encode_xor_address(ip: str, port: int, transaction_id: bytes) -> bytes:
    """The value of an XOR-*-ADDRESS attribute for ``(ip, port)``."""
    packed = _ip_to_bytes(ip)
    family = ADDRESS_FAMILY_IPV4 if len(packed) == 4 else ADDRESS_FAMILY_IPV6
    return _ADDR_HEADER.pack(family, port ^ 0x2112) + _xor_ip(packed, transaction_id)


@dataclass(frozen=True, slots=True)
class _AddressAttribute(Attribute):
    ip: str
    port: int

    @property
    def address(self) -> tuple[str, int]:
        """``(ip, port)``."""
        return (self.ip, self.port)

    @classmethod
    def decode(cls, value: bytes, transaction_id: bytes) -> _AddressAttribute:
        """Decode a plain (non-XOR) address attribute."""
        _family, port, packed = _decode_address(cls.__name__, value)
        return cls(_ip_to_str(packed), port)

    def encode(self, transaction_id: bytes) -> bytes:
        """Encode a plain (non-XOR) address attribute."""
        packed = _ip_to_bytes(self.ip)
        family = ADDRESS_FAMILY_IPV4 if len(packed) == 4 else ADDRESS_FAMILY_IPV6
        return _ADDR_HEADER.pack(family, self.port) + packed


@dataclass(frozen=True, slots=True)
class _XorAddressAttribute(_AddressAttribute):
    @classmethod
    def decode(cls, value: bytes, transaction_id: bytes) -> _AddressAttribute:
        """Decode an XOR address attribute (port xor 0x2112, address xor cookie [+ txid])."""
        _family, port, packed = _decode_address(cls.__name__, value)
        return cls(_ip_to_str(_xor_ip(packed, transaction_id)), port ^ 0x2112)

    def encode(self, transaction_id: bytes) -> bytes:
        """Encode an XOR address attribute."""
        return encode_xor_address(self.ip, self.port, transaction_id)


@dataclass(frozen=True, slots=True)
class MappedAddress(_AddressAttribute):
    """MAPPED-ADDRESS (RFC 8489 s.14.1)."""

    TYPE: ClassVar[int] = ATTR_MAPPED_ADDRESS


@dataclass(frozen=True, slots=True)
class AlternateServer(_AddressAttribute):
    """ALTERNATE-SERVER (RFC 8489 s.14.15)."""

    TYPE: ClassVar[int] = ATTR_ALTERNATE_SERVER


@dataclass(frozen=True, slots=True)
class XorMappedAddress(_XorAddressAttribute):
    """XOR-MAPPED-ADDRESS (RFC 8489 s.14.2)."""

    TYPE: ClassVar[int] = ATTR_XOR_MAPPED_ADDRESS


@dataclass(frozen=True, slots=True)
class XorPeerAddress(_XorAddressAttribute):
    """XOR-PEER-ADDRESS (RFC 8656 s.18.3)."""

    TYPE: ClassVar[int] = ATTR_XOR_PEER_ADDRESS


@dataclass(frozen=True, slots=True)
class XorRelayedAddress(_XorAddressAttribute):
    """XOR-RELAYED-ADDRESS (RFC 8656 s.18.5)."""

    TYPE: ClassVar[int] = ATTR_XOR_RELAYED_ADDRESS


@dataclass(frozen=True, slots=True)
class _TextAttribute(Attribute):
    value: str

    @classmethod
    def decode(cls, value: bytes, transaction_id: bytes) -> _TextAttribute:
        """Decode a UTF-8 text attribute, enforcing the RFC size cap."""
        cap = _MAX_TEXT.get(cls.TYPE)
        if cap is not None and len(value) > cap:
            raise _bad(cls.__name__, f"longer than {cap} bytes")
        try:
            return cls(value.decode())
        except UnicodeDecodeError:
            raise _bad(cls.__name__, "not UTF-8") from None

    def encode(self, transaction_id: bytes) -> bytes:
        """Encode as UTF-8."""
        return self.value.encode()


@dataclass(frozen=True, slots=True)
class Username(_TextAttribute):
    """USERNAME (RFC 8489 s.14.3), at most 513 bytes."""

    TYPE: ClassVar[int] = ATTR_USERNAME


@dataclass(frozen=True, slots=True)
class Realm(_TextAttribute):
    """REALM (RFC 8489 s.14.9)."""

    TYPE: ClassVar[int] = ATTR_REALM


@dataclass(frozen=True, slots=True)
class Nonce(_TextAttribute):
    """NONCE (RFC 8489 s.14.10)."""

    TYPE: ClassVar[int] = ATTR_NONCE


@dataclass(frozen=True, slots=True)
class Software(_TextAttribute):
    """SOFTWARE (RFC 8489 s.14.14)."""

    TYPE: ClassVar[int] = ATTR_SOFTWARE


@dataclass(frozen=True, slots=True)
class AlternateDomain(_TextAttribute):
    """ALTERNATE-DOMAIN (RFC 8489 s.14.16)."""

    TYPE: ClassVar[int] = ATTR_ALTERNATE_DOMAIN


@dataclass(frozen=True, slots=True)
class _OpaqueAttribute(Attribute):
    value: bytes
    SIZE: ClassVar[tuple[int, ...]] = ()

    @classmethod
    def decode(cls, value: bytes, transaction_id: bytes) -> _OpaqueAttribute:
        """Keep the value as bytes, checking its fixed size if the type has one."""
        if cls.SIZE and len(value) not in cls.SIZE:
            raise _bad(cls.__name__, f"length {len(value)} not in {cls.SIZE}")
        return cls(value)

    def encode(self, transaction_id: bytes) -> bytes:
        """The bytes as they are."""
        return self.value


@dataclass(frozen=True, slots=True)
class MessageIntegrity(_OpaqueAttribute):
    """MESSAGE-INTEGRITY (RFC 8489 s.14.5): HMAC-SHA1, 20 bytes."""

    TYPE: ClassVar[int] = ATTR_MESSAGE_INTEGRITY
    SIZE: ClassVar[tuple[int, ...]] = (20,)


@dataclass(frozen=True, slots=True)
class MessageIntegritySha256(_OpaqueAttribute):
    """MESSAGE-INTEGRITY-SHA256 (RFC 8489 s.14.6): HMAC-SHA256, 16..32 bytes."""

    TYPE: ClassVar[int] = ATTR_MESSAGE_INTEGRITY_SHA256
    SIZE: ClassVar[tuple[int, ...]] = (16, 20, 24, 28, 32)


@dataclass(frozen=True, slots=True)
class Data(_OpaqueAttribute):
    """DATA (RFC 8656 s.18.4)."""

    TYPE: ClassVar[int] = ATTR_DATA


@dataclass(frozen=True, slots=True)
class ReservationToken(_OpaqueAttribute):
    """RESERVATION-TOKEN (RFC 8656 s.18.9), 8 bytes."""

    TYPE: ClassVar[int] = ATTR_RESERVATION_TOKEN
    SIZE: ClassVar[tuple[int, ...]] = (8,)


@dataclass(frozen=True, slots=True)
class Userhash(_OpaqueAttribute):
    """USERHASH (RFC 8489 s.14.4): SHA-256(username ":" realm), 32 bytes."""

    TYPE: ClassVar[int] = ATTR_USERHASH
    SIZE: ClassVar[tuple[int, ...]] = (32,)


@dataclass(frozen=True, slots=True)
class _FlagAttribute(Attribute):
    @classmethod
    def decode(cls, value: bytes, transaction_id: bytes) -> _FlagAttribute:
        """An empty attribute."""
        if value:
            raise _bad(cls.__name__, "must be empty")
        return cls()

    def encode(self, transaction_id: bytes) -> bytes:
        """Empty."""
        return b""


@dataclass(frozen=True, slots=True)
class UseCandidate(_FlagAttribute):
    """USE-CANDIDATE (RFC 8445 s.16.1)."""

    TYPE: ClassVar[int] = ATTR_USE_CANDIDATE


@dataclass(frozen=True, slots=True)
class DontFragment(_FlagAttribute):
    """DONT-FRAGMENT (RFC 8656 s.18.8)."""

    TYPE: ClassVar[int] = ATTR_DONT_FRAGMENT


@dataclass(frozen=True, slots=True)
class _U32Attribute(Attribute):
    value: int

    @classmethod
    def decode(cls, value: bytes, transaction_id: bytes) -> _U32Attribute:
        """A 32-bit unsigned integer."""
        if len(value) != 4:
            raise _bad(cls.__name__, "length is not 4")
        return cls(_U32.unpack(value)[0])

    def encode(self, transaction_id: bytes) -> bytes:
        """A 32-bit unsigned integer."""
        return _U32.pack(self.value)


@dataclass(frozen=True, slots=True)
class Fingerprint(_U32Attribute):
    """FINGERPRINT (RFC 8489 s.14.7): CRC-32 of the message before it, xor 0x5354554E."""

    TYPE: ClassVar[int] = ATTR_FINGERPRINT


@dataclass(frozen=True, slots=True)
class Priority(_U32Attribute):
    """PRIORITY (RFC 8445 s.16.1)."""

    TYPE: ClassVar[int] = ATTR_PRIORITY


@dataclass(frozen=True, slots=True)
class Lifetime(_U32Attribute):
    """LIFETIME in seconds (RFC 8656 s.18.2)."""

    TYPE: ClassVar[int] = ATTR_LIFETIME


@dataclass(frozen=True, slots=True)
class _U64Attribute(Attribute):
    value: int

    @classmethod
    def decode(cls, value: bytes, transaction_id: bytes) -> _U64Attribute:
        """A 64-bit unsigned integer (ICE tie-breaker)."""
        if len(value) != 8:
            raise _bad(cls.__name__, "length is not 8")
        return cls(_U64.unpack(value)[0])

    def encode(self, transaction_id: bytes) -> bytes:
        """A 64-bit unsigned integer."""
        return _U64.pack(self.value)


@dataclass(frozen=True, slots=True)
class IceControlled(_U64Attribute):
    """ICE-CONTROLLED with the sender's tie-breaker (RFC 8445 s.16.1)."""

    TYPE: ClassVar[int] = ATTR_ICE_CONTROLLED


@dataclass(frozen=True, slots=True)
class IceControlling(_U64Attribute):
    """ICE-CONTROLLING with the sender's tie-breaker (RFC 8445 s.16.1)."""

    TYPE: ClassVar[int] = ATTR_ICE_CONTROLLING


@dataclass(frozen=True, slots=True)
class _ByteAndReserved(Attribute):
    value: int

    @classmethod
    def decode(cls, value: bytes, transaction_id: bytes) -> _ByteAndReserved:
        """One byte followed by 3 reserved bytes."""
        if len(value) != 4:
            raise _bad(cls.__name__, "length is not 4")
        return cls(value[0])

    def encode(self, transaction_id: bytes) -> bytes:
        """One byte followed by 3 zero bytes."""
        return bytes((self.value, 0, 0, 0))


@dataclass(frozen=True, slots=True)
class RequestedTransport(_ByteAndReserved):
    """REQUESTED-TRANSPORT (RFC 8656 s.18.7): an IP protocol number, 17 = UDP."""

    TYPE: ClassVar[int] = ATTR_REQUESTED_TRANSPORT


@dataclass(frozen=True, slots=True)
class RequestedAddressFamily(_ByteAndReserved):
    """REQUESTED-ADDRESS-FAMILY (RFC 8656 s.18.10): 1 = IPv4, 2 = IPv6."""

    TYPE: ClassVar[int] = ATTR_REQUESTED_ADDRESS_FAMILY


@dataclass(frozen=True, slots=True)
class ChannelNumber(Attribute):
    """CHANNEL-NUMBER (RFC 8656 s.18.1): 16-bit number and 16 reserved bits."""

    TYPE: ClassVar[int] = ATTR_CHANNEL_NUMBER
    number: int

    @classmethod
    def decode(cls, value: bytes, transaction_id: bytes) -> ChannelNumber:
        """Decode."""
        if len(value) != 4:
            raise _bad("ChannelNumber", "length is not 4")
        return cls(_U16.unpack_from(value)[0])

    def encode(self, transaction_id: bytes) -> bytes:
        """Encode."""
        return _U16.pack(self.number) + b"\x00\x00"


@dataclass(frozen=True, slots=True)
class EvenPort(Attribute):
    """EVEN-PORT (RFC 8656 s.18.6): the R bit asks to reserve the next port."""

    TYPE: ClassVar[int] = ATTR_EVEN_PORT
    reserve: bool

    @classmethod
    def decode(cls, value: bytes, transaction_id: bytes) -> EvenPort:
        """Decode."""
        if len(value) != 1:
            raise _bad("EvenPort", "length is not 1")
        return cls(bool(value[0] & 0x80))

    def encode(self, transaction_id: bytes) -> bytes:
        """Encode."""
        return b"\x80" if self.reserve else b"\x00"


@dataclass(frozen=True, slots=True)
class ErrorCode(Attribute):
    """ERROR-CODE (RFC 8489 s.14.8): a 300..699 code and a UTF-8 reason phrase."""

    TYPE: ClassVar[int] = ATTR_ERROR_CODE
    code: int
    reason: str = ""

    @classmethod
    def decode(cls, value: bytes, transaction_id: bytes) -> ErrorCode:
        """Decode."""
        if len(value) < 4 or len(value) > 4 + 763:
            raise _bad("ErrorCode", "bad length")
        klass = value[2] & 0x07
        number = value[3]
        if not 3 <= klass <= 6 or number > 99:
            raise _bad("ErrorCode", f"bad code {klass}/{number}")
        try:
            reason = value[4:].decode()
        except UnicodeDecodeError:
            raise _bad("ErrorCode", "reason is not UTF-8") from None
        return cls(klass * 100 + number, reason)

    @classmethod
    def for_code(cls, code: int) -> ErrorCode:
        """An ERROR-CODE with the standard reason phrase."""
        return cls(code, REASON_PHRASES.get(code, ""))

    def encode(self, transaction_id: bytes) -> bytes:
        """Encode."""
        if not 300 <= self.code <= 699:
            raise LocalProtocolError(f"STUN: error code {self.code} out of range")
        return bytes((0, 0, self.code // 100, self.code % 100)) + self.reason.encode()


@dataclass(frozen=True, slots=True)
class UnknownAttributes(Attribute):
    """UNKNOWN-ATTRIBUTES (RFC 8489 s.14.9): the attribute types a 420 response complains about."""

    TYPE: ClassVar[int] = ATTR_UNKNOWN_ATTRIBUTES
    types: tuple[int, ...]

    @classmethod
    def decode(cls, value: bytes, transaction_id: bytes) -> UnknownAttributes:
        """Decode."""
        if len(value) & 1:
            raise _bad("UnknownAttributes", "odd length")
        return cls(tuple(t for (t,) in _U16.iter_unpack(value)))

    def encode(self, transaction_id: bytes) -> bytes:
        """Encode."""
        return b"".join(_U16.pack(t) for t in self.types)


def _decode_algorithms(name: str, value: bytes) -> list[tuple[int, bytes]]:
    out = []
    pos = 0
    while pos < len(value):
        if pos + 4 > len(value):
            raise _bad(name, "truncated algorithm")
        alg, plen = _ATTR_HEADER.unpack_from(value, pos)
        end = pos + 4 + plen
        if end > len(value):
            raise _bad(name, "parameters overrun")
        out.append((alg, value[pos + 4 : end]))
        pos = end + (-plen & 3)
    if pos != len(value):
        raise _bad(name, "padding overrun")
    return out


def _encode_algorithm(alg: int, params: bytes) -> bytes:
    return _ATTR_HEADER.pack(alg, len(params)) + params + _PAD[len(params) & 3]


@dataclass(frozen=True, slots=True)
class PasswordAlgorithm(Attribute):
    """PASSWORD-ALGORITHM (RFC 8489 s.14.12): the algorithm the client chose."""

    TYPE: ClassVar[int] = ATTR_PASSWORD_ALGORITHM
    algorithm: int
    parameters: bytes = b""

    @classmethod
    def decode(cls, value: bytes, transaction_id: bytes) -> PasswordAlgorithm:
        """Decode."""
        algs = _decode_algorithms("PasswordAlgorithm", value)
        if len(algs) != 1:
            raise _bad("PasswordAlgorithm", "must hold exactly one algorithm")
        return cls(*algs[0])

    def encode(self, transaction_id: bytes) -> bytes:
        """Encode."""
        return _encode_algorithm(self.algorithm, self.parameters)


@dataclass(frozen=True, slots=True)
class PasswordAlgorithms(Attribute):
    """PASSWORD-ALGORITHMS (RFC 8489 s.14.11): the algorithms a server offers, with parameters."""

    TYPE: ClassVar[int] = ATTR_PASSWORD_ALGORITHMS
    algorithms: tuple[tuple[int, bytes], ...]

    @classmethod
    def decode(cls, value: bytes, transaction_id: bytes) -> PasswordAlgorithms:
        """Decode."""
        return cls(tuple(_decode_algorithms("PasswordAlgorithms", value)))

    def encode(self, transaction_id: bytes) -> bytes:
        """Encode."""
        return b"".join(_encode_algorithm(a, p) for a, p in self.algorithms)


@dataclass(frozen=True, slots=True)
class UnknownAttribute(Attribute):
    """An attribute this codec does not decode, kept as raw bytes."""

    type: int
    value: bytes

    @property
    def attr_type(self) -> int:
        """The attribute number on the wire."""
        return self.type

    def encode(self, transaction_id: bytes) -> bytes:
        """The bytes as they are."""
        return self.value


_DECODER_CLASSES: tuple[type[Attribute], ...] = (
    MappedAddress,
    AlternateServer,
    XorMappedAddress,
    XorPeerAddress,
    XorRelayedAddress,
    Username,
    Realm,
    Nonce,
    Software,
    AlternateDomain,
    MessageIntegrity,
    MessageIntegritySha256,
    Data,
    ReservationToken,
    Userhash,
    UseCandidate,
    DontFragment,
    Fingerprint,
    Priority,
    Lifetime,
    IceControlled,
    IceControlling,
    RequestedTransport,
    RequestedAddressFamily,
    ChannelNumber,
    EvenPort,
    ErrorCode,
    UnknownAttributes,
    PasswordAlgorithm,
    PasswordAlgorithms,
)
_DECODERS: dict[int, type[Attribute]] = {c.TYPE: c for c in _DECODER_CLASSES}


# --- the full message ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """One STUN message with decoded attributes (see the module docstring)."""

    method: int
    cls: int
    transaction_id: bytes
    attributes: tuple[Attribute, ...] = ()
    #: the byte used to pad attribute values to 4 bytes (any value is legal on the wire)
    padding: int = 0

    def __post_init__(self) -> None:
        if len(self.transaction_id) != 12:
            raise LocalProtocolError("STUN: transaction id must be 12 bytes")
        if not 0 <= self.method <= 0xFFF or not 0 <= self.cls <= 3:
            raise LocalProtocolError("STUN: method or class out of range")

    @staticmethod
    def new_transaction_id(random_bytes: RandomBytes) -> bytes:
        """A fresh random 96-bit transaction id (``random_bytes``: e.g. ``secrets.token_bytes``)."""
        return random_bytes(12)

    @classmethod
    def parse(cls, data: bytes) -> Message:
        """Parse and decode one STUN message; raises :class:`RemoteProtocolError` only."""
        return cls.from_view(parse_view(data))

    @classmethod
    def from_view(cls, view: MessageView) -> Message:
        """Decode every attribute indexed by ``view``."""
        data = view.data
        txid = view.transaction_id
        attributes: list[Attribute] = []
        padding = -1
        for attr_type, start, length in view.iter_attributes():
            value = data[start : start + length]
            decoder = _DECODERS.get(attr_type)
            if decoder is None:
                attributes.append(UnknownAttribute(attr_type, value))
            else:
                attributes.append(decoder.decode(value, txid))
            if padding < 0 and length & 3:
                pad = data[start + length : start + length + (-length & 3)]
                padding = pad[0] if pad.count(pad[0]) == len(pad) else 0
        return cls(view.method, view.cls, txid, tuple(attributes), max(padding, 0))

    @property
    def msg_type(self) -> int:
        """The 14-bit message type."""
        return encode_type(self.method, self.cls)

    def get(self, kind: type[_A]) -> _A | None:
        """The first attribute of class ``kind``, or None."""
        for attr in self.attributes:
            if type(attr) is kind:
                return attr
        return None

    def get_all(self, kind: type[_A]) -> Iterator[_A]:
        """Every attribute of class ``kind`` in wire order."""
        for attr in self.attributes:
            if type(attr) is kind:
                yield attr

    def unknown_comprehension_required(self) -> tuple[int, ...]:
        """Types of unknown comprehension-required attributes (for a 420 response)."""
        return tuple(a.type for a in self.attributes if isinstance(a, UnknownAttribute) and a.type < 0x8000)

    def serialize(
        self,
        *,
        integrity_key: bytes | None = None,
        integrity_sha256_key: bytes | None = None,
        fingerprint: bool = False,
    ) -> bytes:
        """Encode; optionally append MESSAGE-INTEGRITY, -SHA256 and FINGERPRINT (in that order)."""
        txid = self.transaction_id
        pad_byte = self.padding
        parts = []
        for attr in self.attributes:
            value = attr.encode(txid)
            n = len(value)
            if n > 0xFFFF:
                raise LocalProtocolError("STUN: attribute value longer than 65535 bytes")
            parts.append(_ATTR_HEADER.pack(attr.attr_type, n))
            parts.append(value)
            if n & 3:
                parts.append(bytes((pad_byte,)) * (-n & 3))
        buf = bytearray(_HEADER.pack(self.msg_type, 0, MAGIC_COOKIE))
        buf += txid
        buf += b"".join(parts)
        if integrity_key is not None:
            append_integrity(buf, integrity_key)
        if integrity_sha256_key is not None:
            append_integrity_sha256(buf, integrity_sha256_key)
        if fingerprint:
            append_fingerprint(buf)
        else:
            _U16.pack_into(buf, 2, len(buf) - HEADER_LENGTH)
        if len(buf) - HEADER_LENGTH > 0xFFFF:
            raise LocalProtocolError("STUN: message longer than 65535 bytes")
        return bytes(buf)

    def __bytes__(self) -> bytes:
        return self.serialize()


def append_integrity(buf: bytearray, key: bytes) -> None:
    """Append MESSAGE-INTEGRITY over ``buf`` (a header + attributes), fixing the length first."""
    _U16.pack_into(buf, 2, len(buf) + 24 - HEADER_LENGTH)
    mac = hmac.digest(key, buf, "sha1")
    buf += b"\x00\x08\x00\x14"
    buf += mac


def append_integrity_sha256(buf: bytearray, key: bytes) -> None:
    """Append a full-length MESSAGE-INTEGRITY-SHA256 over ``buf``, fixing the length first."""
    _U16.pack_into(buf, 2, len(buf) + 36 - HEADER_LENGTH)
    mac = hmac.digest(key, buf, "sha256")
    buf += b"\x00\x1c\x00\x20"
    buf += mac


def append_fingerprint(buf: bytearray) -> None:
    """Append FINGERPRINT over ``buf`` (which must hold the whole message), fixing the length."""
    _U16.pack_into(buf, 2, len(buf) + 8 - HEADER_LENGTH)
    crc = (zlib.crc32(buf) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
    buf += b"\x80\x28\x00\x04"
    buf += _U32.pack(crc)
