"""Call churn leaves nothing behind: no call, flow, relay port, transaction, timer or descriptor.

A smaller sibling of ``bench/bench_latency.py``'s churn run: WebSocket clients place and end calls
through the edge to a UDP PBX stand-in, then leave; the RFC 3261 timers run out (T1 = 50 ms here, so
Timers L/M end 3.2 s later) and the admin API and ``/metrics`` must show the idle figures again.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest_twisted
from helpers.edge import LocalEdge, api, metrics, sample
from helpers.phone import Phone
from twisted.internet import threads

CALLS_PER_CLIENT = 10
CLIENTS = 3


def _leftovers(e: LocalEdge) -> dict[str, float]:
    m = metrics(e.admin)
    _code, status = api(e.admin, "GET", "/api/status")
    _code, calls = api(e.admin, "GET", "/api/calls")
    _code, conns = api(e.admin, "GET", "/api/connections")
    return {
        "calls": status["calls"] + len(calls["calls"]),
        "connections": status["connections"] + len(conns["connections"]),
        "ports_used": sample(m, "mcs_edge_media_ports", state="used"),
        "ports_open": sample(m, "mcs_edge_media_ports_open"),
        "transactions": sample(m, "mcs_edge_sip_transactions_held"),
        "timers": sample(m, "mcs_edge_timers"),
        "fds": len(os.listdir("/proc/self/fd")),
    }


def _churn(e: LocalEdge) -> int:
    done = 0
    for _ in range(CLIENTS):
        ws = e.client()
        phone = Phone(ws, "rossi.example.com")
        phone.register()
        for _ in range(CALLS_PER_CLIENT):
            call = phone.invite()
            assert call.final == 200
            assert phone.bye(call) == 200
            done += 1
        ws.close()
    return done


def _wait_idle(e: LocalEdge, idle: dict[str, float], timeout: float = 20.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        now = _leftovers(e)
        if all(now[k] <= idle[k] for k in idle) or time.monotonic() > deadline:
            return now
        time.sleep(0.2)


@pytest_twisted.inlineCallbacks
def test_churn_leaves_no_call_port_transaction_timer_or_descriptor(tmp_path: Path) -> Any:
    """30 calls with media over 3 connections, then everyone leaves: every figure is back to idle."""
    # flow_grace = 1: the RFC 5626 bindings of the departed clients are kept for the grace period
    # (a client may come back over a new connection, issue 15), then forgotten with their timer
    e = LocalEdge(
        tmp_path, tail="[sip]\nt1 = 0.05\nflow_grace = 1\n[tenants.limits]\nmax_connections = 100\n"
    )
    try:
        idle = yield threads.deferToThread(_leftovers, e)
        assert idle["calls"] == idle["connections"] == idle["ports_used"] == idle["transactions"] == 0
        done = yield threads.deferToThread(_churn, e)
        assert done == CALLS_PER_CLIENT * CLIENTS
        assert e.service.media.anchor.allocator.in_use == 0  # BYE released both legs at once
        after = yield threads.deferToThread(_wait_idle, e, idle)
        left = {k: (after[k], idle[k]) for k in idle if after[k] > idle[k]}
        assert not left, f"left behind (now, idle): {left}"
        assert e.service.sip.core.pairs == 0 and len(e.service.sip.core.layer) == 0
    finally:
        yield e.stop()
