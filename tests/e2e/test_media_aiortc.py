"""Media through the edge with real WebRTC peers: aiortc plays the browser (SIP over WSS), a test PBX echoes.

The edge runs in-process on the test's reactor (default epoll or ``--reactor=asyncio``; ``make test``
runs both). The aiortc peers, the WebSocket softphone and the test PBX run in their own asyncio loop
in a helper thread (:class:`LoopThread`), so the tests do not depend on which reactor the edge uses:
on the asyncio reactor the relay uses the loop's native datagram endpoints, on epoll Twisted's
``listenUDP``; both paths are exercised.

* ``bridge``: aiortc (DTLS-SRTP, ICE) -> edge -> PBX answering plain RTP/AVP and echoing RTP.
* ``bridge-sdes``: the same, the PBX speaks RTP/SAVP with SDES keys (decrypts and re-encrypts with
  pylibsrtp).
* ``passthrough``: two aiortc peers, audio and video, the edge relays opaque packets.

Each test asserts ICE and DTLS completed on the aiortc side and that >= 90% of what was sent came
back (audio: decoded frames; video: RTP packets, plus decoded frames > 0), and that every relay
port is released after BYE. The bridge test also holds/unholds with re-INVITEs and restarts ICE (a
new aiortc connection, hence new ufrag/pwd and a new DTLS certificate, offered in a re-INVITE, which
the edge answers itself: only the client's transport changed, so the PBX never sees it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import VideoStreamTrack
from av import VideoFrame
from helpers.aiortc_call import (
    Counter,
    LoopThread,
    ToneTrack,
    WsUa,
    audio_window,
    connected,
    dtls_state,
    ice_restart,
    in_thread,
    new_pc,
    offer_and_answer,
)
from helpers.aiortc_call import check_window as audio_check_window
from helpers.edge import InProcessEdge, StopAfter, edge_toml, media_range, tenant_toml
from helpers.media_pbx import AsyncPbx, RtpEcho, plain_answer, start_echo
from helpers.webrtc_peer import WebRtcPeer, rtp_packet
from twisted.internet import threads

from mcs_edge.core.media.sdp import SessionDescription

pytestmark = pytest.mark.e2e

SEND_SECONDS = 3.0
MIN_RATIO = 0.90


# ------------------------------------------------------------------------------------ loop thread


class SmallVideoTrack(VideoStreamTrack):
    """160x120 frames at 30 fps (cheap to encode), counting frames."""

    def __init__(self) -> None:
        super().__init__()
        self.frames = 0

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = VideoFrame(width=160, height=120)
        for plane in frame.planes:
            plane.update(bytes([(self.frames * 7) & 0xFF]) * plane.buffer_size)
        frame.pts = pts
        frame.time_base = time_base
        self.frames += 1
        return frame


async def rtp_stats(pc: RTCPeerConnection, kind: str) -> tuple[int, int]:
    """(packets sent, packets received) of ``kind`` on ``pc``."""
    sent = received = 0
    for transceiver in pc.getTransceivers():
        if transceiver.kind != kind:
            continue
        for stats in (await transceiver.sender.getStats()).values():
            if stats.type == "outbound-rtp":
                sent += stats.packetsSent
        for stats in (await transceiver.receiver.getStats()).values():
            if stats.type == "inbound-rtp":
                received += stats.packetsReceived
    return sent, received


class MediaEdge(InProcessEdge):
    """The edge with three tenants (one per media mode), each with its own asyncio test PBX."""

    MODES = {"rossi": "bridge", "verdi": "bridge-sdes", "neri": "passthrough"}
    ORIGIN = True

    def __init__(self, tmp: Path, runner: LoopThread) -> None:
        super().__init__(tmp, runner=runner)
        self.echoes: dict[str, tuple[RtpEcho, int]] = {}
        self.peers: dict[str, Any] = {}
        self.on_peer: Callable[[RTCPeerConnection], None] | None = None  # called on each PBX-side peer
        self.loop_closers.append(self._close_peers)
        self.pbx = {tid: AsyncPbx(self._answer_fn(tid)) for tid in self.MODES}
        for pbx in self.pbx.values():
            runner.run(pbx.start())
            self.loop_closers.append(pbx.close)
        self.media_ports = media_range(200)
        tenants = "".join(
            tenant_toml(tid, self.pbx[tid].port, media=mode, origin=True, rate=2000000)
            for tid, mode in self.MODES.items()
        )
        self.start(edge_toml(self.state, tenants, public=True, media=self.media_ports))

    def _answer_fn(self, tid: str) -> Callable[[str], Awaitable[str]]:
        async def answer(offer: str) -> str:
            mode = self.MODES[tid]
            if mode == "passthrough":
                return await self._answer_with_peer(tid, offer)
            if tid not in self.echoes:
                echo, port, close = await start_echo()
                self.echoes[tid] = (echo, port)
                self.loop_closers.append(close)
            echo, port = self.echoes[tid]
            if mode == "bridge-sdes":
                assert " RTP/SAVP " in offer, offer
                echo.key_from(offer)
                return plain_answer(port, offer, crypto=echo.crypto_line())
            assert " RTP/AVP " in offer and "a=crypto" not in offer, offer
            return plain_answer(port, offer)

        return answer

    async def _answer_with_peer(self, tid: str, offer: str) -> str:
        counter = Counter()
        pc = new_pc(counter)
        audio, video = ToneTrack(), SmallVideoTrack()
        pc.addTrack(audio)
        pc.addTrack(video)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        if self.on_peer is not None:
            self.on_peer(pc)
        self.peers[tid] = (pc, counter, audio, video)
        return str(pc.localDescription.sdp)

    async def _close_peers(self) -> None:
        for pc, *_ in self.peers.values():
            await pc.close()


@pytest.fixture
def edge(tmp_path: Path, runner: LoopThread, stop_after: StopAfter) -> Any:
    return stop_after(MediaEdge(tmp_path, runner))


# ----------------------------------------------------------------------------------------- bridge


class Sprayer(asyncio.DatagramProtocol):
    """A stranger sending junk to relay ports every 20 ms: garbage, truncated RTP, wrong-ufrag STUN, stray DTLS."""

    def __init__(self, targets: list[tuple[str, int]]) -> None:
        self.targets = targets
        self.transport: Any = None
        self.sent = 0
        peer = WebRtcPeer(("127.0.0.1", 9))
        peer.edge_ufrag, peer.edge_pwd = "wrongufrag", "wrong-password-0123456789"
        self.junk = [
            b"\xff" * 40,
            rtp_packet(1, 0x6666)[:9],
            rtp_packet(2, 0x6666),
            peer.check(),
            bytes([22, 0xFE, 0xFD]) + bytes(40),
        ]

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    async def run(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for target in self.targets:
                for junk in self.junk:
                    self.transport.sendto(junk, target)
                    self.sent += 1
            await asyncio.sleep(0.02)


async def spray(targets: list[tuple[str, int]], seconds: float) -> int:
    loop = asyncio.get_running_loop()
    transport, sprayer = await loop.create_datagram_endpoint(
        lambda: Sprayer(targets), local_addr=("127.0.0.1", 0)
    )
    try:
        await sprayer.run(seconds)
    finally:
        transport.close()
    return sprayer.sent


def session_stats(edge: MediaEdge) -> list[dict[str, Any]]:
    """Per-leg counters of the live sessions (read from the aiortc thread; plain reads)."""
    return [s.stats() for s in list(edge.service.media.anchor.sessions.values())]


async def bridge_call(edge: MediaEdge, tid: str, *, reinvites: bool, hostile: bool = False) -> dict[str, Any]:
    ws = await in_thread(edge.client, tid)
    ua = WsUa(ws, f"{tid}.example.com")
    counter = Counter()
    pc = new_pc(counter)
    tone = ToneTrack()
    pc.addTrack(tone)
    result: dict[str, Any] = {}
    pcs = [pc]
    try:
        answer = await offer_and_answer(ua, pc)
        result["answer"] = answer
        await connected(pc)
        result["ice"] = pc.iceConnectionState
        result["dtls"] = dtls_state(pc)
        if hostile:
            client_port = SessionDescription.parse(answer).media[0].port
            pbx_offer = next(iter(edge.pbx[tid].calls.values())).offers[-1]
            pbx_port = SessionDescription.parse(pbx_offer).media[0].port
            targets = [("127.0.0.1", client_port), ("127.0.0.1", pbx_port)]
            sprayed, window = await asyncio.gather(spray(targets, SEND_SECONDS), audio_window(tone, counter))
            result["sprayed"] = sprayed
            result["first"] = window
            result["stats"] = session_stats(edge)
        else:
            result["first"] = await audio_window(tone, counter)
        media = edge.service.media
        # datagrams the C forwarding rules handled (asyncio reactor, media.offload = "auto"): SRTP legs
        result["offloaded"] = media.tally.value if media.offload else None
        if reinvites:
            transceiver = pc.getTransceivers()[0]
            transceiver.direction = "sendonly"
            result["hold_answer"] = await offer_and_answer(ua, pc)
            await asyncio.sleep(0.5)
            transceiver.direction = "sendrecv"
            result["unhold_answer"] = await offer_and_answer(ua, pc)
            result["after_unhold"] = await audio_window(tone, counter)
            # ICE restart: a new connection (new ufrag/pwd, new certificate) offered in a re-INVITE
            _pc2, tone2, counter2, result["restart_answer"] = await ice_restart(ua, pcs)
            await pc.close()
            result["after_restart"] = await audio_window(tone2, counter2)
        result["bye"] = await in_thread(ua.bye)
    finally:
        for p in pcs:
            await p.close()
        ws.close()
    return result


def report(result: dict[str, Any]) -> None:
    """Print the measured figures (shown by pytest when a test fails, or with -s)."""
    print({k: v for k, v in result.items() if "answer" not in k})


def check_window(window: tuple[int, int], what: str) -> None:
    audio_check_window(window, what, 100, MIN_RATIO)


@pytest_twisted.inlineCallbacks
def test_bridge_webrtc_to_plain_rtp_with_hold_and_ice_restart(edge: MediaEdge) -> Any:
    """aiortc -> edge -> RTP/AVP echo PBX: ICE+DTLS complete, >= 90% of frames come back; hold/unhold and an ICE restart keep media flowing; BYE frees every port."""
    result = yield threads.deferToThread(edge.runner.run, bridge_call(edge, "rossi", reinvites=True), 120)
    report(result)
    assert result["ice"] in ("completed", "connected") and result["dtls"] == "connected"
    assert "a=ice-lite" in result["answer"] and "a=setup:passive" in result["answer"]
    check_window(result["first"], "bridge")
    assert result["offloaded"] is None or result["offloaded"] >= 100  # SRTP unprotect/protect in C
    assert "a=recvonly" in result["hold_answer"]
    check_window(result["after_unhold"], "after unhold")
    check_window(result["after_restart"], "after ICE restart")
    assert _ice_ufrag(result["restart_answer"]) != _ice_ufrag(result["unhold_answer"])
    assert result["bye"] == 200
    call = next(iter(edge.pbx["rossi"].calls.values()))
    assert call.invites == 3 and call.bye  # the ICE restart only moved the client: the edge answered it
    assert all(" RTP/AVP " in offer for offer in call.offers)
    echo = edge.echoes["rossi"][0]
    assert len(echo.sources) == 1  # the PBX always saw the same relay port
    assert edge.relay_state() == {"ports_in_use": 0, "sockets": 0, "sessions": 0}


def _ice_ufrag(sdp: str) -> str:
    return next(line.split(":", 1)[1] for line in sdp.split("\r\n") if line.startswith("a=ice-ufrag:"))


@pytest_twisted.inlineCallbacks
def test_bridge_sdes_webrtc_to_srtp_pbx(edge: MediaEdge) -> Any:
    """aiortc -> edge -> RTP/SAVP (SDES) echo PBX: >= 90% of frames come back while a stranger sprays junk at both relay ports (dropped, counted)."""
    result = yield threads.deferToThread(
        edge.runner.run, bridge_call(edge, "verdi", reinvites=False, hostile=True), 90
    )
    report(result)
    assert result["ice"] in ("completed", "connected") and result["dtls"] == "connected"
    check_window(result["first"], "bridge-sdes (under a junk spray)")
    assert result["offloaded"] is None or result["offloaded"] >= 100  # SRTP both ways in C
    (stats,) = result["stats"]
    client, pbx = stats["legs"]
    sprayed_each = result["sprayed"] // 10  # per junk kind and port
    assert sprayed_each >= 100
    assert client["dropped"]["garbage"] >= sprayed_each  # first byte outside RFC 7983
    assert client["dropped"]["no-consent"] >= 2 * sprayed_each  # RTP and DTLS from an unchecked address
    assert client["dropped"]["stun-refused"] >= sprayed_each  # wrong ufrag: 401, no consent
    assert pbx["dropped"]["foreign-source"] >= 2 * sprayed_each  # truncated and whole RTP from a stranger
    assert client["rx_packets"] >= 140 and pbx["rx_packets"] >= 140
    echo = edge.echoes["verdi"][0]
    assert echo.echoed >= 100 and echo.bad == 0  # every packet decrypted with the edge's SDES key
    assert result["bye"] == 200
    assert edge.relay_state() == {"ports_in_use": 0, "sessions": 0, "sockets": 0}


# ------------------------------------------------------------------------------------ passthrough


async def passthrough_call(edge: MediaEdge) -> dict[str, Any]:
    tid = "neri"
    ws = await in_thread(edge.client, tid)
    ua = WsUa(ws, f"{tid}.example.com")
    counter = Counter()
    pc = new_pc(counter)
    audio, video = ToneTrack(), SmallVideoTrack()
    pc.addTrack(audio)
    pc.addTrack(video)
    result: dict[str, Any] = {}
    try:
        result["answer"] = await offer_and_answer(ua, pc)
        pc_b, counter_b, audio_b, _video_b = edge.peers[tid]
        await connected(pc)
        await connected(pc_b)
        await asyncio.sleep(1.0)  # let video settle (first keyframe)
        a0, b0 = audio.frames, audio_b.frames
        ga0, gb0 = counter.frames["audio"], counter_b.frames["audio"]
        va0, vb0 = await rtp_stats(pc, "video"), await rtp_stats(pc_b, "video")
        await asyncio.sleep(SEND_SECONDS)
        a1, b1 = audio.frames, audio_b.frames
        ga1, gb1 = counter.frames["audio"], counter_b.frames["audio"]
        va1, vb1 = await rtp_stats(pc, "video"), await rtp_stats(pc_b, "video")
        result["audio_a_to_b"] = (a1 - a0, gb1 - gb0)
        result["audio_b_to_a"] = (b1 - b0, ga1 - ga0)
        result["video_a_to_b"] = (va1[0] - va0[0], vb1[1] - vb0[1])
        result["video_b_to_a"] = (vb1[0] - vb0[0], va1[1] - va0[1])
        result["video_frames"] = (counter.frames["video"], counter_b.frames["video"])
        result["bye"] = await in_thread(ua.bye)
    finally:
        await pc.close()
        ws.close()
    return result


@pytest_twisted.inlineCallbacks
def test_passthrough_between_two_aiortc_peers_audio_and_video(edge: MediaEdge) -> Any:
    """Two aiortc peers through a passthrough tenant: ICE and DTLS run end to end; >= 90% of audio and video gets across both ways."""
    result = yield threads.deferToThread(edge.runner.run, passthrough_call(edge), 120)
    report(result)
    assert "a=ice-lite" not in result["answer"]  # passthrough keeps the peer's own ICE and DTLS
    assert "127.0.0.1" in result["answer"]
    for key in ("audio_a_to_b", "audio_b_to_a"):
        check_window(result[key], key)
    for key in ("video_a_to_b", "video_b_to_a"):
        sent, got = result[key]
        assert sent >= 30 and got >= MIN_RATIO * sent, f"{key}: {got} of {sent} RTP packets"
    assert min(result["video_frames"]) > 0
    assert result["bye"] == 200
    assert edge.relay_state() == {"ports_in_use": 0, "sessions": 0, "sockets": 0}


# ------------------------------------------------------------------------- passthrough injection

MARK = b"INJECTOR-MARK"


def tap_received(pc: RTCPeerConnection, seen: list[bytes]) -> None:
    """Record every datagram the peer's ICE sockets receive (before aiortc parses or drops it)."""
    connection = pc.getTransceivers()[0].sender.transport.transport.iceGatherer._connection
    for proto in connection._protocols:
        original = proto.datagram_received

        def received(data: bytes, addr: Any, original: Any = original) -> None:
            seen.append(bytes(data))
            original(data, addr)

        proto.datagram_received = received


