"""``mcs-edge``: operator helper commands.

- ``mcs-edge check-config FILE``: validate a file, print every error with its key path (exit 1).
- ``mcs-edge dev-certs [--state-dir DIR]``: create the development CA and the self-signed tenant
  certificates of the embedded default and print where they are.
- ``mcs-edge run [twistd-args...]``: ``twistd -n --reactor=uvloop mcs-edge ...`` in the foreground.
- ``mcs-edge keys``: list every configuration key with its default.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from mcs_edge import config as config_mod
from mcs_edge.errors import ConfigErrors

__all__ = ["main"]


def _check(path: str) -> int:
    try:
        cfg = config_mod.load(path)
    except ConfigErrors as exc:
        print(f"{path}: {len(exc.errors)} error(s)", file=sys.stderr)
        for err in exc.errors:
            print(f"  {err}", file=sys.stderr)
        return 1
    print(f"{path}: OK ({len(cfg.tenants)} tenant(s))")
    return 0


def _dev_certs(state_dir: str | None) -> int:
    from mcs_edge import certs

    cfg = config_mod.embedded_default(state_dir)
    ca = certs.ensure_dev_ca(cfg.state_dir)
    print(f"development CA: {ca.cert_path}")
    for t in cfg.tenants:
        if t.certificate == "self-signed":
            chain, key = certs.ensure_self_signed(cfg.state_dir, t.id, t.domains)
            print(f"tenant {t.id}: {chain} (key {key})")
    return 0


def _keys() -> int:
    for path, default, doc in config_mod.describe_keys():
        print(f"{path:32} {default:28} {doc}")
    return 0


def _run(args: Sequence[str]) -> int:
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    argv = [twistd, "-n", "--pidfile=", "--reactor=uvloop", "mcs-edge", *args]
    os.execv(twistd, argv)
    return 1  # pragma: no cover


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mcs-edge", description="mcs_edge helper commands")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_check = sub.add_parser("check-config", help="validate an edge.toml and print every error")
    p_check.add_argument("file")
    p_dev = sub.add_parser("dev-certs", help="create the development CA and demo certificates")
    p_dev.add_argument("--state-dir", default=None)
    sub.add_parser("keys", help="list every configuration key with its default")
    p_run = sub.add_parser("run", help="run the edge in the foreground (twistd -n --reactor=uvloop mcs-edge)")
    p_run.add_argument("rest", nargs=argparse.REMAINDER)
    ns = parser.parse_args(argv)
    if ns.cmd == "check-config":
        return _check(ns.file)
    if ns.cmd == "dev-certs":
        return _dev_certs(ns.state_dir)
    if ns.cmd == "keys":
        return _keys()
    if ns.cmd == "run":
        return _run(ns.rest)
    parser.error(f"unknown command {ns.cmd}")  # pragma: no cover
    return 2  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
