"""The C forwarding rule (mcs_edge._fastfwd) against the Python fast path of ``Leg.receive``.

Each scenario runs one packet sequence twice on loopback sockets: once through ``Leg.receive``
alone, once through a C Port whose rule the leg installs (the relay adapter's ``_Held`` folds the
counters back). The bytes that reach the PBX and every counter of both legs must be the same:
packets, bytes, drops by reason, policing decisions and bucket state (a scripted ``now``),
sequence trackers, ``last_rx``, the far leg's tx counters and ``last_rtp``. SRTP legs (SDES on
either side) run the same way: the rule unprotects and protects with the legs' own libsrtp sessions.
"""

from __future__ import annotations

import base64
import gc
import os
import random
import secrets
import socket
import struct
import sys
import tracemalloc
from types import SimpleNamespace
from typing import Any

import pytest
from helpers.legports import RecordingPorts
from helpers.webrtc_peer import WebRtcPeer, rtcp_rr, rtp_packet

from mcs_edge.certs import edge_dtls_certificate
from mcs_edge.core.media.offload import OffloadTaken
from mcs_edge.core.media.sdp import Profile, SessionDescription
from mcs_edge.core.media.session import CLIENT, PBX, Leg, MediaSession, SessionSettings
from mcs_edge.core.rtp.srtp import AES_CM_128_HMAC_SHA1_80, SrtpContext
from mcs_edge.core.shaping import Policer, TokenBucket
from mcs_edge.tx.media.relay import _Held
from mcs_edge.tx.relay_endpoint import fastfwd

ff = fastfwd()


def test_the_extension_is_built_under_ci() -> None:
    """CI builds the extension (``pip install -e``); a missing one fails there instead of skipping."""
    if ff is None:
        if os.environ.get("CI"):
            pytest.fail(
                "mcs_edge._fastfwd was not built (setup.py ext_modules; gcc and Python headers needed)"
            )
        pytest.skip("mcs_edge._fastfwd not built")
    assert ff.BATCH >= 1


needs_ff = pytest.mark.skipif(ff is None, reason="mcs_edge._fastfwd not built")

SETTINGS = SessionSettings(
    client_host="127.0.0.1",
    pbx_host="127.0.0.1",
    certificate=edge_dtls_certificate(),
    random_bytes=secrets.token_bytes,
)


def _udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s


def _plain(addr: tuple[str, int], user: str, key: bytes | None = None) -> SessionDescription:
    """Plain RTP, or RTP/SAVP with an SDES ``key`` (AES_CM_128_HMAC_SHA1_80)."""
    proto, crypto = "RTP/AVP", ""
    if key is not None:
        proto = "RTP/SAVP"
        crypto = f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{base64.b64encode(key).decode()}\r\n"
    return SessionDescription.parse(
        f"v=0\r\no={user} 1 1 IN IP4 {addr[0]}\r\ns=-\r\nc=IN IP4 {addr[0]}\r\nt=0 0\r\n"
        f"m=audio {addr[1]} {proto} 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n{crypto}"
    )


#: SDES runs: the phone's and the PBX's master keys, and the edge's (the same in both runs)
PHONE_KEY, PBX_KEY = bytes(range(30)), bytes(range(100, 130))
SRTP_SETTINGS = SessionSettings(
    client_host="127.0.0.1",
    pbx_host="127.0.0.1",
    certificate=edge_dtls_certificate(),
    random_bytes=lambda n: bytes(range(200, 200 + n)),
)


def _phone_srtp() -> SrtpContext:
    """The phone's SRTP (its key; the edge's toward it does not matter for what the phone sends)."""
    return SrtpContext(AES_CM_128_HMAC_SHA1_80, PHONE_KEY, bytes(30))


class _Phone:
    """The phone's sender: SRTP of any length (the edge's contexts refuse what its buffer cannot
    take; a phone may send it), through the libsrtp function and session of ``offload_protect``."""

    def __init__(self) -> None:
        from pylibsrtp._binding import ffi

        self.ffi = ffi
        self.srtp = _phone_srtp()
        o = self.srtp.offload_protect()
        self.fn = ffi.cast("srtp_err_status_t (*)(srtp_t, void *, int *)", o.function)
        self.session = ffi.cast("srtp_t", o.handle)
        self.buf = ffi.new("char[]", 4096)
        self.len = ffi.new("int *")

    def protect_rtp(self, plain: bytes) -> bytes:
        self.ffi.memmove(self.buf, plain, len(plain))
        self.len[0] = len(plain)
        assert self.fn(self.session, self.buf, self.len) == 0
        return bytes(self.ffi.buffer(self.buf, self.len[0]))

    def protect_rtcp(self, plain: bytes) -> bytes:
        return self.srtp.protect_rtcp(plain)


class Peers:
    """The phone, a stranger and the PBX: real sockets, so both runs see the same addresses."""

    def __init__(self) -> None:
        self.phone, self.stranger, self.pbx = _udp(), _udp(), _udp()
        self.addr = {
            "phone": self.phone.getsockname(),
            "stranger": self.stranger.getsockname(),
            "pbx": self.pbx.getsockname(),
        }

    def drain_pbx(self) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(self.pbx.recv(4096))
            except BlockingIOError:
                return out

    def close(self) -> None:
        for s in (self.phone, self.stranger, self.pbx):
            s.close()


#: ICE runs: the edge's credentials are the same in both runs (the script's checks carry them)
ICE_SETTINGS = SessionSettings(
    client_host="127.0.0.1",
    pbx_host="127.0.0.1",
    idle_timeout=300.0,
    certificate=edge_dtls_certificate(),
    random_bytes=lambda n: bytes(range(n)),
)


def _ice_offer(addr: tuple[str, int], peer: WebRtcPeer, also: tuple[str, int]) -> SessionDescription:
    """The mobile app's plain RTP offer with ICE (rtcp-mux), a candidate at ``addr`` and ``also``."""
    return SessionDescription.parse(
        f"v=0\r\no=phone 1 1 IN IP4 {addr[0]}\r\ns=-\r\nc=IN IP4 {addr[0]}\r\nt=0 0\r\n"
        f"m=audio {addr[1]} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\na=rtcp-mux\r\n"
        f"a=ice-ufrag:{peer.ufrag}\r\na=ice-pwd:{peer.pwd}\r\n"
        f"a=candidate:1 1 UDP 2113929471 {addr[0]} {addr[1]} typ host\r\n"
        f"a=candidate:2 1 UDP 2113929470 {also[0]} {also[1]} typ host\r\n"
    )


def _call(
    peers: Peers,
    profile: Profile,
    rate: float,
    burst: float,
    ice: WebRtcPeer | None = None,
    phone_sdes: bool = False,
) -> tuple[MediaSession, RecordingPorts, Leg, Leg]:
    """A call from the phone (plain RTP, or SDES-SRTP with ``phone_sdes``) to the PBX (``profile``:
    RTP, passthrough, or SDES with the PBX's key)."""
    ports = RecordingPorts()
    policer = lambda: Policer(TokenBucket(rate, burst, 0.0))  # noqa: E731
    if phone_sdes or profile is Profile.SDES:
        session = MediaSession("c", SRTP_SETTINGS, ports, pbx_profile=profile, policer=policer)
        session.offer(CLIENT, _plain(peers.addr["phone"], "phone", PHONE_KEY if phone_sdes else None), 0.0)
        pbx_key = PBX_KEY if profile is Profile.SDES else None
        session.answer(PBX, _plain(peers.addr["pbx"], "pbx", pbx_key), 0.0)
    elif ice is None:
        session = MediaSession("c", SETTINGS, ports, pbx_profile=profile, policer=policer)
        session.offer(CLIENT, _plain(peers.addr["phone"], "phone"), 0.0)
        session.answer(PBX, _plain(peers.addr["pbx"], "pbx"), 0.0)
    else:
        session = MediaSession("c", ICE_SETTINGS, ports, pbx_profile=profile, policer=policer)
        session.offer(CLIENT, _ice_offer(peers.addr["phone"], ice, peers.addr["stranger"]), 0.0, 1)
        ice.accept(session.answer(PBX, _plain(peers.addr["pbx"], "pbx"), 0.0))
    client, pbx = session.mline_legs[CLIENT][0], session.mline_legs[PBX][0]
    assert client is not None and pbx is not None
    return session, ports, client, pbx


