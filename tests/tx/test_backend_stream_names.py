"""A tcp: PBX given by name (tx/sip/backend.py + tx/sip/resolver.py): the link follows the name when it moves."""

from __future__ import annotations

import time
from typing import Any

import pytest_twisted
from helpers.dnszone import DnsServer
from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.names import dns

from mcs_edge import config as c
from mcs_edge.tx.sip.backend import BackendConnections
from mcs_edge.tx.sip.resolver import BackendResolver, make_resolver
from mcs_edge.tx.timers import Timers


class _Sink(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.factory.received.append(data)  # type: ignore[attr-defined]


class _SinkFactory(Factory):
    protocol = _Sink

    def __init__(self) -> None:
        self.received: list[bytes] = []


@defer.inlineCallbacks
def _until(predicate: Any, timeout: float = 10.0) -> Any:
    from twisted.internet import reactor

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        d: defer.Deferred[None] = defer.Deferred()
        reactor.callLater(0.05, d.callback, None)
        yield d


@pytest_twisted.inlineCallbacks
def test_tcp_link_reconnects_to_the_new_address_of_its_pbx_name() -> Any:
    """The link connects where the A record points; after the record moves (and its TTL passed) the open
    connection to the old address is closed and the next messages go to the new address."""
    from twisted.internet import reactor

    dns_server = DnsServer(reactor)
    old, new = _SinkFactory(), _SinkFactory()
    port_old = reactor.listenTCP(0, old, interface="127.0.0.1")
    port = port_old.getHost().port
    port_new = reactor.listenTCP(port, new, interface="127.0.0.2")
    dns_server.zone.set("pbx.example.test", [dns.Record_A("127.0.0.1", ttl=1)])
    host, dport = dns_server.address
    cfg = c.loads(
        f'[dns]\nservers = ["{host}:{dport}"]\nmin_ttl = 0\n'
        f'[[tenants]]\nid = "r"\ndomains = ["r.example.com"]\nbackend_sip = "tcp:pbx.example.test:{port}"\n'
    )
    timers = Timers(reactor)
    resolver = BackendResolver(cfg, timers, make_resolver(cfg, reactor, (5, 5)))
    dropped: list[str] = []
    links = BackendConnections(
        cfg,
        reactor,
        timers,
        deliver=lambda *a: None,
        on_dropped=lambda t, r: dropped.append(r),
        resolve=resolver.resolve,
    )
    resolver.on_change = lambda: links.addresses_changed(resolver.addresses)
    tenant = cfg.tenants[0]
    try:
        links.send(tenant, "tcp", ("pbx.example.test", port), b"first\r\n\r\n")
        yield _until(lambda: b"".join(old.received).startswith(b"first"))
        dns_server.zone.set("pbx.example.test", [dns.Record_A("127.0.0.2", ttl=1)])
        yield _until(lambda: not resolver.cache[resolver.key(tenant.backend_sip)].fresh(timers.now()), 5)
        resolver.refresh([tenant.backend_sip])  # what the service's one-second loop does
        yield _until(
            lambda: [(s.state, s.peer) for s in links.status()] == [("open", ("127.0.0.2", port))], 10
        )
        links.send(tenant, "tcp", ("pbx.example.test", port), b"second\r\n\r\n")
        yield _until(lambda: b"second" in b"".join(new.received))
        assert b"second" not in b"".join(old.received)
        # the move closed the old connection (its pending requests would fail), but no message was lost
        assert all(r.startswith("connection to the PBX lost") for r in dropped)
        assert links.counters.get(("backend_dropped", "r", ""), 0) == 0
    finally:
        links.stop()
        timers.cancel_all()
        yield port_old.stopListening()
        yield port_new.stopListening()
        dns_server.stop()
