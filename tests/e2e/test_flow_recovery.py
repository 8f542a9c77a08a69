"""Calls that survive a network change: aiortc client, edge, asyncio PBX with an RTP echo.

The client registers with ``+sip.instance``/``reg-id`` (as JsSIP does), places a call and hears its
echo. The test then kills its WebSocket at the edge (an abort, as when the network goes away) and
drops its peer connection. Then:

* recovery: a new WebSocket from another source address (127.0.0.2), REGISTER with the same
  instance, a re-INVITE with an ICE restart from a new aiortc peer connection (new ufrag/pwd, new
  DTLS certificate, new SSRC, new sequence numbers): audio comes back, same Call-ID, the PBX saw no
  BYE and no re-INVITE, and its RTP is one stream (one SSRC, no sequence jump). An incoming call to
  the agent afterwards reaches the new connection through the old Path.
* no reconnect: strangers presenting the old flow token (same tenant without the binding, the same
  instance under another AOR, another tenant) are refused; at grace end the PBX gets a BYE with a
  Reason, every relay port and grace timer is released.
* no instance id: the call ends after grace, as before.

The edge runs in-process on the test's reactor; the peers run in their own asyncio loop thread.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from aiortc import RTCPeerConnection
from helpers.aiortc_call import (
    LoopThread,
    WsUa,
    audio_call,
    audio_window,
    ice_restart,
    in_thread,
    wait_for,
)
from helpers.aiortc_call import check_window as audio_check_window
from helpers.edge import (
    TOKEN,
    InProcessEdge,
    StopAfter,
    edge_toml,
    media_range,
    metrics,
    on_reactor,
    sample,
    tenant_toml,
)
from helpers.media_pbx import start_recording_pbx
from helpers.phone import register_instance
from helpers.wsclient import WSClient, header, status
from twisted.internet import threads

pytestmark = pytest.mark.e2e

GRACE = 6.0
INSTANCE = "<urn:uuid:0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9>"
MIN_RATIO = 0.9


class RecoveryEdge(InProcessEdge):
    """The edge with tenants rossi (bridge) and verdi, sip.flow_grace = GRACE."""

    ORIGIN = True

    def __init__(self, tmp: Path, runner: LoopThread) -> None:
        super().__init__(tmp, runner=runner)
        self.pbx, self.echo, close = runner.run(start_recording_pbx())
        self.loop_closers.append(close)
        tenants = "".join(
            tenant_toml(tid, self.pbx.port, media="bridge", origin=True, rate=2000000)
            for tid in ("rossi", "verdi")
        )
        self.start(
            edge_toml(
                self.state,
                tenants,
                public=True,
                token=TOKEN,
                sip=f"flow_grace = {GRACE}\n",
                media=media_range(200),
            )
        )

    def call_states(self) -> list[str]:
        return [call.state for call in list(self.service.sip.core.calls.calls.values())]

    def relay_state(self) -> dict[str, int]:
        return {
            **super().relay_state(),
            "lost_flows": len(self.service.sip.core.flow_registry.lost),
            "calls": len(self.service.sip.core.calls),
        }


@pytest.fixture
def edge(tmp_path: Path, runner: LoopThread, stop_after: StopAfter) -> Any:
    return stop_after(RecoveryEdge(tmp_path, runner))


def register(ws: WSClient, domain: str, instance: str | None = INSTANCE, user: str = "alice") -> str:
    """REGISTER (with +sip.instance and reg-id unless None); the final response."""
    return register_instance(ws, domain, instance, user)


async def up_call(edge: RecoveryEdge, instance: str | None) -> dict[str, Any]:
    ws = await in_thread(edge.client)
    assert status(await in_thread(register, ws, "rossi.example.com", instance)) == 200
    ua = WsUa(ws, "rossi.example.com")
    pc, tone, counter = await audio_call(ua)
    first = await audio_window(tone, counter, 2.0)
    return {"ws": ws, "ua": ua, "pc": pc, "first": first}


async def lose_connection(edge: RecoveryEdge, call: dict[str, Any]) -> None:
    """The network goes away: the edge's side of the WebSocket is aborted, the peer connection dropped."""
    assert await in_thread(on_reactor, edge.kill_connections) == 1
    await wait_for(lambda: edge.call_states() == ["grace"], 5, "the call to enter grace")
    pc: RTCPeerConnection = call["pc"]
    await pc.close()
    call["ws"].sock.close()


# --------------------------------------------------------------------------------------- recovery


