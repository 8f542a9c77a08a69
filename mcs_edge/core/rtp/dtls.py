"""DTLS-SRTP endpoint (RFC 5763/5764) on pyOpenSSL memory BIOs: sans-IO, time passed in.

Theory of operation
-------------------
One :class:`DtlsEndpoint` per media leg that speaks DTLS-SRTP. Datagrams go in with
:meth:`~DtlsEndpoint.receive`, datagrams to send come out of
:meth:`~DtlsEndpoint.datagrams_to_send`, events (:class:`HandshakeComplete`, :class:`HandshakeFailed`,
:class:`ConnectionClosed`) come out of :meth:`~DtlsEndpoint.next_event`, and one deadline is
exposed by :meth:`~DtlsEndpoint.get_timer` / :meth:`~DtlsEndpoint.handle_timer` (the aioquic shape).

Role. The SDP ``a=setup`` decides it: we answer ``passive`` towards browsers, so we are the DTLS
*server* and only ever answer the browser's ClientHello (INTEROP.md: a relay that sends its own
ClientHello early leaves Chromium stuck). A *client* endpoint sends nothing until
:meth:`~DtlsEndpoint.start` is called, which the session does once the answer is out.

Identity. The edge has one self-signed ECDSA P-256 certificate per process, built outside the core
(:func:`mcs_edge.certs.edge_dtls_certificate`: the core reads no clock for its dates) and given to
each endpoint; its SHA-256 fingerprint goes into our SDP. The peer's certificate is accepted only
if its digest matches one of the ``a=fingerprint`` values of the remote SDP (compared with :func:`hmac.compare_digest` in the verify callback). A mismatch aborts the handshake: the
event is :class:`HandshakeFailed` with reason ``"fingerprint mismatch"``.

Retransmission. Our virtual clock is authoritative: every new flight arms a timer at ``now + 1 s``,
doubling on each retransmission up to ``MAX_RETRANSMISSIONS`` (then the handshake fails). When it
fires we first let OpenSSL retransmit (``DTLSv1_handle_timeout``; it does so with fresh record
numbers when its own clock agrees, which is the production case), and if it sent nothing we resend
the last flight's datagrams verbatim (the test case, where virtual time runs ahead of OpenSSL's).
As a server that has finished, a handshake record from the peer means our final flight was lost:
we resend it (RFC 6347 s.4.2.4).

Output of the memory BIO is one byte stream; it is cut back into DTLS records (13-byte headers carry
the lengths) and packed into datagrams of at most ``MTU`` bytes without splitting a record.

Errors. :meth:`~DtlsEndpoint.receive` raises :class:`RemoteProtocolError` (status_hint None) only for
a datagram it refuses to look at (not DTLS, or the endpoint has failed or closed). Anything OpenSSL
rejects during the handshake ends it with :class:`HandshakeFailed`; after the handshake, bad records
are dropped as DTLS requires.
"""

from __future__ import annotations

import enum
import functools
import hmac
import struct
from collections import deque
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL

from mcs_edge.core.media.sdp import Fingerprint
from mcs_edge.core.rtp.srtp import (
    DTLS_SRTP_EXPORTER_LABEL,
    PROFILES_BY_DTLS_NAME,
    SrtpContext,
    SrtpProfile,
    keys_from_dtls,
)
from mcs_edge.errors import RemoteProtocolError

__all__ = [
    "INITIAL_RTO",
    "MAX_RETRANSMISSIONS",
    "MTU",
    "SRTP_PROFILES",
    "ConnectionClosed",
    "DtlsCertificate",
    "DtlsEndpoint",
    "DtlsEvent",
    "DtlsState",
    "HandshakeComplete",
    "HandshakeFailed",
]

