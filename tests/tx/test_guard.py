"""The guard wiring (tx/protect/guard.py) in virtual time: accept caps, tenant caps, request rates, bans, scanners."""

from __future__ import annotations

import itertools
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure

from mcs_edge import config as c
from mcs_edge.core.guard import Decision, RateLimit
from mcs_edge.core.sip.message import Request, Response, parse
from mcs_edge.core.tenants import TenantTable
from mcs_edge.core.tls.client_hello import ClientHello
from mcs_edge.tx.protect.guard import (
    ACCEPT,
    GuardedFactory,
    Protection,
    allow_list_of,
    ban_policy_of,
    source_limits_of,
)
from mcs_edge.tx.sip.router import ClientFlow, SipRouter
from mcs_edge.tx.timers import Timers
from mcs_edge.tx.tls.certificates import CertificateStore

PBX = ("10.1.0.10", 5060)
BASE = """
[listen]
https = "127.0.0.1:8443"
backend_sip = "127.0.0.1:5070"
[guard]
{guard}
[[tenants]]
id = "rossi"
domains = ["rossi.example.com"]
backend_sip = "udp:10.1.0.10:5060"
[tenants.guard]
allow_networks = ["203.0.113.0/24"]
[tenants.limits]
max_connections = {max_connections}
[[tenants]]
id = "bianchi"
domains = ["bianchi.example.com"]
backend_sip = "udp:10.2.0.10:5060"
"""


def _config(guard: str = "", max_connections: int = 2000) -> c.EdgeConfig:
    return c.loads(BASE.format(guard=guard, max_connections=max_connections))


class FakeUDP:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((data, addr))


class Harness:
    """A router with protection on a virtual clock, one flow from ``peer``."""

    def __init__(self, cfg: c.EdgeConfig, peer: str = "192.0.2.7") -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.timers = Timers(self.clock, now=self.clock.seconds)
        self.cfg = cfg
        self.protection = Protection(cfg, self.timers)
        self.router = SipRouter(cfg, TenantTable(cfg.tenants), self.timers)
        self.router.protection = self.protection
        self.udp = FakeUDP()
        self.router.udp = self.udp
        self.to_client: list[bytes] = []
        self.closed: list[tuple[int, str]] = []
        self.flow = self.open(peer)
        self._cseq = itertools.count(1)

    def open(self, peer: str, tenant: int = 0) -> ClientFlow:
        flow = self.router.open_flow(
            self.cfg.tenants[tenant],
            "wss",
            (peer, 40000),
            self.to_client.append,
            lambda code, r: self.closed.append((code, r)),
        )
        assert flow is not None
        return flow

    def register(self, auth: str = "", flow: ClientFlow | None = None) -> None:
        n = next(self._cseq)
        self.router.data_from_client(
            flow or self.flow,
            (
                f"REGISTER sip:rossi.example.com SIP/2.0\r\nVia: SIP/2.0/WSS x.invalid;branch=z9hG4bKr{n}\r\n"
                f"Max-Forwards: 70\r\nFrom: <sip:alice@rossi.example.com>;tag={n}\r\nTo: <sip:alice@rossi.example.com>\r\n"
                f"Call-ID: reg{n}\r\nCSeq: {n} REGISTER\r\nContact: <sip:a@x.invalid;transport=ws>\r\n{auth}"
                "Content-Length: 0\r\n\r\n"
            ).encode(),
        )

    def pbx_answers(self, status: int, extra: str = "") -> None:
        """The PBX answers the last request it got."""
        data, _addr = self.udp.sent[-1]
        req = parse(data)
        assert isinstance(req, Request)
        resp = Response.for_request(req, status, "X", to_tag="pbx")
        for line in filter(None, extra.split("\r\n")):
            name, _, value = line.partition(": ")
            resp.headers.add(name, value)
        self.router.data_from_backend(resp.serialize(), PBX, "udp")


AUTH = 'Authorization: Digest username="alice", realm="rossi.example.com", nonce="n1", uri="sip:rossi.example.com", response="00"\r\n'
CHALLENGE = 'WWW-Authenticate: Digest realm="rossi.example.com", nonce="n2", algorithm=MD5\r\n'
STALE = 'WWW-Authenticate: Digest realm="rossi.example.com", nonce="n3", stale=true\r\n'


