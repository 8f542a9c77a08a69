"""coturn's own test client (turnutils_uclient) allocates and relays through the edge's TURN over
UDP, TCP and TLS (on the shared HTTPS port), echoed by turnutils_peer."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from helpers.edge import StopAfter
from helpers.ports import free_udp_port
from helpers.turnedge import TurnEdge
from twisted.internet import threads

pytestmark = pytest.mark.requires_tool(
    "turnutils_uclient", "turnutils_peer", why="Debian coturn, installed by scripts/install-test-deps"
)

PEER_IP = "127.0.0.2"


@pytest.fixture
def edge(tmp_path: Path, stop_after: StopAfter) -> Any:
    return stop_after(TurnEdge(tmp_path))


@pytest.fixture
def peer():  # type: ignore[no-untyped-def]
    """turnutils_peer: a UDP echo server on 127.0.0.2."""
    port = free_udp_port(PEER_IP)
    proc = subprocess.Popen(
        ["turnutils_peer", "-L", PEER_IP, "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.3)
    yield port
    proc.terminate()
    proc.wait(5)


def _uclient(
    edge: TurnEdge, peer_port: int, flags: list[str], port: int, messages: int = 20
) -> dict[str, Any]:
    username, password = edge.creds("uclient")
    cmd = [
        "turnutils_uclient",
        *flags,
        "-c",  # no RTCP allocation (no EVEN-PORT reservations)
        "-n",
        str(messages),
        "-l",
        "180",
        "-e",
        PEER_IP,
        "-r",
        str(peer_port),
        "-p",
        str(port),
        "-u",
        username,
        "-w",
        password,
        "127.0.0.1",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    text = out.stdout + out.stderr
    sent = re.findall(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)\n", text)
    lost = re.search(r"Total lost packets (\d+)", text)
    return {
        "rc": out.returncode,
        "sent": int(sent[-1][0]) if sent else -1,
        "received": int(sent[-1][1]) if sent else -1,
        "lost": int(lost.group(1)) if lost else -1,
        "channel_errors": text.count("channel bind: error"),
        "text": text[-2000:],
    }


@pytest.mark.parametrize(
    ("flags", "listener"),
    [([], "udp"), (["-t"], "tcp"), (["-t", "-S"], "https")],
    ids=["udp", "tcp", "tls-on-https-port"],
)
@pytest_twisted.inlineCallbacks
def test_uclient_relays_through_the_edge(edge: TurnEdge, peer: int, flags: list[str], listener: str) -> Any:
    """turnutils_uclient gets an allocation and 20 messages come back from the peer, none lost."""
    port = edge.https_port if listener == "https" else (edge.tcp_port if listener == "tcp" else edge.udp_port)
    result = yield threads.deferToThread(_uclient, edge, peer, flags, port)
    assert result["sent"] == 20 and result["received"] == 20, result["text"]
    assert result["lost"] == 0 and result["channel_errors"] == 0, result["text"]
    counters = edge.turn.listeners[listener].server.counters
    assert counters.allocations_created >= 1
    if listener == "udp":
        # uclient deletes one allocation with Refresh 0 and leaves the other to expire (or to shutdown)
        assert counters.allocations_deleted >= 1
        assert len(edge.turn.pool) == counters.allocations_created - counters.allocations_deleted
        return
    # on TCP/TLS the connection's end ends its allocations: nothing left on the relay pool
    for _ in range(100):
        if len(edge.turn.pool) == 0:
            break
        yield threads.deferToThread(time.sleep, 0.05)
    assert len(edge.turn.pool) == 0 and edge.turn.pool.ports.in_use == 0


def _uclient_raw(edge: TurnEdge, username: str, password: str, peer_ip: str) -> str:
    cmd = ["turnutils_uclient", "-c", "-n", "3", "-e", peer_ip, "-r", "9", "-p", str(edge.udp_port)]
    cmd += ["-u", username, "-w", password, "127.0.0.1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    return out.stdout + out.stderr


@pytest_twisted.inlineCallbacks
def test_uclient_with_expired_credentials_is_refused(edge: TurnEdge) -> Any:
    """REST credentials whose expiry has passed never get an allocation (401 every time)."""
    username, password = edge.creds("late", ttl=-10)
    text = yield threads.deferToThread(_uclient_raw, edge, username, password, PEER_IP)
    assert "Cannot complete Allocation" in text, text[-2000:]
    counters = edge.turn.listeners["udp"].server.counters
    assert counters.allocations_created == 0 and counters.auth_failures >= 1


@pytest.mark.parametrize("peer_ip", ["10.1.2.3", "127.0.0.1"], ids=["10/8", "loopback"])
@pytest_twisted.inlineCallbacks
def test_uclient_relay_to_private_peer_is_403(edge: TurnEdge, peer_ip: str) -> Any:
    """Tenant bianchi (no turn_peers) asking to relay to 10.1.2.3 or 127.0.0.1 gets 403 Forbidden."""
    username, password = edge.creds("nosy", tenant="bianchi")
    text = yield threads.deferToThread(_uclient_raw, edge, username, password, peer_ip)
    assert "error 403 (Forbidden)" in text, text[-2000:]
    assert edge.turn.listeners["udp"].server.counters.forbidden_peers >= 1
