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

from dataclasses import dataclass
from typing import Final

from pylibsrtp import Error as _SrtpError
from pylibsrtp import Policy, Session

from mcs_edge.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "AEAD_AES_128_GCM",
    "AES_CM_128_HMAC_SHA1_32",
    "AES_CM_128_HMAC_SHA1_80",
    "DTLS_SRTP_EXPORTER_LABEL",
    "PROFILES",
    "PROFILES_BY_DTLS_NAME",
    "SrtpContext",
    "SrtpProfile",
    "keys_from_dtls",
]

DTLS_SRTP_EXPORTER_LABEL: Final = b"EXTRACTOR-dtls_srtp"


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


class SrtpContext:
    """Protect what we send and unprotect what we receive on one leg."""

    __slots__ = ("_rx", "_tx", "local_key", "profile", "remote_key")

    def __init__(self, profile: SrtpProfile, local_key: bytes, remote_key: bytes) -> None:
        if len(local_key) != profile.master_length or len(remote_key) != profile.master_length:
            raise LocalProtocolError(f"{profile.name} needs {profile.master_length}-byte master key||salt")
        self.profile = profile
        # master key||salt of each direction, kept for replication (core/cluster seals them)
        self.local_key = bytes(local_key)
        self.remote_key = bytes(remote_key)
        tx_policy = Policy(
            key=bytes(local_key), ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile.libsrtp_profile
        )
        tx_policy.allow_repeat_tx = True
        rx_policy = Policy(
            key=bytes(remote_key), ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=profile.libsrtp_profile
        )
        self._tx = Session(policy=tx_policy)
        self._rx = Session(policy=rx_policy)

    def protect_rtp(self, packet: bytes) -> bytes:
        """RTP -> SRTP."""
        try:
            return self._tx.protect(packet)  # type: ignore[no-any-return]
        except (_SrtpError, ValueError, TypeError) as exc:
            raise RemoteProtocolError(f"SRTP protect failed: {exc}", status_hint=None) from None

    def protect_rtcp(self, packet: bytes) -> bytes:
        """RTCP -> SRTCP."""
        try:
            return self._tx.protect_rtcp(packet)  # type: ignore[no-any-return]
        except (_SrtpError, ValueError, TypeError) as exc:
            raise RemoteProtocolError(f"SRTCP protect failed: {exc}", status_hint=None) from None

    def unprotect_rtp(self, packet: bytes) -> bytes:
        """SRTP -> RTP; authentication or replay failure raises RemoteProtocolError(None)."""
        try:
            return self._rx.unprotect(packet)  # type: ignore[no-any-return]
        except (_SrtpError, ValueError, TypeError) as exc:
            raise RemoteProtocolError(f"SRTP unprotect failed: {exc}", status_hint=None) from None

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        """SRTCP -> RTCP; authentication or replay failure raises RemoteProtocolError(None)."""
        try:
            return self._rx.unprotect_rtcp(packet)  # type: ignore[no-any-return]
        except (_SrtpError, ValueError, TypeError) as exc:
            raise RemoteProtocolError(f"SRTCP unprotect failed: {exc}", status_hint=None) from None