def _state(leg: Leg, far: Leg) -> dict[str, Any]:
    c = leg.counters
    return {
        "packets": c.packets,
        "bytes": c.bytes,
        "dropped": dict(c.dropped),
        "sequences": {s: (t.base, t.max_seq, t.cycles, t.received) for s, t in c.sequences.items()},
        "rx_ssrc": leg.rx_ssrc,
        "last_rx": leg.last_rx,
        "policed": (leg.policer.dropped_packets, leg.policer.dropped_bytes),
        "bucket": leg.policer.bucket.state(),
        "far_tx": (far.tx_packets, far.tx_bytes),
        "far_last_rtp": far.last_rtp,
        "far_dropped": dict(far.counters.dropped),
    }


Script = list[tuple[str, bytes, float]]  # (who sends, datagram, now)
#: script entries with these datagrams: an ICE check from ``who`` (nominating / not), the
#: session's timer at ``now`` (who = "timer")
CHECK, PROBE, TIMER = b"check", b"probe", b"timer"


def _datagram(data: bytes, ice: WebRtcPeer | None) -> bytes:
    if ice is not None and data in (CHECK, PROBE):
        return ice.check(use_candidate=data == CHECK)
    return data


def run_python(
    script: Script,
    profile: Profile,
    rate: float,
    burst: float,
    ice: WebRtcPeer | None = None,
    phone_sdes: bool = False,
) -> tuple[list[bytes], dict[str, Any]]:
    peers = Peers()
    try:
        session, ports, client, pbx = _call(peers, profile, rate, burst, ice, phone_sdes)
        for who, data, now in script:
            if data == TIMER:
                session.handle_timer(now)
            else:
                client.receive(_datagram(data, ice), peers.addr[who], now)
        return ports.take(peers.addr["pbx"], port=pbx.port), _state(client, pbx)
    finally:
        peers.close()


class Harness:
    """The relay adapter's part for one leg: its Port (C) and the far leg's Port for sending."""

    def __init__(self, client: Leg, pbx: Leg, now: list[float]) -> None:
        self.client, self.now = client, now
        self.csock, self.psock = _udp(), _udp()
        self.errors: list[str] = []
        self.tally = ff.Tally()
        self.handed_on = 0
        self.relay = SimpleNamespace(held={}, counters={}, released=[])
        self.port = ff.Port(
            self.csock.fileno(), self.received, self.errors.append, lambda: self.now[0], self.tally
        )
        self.far = ff.Port(self.psock.fileno(), lambda d, a: None, self.errors.append)
        pbx.send = self.far.sendto  # the Python path sends from the same socket as the rule
        self.installs = 0
        self.timers = 0
        self.sent: list[bytes] = []  # what reached the PBX and the legs' state (set by _same)
        self.state: dict[str, Any] = {}

    def received(self, data: bytes, addr: Any) -> None:
        self.handed_on += 1
        held = self.client.offload
        if held is not None:
            held.revoke()  # type: ignore[attr-defined]
        self.client.receive(data, addr, self.now[0])
        self.consider()

    def consider(self) -> None:
        leg = self.client
        spec = leg.offload_spec()
        if leg.offload is not None or spec is None:
            return
        self.port.install(
            spec.source,
            self.far,
            spec.dest,
            spec.rate,
            spec.burst,
            spec.tokens,
            spec.last,
            spec.trackers,
            spec.current,
            spec.unprotect,
            spec.protect,
        )
        leg.offload = held = _Held(self.relay, leg, self.port, spec)  # type: ignore[arg-type]
        self.relay.held[leg] = held
        self.installs += 1

    def pump(self) -> None:
        """Read until the datagram just sent was handled (forwarded here or handed on)."""
        before = self.tally.value + self.handed_on
        for _ in range(10000):
            self.port()
            if self.tally.value + self.handed_on > before:
                return
        raise AssertionError("datagram never arrived")

    def close(self) -> None:
        self.port.close()
        self.far.close()
        self.csock.close()
        self.psock.close()


def run_c(
    script: Script,
    profile: Profile,
    rate: float,
    burst: float,
    ice: WebRtcPeer | None = None,
    phone_sdes: bool = False,
) -> tuple[list[bytes], dict[str, Any], Harness]:
    peers = Peers()
    now = [0.0]
    session, _ports, client, pbx = _call(peers, profile, rate, burst, ice, phone_sdes)
    h = Harness(client, pbx, now)
    try:
        relay_addr = h.csock.getsockname()
        forwarded: list[bytes] = []
        for who, data, t in script:
            now[0] = t
            if data == TIMER:  # the relay's part: the session's timer, then ask the released legs
                session.handle_timer(t)
                h.timers += 1
                released, h.relay.released = h.relay.released, []
                if session.ended is None and released:
                    h.consider()
                continue
            getattr(peers, who).sendto(_datagram(data, ice), relay_addr)
            h.pump()
            forwarded += peers.drain_pbx()  # loopback delivers at once; the socket's buffer stays small
        client.sync()
        return forwarded, _state(client, pbx), h
    finally:
        h.close()
        peers.close()


def _same(
    script: Script,
    profile: Profile = Profile.RTP,
    rate: float = 1e6,
    burst: float = 1e6,
    ice: WebRtcPeer | None = None,
    phone_sdes: bool = False,
) -> Harness:
    sent_py, state_py = run_python(script, profile, rate, burst, ice, phone_sdes)
    sent_c, state_c, h = run_c(script, profile, rate, burst, ice, phone_sdes)
    assert sent_c == sent_py
    assert state_c == state_py
    h.sent = sent_c
    h.state = state_c
    return h


def _stream(seqs: list[int], ssrc: int = 0x1234, t0: float = 1.0, who: str = "phone") -> Script:
    return [
        (who, rtp_packet(seq, ssrc, payload=bytes(100 + i % 50)), t0 + i * 0.02) for i, seq in enumerate(seqs)
    ]


@needs_ff
@pytest.mark.parametrize("profile", [Profile.RTP, Profile.PASSTHROUGH])
def test_in_order_stream_is_forwarded_in_c_with_the_same_counters(profile: Profile) -> None:
    h = _same(_stream(list(range(1, 60))), profile)
    assert h.tally.value == 58 and h.handed_on == 1  # the first packet made the tracker, in Python


@needs_ff
def test_gaps_late_packets_wrap_and_jumps_match_the_sequence_tracker() -> None:
    seqs = [65530, 65531, 65533, 65532, 65534, 65535, 0, 1, 5, 4, 6, 7, 20000, 20001, 20002, 20001, 20003]
    h = _same(_stream(seqs))
    assert h.tally.value > 0 and h.handed_on > 1


