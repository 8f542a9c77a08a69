"""SDP (RFC 8866, formerly RFC 4566): parse, inspect and serialise session descriptions.

Theory of operation
-------------------
A description is kept as close to the wire as possible so that ``bytes(SessionDescription.parse(x))
== x`` for every well-formed input (CRLF line ends, RFC field order):

* the three fixed lines ``v=``, ``o=``, ``s=`` are fields of :class:`SessionDescription`;
* every other non-attribute line (``i= u= e= p= c= b= t= r= z= k=``) is a :class:`Line` kept in
  order, at session level and in each :class:`MediaDescription`;
* every ``a=`` line is an :class:`Attribute` (``name`` and optional ``value``) kept in order, whether
  we understand it or not.

Attributes the edge acts on are checked while parsing (so bad input fails early, with one error) and
read through typed views: :class:`Candidate` (RFC 8839), :class:`Crypto` (RFC 4568),
:class:`Fingerprint` (RFC 8122), :class:`RtpMap`, :class:`Group` (RFC 5888), ``a=setup`` (RFC 4145),
``a=rtcp`` (RFC 3605). :meth:`SessionDescription.transport` merges media- and session-level values
(``c=``, ICE credentials, fingerprint, setup) into one :class:`MediaTransport` per m-line: what the
relay needs to know about the far end of that stream.

All values are frozen; edits are made with :func:`dataclasses.replace` and the helpers
``with_attributes`` / ``without`` / ``with_lines``. Anything malformed raises
:class:`RemoteProtocolError` with ``status_hint=488`` (Not Acceptable Here). Rewriting between
media profiles lives in :mod:`mcs_edge.core.media.sdp_rewrite`.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Final

from mcs_edge.errors import RemoteProtocolError

__all__ = [
    "DIRECTIONS",
    "MAX_SDP_SIZE",
    "SDP_STATUS",
    "SETUP_ROLES",
    "Attribute",
    "Candidate",
    "Connection",
    "Crypto",
    "Fingerprint",
    "Group",
    "IceCredentials",
    "Line",
    "MediaDescription",
    "MediaTransport",
    "Origin",
    "Profile",
    "RtcpAttribute",
    "RtpMap",
    "SessionDescription",
    "client_profile_for",
    "detect_profile",
]

SDP_STATUS: Final = 488  # Not Acceptable Here: the status_hint of every SDP error
MAX_SDP_SIZE: Final = 65536
MAX_LINES: Final = 4096

DIRECTIONS: Final = ("sendrecv", "sendonly", "recvonly", "inactive")
SETUP_ROLES: Final = ("active", "passive", "actpass", "holdconn")
_DIRECTION_SET: Final = frozenset(DIRECTIONS)

PROTO_RTP_AVP: Final = "RTP/AVP"
PROTO_RTP_AVPF: Final = "RTP/AVPF"
PROTO_RTP_SAVP: Final = "RTP/SAVP"
PROTO_RTP_SAVPF: Final = "RTP/SAVPF"
PROTO_DTLS_SAVPF: Final = "UDP/TLS/RTP/SAVPF"
PROTO_DTLS_SAVP: Final = "UDP/TLS/RTP/SAVP"

_LINE_TYPES_SESSION: Final = frozenset("iuepcbtrzk")
_LINE_TYPES_MEDIA: Final = frozenset("icbk")
_TOKEN_RE: Final = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")  # RFC 8866 token
_ICE_CHARS_RE: Final = re.compile(r"[A-Za-z0-9+/]{1,256}")
_HEX_PAIRS_RE: Final = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2})*")
_DIGITS_RE: Final = re.compile(r"[0-9]{1,10}")
_FINGERPRINT_HASHES: Final = {
    "sha-1": 20,
    "sha-224": 28,
    "sha-256": 32,
    "sha-384": 48,
    "sha-512": 64,
    "md5": 16,
    "md2": 16,
}


def _bad(reason: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"bad SDP: {reason}", status_hint=SDP_STATUS)


def _int(text: str, what: str, lo: int = 0, hi: int = 0xFFFFFFFF) -> int:
    if not _DIGITS_RE.fullmatch(text):
        raise _bad(f"{what} {text!r} is not a number")
    value = int(text)
    if not lo <= value <= hi:
        raise _bad(f"{what} {value} out of range {lo}..{hi}")
    return value


# ------------------------------------------------------------------------------------- profiles


class Profile(enum.Enum):
    """How a leg carries media; one per leg, chosen by its SDP and the tenant's setting."""

    WEBRTC = "webrtc"  # ICE(-lite) + DTLS-SRTP + rtcp-mux, UDP/TLS/RTP/SAVPF
    SDES = "sdes"  # RTP/SAVP with a=crypto keys
    RTP = "rtp"  # plain RTP/AVP, RTCP on port+1 unless muxed
    PASSTHROUGH = "passthrough"  # opaque: the far ends' crypto and ICE attributes pass unchanged


_CLIENT_PROFILES: Final = {"wss": Profile.WEBRTC, "ws": Profile.WEBRTC, "tls": Profile.SDES}


