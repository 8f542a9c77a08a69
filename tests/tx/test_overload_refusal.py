"""The fast refusal under overload through the SIP WebSocket: one read, one write, the right 503s.

A real router (tx/sip/router.py) whose gate (the configured defaults: refusal by queue age) is late,
under the WebSocket protocol (tx/sip/websocket.py) on a StringTransport; client frames are masked
as browsers send them."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from mcs_edge.core.sip.message import Response, parse
from mcs_edge.core.tenants import TenantTable
from mcs_edge.tx.ops.loadprobe import LoadProbe, overload_settings
from mcs_edge.tx.sip.router import SipRouter
from mcs_edge.tx.sip.websocket import SipWebSocketFactory, SipWebSocketProtocol
from mcs_edge.tx.timers import Timers

from .test_overload import _in_dialog, _register
from .test_sip_router import CFG, FakeUDP, _invite


class _Wire(StringTransport):
    """Counts the writes the protocol makes below it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)


class _Stack:
    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.timers = Timers(self.clock, now=self.clock.seconds)
        self.router = SipRouter(CFG, TenantTable(CFG.tenants), self.timers)
        self.udp = FakeUDP()
        self.router.udp = self.udp
        self.probe = LoadProbe(self.timers, overload_settings(CFG), CFG.overload.probe_interval)
        self.router.overload = self.probe.gate
        self.probe.start()
        factory = SipWebSocketFactory(self.router, CFG, self.clock, self.timers.now)
        self.proto = SipWebSocketProtocol(factory, CFG.tenants[0], ("192.0.2.7", 40000))
        self.wire = _Wire()
        self.proto.makeConnection(self.wire)
        self.proto.start()

    def overloaded(self) -> None:
        """A long turn measured by the probe, then 0.2 s into the next one (module docstring of
        core/load/control.py: the age rule refuses from the second long turn)."""
        self.clock.pump([0.01] * 5)
        self.clock.advance(self.probe.interval + 0.2)
        self.clock.rightNow += 0.2
        self.wire.clear()
        self.wire.writes = 0

    def read(self, *messages: bytes) -> None:
        self.proto.dataReceived(b"".join(_masked(m) for m in messages))

    def frames(self) -> list[tuple[int, bytes]]:
        return _frames(self.wire.value())

    def stop(self) -> None:
        self.probe.stop()


def _masked(payload: bytes, opcode: int = 1) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    head = (
        bytes((0x80 | opcode, 0x80 | n)) if n < 126 else bytes((0x80 | opcode, 0x80 | 126, n >> 8, n & 0xFF))
    )
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _frames(data: bytes) -> list[tuple[int, bytes]]:
    """Server frames (unmasked, RFC 6455 s.5.1) as (opcode, payload)."""
    out = []
    pos = 0
    while pos < len(data):
        opcode, n = data[pos] & 0x0F, data[pos + 1] & 0x7F
        pos += 2
        if n == 126:
            n = int.from_bytes(data[pos : pos + 2], "big")
            pos += 2
        out.append((opcode, data[pos : pos + n]))
        pos += n
    return out


def _fields(data: bytes) -> dict[str, Any]:
    msg = parse(data)
    return {
        "via": msg.headers.get_all("via"),
        "from": msg.headers.get("from"),
        "to": msg.headers.get("to"),
        "call-id": msg.call_id,
        "cseq": msg.headers.get("cseq"),
    }


