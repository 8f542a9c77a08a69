"""Start-up failures as one line for the operator: the config key, the address or path, the reason.

Theory of operation
-------------------
What stops the edge from starting is almost always the host, not the code: a listen address that
another process holds, a port below 1024 without the privilege, a certificate file that is not
there, a state directory the service user cannot use. :func:`describe` turns such an exception
into a :class:`~mcs_edge.errors.StartupError` naming the configuration key (``listen.https``,
``tenants[2].cert_file``, ``edge.state_dir``), the address or path, and the reason;
:class:`StartupGuard`, the root service ``twistd mcs-edge`` runs, prints that line on stderr and
exits with status 1 -- no traceback. Anything else (a bug) keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import sys

from twisted.application.service import MultiService
from twisted.internet.error import CannotListenError

from mcs_edge.config import EdgeConfig
from mcs_edge.errors import StartupError

__all__ = ["EXIT_STATUS", "StartupGuard", "describe", "listen_key", "os_reason"]

#: Exit status of a start that failed for a described reason.
EXIT_STATUS = 1

_LISTENERS = ("https", "sip_tls", "backend_sip", "admin", "http", "turn", "turns")


def listen_key(config: EdgeConfig, host: str, port: int) -> str:
    """The ``listen.*`` key configured with ``host:port`` (``listen`` when none matches)."""
    for name in _LISTENERS:
        hp = getattr(config.listen, name)
        if hp is not None and hp.port == port and hp.host in (host, "", "0.0.0.0", "::"):
            return f"listen.{name}"
    for name in _LISTENERS:  # the host may be spelled differently (::ffff:, brackets)
        hp = getattr(config.listen, name)
        if hp is not None and hp.port == port:
            return f"listen.{name}"
    return "listen"


def os_reason(exc: BaseException | None, port: int | None = None) -> str:
    """A short reason for an OS error, with the usual fix for a privileged port."""
    code = getattr(exc, "errno", None)
    if code is None and exc is not None and exc.args and isinstance(exc.args[0], int):
        code = exc.args[0]
    text = os.strerror(code) if isinstance(code, int) else str(exc)
    if code in (errno.EACCES, errno.EPERM) and port is not None and 0 < port < 1024:
        text += " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    elif code == errno.EADDRINUSE:
        text += " (another process listens there)"
    return text


def describe(config: EdgeConfig, exc: BaseException) -> StartupError | None:
    """The one-line account of ``exc`` when it is a host problem at start, else None."""
    if isinstance(exc, StartupError):
        return exc
    if isinstance(exc, CannotListenError):
        host = exc.interface or "0.0.0.0"
        shown = f"[{host}]:{exc.port}" if ":" in host else f"{host}:{exc.port}"
        return StartupError(listen_key(config, host, exc.port), shown, os_reason(exc.socketError, exc.port))
    if isinstance(exc, OSError) and exc.filename is not None:
        path = str(exc.filename)
        state = os.path.abspath(config.state_dir)
        if os.path.abspath(path) == state or os.path.abspath(path).startswith(state + os.sep):
            return StartupError("edge.state_dir", path, os_reason(exc))
        return StartupError("(file)", path, os_reason(exc))
    return None


class StartupGuard(MultiService):
    """The root service: a described start-up failure is one line on stderr and exit status 1."""

    def __init__(self, config: EdgeConfig) -> None:
        super().__init__()
        self.config = config

    def _fail(self, exc: BaseException) -> None:
        found = describe(self.config, exc)
        if found is None:
            raise exc
        line = f"mcs-edge: cannot start: {found}\n"
        try:
            os.write(2, line.encode("utf-8", "replace"))  # below any stdio redirection
        except OSError:
            print(line, end="", file=sys.__stderr__)
        raise SystemExit(EXIT_STATUS) from None

    def privilegedStartService(self) -> None:  # noqa: N802
        try:
            super().privilegedStartService()
        except Exception as exc:
            self._fail(exc)

    def startService(self) -> None:  # noqa: N802
        try:
            super().startService()
        except Exception as exc:
            self._fail(exc)
