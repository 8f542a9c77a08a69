"""``twistd mcs-edge``: command-line options and ``makeService``.

The reactor is imported only inside :func:`makeService`, so ``twistd --reactor=uvloop mcs-edge``
(or ``--reactor=asyncio``, or the default epoll reactor) picks it before anything touches it.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.python import usage

from mcs_edge import config as config_mod
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
    ]

    def postOptions(self) -> None:  # noqa: N802
        try:
            if self["config"]:
                if self["state-dir"]:
                    raise usage.UsageError(
                        "--state-dir only applies to the embedded default; set edge.state_dir"
                    )
                self.edge_config = config_mod.load(self["config"])
            else:
                self.edge_config = config_mod.embedded_default(self["state-dir"])
        except ConfigErrors as exc:
            raise usage.UsageError(
                "invalid configuration:\n  " + "\n  ".join(str(e) for e in exc.errors)
            ) from None


def makeService(options: Options) -> Any:  # noqa: N802
    from twisted.internet import reactor

    if "asyncio" in type(reactor).__module__:
        import txaio

        txaio.use_twisted()
        txaio.config.loop = reactor  # type: ignore[attr-defined]
    from mcs_edge.tx.service import EdgeService

    if options["config"] is None:
        print(
            f"mcs-edge: running the embedded default configuration (state in {options.edge_config.state_dir})",
            file=sys.stderr,
        )
    return EdgeService(options.edge_config, reactor, config_path=options["config"])
