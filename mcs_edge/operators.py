"""Named operators of the admin panel: argon2id password hashes in ``<state_dir>/operators.json``.

The file maps each operator name to an argon2id hash (argon2-cffi's :class:`PasswordHasher`, its
default RFC 9106 low-memory parameters); it is written atomically with mode 0600 and holds no
password. ``mcs-edge operator add NAME --state-dir DIR`` creates or changes one (the password is read
from the terminal or stdin), ``mcs-edge operator remove NAME`` removes one. The panel
(:mod:`mcs_edge.tx.ops.panel`) reads the file at each sign-in, so changes need no reload. The admin
token signs in as operator ``admin`` as well.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from mcs_edge.files import atomic_write

__all__ = ["FILE", "MIN_PASSWORD", "NAME_RE", "add_operator", "load_operators", "remove_operator", "verify"]

FILE = "operators.json"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,31}$")
MIN_PASSWORD = 12
_HASHER = PasswordHasher()


def _path(state_dir: str) -> Path:
    return Path(state_dir) / FILE


def load_operators(state_dir: str) -> dict[str, str]:
    """name -> argon2 hash (empty when the file is missing or unreadable)."""
    try:
        data = json.loads(_path(state_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    ops = data.get("operators") if isinstance(data, dict) else None
    if not isinstance(ops, dict):
        return {}
    return {k: v for k, v in ops.items() if isinstance(k, str) and isinstance(v, str)}


def _save(state_dir: str, ops: dict[str, str]) -> None:
    os.makedirs(state_dir, exist_ok=True)
    text = json.dumps({"operators": dict(sorted(ops.items()))}, indent=1) + "\n"
    atomic_write(_path(state_dir), text.encode(), 0o600)


def add_operator(state_dir: str, name: str, password: str) -> None:
    """Create or change operator ``name`` (ValueError for a bad name or a short password)."""
    if not NAME_RE.match(name) or name == "admin":
        raise ValueError(f"operator name must match {NAME_RE.pattern} and not be 'admin'")
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"the password needs at least {MIN_PASSWORD} characters")
    ops = load_operators(state_dir)
    ops[name] = _HASHER.hash(password)
    _save(state_dir, ops)


def remove_operator(state_dir: str, name: str) -> bool:
    ops = load_operators(state_dir)
    if ops.pop(name, None) is None:
        return False
    _save(state_dir, ops)
    return True


def verify(state_dir: str, name: str, password: str) -> bool:
    """True when ``password`` is operator ``name``'s (constant work whether or not the name exists)."""
    ops = load_operators(state_dir)
    stored = ops.get(name)
    try:
        if stored is None:
            # spend the same time as a real check so names cannot be told apart by timing
            _HASHER.verify(_dummy_hash(), password)
            return False
        return bool(_HASHER.verify(stored, password))
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


_DUMMY: list[str] = []


def _dummy_hash() -> str:
    """A hash to verify against for unknown names (made on first use, not at import)."""
    if not _DUMMY:
        _DUMMY.append(_HASHER.hash("not-an-operator-password"))
    return _DUMMY[0]
