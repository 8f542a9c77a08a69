"""The SIP router adapter in virtual time: Timer B/F, 408/430, torture messages and fuzz never escape."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from mcs_edge import config as c
from mcs_edge.core.tenants import TenantTable
from mcs_edge.tx.sip.router import ClientFlow, SipRouter
from mcs_edge.tx.timers import Timers

RFC4475 = Path(__file__).resolve().parent.parent / "data" / "sip" / "rfc4475"
CFG = c.loads(
    '[listen]\nhttps = "127.0.0.1:8443"\nbackend_sip = "127.0.0.1:5070"\n'
    '[[tenants]]\nid = "rossi"\ndomains = ["rossi.example.com", "example.com", "example.net", "biloxi.com", "atlanta.com"]\n'
    'backend_sip = "udp:10.1.0.10:5060"\n'
)


class FakeUDP:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((data, addr))


class Harness:
    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.timers = Timers(self.clock, now=self.clock.seconds)
        self.router = SipRouter(CFG, TenantTable(CFG.tenants), self.timers)
        self.udp = FakeUDP()
        self.router.udp = self.udp
        self.to_client: list[bytes] = []
        self.closed: list[tuple[int, str]] = []
        flow = self.router.open_flow(
            CFG.tenants[0],
            "wss",
            ("192.0.2.7", 40000),
            self.to_client.append,
            lambda code, r: self.closed.append((code, r)),
        )
        assert flow is not None
        self.flow: ClientFlow = flow

    def send(self, data: bytes) -> None:
        self.router.data_from_client(self.flow, data)


def _options(branch: str = "z9hG4bKabc1") -> bytes:
    return (
        f"OPTIONS sip:rossi.example.com SIP/2.0\r\nVia: SIP/2.0/WSS x.invalid;branch={branch}\r\nMax-Forwards: 70\r\n"
        "From: <sip:a@rossi.example.com>;tag=1\r\nTo: <sip:rossi.example.com>\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def _invite() -> bytes:
    return (
        b"INVITE sip:200@rossi.example.com SIP/2.0\r\nVia: SIP/2.0/WSS x.invalid;branch=z9hG4bKinv1\r\nMax-Forwards: 70\r\n"
        b"From: <sip:a@rossi.example.com>;tag=1\r\nTo: <sip:200@rossi.example.com>\r\nCall-ID: c2\r\nCSeq: 1 INVITE\r\n"
        b"Contact: <sip:a@x.invalid;transport=ws>\r\nContent-Length: 0\r\n\r\n"
    )


def _status(data: bytes) -> int:
    return int(data.split(b" ", 2)[1])


def test_silent_pbx_non_invite_gets_408_after_timer_f() -> None:
    """OPTIONS to a silent PBX: Timer E retransmits (0.5, 1, 2, 4, 4 ...), Timer F (32 s) answers 408."""
    h = Harness()
    h.send(_options())
    assert len(h.udp.sent) == 1 and h.udp.sent[0][1] == ("10.1.0.10", 5060)
    h.clock.advance(0.5)
    assert len(h.udp.sent) == 2
    h.clock.advance(1.0)
    assert len(h.udp.sent) == 3
    h.clock.pump([0.5] * 61)  # up to 32 s after the first send
    assert [_status(d) for d in h.to_client] == [408]
    assert h.router.core.counters["sip_backend_timeout"] == 1
    assert len(h.router.core.layer) == 0 or h.router.core.pairs == 0


def test_silent_pbx_invite_gets_100_then_408_after_timer_b() -> None:
    """INVITE to a silent PBX: 100 at once, Timer A retransmissions, Timer B (64*T1) answers 408."""
    h = Harness()
    h.send(_invite())
    assert [_status(d) for d in h.to_client] == [100]
    h.clock.pump([0.25] * 127)
    assert [_status(d) for d in h.to_client] == [100]
    h.clock.advance(0.5)
    assert [_status(d) for d in h.to_client] == [100, 408]
    assert len(h.udp.sent) >= 6  # first send plus Timer A copies at 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s


def test_no_timer_left_after_everything_ends() -> None:
    """Once every transaction is over, the router's timer is disarmed and nothing is pending."""
    h = Harness()
    h.send(_options())
    h.clock.pump([1.0] * 80)
    assert not h.router.timer.active
    assert h.router.core.pairs == 0
    assert len(h.timers) == 0


