"""An in-process edge with TURN on every transport, for the end-to-end TURN tests (coturn, aiortc)."""

from __future__ import annotations

import json
import socket
import ssl
import time
from pathlib import Path
from typing import Any

from mcs_edge import config as c
from mcs_edge.core.stun.turn import rest_password
from mcs_edge.tx.service import EdgeService
from mcs_edge.tx.turn.server import turn_username

TURN_SECRET = "rossi-turn-secret-0123"
SECRETS = {"rossi": TURN_SECRET, "bianchi": "bianchi-turn-secret-0123"}
API_SECRET = "rossi-api-secret-0123456"


class TurnEdge:
    """Tenant ``rossi`` on ``localhost`` (TURN secret, bearer secret, loopback peers allowed);
    tenant ``bianchi`` without any allow-list, for the refusal tests."""

    def __init__(self, tmp: Path) -> None:
        from twisted.internet import reactor

        text = f"""
[edge]
state_dir = "{tmp / "state"}"
public_address = "127.0.0.1"
[listen]
https = "127.0.0.1:0"
sip_tls = "off"
backend_sip = "127.0.0.1:0"
admin = "127.0.0.1:0"
turn = "127.0.0.1:0"
[tls]
unknown_sni = "default"
default_tenant = "rossi"
[media]
ports = [32000, 32999]
[[tenants]]
id = "rossi"
domains = ["localhost"]
backend_sip = "udp:127.0.0.1:5080"
certificate = "self-signed"
turn_secret = "{TURN_SECRET}"
turn_peers = ["127.0.0.0/8"]
api_secret = "{API_SECRET}"
[[tenants]]
id = "bianchi"
domains = ["bianchi.example.com"]
backend_sip = "udp:127.0.0.1:5080"
certificate = "self-signed"
turn_secret = "{SECRETS["bianchi"]}"
"""
        self.service = EdgeService(c.loads(text), reactor)
        self.service.privilegedStartService()
        self.service.startService()
        assert self.service.turn is not None
        self.turn = self.service.turn
        self.udp_port = self.turn.ports["turn_udp"]
        self.tcp_port = self.turn.ports["turn_tcp"]
        self.https_port = self.service.ports["https"].getHost().port
        self.ca = str(tmp / "state" / "dev-ca" / "ca.pem")

    def creds(self, user: str = "alice", ttl: int = 3600, tenant: str = "rossi") -> tuple[str, str]:
        username = turn_username(int(time.time()) + ttl, user, tenant)
        return username, rest_password(SECRETS[tenant].encode(), username)

    def ice_servers(self, user: str = "agent1") -> dict[str, Any]:
        """GET the iceServers JSON from the endpoint, as a tenant platform would (blocking)."""
        ctx = ssl.create_default_context(cafile=self.ca)
        with socket.create_connection(("127.0.0.1", self.https_port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(
                    (
                        f"GET /.well-known/mcs-edge/ice-servers?user={user} HTTP/1.1\r\nHost: localhost\r\n"
                        f"Authorization: Bearer {API_SECRET}\r\nConnection: close\r\n\r\n"
                    ).encode()
                )
                data = b""
                while chunk := tls.recv(65536):
                    data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        doc: dict[str, Any] = json.loads(body)
        return doc

    def stop(self) -> Any:
        return self.service.stopService()
