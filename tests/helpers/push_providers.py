"""Local stand-ins for APNs and FCM HTTP v1: one HTTP/2 server over TLS (a test CA), in a thread.

It speaks the providers' request formats and checks what a real provider checks:

* APNs ``POST /3/device/<token>``: ``authorization: bearer <JWT>`` signed ES256 with the team's .p8
  key (``kid`` = key id, ``iss`` = team id), ``apns-push-type: voip``, ``apns-topic`` = the VoIP topic,
  a JSON payload with ``aps``. Answers 200, or 410 ``Unregistered`` for a token in ``bad_tokens``.
* OAuth 2 ``POST /token`` (the service account's token_uri): the JWT bearer grant (RFC 7523), an RS256
  assertion of the service account's key with scope firebase.messaging and aud = token_uri.
* FCM ``POST /v1/projects/<project>/messages:send``: ``Bearer <the issued access token>``, a JSON
  ``message`` with ``token`` and ``data``. Answers 200, or 404 ``UNREGISTERED`` for a bad token.

Each request is recorded (``pushes``: provider, device token, headers, payload); a request failing a
check is answered 403 and recorded in ``problems``.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import ssl
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

KEY_ID = "ABC123DEFG"
TEAM_ID = "TEAM123456"
TOPIC = "com.example.tvoxteam.voip"
PROJECT = "tvox-team-test"
ACCESS_TOKEN = "ya29.test-access-token"


def _pem(key: Any) -> bytes:
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


def _certificates(tmp: Path) -> tuple[Path, Path, Path]:
    """A test CA and a server certificate for 127.0.0.1 signed by it: (ca.pem, cert.pem, key.pem)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "push test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = (tmp / "push-ca.pem", tmp / "push-cert.pem", tmp / "push-key.pem")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(_pem(key))
    return paths


#: push.wait of the edge in the push tests (seconds)
PUSH_WAIT = 4


