"""The media relay's sockets: one UDP socket per relay port, feeding the anchor's legs.

Theory of operation
-------------------
:class:`MediaRelay` owns the :class:`~mcs_edge.core.media.anchor.MediaAnchor` (sessions, port plan,
SDP rewriting) and is what the SIP proxy core uses as its media hook: it forwards the hook calls to
the anchor and re-arms the anchor's single timer (:class:`CoreTimer`) afterwards. As the anchor's
:class:`~mcs_edge.core.media.anchor.RelayIO` it binds a socket when a leg gets a port and closes it
when the leg is released.

Per packet (DESIGN.md, Performance budget): each relay port is a
:class:`~mcs_edge.tx.relay_endpoint.RelayEndpoint` (on Twisted's asyncio reactor, uvloop in
production, a native datagram endpoint of the loop on a socket bound synchronously, so bind errors
are known before the SDP names the port; ``listenUDP`` elsewhere). The loop calls
``datagram_received`` once per datagram, which makes the one Python call of the hot path,
``leg.receive(data, addr, now)``: demux, source check, police, (un)protect, forward with the other
leg's ``transport.sendto`` (a C method on uvloop, attached to the leg once the endpoint exists;
until then the endpoint's ``sendto`` on the bound socket). Only when the leg reports an ICE/DTLS
change does the relay poke the anchor and re-arm the timer.

In-process forwarding (``media.offload = "auto"``, the default, on the asyncio reactor with the
C module built; docs/performance.md, "In-process forwarding"): each relay port is instead read by a
C :class:`mcs_edge._fastfwd.Port` (``RelayEndpoints.open_fast``). When a leg's state is simple
(:meth:`Leg.offload_spec`: plain RTP, passthrough or SRTP (with keys) to one target that needs no
rewrite, the leg's own bucket, a tracker for the current SSRC) the relay installs that spec as the
Port's rule and the leg's fast path runs in C, libsrtp included, no Python per packet. The rule is
*revoked* (its counters folded back into the leg, :meth:`Leg.absorb_offload`) before any Python
code touches the leg: every datagram the rule hands on (RTCP, STUN, another source or SSRC, a late
packet) and every call into the anchor for its session (SIP messages, end, park, move, pokes); the
session's timers and stats pull the counters (:meth:`Leg.sync`), and so does the metrics collector
(:meth:`sync`). A session with ICE or DTLS *releases* its rules in its timer instead (ICE moves
``remote`` or ends the call on consent loss from timers, a DTLS timer may re-key a leg, no datagram
involved; :meth:`_Held.release`). After each such event the relay asks the leg again and
reinstalls. Ports close with their rule freed.

Failures: a port that cannot be bound makes the anchor try the next one; send errors are counted
by the legs; ICMP errors the loop reports are counted here; problems are logged rate-limited.
:meth:`stop` releases every session, cancels the timer and closes every socket.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from mcs_edge.certs import edge_dtls_certificate
from mcs_edge.core.media.anchor import AnchorSettings, MediaAnchor
from mcs_edge.core.media.offload import OffloadSpec, OffloadTaken
from mcs_edge.core.media.session import Leg, Sender, SessionSettings
from mcs_edge.core.shaping import Policer
from mcs_edge.tx.relay_endpoint import RelayEndpoint, RelayEndpoints, fastfwd
from mcs_edge.tx.timers import CoreTimer

if TYPE_CHECKING:
    from mcs_edge.config import EdgeConfig
    from mcs_edge.core.media.session import MediaSession
    from mcs_edge.core.sip.message import Request, Response
    from mcs_edge.tx.timers import Timers

__all__ = ["MediaRelay", "relay_settings"]

_LOG_PER_SECOND = 10
#: on_error kinds of the relay endpoints -> relay counters
_SOCKET_ERRORS = {"icmp": "media_icmp_errors", "send": "media_send_errors", "truncated": "media_truncated"}


def relay_settings(config: EdgeConfig) -> AnchorSettings:
    """The anchor's settings from ``[edge]``, ``[media]`` and ``[shaping]``."""
    media = config.media
    ipv6 = ":" in (media.bind or config.edge.public_address)
    return AnchorSettings(
        SessionSettings(
            client_host=config.edge.public_address,
            pbx_host=config.edge.backend_address,
            idle_timeout=media.idle_timeout,
            hold_timeout=media.hold_timeout,
            rate=float(config.shaping.rate),
            burst=float(config.shaping.burst),
            ipv6=ipv6,
            certificate=edge_dtls_certificate(),
            random_bytes=secrets.token_bytes,
        ),
        ports=media.ports,
    )


