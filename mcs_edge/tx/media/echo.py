"""The echo service's adapter: the echo user agent (:mod:`mcs_edge.core.media.echo_ua`) on the reactor.

In: the proxy core's :class:`~mcs_edge.core.sip.proxy.LocalService` calls (requests claimed for the
echo user, flows closed), the user agent's timer. Out: the user agent's actions carried out — BYEs
sent on client flows through the SIP router, media sessions scheduled on the relay's anchor
(:meth:`MediaRelay.poke`), problems counted by the relay, calls ended by their media logged
(ECH200) — and the ``echo`` metric families.

The decision table (which request gets which answer), the limits (:data:`MAX_PER_FLOW`,
:data:`MAX_PER_TENANT`, :data:`MAX_SECONDS`) and the media loop are the core's; see its docstring.

Metrics (collector ``echo``): live echo calls, calls answered or refused, calls ended by reason,
and packets looped back, per tenant.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.logger import Logger

from mcs_edge.core.media.echo_ua import (
    ECHO_USER,
    MAX_PER_FLOW,
    MAX_PER_TENANT,
    MAX_SECONDS,
    EchoCall,
    EchoUA,
    MediaEnded,
    Problem,
    Schedule,
    SendRequest,
)
from mcs_edge.core.sip.message import Request, Response
from mcs_edge.errors import LocalProtocolError, RemoteProtocolError
from mcs_edge.tx.timers import CoreTimer

if TYPE_CHECKING:
    from prometheus_client import Metric

    from mcs_edge.core.shaping import Policer
    from mcs_edge.core.sip.proxy import Flow
    from mcs_edge.tx.media.relay import MediaRelay
    from mcs_edge.tx.sip.router import SipRouter
    from mcs_edge.tx.timers import Timers

__all__ = ["ECHO_USER", "MAX_PER_FLOW", "MAX_PER_TENANT", "MAX_SECONDS", "EchoService"]


class EchoService:
    """The echo user agent on the reactor; the proxy core's ``local`` hook (the composition root
    attaches it to the router with :meth:`SipRouter.attach`)."""

    log = Logger()

    def __init__(
        self,
        router: SipRouter,
        relay: MediaRelay,
        timers: Timers,
        leg_policer: Callable[[str], Policer] | None = None,
    ) -> None:
        self.router = router
        self.relay = relay
        self.timers = timers
        # The user agent and its timer need each other (the timer reads the agent's deadline; the
        # agent wakes the timer when a session ends from inside): the agent gets a late-bound wake.
        self.ua = EchoUA(
            lambda: router.proxy_settings,
            relay.anchor,
            clock=timers.now,
            random_bytes=secrets.token_bytes,
            grace=router.flow_grace,
            leg_policer=leg_policer,
            wake=lambda: self._timer.arm(),
        )
        self._timer = CoreTimer(timers, self.ua, lambda _result: self._act())

    # ------------------------------------------------------------------ state (tests, admin)
    @property
    def calls(self) -> dict[str, EchoCall]:
        return self.ua.calls

    @property
    def outcomes(self) -> dict[tuple[str, str], int]:
        return self.ua.outcomes

    @property
    def ended(self) -> dict[tuple[str, str], int]:
        return self.ua.ended

    @property
    def looped(self) -> dict[str, int]:
        return self.ua.looped

    @property
    def stopped(self) -> bool:
        return self.ua.stopped

    def stats(self, call_id: str) -> dict[str, Any] | None:
        """The media counters of one live echo call (tests, admin)."""
        return self.ua.stats(call_id)

    # ---------------------------------------------------------------------------- LocalService
    def claims(self, flow: Flow, request: Request) -> bool:
        return self.ua.claims(flow, request)

    def request(self, flow: Flow, request: Request, now: float) -> Response | None:
        try:
            return self.ua.request(flow, request, now)
        finally:
            self._act()
            self._timer.arm()

    def on_flow_closed(self, flow_id: int, now: float) -> None:
        self.ua.on_flow_closed(flow_id, now)
        self._act()
        self._timer.arm()

    # --------------------------------------------------------------------------------- actions
    def _act(self) -> None:
        for action in self.ua.take_actions():
            if isinstance(action, Schedule):
                if action.session.legs:
                    self.relay.poke(action.session.legs[0])
            elif isinstance(action, Problem):
                self.relay.problem(action.text)
            elif isinstance(action, MediaEnded):
                self.log.info(
                    "ECH200 {tenant} echo call ended by its media: {reason}",
                    tenant=action.tenant,
                    reason=action.reason,
                )
            elif isinstance(action, SendRequest):
                self._send(action.flow_id, action.request)

    def _send(self, flow_id: int, request: Request) -> None:
        try:
            self.router.send_to_flow(flow_id, request)
        except (RemoteProtocolError, LocalProtocolError, ValueError) as exc:
            self.relay.problem(f"echo: cannot send {request.method}: {exc}")

    # --------------------------------------------------------------------------- operations
    def stop(self) -> None:
        """BYE and release every echo call; refuse new ones."""
        self.ua.stop()
        self._act()
        self._timer.cancel()

    def collect(self) -> Iterable[Metric]:
        """Metric families (collector ``echo``; tenant label on aggregates only)."""
        live = GaugeMetricFamily("mcs_edge_echo_calls", "Echo calls in progress", labels=["tenant"])
        for tenant, n in sorted(self.ua.live().items()):
            live.add_metric([tenant], n)
        yield live
        outcomes = CounterMetricFamily(
            "mcs_edge_echo_call_attempts", "Echo calls answered or refused", labels=["tenant", "result"]
        )
        for (tenant, result), n in sorted(self.ua.outcomes.items()):
            outcomes.add_metric([tenant, result], n)
        yield outcomes
        ended = CounterMetricFamily(
            "mcs_edge_echo_calls_ended", "Echo calls ended", labels=["tenant", "reason"]
        )
        for (tenant, reason), n in sorted(self.ua.ended.items()):
            ended.add_metric([tenant, reason], n)
        yield ended
        packets = CounterMetricFamily(
            "mcs_edge_echo_packets", "RTP packets sent back by the echo", labels=["tenant"]
        )
        for tenant, n in sorted(self.ua.looped_now().items()):
            packets.add_metric([tenant], n)
        yield packets
