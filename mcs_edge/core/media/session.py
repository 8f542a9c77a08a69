"""Media sessions: the relay legs of one call, their profiles, offer/answer, and the packet path.

Theory of operation
-------------------
A :class:`MediaSession` anchors the media of one call between two *sides*, ``CLIENT`` (browser,
mobile app) and ``PBX`` (the tenant's platform). Each side has :class:`Leg` objects; a leg is one
relay port (plus an RTCP port when its peer does not mux RTCP) and the *profile* its peer speaks:

=============  ===================================================================================
profile        what a leg does with a datagram from its peer (RFC 7983 demux on the first byte)
=============  ===================================================================================
WEBRTC         STUN -> ICE-lite responder (answer, consent); DTLS -> :class:`DtlsEndpoint` (keys
               SRTP); SRTP/SRTCP -> unprotect. Only addresses with ICE consent are heard.
SDES           SRTP/SRTCP -> unprotect with the ``a=crypto`` keys; symmetric latching
RTP            RTP/RTCP as is; symmetric latching; RTCP on its own port unless muxed
PASSTHROUGH    opaque; STUN requests are remembered so each response reaches the candidate that
               asked; a new source is heard only once a STUN message from it verified with the
               peers' ICE credentials (:mod:`~mcs_edge.core.media.source_gate`), then latching
=============  ===================================================================================

then forwards the packet on the other side's leg for the same m-line, protecting it with that
leg's SRTP context when its profile is WEBRTC or SDES. Any profile converts to any other; the
tenant's ``media`` setting only picks the PBX side's profile (``bridge`` RTP, ``bridge-sdes``
SDES, ``passthrough`` PASSTHROUGH), so the three tenant modes are one code path.

Legs per m-line. ``mline_legs[side][i]`` is the leg of m-line ``i`` on ``side``. m-lines a WebRTC
peer bundles (``a=group:BUNDLE``) share one leg; RTP and SDES peers get one leg per m-line. A leg
whose m-lines map to one leg on the other side forwards to it directly (the fast path); a bundled
leg facing several legs routes each packet with a :class:`ForwardingTable` (SSRC, then payload
type; RTCP by sender SSRC, else to its first m-line).

Offer/answer (RFC 3264). :meth:`MediaSession.offer` takes the SDP one side offered, creates the legs
it needs (ports through the :class:`LegPorts` the owner supplies; none left raises
:class:`OutOfPorts`) and returns the offer for the other side (:func:`rewrite_offer` with our
relay addresses, ICE credentials, fingerprint or SDES keys). :meth:`MediaSession.answer` takes the
other side's answer, validates it, returns the answer for the offerer (:func:`rewrite_answer`) and
only then *commits* both sides' remote parameters: addresses, ICE credentials (a new ufrag/pwd is
an ICE restart: new local credentials in our answer, old pairs kept until the peer nominates
under the new ones), DTLS role and fingerprints (a new fingerprint starts a new DTLS association;
the old SRTP keys serve until it completes), SDES keys (kept, with their replay state, when
unchanged). A failed re-offer therefore changes nothing. :meth:`MediaSession.offer_body` /
:meth:`MediaSession.answer_body` return the same SDP as bytes (what the anchor sends); a passthrough
session writes them by editing the received lines (:func:`passthrough_body`) instead of building
and serialising the rewritten description. Every SDP we send carries our own
``o=`` line, whose version grows only when the body changed (RFC 3264 s.8).

DTLS role: we answer ``passive`` (we are the server and never send first) unless the offerer is
``passive``; as offerer we send ``actpass`` and follow the answer. A client-role endpoint starts
only after the answer is committed and ICE has selected an address. DTLS records that arrive
before the role is known (a browser answering ``active`` may send its ClientHello before its SIP
answer reaches us) are kept (at most four) and replayed at commit.

Per-packet path (:meth:`Leg.receive`, one call per datagram; RTP from the current source takes a
fast path at its top that makes the same decisions inline): demux by first byte, source check
(ICE consent, or latching: the first packet latches; another source takes over only after the
latched one has been silent ``relatch_after`` seconds), police (token bucket of the leg), SRTP
unprotect, count (packets, bytes, loss from sequence gaps), route, protect, send. Every refused
packet is counted in ``counters.dropped`` by reason and never raises.

Time: ``now`` is an argument. :meth:`MediaSession.get_timer` is the earliest of the legs' idle
deadlines (armed at commit; ``idle_timeout`` for a peer that should be sending, ``hold_timeout``
for one that declared ``recvonly``/``inactive``), ICE consent and DTLS retransmission deadlines,
and an unanswered offer's deadline. The idle deadline moves with traffic without telling anyone: a
timer that fires early just finds nothing due. Idle timeout, consent loss, a failed DTLS handshake
or an unanswered offer end the session through the ``on_end`` callback.

Outputs: each port's ``send(data, addr)`` callable is attached by the owner's I/O (tests attach a
list); :meth:`Leg.receive` returns True when it touched ICE/DTLS state, telling the caller to
re-arm the session's timer and reap ended sessions.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Final, Protocol

from mcs_edge.core.media.forwarding import MAX_DROPOUT, ForwardingTable, LegCounters, SequenceTracker
from mcs_edge.core.media.offload import MAX_OFFLOAD_TRACKERS, Offload, OffloadSpec, OffloadTaken
from mcs_edge.core.media.quality import CallQuality
from mcs_edge.core.media.reanchor import transport_only_change
from mcs_edge.core.media.sdp import (
    Crypto,
    Fingerprint,
    IceCredentials,
    MediaTransport,
    Origin,
    Profile,
    SessionDescription,
    detect_profile,
)
from mcs_edge.core.media.sdp_rewrite import (
    SDES_SUITES,
    LocalLeg,
    RelayAddress,
    passthrough_body,
    rewrite_answer,
    rewrite_offer,
)
from mcs_edge.core.media.source_gate import SourceGate
from mcs_edge.core.randomness import RandomBytes, random_int
from mcs_edge.core.rtp.demux import KIND_DTLS, KIND_RTP, KIND_STUN, classify_first_byte
from mcs_edge.core.rtp.dtls import (
    ConnectionClosed,
    DtlsCertificate,
    DtlsEndpoint,
    DtlsState,
    HandshakeComplete,
    HandshakeFailed,
)
from mcs_edge.core.rtp.srtp import PROFILES, SrtpContext
from mcs_edge.core.shaping import Policer, TokenBucket
from mcs_edge.core.stun.ice_lite import (
    ConsentLost,
    IceLiteResponder,
    SelectedAddressChanged,
    generate_credentials,
)
from mcs_edge.errors import EdgeError, LocalProtocolError, RemoteProtocolError

__all__ = [
    "CLIENT",
    "PBX",
    "Leg",
    "LegPorts",
    "MediaSession",
    "OutOfPorts",
    "SessionSettings",
    "Side",
    "pbx_profile_for",
]

Addr = Any  # (host, port) as the socket reports it (a 4-tuple for IPv6)
Sender = Callable[[bytes, Any], None]

MAX_EARLY_DTLS: Final = 4
MAX_STUN_ORIGINS: Final = 64
MAX_TRACKED_SSRCS: Final = 32
OFFER_SDES_SUITES: Final = ("AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32")
ANSWER_SDES_SUITES: Final = ("AES_CM_128_HMAC_SHA1_80", "AEAD_AES_128_GCM", "AES_CM_128_HMAC_SHA1_32")
_SDES_KEY_LENGTH: Final = max(SDES_SUITES.values())
_SENDING: Final = frozenset({"sendrecv", "sendonly"})
_KINDS: Final = bytes(classify_first_byte(b) for b in range(256))
_IS_RTP: Final = bytes(classify_first_byte(b) == KIND_RTP for b in range(256))
_U32: Final = struct.Struct("!I").unpack_from
_STUN_COOKIE: Final = b"\x21\x12\xa4\x42"
_INF: Final = float("inf")


class Side(enum.IntEnum):
    """The two sides of a call; ``1 - side`` is the other one."""

    CLIENT = 0
    PBX = 1


CLIENT: Final = Side.CLIENT
PBX: Final = Side.PBX

_TENANT_PBX_PROFILE: Final = {
    "bridge": Profile.RTP,
    "bridge-sdes": Profile.SDES,
    "passthrough": Profile.PASSTHROUGH,
}


def pbx_profile_for(tenant_media: str) -> Profile:
    """The PBX side's profile for a tenant's ``media`` setting."""
    try:
        return _TENANT_PBX_PROFILE[tenant_media]
    except KeyError:
        raise LocalProtocolError(f"unknown tenant media mode {tenant_media!r}") from None


class OutOfPorts(EdgeError):
    """No relay port could be opened for a new leg (the call is refused with 503)."""


class LegPorts(Protocol):
    """What a session needs from its owner: open (allocate, bind, attach senders) and close ports."""

    def open(self, leg: Leg, rtcp_mux: bool) -> bool:
        """Give ``leg`` its port(s): set ``port``/``rtcp_port`` and ``send``/``send_rtcp``."""
        ...

    def close(self, leg: Leg) -> None:
        """Release the leg's port(s); ``leg.port`` is 0 afterwards."""
        ...


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """Per-edge media settings a session works with."""

    client_host: str = "127.0.0.1"  # our address in SDP toward clients
    pbx_host: str = "127.0.0.1"  # our address in SDP toward PBXs
    idle_timeout: float = 30.0
    hold_timeout: float = 3600.0
    offer_timeout: float = 300.0
    relatch_after: float = 2.0
    rate: float = 60000.0  # policing, bytes/s per leg
    burst: float = 120000.0
    ipv6: bool = False  # relay sockets are IPv6: prefer IPv6 destinations from SDP
    offer_sdes_suites: tuple[str, ...] = OFFER_SDES_SUITES
    answer_sdes_suites: tuple[str, ...] = ANSWER_SDES_SUITES
    #: The edge's DTLS identity (``mcs_edge.certs.edge_dtls_certificate`` in the adapter).
    certificate: DtlsCertificate = field(kw_only=True)
    #: The random source of SDES keys, ICE credentials and SDP origin ids (``secrets.token_bytes``).
    random_bytes: RandomBytes = field(kw_only=True)

    def host(self, side: Side) -> str:
        return self.client_host if side is CLIENT else self.pbx_host


