"""Certificate hand-off: a tenant's platform downloads its current chain, key and expiry.

Theory of operation
-------------------
``GET https://<tenant domain>/.well-known/mcs-edge/certificate`` with
``Authorization: Bearer <tenants.api_secret>``. The request is already bound to one tenant by the
HTTPS front (Host and TLS SNI agree, else 421), so the only material that can ever be returned is
that tenant's: there is no tenant parameter to tamper with. The secret is compared in constant time
(``hmac.compare_digest`` over SHA-256 digests, so not even the length leaks). Answers:

* 200 ``application/json``: ``tenant``, ``names``, ``not_before``, ``not_after``, ``sha256``,
  ``certificate_chain`` (PEM), ``private_key`` (PEM); ``Cache-Control: no-store``.
* 401 (with ``WWW-Authenticate: Bearer``) without credentials; 403 with a wrong secret or when the
  tenant has no ``api_secret`` (the endpoint is off); 405 for methods other than GET/HEAD;
  503 while the tenant has no certificate yet (ACME pending) or while a renewal is being written.

The chain and key are read from the files the certificate store serves, and the leaf's public key
is checked against the private key, so a download racing an ACME renewal never hands out a
mismatched pair. Every download is logged (tenant, peer, fingerprint, expiry; never the secret or
key); refusals are logged at most once per ``LOG_INTERVAL`` per tenant and reason, and counted
(``counters``, exported as ``mcs_edge_certificate_handoffs_total{tenant, result}``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.logger import Logger

from mcs_edge import certs
from mcs_edge.tx.ops.metrics import handoff_families

if TYPE_CHECKING:
    from twisted.web.server import Request

    from mcs_edge.config import TenantConfig
    from mcs_edge.tx.service import EdgeService

__all__ = ["HANDOFF_PATH", "CertificateHandoff"]

HANDOFF_PATH = b"/.well-known/mcs-edge/certificate"
LOG_INTERVAL = 10.0


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()


class CertificateHandoff:
    """Serves :data:`HANDOFF_PATH` for the tenant a request is bound to."""

    log = Logger()

    def __init__(self, service: EdgeService, clock: Any = time.monotonic) -> None:
        self.service = service
        self.clock = clock
        self.counters: Counter[tuple[str, str]] = Counter()  # (tenant, outcome) -> count
        self._last_log: dict[tuple[str, str], float] = {}
        metrics = getattr(service, "metrics", None)
        if metrics is not None:
            metrics.add_collector("handoff", lambda: handoff_families(self.counters))

    def render(self, request: Request, tenant: TenantConfig) -> bytes:
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        peer = _peer(request)
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            return self._refuse(request, tenant, peer, 405, "method not allowed")
        if tenant.api_secret is None:
            return self._refuse(request, tenant, peer, 403, "hand-off not enabled for this tenant")
        auth = request.getHeader("authorization") or ""
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            request.setHeader(b"www-authenticate", b'Bearer realm="mcs-edge"')
            return self._refuse(request, tenant, peer, 401, "credentials required")
        if not hmac.compare_digest(_digest(token.strip()), _digest(tenant.api_secret)):
            # a wrong secret is a failed authentication of its source (per-source ban list)
            self.service.protection.credential_failure(peer, tenant.id, "api_secret")
            return self._refuse(request, tenant, peer, 403, "wrong secret")
        loaded = self.service.certs.loaded().get(tenant.id)
        if loaded is None:
            request.setHeader(b"retry-after", b"60")
            return self._refuse(request, tenant, peer, 503, "no certificate yet")
        try:
            with open(loaded.cert_file, "rb") as fh:
                chain = fh.read()
            with open(loaded.key_file, "rb") as fh:
                key = fh.read()
            info = _matching(chain, key)
        except (OSError, ValueError) as exc:
            request.setHeader(b"retry-after", b"5")
            self.log.warn(
                "WEB411 {tenant} certificate hand-off: files unreadable or mismatched ({reason})",
                tenant=tenant.id,
                reason=type(exc).__name__,
            )
            return self._refuse(request, tenant, peer, 503, "certificate being replaced, retry")
        body = {
            "tenant": tenant.id,
            "names": list(info.names),
            "not_before": info.not_before.isoformat(),
            "not_after": info.not_after.isoformat(),
            "sha256": info.sha256,
            "certificate_chain": chain.decode("ascii"),
            "private_key": key.decode("ascii"),
        }
        self.counters[(tenant.id, "ok")] += 1
        self.log.info(
            "WEB210 {tenant} certificate handed off to {peer} (sha256 {sha256}, expires {expires})",
            tenant=tenant.id,
            peer=peer,
            sha256=info.sha256[:16],
            expires=info.not_after.isoformat(),
        )
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(body).encode()

    def _refuse(self, request: Request, tenant: TenantConfig, peer: str, status: int, reason: str) -> bytes:
        request.setResponseCode(status)
        key = (tenant.id, reason)
        self.counters[key] += 1
        now = self.clock()
        if now - self._last_log.get(key, -LOG_INTERVAL) >= LOG_INTERVAL:
            self._last_log[key] = now
            self.log.info(
                "WEB410 {tenant} certificate hand-off refused for {peer}: {reason} ({count} so far)",
                tenant=tenant.id,
                peer=peer,
                reason=reason,
                count=self.counters[key],
            )
        return f"{status} {reason}\n".encode()


def _peer(request: Request) -> str:
    addr: Any = request.getClientAddress()
    return str(getattr(addr, "host", addr))


def _matching(chain: bytes, key_pem: bytes) -> certs.CertInfo:
    """CertInfo of ``chain``; ValueError unless its leaf belongs to ``key_pem``."""
    leaf = x509.load_pem_x509_certificate(chain)
    key = serialization.load_pem_private_key(key_pem, None)
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if leaf.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise ValueError("key does not match certificate")
    return certs.cert_info(chain)
