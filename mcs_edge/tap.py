"""``twistd mcs-edge``: command-line options and ``makeService``.

The reactor is imported only inside :func:`makeService`, so ``twistd --reactor=uvloop mcs-edge``
(or ``--reactor=asyncio``, or the default epoll reactor) picks it before anything touches it.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.python import usage

from mcs_edge import config as config_mod
from mcs_edge.config_store import ConfigSource
from mcs_edge.errors import ConfigErrors

__all__ = ["Options", "makeService"]


class Options(usage.Options):
    synopsis = "[--config FILE] [--state-dir DIR]"
    longdesc = (
        "Run the mcs_edge SIP/WebRTC edge. With no --config it runs the embedded default: one demo "
        "tenant on localhost, loopback listeners, development certificates in the state directory."
    )
    optParameters = [
        ["config", "c", None, "edge.toml to load (default: the embedded demo configuration)"],
        ["state-dir", None, None, "state directory for the embedded default (overrides edge.state_dir)"],
        ["log-format", None, "text", "log output: 'text' (twistd's) or 'json' (one JSON object per line)"],
        ["worker", None, None, "internal: run as worker N of a supervisor (edge.workers > 1)"],
        ["shared-ports", None, None, "internal: ports the supervisor reserved for shared listeners"],
    ]

    def postOptions(self) -> None:  # noqa: N802
        if self["log-format"] not in ("text", "json"):
            raise usage.UsageError("--log-format must be 'text' or 'json'")
        if self["worker"] is not None and not str(self["worker"]).isdigit():
            raise usage.UsageError("--worker takes a worker index")
        try:
            if self["config"]:
                if self["state-dir"]:
                    raise usage.UsageError(
                        "--state-dir only applies to the embedded default; set edge.state_dir"
                    )
                self.edge_config = config_mod.load(self["config"])
            else:
                # the embedded default plus the tenants saved by the admin API (config_store.py)
                self.edge_config = ConfigSource(None, self["state-dir"]).load()
        except ConfigErrors as exc:
            raise usage.UsageError(
                "invalid configuration:\n  " + "\n  ".join(str(e) for e in exc.errors)
            ) from None


def makeService(options: Options) -> Any:  # noqa: N802
    from twisted.internet import reactor

    from mcs_edge.tx.service import EdgeService

    if options["config"] is None:
        print(
            f"mcs-edge: running the embedded default configuration (state in {options.edge_config.state_dir})",
            file=sys.stderr,
        )
    cfg = options.edge_config
    worker = options["worker"]
    service: Any
    if worker is not None:  # one worker process of a supervisor (tx/ops/workers.py)
        from mcs_edge.tx.ops.workers import make_worker, parse_shared_ports

        service = make_worker(
            EdgeService,
            cfg,
            reactor,
            options["config"],
            int(worker),
            parse_shared_ports(options["shared-ports"]),
        )
    elif cfg.edge.workers > 1:
        from mcs_edge.tx.ops.workers import Supervisor

        service = Supervisor(cfg, reactor, options["config"], ["--log-format", options["log-format"]])
    else:
        service = EdgeService(cfg, reactor, config_path=options["config"])
    # the supervisor of workers has no load probe to run full collections: it keeps the automatic ones
    _tune_gc(cfg, reactor, scheduled_full=worker is not None or cfg.edge.workers <= 1)
    # a taken address, a missing certificate, an unusable state directory: one line, exit 1
    from mcs_edge.tx.ops.startup import StartupGuard

    guard = StartupGuard(cfg)
    service.setServiceParent(guard)
    # twistd keeps its own log observer when it writes a log file or to syslog (a daemon without
    # --logfile writes twistd.log); otherwise ours, with secret redaction, writes to stdout
    parent = getattr(options, "parent", None)
    twistd_output = parent is not None and (
        bool(parent.get("syslog")) or parent.get("logfile") not in (None, "-") or not parent.get("nodaemon")
    )
    if options["log-format"] == "json" or worker is not None or not twistd_output:
        from mcs_edge.tx.ops.logs import LoggingRoot, RedactingObserver, log_observer

        observer = log_observer(options["log-format"], None if worker is None else int(worker))
        root = LoggingRoot(RedactingObserver(observer, _Secrets(service)))
        guard.setServiceParent(root)
        return root
    return guard


class _Secrets:
    """The secrets the log must never show: every ``secret=True`` value of the running
    configuration (recomputed when a reload swaps it) and the admin token."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self._config: Any = None
        self._values: frozenset[str] = frozenset()

    def __call__(self) -> frozenset[str]:
        cfg = self.service.config
        if cfg is not self._config:
            self._config = cfg
            self._values = frozenset(config_mod.secret_values(cfg))
        token = getattr(getattr(self.service, "admin", None), "cached_token", None)
        return self._values | {token} if isinstance(token, str) else self._values


def _tune_gc(cfg: config_mod.EdgeConfig, reactor: Any, scheduled_full: bool = True) -> None:
    """A long-lived server's collector: fewer young collections, full collections at calm moments
    (the load probe runs them), startup objects frozen once running."""
    import gc

    from mcs_edge.tx.ops.loadprobe import freeze_startup, tune_gc

    _gen0, gen1, gen2 = gc.get_threshold()
    tune_gc(
        (cfg.overload.gc_threshold, gen1, gen2),
        full_interval=cfg.overload.gc_full_interval if scheduled_full else 0.0,
        freeze_survivors=cfg.overload.gc_freeze,
    )
    if cfg.overload.gc_freeze:
        reactor.callWhenRunning(lambda: reactor.callLater(0, freeze_startup))