class ProviderStandIn:
    """See the module docstring. ``url`` is the base URL of both providers."""

    def __init__(self, tmp: Path) -> None:
        self.ca, cert, key = _certificates(tmp)
        apns_key = ec.generate_private_key(ec.SECP256R1())
        self.apns_key_file = tmp / f"AuthKey_{KEY_ID}.p8"
        self.apns_key_file.write_bytes(_pem(apns_key))
        self._apns_public = apns_key.public_key()
        fcm_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._fcm_public = fcm_key.public_key()
        self.bad_tokens: set[str] = set()
        self.limited_tokens: set[str] = set()  # answered 429 with Retry-After: 60
        self.pushes: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self.token_grants = 0
        self._lock = threading.Lock()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        ctx.set_alpn_protocols(["h2"])
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._connection, "127.0.0.1", 0, ssl=ctx), self.loop
        ).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"https://127.0.0.1:{self.port}"
        self.token_uri = f"{self.url}/token"
        self.service_account_file = tmp / "service-account.json"
        self.service_account_file.write_text(
            json.dumps(
                {
                    "type": "service_account",
                    "project_id": PROJECT,
                    "private_key_id": "k1",
                    "private_key": _pem(fcm_key).decode(),
                    "client_email": f"push@{PROJECT}.iam.gserviceaccount.com",
                    "token_uri": self.token_uri,
                }
            )
        )

    def close(self) -> None:
        self._server.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    def wait_push(self, token: str, timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for p in self.pushes:
                    if p["token"] == token:
                        return p
            time.sleep(0.02)
        raise AssertionError(f"no push to {token[:12]}... within {timeout}s; problems {self.problems}")

    # ------------------------------------------------------------------------------ HTTP/2
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        streams: dict[int, dict[str, Any]] = {}
        try:
            while data := await reader.read(65535):
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        streams[ev.stream_id] = {"headers": dict(ev.headers), "body": b""}
                    elif isinstance(ev, h2.events.DataReceived):
                        streams[ev.stream_id]["body"] += ev.data
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.StreamEnded):
                        req = streams.pop(ev.stream_id)
                        status, body = self._handle(req["headers"], req["body"])
                        extra = [("retry-after", "60")] if status == 429 else []
                        conn.send_headers(
                            ev.stream_id,
                            [
                                (":status", str(status)),
                                ("content-type", "application/json"),
                                ("content-length", str(len(body))),
                                *extra,
                            ],
                        )
                        conn.send_data(ev.stream_id, body, end_stream=True)
                    elif isinstance(ev, h2.events.ConnectionTerminated):
                        writer.write(conn.data_to_send())
                        writer.close()
                        return
                writer.write(conn.data_to_send())
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    def _refuse(self, what: str, status: int = 403, body: Any = None) -> tuple[int, bytes]:
        with self._lock:
            self.problems.append(what)
        return status, json.dumps(body or {"reason": "InvalidProviderToken"}).encode()

    def _handle(self, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        path = headers.get(":path", "")
        if headers.get(":method") != "POST":
            return self._refuse(f"method {headers.get(':method')}", 405)
        if path.startswith("/3/device/"):
            return self._apns(path[len("/3/device/") :], headers, body)
        if path == "/token":
            return self._token(body)
        if path == f"/v1/projects/{PROJECT}/messages:send":
            return self._fcm(headers, body)
        return self._refuse(f"unknown path {path}", 404)

    def _apns(self, token: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        auth = headers.get("authorization", "")
        if not auth.startswith("bearer "):
            return self._refuse("APNs: no bearer token")
        try:
            head = jwt.get_unverified_header(auth[7:])
            claims = jwt.decode(auth[7:], self._apns_public, algorithms=["ES256"])
        except jwt.PyJWTError as exc:
            return self._refuse(f"APNs: bad JWT {exc}")
        if head.get("kid") != KEY_ID or claims.get("iss") != TEAM_ID or "iat" not in claims:
            return self._refuse(f"APNs: JWT kid/iss {head} {claims}")
        if headers.get("apns-push-type") != "voip" or headers.get("apns-topic") != TOPIC:
            return self._refuse(f"APNs: push type/topic {headers}", 400, {"reason": "BadTopic"})
        payload = json.loads(body)
        if "aps" not in payload:
            return self._refuse("APNs: payload without aps", 400, {"reason": "PayloadEmpty"})
        with self._lock:
            self.pushes.append({"provider": "apns", "token": token, "headers": headers, "payload": payload})
        if token in self.bad_tokens:
            return 410, json.dumps({"reason": "Unregistered", "timestamp": int(time.time() * 1000)}).encode()
        return 200, b""

    def _token(self, body: bytes) -> tuple[int, bytes]:
        form = dict(urllib.parse.parse_qsl(body.decode()))
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return self._refuse(
                f"OAuth: grant {form.get('grant_type')}", 400, {"error": "unsupported_grant_type"}
            )
        try:
            claims = jwt.decode(
                form.get("assertion", ""), self._fcm_public, algorithms=["RS256"], audience=self.token_uri
            )
        except jwt.PyJWTError as exc:
            return self._refuse(f"OAuth: bad assertion {exc}", 400, {"error": "invalid_grant"})
        if "firebase.messaging" not in claims.get("scope", ""):
            return self._refuse(f"OAuth: scope {claims.get('scope')}", 400, {"error": "invalid_scope"})
        with self._lock:
            self.token_grants += 1
        return 200, json.dumps(
            {"access_token": ACCESS_TOKEN, "expires_in": 3599, "token_type": "Bearer"}
        ).encode()

    def _fcm(self, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        if headers.get("authorization") != f"Bearer {ACCESS_TOKEN}":
            return self._refuse("FCM: no valid OAuth bearer", 401, {"error": {"status": "UNAUTHENTICATED"}})
        message = json.loads(body).get("message", {})
        token = message.get("token", "")
        if not token or not isinstance(message.get("data"), dict):
            return self._refuse(
                "FCM: message without token/data", 400, {"error": {"status": "INVALID_ARGUMENT"}}
            )
        with self._lock:
            self.pushes.append({"provider": "fcm", "token": token, "headers": headers, "payload": message})
        if token in self.limited_tokens:
            return 429, json.dumps({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED"}}).encode()
        if token in self.bad_tokens:
            error = {
                "error": {"code": 404, "status": "NOT_FOUND", "details": [{"errorCode": "UNREGISTERED"}]}
            }
            return 404, json.dumps(error).encode()
        return 200, json.dumps({"name": f"projects/{PROJECT}/messages/1"}).encode()


def push_edge_toml(
    state: Path, stand_in: ProviderStandIn, pbx_port: int, sip_tls: int, backend: int = 0
) -> str:
    """The push tests' edge: tenant rossi (app media ``rtp``) pushing through ``stand_in`` for APNs and FCM,
    the app's SIP/TLS on ``sip_tls``, ``push.wait`` 4 s and ringback while the call waits."""
    from helpers.edge import TOKEN, edge_toml, tenant_toml

    p = stand_in
    push = (
        f'[tenants.push.apns]\nkey_id = "{KEY_ID}"\nteam_id = "{TEAM_ID}"\nkey_file = "{p.apns_key_file}"\n'
        f'topic = "{TOPIC}"\nendpoint = "{p.url}"\nca_file = "{p.ca}"\n'
        f'[tenants.push.fcm]\nservice_account_file = "{p.service_account_file}"\nendpoint = "{p.url}"\n'
        f'ca_file = "{p.ca}"\n'
    )
    return edge_toml(
        state,
        tenant_toml("rossi", pbx_port, keys='app_media = "rtp"\n', tail=push),
        edge='backend_address = "127.0.0.1"\n',
        sip_tls=f"127.0.0.1:{sip_tls}",
        backend_sip=f"127.0.0.1:{backend}",
        token=TOKEN,
        tls_reload=True,
        sections=f"[push]\nwait = {PUSH_WAIT}\nring = 180\n",
    )
