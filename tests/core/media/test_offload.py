"""The offload decision (Leg.offload_spec) and the counters coming back (Leg.absorb_offload) for SRTP
legs: a rule gets the legs' own libsrtp sessions only once they are keyed, and what it refused comes
back as the drops the Python fast path counts."""

from __future__ import annotations

import base64
import secrets

from helpers.legports import RecordingPorts
from helpers.webrtc_peer import rtp_packet

from mcs_edge.certs import edge_dtls_certificate
from mcs_edge.core.media.offload import OffloadTaken
from mcs_edge.core.media.sdp import Profile, SessionDescription
from mcs_edge.core.media.session import CLIENT, PBX, MediaSession, SessionSettings
from mcs_edge.core.rtp.srtp import AES_CM_128_HMAC_SHA1_80, SrtpContext

SETTINGS = SessionSettings(
    client_host="127.0.0.1",
    pbx_host="127.0.0.1",
    certificate=edge_dtls_certificate(),
    random_bytes=secrets.token_bytes,
)
PHONE, PBX_ADDR = ("127.0.0.1", 4000), ("127.0.0.1", 5000)
PHONE_KEY = bytes(range(30))


def _sdp(addr: tuple[str, int], key: bytes | None) -> SessionDescription:
    proto, crypto = "RTP/AVP", ""
    if key is not None:
        proto = "RTP/SAVP"
        crypto = f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{base64.b64encode(key).decode()}\r\n"
    return SessionDescription.parse(
        f"v=0\r\no=- 1 1 IN IP4 {addr[0]}\r\ns=-\r\nc=IN IP4 {addr[0]}\r\nt=0 0\r\n"
        f"m=audio {addr[1]} {proto} 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n{crypto}"
    )


def test_srtp_legs_are_offloaded_with_their_own_libsrtp_sessions() -> None:
    ports = RecordingPorts()
    session = MediaSession("c", SETTINGS, ports, pbx_profile=Profile.RTP)
    session.offer(CLIENT, _sdp(PHONE, PHONE_KEY), 0.0)
    session.answer(PBX, _sdp(PBX_ADDR, None), 0.0)
    client, pbx = session.mline_legs[CLIENT][0], session.mline_legs[PBX][0]
    assert client is not None and pbx is not None and client.decrypts and pbx.target is client
    phone = SrtpContext(AES_CM_128_HMAC_SHA1_80, PHONE_KEY, bytes(30))
    client.receive(phone.protect_rtp(rtp_packet(1, 0x11)), PHONE, 1.0)
    pbx.receive(rtp_packet(1, 0x22), PBX_ADDR, 1.0)
    assert ports.take(PBX_ADDR) and ports.take(PHONE)
    into, out = client.offload_spec(), pbx.offload_spec()
    assert into is not None and out is not None and client.srtp is not None
    # SRTP in: the leg's inbound session; plain toward the PBX
    assert into.protect is None and into.unprotect == client.srtp.offload_unprotect()
    assert into.unprotect.room == 1500
    # plain in, SRTP toward the phone: the target's outbound session, room left for the tag
    assert out.unprotect is None and out.protect == client.srtp.offload_protect()
    assert out.protect.room == 1500 - (16 + 128) and out.protect.handle != into.unprotect.handle
    # what the rule refused comes back as the fast path's drops, on the leg and on its target
    none = tuple((max_seq, 0) for _, max_seq in into.trackers)
    client.absorb_offload(into, OffloadTaken(0, 0, 0, 0, 0, 0, 0, None, 0.0, 1.0, none, 0, None, 3, 0))
    assert client.counters.dropped == {"srtp": 3}
    none = tuple((max_seq, 0) for _, max_seq in out.trackers)
    pbx.absorb_offload(out, OffloadTaken(0, 0, 0, 0, 0, 0, 0, None, 0.0, 1.0, none, 0, None, 0, 2))
    assert client.counters.dropped == {"srtp": 3, "srtp-protect": 2} and pbx.counters.dropped == {}
    # not keyed (yet, or any more): no rule either way
    client.srtp = None
    assert client.offload_spec() is None and pbx.offload_spec() is None
