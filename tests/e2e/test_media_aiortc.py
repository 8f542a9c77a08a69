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
new aiortc connection, hence new ufrag/pwd and a new DTLS certificate, offered in a re-INVITE).
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamTrack, VideoStreamTrack
from av import AudioFrame, VideoFrame
from helpers.media_pbx import AsyncPbx, RtpEcho, plain_answer, start_echo
from helpers.webrtc_peer import WebRtcPeer, rtp_packet
from helpers.wsclient import WSClient, header, headers, status
from twisted.internet import threads

from mcs_edge import config as c
from mcs_edge.core.media.sdp import SessionDescription
from mcs_edge.tx.service import EdgeService

pytestmark = pytest.mark.e2e

SEND_SECONDS = 3.0
MIN_RATIO = 0.90


# ------------------------------------------------------------------------------------ loop thread


class LoopThread:
    """An asyncio loop in a daemon thread; ``run`` blocks the calling (non-reactor) thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="aiortc-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 120.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.run(cancel_all(), 10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


# ------------------------------------------------------------------------------------ media tracks


class ToneTrack(AudioStreamTrack):
    """A 440 Hz tone in 20 ms frames (8 kHz mono), counting frames handed to the sender."""

    def __init__(self) -> None:
        super().__init__()
        self.frames = 0
        samples = 160
        tone = bytearray()
        for i in range(samples):
            value = int(8000 * math.sin(2 * math.pi * 440 * i / 8000))
            tone += value.to_bytes(2, "little", signed=True)
        self._tone = bytes(tone)

    async def recv(self) -> AudioFrame:
        frame = await super().recv()
        frame.planes[0].update(self._tone)
        self.frames += 1
        return frame


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


class Counter:
    """Consumes a remote track and counts decoded frames."""

    def __init__(self) -> None:
        self.frames: dict[str, int] = {"audio": 0, "video": 0}
        self.tasks: list[asyncio.Task[None]] = []

    def consume(self, track: MediaStreamTrack) -> None:
        self.tasks.append(asyncio.ensure_future(self._run(track)))

    async def _run(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                await track.recv()
                self.frames[track.kind] += 1
        except Exception:
            return


def new_pc(counter: Counter) -> RTCPeerConnection:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.on("track", counter.consume)
    return pc


async def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def dtls_state(pc: RTCPeerConnection) -> str:
    senders = pc.getSenders()
    transport = senders[0].transport if senders else None
    return transport.state if transport is not None else "none"


async def connected(pc: RTCPeerConnection, timeout: float = 15.0) -> None:
    """ICE completed and DTLS connected on the aiortc side."""
    await wait_for(
        lambda: pc.iceConnectionState in ("completed", "connected") and dtls_state(pc) == "connected",
        timeout,
        f"ICE+DTLS (ice={pc.iceConnectionState}, dtls={dtls_state(pc)})",
    )


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


async def audio_window(track: ToneTrack, counter: Counter, seconds: float = SEND_SECONDS) -> tuple[int, int]:
    """Frames (sent, echoed back and decoded) over the same window of ``seconds``.

    In steady state the frames in flight at the start and at the end of the window balance out, so
    the two counts agree to a frame or two when nothing is lost.
    """
    sent0, got0 = track.frames, counter.frames["audio"]
    await asyncio.sleep(seconds)
    return track.frames - sent0, counter.frames["audio"] - got0


# ------------------------------------------------------------------------------- SIP over WSS (UA)


class WsUa:
    """A blocking SIP UA over the WSS test client: one call (INVITE, re-INVITEs, ACK, BYE)."""

    def __init__(self, ws: WSClient, domain: str) -> None:
        self.ws = ws
        self.domain = domain
        self.call_id = uuid.uuid4().hex
        self.tag = uuid.uuid4().hex[:8]
        self.cseq = 0
        self.to = f"<sip:200@{domain}>"
        self.target = f"sip:200@{domain}"
        self.route = ""

    def _common(self, method: str, cseq: int) -> str:
        route = f"Route: {self.route}\r\n" if self.route else ""
        return (
            f"{method} {self.target} SIP/2.0\r\n"
            f"Via: SIP/2.0/WSS x.invalid;branch=z9hG4bK{uuid.uuid4().hex[:12]}\r\nMax-Forwards: 70\r\n{route}"
            f"From: <sip:alice@{self.domain}>;tag={self.tag}\r\nTo: {self.to}\r\nCall-ID: {self.call_id}\r\n"
            f"CSeq: {cseq} {method}\r\n"
        )

    def invite(self, sdp: str) -> tuple[int, str]:
        self.cseq += 1
        initial = not self.route
        self.ws.send(
            self._common("INVITE", self.cseq)
            + f"Contact: <sip:alice@x.invalid;transport=ws;ob>\r\nContent-Type: application/sdp\r\n"
            f"Content-Length: {len(sdp.encode())}\r\n\r\n{sdp}"
        )
        while True:
            msg = self.ws.recv_sip(timeout=15)
            code = status(msg)
            if code >= 200:
                break
        if initial and 200 <= code < 300:
            self.to = header(msg, "To") or self.to
            routes = [r.strip() for line in headers(msg, "Record-Route") for r in line.split(",")]
            self.route = ", ".join(reversed(routes))
            self.target = (header(msg, "Contact") or "").strip("<>").split(">")[0]
        body = msg.split("\r\n\r\n", 1)[1] if "\r\n\r\n" in msg else ""
        return code, body

    def ack(self) -> None:
        self.ws.send(self._common("ACK", self.cseq) + "Content-Length: 0\r\n\r\n")

    def bye(self) -> int:
        self.cseq += 1
        self.ws.send(self._common("BYE", self.cseq) + "Content-Length: 0\r\n\r\n")
        return status(self.ws.recv_sip(timeout=10, skip_provisional=True))


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


async def offer_and_answer(ua: WsUa, pc: RTCPeerConnection) -> str:
    """Send pc's offer in an INVITE (initial or re-INVITE), apply the answer, ACK; returns the answer."""
    await pc.setLocalDescription(await pc.createOffer())
    code, body = await in_thread(ua.invite, pc.localDescription.sdp)
    assert code == 200, f"INVITE got {code}"
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
    await in_thread(ua.ack)
    return body


