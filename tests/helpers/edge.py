"""An in-process edge on ephemeral ports with a config file, plus blocking HTTP helpers for its admin listener."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from helpers.pbx import Pbx
from helpers.wsclient import WSClient

from mcs_edge import config as c
from mcs_edge.tx.service import EdgeService

TOKEN = "test-admin-token-0123456789"


def tenant_toml(tid: str, pbx_port: int, host: str = "127.0.0.1") -> str:
    return (
        f'\n[[tenants]]\nid = "{tid}"\ndomains = ["{tid}.example.com"]\n'
        f'backend_sip = "udp:{host}:{pbx_port}"\ncertificate = "self-signed"\n'
    )


def config_text(state: Path, tenants: str, extra: str = "", token: bool = True) -> str:
    admin = f'[admin]\ntoken = "{TOKEN}"\n' if token else ""
    return (
        "# operator comment: kept by admin API edits\n"
        f'[edge]\nstate_dir = "{state}"\n{extra}'
        '[listen]\nhttps = "127.0.0.1:0"\nsip_tls = "off"\nbackend_sip = "127.0.0.1:0"\nadmin = "127.0.0.1:0"\n'
        f"{admin}[tls]\nreload_interval = 0\n{tenants}"
    )


class LocalEdge:
    def __init__(
        self, tmp: Path, extra: str = "", token: bool = True, tenants: int = 1, tail: str = ""
    ) -> None:
        """``extra`` goes into ``[edge]``; ``tail`` after the last tenant (its sub-tables, other tables)."""
        self.tmp = tmp
        self.pbx = Pbx()
        self.state = tmp / "state"
        self.conf = tmp / "edge.toml"
        text = tenant_toml("rossi", self.pbx.port)
        if tenants > 1:
            text += tenant_toml("bianchi", self.pbx.port)
        self.conf.write_text(config_text(self.state, text + tail, extra, token))
        from twisted.internet import reactor

        self.service = EdgeService(c.load(self.conf), reactor, config_path=str(self.conf))
        self.service.privilegedStartService()
        self.service.startService()
        self.https = self.service.ports["https"].getHost().port
        self.admin = self.service.ports["admin"].getHost().port
        self.backend = self.service.ports["backend_sip_udp"].getHost().port
        self.ca = str(self.state / "dev-ca" / "ca.pem")

    def client(self, tenant: str = "rossi", **kw: Any) -> WSClient:
        return WSClient(self.https, f"{tenant}.example.com", cafile=self.ca, **kw)

    def stop(self) -> Any:
        self.pbx.close()
        return self.service.stopService()


def http(
    port: int, method: str, path: str, body: Any = None, token: str | None = TOKEN, timeout: float = 10
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request to the admin listener."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def api(port: int, method: str, path: str, body: Any = None, token: str | None = TOKEN) -> tuple[int, Any]:
    status, _h, data = http(port, method, path, body, token)
    return status, json.loads(data) if data else None


def metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, parsed with prometheus_client's parser: (name, labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    status, headers, data = http(port, "GET", "/metrics", token=None)
    assert status == 200 and headers.get("Content-Type", "").startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(data.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def sample(m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)
