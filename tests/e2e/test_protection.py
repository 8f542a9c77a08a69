"""Shaping and protection over real loopback sockets: paced WebSocket, per-source caps, bans from a sipp PBX."""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from helpers.edge import InProcessEdge, edge_toml, free_udp_port, tenant_toml
from helpers.sipp import Sipp
from helpers.wsclient import WSClient, header, status
from twisted.internet import defer, task, threads


class Edge(InProcessEdge):
    """An in-process edge on ephemeral loopback ports, one tenant whose PBX is at ``pbx_port``."""

    def __init__(
        self, tmp: Path, extra: str = "", tenant_extra: str = "", pbx_port: int | None = None
    ) -> None:
        super().__init__(tmp)
        self.pbx_port = pbx_port or free_udp_port()
        tenant = tenant_toml("rossi", self.pbx_port, tail=tenant_extra + "\n")
        self.start(edge_toml(self.state, tenant, sip_tls="127.0.0.1:0", sip=f"t1 = 2\n{extra}\n"))

    def tls(self, source: str = "127.0.0.1", name: str = "rossi.example.com") -> ssl.SSLSocket:
        """A TLS connection from ``source`` (raises if the edge refuses it)."""
        ctx = ssl.create_default_context(cafile=self.ca)
        raw = socket.create_connection(("127.0.0.1", self.https), timeout=5, source_address=(source, 0))
        try:
            return ctx.wrap_socket(raw, server_hostname=name)
        except BaseException:
            raw.close()
            raise

    def refused(self, source: str = "127.0.0.1", name: str = "rossi.example.com") -> bool:
        try:
            self.tls(source, name).close()
        except (OSError, ssl.SSLError):
            return True
        return False