def injected_datagrams() -> list[bytes]:
    """What an attacker sprays at relay ports: RTP, RTCP, DTLS, STUN requests (no or a guessed key), garbage."""
    from mcs_edge.core.stun import message as m

    stun = [
        m.Message(m.METHOD_BINDING, m.CLASS_REQUEST, b"INJECTINJECT", (m.Username("x:y"),)).serialize(
            integrity_key=key, fingerprint=True
        )
        for key in (None, b"guessed")
    ]
    rtp = rtp_packet(1, 0xDEADBEEF, payload=MARK * 10)
    rtcp = b"\x81\xc9\x00\x07" + b"\xde\xad\xbe\xef" + MARK + bytes(11)
    dtls = b"\x16\xfe\xfd" + bytes(8) + len(MARK).to_bytes(2, "big") + MARK
    return [rtp, rtcp, dtls, *stun, b"\x55" + MARK]


async def sprayer(ports: range, stop: asyncio.Event, sent: list[int]) -> None:
    """Send the injected datagrams to every relay port every 100 ms until ``stop``."""
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    datagrams = injected_datagrams()
    try:
        while not stop.is_set():
            for port in ports:
                for data in datagrams:
                    try:
                        sock.sendto(data, ("127.0.0.1", port))
                        sent[0] += 1
                    except BlockingIOError:
                        pass
            await asyncio.sleep(0.1)
    finally:
        sock.close()


