"""The media anchor: the SIP proxy's media hook, owner of every media session and relay port.

Theory of operation
-------------------
:class:`MediaAnchor` implements :class:`~mcs_edge.core.sip.proxy.MediaHook`. The proxy hands it
every message with a body, in both directions (``from_client`` says which side sent it); the
anchor looks at ``application/sdp`` bodies only and keeps one :class:`MediaSession` per Call-ID
(sessions also remember their tenant and client flow; a message of another tenant for a live
Call-ID is refused with 403 and counted).

Which SDP is an offer and which an answer (RFC 3264, RFC 3261 s.13.2.1):

=====================================================  ====================================
message carrying SDP                                   meaning
=====================================================  ====================================
INVITE, UPDATE (initial or in-dialog)                  offer from the sender's side
18x/2xx to INVITE/UPDATE/PRACK whose CSeq matches the  answer (a 18x and the 2xx may both
other side's outstanding offer                         carry it: applied again, unchanged)
18x/2xx to an INVITE that carried no offer             offer from the responder's side
ACK (same CSeq as that INVITE), PRACK                  answer, if an offer is outstanding
anything else, responses >= 300                        ignored (body left as is)
=====================================================  ====================================

The body is replaced with the session's rewritten SDP. A refused message returns a SIP status
(503 when no relay port is left, 488 for SDP the relay cannot handle, 403 for another tenant's
call) and the proxy answers with it; a session that a refused initial offer created is released
at once.

Ends. :meth:`on_end` (BYE in either direction, CANCEL/failed initial INVITE, transaction
failure), :meth:`on_flow_closed` (the client's connection is gone), :meth:`shutdown`, and the
sessions' own ends (idle timeout, consent loss, DTLS failure, unanswered offer) all go through
one release path: every leg's DTLS endpoint, SRTP contexts and ICE responder are dropped and every
port goes back to the :class:`PortAllocator` and is closed through the :class:`RelayIO`.

Ports. A session asks the anchor (its :class:`~mcs_edge.core.media.session.LegPorts`) for ports.
The anchor takes them from the allocation plan and has the I/O layer bind them at once
(:meth:`RelayIO.open_port` returns the port's sender, or None when the port cannot be bound; the
next free port is tried, up to ``max_bind_attempts``). Nothing is bound lazily, so an SDP never
names a port the edge does not hold.

Timers: one heap of ``(deadline, seq, session)`` with lazy invalidation (an entry is live while it
equals ``session.scheduled``); :meth:`get_timer` / :meth:`handle_timer` drive every session.
After a datagram changed ICE/DTLS state the I/O layer calls :meth:`poke` with the session, which
reschedules it and releases sessions that ended.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from mcs_edge.core.media.ports import PortAllocator
from mcs_edge.core.media.sdp import Profile, SessionDescription
from mcs_edge.core.media.session import (
    CLIENT,
    PBX,
    Leg,
    MediaSession,
    OutOfPorts,
    Sender,
    SessionSettings,
    pbx_profile_for,
)
from mcs_edge.core.shaping import Policer
from mcs_edge.core.sip.calls import address_of_record
from mcs_edge.core.sip.message import Request, Response
from mcs_edge.errors import LocalProtocolError, RemoteProtocolError

__all__ = ["AnchorSettings", "CallInfo", "MediaAnchor", "RelayIO", "agent_aor"]

SDP_TYPE: Final = "application/sdp"
_OFFER_METHODS: Final = frozenset({"INVITE", "UPDATE"})
_ANSWER_METHODS: Final = frozenset({"ACK", "PRACK"})
_RESPONSE_METHODS: Final = frozenset({"INVITE", "UPDATE", "PRACK"})
_CLIENT_PROFILES: Final = {"wss": Profile.WEBRTC, "ws": Profile.WEBRTC, "tls": Profile.SDES}
#: ``tenants.app_media``: what the edge offers a SIP/TLS client (the mobile app) that has not offered yet.
APP_PROFILES: Final = {"sdes": Profile.SDES, "dtls": Profile.WEBRTC, "rtp": Profile.RTP}
_ENCRYPTED: Final = frozenset({Profile.SDES, Profile.WEBRTC})


class RelayIO(Protocol):
    """The I/O layer's side of port handling."""

    def open_port(self, port: int, leg: Leg, rtcp: bool) -> Sender | None:
        """Bind ``port`` now and deliver its datagrams to ``leg.receive`` (``leg.receive_rtcp`` when
        ``rtcp``); return the function that sends from it, or None if it cannot be bound."""
        ...

    def close_port(self, port: int) -> None:
        """Close ``port``."""
        ...


