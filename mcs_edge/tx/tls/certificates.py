"""TLS for the public listeners: one certificate per tenant, chosen by SNI before the handshake.

Theory of operation
-------------------
:class:`CertificateStore` holds one ready standard-library ``ssl.SSLContext`` per tenant, built
once from that tenant's PEM files and cached. The TLS layer of the listeners
(tx/tls/stdlib_tls.py) reads each connection's ClientHello first (core/tls/client_hello.py) and
asks :meth:`CertificateStore.context_for_hello` for the context to run the handshake with, so the
certificate is chosen before OpenSSL sees the connection, and nothing is switched mid-handshake:

* an ``acme-tls/1`` offer (RFC 8737) for a name with a pending challenge gets the challenge
  context (TLS 1.2 and 1.3 alike);
* otherwise the tenant owning the SNI name; a client with an unknown name, or none, gets the
  default tenant's context when ``tls.unknown_sni = "default"``; otherwise it is refused with an
  ``unrecognized_name`` alert before any key exchange (``on_unknown_sni`` counts it).

The SIP/TLS listener uses :meth:`CertificateStore.sip_tls_creator`: the same, except that a client
sending *no* SNI (native SIP stacks such as baresip) gets ``tls.sip_no_sni_certificate``'s
certificate when that is set and ``unknown_sni`` is not ``default``; the connection is then bound
to a tenant by its first SIP request (tx/sip/stream.py), not by the certificate it was served.

Every context carries the same policy (:func:`make_server_context`): lowest version
``tls.min_version``, ECDHE AEAD suites for TLS 1.2 (TLS 1.3 suites are OpenSSL's, all AEAD), no
compression, no renegotiation, server cipher preference, the listeners' ALPN list (server
preference; no overlap continues without ALPN, RFC 7301 s.3.2 allows either). CPython sets
``SSL_MODE_RELEASE_BUFFERS`` on every context itself.

PEM is loaded from memory: the chain and key read once (and checked) are handed to OpenSSL through
an anonymous ``memfd`` (:func:`context_from_pem`), so no key is written anywhere to load it.

Reload: :meth:`CertificateStore.refresh` compares each tenant's files (inode, size, mtime) with what
was loaded; a changed pair is loaded into a *new* context which replaces the cached one for new
handshakes only. Existing connections keep the context they were accepted with, so they are never
dropped. A pair that fails to load (bad PEM, key not matching the certificate, missing file) is
logged with its path and the old context keeps serving.

pyOpenSSL stays where the edge is not a public TLS server: :func:`make_base_options` is the same
policy for the admin listener (tx/ops/admin_tls.py); client-side TLS to PBXs (tx/sip/backend.py)
and DTLS (core/rtp/dtls.py) use it too.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from OpenSSL import SSL, crypto
from twisted.logger import Logger

from mcs_edge import certs
from mcs_edge.config import EdgeConfig, TenantConfig
from mcs_edge.core.tenants import TenantTable

if TYPE_CHECKING:
    from collections.abc import Mapping

    from mcs_edge.core.tls.client_hello import ClientHello

__all__ = [
    "ACME_TLS_ALPN",
    "CertificateStore",
    "LoadedCert",
    "SipTlsCertificates",
    "context_from_pem",
    "make_base_options",
    "make_server_context",
    "sent_no_sni",
    "tenant_of_tls",
    "tls_binding",
    "tls_server_name",
]

# Modern ciphers for TLS 1.2 (TLS 1.3 suites are OpenSSL's defaults, all AEAD).
_CIPHERS = b"ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!MD5:!DSS"
_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}
_STDLIB_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
ACME_TLS_ALPN = b"acme-tls/1"  # RFC 8737


def make_base_options(ctx: SSL.Context, min_version: str) -> None:
    """The TLS policy every pyOpenSSL context of ours shares (the admin listener's)."""
    ctx.set_min_proto_version(_VERSIONS[min_version])
    ctx.set_cipher_list(_CIPHERS)
    opts = SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE
    no_reneg = getattr(SSL, "OP_NO_RENEGOTIATION", 0)
    ctx.set_options(opts | no_reneg)
    # Idle connections hold no read/write buffers: the edge keeps thousands of idle WebSockets.
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)


