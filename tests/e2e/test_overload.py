"""Overload end to end: a WSS client's new INVITE and REGISTER read late in a reactor turn get 503 +
Retry-After before they are parsed; requests within a dialog, ACK, CANCEL and BYE in the same read go on.

Turns are made long by the edge's own handling of one message (an OPTIONS whose handling takes
0.2 s stands in for a turn full of work), each read in the turn after the previous one. Three such
turns in a row: the first refuses nothing (one long turn is not overload), the probe measures it
(under uvloop before the next turn's reads, under the plain asyncio loop after them: hence three),
and every message read after the stall of the last is 0.2 s older than the probe's last run, past
the default ``overload.max_queue_age`` (0.03 s), while the turn before was that long too.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest_twisted
from helpers.edge import LocalEdge, StopAfter, metrics
from helpers.wsclient import WSClient, header, status
from twisted.internet import threads

DOMAIN = "rossi.example.com"


def _request(
    method: str,
    call_id: str,
    cseq: int,
    *,
    to_tag: str = "",
    uri: str = f"sip:200@{DOMAIN}",
    branch: str | None = None,
    route: str = "",
    extra: str = "",
) -> str:
    to = f"<sip:200@{DOMAIN}>" + (f";tag={to_tag}" if to_tag else "")
    return (
        f"{method} {uri} SIP/2.0\r\nVia: SIP/2.0/WSS x.invalid;branch={branch or 'z9hG4bK' + uuid.uuid4().hex[:12]}\r\n"
        f"Max-Forwards: 70\r\n{route}To: {to}\r\nFrom: <sip:alice@{DOMAIN}>;tag=a{call_id[:6]}\r\n"
        f"Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContact: <sip:alice@x.invalid;transport=ws;ob>\r\n"
        f"{extra}Content-Length: 0\r\n\r\n"
    )


def _register(cseq: int) -> str:
    return (
        f"REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/WSS x.invalid;branch=z9hG4bK{uuid.uuid4().hex[:12]}\r\n"
        f"Max-Forwards: 70\r\nTo: <sip:alice@{DOMAIN}>\r\nFrom: <sip:alice@{DOMAIN}>;tag=r1\r\n"
        f"Call-ID: reg-alice\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:alice@x.invalid;transport=ws>;expires=300\r\n"
        "Content-Length: 0\r\n\r\n"
    )


def _final(ws: WSClient, timeout: float = 10) -> str:
    while True:
        msg = ws.recv_sip(timeout=timeout)
        if status(msg) >= 200:
            return msg


def _answers(ws: WSClient, count: int) -> dict[str, str]:
    """``count`` final responses, by CSeq (number and method)."""
    out: dict[str, str] = {}
    while len(out) < count:
        msg = _final(ws)
        out[header(msg, "CSeq") or ""] = msg
    return out


@pytest_twisted.inlineCallbacks
def test_overloaded_edge_refuses_new_invite_and_register_never_dialog_ack_cancel_bye(
    tmp_path: Path, stop_after: StopAfter
) -> Any:
    """After long turns in a row (0.2 s of work each), the new INVITE and REGISTER read late in the
    last get 503
    with Retry-After (the PBX never sees them, the CANCEL of that INVITE gets 481); the re-INVITE, ACK
    and BYE of an established call reach the PBX and are answered; the refusals are counted by reason;
    once the turn is over a new REGISTER is served again."""
    edge = stop_after(LocalEdge(tmp_path, tail="[overload]\nprobe_idle_interval = 0\n"))
    router = edge.service.sip
    served = router.data_from_client
    stalled = [threading.Event() for _ in range(3)]

    def slow(flow: Any, data: bytes) -> None:  # one message whose handling fills the turn
        if data.startswith(b"OPTIONS ") and b"Call-ID: stall-" in data:
            stalled[int(data.split(b"Call-ID: stall-", 1)[1][:1])].set()
            time.sleep(0.2)
        served(flow, data)

    router.data_from_client = slow  # type: ignore[method-assign]

    def scenario() -> dict[str, Any]:
        ws = edge.client()
        try:
            ws.send(_register(1))
            assert status(_final(ws)) == 200
            call = "call-" + uuid.uuid4().hex[:8]
            ws.send(_request("INVITE", call, 1))
            ok = _final(ws)
            assert status(ok) == 200
            to_tag = (header(ok, "To") or "").split("tag=", 1)[1]
            rr = [r.strip() for r in (header(ok, "Record-Route") or "").split(",") if r.strip()]
            route = f"Route: {', '.join(rr)}\r\n" if rr else ""
            pbx_contact = (header(ok, "Contact") or "").strip("<>").split(">")[0]
            dialog = {"to_tag": to_tag, "uri": pbx_contact, "route": route}
            new_call = "new-" + uuid.uuid4().hex[:8]
            new_branch = "z9hG4bK" + uuid.uuid4().hex[:12]
            for n in (0, 1):  # long turns, each read while the one before is under way
                ws.send(_request("OPTIONS", f"stall-{n}", n + 1, uri=f"sip:{DOMAIN}"))
                assert stalled[n].wait(5)
            ws.send_many(  # read in the next turn, itself long
                [
                    _request("OPTIONS", "stall-2", 3, uri=f"sip:{DOMAIN}"),
                    _request("ACK", call, 1, **dialog),
                    _request("INVITE", new_call, 1, branch=new_branch),
                    _register(2),
                    _request("INVITE", call, 2, **dialog),  # re-INVITE
                    _request("CANCEL", new_call, 1, branch=new_branch),
                ]
            )
            answers = _answers(ws, 7)  # three OPTIONS, new INVITE, REGISTER, re-INVITE, CANCEL
            ws.send(_request("ACK", call, 2, **dialog))
            ws.send(_request("BYE", call, 3, **dialog))
            bye = _final(ws)
            ws.send(_register(3))
            after = _final(ws)
            return {"answers": answers, "bye": bye, "after": after, "stalled": stalled[2].is_set()}
        finally:
            ws.close()

    got = yield threads.deferToThread(scenario)
    answers = got["answers"]
    assert got["stalled"]
    for cseq in ("1 INVITE", "2 REGISTER"):
        msg = answers[cseq]
        assert status(msg) == 503, msg
        assert header(msg, "Retry-After") == "5"
    assert status(answers["1 CANCEL"]) == 481
    assert status(answers["2 INVITE"]) == 200  # the re-INVITE went through
    assert status(got["bye"]) == 200
    assert status(got["after"]) == 200
    methods = edge.pbx.methods()
    assert methods.count("REGISTER") == 2  # the first and the one after the turn, not the refused one
    assert methods.count("INVITE") == 2  # the call and its re-INVITE, not the new INVITE
    assert methods.count("ACK") == 2 and methods.count("BYE") == 1 and "CANCEL" not in methods
    m = yield threads.deferToThread(metrics, edge.admin)
    refused = {
        dict(labels)["method"]: v
        for (name, labels), v in m.items()
        if name == "mcs_edge_overload_refused_total" and dict(labels)["reason"] == "queue_age"
    }
    assert refused == {"INVITE": 1.0, "REGISTER": 1.0}
