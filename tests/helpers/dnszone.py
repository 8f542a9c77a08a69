"""A real DNS server for tests: twisted.names serving one mutable zone on 127.0.0.1 (UDP and TCP).

``zone.set(name, [dns.Record_A(...), ...])`` replaces a name's records while the server runs, so a
test can move a PBX and watch the edge follow after the TTL.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import CannotListenError
from twisted.names import authority, dns, server


class MemoryZone(authority.FileAuthority):
    """An authoritative zone held in memory (FileAuthority without a file)."""

    def __init__(self, origin: str) -> None:
        self._origin = origin.encode()
        super().__init__(origin)

    def loadFile(self, filename: Any) -> None:
        soa = dns.Record_SOA(
            mname=b"ns." + self._origin, rname=b"admin." + self._origin, serial=1, minimum=1, expire=1, ttl=1
        )
        self.soa = (self._origin, soa)
        self.records = {self._origin: [soa]}

    def set(self, name: str, records: list[Any]) -> None:
        self.records[name.lower().encode()] = list(records)

    def remove(self, name: str) -> None:
        self.records.pop(name.lower().encode(), None)


class DnsServer:
    """``MemoryZone`` served on an ephemeral port; ``address`` is (ip, port) for ``dns.servers``."""

    def __init__(self, reactor: Any, origin: str = "example.test") -> None:
        self.zone = MemoryZone(origin)
        factory = server.DNSServerFactory(authorities=[self.zone])
        factory.noisy = False
        # UDP and TCP on one port number (a truncated answer is asked again over TCP): the UDP port is
        # ephemeral, and the same number on TCP may be held by another process; then try another
        for attempt in range(50):
            self.udp = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
            port = self.udp.getHost().port
            try:
                self.tcp = reactor.listenTCP(port, factory, interface="127.0.0.1")
            except CannotListenError:
                self.udp.stopListening()
                if attempt == 49:
                    raise
                continue
            break
        self.address = ("127.0.0.1", port)

    def stop(self) -> None:
        self.udp.stopListening()
        self.tcp.stopListening()
