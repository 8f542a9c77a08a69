"""Two aiortc peers, relay-only through a TURN server, exchange data-channel messages and audio.

Run as a subprocess (aiortc needs its own asyncio loop, independent of the test's reactor):

    python aiortc_turn_call.py '<iceServers JSON>' [--cafile CA] [--timeout 30]

Prints one JSON line: ``{"ok": bool, "pings": n, "audio_frames": n, "local": [...], "remote": [...],
"error": "..."}`` where ``local``/``remote`` are the candidate types each peer ended up using.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any


async def _call(ice_servers: list[dict[str, Any]], timeout: float) -> dict[str, Any]:
    from aiortc import (
        RTCConfiguration,
        RTCIceServer,
        RTCPeerConnection,
    )
    from aiortc.mediastreams import AudioStreamTrack
    from aiortc.rtcconfiguration import RTCIceTransportPolicy

    servers = [
        RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
        for s in ice_servers
    ]
    config = RTCConfiguration(iceServers=servers, iceTransportPolicy=RTCIceTransportPolicy.RELAY)
    caller = RTCPeerConnection(config)
    callee = RTCPeerConnection(config)
    result: dict[str, Any] = {"ok": False, "pings": 0, "audio_frames": 0}
    pongs: asyncio.Queue[str] = asyncio.Queue()
    audio_done = asyncio.Event()

    @callee.on("datachannel")
    def on_datachannel(channel: Any) -> None:
        @channel.on("message")
        def on_message(message: str) -> None:
            channel.send("pong:" + message)

    pullers: list[asyncio.Task[None]] = []

    @callee.on("track")
    def on_track(track: Any) -> None:
        async def pull() -> None:
            while result["audio_frames"] < 25:
                await track.recv()
                result["audio_frames"] += 1
            audio_done.set()

        pullers.append(asyncio.ensure_future(pull()))

    try:
        caller.addTrack(AudioStreamTrack())
        channel = caller.createDataChannel("check")
        opened = asyncio.Event()
        channel.on("open", opened.set)
        channel.on("message", lambda m: pongs.put_nowait(m))
        await caller.setLocalDescription(await caller.createOffer())
        offer = caller.localDescription
        result["offer_candidates"] = [ln for ln in offer.sdp.splitlines() if ln.startswith("a=candidate")]
        await callee.setRemoteDescription(offer)
        await callee.setLocalDescription(await callee.createAnswer())
        await caller.setRemoteDescription(callee.localDescription)
        await asyncio.wait_for(opened.wait(), timeout)
        for i in range(5):
            channel.send(f"ping{i}")
            reply = await asyncio.wait_for(pongs.get(), timeout)
            if reply == f"pong:ping{i}":
                result["pings"] += 1
        await asyncio.wait_for(audio_done.wait(), timeout)
        for name, pc in (("caller", caller), ("callee", callee)):
            pair = pc.sctp.transport.transport._connection._nominated  # aioice: nominated pairs
            result[name] = sorted({p.local_candidate.type for p in pair.values()})
        result["ok"] = result["pings"] == 5 and result["audio_frames"] >= 25
    except Exception as exc:  # reported to the test, which fails with it
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        for task in pullers:
            task.cancel()
        await caller.close()
        await callee.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("ice_servers")
    parser.add_argument("--cafile")
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    if args.cafile:
        os.environ["SSL_CERT_FILE"] = args.cafile
    result = asyncio.run(_call(json.loads(args.ice_servers), args.timeout))
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
