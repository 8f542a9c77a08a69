"""A sans-IO WebRTC peer (full ICE agent, DTLS client, SRTP) and a plain RTP/SDES peer, for tests and benches.

They build SDP, connectivity checks, DTLS records and (S)RTP packets as bytes and take the relay's
datagrams back; the caller moves the bytes (in memory for core tests, over UDP for benches).
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass, field

from mcs_edge.certs import dtls_certificate
from mcs_edge.core.media.sdp import SessionDescription
from mcs_edge.core.rtp.dtls import DtlsCertificate, DtlsEndpoint, HandshakeComplete
from mcs_edge.core.rtp.srtp import AES_CM_128_HMAC_SHA1_80, SrtpContext
from mcs_edge.core.stun import message as m

_CERT: list[DtlsCertificate] = []


def peer_certificate() -> DtlsCertificate:
    """One certificate shared by simulated peers (generating one per peer is slow)."""
    if not _CERT:
        _CERT.append(dtls_certificate("sim-browser"))
    return _CERT[0]


def rtp_packet(seq: int, ssrc: int, pt: int = 0, payload: bytes = bytes(160), ts: int | None = None) -> bytes:
    """A minimal RTP packet (version 2, no CSRC, no extension)."""
    return (
        struct.pack(
            "!BBHII", 0x80, pt & 0x7F, seq & 0xFFFF, (ts if ts is not None else seq * 160) & 0xFFFFFFFF, ssrc
        )
        + payload
    )


def rtcp_rr(ssrc: int) -> bytes:
    """An empty RTCP receiver report from ``ssrc``."""
    return struct.pack("!BBHI", 0x80, 201, 1, ssrc)


@dataclass
class WebRtcPeer:
    """A browser-like peer at ``addr`` (offerer or answerer)."""

    addr: tuple[str, int]
    kinds: tuple[str, ...] = ("audio",)
    ufrag: str = field(default_factory=lambda: "b" + secrets.token_hex(3))
    pwd: str = field(default_factory=lambda: secrets.token_hex(12))
    certificate: DtlsCertificate = field(default_factory=peer_certificate)
    ssrcs: tuple[int, ...] = (0x1111, 0x2222)
    edge_ufrag: str = ""
    edge_pwd: str = ""
    edge_addr: tuple[str, int] | None = None
    edge_fingerprints: tuple[object, ...] = ()
    dtls: DtlsEndpoint | None = None
    srtp: SrtpContext | None = None
    dtls_role_client: bool = True

    def offer(self, direction: str = "sendrecv", setup: str = "actpass", bundle: bool = True) -> str:
        """An SDP offer like a browser's: BUNDLE, rtcp-mux, one host candidate, a=ssrc."""
        mids = " ".join(str(i) for i in range(len(self.kinds)))
        lines = ["v=0", "o=- 4611731400430051336 2 IN IP4 127.0.0.1", "s=-", "t=0 0"]
        if bundle:
            lines.append(f"a=group:BUNDLE {mids}")
        fp = self.certificate.fingerprint
        for i, kind in enumerate(self.kinds):
            pts = "111 0" if kind == "audio" else "96"
            lines += [
                f"m={kind} {self.addr[1]} UDP/TLS/RTP/SAVPF {pts}",
                f"c=IN IP4 {self.addr[0]}",
                f"a=mid:{i}",
                f"a={direction}",
                "a=rtcp-mux",
                f"a=ice-ufrag:{self.ufrag}",
                f"a=ice-pwd:{self.pwd}",
                f"a=fingerprint:{fp}",
                f"a=setup:{setup}",
                f"a=candidate:1 1 udp 2130706431 {self.addr[0]} {self.addr[1]} typ host",
                f"a=ssrc:{self.ssrcs[i]} cname:sim",
            ]
            if kind == "audio":
                lines += ["a=rtpmap:111 opus/48000/2", "a=rtpmap:0 PCMU/8000"]
            else:
                lines += ["a=rtpmap:96 VP8/90000"]
        return "\r\n".join(lines) + "\r\n"

    def answer(self, offer: SessionDescription, setup: str = "active") -> str:
        """An answer to the edge's WebRTC offer (one m-line per offered one, all accepted)."""
        self.accept(offer)
        self.dtls_role_client = setup == "active"
        lines = ["v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "t=0 0"]
        group = offer.bundle_group
        if group is not None:
            lines.append(f"a=group:BUNDLE {' '.join(group.mids)}")
        for i, md in enumerate(offer.media):
            lines += [
                f"m={md.media} {self.addr[1]} {md.proto} {' '.join(md.formats)}",
                f"c=IN IP4 {self.addr[0]}",
                f"a=mid:{md.mid}",
                "a=sendrecv",
                "a=rtcp-mux",
                f"a=ice-ufrag:{self.ufrag}",
                f"a=ice-pwd:{self.pwd}",
                f"a=fingerprint:{self.certificate.fingerprint}",
                f"a=setup:{setup}",
                f"a=candidate:1 1 udp 2130706431 {self.addr[0]} {self.addr[1]} typ host",
                f"a=ssrc:{self.ssrcs[i % len(self.ssrcs)]} cname:sim",
            ]
        return "\r\n".join(lines) + "\r\n"

    def accept(self, sdp: SessionDescription) -> None:
        """Learn the edge's ICE credentials, fingerprint, candidate and DTLS role from its SDP."""
        t = sdp.transport(0)
        assert t.ice is not None, "edge SDP without ICE credentials"
        self.edge_ufrag, self.edge_pwd = t.ice.ufrag, t.ice.pwd
        self.edge_fingerprints = t.fingerprints
        cand = t.candidates[0]
        self.edge_addr = (cand.address, cand.port)
        if t.setup in ("passive", "active"):
            self.dtls_role_client = t.setup == "passive"

    def check(self, use_candidate: bool = True, ufrag: str | None = None, pwd: str | None = None) -> bytes:
        """A connectivity check (controlling agent) to the edge."""
        attrs: list[m.Attribute] = [
            m.Username(f"{ufrag or self.edge_ufrag}:{self.ufrag}"),
            m.Priority(1853824767),
            m.IceControlling(0x1234567890),
        ]
        if use_candidate:
            attrs.append(m.UseCandidate())
        msg = m.Message(
            m.METHOD_BINDING, m.CLASS_REQUEST, m.Message.new_transaction_id(secrets.token_bytes), tuple(attrs)
        )
        return msg.serialize(integrity_key=(pwd or self.edge_pwd).encode(), fingerprint=True)

    def start_dtls(self, now: float) -> list[bytes]:
        """Create the DTLS endpoint for the negotiated role; the ClientHello if we are the client."""
        self.dtls = DtlsEndpoint(
            is_client=self.dtls_role_client,
            remote_fingerprints=self.edge_fingerprints,  # type: ignore[arg-type]
            certificate=self.certificate,
        )
        self.dtls.start(now)
        return self.dtls.datagrams_to_send()

    def feed_dtls(self, data: bytes, now: float) -> list[bytes]:
        """A DTLS datagram from the edge; returns what to send back."""
        assert self.dtls is not None
        self.dtls.receive(data, now)
        out = self.dtls.datagrams_to_send()
        while (ev := self.dtls.next_event()) is not None:
            if isinstance(ev, HandshakeComplete):
                self.srtp = ev.srtp_context()
        return out

    def srtp_packet(
        self, seq: int, index: int = 0, pt: int | None = None, payload: bytes = bytes(160)
    ) -> bytes:
        assert self.srtp is not None, "DTLS not complete"
        if pt is None:
            pt = 0 if self.kinds[index] == "audio" else 96
        return self.srtp.protect_rtp(rtp_packet(seq, self.ssrcs[index], pt, payload))


@dataclass
class SdesPeer:
    """A PBX speaking RTP/SAVP with SDES keys (our key in its SDP; the edge's from the edge's SDP)."""

    key: bytes = field(default_factory=lambda: secrets.token_bytes(30))
    srtp: SrtpContext | None = None

    def crypto_line(self, tag: int = 1) -> str:
        import base64

        return f"a=crypto:{tag} AES_CM_128_HMAC_SHA1_80 inline:{base64.b64encode(self.key).decode()}"

    def learn(self, sdp: SessionDescription, index: int = 0) -> None:
        """Key SRTP from the edge's a=crypto for AES_CM_128_HMAC_SHA1_80."""
        for c in sdp.media[index].cryptos:
            if c.suite == "AES_CM_128_HMAC_SHA1_80":
                self.srtp = SrtpContext(AES_CM_128_HMAC_SHA1_80, self.key, c.key)
                return
        raise AssertionError("edge offered no AES_CM_128_HMAC_SHA1_80 key")
