"""An asyncio test PBX for media tests: answers INVITEs (initial and re-INVITE) over UDP and echoes media.

It runs in the caller's asyncio loop (the same loop as the aiortc peers of the test), so it works
whatever reactor the edge under test uses. The answer SDP comes from an async callback, which lets a
test plug in a plain RTP echo (:class:`RtpEcho`), an SDES-SRTP echo (the same with pylibsrtp keys),
or a whole aiortc peer (passthrough).
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from mcs_edge.core.rtp.srtp import AES_CM_128_HMAC_SHA1_80, SrtpContext

AnswerFn = Callable[[str], Awaitable[str]]

_DIRECTION_ANSWER = {"sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}


def _header(lines: list[str], name: str) -> list[str]:
    low = name.lower() + ":"
    return [line for line in lines if line.lower().startswith(low)]


def mirrored_direction(offer: str) -> str:
    """The direction an answer gives to an offer's (first) m-line direction."""
    for line in offer.split("\r\n"):
        if line[2:] in _DIRECTION_ANSWER and line.startswith("a="):
            return _DIRECTION_ANSWER[line[2:]]
    return "sendrecv"


def offered_crypto_key(offer: str) -> bytes | None:
    """The edge's AES_CM_128_HMAC_SHA1_80 key from an SDES offer."""
    for line in offer.split("\r\n"):
        if line.startswith("a=crypto:") and " AES_CM_128_HMAC_SHA1_80 inline:" in line:
            inline = line.split("inline:", 1)[1].split("|", 1)[0].split(" ", 1)[0]
            return base64.b64decode(inline)
    return None


