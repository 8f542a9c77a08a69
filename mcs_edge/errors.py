"""The exception hierarchy of mcs_edge.

Parsers raise one exception type per protocol; adapters catch it and answer (SIP 4xx, WebSocket
close, HTTP 400) or drop, count and log. ``LocalProtocolError`` is our own misuse of a protocol
object; ``RemoteProtocolError`` is garbage from a peer and carries a ``status_hint`` (a SIP/HTTP
status the adapter may answer with, or ``None`` for "drop silently").
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ConfigErrors",
    "EdgeError",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "StartupError",
]


class EdgeError(Exception):
    """Base class of every error mcs_edge raises on purpose."""


class ProtocolError(EdgeError):
    """A protocol was violated (by us or by a peer)."""


class LocalProtocolError(ProtocolError):
    """We tried to do something the protocol forbids (a bug in our code or in the caller's)."""


class RemoteProtocolError(ProtocolError):
    """A peer sent something invalid.

    ``status_hint`` is the status an adapter should answer with when the protocol has answers
    (400 Bad Request, 413, 416, 420, 431, 483, 505 ...); ``None`` means drop without answering.
    """

    def __init__(self, message: str, status_hint: int | None = 400) -> None:
        super().__init__(message)
        self.status_hint = status_hint


class ConfigError(EdgeError):
    """One configuration problem: ``path`` is the dotted key path, ``reason`` says why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.path = path
        self.reason = reason


class ConfigErrors(EdgeError):
    """Every problem found in one configuration, so an operator sees them all at once."""

    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors


class StartupError(EdgeError):
    """The edge cannot start: ``key`` is the configuration key at fault, ``where`` the address or
    path, ``reason`` why (one line for the operator, no traceback; see :mod:`mcs_edge.tx.ops.startup`)."""

    def __init__(self, key: str, where: str, reason: str) -> None:
        super().__init__(f"{key} = {where}: {reason}")
        self.key = key
        self.where = where
        self.reason = reason
