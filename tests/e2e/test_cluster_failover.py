"""An edge pair on one host: Redis, the active node in its own process (killed with SIGKILL), the
standby in this process; an aiortc call through them to an asyncio PBX with an RTP echo.

* failover: the active node is killed mid-call; the standby is promoted (``POST
  /api/cluster/promote``, what keepalived's notify_master script calls), binds the same HTTPS,
  backend SIP and relay ports, takes the call over from Redis in grace; the client reconnects,
  re-registers with its instance id and re-offers with an ICE restart: audio again, same Call-ID,
  the PBX saw no BYE and no re-INVITE; the client's BYE then ends the call cleanly (the PBX gets it,
  every relay port is released).
* Redis stopped mid-call: the active node keeps serving the call and a new one, health says
  replication is off; Redis back: every record is rewritten.
* restarting the old active node as a standby: it catches up (its replica holds the call).

On one host the two nodes cannot hold the same address at once, so the standby binds its listeners
at promotion (docs/ha.md); keepalived and the floating address in network namespaces are not
exercised here.
"""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from helpers.aiortc_call import LoopThread, WsUa, audio_call, audio_window, in_thread, wait_for
from helpers.edge import (
    TOKEN,
    InProcessEdge,
    StopAfter,
    api,
    edge_toml,
    free_tcp_port,
    free_udp_port,
    media_range,
    on_reactor,
    tenant_toml,
)
from helpers.media_pbx import RecordingPbx, start_recording_pbx
from helpers.phone import register_instance
from helpers.redis import Redis
from helpers.tools import require_tool
from helpers.twistd import TwistdEdge
from helpers.wsclient import WSClient, status
from twisted.internet import reactor, threads

pytestmark = pytest.mark.e2e

INSTANCE = "<urn:uuid:4a1c2d3e-4f50-4617-8293-a4b5c6d7e8f9>"
KEY = base64.b64encode(os.urandom(32)).decode()
GRACE = 20.0


class Pair:
    """The PBX with its echo, Redis, the active node (twistd) and the standby (in-process)."""

    def __init__(self, tmp: Path, runner: LoopThread) -> None:
        require_tool("redis-server", "redis-cli")  # fails under CI, skips elsewhere
        self.tmp = tmp
        self.runner = runner
        self.pbx, self.echo, self._close_pbx = runner.run(start_recording_pbx(pbx=AnsweringPbx))
        self.redis = Redis(tmp)
        self.https = free_tcp_port()
        self.backend = free_udp_port()
        self.lo = media_range(1000, 20000, 31000)[0]
        self.state = tmp / "state"
        self.active: TwistdEdge | None = TwistdEdge(self._dir("node1"), self.config("node1", "active"))
        self.standby = self._in_process("node2")
        self.ca = str(self.state / "dev-ca" / "ca.pem")

    def _in_process(self, node: str) -> Any:
        """A standby node on the test's reactor; its EdgeService."""
        return InProcessEdge(self._dir(node), self.config(node, "standby")).service

    def _dir(self, name: str) -> Path:
        d = self.tmp / name
        d.mkdir(exist_ok=True)
        return d

    def config(self, node: str, role: str) -> str:
        guard = (
            "[guard]\nmax_connections_per_ip = 1000\nconnection_rate_per_ip = 1000\n"
            "connection_burst_per_ip = 1000\nrequest_rate_per_ip = 10000\nrequest_burst_per_ip = 10000\n"
        )
        cluster = (
            f'[cluster]\nenabled = true\nredis = "127.0.0.1:{self.redis.port}"\nname = "test"\n'
            f'node_id = "{node}"\nrole = "{role}"\nkey = "{KEY}"\n'
        )
        return edge_toml(
            self.state,
            tenant_toml("rossi", self.pbx.port, media="bridge", origin=True, rate=2000000),
            https=f"127.0.0.1:{self.https}",
            backend_sip=f"127.0.0.1:{self.backend}",
            token=TOKEN,
            sip=f"flow_grace = {GRACE}\n",
            media=(self.lo, self.lo + 999),
            sections=guard + cluster,
        )

    def client(self) -> WSClient:
        return WSClient(self.https, "rossi.example.com", cafile=self.ca, origin="https://rossi.example.com")

    def stop(self) -> Any:
        self.runner.run(_call_async(self._close_pbx))
        if self.active is not None:
            self.active.proc.kill()
            self.active.proc.wait()
        d = self.standby.stopService()

        def done(_: Any) -> None:
            self.redis.stop()

        return d.addBoth(done)