def client_profile_for(transport: str | None) -> Profile:
    """The profile a client on SIP ``transport`` gets by default: WebRTC over WebSocket (and when the
    transport is unknown), SDES over SIP/TLS (the mobile app)."""
    return _CLIENT_PROFILES.get(transport or "", Profile.WEBRTC)


def detect_profile(media: MediaDescription) -> Profile:
    """The profile an m-line speaks, from its proto and a=crypto.

    RTP/AVP with ``a=crypto`` is "SRTP if possible" (best-effort SDES, as native clients offer it):
    SDES, answered with the same proto and a key, never silently as plain RTP.
    """
    proto = media.proto.upper()
    if "TLS" in proto:
        return Profile.WEBRTC
    if "SAVP" in proto or ("AVP" in proto and media.has("crypto")):
        return Profile.SDES
    return Profile.RTP


# ------------------------------------------------------------------------------------- lines


@dataclass(frozen=True, slots=True)
class Line:
    """A non-attribute line (``c=``, ``b=``, ``t=`` ...): one-letter type and raw value."""

    type: str
    value: str

    def __str__(self) -> str:
        return f"{self.type}={self.value}"


@dataclass(frozen=True, slots=True)
class Attribute:
    """An ``a=`` line: ``a=name`` (flag, value None) or ``a=name:value``."""

    name: str
    value: str | None = None

    def __str__(self) -> str:
        return f"a={self.name}" if self.value is None else f"a={self.name}:{self.value}"


@dataclass(frozen=True, slots=True)
class Origin:
    """``o=<username> <sess-id> <sess-version> <nettype> <addrtype> <unicast-address>``."""

    username: str
    session_id: str
    session_version: str
    nettype: str
    addrtype: str
    address: str

    @classmethod
    def parse(cls, value: str) -> Origin:
        """Parse the value of an ``o=`` line."""
        parts = value.split(" ")
        if len(parts) != 6 or not all(parts):
            raise _bad(f"o= line needs 6 fields: {value!r}")
        return cls(*parts)

    def __str__(self) -> str:
        return " ".join(
            (self.username, self.session_id, self.session_version, self.nettype, self.addrtype, self.address)
        )


@dataclass(frozen=True, slots=True)
class Connection:
    """``c=<nettype> <addrtype> <connection-address>`` (TTL/count suffix kept in ``address``)."""

    address: str
    addrtype: str = "IP4"
    nettype: str = "IN"

    @classmethod
    def parse(cls, value: str) -> Connection:
        """Parse the value of a ``c=`` line."""
        parts = value.split(" ")
        if len(parts) != 3 or not all(parts):
            raise _bad(f"c= line needs 3 fields: {value!r}")
        return cls(nettype=parts[0], addrtype=parts[1], address=parts[2])

    @classmethod
    def for_host(cls, host: str) -> Connection:
        """IN IP4 or IN IP6 connection for an address literal."""
        return cls(address=host, addrtype="IP6" if ":" in host else "IP4")

    def __str__(self) -> str:
        return f"{self.nettype} {self.addrtype} {self.address}"


# ----------------------------------------------------------------------------- typed attributes


@dataclass(frozen=True, slots=True)
class Candidate:
    """RFC 8839 s.5.1 ``a=candidate`` value (without the ``candidate:`` prefix of trickle)."""

    foundation: str
    component: int
    transport: str
    priority: int
    address: str
    port: int
    type: str
    related_address: str | None = None
    related_port: int | None = None
    extensions: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, value: str) -> Candidate:
        """Parse ``foundation component transport priority address port typ type [raddr][rport] ext*``."""
        parts = value.split()
        if len(parts) < 8 or parts[6] != "typ":
            raise _bad(f"candidate {value!r}")
        if len(parts[0]) > 32 or not _TOKEN_RE.fullmatch(parts[0]):
            raise _bad(f"candidate foundation {parts[0]!r}")
        component = _int(parts[1], "candidate component", 1, 256)
        priority = _int(parts[3], "candidate priority", 0, 0xFFFFFFFF)
        port = _int(parts[5], "candidate port", 0, 65535)
        related_address: str | None = None
        related_port: int | None = None
        rest = parts[8:]
        if len(rest) % 2:
            raise _bad(f"candidate extension without value: {value!r}")
        extensions: list[tuple[str, str]] = []
        for i in range(0, len(rest), 2):
            key, val = rest[i], rest[i + 1]
            if key == "raddr" and related_address is None and not extensions:
                related_address = val
            elif key == "rport" and related_port is None and not extensions:
                related_port = _int(val, "candidate rport", 0, 65535)
            else:
                extensions.append((key, val))
        return cls(
            foundation=parts[0],
            component=component,
            transport=parts[2],
            priority=priority,
            address=parts[4],
            port=port,
            type=parts[7],
            related_address=related_address,
            related_port=related_port,
            extensions=tuple(extensions),
        )

    def __str__(self) -> str:
        out = [
            self.foundation,
            str(self.component),
            self.transport,
            str(self.priority),
            self.address,
            str(self.port),
            "typ",
            self.type,
        ]
        if self.related_address is not None:
            out += ["raddr", self.related_address]
        if self.related_port is not None:
            out += ["rport", str(self.related_port)]
        for key, val in self.extensions:
            out += [key, val]
        return " ".join(out)


