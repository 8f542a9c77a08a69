"""SRTP/SRTCP protection with libsrtp (via pylibsrtp), keyed from DTLS-SRTP or SDES.

Theory of operation
-------------------
An :class:`SrtpContext` is one direction pair of a media leg: an outbound libsrtp session keyed with
our master key||salt and an inbound one keyed with the peer's. Both use wildcard SSRC policies
(``SSRC_ANY_OUTBOUND`` / ``SSRC_ANY_INBOUND``), so any SSRC the leg carries is accepted; outbound
allows repeated sequence numbers because the relay forwards the far end's retransmissions as they
come.

Keys come from one of two places:

* DTLS-SRTP (RFC 5764 s.4.2): the exporter output with label ``EXTRACTOR-dtls_srtp`` is laid out as
  ``client_key | server_key | client_salt | server_salt``; :func:`keys_from_dtls` splits it and gives
  each side its (local, remote) master key||salt.
* SDES (RFC 4568): the ``inline:`` key of the ``a=crypto`` line we sent is our outbound key, the one
  we received is the inbound key.

Every libsrtp failure on the packet path (authentication failure, replay, bad packet, too long) raises
:class:`RemoteProtocolError` with ``status_hint=None``: the adapter drops the packet and counts it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, NamedTuple

from pylibsrtp import Policy
from pylibsrtp._binding import ffi as _ffi  # the cffi binding pylibsrtp builds and ships
from pylibsrtp._binding import lib as _lib

from mcs_edge.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "AEAD_AES_128_GCM",
    "AES_CM_128_HMAC_SHA1_32",
    "AES_CM_128_HMAC_SHA1_80",
    "DTLS_SRTP_EXPORTER_LABEL",
    "PROFILES",
    "PROFILES_BY_DTLS_NAME",
    "SrtpContext",
    "SrtpOffload",
    "SrtpProfile",
    "keys_from_dtls",
]

DTLS_SRTP_EXPORTER_LABEL: Final = b"EXTRACTOR-dtls_srtp"
_protect = _lib.srtp_protect
_protect_rtcp = _lib.srtp_protect_rtcp
_unprotect = _lib.srtp_unprotect
_unprotect_rtcp = _lib.srtp_unprotect_rtcp


@dataclass(frozen=True, slots=True)
class SrtpProfile:
    """One SRTP protection profile: its SDES suite name, DTLS-SRTP name and key/salt sizes."""

    name: str  # RFC 4568 / RFC 7714 crypto-suite name, as in a=crypto
    dtls_name: bytes  # OpenSSL name used by use_srtp (RFC 5764 s.4.1.2, RFC 7714 s.14.2)
    libsrtp_profile: int
    key_length: int
    salt_length: int

    @property
    def master_length(self) -> int:
        """Length of master key || master salt."""
        return self.key_length + self.salt_length


AES_CM_128_HMAC_SHA1_80: Final = SrtpProfile(
    "AES_CM_128_HMAC_SHA1_80", b"SRTP_AES128_CM_SHA1_80", Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 16, 14
)
AES_CM_128_HMAC_SHA1_32: Final = SrtpProfile(
    "AES_CM_128_HMAC_SHA1_32", b"SRTP_AES128_CM_SHA1_32", Policy.SRTP_PROFILE_AES128_CM_SHA1_32, 16, 14
)
AEAD_AES_128_GCM: Final = SrtpProfile(
    "AEAD_AES_128_GCM", b"SRTP_AEAD_AES_128_GCM", Policy.SRTP_PROFILE_AEAD_AES_128_GCM, 16, 12
)

PROFILES: Final[dict[str, SrtpProfile]] = {
    p.name: p for p in (AES_CM_128_HMAC_SHA1_80, AES_CM_128_HMAC_SHA1_32, AEAD_AES_128_GCM)
}
PROFILES_BY_DTLS_NAME: Final[dict[bytes, SrtpProfile]] = {p.dtls_name: p for p in PROFILES.values()}


def keys_from_dtls(profile: SrtpProfile, material: bytes, *, is_client: bool) -> tuple[bytes, bytes]:
    """Split DTLS exporter output (RFC 5764 s.4.2) into ``(local_master, remote_master)``.

    ``material`` must be ``2 * profile.master_length`` bytes:
    client_write_key | server_write_key | client_write_salt | server_write_salt.
    """
    k, s = profile.key_length, profile.salt_length
    if len(material) != 2 * (k + s):
        raise LocalProtocolError(f"DTLS-SRTP material must be {2 * (k + s)} bytes, got {len(material)}")
    client = material[0:k] + material[2 * k : 2 * k + s]
    server = material[k : 2 * k] + material[2 * k + s : 2 * k + 2 * s]
    return (client, server) if is_client else (server, client)


# Per packet, pylibsrtp's public Session goes through three Python frames, allocates a length cell
# (``ffi.new("int *")``) and checks types: 1.80 us per AES-CM-80 protect against 1.12 us here
# (in process, same machine, bench notes in docs/performance.md). The relay therefore calls libsrtp
# through the cffi binding pylibsrtp builds and ships (``pylibsrtp._binding``: the libsrtp 2 C API,
# unchanged from pylibsrtp 0.10 to 1.0), from one frame, on a buffer and a length cell allocated
# once per direction. pyproject.toml pins pylibsrtp below the next minor release so a change of
# that private module is caught when the pin is raised (tests/core/rtp exercise every call made here).
_MAX_PACKET: Final = 1500
_RTP_ROOM: Final = _MAX_PACKET - (16 + 128)  # SRTP_MAX_TAG_LEN + SRTP_MAX_MKI_LEN
_RTCP_ROOM: Final = _MAX_PACKET - (4 + 16 + 128)  # + SRTCP index
_ERRORS: Final = {  # libsrtp's srtp_err_status_t
    1: "unspecified failure",
    2: "bad parameter",
    3: "allocation failure",
    7: "authentication failure",
    8: "cipher failure",
    9: "replay check failed (bad index)",
    10: "replay check failed (index too old)",
    13: "no appropriate context found",
    21: "parse error",
}


def _address(function: Any) -> int:
    """A libsrtp function of the binding as an integer, or 0 when it is not the libsrtp 2 call the
    forwarding rule makes (``srtp_err_status_t (*)(srtp_t, void *, int *)``; libsrtp 3 changed it):
    the rule casts the integer to that type, so another signature would corrupt memory silently
    where the Python path fails loudly. With 0 no leg with SRTP is offloaded."""
    pointer = _ffi.addressof(_lib, function)
    if _ffi.typeof(pointer) is not _ffi.typeof("srtp_err_status_t(*)(srtp_t, void *, int *)"):
        return 0
    return int(_ffi.cast("uintptr_t", pointer))


_PROTECT_ADDRESS: Final = _address("srtp_protect")
_UNPROTECT_ADDRESS: Final = _address("srtp_unprotect")


class SrtpOffload(NamedTuple):
    """One direction of an :class:`SrtpContext` for a forwarding rule outside Python
    (core/media/offload.py): libsrtp's function and the direction's ``srtp_t`` as integers, the
    object owning that ``srtp_t`` (the rule keeps a reference to it: the session is deallocated
    only with its owner), and the longest packet this direction takes (what Python refuses above
    it, the rule hands to Python). The rule runs the same libsrtp session as the Python path, so
    replay window and rollover counter stay one."""

    function: int  #: ``srtp_protect`` or ``srtp_unprotect``
    handle: int  #: the ``srtp_t``
    owner: object  #: keeps ``handle`` alive
    room: int  #: the longest input packet


class _Direction:
    """One libsrtp session (srtp_t) with its own preallocated packet buffer and length cell."""

    __slots__ = ("_key", "_owner", "_policy", "buffer", "cdata", "length", "srtp")

    def __init__(self, profile: int, key: bytes, ssrc_type: int, allow_repeat_tx: bool) -> None:
        policy = _ffi.new("srtp_policy_t *")
        rc = _lib.srtp_crypto_policy_set_from_profile_for_rtp(_ffi.addressof(policy.rtp), profile)
        rc = rc or _lib.srtp_crypto_policy_set_from_profile_for_rtcp(_ffi.addressof(policy.rtcp), profile)
        if rc:
            raise LocalProtocolError(f"libsrtp refused profile {profile} ({rc})")
        self._key = _ffi.new("unsigned char[]", key)  # the policy points at it: it lives as long as we do
        policy.key = self._key
        policy.ssrc.type = ssrc_type
        policy.ssrc.value = 0
        policy.allow_repeat_tx = 1 if allow_repeat_tx else 0
        self._policy = policy
        srtp = _ffi.new("srtp_t *")
        rc = _lib.srtp_create(srtp, policy)
        if rc:
            raise LocalProtocolError(f"srtp_create failed ({_ERRORS.get(rc, rc)})")
        self._owner = _ffi.gc(srtp, lambda x: _lib.srtp_dealloc(x[0]))  # deallocated with us
        self.srtp = srtp[0]
        self.cdata = _ffi.new("char[]", _MAX_PACKET)
        self.buffer = _ffi.buffer(self.cdata)
        self.length = _ffi.new("int *")

    def run(self, function: Any, room: int, what: str, packet: bytes) -> bytes:
        """``packet`` through one libsrtp ``function`` in place in this direction's buffer (no allocation
        but the returned ``bytes``); ``room``: the longest input that leaves space for the trailer."""
        n = len(packet)
        if n > room:
            raise RemoteProtocolError(f"{what} failed: packet is too long", status_hint=None)
        self.buffer[0:n] = packet
        length = self.length
        length[0] = n
        rc = function(self.srtp, self.cdata, length)
        if rc:
            raise RemoteProtocolError(f"{what} failed: {_ERRORS.get(rc, rc)}", status_hint=None)
        return self.buffer[0 : length[0]]  # type: ignore[no-any-return]


class SrtpContext:
    """Protect what we send and unprotect what we receive on one leg.

    ``protect_rtp`` (RTP -> SRTP), ``protect_rtcp`` (RTCP -> SRTCP), ``unprotect_rtp`` and
    ``unprotect_rtcp`` take and return ``bytes``; a libsrtp failure (authentication, replay, a
    packet too long) raises :class:`RemoteProtocolError` with ``status_hint=None``. Each is
    :meth:`_Direction.run` bound to its direction and libsrtp function (a C-level ``partial``: one
    Python frame per packet).
    """

    __slots__ = (
        "_rx",
        "_tx",
        "local_key",
        "profile",
        "protect_rtcp",
        "protect_rtp",
        "remote_key",
        "unprotect_rtcp",
        "unprotect_rtp",
    )

    def __init__(self, profile: SrtpProfile, local_key: bytes, remote_key: bytes) -> None:
        if len(local_key) != profile.master_length or len(remote_key) != profile.master_length:
            raise LocalProtocolError(f"{profile.name} needs {profile.master_length}-byte master key||salt")
        self.profile = profile
        # master key||salt of each direction, kept for replication (core/cluster seals them)
        self.local_key = bytes(local_key)
        self.remote_key = bytes(remote_key)
        # outbound allows repeated sequence numbers: the far end's retransmissions are forwarded
        tx = self._tx = _Direction(profile.libsrtp_profile, bytes(local_key), Policy.SSRC_ANY_OUTBOUND, True)
        rx = self._rx = _Direction(profile.libsrtp_profile, bytes(remote_key), Policy.SSRC_ANY_INBOUND, False)
        self.protect_rtp: Callable[[bytes], bytes] = partial(tx.run, _protect, _RTP_ROOM, "SRTP protect")
        self.protect_rtcp: Callable[[bytes], bytes] = partial(
            tx.run, _protect_rtcp, _RTCP_ROOM, "SRTCP protect"
        )
        self.unprotect_rtp: Callable[[bytes], bytes] = partial(
            rx.run, _unprotect, _MAX_PACKET, "SRTP unprotect"
        )
        self.unprotect_rtcp: Callable[[bytes], bytes] = partial(
            rx.run, _unprotect_rtcp, _MAX_PACKET, "SRTCP unprotect"
        )

    def offload_unprotect(self) -> SrtpOffload | None:
        """The inbound RTP direction for a forwarding rule (same libsrtp session as ``unprotect_rtp``),
        or None when the binding's libsrtp cannot be called by the rule (:func:`_address`)."""
        if not _UNPROTECT_ADDRESS:
            return None
        rx = self._rx
        return SrtpOffload(_UNPROTECT_ADDRESS, int(_ffi.cast("uintptr_t", rx.srtp)), rx, _MAX_PACKET)

    def offload_protect(self) -> SrtpOffload | None:
        """The outbound RTP direction for a forwarding rule (same libsrtp session as ``protect_rtp``),
        or None when the binding's libsrtp cannot be called by the rule (:func:`_address`)."""
        if not _PROTECT_ADDRESS:
            return None
        tx = self._tx
        return SrtpOffload(_PROTECT_ADDRESS, int(_ffi.cast("uintptr_t", tx.srtp)), tx, _RTP_ROOM)