def make_server_context(min_version: str, alpn: Sequence[bytes]) -> ssl.SSLContext:
    """A server context with the policy of the module docstring and no certificate yet."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _STDLIB_VERSIONS[min_version]
    ctx.set_ciphers(_CIPHERS.decode("ascii"))
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    if alpn:
        ctx.set_alpn_protocols([p.decode("ascii") for p in alpn])
    return ctx


def context_from_pem(ctx: ssl.SSLContext, chain_pem: bytes, key_pem: bytes, scratch_dir: str) -> None:
    """Load a chain and its key into ``ctx`` from memory.

    ``load_cert_chain`` only reads paths: the PEM goes into an anonymous in-memory file
    (``memfd_create``) read through ``/proc/self/fd``; where that does not exist, into a file of
    ``scratch_dir`` created 0600 and removed at once."""
    data = chain_pem.rstrip(b"\n") + b"\n" + key_pem
    memfd = getattr(os, "memfd_create", None)
    if memfd is not None and os.path.isdir("/proc/self/fd"):
        fd = memfd("mcs-edge-pem", getattr(os, "MFD_CLOEXEC", 0))
        try:
            _write_all(fd, data)
            ctx.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    os.makedirs(scratch_dir, mode=0o700, exist_ok=True)  # without memfd (not Linux)
    fd, path = tempfile.mkstemp(prefix=".pem-", dir=scratch_dir)  # created 0600
    try:
        _write_all(fd, data)
        os.close(fd)
        fd = -1
        ctx.load_cert_chain(path)
    finally:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


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
    context: ssl.SSLContext
    info: certs.CertInfo


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
        """``on_unknown_sni``: called for a ClientHello whose server name no tenant owns (scanners;
        tx/protect/guard.py counts them)."""
        self._config = config
        self._tenants = tenants
        self._alpn = tuple(alpn)
        self._loaded: dict[str, LoadedCert] = {}
        self._on_error = on_error
        self.errors: dict[str, str] = {}
        # RFC 8737 challenge contexts by name, set by the ACME client (tx/tls/acme.py) while pending
        self._acme_alpn: dict[str, ssl.SSLContext] = {}
        self.on_unknown_sni = on_unknown_sni
        self._min_version = config.tls.min_version

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
        if config.tls.min_version != self._min_version:
            self._loaded.clear()  # policy changed: rebuild every context
            self._min_version = config.tls.min_version
        for gone in set(self._loaded) - {t.id for t in tenants}:
            del self._loaded[gone]
            self.errors.pop(gone, None)
        self.refresh()

    def server_context(self) -> ssl.SSLContext:
        """A context with this store's policy and ALPN list, without a certificate."""
        return make_server_context(self._config.tls.min_version, self._alpn)

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
        chain = _split_pem(chain_pem)
        if not chain:
            raise ValueError("no certificate in the file")
        for one in chain:
            x509.load_pem_x509_certificate(one)  # each one parses (a clear error otherwise)
        key = serialization.load_pem_private_key(key_pem, None)
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
            raise ValueError(f"unsupported private key type {type(key).__name__}")
        plain_key = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        ctx = self.server_context()
        # the chain exactly as read (leaf first), and the key: OpenSSL checks that they match
        context_from_pem(ctx, b"\n".join(chain), plain_key, self._scratch_dir())
        return LoadedCert(tenant_id, cert_file, key_file, sig, ctx, info)

    def _scratch_dir(self) -> str:
        return os.path.join(self._config.state_dir, "tls-scratch")

    # -- per handshake -----------------------------------------------------------------------
    def context_for(self, tenant_id: str) -> ssl.SSLContext | None:
        loaded = self._loaded.get(tenant_id)
        return loaded.context if loaded is not None else None

    def loaded(self) -> Mapping[str, LoadedCert]:
        return dict(self._loaded)

    def context_for_hello(self, hello: ClientHello) -> ssl.SSLContext | str:
        """The context for a connection of ``listen.https``/``listen.turns`` (module docstring)."""
        name = hello.server_name
        if self._acme_alpn and name is not None and ACME_TLS_ALPN in hello.alpn:
            challenge = self._acme_alpn.get(name)
            if challenge is not None:
                return challenge
        tenant = self._tenants.by_sni(name)
        if tenant is None and self._config.tls.unknown_sni == "default" and self._config.tls.default_tenant:
            tenant = self._tenants.by_id(self._config.tls.default_tenant)
        if tenant is None:
            if self.on_unknown_sni is not None:
                self.on_unknown_sni()
            return "unknown_name"
        loaded = self._loaded.get(tenant.id)
        return loaded.context if loaded is not None else "no_certificate"

    def sip_context_for_hello(self, hello: ClientHello) -> ssl.SSLContext | str:
        """The SIP/TLS listener's choice: clients without SNI may get ``tls.sip_no_sni_certificate``."""
        tls = self._config.tls
        if hello.server_name is None and tls.unknown_sni != "default" and tls.sip_no_sni_certificate:
            loaded = self._loaded.get(tls.sip_no_sni_certificate)
            if loaded is not None:
                return loaded.context
        return self.context_for_hello(hello)

    def sip_tls_creator(self) -> SipTlsCertificates:
        """The context chooser of the SIP/TLS listener (see the module docstring)."""
        return SipTlsCertificates(self)

    def set_acme_challenge(self, name: str, context: ssl.SSLContext | None) -> None:
        """Serve ``context`` (RFC 8737 challenge certificate) to ``acme-tls/1`` handshakes for ``name``."""
        if context is None:
            self._acme_alpn.pop(name.lower(), None)
        else:
            self._acme_alpn[name.lower()] = context

    def acme_challenge_context(self, chain_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
        """An RFC 8737 challenge context: the certificate given, ALPN ``acme-tls/1`` only."""
        ctx = make_server_context("1.2", (ACME_TLS_ALPN,))
        context_from_pem(ctx, chain_pem, key_pem, self._scratch_dir())
        return ctx


class SipTlsCertificates:
    """The store as the SIP/TLS listener's context chooser (clients without SNI, see above)."""

    def __init__(self, store: CertificateStore) -> None:
        self.store = store

    def context_for_hello(self, hello: ClientHello) -> ssl.SSLContext | str:
        return self.store.sip_context_for_hello(hello)


def tls_server_name(transport: Any) -> str | None:
    """The SNI name a TLS connection's client sent (tx/tls/stdlib_tls.py), or None."""
    name = getattr(transport, "server_name", None)
    return name if isinstance(name, str) else None


def sent_no_sni(transport: Any) -> bool:
    """True when the TLS client sent no server name at all (not an unknown one)."""
    return getattr(transport, "sni_sent", None) is False


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
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc.strerror or exc.__class__.__name__).lower().replace("_", " ")
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
    tenant = tenants.by_sni(tls_server_name(transport))
    if tenant is None and config.tls.unknown_sni == "default" and config.tls.default_tenant:
        return tenants.by_id(config.tls.default_tenant), True
    return tenant, False


def tenants_needing(tenants: Iterable[TenantConfig], mode: str) -> list[TenantConfig]:
    return [t for t in tenants if t.certificate == mode]