def test_refusals_of_one_read_are_one_write_and_echo_the_request() -> None:
    """Under overload the new REGISTERs and INVITE of one read are answered 503 + Retry-After in one
    write below (one TLS record), each echoing the request's Via, From, To (tag added), Call-ID and
    CSeq (RFC 3261 s.8.2.6); the re-INVITE, BYE, ACK and CANCEL read with them are never refused."""
    s = _Stack()
    s.overloaded()
    cancel = _invite().replace(b"INVITE sip:", b"CANCEL sip:").replace(b"1 INVITE", b"1 CANCEL")
    requests = [_register(1), _invite(), _register(2), _in_dialog("INVITE", 3), _in_dialog("BYE", 4)]
    requests += [_in_dialog("ACK", 5), cancel]
    s.read(*requests)
    assert s.wire.writes == 1
    answers = [parse(p) for op, p in s.frames() if op == 1]
    refused = [a for a in answers if isinstance(a, Response) and a.status == 503]
    assert len(refused) == 3
    for answer, request in zip(refused, (_register(1), _invite(), _register(2)), strict=True):
        expected = _fields(request)
        got = {
            "via": answer.headers.get_all("via"),
            "from": answer.headers.get("from"),
            "to": answer.headers.get("to"),
            "call-id": answer.call_id,
            "cseq": answer.headers.get("cseq"),
        }
        assert got["via"] == expected["via"] and got["from"] == expected["from"]
        assert got["call-id"] == expected["call-id"] and got["cseq"] == expected["cseq"]
        assert got["to"].startswith(expected["to"] + ";tag=") and answer.to.tag
        assert answer.headers.get("retry-after") == str(CFG.overload.retry_after)
    sent = [d.split(b" ", 1)[0] for d, _addr in s.udp.sent]
    assert sent.count(b"INVITE") == 1 and b"BYE" in sent and b"ACK" in sent  # the re-INVITE, BYE, ACK
    assert b"REGISTER" not in sent
    # the CANCEL reached the proxy (481: its INVITE was refused statelessly), never a 503
    assert [a.status for a in answers if isinstance(a, Response) and a.cseq.method == "CANCEL"] == [481]
    assert s.router.shed["queue_age:REGISTER"] == 2 and s.router.shed["queue_age:INVITE"] == 1
    s.stop()


def test_malformed_new_requests_do_not_break_the_fast_refusal() -> None:
    """Under overload, new requests the fast path cannot answer (no Call-ID, a folded To, no
    header section, garbage after the request line) go on to the full parser, which answers or
    drops them; nothing raises, the connection stays open and the next REGISTER still gets its 503."""
    s = _Stack()
    s.overloaded()
    no_call_id = _register(1).replace(b"Call-ID: reg1\r\n", b"")
    folded = _invite().replace(b"To: <sip:200@rossi.example.com>", b"To:\r\n <sip:200@rossi.example.com>")
    garbage = [no_call_id, folded, b"REGISTER sip:x SIP/2.0\r\n", b"INVITE \x01\x02\r\n\r\n", b"REGISTER"]
    garbage += [b"INVITE sip:a SIP/2.0\r\nVia:\r\nFrom: a\r\nTo: b\r\ni: c\r\nCSeq: 1 INVITE\r\n\r\n"]
    for junk in garbage:
        s.read(junk)
        assert s.proto.open
    s.proto.dataReceived(_masked(b"INVITE \xff\xfe\r\nVia: \x80\r\n\r\n", opcode=2))  # binary: any octets
    assert s.proto.open
    s.wire.clear()
    s.read(_register(7))
    answers = [parse(p) for op, p in s.frames() if op == 1]
    assert len(answers) == 1 and isinstance(answers[0], Response) and answers[0].status == 503
    assert answers[0].call_id == "reg7"
    s.stop()


def test_refusals_before_a_close_frame_in_the_same_read_are_written_before_it() -> None:
    """A read with a REGISTER then the peer's close frame: the 503 goes out, then the echoed close."""
    s = _Stack()
    s.overloaded()
    s.proto.dataReceived(_masked(_register(1)) + _masked((1000).to_bytes(2, "big"), opcode=8))
    frames = s.frames()
    assert [op for op, _p in frames] == [1, 8]
    answer = parse(frames[0][1])
    assert isinstance(answer, Response) and answer.status == 503
    assert s.wire.disconnecting or not s.proto.open
    s.stop()


def test_answers_outside_a_client_read_are_written_at_once() -> None:
    """Not overloaded: a read of two OPTIONS is forwarded and nothing is refused; each answer from the
    PBX, read on its own later, is written at once (no batch is left open after a read)."""
    s = _Stack()
    from .test_sip_router import _options

    s.read(_options("z9hG4bKo1"), _options("z9hG4bKo2"))
    assert len(s.udp.sent) == 2 and s.router.shed == {"INVITE": 0, "REGISTER": 0}
    for data, addr in list(s.udp.sent):
        head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        via = [ln for ln in head if ln.lower().startswith(b"via:")]
        keep = [ln for ln in head if ln.split(b":", 1)[0].lower() in (b"from", b"call-id", b"cseq")]
        to = next(ln for ln in head if ln.lower().startswith(b"to:")) + b";tag=p"
        answer = b"\r\n".join([b"SIP/2.0 200 OK", *via, *keep, to, b"Content-Length: 0", b"", b""])
        s.router.data_from_backend(answer, addr, "udp")
    assert [parse(p).status for op, p in s.frames() if op == 1] == [200, 200]  # type: ignore[union-attr]
    assert s.wire.writes == 2
    s.stop()
