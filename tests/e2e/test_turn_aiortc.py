"""A relay-only aiortc call through the edge's TURN: two RTCPeerConnections with
iceTransportPolicy "relay" and credentials from the ice-servers endpoint exchange data-channel
messages and audio, over TURN/UDP and over TURN/TLS on the shared HTTPS port.

aiortc runs in a subprocess with its own asyncio loop, so the test works on every reactor."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from helpers.edge import StopAfter
from helpers.turnedge import TurnEdge
from twisted.internet import threads

HELPER = Path(__file__).resolve().parent.parent / "helpers" / "aiortc_turn_call.py"


@pytest.fixture
def edge(tmp_path: Path, stop_after: StopAfter) -> Any:
    return stop_after(TurnEdge(tmp_path))


def _call(edge: TurnEdge, scheme: str) -> dict[str, Any]:
    doc = edge.ice_servers("agent42")
    servers = []
    for server in doc["iceServers"]:
        urls = [u for u in server["urls"] if u.startswith(scheme)]
        if urls and "username" in server:
            servers.append({**server, "urls": urls})
    assert servers and servers[0]["username"].endswith(":agent42@rossi")
    out = subprocess.run(
        [sys.executable, str(HELPER), json.dumps(servers), "--cafile", edge.ca, "--timeout", "20"],
        capture_output=True,
        text=True,
        timeout=90,
    )
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    assert lines, out.stderr[-3000:]
    result: dict[str, Any] = json.loads(lines[-1])
    result["urls"] = servers[0]["urls"]
    return result


@pytest.mark.parametrize(
    ("scheme", "listener"),
    [("turn:", "udp"), ("turns:", "https")],
    ids=["turn-udp", "turns-on-https-port"],
)
@pytest_twisted.inlineCallbacks
def test_aiortc_relay_only_call(edge: TurnEdge, scheme: str, listener: str) -> Any:
    """Both peers gather only relay candidates on the edge and exchange 5 pings and 25 audio frames."""
    if scheme == "turn:":
        edge_url = f"turn:127.0.0.1:{edge.udp_port}?transport=udp"
    else:
        edge_url = f"turns:localhost:{edge.https_port}?transport=tcp"
    result = yield threads.deferToThread(_call, edge, scheme)
    assert result["urls"][0] == edge_url
    assert result["ok"], result
    assert result["caller"] == ["relay"] and result["callee"] == ["relay"]
    assert all(" typ relay " in cand for cand in result["offer_candidates"])
    counters = edge.turn.listeners[listener].server.counters
    assert counters.allocations_created >= 2  # one per peer, on the listener the URL names
    assert counters.forbidden_peers == 0