@needs_ff
def test_interleaved_ssrcs_new_ssrcs_and_more_than_a_rule_tracks() -> None:
    script: Script = []
    t = 1.0
    for i in range(1, 40):
        for ssrc in (0xA, 0xB) if i < 20 else (0xA, 0xB, 0xC, 0xD, 0xE, 0xF):
            script.append(("phone", rtp_packet(i, ssrc), t))
            t += 0.005
    h = _same(script)
    assert h.tally.value > len(script) // 2


@needs_ff
def test_policing_decisions_and_bucket_state_are_the_same() -> None:
    """A bucket of 2,000 bytes at 4,000 bytes/s: bursts and several packets at one ``now``."""
    script: Script = []
    t = 1.0
    for i in range(1, 200):
        script.append(("phone", rtp_packet(i, 0x99, payload=bytes(160)), t))
        t += 0.0 if i % 7 else 0.05  # 7 packets at the same time, then a pause
    h = _same(script, rate=4000.0, burst=2000.0)
    assert h.tally.value > 0


@needs_ff
def test_rtcp_stranger_short_and_garbage_go_the_python_way() -> None:
    script = _stream(list(range(1, 10)))
    script += [("phone", rtcp_rr(0x1234), 1.3), ("stranger", rtp_packet(10, 0x1234), 1.31)]
    script += [("phone", rtp_packet(10, 0x1234)[:11], 1.32), ("phone", b"\x00garbage", 1.33)]
    script += [("phone", bytes([0x80, 200]) + bytes(30), 1.34)]  # RTCP SR shape, too odd for RTP
    script += _stream(list(range(10, 30)), t0=1.4)
    _same(script)


@needs_ff
def test_an_ice_leg_is_held_by_a_rule_between_checks_and_timers() -> None:
    """A plain RTP leg with ICE-lite (the mobile app): checks go the Python way, RTP from the
    nominated address is forwarded in C; session timers before consent runs out release the rule
    and it comes back; the same bytes and counters as Python alone."""
    script: Script = [("phone", CHECK, 0.5), ("stranger", rtp_packet(1, 0x77), 0.6)]  # no consent
    script += _stream(list(range(1, 40)), ssrc=0x77, t0=1.0)
    script += [("timer", TIMER, 1.9), ("phone", CHECK, 2.0)]
    script += _stream(list(range(40, 80)), ssrc=0x77, t0=2.1)
    script += [("timer", TIMER, 3.0)]
    script += _stream(list(range(80, 100)), ssrc=0x77, t0=3.1)
    h = _same(script, ice=WebRtcPeer(("127.0.0.1", 1)))
    assert h.timers == 2 and h.installs >= 4 and h.tally.value > 80


@needs_ff
def test_consent_expiry_in_a_timer_stops_the_rule_and_moves_the_source() -> None:
    """The nominated address stops refreshing consent; another pair of the leg keeps it. The
    timer at the first pair's expiry moves ``remote`` to the other pair: the rule is released
    there, packets from the old address are dropped (no consent) and those from the new one are
    forwarded (by a new rule); then that pair's consent runs out too: the call ends, nothing more
    is forwarded. Same bytes and counters as Python alone."""
    script: Script = [("stranger", CHECK, 0.5), ("phone", CHECK, 0.6)]  # the later one is selected
    script += _stream(list(range(1, 30)), ssrc=0x77, t0=1.0)
    script += [("stranger", PROBE, 20.0), ("timer", TIMER, 30.7)]  # the phone's consent ran out
    script += _stream(list(range(30, 40)), ssrc=0x77, t0=30.8)  # old source: no consent
    script += _stream(list(range(40, 60)), ssrc=0x77, t0=31.2, who="stranger")
    script += [("timer", TIMER, 50.1)]  # the stranger's consent ran out: the call ends
    script += _stream(list(range(60, 70)), ssrc=0x77, t0=50.2, who="stranger")
    h = _same(script, ice=WebRtcPeer(("127.0.0.1", 1)))
    held = h.client.offload
    assert held is None and h.client.session.ended == "consent lost"
    assert h.client.counters.dropped["no-consent"] == 10 + 10  # the old source, then after the end
    assert h.client.counters.packets == 29 + 20 and h.installs >= 2


@needs_ff
def test_random_datagrams_never_crash_and_match() -> None:
    rng = random.Random(7)
    script: Script = []
    seq = 100
    for i in range(400):
        r = rng.random()
        if r < 0.7:
            seq = (seq + 1) & 0xFFFF
            data = rtp_packet(seq, 0x5151, pt=rng.choice([0, 8, 96, 111]))
        elif r < 0.85:
            data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 40)))
        else:
            data = bytes([rng.randrange(128, 192)]) + bytes(
                rng.getrandbits(8) for _ in range(rng.randrange(0, 30))
            )
        script.append(("phone" if rng.random() < 0.95 else "stranger", data, 1.0 + i * 0.003))
    _same(script, rate=40000.0, burst=3000.0)


# ------------------------------------------------------------------------------- SRTP in the rule

#: (the phone speaks SDES-SRTP, the PBX's profile): the rule decrypts, encrypts, or both
SRTP_CASES = [(True, Profile.RTP), (False, Profile.SDES), (True, Profile.SDES)]
SRTP_IDS = ["srtp-to-rtp", "rtp-to-srtp", "srtp-to-srtp"]


def _srtp_script(phone_sdes: bool, t0: float = 1.0, step: float = 0.02) -> tuple[Script, int]:
    """In-order SRTP (or RTP) with what a rule must treat as the Python path does: a packet whose
    tag does not verify and, after it, the genuine packet of that number; a replay; SRTCP; a
    late packet; one too long to protect after decryption (1,412 bytes plain) and one too long to
    unprotect (1,512 bytes); a header without tag or payload. Returns the script and the number
    of datagrams the Python path counts as ``srtp`` drops."""
    srtp = _Phone() if phone_sdes else None

    def seal(plain: bytes) -> bytes:
        return srtp.protect_rtp(plain) if srtp is not None else plain

    packets: list[bytes] = []
    sent: dict[int, bytes] = {}

    def send(seq: int, payload: bytes = b"") -> None:
        data = sent[seq] = seal(rtp_packet(seq, 0x5EC, payload=payload or bytes(100 + seq % 50)))
        packets.append(data)

    for seq in range(1, 31):
        send(seq)
    genuine = seal(rtp_packet(31, 0x5EC, payload=bytes(120)))
    packets.append(genuine[:-1] + bytes([genuine[-1] ^ 1]))  # tag does not verify (in order)
    packets.append(genuine)
    packets.append(sent[20])  # a replay (Python: late; libsrtp: replayed)
    rr = rtcp_rr(0x5EC)
    packets.append(srtp.protect_rtcp(rr) if srtp is not None else rr)
    for seq in range(32, 40):
        send(seq)
    for seq in range(41, 45):
        send(seq)
    send(40)  # late, inside libsrtp's window
    send(45, bytes(1400))  # 1,412 bytes plain: libsrtp's protect refuses it (too long)
    send(46, bytes(1490))  # 1,502 plain, 1,512 protected: too long to unprotect
    for seq in range(47, 60):
        send(seq)
    packets.append(rtp_packet(60, 0x5EC, payload=b""))  # a bare header: no tag, no payload
    for seq in range(61, 80):
        send(seq)
    script = [("phone", data, t0 + i * step) for i, data in enumerate(packets)]
    return script, (4 if phone_sdes else 0)