async def recovery_scenario(edge: RecoveryEdge) -> dict[str, Any]:
    call = await up_call(edge, INSTANCE)
    ua: WsUa = call["ua"]
    result: dict[str, Any] = {"first": call["first"]}
    pcs = [call["pc"]]
    try:
        await lose_connection(edge, call)
        echoed_before = len(edge.echo.stream)
        await asyncio.sleep(1.0)  # the client is away for a while
        back = time.monotonic()
        ws2 = await in_thread(edge.client, "rossi", "127.0.0.2")
        result["register"] = status(await in_thread(register, ws2, "rossi.example.com"))
        ua.ws = ws2
        _pc2, tone, counter, result["restart_answer"] = await ice_restart(ua, pcs)
        await wait_for(lambda: counter.frames["audio"] > 0, 5, "audio again")
        result["recovery_seconds"] = time.monotonic() - back
        result["after"] = await audio_window(tone, counter, 2.0)
        result["stream"] = edge.echo.stream[max(0, echoed_before - 50) :]
        # an incoming call to the agent through the Path of its first connection
        register_req = next(r for r in edge.pbx.requests if r.startswith("REGISTER"))
        path = header(register_req, "Path")
        invite_id = uuid.uuid4().hex
        invite = (
            "INVITE sip:alice@x.invalid;transport=ws SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{edge.pbx.port};branch=z9hG4bK{uuid.uuid4().hex[:10]};rport\r\n"
            f"Max-Forwards: 70\r\nRoute: {path}\r\nFrom: <sip:300@rossi.example.com>;tag=in1\r\n"
            f"To: <sip:alice@rossi.example.com>\r\nCall-ID: {invite_id}\r\nCSeq: 1 INVITE\r\n"
            f"Contact: <sip:pbx@127.0.0.1:{edge.pbx.port}>\r\nContent-Length: 0\r\n\r\n"
        )
        edge.pbx.transport.sendto(invite.encode(), ("127.0.0.1", edge.backend))
        incoming = await in_thread(ws2.recv_sip, 5.0)
        result["incoming"] = incoming.split(" ", 1)[0], header(incoming, "Call-ID") == invite_id
        ws2.send(_response_to(incoming, 486, "Busy Here"))
        ack = await in_thread(ws2.recv_sip, 5.0)  # the edge's hop-by-hop ACK of the 486
        assert ack.startswith("ACK "), ack
        result["bye"] = await in_thread(ua.bye)
        result["pbx_methods"] = edge.pbx.methods(ua.call_id)
        result["call_id"] = ua.call_id
        result["metrics"] = await in_thread(metrics, edge.admin)
        ws2.close()
    finally:
        for pc in pcs:
            await pc.close()
    return result


def _response_to(request: str, code: int, reason: str) -> str:
    keep = [
        line
        for line in request.split("\r\n\r\n", 1)[0].split("\r\n")[1:]
        if line.split(":", 1)[0].lower() in ("via", "from", "call-id", "cseq")
    ]
    to = header(request, "To") or ""
    return (
        f"SIP/2.0 {code} {reason}\r\n"
        + "\r\n".join(keep)
        + f"\r\nTo: {to};tag=busy1\r\nContent-Length: 0\r\n\r\n"
    )


def check_window(window: tuple[int, int], what: str) -> None:
    audio_check_window(window, what, 60, MIN_RATIO)


@pytest_twisted.inlineCallbacks
def test_call_survives_reconnect_from_a_new_address(edge: RecoveryEdge) -> Any:
    """WebSocket killed, client back from 127.0.0.2 with the same instance and an ICE restart: audio again, same Call-ID, the PBX saw no BYE or re-INVITE and one RTP stream without a sequence jump; an incoming call reaches the new connection."""
    result = yield threads.deferToThread(edge.runner.run, recovery_scenario(edge), 120)
    print({k: v for k, v in result.items() if k not in ("restart_answer", "stream", "metrics")})
    check_window(result["first"], "before the loss")
    assert result["register"] == 200
    check_window(result["after"], "after recovery")
    assert result["recovery_seconds"] < 3.0
    assert result["pbx_methods"] == ["INVITE", "ACK", "BYE"]  # one INVITE, the final BYE of the client
    stream = result["stream"]
    assert len({ssrc for ssrc, _ in stream}) == 1, "the PBX saw another SSRC"
    jumps = [(b - a) % 65536 for (_, a), (_, b) in itertools.pairwise(stream)]
    assert jumps and max(jumps) <= 3, f"sequence jump toward the PBX: {max(jumps)}"
    assert result["incoming"] == ("INVITE", True)
    assert result["bye"] == 200
    m = result["metrics"]
    assert sample(m, "mcs_edge_flows_replaced_total") == 1
    assert sample(m, "mcs_edge_calls_recovered_total") == 1
    assert sample(m, "mcs_edge_call_recovery_seconds_count") == 1
    assert sample(m, "mcs_edge_calls_lost_after_grace_total") == 0
    state = yield threads.deferToThread(_settled, edge)
    assert state == {"ports_in_use": 0, "sockets": 0, "sessions": 0, "lost_flows": 0, "calls": 0}


