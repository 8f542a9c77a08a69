"""Rewrite SDP offers and answers as they cross the edge, driven by each leg's media profile.

Theory of operation
-------------------
The edge terminates media on every call: each side of a call is a *leg* and each leg has a
:class:`~mcs_edge.core.media.sdp.Profile` (WEBRTC, SDES, RTP or PASSTHROUGH). The three tenant modes
(browser<->plain RTP PBX, browser<->SDES PBX, passthrough) are just three choices of the PBX-side
profile; there is one code path.

An SDP crossing the edge keeps what the two ends must agree on end to end (media kinds, codecs and
their parameters, direction, ptime, mids) and gets the *transport* of the leg it is going out on:

===============  ==================================================================================
profile          transport written
===============  ==================================================================================
WEBRTC           proto ``UDP/TLS/RTP/SAVPF``; ``a=ice-lite``; our ``ice-ufrag``/``ice-pwd``; our
                 ``a=fingerprint:sha-256``; ``a=setup`` (``actpass`` in offers, ``passive`` in
                 answers unless told otherwise); one host candidate per m-line (the relay's public
                 address) and ``a=end-of-candidates``; ``a=rtcp-mux``; ``a=mid`` on every m-line;
                 ``a=group:BUNDLE`` (offers: all accepted mids; answers: the offer's group mirrored)
SDES             proto ``RTP/SAVP``; ``a=crypto`` with our keys (offers: one line per configured
                 suite; answers: the first acceptable suite the offer listed, same tag); ``a=rtcp``
                 or ``a=rtcp-mux``
RTP              proto ``RTP/AVP``; ``a=rtcp`` (when not port+1) or ``a=rtcp-mux``
(RTP and SDES)   with ``LocalLeg.ice`` (a client that offers ICE): ``a=ice-lite``, our credentials,
                 host candidates for RTP and (not muxed) RTCP, ``a=end-of-candidates``
PASSTHROUGH      proto, crypto, fingerprint, setup and ICE credentials of the far end unchanged;
                 only addresses, ports and candidates become the relay's
===============  ==================================================================================

PASSTHROUGH has a second, cheaper writer: :func:`passthrough_body` edits the received description's
lines as they are written out (the ``c=`` lines, the ``m=`` ports, ``a=rtcp`` and the candidates;
every other line is written as parsed) instead of building a new description and serialising it.
It gives the same text as :func:`rewrite_offer` / :func:`rewrite_answer` for every description
(tests/core/media/test_sdp_passthrough.py checks it on captured SDPs and generated variants of
them); the model writers stay the reference and serve every other profile.

Going from WEBRTC towards a SIP peer (RTP, SDES), attributes that only make sense between browsers
are dropped: header extensions (``extmap``), RTCP feedback (``rtcp-fb``, meaningless in AVP),
``rtcp-rsize``, ``ssrc``/``ssrc-group``/``msid``, simulcast. Codecs are kept. Non-RTP m-lines (data
channels) cannot be converted and are rejected (port 0) unless the leg is PASSTHROUGH.

Answers are always built against the *original* offer of the side being answered, so the answer
mirrors that offer's mids, proto and BUNDLE group (Chromium with ``max-bundle`` refuses an answer
that drops ``a=group:BUNDLE``) and picks an SDES suite the offerer listed.

The caller gives one :class:`RelayAddress` per m-line (``None`` rejects the stream); with BUNDLE the
caller passes the same address for every bundled m-line. Randomness (ICE credentials, SDES keys) is
passed in, so rewriting is a pure function and the golden-file tests are exact.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Final

from mcs_edge.core.media.sdp import (
    PROTO_DTLS_SAVPF,
    PROTO_RTP_AVP,
    PROTO_RTP_SAVP,
    Attribute,
    Candidate,
    Connection,
    Crypto,
    Fingerprint,
    Group,
    IceCredentials,
    Line,
    MediaDescription,
    Profile,
    SessionDescription,
    detect_profile,
)
from mcs_edge.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "BROWSER_ONLY_ATTRIBUTES",
    "SDES_SUITES",
    "TRANSPORT_ATTRIBUTES",
    "LocalLeg",
    "RelayAddress",
    "host_candidate",
    "passthrough_body",
    "rewrite_answer",
    "rewrite_offer",
]

# Attributes that describe one hop's transport: never copied from one leg to the other.
TRANSPORT_ATTRIBUTES: Final = frozenset(
    {
        "ice-ufrag",
        "ice-pwd",
        "ice-options",
        "ice-lite",
        "ice-pacing",
        "ice-mismatch",
        "candidate",
        "end-of-candidates",
        "remote-candidates",
        "fingerprint",
        "setup",
        "connection",
        "tls-id",
        "dtls-id",
        "crypto",
        "rtcp",
        "rtcp-mux",
        "rtcp-mux-only",
        "bundle-only",
    }
)
# Attributes only browsers use, dropped towards SIP peers (RTP/AVP, RTP/SAVP).
BROWSER_ONLY_ATTRIBUTES: Final = frozenset(
    {
        "extmap",
        "extmap-allow-mixed",
        "rtcp-fb",
        "rtcp-rsize",
        "ssrc",
        "ssrc-group",
        "msid",
        "msid-semantic",
        "simulcast",
        "rid",
        "group",
        "sctp-port",
        "sctpmap",
        "max-message-size",
    }
)
# SDES suites the relay can key (mcs_edge.core.rtp.srtp), with master key||salt lengths.
SDES_SUITES: Final = {
    "AEAD_AES_128_GCM": 28,
    "AES_CM_128_HMAC_SHA1_80": 30,
    "AES_CM_128_HMAC_SHA1_32": 30,
}
_PROTO: Final = {Profile.WEBRTC: PROTO_DTLS_SAVPF, Profile.SDES: PROTO_RTP_SAVP, Profile.RTP: PROTO_RTP_AVP}
_HOST_TYPE_PREFERENCE: Final = 126
_LOCAL_PREFERENCE: Final = 65535


@dataclass(frozen=True, slots=True)
class RelayAddress:
    """Where the edge receives one m-line's media on a leg. ``rtcp_port`` None = RTCP muxed."""

    host: str
    port: int
    rtcp_port: int | None = None