def _receiver(relay: MediaRelay, leg: Leg, rtcp: bool) -> Callable[[bytes, Any], None]:
    """The loop's ``datagram_received`` for one relay port: count, one call into the leg, and a
    poke of the anchor when the leg reports an ICE/DTLS change. A closure over what it uses, so
    the per-packet frame looks up nothing but the relay's packet counter."""
    receive = leg.receive_rtcp if rtcp else leg.receive
    now = relay.now
    poke = relay.poke

    def datagram_received(data: bytes, addr: Any) -> None:
        relay.py_packets += 1
        if receive(data, addr, now()):
            poke(leg)

    return datagram_received


def _fast_receiver(relay: MediaRelay, leg: Leg, rtcp: bool) -> Callable[[bytes, Any], None]:
    """The C Port's ``received`` for one relay port: a datagram its rule did not take. The leg's
    rule (if any) is revoked first, so the Python path sees the leg as if it had run every packet;
    afterwards the leg is asked whether a rule can hold it again."""
    receive = leg.receive_rtcp if rtcp else leg.receive
    now = relay.now
    poke = relay.poke
    consider = relay.consider
    moved = relay.moved

    def datagram_received(data: bytes, addr: Any) -> None:
        relay.py_packets += 1
        held = leg.offload
        if held is not None:
            held.revoke()  # type: ignore[attr-defined]
        remote = leg.remote
        if receive(data, addr, now()):
            poke(leg)
        if leg.remote is not remote:
            moved(leg)  # the rules sending to this leg's peer follow it
        if leg.offload is None:
            consider(leg)

    return datagram_received


def _exact(addr: Any, v6: bool) -> bool:
    """Is ``addr`` a tuple the C rule compares and sends to exactly as Python does (numeric,
    canonical, the socket's family: a 2-tuple on IPv4 sockets, a 4-tuple on IPv6 ones)?"""
    if not isinstance(addr, tuple) or len(addr) != (4 if v6 else 2) or not isinstance(addr[0], str):
        return False
    family = socket.AF_INET6 if v6 else socket.AF_INET
    try:
        return socket.inet_ntop(family, socket.inet_pton(family, addr[0])) == addr[0]
    except (OSError, ValueError):
        return False


class _Held:
    """The relay's hold on a leg through a C rule (the leg's ``offload``; core/media/offload.py)."""

    __slots__ = ("fast", "leg", "relay", "spec")

    def __init__(self, relay: MediaRelay, leg: Leg, fast: Any, spec: OffloadSpec) -> None:
        self.relay = relay
        self.leg = leg
        self.fast = fast
        self.spec = spec

    def sync(self) -> None:
        """Fold the rule's counters into the leg; the rule keeps running."""
        taken = self.fast.take()
        if taken is not None:
            self._apply(taken)

    def revoke(self) -> None:
        """Remove the rule; its counters go into the leg."""
        if self.leg.offload is self:
            self.leg.offload = None
        self.relay.held.pop(self.leg, None)
        taken = self.fast.revoke()
        if taken is not None:
            self._apply(taken)

    def release(self) -> None:
        """Remove the rule for a core timer that may move the leg (ICE); the relay asks the leg
        again once the timer has run (:meth:`MediaRelay._timer_fired`)."""
        self.revoke()
        self.relay.released.append(self.leg)

    def _apply(self, raw: tuple[Any, ...]) -> None:
        taken = OffloadTaken(*raw)
        self.leg.absorb_offload(self.spec, taken)
        if taken.send_errors:
            counters = self.relay.counters
            counters["media_send_errors"] = counters.get("media_send_errors", 0) + taken.send_errors


class _RelayPort:
    """One relay port: its endpoint and the one call per datagram into its leg."""

    __slots__ = ("datagram_received", "endpoint", "leg")

    def __init__(self, relay: MediaRelay, leg: Leg, rtcp: bool) -> None:
        self.leg = leg
        self.datagram_received = (_fast_receiver if relay.offload else _receiver)(relay, leg, rtcp)
        self.endpoint: RelayEndpoint | None = None

    def close(self) -> None:
        endpoint = self.endpoint
        if endpoint is not None:
            held = self.leg.offload
            if isinstance(held, _Held) and endpoint.fast is not None and held.fast is endpoint.fast:
                held.revoke()
            endpoint.close()
            self.endpoint = None


