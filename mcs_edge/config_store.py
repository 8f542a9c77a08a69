"""Where the configuration is read from, and where admin API changes to tenants are saved.

Theory of operation
-------------------
A :class:`ConfigSource` knows the one place the running configuration comes from and rebuilds the
validated :class:`~mcs_edge.config.EdgeConfig` from it (start, SIGHUP, admin API):

* **a config file** (``--config edge.toml``): admin API changes to tenants are written *into that
  file*. Only the ``[[tenants]]`` tables (and their ``[tenants.*]`` sub-tables) are replaced; every
  other line, comments included, stays as the operator wrote it. When the file's layout does not
  allow that (tenants written as an inline array, say) the whole file is rewritten from its parsed
  content. Either way the new text is checked to parse back to exactly the intended tables before it
  replaces the file.
* **the embedded default** (no ``--config``): changes go to ``<state_dir>/tenants.toml``, a file of
  ``[[tenants]]`` tables that, when present, *replaces* the embedded default's tenant list at start
  and on every reload (delete it to get the demo tenant back). When the demo tenant is no longer in
  it, ``tls.default_tenant`` becomes the first saved tenant (none left: unknown names are refused).

A change is validated exactly like the file: the whole configuration mapping, with the new tenant
list, goes through :func:`mcs_edge.config.from_mapping`, so the errors name the same key paths
(``tenants[3].backend_sip: ...``). Nothing is written when it is invalid. Writes are atomic: a
temporary file in the same folder, fsync, ``os.replace``, fsync of the folder; the file keeps its
permission bits (a new state file is 0600).

``overrides`` (used by worker processes: their own backend port, media slice and admin port) is
applied to every configuration this source builds, so a reload never undoes them.
"""

from __future__ import annotations

import copy
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mcs_edge import config as config_mod
from mcs_edge.config import EdgeConfig
from mcs_edge.errors import ConfigError, ConfigErrors
from mcs_edge.files import atomic_write

__all__ = ["TENANTS_STATE_FILE", "ConfigSource", "dump_toml"]

TENANTS_STATE_FILE = "tenants.toml"

_HEADER_RE = re.compile(r"^\s*(\[\[?)\s*([^\[\]#]+?)\s*(\]\]?)\s*(#.*)?$")


class ConfigSource:
    """The configuration's origin: a file, or the embedded default plus its tenant state file."""

    def __init__(
        self,
        config_path: str | None,
        state_dir: str | None = None,
        overrides: Callable[[EdgeConfig], EdgeConfig] | None = None,
    ) -> None:
        self.config_path = config_path
        self.state_dir_option = state_dir  # --state-dir of the embedded default
        self.overrides = overrides

    # -- reading ------------------------------------------------------------------------------
    @property
    def base_dir(self) -> str:
        if self.config_path is not None:
            return str(Path(self.config_path).resolve().parent)
        return os.getcwd()

    def _embedded_state_dir(self) -> str:
        return config_mod.embedded_default(self.state_dir_option).state_dir

    @property
    def tenants_file(self) -> str:
        """Where admin API changes are saved."""
        if self.config_path is not None:
            return self.config_path
        return os.path.join(self._embedded_state_dir(), TENANTS_STATE_FILE)

    def raw(self) -> dict[str, Any]:
        """The configuration as a plain mapping (TOML tables), tenants included."""
        if self.config_path is not None:
            return _read_toml(self.config_path)
        data = tomllib.loads(config_mod.EMBEDDED_DEFAULT)
        if self.state_dir_option is not None:
            data.setdefault("edge", {})["state_dir"] = self.state_dir_option
        overlay = self.tenants_file
        if os.path.exists(overlay):
            extra = _read_toml(overlay)
            unknown = set(extra) - {"tenants"}
            if unknown:
                raise ConfigErrors([ConfigError(k, f"unknown key in {overlay}") for k in sorted(unknown)])
            data["tenants"] = extra.get("tenants", [])
            ids = [t.get("id") for t in data["tenants"] if isinstance(t, dict)]
            tls = data.setdefault("tls", {})
            if tls.get("default_tenant") not in ids:  # the demo tenant was removed
                if ids:
                    tls["default_tenant"] = ids[0]
                else:
                    tls.pop("default_tenant", None)
                    tls["unknown_sni"] = "reject"
        return data

    def validate(self, data: Mapping[str, Any]) -> EdgeConfig:
        """Validate a mapping exactly like the file; apply the overrides."""
        cfg = config_mod.from_mapping(data, self.base_dir)
        return self.overrides(cfg) if self.overrides is not None else cfg

    def load(self) -> EdgeConfig:
        """Read and validate the current configuration (raises :class:`ConfigErrors`)."""
        return self.validate(self.raw())

    # -- tenant edits -----------------------------------------------------------------------
    def tenants_raw(self) -> list[dict[str, Any]]:
        tenants = self.raw().get("tenants", [])
        if not isinstance(tenants, list):
            raise ConfigErrors([ConfigError("tenants", "expected an array of tables")])
        return [dict(t) if isinstance(t, dict) else t for t in tenants]

    def with_tenants(self, tenants: list[dict[str, Any]]) -> tuple[dict[str, Any], EdgeConfig]:
        """(mapping, validated config) with ``tenants`` as the tenant list; nothing written."""
        data = copy.deepcopy(self.raw())
        data["tenants"] = tenants
        return data, self.validate(data)

    def save_tenants(self, tenants: list[dict[str, Any]]) -> str:
        """Write ``tenants`` where they belong (see the module docstring); return the path."""
        path = self.tenants_file
        if self.config_path is None:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            text = "# Tenants saved by the mcs_edge admin API; replaces the embedded default's tenants.\n"
            text += dump_toml({"tenants": tenants})
            _check_round_trip(text, {"tenants": tenants})
            atomic_write(path, text, mode=0o600)
            return path
        old_text = Path(path).read_text(encoding="utf-8")
        old = tomllib.loads(old_text)
        wanted = {k: v for k, v in old.items() if k != "tenants"}
        wanted["tenants"] = tenants
        try:
            text = replace_tenant_tables(old_text, tenants)
            _check_round_trip(text, wanted)
        except (ValueError, tomllib.TOMLDecodeError):
            text = "# Rewritten by the mcs_edge admin API.\n" + dump_toml(wanted)
            _check_round_trip(text, wanted)
        atomic_write(path, text)
        return path


