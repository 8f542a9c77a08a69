"""Offloading a leg's fast path: the decision (a value) and the counters coming back (a value).

Theory of operation
-------------------
The relay's I/O may run the fast path of :meth:`~mcs_edge.core.media.session.Leg.receive` outside
Python (tx/media/relay.py with the C module ``mcs_edge._fastfwd``; docs/performance.md,
"In-process forwarding"). The core decides *whether* and *with what*: :meth:`Leg.offload_spec`
returns an :class:`OffloadSpec` only when every RTP packet from the current source that the fast
path would forward needs nothing but the steps a forwarding rule does (source check, police with the
leg's own token bucket, SRTP unprotect when the leg decrypts, count, in-order sequence accounting,
SRTP protect when the target encrypts, send to the target's peer): keyed SRTP contexts where SRTP
is needed (the rule runs the same libsrtp sessions as the Python path, :class:`SrtpOffload`), no
rewrite, one direct target with a known address, no tenant aggregate bucket (shared by other legs,
so it stays in Python), and a sequence tracker for the current SSRC.

While a rule holds the leg, the leg's counters, bucket, trackers, ``last_rx`` and the target's
``tx_*``/``last_rtp`` move outside Python. :meth:`Leg.sync` asks the holder (the leg's ``offload``,
an :class:`Offload`) to bring them back, as an :class:`OffloadTaken`, which
:meth:`Leg.absorb_offload` applies exactly as the fast path would have, packet by packet. The
holder revokes the rule (taking the counters) before anything else touches the leg: every datagram
the rule does not take (RTCP, STUN, another source, a new SSRC, a late packet), every signalling
event of the call, its timers and its end; the session calls :meth:`Leg.sync` in its timer and
stats paths, and :meth:`Offload.release` instead in its timer path when the session has ICE or DTLS:
ICE moves a leg's ``remote`` (the rule's source, or the destination of the rule sending to it) and
ends the call on consent loss from timers too, and a DTLS timer may complete a handshake (a new SRTP
context), with no datagram passing through the holder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from mcs_edge.core.rtp.srtp import SrtpOffload

__all__ = ["MAX_OFFLOAD_TRACKERS", "Offload", "OffloadSpec", "OffloadTaken"]

#: SSRCs a rule follows at once (audio and video bundled on one leg, RTX).
MAX_OFFLOAD_TRACKERS = 4


@dataclass(frozen=True, slots=True)
class OffloadSpec:
    """What a forwarding rule needs to do the leg's fast path (see the module docstring)."""

    source: Any  #: the latched source address: only its datagrams take the rule
    target: Any  #: the Leg whose port sends them ... (Any: this module is below session.py)
    dest: Any  #: ... to this address (the target's remote)
    rate: float  #: the leg's token bucket: rate, burst, fill and its time
    burst: float
    tokens: float
    last: float
    trackers: tuple[tuple[bytes, int], ...]  #: (SSRC as 4 bytes, max_seq) of the leg's trackers
    current: int  #: the index in ``trackers`` of the last packet's SSRC
    #: the leg's inbound SRTP (the rule unprotects in place before counting; a libsrtp failure is
    #: the fast path's ``srtp`` drop), None when the leg does not decrypt
    unprotect: SrtpOffload | None = None
    #: the target's outbound SRTP (protect after ``last_rtp`` took the plain packet; a failure is the
    #: target's ``srtp-protect`` drop), None when the target does not encrypt
    protect: SrtpOffload | None = None


class OffloadTaken(NamedTuple):
    """The rule's counters since it was installed or last taken (deltas, except where absolute)."""

    packets: int
    rx_bytes: int
    policed: int
    policed_bytes: int
    tx_packets: int  #: counted on the target
    tx_bytes: int
    send_errors: int  #: the I/O counts these (the loop's sendto never raises either)
    last_rx: float | None  #: absolute; None when no packet was forwarded
    tokens: float  #: absolute bucket state
    last: float
    trackers: tuple[tuple[int, int], ...]  #: (max_seq absolute, received delta) per spec tracker
    current: int
    last_rtp: bytes | None  #: the target's last forwarded packet (plain RTP), None when none
    srtp_drops: int = 0  #: packets libsrtp refused to unprotect (the leg's ``srtp`` drops)
    protect_drops: int = 0  #: packets libsrtp refused to protect (the target's ``srtp-protect`` drops)


class Offload(Protocol):
    """The holder of a leg's rule (set as ``leg.offload`` by the I/O that installed it)."""

    def sync(self) -> None:
        """Bring the rule's counters back into the leg (:meth:`Leg.absorb_offload`); rule kept."""

    def release(self) -> None:
        """Remove the rule, its counters folded into the leg (:meth:`Leg.absorb_offload`): the core
        is about to run a timer that may change the leg's or its target's ``remote`` (ICE). The
        holder asks the leg again (:meth:`Leg.offload_spec`) once the core's timer has returned."""