async def passthrough_under_injection(edge: MediaEdge) -> dict[str, Any]:
    tid = "neri"
    seen_a: list[bytes] = []
    seen_b: list[bytes] = []
    edge.on_peer = lambda pc: tap_received(pc, seen_b)
    stop = asyncio.Event()
    sent = [0]
    spray = asyncio.ensure_future(sprayer(range(*edge.media_ports), stop, sent))
    ws = await in_thread(edge.client, tid)
    ua = WsUa(ws, f"{tid}.example.com")
    counter = Counter()
    pc = new_pc(counter)
    pc.addTrack(ToneTrack())
    pc.addTrack(SmallVideoTrack())  # the PBX-side peer sends audio and video
    result: dict[str, Any] = {}
    try:
        await pc.setLocalDescription(await pc.createOffer())
        tap_received(pc, seen_a)
        code, body = await in_thread(ua.invite, pc.localDescription.sdp)
        assert code == 200, f"INVITE got {code}: {edge.pbx[tid].errors}"
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
        await in_thread(ua.ack)
        pc_b, counter_b, _audio_b, _video_b = edge.peers[tid]
        await connected(pc)
        await connected(pc_b)
        await asyncio.sleep(1.5)  # media flows while the spray goes on
        result["audio_to_b"] = counter_b.frames["audio"]
        result["bye"] = await in_thread(ua.bye)
    finally:
        stop.set()
        await spray
        await pc.close()
        ws.close()
    result["sprayed"] = sent[0]
    result["received"] = (len(seen_a), len(seen_b))
    result["injected_at_a"] = sum(1 for d in seen_a if MARK in d or b"INJECTINJECT" in d)
    result["injected_at_b"] = sum(1 for d in seen_b if MARK in d or b"INJECTINJECT" in d)
    return result


@pytest_twisted.inlineCallbacks
def test_passthrough_relays_nothing_from_an_injector_to_either_peer(edge: MediaEdge) -> Any:
    """An injector spraying every relay port (RTP, RTCP, DTLS, unauthenticated STUN, garbage) from before the
    INVITE until after media flows: the call connects, and neither aiortc peer ever receives one of its datagrams."""
    result = yield threads.deferToThread(edge.runner.run, passthrough_under_injection(edge), 120)
    report(result)
    assert result["sprayed"] > 1000
    assert result["audio_to_b"] > 0 and result["bye"] == 200
    assert min(result["received"]) > 0  # the taps saw the peers' own traffic
    assert result["injected_at_a"] == 0 and result["injected_at_b"] == 0
    dropped = edge.service.media.anchor.dropped()
    assert dropped.get("unverified-source", 0) > 0 and dropped.get("stun-unverified", 0) > 0
    assert dropped.get("garbage", 0) > 0
