"""A PBX given by DNS name: a twisted.names server started here serves SRV and A records that move mid-test.

The edge must locate the PBX through ``_sip._udp`` SRV (no port in ``backend_sip``), send to the
address found, accept requests from that address only, follow the records after their TTL, and
answer 503 at once for a tenant whose PBX name does not resolve.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest_twisted
from helpers.dnszone import DnsServer
from helpers.edge import InProcessEdge, edge_toml, tenant_toml, until
from helpers.pbx import Pbx
from helpers.phone import respond_ok
from helpers.wsclient import WSClient, header, status
from twisted.internet import threads
from twisted.names import dns


def _point(zone: Any, pbx: Pbx, host: str, ip: str) -> None:
    zone.set("_sip._udp.pbx.example.test", [dns.Record_SRV(0, 10, pbx.port, f"{host}.example.test", ttl=1)])
    zone.set(f"{host}.example.test", [dns.Record_A(ip, ttl=1)])


class DnsEdge(InProcessEdge):
    ORIGIN = True

    def __init__(self, tmp: Path) -> None:
        from twisted.internet import reactor

        super().__init__(tmp)
        self.dns = DnsServer(reactor)
        self.pbx_a = Pbx("127.0.0.1")
        self.pbx_b = Pbx("127.0.0.2")
        self.closers += [self.pbx_a.close, self.pbx_b.close, self.dns.stop]
        _point(self.dns.zone, self.pbx_a, "host-a", "127.0.0.1")
        host, port = self.dns.address
        tenants = tenant_toml("rossi", backend="udp:pbx.example.test", origin=True) + tenant_toml(
            "bianchi", backend="udp:nowhere.example.test:5060", origin=True
        )
        dns_table = f'[dns]\nservers = ["{host}:{port}"]\nmin_ttl = 0.5\nnegative_ttl = 1\n'
        self.start(edge_toml(self.state, tenants, sections=dns_table))

    def addresses(self) -> tuple[tuple[str, int], ...]:
        backend = self.service.config.tenant("rossi").backend_sip  # type: ignore[union-attr]
        return self.service.resolver.addresses(backend)


def _register(ws: WSClient, tenant: str = "rossi") -> str:
    ws.send(
        f"REGISTER sip:{tenant}.example.com SIP/2.0\r\nVia: SIP/2.0/WSS x.invalid;branch=z9hG4bK{uuid.uuid4().hex[:12]}\r\n"
        f"Max-Forwards: 70\r\nTo: <sip:alice@{tenant}.example.com>\r\nFrom: <sip:alice@{tenant}.example.com>;tag=r1\r\n"
        f"Call-ID: {uuid.uuid4().hex}\r\nCSeq: 1 REGISTER\r\nContact: <sip:alice@x.invalid;transport=ws>;expires=600\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    return ws.recv_sip(timeout=10, skip_provisional=True)


def _call(ws: WSClient, tenant: str = "rossi") -> tuple[str, str]:
    """INVITE; returns (Call-ID, final response text)."""
    call_id = uuid.uuid4().hex
    sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n"
    ws.send(
        f"INVITE sip:200@{tenant}.example.com SIP/2.0\r\nVia: SIP/2.0/WSS x.invalid;branch=z9hG4bK{uuid.uuid4().hex[:12]}\r\n"
        f"Max-Forwards: 70\r\nTo: <sip:200@{tenant}.example.com>\r\nFrom: <sip:alice@{tenant}.example.com>;tag=c1\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@x.invalid;transport=ws;ob>\r\n"
        f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}"
    )
    while True:
        msg = ws.recv_sip(timeout=10)
        if status(msg) >= 200:
            return call_id, msg


def _receive_bye(ws: WSClient) -> str:
    bye = ws.recv_sip(timeout=10)
    assert bye.startswith("BYE "), bye
    respond_ok(ws, bye)
    return bye


@pytest_twisted.inlineCallbacks
def test_pbx_located_by_srv_followed_after_ttl_and_unresolvable_name_gets_503(tmp_path: Path) -> Any:
    """SRV + A locate the PBX; its BYE is accepted from the resolved address; moving the records moves the
    traffic (both ways) after the TTL; a name that does not resolve answers INVITE 503 at once."""
    edge = DnsEdge(tmp_path)
    try:
        yield until(lambda: edge.addresses() == (("127.0.0.1", edge.pbx_a.port),))
        ws = yield threads.deferToThread(edge.client)
        ok = yield threads.deferToThread(_register, ws)
        assert status(ok) == 200 and edge.pbx_a.methods() == ["REGISTER"]
        call_id, final = yield threads.deferToThread(_call, ws)
        assert status(final) == 200
        edge.pbx_a.hangup(call_id)  # from 127.0.0.1: matched against the name's address
        yield threads.deferToThread(_receive_bye, ws)

        # the PBX moves: SRV now names host-b (127.0.0.2) on pbx_b's port
        _point(edge.dns.zone, edge.pbx_b, "host-b", "127.0.0.2")
        edge.dns.zone.remove("host-a.example.test")
        yield until(lambda: edge.addresses() == (("127.0.0.2", edge.pbx_b.port),))
        ok = yield threads.deferToThread(_register, ws)
        assert status(ok) == 200 and edge.pbx_b.methods() == ["REGISTER"]
        call_id, final = yield threads.deferToThread(_call, ws)
        assert status(final) == 200 and "INVITE" in edge.pbx_b.methods()
        edge.pbx_b.hangup(call_id)  # from 127.0.0.2: accepted now
        yield threads.deferToThread(_receive_bye, ws)
        assert edge.pbx_a.methods() == ["REGISTER", "INVITE"]  # nothing more went to the old place
        ws.close()

        # a tenant whose PBX name does not resolve: 503 at once, and a log line (SIP411)
        other = yield threads.deferToThread(edge.client, "bianchi")
        started = time.monotonic()
        _call_id, final = yield threads.deferToThread(_call, other, "bianchi")
        assert status(final) == 503 and header(final, "Retry-After"), final
        assert time.monotonic() - started < 3
        assert edge.service.resolver.counters.get(("failed", "nowhere.example.test"), 0) >= 1
        other.close()
    finally:
        yield edge.stop()
