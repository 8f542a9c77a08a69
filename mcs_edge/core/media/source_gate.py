"""Which sources a PASSTHROUGH leg hears: addresses proven by an ICE connectivity check.

Theory of operation
-------------------
In passthrough the edge does not terminate ICE or DTLS, but both peers' ``a=ice-ufrag`` and
``a=ice-pwd`` pass through the SDP it rewrites. So the edge can verify what the peers verify
(RFC 8445 s.7.2.2, short-term credentials of RFC 8489 s.9.1):

==========================  ================================================================
STUN message on a leg       MESSAGE-INTEGRITY key (HMAC-SHA1)
==========================  ================================================================
Binding request             the password of the peer it is addressed to: the *far* side's
                            ``ice-pwd`` (USERNAME must start with the far side's ufrag + ":")
success / error response    the password of the peer that answers: this leg's own peer's
                            ``ice-pwd`` (the request it answers was keyed with it)
indication                  none: never proves a source
==========================  ================================================================

A source address whose STUN message verifies is *verified* (at most :data:`MAX_VERIFIED` per leg,
the oldest forgotten first). The leg forwards STUN from its latched address or from a source whose
message verifies (that also verifies the source); RTP, RTCP and DTLS from its latched address or
a verified one, and only a verified one may take the latch over (the session's ``_accept`` and
``_latch``). The previous credentials are kept beside the current ones across an ICE restart,
so checks in flight still verify.

When the leg's own peer gave no ICE credentials (a peer that does not do ICE), the gate is
*open*: the leg falls back to symmetric latching, as for plain RTP.

Cost: nothing for packets from the latched source; one header check plus one HMAC-SHA1 per STUN
message from a new source; a dict lookup for media from a new source. Comparisons use
:func:`hmac.compare_digest` (in :meth:`MessageView.check_integrity`).
"""

from __future__ import annotations

from typing import Final

from mcs_edge.core.stun.message import (
    ATTR_USERNAME,
    CLASS_ERROR,
    CLASS_REQUEST,
    CLASS_SUCCESS,
    parse_view,
)
from mcs_edge.errors import RemoteProtocolError

__all__ = ["MAX_VERIFIED", "SourceGate"]

Addr = tuple[str, int]

#: Verified source addresses remembered per leg (a peer has a few candidates: host, srflx, relay).
MAX_VERIFIED: Final = 8


class SourceGate:
    """The ICE credentials of a PASSTHROUGH leg's peer and the sources verified with them."""

    __slots__ = ("credentials", "verified")

    def __init__(self) -> None:
        #: (ufrag, password) of the leg's own peer, current first, then the previous ones (restart)
        self.credentials: tuple[tuple[bytes, bytes], ...] = ()
        self.verified: dict[Addr, None] = {}

    @property
    def enforcing(self) -> bool:
        """True once the peer's ICE credentials are known: new sources must be verified."""
        return bool(self.credentials)

    def set_credentials(self, ufrag: str, pwd: str) -> None:
        """The peer's credentials from its committed SDP (kept with the previous pair on a restart)."""
        pair = (ufrag.encode(), pwd.encode())
        if self.credentials and self.credentials[0] == pair:
            return
        self.credentials = (pair, *self.credentials[:1])

    def knows(self, addr: Addr) -> bool:
        """True if ``addr`` proved itself with a verified STUN message."""
        return addr in self.verified

    def verify_stun(self, data: bytes, addr: Addr, far: SourceGate | None) -> str | None:
        """Check one STUN datagram from ``addr`` (not the latched source); None = verified.

        Otherwise the drop reason: ``garbage`` (not a STUN message), ``stun-unverified``
        (no or wrong MESSAGE-INTEGRITY, wrong USERNAME, an indication, credentials unknown).
        """
        try:
            view = parse_view(data)
        except RemoteProtocolError:
            return "garbage"
        cls = view.cls
        if cls == CLASS_REQUEST:
            if far is None or not far.credentials:
                return "stun-unverified"
            username = view.value(ATTR_USERNAME) or b""
            for ufrag, pwd in far.credentials:
                if username.startswith(ufrag + b":") and view.check_integrity(pwd):
                    self._remember(addr)
                    return None
            return "stun-unverified"
        if cls in (CLASS_SUCCESS, CLASS_ERROR):
            for _ufrag, pwd in self.credentials:
                if view.check_integrity(pwd):
                    self._remember(addr)
                    return None
        return "stun-unverified"

    def _remember(self, addr: Addr) -> None:
        verified = self.verified
        verified.pop(addr, None)
        verified[addr] = None
        if len(verified) > MAX_VERIFIED:
            del verified[next(iter(verified))]
