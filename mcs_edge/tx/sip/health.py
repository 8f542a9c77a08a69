"""Backend health: SIP OPTIONS toward each tenant's PBX, up/down in logs, metrics and the admin API.

Theory of operation
-------------------
:class:`BackendMonitor` keeps one :class:`~mcs_edge.core.sip.health.BackendHealth` per tenant whose
``backend_check_interval`` is set, drives its timer, and sends its probes through the router's
``send`` collaborator (the same path as any message toward that PBX: UDP socket, tcp:/tls: link,
name resolution). The router hands it the responses to probes (their branch starts with
``z9hG4bKh``, which no proxied branch does) and every transport failure toward a tenant's PBX.
Each change is logged (``SIP220`` up, ``SIP420`` down); ``is_down`` lets the proxy refuse new calls
to a PBX that is down with 503 + Retry-After at once.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import Metric
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.logger import Logger

from mcs_edge.core.sip.health import (
    PROBE_BRANCH,
    BackendHealth,
    HealthState,
    SendProbe,
    StateChanged,
    options_request,
)
from mcs_edge.core.sip.message import Response, parse
from mcs_edge.errors import RemoteProtocolError

if TYPE_CHECKING:
    from mcs_edge.config import EdgeConfig, TenantConfig
    from mcs_edge.tx.timers import Timers

__all__ = ["BackendMonitor"]

Addr = tuple[str, int]
_MARK = PROBE_BRANCH.encode()


class _Watch:
    def __init__(self, tenant: TenantConfig, core: BackendHealth) -> None:
        self.tenant = tenant
        self.core = core
        self.call: Any = None
        self.deadline: float | None = None
        self.probe: bytes = b""
        self.changes = 0


class BackendMonitor:
    """See the module docstring."""

    log = Logger()

    def __init__(
        self,
        config: EdgeConfig,
        timers: Timers,
        send: Callable[[TenantConfig, bytes], None],
        via: Callable[[], Addr],
    ) -> None:
        self.config = config
        self.timers = timers
        self.send = send  # (tenant, bytes) -> toward its PBX over its transport
        self.via = via  # our backend-side (host, port) for the Via of probes
        self.watches: dict[str, _Watch] = {}

    # -- configuration
    def update(self, config: EdgeConfig) -> None:
        """Start, change or stop the checks to match ``config``; a changed PBX starts over as unknown."""
        self.config = config
        wanted = {t.id: t for t in config.tenants if t.backend_check_interval > 0}
        for tid, watch in list(self.watches.items()):
            t = wanted.get(tid)
            if (
                t is None
                or t.backend_sip != watch.tenant.backend_sip
                or t.backend_check_interval != watch.core.interval
            ):
                self._stop(watch)
                del self.watches[tid]
            else:
                watch.tenant = t
        for tid, t in wanted.items():
            if tid not in self.watches:
                core = BackendHealth(
                    t.backend_check_interval,
                    reliable=t.backend_sip.transport != "udp",
                    token=lambda: secrets.token_hex(8),
                    t1=config.sip.t1,
                )
                watch = self.watches[tid] = _Watch(t, core)
                core.start(self.timers.now())
                self._run(watch)

    def stop(self) -> None:
        for watch in self.watches.values():
            self._stop(watch)
        self.watches.clear()

    def _stop(self, watch: _Watch) -> None:
        self.timers.cancel(watch.call)
        watch.call = None

    # -- input from the router
    @staticmethod
    def claims(data: bytes) -> bool:
        """``data`` is a response to one of our probes (cheap test before any parsing)."""
        return data.startswith(b"SIP/2.0 ") and _MARK in data

    def response(self, data: bytes, addr: Addr) -> None:
        try:
            msg = parse(data, require_max_forwards=False)
        except RemoteProtocolError:
            return
        if not isinstance(msg, Response):
            return
        branch = msg.top_via.branch or ""
        now = self.timers.now()
        for watch in self.watches.values():
            if watch.core.is_probe(branch):
                watch.core.response(branch, msg.status, now)
                self._run(watch)
                return

    def transport_failed(self, tenant_id: str, reason: str) -> None:
        watch = self.watches.get(tenant_id)
        if watch is not None:
            watch.core.transport_failed(reason, self.timers.now())
            self._run(watch)

    def is_down(self, tenant_id: str) -> bool:
        watch = self.watches.get(tenant_id)
        return watch is not None and watch.core.state is HealthState.DOWN

    def state(self, tenant_id: str) -> dict[str, Any] | None:
        """The tenant's backend status for the admin API (None: not checked)."""
        watch = self.watches.get(tenant_id)
        if watch is None:
            return None
        core = watch.core
        return {
            "state": core.state.value,
            "reason": core.reason,
            "for_seconds": round(self.timers.now() - core.changed_at, 1) if core.changed_at else None,
        }

    # -- driving the core
    def _run(self, watch: _Watch) -> None:
        core = watch.core
        while (action := core.next_action()) is not None:
            if isinstance(action, SendProbe):
                if not action.retransmission:
                    watch.probe = self._probe(watch.tenant, action.branch)
                self.send(watch.tenant, watch.probe)
            elif isinstance(action, StateChanged):
                watch.changes += 1
                self._log_change(watch.tenant, action)
        deadline = core.get_timer()
        if deadline != watch.deadline or watch.call is None or not watch.call.active():
            self.timers.cancel(watch.call)
            watch.call = None
            watch.deadline = deadline
            if deadline is not None:
                watch.call = self.timers.call_later(deadline - self.timers.now(), self._fire, watch)

    def _fire(self, watch: _Watch) -> None:
        watch.call = None
        watch.deadline = None
        if self.watches.get(watch.tenant.id) is not watch:
            return
        watch.core.handle_timer(self.timers.now())
        self._run(watch)

    def _probe(self, tenant: TenantConfig, branch: str) -> bytes:
        b = tenant.backend_sip
        host = f"[{b.host}]" if ":" in b.host else b.host
        target = host if b.port == 0 else f"{host}:{b.port}"
        via_host, via_port = self.via()
        return options_request(
            branch=branch,
            transport=b.transport,
            via_host=via_host,
            via_port=via_port,
            target=target,
            domain=tenant.domains[0].removeprefix("*."),
            call_id=secrets.token_hex(12),
            tag=secrets.token_hex(6),
            server_name=self.config.edge.name,
        )

    def _log_change(self, tenant: TenantConfig, change: StateChanged) -> None:
        if change.new is HealthState.UP:
            self.log.info(
                "SIP220 {tenant} PBX {target} is up: {reason}",
                tenant=tenant.id,
                target=str(tenant.backend_sip),
                reason=change.reason,
            )
        elif change.new is HealthState.DOWN:
            self.log.warn(
                "SIP420 {tenant} PBX {target} is down: {reason}; new calls get 503",
                tenant=tenant.id,
                target=str(tenant.backend_sip),
                reason=change.reason,
            )

    # -- metrics
    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "mcs_edge_backend_up",
            "1 while the tenant's PBX answers OPTIONS, 0 while it is down (absent: not checked yet)",
            labels=["tenant"],
        )
        changes = CounterMetricFamily(
            "mcs_edge_backend_state_changes",
            "PBX up/down changes seen by the OPTIONS check",
            labels=["tenant"],
        )
        for tid, watch in sorted(self.watches.items()):
            state = watch.core.state
            if state is not HealthState.UNKNOWN:
                up.add_metric([tid], 1 if state is HealthState.UP else 0)
            changes.add_metric([tid], watch.changes)
        yield up
        yield changes
