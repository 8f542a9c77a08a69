"""Log events formatted once, with the C formatter where it gives the same text (issue 21): the text
line is Twisted's ``formatEventAsClassicLogText`` byte for byte, the JSON message Twisted's
``formatEvent``, and the redaction scan and the output share one formatting."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import pytest
from twisted.logger import (
    FileLogObserver,
    Logger,
    LogLevel,
    LogPublisher,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
    timeFormatRFC3339,
)
from twisted.python.failure import Failure

from mcs_edge.tx.ops.logs import (
    TEXT_KEY,
    JsonLineObserver,
    RedactingObserver,
    classic_text,
    event_text,
)


class Counted:
    """A value that counts how often it is formatted."""

    def __init__(self) -> None:
        self.n = 0

    def __format__(self, spec: str) -> str:
        self.n += 1
        return "counted"


class Thing:
    attr = "an attribute"

    def __repr__(self) -> str:
        return "<Thing>"

    def method(self) -> str:
        return "called"


def _failure() -> Failure:
    try:
        raise ValueError("boom")
    except ValueError:
        return Failure()


def _events() -> list[dict[str, Any]]:
    now = 1_796_680_000.25
    base = {"log_time": now, "log_level": LogLevel.info, "log_namespace": "mcs_edge.x"}
    return [
        {
            **base,
            "log_format": "MED200 {tenant} call of {agent} ended after {duration:.1f} s ({reason})",
            "tenant": "t1",
            "agent": "sip:a@b",
            "duration": 0.5123,
            "reason": "bye",
        },
        {
            **base,
            "log_format": "SIP300 {thing!r} {thing.attr} {items[1]} {d[key]} {n:>6} {x!s}",
            "thing": Thing(),
            "items": ["a", "b"],
            "d": {"key": "v"},
            "n": 42,
            "x": None,
        },
        {**base, "log_format": "call field {thing.method()} and {f()}", "thing": Thing(), "f": lambda: "f!"},
        {**base, "log_format": "literal () in text {a}", "a": 1},
        {**base, "log_format": "missing {nothere}"},
        {**base, "log_format": "positional {}", "a": 1},
        {**base, "log_format": "nested spec {v:{w}}", "v": 3.14159, "w": ".2f"},
        {**base, "log_format": "braces {{escaped}} {a}", "a": "x"},
        {**base, "log_format": "two\nlines {a}", "a": "and\nthree"},
        {**base, "log_format": b"bytes format {a}", "a": 1},
        {**base, "log_format": None},
        {**base, "log_format": ""},
        {**base},
        {**base, "log_format": "with system", "log_system": "worker1"},
        {**base, "log_format": "no level", "log_level": None},
        {"log_format": "no time, no namespace {a}", "a": 1},
        {**base, "log_format": "failure {a}", "a": 1, "log_failure": _failure()},
        {**base, "log_format": "unicode {a} é", "a": "ü"},
    ]


@pytest.mark.parametrize("event", _events(), ids=lambda e: repr(e.get("log_format"))[:30])
def test_text_line_and_message_are_twisteds(event: dict[str, Any]) -> None:
    expected_line = formatEventAsClassicLogText(
        dict(event), formatTime=lambda when: formatTime(when, timeFormatRFC3339)
    )
    expected_text = formatEvent(dict(event))
    assert classic_text(dict(event)) == expected_line
    assert event_text(dict(event)) == expected_text


def test_timestamp_cache_follows_the_clock() -> None:
    """The line's timestamp is formatted once per second and still changes with the second."""
    for when in (1_796_680_000.0, 1_796_680_000.999, 1_796_680_001.0, 1_796_679_999.5, time.time()):
        event = {"log_time": when, "log_format": "x", "log_namespace": "n", "log_level": LogLevel.info}
        assert classic_text(dict(event)) == formatEventAsClassicLogText(
            dict(event), formatTime=lambda w: formatTime(w, timeFormatRFC3339)
        )


def test_redaction_and_output_format_the_event_once() -> None:
    """Through the edge's chain (redaction scan, then the text line) each field is formatted once;
    a secret is still replaced."""
    out = io.StringIO()
    text = FileLogObserver(out, classic_text)
    log = Logger(namespace="t", observer=LogPublisher(RedactingObserver(text, lambda: {"s3cret"})))
    value = Counted()
    log.info("LOG300 value {v}", v=value)
    assert value.n == 1
    assert out.getvalue().endswith("[t#info] LOG300 value counted\n")
    log.info("LOG300 token {t}", t="s3cret-and-more")
    assert "s3cret" not in out.getvalue()
    assert out.getvalue().endswith("LOG300 token ********-and-more\n")


def test_json_message_uses_the_same_text_and_hides_the_cache() -> None:
    out = io.StringIO()
    observer = JsonLineObserver(out)
    event = _events()[0]
    observer(dict(event))
    record = json.loads(out.getvalue())
    assert record["message"] == formatEvent(dict(event))
    assert record["code"] == "MED200"
    assert TEXT_KEY not in record