@dataclass(frozen=True, slots=True)
class AnchorSettings:
    session: SessionSettings
    ports: tuple[int, int]
    max_bind_attempts: int = 8


@dataclass(slots=True)
class CallInfo:
    """What the anchor knows of a session's call: tenant, client flow, the agent's AOR, start time."""

    tenant_id: str
    flow_id: int
    agent: str = ""  # the client side's address of record (From of its INVITE, or To toward it)
    started: float = 0.0


def agent_aor(request: Request, from_client: bool) -> str:
    """``sip:user@host`` of the client side of an initial INVITE (no parameters, no display name)."""
    return address_of_record((request.from_ if from_client else request.to).uri)


def _discard(data: bytes, addr: Any) -> None:
    return None


def _content_type(message: Request | Response) -> str:
    value = message.content_type or ""
    return value.split(";", 1)[0].strip().lower()


class MediaAnchor:
    """Every media session of one worker, keyed by Call-ID (see the module docstring)."""

    def __init__(
        self,
        settings: AnchorSettings,
        io: RelayIO,
        tenant_media: Callable[[str], str | None],
        client_transport: Callable[[int], str | None],
        leg_policer: Callable[[str], Policer] | None = None,
        app_media: Callable[[str], str | None] | None = None,
    ) -> None:
        self.settings = settings
        self._app_media = app_media
        #: The profile each SIP/TLS client flow last offered: calls toward it offer the same.
        self._flow_offered: dict[int, Profile] = {}
        self._leg_policer = leg_policer
        self.io = io
        self._tenant_media = tenant_media
        self._client_transport = client_transport
        self.allocator = PortAllocator(*settings.ports)
        self.sessions: dict[str, MediaSession] = {}
        self._by_flow: dict[int, set[str]] = {}
        self._heap: list[tuple[float, int, MediaSession]] = []
        self._seq = itertools.count()
        self._ended: list[MediaSession] = []
        self.counters: dict[str, int] = {}
        #: packets dropped by reason (garbage, unverified-source, ...) on legs already closed
        self.dropped_closed: dict[str, int] = {}
        self.problems: deque[str] = deque(maxlen=256)
        #: Told of every live session released (before its legs are closed): call-end records.
        self.on_released: Callable[[MediaSession, str], None] | None = None

    # ---------------------------------------------------------------------------- bookkeeping

    def count(self, name: str, problem: str | None = None) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1
        if problem is not None:
            self.problems.append(f"{name}: {problem}")

    def dropped(self) -> dict[str, int]:
        """Media packets dropped by reason since start: closed legs plus the open legs' counters."""
        out = dict(self.dropped_closed)
        for session in self.sessions.values():
            for leg in session.legs:
                if leg.port:
                    for reason, n in leg.counters.dropped.items():
                        out[reason] = out.get(reason, 0) + n
        return out

    @property
    def ports_in_use(self) -> int:
        """Relay ports currently handed out."""
        return self.allocator.in_use

    # ------------------------------------------------------------------------------ MediaHook

    def on_message(self, pair: Any, message: Request | Response, from_client: bool, now: float) -> int | None:
        """Rewrite the SDP body of ``message``; a SIP status to refuse it, else None."""
        if not message.body or _content_type(message) != SDP_TYPE:
            return None
        side = CLIENT if from_client else PBX
        call_id = message.call_id
        session = self.sessions.get(call_id)
        if session is not None and pair is not None:
            info = session.owner_data
            if isinstance(info, CallInfo) and info.tenant_id != pair.tenant_id:
                self.count("media_foreign_call", f"{pair.tenant_id} touched a call of {info.tenant_id}")
                return 403
        try:
            sdp = SessionDescription.parse(message.body)
        except RemoteProtocolError as exc:
            self.count("media_sdp_invalid", str(exc))
            return 488
        created = False
        try:
            kind = self._classify(session, message, side)
            if kind is None:
                return None
            if kind == "offer":
                if session is None:
                    if pair is None:
                        return None
                    session = self._new_session(call_id, pair, now)
                    created = True
                out = session.offer(side, sdp, now, message.cseq.seq)
            else:
                assert session is not None
                out = session.answer(side, sdp, now)
        except OutOfPorts as exc:
            self.count("media_ports_exhausted", str(exc))
            if created and session is not None:
                self._release(session, "no relay port")
            return 503
        except (RemoteProtocolError, LocalProtocolError) as exc:
            self.count("media_sdp_refused", str(exc))
            status = exc.status_hint if isinstance(exc, RemoteProtocolError) else None
            if created and session is not None:
                self._release(session, "SDP refused")
            return status if status is not None and status >= 400 else 488
        message.set_body(bytes(out))
        if kind == "offer" and side is CLIENT and pair is not None:
            self._client_offered(pair, session)
        self._schedule(session)
        self._reap()
        return None

    def _client_offered(self, pair: Any, session: MediaSession) -> None:
        """Remember what a mobile app offers; an unencrypted offer from an app that encrypted before
        is counted and logged (it is a downgrade: a misconfigured or tampered client)."""
        profile = session.profiles[CLIENT]
        if profile is None or self._client_transport(pair.flow_id) != "tls":
            return
        before = self._flow_offered.get(pair.flow_id)
        if profile is Profile.RTP and before in _ENCRYPTED:
            assert before is not None
            self.count(
                "media_unencrypted_from_capable_client",
                f"{pair.tenant_id}: flow {pair.flow_id} offered plain RTP after {before.name}",
            )
        self._flow_offered[pair.flow_id] = profile

    def client_profile(self, tenant_id: str, flow_id: int) -> Profile:
        """The profile offered toward a client: WebRTC for WebSocket clients; for the mobile app
        (SIP/TLS) what it last offered on that flow, else the tenant's ``app_media`` (SDES)."""
        transport = self._client_transport(flow_id)
        if transport != "tls":
            return _CLIENT_PROFILES.get(transport or "", Profile.WEBRTC)
        known = self._flow_offered.get(flow_id)
        if known is not None:
            return known
        setting = self._app_media(tenant_id) if self._app_media is not None else None
        return APP_PROFILES.get(setting or "sdes", Profile.SDES)

    def _classify(self, session: MediaSession | None, message: Request | Response, side: Any) -> str | None:
        if isinstance(message, Request):
            method = message.method
            if method in _OFFER_METHODS:
                return "offer" if method == "INVITE" or session is not None else None
            if method in _ANSWER_METHODS and session is not None:
                if method == "ACK" and session.expects_answer(side, message.cseq.seq):
                    return "answer"
                if method == "PRACK" and session.pending_offer_side not in (None, side):
                    return "answer"
            return None
        if not 101 <= message.status < 300 or message.cseq.method not in _RESPONSE_METHODS:
            return None
        if session is not None and session.expects_answer(side, message.cseq.seq):
            return "answer"
        if message.cseq.method == "INVITE":
            return "offer"  # an offer in a response to an INVITE that carried none
        return None

    def _new_session(self, call_id: str, pair: Any, now: float) -> MediaSession:
        mode = self._tenant_media(pair.tenant_id) or "bridge"
        tenant_id: str = pair.tenant_id
        leg_policer = self._leg_policer
        session = MediaSession(
            call_id,
            self.settings.session,
            self,
            pbx_profile=pbx_profile_for(mode),
            client_profile=self.client_profile(tenant_id, pair.flow_id),
            native_client=self._client_transport(pair.flow_id) == "tls",
            on_end=self._session_ended,
            policer=(lambda: leg_policer(tenant_id)) if leg_policer is not None else None,
            now=now,
        )
        try:
            agent = agent_aor(pair.request, pair.from_client)
        except (AttributeError, RemoteProtocolError):
            agent = ""
        session.owner_data = CallInfo(pair.tenant_id, pair.flow_id, agent, now)
        self.sessions[call_id] = session
        self._by_flow.setdefault(pair.flow_id, set()).add(call_id)
        self.count("media_sessions_created")
        return session

    def on_end(self, call_id: str, reason: str, tenant_id: str | None = None) -> None:
        """The call is over (BYE, CANCEL, failed INVITE ...): release its session, if any.

        With ``tenant_id``, only a session of that tenant is released (a message of one tenant never
        ends another tenant's call).
        """
        session = self.sessions.get(call_id)
        if session is None:
            return
        info = session.owner_data
        if tenant_id is not None and isinstance(info, CallInfo) and info.tenant_id != tenant_id:
            self.count("media_foreign_call", f"{tenant_id} tried to end a call of {info.tenant_id}")
            return
        self._release(session, reason)

    def on_flow_closed(self, flow_id: int, now: float) -> None:
        """The client's connection is gone: its calls lose their media."""
        self._flow_offered.pop(flow_id, None)
        for call_id in list(self._by_flow.get(flow_id, ())):
            self.on_end(call_id, "flow closed")

    def shutdown(self) -> None:
        """Release every session and port."""
        for session in list(self.sessions.values()):
            self._release(session, "shutdown")
        self._heap.clear()
        self._ended.clear()

    # ------------------------------------------------------------------------------ LegPorts

    def open(self, leg: Leg, rtcp_mux: bool) -> bool:
        """Allocate and bind the port(s) of a new leg."""
        allocator = self.allocator
        for _ in range(self.settings.max_bind_attempts):
            alloc = allocator.allocate(rtcp_mux=rtcp_mux)
            if alloc is None:
                return False
            send = self.io.open_port(alloc.rtp_port, leg, False)
            if send is None:
                allocator.release(alloc.rtp_port)
                self.count("media_port_bind_failed", f"port {alloc.rtp_port}")
                continue
            send_rtcp: Sender = _discard
            if alloc.rtcp_port is not None:
                opened = self.io.open_port(alloc.rtcp_port, leg, True)
                if opened is None:
                    self.io.close_port(alloc.rtp_port)
                    allocator.release(alloc.rtp_port)
                    self.count("media_port_bind_failed", f"port {alloc.rtcp_port}")
                    continue
                send_rtcp = opened
            leg.port = alloc.rtp_port
            leg.rtcp_port = alloc.rtcp_port
            leg.send = send
            leg.send_rtcp = send_rtcp
            return True
        return False

    def close(self, leg: Leg) -> None:
        """Close and give back the port(s) of a leg."""
        if not leg.port:
            return
        totals = self.dropped_closed
        for reason, n in leg.counters.dropped.items():
            totals[reason] = totals.get(reason, 0) + n
        self.io.close_port(leg.port)
        if leg.rtcp_port is not None:
            self.io.close_port(leg.rtcp_port)
        self.allocator.release(leg.port)
        leg.port = 0
        leg.rtcp_port = None
        leg.send = _discard
        leg.send_rtcp = _discard

    # -------------------------------------------------------------------------------- timers

    def _schedule(self, session: MediaSession) -> None:
        if session.ended is not None:
            return
        deadline = session.get_timer()
        if deadline is None:
            session.scheduled = None
            return
        if session.scheduled is None or deadline < session.scheduled:
            session.scheduled = deadline
            heapq.heappush(self._heap, (deadline, next(self._seq), session))

    def get_timer(self) -> float | None:
        """The earliest deadline of any session."""
        heap = self._heap
        while heap:
            deadline, _, session = heap[0]
            if session.ended is None and session.scheduled == deadline:
                return deadline
            heapq.heappop(heap)
        return None

    def handle_timer(self, now: float) -> None:
        """Run every session whose deadline has come; release those that ended."""
        heap = self._heap
        due: list[MediaSession] = []
        while heap and heap[0][0] <= now:
            deadline, _, session = heapq.heappop(heap)
            if session.ended is None and session.scheduled == deadline:
                session.scheduled = None
                due.append(session)
        for session in due:
            session.handle_timer(now)
            self._schedule(session)
        self._reap()

    def poke(self, session: MediaSession) -> None:
        """A datagram changed ``session``'s ICE/DTLS state: reschedule it; release ended sessions."""
        self._schedule(session)
        self._reap()

    # ------------------------------------------------------------------------------- release

    def _session_ended(self, session: MediaSession, reason: str) -> None:
        self._ended.append(session)

    def _reap(self) -> None:
        while self._ended:
            session = self._ended.pop()
            self._release(session, session.ended or "ended")

    def _release(self, session: MediaSession, reason: str) -> None:
        live = self.sessions.get(session.key) is session
        if live:
            del self.sessions[session.key]
        info = session.owner_data
        if isinstance(info, CallInfo):
            calls = self._by_flow.get(info.flow_id)
            if calls is not None:
                calls.discard(session.key)
                if not calls:
                    del self._by_flow[info.flow_id]
        if session.ended is None:
            session.ended = reason
        if live and self.on_released is not None:
            try:
                self.on_released(session, reason)
            except Exception as exc:  # a record must never keep ports from being released
                self.count("media_release_hook_failed", repr(exc))
        session.close()
        session.scheduled = None
        if live:
            self.count("media_sessions_ended:" + reason.split(":")[0])
        if len(self._heap) > 64 and len(self._heap) > 4 * (len(self.sessions) + 1):
            self._heap = [e for e in self._heap if e[2].ended is None and e[2].scheduled == e[0]]
            heapq.heapify(self._heap)