@dataclass(frozen=True, slots=True)
class LocalLeg:
    """How the edge presents itself on one leg: profile, relay addresses and local credentials.

    ``relays`` has one entry per m-line of the SDP being written (None rejects that m-line).
    ``setup`` None means ``actpass`` in offers and ``passive`` in answers. ``sdes_keys`` holds one
    master key||salt per m-line (at least as long as the longest suite offered; a suite uses its
    prefix). ``sdes_suites`` is the offer's preference order and the set accepted in answers.
    """

    profile: Profile
    relays: tuple[RelayAddress | None, ...]
    ice: IceCredentials | None = None
    fingerprint: Fingerprint | None = None
    setup: str | None = None
    sdes_keys: tuple[bytes, ...] = ()
    sdes_suites: tuple[str, ...] = ("AES_CM_128_HMAC_SHA1_80",)
    bundle: bool = True
    #: WEBRTC offers: also an RTCP (component 2) candidate on the RTP port, for native clients that
    #: ignore a=rtcp-mux in offers and count ICE as failed without candidates for both components.
    rtcp_candidate: bool = False


def host_candidate(relay: RelayAddress, component: int = 1, muxed: bool = False) -> Candidate:
    """A host candidate for the relay port (RFC 8445 s.5.1.2.1 priority, foundation '1').

    ``muxed``: component 2 (RTCP) on the RTP port, for a peer that does not offer rtcp-mux.
    """
    port = relay.port if component == 1 or muxed else (relay.rtcp_port or relay.port + 1)
    priority = (_HOST_TYPE_PREFERENCE << 24) + (_LOCAL_PREFERENCE << 8) + (256 - component)
    return Candidate("1", component, "udp", priority, relay.host, port, "host")


# --------------------------------------------------------------------------------------- checks