def _discard(data: bytes, addr: Any) -> None:
    return None


def _ip(host: str | None) -> str | None:
    """``host`` if it is a usable IP literal (not unspecified), else None."""
    if not host:
        return None
    return _usable_ip(host)


@functools.lru_cache(maxsize=4096)
def _usable_ip(host: str) -> str | None:
    """:func:`_ip` of a non-empty string; remembered (a PBX or client address recurs in every SDP)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return None if ip.is_unspecified else host


def _is_v6(host: str) -> bool:
    return ":" in host


def _is_client_hello(data: bytes) -> bool:
    """A DTLS handshake record carrying a ClientHello (content type 22, handshake type 1)."""
    return len(data) > 13 and data[0] == 22 and data[13] == 1


def _offers_ice(side: Side, profile: Profile) -> bool:
    """Does a new leg get an ICE-lite responder? WebRTC legs always; every client-side leg but
    passthrough (a mobile app behind NAT needs ICE and consent on plain RTP and SDES too). A peer
    whose SDP has no ICE credentials drops it at commit (latching instead)."""
    return profile is Profile.WEBRTC or (side is CLIENT and profile is not Profile.PASSTHROUGH)


def _pick_crypto(offered: tuple[Crypto, ...], suites: tuple[str, ...]) -> Crypto | None:
    """The first offered key we can use (the same rule :func:`rewrite_answer` applies)."""
    for c in offered:
        if c.suite in suites and c.mki is None and not c.session_params and not c.more_keys:
            return c
    return None


# ============================================================================================ legs


class Leg:
    """One relay port (pair) on one side of a session; see the module docstring."""

    __slots__ = (
        "_early_dtls",
        "counters",
        "decrypts",
        "default_target",
        "dtls",
        "dtls_client_pending",
        "encrypts",
        "free_latch",
        "gate",
        "ice",
        "index",
        "last_rtcp_rx",
        "last_rtp",
        "last_rx",
        "limit",
        "offload",
        "police",
        "policer",
        "port",
        "profile",
        "quality",
        "relatch_after",
        "remote",
        "remote_fingerprints",
        "remote_rtcp",
        "rewrite",
        "rewrite_rtcp",
        "route_map",
        "router",
        "rtcp_ice",
        "rtcp_port",
        "rx_ssrc",
        "rx_tracker",
        "sdes",
        "sdes_key",
        "sdp_remote",
        "send",
        "send_rtcp",
        "session",
        "side",
        "srtp",
        "stun_origins",
        "stun_rx",
        "target",
        "tx_bytes",
        "tx_packets",
    )

    def __init__(self, session: MediaSession, side: Side, index: int, profile: Profile, now: float) -> None:
        settings = session.settings
        self.session = session
        self.side = side
        self.index = index  # the first m-line this leg was made for
        self.profile = profile
        self.port = 0
        self.rtcp_port: int | None = None
        self.send: Sender = _discard
        self.send_rtcp: Sender = _discard
        self.remote: Addr | None = None  # where RTP (and muxed RTCP) goes: latched, ICE-selected or SDP
        self.remote_rtcp: Addr | None = None
        self.sdp_remote: Addr | None = None  # the peer's address from its last SDP
        self.free_latch = False  # the next source may latch at once (the SDP address changed)
        self.decrypts = profile in (Profile.WEBRTC, Profile.SDES)
        self.encrypts = self.decrypts
        self.srtp: SrtpContext | None = None
        self.sdes: tuple[str, bytes] | None = None  # (suite, remote key) the SDES context was keyed with
        self.sdes_key = settings.random_bytes(_SDES_KEY_LENGTH) if profile is Profile.SDES else b""
        self.ice: IceLiteResponder | None = None
        self.rtcp_ice: IceLiteResponder | None = None  # ICE component 2 on a separate RTCP port
        self.dtls: DtlsEndpoint | None = None
        self.dtls_client_pending = False
        self.remote_fingerprints: tuple[Fingerprint, ...] = ()
        self._early_dtls: list[tuple[bytes, Addr]] = []
        self.target: Leg | None = None
        self.router: ForwardingTable[int] | None = None
        self.route_map: dict[int, Leg] = {}
        self.default_target: Leg | None = None
        self.counters = LegCounters()
        self.rx_ssrc = b""  # the SSRC (4 bytes) of the last RTP packet the fast path counted ...
        self.rx_tracker: SequenceTracker | None = None  # ... and its tracker in counters.sequences
        # loss/jitter/RTT of this leg from RTCP and the counters (core/media/quality.py)
        self.quality = session.quality.new_leg(side.name, self.counters)
        self.stun_rx = 0
        self.tx_packets = 0
        self.tx_bytes = 0
        self.policer = session.new_policer(now)
        self.police = self.policer.check  # the per-packet decision (counted by policer.refused)
        self.relatch_after = settings.relatch_after
        self.last_rx = now
        self.last_rtcp_rx = now
        self.limit: float | None = None  # idle limit once the offer/answer is committed
        self.stun_origins: dict[bytes, Addr] = {}
        #: PASSTHROUGH: the sources proven by ICE checks (no media injection from elsewhere)
        self.gate: SourceGate | None = SourceGate() if profile is Profile.PASSTHROUGH else None
        #: The last plain RTP packet forwarded to this leg's peer, and a rewrite of the packets
        #: forwarded to it (stream continuity after the other side re-anchored; reanchor.py).
        self.last_rtp = b""
        self.rewrite: Callable[[bytes, float], bytes] | None = None
        self.rewrite_rtcp: Callable[[bytes], bytes] | None = None
        #: The holder of this leg's forwarding rule while one runs its fast path (core/media/offload.py).
        self.offload: Offload | None = None

    def __repr__(self) -> str:
        return f"<Leg {self.side.name} {self.profile.name} port={self.port} remote={self.remote}>"

    # ----------------------------------------------------------------- offloading the fast path

    def offload_spec(self) -> OffloadSpec | None:
        """The forwarding rule that would do this leg's fast path, or None (core/media/offload.py)."""
        if self.session.ended is not None:
            return None
        unprotect = protect = None
        if self.decrypts:  # a leg not keyed yet counts "not-keyed" in Python
            srtp = self.srtp
            if srtp is None:
                return None
            unprotect = srtp.offload_unprotect()
            if unprotect is None:
                return None
        # ICE may move ``remote`` (the rule's source, or its target's: its destination) or end the
        # call from a timer too, and DTLS may re-key a leg from a timer: MediaSession.handle_timer
        # releases such rules before it runs them.
        target = self.target
        if target is None or target.rewrite is not None or target.remote is None:
            return None
        if target.encrypts:
            srtp = target.srtp
            if srtp is None:
                return None
            protect = srtp.offload_protect()
            if protect is None:
                return None
        source = self.remote
        tracker = self.rx_tracker
        if source is None or tracker is None or len(self.rx_ssrc) != 4:
            return None
        policer = self.policer
        bucket = policer.bucket
        if policer.parent is not None or self.police != bucket.consume:
            return None
        sequences = self.counters.sequences
        current = _U32(self.rx_ssrc)[0]
        if sequences.get(current) is not tracker:
            return None
        trackers = [(self.rx_ssrc, tracker.max_seq)]
        for ssrc, other in sequences.items():
            if ssrc != current and len(trackers) < MAX_OFFLOAD_TRACKERS:
                trackers.append((ssrc.to_bytes(4, "big"), other.max_seq))
        tokens, last = bucket.state()
        return OffloadSpec(
            source,
            target,
            target.remote,
            bucket.rate,
            bucket.burst,
            tokens,
            last,
            tuple(trackers),
            0,
            unprotect,
            protect,
        )

    def absorb_offload(self, spec: OffloadSpec, taken: OffloadTaken) -> None:
        """Apply what a rule installed from ``spec`` did, as the fast path would have done it."""
        counters = self.counters
        counters.packets += taken.packets
        counters.bytes += taken.rx_bytes
        if taken.policed:
            self.policer.dropped_packets += taken.policed
            self.policer.dropped_bytes += taken.policed_bytes
            dropped = counters.dropped
            dropped["policed"] = dropped.get("policed", 0) + taken.policed
        if taken.srtp_drops:
            dropped = counters.dropped
            dropped["srtp"] = dropped.get("srtp", 0) + taken.srtp_drops
        if taken.last_rx is not None and taken.last_rx > self.last_rx:
            # never backwards: the anchor may have moved last_rx on since (a call coming back from
            # park counts from its return), and the rule's packet came before that
            self.last_rx = taken.last_rx
        self.policer.bucket.restore(taken.tokens, taken.last)
        sequences = counters.sequences
        for (ssrc, _), (max_seq, received) in zip(spec.trackers, taken.trackers, strict=True):
            if received:
                tracker = sequences[_U32(ssrc)[0]]
                tracker.max_seq = max_seq
                tracker.received += received
        ssrc = spec.trackers[taken.current][0]
        if ssrc != self.rx_ssrc:
            self.rx_ssrc = ssrc
            self.rx_tracker = sequences[_U32(ssrc)[0]]
        target = spec.target
        target.tx_packets += taken.tx_packets
        target.tx_bytes += taken.tx_bytes
        if taken.protect_drops:
            dropped = target.counters.dropped
            dropped["srtp-protect"] = dropped.get("srtp-protect", 0) + taken.protect_drops
        if taken.last_rtp is not None:
            target.last_rtp = taken.last_rtp

    def sync(self) -> None:
        """Bring back what a forwarding rule counted for this leg (nothing when none holds it)."""
        offload = self.offload
        if offload is not None:
            offload.sync()

    # ---------------------------------------------------------------------- the per-packet path

    def receive(self, data: bytes, addr: Addr, now: float) -> bool:
        """One datagram on the leg's RTP (or only) port. True: ICE/DTLS state may have changed.

        The fast path (an RTP packet of at least a fixed header from the current source, not
        RTCP) is the general path below with the checks it passes taken out, in the same order:
        police, unprotect, count, route, rewrite, protect, send; one Python frame besides the
        bucket's ``consume`` and libsrtp's call.
        """
        n = len(data)
        if n > 11 and _IS_RTP[data[0]] and addr == self.remote and not 191 < data[1] < 224:
            police = self.police  # slot loads, then calls: a LOAD_METHOD on a slot never specializes
            if not police(n, now):
                self.policer.refused(n)
                self.counters.drop("policed")
                return False
            if self.decrypts:
                srtp = self.srtp
                if srtp is None:
                    self.counters.drop("not-keyed")
                    return False
                unprotect = srtp.unprotect_rtp
                try:
                    data = unprotect(data)
                except RemoteProtocolError:
                    self.counters.drop("srtp")
                    return False
            self.last_rx = now
            counters = self.counters
            counters.packets += 1
            counters.bytes += n
            seq = (data[2] << 8) | data[3]
            tracker = self.rx_tracker
            if tracker is not None and data[8:12] == self.rx_ssrc:  # the last packet's SSRC
                if 0 < seq - tracker.max_seq < MAX_DROPOUT:  # the next packet in order: no call
                    tracker.max_seq = seq
                    tracker.received += 1
                else:
                    tracker.update(seq)
            else:
                self._track(data, seq)
            target = self.target
            if target is None:
                target = self._route(_U32(data, 8)[0], data[1] & 0x7F)
                if target is None:
                    return False
            rewrite = target.rewrite
            if rewrite is not None:
                data = rewrite(data, now)
            target.last_rtp = data
            if target.encrypts:
                srtp = target.srtp
                if srtp is None:
                    target.counters.drop("not-keyed")
                    return False
                protect = srtp.protect_rtp
                try:
                    data = protect(data)
                except RemoteProtocolError:
                    target.counters.drop("srtp-protect")
                    return False
            dest = target.remote
            if dest is None:
                target.counters.drop("no-destination")
                return False
            send = target.send
            try:
                send(data, dest)
            except Exception:  # a socket error must never reach the reactor
                target.counters.drop("send-error")
                return False
            target.tx_packets += 1
            target.tx_bytes += len(data)
            return False
        kind = _KINDS[data[0]] if n else 0
        if kind == KIND_RTP:
            moved = addr != self.remote
            if moved and not self._accept(addr, now):
                return False
            if n < 8:
                self.counters.drop("truncated")
                return False
            if not self.policer.admit(n, now):
                self.counters.drop("policed")
                return False
            if 191 < data[1] < 224:
                self._rtcp(data, n, addr if moved else None, now)
                return False
            if n < 12:
                self.counters.drop("truncated")
                return False
            if self.decrypts:
                plain = self.unprotect(data, False)
                if plain is None:
                    return False
                data = plain
            if moved:
                self._latch(addr)  # only a packet that proved valid moves the latch
            self.last_rx = now
            counters = self.counters
            counters.packets += 1
            counters.bytes += n
            seq = (data[2] << 8) | data[3]
            tracker = self.rx_tracker
            if tracker is not None and data[8:12] == self.rx_ssrc:  # the last packet's SSRC
                if 0 < seq - tracker.max_seq < MAX_DROPOUT:  # the next packet in order: no call
                    tracker.max_seq = seq
                    tracker.received += 1
                else:
                    tracker.update(seq)
            else:
                self._track(data, seq)
            target = self.target
            if target is None:
                target = self._route(_U32(data, 8)[0], data[1] & 0x7F)
                if target is None:
                    return False
            rewrite = target.rewrite
            if rewrite is not None:
                data = rewrite(data, now)
            target.last_rtp = data
            if target.encrypts:
                sealed = target.protect(data, False)
                if sealed is None:
                    return False
                data = sealed
            return target.transmit(data, target.remote, target.send)
        if kind == KIND_STUN:
            return self._stun(data, addr, now)
        if kind == KIND_DTLS:
            return self._dtls(data, addr, now)
        self.counters.drop("garbage")
        return False

    def _track(self, data: bytes, seq: int) -> None:
        """Sequence accounting for a packet whose SSRC is not the previous packet's (the fast path
        keeps the last SSRC's tracker and compares its 4 bytes)."""
        ssrc = _U32(data, 8)[0]
        sequences = self.counters.sequences
        tracker = sequences.get(ssrc)
        if tracker is not None:
            tracker.update(seq)
        elif len(sequences) < MAX_TRACKED_SSRCS:
            tracker = sequences[ssrc] = SequenceTracker(seq)
        self.rx_ssrc = data[8:12]
        self.rx_tracker = tracker

    def receive_rtcp(self, data: bytes, addr: Addr, now: float) -> bool:
        """One datagram on the leg's separate RTCP port (RTCP not muxed)."""
        n = len(data)
        if n and _KINDS[data[0]] == KIND_STUN and self.rtcp_ice is not None:
            return self._rtcp_stun(data, addr, now)
        if not n or _KINDS[data[0]] != KIND_RTP:
            self.counters.drop("garbage")
            return False
        moved = addr != self.remote_rtcp
        gate = self.gate
        if moved and gate is not None and gate.enforcing and not self._rtcp_source_known(addr, gate):
            self.counters.drop("unverified-source")
            return False
        if (
            moved
            and self.remote_rtcp is not None
            and self.counters.packets
            and now - self.last_rtcp_rx < self.relatch_after
        ):
            self.counters.drop("foreign-source")
            return False
        if not self.policer.admit(n, now):
            self.counters.drop("policed")
            return False
        if self._rtcp(data, n, None, now) is None:
            return False  # refused: no latching
        if moved:
            self.remote_rtcp = addr
        self.last_rtcp_rx = now
        return False

    # -------------------------------------------------------------------------------- helpers

    def _accept(self, addr: Addr, now: float) -> bool:
        """May a packet from an address other than ``remote`` be heard? (ICE consent, or latching rules.)

        Nothing changes here: :meth:`_latch` moves the latch once the packet proved valid.
        """
        ice = self.ice
        if ice is not None:
            if ice.has_consent(addr, now):
                return True
            self.counters.drop("no-consent")
            return False
        gate = self.gate
        if gate is not None and gate.enforcing:
            if gate.knows(addr):
                return True
            self.counters.drop("unverified-source")
            return False
        if (
            self.free_latch
            or self.remote is None
            or self.counters.packets == 0
            or now - self.last_rx >= self.relatch_after
        ):
            return True
        self.counters.drop("foreign-source")
        return False

    def _rtcp_source_known(self, addr: Addr, gate: SourceGate) -> bool:
        """A separate RTCP port's new source: the host of the latched or a verified RTP source."""
        host = addr[0]
        remote = self.remote
        return (remote is not None and remote[0] == host) or any(v[0] == host for v in gate.verified)

    def _latch(self, addr: Addr) -> None:
        """Send to ``addr`` from now on (symmetric RTP); ICE legs follow ICE instead."""
        if self.ice is None:
            self.remote = addr
            self.free_latch = False

    def _route(self, ssrc: int, payload_type: int) -> Leg | None:
        router = self.router
        if router is None:
            self.counters.drop("no-route")
            return None
        index = router.route(ssrc, payload_type)
        if index is None:
            self.counters.drop("no-route")
            return None
        return self.route_map.get(index)

    def _rtcp(self, data: bytes, n: int, moved: Addr | None, now: float) -> bool | None:
        """An RTCP packet (validated, counted, forwarded); None when it was refused."""
        if n < 8:
            self.counters.drop("truncated")
            return None
        if self.decrypts:
            plain = self.unprotect(data, True)
            if plain is None:
                return None
            data = plain
        if moved is not None:
            self._latch(moved)
        self.last_rx = now
        self.counters.count(n)
        quality = None if self.session.passthrough else self.quality  # passthrough RTCP stays opaque
        if quality is not None:
            quality.from_peer(data, now)
        target = self.target
        if target is None:
            target = None
            router = self.router
            if router is not None:
                index = router.route(_U32(data, 4)[0], -1)
                if index is not None:
                    target = self.route_map.get(index)
            if target is None:
                target = self.default_target
            if target is None:
                self.counters.drop("no-route")
                return False
        if quality is not None:
            target.quality.to_peer(data, now)
        return target.emit_rtcp(data)

    def emit_rtcp(self, data: bytes) -> bool:
        """Send an RTCP packet to this leg's peer (protected if the profile needs it)."""
        rewrite = self.rewrite_rtcp
        if rewrite is not None:
            data = rewrite(data)
        if self.encrypts:
            sealed = self.protect(data, True)
            if sealed is None:
                return False
            data = sealed
        if self.rtcp_port is None:
            return self.transmit(data, self.remote, self.send)
        return self.transmit(data, self.remote_rtcp, self.send_rtcp)

    def unprotect(self, data: bytes, rtcp: bool) -> bytes | None:
        """SRTP(C) from this leg's peer -> plain; None (counted) when not keyed yet or refused."""
        srtp = self.srtp
        if srtp is None:
            self.counters.drop("not-keyed")
            return None
        try:
            return srtp.unprotect_rtcp(data) if rtcp else srtp.unprotect_rtp(data)
        except RemoteProtocolError:
            self.counters.drop("srtcp" if rtcp else "srtp")
            return None

    def protect(self, data: bytes, rtcp: bool) -> bytes | None:
        """Plain -> SRTP(C) toward this leg's peer; None (counted) when not keyed yet or refused
        (e.g. libsrtp's "index too old" after a sequence jump back)."""
        srtp = self.srtp
        if srtp is None:
            self.counters.drop("not-keyed")
            return None
        try:
            return srtp.protect_rtcp(data) if rtcp else srtp.protect_rtp(data)
        except RemoteProtocolError:
            self.counters.drop("srtp-protect")
            return None

    def transmit(self, data: bytes, dest: Addr | None, send: Sender) -> bool:
        """Send ``data`` to this leg's peer at ``dest`` and count it (False: the packet path is done)."""
        if dest is None:
            self.counters.drop("no-destination")
            return False
        try:
            send(data, dest)
        except Exception:  # a socket error must never reach the reactor
            self.counters.drop("send-error")
            return False
        self.tx_packets += 1
        self.tx_bytes += len(data)
        return False

    def _forward_opaque(self, data: bytes, dest_override: Addr | None = None) -> bool:
        target = self.target or self.default_target
        if target is None:
            self.counters.drop("no-route")
            return False
        return target.transmit(
            data, dest_override if dest_override is not None else target.remote, target.send
        )

    # ----------------------------------------------------------------------------------- STUN

    def _stun(self, data: bytes, addr: Addr, now: float) -> bool:
        if self.profile is Profile.PASSTHROUGH:
            return self._relay_stun(data, addr, now)
        ice = self.ice
        if ice is None:
            self.counters.drop("stun")
            return False
        if not self._answer_check(ice, data, addr, now, self.send):
            return False
        if ice.has_consent(addr, now):
            self.last_rx = now
        else:
            self.counters.drop("stun-refused")
        self.ice_events(now)
        return True

    def _rtcp_stun(self, data: bytes, addr: Addr, now: float) -> bool:
        """An ICE check on the separate RTCP port (component 2 of a non-muxed RTP/SDES leg)."""
        ice = self.rtcp_ice
        assert ice is not None
        if not self._answer_check(ice, data, addr, now, self.send_rtcp):
            return False
        while (ev := ice.next_event()) is not None:
            if isinstance(ev, SelectedAddressChanged) and ev.addr is not None:
                self.remote_rtcp = ev.addr
        return False

    def _answer_check(self, ice: IceLiteResponder, data: bytes, addr: Addr, now: float, send: Sender) -> bool:
        """Police an ICE check and answer it on ``send``; False when it was policed (dropped)."""
        if not self.policer.admit(len(data), now):
            self.counters.drop("policed")
            return False
        self.stun_rx += 1
        response = ice.receive(data, addr, now)
        if response is not None:
            try:
                send(response, addr)
            except Exception:
                self.counters.drop("send-error")
        return True

    def drop_ice(self) -> None:
        """The peer does not do ICE (no credentials in its SDP): latching decides where media goes."""
        self.ice = None
        self.rtcp_ice = None

    def ice_events(self, now: float) -> None:
        """Apply the ICE responder's events: selected address, consent loss."""
        ice = self.ice
        if ice is None:
            return
        lost = False
        while (ev := ice.next_event()) is not None:
            if isinstance(ev, SelectedAddressChanged):
                self.remote = ev.addr
            elif isinstance(ev, ConsentLost):
                lost = True
        if self.remote is not None and self.dtls_client_pending and self.dtls is not None:
            self.dtls_client_pending = False
            self.dtls.start(now)
            self.dtls_output(now, None)
        if lost and ice.selected_address is None:
            self.remote = None
            self.session.end("consent lost")

    def _relay_stun(self, data: bytes, addr: Addr, now: float) -> bool:
        n = len(data)
        if n < 20:
            self.counters.drop("truncated")
            return False
        if data[4:8] != _STUN_COOKIE or (data[2] << 8 | data[3]) + 20 != n:
            self.counters.drop("garbage")  # STUN's first byte, but no STUN header (RFC 8489 s.5)
            return False
        gate = self.gate  # before the policer: an injector must not spend the peer's budget
        if addr != self.remote and gate is not None and gate.enforcing and not gate.knows(addr):
            target = self.target or self.default_target
            refused = gate.verify_stun(data, addr, target.gate if target is not None else None)
            if refused is not None:
                self.counters.drop(refused)
                return False
        if not self.policer.admit(n, now):
            self.counters.drop("policed")
            return False
        self.stun_rx += 1
        if data[0] & 0x01:  # success or error response: back to the candidate that asked
            target = self.target or self.default_target
            origin = target.stun_origins.pop(data[8:20], None) if target is not None else None
            return self._forward_opaque(data, origin)
        if not data[1] & 0x10:  # request: remember who asked
            origins = self.stun_origins
            if len(origins) >= MAX_STUN_ORIGINS:
                del origins[next(iter(origins))]
            origins[data[8:20]] = addr
            if self.remote is None:
                self.remote = addr  # learn the peer before it sends media (mDNS-only candidates)
        return self._forward_opaque(data)

    # ----------------------------------------------------------------------------------- DTLS

    def _dtls(self, data: bytes, addr: Addr, now: float) -> bool:
        n = len(data)
        if self.profile is Profile.PASSTHROUGH:
            if n < 13 or data[1] != 0xFE:
                self.counters.drop("garbage")  # not a DTLS record header (RFC 6347 s.4.1)
                return False
            if addr != self.remote:
                if not self._accept(addr, now):
                    return False
                self._latch(addr)  # a verified source (or no ICE credentials to check with)
            if not self.policer.admit(n, now):
                self.counters.drop("policed")
                return False
            self.last_rx = now
            self.counters.count(n)
            return self._forward_opaque(data)
        if self.profile is not Profile.WEBRTC:
            self.counters.drop("dtls")
            return False
        ice = self.ice
        if ice is None:  # DTLS-SRTP without ICE: symmetric latching (RFC 5763 without RFC 8445)
            if addr != self.remote:
                if not self._accept(addr, now):
                    return False
                self.remote = addr
        elif addr != self.remote and not ice.has_consent(addr, now):
            self.counters.drop("no-consent")
            return False
        if not self.policer.admit(n, now):
            self.counters.drop("policed")
            return False
        self.last_rx = now
        dtls = self.dtls
        if dtls is None:
            if len(self._early_dtls) < MAX_EARLY_DTLS:
                self._early_dtls.append((data, addr))
            else:
                self.counters.drop("dtls-early")
            return False
        if dtls.state is DtlsState.NEW and not _is_client_hello(data):
            self.counters.drop("dtls-stray")  # e.g. a record of the previous association
            return False
        try:
            dtls.receive(data, now)
        except RemoteProtocolError:
            self.counters.drop("dtls")
            return False
        self.dtls_output(now, addr)
        return True

    def dtls_output(self, now: float, addr: Addr | None) -> None:
        """Send what the DTLS endpoint wants to send; apply its events."""
        dtls = self.dtls
        if dtls is None:
            return
        dest = self.remote or addr
        for datagram in dtls.datagrams_to_send():
            if dest is None:
                break
            try:
                self.send(datagram, dest)
            except Exception:
                self.counters.drop("send-error")
        while (ev := dtls.next_event()) is not None:
            if isinstance(ev, HandshakeComplete):
                self.srtp = ev.srtp_context()
                self.session.dtls_handshakes += 1
            elif isinstance(ev, HandshakeFailed):
                self.session.end(f"DTLS failed: {ev.reason}")
            elif isinstance(ev, ConnectionClosed):
                self.counters.drop("dtls-closed")

    def new_dtls(self, is_client: bool, fingerprints: tuple[Fingerprint, ...], now: float) -> None:
        """Start a new DTLS association (first one, or the peer's certificate changed)."""
        if self.dtls is not None:
            self.dtls.close()
            self.dtls.datagrams_to_send()
        self.remote_fingerprints = fingerprints
        cert = self.session.settings.certificate
        dtls = self.dtls = DtlsEndpoint(
            is_client=is_client, remote_fingerprints=fingerprints, certificate=cert
        )
        early, self._early_dtls = self._early_dtls, []
        if is_client:
            # never before ICE has found the peer (which implies it has our SDP)
            self.dtls_client_pending = self.remote is None
            if self.remote is not None:
                dtls.start(now)
                self.dtls_output(now, None)
            return
        self.dtls_client_pending = False
        for data, addr in early:
            if dtls.state is DtlsState.NEW and not _is_client_hello(data):
                self.counters.drop("dtls-stray")
                continue
            try:
                dtls.receive(data, now)
            except RemoteProtocolError:
                self.counters.drop("dtls")
                continue
            self.dtls_output(now, addr)

    def set_profile(self, profile: Profile) -> None:
        """Switch a leg that has carried nothing yet to another profile (an answer downgraded it)."""
        self.profile = profile
        self.decrypts = self.encrypts = profile in (Profile.WEBRTC, Profile.SDES)
        if profile is not Profile.WEBRTC:
            if self.side is not CLIENT:
                self.drop_ice()
            self.dtls = None
            self._early_dtls = []

    # ---------------------------------------------------------------------------------- timers

    def get_timer(self) -> float | None:
        deadline = _INF
        if self.limit is not None:
            deadline = self.last_rx + self.limit
        rtcp_ice = self.rtcp_ice
        if rtcp_ice is not None:
            t = rtcp_ice.get_timer()
            if t is not None and t < deadline:
                deadline = t
        ice = self.ice
        if ice is not None:
            t = ice.get_timer()
            if t is not None and t < deadline:
                deadline = t
        dtls = self.dtls
        if dtls is not None:
            t = dtls.get_timer()
            if t is not None and t < deadline:
                deadline = t
        return None if deadline == _INF else deadline

    def handle_timer(self, now: float) -> None:
        rtcp_ice = self.rtcp_ice
        if rtcp_ice is not None:
            t = rtcp_ice.get_timer()
            if t is not None and t <= now:
                rtcp_ice.handle_timer(now)
                while rtcp_ice.next_event() is not None:
                    pass  # RTCP follows latching once consent is gone; RTP's consent decides the call
        ice = self.ice
        if ice is not None:
            t = ice.get_timer()
            if t is not None and t <= now:
                ice.handle_timer(now)
                self.ice_events(now)
        dtls = self.dtls
        if dtls is not None:
            t = dtls.get_timer()
            if t is not None and t <= now:
                dtls.handle_timer(now)
                self.dtls_output(now, None)
        if self.limit is not None and self.last_rx + self.limit <= now:
            self.session.end("idle timeout")

    def close(self) -> None:
        """Drop every per-leg object (the session releases the ports)."""
        self.sync()
        dtls = self.dtls
        if dtls is not None:
            dtls.close()
            dest = self.remote
            for datagram in dtls.datagrams_to_send():
                if dest is not None:
                    try:
                        self.send(datagram, dest)
                    except Exception:
                        self.counters.drop("send-error")
        self.dtls = None
        self.srtp = None
        self.drop_ice()
        self.target = None
        self.default_target = None
        self.router = None
        self.route_map = {}
        self.limit = None
        self._early_dtls = []
        self.stun_origins = {}


