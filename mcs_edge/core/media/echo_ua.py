"""The echo user agent: calls to ``echo@<tenant domain>`` are answered by the edge and hear themselves.

Theory of operation
-------------------
Sans-IO: requests come in with ``now``, responses come out, and everything else the user agent
wants done is an *action* in :attr:`EchoUA.actions` (send a BYE on a flow, schedule a media session
on the relay's timer heap, report a problem, note a call ended by its media), taken by the adapter
(:mod:`mcs_edge.tx.media.echo`) after each input. Its own timers (the call time limit, the grace of
a lost connection, work deferred "after this turn") are one deadline: :meth:`EchoUA.get_timer` /
:meth:`EchoUA.handle_timer`. Tags, SSRCs and SDP origin ids come from the ``random_bytes`` function given to it.

Tenants with ``echo = true`` (on for the embedded demo tenant) have a reserved user,
:data:`ECHO_USER`. The SIP proxy core asks the user agent, through its
:class:`~mcs_edge.core.sip.proxy.LocalService` hook, about every request from a client after the
tenant checks; requests to the echo user (and every later request of an echo call, by Call-ID on
the same flow) are answered here and never reach a PBX. It is a small user agent server
(RFC 3261 s.8.2 and s.12.2.2; RFC 3311 for UPDATE; RFC 6086 for INFO):

=================================  =================================================================
request                            answer
=================================  =================================================================
INVITE with an SDP offer           100 (by the proxy), 200 with the SDP answer; the call starts
INVITE without SDP                 200 with an SDP offer; the answer comes in the ACK
INVITE with a non-SDP body         415 with Accept (RFC 3261 s.8.2.3)
INVITE over the limits             486 Busy Here; no free relay port: 503; after stop: 503
INVITE whose SDP is refused        488 Not Acceptable Here
ACK                                absorbed (carries the answer to a delayed offer)
re-INVITE / UPDATE                 200 with the new answer (hold, ICE restart); 488 keeps the call
BYE                                200; the call's media is released
CANCEL                             200 from the proxy (the INVITE was already answered: no effect)
OPTIONS (in or out of a dialog)    200 with Allow and Accept
INFO                               200 (DTMF is not interpreted)
in-dialog request, wrong To tag    481 Call/Transaction Does Not Exist (ACK: dropped)
request of a call on another flow  403, unless the call's connection is lost and the request is of
                                   the same dialog from the same tenant: the call moves to the flow
anything else                      405 with Allow
malformed request                  400 (ACK: dropped)
=================================  =================================================================

Media. Each call has a normal :class:`~mcs_edge.core.media.session.MediaSession` whose caller side
is the production path (WebRTC: ICE-lite, DTLS-SRTP, BUNDLE mirrored; SDES for the mobile app) on a
relay port of the media anchor, and whose other side is a loop
(:mod:`mcs_edge.core.media.loopback`): every RTP packet the caller sends is decrypted, its SSRC
replaced, re-encrypted and sent back, so its round trip measures the caller's network to the edge.
When a session ends on its own (idle, consent lost, DTLS failure) or a call lasts
:data:`MAX_SECONDS`, the edge sends BYE.

Limits: at most :data:`MAX_PER_FLOW` echo calls per connection and :data:`MAX_PER_TENANT` per
tenant (486 Busy Here beyond); no free relay port answers 503. Every call is released on every
path: BYE, the connection closing, media ending, the time limit, shutdown.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

from mcs_edge.core.media.loopback import LoopbackPorts, echo_answer, echo_offer
from mcs_edge.core.media.sdp import Profile, SessionDescription, client_profile_for
from mcs_edge.core.media.session import CLIENT, PBX, MediaSession, OutOfPorts
from mcs_edge.core.randomness import RandomBytes
from mcs_edge.core.sip.headers import SipUri, parse_name_addr
from mcs_edge.core.sip.message import Request, Response
from mcs_edge.errors import LocalProtocolError, RemoteProtocolError

if TYPE_CHECKING:
    from mcs_edge.core.media.anchor import MediaAnchor
    from mcs_edge.core.shaping import Policer
    from mcs_edge.core.sip.proxy import Flow

__all__ = [
    "ALLOW",
    "ECHO_USER",
    "MAX_PER_FLOW",
    "MAX_PER_TENANT",
    "MAX_SECONDS",
    "EchoCall",
    "EchoUA",
    "MediaEnded",
    "Problem",
    "Schedule",
    "SendRequest",
]

ECHO_USER: Final = "echo"
MAX_PER_FLOW: Final = 2
MAX_PER_TENANT: Final = 100
MAX_SECONDS: Final = 600.0
ALLOW: Final = "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, INFO"
SDP: Final = "application/sdp"


class EchoSettings(Protocol):
    """What the user agent reads from the proxy's settings (Server header, Contact)."""

    @property
    def server_name(self) -> str: ...

    @property
    def public_host(self) -> str: ...

    def client_port(self, transport: str) -> int: ...


