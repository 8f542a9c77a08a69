"""The PBX OPTIONS check end to end: up/down in the admin API, /metrics and logs; 503 at once while down."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest_twisted
from helpers.edge import LocalEdge, api, metrics, sample, until
from helpers.wsclient import WSClient, header, status
from twisted.internet import threads


def _backend_state(edge: LocalEdge) -> str | None:
    code, body = api(edge.admin, "GET", "/api/tenants")
    assert code == 200
    row = next(t for t in body["tenants"] if t["id"] == "rossi")
    return row.get("backend", {}).get("state")


def _invite(ws: WSClient) -> tuple[str, float]:
    started = time.monotonic()
    ws.send(
        f"INVITE sip:200@rossi.example.com SIP/2.0\r\nVia: SIP/2.0/WSS x.invalid;branch=z9hG4bK{uuid.uuid4().hex[:12]}\r\n"
        "Max-Forwards: 70\r\nTo: <sip:200@rossi.example.com>\r\nFrom: <sip:alice@rossi.example.com>;tag=c1\r\n"
        f"Call-ID: {uuid.uuid4().hex}\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@x.invalid;transport=ws;ob>\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    while True:
        msg = ws.recv_sip(timeout=10)
        if status(msg) >= 200:
            return msg, time.monotonic() - started


@pytest_twisted.inlineCallbacks
def test_pbx_down_and_up_again_is_seen_and_refuses_calls_at_once(tmp_path: Path) -> Any:
    """OPTIONS every second: up; the PBX goes silent: down in API and metrics, INVITE 503 + Retry-After at
    once without reaching it; it answers again: up, calls pass."""
    edge = LocalEdge(tmp_path, tail="backend_check_interval = 1\n")
    try:
        yield until(lambda: _backend_state(edge) == "up", step=0.1, threaded=True)
        m = yield threads.deferToThread(metrics, edge.admin)
        assert sample(m, "mcs_edge_backend_up", tenant="rossi") == 1
        assert "OPTIONS" in edge.pbx.methods()

        edge.pbx._answer = lambda *a: None  # type: ignore[method-assign]  # the PBX stops answering
        yield until(lambda: _backend_state(edge) == "down", timeout=10, step=0.1, threaded=True)
        m = yield threads.deferToThread(metrics, edge.admin)
        assert sample(m, "mcs_edge_backend_up", tenant="rossi") == 0
        ws = yield threads.deferToThread(edge.client)
        final, took = yield threads.deferToThread(_invite, ws)
        assert status(final) == 503 and header(final, "Retry-After") and took < 1.0, final
        assert "INVITE" not in edge.pbx.methods()

        del edge.pbx._answer  # answering again
        yield until(lambda: _backend_state(edge) == "up", step=0.1, threaded=True)
        final, _took = yield threads.deferToThread(_invite, ws)
        assert status(final) == 200, final
        ws.close()
    finally:
        yield edge.stop()