# ======================================================================================= sessions


@dataclass(slots=True)
class _Offer:
    side: Side
    sdp: SessionDescription  # as received
    sent_rejected: tuple[bool, ...]  # per m-line of the offer sent to the other side: rejected
    tag: object
    deadline: float
    answered: bool = False


@dataclass(slots=True)
class _LegPlan:
    """What an answer commits for one leg."""

    transport: MediaTransport
    sending: bool
    sdes: tuple[str, bytes, bytes] | None = None  # suite, local key, remote key
    dtls_client: bool | None = None
    ice_restart: bool = False
    ice: IceCredentials | None = None  # the peer's ICE credentials (None: no ICE, latching)


class MediaSession:
    """The media of one call (see the module docstring)."""

    def __init__(
        self,
        key: str,
        settings: SessionSettings,
        ports: LegPorts,
        *,
        pbx_profile: Profile,
        client_profile: Profile | None = None,
        on_end: Callable[[MediaSession, str], None] | None = None,
        policer: Callable[[], Policer] | None = None,
        now: float = 0.0,
        native_client: bool = False,
    ) -> None:
        self.key = key
        self.native_client = native_client  # the client is a SIP client (mobile app), not a browser
        self._policer_factory = policer
        self.settings = settings
        self._ports = ports
        self.passthrough = pbx_profile is Profile.PASSTHROUGH
        self._preferred: list[Profile | None] = [
            Profile.PASSTHROUGH if self.passthrough else client_profile,
            pbx_profile,
        ]
        self.profiles: list[Profile | None] = [None, None]
        self.quality = CallQuality()
        self.mline_legs: tuple[list[Leg | None], list[Leg | None]] = ([], [])
        self.legs: list[Leg] = []
        self.ice_credentials: list[tuple[str, str]] = [
            generate_credentials(settings.random_bytes),
            generate_credentials(settings.random_bytes),
        ]
        self.remote_sdp: list[SessionDescription | None] = [None, None]
        self._offer: _Offer | None = None
        self._origin_id = [
            str(random_int(settings.random_bytes, 62)),
            str(random_int(settings.random_bytes, 62)),
        ]
        self._origin_version = [0, 0]
        self._last_body: list[str | None] = [None, None]
        self._on_end = on_end
        self.ended: str | None = None
        self.established = False
        self.created = now
        self.dtls_handshakes = 0
        self.scheduled: float | None = None  # owner's bookkeeping (timer heap)
        self.owner_data: Any = None  # free slot for the owner (tenant, flow ...)

    def new_policer(self, now: float) -> Policer:
        """The policer of a new leg: the owner's (tenant buckets) or one at the settings' rate."""
        if self._policer_factory is not None:
            return self._policer_factory()
        return Policer(TokenBucket(self.settings.rate, self.settings.burst, now))

    def __repr__(self) -> str:
        return f"<MediaSession {self.key} legs={len(self.legs)} ended={self.ended}>"

    # ---------------------------------------------------------------------------- offer/answer

    @property
    def pending_offer_side(self) -> Side | None:
        """The side whose offer awaits an answer, or None."""
        offer = self._offer
        return None if offer is None or offer.answered else offer.side

    def expects_answer(self, side: Side, tag: object) -> bool:
        """True if an SDP from ``side`` tagged ``tag`` answers our outstanding (or last) offer."""
        offer = self._offer
        return offer is not None and offer.side is not side and offer.tag == tag

    def offer(
        self, side: Side, sdp: SessionDescription, now: float, tag: object = None
    ) -> SessionDescription:
        """The offer ``side`` made -> the offer to send to the other side.

        Raises RemoteProtocolError(488) for SDP we cannot relay, :class:`OutOfPorts` when no port is
        left (legs created for this offer are released first).
        """
        out = self._make_offer(side, sdp, now, tag, False)
        assert isinstance(out, SessionDescription)
        return out

    def offer_body(self, side: Side, sdp: SessionDescription, now: float, tag: object = None) -> bytes:
        """:meth:`offer` as the bytes to send. A passthrough session writes them by editing ``sdp``'s
        lines (:func:`passthrough_body`), without building the rewritten description."""
        out = self._make_offer(side, sdp, now, tag, self.passthrough)
        return out if isinstance(out, bytes) else bytes(out)

    def _make_offer(
        self, side: Side, sdp: SessionDescription, now: float, tag: object, as_bytes: bool
    ) -> SessionDescription | bytes:
        if self.ended is not None:
            raise LocalProtocolError("session has ended")
        other = Side(1 - side)
        profile_in = self._profile_of(side, sdp)
        profile_out = self._profile_for_offer(other, profile_in)
        created: list[Leg] = []
        body: str | None = None
        out: SessionDescription | None = None
        try:
            self._ensure_legs(side, sdp, profile_in, self._bundles(sdp, profile_in), created, now, True)
            legs_out = self._ensure_legs(
                other, sdp, profile_out, self._bundles_out(sdp, profile_in, profile_out), created, now, False
            )
            if as_bytes:
                relays = self._relays(other, sdp, legs_out, None)
                body = passthrough_body(sdp, relays)
                sent_rejected = tuple(r is None or m.rejected for m, r in zip(sdp.media, relays, strict=True))
            else:
                local = self._local_leg(other, sdp, legs_out, None, self.settings.offer_sdes_suites)
                out = rewrite_offer(sdp, local)
                sent_rejected = tuple(m.rejected for m in out.media)
        except BaseException:
            self._drop_legs(created)
            raise
        self.profiles[side] = profile_in
        self.profiles[other] = profile_out
        result: SessionDescription | bytes
        if body is not None:
            result = self._stamp_body(other, body)
        else:
            assert out is not None
            result = out = self._stamp(other, out)
        self._offer = _Offer(side, sdp, sent_rejected, tag, now + self.settings.offer_timeout)
        return result

    def answer(self, side: Side, sdp: SessionDescription, now: float) -> SessionDescription:
        """The answer ``side`` gave to the other side's offer -> the answer to send to the offerer."""
        out = self._make_answer(side, sdp, now, False)
        assert isinstance(out, SessionDescription)
        return out

    def answer_body(self, side: Side, sdp: SessionDescription, now: float) -> bytes:
        """:meth:`answer` as the bytes to send (a passthrough session edits ``sdp``'s lines)."""
        out = self._make_answer(side, sdp, now, self.passthrough)
        return out if isinstance(out, bytes) else bytes(out)

    def _make_answer(
        self, side: Side, sdp: SessionDescription, now: float, as_bytes: bool
    ) -> SessionDescription | bytes:
        offer = self._offer
        if self.ended is not None:
            raise LocalProtocolError("session has ended")
        if offer is None or offer.side is side:
            raise LocalProtocolError("no offer from the other side to answer")
        offerer = offer.side
        if len(sdp.media) != len(offer.sent_rejected):
            raise RemoteProtocolError(
                f"answer has {len(sdp.media)} m-lines, offer had {len(offer.sent_rejected)}", status_hint=488
            )
        profile_out = self.profiles[side]
        assert profile_out is not None
        answered = self._answered_profile(sdp, profile_out)
        answer_rejected = tuple(m.rejected for m in sdp.media)
        plans_answerer = self._plan(side, sdp, offer.sent_rejected, answered, answering=False)
        profile_in = self.profiles[offerer]
        assert profile_in is not None
        new_credentials: tuple[str, str] | None = None
        plans_offerer = self._plan(offerer, offer.sdp, answer_rejected, profile_in, answering=True)
        if profile_in is Profile.WEBRTC and any(p.ice_restart for p in plans_offerer.values()):
            new_credentials = generate_credentials(self.settings.random_bytes)
        setup = None
        if profile_in is Profile.WEBRTC:
            setup = "passive"
            if any(p.dtls_client for p in plans_offerer.values()):
                setup = "active"
        legs = self.mline_legs[offerer]
        saved = self.ice_credentials[offerer]
        if new_credentials is not None:
            self.ice_credentials[offerer] = new_credentials
        body: str | None = None
        out: SessionDescription | None = None
        try:
            if as_bytes:
                body = passthrough_body(sdp, self._relays(offerer, offer.sdp, legs, sdp), offer.sdp)
            else:
                local = self._local_leg(
                    offerer, offer.sdp, legs, setup, self.settings.answer_sdes_suites, sdp
                )
                out = rewrite_answer(sdp, offer.sdp, local)
        except BaseException:
            self.ice_credentials[offerer] = saved
            raise
        if answered is not profile_out:  # the answerer speaks plain RTP: follow it
            self.profiles[side] = answered
            for leg in self.legs:
                if leg.side is side:
                    leg.set_profile(answered)
        self._commit(side, plans_answerer, now)
        self._commit(offerer, plans_offerer, now, new_credentials)
        self.remote_sdp[side] = sdp
        self.remote_sdp[offerer] = offer.sdp
        offer.answered = True
        self._wire(offer.sdp, sdp)
        self.established = True
        if body is not None:
            return self._stamp_body(offerer, body)
        assert out is not None
        return self._stamp(offerer, out)

    def answer_locally(
        self, side: Side, sdp: SessionDescription, now: float, tag: object = None
    ) -> SessionDescription | None:
        """Answer ``side``'s re-offer on the edge when it only changed ``side``'s own transport
        (:func:`~mcs_edge.core.media.reanchor.transport_only_change`): the other side's current SDP
        serves as its answer, so its leg is untouched and its SDP version does not move. None when
        the offer must go to the other side (or the session cannot take it)."""
        other = Side(1 - side)
        previous, current = self.remote_sdp[side], self.remote_sdp[other]
        if self.ended is not None or self.passthrough or not self.established:
            return None
        if previous is None or current is None or self.pending_offer_side is not None:
            return None
        if not transport_only_change(previous, sdp):
            return None
        saved = (self._origin_version[other], self._last_body[other], self._offer)
        try:
            self.offer(side, sdp, now, tag)
            return self.answer(other, current, now)
        except (RemoteProtocolError, LocalProtocolError, OutOfPorts):
            self._offer = saved[2]
            return None
        finally:
            self._origin_version[other], self._last_body[other] = saved[0], saved[1]

    # -------------------------------------------------------------------------------- profiles

    def _profile_of(self, side: Side, sdp: SessionDescription) -> Profile:
        if self.passthrough:
            return Profile.PASSTHROUGH
        detected: Profile | None = None
        for m in sdp.media:
            if not m.rejected and m.is_rtp:
                detected = detect_profile(m)
                break
        if detected is None:
            known = self.profiles[side]
            if known is not None:
                return known
            raise RemoteProtocolError("no RTP stream to relay", status_hint=488)
        known = self.profiles[side]
        if known is not None and known is not detected:
            raise RemoteProtocolError(
                f"profile changed from {known.name} to {detected.name}", status_hint=488
            )
        return detected

    def _answered_profile(self, sdp: SessionDescription, offered: Profile) -> Profile:
        """The profile an answer speaks: what we offered, or plain RTP when the answerer downgraded."""
        if self.passthrough:
            return offered
        for m in sdp.media:
            if not m.rejected and m.is_rtp:
                detected = detect_profile(m)
                if detected is offered:
                    return offered
                if detected is Profile.RTP:
                    return Profile.RTP
                raise RemoteProtocolError(f"answer speaks {detected.name}, offer was {offered.name}", 488)
        return offered

    def _profile_for_offer(self, side: Side, offered: Profile) -> Profile:
        known = self.profiles[side]
        if known is not None:
            return known
        preferred = self._preferred[side]
        if preferred is not None:
            return preferred
        return Profile.WEBRTC if offered is Profile.PASSTHROUGH else offered

    # ------------------------------------------------------------------------------------ legs

    @staticmethod
    def _bundles(sdp: SessionDescription, profile: Profile) -> list[int]:
        """Per m-line, the index of the m-line whose leg it shares (its own index if none)."""
        out = list(range(len(sdp.media)))
        if profile not in (Profile.WEBRTC, Profile.PASSTHROUGH):
            return out
        group = sdp.bundle_group
        if group is None:
            return out
        tag: int | None = None
        for i, m in enumerate(sdp.media):
            if m.mid is not None and m.mid in group.mids and not m.rejected:
                if tag is None:
                    tag = i
                out[i] = tag
        return out

    def _bundles_out(self, sdp: SessionDescription, profile_in: Profile, profile_out: Profile) -> list[int]:
        if profile_out is Profile.PASSTHROUGH:
            return self._bundles(sdp, profile_in)
        out = list(range(len(sdp.media)))
        if profile_out is Profile.WEBRTC:
            first = next((i for i, m in enumerate(sdp.media) if not m.rejected), None)
            if first is not None:
                out = [first] * len(sdp.media)
        return out

    def _accepts(self, m_rejected: bool, is_rtp: bool) -> bool:
        return not m_rejected and (is_rtp or self.passthrough)

    def _ensure_legs(
        self,
        side: Side,
        sdp: SessionDescription,
        profile: Profile,
        bundles: list[int],
        created: list[Leg],
        now: float,
        offerer: bool,
    ) -> list[Leg | None]:
        """Make sure every accepted m-line of ``sdp`` has a leg on ``side``."""
        legs = self.mline_legs[side]
        while len(legs) < len(sdp.media):
            legs.append(None)
        by_tag: dict[int, Leg] = {}
        for i, existing in enumerate(legs[: len(sdp.media)]):
            if existing is not None:
                by_tag.setdefault(bundles[i], existing)
        for i, m in enumerate(sdp.media):
            if legs[i] is not None or not self._accepts(m.rejected, m.is_rtp):
                continue
            shared = by_tag.get(bundles[i])
            if shared is not None:
                legs[i] = shared
                continue
            if profile is Profile.WEBRTC:
                mux = True
            elif profile is Profile.PASSTHROUGH:
                mux = m.rtcp_mux
            else:
                mux = m.rtcp_mux if offerer else False
            leg = Leg(self, side, i, profile, now)
            ice = _offers_ice(side, profile)
            if ice:
                ufrag, pwd = self.ice_credentials[side]
                leg.ice = IceLiteResponder(local_ufrag=ufrag, local_pwd=pwd)
            if not self._ports.open(leg, mux):
                raise OutOfPorts(f"no relay port for m-line {i} on the {side.name} side")
            if ice and leg.rtcp_port is not None:
                leg.rtcp_ice = IceLiteResponder(local_ufrag=ufrag, local_pwd=pwd)
            created.append(leg)
            self.legs.append(leg)
            legs[i] = leg
            by_tag[bundles[i]] = leg
        return legs

    def _drop_legs(self, legs: list[Leg]) -> None:
        for leg in legs:
            leg.close()
            if leg.port:
                self._ports.close(leg)
            if leg in self.legs:
                self.legs.remove(leg)
            for side_legs in self.mline_legs:
                for i, x in enumerate(side_legs):
                    if x is leg:
                        side_legs[i] = None

    def _local_leg(
        self,
        side: Side,
        sdp: SessionDescription,
        legs: list[Leg | None],
        setup: str | None,
        suites: tuple[str, ...],
        answer: SessionDescription | None = None,
    ) -> LocalLeg:
        profile = self.profiles[side] or self._profile_for_offer(side, Profile.WEBRTC)
        host = self.settings.host(side)
        relays: list[RelayAddress | None] = []
        keys: list[bytes] = []
        for i, m in enumerate(sdp.media):
            leg = legs[i] if i < len(legs) else None
            rejected = m.rejected
            if answer is not None and answer.media[i].rejected:
                rejected = True
            if leg is None or rejected or not self._accepts(False, m.is_rtp) or not leg.port:
                relays.append(None)
                keys.append(bytes(_SDES_KEY_LENGTH))
                continue
            relays.append(RelayAddress(host, leg.port, leg.rtcp_port))
            keys.append(leg.sdes_key or bytes(_SDES_KEY_LENGTH))
        ice = fingerprint = None
        if profile is Profile.WEBRTC:
            ice = IceCredentials(*self.ice_credentials[side])
            fingerprint = self.settings.certificate.fingerprint
        elif any(leg is not None and leg.ice is not None for leg in legs) and (
            answer is None or any(not m.rejected and sdp.transport(i).ice for i, m in enumerate(sdp.media))
        ):  # ICE-lite on RTP/SDES legs: offered always, answered when the offer had ICE
            ice = IceCredentials(*self.ice_credentials[side])
        return LocalLeg(
            profile,
            tuple(relays),
            ice=ice,
            fingerprint=fingerprint,
            setup=setup,
            sdes_keys=tuple(keys) if profile is Profile.SDES else (),
            sdes_suites=suites if profile is Profile.SDES else ("AES_CM_128_HMAC_SHA1_80",),
            bundle=True,
            rtcp_candidate=self.native_client and side is CLIENT and answer is None,
        )

    def _relays(
        self,
        side: Side,
        sdp: SessionDescription,
        legs: list[Leg | None],
        answer: SessionDescription | None,
    ) -> tuple[RelayAddress | None, ...]:
        """The relay address of each m-line of ``sdp`` on ``side`` (None: rejected), as
        :meth:`_local_leg` gives them."""
        host = self.settings.host(side)
        relays: list[RelayAddress | None] = []
        for i, m in enumerate(sdp.media):
            leg = legs[i] if i < len(legs) else None
            if (
                leg is None
                or m.rejected
                or (answer is not None and answer.media[i].rejected)
                or not self._accepts(False, m.is_rtp)
                or not leg.port
            ):
                relays.append(None)
            else:
                relays.append(RelayAddress(host, leg.port, leg.rtcp_port))
        return tuple(relays)

    def _stamp_body(self, side: Side, body: str) -> bytes:
        """:meth:`_stamp` for a body written as text (the lines after ``o=``): the whole SDP as bytes."""
        host = self.settings.host(side)
        if body != self._last_body[side]:
            self._last_body[side] = body
            self._origin_version[side] += 1
        addrtype = "IP6" if _is_v6(host) else "IP4"
        origin = f"o=- {self._origin_id[side]} {self._origin_version[side]} IN {addrtype} {host}"
        return f"v=0\r\n{origin}\r\n{body}".encode()

    def _stamp(self, side: Side, sdp: SessionDescription) -> SessionDescription:
        """Our own o= line toward ``side``: version bumped only when the body changed."""
        host = self.settings.host(side)
        body = sdp.serialize().split("\r\n", 2)[2]
        if body != self._last_body[side]:
            self._last_body[side] = body
            self._origin_version[side] += 1
        origin = Origin(
            "-",
            self._origin_id[side],
            str(self._origin_version[side]),
            "IN",
            "IP6" if _is_v6(host) else "IP4",
            host,
        )
        return replace(sdp, origin=origin)

    # ---------------------------------------------------------------------------------- commit

    def _plan(
        self,
        side: Side,
        sdp: SessionDescription,
        counterpart_rejected: tuple[bool, ...],
        profile: Profile,
        *,
        answering: bool,
    ) -> dict[int, _LegPlan]:
        """Validate ``side``'s SDP against its leg list; one plan per leg (keyed by id).
        ``counterpart_rejected``: per m-line, rejected in the other side's SDP (offer or answer)."""
        plans: dict[int, _LegPlan] = {}
        legs = self.mline_legs[side]
        for i, m in enumerate(sdp.media):
            leg = legs[i] if i < len(legs) else None
            if leg is None:
                continue
            active = (
                not m.rejected and not counterpart_rejected[i] if i < len(counterpart_rejected) else False
            )
            t = sdp.transport(i)
            plan = plans.get(id(leg))
            if plan is None:
                if not active:
                    continue
                plan = _LegPlan(t, t.direction in _SENDING)
                plans[id(leg)] = plan
            elif active and t.direction in _SENDING:
                plan.sending = True
            if not active or plan.transport.index != i:
                continue
            if profile is Profile.SDES:
                if answering:
                    chosen = _pick_crypto(t.cryptos, self.settings.answer_sdes_suites)
                    if chosen is None:
                        raise RemoteProtocolError(f"m-line {i}: no acceptable a=crypto", status_hint=488)
                else:
                    chosen = next((c for c in t.cryptos if c.suite in self.settings.offer_sdes_suites), None)
                    if chosen is None or chosen.mki is not None:
                        raise RemoteProtocolError(
                            f"m-line {i}: answer has no usable a=crypto", status_hint=488
                        )
                length = SDES_SUITES[chosen.suite]
                if len(chosen.key) != length:
                    raise RemoteProtocolError(
                        f"m-line {i}: a=crypto key has the wrong length", status_hint=488
                    )
                plan.sdes = (chosen.suite, leg.sdes_key[:length], chosen.key)
            plan.ice = t.ice
            if profile is Profile.WEBRTC:
                if not t.fingerprints:
                    raise RemoteProtocolError(f"m-line {i}: no a=fingerprint", status_hint=488)
                setup = t.setup or ("actpass" if answering else "active")
                if answering:
                    plan.dtls_client = setup == "passive"
                else:
                    if setup not in ("active", "passive"):
                        raise RemoteProtocolError(f"m-line {i}: answer a=setup:{setup}", status_hint=488)
                    plan.dtls_client = setup == "passive"
                ice = leg.ice
                known = ice.remote_ufrag if ice is not None else None
                plan.ice_restart = (
                    answering and known is not None and t.ice is not None and known != t.ice.ufrag
                )
        return plans

    def _commit(
        self,
        side: Side,
        plans: dict[int, _LegPlan],
        now: float,
        new_credentials: tuple[str, str] | None = None,
    ) -> None:
        settings = self.settings
        seen: set[int] = set()
        for leg in self.mline_legs[side]:
            if leg is None or id(leg) in seen:
                continue
            seen.add(id(leg))
            plan = plans.get(id(leg))
            if plan is None:
                continue
            t = plan.transport
            if leg.limit is None:
                leg.last_rx = now
            leg.limit = settings.idle_timeout if plan.sending else settings.hold_timeout
            if plan.ice is None:
                leg.drop_ice()
            elif leg.profile is not Profile.WEBRTC:
                self._commit_ice(leg, plan.ice)
            if leg.profile is not Profile.WEBRTC or leg.ice is None:
                self._commit_address(leg, t)
            if leg.gate is not None and t.ice is not None:
                leg.gate.set_credentials(t.ice.ufrag, t.ice.pwd)
            if plan.sdes is not None:
                suite, local, remote = plan.sdes
                if leg.sdes != (suite, remote):
                    leg.srtp = SrtpContext(PROFILES[suite], local, remote)
                    leg.sdes = (suite, remote)
            if leg.profile is Profile.WEBRTC:
                self._commit_webrtc(leg, t, plan, now, new_credentials)

    def _commit_address(self, leg: Leg, t: MediaTransport) -> None:
        address = _ip(t.address)
        best = None
        if leg.profile is Profile.PASSTHROUGH:
            best = self._best_candidate(t)
        if best is None and address is not None and t.port and _is_v6(address) == self.settings.ipv6:
            best = (address, t.port)
        if best is not None and best != leg.sdp_remote:
            leg.free_latch = leg.sdp_remote is not None  # the peer moved: latch its new source at once
            leg.sdp_remote = best
            leg.remote = best
        rtcp_address = _ip(t.rtcp_address)
        if (
            t.rtcp_port
            and rtcp_address is not None
            and leg.rtcp_port is not None
            and (leg.remote_rtcp is None or leg.counters.packets == 0)
        ):
            leg.remote_rtcp = (rtcp_address, t.rtcp_port)

    @staticmethod
    def _commit_ice(leg: Leg, remote: IceCredentials) -> None:
        """The peer's ICE credentials on an RTP/SDES leg (both components)."""
        for ice in (leg.ice, leg.rtcp_ice):
            if ice is not None and ice.remote_ufrag != remote.ufrag:
                ice.set_remote_credentials(remote.ufrag, remote.pwd)

    def _best_candidate(self, t: MediaTransport) -> tuple[str, int] | None:
        best: tuple[int, tuple[str, int]] | None = None
        for c in t.candidates:
            if c.component != 1 or c.transport.lower() != "udp" or _ip(c.address) is None:
                continue
            if _is_v6(c.address) != self.settings.ipv6:
                continue
            if best is None or c.priority > best[0]:
                best = (c.priority, (c.address, c.port))
        return None if best is None else best[1]

    def _commit_webrtc(
        self,
        leg: Leg,
        t: MediaTransport,
        plan: _LegPlan,
        now: float,
        new_credentials: tuple[str, str] | None,
    ) -> None:
        ice = leg.ice
        if ice is not None and t.ice is not None:
            if new_credentials is not None:
                ice.restart(
                    t.ice.ufrag, t.ice.pwd, local_ufrag=new_credentials[0], local_pwd=new_credentials[1]
                )
            elif ice.remote_ufrag != t.ice.ufrag:
                ice.set_remote_credentials(t.ice.ufrag, t.ice.pwd)
        is_client = bool(plan.dtls_client)
        dtls = leg.dtls
        if dtls is None or set(t.fingerprints) != set(leg.remote_fingerprints) or dtls.is_client != is_client:
            leg.new_dtls(is_client, t.fingerprints, now)

    def _wire(self, offer: SessionDescription, answer: SessionDescription) -> None:
        """Forwarding targets for every leg from the negotiated m-lines."""
        active = [not o.rejected and not a.rejected for o, a in zip(offer.media, answer.media, strict=False)]
        for side in (CLIENT, PBX):
            mine = self.mline_legs[side]
            theirs = self.mline_legs[1 - side]
            peer_sdp = self.remote_sdp[side]
            groups: dict[int, list[int]] = {}
            legs_by_id: dict[int, Leg] = {}
            for i, leg in enumerate(mine):
                if leg is None:
                    continue
                legs_by_id[id(leg)] = leg
                groups.setdefault(id(leg), [])
                if i < len(active) and active[i] and i < len(theirs) and theirs[i] is not None:
                    groups[id(leg)].append(i)
            for key, indexes in groups.items():
                leg = legs_by_id[key]
                targets = {i: theirs[i] for i in indexes if theirs[i] is not None}
                distinct = {id(x): x for x in targets.values() if x is not None}
                leg.route_map = {i: x for i, x in targets.items() if x is not None}
                leg.default_target = leg.route_map[indexes[0]] if indexes else None
                if len(distinct) == 1:
                    leg.target = next(iter(distinct.values()))
                    leg.router = None
                elif not distinct:
                    leg.target = None
                    leg.router = None
                else:
                    leg.target = None
                    table: ForwardingTable[int] = ForwardingTable()
                    for i in indexes:
                        pts: set[int] = set()
                        ssrcs: list[int] = []
                        for desc in (offer, answer):
                            pts.update(desc.transport(i).payload_types)
                        if peer_sdp is not None and i < len(peer_sdp.media):
                            for value in peer_sdp.media[i].get_all("ssrc"):
                                head = value.split(" ", 1)[0]
                                if head.isdigit() and int(head) < 1 << 32:
                                    ssrcs.append(int(head))
                        table.register(i, payload_types=pts, ssrcs=ssrcs)
                    leg.router = table

    # ---------------------------------------------------------------------------------- timers

    def get_timer(self) -> float | None:
        """The earliest deadline of the session, or None."""
        if self.ended is not None:
            return None
        deadline = _INF
        offer = self._offer
        if not self.established and offer is not None:
            deadline = offer.deadline
        for leg in self.legs:
            t = leg.get_timer()
            if t is not None and t < deadline:
                deadline = t
        return None if deadline == _INF else deadline

    def handle_timer(self, now: float) -> None:
        """Run whatever is due: ICE consent, DTLS retransmission, idle and offer timeouts."""
        if self.ended is not None:
            return
        # What forwarding rules counted (last_rx) comes back before any deadline is judged. With
        # ICE in the session a timer may move a leg's ``remote`` (nomination, consent of the
        # selected pair lost: another pair or the end of the call): the rules are released, not
        # synced, so none forwards from or to an old address; the holder asks again afterwards.
        # A DTLS endpoint's timer may complete a handshake (a new SRTP context for the leg): same.
        moves = False
        for leg in self.legs:
            if leg.ice is not None or leg.dtls is not None:
                moves = True
                break
        for leg in self.legs:
            offload = leg.offload
            if offload is not None:
                if moves:
                    offload.release()
                else:
                    offload.sync()
        offer = self._offer
        if not self.established and offer is not None and offer.deadline <= now:
            self.end("offer not answered")
            return
        for leg in self.legs:
            leg.handle_timer(now)
            if self.ended is not None:
                return

    # ------------------------------------------------------------------------------------- end

    def end(self, reason: str) -> None:
        """Mark the session ended (first reason wins) and tell the owner."""
        if self.ended is not None:
            return
        self.ended = reason
        if self._on_end is not None:
            self._on_end(self, reason)

    def close(self) -> None:
        """Release every leg: DTLS objects, SRTP contexts, ports. Idempotent."""
        if self.ended is None:
            self.ended = "closed"
        for leg in self.legs:
            leg.close()
            if leg.port:
                self._ports.close(leg)
        self.legs = []
        self.mline_legs = ([], [])
        self._offer = None

    def stats(self) -> dict[str, Any]:
        """Counters per leg, for metrics and tests."""
        for leg in self.legs:
            leg.sync()
        return {
            "ended": self.ended,
            "legs": [
                {
                    "side": leg.side.name,
                    "profile": leg.profile.name,
                    "port": leg.port,
                    "rx_packets": leg.counters.packets,
                    "rx_bytes": leg.counters.bytes,
                    "tx_packets": leg.tx_packets,
                    "tx_bytes": leg.tx_bytes,
                    "lost": leg.counters.lost,
                    "dropped": dict(leg.counters.dropped),
                    "stun": leg.stun_rx,
                }
                for leg in self.legs
            ],
        }
