"""Loopback media for the echo service: a session whose PBX side is the relay itself.

Theory of operation
-------------------
The echo user agent (:mod:`mcs_edge.core.media.echo_ua`) answers a call on the edge and sends the caller's media
back to it. It reuses a normal :class:`~mcs_edge.core.media.session.MediaSession` so the caller's
side is exactly the production path (ICE-lite, DTLS-SRTP or SDES, policing, timeouts): the
session's *PBX side* is plain RTP (``Profile.RTP``) whose far end is not a socket but a loop.

* :class:`LoopbackPorts` is the session's :class:`~mcs_edge.core.media.session.LegPorts`. Legs of
  the real side (``CLIENT``) get their ports from the relay's port owner (the anchor: bound
  sockets); legs of the looped side (``PBX``) get no socket at all: a placeholder port number
  (:data:`LOOP_PORT`, never bound, never sent anywhere) and a sender that feeds each RTP packet
  straight back into the same leg's :meth:`~mcs_edge.core.media.session.Leg.receive`, with the
  SSRC replaced by one of the loop's own (a browser must not receive its own SSRC). The leg then
  forwards the packet to the caller's leg as it would forward a PBX's packet: protected with that
  leg's SRTP context and sent from its port. RTCP sent into the loop is counted and dropped (a
  reflected sender report would carry the caller's own SSRC and clocks).
* :func:`echo_answer` builds the looped side's answer to the offer the session produced for it:
  every RTP m-line accepted with the offered formats and their ``rtpmap``/``fmtp`` (whatever codec
  the caller picks comes back unchanged), the direction mirrored, the address and port of the
  offer itself (the loop's own), so the session commits a destination that only the loop uses.
* :func:`echo_offer` is the looped side's offer when the caller's INVITE carried none (the answer
  then comes in the ACK).

Nothing here reads a clock or a random source: the loop is given the ``now`` and ``random_bytes``
functions of its owner.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final

from mcs_edge.core.media.sdp import PROTO_RTP_AVP, SessionDescription
from mcs_edge.core.media.session import PBX, Leg, LegPorts, Side
from mcs_edge.core.randomness import RandomBytes, random_int

__all__ = ["LOOP_PORT", "LoopbackPorts", "echo_answer", "echo_offer"]

#: The placeholder port number of a looped leg (the discard port: it is never bound nor sent to).
LOOP_PORT: Final = 9
_MIRROR: Final = {
    "sendrecv": "sendrecv",
    "sendonly": "recvonly",
    "recvonly": "sendonly",
    "inactive": "inactive",
}
_KEPT: Final = frozenset({"rtpmap", "fmtp", "ptime", "maxptime", "rtcp-mux"})
_SSRC: Final = struct.Struct("!I")


def _discard(data: bytes, addr: object) -> None:
    return None


class _Loop:
    """The sender of one looped leg: RTP goes back into the leg with the loop's SSRC."""

    __slots__ = ("leg", "now", "owner", "ssrc")

    def __init__(self, owner: LoopbackPorts, leg: Leg, now: Callable[[], float]) -> None:
        self.owner = owner
        self.leg = leg
        self.now = now
        self.ssrc = _SSRC.pack(random_int(owner.random_bytes, 32) or 1)

    def __call__(self, data: bytes, addr: object) -> None:
        if len(data) < 12 or 191 < data[1] < 224:
            self.owner.rtcp_dropped += 1
            return
        self.owner.looped += 1
        self.leg.receive(data[:8] + self.ssrc + data[12:], addr, self.now())


class LoopbackPorts:
    """Ports of an echo session: real ones for ``real_side``, in-memory loops for the other side."""

    def __init__(
        self, ports: LegPorts, now: Callable[[], float], random_bytes: RandomBytes, looped_side: Side = PBX
    ) -> None:
        self.ports = ports
        self.now = now
        self.random_bytes = random_bytes
        self.looped_side = looped_side
        self.looped = 0  # RTP packets sent back through a loop
        self.rtcp_dropped = 0

    def open(self, leg: Leg, rtcp_mux: bool) -> bool:
        """Real legs: the owner's ports. Looped legs: a placeholder port and the loop as sender."""
        if leg.side is not self.looped_side:
            return self.ports.open(leg, rtcp_mux)
        leg.port = LOOP_PORT
        leg.rtcp_port = None  # RTCP shares the loop (and is dropped there)
        leg.send = _Loop(self, leg, self.now)
        leg.send_rtcp = _discard
        return True

    def close(self, leg: Leg) -> None:
        """Give real ports back to the owner; forget a loop."""
        if leg.side is not self.looped_side:
            self.ports.close(leg)
            return
        leg.port = 0
        leg.rtcp_port = None
        leg.send = _discard
        leg.send_rtcp = _discard


def _origin(session_id: int, host: str) -> str:
    family = "IP6" if ":" in host else "IP4"
    return f"o=- {session_id} 1 IN {family} {host}"


def echo_answer(offer: SessionDescription, random_bytes: RandomBytes) -> SessionDescription:
    """The looped side's answer to ``offer`` (the session's offer toward it); see the module docstring."""
    conn = offer.connection
    host = conn.address.split("/")[0] if conn is not None else "127.0.0.1"
    family = "IP6" if ":" in host else "IP4"
    lines = ["v=0", _origin(random_int(random_bytes, 62), host), "s=echo", f"c=IN {family} {host}", "t=0 0"]
    for m in offer.media:
        formats = " ".join(m.formats) or "0"
        if m.rejected or not m.is_rtp or (m.connection is None and conn is None):
            lines.append(f"m={m.media} 0 {m.proto} {formats}")
            continue
        lines.append(f"m={m.media} {m.port} {PROTO_RTP_AVP} {formats}")
        if m.connection is not None:
            lines.append(f"c={m.connection}")
        lines.extend(str(a) for a in m.attributes if a.name in _KEPT)
        lines.append(f"a={_MIRROR.get(m.direction, 'sendrecv')}")
    return SessionDescription.parse("\r\n".join(lines) + "\r\n")


def echo_offer(host: str, random_bytes: RandomBytes, port: int = LOOP_PORT) -> SessionDescription:
    """The looped side's offer when the caller offered nothing: one audio stream, common codecs."""
    family = "IP6" if ":" in host else "IP4"
    lines = [
        "v=0",
        _origin(random_int(random_bytes, 62), host),
        "s=echo",
        f"c=IN {family} {host}",
        "t=0 0",
        f"m=audio {port} {PROTO_RTP_AVP} 111 0 8 101",
        "a=rtpmap:111 opus/48000/2",
        "a=fmtp:111 minptime=10;useinbandfec=1",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-15",
        "a=rtcp-mux",
        "a=sendrecv",
    ]
    return SessionDescription.parse("\r\n".join(lines) + "\r\n")