def _options(n: int, prefix: bytes = b"") -> bytes:
    return (
        prefix
        + (
            f"OPTIONS sip:rossi.example.com SIP/2.0\r\nVia: SIP/2.0/WSS x.invalid;branch=z9hG4bKo{n}\r\nMax-Forwards: 70\r\n"
            f"From: <sip:a@rossi.example.com>;tag={n}\r\nTo: <sip:rossi.example.com>\r\nCall-ID: o{n}\r\nCSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
    )


class _Echo(Protocol):
    pass


def _guarded(protection: Protection) -> GuardedFactory:
    return GuardedFactory(Factory.forProtocol(_Echo), protection, "https")


def _connect(factory: GuardedFactory, host: str) -> Any:
    proto = factory.buildProtocol(IPv4Address("TCP", host, 50000))
    if proto is not None:
        proto.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", host, 50000)))
    return proto


def _lose(proto: Any) -> None:
    proto.connectionLost(Failure(ConnectionError("gone")))


# -- configuration ------------------------------------------------------------------------------


def test_config_maps_onto_the_core_objects() -> None:
    """[guard] keys become SourceLimits/BanPolicy (0 = off); tenant networks also allow at accept."""
    cfg = _config(
        "max_connections_per_ip = 0\nconnection_rate_per_ip = 0\nrequest_rate_per_ip = 3\n"
        'request_burst_per_ip = 7\nban_failures = 4\nban_window = 30\nban_duration = 90\nallow_networks = ["198.51.100.0/24"]'
    )
    limits = source_limits_of(cfg.guard)
    assert limits.max_connections_per_ip is None and limits.connection_rate_per_ip is None
    assert limits.request_rate_per_ip == RateLimit(3.0, 7.0)
    policy = ban_policy_of(cfg.guard)
    assert (policy.max_failures, policy.window, policy.duration) == (4, 30.0, 90.0)
    allow = allow_list_of(cfg)
    from ipaddress import ip_address

    assert allow.allows(ip_address("198.51.100.9"), "bianchi")
    assert allow.allows(ip_address("203.0.113.9"), "rossi")
    assert not allow.allows(ip_address("203.0.113.9"), "bianchi")
    assert allow.allows(ip_address("203.0.113.9"), ACCEPT)  # before TLS: any tenant's office passes
    defaults = source_limits_of(_config().guard)
    assert defaults.max_connections_per_ip == 64 and defaults.request_rate_per_ip == RateLimit(20.0, 100.0)


# -- accept ---------------------------------------------------------------------------------------


def test_source_over_its_cap_is_refused_at_accept_while_allow_listed_networks_are_not() -> None:
    """The third concurrent connection of a source gets no protocol; offices on allow-lists are exempt."""
    h = Harness(_config('max_connections_per_ip = 2\nallow_networks = ["198.51.100.0/24"]'))
    factory = _guarded(h.protection)
    first = _connect(factory, "192.0.2.1")
    assert first is not None and _connect(factory, "192.0.2.1") is not None
    assert _connect(factory, "192.0.2.1") is None
    assert all(_connect(factory, "198.51.100.5") is not None for _ in range(5))  # global allow-list
    assert all(_connect(factory, "203.0.113.5") is not None for _ in range(5))  # rossi's office
    assert h.protection.guard.refusals == {"per_ip_connections": 1}
    _lose(first)
    assert _connect(factory, "192.0.2.1") is not None
    assert len(factory.protocols) == 12


def test_a_tls_connection_is_not_wrapped_and_releases_its_source_when_lost() -> None:
    """Around the TLS factory the guard adds no protocol on the read path: the admitted connection
    is the TLS protocol itself, whose end releases the source (once), as the wrapper's did."""
    from mcs_edge.tx.tls.stdlib_tls import StdlibTLSFactory, StdlibTLSProtocol

    class _NoChooser:
        def context_for_hello(self, hello: Any) -> str:
            return "unknown_name"

    h = Harness(_config("max_connections_per_ip = 1"))
    factory = GuardedFactory(
        StdlibTLSFactory(_NoChooser(), Factory.forProtocol(_Echo)), h.protection, "https"
    )
    first = _connect(factory, "192.0.2.1")
    assert isinstance(first, StdlibTLSProtocol)
    assert first.transport is not None and not isinstance(first.transport, ProtocolWrapper)
    assert h.protection.guard.connections("192.0.2.1") == 1
    assert _connect(factory, "192.0.2.1") is None  # over the cap
    _lose(first)
    _lose(first)  # a second report changes nothing
    assert h.protection.guard.connections("192.0.2.1") == 0
    second = _connect(factory, "192.0.2.1")
    assert isinstance(second, StdlibTLSProtocol)
    assert h.protection.guard.connections("192.0.2.1") == 1


def test_connection_rate_per_source_recovers_in_virtual_time() -> None:
    """New connections beyond the source's burst are refused until its bucket refills."""
    h = Harness(_config("connection_rate_per_ip = 1\nconnection_burst_per_ip = 2"))
    factory = _guarded(h.protection)
    assert _connect(factory, "192.0.2.1") is not None
    assert _connect(factory, "192.0.2.1") is not None
    assert _connect(factory, "192.0.2.1") is None
    h.clock.advance(0.999)
    assert _connect(factory, "192.0.2.1") is None
    h.clock.advance(0.002)
    assert _connect(factory, "192.0.2.1") is not None
    assert h.protection.guard.refusals == {"per_ip_connection_rate": 2}


def test_idle_sources_are_forgotten_by_the_timer() -> None:
    """Closed sources leave the table once their buckets are full again: state has a deadline."""
    h = Harness(_config())
    factory = _guarded(h.protection)
    protos = [_connect(factory, f"192.0.2.{i}") for i in range(1, 6)]
    assert len(h.protection.guard) == 5
    for p in protos:
        _lose(p)
    assert h.protection.armed >= 1
    h.clock.advance(source_limits_of(h.cfg.guard).idle_ttl + 0.01)
    assert len(h.protection.guard) == 0


# -- tenant cap -----------------------------------------------------------------------------------


def test_tenant_connection_cap_refuses_the_flow_cleanly() -> None:
    """tenants.limits.max_connections: the flow over the cap is refused (None), counted, and freed on close."""
    h = Harness(_config(max_connections=2))
    second = h.open("192.0.2.8")
    refused = h.router.open_flow(
        h.cfg.tenants[0], "wss", ("192.0.2.9", 1), h.to_client.append, lambda *_: None
    )
    assert refused is None
    assert h.router.counters[("flows_refused", "rossi", "tenant_connections")] == 1
    assert h.open("192.0.2.9", tenant=1) is not None  # another tenant is not affected
    h.router.close_flow(second, "bye")
    assert h.open("192.0.2.9") is not None
    assert h.protection.tenant_guard.tenant_connections("rossi") == 2


# -- request rate ---------------------------------------------------------------------------------


def test_request_rate_per_source_drops_excess_requests_not_keepalives_or_responses() -> None:
    """Requests over the source's rate are dropped before parsing; CRLF keepalives and responses pass."""
    h = Harness(_config("request_rate_per_ip = 1\nrequest_burst_per_ip = 3"))
    for n in range(3):
        h.router.data_from_client(h.flow, _options(n))
    assert len(h.udp.sent) == 3
    h.router.data_from_client(h.flow, _options(3, prefix=b"\r\n\r\n"))  # leading CRLFs do not hide it
    assert len(h.udp.sent) == 3
    assert h.protection.requests_dropped == {"per_ip_rate": 1}
    h.router.data_from_client(h.flow, b"\r\n\r\n")
    assert h.to_client[-1] == b"\r\n"  # keepalive answered
    h.router.data_from_client(h.flow, b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert h.protection.requests_dropped == {"per_ip_rate": 1}
    assert h.router.counters[("requests_dropped", "rossi", "wss")] == 1
    h.clock.advance(1.0)
    h.router.data_from_client(h.flow, _options(4))
    assert {_call_id(d) for d, _ in h.udp.sent} == {"o0", "o1", "o2", "o4"}  # (plus UDP retransmissions)


def _call_id(data: bytes) -> str:
    msg = parse(data)
    return msg.call_id


# -- bans -----------------------------------------------------------------------------------------


def test_ten_failed_authentications_ban_the_source_until_the_ban_expires() -> None:
    """10 x 401/403 to REGISTERs with credentials ban the source: accept refused, requests dropped; then it expires."""
    h = Harness(_config("ban_failures = 10\nban_window = 60\nban_duration = 120"))
    factory = _guarded(h.protection)
    for i in range(10):
        h.register(AUTH)
        h.pbx_answers(401 if i % 2 else 403, CHALLENGE if i % 2 else "")
        h.clock.advance(1.0)
    bans = h.protection.bans.list_bans(h.timers.now())
    assert [(b.source, b.tenant, b.failures) for b in bans] == [("192.0.2.7", "rossi", 10)]
    forwarded = len(h.udp.sent)
    h.register(AUTH)
    assert len(h.udp.sent) == forwarded  # dropped
    assert h.protection.requests_dropped == {"banned": 1}
    assert _connect(factory, "192.0.2.7") is None
    assert _connect(factory, "192.0.2.99") is not None  # others unaffected
    h.clock.advance(120.0)
    assert h.protection.bans.ban_records == 0  # the timer dropped it
    assert _connect(factory, "192.0.2.7") is not None
    h.register(AUTH)
    assert len(h.udp.sent) == forwarded + 1


def test_challenges_stale_nonces_and_successes_do_not_ban() -> None:
    """The first 401 (no credentials) and stale=true never count; a 200 to REGISTER forgives that user."""
    h = Harness(_config("ban_failures = 3"))
    for _ in range(5):
        h.register()
        h.pbx_answers(401, CHALLENGE)
        h.register(AUTH)
        h.pbx_answers(401, STALE)
    assert h.protection.bans.failure_count("192.0.2.7", h.timers.now()) == 0
    h.register(AUTH)
    h.pbx_answers(403)
    h.register(AUTH)
    h.pbx_answers(403)
    assert h.protection.bans.failure_count("192.0.2.7", h.timers.now()) == 2
    h.register(AUTH)
    h.pbx_answers(200)
    assert h.protection.bans.failure_count("192.0.2.7", h.timers.now()) == 0
    assert h.protection.bans.list_bans(h.timers.now()) == []


def test_answer_after_the_client_left_still_counts() -> None:
    """Closing the connection before the PBX's 403 arrives does not escape the failure count."""
    h = Harness(_config())
    h.register(AUTH)
    h.router.close_flow(h.flow, "gone")
    h.pbx_answers(403)
    assert h.protection.bans.failure_count("192.0.2.7", h.timers.now()) == 1


def test_allow_listed_office_is_never_banned() -> None:
    """A tenant's allow-listed network reaches the threshold without being banned (logged as GRD302)."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        h = Harness(_config("ban_failures = 2"), peer="203.0.113.40")
        for _ in range(4):
            h.register(AUTH)
            h.pbx_answers(403)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert h.protection.bans.list_bans(h.timers.now()) == []
    assert h.protection.bans.exempt_threshold_hits == 2
    assert any(str(e.get("log_format", "")).startswith("GRD302") for e in events)


# -- scanners ---------------------------------------------------------------------------------------


def test_scanner_on_the_backend_port_is_dropped_quietly_and_counted() -> None:
    """A request from an address that is no tenant's PBX: no answer, no log line, counted."""
    h = Harness(_config())
    h.router.data_from_backend(_options(1), ("198.51.100.9", 5060), "udp")
    assert h.udp.sent == []
    assert int(h.protection.scanners) == 1
    assert h.protection.scanner_kinds == {"backend_sip": 1}
    assert h.router.core.counters["sip_unknown_backend"] == 1
    assert not h.router.core.problems


def test_unknown_tls_server_name_is_counted_as_a_scanner() -> None:
    """A ClientHello naming no tenant is counted by the certificate store's hook."""
    h = Harness(_config())
    store = CertificateStore(h.cfg, TenantTable(h.cfg.tenants))
    store.on_unknown_sni = lambda: h.protection.scanner("tls_sni")

    def hello(name: str | None) -> ClientHello:
        return ClientHello(name, (b"http/1.1",), 0x0303, (0x0304,))

    assert store.context_for_hello(hello("scan.example.net")) == "unknown_name"
    assert store.context_for_hello(hello(None)) == "unknown_name"
    assert store.context_for_hello(hello("rossi.example.com")) == "no_certificate"  # not loaded
    assert h.protection.scanner_kinds == {"tls_sni": 2}


# -- reload and stop --------------------------------------------------------------------------------


def test_reload_applies_new_caps_and_keeps_bans_and_counts() -> None:
    """update(): new per-source cap at once, bans and live counts kept, ipv6_prefix only at restart."""
    h = Harness(_config("max_connections_per_ip = 5"))
    factory = _guarded(h.protection)
    for _ in range(3):
        _connect(factory, "192.0.2.1")
    h.protection.bans.ban("192.0.2.66", None, h.timers.now())
    h.protection.update(_config("max_connections_per_ip = 3\nipv6_prefix = 56"))
    assert _connect(factory, "192.0.2.1") is None
    assert h.protection.bans.is_banned("192.0.2.66", h.timers.now())
    assert h.protection.ipv6_prefix == 64
    assert h.protection.guard.admit_request("2001:db8:0:0:1::1", "rossi", h.timers.now()) == Decision(
        True, "ok"
    )


def test_stop_cancels_timers_and_later_events_arm_none() -> None:
    """After stop(), a connection closing during shutdown leaves no timer behind."""
    h = Harness(_config())
    factory = _guarded(h.protection)
    proto = _connect(factory, "192.0.2.1")
    h.protection.stop()
    _lose(proto)
    assert h.protection.armed == 0
    assert h.clock.getDelayedCalls() == []
