"""An in-process edge with TURN on every transport, for the end-to-end TURN tests (coturn, aiortc)."""

from __future__ import annotations

import json
import socket
import ssl
import time
from pathlib import Path
from typing import Any

from helpers.edge import InProcessEdge, edge_toml, tenant_toml

from mcs_edge.core.stun.turn import rest_password
from mcs_edge.tx.turn.server import turn_username

TURN_SECRET = "rossi-turn-secret-0123"
SECRETS = {"rossi": TURN_SECRET, "bianchi": "bianchi-turn-secret-0123"}
API_SECRET = "rossi-api-secret-0123456"


class TurnEdge(InProcessEdge):
    """Tenant ``rossi`` on ``localhost`` (TURN secret, bearer secret, loopback peers allowed);
    tenant ``bianchi`` without any allow-list, for the refusal tests."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        tenants = tenant_toml(
            "rossi",
            5080,
            domains=("localhost",),
            keys=f'turn_secret = "{TURN_SECRET}"\nturn_peers = ["127.0.0.0/8"]\napi_secret = "{API_SECRET}"\n',
        ) + tenant_toml("bianchi", 5080, keys=f'turn_secret = "{SECRETS["bianchi"]}"\n')
        text = edge_toml(
            self.state,
            tenants,
            edge='public_address = "127.0.0.1"\n',
            listen='turn = "127.0.0.1:0"\n',
            media=(32000, 32999),
            media_bind=None,
            sections='[tls]\nunknown_sni = "default"\ndefault_tenant = "rossi"\n',
        )
        self.start(text)
        assert self.service.turn is not None
        self.turn = self.service.turn
        self.udp_port = self.turn.ports["turn_udp"]
        self.tcp_port = self.turn.ports["turn_tcp"]
        self.https_port = self.https

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