# ------------------------------------------------------------------------------------- actions
@dataclass(frozen=True, slots=True)
class SendRequest:
    """Send ``request`` (a BYE the edge originates) on the client flow ``flow_id``."""

    flow_id: int
    request: Request


@dataclass(frozen=True, slots=True)
class Schedule:
    """Put ``session`` on the relay's timer heap (ICE consent, DTLS, idle)."""

    session: MediaSession


@dataclass(frozen=True, slots=True)
class Problem:
    """Bad input from a caller (counted and logged rate-limited by the media relay)."""

    text: str


@dataclass(frozen=True, slots=True)
class MediaEnded:
    """A call ended by its media (log ECH200)."""

    tenant: str
    reason: str


Action = SendRequest | Schedule | Problem | MediaEnded


def _tag_of(name_addr: str) -> str | None:
    try:
        return parse_name_addr(name_addr).tag
    except (RemoteProtocolError, ValueError):
        return None


@dataclass(slots=True, eq=False)
class EchoCall:
    """One answered echo call (a dialog where the edge is the UAS)."""

    call_id: str
    tenant_id: str
    flow_id: int
    transport: str
    local_tag: str
    local_party: str  # our From in requests we send (the INVITE's To with our tag)
    remote_party: str  # their From
    remote_target: str  # their Contact URI
    session: MediaSession
    ports: LoopbackPorts
    created: float
    cseq: int = 0
    confirmed: bool = False
    limit_at: float | None = None  # created + MAX_SECONDS
    lost_at: float | None = None  # end of the grace of a lost connection (None: connected)


