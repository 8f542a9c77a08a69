"""Relay sockets bound ahead of calls (tx/media/pool.py) on the running reactor (epoll: listenUDP;
--reactor=asyncio: native datagram endpoints): used by calls, refilled, bounded, never leaking a port."""

from __future__ import annotations

import random
import socket
import uuid
from pathlib import Path
from typing import Any

import pytest_twisted
from helpers.webrtc_peer import rtp_packet
from twisted.internet import reactor as _reactor
from twisted.internet import task, threads

from mcs_edge import config as c
from mcs_edge.core.media.sdp import SessionDescription
from mcs_edge.tx.media.relay import MediaRelay
from mcs_edge.tx.timers import Timers

from .test_media_udp import Pair, _exchange, _invite, _ok, _udp

reactor: Any = _reactor


def _config(tmp: Path, lo: int, size: int, span: int = 200) -> c.EdgeConfig:
    return c.loads(
        f"""
[edge]
state_dir = "{tmp / "state"}"
[listen]
https = "127.0.0.1:0"
backend_sip = "127.0.0.1:0"
[media]
ports = [{lo}, {lo + span - 1}]
bind = "127.0.0.1"
socket_pool = {size}
[[tenants]]
id = "rossi"
domains = ["rossi.example.com"]
backend_sip = "udp:127.0.0.1:5999"
certificate = "self-signed"
""",
        str(tmp),
    )


def _sleep(seconds: float) -> Any:
    return task.deferLater(reactor, seconds, lambda: None)


def _relay(tmp: Path, size: int, span: int = 200) -> tuple[MediaRelay, Timers]:
    timers = Timers(reactor)
    lo = random.randrange(20000, 32000, 2)
    return MediaRelay(
        _config(tmp, lo, size, span), reactor, timers, tenant_media=lambda tid: "bridge"
    ), timers


@pytest_twisted.inlineCallbacks
def _until(condition: Any, timeout: float = 5.0) -> Any:
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        yield _sleep(0.01)
    raise AssertionError("condition not met in time")


def _bindable(port: int) -> bool:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def _call(
    relay: MediaRelay, timers: Timers, client_port: int = 7000, pbx_port: int = 7002
) -> tuple[str, int, int]:
    """An answered call (neither side muxes RTCP: two pairs); its Call-ID and the two relay ports."""
    call_id = uuid.uuid4().hex
    invite = _invite(call_id, client_port)
    assert relay.on_message(Pair(), invite, True, timers.now()) is None
    ok = _ok(call_id, pbx_port)
    assert relay.on_message(Pair(), ok, False, timers.now()) is None
    return (
        call_id,
        SessionDescription.parse(ok.body).media[0].port,
        SessionDescription.parse(invite.body).media[0].port,
    )


@pytest_twisted.inlineCallbacks
def test_a_call_takes_bound_sockets_which_carry_rtp_and_close_at_the_end(tmp_path: Path) -> Any:
    """The pool fills in slices up to its size; a call's legs get pooled ports (nothing bound on
    demand), RTP flows through the handed-over endpoints, the call's end closes them, the pool refills."""
    relay, timers = _relay(tmp_path, 8)
    pool = relay.pool
    client, pbx = _udp(), _udp()
    try:
        yield _until(lambda: pool.pooled == 8)
        allocator = relay.anchor.allocator
        assert allocator.in_use == 8 and relay.ports == {} and relay.free == allocator.capacity
        call_id, client_relay, pbx_relay = _call(relay, timers, client.getsockname()[1], pbx.getsockname()[1])
        assert relay.counters["media_pool_taken"] == 2 and "media_pool_empty" not in relay.counters
        assert "media_bind_errors" not in relay.counters and len(relay.ports) == 4
        assert relay.anchor.ports_in_use == 4
        yield _sleep(0.05)
        got = yield threads.deferToThread(_exchange, client, pbx, client_relay, pbx_relay)
        assert got[0] == rtp_packet(0, 0x1111) and got[1] == rtp_packet(0, 0x2222)
        yield _until(lambda: pool.pooled == 8)  # refilled after the take
        relay.on_end(call_id, "BYE")
        assert relay.ports == {} and relay.anchor.ports_in_use == 0 and allocator.in_use == 8
        yield _sleep(0.05)
        assert _bindable(client_relay) and _bindable(pbx_relay)  # really closed, not kept in the pool
    finally:
        client.close()
        pbx.close()
        relay.stop()
        timers.cancel_all()
    assert relay.anchor.allocator.in_use == 0 and pool.pooled == 0


