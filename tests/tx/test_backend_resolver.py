"""PBX names through twisted.names (tx/sip/resolver.py) against a real DNS server on loopback."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from helpers.dnszone import DnsServer
from twisted.names import dns

from mcs_edge import config as c
from mcs_edge.config import Backend
from mcs_edge.tx.sip.resolver import BackendResolver, make_resolver
from mcs_edge.tx.timers import Timers


class _Now:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _resolver(server: DnsServer, now: _Now, timeout: tuple[int, ...] = (5, 5)) -> BackendResolver:
    from twisted.internet import reactor

    host, port = server.address
    cfg = c.loads(f'[dns]\nservers = ["{host}:{port}"]\nmin_ttl = 2\nmax_ttl = 60\nnegative_ttl = 7\n')
    # generous query timeouts: the machine may be loaded; the outage test passes short ones
    return BackendResolver(cfg, Timers(reactor, now), make_resolver(cfg, reactor, timeout), rand=lambda: 0.0)


@pytest_twisted.inlineCallbacks
def test_srv_in_priority_order_then_a_records_with_the_smallest_ttl_clamped() -> Any:
    """RFC 3263 s.4.2: _sips._tcp for tls:, lower priority first, each target's A; TTL min(SRV, A) >= min_ttl."""
    from twisted.internet import reactor

    server = DnsServer(reactor)
    zone = server.zone
    zone.set(
        "_sips._tcp.pbx.example.test",
        [
            dns.Record_SRV(20, 0, 5071, "backup.example.test", ttl=300),
            dns.Record_SRV(10, 0, 5061, "main.example.test", ttl=300),
        ],
    )
    zone.set("main.example.test", [dns.Record_A("192.0.2.1", ttl=1)])
    zone.set("backup.example.test", [dns.Record_A("192.0.2.2", ttl=30)])
    now = _Now()
    resolver = _resolver(server, now)
    try:
        located = yield resolver.locate(Backend("tls", "pbx.example.test", 0))
        assert located.addresses == (("192.0.2.1", 5061), ("192.0.2.2", 5071))
        assert located.expires == now.t + 2  # A ttl 1 clamped up to min_ttl
        # fresh: served from the cache even after the zone changed
        zone.set("main.example.test", [dns.Record_A("192.0.2.9", ttl=1)])
        again = yield resolver.locate(Backend("tls", "pbx.example.test", 0))
        assert again is located
        now.t += 3
        moved = yield resolver.locate(Backend("tls", "pbx.example.test", 0))
        assert moved.addresses[0] == ("192.0.2.9", 5061)
    finally:
        server.stop()


@pytest_twisted.inlineCallbacks
def test_no_srv_falls_back_to_the_name_on_the_default_port_and_a_port_skips_srv() -> Any:
    """No SRV records: A of the name on 5060; with a port in backend_sip no SRV is asked for."""
    from twisted.internet import reactor

    server = DnsServer(reactor)
    server.zone.set("plain.example.test", [dns.Record_A("192.0.2.5", ttl=10)])
    server.zone.set("_sip._tcp.plain.example.test", [dns.Record_SRV(0, 0, 9999, "other.example.test")])
    resolver = _resolver(server, _Now())
    try:
        located = yield resolver.locate(Backend("udp", "plain.example.test", 0))
        assert located.addresses == (("192.0.2.5", 5060),)
        with_port = yield resolver.locate(Backend("tcp", "plain.example.test", 5080))
        assert with_port.addresses == (("192.0.2.5", 5080),)
    finally:
        server.stop()


@pytest_twisted.inlineCallbacks
def test_unresolvable_name_is_remembered_for_negative_ttl() -> Any:
    """NXDOMAIN: no addresses, an error text, retried only after dns.negative_ttl; resolve() fails."""
    from twisted.internet import reactor
    from twisted.internet.error import DNSLookupError

    server = DnsServer(reactor)
    now = _Now()
    resolver = _resolver(server, now)
    try:
        located = yield resolver.locate(Backend("udp", "nowhere.example.test", 5060))
        assert located.addresses == () and located.error and located.expires == now.t + 7
        failed = []
        yield resolver.resolve(None, Backend("udp", "nowhere.example.test", 5060)).addErrback(  # type: ignore[arg-type]
            lambda f: failed.append(f.check(DNSLookupError))
        )
        assert failed == [DNSLookupError]
    finally:
        server.stop()


@pytest_twisted.inlineCallbacks
def test_dns_outage_keeps_the_last_good_answer() -> Any:
    """RFC 8767: when the DNS servers stop answering, the last addresses are served stale (and retried
    after negative_ttl) instead of refusing every call; a name that stops existing is dropped."""
    from twisted.internet import reactor

    server = DnsServer(reactor)
    server.zone.set("pbx.example.test", [dns.Record_A("192.0.2.5", ttl=1)])
    now = _Now()
    resolver = _resolver(server, now, timeout=(1, 1))
    backend = Backend("udp", "pbx.example.test", 5060)
    try:
        first = yield resolver.locate(backend)
        assert first.addresses == (("192.0.2.5", 5060),)
        server.zone.remove("pbx.example.test")  # NXDOMAIN: definitive
        now.t += 3
        gone = yield resolver.locate(backend)
        assert gone.addresses == () and not gone.transient
        server.zone.set("pbx.example.test", [dns.Record_A("192.0.2.6", ttl=1)])
        now.t += 8
        back = yield resolver.locate(backend)
        assert back.addresses == (("192.0.2.6", 5060),)
    finally:
        server.stop()
    now.t += 3  # the server is gone now: queries time out
    stale = yield resolver.locate(backend)
    assert stale.addresses == (("192.0.2.6", 5060),) and stale.error
    assert stale.expires == now.t + 7 and resolver.counters[("stale", "pbx.example.test")] == 1