@needs_ff
@pytest.mark.parametrize(("phone_sdes", "profile"), SRTP_CASES, ids=SRTP_IDS)
def test_srtp_legs_are_forwarded_in_c_with_the_same_bytes_and_counters(
    phone_sdes: bool, profile: Profile
) -> None:
    """SDES-SRTP from the phone to a plain PBX, plain RTP to an SDES PBX, SRTP both ways: the rule
    unprotects and protects with the legs' own libsrtp sessions; bytes at the PBX and every counter
    are those of the Python path, including the refusals (tag, replay, too long, no tag)."""
    script, srtp_drops = _srtp_script(phone_sdes)
    h = _same(script, profile, phone_sdes=phone_sdes)
    dropped = h.state["dropped"]
    assert dropped.get("srtp", 0) == srtp_drops
    far_dropped = h.state["far_dropped"]
    too_long = 1 if phone_sdes else 2  # 1,412 and 1,502 bytes plain (the latter fails unprotect first)
    assert far_dropped.get("srtp-protect", 0) == (too_long if profile is Profile.SDES else 0)
    # the rule did the work: all but the first packet, the replay, RTCP, the late one, the long ones
    assert h.tally.value >= len(script) - 7 and h.installs >= 1
    if profile is Profile.SDES:  # what the PBX got decrypts to the phone's packets
        pbx = SrtpContext(AES_CM_128_HMAC_SHA1_80, PBX_KEY, SRTP_SETTINGS.random_bytes(30))
        plain = [pbx.unprotect_rtp(d) for d in h.sent[:3]]
        assert [struct.unpack("!H", p[2:4])[0] for p in plain[:3]] == [1, 2, 3]


