"""HTTPS on the admin listener (``[admin] tls``): the TLS context the admin site is served with.

``off`` (default): plain HTTP, for loopback. ``self-signed``: a leaf signed by the development CA in
the state directory (``state_dir/certs/_admin/``, renewed like the tenants' self-signed ones) for
the admin host, ``localhost`` and ``127.0.0.1``; trust ``state_dir/dev-ca/ca.pem``. ``files``:
``admin.cert_file``/``admin.key_file`` (default ``certs/admin/fullchain.pem`` and ``privkey.pem``
next to the configuration). The same TLS policy as the client listeners (``tls.min_version``,
ciphers); a certificate that does not load stops the start with its path and reason. Workers'
local admin listeners (supervisor only) always stay plain HTTP on loopback.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLContextFactory
from zope.interface import implementer

from mcs_edge import certs
from mcs_edge.config import EdgeConfig
from mcs_edge.tx.tls.certificates import make_base_options

__all__ = ["AdminTls", "admin_tls"]


@implementer(IOpenSSLContextFactory)
@dataclass(frozen=True)
class AdminTls:
    """The admin listener's context factory (``getContext``)."""

    context: SSL.Context
    cert_file: str

    def getContext(self) -> SSL.Context:  # noqa: N802 (Twisted's interface name)
        return self.context


def _paths(config: EdgeConfig) -> tuple[str, str]:
    admin = config.admin
    if admin.tls == "self-signed":
        host = config.listen.admin.host
        names = tuple(
            dict.fromkeys(n for n in (host, "localhost", "127.0.0.1") if n not in ("0.0.0.0", "::"))
        )
        return certs.ensure_self_signed(config.state_dir, "_admin", names)
    cert = admin.cert_file or "certs/admin/fullchain.pem"
    key = admin.key_file or "certs/admin/privkey.pem"
    return config.resolve(cert), config.resolve(key)


def admin_tls(config: EdgeConfig) -> AdminTls | None:
    """The admin listener's TLS context, or None for plain HTTP; ValueError naming the file when it fails."""
    if config.admin.tls == "off":
        return None
    cert_file, key_file = _paths(config)
    try:
        with open(cert_file, "rb") as fh:
            chain = x509.load_pem_x509_certificates(fh.read())
        with open(key_file, "rb") as fh:
            key = serialization.load_pem_private_key(fh.read(), None)
        ctx = SSL.Context(SSL.TLS_METHOD)
        make_base_options(ctx, config.tls.min_version)
        ctx.use_certificate(chain[0])
        for extra in chain[1:]:
            ctx.add_extra_chain_cert(extra)
        ctx.use_privatekey(key)  # type: ignore[arg-type]
        ctx.check_privatekey()
    except (OSError, ValueError, TypeError, SSL.Error) as exc:
        raise ValueError(f"admin.tls: {cert_file} / {key_file}: {exc}") from exc
    return AdminTls(ctx, cert_file)