SRTP_PROFILES: Final = b"SRTP_AEAD_AES_128_GCM:SRTP_AES128_CM_SHA1_80"
INITIAL_RTO: Final = 1.0
MAX_RTO: Final = 60.0
MAX_RETRANSMISSIONS: Final = 6
MTU: Final = 1200
_RECORD_HEADER: Final = struct.Struct("!BHH6sH")  # type, version, epoch, sequence, length
_RECORD_HEADER_LENGTH: Final = 13
_CONTENT_CHANGE_CIPHER_SPEC: Final = 20
_CONTENT_HANDSHAKE: Final = 22
_DTLS_FIRST_BYTE_MIN: Final = 20
_DTLS_FIRST_BYTE_MAX: Final = 63
_BIO_READ_SIZE: Final = 65536
_HASHES: Final[dict[str, type[hashes.HashAlgorithm]]] = {
    "sha-1": hashes.SHA1,
    "sha-224": hashes.SHA224,
    "sha-256": hashes.SHA256,
    "sha-384": hashes.SHA384,
    "sha-512": hashes.SHA512,
}


# ---------------------------------------------------------------------------------- certificate


@dataclass(frozen=True, slots=True, eq=False)
class DtlsCertificate:
    """The edge's DTLS identity: ECDSA P-256 key, self-signed certificate and its SDP fingerprint."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey
    fingerprint: Fingerprint

    @classmethod
    def of(cls, certificate: x509.Certificate, private_key: ec.EllipticCurvePrivateKey) -> DtlsCertificate:
        """The identity of ``certificate`` and its key (built by :func:`mcs_edge.certs.dtls_certificate`:
        the core reads no clock, so certificate dates come from outside)."""
        fingerprint = Fingerprint.from_digest("sha-256", certificate.fingerprint(hashes.SHA256()))
        return cls(certificate, private_key, fingerprint)


@functools.lru_cache(maxsize=8)
def _context(certificate: DtlsCertificate, srtp_profiles: bytes) -> SSL.Context:
    ctx = SSL.Context(SSL.DTLS_METHOD)
    ctx.use_certificate(certificate.certificate)
    ctx.use_privatekey(certificate.private_key)
    ctx.check_privatekey()
    ctx.set_tlsext_use_srtp(srtp_profiles)
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _verify_callback)
    ctx.set_options(SSL.OP_NO_TICKET)
    return ctx


def _verify_callback(conn: SSL.Connection, cert: object, errno: int, depth: int, ok: int) -> bool:
    endpoint = conn.get_app_data()
    if not isinstance(endpoint, DtlsEndpoint) or depth != 0:
        return True  # a chain above the leaf (browsers send none) is not what we pin
    return endpoint.check_peer_certificate(cert)


# --------------------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class HandshakeComplete:
    """DTLS finished: the negotiated SRTP profile and our/their SRTP master key||salt."""

    profile: SrtpProfile
    local_key: bytes
    remote_key: bytes

    def srtp_context(self) -> SrtpContext:
        """An SRTP context keyed from this handshake."""
        return SrtpContext(self.profile, self.local_key, self.remote_key)


@dataclass(frozen=True, slots=True)
class HandshakeFailed:
    """The handshake cannot complete (fingerprint mismatch, alert, timeout, no SRTP profile)."""

    reason: str


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer sent close_notify."""


DtlsEvent = HandshakeComplete | HandshakeFailed | ConnectionClosed


class DtlsState(enum.Enum):
    """Life cycle of an endpoint."""

    NEW = "new"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    FAILED = "failed"
    CLOSED = "closed"


# -------------------------------------------------------------------------------------- endpoint


def _split_records(data: bytes) -> list[bytes]:
    """Cut a BIO byte stream into DTLS records (unparseable tail kept whole)."""
    records: list[bytes] = []
    pos = 0
    end = len(data)
    while pos < end:
        if pos + _RECORD_HEADER_LENGTH > end:
            records.append(data[pos:])
            break
        length = _RECORD_HEADER.unpack_from(data, pos)[4]
        stop = min(end, pos + _RECORD_HEADER_LENGTH + length)
        records.append(data[pos:stop])
        pos = stop
    return records