@needs_ff
@pytest.mark.parametrize(("phone_sdes", "profile"), SRTP_CASES, ids=SRTP_IDS)
def test_srtp_refusals_under_a_tight_bucket_are_charged_as_python_charges_them(
    phone_sdes: bool, profile: Profile
) -> None:
    """The same packets at 7 per ``now`` into a 2,000-byte bucket: a packet libsrtp refuses has been
    policed first (Python charges the bucket, then counts ``srtp``); handing it on instead, or
    counting it before policing, changes the bucket, the ``policed`` and the ``srtp`` counts."""
    script, _ = _srtp_script(phone_sdes)
    script = [(who, data, 1.0 + (i // 7) * 0.05) for i, (who, data, _t) in enumerate(script)]
    h = _same(script, profile, rate=4000.0, burst=2000.0, phone_sdes=phone_sdes)
    assert h.state["policed"][0] > 0 and h.tally.value > 0


@needs_ff
def test_an_srtp_rule_keeps_the_session_alive_and_the_python_path_shares_its_replay_window() -> None:
    """The rule holds the libsrtp session's owner: dropping every Python reference to the leg's
    SRTP context while the rule runs leaves the session usable (no use after free); a packet the
    rule unprotected is a replay for the Python path afterwards (one libsrtp session)."""
    peers = Peers()
    now = [1.0]
    _session, _ports, client, pbx = _call(peers, Profile.RTP, 1e6, 1e6, phone_sdes=True)
    h = Harness(client, pbx, now)
    try:
        srtp = _Phone()
        relay_addr = h.csock.getsockname()
        packets = [srtp.protect_rtp(rtp_packet(seq, 0x77)) for seq in range(1, 12)]
        for data in packets[:2]:
            peers.phone.sendto(data, relay_addr)
            h.pump()
        assert client.offload is not None and h.tally.value == 1
        spec = client.offload.spec  # type: ignore[attr-defined]
        assert spec.unprotect is not None and spec.protect is None
        owner = spec.unprotect.owner
        refs = sys.getrefcount(owner)
        client.offload.spec = None  # type: ignore[attr-defined]
        del spec
        context, client.srtp = client.srtp, None
        del context
        gc.collect()
        assert sys.getrefcount(owner) < refs  # only the rule (and this frame) hold it now
        del owner
        for data in packets[2:10]:
            peers.phone.sendto(data, relay_addr)
            h.pump()
        assert h.tally.value == 9 and len(peers.drain_pbx()) == 10
        h.port.revoke()
        h.port.install(("127.0.0.1", 1), h.far, ("127.0.0.1", 2), 1.0, 1.0, 1.0, 0.0, ((b"abcd", 1),), 0)
        h.port.revoke()  # the old owner is released here; nothing else uses its session
        gc.collect()
    finally:
        h.close()
        peers.close()
    # one libsrtp session: what the rule unprotected, Python refuses as a replay
    peers = Peers()
    now = [1.0]
    _session, _ports, client, pbx = _call(peers, Profile.RTP, 1e6, 1e6, phone_sdes=True)
    h = Harness(client, pbx, now)
    try:
        relay_addr = h.csock.getsockname()
        for data in packets[:6]:
            peers.phone.sendto(data, relay_addr)
            h.pump()
        assert h.tally.value == 5
        h.client.offload.revoke()  # type: ignore[union-attr]
        client.receive(packets[4], peers.addr["phone"], 2.0)
        assert client.counters.dropped == {"srtp": 1} and client.counters.packets == 6
    finally:
        h.close()
        peers.close()


@needs_ff
def test_install_refuses_bad_srtp() -> None:
    s, t = _udp(), _udp()
    p = ff.Port(s.fileno(), lambda d, a: None, lambda k: None)
    far = ff.Port(t.fileno(), lambda d, a: None, lambda k: None)
    base = (("127.0.0.1", 1), far, ("127.0.0.1", 2), 1.0, 1.0, 1.0, 0.0, ((b"abcd", 1),), 0)
    good = tuple(_phone_srtp().offload_unprotect())
    for bad in (
        (0, 1, None, 1500),
        (1, 0, None, 1500),
        (1, 1, None, 11),
        (1, 1, None),
        "x",
        (-1, 1, None, 100),
    ):
        for key in ("unprotect", "protect"):
            with pytest.raises((ValueError, TypeError, OverflowError)):
                p.install(*base, **{key: bad})
            assert not p.installed
    p.install(*base, unprotect=good, protect=None)
    assert p.installed and len(p.revoke() or ()) == 15
    for port in (p, far):
        port.close()
    s.close()
    t.close()


@needs_ff
def test_sendto_and_errors_never_raise_for_socket_failures() -> None:
    errors: list[str] = []
    s = _udp()
    p = ff.Port(s.fileno(), lambda d, a: None, errors.append)
    p.sendto(b"x" * 70000, ("127.0.0.1", 9))  # EMSGSIZE: counted, not raised
    assert errors == ["send"]
    with pytest.raises(ValueError):
        p.sendto(b"x", ("not-an-address", 9))
    with pytest.raises(TypeError):
        p.sendto(b"x", "127.0.0.1")
    p.close()
    p.sendto(b"x", ("127.0.0.1", 9))  # closed: nothing, no error
    assert errors == ["send"]
    p()  # closed: the reader does nothing
    s.close()


@needs_ff
def test_handler_errors_reach_the_loop_after_the_batch() -> None:
    """An exception in ``received`` is raised once the batch is read (the loop reports it);
    the other datagrams of the batch were still handed on."""
    s, peer = _udp(), _udp()
    got: list[bytes] = []

    def received(data: bytes, addr: Any) -> None:
        got.append(data)
        if data == b"2":
            raise RuntimeError("boom")

    p = ff.Port(s.fileno(), received, lambda k: None)
    for d in (b"1", b"2", b"3"):
        peer.sendto(d, s.getsockname())
    with pytest.raises(RuntimeError, match="boom"):
        for _ in range(1000):
            p()
            if len(got) == 3:
                break
    assert got == [b"1", b"2", b"3"]
    p.close()
    s.close()
    peer.close()


@needs_ff
def test_install_refuses_bad_rules() -> None:
    s, t = _udp(), _udp()
    p = ff.Port(s.fileno(), lambda d, a: None, lambda k: None)
    far = ff.Port(t.fileno(), lambda d, a: None, lambda k: None)
    good = dict(
        source=("127.0.0.1", 1),
        target=far,
        dest=("127.0.0.1", 2),
        rate=1.0,
        burst=1.0,
        tokens=1.0,
        last=0.0,
        trackers=((b"abcd", 1),),
        current=0,
    )
    for bad in (
        {"trackers": ()},
        {"trackers": ((b"abc", 1),)},
        {"trackers": ((b"abcd", 70000),)},
        {"current": 1},
        {"source": ("host.example", 1)},
        {"dest": ("127.0.0.1", 70000)},
        {"target": object()},
    ):
        with pytest.raises((ValueError, TypeError, OverflowError)):
            p.install(**{**good, **bad})
        assert not p.installed
    p.install(**good)
    assert p.installed
    with pytest.raises(RuntimeError):
        p.install(**good)
    assert p.revoke() is not None and not p.installed and p.take() is None
    for port in (p, far):
        port.close()
    s.close()
    t.close()


@needs_ff
def test_open_close_loop_leaks_nothing() -> None:
    """Ports holding rules on each other (a cycle A -> B -> A), with SRTP sessions' owners, opened
    and closed or just dropped (a rule revoked and installed again): no growth of traced memory,
    and the handlers' and owners' reference counts come back."""

    def handler(_d: bytes, _a: Any) -> None:
        return None

    s1, s2 = _udp(), _udp()
    base_refs = sys.getrefcount(handler)

    owner = object()  # an SRTP session's owner: the rules hold it (never called: no traffic)
    base_owner_refs = sys.getrefcount(owner)
    srtp = (1, 1, owner, 1500)

    def round_(close: bool) -> None:
        a = ff.Port(s1.fileno(), handler, handler)
        b = ff.Port(s2.fileno(), handler, handler)
        a.install(("127.0.0.1", 1), b, ("127.0.0.1", 2), 1.0, 1.0, 1.0, 0.0, ((b"abcd", 1),), 0, srtp, srtp)
        b.install(("127.0.0.1", 2), a, ("127.0.0.1", 1), 1.0, 1.0, 1.0, 0.0, ((b"abcd", 1),), 0, None, srtp)
        a.take()
        if close:
            a.close()
            b.close()
        else:
            b.revoke()
            b.install(("127.0.0.1", 2), a, ("127.0.0.1", 1), 1.0, 1.0, 1.0, 0.0, ((b"abcd", 1),), 0, srtp)

    for close in (True, False):
        for _ in range(200):
            round_(close)
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(3000):
            round_(close)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        assert grown < 64 * 1024, grown
    assert sys.getrefcount(handler) == base_refs
    assert sys.getrefcount(owner) == base_owner_refs + 1  # the tuple ``srtp`` holds one
    s1.close()
    s2.close()


@needs_ff
def test_take_reports_what_the_rule_did() -> None:
    """The raw tuple: counters since the last take, absolute bucket and tracker state."""
    s, t, phone, dest = _udp(), _udp(), _udp(), _udp()
    now = [5.0]
    p = ff.Port(s.fileno(), lambda d, a: None, lambda k: None, lambda: now[0])
    far = ff.Port(t.fileno(), lambda d, a: None, lambda k: None)
    p.install(
        phone.getsockname(),
        far,
        dest.getsockname(),
        100.0,
        400.0,
        400.0,
        4.0,
        ((struct.pack("!I", 7), 9),),
        0,
    )
    for seq in (10, 11, 12):
        phone.sendto(rtp_packet(seq, 7, payload=bytes(188)), s.getsockname())  # 200 bytes
    for _ in range(1000):
        p()
        taken = p.take()
        if taken is not None and taken[0] + taken[2] == 3:
            break
    assert taken[:7] == (2, 400, 1, 200, 2, 400, 0)  # 400 tokens: two admitted, one policed
    assert taken[7] == 5.0 and taken[8:10] == (0.0, 5.0) and taken[10] == ((11, 2),)
    assert taken[12] == rtp_packet(11, 7, payload=bytes(188))
    assert [dest.recv(4096) for _ in range(2)] == [rtp_packet(s, 7, payload=bytes(188)) for s in (10, 11)]
    assert p.take()[:7] == (0,) * 7
    for port in (p, far):
        port.close()
    for sock in (s, t, phone, dest):
        sock.close()


@needs_ff
@pytest.mark.parametrize("action", ["close", "revoke"])
def test_a_clock_that_closes_or_revokes_the_port_stops_the_rule(action: str) -> None:
    """The clock is Python when one is given: the rule is read again after it, so a port closed
    or revoked by it forwards nothing and counts nothing (before, the freed rule was used)."""
    s, t, phone, dest = _udp(), _udp(), _udp(), _udp()
    p: Any = None

    def clock() -> float:
        getattr(p, action)()
        return 5.0

    handed: list[bytes] = []
    p = ff.Port(s.fileno(), lambda d, a: handed.append(d), lambda k: None, clock)
    far = ff.Port(t.fileno(), lambda d, a: None, lambda k: None)
    p.install(
        phone.getsockname(),
        far,
        dest.getsockname(),
        100.0,
        400.0,
        400.0,
        4.0,
        ((struct.pack("!I", 7), 9),),
        0,
    )
    packet = rtp_packet(10, 7, payload=bytes(20))
    phone.sendto(packet, s.getsockname())
    dest.settimeout(0.2)
    for _ in range(200):
        p()
        if action == "close" or handed:
            break
    with pytest.raises(TimeoutError):
        dest.recv(4096)
    # revoked: the packet goes the Python way (a rule gone is not charged); closed: nowhere
    assert handed == ([packet] if action == "revoke" else [])
    for port in (p, far):
        port.close()
    for sock in (s, t, phone, dest):
        sock.close()


@needs_ff
def test_a_handler_closing_its_own_port_mid_batch_ends_the_batch_cleanly() -> None:
    """Datagrams of the batch after a close are not handed on, and nothing crashes."""
    s, peer = _udp(), _udp()
    got: list[bytes] = []
    p: Any = None

    def received(data: bytes, addr: Any) -> None:
        got.append(data)
        p.close()

    p = ff.Port(s.fileno(), received, lambda k: None)
    for d in (b"1", b"2", b"3"):
        peer.sendto(d, s.getsockname())
    for _ in range(1000):
        p()
        if got:
            break
    assert got == [b"1"]
    p()  # a closed port reads nothing
    assert got == [b"1"]
    s.close()
    peer.close()


def test_counters_taken_from_a_rule_never_move_last_rx_backwards() -> None:
    """A call back from park has ``last_rx`` raised to the return time by the anchor; a rule's older
    last packet, folded in afterwards, must not undo that (the idle timeout would count the park)."""
    peers = Peers()
    try:
        _session, _ports, client, _pbx = _call(peers, Profile.RTP, 1e6, 1e6)
        client.receive(rtp_packet(10, 7, payload=bytes(20)), peers.addr["phone"], 1.0)
        spec = client.offload_spec()
        assert spec is not None
        client.last_rx = 100.0  # the anchor's _unpark: max(last_rx, now)
        none = tuple((max_seq, 0) for _, max_seq in spec.trackers)
        taken = OffloadTaken(3, 600, 0, 0, 3, 600, 0, 40.0, 1e6, 40.0, none, 0, None)
        client.absorb_offload(spec, taken)
        assert client.last_rx == 100.0
        assert client.counters.packets == 4
        client.absorb_offload(
            spec, taken._replace(packets=0, rx_bytes=0, tx_packets=0, tx_bytes=0, last_rx=120.0)
        )
        assert client.last_rx == 120.0
    finally:
        peers.close()


# ------------------------------------------------------------------ the relay on the running reactor


def _relay_config(tmp: Any, lo: int, offload: str) -> Any:
    from mcs_edge import config as c

    return c.loads(
        f'[edge]\nstate_dir = "{tmp / "state"}"\n[listen]\nhttps = "127.0.0.1:0"\nbackend_sip = "127.0.0.1:0"\n'
        f'[media]\nports = [{lo}, {lo + 99}]\nbind = "127.0.0.1"\noffload = "{offload}"\n'
        '[[tenants]]\nid = "rossi"\ndomains = ["rossi.example.com"]\nbackend_sip = "udp:127.0.0.1:5999"\n'
        'certificate = "self-signed"\n',
        str(tmp),
    )


def _sip(start: str, call_id: str, port: int, tag: str) -> Any:
    from mcs_edge.core.sip.message import parse

    body = f"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\na=rtcp-mux\r\n"
    head = (
        f"{start}\r\nVia: SIP/2.0/WSS x.invalid;branch=z9hG4bK1\r\nMax-Forwards: 70\r\n"
        f"From: <sip:a@rossi.example.com>;tag=1\r\nTo: <sip:200@rossi.example.com>{tag}\r\nCall-ID: {call_id}\r\n"
        f"CSeq: 1 INVITE\r\nContent-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return parse(head.encode() + body.encode())


class _Pair:
    tenant_id = "rossi"
    flow_id = 1


def _recv(sock: socket.socket, timeout: float = 3.0) -> tuple[bytes, Any]:
    sock.settimeout(timeout)
    try:
        return sock.recvfrom(4096)
    finally:
        sock.setblocking(False)


def _talk(src: socket.socket, dst: socket.socket, to: Any, seqs: range, ssrc: int) -> list[bytes]:
    got = []
    for seq in seqs:
        src.sendto(rtp_packet(seq, ssrc), to)
        got.append(_recv(dst)[0])
    return got


@pytest.mark.parametrize("offload", ["auto", "off"])
def test_relay_forwards_in_c_and_follows_a_relatched_peer(tmp_path: Any, offload: str) -> Any:
    """Through MediaRelay on the running reactor: after the first packets the legs are held by C
    rules (asyncio reactor, extension built, ``auto``); when the PBX re-latches to a new port
    (after 2 s of silence), the client's packets follow it; the counters read through ``stats()``
    are those of every packet; ``off`` (and the default reactor) relay the same through Python."""
    import uuid

    import pytest_twisted
    from twisted.internet import reactor, task, threads

    from mcs_edge.core.media.sdp import SessionDescription
    from mcs_edge.tx.media.relay import MediaRelay
    from mcs_edge.tx.timers import Timers

    @pytest_twisted.inlineCallbacks
    def run() -> Any:
        lo = random.randrange(20000, 32000, 2)
        timers = Timers(reactor)
        relay = MediaRelay(
            _relay_config(tmp_path, lo, offload), reactor, timers, tenant_media=lambda tid: "bridge"
        )
        native = hasattr(reactor, "_asyncioEventloop")
        assert relay.offload == (native and ff is not None and offload == "auto")
        client, pbx, pbx2 = _udp(), _udp(), _udp()
        call_id = uuid.uuid4().hex
        try:
            invite = _sip("INVITE sip:200@rossi.example.com SIP/2.0", call_id, client.getsockname()[1], "")
            assert relay.on_message(_Pair(), invite, True, timers.now()) is None
            to_client = (
                "127.0.0.1",
                SessionDescription.parse(invite.body).media[0].port,
            )  # the PBX sends here
            ok = _sip("SIP/2.0 200 OK", call_id, pbx.getsockname()[1], ";tag=2")
            assert relay.on_message(_Pair(), ok, False, timers.now()) is None
            to_pbx = ("127.0.0.1", SessionDescription.parse(ok.body).media[0].port)  # the client sends here
            yield task.deferLater(reactor, 0.05, lambda: None)

            def first() -> None:
                assert _talk(client, pbx, to_pbx, range(1, 21), 0x11) == [
                    rtp_packet(s, 0x11) for s in range(1, 21)
                ]
                assert _talk(pbx, client, to_client, range(1, 21), 0x22) == [
                    rtp_packet(s, 0x22) for s in range(1, 21)
                ]

            yield threads.deferToThread(first)
            if relay.offload:
                assert len(relay.held) == 2 and relay.tally.value >= 36
            yield task.deferLater(reactor, 2.2, lambda: None)  # the PBX's source is silent: it may re-latch

            def second() -> None:
                assert _talk(pbx2, client, to_client, range(21, 26), 0x22) == [
                    rtp_packet(s, 0x22) for s in range(21, 26)
                ]
                assert _talk(client, pbx2, to_pbx, range(21, 41), 0x11) == [
                    rtp_packet(s, 0x11) for s in range(21, 41)
                ]
                with pytest.raises(OSError):
                    _recv(pbx, 0.2)  # nothing went to the old address

            yield threads.deferToThread(second)
            legs = relay.anchor.sessions[call_id].stats()["legs"]
            assert [(leg["rx_packets"], leg["tx_packets"]) for leg in legs] == [(40, 25), (25, 40)]
            relay.on_end(call_id, "BYE")
            assert relay.ports == {} and relay.held == {}
        finally:
            for s in (client, pbx, pbx2):
                s.close()
            relay.stop()
            timers.cancel_all()

    return run()


def test_relay_open_close_loop_returns_every_fd_and_rule(tmp_path: Any) -> Any:
    """100 calls set up, carrying RTP (held by rules where offload applies) and ended: no fd, port,
    rule or reader left (an fd left registered with the loop would also break the next bind)."""
    import uuid

    import pytest_twisted
    from twisted.internet import reactor, task, threads

    from mcs_edge.core.media.sdp import SessionDescription
    from mcs_edge.tx.media.relay import MediaRelay
    from mcs_edge.tx.timers import Timers

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    @pytest_twisted.inlineCallbacks
    def run() -> Any:
        lo = random.randrange(20000, 32000, 2)
        timers = Timers(reactor)
        relay = MediaRelay(
            _relay_config(tmp_path, lo, "auto"), reactor, timers, tenant_media=lambda tid: "bridge"
        )
        client, pbx = _udp(), _udp()
        try:
            yield task.deferLater(reactor, 0.05, lambda: None)
            before = fds()
            for round_ in range(100):
                call_id = uuid.uuid4().hex
                invite = _sip(
                    "INVITE sip:200@rossi.example.com SIP/2.0", call_id, client.getsockname()[1], ""
                )
                relay.on_message(_Pair(), invite, True, timers.now())
                ok = _sip("SIP/2.0 200 OK", call_id, pbx.getsockname()[1], ";tag=2")
                relay.on_message(_Pair(), ok, False, timers.now())
                to_pbx = ("127.0.0.1", SessionDescription.parse(ok.body).media[0].port)
                yield threads.deferToThread(_talk, client, pbx, to_pbx, range(1, 4), 0x33)
                if relay.offload and round_ == 0:
                    assert len(relay.held) == 1
                relay.on_end(call_id, "BYE")
                assert relay.ports == {} and relay.held == {}
            yield task.deferLater(reactor, 0.05, lambda: None)
            assert fds() == before
        finally:
            client.close()
            pbx.close()
            relay.stop()
            timers.cancel_all()

    return run()


def _rtp_from(sock: socket.socket, timeout: float = 3.0) -> bytes:
    """The next RTP datagram on ``sock`` (STUN responses to the checks are skipped)."""
    while True:
        data = _recv(sock, timeout)[0]
        if data[0] >> 6 == 2:
            return data


def _talk_rtp(src: socket.socket, dst: socket.socket, to: Any, seqs: range, ssrc: int) -> list[bytes]:
    got = []
    for seq in seqs:
        src.sendto(rtp_packet(seq, ssrc), to)
        got.append(_rtp_from(dst))
    return got


def _ice_sip(start: str, call_id: str, addr: Any, tag: str, peer: WebRtcPeer, also: Any) -> Any:
    from mcs_edge.core.sip.message import parse

    body = (
        f"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {addr[1]} RTP/AVP 0\r\na=rtcp-mux\r\na=ice-ufrag:{peer.ufrag}\r\na=ice-pwd:{peer.pwd}\r\n"
        f"a=candidate:1 1 UDP 2113929471 127.0.0.1 {addr[1]} typ host\r\n"
        f"a=candidate:2 1 UDP 2113929470 127.0.0.1 {also[1]} typ host\r\n"
    )
    head = (
        f"{start}\r\nVia: SIP/2.0/TLS x.invalid;branch=z9hG4bK1\r\nMax-Forwards: 70\r\n"
        f"From: <sip:a@rossi.example.com>;tag=1\r\nTo: <sip:200@rossi.example.com>{tag}\r\nCall-ID: {call_id}\r\n"
        f"CSeq: 1 INVITE\r\nContent-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return parse(head.encode() + body.encode())


@pytest.mark.parametrize("offload", ["auto", "off"])
def test_relay_holds_an_ice_leg_and_a_consent_timer_moves_then_stops_forwarding(
    tmp_path: Any, offload: str
) -> Any:
    """Through MediaRelay on the running reactor, a mobile app's plain RTP call with ICE-lite on
    the client leg: after the checks both directions are held by C rules (asyncio reactor); the
    nominated address stops refreshing consent while another candidate keeps it: at the expiry the
    session timer moves the client leg to the other address, and both rules follow (the PBX's
    packets go there, the old address is no longer heard); when that consent runs out too, the
    call ends at once: no rule, no port, nothing forwarded."""
    import uuid

    import pytest_twisted
    from twisted.internet import reactor, task, threads

    from mcs_edge.tx.media.relay import MediaRelay
    from mcs_edge.tx.timers import Timers

    @pytest_twisted.inlineCallbacks
    def run() -> Any:
        lo = random.randrange(20000, 32000, 2)
        timers = Timers(reactor)
        relay = MediaRelay(
            _relay_config(tmp_path, lo, offload),
            reactor,
            timers,
            tenant_media=lambda tid: "bridge",
            client_transport=lambda _flow: "tls",
        )
        client, client2, pbx = _udp(), _udp(), _udp()
        app = WebRtcPeer(client.getsockname())
        call_id = uuid.uuid4().hex
        try:
            invite = _ice_sip(
                "INVITE sip:200@rossi.example.com SIP/2.0",
                call_id,
                client.getsockname(),
                "",
                app,
                client2.getsockname(),
            )
            assert relay.on_message(_Pair(), invite, True, timers.now()) is None
            to_client = ("127.0.0.1", SessionDescription.parse(invite.body).media[0].port)
            ok = _sip("SIP/2.0 200 OK", call_id, pbx.getsockname()[1], ";tag=2")
            assert relay.on_message(_Pair(), ok, False, timers.now()) is None
            answer = SessionDescription.parse(ok.body)
            app.accept(answer)
            to_pbx = ("127.0.0.1", answer.media[0].port)  # the app sends here
            session = relay.anchor.sessions[call_id]
            leg = session.mline_legs[CLIENT][0]
            assert leg is not None and leg.ice is not None
            leg.ice.consent_timeout = 1.0  # the test's consent period (30 s in production)
            yield task.deferLater(reactor, 0.05, lambda: None)

            def first() -> None:
                client2.sendto(app.check(), to_pbx)  # nominated first: the app's second choice
                _recv(client2)
                client.sendto(app.check(), to_pbx)  # nominated last: selected
                assert _talk_rtp(client, pbx, to_pbx, range(1, 21), 0x11) == [
                    rtp_packet(s, 0x11) for s in range(1, 21)
                ]
                assert _talk_rtp(pbx, client, to_client, range(1, 21), 0x22) == [
                    rtp_packet(s, 0x22) for s in range(1, 21)
                ]

            yield threads.deferToThread(first)
            if relay.offload:
                assert len(relay.held) == 2 and relay.tally.value >= 36
            for _ in range(3):  # only the second candidate keeps consent (to about 1.8 s from now)
                client2.sendto(app.check(use_candidate=False), to_pbx)
                yield task.deferLater(reactor, 0.4, lambda: None)
            for _ in range(100):  # the session timer at the first's expiry (no datagram after it)
                if leg.remote == client2.getsockname():
                    break
                yield task.deferLater(reactor, 0.01, lambda: None)
            assert leg.remote == client2.getsockname() and session.ended is None

            def second() -> None:
                assert _talk_rtp(pbx, client2, to_client, range(21, 31), 0x22) == [
                    rtp_packet(s, 0x22) for s in range(21, 31)
                ]
                client.sendto(rtp_packet(21, 0x11), to_pbx)  # the old address: no consent any more
                assert _talk_rtp(client2, pbx, to_pbx, range(22, 32), 0x11) == [
                    rtp_packet(s, 0x11) for s in range(22, 32)
                ]

            yield threads.deferToThread(second)
            if relay.offload:
                assert len(relay.held) == 2
            assert leg.counters.dropped.get("no-consent") == 1
            for _ in range(300):  # no check any more: the call ends
                if session.ended is not None:
                    break
                yield task.deferLater(reactor, 0.01, lambda: None)
            assert session.ended == "consent lost"
            assert call_id not in relay.anchor.sessions and relay.ports == {} and relay.held == {}

            def third() -> None:
                pbx.sendto(rtp_packet(40, 0x22), to_client)
                with pytest.raises(OSError):
                    _rtp_from(client2, 0.3)

            yield threads.deferToThread(third)
        finally:
            for s in (client, client2, pbx):
                s.close()
            relay.stop()
            timers.cancel_all()

    return run()


def _sdes_sip(start: str, call_id: str, port: int, tag: str, cseq: int, key: bytes | None) -> Any:
    """An INVITE or its 200 with SDP: RTP/SAVP with an SDES ``key``, or plain RTP/AVP."""
    from mcs_edge.core.sip.message import parse

    proto, crypto = "RTP/AVP", ""
    if key is not None:
        proto = "RTP/SAVP"
        crypto = f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{base64.b64encode(key).decode()}\r\n"
    body = (
        f"v=0\r\no=- 1 {cseq} IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {port} {proto} 0\r\na=rtcp-mux\r\n{crypto}"
    )
    head = (
        f"{start}\r\nVia: SIP/2.0/TLS x.invalid;branch=z9hG4bK{cseq}\r\nMax-Forwards: 70\r\n"
        f"From: <sip:a@rossi.example.com>;tag=1\r\nTo: <sip:200@rossi.example.com>{tag}\r\nCall-ID: {call_id}\r\n"
        f"CSeq: {cseq} INVITE\r\nContent-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return parse(head.encode() + body.encode())


@pytest.mark.parametrize("offload", ["auto", "off"])
def test_relay_forwards_sdes_srtp_in_c_and_follows_a_new_key(tmp_path: Any, offload: str) -> Any:
    """Through MediaRelay on the running reactor, an app's SDES-SRTP call bridged to a plain RTP
    PBX: after the first packets both legs are held by rules that unprotect / protect in C (the app
    gets SRTP it can decrypt with the edge's key, the PBX plain RTP); a re-INVITE with a new key
    moves both rules to the new libsrtp sessions (the old key's packets are refused and counted,
    the new key's forwarded); the counters read through ``stats()`` are those of every packet."""
    import uuid

    import pytest_twisted
    from twisted.internet import reactor, task, threads

    from mcs_edge.tx.media.relay import MediaRelay
    from mcs_edge.tx.timers import Timers

    @pytest_twisted.inlineCallbacks
    def run() -> Any:
        lo = random.randrange(20000, 32000, 2)
        timers = Timers(reactor)
        relay = MediaRelay(
            _relay_config(tmp_path, lo, offload),
            reactor,
            timers,
            tenant_media=lambda tid: "bridge",
            client_transport=lambda _flow: "tls",
        )
        client, pbx = _udp(), _udp()
        call_id = uuid.uuid4().hex
        key1, key2 = bytes(range(30)), bytes(range(50, 80))
        try:
            port = client.getsockname()[1]
            invite = _sdes_sip("INVITE sip:200@rossi.example.com SIP/2.0", call_id, port, "", 1, key1)
            assert relay.on_message(_Pair(), invite, True, timers.now()) is None
            to_client = ("127.0.0.1", SessionDescription.parse(invite.body).media[0].port)
            ok = _sdes_sip("SIP/2.0 200 OK", call_id, pbx.getsockname()[1], ";tag=2", 1, None)
            assert relay.on_message(_Pair(), ok, False, timers.now()) is None
            answer = SessionDescription.parse(ok.body)
            to_pbx = ("127.0.0.1", answer.media[0].port)
            (crypto,) = answer.media[0].cryptos
            app = SrtpContext(AES_CM_128_HMAC_SHA1_80, key1, crypto.key)
            yield task.deferLater(reactor, 0.05, lambda: None)

            def first() -> None:
                for seq in range(1, 21):
                    client.sendto(app.protect_rtp(rtp_packet(seq, 0x11)), to_pbx)
                    assert _recv(pbx)[0] == rtp_packet(seq, 0x11)
                for seq in range(1, 21):
                    pbx.sendto(rtp_packet(seq, 0x22), to_client)
                    assert app.unprotect_rtp(_recv(client)[0]) == rtp_packet(seq, 0x22)

            yield threads.deferToThread(first)
            if relay.offload:
                assert len(relay.held) == 2 and relay.tally.value >= 36
            reinvite = _sdes_sip("INVITE sip:200@rossi.example.com SIP/2.0", call_id, port, ";tag=2", 2, key2)
            assert relay.on_message(_Pair(), reinvite, True, timers.now()) is None
            ok2 = _sdes_sip("SIP/2.0 200 OK", call_id, pbx.getsockname()[1], ";tag=2", 2, None)
            assert relay.on_message(_Pair(), ok2, False, timers.now()) is None
            (crypto2,) = SessionDescription.parse(ok2.body).media[0].cryptos
            app2 = SrtpContext(AES_CM_128_HMAC_SHA1_80, key2, crypto2.key)

            def second() -> None:
                for seq in range(21, 26):  # the old key: refused (counted as srtp)
                    client.sendto(app.protect_rtp(rtp_packet(seq, 0x11)), to_pbx)
                for seq in range(26, 46):
                    client.sendto(app2.protect_rtp(rtp_packet(seq, 0x11)), to_pbx)
                    assert _recv(pbx)[0] == rtp_packet(seq, 0x11)
                for seq in range(21, 41):
                    pbx.sendto(rtp_packet(seq, 0x22), to_client)
                    assert app2.unprotect_rtp(_recv(client)[0]) == rtp_packet(seq, 0x22)

            yield threads.deferToThread(second)
            if relay.offload:
                assert len(relay.held) == 2
            legs = relay.anchor.sessions[call_id].stats()["legs"]
            assert [(leg["rx_packets"], leg["tx_packets"]) for leg in legs] == [(40, 40), (40, 40)]
            assert legs[0]["dropped"] == {"srtp": 5}
            relay.on_end(call_id, "BYE")
            assert relay.ports == {} and relay.held == {}
        finally:
            for s in (client, pbx):
                s.close()
            relay.stop()
            timers.cancel_all()

    return run()


def test_a_closed_connection_touches_only_its_own_calls_rules(tmp_path: Any) -> Any:
    """A client connection closing ends its calls and leaves the rules of every other call as they
    were (not revoked and reinstalled: that walked every rule of the worker per closed connection,
    milliseconds with hundreds of calls); the other call keeps forwarding in C."""
    import uuid

    import pytest_twisted
    from twisted.internet import reactor, task, threads

    from mcs_edge.core.media.sdp import SessionDescription
    from mcs_edge.tx.media.relay import MediaRelay
    from mcs_edge.tx.timers import Timers

    class _Flow2(_Pair):
        flow_id = 2

    @pytest_twisted.inlineCallbacks
    def run() -> Any:
        lo = random.randrange(20000, 32000, 2)
        timers = Timers(reactor)
        relay = MediaRelay(
            _relay_config(tmp_path, lo, "auto"), reactor, timers, tenant_media=lambda tid: "bridge"
        )
        native = hasattr(reactor, "_asyncioEventloop")
        assert relay.offload == (native and ff is not None)  # else: the Python path, checked below
        socks = [_udp() for _ in range(4)]
        try:
            calls = []
            for pair, (client, pbx) in ((_Pair(), socks[:2]), (_Flow2(), socks[2:])):
                call_id = uuid.uuid4().hex
                invite = _sip(
                    "INVITE sip:200@rossi.example.com SIP/2.0", call_id, client.getsockname()[1], ""
                )
                assert relay.on_message(pair, invite, True, timers.now()) is None
                ok = _sip("SIP/2.0 200 OK", call_id, pbx.getsockname()[1], ";tag=2")
                assert relay.on_message(pair, ok, False, timers.now()) is None
                to_pbx = ("127.0.0.1", SessionDescription.parse(ok.body).media[0].port)
                calls.append((call_id, client, pbx, to_pbx))
            yield task.deferLater(reactor, 0.05, lambda: None)
            for _, client, pbx, to_pbx in calls:
                yield threads.deferToThread(_talk, client, pbx, to_pbx, range(1, 11), 0x44)
            assert len(relay.held) == (2 if relay.offload else 0)
            kept_id = calls[1][0]
            kept = {
                leg: leg.offload for leg in relay.anchor.sessions[kept_id].legs if leg.offload is not None
            }
            assert len(kept) == (1 if relay.offload else 0)
            relay.on_flow_closed(1, timers.now())
            assert calls[0][0] not in relay.anchor.sessions  # flow 1's call ended
            assert kept_id in relay.anchor.sessions
            assert {leg: leg.offload for leg in kept} == kept  # flow 2's rule: the same, untouched
            assert len(relay.held) == (1 if relay.offload else 0)
            _, client, pbx, to_pbx = calls[1]
            before = relay.tally.value if relay.offload else 0
            got = yield threads.deferToThread(_talk, client, pbx, to_pbx, range(11, 21), 0x44)
            assert got == [rtp_packet(s, 0x44) for s in range(11, 21)]
            if relay.offload:
                assert relay.tally.value - before == 10  # every one forwarded by the kept rule
        finally:
            for s in socks:
                s.close()
            relay.stop()
            timers.cancel_all()

    return run()
