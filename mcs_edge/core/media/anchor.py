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

Parking (calls that survive a network change, :mod:`mcs_edge.core.sip.flows`). When the client's
connection is lost the proxy parks (:meth:`park`) its answered calls: the client legs forget their
destination (media toward the lost client is dropped, counted as ``no-destination`` and, when the
session resumes or ends, as ``media_dropped_client_lost``), the PBX leg keeps its port and peer, and
the session's timers (idle, ICE consent, DTLS) stand still until ``until``. :meth:`move` gives the
call to the client's new connection and a new ``until``; :meth:`answer_locally` re-anchors the
client leg from the client's re-offer (:mod:`mcs_edge.core.media.reanchor`) and installs stream
continuity on the PBX legs. The session resumes (timers run again) once every client leg has a
destination again (ICE selected a pair of the new generation; non-ICE legs at once), or when
``until`` passes.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from mcs_edge.core.media.ports import PortAllocator
from mcs_edge.core.media.reanchor import StreamContinuity, clock_rate
from mcs_edge.core.media.sdp import Profile, SessionDescription, client_profile_for
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
from mcs_edge.core.rtp.srtp import PROFILES, SrtpContext
from mcs_edge.core.shaping import Policer
from mcs_edge.core.sip.calls import address_of_record
from mcs_edge.core.sip.message import Request, Response
from mcs_edge.errors import LocalProtocolError, RemoteProtocolError

__all__ = ["AnchorSettings", "CallInfo", "MediaAnchor", "RelayIO", "agent_aor"]

SDP_TYPE: Final = "application/sdp"
_OFFER_METHODS: Final = frozenset({"INVITE", "UPDATE"})
_ANSWER_METHODS: Final = frozenset({"ACK", "PRACK"})
_RESPONSE_METHODS: Final = frozenset({"INVITE", "UPDATE", "PRACK"})
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
    parked_until: float | None = None  # timers stand still until then (client connection lost)
    dropped_base: int = 0  # no-destination drops of the client legs when parked
    reanchored: bool = False  # the client re-offered since it was parked


_CallInfo = CallInfo


def agent_aor(request: Request, from_client: bool) -> str:
    """``sip:user@host`` of the client side of an initial INVITE (no parameters, no display name)."""
    return address_of_record((request.from_ if from_client else request.to).uri)


@dataclass(slots=True)
class _Adopted:
    """The (tenant, flow) of a call taken over from another node, shaped like a transaction pair."""

    tenant_id: str
    flow_id: int


def _discard(data: bytes, addr: Any) -> None:
    return None