class EchoUA:
    """The echo user agent (see the module docstring); the proxy core's ``local`` hook.

    ``anchor`` owns the relay ports; ``clock`` is the loop's time source (packets looped back
    carry no ``now``); ``random_bytes`` is the random source; ``grace`` is the proxy's current flow grace;
    ``wake`` is called when work became due outside an input (a session ended from inside).
    """

    def __init__(
        self,
        settings: Callable[[], EchoSettings],
        anchor: MediaAnchor,
        *,
        clock: Callable[[], float],
        random_bytes: RandomBytes,
        grace: Callable[[], float],
        leg_policer: Callable[[str], Policer] | None = None,
        wake: Callable[[], None] | None = None,
    ) -> None:
        self._settings = settings
        self.anchor = anchor
        self._clock = clock
        self._random_bytes = random_bytes
        self._grace = grace
        self._leg_policer = leg_policer
        self.wake = wake
        self.calls: dict[str, EchoCall] = {}
        self._by_flow: dict[int, set[str]] = {}
        self._per_tenant: dict[str, int] = {}
        #: (tenant, result) -> calls: "answered", "busy", "no_port", "bad_sdp", "recovered".
        self.outcomes: dict[tuple[str, str], int] = {}
        #: (tenant, reason) -> ended calls: "bye", "flow_closed", "media", "max_duration", "shutdown".
        self.ended: dict[tuple[str, str], int] = {}
        #: tenant -> RTP packets looped back by ended calls (live ones are added by :meth:`looped_now`).
        self.looped: dict[str, int] = {}
        self.stopped = False
        #: What the adapter must do, in order; it takes them after every input.
        self.actions: list[Action] = []
        #: Calls to hang up at the next timer ("after this turn"): (call_id, session, reason, why),
        #: ``why`` being the session's own end reason when it ended by itself (logged), else None.
        self._due: list[tuple[str, MediaSession, str, str | None]] = []

    def _tag(self) -> str:
        return self._random_bytes(6).hex()

    def take_actions(self) -> list[Action]:
        out, self.actions = self.actions, []
        return out

    # ---------------------------------------------------------------------------- LocalService
    def claims(self, flow: Flow, request: Request) -> bool:
        """True for requests of an echo call on this flow, and requests to the echo user."""
        try:
            call = self.calls.get(request.call_id)
            if call is not None:
                return call.flow_id == flow.id or self._may_take_over(call, flow, request)
            if request.method in ("ACK", "CANCEL") or not getattr(flow.tenant, "echo", False):
                return False
            if request.to.tag is not None:
                return False
            uri = request.request_uri
        except (RemoteProtocolError, LocalProtocolError, ValueError):
            return False  # the proxy answers or drops what it cannot parse
        return isinstance(uri, SipUri) and uri.user == ECHO_USER

    def request(self, flow: Flow, request: Request, now: float) -> Response | None:
        """Answer one claimed request (None for an ACK); a malformed one gets 400 (an ACK: dropped)."""
        try:
            return self._request(flow, request, now)
        except (RemoteProtocolError, LocalProtocolError, ValueError) as exc:
            self.actions.append(Problem(f"echo: bad {request.method}: {exc}"))
            if request.method == "ACK":
                return None
            return Response.for_request(request, 400, "Bad Request")

    def on_flow_closed(self, flow_id: int, now: float) -> None:
        """The caller's connection is gone: its answered echo calls wait the flow grace for the
        caller to come back on a new connection (re-INVITE of the same dialog), then end without
        BYE; unconfirmed ones end at once."""
        grace = self._grace()
        for call_id in list(self._by_flow.get(flow_id, ())):
            call = self.calls.get(call_id)
            if call is None:
                continue
            if grace > 0 and call.confirmed and not self.stopped:
                call.lost_at = now + grace
            else:
                self._release(call, "flow_closed")

    # --------------------------------------------------------------------------------- timer
    def get_timer(self) -> float | None:
        """The earliest deadline (-inf when work is due now), None when there is none."""
        if self._due:
            return float("-inf")
        deadline: float | None = None
        for call in self.calls.values():
            for at in (call.limit_at, call.lost_at):
                if at is not None and (deadline is None or at < deadline):
                    deadline = at
        return deadline

    def handle_timer(self, now: float) -> None:
        due, self._due = self._due, []
        for call_id, session, reason, why in due:
            call = self.calls.get(call_id)
            if call is not None and call.session is session:
                if why is not None:
                    self.actions.append(MediaEnded(call.tenant_id, why))
                self._hang_up(call, reason)
            elif why is not None:
                session.close()
        for call in list(self.calls.values()):
            if call.lost_at is not None and call.lost_at <= now:
                call.lost_at = None
                self._release(call, "flow_closed")
            elif call.limit_at is not None and call.limit_at <= now:
                call.limit_at = None
                self._hang_up(call, "max_duration")

    # ------------------------------------------------------------------------------ requests
    def _may_take_over(self, call: EchoCall, flow: Flow, request: Request) -> bool:
        """A call whose connection is lost (in grace) continues on ``flow`` when the request is of
        the same dialog (Call-ID, both tags) from the same tenant. The echo involves no PBX and no
        registration, so the dialog identifiers are the proof (unlike PBX calls, which need the
        client's instance binding, core/sip/flows.py)."""
        return (
            call.lost_at is not None
            and flow.tenant.id == call.tenant_id
            and request.to.tag == call.local_tag
            and request.from_.tag == _tag_of(call.remote_party)
        )

    def _take_over(self, call: EchoCall, flow: Flow) -> None:
        old = self._by_flow.get(call.flow_id)
        if old is not None:
            old.discard(call.call_id)
            if not old:
                del self._by_flow[call.flow_id]
        call.lost_at = None
        call.flow_id = flow.id
        call.transport = flow.transport
        self._by_flow.setdefault(flow.id, set()).add(call.call_id)
        self._count(self.outcomes, call.tenant_id, "recovered")

    def _request(self, flow: Flow, request: Request, now: float) -> Response | None:
        method = request.method
        call = self.calls.get(request.call_id)
        if call is not None and call.flow_id != flow.id:
            if not self._may_take_over(call, flow, request):
                return None if method == "ACK" else self._reply(request, 403, "Forbidden")
            self._take_over(call, flow)
        if call is None:
            if method == "INVITE":
                return self._invite(flow, request, now)
            if method == "OPTIONS":
                return self._options(request)
            if method == "ACK":
                return None
            return self._reply(request, 405, "Method Not Allowed", allow=True)
        if request.to.tag != call.local_tag:
            return None if method == "ACK" else self._reply(request, 481, "Call/Transaction Does Not Exist")
        if method == "ACK":
            self._ack(call, request, now)
            return None
        if method == "BYE":
            self._release(call, "bye")
            return self._reply(request, 200, "OK")
        if method in ("INVITE", "UPDATE"):
            return self._reoffer(call, request, now)
        if method == "OPTIONS":
            return self._options(request)
        if method == "INFO":
            return self._reply(request, 200, "OK")
        return self._reply(request, 405, "Method Not Allowed", allow=True)

    def _reply(
        self, request: Request, status: int, reason: str, *, tag: str | None = None, allow: bool = False
    ) -> Response:
        resp = Response.for_request(request, status, reason, to_tag=tag or self._tag())
        resp.headers.add("Server", self._settings().server_name)
        if allow:
            resp.headers.add("Allow", ALLOW)
        return resp

    def _options(self, request: Request) -> Response:
        resp = self._reply(request, 200, "OK", allow=True)
        resp.headers.add("Accept", SDP)
        return resp

    def _contact(self, transport: str) -> str:
        s = self._settings()
        host = f"[{s.public_host}]" if ":" in s.public_host else s.public_host
        kind = "ws" if transport in ("wss", "ws") else "tls"
        return f"<sip:{ECHO_USER}@{host}:{s.client_port(transport)};transport={kind}>"

    def _answer_with(self, request: Request, call: EchoCall, body: bytes) -> Response:
        resp = self._reply(request, 200, "OK", tag=call.local_tag, allow=True)
        resp.headers.add("Contact", self._contact(call.transport))
        resp.headers.add("Supported", "outbound")
        resp.set_body(body, SDP)
        return resp

    @staticmethod
    def _count(table: dict[tuple[str, str], int], tenant_id: str, what: str) -> None:
        key = (tenant_id, what)
        table[key] = table.get(key, 0) + 1

    def _invite(self, flow: Flow, request: Request, now: float) -> Response:
        tenant_id: str = flow.tenant.id
        if self.stopped:
            return self._reply(request, 503, "Service Unavailable")
        if (
            len(self._by_flow.get(flow.id, ())) >= MAX_PER_FLOW
            or self._per_tenant.get(tenant_id, 0) >= MAX_PER_TENANT
        ):
            self._count(self.outcomes, tenant_id, "busy")
            return self._reply(request, 486, "Busy Here (echo calls limit)")
        if request.body and (request.content_type or "").split(";")[0].strip().lower() != SDP:
            self._count(self.outcomes, tenant_id, "bad_sdp")
            resp = self._reply(request, 415, "Unsupported Media Type")
            resp.headers.add("Accept", SDP)
            return resp
        anchor = self.anchor
        ports = LoopbackPorts(anchor, self._clock, self._random_bytes)
        policer = self._leg_policer
        session = MediaSession(
            request.call_id,
            anchor.settings.session,
            ports,
            pbx_profile=Profile.RTP,
            client_profile=client_profile_for(flow.transport),
            on_end=self._media_ended,
            policer=(lambda: policer(tenant_id)) if policer is not None else None,
            now=now,
        )
        try:
            if request.body:
                offered = session.offer(CLIENT, SessionDescription.parse(request.body), now, request.cseq.seq)
                body = bytes(session.answer(PBX, echo_answer(offered, self._random_bytes), now))
            else:  # delayed offer: ours goes in the 200, the answer in the ACK
                host = anchor.settings.session.pbx_host
                body = bytes(session.offer(PBX, echo_offer(host, self._random_bytes), now, request.cseq.seq))
        except OutOfPorts:
            session.close()
            self._count(self.outcomes, tenant_id, "no_port")
            return self._reply(request, 503, "Service Unavailable (no relay port)")
        except (RemoteProtocolError, LocalProtocolError) as exc:
            session.close()
            self._count(self.outcomes, tenant_id, "bad_sdp")
            self.actions.append(Problem(f"echo: SDP refused: {exc}"))
            return self._reply(request, 488, "Not Acceptable Here")
        contacts = request.contacts
        target = str(contacts[0].uri) if contacts and not contacts[0].is_star else str(request.from_.uri)
        call = EchoCall(
            call_id=request.call_id,
            tenant_id=tenant_id,
            flow_id=flow.id,
            transport=flow.transport,
            local_tag=self._tag(),
            local_party=request.headers.get("to") or "",
            remote_party=request.headers.get("from") or "",
            remote_target=target,
            session=session,
            ports=ports,
            created=now,
            limit_at=now + MAX_SECONDS,
        )
        call.local_party += f";tag={call.local_tag}"
        self.calls[call.call_id] = call
        self._by_flow.setdefault(flow.id, set()).add(call.call_id)
        self._per_tenant[tenant_id] = self._per_tenant.get(tenant_id, 0) + 1
        self._count(self.outcomes, tenant_id, "answered")
        self._schedule(session)
        return self._answer_with(request, call, body)

    def _ack(self, call: EchoCall, ack: Request, now: float) -> None:
        call.confirmed = True
        session = call.session
        if not ack.body or not session.expects_answer(CLIENT, ack.cseq.seq) or session.established:
            return
        try:
            session.answer(CLIENT, SessionDescription.parse(ack.body), now)
        except (RemoteProtocolError, LocalProtocolError) as exc:
            self.actions.append(Problem(f"echo: answer in ACK refused: {exc}"))
            self._due.append((call.call_id, session, "media", None))  # hang up after this turn
            return
        self._schedule(session)

    def _reoffer(self, call: EchoCall, request: Request, now: float) -> Response:
        session = call.session
        try:
            if request.body:
                offered = session.offer(CLIENT, SessionDescription.parse(request.body), now, request.cseq.seq)
                body = bytes(session.answer(PBX, echo_answer(offered, self._random_bytes), now))
            else:
                host = self.anchor.settings.session.pbx_host
                body = bytes(session.offer(PBX, echo_offer(host, self._random_bytes), now, request.cseq.seq))
        except OutOfPorts:
            return self._reply(request, 503, "Service Unavailable (no relay port)", tag=call.local_tag)
        except (RemoteProtocolError, LocalProtocolError) as exc:
            self.actions.append(Problem(f"echo: re-offer refused: {exc}"))
            return self._reply(request, 488, "Not Acceptable Here", tag=call.local_tag)
        self._schedule(session)
        return self._answer_with(request, call, body)

    # --------------------------------------------------------------------------------- media
    def _schedule(self, session: MediaSession) -> None:
        if session.legs:
            self.actions.append(Schedule(session))

    def _media_ended(self, session: MediaSession, reason: str) -> None:
        # Called from inside the session (a timer or a datagram): hang up after this turn.
        self._due.append((session.key, session, "media", reason))
        if self.wake is not None:
            self.wake()

    def _hang_up(self, call: EchoCall, reason: str) -> None:
        """End a call from our side: release, then a BYE to the caller."""
        call.cseq += 1
        bye = Request("BYE", call.remote_target)
        headers = bye.headers
        headers.add("Max-Forwards", "70")
        headers.add("From", call.local_party)
        headers.add("To", call.remote_party)
        headers.add("Call-ID", call.call_id)
        headers.add("CSeq", f"{call.cseq} BYE")
        headers.add("Reason", f'SIP;cause=200;text="echo {reason.replace("_", " ")}"')
        headers.add("Content-Length", "0")
        self._release(call, reason)
        self.actions.append(SendRequest(call.flow_id, bye))

    def _release(self, call: EchoCall, reason: str) -> None:
        if self.calls.get(call.call_id) is not call:
            return
        del self.calls[call.call_id]
        flow_calls = self._by_flow.get(call.flow_id)
        if flow_calls is not None:
            flow_calls.discard(call.call_id)
            if not flow_calls:
                del self._by_flow[call.flow_id]
        left = self._per_tenant.get(call.tenant_id, 1) - 1
        if left > 0:
            self._per_tenant[call.tenant_id] = left
        else:
            self._per_tenant.pop(call.tenant_id, None)
        call.limit_at = None
        call.lost_at = None
        self.looped[call.tenant_id] = self.looped.get(call.tenant_id, 0) + call.ports.looped
        self._count(self.ended, call.tenant_id, reason)
        session = call.session
        if session.ended is None:
            session.ended = f"echo: {reason}"
        session.close()

    # --------------------------------------------------------------------------- operations
    def stop(self) -> None:
        """BYE and release every echo call; refuse new ones."""
        self.stopped = True
        for call in list(self.calls.values()):
            self._hang_up(call, "shutdown")

    def stats(self, call_id: str) -> dict[str, Any] | None:
        """The media counters of one live echo call (tests, admin)."""
        call = self.calls.get(call_id)
        if call is None:
            return None
        out = call.session.stats()
        out["looped"] = call.ports.looped
        out["rtcp_dropped"] = call.ports.rtcp_dropped
        return out

    def live(self) -> dict[str, int]:
        """tenant -> echo calls in progress."""
        return dict(self._per_tenant)

    def looped_now(self) -> dict[str, int]:
        """tenant -> RTP packets looped back, ended and live calls."""
        looped = dict(self.looped)
        for call in self.calls.values():
            looped[call.tenant_id] = looped.get(call.tenant_id, 0) + call.ports.looped
        return looped