def _check_leg(leg: LocalLeg, sdp: SessionDescription) -> None:
    if len(leg.relays) != len(sdp.media):
        raise LocalProtocolError(f"{len(leg.relays)} relay addresses for {len(sdp.media)} m-lines")
    if leg.profile is Profile.WEBRTC:
        if leg.ice is None or leg.fingerprint is None:
            raise LocalProtocolError("a WEBRTC leg needs ICE credentials and a fingerprint")
        if any(r is not None and r.rtcp_port is not None for r in leg.relays):
            raise LocalProtocolError("a WEBRTC leg muxes RTCP: relay rtcp_port must be None")
    if leg.profile is Profile.SDES:
        for suite in leg.sdes_suites:
            if suite not in SDES_SUITES:
                raise LocalProtocolError(f"unsupported SDES suite {suite}")
        need = max((SDES_SUITES[s] for s in leg.sdes_suites), default=0)
        if len(leg.sdes_keys) != len(sdp.media) or any(len(k) < need for k in leg.sdes_keys):
            raise LocalProtocolError(f"an SDES leg needs one key of >= {need} bytes per m-line")


def _first_host(leg: LocalLeg) -> str | None:
    for relay in leg.relays:
        if relay is not None:
            return relay.host
    return None


# --------------------------------------------------------------------------------- m-line helpers


def _rejected(m: MediaDescription, proto: str, mid: str | None) -> MediaDescription:
    """A port-0 m-line keeping the formats, the proto we speak and the mid."""
    attrs = (Attribute("mid", mid),) if mid is not None else ()
    return MediaDescription(m.media, 0, proto, m.formats or ("0",), None, (), attrs)


def _kept_attributes(m: MediaDescription, profile: Profile) -> list[Attribute]:
    drop = TRANSPORT_ATTRIBUTES | {"mid"}
    if profile in (Profile.RTP, Profile.SDES):
        drop = drop | BROWSER_ONLY_ATTRIBUTES
    return [a for a in m.attributes if a.name not in drop]


def _transport_attributes(
    m: MediaDescription,
    relay: RelayAddress,
    leg: LocalLeg,
    setup: str,
    crypto: tuple[Crypto, ...],
    with_candidates: bool,
    rtcp_mux: bool,
) -> list[Attribute]:
    out: list[Attribute] = []
    if leg.profile is Profile.WEBRTC:
        assert leg.ice is not None and leg.fingerprint is not None  # checked by _check_leg
        out += [
            Attribute("ice-ufrag", leg.ice.ufrag),
            Attribute("ice-pwd", leg.ice.pwd),
            Attribute("fingerprint", str(leg.fingerprint)),
            Attribute("setup", setup),
        ]
        if with_candidates:
            out.append(Attribute("candidate", str(host_candidate(relay))))
            if not rtcp_mux or leg.rtcp_candidate:  # native clients that do not mux: RTCP to our one port
                out.append(Attribute("candidate", str(host_candidate(relay, 2, muxed=True))))
            out.append(Attribute("end-of-candidates"))
        if not rtcp_mux or leg.rtcp_candidate:
            out.append(Attribute("rtcp", str(relay.port)))  # RTCP's default address: our one port
        if rtcp_mux:
            out.append(Attribute("rtcp-mux"))
        return out
    if leg.ice is not None:  # ICE-lite on an RTP/SDES leg (a native client that offers ICE)
        out += [Attribute("ice-ufrag", leg.ice.ufrag), Attribute("ice-pwd", leg.ice.pwd)]
        out.append(Attribute("candidate", str(host_candidate(relay))))
        if not rtcp_mux and relay.rtcp_port is not None:
            out.append(Attribute("candidate", str(host_candidate(relay, 2))))
        out.append(Attribute("end-of-candidates"))
    out.extend(Attribute("crypto", str(c)) for c in crypto)
    if rtcp_mux:
        out.append(Attribute("rtcp-mux"))
    elif relay.rtcp_port is not None and relay.rtcp_port != relay.port + 1:
        out.append(Attribute("rtcp", str(relay.rtcp_port)))
    return out


def _passthrough_media(m: MediaDescription, relay: RelayAddress) -> MediaDescription:
    """Keep everything but addresses, ports and candidates."""
    had_ice = m.has("candidate") or m.has("ice-ufrag")
    attrs: list[Attribute] = []
    for a in m.attributes:
        if a.name in ("candidate", "remote-candidates", "end-of-candidates"):
            continue
        if a.name == "rtcp":
            if relay.rtcp_port is not None:
                attrs.append(Attribute("rtcp", str(relay.rtcp_port)))
            continue
        attrs.append(a)
    if had_ice:
        attrs.append(Attribute("candidate", str(host_candidate(relay, 1))))
        if relay.rtcp_port is not None:
            attrs.append(Attribute("candidate", str(host_candidate(relay, 2))))
        attrs.append(Attribute("end-of-candidates"))
    return replace(m, port=relay.port, attributes=tuple(attrs))