async def _call_async(fn: Callable[[], Any]) -> Any:
    return fn()


def admin(port: int, method: str, path: str) -> tuple[int, Any]:
    return api(port, method, path, {} if method == "POST" else None)  # type: ignore[no-any-return]


def register(ws: WSClient, instance: str = INSTANCE) -> int:
    return status(register_instance(ws, "rossi.example.com", instance))


async def up_call(pair: Pair, instance: str = INSTANCE) -> dict[str, Any]:
    ws = await in_thread(pair.client)
    assert await in_thread(register, ws, instance) == 200
    ua = WsUa(ws, "rossi.example.com")
    pc, tone, counter = await audio_call(ua)
    first = await audio_window(tone, counter, 1.5)
    return {"ws": ws, "ua": ua, "pc": pc, "first": first, "counter": counter}


def replica_counts(pair: Pair) -> dict[str, int]:
    assert pair.standby.cluster is not None
    return dict(pair.standby.cluster.replica.counts())


async def failover_scenario(pair: Pair) -> dict[str, Any]:
    result: dict[str, Any] = {}
    call = await up_call(pair)
    ua: WsUa = call["ua"]
    result["first"] = call["first"]
    await wait_for(
        lambda: on_reactor(lambda: replica_counts(pair)) == {"call": 1, "binding": 1}, 5, "the replica"
    )
    assert pair.active is not None
    killed = time.monotonic()
    pair.active.proc.kill()  # kill -9
    pair.active.proc.wait()
    pair.active = None
    code, body = await in_thread(
        admin, pair.standby.ports["admin"].getHost().port, "POST", "/api/cluster/promote"
    )
    result["promote"] = code, body
    result["promoted_after"] = time.monotonic() - killed
    await call["pc"].close()
    call["ws"].sock.close()
    ws2 = await in_thread(pair.client)
    result["register"] = await in_thread(register, ws2)
    ua.ws = ws2
    pc2, tone, counter = await audio_call(ua)
    await wait_for(lambda: counter.frames["audio"] > 0, 5, "audio again")
    result["media_back_after"] = time.monotonic() - killed
    result["after"] = await audio_window(tone, counter, 1.5)
    result["pbx_methods_before_bye"] = pair.pbx.methods(ua.call_id)
    result["bye"] = await in_thread(ua.bye)
    await wait_for(lambda: "BYE" in pair.pbx.methods(ua.call_id), 5, "the BYE at the PBX")
    result["pbx_methods"] = pair.pbx.methods(ua.call_id)
    result["left"] = on_reactor(
        lambda: (len(pair.standby.sip.core.calls), pair.standby.media.anchor.ports_in_use)
    )
    await pc2.close()
    ws2.close()
    return result


@pytest.fixture
def pair(tmp_path: Path, runner: LoopThread, stop_after: StopAfter) -> Any:
    return stop_after(Pair(tmp_path, runner))


@pytest_twisted.inlineCallbacks
def test_failover_kill_active_call_continues_on_promoted_standby(pair: Pair) -> Any:
    """kill -9 of the active node mid-call: the promoted standby takes the call over from Redis on
    the same ports; the client's reconnect and ICE restart bring audio back; same Call-ID, no BYE and
    no re-INVITE at the PBX until the client's own BYE, which ends the call cleanly."""
    result = yield threads.deferToThread(pair.runner.run, failover_scenario(pair), 120)
    print({k: v for k, v in result.items() if k != "promote"})
    assert result["promote"][0] == 200
    took = result["promote"][1]["cluster"]["took_over"]
    assert took == {"calls": 1, "bindings": 1, "refused": 0}
    assert result["register"] == 200
    sent, got = result["after"]
    assert sent >= 40 and got >= 0.9 * sent, result["after"]
    assert result["media_back_after"] < 5.0
    assert result["pbx_methods_before_bye"] == ["INVITE", "ACK"]
    assert result["bye"] == 200
    assert result["pbx_methods"] == ["INVITE", "ACK", "BYE"]
    assert result["left"] == (0, 0)


def replication_detail(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=5) as resp:
        return str(json.loads(resp.read())["checks"]["replication"]["detail"])


