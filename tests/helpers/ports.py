"""Ports for peers and the relay: what the system hands out now (for programs that cannot be told port 0)."""

from __future__ import annotations

import random
import socket


def _free(kind: socket.SocketKind, host: str) -> int:
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind)
    try:
        s.bind((host, 0))
        return int(s.getsockname()[1])
    finally:
        s.close()


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port free on ``host`` just now."""
    return _free(socket.SOCK_DGRAM, host)


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` just now."""
    return _free(socket.SOCK_STREAM, host)


def media_range(size: int = 200, lo: int = 20000, hi: int = 32000) -> tuple[int, int]:
    """``[first, last]`` of ``size`` relay ports from a random even base in ``[lo, hi)``."""
    base = random.randrange(lo, hi, 2)
    return base, base + size - 1
