"""EdgeService: the one ``MultiService`` that owns every listener, timer and piece of state.

Theory of operation
-------------------
Built from one validated :class:`~mcs_edge.config.EdgeConfig` and a reactor passed in. Start order:
state directory, certificates (generated or loaded), then listeners (children, started in the order
added and stopped in reverse), then periodic tasks (certificate file checks). Stop cancels every
timer through :class:`~mcs_edge.tx.timers.Timers`.

Reload (SIGHUP, or :meth:`reload` from the admin API) reads and validates a new configuration; a bad
one is refused with every error logged and the old configuration stays. A good one is swapped
whole: the tenant table is rebuilt and replaced by reference, certificates are re-checked. Live
connections keep working; listener addresses cannot change without a restart (logged).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from twisted.application import internet
from twisted.application.service import MultiService
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.logger import Logger

from mcs_edge import config as config_mod
from mcs_edge.config import EdgeConfig, TenantConfig
from mcs_edge.config_store import ConfigSource
from mcs_edge.core.cluster.records import snapshot
from mcs_edge.core.cluster.takeover import take_over
from mcs_edge.core.tenants import TenantTable
from mcs_edge.errors import ConfigErrors, StartupError
from mcs_edge.tx.cluster.replicator import Replicator
from mcs_edge.tx.media.echo import EchoService
from mcs_edge.tx.media.quality import CallQualityRecorder
from mcs_edge.tx.media.relay import MediaRelay
from mcs_edge.tx.native_stream import listen_tcp, tcp_server
from mcs_edge.tx.ops.admin import Health, LocalAdmin, announce_admin, note_bound_ports, service_checks
from mcs_edge.tx.ops.admin_tls import admin_tls
from mcs_edge.tx.ops.drain import Drainer
from mcs_edge.tx.ops.loadprobe import LoadProbe, load_families, overload_settings
from mcs_edge.tx.ops.metrics import (
    EdgeMetrics,
    acme_families,
    certificate_families,
    edge_families,
    guard_families,
    http_proxy_families,
    media_families,
    shaping_families,
    sip_families,
)
from mcs_edge.tx.ops.panel import admin_site_with_panel
from mcs_edge.tx.ops.signals import SighupReload
from mcs_edge.tx.ops.startup import os_reason
from mcs_edge.tx.protect.guard import GuardedFactory, Protection
from mcs_edge.tx.protect.shaping import Shaping
from mcs_edge.tx.push.providers import PushSender
from mcs_edge.tx.sip.backend import BackendConnections
from mcs_edge.tx.sip.health import BackendMonitor
from mcs_edge.tx.sip.resolver import BackendResolver, make_resolver
from mcs_edge.tx.sip.router import MAX_UDP_DATAGRAM, BackendUDP, SipRouter
from mcs_edge.tx.sip.stream import SipStreamFactory
from mcs_edge.tx.sip.websocket import SipWebSocketFactory, SipWebSocketProtocol
from mcs_edge.tx.timers import SlicedSweep, Timers, wall_clock
from mcs_edge.tx.tls.acme import AcmeManager, PlainHttpRequest, PlainHttpResource
from mcs_edge.tx.tls.certificates import CertificateStore
from mcs_edge.tx.tunnel.wireguard import WireGuardTunnel
from mcs_edge.tx.turn.server import TurnService, turn_alpn, turn_enabled
from mcs_edge.tx.web.check import NetworkCheck
from mcs_edge.tx.web.framing import FrontSite
from mcs_edge.tx.web.front import FrontResource
from mcs_edge.tx.web.proxy import HttpProxy

__all__ = ["EdgeService"]


class EdgeService(MultiService):
    """The edge: listeners, tenant table, certificates, timers."""

    log = Logger()

    def __init__(
        self,
        config: EdgeConfig,
        reactor: Any,
        config_path: str | None = None,
        now: Callable[[], float] | None = None,
        *,
        worker_index: int | None = None,
        config_overrides: Callable[[EdgeConfig], EdgeConfig] | None = None,
    ) -> None:
        """``worker_index``/``config_overrides``: set for one worker process of a supervisor
        (tx/ops/workers.py): its index and how it derives its configuration from the file's."""
        super().__init__()
        self.setName("mcs-edge")
        self.reactor = reactor
        self.config = config
        self.config_path = config_path
        self.timers = Timers(reactor, now)
        self.tenants: TenantTable[TenantConfig] = TenantTable(config.tenants)
        self._cert_loop: Any = None
        self._names_loop: Any = None  # PBX name refresh, while a tenant's backend_sip is a name
        self._sighup = SighupReload(reactor, self.reload)  # tx/ops/signals.py
        self.ports: dict[str, Any] = {}
        # Every part is built here in dependency order and handed its collaborators in its
        # constructor. Where two parts need each other (a genuine cycle) the later one is attached
        # by one explicit step (SipRouter.attach) or the earlier one gets a late-bound callable,
        # each marked "cycle:" below. tests/test_composition_root.py keeps attribute wiring out.
        #
        # Operations (tx/ops/metrics.py, tx/ops/admin.py, tx/ops/drain.py): components add their metric
        # collectors to self.metrics and their readiness checks to self.health.
        self.worker_index = worker_index
        self.config_source = ConfigSource(
            config_path, None if config_path else config.edge.state_dir, config_overrides
        )
        self.metrics = EdgeMetrics()
        self.health = Health()
        # Guard (tx/protect/guard.py): per-source caps before TLS, tenant caps, request rates, bans, scanners.
        self.protection = Protection(config, self.timers)
        self.guard = self.protection.guard  # SourceGuard: per-source caps and refusal counts
        self.bans = self.protection.bans  # auth-failure bans: listed and lifted by the admin API
        self.shaping = Shaping(config, self.timers)  # token buckets per connection, media leg, tenant
        self.certs = CertificateStore(
            config,
            self.tenants,
            alpn=(b"http/1.1", *turn_alpn(config)),
            on_unknown_sni=partial(self.protection.scanner, "tls_sni"),
        )
        self.metrics.add_collector("certificates", lambda: certificate_families(self.certs, wall_clock()))
        self.metrics.add_collector("guard", lambda: guard_families(self.protection, self.timers.now()))
        self.metrics.add_collector("shaping", lambda: shaping_families(self.shaping.counters))
        # Call quality (tx/media/quality.py): per-tenant histograms and one MED200 record per ended call.
        self.quality = CallQualityRecorder(self.metrics, self.timers.now)
        # Media relay (tx/media/relay.py): the proxy's media hook; relay ports, sessions, SDP rewriting.
        # cycle: the SIP router's core uses the relay as its media hook, and the relay asks the router
        # a flow's transport; the overload probe counts the relay's packets, and the relay asks
        # whether media is over its limit (self._media_over_limit reads the probe).
        self.media = MediaRelay(
            config,
            reactor,
            self.timers,
            tenant_media=lambda tid: getattr(self.tenants.by_id(tid), "media", None),
            client_transport=lambda fid: self.sip.flow_transport(fid),
            leg_policer=self.shaping.leg_policer,
            app_media=lambda tid: getattr(self.tenants.by_id(tid), "app_media", None),
            over_limit=self._media_over_limit,
            on_released=self.quality.released,
        )
        self.metrics.add_collector("media", lambda: media_families(self.media))
        # Loop-lag probe and overload gate (tx/ops/loadprobe.py): new INVITE/REGISTER get 503 early
        # while the reactor lags; new calls get 503 while relayed media is above its limit.
        self.load = LoadProbe(
            self.timers,
            overload_settings(config),
            config.overload.probe_interval,
            media_total=lambda: self.media.packets,
            idle_interval=config.overload.probe_idle_interval,
        )
        # PBX names (tx/sip/resolver.py): twisted.names, RFC 3263 SRV, TTL-bound cache; a changed
        # answer re-indexes the router and reconnects links (self._backend_addresses_changed).
        self.resolver = BackendResolver(
            config,
            self.timers,
            make_resolver(config, reactor),
            on_change=self._backend_addresses_changed,
        )
        # The SIP router (tx/sip/router.py) around the proxy core.
        self.sip = SipRouter(
            config,
            self.tenants,
            self.timers,
            media=self.media,
            protection=self.protection,
            resolver=self.resolver,
            overload=self.load.gate,
        )
        self.metrics.add_collector(
            "load",
            lambda: load_families(
                self.load,
                self.sip.shed,
                self.media.counters.get("media_admission_refused", 0),
                len(self.timers),
                self.sip.transaction_count(),
            ),
        )
        # tcp:/tls: PBXs (tx/sip/backend.py): one persistent connection per tenant, PBX-opened TCP.
        self.backends = BackendConnections(
            config,
            reactor,
            self.timers,
            deliver=self.sip.data_from_backend,
            on_dropped=self.sip.backend_failed,
            resolve=self.resolver.resolve,
            accept=self.sip.is_backend_address,
        )
        self.metrics.add_collector("backend_streams", self.backends.collect)
        # OPTIONS checks (tx/sip/health.py): tenants.backend_check_interval; down -> 503 at once.
        self.backend_health = BackendMonitor(
            config, self.timers, self.sip.send_to_backend, self.sip.backend_via
        )
        self.metrics.add_collector("backend_health", self.backend_health.collect)
        # Push wake-up of the mobile app (RFC 8599; tx/push/providers.py): APNs and FCM over HTTP/2.
        self.push = PushSender(config, self.tenants.by_id, self.sip.push_done, self.timers.now)
        self.metrics.add_collector("sip", lambda: sip_families(self.sip.stats(), self.push.results))
        # Echo service (tx/media/echo.py): echo@<tenant domain> answered here, media looped back in the
        # relay; the network check page (tx/web/check.py) calls it and keeps per-tenant figures.
        self.echo = EchoService(self.sip, self.media, self.timers, self.shaping.leg_policer)
        self.metrics.add_collector("echo", self.echo.collect)
        # cycle: these four send through the router and the router hands them work.
        self.sip.attach(streams=self.backends, health=self.backend_health, push=self.push, local=self.echo)
        self.drainer = Drainer(
            self.timers, self.sip, lambda: self.config.edge.drain_timeout, lambda: list(self)
        )
        self.metrics.add_collector(
            "edge", lambda: edge_families(len(self.config.tenants), self.drainer.draining)
        )
        # WireGuard backhaul (tx/tunnel/wireguard.py): one peer per tenant with tenants.tunnel.
        self.tunnel: WireGuardTunnel | None = None
        if config.tunnel.interface is not None:
            self.tunnel = WireGuardTunnel(config, reactor, self.timers)
            self.metrics.add_collector("tunnel", self.tunnel.collect)
        for check_name, check in service_checks(
            self,
            running=lambda: bool(self.running),
            listeners=lambda: list(self),
            draining=lambda: self.drainer.draining,
            allocator=self.media.anchor.allocator,
            tunnel=self.tunnel,
        ).items():
            self.health.add_check(check_name, check)
        self.check = NetworkCheck(self.metrics, self.timers.now)
        self.sip_ws: SipWebSocketFactory | None = SipWebSocketFactory(
            self.sip, config, reactor, self.timers.now, shaping=self.shaping
        )
        self.acme = AcmeManager(
            config,
            self.tenants,
            self.certs,
            self.timers,
            reactor,
            lambda _tenant: self.refresh_certificates(),
        )
        self.metrics.add_collector("acme", lambda: acme_families(self.acme.status()))
        # Replication (tx/cluster/replicator.py, docs/ha.md): calls and flow bindings to Redis.
        # cycle: the snapshot reads the router and relay, promotion takes over into them.
        self.cluster: Replicator | None = None
        if config.cluster.enabled:
            self.cluster = Replicator(
                config.cluster, self.timers, self._cluster_snapshot, on_promote=self._take_over
            )
            self.health.add_check("replication", self.cluster.health)
            self.metrics.add_collector("cluster", self.cluster.collect)
        # Admin API (tx/ops/admin.py): each collaborator handed in, never this service.
        self.admin = LocalAdmin(
            self,
            self.config_source,
            metrics=self.metrics,
            protection=self.protection,
            health=self.health,
            sip=self.sip,
            certs=self.certs,
            clock=self.timers.now,
            wall=wall_clock,
            apply=self.reload,
            reload=self.reload_from_source,
            draining=lambda: self.drainer.draining,
            media_session=self.media.anchor.sessions.get,
            check_reports=lambda: self.check.last,
            backend_state=self.backend_health.state,
            tunnel=self.tunnel,
            cluster=self.cluster,
            worker=worker_index,
        )
        self._build_listeners()

    def _cluster_snapshot(self, box: Any, node: str, now: float) -> dict[str, dict[str, Any]]:
        core = self.sip.core
        assert self.cluster is not None
        self.media.sync()  # the counters of legs held by C forwarding rules (tx_index)
        return snapshot(
            core.calls,
            core.flows,
            core.flow_registry,
            self.media.anchor.sessions,
            box,
            self.cluster.prefix,
            node,
            now,
            cache=self.cluster.record_cache,
            max_age=self.config.cluster.refresh,
        )

    # -- construction ------------------------------------------------------------------------
    def _tcp(
        self,
        name: str,
        hp: config_mod.HostPort,
        factory: Any,
        parent: MultiService | None = None,
        *,
        native: bool = True,
    ) -> None:
        """A TCP listener child: the asyncio loop's native streams on the asyncio reactor
        (tx/native_stream.py), Twisted's ``listenTCP`` otherwise or when ``native`` is False."""
        server = (
            tcp_server(hp.port, factory, interface=hp.host, reactor=self.reactor)
            if native
            else internet.TCPServer(hp.port, factory, interface=hp.host, reactor=self.reactor)
        )
        server.setName(name)
        server.setServiceParent(parent if parent is not None else self._listeners)

    def _build_listeners(self) -> None:
        cfg = self.config
        # A standby (cluster.role = "standby") binds its listeners when it is promoted (docs/ha.md):
        # until then the active node holds the same addresses.
        self._listeners: MultiService = self
        if self.cluster is not None and self.cluster.role == "standby":
            self._listeners = MultiService()
            self._listeners.setName("standby-listeners")
        self.http_proxy = HttpProxy(
            self.reactor, self.timers, self
        )  # streams tenants' backend_http (tx/web/proxy.py)
        self.metrics.add_collector("http_proxy", lambda: http_proxy_families(self.http_proxy.counters))
        # STUN/TURN (UDP/TCP on listen.turn, TLS on listen.turns and, sniffed, on listen.https)
        self.turn: TurnService | None = None
        if turn_enabled(cfg):
            # relay ports from the media relay's allocator (one pool for media.ports), policed like legs
            self.turn = TurnService(
                cfg,
                self.tenants,
                self.reactor,
                self.timers,
                self.certs,
                ports=self.media.anchor.allocator,
                leg_policer=self.shaping.leg_policer,
                wrap_listener=lambda name, factory: GuardedFactory(factory, self.protection, name),
            )
            self.turn.setServiceParent(self._listeners)
            self.metrics.add_collector("turn", self.turn.collect)
        # The HTTPS front (tx/web/front.py), built after everything it hands requests to; strict
        # request framing (tx/web/framing.py): every ambiguity gets one 400 and a close.
        front = FrontResource(
            self,
            certs=self.certs,
            protection=self.protection,
            clock=self.timers.now,
            add_collector=self.metrics.add_collector,
            sip=self.sip,
            sip_ws=self.sip_ws,
            http_proxy=self.http_proxy,
            turn=self.turn,
            check=self.check,
        )
        site = FrontSite(front, lambda kind: self.http_proxy.refusals.note("-", f"framing_{kind}"))
        site.displayTracebacks = False
        site.timeOut = 60
        site.requestFactory = self.http_proxy.request_factory()
        https_factory = site if self.turn is None else self.turn.https_factory(site)
        handshake = {"clock": self.reactor, "handshake_timeout": lambda: self.config.tls.handshake_timeout}
        https_tls = self.metrics.tls_factory("https", self.certs, https_factory, **handshake)
        self._tcp("https", cfg.listen.https, GuardedFactory(https_tls, self.protection, "https"))
        if cfg.listen.sip_tls is not None:
            sip_tls = self.metrics.tls_factory(
                "sip_tls",
                self.certs.sip_tls_creator(),
                SipStreamFactory(self.sip, lambda: self.config, lambda: self.tenants, self.shaping),
                **handshake,
            )
            self._tcp("sip_tls", cfg.listen.sip_tls, GuardedFactory(sip_tls, self.protection, "sip_tls"))
        if cfg.listen.http is not None:  # ACME HTTP-01 answers, redirects to HTTPS
            plain = FrontSite(
                PlainHttpResource(
                    self.acme.http01_response, lambda: self.tenants, lambda: self.config, self.ports
                )
            )  # same strict framing as listen.https
            plain.requestFactory = PlainHttpRequest
            plain.displayTracebacks = False
            plain.timeOut = 30
            self._tcp("http", cfg.listen.http, plain)
        backend = internet.UDPServer(
            cfg.listen.backend_sip.port,
            BackendUDP(self.sip),
            interface=cfg.listen.backend_sip.host,
            maxPacketSize=MAX_UDP_DATAGRAM,  # RFC 4475 3.1.1.7: a large request is read whole
            reactor=self.reactor,
        )
        backend.setName("backend_sip_udp")
        backend.setServiceParent(self._listeners)
        # admin listener: JSON API, /metrics, /health and the web panel (tx/ops/panel.py) over that API
        panel_site = admin_site_with_panel(self.admin, lambda: self.config.state_dir, self.timers.now)
        tls = admin_tls(cfg)  # [admin] tls: HTTPS (tx/ops/admin_tls.py)
        if tls is None:
            # loopback, a few requests a minute: Twisted's listenTCP (as the supervisor's admin listener)
            self._tcp("admin", cfg.listen.admin, panel_site, parent=self, native=False)
        else:
            server = internet.SSLServer(
                cfg.listen.admin.port, panel_site, tls, interface=cfg.listen.admin.host, reactor=self.reactor
            )
            server.setName("admin")
            server.setServiceParent(self)
            self.log.info(
                "ADM102 admin listener serves HTTPS ({mode}) with {path}",
                mode=cfg.admin.tls,
                path=tls.cert_file,
            )

    # -- lifecycle ---------------------------------------------------------------------------
    def privilegedStartService(self) -> None:  # noqa: N802
        self._prepare_state()
        self.admin.token()  # generated into the state directory when not configured
        changed = self.certs.refresh()
        self._check_certificates()
        self.log.info("EDG100 certificates ready for {count} tenant(s)", count=len(changed))
        if self.tunnel is not None:  # before the listeners: listen.backend_sip may be the tunnel address
            self.tunnel.setup()
        super().privilegedStartService()

    def startService(self) -> None:  # noqa: N802
        self.push.start(self.reactor)  # push needs the asyncio reactor and readable credentials
        if not self.certs.loaded() and self.config.tenants:
            self.certs.refresh()
        super().startService()
        self._listening()
        announce_admin(self.ports)
        interval = self.config.tls.reload_interval
        if interval > 0:
            self._cert_loop = self.timers.looping(interval, self.refresh_certificates)
        # idle stream flows: a pass over the SIP TCP/TLS flows, 256 per reactor turn (tx/timers.py
        # SlicedSweep); WebSocket flows are left to the WebSocket liveness sweep below, so an edge
        # holding 10,000 agents over WSS does not visit each of them every 10 s for nothing
        SlicedSweep(
            self.timers,
            min(10.0, self.config.sip.keepalive_timeout / 4),
            self.sip.sweepable_flows,
            self.sip.sweep_flow,
        ).start()
        sip_ws = self.sip_ws
        if sip_ws is not None:  # WebSocket liveness: ping the silent, abort the dead, in slices too
            SlicedSweep(
                self.timers, sip_ws.sweep_interval, lambda: sip_ws.connections, SipWebSocketProtocol.sweep
            ).start()
        self._watch_backend_names()
        self.backend_health.update(self.config)
        if self.tunnel is not None:
            self.tunnel.start_polling()
        self.load.start()
        self.acme.start()
        if self.cluster is not None:
            self.cluster.start()
        self._sighup.install()
        if hasattr(self.reactor, "callWhenRunning"):
            self.reactor.callWhenRunning(self._log_ready)
        else:
            self._log_ready()

    def _listening(self) -> None:
        """Note the bound ports (at start; on a standby, again at promotion)."""
        for group in (self, self._listeners):
            note_bound_ports(group, self.ports)
        udp = self.ports.get("backend_sip_udp")
        if udp is not None:
            self._size_receive_buffer(udp)
            self.sip.backend_socket(udp)
            self.sip.set_backend_port(udp.getHost().port)
            self._listen_backend_tcp(udp.getHost().port)
        https_port = self.ports.get("https")
        if https_port is not None and self.config.listen.https.port == 0:
            self.sip.set_public_port(https_port.getHost().port)
        sip_tls_port = self.ports.get("sip_tls")
        if (
            sip_tls_port is not None
            and self.config.listen.sip_tls is not None
            and not self.config.listen.sip_tls.port
        ):
            self.sip.set_public_tls_port(sip_tls_port.getHost().port)

    # -- takeover (docs/ha.md) -----------------------------------------------------------------
    def _take_over(self, replica: Any) -> tuple[int, int, int]:
        """Promotion: the replica becomes flows, calls in grace and media sessions; the listeners
        are bound. A record that cannot be taken over is logged and skipped."""
        cluster = self.cluster
        assert cluster is not None
        now = self.timers.now()
        took = take_over(replica.records, cluster.box, self.sip.core, self.media.anchor, self.tenants, now)
        for key, why in took.refused:
            self.log.warn("CLU400 record {key} not taken over: {why}", key=key, why=why)
        self.log.info(
            "CLU103 took over {calls} call(s) and {bindings} binding(s) from the replica",
            calls=took.calls,
            bindings=took.bindings,
        )
        if self._listeners is not self:
            self._listeners.setServiceParent(self)  # binds them (the parent is running)
            self._listening()
        self.sip.handle_timer()
        self.media.rearm()
        return took.calls, took.bindings, len(took.refused)

    def _listen_backend_tcp(self, port: int) -> None:
        """TCP on the backend SIP port (the same number as UDP): connections PBXs open toward us."""
        from twisted.internet.error import CannotListenError

        host = self.config.listen.backend_sip.host
        try:
            self.ports["backend_sip_tcp"] = listen_tcp(  # native streams on the asyncio reactor
                self.reactor, port, self.backends.inbound_factory(), interface=host
            )
        except CannotListenError as exc:
            self.log.warn(
                "SIP311 backend SIP over TCP not listening on {host}:{port}: {error}",
                host=host,
                port=port,
                error=str(exc.socketError),
            )

    def _watch_backend_names(self) -> None:
        """Re-resolve PBX names every second while some tenant has one (tx/sip/resolver.py)."""
        named = any(self.resolver.needs_lookup(t.backend_sip) for t in self.config.tenants)
        if named and self._names_loop is None:
            self._names_loop = self.timers.looping(1.0, self._refresh_backend_names, now=True)
        elif not named and self._names_loop is not None:
            self.timers.stop_looping(self._names_loop)
            self._names_loop = None

    def _refresh_backend_names(self) -> None:
        self.resolver.refresh(t.backend_sip for t in self.config.tenants)

    def _backend_addresses_changed(self) -> None:
        self.sip.reindex_backends()
        self.backends.addresses_changed(self.resolver.addresses)

    def _log_ready(self) -> None:
        https = self.ports.get("https")
        where = https.getHost() if https is not None else self.config.listen.https
        names = ", ".join(d for t in self.config.tenants for d in t.domains[:1])
        self.log.info(
            "EDG101 mcs_edge ready: {tenants} tenant(s) ({names}); point a client at https://{host}:{port}/",
            tenants=len(self.config.tenants),
            names=names,
            host=self.config.tenants[0].domains[0] if self.config.tenants else where.host,
            port=where.port,
        )

    def stopService(self) -> Any:  # noqa: N802
        # Graceful drain first (tx/ops/drain.py): no new connections or calls, wait for calls to end.
        return self.drainer.start().addCallback(lambda _: self._stop_now())

    def _stop_now(self) -> Any:
        self._sighup.restore()
        self.echo.stop()
        self.load.stop()
        self.sip.stop()
        self.backends.stop()
        self.backend_health.stop()
        if self.tunnel is not None:
            self.tunnel.stop()
        tcp = self.ports.pop("backend_sip_tcp", None)
        if tcp is not None:
            tcp.stopListening()
        self.push.stop()
        self.media.stop()
        self.shaping.stop()
        self.protection.stop()
        self.acme.stop()
        if self.cluster is not None:
            self.cluster.stop()
        self.http_proxy.close()
        self.timers.cancel_all()
        return super().stopService()

    def _size_receive_buffer(self, port: Any) -> None:
        """A PBX's answers must not be dropped while a long reactor turn (overload) runs."""
        size = self.config.overload.backend_receive_buffer
        sock = getattr(port, "socket", None)
        if size > 0 and sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
            except OSError as exc:
                self.log.warn("EDG300 backend SIP receive buffer not resized: {error}", error=str(exc))

    def _media_over_limit(self) -> bool:
        limit = self.config.overload.max_media_packet_rate
        return limit > 0 and self.load.media_rate.rate > limit

    def _prepare_state(self) -> None:
        state = Path(self.config.state_dir)
        try:
            state.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StartupError("edge.state_dir", str(state), os_reason(exc)) from None
        if not os.access(state, os.R_OK | os.W_OK | os.X_OK):
            raise StartupError("edge.state_dir", str(state), "not readable and writable by this user")
        try:
            os.chmod(state, 0o700)
        except OSError:
            pass

    def _check_certificates(self) -> None:
        """A tenant whose certificate files cannot be loaded at start stops the start (one line
        naming the key and the file); at a reload the previous certificate is kept instead."""
        for i, tenant in enumerate(self.config.tenants):
            error = self.certs.errors.get(tenant.id)
            if error is None or tenant.certificate == "acme":
                continue
            try:
                files = dict(zip(("cert_file", "key_file"), self.certs.paths_for(tenant), strict=True))
            except Exception:  # the self-signed certificate could not even be generated
                files = {}
            key, path = "cert_file", files.get("cert_file", "")
            for name, candidate in files.items():
                if error.startswith(candidate + ": "):
                    key, path = name, candidate
            reason = error[len(path) + 2 :] if path and error.startswith(path + ": ") else error
            if tenant.certificate == "self-signed":  # generated into the state directory
                raise StartupError("edge.state_dir", path or self.config.state_dir, reason)
            raise StartupError(f"tenants[{i}].{key}", path, reason)

    # -- reload --------------------------------------------------------------------------------
    def refresh_certificates(self) -> list[str]:
        return self.certs.refresh()

    def reload_from_source(self) -> tuple[bool, list[str]]:
        """Re-read the configuration (the file, or the embedded default plus its saved tenants,
        config_store.py) and swap it in: (True, []) or (False, every error; old kept)."""
        try:
            new_config = self.config_source.load()
        except ConfigErrors as exc:
            errors = [str(e) for e in exc.errors]
            for err in errors:
                self.log.error("CFG400 reload refused: {error}", error=err)
            self.metrics.count_reload("refused")
            return False, errors
        return self.reload(new_config), []

    def reload(self, new_config: EdgeConfig | None = None) -> bool:
        """Validate and swap in a new configuration; False (old kept) when it is invalid."""
        if new_config is None:
            return self.reload_from_source()[0]
        if new_config.listen != self.config.listen:
            self.log.warn("CFG300 listener addresses changed: they take effect at the next restart")
        self.config = new_config
        self.tenants = TenantTable(new_config.tenants)
        self.certs.update(new_config, self.tenants)
        self.sip.update(new_config, self.tenants)
        self.backends.update(new_config, self.tenants)
        self.resolver.update(new_config)
        self.resolver.forget(t.backend_sip for t in new_config.tenants)
        if self.running:
            self._watch_backend_names()
            self.backend_health.update(new_config)
        if self.tunnel is not None:
            self.tunnel.update(new_config)
        elif new_config.tunnel.interface is not None:
            self.log.warn("TUN300 [tunnel] changed: the interface settings take effect at the next restart")
        self.protection.update(new_config)
        self.load.update(overload_settings(new_config))
        self.shaping.update(new_config)
        if self.turn is not None:
            self.turn.update(new_config, self.tenants)
        self.acme.update(new_config, self.tenants)
        self.metrics.count_reload("ok")
        self.log.info("CFG201 configuration reloaded: {count} tenant(s)", count=len(new_config.tenants))
        return True


def _is_reactor(obj: Any) -> bool:
    return IReactorTCP.providedBy(obj) and IReactorTime.providedBy(obj)
