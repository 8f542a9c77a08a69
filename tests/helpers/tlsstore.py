"""Tenant certificates on disk for the TLS adapter tests (tests/tx/test_tls*.py): the ``files`` layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import protocol

from mcs_edge import certs
from mcs_edge import config as c
from mcs_edge.files import atomic_write


class Echo(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


def write_pair(ca: certs.DevCA, folder: Path, names: tuple[str, ...]) -> None:
    """A leaf for ``names`` from ``ca`` as ``folder``/fullchain.pem + privkey.pem."""
    chain, key = certs.issue_leaf(ca, names)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "privkey.pem", key, 0o600)
    atomic_write(folder / "fullchain.pem", chain, 0o644)


def tls_config(base: Path, names: dict[str, str], tls: str) -> c.EdgeConfig:
    """One tenant per (id, name) of ``names``, certificates under ``base``/certs; ``tls``: ``[tls]`` keys."""
    text = f"[tls]\n{tls}"
    for tid, name in names.items():
        text += f'[[tenants]]\nid = "{tid}"\ndomains = ["{name}"]\nbackend_sip = "udp:10.0.0.1:5060"\n'
    return c.loads(text, str(base))


def cert_env(tmp: Path, names: dict[str, str]) -> dict[str, Any]:
    """A development CA in ``tmp``/state and each tenant's pair under ``tmp``/certs/<id>."""
    ca = certs.ensure_dev_ca(str(tmp / "state"))
    for tid, name in names.items():
        write_pair(ca, tmp / "certs" / tid, (name,))
    return {"base": tmp, "ca": ca}