def _unique_mids(media: Iterable[MediaDescription]) -> list[str]:
    """Existing mids, and fresh '0', '1', ... for m-lines without one."""
    media = list(media)
    used = {m.mid for m in media if m.mid is not None}
    out: list[str] = []
    counter = 0
    for m in media:
        if m.mid is not None:
            out.append(m.mid)
            continue
        while str(counter) in used:
            counter += 1
        out.append(str(counter))
        used.add(str(counter))
    return out


def _place_connections(
    sdp: SessionDescription, media: list[MediaDescription], relays: tuple[RelayAddress | None, ...], host: str
) -> SessionDescription:
    """Session c= becomes ``host``; each m-line gets its own c= where needed."""
    session_conn = Connection.for_host(host) if sdp.connection is not None else None
    out: list[MediaDescription] = []
    for m, relay in zip(media, relays, strict=True):
        if m.port == 0 and not m.has("bundle-only"):
            conn = None if session_conn is not None and m.connection is None else Connection.for_host(host)
        else:
            target = relay.host if relay is not None else host
            needs = m.connection is not None or session_conn is None or target != host
            conn = Connection.for_host(target) if needs else None
        out.append(m.with_connection(conn))
    return sdp.with_connection(session_conn).with_media(out)


def _session_base(sdp: SessionDescription, leg: LocalLeg, host: str | None) -> SessionDescription:
    origin = replace(sdp.origin, address=host) if host is not None else sdp.origin
    if host is not None:
        origin = replace(origin, addrtype="IP6" if ":" in host else "IP4")
    drop = set(TRANSPORT_ATTRIBUTES) | {"group"}
    if leg.profile in (Profile.RTP, Profile.SDES):
        drop |= BROWSER_ONLY_ATTRIBUTES
    return replace(sdp, origin=origin).without(*drop)


def _offered_keys(leg: LocalLeg, index: int) -> tuple[Crypto, ...]:
    key = leg.sdes_keys[index]
    return tuple(
        Crypto(tag, suite, key[: SDES_SUITES[suite]]) for tag, suite in enumerate(leg.sdes_suites, start=1)
    )


def _answer_key(leg: LocalLeg, index: int, offered: tuple[Crypto, ...]) -> Crypto:
    for c in offered:
        if c.suite in leg.sdes_suites and c.mki is None and not c.session_params and not c.more_keys:
            return Crypto(c.tag, c.suite, leg.sdes_keys[index][: SDES_SUITES[c.suite]])
    raise RemoteProtocolError(f"m-line {index}: no acceptable a=crypto suite", status_hint=488)


# ------------------------------------------------------------------------------------ public API


def rewrite_offer(offer: SessionDescription, leg: LocalLeg) -> SessionDescription:
    """The offer to send out on ``leg``, built from the offer received on the other leg."""
    _check_leg(leg, offer)
    host = _first_host(leg)
    proto_out = _PROTO.get(leg.profile)
    mids = _unique_mids(offer.media) if leg.profile is Profile.WEBRTC else [m.mid for m in offer.media]
    media: list[MediaDescription] = []
    accepted: list[str] = []
    for i, m in enumerate(offer.media):
        relay = leg.relays[i]
        proto = proto_out or m.proto
        mid = mids[i]
        if m.rejected or relay is None or (not m.is_rtp and leg.profile is not Profile.PASSTHROUGH):
            media.append(_rejected(m, proto, mid))
            continue
        if leg.profile is Profile.PASSTHROUGH:
            media.append(_passthrough_media(m, relay))
            continue
        crypto = _offered_keys(leg, i) if leg.profile is Profile.SDES else ()
        attrs = [Attribute("mid", mid)] if mid is not None else []
        attrs += _kept_attributes(m, leg.profile)
        attrs += _transport_attributes(
            m, relay, leg, leg.setup or "actpass", crypto, True, relay.rtcp_port is None
        )
        media.append(replace(m, port=relay.port, port_count=None, proto=proto, attributes=tuple(attrs)))
        if mid is not None:
            accepted.append(mid)
    if leg.profile is Profile.PASSTHROUGH:
        session = replace(offer, origin=replace(offer.origin, address=host or offer.origin.address))
    else:
        session = _session_base(offer, leg, host)
        if leg.profile is Profile.WEBRTC:
            extra = [Attribute("ice-lite")]
            if leg.bundle and accepted:
                extra.insert(0, Attribute("group", str(Group("BUNDLE", tuple(accepted)))))
            session = replace(session, attributes=tuple(extra) + session.attributes)
        elif leg.ice is not None:
            session = replace(session, attributes=(Attribute("ice-lite"), *session.attributes))
    return _place_connections(session, media, leg.relays, host or offer.origin.address)


