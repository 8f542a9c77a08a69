"""Log output for operators: JSON lines for log shippers, and rate limits for per-message errors.

Theory of operation
-------------------
Every event is a ``twisted.logger`` event whose format string starts with a stable code
(:mod:`mcs_edge.logevents`). Two outputs:

* text (twistd's default observer), unchanged;
* JSON lines (``twistd -n mcs-edge --log-format=json``, or ``twistd --logger
  mcs_edge.tx.ops.logs.json_stdout_observer ...``): one object per line with ``time`` (ISO 8601, UTC),
  ``level``, ``code``, ``message`` (the formatted text), ``namespace``, the event's own named keys
  (when JSON-serialisable; others as ``repr``), ``worker`` (in worker processes) and ``traceback``
  for failures. Keys that start with ``log_`` (Twisted's bookkeeping) are left out.

Both go through :class:`RedactingObserver`: a line that would contain a configured secret (every
config field declared ``secret=True``, see :func:`mcs_edge.config.secret_values`, plus the admin
token) is written with the secret replaced by ``********``, whichever code path logged it.
(When twistd writes its own log -- daemon mode, ``--logfile``, ``--syslog`` -- twistd keeps its
observer and this filter is not in the path; in the foreground (``twistd -n``, ``mcs-edge run``,
the documented way) and with ``--log-format=json`` it always is.)

Per-packet and per-message errors go through :class:`RateLimitedLog`: at most ``burst`` lines per
key every ``window`` seconds; the rest are counted and summarised with ``LOG300`` the next time the
key logs after its window, so a flood of garbage costs a dict lookup per message and never floods
the log. No timer is involved (the summary is emitted lazily), so nothing is left to cancel.
"""

from __future__ import annotations

import datetime
import json
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import IO, Any

from twisted.application.service import MultiService
from twisted.logger import ILogObserver, Logger, LogLevel, formatEvent, textFileLogObserver
from zope.interface import implementer

from mcs_edge.config import REDACTED
from mcs_edge.logevents import code_of
from mcs_edge.tx.timers import monotonic, wall_clock

__all__ = [
    "JsonLineObserver",
    "LoggingRoot",
    "RateLimitedLog",
    "RedactingObserver",
    "json_stdout_observer",
    "log_observer",
]

_SKIP = frozenset({"format", "message", "isError", "system", "time", "failure", "why", "printed"})


@implementer(ILogObserver)
class JsonLineObserver:
    """Write each event as one JSON object per line (see the module docstring)."""

    def __init__(self, out: IO[str], extra: dict[str, Any] | None = None) -> None:
        self._out = out
        self._extra = dict(extra or {})

    def __call__(self, event: dict[str, Any]) -> None:
        try:
            line = json.dumps(self.as_dict(event), separators=(",", ":"), default=repr)
        except Exception:  # never let logging raise into the emitter
            line = json.dumps({"level": "error", "code": None, "message": "unserialisable log event"})
        try:
            self._out.write(line + "\n")
            self._out.flush()
        except (OSError, ValueError):
            pass

    def as_dict(self, event: dict[str, Any]) -> dict[str, Any]:
        fmt = event.get("log_format")
        level = event.get("log_level")
        stamp = event.get("log_time") or wall_clock()
        out: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(stamp, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": level.name if isinstance(level, type(LogLevel.info)) else "info",
            "code": code_of(fmt) if isinstance(fmt, str) else None,
            "message": formatEvent(event),
            "namespace": event.get("log_namespace"),
        }
        out.update(self._extra)
        for key, value in event.items():
            if key.startswith("log_") or key in _SKIP or key in out:
                continue
            out[key] = value if _jsonable(value) else repr(value)
        failure = event.get("log_failure")
        if failure is not None:
            try:
                out["traceback"] = failure.getTraceback()
            except Exception:
                out["traceback"] = repr(failure)
        return out