async def redis_down_scenario(pair: Pair) -> dict[str, Any]:
    assert pair.active is not None
    port = pair.active.admin
    await wait_for(lambda: replication_detail(port) == "replication on (active)", 5, "replication on")
    result: dict[str, Any] = {"before": await in_thread(replication_detail, port)}
    call = await up_call(pair)
    pair.redis.stop()
    await wait_for(lambda: replication_detail(port).startswith("replication off"), 5, "health to say off")
    result["down"] = await in_thread(replication_detail, port)
    tone = call["pc"].getSenders()[0].track
    result["old_call_while_down"] = await audio_window(tone, call["counter"], 1.5)
    second = await up_call(pair, "<urn:uuid:5a1c2d3e-4f50-4617-8293-a4b5c6d7e8f9>")
    result["new_call_while_down"] = second["first"]
    pair.redis.start()
    await wait_for(lambda: replication_detail(port) == "replication on (active)", 10, "health to say on")
    await wait_for(
        lambda: len(pair.redis.cli("KEYS", "mcs:test:call:*").split()) == 2, 5, "records rewritten"
    )
    result["records"] = pair.redis.cli("KEYS", "mcs:test:*").split()
    await wait_for(
        lambda: on_reactor(lambda: replica_counts(pair)) == {"call": 2, "binding": 2}, 10, "the standby"
    )
    result["replica"] = on_reactor(lambda: replica_counts(pair))
    # a standby started now (the old active restarted) catches up from Redis
    late = on_reactor(lambda: pair._in_process("node3"))
    try:
        await wait_for(
            lambda: on_reactor(lambda: dict(late.cluster.replica.counts())) == result["replica"],
            10,
            "the late standby",
        )
    finally:
        await in_thread(lambda: threads.blockingCallFromThread(reactor, late.stopService))
    for c_ in (call, second):
        result.setdefault("byes", []).append(await in_thread(c_["ua"].bye))
        await c_["pc"].close()
        c_["ws"].close()
    await wait_for(lambda: not pair.redis.cli("KEYS", "mcs:test:call:*"), 5, "call records deleted")
    return result


@pytest_twisted.inlineCallbacks
def test_failover_redis_down_keeps_serving_and_rewrites_state_when_back(pair: Pair) -> Any:
    """Redis killed mid-call: the active node keeps the call and takes a new one, health says
    replication is off; Redis back (empty): both calls' records are rewritten, the standby and a
    standby started late (the old active restarted) catch up; BYEs delete the records."""
    result = yield threads.deferToThread(pair.runner.run, redis_down_scenario(pair), 120)
    print(result)
    assert result["before"] == "replication on (active)"
    assert result["down"].startswith("replication off (active)")
    for what in ("old_call_while_down", "new_call_while_down"):
        sent, got = result[what]
        assert sent >= 40 and got >= 0.9 * sent, (what, result[what])
    assert len([k for k in result["records"] if ":call:" in k]) == 2
    assert result["replica"] == {"call": 2, "binding": 2}
    assert result["byes"] == [200, 200]


class AnsweringPbx(RecordingPbx):
    """The recording PBX that also keeps the responses it gets (to its own in-dialog requests)."""

    def __init__(self, answer: Any) -> None:
        super().__init__(answer)
        self.responses: list[str] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        text = data.decode(errors="replace")
        if text.startswith("SIP/2.0"):
            self.responses.append(text)
            return
        super().datagram_received(data, addr)


def _headers(text: str, name: str) -> list[str]:
    head = text.partition("\r\n\r\n")[0].split("\r\n")[1:]
    return [
        line.split(":", 1)[1].strip()
        for line in head
        if line.split(":", 1)[0].strip().lower() == name.lower()
    ]


def pbx_bye(pbx: RecordingPbx, invite: str, n: int) -> str:
    """The PBX hangs up the call of ``invite`` (a BYE along the edge's Record-Route)."""
    import uuid

    contact = _headers(invite, "Contact")[0].strip("<>").split(">")[0]
    routes = "".join(f"Route: {r}\r\n" for r in _headers(invite, "Record-Route"))
    return (
        f"BYE {contact} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{pbx.port};branch=z9hG4bK{uuid.uuid4().hex[:12]};rport\r\n"
        f"Max-Forwards: 70\r\n{routes}From: {_headers(invite, 'To')[0]};tag={pbx.tag}\r\n"
        f"To: {_headers(invite, 'From')[0]}\r\nCall-ID: {_headers(invite, 'Call-ID')[0]}\r\n"
        f"CSeq: {100 + n} BYE\r\nContent-Length: 0\r\n\r\n"
    )