def rewrite_answer(
    answer: SessionDescription, offer: SessionDescription, leg: LocalLeg
) -> SessionDescription:
    """The answer to send out on ``leg``.

    ``answer`` is the far end's answer (to our rewritten offer); ``offer`` is the original offer
    received on ``leg``, which this answer must match m-line by m-line.
    """
    _check_leg(leg, offer)
    if len(answer.media) != len(offer.media):
        raise RemoteProtocolError(
            f"answer has {len(answer.media)} m-lines, offer had {len(offer.media)}", status_hint=488
        )
    host = _first_host(leg)
    setup = leg.setup or "passive"
    if leg.profile is Profile.WEBRTC and setup not in ("active", "passive"):
        raise LocalProtocolError(f"an answer's a=setup must be active or passive, not {setup}")
    offer_group = offer.bundle_group
    bundling = leg.profile is Profile.WEBRTC and leg.bundle and offer_group is not None
    tag: str | None = None
    media: list[MediaDescription] = []
    accepted: set[str] = set()
    for i, (o, a) in enumerate(zip(offer.media, answer.media, strict=True)):
        relay = leg.relays[i]
        mid = o.mid
        proto = o.proto
        if leg.profile is not Profile.PASSTHROUGH and not o.rejected and o.is_rtp:
            offered = detect_profile(o)
            if offered is not leg.profile:
                raise LocalProtocolError(
                    f"m-line {i}: offer speaks {offered.name}, leg is {leg.profile.name}"
                )
        if (
            o.rejected
            or a.rejected
            or relay is None
            or (not o.is_rtp and leg.profile is not Profile.PASSTHROUGH)
        ):
            media.append(_rejected(a, proto, mid))
            continue
        if leg.profile is Profile.PASSTHROUGH:
            media.append(_passthrough_media(a, relay))
            if a.mid is not None:
                accepted.add(a.mid)
            continue
        if mid is not None:
            accepted.add(mid)
        in_bundle = bundling and offer_group is not None and mid in offer_group.mids
        with_candidates = True
        if in_bundle:
            if tag is None:
                tag = mid
            else:
                with_candidates = False
        crypto = (_answer_key(leg, i, o.cryptos),) if leg.profile is Profile.SDES else ()
        rtcp_mux = o.rtcp_mux and relay.rtcp_port is None
        if not o.rtcp_mux and relay.rtcp_port is None and leg.profile is not Profile.WEBRTC:
            raise LocalProtocolError(f"m-line {i}: offer does not mux RTCP, relay needs an RTCP port")
        attrs = [Attribute("mid", mid)] if mid is not None else []
        attrs += _kept_attributes(a, leg.profile)
        attrs += _transport_attributes(a, relay, leg, setup, crypto, with_candidates, rtcp_mux)
        media.append(replace(a, port=relay.port, port_count=None, proto=proto, attributes=tuple(attrs)))
    if leg.profile is Profile.PASSTHROUGH:
        session = replace(answer, origin=replace(answer.origin, address=host or answer.origin.address))
    else:
        session = _session_base(answer, leg, host)
        if leg.profile is Profile.WEBRTC:
            extra = [Attribute("ice-lite")]
            if bundling and offer_group is not None:
                mids = tuple(x for x in offer_group.mids if x in accepted)
                if mids:
                    extra.insert(0, Attribute("group", str(Group("BUNDLE", mids))))
            session = replace(session, attributes=tuple(extra) + session.attributes)
        elif leg.ice is not None:
            session = replace(session, attributes=(Attribute("ice-lite"), *session.attributes))
    return _place_connections(session, media, leg.relays, host or answer.origin.address)