class UdpPbx:
    """A PBX thread answering 200 OK to every request, recording (time, Call-ID, size) of each."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", port))
        self.sock.settimeout(0.2)
        self.seen: list[tuple[float, str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65536)
            except OSError:
                continue
            text = data.decode(errors="replace")
            head = text.split("\r\n\r\n", 1)[0]
            if text.startswith("SIP/2.0"):
                continue
            call_id = header(head, "Call-ID") or ""
            if any(cid == call_id for _, cid, _ in self.seen):
                continue  # a retransmission
            self.seen.append((time.monotonic(), call_id, len(data)))
            lines = [
                ln
                for ln in head.split("\r\n")[1:]
                if ln.split(":", 1)[0].lower() in ("via", "from", "call-id", "cseq")
            ]
            to = header(head, "To") or ""
            resp = (
                "SIP/2.0 200 OK\r\n"
                + "\r\n".join(lines)
                + f"\r\nTo: {to};tag=pbx\r\nContent-Length: 0\r\n\r\n"
            )
            self.sock.sendto(resp.encode(), addr)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def _message(call_id: str, body_size: int) -> str:
    body = "x" * body_size
    return (
        f"MESSAGE sip:bob@rossi.example.com SIP/2.0\r\nVia: SIP/2.0/WSS x.invalid;branch=z9hG4bK{call_id[:16]}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:alice@rossi.example.com>;tag=a1\r\nTo: <sip:bob@rossi.example.com>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    )


# -- shaping --------------------------------------------------------------------------------------


RATE = 16000


def _push_at_ten_times_the_rate(edge: Edge, count: int) -> tuple[list[str], list[str], float, Any]:
    ws = edge.client()
    sent: list[str] = []
    size = 0
    t0 = time.monotonic()
    for i in range(count):
        call_id = f"{i:04d}-{uuid.uuid4().hex}"
        msg = _message(call_id, 900)
        size += len(msg)
        # offer 10 x the configured rate
        delay = t0 + size / (10 * RATE) - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        ws.send(msg)
        sent.append(call_id)
    offered = time.monotonic() - t0
    answered: list[str] = []
    while len(answered) < count:
        resp = ws.recv_sip(timeout=15)
        assert status(resp) == 200, resp
        answered.append(header(resp, "Call-ID") or "")
    closed = ws.closed
    ws.close()
    return sent, answered, offered, closed


@pytest_twisted.inlineCallbacks
def test_websocket_pushing_ten_times_its_rate_is_slowed_not_disconnected_and_loses_nothing(
    tmp_path: Path,
) -> Any:
    """A WebSocket client offering 10x its rate: every SIP message arrives and is answered, at the configured pace."""
    edge = Edge(
        tmp_path,
        extra=f"[shaping]\nrate = {RATE}\nburst = {RATE}\n[guard]\nrequest_rate_per_ip = 1000\nrequest_burst_per_ip = 1000",
    )
    pbx = UdpPbx(edge.pbx_port)
    try:
        count = 80  # about 80 KB: the burst, then about 4 s at the rate
        sent, answered, offered, closed = yield threads.deferToThread(
            _push_at_ten_times_the_rate, edge, count
        )
        from twisted.internet import reactor

        yield task.deferLater(reactor, 0.3, lambda: None)
        assert not edge.service.shaping.streams  # the closed connection's shaper is gone
        assert not edge.service.sip.flows
    finally:
        pbx.close()
        yield edge.stop()
    assert closed is None
    assert sorted(answered) == sorted(sent)  # nothing lost, every request answered
    assert [cid for _, cid, _ in pbx.seen] == sent  # in order
    times = [t for t, _, _ in pbx.seen]
    assert offered < 1.5  # the client pushed at about 10 x the rate...
    assert times[-1] - times[0] > 3.0  # ...but was delivered at about the rate
    # steady state (after the burst): bytes the PBX got over the last 3/4 of the run against the rate
    cut = len(times) // 4
    span = times[-1] - times[cut]
    ws_bytes = sum(len(_message(cid, 900)) + 8 for cid in sent[cut + 1 :])
    assert ws_bytes / span == pytest.approx(RATE, rel=0.15)
    counters = edge.service.shaping.counters
    assert counters.get(("reads_paused", "rossi", "wss"), 0) >= 1
    assert not any(k[0] == "stream_closed" for k in counters)


# -- per-source caps ---------------------------------------------------------------------------------


def _caps(edge: Edge) -> tuple[bool, bool, list[bool], bool]:
    held = [edge.tls(), edge.tls()]
    third = edge.refused()
    office = [edge.refused("127.0.0.2") for _ in range(4)]
    office_held = [edge.tls("127.0.0.2") for _ in range(3)]
    for s in held:
        s.close()
    deadline = time.monotonic() + 5
    again = True
    while again and time.monotonic() < deadline:
        time.sleep(0.05)
        again = edge.refused()
    for s in office_held:
        s.close()
    return len(held) == 2, third, office, again


@pytest_twisted.inlineCallbacks
def test_source_over_its_cap_is_refused_while_an_allow_listed_network_is_not(tmp_path: Path) -> Any:
    """guard.max_connections_per_ip = 2: the third TLS connection from 127.0.0.1 is refused, the office's are not."""
    edge = Edge(
        tmp_path,
        extra="[guard]\nmax_connections_per_ip = 2\nconnection_rate_per_ip = 1000\nconnection_burst_per_ip = 1000",
        tenant_extra='[tenants.guard]\nallow_networks = ["127.0.0.2/32"]',
    )
    try:
        ok, third_refused, office_refused, refused_after_close = yield threads.deferToThread(_caps, edge)
    finally:
        yield edge.stop()
    assert ok and third_refused
    assert office_refused == [False] * 4
    assert not refused_after_close  # closing frees the slot
    assert edge.service.guard.refusals.get("per_ip_connections", 0) >= 1


@pytest_twisted.inlineCallbacks
def test_unknown_server_name_is_dropped_and_counted_as_a_scanner(tmp_path: Path) -> Any:
    """A TLS client naming no tenant gets no certificate; it is only counted (no tenant, no log line)."""
    edge = Edge(tmp_path)
    try:
        refused = yield threads.deferToThread(edge.refused, "127.0.0.1", "scanner.example.net")
        yield defer.succeed(None)
    finally:
        yield edge.stop()
    assert refused
    assert edge.service.protection.scanner_kinds.get("tls_sni") == 1


# -- bans ---------------------------------------------------------------------------------------------

AUTH = 'Authorization: Digest username="alice", realm="rossi.example.com", nonce="{n}", uri="sip:rossi.example.com", response="0"\r\n'


def _register(ws: WSClient, call_id: str, cseq: int, n: int) -> None:
    ws.send(
        f"REGISTER sip:rossi.example.com SIP/2.0\r\nVia: SIP/2.0/WSS x.invalid;branch=z9hG4bK{uuid.uuid4().hex[:12]}\r\n"
        f"Max-Forwards: 70\r\nTo: <sip:alice@rossi.example.com>\r\nFrom: <sip:alice@rossi.example.com>;tag=r{cseq}\r\n"
        f"Call-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:alice@x.invalid;transport=ws>\r\n"
        f"{AUTH.format(n=n)}Content-Length: 0\r\n\r\n"
    )