class RtpEcho(asyncio.DatagramProtocol):
    """Sends every RTP packet back to where it came from; counts; optionally SDES-SRTP both ways."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.received = 0
        self.echoed = 0
        self.rtcp = 0
        self.bad = 0
        self.srtp: SrtpContext | None = None
        self.key = secrets.token_bytes(30)
        self.sources: set[tuple[str, int]] = set()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < 12 or not 128 <= data[0] <= 191:
            self.bad += 1
            return
        if 192 <= data[1] <= 223:
            self.rtcp += 1
            return
        self.received += 1
        self.sources.add(addr)
        if self.srtp is not None:
            try:
                data = self.srtp.protect_rtp(self.srtp.unprotect_rtp(data))
            except Exception:
                self.bad += 1
                return
        self.transport.sendto(data, addr)
        self.echoed += 1

    def key_from(self, offer: str) -> None:
        edge_key = offered_crypto_key(offer)
        assert edge_key is not None, "the edge offered no AES_CM_128_HMAC_SHA1_80 key"
        self.srtp = SrtpContext(AES_CM_128_HMAC_SHA1_80, self.key, edge_key)

    def crypto_line(self) -> str:
        return f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{base64.b64encode(self.key).decode()}"


async def _even_pair(
    rtp: asyncio.DatagramProtocol, rtcp: Callable[[], asyncio.DatagramProtocol], host: str
) -> tuple[int, Callable[[], None]]:
    """``rtp`` on an ephemeral even port and ``rtcp()`` on the next one; (port, closer)."""
    loop = asyncio.get_running_loop()
    for _ in range(50):
        transport, _ = await loop.create_datagram_endpoint(lambda: rtp, local_addr=(host, 0))
        port = transport.get_extra_info("sockname")[1]
        if port % 2:
            transport.close()
            continue
        try:
            rtcp_transport, _ = await loop.create_datagram_endpoint(rtcp, local_addr=(host, port + 1))
        except OSError:
            transport.close()
            continue

        def close(t: Any = transport, r: Any = rtcp_transport) -> None:
            t.close()
            r.close()

        return port, close
    raise RuntimeError("no even port pair for the echo")


async def start_echo(host: str = "127.0.0.1") -> tuple[RtpEcho, int, Any]:
    """An RtpEcho on an ephemeral even port (plus a bound RTCP port+1 sink); returns (echo, port, closer)."""
    echo = RtpEcho()
    port, close = await _even_pair(echo, asyncio.DatagramProtocol, host)
    return echo, port, close


def plain_answer(port: int, offer: str, host: str = "127.0.0.1", crypto: str | None = None) -> str:
    """A PBX answer: PCMU only, RTP/AVP (or RTP/SAVP with ``crypto``), direction mirrored."""
    proto = "RTP/SAVP" if crypto else "RTP/AVP"
    lines = [
        "v=0",
        f"o=pbx {secrets.randbelow(10**9)} 1 IN IP4 {host}",
        "s=pbx",
        f"c=IN IP4 {host}",
        "t=0 0",
        f"m=audio {port} {proto} 0",
        "a=rtpmap:0 PCMU/8000",
        f"a={mirrored_direction(offer)}",
    ]
    if crypto:
        lines.append(crypto)
    return "\r\n".join(lines) + "\r\n"


@dataclass
class PbxCall:
    call_id: str
    invites: int = 0
    offers: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    acked: int = 0
    bye: bool = False


class AsyncPbx(asyncio.DatagramProtocol):
    """SIP UAS over UDP: 100 + 200 (SDP from ``answer``) to INVITEs, 200 to BYE/UPDATE/OPTIONS."""

    def __init__(self, answer: AnswerFn) -> None:
        self.answer = answer
        self.transport: Any = None
        self.calls: dict[str, PbxCall] = {}
        self.tag = secrets.token_hex(4)
        self.port = 0
        self.errors: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))
        self.port = self.transport.get_extra_info("sockname")[1]
        return self.port

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        text = data.decode(errors="replace")
        if not text.strip() or text.startswith("SIP/2.0"):
            return
        head, _, body = text.partition("\r\n\r\n")
        lines = head.split("\r\n")
        method = lines[0].split(" ", 1)[0]
        call_id = (_header(lines, "Call-ID") or [":"])[0].split(":", 1)[1].strip()
        call = self.calls.setdefault(call_id, PbxCall(call_id))
        if method == "INVITE":
            self._reply(lines, 100, "Trying", addr)
            task = asyncio.ensure_future(self._answer_invite(call, lines, body, addr))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif method == "ACK":
            call.acked += 1
        elif method == "BYE":
            call.bye = True
            self._reply(lines, 200, "OK", addr)
        elif method != "CANCEL":
            self._reply(lines, 200, "OK", addr)

    async def _answer_invite(
        self, call: PbxCall, lines: list[str], offer: str, addr: tuple[str, int]
    ) -> None:
        call.invites += 1
        call.offers.append(offer)
        try:
            sdp = await self.answer(offer)
        except Exception as exc:  # a test bug: report it, answer 500
            self.errors.append(repr(exc))
            self._reply(lines, 500, "Answer Failed", addr)
            return
        call.answers.append(sdp)
        self._reply(lines, 200, "OK", addr, sdp)

    def _reply(
        self, lines: list[str], status: int, reason: str, addr: tuple[str, int], body: str = ""
    ) -> None:
        out = [f"SIP/2.0 {status} {reason}"]
        out += _header(lines, "Via")
        out += _header(lines, "From")
        to = _header(lines, "To")[0]
        if status > 100 and ";tag=" not in to:
            to += f";tag={self.tag}"
        out.append(to)
        out += _header(lines, "Call-ID")
        out += _header(lines, "CSeq")
        if status >= 200:
            out += _header(lines, "Record-Route")
            out.append(f"Contact: <sip:pbx@127.0.0.1:{self.port};transport=udp>")
        if body:
            out.append("Content-Type: application/sdp")
        out.append(f"Content-Length: {len(body.encode())}")
        self.transport.sendto(("\r\n".join(out) + "\r\n\r\n" + body).encode(), addr)


class RecordingEcho(RtpEcho):
    """The PBX's RTP echo, remembering (SSRC, sequence) of every packet in arrival order."""

    def __init__(self) -> None:
        super().__init__()
        self.stream: list[tuple[int, int]] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) >= 12 and 128 <= data[0] <= 191 and not 192 <= data[1] <= 223:
            seq, ssrc = struct.unpack_from("!H", data, 2)[0], struct.unpack_from("!I", data, 8)[0]
            self.stream.append((ssrc, seq))
        super().datagram_received(data, addr)