def _settled(edge: RecoveryEdge) -> dict[str, int]:
    deadline = time.monotonic() + 10
    while True:
        state = on_reactor(edge.relay_state)
        if (state["sessions"] == 0 and state["calls"] == 0) or time.monotonic() > deadline:
            return state
        time.sleep(0.1)


# ------------------------------------------------------------------------------------ no reconnect


def reinvite_status(ws: WSClient, ua: WsUa, body: str, domain: str) -> int:
    """A re-INVITE of ``ua``'s dialog sent on ``ws`` (a stranger's connection); the final status."""
    stranger = WsUa(ws, domain)
    stranger.call_id, stranger.tag, stranger.to = ua.call_id, ua.tag, ua.to
    stranger.route, stranger.target, stranger.cseq = ua.route, ua.target, ua.cseq + 10
    code, _ = stranger.invite(body)
    return code


async def grace_scenario(edge: RecoveryEdge, instance: str | None) -> dict[str, Any]:
    call = await up_call(edge, instance)
    ua: WsUa = call["ua"]
    result: dict[str, Any] = {"first": call["first"]}
    offer = call["pc"].localDescription.sdp
    await lose_connection(edge, call)
    lost_at = time.monotonic()
    refused: dict[str, int] = {}
    same_tenant = await in_thread(edge.client, "rossi", "127.0.0.3")
    if instance is None:
        assert status(await in_thread(register, same_tenant, "rossi.example.com", None)) == 200
        refused["no instance"] = await in_thread(reinvite_status, same_tenant, ua, offer, "rossi.example.com")
    else:
        refused["same tenant"] = await in_thread(reinvite_status, same_tenant, ua, offer, "rossi.example.com")
        other_aor = await in_thread(edge.client, "rossi", "127.0.0.3")
        assert status(await in_thread(register, other_aor, "rossi.example.com", INSTANCE, "bob")) == 200
        refused["other AOR"] = await in_thread(reinvite_status, other_aor, ua, offer, "rossi.example.com")
        other_tenant = await in_thread(edge.client, "verdi", "127.0.0.3")
        assert status(await in_thread(register, other_tenant, "verdi.example.com")) == 200
        refused["other tenant"] = await in_thread(
            reinvite_status, other_tenant, ua, offer, "verdi.example.com"
        )
    result["refused"] = refused
    result["states_in_grace"] = edge.call_states()
    await wait_for(lambda: "BYE" in edge.pbx.methods(ua.call_id), GRACE + 5, "the BYE to the PBX")
    result["bye_after"] = time.monotonic() - lost_at
    bye = next(r for r in edge.pbx.requests if r.startswith("BYE") and ua.call_id in r)
    result["reason"] = header(bye, "Reason")
    result["pbx_methods"] = edge.pbx.methods(ua.call_id)
    result["metrics"] = await in_thread(metrics, edge.admin)
    return result


@pytest_twisted.inlineCallbacks
def test_no_reconnect_within_grace_ends_the_call_with_a_reason(edge: RecoveryEdge) -> Any:
    """Nobody comes back: strangers with the old token are refused (403 same tenant/other AOR, 430 other tenant); at grace end the PBX gets a BYE with a Reason and every port and timer is released."""
    result = yield threads.deferToThread(edge.runner.run, grace_scenario(edge, INSTANCE), 120)
    print({k: v for k, v in result.items() if k != "metrics"})
    check_window(result["first"], "before the loss")
    assert result["refused"] == {"same tenant": 403, "other AOR": 403, "other tenant": 430}
    assert result["states_in_grace"] == ["grace"]
    assert GRACE - 0.5 <= result["bye_after"] <= GRACE + 3
    assert result["reason"] == 'SIP;cause=430;text="Client connection lost"'
    assert result["pbx_methods"] == ["INVITE", "ACK", "BYE"]
    assert sample(result["metrics"], "mcs_edge_calls_lost_after_grace_total") == 1
    state = yield threads.deferToThread(_settled, edge)
    assert state == {"ports_in_use": 0, "sockets": 0, "sessions": 0, "lost_flows": 0, "calls": 0}


@pytest_twisted.inlineCallbacks
def test_client_without_instance_id_gets_the_old_behaviour(edge: RecoveryEdge) -> Any:
    """A client registered without +sip.instance cannot take its call back from a new connection (403); the call ends after grace with a BYE to the PBX."""
    result = yield threads.deferToThread(edge.runner.run, grace_scenario(edge, None), 120)
    print({k: v for k, v in result.items() if k != "metrics"})
    assert result["refused"] == {"no instance": 403}
    assert result["pbx_methods"] == ["INVITE", "ACK", "BYE"]
    state = yield threads.deferToThread(_settled, edge)
    assert state == {"ports_in_use": 0, "sockets": 0, "sessions": 0, "lost_flows": 0, "calls": 0}