def _fail_ten_times(edge: Edge) -> tuple[list[int], bool, bool]:
    ws = edge.client()
    statuses = []
    for i in range(5):
        call_id = uuid.uuid4().hex
        for cseq in (1, 2):
            _register(ws, call_id, cseq, i)
            statuses.append(status(ws.recv_sip(timeout=10, skip_provisional=True)))
    _register(ws, uuid.uuid4().hex, 1, 99)  # the 11th: dropped by the edge (banned)
    try:
        ws.recv_sip(timeout=1.0)
        answered = True
    except (OSError, ConnectionError):
        answered = False
    refused_at_accept = edge.refused()
    ws.close()
    return statuses, answered, refused_at_accept


def _reconnect_after(edge: Edge, until: float) -> bool:
    while time.monotonic() < until:
        time.sleep(0.1)
    ws = edge.client()  # raises if refused
    ok = ws.protocol == "sip"
    ws.close()
    return ok


@pytest.mark.requires_tool("sipp")
@pytest_twisted.inlineCallbacks
def test_ten_failed_authentications_ban_the_source_and_the_ban_expires(tmp_path: Path) -> Any:
    """A sipp PBX answers 401/403 to ten REGISTERs with credentials: the source is banned, then the ban expires."""
    duration = 3.0
    edge = Edge(tmp_path, extra=f"[guard]\nban_failures = 10\nban_window = 60\nban_duration = {duration}")
    sipp = Sipp(tmp_path, "pbx_auth_fail.xml", edge.pbx_port, edge.backend, calls=5)
    try:
        statuses, answered, refused = yield threads.deferToThread(_fail_ten_times, edge)
        now = edge.service.timers.now()
        bans = edge.service.bans.list_bans(now)
        assert [(b.source, b.tenant, b.failures) for b in bans] == [("127.0.0.1", "rossi", 10)]
        reconnected = yield threads.deferToThread(
            _reconnect_after, edge, time.monotonic() + bans[0].until - now
        )
        rc = yield threads.deferToThread(sipp.proc.wait, 30)
    finally:
        sipp.kill()
        yield edge.stop()
    assert statuses == [401, 403] * 5
    assert not answered and edge.service.protection.requests_dropped == {"banned": 1}
    assert refused  # new connections from the banned source are refused at accept
    assert reconnected  # the ban expired
    assert edge.service.bans.list_bans(edge.service.timers.now()) == []
    assert rc == 0, sipp.errors()


# -- media policing through the relay ------------------------------------------------------------

LEG_RATE = 10_000
RTP_SIZE = 172  # 20 ms of G.711


def _browser_offer() -> str:
    fp = ":".join(f"{b:02X}" for b in os.urandom(32))
    return "\r\n".join(
        [
            "v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0",
            "m=audio 9 UDP/TLS/RTP/SAVPF 0", "c=IN IP4 127.0.0.1", "a=mid:0", "a=sendrecv", "a=rtcp-mux",
            f"a=ice-ufrag:{uuid.uuid4().hex[:8]}", f"a=ice-pwd:{uuid.uuid4().hex}", f"a=fingerprint:sha-256 {fp}",
            "a=setup:actpass", "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host", "a=rtpmap:0 PCMU/8000",
        ]
    ) + "\r\n"  # fmt: skip