class MediaRelay:
    """Relay sockets + the media anchor; the SIP proxy's media hook (see the module docstring)."""

    log = Logger()

    def __init__(
        self,
        config: EdgeConfig,
        reactor: Any,
        timers: Timers,
        tenant_media: Callable[[str], str | None],
        client_transport: Callable[[int], str | None] = lambda _flow: "wss",
        leg_policer: Callable[[str], Policer] | None = None,
        app_media: Callable[[str], str | None] | None = None,
        over_limit: Callable[[], bool] = lambda: False,
        on_released: Callable[[MediaSession, str], None] | None = None,
    ) -> None:
        """``over_limit``: True while this worker relays more packets/s than
        ``overload.max_media_packet_rate`` (new calls then get 503); ``on_released``: told of
        every live session released (call-end records, tx/media/quality.py)."""
        self.reactor = reactor
        self.timers = timers
        self.now = timers.now
        self.settings = relay_settings(config)
        bind = config.media.bind
        if bind is None:
            bind = "::" if self.settings.session.ipv6 else "0.0.0.0"  # relay ports face the internet
        self.bind_host = bind
        self.endpoints = RelayEndpoints(reactor)
        #: True when relay ports are read by the C forwarding table (``media.offload``)
        self.offload = config.media.offload != "off" and self.endpoints.can_offload
        ff = fastfwd()
        #: datagrams handled in C (forwarded or policed by a rule); ``py_packets``: the others
        self.tally: Any = ff.Tally() if self.offload else None
        #: the legs a C rule holds
        self.held: dict[Leg, _Held] = {}
        #: legs whose rule a session timer released (ICE); asked again after the timer
        self.released: list[Leg] = []
        self.anchor = MediaAnchor(
            self.settings,
            self,
            tenant_media,
            client_transport,
            leg_policer,
            app_media=app_media,
            on_released=on_released,
        )
        self.timer = CoreTimer(timers, self.anchor, on_fire=lambda _result: self._timer_fired())
        self.ports: dict[int, _RelayPort] = {}
        self.counters: dict[str, int] = {}
        self._log_stamp = 0.0
        self._log_budget = 0
        self.py_packets = 0
        self.over_limit = over_limit

    @property
    def packets(self) -> int:
        """Datagrams received on every relay port (the overload probe turns it into a rate)."""
        tally = self.tally
        return self.py_packets + (tally.value if tally is not None else 0)

    @property
    def native(self) -> bool:
        """True when relay ports are native asyncio (uvloop) datagram endpoints."""
        return self.endpoints.native

    # ---------------------------------------------------------------------------- MediaHook
    def on_message(self, pair: Any, message: Request | Response, from_client: bool, now: float) -> int | None:
        if (
            pair is not None
            and getattr(message, "method", None) == "INVITE"
            and message.to.tag is None
            and self.over_limit()
        ):
            self.count("media_admission_refused")  # a new call while media load is above the limit
            return 503
        call_id = message.call_id
        self._release(call_id)
        status = self.anchor.on_message(pair, message, from_client, now)
        self._after(call_id)
        return status

    def on_end(self, call_id: str, reason: str, tenant_id: str | None = None) -> None:
        self._release(call_id)
        self.anchor.on_end(call_id, reason, tenant_id)
        self._after(call_id)

    def on_flow_closed(self, flow_id: int, now: float) -> None:
        # only the closed connection's calls are looked at (ended, or kept while parked): revoking
        # and reinstalling every rule of the worker took milliseconds per closed connection with 500
        # calls per worker (bench_workers.py --bench hold --turns)
        calls = self.anchor.flow_calls(flow_id)
        for call_id in calls:
            self._release(call_id)
        self.anchor.on_flow_closed(flow_id, now)
        self._after()
        if self.offload:
            for call_id in calls:
                session = self.anchor.sessions.get(call_id)
                if session is not None:
                    for leg in session.legs:
                        self.consider(leg)

    def park(self, call_id: str, until: float, now: float) -> None:
        self._release(call_id)
        self.anchor.park(call_id, until, now)
        self._after(call_id)

    def move(self, call_id: str, flow_id: int, until: float, now: float) -> None:
        self._release(call_id)
        self.anchor.move(call_id, flow_id, until, now)
        self._after(call_id)

    def answer_locally(self, tenant_id: str, request: Request, now: float) -> bytes | None:
        call_id = request.call_id
        self._release(call_id)
        body = self.anchor.answer_locally(tenant_id, request, now)
        self._after(call_id)
        return body

    # ------------------------------------------------------------------ in-process forwarding
    def consider(self, leg: Leg) -> None:
        """Install the leg's fast path as a C rule when the core says it can run there."""
        if leg.offload is not None or not self.offload:
            return
        spec = leg.offload_spec()
        if spec is None:
            return
        source = self.ports.get(leg.port)
        target = self.ports.get(spec.target.port)
        if source is None or target is None or source.leg is not leg or target.leg is not spec.target:
            return
        sep, tep = source.endpoint, target.endpoint
        if sep is None or tep is None or sep.fast is None or tep.fast is None:
            return
        v6 = self.settings.session.ipv6
        if not (_exact(spec.source, v6) and _exact(spec.dest, v6)):
            return
        sep.fast.install(
            spec.source,
            tep.fast,
            spec.dest,
            spec.rate,
            spec.burst,
            spec.tokens,
            spec.last,
            spec.trackers,
            spec.current,
            spec.unprotect,
            spec.protect,
        )
        held = _Held(self, leg, sep.fast, spec)
        leg.offload = held
        self.held[leg] = held

    def moved(self, leg: Leg) -> None:
        """``leg.remote`` changed (re-latched): rules forwarding to it are revoked and asked again."""
        for other in leg.session.legs:
            held = other.offload
            if isinstance(held, _Held) and held.spec.target is leg:
                held.revoke()
                self.consider(other)

    def sync(self) -> None:
        """Fold every rule's counters into its leg (metrics, admin); the rules keep running."""
        for held in list(self.held.values()):
            held.sync()

    def _timer_fired(self) -> None:
        """After the anchor's timer: ask again the legs whose rules a session timer released (ICE
        may have moved a ``remote`` or ended the call: then no rule comes back)."""
        self._log_problems()
        released = self.released
        if released:
            self.released = []
            for leg in released:
                if leg.session.ended is None:
                    self.consider(leg)

    def _release(self, call_id: str) -> None:
        """Revoke the rules of the call's legs: the anchor is about to look at or change them."""
        if not self.held:
            return
        session = self.anchor.sessions.get(call_id)
        if session is not None:
            for leg in session.legs:
                held = leg.offload
                if isinstance(held, _Held):
                    held.revoke()

    def _release_all(self) -> None:
        for held in list(self.held.values()):
            held.revoke()

    # ------------------------------------------------------------------------------ RelayIO
    def open_port(self, port: int, leg: Leg, rtcp: bool) -> Sender | None:
        if port in self.ports:
            return None
        relay_port = _RelayPort(self, leg, rtcp)

        def ready(sendto: Sender) -> None:  # the loop's own sendto, straight from the leg
            if rtcp:
                leg.send_rtcp = sendto
            else:
                leg.send = sendto

        try:
            if self.offload:
                endpoint = self.endpoints.open_fast(
                    self.bind_host,
                    port,
                    relay_port.datagram_received,
                    on_error=self._socket_error,
                    tally=self.tally,
                )
                ready(endpoint.sendto)
            else:
                endpoint = self.endpoints.open(
                    self.bind_host,
                    port,
                    relay_port.datagram_received,
                    on_ready=ready,
                    on_error=self._socket_error,
                    on_failed=lambda exc: self._endpoint_failed(port, exc),
                )
        except (OSError, CannotListenError) as exc:
            self.count("media_bind_errors")
            self.problem(f"cannot bind relay port {self.bind_host}:{port}: {exc}")
            return None
        relay_port.endpoint = endpoint
        self.ports[port] = relay_port
        return endpoint.sendto

    def _socket_error(self, kind: str) -> None:
        self.count(_SOCKET_ERRORS.get(kind, "media_send_errors"))

    def _endpoint_failed(self, port: int, exc: BaseException) -> None:
        self.count("media_endpoint_failed")
        self.problem(f"datagram endpoint on port {port} failed: {exc!r}")
        self._log_problems()

    def close_port(self, port: int) -> None:
        relay_port = self.ports.pop(port, None)
        if relay_port is not None:
            relay_port.close()

    # --------------------------------------------------------------------------------- misc
    def poke(self, leg: Leg) -> None:
        """A datagram changed ICE/DTLS state of the leg's session: reschedule, reap, re-arm."""
        session = leg.session
        if self.held:
            for other in session.legs:
                held = other.offload
                if isinstance(held, _Held):
                    held.revoke()
        self.anchor.poke(session, self.now())
        self.timer.arm()
        if self.anchor.problems:
            self._log_problems()
        if self.offload and session.ended is None:
            for other in session.legs:
                self.consider(other)

    def rearm(self) -> None:
        """Re-arm the relay's timer after sessions were added outside a SIP message (takeover)."""
        self._after()

    def _after(self, call_id: str | None = None) -> None:
        self.timer.arm()
        self._log_problems()
        if call_id is not None and self.offload:
            session = self.anchor.sessions.get(call_id)
            if session is not None:
                for leg in session.legs:
                    self.consider(leg)

    def count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def problem(self, text: str) -> None:
        self.anchor.problems.append(text)

    def _log_problems(self) -> None:
        problems = self.anchor.problems
        if not problems:
            return
        now = self.now()
        if now - self._log_stamp >= 1.0:
            self._log_stamp = now
            self._log_budget = _LOG_PER_SECOND
        while problems:
            text = problems.popleft()
            if self._log_budget > 0:
                self._log_budget -= 1
                self.log.info("MED400 {problem}", problem=text)
            else:
                self.count("log_suppressed")

    def stop(self) -> None:
        """Release every session and port; cancel the timer and the endpoints being created."""
        self._release_all()
        self.released = []
        self.anchor.shutdown()
        self.timer.cancel()
        for port in list(self.ports):
            self.close_port(port)
        self.endpoints.close()