def test_pbx_request_to_closed_flow_gets_430() -> None:
    """A request from the PBX through the Path of a flow that closed gets 430 Flow Failed."""
    h = Harness()
    token = h.router.core.flows[h.flow.id].token
    h.router.close_flow(h.flow, "gone")
    invite = (
        f"INVITE sip:a@x.invalid;transport=ws SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.0.10:5060;branch=z9hG4bKpbx1\r\n"
        f"Route: <sip:{token}@127.0.0.1:5070;lr;ob>\r\nMax-Forwards: 70\r\nFrom: <sip:1@rossi.example.com>;tag=p\r\n"
        "To: <sip:a@rossi.example.com>\r\nCall-ID: p1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    h.router.data_from_backend(invite, ("10.1.0.10", 5060), "udp")
    assert [_status(d) for d, _ in h.udp.sent] == [100, 430]
    assert h.udp.sent[-1][1] == ("10.1.0.10", 5060)


def test_requests_from_unknown_sources_on_backend_port_are_dropped() -> None:
    """The backend port answers only the tenants' PBXs; a scanner's request is dropped and counted."""
    h = Harness()
    h.router.data_from_backend(_options(), ("198.51.100.9", 5060), "udp")
    assert h.udp.sent == []
    assert h.router.core.counters["sip_unknown_backend"] == 1


FIXTURES = sorted(RFC4475.glob("*.sip"))


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_torture_message_from_client_is_answered_forwarded_or_dropped(path: Path) -> None:
    """Each RFC 4475 message, sent by a client, is forwarded, answered with a status or dropped and counted."""
    h = Harness()
    h.send(path.read_bytes())
    forwarded = len(h.udp.sent)
    answered = [_status(d) for d in h.to_client if d.startswith(b"SIP/2.0 ")]
    counted = sum(
        v
        for k, v in h.router.core.counters.items()
        if k.startswith("sip_bad") or k in ("sip_foreign_domain", "sip_stray_response")
    )
    assert forwarded or answered or counted, path.name
    if not forwarded and answered:
        assert all(code == 100 or code >= 400 for code in answered)


def test_torture_messages_from_pbx_never_escape() -> None:
    """The same messages from the PBX side never raise out of the router."""
    h = Harness()
    for path in FIXTURES:
        h.router.data_from_backend(path.read_bytes(), ("10.1.0.10", 5060), "udp")


VALID = [_options(), _invite()] + [p.read_bytes() for p in FIXTURES[:10]]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_random_bytes_never_escape(data: bytes) -> None:
    """Random bytes from a client or a PBX never raise out of the router."""
    h = Harness()
    h.send(data)
    h.router.data_from_backend(data, ("10.1.0.10", 5060), "udp")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(VALID), st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 255)), max_size=8))
def test_mutated_messages_never_escape(base: bytes, edits: list[tuple[int, int]]) -> None:
    """Valid messages with random byte flips never raise; garbage is answered, dropped or forwarded."""
    data = bytearray(base)
    for pos, val in edits:
        if data:
            data[pos % len(data)] = val
    h = Harness()
    h.send(bytes(data))
    h.clock.pump([1.0] * 40)
    h.router.data_from_backend(bytes(data), ("10.1.0.10", 5060), "udp")


@pytest.mark.parametrize("name", ["unkscm", "novelsc"])
def test_unsupported_request_uri_scheme_from_pbx_gets_416(name: str) -> None:
    """RFC 4475 s.3.3.2/3.3.3 from the PBX: answered 416 to its source, counted by status (was dropped)."""
    h = Harness()
    h.router.data_from_backend((RFC4475 / f"{name}.sip").read_bytes(), ("10.1.0.10", 5060), "udp")
    assert [(_status(d), a) for d, a in h.udp.sent] == [(416, ("10.1.0.10", 5060))]
    assert h.router.core.counters["sip_refused_416"] == 1