CALLS = 100


def signalled_calls(pair: Pair, count: int) -> list[Any]:
    """``count`` agents (one WebSocket and instance each) in a call with a browser-like offer."""
    from helpers.webrtc_peer import WebRtcPeer

    out = []
    for i in range(count):
        ws = pair.client()
        assert register(ws, f"<urn:uuid:00000000-0000-4000-8000-{i:012d}>") == 200
        ua = WsUa(ws, "rossi.example.com")
        code, _answer = ua.invite(WebRtcPeer(("127.0.0.1", 40000 + i)).offer())
        assert code == 200, code
        ua.ack()
        out.append((ws, ua))
    return out


async def many_calls_scenario(pair: Pair) -> dict[str, Any]:
    result: dict[str, Any] = {}
    started = time.monotonic()
    calls = await in_thread(signalled_calls, pair, CALLS)
    result["setup_seconds"] = time.monotonic() - started
    await wait_for(
        lambda: on_reactor(lambda: replica_counts(pair)) == {"call": CALLS, "binding": CALLS},
        10,
        "the replica",
    )
    assert pair.active is not None
    from helpers.edge import metrics, sample

    m = await in_thread(metrics, pair.active.admin)
    result["sync_cpu_seconds"] = sample(m, "mcs_edge_cluster_sync_cpu_seconds_total")
    result["process_cpu_seconds"] = sample(m, "process_cpu_seconds_total")
    result["writes"] = sample(m, "mcs_edge_cluster_writes_total")
    pair.active.proc.kill()
    pair.active.proc.wait()
    pair.active = None
    killed = time.monotonic()
    code, body = await in_thread(
        admin, pair.standby.ports["admin"].getHost().port, "POST", "/api/cluster/promote"
    )
    result["promote"] = code, body["cluster"]["took_over"]
    result["promote_seconds"] = time.monotonic() - killed
    # the PBX's RTP goes on to the same relay ports: the new node receives it on every call
    pbx_ports = on_reactor(
        lambda: [
            leg.port
            for s in pair.standby.media.anchor.sessions.values()
            for leg in s.legs
            if leg.side.name == "PBX"
        ]
    )
    result["pbx_legs"] = len(pbx_ports)
    rtp = bytes([0x80, 0, 0, 1]) + bytes(8) + bytes(160)
    for port in pbx_ports:
        pair.echo.transport.sendto(rtp, ("127.0.0.1", port))
    await wait_for(
        lambda: (
            on_reactor(
                lambda: sum(
                    1
                    for s in pair.standby.media.anchor.sessions.values()
                    for leg in s.legs
                    if leg.side.name == "PBX" and leg.counters.packets > 0
                )
            )
            == CALLS
        ),
        5,
        "PBX RTP on every call",
    )
    # the PBX hangs up every call: the new node answers each dialog from the replicated state
    invites = [r for r in pair.pbx.requests if r.startswith("INVITE ")]
    result["invites"] = len(invites)
    for n, invite in enumerate(invites):
        pair.pbx.transport.sendto(pbx_bye(pair.pbx, invite, n).encode(), ("127.0.0.1", pair.backend))
    await wait_for(
        lambda: sum(1 for r in pair.pbx.responses if " BYE" in _headers(r, "CSeq")[0]) >= CALLS,
        10,
        "BYE answers",
    )
    result["bye_answers"] = sorted(
        {r.split(" ", 2)[1] for r in pair.pbx.responses if " BYE" in _headers(r, "CSeq")[0]}
    )
    result["left"] = on_reactor(
        lambda: (len(pair.standby.sip.core.calls), pair.standby.media.anchor.ports_in_use)
    )
    for ws, _ua in calls:
        ws.close()
    return result


@pytest_twisted.inlineCallbacks
def test_failover_100_calls_all_taken_over(pair: Pair) -> Any:
    """100 calls up, the active node killed: the promoted standby takes over every one (counted),
    receives the PBX's RTP on every call's relay port, and answers the PBX's BYE of every dialog
    with 200; then nothing is left (calls, relay ports)."""
    result = yield threads.deferToThread(pair.runner.run, many_calls_scenario(pair), 300)
    print(result)
    assert result["promote"] == (200, {"calls": CALLS, "bindings": CALLS, "refused": 0})
    assert result["pbx_legs"] == CALLS
    assert result["invites"] == CALLS
    assert result["bye_answers"] == ["200"]
    assert result["left"] == (0, 0)