# -------------------------------------------------------------------------------------------- edge


class MediaEdge:
    """The edge with three tenants (one per media mode), each with its own asyncio test PBX."""

    MODES = {"rossi": "bridge", "verdi": "bridge-sdes", "neri": "passthrough"}

    def __init__(self, tmp: Path, runner: LoopThread) -> None:
        self.runner = runner
        self.echoes: dict[str, tuple[RtpEcho, int]] = {}
        self.closers: list[Callable[[], None]] = []
        self.peers: dict[str, Any] = {}
        self.pbx = {tid: AsyncPbx(self._answer_fn(tid)) for tid in self.MODES}
        for pbx in self.pbx.values():
            runner.run(pbx.start())
        lo = random.randrange(20000, 32000, 2)
        self.media_ports = (lo, lo + 199)
        tenants = ""
        for tid, mode in self.MODES.items():
            tenants += (
                f'\n[[tenants]]\nid = "{tid}"\ndomains = ["{tid}.example.com"]\n'
                f'backend_sip = "udp:127.0.0.1:{self.pbx[tid].port}"\ncertificate = "self-signed"\n'
                f'media = "{mode}"\nallowed_origins = ["https://{tid}.example.com"]\n'
                "[tenants.shaping]\nrate = 2000000\nburst = 4000000\n"
            )
        text = f"""
[edge]
state_dir = "{tmp / "state"}"
public_address = "127.0.0.1"
backend_address = "127.0.0.1"
[listen]
https = "127.0.0.1:0"
sip_tls = "off"
backend_sip = "127.0.0.1:0"
admin = "127.0.0.1:0"
[media]
ports = [{lo}, {lo + 199}]
bind = "127.0.0.1"
{tenants}"""
        from twisted.internet import reactor

        self.service = EdgeService(c.loads(text), reactor)
        self.service.privilegedStartService()
        self.service.startService()
        self.https = self.service.ports["https"].getHost().port
        self.ca = str(tmp / "state" / "dev-ca" / "ca.pem")

    def _answer_fn(self, tid: str) -> Callable[[str], Awaitable[str]]:
        async def answer(offer: str) -> str:
            mode = self.MODES[tid]
            if mode == "passthrough":
                return await self._answer_with_peer(tid, offer)
            if tid not in self.echoes:
                echo, port, close = await start_echo()
                self.echoes[tid] = (echo, port)
                self.closers.append(close)
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
        self.peers[tid] = (pc, counter, audio, video)
        return str(pc.localDescription.sdp)

    def client(self, tid: str) -> WSClient:
        return WSClient(self.https, f"{tid}.example.com", cafile=self.ca, origin=f"https://{tid}.example.com")

    def stop(self) -> Any:
        async def close_all() -> None:
            for pc, *_ in self.peers.values():
                await pc.close()
            for close in self.closers:
                close()
            for pbx in self.pbx.values():
                pbx.close()

        self.runner.run(close_all())
        return self.service.stopService()