def test_every_request_from_either_side_is_forwarded_or_answered() -> None:
    """Each RFC 4475 request, from a client or from the PBX: forwarded, answered with a final status,
    or (only when no response can be built: no Via/From/To/Call-ID/CSeq, or an ACK) counted as unanswerable."""
    for path in FIXTURES:
        data = path.read_bytes()
        if data.startswith(b"SIP/2.0"):
            continue
        h = Harness()
        h.send(data)
        finals = [d for d in h.to_client if d.startswith(b"SIP/2.0 ") and not d.startswith(b"SIP/2.0 1")]
        assert h.udp.sent or finals or h.router.core.counters.get("sip_dropped_unanswerable"), path.name
        h = Harness()
        h.router.data_from_backend(data, ("10.1.0.10", 5060), "udp")
        finals = [d for d, _ in h.udp.sent if not d.startswith(b"SIP/2.0 1")]
        assert h.to_client or finals or h.router.core.counters.get("sip_dropped_unanswerable"), path.name


def test_idle_sweep_visits_and_closes_silent_tls_flows_only() -> None:
    """The periodic idle-flow pass visits only SIP-over-TCP/TLS flows (WebSockets have their own
    liveness sweep): an edge holding WSS agents visits none of them, and a TLS flow silent for longer
    than sip.keepalive_timeout is closed."""
    h = Harness()
    closed: list[tuple[int, str]] = []
    tls = h.router.open_flow(
        CFG.tenants[0], "tls", ("192.0.2.9", 5061), lambda _d: None, lambda code, r: closed.append((code, r))
    )
    assert tls is not None
    assert h.router.sweepable_flows() == [tls]
    h.clock.advance(CFG.sip.keepalive_timeout + 1)
    assert h.router.sweep_idle() == 1
    assert closed == [(1000, "keepalive timeout")] and h.closed == []
    h.router.close_flow(tls, "closed")
    assert h.router.sweepable_flows() == []


class _BoundPort:
    """The backend port as Twisted's UDP port shows it: ``getHandle()`` is its socket; ``write``
    must not be used for a PBX's IP address."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.written: list[bytes] = []

    def getHandle(self) -> socket.socket:
        return self.sock

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        self.written.append(data)


def test_backend_datagrams_go_out_through_the_sockets_own_sendto() -> None:
    """Requests toward a PBX's IP address are sent with the bound socket's ``sendto`` (not the
    Twisted port's ``write``); a datagram too large for UDP is counted as a send error by name."""
    pbx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    pbx.bind(("127.0.0.1", 0))
    pbx.settimeout(5)
    port = pbx.getsockname()[1]
    cfg = c.loads(
        '[listen]\nhttps = "127.0.0.1:8443"\nbackend_sip = "127.0.0.1:5070"\n'
        '[[tenants]]\nid = "rossi"\ndomains = ["rossi.example.com"]\n'
        f'backend_sip = "udp:127.0.0.1:{port}"\n'
    )
    clock = Clock()
    router = SipRouter(cfg, TenantTable(cfg.tenants), Timers(clock, now=clock.seconds))
    bound = _BoundPort()
    router.backend_socket(bound)
    flow = router.open_flow(cfg.tenants[0], "wss", ("192.0.2.7", 40000), lambda _d: None, lambda _c, _r: None)
    assert flow is not None
    try:
        router.data_from_client(flow, _options())
        data, src = pbx.recvfrom(65535)
        assert data.startswith(b"OPTIONS ") and src == bound.sock.getsockname()
        assert bound.written == []
        router.send_to_backend(cfg.tenants[0], b"x" * 70_000)  # over the UDP maximum: EMSGSIZE
        assert router.counters.get(("backend_send_errors", "rossi", "MessageLengthError")) == 1
    finally:
        router.stop()
        bound.sock.close()
        pbx.close()