def _pack(records: list[bytes], mtu: int) -> list[bytes]:
    datagrams: list[bytes] = []
    current = b""
    for record in records:
        if current and len(current) + len(record) > mtu:
            datagrams.append(current)
            current = b""
        current += record
    if current:
        datagrams.append(current)
    return datagrams


class DtlsEndpoint:
    """One side of a DTLS-SRTP association."""

    def __init__(
        self,
        *,
        is_client: bool,
        remote_fingerprints: tuple[Fingerprint, ...] = (),
        certificate: DtlsCertificate,
        mtu: int = MTU,
        srtp_profiles: bytes = SRTP_PROFILES,
    ) -> None:
        self.is_client = is_client
        self.certificate = certificate
        self.remote_fingerprints = remote_fingerprints
        self.state = DtlsState.NEW
        self.mtu = mtu
        self._conn = SSL.Connection(_context(self.certificate, srtp_profiles), None)
        self._conn.set_app_data(self)
        if is_client:
            self._conn.set_connect_state()
        else:
            self._conn.set_accept_state()
        self._out: list[bytes] = []
        self._events: deque[DtlsEvent] = deque()
        self._last_flight: list[bytes] = []
        self._deadline: float | None = None
        self._rto = INITIAL_RTO
        self._retransmissions = 0
        self._fail_reason: str | None = None

    # ------------------------------------------------------------------------------- public API

    def set_remote_fingerprints(self, fingerprints: tuple[Fingerprint, ...]) -> None:
        """Pin the peer's certificate to these SDP fingerprints (before it is verified)."""
        self.remote_fingerprints = fingerprints

    def start(self, now: float) -> None:
        """Begin the handshake. A client sends its ClientHello now; a server just waits for one."""
        if self.state is not DtlsState.NEW:
            return
        self.state = DtlsState.CONNECTING
        if self.is_client:
            self._handshake(now)

    def receive(self, data: bytes, now: float) -> None:
        """Feed one datagram from the peer.

        Raises RemoteProtocolError(None) if the datagram is not DTLS or the endpoint is finished;
        everything else surfaces as events.
        """
        if len(data) < _RECORD_HEADER_LENGTH or not (_DTLS_FIRST_BYTE_MIN <= data[0] <= _DTLS_FIRST_BYTE_MAX):
            raise RemoteProtocolError("not a DTLS record", status_hint=None)
        if self.state in (DtlsState.FAILED, DtlsState.CLOSED):
            raise RemoteProtocolError(f"DTLS endpoint is {self.state.value}", status_hint=None)
        if self.state is DtlsState.NEW:
            if self.is_client:
                raise RemoteProtocolError("DTLS client not started yet", status_hint=None)
            self.state = DtlsState.CONNECTING
        try:
            self._conn.bio_write(data)
        except SSL.Error:
            raise RemoteProtocolError("DTLS input rejected", status_hint=None) from None
        if self.state is DtlsState.CONNECTING:
            self._handshake(now)
        else:
            self._read_connected(data)

    def datagrams_to_send(self) -> list[bytes]:
        """Datagrams to send to the peer, in order; the list is handed over (not copied)."""
        out, self._out = self._out, []
        return out

    def next_event(self) -> DtlsEvent | None:
        """The next event, or None."""
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """Absolute deadline for :meth:`handle_timer`, or None."""
        return self._deadline

    def handle_timer(self, now: float) -> None:
        """Retransmit the last flight if its deadline has passed (or fail after too many tries)."""
        if self._deadline is None or now < self._deadline:
            return
        if self.state is not DtlsState.CONNECTING:
            self._deadline = None
            return
        if self._retransmissions >= MAX_RETRANSMISSIONS:
            self._fail("handshake timeout")
            return
        self._retransmissions += 1
        sent = False
        try:
            if self._conn.DTLSv1_handle_timeout():
                sent = self._flush()
        except SSL.Error:
            self._fail(self._fail_reason or "handshake failed during retransmission")
            return
        if not sent:
            self._out.extend(self._last_flight)
        self._rto = min(self._rto * 2, MAX_RTO)
        self._deadline = now + self._rto

    def close(self) -> None:
        """Send close_notify (if connected) and stop."""
        if self.state is DtlsState.CONNECTED:
            try:
                self._conn.shutdown()
            except SSL.Error:
                pass
            self._flush()
        if self.state not in (DtlsState.FAILED,):
            self.state = DtlsState.CLOSED
        self._deadline = None

    # -------------------------------------------------------------------------------- internals

    def check_peer_certificate(self, cert: object) -> bool:
        to_crypto = getattr(cert, "to_cryptography", None)
        if to_crypto is None:
            self._fail_reason = "no peer certificate"
            return False
        peer = to_crypto()
        for fp in self.remote_fingerprints:
            algo = _HASHES.get(fp.algorithm)
            if algo is not None and hmac.compare_digest(peer.fingerprint(algo()), fp.digest):
                return True
        self._fail_reason = "fingerprint mismatch" if self.remote_fingerprints else "no remote fingerprint"
        return False

    def _flush(self) -> bool:
        """Move BIO output to the send queue as datagrams; returns True if anything was sent."""
        chunks: list[bytes] = []
        while True:
            try:
                chunk = self._conn.bio_read(_BIO_READ_SIZE)
            except SSL.WantReadError:
                break
            except SSL.Error:
                break
            if not chunk:
                break
            chunks.append(chunk)
        if not chunks:
            return False
        datagrams = _pack(_split_records(b"".join(chunks)), self.mtu)
        self._out.extend(datagrams)
        self._last_flight = datagrams
        return True

    def _handshake(self, now: float) -> None:
        try:
            self._conn.do_handshake()
        except SSL.WantReadError:
            if self._flush():
                self._rto = INITIAL_RTO
                self._retransmissions = 0
                self._deadline = now + self._rto
            return
        except SSL.Error as exc:
            self._flush()  # the alert, if any
            self._fail(self._fail_reason or f"handshake failed: {_ssl_reason(exc)}")
            return
        self._flush()
        self._deadline = None
        self._complete()

    def _complete(self) -> None:
        name = self._conn.get_selected_srtp_profile()
        profile = PROFILES_BY_DTLS_NAME.get(name)
        if profile is None:
            self._fail("no common SRTP profile")
            return
        try:
            material = self._conn.export_keying_material(DTLS_SRTP_EXPORTER_LABEL, 2 * profile.master_length)
        except SSL.Error:
            self._fail("keying material export failed")
            return
        local, remote = keys_from_dtls(profile, material, is_client=self.is_client)
        self.state = DtlsState.CONNECTED
        self._events.append(HandshakeComplete(profile, local, remote))

    def _read_connected(self, data: bytes) -> None:
        while True:
            try:
                self._conn.recv(_BIO_READ_SIZE)  # application data is not used by DTLS-SRTP
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                self.state = DtlsState.CLOSED
                self._deadline = None
                self._events.append(ConnectionClosed())
                break
            except SSL.Error:
                break  # bad records after the handshake are dropped
        sent = self._flush()
        if (
            not sent
            and not self.is_client
            and data[0] in (_CONTENT_HANDSHAKE, _CONTENT_CHANGE_CIPHER_SPEC)
            and self._last_flight
        ):
            # The client is retransmitting its last flight: our final flight was lost.
            self._out.extend(self._last_flight)

    def _fail(self, reason: str) -> None:
        if self.state is DtlsState.FAILED:
            return
        self.state = DtlsState.FAILED
        self._deadline = None
        self._events.append(HandshakeFailed(reason))


def _ssl_reason(exc: SSL.Error) -> str:
    try:
        return str(exc.args[0][0][2])
    except (IndexError, TypeError):
        return str(exc) or type(exc).__name__