# --------------------------------------------------------------------------- passthrough, in place

_PASSTHROUGH_DROPPED: Final = frozenset({"candidate", "remote-candidates", "end-of-candidates"})


def _connection_text(host: str) -> str:
    return f"c=IN IP6 {host}" if ":" in host else f"c=IN IP4 {host}"


def _write_lines(out: list[str], lines: tuple[Line, ...], connection: str | None, after: str) -> None:
    """``lines`` as :func:`~mcs_edge.core.media.sdp._set_connection` leaves them, written to ``out``."""
    placed = False
    start = len(out)
    for line in lines:
        if line.type == "c":
            if connection is not None and not placed:
                out.append(connection)
            placed = True
        else:
            out.append(f"{line.type}={line.value}")
    if connection is not None and not placed:
        pos = start
        while pos - start < len(lines) and pos < len(out) and out[pos][0] in after:
            pos += 1
        out.insert(pos, connection)


def passthrough_body(
    sdp: SessionDescription,
    relays: tuple[RelayAddress | None, ...],
    offer: SessionDescription | None = None,
) -> str:
    """The text after the ``o=`` line of ``rewrite_offer(sdp, leg)`` (``offer`` None) or of
    ``rewrite_answer(sdp, offer, leg)`` for a PASSTHROUGH ``leg`` with these ``relays``.

    Written in one pass over ``sdp``'s parsed lines: a line the relay does not change is written as
    it came, no description is built. Raises what the model writers raise for the same input.
    """
    media = sdp.media
    counterpart = offer.media if offer is not None else media
    if len(relays) != len(counterpart):
        raise LocalProtocolError(f"{len(relays)} relay addresses for {len(counterpart)} m-lines")
    if len(media) != len(counterpart):
        raise RemoteProtocolError(
            f"answer has {len(media)} m-lines, offer had {len(counterpart)}", status_hint=488
        )
    host: str | None = None
    for relay in relays:
        if relay is not None:
            host = relay.host
            break
    base = host or sdp.origin.address
    base_connection = _connection_text(base)
    session_c = any(line.type == "c" for line in sdp.lines)
    out = [f"s={sdp.session_name}"]
    _write_lines(out, sdp.lines, base_connection if session_c else None, "iuep")
    out.extend([str(a) for a in sdp.attributes])
    for i, m in enumerate(media):
        relay = relays[i]
        o = counterpart[i]
        if relay is None or m.rejected or o.rejected:
            out.append(" ".join(("m=" + m.media, "0", o.proto, *(m.formats or ("0",)))))
            if not session_c:
                out.append(base_connection)
            if o.mid is not None:
                out.append(f"a=mid:{o.mid}")
            continue
        port = str(relay.port) if m.port_count is None else f"{relay.port}/{m.port_count}"
        out.append(" ".join(("m=" + m.media, port, m.proto, *m.formats)))
        has_c = any(line.type == "c" for line in m.lines)
        needs = has_c or not session_c or relay.host != base
        _write_lines(out, m.lines, _connection_text(relay.host) if needs else None, "i")
        had_ice = False
        rtcp_port = relay.rtcp_port
        for a in m.attributes:
            name = a.name
            if name in _PASSTHROUGH_DROPPED:
                had_ice = had_ice or name == "candidate"
                continue
            if name == "rtcp":
                if rtcp_port is not None:
                    out.append(f"a=rtcp:{rtcp_port}")
                continue
            if name == "ice-ufrag":
                had_ice = True
            out.append(f"a={name}" if a.value is None else f"a={name}:{a.value}")
        if had_ice:
            out.append(f"a=candidate:{host_candidate(relay, 1)}")
            if rtcp_port is not None:
                out.append(f"a=candidate:{host_candidate(relay, 2)}")
            out.append("a=end-of-candidates")
    out.append("")
    return "\r\n".join(out)
