"""ICE-lite responder for one media leg (RFC 8445 s.2.5/s.7.3, consent freshness per RFC 7675).

Theory of operation
-------------------
The edge is always the *lite*, *controlled* agent: it gathers only host candidates, never sends
connectivity checks, and answers the checks of the full (controlling) peer. One
:class:`IceLiteResponder` serves one media leg (one local port, rtcp-mux).

Input is a STUN datagram the adapter's RFC 7983 demux classified as STUN::

    response = leg.receive(data, addr, now)   # bytes to send back to addr, or None (drop)

A check is processed in this order (each row ends processing):

======================================================  ===========================================
condition                                               outcome
======================================================  ===========================================
not STUN / not a request / FINGERPRINT present but bad  drop (None); indications are keepalives
malformed attributes, or a request of another method    400 Bad Request (no MESSAGE-INTEGRITY)
USERNAME or MESSAGE-INTEGRITY missing                   400 Bad Request (RFC 8489 s.9.1.3)
USERNAME is not ``local_ufrag:remote_ufrag``            401 Unauthenticated (no MESSAGE-INTEGRITY)
MESSAGE-INTEGRITY does not verify with the local pwd    401 Unauthenticated (no MESSAGE-INTEGRITY)
unknown comprehension-required attribute                420 + UNKNOWN-ATTRIBUTES (authenticated)
ICE-CONTROLLED present (peer thinks it is controlled)   487 Role Conflict (authenticated)
no ICE-CONTROLLING, or no PRIORITY                      400 Bad Request (authenticated)
otherwise                                               success: XOR-MAPPED-ADDRESS,
                                                        MESSAGE-INTEGRITY (local pwd), FINGERPRINT
======================================================  ===========================================

Why 401 and not silent drop for unauthenticated checks: RFC 8489 s.9.1.3 allows either. The 401
is smaller than the request (no amplification), it is what browsers expect, and it lets a peer
whose credentials are stale (a glare during ICE restart) notice at once rather than after its
check timeouts. Unauthenticated error responses carry no MESSAGE-INTEGRITY and create no state.

Role conflict: a lite agent can never take the controlling role (RFC 8445 s.6.1.1), so a peer
announcing ICE-CONTROLLED always gets 487, as if our tie-breaker were the larger one.

Candidate pairs are keyed by the remote transport address (the local side is the one port of the
leg). A valid check creates or refreshes the pair and gives it *consent* until ``now + 30 s``
(RFC 7675; a lite agent sends no consent checks of its own, so the full agent's authenticated
checks are the only proof that the peer still wants our media). USE-CANDIDATE nominates the pair.
The selected pair is the nominated pair with consent and the highest PRIORITY (the most recent
nomination wins ties); whenever it changes, :class:`SelectedAddressChanged` is queued.

Timers: ``get_timer()`` is the earliest consent deadline; ``handle_timer(now)`` forgets pairs whose
consent expired. When that is the selected pair it queues :class:`ConsentLost` (``name ==
"consent_lost"``) and falls back to another nominated pair with consent if there is one.

ICE restart: ``restart(remote_ufrag, remote_pwd)`` makes new local credentials. Until the peer
nominates a pair with the new credentials, checks with the old ones are still answered and the old
selected pair stays selected (media keeps flowing); the first nomination under the new credentials
retires the old generation.

Events are drained with ``next_event()``. Before the remote ufrag is known (a check may overtake
the SDP answer, RFC 8445 s.7.3) only the local part of USERNAME is checked.
"""

from __future__ import annotations

import base64
import re
import secrets
import struct
from collections import deque
from dataclasses import dataclass
from typing import ClassVar

from mcs_edge.core.stun.message import (
    ATTR_ICE_CONTROLLED,
    ATTR_ICE_CONTROLLING,
    ATTR_PRIORITY,
    ATTR_USE_CANDIDATE,
    ATTR_USERNAME,
    CLASS_ERROR,
    CLASS_REQUEST,
    MAGIC_COOKIE_BYTES,
    METHOD_BINDING,
    ErrorCode,
    Message,
    MessageView,
    UnknownAttributes,
    append_fingerprint,
    append_integrity,
    encode_xor_address,
    parse_view,
)
from mcs_edge.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "CONSENT_TIMEOUT",
    "ConsentLost",
    "IceEvent",
    "IceLiteResponder",
    "IceStats",
    "SelectedAddressChanged",
    "generate_credentials",
]

Addr = tuple[str, int]