@pytest.fixture(scope="module")
def runner() -> Any:
    r = LoopThread()
    yield r
    r.stop()


@pytest.fixture
def edge(tmp_path: Path, runner: LoopThread) -> Any:
    e = MediaEdge(tmp_path, runner)
    yield e
    pytest_twisted.blockon(e.stop())


def relay_state(edge: MediaEdge) -> dict[str, Any]:
    media = edge.service.media
    return {
        "ports_in_use": media.anchor.ports_in_use,
        "sockets": len(media.ports),
        "sessions": len(media.anchor.sessions),
    }


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
        if reinvites:
            transceiver = pc.getTransceivers()[0]
            transceiver.direction = "sendonly"
            result["hold_answer"] = await offer_and_answer(ua, pc)
            await asyncio.sleep(0.5)
            transceiver.direction = "sendrecv"
            result["unhold_answer"] = await offer_and_answer(ua, pc)
            result["after_unhold"] = await audio_window(tone, counter)
            # ICE restart: a new connection (new ufrag/pwd, new certificate) offered in a re-INVITE
            counter2 = Counter()
            pc2 = new_pc(counter2)
            pcs.append(pc2)
            tone2 = ToneTrack()
            pc2.addTrack(tone2)
            result["restart_answer"] = await offer_and_answer(ua, pc2)
            await connected(pc2)
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
    sent, got = window
    assert sent >= 100, f"{what}: only {sent} frames sent in {SEND_SECONDS} s"
    assert got >= MIN_RATIO * sent, f"{what}: {got} of {sent} frames came back"


@pytest_twisted.inlineCallbacks
def test_bridge_webrtc_to_plain_rtp_with_hold_and_ice_restart(edge: MediaEdge) -> Any:
    """aiortc -> edge -> RTP/AVP echo PBX: ICE+DTLS complete, >= 90% of frames come back; hold/unhold and an ICE restart keep media flowing; BYE frees every port."""
    result = yield threads.deferToThread(edge.runner.run, bridge_call(edge, "rossi", reinvites=True), 120)
    report(result)
    assert result["ice"] in ("completed", "connected") and result["dtls"] == "connected"
    assert "a=ice-lite" in result["answer"] and "a=setup:passive" in result["answer"]
    check_window(result["first"], "bridge")
    assert "a=recvonly" in result["hold_answer"]
    check_window(result["after_unhold"], "after unhold")
    check_window(result["after_restart"], "after ICE restart")
    assert _ice_ufrag(result["restart_answer"]) != _ice_ufrag(result["unhold_answer"])
    assert result["bye"] == 200
    call = next(iter(edge.pbx["rossi"].calls.values()))
    assert call.invites == 4 and call.bye
    assert all(" RTP/AVP " in offer for offer in call.offers)
    echo = edge.echoes["rossi"][0]
    assert len(echo.sources) == 1  # the PBX always saw the same relay port
    assert relay_state(edge) == {"ports_in_use": 0, "sockets": 0, "sessions": 0}


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
    assert relay_state(edge) == {"ports_in_use": 0, "sessions": 0, "sockets": 0}


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
    assert relay_state(edge) == {"ports_in_use": 0, "sessions": 0, "sockets": 0}
