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

Off the reactor thread (issue 21): both outputs write to a :class:`ThreadedOutput`. The reactor
thread formats the line and appends it to a buffer; a writer thread writes what has gathered
every ``delay`` seconds (the write and flush system calls release the GIL). A log pipe that blocks
(a stalled journald, a full terminal) never stops the reactor: past ``max_pending`` characters
lines are dropped, counted, and reported with ``LOG301`` once the output moves again. At exit
(and on shutdown) what is buffered is written synchronously.

Formatted once (issue 21). Twisted formats an event with a ``string.Formatter`` written in Python
(about 15 us for a record of six fields), and the chain formatted each event twice: the redaction
scan, then the output. :func:`event_text` formats it once per event (cached in the event under
:data:`TEXT_KEY`, a ``log_`` key, so no output shows it) with the C ``str.format_map`` when the format
has no ``{name()}`` call field (Twisted's extension, the only difference), Twisted's ``formatEvent``
otherwise or when that raises (so an unformattable event reads as Twisted writes it). The text
output (:func:`classic_text`) is Twisted's ``formatEventAsClassicLogText`` line on that text, its
timestamp formatted once per second. Measured on the bench's call churn, the one record per ended
call (``MED200``) cost about 0.1 ms of the reactor's turn (docs/performance.md).

Per-packet and per-message errors go through :class:`RateLimitedLog`: at most ``burst`` lines per
key every ``window`` seconds; the rest are counted and summarised with ``LOG300`` the next time the
key logs after its window, so a flood of garbage costs a dict lookup per message and never floods
the log. No timer is involved (the summary is emitted lazily), so nothing is left to cancel.
"""

from __future__ import annotations

import atexit
import datetime
import json
import os
import sys
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import IO, Any

from twisted.application.service import MultiService
from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
    timeFormatRFC3339,
)
from zope.interface import implementer

from mcs_edge.config import REDACTED
from mcs_edge.logevents import code_of
from mcs_edge.tx.timers import monotonic, wall_clock, wall_datetime

__all__ = [
    "TEXT_KEY",
    "JsonLineObserver",
    "LoggingRoot",
    "RateLimitedLog",
    "RedactingObserver",
    "ThreadedOutput",
    "classic_text",
    "event_text",
    "json_stdout_observer",
    "log_observer",
]

#: the event's formatted text, once :func:`event_text` has formatted it (a ``log_`` key: no output shows it)
TEXT_KEY = "log_mcs_text"


def _format(event: dict[str, Any]) -> str:
    fmt = event.get("log_format")
    if type(fmt) is str and "()" not in fmt and "log_flattened" not in event:
        try:
            return fmt.format_map(event)
        except Exception:  # Twisted's formatter decides (and describes an unformattable event)
            return formatEvent(event)
    return formatEvent(event)


def event_text(event: dict[str, Any]) -> str:
    """``formatEvent(event)``, formatted once per event (module docstring)."""
    text = event.get(TEXT_KEY)
    if type(text) is not str:
        text = _format(event)
        event[TEXT_KEY] = text
    return text


class _Stamp:
    """Twisted's ``formatTime(when, timeFormatRFC3339)``, formatted once per second (the format has
    whole seconds, and a time zone offset changes on a second boundary)."""

    __slots__ = ("second", "text")

    def __init__(self) -> None:
        self.second: int | None = None
        self.text = ""

    def __call__(self, when: float | None) -> str:
        if when is None:
            return formatTime(when, timeFormatRFC3339)
        second = int(when // 1)
        if second != self.second:
            self.text = formatTime(float(second), timeFormatRFC3339)
            self.second = second
        return self.text


_STAMP = _Stamp()


def _system(event: dict[str, Any]) -> str:
    system = event.get("log_system")
    if system is None:
        level = event.get("log_level")
        return f"{event.get('log_namespace', '-')}#{'-' if level is None else level.name}"
    try:
        return str(system)
    except Exception:
        return "UNFORMATTABLE"


def classic_text(event: dict[str, Any]) -> str | None:
    """Twisted's ``formatEventAsClassicLogText`` (the text observer's line) on :func:`event_text`;
    an event with a failure is left to Twisted (its traceback)."""
    if "log_failure" in event:
        return formatEventAsClassicLogText(event, formatTime=lambda when: formatTime(when, timeFormatRFC3339))
    text = event_text(event)
    if not text:
        return None
    return f"{_STAMP(event.get('log_time'))} [{_system(event)}] {text}".replace("\n", "\n\t") + "\n"


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
            "message": event_text(event),
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


class LoggingRoot(MultiService):
    """A root service that installs a log observer on the twistd application it joins.

    twistd starts logging after ``makeService`` and takes the application's ``ILogObserver``
    component when one is set; this is how ``--log-format=json`` replaces the text output. When it
    stops, log output turns synchronous (:meth:`ThreadedOutput.close`): twistd ends a process
    stopped by a signal with that signal, and no exit handler would write the last lines.
    """

    def __init__(self, observer: ILogObserver) -> None:
        super().__init__()
        self.observer = observer

    def setServiceParent(self, parent: Any) -> Any:  # noqa: N802
        set_component = getattr(parent, "setComponent", None)
        if set_component is not None:
            set_component(ILogObserver, self.observer)
        return super().setServiceParent(parent)

    def stopService(self) -> Any:  # noqa: N802
        for out in list(_OUTPUTS):
            out.close()
        return super().stopService()


_OUTPUTS: weakref.WeakSet[ThreadedOutput] = weakref.WeakSet()


class ThreadedOutput:
    """A text stream written by a thread of its own: ``write`` only appends to a buffer (see the
    module docstring). ``dropped_line(count)`` is the line reporting dropped lines, in the output's
    format."""

    def __init__(
        self,
        out: IO[str],
        dropped_line: Callable[[int], str] | None = None,
        max_pending: int = 4 * 1024 * 1024,
        delay: float = 0.05,
    ) -> None:
        self._out = out
        self._dropped_line = dropped_line or _text_dropped_line
        self.max_pending = max_pending
        self.delay = delay
        self._lock = threading.Lock()  # the buffer
        self._io = threading.Lock()  # one writer at a time, in order
        self._pending: list[str] = []
        self._size = 0
        self._dropped = 0
        #: lines dropped since start (the output did not keep up)
        self.dropped_total = 0
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        os.register_at_fork(after_in_child=self._forked)  # twistd daemonises after makeService
        atexit.register(self.close)
        _OUTPUTS.add(self)

    def _forked(self) -> None:
        self._thread = None  # threads do not survive fork: the child starts its own
        self._wake = threading.Event()

    def write(self, text: str) -> int:
        with self._lock:
            if self._size + len(text) > self.max_pending:
                self._dropped += 1
                self.dropped_total += 1
                return len(text)
            self._pending.append(text)
            self._size += len(text)
        if self._closed:
            self._drain()
        elif not self._wake.is_set():
            if self._thread is None:
                self._start()
            self._wake.set()
        return len(text)

    def flush(self) -> None:
        """Nothing: the writer thread flushes after each batch."""

    def _start(self) -> None:
        thread = threading.Thread(target=self._run, name="mcs-edge-log", daemon=True)
        self._thread = thread
        thread.start()

    def _run(self) -> None:
        wake = self._wake
        while not self._closed:
            wake.wait()
            time.sleep(self.delay)  # let a burst gather: one write for many lines
            wake.clear()
            self._drain()

    def _drain(self) -> None:
        with self._io:
            with self._lock:
                chunks, dropped = self._pending, self._dropped
                self._pending, self._size, self._dropped = [], 0, 0
            if dropped:
                chunks.append(self._dropped_line(dropped))
            if not chunks:
                return
            try:
                self._out.write("".join(chunks))
                self._out.flush()
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        """Write what is buffered now, in the calling thread; later writes are written at once."""
        self._closed = True
        self._wake.set()
        self._drain()


def _text_dropped_line(count: int) -> str:
    stamp = wall_datetime().strftime("%Y-%m-%dT%H:%M:%S%z")
    return f"{stamp} [mcs_edge.tx.ops.logs#warn] LOG301 {count} log line(s) dropped: the log output did not keep up\n"


def _json_dropped_line(extra: dict[str, Any]) -> Callable[[int], str]:
    def line(count: int) -> str:
        out: dict[str, Any] = {
            "time": wall_datetime().isoformat(timespec="milliseconds"),
            "level": "warn",
            "code": "LOG301",
            "message": f"LOG301 {count} log line(s) dropped: the log output did not keep up",
            "namespace": "mcs_edge.tx.ops.logs",
            **extra,
            "count": count,
        }
        return json.dumps(out, separators=(",", ":")) + "\n"

    return line


def log_observer(fmt: str, worker: int | None = None) -> ILogObserver:
    """The observer for ``--log-format`` (``text`` or ``json``), writing through a
    :class:`ThreadedOutput` on stdout; worker processes tag their lines."""
    if fmt == "json":
        extra = {"worker": worker} if worker is not None else {}
        out = ThreadedOutput(sys.stdout, _json_dropped_line(extra))
        return JsonLineObserver(out, extra or None)  # type: ignore[arg-type]
    text = FileLogObserver(ThreadedOutput(sys.stdout), classic_text)  # type: ignore[arg-type]
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
            text = event_text(event)
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
                event[TEXT_KEY] = text  # the redacted text, not the one formatted above
        self._observer(event)


def json_stdout_observer() -> JsonLineObserver:
    """Observer factory for ``twistd --logger mcs_edge.tx.ops.logs.json_stdout_observer``."""
    return JsonLineObserver(sys.stdout)


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