CONSENT_TIMEOUT = 30.0
MAX_PAIRS = 16

_ICE_CHARS = re.compile(r"[A-Za-z0-9+/]+")
_U32 = struct.Struct("!I")
_SUCCESS_PREFIX = b"\x01\x01\x00\x00" + MAGIC_COOKIE_BYTES
_XMA_HEADER_V4 = b"\x00\x20\x00\x08"
_XMA_HEADER_V6 = b"\x00\x20\x00\x14"


def generate_credentials() -> tuple[str, str]:
    """A fresh ``(ufrag, pwd)``: 48 and 144 random bits in ice-chars (RFC 8445 s.5.3)."""
    ufrag = base64.b64encode(secrets.token_bytes(6)).decode()
    pwd = base64.b64encode(secrets.token_bytes(18)).decode()
    return ufrag, pwd


def _check_ice_chars(what: str, value: str, low: int) -> None:
    if not low <= len(value) <= 256 or not _ICE_CHARS.fullmatch(value):
        raise LocalProtocolError(f"ICE: {what} must be {low}..256 ice-chars")


@dataclass(frozen=True, slots=True)
class SelectedAddressChanged:
    """The remote address media should be sent to changed (None: no usable pair any more)."""

    name: ClassVar[str] = "selected"
    addr: Addr | None


@dataclass(frozen=True, slots=True)
class ConsentLost:
    """No valid check arrived from the selected remote address for 30 s: stop sending to it."""

    name: ClassVar[str] = "consent_lost"
    addr: Addr


IceEvent = SelectedAddressChanged | ConsentLost


class IceStats:
    """Counters the adapter exports as metrics."""

    __slots__ = ("auth_failures", "bad_requests", "checks", "dropped", "role_conflicts")

    def __init__(self) -> None:
        self.checks = 0
        self.bad_requests = 0
        self.auth_failures = 0
        self.role_conflicts = 0
        self.dropped = 0


class _Generation:
    """One set of credentials (changes on ICE restart)."""

    __slots__ = ("key", "local_prefix", "local_pwd", "local_ufrag", "remote_pwd", "remote_ufrag", "username")

    def __init__(self, local_ufrag: str, local_pwd: str, remote_ufrag: str | None, remote_pwd: str | None):
        self.local_ufrag = local_ufrag
        self.local_pwd = local_pwd
        self.key = local_pwd.encode()
        self.local_prefix = local_ufrag.encode() + b":"
        self.remote_ufrag = remote_ufrag
        self.remote_pwd = remote_pwd
        self.username: bytes | None = (
            None if remote_ufrag is None else self.local_prefix + remote_ufrag.encode()
        )

    def matches(self, username: bytes) -> bool:
        if self.username is not None:
            return username == self.username
        return username.startswith(self.local_prefix) and len(username) > len(self.local_prefix)


class _Pair:
    __slots__ = ("addr", "consent_until", "generation", "nominated", "nominated_at", "priority", "xma")

    def __init__(self, addr: Addr, generation: _Generation, xma: bytes | None) -> None:
        self.addr = addr
        self.generation = generation
        self.priority = 0
        self.nominated = False
        self.nominated_at = 0.0
        self.consent_until = 0.0
        #: the XOR-MAPPED-ADDRESS TLV, cached for IPv4 (for IPv6 it depends on the transaction id)
        self.xma = xma