def _jsonable(value: Any) -> bool:
    if value is None or isinstance(value, str | int | float | bool):
        return True
    if isinstance(value, list | tuple):
        return all(_jsonable(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _jsonable(v) for k, v in value.items())
    return False


def log_observer(fmt: str, worker: int | None = None) -> ILogObserver:
    """The observer for ``--log-format`` (``text`` or ``json``); worker processes tag their lines."""
    if fmt == "json":
        return JsonLineObserver(sys.stdout, {"worker": worker} if worker is not None else None)
    text = textFileLogObserver(sys.stdout)
    if worker is None:
        return text
    tag = f"worker{worker}"

    @implementer(ILogObserver)
    def tagged(event: dict[str, Any]) -> None:
        if event.get("log_system", "-") == "-":
            event = dict(event)
            event["log_system"] = tag
        text(event)

    return tagged  # type: ignore[no-any-return]


@implementer(ILogObserver)
class RedactingObserver:
    """Passes events to ``observer``; one whose text holds a secret of ``secrets()`` is rewritten.

    The rewritten event keeps its level, namespace and code; its text is the formatted message with
    each secret replaced by ``********``, its own keys and failure are dropped (a traceback could
    hold the secret too).
    """

    def __init__(self, observer: ILogObserver, secrets: Callable[[], Iterable[str]]) -> None:
        self._observer = observer
        self._secrets = secrets

    def __call__(self, event: dict[str, Any]) -> None:
        try:
            found = [s for s in self._secrets() if s]
        except Exception:  # never let logging raise into the emitter
            found = []
        if found:
            text = formatEvent(event)
            failure = event.get("log_failure")
            tb = ""
            if failure is not None:
                try:
                    tb = failure.getTraceback()
                except Exception:
                    tb = repr(failure)
            if any(s in text or s in tb for s in found):
                for s in found:
                    text = text.replace(s, REDACTED)
                    tb = tb.replace(s, REDACTED)
                if tb:
                    text += "\n" + tb
                event = {k: v for k, v in event.items() if k.startswith("log_") and k != "log_failure"}
                event["log_format"] = text.replace("{", "{{").replace("}", "}}")
        self._observer(event)


def json_stdout_observer() -> JsonLineObserver:
    """Observer factory for ``twistd --logger mcs_edge.tx.ops.logs.json_stdout_observer``."""
    return JsonLineObserver(sys.stdout)


class LoggingRoot(MultiService):
    """A root service that installs a log observer on the twistd application it joins.

    twistd starts logging after ``makeService`` and takes the application's ``ILogObserver``
    component when one is set; this is how ``--log-format=json`` replaces the text output.
    """

    def __init__(self, observer: ILogObserver) -> None:
        super().__init__()
        self.observer = observer

    def setServiceParent(self, parent: Any) -> Any:  # noqa: N802
        set_component = getattr(parent, "setComponent", None)
        if set_component is not None:
            set_component(ILogObserver, self.observer)
        return super().setServiceParent(parent)


class _Window:
    __slots__ = ("count", "start", "suppressed")

    def __init__(self, start: float) -> None:
        self.start = start
        self.count = 0
        self.suppressed = 0


class RateLimitedLog:
    """At most ``burst`` lines per key per ``window`` seconds; the rest counted and summarised.

    ``key`` is a short stable string (usually the event code plus a coarse reason); at most
    ``max_keys`` keys are tracked (least recently used forgotten).
    """

    def __init__(
        self,
        log: Logger,
        burst: int = 10,
        window: float = 1.0,
        now: Callable[[], float] = monotonic,
        max_keys: int = 1024,
    ) -> None:
        self.log = log
        self.burst = burst
        self.window = window
        self.now = now
        self.max_keys = max_keys
        self._keys: OrderedDict[str, _Window] = OrderedDict()
        #: Lines suppressed since start (for metrics).
        self.suppressed_total = 0

    def allow(self, key: str) -> bool:
        """Whether a line for ``key`` may be logged now (counts it either way)."""
        now = self.now()
        win = self._keys.get(key)
        if win is None:
            if len(self._keys) >= self.max_keys:
                self._keys.popitem(last=False)
            win = self._keys[key] = _Window(now)
        else:
            self._keys.move_to_end(key)
            if now - win.start >= self.window:
                if win.suppressed:
                    self.log.warn(
                        "LOG300 {key}: {count} more message(s) suppressed in the last {window:.0f} s",
                        key=key,
                        count=win.suppressed,
                        window=max(self.window, now - win.start),
                    )
                win.start = now
                win.count = 0
                win.suppressed = 0
        if win.count < self.burst:
            win.count += 1
            return True
        win.suppressed += 1
        self.suppressed_total += 1
        return False

    def emit(self, level: LogLevel, key: str, fmt: str, **kw: Any) -> bool:
        """Log ``fmt`` at ``level`` unless ``key`` is over its budget; True when logged."""
        if not self.allow(key):
            return False
        self.log.emit(level, fmt, **kw)
        return True

    def info(self, key: str, fmt: str, **kw: Any) -> bool:
        return self.emit(LogLevel.info, key, fmt, **kw)

    def warn(self, key: str, fmt: str, **kw: Any) -> bool:
        return self.emit(LogLevel.warn, key, fmt, **kw)

    def error(self, key: str, fmt: str, **kw: Any) -> bool:
        return self.emit(LogLevel.error, key, fmt, **kw)
