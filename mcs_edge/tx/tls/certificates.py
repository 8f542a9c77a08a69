"""TLS for the public listeners: one certificate per tenant, chosen by SNI.

Theory of operation
-------------------
:class:`CertificateStore` holds one ready pyOpenSSL ``Context`` per tenant, built once from that
tenant's PEM files and cached. New connections start on a *base* context that has no certificate
and only a servername callback: the callback looks the SNI name up in the tenant table and swaps
the connection to that tenant's context (ALPN is configured identically on every context, so it
survives the swap). A client with an unknown name, or none, gets the default tenant's context when
``tls.unknown_sni = "default"``; otherwise it stays on the base context and the handshake fails
(the edge holds no certificate to offer it).

The SIP/TLS listener uses :meth:`CertificateStore.sip_tls_creator`: the same, except that a client
sending *no* SNI (native SIP stacks such as baresip) gets ``tls.sip_no_sni_certificate``'s
certificate when that is set and ``unknown_sni`` is not ``default``; the connection is then bound
to a tenant by its first SIP request (tx/sip/stream.py), not by the certificate it was served.

Reload: :meth:`CertificateStore.refresh` compares each tenant's files (inode, size, mtime) with what
was loaded; a changed pair is loaded into a *new* context which replaces the cached one for new
handshakes only. Existing connections keep the context they were accepted with, so they are never
dropped. A pair that fails to load (bad PEM, key not matching the certificate, missing file) is
logged with its path and the old context keeps serving.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from OpenSSL import SSL, crypto
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

from mcs_edge import certs
from mcs_edge.config import EdgeConfig, TenantConfig
from mcs_edge.core.tenants import TenantTable

try:  # Twisted's interface for a server-side connection creator
    from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
except ImportError:  # pragma: no cover
    from twisted.internet._sslverify import IOpenSSLServerConnectionCreator  # type: ignore[attr-defined,no-redef]

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "CertificateStore",
    "LoadedCert",
    "SipTlsCertificates",
    "make_base_options",
    "sent_no_sni",
    "tenant_of_tls",
    "tls_binding",
]

# Modern ciphers for TLS 1.2 (TLS 1.3 suites are OpenSSL's defaults, all AEAD).
_CIPHERS = b"ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!MD5:!DSS"
_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}
ACME_TLS_ALPN = b"acme-tls/1"  # RFC 8737


def make_base_options(ctx: SSL.Context, min_version: str) -> None:
    """The TLS policy every context of ours shares."""
    ctx.set_min_proto_version(_VERSIONS[min_version])
    ctx.set_cipher_list(_CIPHERS)
    opts = SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE
    no_reneg = getattr(SSL, "OP_NO_RENEGOTIATION", 0)
    ctx.set_options(opts | no_reneg)
    # Idle connections hold no read/write buffers: the edge keeps thousands of idle WebSockets.
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)


def _file_sig(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True, slots=True)
class LoadedCert:
    tenant_id: str
    cert_file: str
    key_file: str
    signature: tuple[tuple[int, int, int] | None, tuple[int, int, int] | None]
    context: SSL.Context
    info: certs.CertInfo


AlpnSelect = Callable[[SSL.Connection, list[bytes]], bytes]


@implementer(IOpenSSLServerConnectionCreator)
class CertificateStore:
    """Per-tenant TLS contexts by SNI, cached and reloadable without dropping connections."""

    log = Logger()

    def __init__(
        self,
        config: EdgeConfig,
        tenants: TenantTable[TenantConfig],
        alpn: Sequence[bytes] = (b"http/1.1",),
        on_error: Callable[[str, str, str], None] | None = None,
        on_unknown_sni: Callable[[], None] | None = None,
    ) -> None:
        """``on_unknown_sni``: called for a handshake whose server name no tenant owns (scanners;
        tx/protect/guard.py counts them)."""
        self._config = config
        self._tenants = tenants
        self._alpn = tuple(alpn)
        self._loaded: dict[str, LoadedCert] = {}
        self._on_error = on_error
        self.errors: dict[str, str] = {}
        # RFC 8737 challenge contexts by name, set by the ACME client (tx/tls/acme.py) while pending
        self._acme_alpn: dict[str, SSL.Context] = {}
        self.on_unknown_sni = on_unknown_sni
        self._base = self._make_base_context()
        self._sip_base = self._make_base_context(self._on_servername_sip)

    # -- configuration ---------------------------------------------------------------------
    def paths_for(self, tenant: TenantConfig) -> tuple[str, str]:
        """Where the tenant's chain and key are read from (generating dev certificates if asked)."""
        cfg = self._config
        if tenant.certificate == "self-signed":
            return certs.ensure_self_signed(cfg.state_dir, tenant.id, tenant.domains)
        if tenant.certificate == "acme":
            folder = os.path.join(cfg.state_dir, "acme", "certs", tenant.id)
            return os.path.join(folder, "fullchain.pem"), os.path.join(folder, "privkey.pem")
        if tenant.cert_file and tenant.key_file:
            return cfg.resolve(tenant.cert_file), cfg.resolve(tenant.key_file)
        folder = cfg.resolve(os.path.join("certs", tenant.id))
        return os.path.join(folder, "fullchain.pem"), os.path.join(folder, "privkey.pem")

    def update(self, config: EdgeConfig, tenants: TenantTable[TenantConfig]) -> None:
        """Adopt a new configuration: load new tenants, forget removed ones, re-check files."""
        self._config = config
        self._tenants = tenants
        if config.tls.min_version != getattr(self, "_min_version", config.tls.min_version):
            self._loaded.clear()  # policy changed: rebuild every context
        self._base = self._make_base_context()
        self._sip_base = self._make_base_context(self._on_servername_sip)
        for gone in set(self._loaded) - {t.id for t in tenants}:
            del self._loaded[gone]
            self.errors.pop(gone, None)
        self.refresh()

    def _make_base_context(
        self, on_servername: Callable[[SSL.Connection], None] | None = None
    ) -> SSL.Context:
        self._min_version = self._config.tls.min_version
        ctx = SSL.Context(SSL.TLS_METHOD)
        make_base_options(ctx, self._min_version)
        ctx.set_tlsext_servername_callback(on_servername or self._on_servername)
        ctx.set_alpn_select_callback(self._select_alpn)
        return ctx

    # -- loading -----------------------------------------------------------------------------
    def refresh(self) -> list[str]:
        """Load certificates whose files changed; return the ids of tenants that changed."""
        changed: list[str] = []
        for tenant in self._tenants:
            try:
                cert_file, key_file = self.paths_for(tenant)
            except Exception as exc:  # generating a dev certificate failed (disk full...)
                self._fail(tenant.id, self._config.state_dir, f"cannot prepare certificate: {exc}")
                continue
            sig = (_file_sig(cert_file), _file_sig(key_file))
            old = self._loaded.get(tenant.id)
            if old is not None and old.signature == sig and old.cert_file == cert_file:
                continue
            if sig[0] is None or sig[1] is None:
                missing = cert_file if sig[0] is None else key_file
                if tenant.certificate == "acme" and old is None:
                    continue  # not issued yet: the ACME client will provide it
                self._fail(tenant.id, missing, "file not found")
                continue
            try:
                loaded = self._load(tenant.id, cert_file, key_file, sig)
            except Exception as exc:
                self._fail(tenant.id, cert_file, _describe(exc))
                continue
            self._loaded[tenant.id] = loaded
            self.errors.pop(tenant.id, None)
            changed.append(tenant.id)
            self.log.info(
                "TLS201 {tenant} certificate loaded from {path} (expires {expires}, sha256 {sha256})",
                tenant=tenant.id,
                path=cert_file,
                expires=loaded.info.not_after.isoformat(),
                sha256=loaded.info.sha256[:16],
            )
        return changed

    def _fail(self, tenant_id: str, path: str, reason: str) -> None:
        if self.errors.get(tenant_id) != f"{path}: {reason}":
            keeping = " (keeping the previous certificate)" if tenant_id in self._loaded else ""
            self.log.error(
                "TLS401 {tenant} certificate {path} not loaded: {reason}{keeping}",
                tenant=tenant_id,
                path=path,
                reason=reason,
                keeping=keeping,
            )
        self.errors[tenant_id] = f"{path}: {reason}"
        if self._on_error is not None:
            self._on_error(tenant_id, path, reason)

    def _load(self, tenant_id: str, cert_file: str, key_file: str, sig: tuple[Any, Any]) -> LoadedCert:
        with open(cert_file, "rb") as fh:
            chain_pem = fh.read()
        with open(key_file, "rb") as fh:
            key_pem = fh.read()
        info = certs.cert_info(chain_pem)
        ctx = SSL.Context(SSL.TLS_METHOD)
        make_base_options(ctx, self._config.tls.min_version)
        chain = _split_pem(chain_pem)
        if not chain:
            raise ValueError("no certificate in the file")
        ctx.use_certificate(x509.load_pem_x509_certificate(chain[0]))
        for extra in chain[1:]:
            ctx.add_extra_chain_cert(x509.load_pem_x509_certificate(extra))
        key = serialization.load_pem_private_key(key_pem, None)
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
            raise ValueError(f"unsupported private key type {type(key).__name__}")
        ctx.use_privatekey(key)
        ctx.check_privatekey()
        ctx.set_alpn_select_callback(self._select_alpn)
        return LoadedCert(tenant_id, cert_file, key_file, sig, ctx, info)

    # -- per handshake -----------------------------------------------------------------------
    def context_for(self, tenant_id: str) -> SSL.Context | None:
        loaded = self._loaded.get(tenant_id)
        return loaded.context if loaded is not None else None

    def loaded(self) -> Mapping[str, LoadedCert]:
        return dict(self._loaded)

    def _on_servername(self, conn: SSL.Connection) -> None:
        tenant = self._tenants.by_sni(conn.get_servername())
        if tenant is None and self._config.tls.unknown_sni == "default" and self._config.tls.default_tenant:
            tenant = self._tenants.by_id(self._config.tls.default_tenant)
        if tenant is None:
            if self.on_unknown_sni is not None:
                self.on_unknown_sni()
            return  # no certificate on the base context: the handshake fails
        loaded = self._loaded.get(tenant.id)
        if loaded is not None:
            conn.set_context(loaded.context)

    def _on_servername_sip(self, conn: SSL.Connection) -> None:
        tls = self._config.tls
        if conn.get_servername() is None and tls.unknown_sni != "default" and tls.sip_no_sni_certificate:
            loaded = self._loaded.get(tls.sip_no_sni_certificate)
            if loaded is not None:
                conn.set_context(loaded.context)
                return
        self._on_servername(conn)

    def sip_tls_creator(self) -> SipTlsCertificates:
        """The connection creator of the SIP/TLS listener (see the module docstring)."""
        return SipTlsCertificates(self)

    def sip_connection_for_tls(self, protocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        conn = SSL.Connection(self._sip_base, None)
        conn.set_app_data(protocol)
        return conn

    def set_acme_challenge(self, name: str, context: SSL.Context | None) -> None:
        """Serve ``context`` (RFC 8737 challenge certificate) to ``acme-tls/1`` handshakes for ``name``."""
        if context is None:
            self._acme_alpn.pop(name.lower(), None)
        else:
            self._acme_alpn[name.lower()] = context

    def _select_alpn(self, conn: SSL.Connection, offered: list[bytes]) -> bytes:
        if self._acme_alpn and ACME_TLS_ALPN in offered:
            # Only in TLS 1.3 is ALPN chosen before the certificate (OpenSSL's final_alpn runs in
            # early ClientHello processing), so swapping the context here is safe there only.
            name = (conn.get_servername() or b"").decode("ascii", "replace").lower()
            challenge = self._acme_alpn.get(name)
            if challenge is not None and conn.get_protocol_version_name() == "TLSv1.3":
                conn.set_context(challenge)
                return ACME_TLS_ALPN
        for proto in self._alpn:
            if proto in offered:
                return proto
        # No overlap: continue without ALPN rather than failing (RFC 7301 allows either).
        return getattr(SSL, "NO_OVERLAPPING_PROTOCOLS", b"")  # type: ignore[no-any-return]

    def serverConnectionForTLS(self, protocol: TLSMemoryBIOProtocol) -> SSL.Connection:  # noqa: N802
        conn = SSL.Connection(self._base, None)
        conn.set_app_data(protocol)
        return conn


@implementer(IOpenSSLServerConnectionCreator)
class SipTlsCertificates:
    """The store as the SIP/TLS listener's connection creator (clients without SNI, see above)."""

    def __init__(self, store: CertificateStore) -> None:
        self.store = store

    def serverConnectionForTLS(self, protocol: TLSMemoryBIOProtocol) -> SSL.Connection:  # noqa: N802
        return self.store.sip_connection_for_tls(protocol)


def sent_no_sni(transport: Any) -> bool:
    """True when the TLS client sent no server name at all (not an unknown one)."""
    handle = transport.getHandle() if hasattr(transport, "getHandle") else None
    return isinstance(handle, SSL.Connection) and handle.get_servername() is None


def _split_pem(data: bytes) -> list[bytes]:
    out: list[bytes] = []
    marker_begin, marker_end = b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----"
    pos = 0
    while True:
        start = data.find(marker_begin, pos)
        if start < 0:
            return out
        end = data.find(marker_end, start)
        if end < 0:
            raise ValueError("unterminated certificate in PEM")
        end += len(marker_end)
        out.append(data[start:end])
        pos = end


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SSL.Error | crypto.Error):
        parts = [e[-1] for e in (exc.args[0] if exc.args and isinstance(exc.args[0], list) else [])]
        return "; ".join(str(p) for p in parts) or exc.__class__.__name__
    return str(exc) or exc.__class__.__name__


def tenant_of_tls(
    transport: Any, tenants: TenantTable[TenantConfig], config: EdgeConfig
) -> TenantConfig | None:
    """The tenant a TLS connection was accepted for (its SNI name, or the default tenant)."""
    return tls_binding(transport, tenants, config)[0]


def tls_binding(
    transport: Any, tenants: TenantTable[TenantConfig], config: EdgeConfig
) -> tuple[TenantConfig | None, bool]:
    """(tenant, by default): the tenant of the connection's SNI name, or ``tls.default_tenant``
    with True when the client sent no SNI (or a name no tenant owns) and ``tls.unknown_sni`` is
    ``"default"``."""
    handle = transport.getHandle() if hasattr(transport, "getHandle") else None
    name = handle.get_servername() if isinstance(handle, SSL.Connection) else None
    tenant = tenants.by_sni(name)
    if tenant is None and config.tls.unknown_sni == "default" and config.tls.default_tenant:
        return tenants.by_id(config.tls.default_tenant), True
    return tenant, False


def tenants_needing(tenants: Iterable[TenantConfig], mode: str) -> list[TenantConfig]:
    return [t for t in tenants if t.certificate == mode]
