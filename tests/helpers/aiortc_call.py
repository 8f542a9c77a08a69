"""aiortc plays the browser: an asyncio loop thread, a tone track, frame counters and a SIP-over-WSS UA.

Shared by the media tests (``tests/e2e/test_media_aiortc.py``, ``tests/e2e/test_operations_media.py``).
The aiortc peers, the WebSocket softphone and the test PBX (:mod:`helpers.media_pbx`) run in their
own asyncio loop in a helper thread (:class:`LoopThread`), so the tests do not depend on which
reactor the edge uses, nor on whether the edge runs in the test process or in a ``twistd`` child.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamTrack
from av import AudioFrame
from helpers.wsclient import WSClient, header, headers, status

SEND_SECONDS = 3.0


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


def tone_pc() -> tuple[RTCPeerConnection, ToneTrack, Counter]:
    """A peer connection sending a tone, counting what it decodes; (pc, tone, counter)."""
    counter = Counter()
    pc = new_pc(counter)
    tone = ToneTrack()
    pc.addTrack(tone)
    return pc, tone, counter


async def audio_call(ua: WsUa) -> tuple[RTCPeerConnection, ToneTrack, Counter]:
    """A :func:`tone_pc` offered in ``ua``'s INVITE (or re-INVITE), ICE and DTLS connected;
    (pc, tone, counter). The peer connection is closed if that fails."""
    pc, tone, counter = tone_pc()
    try:
        await offer_and_answer(ua, pc)
        await connected(pc)
    except BaseException:
        await pc.close()
        raise
    return pc, tone, counter


async def ice_restart(
    ua: WsUa, pcs: list[RTCPeerConnection]
) -> tuple[RTCPeerConnection, ToneTrack, Counter, str]:
    """An ICE restart as a browser makes one: a new :func:`tone_pc` (new ufrag/pwd, certificate, SSRC,
    sequence numbers; appended to ``pcs``, which the caller closes) offered in a re-INVITE and connected;
    (pc, tone, counter, the edge's answer)."""
    pc, tone, counter = tone_pc()
    pcs.append(pc)
    answer = await offer_and_answer(ua, pc)
    await connected(pc)
    return pc, tone, counter, answer


def check_window(window: tuple[int, int], what: str, min_sent: int, min_ratio: float = 0.9) -> None:
    """A measuring window (frames sent, frames echoed back): at least ``min_sent`` sent and at least
    ``min_ratio`` of them back."""
    sent, got = window
    assert sent >= min_sent, f"{what}: only {sent} frames sent"
    assert got >= min_ratio * sent, f"{what}: {got} of {sent} frames came back"
