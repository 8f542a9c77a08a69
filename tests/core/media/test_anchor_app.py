"""The anchor toward the mobile app (SIP/TLS flows): what it offers, and unencrypted offers counted."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from mcs_edge.certs import edge_dtls_certificate
from mcs_edge.core.media.anchor import AnchorSettings, MediaAnchor
from mcs_edge.core.media.sdp import Profile
from mcs_edge.core.media.session import Leg, SessionSettings
from mcs_edge.core.sip.message import Request, parse


class IO:
    def open_port(self, port: int, leg: Leg, rtcp: bool) -> Any:
        return lambda data, addr: None

    def close_port(self, port: int) -> None:
        return None


@dataclass
class FakePair:
    tenant_id: str
    flow_id: int


def _anchor(app_media: dict[str, str]) -> MediaAnchor:
    transports = {1: "tls", 2: "wss", 3: "tls"}
    return MediaAnchor(
        AnchorSettings(
            SessionSettings(
                client_host="203.0.113.10",
                pbx_host="10.0.0.5",
                certificate=edge_dtls_certificate(),
                random_bytes=secrets.token_bytes,
            ),
            (40000, 40999),
        ),
        IO(),
        tenant_media=lambda tid: "bridge",
        client_transport=transports.get,
        app_media=app_media.get,
    )


def _invite(call_id: str, proto: str, extra: str = "") -> Request:
    body = (
        "v=0\r\no=- 1 1 IN IP4 192.0.2.7\r\ns=-\r\nc=IN IP4 192.0.2.7\r\nt=0 0\r\n"
        f"m=audio 20000 {proto} 0\r\na=rtpmap:0 PCMU/8000\r\n{extra}"
    )
    text = (
        "INVITE sip:200@rossi.example.com SIP/2.0\r\nVia: SIP/2.0/TLS 192.0.2.7:5061;branch=z9hG4bKx\r\n"
        f"From: <sip:alice@rossi.example.com>;tag=a\r\nTo: <sip:200@rossi.example.com>\r\nCall-ID: {call_id}\r\n"
        f"CSeq: 1 INVITE\r\nContent-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    )
    msg = parse(text.encode(), require_max_forwards=False)
    assert isinstance(msg, Request)
    return msg


def test_offers_toward_the_app_follow_app_media_then_what_the_app_offered() -> None:
    """Before the app offered: the tenant's app_media (default sdes); WebSocket clients: WebRTC; after an
    offer on a flow: what that flow offered (until it closes)."""
    anchor = _anchor({"verdi": "rtp", "neri": "dtls"})
    assert anchor.client_profile("rossi", 1) is Profile.SDES
    assert anchor.client_profile("verdi", 1) is Profile.RTP
    assert anchor.client_profile("neri", 1) is Profile.WEBRTC
    assert anchor.client_profile("verdi", 2) is Profile.WEBRTC
    fingerprint = "a=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\na=setup:actpass\r\n"
    assert (
        anchor.on_message(FakePair("verdi", 1), _invite("c1", "UDP/TLS/RTP/SAVP", fingerprint), True, 0.0)
        is None
    )
    assert anchor.client_profile("verdi", 1) is Profile.WEBRTC
    assert anchor.client_profile("verdi", 3) is Profile.RTP  # another flow: the tenant's setting
    anchor.on_flow_closed(1, 1.0)
    assert anchor.client_profile("verdi", 1) is Profile.RTP


def test_plain_rtp_from_an_app_that_offered_srtp_is_counted() -> None:
    """An app that offered SRTP and then offers plain RTP on the same flow is counted and logged."""
    anchor = _anchor({})
    crypto = "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:" + "A" * 40 + "\r\n"
    assert anchor.on_message(FakePair("rossi", 1), _invite("c1", "RTP/SAVP", crypto), True, 0.0) is None
    assert "media_unencrypted_from_capable_client" not in anchor.counters
    assert anchor.on_message(FakePair("rossi", 1), _invite("c2", "RTP/AVP"), True, 0.0) is None
    assert anchor.counters["media_unencrypted_from_capable_client"] == 1
    assert any("plain RTP after SDES" in p for p in anchor.problems)
    anchor.shutdown()
    assert anchor.ports_in_use == 0
