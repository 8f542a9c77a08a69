"""``twistd --reactor=uvloop``: Twisted's asyncio reactor running on a uvloop event loop.

The media relay opens its sockets with the loop's native datagram endpoints, so on this reactor
the per-packet path runs in uvloop's C code up to one Python call per packet (see DESIGN.md,
Performance budget). Falls back to the standard asyncio loop when uvloop is not installed.
"""

from __future__ import annotations

import asyncio

__all__ = ["install", "new_loop"]


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def install() -> None:
    """Install the asyncio reactor over a fresh uvloop loop (made current for aiortc and friends)."""
    from twisted.internet import asyncioreactor

    loop = new_loop()
    asyncio.set_event_loop(loop)
    asyncioreactor.install(loop)
