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

Failures: a port that cannot be bound makes the anchor try the next one; send errors are counted
by the legs; ICMP errors the loop reports are counted here; problems are logged rate-limited.
:meth:`stop` releases every session, cancels the timer and closes every socket.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from mcs_edge.certs import edge_dtls_certificate
from mcs_edge.core.media.anchor import AnchorSettings, MediaAnchor
from mcs_edge.core.media.session import Leg, Sender, SessionSettings
from mcs_edge.core.shaping import Policer
from mcs_edge.tx.relay_endpoint import RelayEndpoint, RelayEndpoints
from mcs_edge.tx.timers import CoreTimer

if TYPE_CHECKING:
    from mcs_edge.config import EdgeConfig
    from mcs_edge.core.media.session import MediaSession
    from mcs_edge.core.sip.message import Request, Response
    from mcs_edge.tx.timers import Timers

__all__ = ["MediaRelay", "relay_settings"]

_LOG_PER_SECOND = 10


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
        relay.packets += 1
        if receive(data, addr, now()):
            poke(leg)

    return datagram_received


class _RelayPort:
    """One relay port: its endpoint and the one call per datagram into its leg."""

    __slots__ = ("datagram_received", "endpoint", "leg")

    def __init__(self, relay: MediaRelay, leg: Leg, rtcp: bool) -> None:
        self.leg = leg
        self.datagram_received = _receiver(relay, leg, rtcp)
        self.endpoint: RelayEndpoint | None = None

    def close(self) -> None:
        if self.endpoint is not None:
            self.endpoint.close()
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
        self.anchor = MediaAnchor(
            self.settings,
            self,
            tenant_media,
            client_transport,
            leg_policer,
            app_media=app_media,
            on_released=on_released,
        )
        self.timer = CoreTimer(timers, self.anchor, on_fire=lambda _result: self._log_problems())
        self.ports: dict[int, _RelayPort] = {}
        self.counters: dict[str, int] = {}
        self._log_stamp = 0.0
        self._log_budget = 0
        #: Datagrams received on every relay port (the overload probe turns it into a rate).
        self.packets = 0
        self.over_limit = over_limit

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
        status = self.anchor.on_message(pair, message, from_client, now)
        self._after()
        return status

    def on_end(self, call_id: str, reason: str, tenant_id: str | None = None) -> None:
        self.anchor.on_end(call_id, reason, tenant_id)
        self._after()

    def on_flow_closed(self, flow_id: int, now: float) -> None:
        self.anchor.on_flow_closed(flow_id, now)
        self._after()

    def park(self, call_id: str, until: float, now: float) -> None:
        self.anchor.park(call_id, until, now)
        self._after()

    def move(self, call_id: str, flow_id: int, until: float, now: float) -> None:
        self.anchor.move(call_id, flow_id, until, now)
        self._after()

    def answer_locally(self, tenant_id: str, request: Request, now: float) -> bytes | None:
        body = self.anchor.answer_locally(tenant_id, request, now)
        self._after()
        return body

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
        self.count("media_icmp_errors" if kind == "icmp" else "media_send_errors")

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
        self.anchor.poke(leg.session, self.now())
        self.timer.arm()
        if self.anchor.problems:
            self._log_problems()

    def rearm(self) -> None:
        """Re-arm the relay's timer after sessions were added outside a SIP message (takeover)."""
        self._after()

    def _after(self) -> None:
        self.timer.arm()
        self._log_problems()

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
        self.anchor.shutdown()
        self.timer.cancel()
        for port in list(self.ports):
            self.close_port(port)
        self.endpoints.close()