def _read_toml(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigErrors([ConfigError("", f"cannot read {path!r}: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise ConfigErrors([ConfigError("", f"{path!r} is not UTF-8 text")]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigErrors([ConfigError("", f"{path}: not valid TOML: {exc}")]) from None


def _check_round_trip(text: str, wanted: Mapping[str, Any]) -> None:
    if tomllib.loads(text) != wanted:
        raise ValueError("the rewritten file does not parse back to the intended configuration")


def replace_tenant_tables(text: str, tenants: list[dict[str, Any]]) -> str:
    """``text`` with its ``[[tenants]]``/``[tenants.*]`` tables replaced by ``tenants`` at the end."""
    kept: list[str] = []
    pending: list[str] = []  # comments and blank lines at the end of a tenant table
    in_tenants = False
    for line in text.splitlines(keepends=True):
        m = _HEADER_RE.match(line)
        if m is not None:
            name = re.sub(r"[\s\"']", "", m.group(2))
            was, in_tenants = in_tenants, name == "tenants" or name.startswith("tenants.")
            if was and not in_tenants:
                kept.extend(pending)  # they introduce the next, kept, table
            pending = []
        if not in_tenants:
            kept.append(line)
        elif m is None:
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                pending.append(line)
            else:
                pending = []
    head = "".join(kept).rstrip()
    body = dump_toml({"tenants": tenants}) if tenants else ""
    return (head + "\n\n" + body) if head else body


# ---------------------------------------------------------------------------------------------
# A small TOML writer for configuration mappings (strings, numbers, booleans, arrays, tables)
# ---------------------------------------------------------------------------------------------


def _key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else _str(k)


def _str(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError("NaN and infinity are not configuration values")
        return repr(v)
    if isinstance(v, str):
        return _str(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + "}"
    raise ValueError(f"cannot write a {type(v).__name__} to TOML")


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def dump_toml(data: Mapping[str, Any], prefix: str = "") -> str:
    """TOML text for ``data``: scalars first, then sub-tables, then arrays of tables."""
    lines: list[str] = []
    tables: list[tuple[str, Mapping[str, Any]]] = []
    arrays: list[tuple[str, list[dict[str, Any]]]] = []
    for k, v in data.items():
        if isinstance(v, dict):
            tables.append((k, v))
        elif _is_table_array(v):
            arrays.append((k, v))
        else:
            lines.append(f"{_key(k)} = {_value(v)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for k, v in tables:
        name = f"{prefix}.{_key(k)}" if prefix else _key(k)
        out += f"\n[{name}]\n" + dump_toml(v, name)
    for k, items in arrays:
        name = f"{prefix}.{_key(k)}" if prefix else _key(k)
        for item in items:
            out += f"\n[[{name}]]\n" + dump_toml(item, name)
    return out