# RFC 4568 s.6.2 / RFC 7714 s.14.2: master key || salt length per suite (only the ones we know).
CRYPTO_KEY_LENGTHS: Final = {
    "AES_CM_128_HMAC_SHA1_80": 30,
    "AES_CM_128_HMAC_SHA1_32": 30,
    "AES_192_CM_HMAC_SHA1_80": 38,
    "AES_192_CM_HMAC_SHA1_32": 38,
    "AES_256_CM_HMAC_SHA1_80": 46,
    "AES_256_CM_HMAC_SHA1_32": 46,
    "AEAD_AES_128_GCM": 28,
    "AEAD_AES_256_GCM": 44,
    "F8_128_HMAC_SHA1_80": 30,
}


@dataclass(frozen=True, slots=True)
class Crypto:
    """RFC 4568 ``a=crypto:<tag> <crypto-suite> inline:<key||salt>[|lifetime][|MKI:len] [params]``.

    Only the first key parameter is decoded into ``key``/``lifetime``/``mki``; further key
    parameters (rare) are kept raw in ``more_keys``.
    """

    tag: int
    suite: str
    key: bytes
    lifetime: str | None = None
    mki: tuple[int, int] | None = None
    more_keys: tuple[str, ...] = ()
    session_params: tuple[str, ...] = ()

    @classmethod
    def parse(cls, value: str) -> Crypto:
        """Parse the value of an ``a=crypto`` attribute; the key must decode to the suite's length."""
        parts = value.split()
        if len(parts) < 3:
            raise _bad(f"crypto {value!r}")
        tag = _int(parts[0], "crypto tag", 0, 999999999)
        suite = parts[1]
        if not _TOKEN_RE.fullmatch(suite):
            raise _bad(f"crypto suite {suite!r}")
        key_params = parts[2].split(";")
        first = key_params[0]
        if not first.startswith("inline:"):
            raise _bad(f"crypto key method {first!r} is not inline")
        fields = first[len("inline:") :].split("|")
        if len(fields) > 3:
            raise _bad(f"crypto key parameter {first!r}")
        try:
            key = base64.b64decode(fields[0] + "=" * (-len(fields[0]) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise _bad(f"crypto key {fields[0]!r} is not base64") from None
        expected = CRYPTO_KEY_LENGTHS.get(suite)
        if expected is not None and len(key) != expected:
            raise _bad(f"crypto key for {suite} is {len(key)} bytes, expected {expected}")
        if not key:
            raise _bad("empty crypto key")
        lifetime: str | None = None
        mki: tuple[int, int] | None = None
        for extra in fields[1:]:
            if ":" in extra:
                mki_value, _, mki_length = extra.partition(":")
                if mki is not None:
                    raise _bad(f"crypto MKI twice in {first!r}")
                mki = (_int(mki_value, "MKI value"), _int(mki_length, "MKI length", 1, 128))
            else:
                if lifetime is not None or mki is not None:
                    raise _bad(f"crypto lifetime misplaced in {first!r}")
                if extra.startswith("2^"):
                    _int(extra[2:], "crypto lifetime exponent", 0, 64)
                else:
                    _int(extra, "crypto lifetime", 1, 0xFFFFFFFFFFFF)
                lifetime = extra
        return cls(
            tag=tag,
            suite=suite,
            key=key,
            lifetime=lifetime,
            mki=mki,
            more_keys=tuple(key_params[1:]),
            session_params=tuple(parts[3:]),
        )

    @property
    def inline(self) -> str:
        """The key encoded as in ``inline:`` (base64 with padding)."""
        return base64.b64encode(self.key).decode("ascii")

    def __str__(self) -> str:
        key = "inline:" + self.inline
        if self.lifetime is not None:
            key += "|" + self.lifetime
        if self.mki is not None:
            key += f"|{self.mki[0]}:{self.mki[1]}"
        params = ";".join((key, *self.more_keys))
        return " ".join((str(self.tag), self.suite, params, *self.session_params))


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """RFC 8122 ``a=fingerprint:<hash-func> <XX:XX:...>``; ``algorithm`` lower case."""

    algorithm: str
    value: str

    @classmethod
    def parse(cls, value: str) -> Fingerprint:
        """Parse and check the digest length for known hash functions."""
        parts = value.split()
        if len(parts) != 2 or not _HEX_PAIRS_RE.fullmatch(parts[1]):
            raise _bad(f"fingerprint {value!r}")
        algorithm = parts[0].lower()
        expected = _FINGERPRINT_HASHES.get(algorithm)
        if expected is not None and (len(parts[1]) + 1) // 3 != expected:
            raise _bad(f"fingerprint {algorithm} has the wrong length")
        return cls(algorithm=algorithm, value=parts[1])

    @classmethod
    def from_digest(cls, algorithm: str, digest: bytes) -> Fingerprint:
        """Fingerprint from raw digest bytes (upper-case hex pairs)."""
        return cls(algorithm=algorithm.lower(), value=":".join(f"{b:02X}" for b in digest))

    @property
    def digest(self) -> bytes:
        """The digest as bytes."""
        return bytes.fromhex(self.value.replace(":", ""))

    def __str__(self) -> str:
        return f"{self.algorithm} {self.value}"


@dataclass(frozen=True, slots=True)
class RtpMap:
    """``a=rtpmap:<pt> <encoding>/<clock rate>[/<channels>]``."""

    payload_type: int
    encoding: str
    clock_rate: int
    channels: int | None = None

    @classmethod
    def parse(cls, value: str) -> RtpMap:
        """Parse the value of an ``a=rtpmap`` attribute."""
        pt_text, _, rest = value.partition(" ")
        pt = _int(pt_text, "rtpmap payload type", 0, 127)
        fields = rest.strip().split("/")
        if len(fields) not in (2, 3) or not fields[0]:
            raise _bad(f"rtpmap {value!r}")
        channels = _int(fields[2], "rtpmap channels", 1, 255) if len(fields) == 3 else None
        return cls(pt, fields[0], _int(fields[1], "rtpmap clock rate", 1, 10_000_000), channels)

    def __str__(self) -> str:
        tail = f"/{self.channels}" if self.channels is not None else ""
        return f"{self.payload_type} {self.encoding}/{self.clock_rate}{tail}"


@dataclass(frozen=True, slots=True)
class Group:
    """RFC 5888 ``a=group:<semantics> <mid> ...`` (e.g. BUNDLE)."""

    semantics: str
    mids: tuple[str, ...]

    @classmethod
    def parse(cls, value: str) -> Group:
        """Parse the value of an ``a=group`` attribute."""
        parts = value.split(" ")
        if not parts[0] or not all(parts):
            raise _bad(f"group {value!r}")
        return cls(parts[0], tuple(parts[1:]))

    def __str__(self) -> str:
        return " ".join((self.semantics, *self.mids))


@dataclass(frozen=True, slots=True)
class RtcpAttribute:
    """RFC 3605 ``a=rtcp:<port> [<nettype> <addrtype> <address>]``."""

    port: int
    connection: Connection | None = None

    @classmethod
    def parse(cls, value: str) -> RtcpAttribute:
        """Parse the value of an ``a=rtcp`` attribute."""
        port_text, _, rest = value.partition(" ")
        port = _int(port_text, "rtcp port", 0, 65535)
        return cls(port, Connection.parse(rest) if rest else None)

    def __str__(self) -> str:
        return f"{self.port} {self.connection}" if self.connection else str(self.port)


@dataclass(frozen=True, slots=True)
class IceCredentials:
    """ICE username fragment and password (RFC 8839 s.5.4)."""

    ufrag: str
    pwd: str


def _check_ice_chars(value: str | None, what: str) -> None:
    if value is None or not _ICE_CHARS_RE.fullmatch(value):
        raise _bad(f"{what} {value!r}")


def _check_ssrc(value: str | None) -> None:
    text = (value or "").partition(" ")[0]
    _int(text, "ssrc", 0, 0xFFFFFFFF)


def _check_pt_prefixed(value: str | None, what: str, wildcard: bool = False) -> None:
    text = (value or "").partition(" ")[0]
    if wildcard and text == "*":
        return
    _int(text, f"{what} payload type", 0, 127)


def _check_extmap(value: str | None) -> None:
    parts = (value or "").split(" ")
    if len(parts) < 2:
        raise _bad(f"extmap {value!r}")
    ident, _, direction = parts[0].partition("/")
    _int(ident, "extmap id", 1, 65535)
    if direction and direction not in DIRECTIONS:
        raise _bad(f"extmap direction {direction!r}")


def _check_setup(value: str | None) -> None:
    if value not in SETUP_ROLES:
        raise _bad(f"setup {value!r}")


def _check_flag(value: str | None, name: str) -> None:
    if value is not None:
        raise _bad(f"a={name} takes no value")


def _check_nonempty(value: str | None, name: str) -> None:
    if not value:
        raise _bad(f"a={name} needs a value")


#: Candidates and fingerprints read while parsing, kept for :meth:`SessionDescription.transport`,
#: which reads the same lines again moments later (bounded, emptied when full; keys are not kept).
_CANDIDATES: dict[str, Candidate] = {}
_FINGERPRINTS: dict[str, Fingerprint] = {}
_MAX_TYPED: Final = 1024


def _candidate(value: str) -> Candidate:
    candidate = _CANDIDATES.get(value)
    if candidate is None:
        candidate = Candidate.parse(value)
        if len(_CANDIDATES) >= _MAX_TYPED:
            _CANDIDATES.clear()
        _CANDIDATES[value] = candidate
    return candidate


def _fingerprint(value: str) -> Fingerprint:
    fingerprint = _FINGERPRINTS.get(value)
    if fingerprint is None:
        fingerprint = Fingerprint.parse(value)
        if len(_FINGERPRINTS) >= _MAX_TYPED:
            _FINGERPRINTS.clear()
        _FINGERPRINTS[value] = fingerprint
    return fingerprint


_VALIDATORS: Final[dict[str, Callable[[str | None, str], object]]] = {
    "candidate": lambda v, _n: _candidate(v or ""),
    "crypto": lambda v, _n: Crypto.parse(v or ""),
    "fingerprint": lambda v, _n: _fingerprint(v or ""),
    "rtpmap": lambda v, _n: RtpMap.parse(v or ""),
    "group": lambda v, _n: Group.parse(v or ""),
    "rtcp": lambda v, _n: RtcpAttribute.parse(v or ""),
    "setup": lambda v, _n: _check_setup(v),
    "ice-ufrag": _check_ice_chars,
    "ice-pwd": _check_ice_chars,
    "mid": _check_nonempty,
    "ice-options": _check_nonempty,
    "msid": _check_nonempty,
    **dict.fromkeys(("rtcp-mux", "ice-lite", "end-of-candidates", *DIRECTIONS), _check_flag),
    "ssrc": lambda v, _n: _check_ssrc(v),
    "fmtp": lambda v, _n: _check_pt_prefixed(v, "fmtp"),
    "rtcp-fb": lambda v, _n: _check_pt_prefixed(v, "rtcp-fb", wildcard=True),
    "extmap": lambda v, _n: _check_extmap(v),
}


def _validate_attribute(attr: Attribute) -> None:
    """Check the attributes whose values the edge reads (others pass untouched)."""
    check = _VALIDATORS.get(attr.name)
    if check is not None:
        check(attr.value, attr.name)


# --------------------------------------------------------------------------- attribute container


class _HasAttributes:
    """Read helpers shared by session- and media-level descriptions."""

    __slots__ = ()
    attributes: tuple[Attribute, ...]
    lines: tuple[Line, ...]

    def get(self, name: str) -> str | None:
        """Value of the first ``a=name`` (``""`` for a flag), or None if absent."""
        for attr in self.attributes:
            if attr.name == name:
                return "" if attr.value is None else attr.value
        return None

    def get_all(self, name: str) -> list[str]:
        """Values of every ``a=name`` in order (``""`` for flags)."""
        return ["" if a.value is None else a.value for a in self.attributes if a.name == name]

    def has(self, name: str) -> bool:
        """True if ``a=name`` is present."""
        return any(a.name == name for a in self.attributes)

    @property
    def connection(self) -> Connection | None:
        """The ``c=`` line at this level, if any."""
        for line in self.lines:
            if line.type == "c":
                return Connection.parse(line.value)
        return None

    @property
    def fingerprints(self) -> tuple[Fingerprint, ...]:
        """Every ``a=fingerprint`` at this level."""
        return tuple(_fingerprint(v) for v in self.get_all("fingerprint"))

    @property
    def ice_credentials(self) -> IceCredentials | None:
        """``a=ice-ufrag`` and ``a=ice-pwd`` at this level, if both are present."""
        ufrag, pwd = self.get("ice-ufrag"), self.get("ice-pwd")
        return IceCredentials(ufrag, pwd) if ufrag and pwd else None


@dataclass(frozen=True, slots=True)
class MediaDescription(_HasAttributes):
    """One ``m=`` section: ``m=<media> <port>[/<count>] <proto> <fmt> ...`` plus its lines."""

    media: str
    port: int
    proto: str
    formats: tuple[str, ...]
    port_count: int | None = None
    lines: tuple[Line, ...] = ()
    attributes: tuple[Attribute, ...] = ()

    @property
    def rejected(self) -> bool:
        """Port 0 without bundle-only: the stream is rejected or disabled (RFC 3264 s.6)."""
        return self.port == 0 and not self.has("bundle-only")

    @property
    def is_rtp(self) -> bool:
        """True if the proto carries RTP (not SCTP data channels, not T.38 udptl)."""
        return "RTP/" in self.proto.upper()

    @property
    def mid(self) -> str | None:
        """``a=mid`` value."""
        return self.get("mid")

    @property
    def direction(self) -> str:
        """The last direction attribute at media level, default ``sendrecv``."""
        direction = "sendrecv"
        for attr in self.attributes:
            if attr.name in DIRECTIONS:
                direction = attr.name
        return direction

    @property
    def rtcp_mux(self) -> bool:
        """``a=rtcp-mux`` present."""
        return self.has("rtcp-mux")

    @property
    def setup(self) -> str | None:
        """``a=setup`` value at media level."""
        return self.get("setup")

    @property
    def candidates(self) -> tuple[Candidate, ...]:
        """Every ``a=candidate``."""
        return tuple(_candidate(v) for v in self.get_all("candidate"))

    @property
    def cryptos(self) -> tuple[Crypto, ...]:
        """Every ``a=crypto`` in order of preference."""
        return tuple(Crypto.parse(v) for v in self.get_all("crypto"))

    @property
    def rtpmaps(self) -> dict[int, RtpMap]:
        """``a=rtpmap`` by payload type."""
        return {m.payload_type: m for m in (RtpMap.parse(v) for v in self.get_all("rtpmap"))}

    @property
    def rtcp(self) -> RtcpAttribute | None:
        """``a=rtcp`` value, if present."""
        value = self.get("rtcp")
        return RtcpAttribute.parse(value) if value is not None else None

    def m_line(self) -> str:
        """The ``m=`` line value."""
        port = f"{self.port}/{self.port_count}" if self.port_count is not None else str(self.port)
        return " ".join((self.media, port, self.proto, *self.formats))

    def without(self, *names: str) -> MediaDescription:
        """A copy without any ``a=`` attribute named in ``names``."""
        drop = set(names)
        return replace(self, attributes=tuple(a for a in self.attributes if a.name not in drop))

    def with_attributes(self, *attrs: Attribute) -> MediaDescription:
        """A copy with ``attrs`` appended."""
        return replace(self, attributes=self.attributes + attrs)

    def with_connection(self, connection: Connection | None) -> MediaDescription:
        """A copy whose ``c=`` line is ``connection`` (kept in place, inserted after ``i=``, or removed)."""
        return replace(self, lines=_set_connection(self.lines, connection, "i"))

    def serialize_into(self, out: list[str]) -> None:
        """Append this section's lines (without line ends) to ``out``."""
        out.append("m=" + self.m_line())
        out.extend(str(line) for line in self.lines)
        out.extend(str(attr) for attr in self.attributes)


def _set_connection(lines: tuple[Line, ...], connection: Connection | None, after: str) -> tuple[Line, ...]:
    """Replace the first ``c=`` (drop others), or insert one after the lines whose types are in ``after``."""
    out: list[Line] = []
    placed = False
    for line in lines:
        if line.type == "c":
            if connection is not None and not placed:
                out.append(Line("c", str(connection)))
            placed = True
        else:
            out.append(line)
    if connection is not None and not placed:
        pos = 0
        while pos < len(out) and out[pos].type in after:
            pos += 1
        out.insert(pos, Line("c", str(connection)))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class MediaTransport:
    """What the relay needs to know about the far end of one m-line (session-level values merged)."""

    index: int
    media: str
    proto: str
    profile: Profile
    rejected: bool
    mid: str | None
    address: str | None
    port: int
    rtcp_address: str | None
    rtcp_port: int | None  # None when muxed (or rejected)
    rtcp_mux: bool
    ice: IceCredentials | None
    ice_lite: bool
    candidates: tuple[Candidate, ...]
    fingerprints: tuple[Fingerprint, ...]
    setup: str | None
    cryptos: tuple[Crypto, ...]
    payload_types: tuple[int, ...]
    direction: str


@dataclass(frozen=True, slots=True)
class SessionDescription(_HasAttributes):
    """A whole SDP body. ``lines`` are the session-level non-attribute lines after ``s=``."""

    origin: Origin
    session_name: str = "-"
    lines: tuple[Line, ...] = (Line("t", "0 0"),)
    attributes: tuple[Attribute, ...] = ()
    media: tuple[MediaDescription, ...] = ()
    version: int = 0

    # ------------------------------------------------------------------ parsing and serialising

    @classmethod
    def parse(cls, data: bytes | str) -> SessionDescription:
        """Parse an SDP body; anything malformed raises RemoteProtocolError(status_hint=488).

        CRLF and bare LF line ends are accepted; serialisation always writes CRLF.
        """
        if len(data) > MAX_SDP_SIZE:
            raise _bad(f"body larger than {MAX_SDP_SIZE} bytes")
        if isinstance(data, bytes):
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                raise _bad("not UTF-8") from None
        else:
            text = data
        raw_lines = text.replace("\r\n", "\n").split("\n")
        while raw_lines and raw_lines[-1] == "":
            raw_lines.pop()
        if len(raw_lines) > MAX_LINES:
            raise _bad(f"more than {MAX_LINES} lines")
        if len(raw_lines) < 3:
            raise _bad("needs at least v=, o= and s= lines")

        parsed: list[tuple[str, str]] = []
        for raw in raw_lines:
            if not raw:
                continue  # tolerate blank lines between fields
            if len(raw) < 2 or raw[1] != "=" or not ("a" <= raw[0] <= "z"):
                raise _bad(f"line {raw[:40]!r} is not <type>=<value>")
            if "\r" in raw or "\x00" in raw:
                raise _bad("CR or NUL inside a line")
            parsed.append((raw[0], raw[2:]))
        if len(parsed) < 3:  # blank lines do not count
            raise _bad("needs at least v=, o= and s= lines")

        if parsed[0] != ("v", "0"):
            raise _bad("first line must be v=0")
        if parsed[1][0] != "o":
            raise _bad("second line must be o=")
        origin = Origin.parse(parsed[1][1])
        if parsed[2][0] != "s":
            raise _bad("third line must be s=")
        session_name = parsed[2][1]

        session_lines: list[Line] = []
        session_attrs: list[Attribute] = []
        media: list[MediaDescription] = []
        cur: tuple[str, int, int | None, str, tuple[str, ...]] | None = None
        cur_lines: list[Line] = []
        cur_attrs: list[Attribute] = []

        def close_media() -> None:
            if cur is not None:
                kind, port, count, proto, formats = cur
                media.append(
                    MediaDescription(kind, port, proto, formats, count, tuple(cur_lines), tuple(cur_attrs))
                )

        attributes_seen = _SHARED_ATTRIBUTES
        lines_seen = _SHARED_LINES
        for typ, value in parsed[3:]:
            if typ == "m":
                close_media()
                cur = _parse_m_line(value)
                cur_lines, cur_attrs = [], []
            elif typ == "a":
                attr = attributes_seen.get(value)
                if attr is None:
                    attr = _parse_attribute(value)
                    if attr.name not in _UNSHARED and len(value) <= _MAX_SHARED_LENGTH:
                        if len(attributes_seen) >= _MAX_SHARED:
                            attributes_seen.clear()
                        attributes_seen[value] = attr
                (cur_attrs if cur is not None else session_attrs).append(attr)
            else:
                allowed = _LINE_TYPES_MEDIA if cur is not None else _LINE_TYPES_SESSION
                if typ not in allowed:
                    raise _bad(f"unexpected {typ}= line")
                line = lines_seen.get((typ, value))
                if line is None:
                    line = Line(typ, value)
                    if typ == "c":
                        Connection.parse(value)
                    if len(value) <= _MAX_SHARED_LENGTH:
                        if len(lines_seen) >= _MAX_SHARED:
                            lines_seen.clear()
                        lines_seen[typ, value] = line
                (cur_lines if cur is not None else session_lines).append(line)
        close_media()
        return cls(
            origin=origin,
            session_name=session_name,
            lines=tuple(session_lines),
            attributes=tuple(session_attrs),
            media=tuple(media),
        )

    def serialize(self) -> str:
        """The SDP text with CRLF line ends (including the last line)."""
        out = [f"v={self.version}", f"o={self.origin}", f"s={self.session_name}"]
        out.extend(str(line) for line in self.lines)
        out.extend(str(attr) for attr in self.attributes)
        for m in self.media:
            m.serialize_into(out)
        out.append("")
        return "\r\n".join(out)

    def __str__(self) -> str:
        return self.serialize()

    def __bytes__(self) -> bytes:
        return self.serialize().encode("utf-8")

    # ------------------------------------------------------------------------------- queries

    @property
    def groups(self) -> tuple[Group, ...]:
        """Every ``a=group`` at session level."""
        return tuple(Group.parse(v) for v in self.get_all("group"))

    @property
    def bundle_group(self) -> Group | None:
        """The first ``a=group:BUNDLE``, if any."""
        for group in self.groups:
            if group.semantics == "BUNDLE":
                return group
        return None

    def transport(self, index: int) -> MediaTransport:
        """The far end's transport for m-line ``index``, with session-level fallbacks applied.

        One pass over the m-line's attributes and one over the session's (the values the properties
        ``connection``, ``rtcp``, ``ice_credentials``, ``setup``, ``direction`` ... read one by one).
        """
        m = self.media[index]
        mid = ufrag = pwd = setup = rtcp_value = None
        mux = bundle_only = ice_lite = has_crypto = False
        direction = "sendrecv"
        candidates: list[Candidate] = []
        fingerprints: list[Fingerprint] = []
        cryptos: list[Crypto] = []
        for attr in m.attributes:
            name = attr.name
            value = "" if attr.value is None else attr.value
            if name == "candidate":
                candidates.append(_candidate(value))
            elif name in _DIRECTION_SET:
                direction = name
            elif name == "rtcp-mux":
                mux = True
            elif name == "mid":
                mid = value if mid is None else mid
            elif name == "ice-ufrag":
                ufrag = value if ufrag is None else ufrag
            elif name == "ice-pwd":
                pwd = value if pwd is None else pwd
            elif name == "fingerprint":
                fingerprints.append(_fingerprint(value))
            elif name == "setup":
                setup = value if setup is None else setup
            elif name == "crypto":
                has_crypto = True
                cryptos.append(Crypto.parse(value))
            elif name == "rtcp":
                rtcp_value = value if rtcp_value is None else rtcp_value
            elif name == "bundle-only":
                bundle_only = True
            elif name == "ice-lite":
                ice_lite = True
        ice = IceCredentials(ufrag, pwd) if ufrag and pwd else None
        if ice is None or not fingerprints or setup is None or not ice_lite:
            s_ufrag = s_pwd = s_setup = None
            s_fingerprints: list[Fingerprint] = []
            for attr in self.attributes:
                name = attr.name
                value = "" if attr.value is None else attr.value
                if name == "ice-ufrag":
                    s_ufrag = value if s_ufrag is None else s_ufrag
                elif name == "ice-pwd":
                    s_pwd = value if s_pwd is None else s_pwd
                elif name == "fingerprint":
                    s_fingerprints.append(_fingerprint(value))
                elif name == "setup":
                    s_setup = value if s_setup is None else s_setup
                elif name == "ice-lite":
                    ice_lite = True
            if ice is None and s_ufrag and s_pwd:
                ice = IceCredentials(s_ufrag, s_pwd)
            if not fingerprints:
                fingerprints = s_fingerprints
            if setup is None:
                setup = s_setup
        conn_value = _first_connection(m.lines)
        if conn_value is None:
            conn_value = _first_connection(self.lines)
        address = Connection.parse(conn_value).address.split("/")[0] if conn_value is not None else None
        rejected = m.port == 0 and not bundle_only
        rtcp_port: int | None
        rtcp_address = address
        if rejected or mux:
            rtcp_port = None
        elif rtcp_value is not None:
            rtcp = RtcpAttribute.parse(rtcp_value)
            rtcp_port = rtcp.port
            if rtcp.connection is not None:
                rtcp_address = rtcp.connection.address
        else:
            rtcp_port = m.port + 1
        formats = tuple(int(f) for f in m.formats if _DIGITS_RE.fullmatch(f) and int(f) <= 127)
        proto = m.proto.upper()
        if "TLS" in proto:
            profile = Profile.WEBRTC
        elif "SAVP" in proto or ("AVP" in proto and has_crypto):
            profile = Profile.SDES
        else:
            profile = Profile.RTP
        return MediaTransport(
            index=index,
            media=m.media,
            proto=m.proto,
            profile=profile,
            rejected=rejected,
            mid=mid,
            address=address,
            port=m.port,
            rtcp_address=rtcp_address if rtcp_port is not None else None,
            rtcp_port=rtcp_port,
            rtcp_mux=mux,
            ice=ice,
            ice_lite=ice_lite,
            candidates=tuple(candidates),
            fingerprints=tuple(fingerprints),
            setup=setup,
            cryptos=tuple(cryptos),
            payload_types=formats,
            direction=direction,
        )

    def transports(self) -> tuple[MediaTransport, ...]:
        """:meth:`transport` for every m-line."""
        return tuple(self.transport(i) for i in range(len(self.media)))

    # ------------------------------------------------------------------------------- editing

    def without(self, *names: str) -> SessionDescription:
        """A copy without any session-level ``a=`` attribute named in ``names``."""
        drop = set(names)
        return replace(self, attributes=tuple(a for a in self.attributes if a.name not in drop))

    def with_attributes(self, *attrs: Attribute) -> SessionDescription:
        """A copy with session-level ``attrs`` appended."""
        return replace(self, attributes=self.attributes + attrs)

    def with_connection(self, connection: Connection | None) -> SessionDescription:
        """A copy whose session-level ``c=`` is ``connection`` (replaced, inserted, or removed)."""
        return replace(self, lines=_set_connection(self.lines, connection, "iuep"))

    def with_media(self, media: Iterable[MediaDescription]) -> SessionDescription:
        """A copy with these m-sections."""
        return replace(self, media=tuple(media))


#: Attributes and lines already parsed and checked, shared by every description (they are frozen):
#: ``a=rtpmap:0 PCMU/8000``, ``a=sendrecv``, ``t=0 0`` or a PBX's ``c=`` recur in every SDP. Bounded
#: (emptied when full; values up to 200 characters); the attributes whose values differ per call
#: (candidates, keys, credentials, SSRCs, RTCP ports) are never kept.
_MAX_SHARED: Final = 2048
_MAX_SHARED_LENGTH: Final = 200
_UNSHARED: Final = frozenset(
    {
        "candidate",
        "crypto",
        "fingerprint",
        "ice-ufrag",
        "ice-pwd",
        "ssrc",
        "ssrc-group",
        "msid",
        "msid-semantic",
        "rtcp",
    }
)
_SHARED_ATTRIBUTES: dict[str, Attribute] = {}
_SHARED_LINES: dict[tuple[str, str], Line] = {}


def _first_connection(lines: tuple[Line, ...]) -> str | None:
    for line in lines:
        if line.type == "c":
            return line.value
    return None


def _parse_m_line(value: str) -> tuple[str, int, int | None, str, tuple[str, ...]]:
    parts = value.split(" ")
    if len(parts) < 4 or not all(parts):
        raise _bad(f"m= line {value!r}")
    kind, port_text, proto = parts[0], parts[1], parts[2]
    if not _TOKEN_RE.fullmatch(kind) or not all(_TOKEN_RE.fullmatch(p) for p in proto.split("/")):
        raise _bad(f"m= line {value!r}")
    port_part, slash, count_part = port_text.partition("/")
    port = _int(port_part, "m= port", 0, 65535)
    count = _int(count_part, "m= port count", 1, 65535) if slash else None
    return kind, port, count, proto, tuple(parts[3:])


def _parse_attribute(value: str) -> Attribute:
    name, colon, rest = value.partition(":")
    if not _TOKEN_RE.fullmatch(name):
        raise _bad(f"attribute name {name[:40]!r}")
    attr = Attribute(name, rest if colon else None)
    _validate_attribute(attr)
    return attr