def _reanchored(leg: Leg) -> bool:
    """A client leg that re-offered is reachable again: its ICE restart completed (a pair nominated
    under the new credentials, possibly at the old address), or it has no ICE."""
    ice = leg.ice
    if ice is None:
        return True
    return not ice.restarting and ice.selected_address is not None


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
        on_released: Callable[[MediaSession, str], None] | None = None,
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
        self.on_released = on_released
        self._forced_ports: list[tuple[int, int | None]] = []  # ports of legs being adopted

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
                out = session.offer_body(side, sdp, now, message.cseq.seq)
            else:
                assert session is not None
                out = session.answer_body(side, sdp, now)
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
        message.set_body(out)
        if kind == "offer" and side is CLIENT and pair is not None:
            self._client_offered(pair, session)
        info = session.owner_data
        if isinstance(info, _CallInfo) and info.parked_until is not None:
            self._renegotiated(session, info, from_client, now)
        self._schedule(session)
        self._reap()
        return None

    def _renegotiated(self, session: MediaSession, info: _CallInfo, from_client: bool, now: float) -> None:
        """A parked session's client took part in an offer/answer relayed to the PBX (not a
        transport-only re-offer, e.g. a passthrough tenant or a hold): once it completes, legs
        without ICE resume at once, ICE legs when their restart completes (:meth:`poke`)."""
        if from_client:
            info.reanchored = True
        if (
            info.reanchored
            and session.pending_offer_side is None
            and not any(leg.ice is not None for leg in session.legs if leg.side is CLIENT)
        ):
            self._unpark(session, info, now)

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
            return client_profile_for(transport)
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

    def flow_calls(self, flow_id: int) -> tuple[str, ...]:
        """The Call-IDs of the sessions anchored for the client connection ``flow_id``: what
        :meth:`on_flow_closed` may end (the others are not touched)."""
        return tuple(self._by_flow.get(flow_id, ()))

    def on_flow_closed(self, flow_id: int, now: float) -> None:
        """The client's connection is gone: its calls lose their media (except parked ones)."""
        self._flow_offered.pop(flow_id, None)
        for call_id in list(self._by_flow.get(flow_id, ())):
            session = self.sessions.get(call_id)
            info = session.owner_data if session is not None else None
            if isinstance(info, _CallInfo) and info.parked_until is not None:
                continue
            self.on_end(call_id, "flow closed")

    # ------------------------------------------------------------------------------- takeover

    def adopt(
        self,
        call_id: str,
        tenant_id: str,
        flow_id: int,
        from_client: bool,
        sdps: tuple[SessionDescription, SessionDescription],
        ports: list[tuple[int, int | None]],
        ice_credentials: list[tuple[str, str]],
        srtp: dict[int, tuple[str, bytes, bytes]],
        until: float,
        now: float,
    ) -> MediaSession:
        """Rebuild the media session of a call taken over from the node that died (docs/ha.md):
        the offer/answer of its last SDPs (``sdps`` = (client's, PBX's)) is replayed with the same
        local ICE credentials on the same relay ports (``ports``, in ``session.legs`` order), then
        each leg's SRTP context is keyed with the replicated keys (``srtp``: leg index -> (profile,
        local key||salt, remote key||salt)). The session is parked until ``until``: the client leg
        waits for its client to come back (ICE restart re-offer), the PBX leg works at once.
        Raises OutOfPorts when a port is taken, LocalProtocolError/RemoteProtocolError when the SDPs
        do not replay; nothing is left behind then."""
        pair = _Adopted(tenant_id, flow_id)
        session = self._new_session(call_id, pair, now)
        session.ice_credentials = [tuple(c) for c in ice_credentials]  # type: ignore[misc]
        self._forced_ports = list(ports)
        offerer, answerer = (CLIENT, PBX) if from_client else (PBX, CLIENT)
        try:
            session.offer(offerer, sdps[0 if from_client else 1], now, 1)
            session.answer(answerer, sdps[1 if from_client else 0], now)
            if self._forced_ports:
                raise LocalProtocolError(
                    f"{len(self._forced_ports)} replicated port(s) not used by the replay"
                )
        except Exception:
            self._forced_ports = []
            self._release(session, "takeover failed")
            raise
        self._forced_ports = []
        for i, (name, local, remote) in srtp.items():
            if i < len(session.legs):
                session.legs[i].srtp = SrtpContext(PROFILES[name], local, remote)
        self.park(call_id, until, now)
        self._schedule(session)
        return session

    # ------------------------------------------------------------------------------- parking

    def park(self, call_id: str, until: float, now: float) -> None:
        """The call's client connection is lost: hold its media until ``until`` (see the docstring)."""
        session = self.sessions.get(call_id)
        if session is None or not isinstance(session.owner_data, _CallInfo):
            return
        info = session.owner_data
        if info.parked_until is None:
            info.dropped_base = self._client_drops(session)
            self.count("media_sessions_parked")
        info.parked_until = until
        info.reanchored = False
        for leg in session.legs:
            if leg.side is CLIENT:
                leg.remote = None
        self._reschedule(session)

    def move(self, call_id: str, flow_id: int, until: float, now: float) -> None:
        """The call now belongs to client connection ``flow_id``; a parked session waits until ``until``
        for the client leg to re-anchor."""
        session = self.sessions.get(call_id)
        if session is None or not isinstance(session.owner_data, _CallInfo):
            return
        info = session.owner_data
        calls = self._by_flow.get(info.flow_id)
        if calls is not None:
            calls.discard(call_id)
            if not calls:
                del self._by_flow[info.flow_id]
        info.flow_id = flow_id
        self._by_flow.setdefault(flow_id, set()).add(call_id)
        if info.parked_until is not None:
            info.parked_until = until
            self._reschedule(session)

    def answer_locally(self, tenant_id: str, request: Request, now: float) -> bytes | None:
        """Re-anchor the client leg from a client re-offer that changed only its transport; the SDP
        answer, or None to forward the re-INVITE to the PBX."""
        session = self.sessions.get(request.call_id)
        if session is None or _content_type(request) != SDP_TYPE:
            return None
        info = session.owner_data
        if not isinstance(info, _CallInfo) or info.tenant_id != tenant_id:
            return None
        try:
            sdp = SessionDescription.parse(request.body)
        except RemoteProtocolError:
            return None
        snapshot = [(leg, leg.last_rtp) for leg in session.legs if leg.side is PBX and leg.last_rtp]
        since = max((leg.last_rx for leg in session.legs if leg.side is CLIENT), default=now)
        out = session.answer_locally(CLIENT, sdp, now, request.cseq.seq)
        if out is None:
            return None
        remote = session.remote_sdp[PBX]
        for leg, last in snapshot:
            continuity = StreamContinuity(last, since, clock_rate(remote, leg.index))
            leg.rewrite = continuity.rewrite
            leg.rewrite_rtcp = continuity.rewrite_rtcp
        self.count("media_reanchored")
        info.reanchored = True
        if info.parked_until is not None and not any(
            leg.ice is not None for leg in session.legs if leg.side is CLIENT
        ):
            self._unpark(session, info, now)  # no ICE to wait for: the SDP address is the new one
        self._schedule(session)
        self._reap()
        return bytes(out)

    def _client_drops(self, session: MediaSession) -> int:
        return sum(
            leg.counters.dropped.get("no-destination", 0) for leg in session.legs if leg.side is CLIENT
        )

    def _unpark(self, session: MediaSession, info: _CallInfo, now: float) -> None:
        info.parked_until = None
        dropped = self._client_drops(session) - info.dropped_base
        if dropped > 0:
            self.counters["media_dropped_client_lost"] = (
                self.counters.get("media_dropped_client_lost", 0) + dropped
            )
        for leg in session.legs:
            leg.last_rx = max(leg.last_rx, now)  # the time away is not idleness
            if leg.side is CLIENT and leg.remote is None:
                leg.remote = leg.ice.selected_address if leg.ice is not None else leg.sdp_remote
        self._reschedule(session)

    def _reschedule(self, session: MediaSession) -> None:
        session.scheduled = None
        self._schedule(session)

    def shutdown(self) -> None:
        """Release every session and port."""
        for session in list(self.sessions.values()):
            self._release(session, "shutdown")
        self._heap.clear()
        self._ended.clear()

    # ------------------------------------------------------------------------------ LegPorts

    def open(self, leg: Leg, rtcp_mux: bool) -> bool:
        """Allocate and bind the port(s) of a new leg (the replicated ones during :meth:`adopt`)."""
        allocator = self.allocator
        if self._forced_ports:
            rtp, rtcp = self._forced_ports.pop(0)
            claimed = allocator.claim(rtp, rtcp_mux=rtcp is None)
            if claimed is None:
                self.count("media_port_bind_failed", f"replicated port {rtp} is taken")
                return False
            return self._bind(leg, claimed)
        for _ in range(self.settings.max_bind_attempts):
            alloc = allocator.allocate(rtcp_mux=rtcp_mux)
            if alloc is None:
                return False
            if self._bind(leg, alloc):
                return True
        return False

    def _bind(self, leg: Leg, alloc: Any) -> bool:
        """Open the sockets of ``alloc`` for ``leg``; False (allocation given back) when one fails."""
        allocator = self.allocator
        send = self.io.open_port(alloc.rtp_port, leg, False)
        if send is None:
            allocator.release(alloc.rtp_port)
            self.count("media_port_bind_failed", f"port {alloc.rtp_port}")
            return False
        send_rtcp: Sender = _discard
        if alloc.rtcp_port is not None:
            opened = self.io.open_port(alloc.rtcp_port, leg, True)
            if opened is None:
                self.io.close_port(alloc.rtp_port)
                allocator.release(alloc.rtp_port)
                self.count("media_port_bind_failed", f"port {alloc.rtcp_port}")
                return False
            send_rtcp = opened
        leg.port = alloc.rtp_port
        leg.rtcp_port = alloc.rtcp_port
        leg.send = send
        leg.send_rtcp = send_rtcp
        return True

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
        info = session.owner_data
        if isinstance(info, _CallInfo) and info.parked_until is not None:
            deadline: float | None = info.parked_until
        else:
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
            info = session.owner_data
            if isinstance(info, _CallInfo) and info.parked_until is not None:
                if info.parked_until > now:
                    self._schedule(session)
                    continue
                self._unpark(session, info, now)  # nobody came back: timers run again
            session.handle_timer(now)
            self._schedule(session)
        self._reap()

    def poke(self, session: MediaSession, now: float | None = None) -> None:
        """A datagram changed ``session``'s ICE/DTLS state: reschedule it; release ended sessions."""
        info = session.owner_data
        if (
            isinstance(info, _CallInfo)
            and info.parked_until is not None
            and info.reanchored
            and now is not None
            and all(_reanchored(leg) for leg in session.legs if leg.side is CLIENT)
        ):
            self._unpark(session, info, now)  # the client leg re-anchored (ICE selected a pair)
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
        if isinstance(info, _CallInfo):
            if info.parked_until is not None:
                dropped = self._client_drops(session) - info.dropped_base
                if dropped > 0:
                    self.counters["media_dropped_client_lost"] = (
                        self.counters.get("media_dropped_client_lost", 0) + dropped
                    )
                info.parked_until = None
            calls = self._by_flow.get(info.flow_id)
            if calls is not None:
                calls.discard(session.key)
                if not calls:
                    del self._by_flow[info.flow_id]
        if session.ended is None:
            session.ended = reason
        if live and self.on_released is not None:
            for leg in session.legs:
                leg.sync()  # the call-end record reads the counters
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
