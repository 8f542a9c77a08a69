"""The relay's sockets on the running reactor (epoll: listenUDP; --reactor=asyncio: native datagram endpoints)."""

from __future__ import annotations

import random
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest_twisted
from helpers.webrtc_peer import rtp_packet
from twisted.internet import reactor as _reactor
from twisted.internet import task, threads

from mcs_edge import config as c
from mcs_edge.core.media.sdp import SessionDescription
from mcs_edge.core.sip.message import parse
from mcs_edge.tx.media.relay import MediaRelay
from mcs_edge.tx.timers import Timers

reactor: Any = _reactor


@dataclass
class Pair:
    tenant_id: str = "rossi"
    flow_id: int = 1


def _config(tmp: Path, lo: int) -> c.EdgeConfig:
    return c.loads(
        f"""
[edge]
state_dir = "{tmp / "state"}"
[listen]
https = "127.0.0.1:0"
backend_sip = "127.0.0.1:0"
[media]
ports = [{lo}, {lo + 99}]
bind = "127.0.0.1"
idle_timeout = 2
[[tenants]]
id = "rossi"
domains = ["rossi.example.com"]
backend_sip = "udp:127.0.0.1:5999"
certificate = "self-signed"
""",
        str(tmp),
    )


def _invite(call_id: str, port: int) -> Any:
    body = f"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\n"
    head = (
        "INVITE sip:200@rossi.example.com SIP/2.0\n"
        "Via: SIP/2.0/WSS x.invalid;branch=z9hG4bK1\nMax-Forwards: 70\nFrom: <sip:a@rossi.example.com>;tag=1\n"
        f"To: <sip:200@rossi.example.com>\nCall-ID: {call_id}\nCSeq: 1 INVITE\nContent-Type: application/sdp\n"
        f"Content-Length: {len(body)}\n\n"
    )
    return parse(head.replace("\n", "\r\n").encode() + body.encode())


def _ok(call_id: str, port: int) -> Any:
    body = f"v=0\r\no=p 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\n"
    head = (
        "SIP/2.0 200 OK\nVia: SIP/2.0/WSS x.invalid;branch=z9hG4bK1\nFrom: <sip:a@rossi.example.com>;tag=1\n"
        f"To: <sip:200@rossi.example.com>;tag=2\nCall-ID: {call_id}\nCSeq: 1 INVITE\nContent-Type: application/sdp\n"
        f"Content-Length: {len(body)}\n\n"
    )
    return parse(head.replace("\n", "\r\n").encode() + body.encode())


def _udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(3)
    return s


def _exchange(client: socket.socket, pbx: socket.socket, client_relay: int, pbx_relay: int) -> list[bytes]:
    """Client RTP -> relay -> PBX, and PBX RTP -> relay -> client (the PBX answers to the latched port)."""
    got = []
    for seq in range(5):
        client.sendto(rtp_packet(seq, 0x1111), ("127.0.0.1", client_relay))
        data, addr = pbx.recvfrom(2048)
        assert addr == ("127.0.0.1", pbx_relay)
        got.append(data)
        pbx.sendto(rtp_packet(seq, 0x2222), addr)
        back, baddr = client.recvfrom(2048)
        assert baddr == ("127.0.0.1", client_relay)
        got.append(back)
    return got


def _sleep(seconds: float) -> Any:
    return task.deferLater(reactor, seconds, lambda: None)


@pytest_twisted.inlineCallbacks
def test_relay_sockets_carry_rtp_both_ways_and_close_on_end(tmp_path: Path) -> Any:
    """Real loopback sockets: RTP is relayed both ways; on_end closes every socket and the ports can be bound again."""
    lo = random.randrange(20000, 32000, 2)
    timers = Timers(reactor)
    relay = MediaRelay(_config(tmp_path, lo), reactor, timers, tenant_media=lambda tid: "bridge")
    assert relay.native == hasattr(reactor, "_asyncioEventloop")
    client, pbx = _udp(), _udp()
    call_id = uuid.uuid4().hex
    try:
        invite = _invite(call_id, client.getsockname()[1])
        assert relay.on_message(Pair(), invite, True, timers.now()) is None
        pbx_relay = SessionDescription.parse(invite.body).media[0].port
        ok = _ok(call_id, pbx.getsockname()[1])
        assert relay.on_message(Pair(), ok, False, timers.now()) is None
        client_relay = SessionDescription.parse(ok.body).media[0].port
        assert len(relay.ports) == 4  # two RTP/RTCP pairs (neither peer muxes)
        yield _sleep(0.05)  # native endpoints are created on the next loop iteration
        got = yield threads.deferToThread(_exchange, client, pbx, client_relay, pbx_relay)
        assert got[0] == rtp_packet(0, 0x1111) and got[1] == rtp_packet(0, 0x2222)
        session = relay.anchor.sessions[call_id]
        assert [leg["rx_packets"] for leg in session.stats()["legs"]] == [5, 5]
        relay.on_end(call_id, "BYE")
        assert relay.ports == {} and relay.anchor.ports_in_use == 0
        yield _sleep(0.05)
        for port in (client_relay, pbx_relay):
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            probe.bind(("127.0.0.1", port))  # really closed
            probe.close()
    finally:
        client.close()
        pbx.close()
        relay.stop()
        timers.cancel_all()


@pytest_twisted.inlineCallbacks
def test_idle_timeout_fires_on_the_reactor_and_stop_releases_everything(tmp_path: Path) -> Any:
    """A session nobody talks on ends after media.idle_timeout via the service timers; stop() closes the rest."""
    lo = random.randrange(20000, 32000, 2)
    timers = Timers(reactor)
    relay = MediaRelay(_config(tmp_path, lo), reactor, timers, tenant_media=lambda tid: "bridge")
    try:
        first, second = uuid.uuid4().hex, uuid.uuid4().hex
        for call_id in (first, second):
            relay.on_message(Pair(), _invite(call_id, 7000), True, timers.now())
        relay.on_message(Pair(), _ok(first, 7002), False, timers.now())  # only the first is answered
        assert relay.timer.active
        yield _sleep(2.5)
        assert first not in relay.anchor.sessions and second in relay.anchor.sessions
        assert relay.anchor.counters["media_sessions_ended:idle timeout"] == 1
    finally:
        relay.stop()
    assert relay.ports == {} and relay.anchor.sessions == {} and not relay.timer.active
    timers.cancel_all()


def test_bind_conflict_moves_to_the_next_port(tmp_path: Path) -> None:
    """A relay port held by another socket is skipped; the SDP names a port the relay really holds."""
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    while True:  # a random even port nobody holds, held by us now
        lo = random.randrange(20000, 32000, 2)
        try:
            blocker.bind(("127.0.0.1", lo))
            break
        except OSError:
            continue
    timers = Timers(reactor)
    relay = MediaRelay(_config(tmp_path, lo), reactor, timers, tenant_media=lambda tid: "bridge")
    try:
        invite = _invite(uuid.uuid4().hex, 7000)
        assert relay.on_message(Pair(), invite, True, timers.now()) is None
        assert lo not in relay.ports and SessionDescription.parse(invite.body).media[0].port in relay.ports
        assert relay.counters["media_bind_errors"] >= 1
    finally:
        relay.stop()
        blocker.close()
        timers.cancel_all()