class IceLiteResponder:
    """Answers the connectivity checks of one media leg (see the module docstring)."""

    __slots__ = (
        "_current",
        "_events",
        "_pairs",
        "_previous",
        "_selected",
        "consent_timeout",
        "max_pairs",
        "stats",
    )

    def __init__(
        self,
        *,
        remote_ufrag: str | None = None,
        remote_pwd: str | None = None,
        local_ufrag: str | None = None,
        local_pwd: str | None = None,
        consent_timeout: float = CONSENT_TIMEOUT,
        max_pairs: int = MAX_PAIRS,
    ) -> None:
        if max_pairs < 2:
            raise LocalProtocolError("ICE: max_pairs must be at least 2")
        self._current = self._make_generation(local_ufrag, local_pwd, remote_ufrag, remote_pwd)
        self._previous: _Generation | None = None
        self._pairs: dict[Addr, _Pair] = {}
        self._selected: _Pair | None = None
        self._events: deque[IceEvent] = deque()
        self.consent_timeout = consent_timeout
        self.max_pairs = max_pairs
        self.stats = IceStats()

    @staticmethod
    def _make_generation(
        local_ufrag: str | None, local_pwd: str | None, remote_ufrag: str | None, remote_pwd: str | None
    ) -> _Generation:
        gen_ufrag, gen_pwd = generate_credentials()
        local_ufrag = gen_ufrag if local_ufrag is None else local_ufrag
        local_pwd = gen_pwd if local_pwd is None else local_pwd
        _check_ice_chars("local ufrag", local_ufrag, 4)
        _check_ice_chars("local pwd", local_pwd, 22)
        if remote_ufrag is not None:
            _check_ice_chars("remote ufrag", remote_ufrag, 4)
        return _Generation(local_ufrag, local_pwd, remote_ufrag, remote_pwd)

    # --- credentials ----------------------------------------------------------------------------

    @property
    def local_ufrag(self) -> str:
        """The ufrag to put in our SDP (a=ice-ufrag)."""
        return self._current.local_ufrag

    @property
    def local_pwd(self) -> str:
        """The password to put in our SDP (a=ice-pwd)."""
        return self._current.local_pwd

    @property
    def remote_ufrag(self) -> str | None:
        """The peer's current ufrag, if known."""
        return self._current.remote_ufrag

    def set_remote_credentials(self, ufrag: str, pwd: str) -> None:
        """Learn the peer's ufrag/pwd from its SDP (when they were not known at construction)."""
        cur = self._current
        _check_ice_chars("remote ufrag", ufrag, 4)
        self._current = _Generation(cur.local_ufrag, cur.local_pwd, ufrag, pwd)
        for pair in self._pairs.values():
            if pair.generation is cur:
                pair.generation = self._current

    def restart(
        self,
        new_remote_ufrag: str,
        new_remote_pwd: str,
        *,
        local_ufrag: str | None = None,
        local_pwd: str | None = None,
    ) -> None:
        """ICE restart: new local credentials; the old selected pair stays until a new nomination."""
        new = self._make_generation(local_ufrag, local_pwd, new_remote_ufrag, new_remote_pwd)
        if new.local_ufrag == self._current.local_ufrag:
            raise LocalProtocolError("ICE: a restart needs a new local ufrag")
        self._previous = self._current
        self._current = new

    # --- state ----------------------------------------------------------------------------------

    @property
    def remote_pwd(self) -> str | None:
        """The peer's current password, if known (replicated, sealed, by core/cluster)."""
        return self._current.remote_pwd

    @property
    def restarting(self) -> bool:
        """True after :meth:`restart` until the peer nominated a pair under the new credentials."""
        return self._previous is not None

    @property
    def selected_address(self) -> Addr | None:
        """Where media goes now (the selected pair's remote address), or None."""
        pair = self._selected
        return None if pair is None else pair.addr

    def has_consent(self, addr: Addr, now: float) -> bool:
        """True if a valid check from ``addr`` arrived within the consent timeout."""
        pair = self._pairs.get(addr)
        return pair is not None and pair.consent_until > now

    def next_event(self) -> IceEvent | None:
        """The next queued event, or None."""
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """The earliest consent deadline, or None when no pair has consent."""
        if not self._pairs:
            return None
        return min(p.consent_until for p in self._pairs.values())

    def handle_timer(self, now: float) -> None:
        """Forget pairs whose consent expired; queue ConsentLost for the selected one."""
        expired = [addr for addr, p in self._pairs.items() if p.consent_until <= now]
        if not expired:
            return
        lost_selected = False
        for addr in expired:
            pair = self._pairs.pop(addr)
            if pair is self._selected:
                lost_selected = True
        if lost_selected:
            old = self._selected
            assert old is not None
            self._selected = None
            self._events.append(ConsentLost(old.addr))
            self._reselect(announce_none=False)

    # --- the check path -------------------------------------------------------------------------

    def receive(self, data: bytes, addr: Addr, now: float) -> bytes | None:
        """Process one STUN datagram from ``addr``; return the response to send, or None to drop."""
        try:
            view = parse_view(data)
        except RemoteProtocolError as exc:
            if exc.status_hint is None or data[0:2] != b"\x00\x01":
                self.stats.dropped += 1
                return None
            self.stats.bad_requests += 1
            return self._error(data[8:20], 400)
        if view.cls != CLASS_REQUEST:
            self.stats.dropped += 1
            return None
        if view.fingerprint_at >= 0 and not view.check_fingerprint():
            self.stats.dropped += 1
            return None
        txid = view.transaction_id
        if view.method != METHOD_BINDING:
            self.stats.bad_requests += 1
            return self._error(txid, 400)
        where = view.attrs.get(ATTR_USERNAME)
        if where is None or view.integrity_at < 0:
            self.stats.bad_requests += 1
            return self._error(txid, 400)
        username = data[where[0] : where[0] + where[1]]
        gen = self._current
        if not gen.matches(username):
            prev = self._previous
            if prev is None or not prev.matches(username):
                self.stats.auth_failures += 1
                return self._error(txid, 401)
            gen = prev
        key = gen.key
        if not view.check_integrity(key):
            self.stats.auth_failures += 1
            return self._error(txid, 401)
        # authenticated from here on: error responses carry MESSAGE-INTEGRITY
        attrs = view.attrs
        unknown = view.unknown_comprehension_required()
        if unknown:
            self.stats.bad_requests += 1
            return self._error(txid, 420, key, tuple(unknown))
        if ATTR_ICE_CONTROLLED in attrs:
            self.stats.role_conflicts += 1
            return self._error(txid, 487, key)
        prio = attrs.get(ATTR_PRIORITY)
        if prio is None or prio[1] != 4 or ATTR_ICE_CONTROLLING not in attrs:
            self.stats.bad_requests += 1
            return self._error(txid, 400, key)
        self.stats.checks += 1
        pair = self._pairs.get(addr)
        if pair is None:
            pair = self._new_pair(addr, gen)
        elif pair.generation is not gen and gen is self._current:
            pair.generation = gen
        priority = _U32.unpack_from(data, prio[0])[0]
        pair.consent_until = now + self.consent_timeout
        if ATTR_USE_CANDIDATE in attrs:
            if not (pair is self._selected and priority == pair.priority and self._previous is None):
                pair.priority = priority
                self._nominate(pair, gen, now)
        else:
            pair.priority = priority
        return self._success(view, pair, key)

    def _new_pair(self, addr: Addr, gen: _Generation) -> _Pair:
        pairs = self._pairs
        if len(pairs) >= self.max_pairs:
            victims = [p for p in pairs.values() if p is not self._selected]
            victim = min(victims, key=lambda p: p.consent_until)
            del pairs[victim.addr]
        xma = None
        try:
            if ":" not in addr[0]:
                xma = _XMA_HEADER_V4 + encode_xor_address(addr[0], addr[1], bytes(12))
        except LocalProtocolError:
            xma = None
        pair = _Pair(addr, gen, xma)
        pairs[addr] = pair
        return pair

    def _nominate(self, pair: _Pair, gen: _Generation, now: float) -> None:
        pair.nominated = True
        pair.nominated_at = now
        if gen is self._current and self._previous is not None:
            # the restart is complete: retire the old credentials and their nominations
            self._previous = None
            for other in self._pairs.values():
                if other.generation is not gen:
                    other.nominated = False
        self._reselect(announce_none=True)

    def _reselect(self, *, announce_none: bool) -> None:
        best: _Pair | None = None
        for pair in self._pairs.values():
            if not pair.nominated:
                continue
            if best is None or (pair.priority, pair.nominated_at) > (best.priority, best.nominated_at):
                best = pair
        if best is not self._selected:
            if best is None and not announce_none:
                return
            self._selected = best
            self._events.append(SelectedAddressChanged(None if best is None else best.addr))

    def _success(self, view: MessageView, pair: _Pair, key: bytes) -> bytes:
        txid = view.transaction_id
        buf = bytearray(_SUCCESS_PREFIX)
        buf += txid
        xma = pair.xma
        if xma is not None:
            buf += xma
        else:
            value = encode_xor_address(pair.addr[0], pair.addr[1], txid)
            buf += _XMA_HEADER_V4 if len(value) == 8 else _XMA_HEADER_V6
            buf += value
        append_integrity(buf, key)
        append_fingerprint(buf)
        return bytes(buf)

    def _error(
        self, txid: bytes, code: int, key: bytes | None = None, unknown: tuple[int, ...] = ()
    ) -> bytes:
        attrs: tuple[ErrorCode | UnknownAttributes, ...] = (ErrorCode.for_code(code),)
        if unknown:
            attrs += (UnknownAttributes(unknown),)
        msg = Message(METHOD_BINDING, CLASS_ERROR, txid, attrs)
        return msg.serialize(integrity_key=key, fingerprint=True)