class RecordingPbx(AsyncPbx):
    """The asyncio PBX, keeping every request it got as text."""

    def __init__(self, answer: Any) -> None:
        super().__init__(answer)
        self.requests: list[str] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        text = data.decode(errors="replace")
        if text.strip() and not text.startswith("SIP/2.0"):
            self.requests.append(text)
        if text.startswith("REGISTER "):
            self._registered(text, addr)
            return
        super().datagram_received(data, addr)

    def _registered(self, text: str, addr: tuple[str, int]) -> None:
        """200 OK listing the registered Contacts (as a registrar does; JsSIP looks for its own)."""
        lines = text.partition("\r\n\r\n")[0].split("\r\n")
        out = ["SIP/2.0 200 OK"]
        out += _header(lines, "Via")
        out += _header(lines, "From")
        out += [f"{to};tag={self.tag}" for to in _header(lines, "To")]
        out += _header(lines, "Call-ID")
        out += _header(lines, "CSeq")
        out += [f"{contact};expires=600" for contact in _header(lines, "Contact")]
        out.append("Content-Length: 0")
        self.transport.sendto(("\r\n".join(out) + "\r\n\r\n").encode(), addr)

    def methods(self, call_id: str) -> list[str]:
        return [r.split(" ", 1)[0] for r in self.requests if f"Call-ID: {call_id}" in r]


# ------------------------------------------------------------------ echo that answers RTCP

NTP_EPOCH = 2208988800


class ReportingEcho(asyncio.DatagramProtocol):
    """RTP echo on an even port; its RTCP port answers each SR with an RR (LSR, DLSR) and an SR."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.last_ts: dict[int, int] = {}
        self.echoed = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < 12 or 192 <= data[1] <= 223:
            return
        ts, ssrc = struct.unpack_from("!II", data, 4)
        self.last_ts[ssrc] = ts
        self.transport.sendto(data, addr)
        self.echoed += 1


class RtcpAnswerer(asyncio.DatagramProtocol):
    def __init__(self, echo: ReportingEcho) -> None:
        self.echo = echo
        self.transport: Any = None
        self.srs = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < 28 or data[1] != 200:  # only an SR leading the compound
            return
        self.srs += 1
        ssrc, msw, lsw = struct.unpack_from("!III", data, 4)
        lsr = ((msw & 0xFFFF) << 16) | (lsw >> 16)
        rr_body = struct.pack("!I", 0x5EED) + struct.pack("!IIIIII", ssrc, 0, 1, 0, lsr, 0)
        rr = struct.pack("!BBH", 0x81, 201, len(rr_body) // 4) + rr_body
        now = time.time() + NTP_EPOCH
        sr_body = struct.pack(
            "!IIIIII",
            ssrc,
            int(now),
            int((now % 1) * 2**32),
            self.echo.last_ts.get(ssrc, 0),
            self.echo.echoed,
            self.echo.echoed * 160,
        )
        sr = struct.pack("!BBH", 0x80, 200, len(sr_body) // 4) + sr_body
        self.transport.sendto(sr + rr, addr)


async def start_reporting_echo() -> tuple[int, Callable[[], None]]:
    """A :class:`ReportingEcho` on an ephemeral even port, its :class:`RtcpAnswerer` on the next; (port, closer)."""
    echo = ReportingEcho()
    return await _even_pair(echo, lambda: RtcpAnswerer(echo), "127.0.0.1")


def reporting_echo_answer(closers: list[Callable[[], Any]]) -> AnswerFn:
    """An answer callback: each offer gets a new :func:`start_reporting_echo` (its closer kept in ``closers``)."""

    async def answer(offer: str) -> str:
        port, close = await start_reporting_echo()
        closers.append(close)
        return plain_answer(port, offer)

    return answer


async def start_recording_pbx(
    host: str = "127.0.0.1", port: int = 0, pbx: Callable[[AnswerFn], RecordingPbx] = RecordingPbx
) -> tuple[Any, RecordingEcho, Callable[[], None]]:
    """A :class:`RecordingPbx` (or ``pbx``) on ``host:port`` answering plain RTP toward one
    :class:`RecordingEcho` on ``host``; (pbx, echo, closer)."""
    loop = asyncio.get_running_loop()
    echo = RecordingEcho()
    transport, _ = await loop.create_datagram_endpoint(lambda: echo, local_addr=(host, 0))
    echo_port = transport.get_extra_info("sockname")[1]

    async def answer(offer: str) -> str:
        return plain_answer(echo_port, offer, host=host)

    uas = pbx(answer)
    await uas.start(host, port)

    def close() -> None:
        transport.close()
        uas.close()

    return uas, echo, close
