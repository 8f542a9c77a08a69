"""A scripted SIP-over-WebSocket softphone for tests (blocking; run it in a thread)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from helpers.wsclient import WSClient, header, headers, status

SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n"


@dataclass
class Call:
    call_id: str
    from_tag: str
    to: str  # To header of the 2xx (with the PBX's tag)
    target: str  # remote Contact
    route: str  # Route header value for in-dialog requests
    cseq: int = 1
    final: int = 0


class Phone:
    def __init__(self, ws: WSClient, domain: str, user: str = "alice") -> None:
        self.ws = ws
        self.domain = domain
        self.user = user
        self.instance = uuid.uuid4()

    def _via(self) -> str:
        return f"Via: SIP/2.0/WSS x.invalid;branch=z9hG4bK{uuid.uuid4().hex[:12]}\r\n"

    def register(self, auth: bool = False) -> str:
        """REGISTER once (with a digest Authorization when ``auth``); returns the final response."""
        u, d = self.user, self.domain
        self.reg_cseq = getattr(self, "reg_cseq", 0) + 1
        self.reg_call_id = getattr(self, "reg_call_id", uuid.uuid4().hex)
        authz = (
            f'Authorization: Digest username="{u}", realm="{d}", nonce="5d8a0cbf9d7f", uri="sip:{d}", response="00"\r\n'
            if auth
            else ""
        )
        self.ws.send(
            f"REGISTER sip:{d} SIP/2.0\r\n{self._via()}Max-Forwards: 69\r\nTo: <sip:{u}@{d}>\r\n"
            f"From: <sip:{u}@{d}>;tag=r{uuid.uuid4().hex[:6]}\r\nCall-ID: {self.reg_call_id}\r\n"
            f"CSeq: {self.reg_cseq} REGISTER\r\n"
            f'Contact: <sip:{u}@x.invalid;transport=ws>;+sip.ice;reg-id=1;+sip.instance="<urn:uuid:{self.instance}>";expires=600\r\n'
            f"Supported: path, outbound\r\n{authz}Content-Length: 0\r\n\r\n"
        )
        return self.ws.recv_sip(timeout=10, skip_provisional=True)

    def invite(self, number: str = "200") -> Call:
        """Place a call and ACK its 2xx; ``Call.final`` is the final status."""
        call_id = uuid.uuid4().hex
        tag = "c" + uuid.uuid4().hex[:6]
        d = self.domain
        via = self._via()
        self.ws.send(
            f"INVITE sip:{number}@{d} SIP/2.0\r\n{via}Max-Forwards: 70\r\nTo: <sip:{number}@{d}>\r\n"
            f"From: <sip:{self.user}@{d}>;tag={tag}\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
            f"Contact: <sip:{self.user}@x.invalid;transport=ws;ob>\r\nContent-Type: application/sdp\r\n"
            f"Content-Length: {len(SDP)}\r\n\r\n{SDP}"
        )
        while True:
            msg = self.ws.recv_sip(timeout=10)
            if status(msg) >= 200:
                break
        call = Call(call_id, tag, header(msg, "To") or "", "", "", final=status(msg))
        if call.final >= 300:
            return call
        rr = [r.strip() for line in headers(msg, "Record-Route") for r in line.split(",")]
        call.route = ", ".join(reversed(rr))
        call.target = (header(msg, "Contact") or "").strip().lstrip("<").split(">")[0]
        self._send_in_dialog(call, "ACK", 1)
        return call

    def _send_in_dialog(self, call: Call, method: str, cseq: int) -> None:
        route = f"Route: {call.route}\r\n" if call.route else ""
        self.ws.send(
            f"{method} {call.target} SIP/2.0\r\n{self._via()}Max-Forwards: 70\r\n{route}To: {call.to}\r\n"
            f"From: <sip:{self.user}@{self.domain}>;tag={call.from_tag}\r\nCall-ID: {call.call_id}\r\n"
            f"CSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
        )

    def bye(self, call: Call) -> int:
        call.cseq += 1
        self._send_in_dialog(call, "BYE", call.cseq)
        while True:
            msg = self.ws.recv_sip(timeout=10)
            if msg.startswith("SIP/2.0") and (header(msg, "CSeq") or "").endswith("BYE"):
                return status(msg)

    def answer_bye(self, timeout: float = 10) -> str:
        """Wait for a BYE from the far end and answer 200; returns the BYE."""
        while True:
            msg = self.ws.recv_sip(timeout=timeout)
            if msg.startswith("BYE "):
                break
        respond_ok(self.ws, msg)
        return msg


def answer_incoming(ws: WSClient) -> str:
    """Take the next request (an INVITE): 180, 200 with an SDP, expect ACK then BYE, answer the BYE 200.
    Returns the INVITE."""
    inv = ws.recv_sip(timeout=10)
    assert inv.startswith("INVITE "), inv
    base = "".join(f"Via: {v}\r\n" for v in headers(inv, "Via"))
    base += f"From: {header(inv, 'From')}\r\nTo: {header(inv, 'To')};tag=cl1\r\nCall-ID: {header(inv, 'Call-ID')}\r\nCSeq: {header(inv, 'CSeq')}\r\n"
    base += "".join(f"Record-Route: {r}\r\n" for r in headers(inv, "Record-Route"))
    ws.send(f"SIP/2.0 180 Ringing\r\n{base}Content-Length: 0\r\n\r\n")
    sdp = "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n"
    ws.send(
        f"SIP/2.0 200 OK\r\n{base}Contact: <sip:alice@x.invalid;transport=ws>\r\nContent-Type: application/sdp\r\n"
        f"Content-Length: {len(sdp)}\r\n\r\n{sdp}"
    )
    ack = ws.recv_sip(timeout=10)
    assert ack.startswith("ACK "), ack
    bye = ws.recv_sip(timeout=10)
    assert bye.startswith("BYE "), bye
    respond_ok(ws, bye)
    return inv


def register_instance(ws: WSClient, domain: str, instance: str | None = None, user: str = "alice") -> str:
    """REGISTER as JsSIP does (``+sip.instance`` and ``reg-id`` unless ``instance`` is None, Supported:
    path, outbound); the final response."""
    params = f';reg-id=1;+sip.instance="{instance}"' if instance else ""
    ws.send(
        f"REGISTER sip:{domain} SIP/2.0\r\nVia: SIP/2.0/WSS x.invalid;branch=z9hG4bK{uuid.uuid4().hex[:12]}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:{user}@{domain}>;tag={uuid.uuid4().hex[:6]}\r\nTo: <sip:{user}@{domain}>\r\n"
        f"Call-ID: {uuid.uuid4().hex}\r\nCSeq: 1 REGISTER\r\nSupported: path, outbound\r\n"
        f"Contact: <sip:{user}@x.invalid;transport=ws>{params}\r\nExpires: 300\r\nContent-Length: 0\r\n\r\n"
    )
    return ws.recv_sip(timeout=10, skip_provisional=True)


def respond_ok(ws: WSClient, request: str) -> None:
    """Answer ``request`` (a BYE, say) with 200 OK: its Vias, From, To, Call-ID and CSeq."""
    vias = "".join(f"Via: {v}\r\n" for v in headers(request, "Via"))
    ws.send(
        f"SIP/2.0 200 OK\r\n{vias}From: {header(request, 'From')}\r\nTo: {header(request, 'To')}\r\n"
        f"Call-ID: {header(request, 'Call-ID')}\r\nCSeq: {header(request, 'CSeq')}\r\nContent-Length: 0\r\n\r\n"
    )