class MediaPbx:
    """A UDP PBX answering each INVITE with plain RTP on its own socket; remembers the relay port it was offered."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", port))
        self.sock.settimeout(0.2)
        self.calls: dict[str, tuple[socket.socket, tuple[str, int]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65536)
            except OSError:
                continue
            text = data.decode(errors="replace")
            if not text.startswith("INVITE "):
                continue
            head, _, body = text.partition("\r\n\r\n")
            call_id = header(head, "Call-ID") or ""
            if call_id not in self.calls:
                host = next(ln[9:] for ln in body.split("\r\n") if ln.startswith("c=IN IP4 "))
                port = int(next(ln.split()[1] for ln in body.split("\r\n") if ln.startswith("m=audio ")))
                rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                rtp.bind(("127.0.0.1", 0))
                self.calls[call_id] = (rtp, (host, port))
            rtp_port = self.calls[call_id][0].getsockname()[1]
            sdp = (
                f"v=0\r\no=pbx 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                f"m=audio {rtp_port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
            )
            lines = [
                ln
                for ln in head.split("\r\n")[1:]
                if ln.split(":", 1)[0].lower() in ("via", "from", "call-id", "cseq", "record-route")
            ]
            resp = (
                "SIP/2.0 200 OK\r\n" + "\r\n".join(lines) + f"\r\nTo: {header(head, 'To')};tag=pbx\r\n"
                f"Contact: <sip:pbx@127.0.0.1:{self.sock.getsockname()[1]}>\r\nContent-Type: application/sdp\r\n"
                f"Content-Length: {len(sdp)}\r\n\r\n{sdp}"
            )
            self.sock.sendto(resp.encode(), addr)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
        for rtp, _ in self.calls.values():
            rtp.close()


def _call(ws: WSClient) -> str:
    call_id = uuid.uuid4().hex
    sdp = _browser_offer()
    ws.send(
        f"INVITE sip:200@rossi.example.com SIP/2.0\r\nVia: SIP/2.0/WSS x.invalid;branch=z9hG4bK{call_id[:12]}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:alice@rossi.example.com>;tag=c1\r\nTo: <sip:200@rossi.example.com>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@x.invalid;transport=ws;ob>\r\n"
        f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}"
    )
    while True:
        msg = ws.recv_sip(timeout=10, skip_provisional=True)
        if header(msg, "Call-ID") == call_id:
            assert status(msg) == 200, msg
            return call_id


def _send_rtp(sock: socket.socket, dest: tuple[str, int], rate: float, seconds: float, ssrc: int) -> int:
    """Plain RTP of RTP_SIZE bytes at ``rate`` bytes/s; returns packets sent."""
    pps = rate / RTP_SIZE
    t0 = time.monotonic()
    sent = 0
    while (elapsed := time.monotonic() - t0) < seconds:
        while sent < int(elapsed * pps) + 1:
            head = bytes([0x80, 0]) + (sent & 0xFFFF).to_bytes(2, "big") + (sent * 160).to_bytes(4, "big")
            sock.sendto(head + ssrc.to_bytes(4, "big") + bytes(RTP_SIZE - 12), dest)
            sent += 1
        time.sleep(0.002)
    return sent


def _two_legs(edge: Edge, pbx: MediaPbx) -> tuple[str, str, int, int, WSClient]:
    ws = edge.client(origin="https://rossi.example.com")
    flood, calm = _call(ws), _call(ws)
    results: dict[str, int] = {}

    def run(call_id: str, rate: float, ssrc: int) -> None:
        rtp, dest = pbx.calls[call_id]
        results[call_id] = _send_rtp(rtp, dest, rate, 3.0, ssrc)

    threads_ = [
        threading.Thread(target=run, args=(flood, 3 * LEG_RATE, 1)),
        threading.Thread(target=run, args=(calm, 0.86 * LEG_RATE, 2)),  # 50 packets/s, like a G.711 call
    ]
    for t in threads_:
        t.start()
    for t in threads_:
        t.join()
    time.sleep(0.3)
    return flood, calm, results[flood], results[calm], ws  # closing it would end both calls


@pytest_twisted.inlineCallbacks
def test_media_leg_at_three_times_its_rate_loses_two_thirds_while_a_calm_leg_loses_nothing(
    tmp_path: Path,
) -> Any:
    """Through the relay: the PBX floods one call at 3x the leg rate, another call of the tenant stays under it."""
    from mcs_edge.core.media.session import PBX

    pbx_port = free_udp_port()
    pbx = MediaPbx(pbx_port)
    edge = Edge(
        tmp_path,
        extra=(
            f"[shaping]\nrate = {LEG_RATE}\nburst = 3000\naggregate_rate = 25000\naggregate_burst = 6000\n"
            "[media]\nports = [42000, 42999]"
        ),
        tenant_extra='allowed_origins = ["https://rossi.example.com"]',
        pbx_port=pbx_port,
    )
    stats: dict[str, tuple[int, int, int]] = {}
    try:
        flood, calm, sent_flood, sent_calm, ws = yield threads.deferToThread(_two_legs, edge, pbx)
        for name, call_id in (("flood", flood), ("calm", calm)):
            session = edge.service.media.anchor.sessions[call_id]
            leg = next(leg for leg in session.legs if leg.side is PBX)
            stats[name] = (leg.policer.dropped_packets, leg.policer.parent_dropped_packets, 0)
        stats["flood"] = (*stats["flood"][:2], sent_flood)
        stats["calm"] = (*stats["calm"][:2], sent_calm)
        ws.close()
    finally:
        pbx.close()
        yield edge.stop()
    dropped, _by_tenant, sent = stats["flood"]
    assert dropped / sent == pytest.approx(2 / 3, abs=0.07), stats
    dropped, _by_tenant, sent = stats["calm"]
    assert sent > 100 and dropped / sent < 0.001, stats
