"""Regenerate aiortc_offer.sdp: an aiortc RTCPeerConnection offer with audio and video.

Run with ``.venv/bin/python tests/data/sdp/make_aiortc_offer.py``; needs network interfaces only
for host candidates (the fixture is committed, this script documents where it came from).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiortc import RTCPeerConnection


async def main() -> None:
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="sendrecv")
    pc.addTransceiver("video", direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    out = Path(__file__).with_name("aiortc_offer.sdp")
    out.write_bytes(sdp.encode())
    print(sdp)


if __name__ == "__main__":
    asyncio.run(main())
