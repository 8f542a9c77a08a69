"""Certificate files: the development CA, self-signed tenant certificates, PEM loading, and the
media relay's DTLS certificate (:func:`edge_dtls_certificate`).

The development CA and every generated key live under ``state_dir`` (never in the source tree);
private keys are written ``0600`` through :func:`mcs_edge.files.atomic_write`, so a reader never
sees half a key. A generated leaf is re-issued when its names change or when it has less than 30
days left.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mcs_edge.core.rtp.dtls import DtlsCertificate
from mcs_edge.files import atomic_write

__all__ = [
    "CertInfo",
    "DevCA",
    "build_certificate",
    "cert_info",
    "dtls_certificate",
    "edge_dtls_certificate",
    "ensure_dev_ca",
    "ensure_self_signed",
]

_RENEW_BEFORE = datetime.timedelta(days=30)
# A fixed validity window for DTLS certificates: DTLS-SRTP peers check the fingerprint from the SDP,
# not the dates (RFC 5763 s.5), and a fixed window needs no clock.
_DTLS_NOT_BEFORE = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
_DTLS_NOT_AFTER = datetime.datetime(2099, 12, 31, tzinfo=datetime.UTC)


@dataclass(frozen=True, slots=True)
class CertInfo:
    """What operators and metrics need to know about a certificate."""

    subject: str
    names: tuple[str, ...]
    not_before: datetime.datetime
    not_after: datetime.datetime
    sha256: str

    def expires_in(self, now: datetime.datetime | None = None) -> float:
        now = now or datetime.datetime.now(datetime.UTC)
        return (self.not_after - now).total_seconds()


def _names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    out: list[str] = [str(n) for n in san.get_values_for_type(x509.DNSName)]
    out += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return tuple(out)


def cert_info(pem: bytes) -> CertInfo:
    """Describe the first certificate of a PEM chain; ValueError if there is none."""
    cert = x509.load_pem_x509_certificate(pem)
    return CertInfo(
        subject=cert.subject.rfc4514_string(),
        names=_names(cert),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        sha256=hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
    )


@dataclass(frozen=True, slots=True)
class DevCA:
    cert_path: str
    key_path: str
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def build_certificate(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    *,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    extensions: Iterable[tuple[x509.ExtensionType, bool]] = (),
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None = None,
) -> x509.Certificate:
    """The one certificate builder: ``subject`` with ``key``'s public key, a random serial,
    ``extensions`` as ``(extension, critical)``; self-signed unless ``issuer`` (name, key) is given.
    SHA-256 signatures."""
    issuer_name, signer = issuer if issuer is not None else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signer, hashes.SHA256())


def dtls_certificate(common_name: str = "mcs_edge") -> DtlsCertificate:
    """A fresh self-signed ECDSA P-256 certificate for DTLS-SRTP (its fingerprint goes into SDP)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = build_certificate(name, key, not_before=_DTLS_NOT_BEFORE, not_after=_DTLS_NOT_AFTER)
    return DtlsCertificate.of(cert, key)


@functools.lru_cache(maxsize=1)
def edge_dtls_certificate() -> DtlsCertificate:
    """The process-wide DTLS certificate of the media relay (generated once, on first use)."""
    return dtls_certificate()


def ensure_dev_ca(state_dir: str) -> DevCA:
    """Load, or create on first use, the development CA under ``state_dir/dev-ca``."""
    folder = Path(state_dir) / "dev-ca"
    cert_path, key_path = folder / "ca.pem", folder / "ca.key"
    now = datetime.datetime.now(datetime.UTC)
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        if isinstance(key, ec.EllipticCurvePrivateKey) and cert.not_valid_after_utc - now > _RENEW_BEFORE:
            return DevCA(str(cert_path), str(key_path), cert, key)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mcs_edge development"),
            x509.NameAttribute(NameOID.COMMON_NAME, "mcs_edge development CA"),
        ]
    )
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    cert = build_certificate(
        name,
        key,
        not_before=now - datetime.timedelta(minutes=5),
        not_after=now + datetime.timedelta(days=3650),
        extensions=[
            (x509.BasicConstraints(ca=True, path_length=0), True),
            (usage, True),
            (x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False),
        ],
    )
    atomic_write(key_path, _key_pem(key), 0o600)
    atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return DevCA(str(cert_path), str(key_path), cert, key)


def _san(names: tuple[str, ...]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for n in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            entries.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(entries)


def issue_leaf(ca: DevCA, names: tuple[str, ...], days: int = 397) -> tuple[bytes, bytes]:
    """A new leaf for ``names`` signed by ``ca``: (fullchain PEM, key PEM)."""
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    first = next((n for n in names if not n.startswith("*.")), names[0])
    cert = build_certificate(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, first[:64])]),
        key,
        not_before=now - datetime.timedelta(minutes=5),
        not_after=now + datetime.timedelta(days=days),
        extensions=[
            (_san(names), False),
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
            (x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), False),
        ],
        issuer=(ca.cert.subject, ca.key),
    )
    chain = cert.public_bytes(serialization.Encoding.PEM) + ca.cert.public_bytes(serialization.Encoding.PEM)
    return chain, _key_pem(key)


def ensure_self_signed(state_dir: str, tenant_id: str, names: tuple[str, ...]) -> tuple[str, str]:
    """(fullchain path, key path) of a dev-CA-signed leaf for a tenant, created or renewed as needed."""
    folder = Path(state_dir) / "certs" / tenant_id
    chain_path, key_path = folder / "fullchain.pem", folder / "privkey.pem"
    if chain_path.exists() and key_path.exists():
        try:
            info = cert_info(chain_path.read_bytes())
        except ValueError:
            info = None
        if (
            info is not None
            and set(info.names) == set(names)
            and info.expires_in() > _RENEW_BEFORE.total_seconds()
        ):
            return str(chain_path), str(key_path)
    ca = ensure_dev_ca(state_dir)
    chain, key = issue_leaf(ca, names)
    # key first: a reader that sees the new chain must also find the matching key
    atomic_write(key_path, key, 0o600)
    atomic_write(chain_path, chain, 0o644)
    return str(chain_path), str(key_path)