@pytest_twisted.inlineCallbacks
def test_churn_leaves_no_port_and_an_empty_pool_falls_back_to_binding(tmp_path: Path) -> Any:
    """300 calls, three at once against a pool of 4 sockets: calls beyond the pool bind on demand
    (counted); at the end only the pool's own ports are allocated, and stop gives every one back."""
    relay, timers = _relay(tmp_path, 4)
    pool = relay.pool
    try:
        yield _until(lambda: pool.pooled == 4)
        for _ in range(100):
            calls = [_call(relay, timers)[0] for _ in range(3)]
            for call_id in calls:
                relay.on_end(call_id, "BYE")
            yield _sleep(0)
        assert relay.counters["media_pool_empty"] > 0 and relay.counters["media_pool_taken"] > 0
        assert relay.ports == {} and relay.anchor.ports_in_use == 0 and relay.anchor.sessions == {}
        yield _until(lambda: pool.pooled == 4)
        yield _sleep(0.1)  # the loop closes a transport on its next iteration
        assert relay.anchor.allocator.in_use == pool.pooled
        pooled = [
            p
            for p in range(relay.anchor.allocator.first, relay.anchor.allocator.last + 1)
            if not _bindable(p)
        ]
        assert len(pooled) == 4  # the pool's sockets, and nothing else, are bound
    finally:
        relay.stop()
        timers.cancel_all()
    yield _sleep(0.05)
    assert relay.anchor.allocator.in_use == 0 and pool.pooled == 0
    assert all(_bindable(p) for p in pooled)


@pytest_twisted.inlineCallbacks
def test_pooled_ports_are_never_handed_out_again_and_the_pool_gives_way_when_the_range_runs_low(
    tmp_path: Path,
) -> Any:
    """What TURN takes from the shared allocator is never a pooled port; once the range runs low
    the pool gives its ports back instead of refilling. A stray datagram to a pooled socket is counted."""
    relay, timers = _relay(tmp_path, 8, span=64)  # 64 ports: a pool of 8, a reserve of 16
    pool = relay.pool
    allocator = relay.anchor.allocator
    try:
        yield _until(lambda: pool.pooled == 8)
        pooled = {p for p in range(allocator.first, allocator.last + 1) if not _bindable(p)}
        assert len(pooled) == 8
        stray = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stray.sendto(b"late packet", ("127.0.0.1", min(pooled)))
        stray.close()
        yield _until(lambda: relay.counters.get("media_pool_stray") == 1)
        turn: list[int] = []
        while allocator.free > 16:  # what TURN allocates meanwhile
            alloc = allocator.allocate(rtcp_mux=True)
            assert alloc is not None and alloc.rtp_port not in pooled
            turn.append(alloc.rtp_port)
        _call(relay, timers)  # takes from the pool, whose refill now finds the range low
        yield _until(lambda: pool.pooled == 0)
        assert allocator.in_use == len(turn) + relay.anchor.ports_in_use
    finally:
        relay.stop()
        timers.cancel_all()


@pytest_twisted.inlineCallbacks
def test_the_last_ports_of_the_range_serve_calls_even_when_pooled(tmp_path: Path) -> Any:
    """16 ports, two pooled single ports (one even/odd slot): four calls of two pairs each, in one
    reactor turn, still all fit. The fourth call's second leg finds no pair left, the pool gives its
    slot back with the sockets still bound, and the leg claims them (no bind error)."""
    relay, timers = _relay(tmp_path, 2, span=16)
    try:
        yield _until(lambda: relay.pool.pooled == 2)
        calls = [_call(relay, timers)[0] for _ in range(4)]  # one turn: no refill, no trim in between
        assert relay.anchor.ports_in_use == 16 == relay.anchor.allocator.in_use and relay.pool.pooled == 0
        assert (
            "media_port_bind_failed" not in relay.anchor.counters
            and "media_bind_errors" not in relay.counters
        )
        for call_id in calls:
            relay.on_end(call_id, "BYE")
        yield _sleep(0.05)
        assert relay.anchor.ports_in_use == 0 and relay.ports == {}
    finally:
        relay.stop()
        timers.cancel_all()
    assert relay.anchor.allocator.in_use == 0


@pytest_twisted.inlineCallbacks
def test_socket_pool_zero_binds_on_demand(tmp_path: Path) -> Any:
    """``media.socket_pool = 0``: nothing is bound ahead, a call binds its ports as before."""
    relay, timers = _relay(tmp_path, 0)
    try:
        yield _sleep(0.05)
        assert relay.pool.pooled == 0 and relay.anchor.allocator.in_use == 0
        call_id, _client, _pbx = _call(relay, timers)
        assert len(relay.ports) == 4 and "media_pool_empty" not in relay.counters
        relay.on_end(call_id, "BYE")
        assert relay.anchor.allocator.in_use == 0
    finally:
        relay.stop()
        timers.cancel_all()
