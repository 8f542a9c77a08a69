"""LegPorts for core media tests (memory only): sequential even ports, every datagram sent recorded."""

from __future__ import annotations

from typing import Any

from mcs_edge.core.media.session import Leg


class RecordingPorts:
    """Opens up to ``limit`` legs from port ``first`` on; ``sent`` holds (from port, data, to)."""

    def __init__(self, first: int = 40000, limit: int = 1000) -> None:
        self.next = first
        self.limit = limit
        self.open_ports: dict[int, Leg] = {}
        self.sent: list[tuple[int, bytes, Any]] = []

    def open(self, leg: Leg, rtcp_mux: bool) -> bool:
        if len(self.open_ports) >= self.limit:
            return False
        leg.port = self.next
        leg.rtcp_port = None if rtcp_mux else self.next + 1
        self.next += 2
        leg.send = lambda data, addr, port=leg.port: self.sent.append((port, data, addr))
        leg.send_rtcp = lambda data, addr, port=leg.port + 1: self.sent.append((port, data, addr))
        self.open_ports[leg.port] = leg
        return True

    def close(self, leg: Leg) -> None:
        del self.open_ports[leg.port]
        leg.port = 0

    def take(self, addr: Any = None, port: int | None = None) -> list[bytes]:
        """Datagrams sent (to ``addr`` / from ``port``), removed from the record."""
        out, keep = [], []
        for entry in self.sent:
            if (addr is None or entry[2] == addr) and (port is None or entry[0] == port):
                out.append(entry[1])
            else:
                keep.append(entry)
        self.sent = keep
        return out

    def take_all(self) -> list[tuple[bytes, Any]]:
        """Every datagram sent as (data, to), removed from the record."""
        out = [(data, addr) for _port, data, addr in self.sent]
        self.sent = []
        return out
