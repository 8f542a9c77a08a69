"""ACME (RFC 8555) certificates for tenants with ``certificate = "acme"``, and the challenge responders.

Theory of operation
-------------------
:class:`AcmeManager` keeps one small state record per ACME tenant and one timer for it. When the
timer fires it places **one order per tenant** (all of the tenant's names as SANs), so a tenant
whose validation fails never holds up another's: orders run independently, at most
``max_parallel`` at a time, each bounded by ``order_timeout``.

The protocol work (JWS, nonces, account, orders, finalization) is done by certbot's maintained
``acme`` library. Its calls block (``requests``), so each one runs in the reactor's thread pool
(``deferToThreadPool``); everything else (challenge tables, timers, state) lives on the reactor
thread, and polling waits on the reactor, not in a thread, so shutdown is never held up by a sleep.

Challenges:

* ``http-01``: the token and key authorization are put in a table that the plain-HTTP listener
  (:class:`PlainHttpResource` on ``listen.http``) answers at ``/.well-known/acme-challenge/<token>``
  for the matching Host only; every other request there is redirected to HTTPS.
* ``tls-alpn-01`` (RFC 8737): a self-signed certificate holding the critical ``acmeIdentifier``
  extension is built per name and handed to the :class:`~mcs_edge.tx.tls.certificates.CertificateStore`, which
  serves it to a ClientHello offering ALPN ``acme-tls/1`` for that name, in TLS 1.2 and 1.3 (the
  certificate is chosen from the ClientHello before the handshake starts, tx/tls/stdlib_tls.py).

Responders are installed just before the CA is asked to validate and removed when the order ends,
on every path. The issued chain is checked (leaf key = our key) and written atomically (key first,
then chain) to ``state_dir/acme/certs/<tenant>/``, which the certificate store reads for ACME
tenants; ``on_issued`` then makes the store load it, so new handshakes get the new certificate and
open connections keep theirs.

Renewal: when ``acme.renew_fraction`` (a third) of the lifetime remains, or at once when the file
is missing, unreadable or its names differ from the tenant's. A failure is logged and retried
after ``acme.retry_min`` seconds, doubling up to ``acme.retry_max`` (with +-10 % jitter).
:meth:`AcmeManager.status` is a per-tenant dict for health and metrics. Wildcard names need
DNS-01, which the edge does not do: they are left out of the order (logged, in the status).

The account key is ``state_dir/acme/account.key`` (P-256, ES256), created on first use; the account
itself is looked up (or created) with that key at the first order of each run.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import random
import ssl
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from acme import challenges, client, crypto_util, messages
from acme import errors as acme_errors
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier
from josepy.jwa import ES256
from josepy.jwk import JWK, JWKEC
from twisted.internet import defer, task, threads
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request

from mcs_edge import __version__, certs
from mcs_edge.config import EdgeConfig, TenantConfig
from mcs_edge.core.tenants import TenantTable
from mcs_edge.core.tenants.table import normalise_host
from mcs_edge.files import atomic_write
from mcs_edge.tx.timers import wall_datetime
from mcs_edge.tx.tls.certificates import CertificateStore

if TYPE_CHECKING:
    from collections.abc import Generator

    from mcs_edge.tx.timers import Timers

__all__ = [
    "ACME_IDENTIFIER_OID",
    "TLSALPN01",
    "AcmeError",
    "AcmeManager",
    "PlainHttpRequest",
    "PlainHttpResource",
    "alpn_challenge_certificate",
]

T = TypeVar("T")

ACME_IDENTIFIER_OID = ObjectIdentifier("1.3.6.1.5.5.7.1.31")  # id-pe-acmeIdentifier, RFC 8737 s.6.1
HTTP01_PREFIX = b"/.well-known/acme-challenge/"
_DAY = 86400.0


class AcmeError(Exception):
    """An order could not be completed (the message is safe to log and to expose)."""


# certbot's acme library dropped its TLS-ALPN-01 classes; the challenge is only a token and a key
# authorization, so it is declared here on the library's own base classes.
class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
    """Response to tls-alpn-01 (serialises as ``{}``, RFC 8555 s.7.5.1)."""

    typ = "tls-alpn-01"


class TLSALPN01(challenges.KeyAuthorizationChallenge):
    """ACME tls-alpn-01 challenge (RFC 8737)."""

    response_cls = TLSALPN01Response
    typ = response_cls.typ

    def validation(self, account_key: JWK, **unused_kwargs: Any) -> str:
        return self.key_authorization(account_key)


if "tls-alpn-01" not in challenges.Challenge.TYPES:
    challenges.Challenge.register(TLSALPN01)
if "tls-alpn-01" not in challenges.ChallengeResponse.TYPES:
    challenges.ChallengeResponse.register(TLSALPN01Response)


def alpn_challenge_certificate(
    domain: str, key_authorization: str, now: datetime.datetime | None = None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The RFC 8737 s.3 certificate: SAN = ``domain``, critical acmeIdentifier = SHA-256(key auth)."""
    now = now or wall_datetime()
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain[:64])])
    cert = certs.build_certificate(
        name,
        key,
        not_before=now - datetime.timedelta(days=1),
        not_after=now + datetime.timedelta(days=7),
        extensions=[
            (x509.SubjectAlternativeName([x509.DNSName(domain)]), False),
            # extnValue holds the DER of an OCTET STRING of the 32-byte digest
            (x509.UnrecognizedExtension(ACME_IDENTIFIER_OID, b"\x04\x20" + digest), True),
        ],
    )
    return cert, key


def _alpn_challenge_context(store: CertificateStore, domain: str, key_authorization: str) -> ssl.SSLContext:
    cert, key = alpn_challenge_certificate(domain, key_authorization)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return store.acme_challenge_context(cert.public_bytes(serialization.Encoding.PEM), key_pem)


def _split_names(domains: Iterable[str]) -> tuple[list[str], list[str]]:
    """(names an HTTP-01/TLS-ALPN-01 order can cover, names it cannot)."""
    ok: list[str] = []
    skipped: list[str] = []
    for d in domains:
        if d.startswith("*."):
            skipped.append(d)  # wildcards need DNS-01
            continue
        try:
            ipaddress.ip_address(d)
        except ValueError:
            ok.append(d)
        else:
            skipped.append(d)  # IP identifiers (RFC 8738) are not requested
    return ok, skipped


def _describe(exc: BaseException) -> str:
    """A short, secret-free description of why an order failed."""
    if isinstance(exc, acme_errors.ValidationError):
        parts = []
        for authzr in exc.failed_authzrs:
            for chall in authzr.body.challenges:
                if chall.error is not None:
                    parts.append(f"{authzr.body.identifier.value}: {chall.error.detail or chall.error.typ}")
        return "validation failed: " + "; ".join(parts or ["no detail"])
    if isinstance(exc, messages.Error):
        return f"CA error {exc.code or exc.typ}: {exc.detail or exc.title or ''}".strip()
    if isinstance(exc, acme_errors.TimeoutError):
        return "timed out waiting for the CA"
    if isinstance(exc, AcmeError):
        return str(exc)
    if isinstance(exc, defer.CancelledError):
        return "cancelled (shutdown)"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300]


@dataclass(slots=True)
class _TenantState:
    tenant: TenantConfig
    state: str = "idle"  # idle | ordering | valid | error
    failures: int = 0
    last_error: str | None = None
    last_issued: datetime.datetime | None = None
    not_after: datetime.datetime | None = None
    renew_at: datetime.datetime | None = None
    next_attempt: datetime.datetime | None = None
    orders: int = 0
    skipped: tuple[str, ...] = ()
    timer: Any = None
    busy: bool = False  # an order is queued or in flight
    waiters: list[Deferred[bool]] = field(default_factory=list)

    def as_dict(self, challenge: str) -> dict[str, Any]:
        def iso(t: datetime.datetime | None) -> str | None:
            return t.isoformat() if t is not None else None

        return {
            "tenant": self.tenant.id,
            "state": self.state,
            "names": list(self.tenant.domains),
            "skipped_names": list(self.skipped),
            "challenge": challenge,
            "not_after": iso(self.not_after),
            "renew_at": iso(self.renew_at),
            "next_attempt": iso(self.next_attempt),
            "last_issued": iso(self.last_issued),
            "last_error": self.last_error,
            "failures": self.failures,
            "orders": self.orders,
        }


class AcmeManager:
    """Issues and renews ACME certificates, one independent order per tenant."""

    log = Logger()

    def __init__(
        self,
        config: EdgeConfig,
        tenants: TenantTable[TenantConfig],
        store: CertificateStore,
        timers: Timers,
        reactor: Any,
        on_issued: Callable[[str], Any],
        *,
        wall: Callable[[], datetime.datetime] | None = None,
        blocking: Callable[..., Deferred[Any]] | None = None,
        max_parallel: int = 4,
        poll_interval: float = 1.0,
        order_timeout: float = 180.0,
    ) -> None:
        self.config = config
        self.tenants = tenants
        self.store = store
        self.timers = timers
        self.reactor = reactor
        self.on_issued = on_issued
        self.wall: Callable[[], datetime.datetime] = wall or wall_datetime
        self._blocking_impl = blocking
        self.poll_interval = poll_interval
        self.order_timeout = order_timeout
        self._sem = defer.DeferredSemaphore(max_parallel)
        self._states: dict[str, _TenantState] = {}
        self._http01: dict[str, tuple[str, str]] = {}  # token -> (domain, key authorization)
        self._sleeps: set[Deferred[None]] = set()
        self._running = False
        self._account_key: JWKEC | None = None
        self._account: messages.RegistrationResource | None = None
        self._directory: messages.Directory | None = None
        self._account_waiters: list[Deferred[None]] | None = None

    # -- public API ---------------------------------------------------------------------------
    def start(self) -> None:
        """Schedule every ACME tenant (at once when its certificate is missing or due)."""
        self._running = True
        self._sync()

    def stop(self) -> None:
        """Cancel timers and waits; orders in flight end at their next step."""
        self._running = False
        for st in self._states.values():
            self.timers.cancel(st.timer)
            st.timer = None
        for d in list(self._sleeps):
            d.cancel()
        self._sleeps.clear()

    def update(self, config: EdgeConfig, tenants: TenantTable[TenantConfig]) -> None:
        """Adopt a reloaded configuration: new tenants scheduled, removed ones forgotten."""
        if config.acme.directory != self.config.acme.directory:
            self._account = None
            self._directory = None
        self.config = config
        self.tenants = tenants
        if self._running:
            self._sync()

    def renew(self, tenant_id: str) -> Deferred[bool]:
        """Order a new certificate for ``tenant_id`` now; fires True when issued, False otherwise."""
        st = self._states.get(tenant_id)
        if st is None or not self._running:
            return defer.succeed(False)
        waiter: Deferred[bool] = Deferred()
        st.waiters.append(waiter)
        if not st.busy:
            self.timers.cancel(st.timer)
            st.timer = None
            self._launch(st)
        return waiter

    def status(self) -> dict[str, dict[str, Any]]:
        """Per-tenant ACME state for health checks and metrics (JSON-ready, no secrets)."""
        return {tid: st.as_dict(self._challenge_of(st.tenant)) for tid, st in self._states.items()}

    def http01_response(self, token: str, host: str | None) -> str | None:
        """The key authorization to answer for ``token`` on ``host``, if one is pending."""
        entry = self._http01.get(token)
        if entry is None or normalise_host(host) != entry[0]:
            return None
        return entry[1]

    # -- scheduling ---------------------------------------------------------------------------
    def _challenge_of(self, tenant: TenantConfig) -> str:
        return tenant.acme_challenge or self.config.acme.challenge

    def _sync(self) -> None:
        wanted = {t.id: t for t in self.tenants if t.certificate == "acme"}
        for gone in set(self._states) - set(wanted):
            self.timers.cancel(self._states.pop(gone).timer)
        for tid, tenant in wanted.items():
            st = self._states.get(tid)
            if st is None:
                fresh = self._states[tid] = _TenantState(tenant)
                self._schedule(fresh, self._delay_until_due(fresh))
            else:
                changed = st.tenant != tenant
                st.tenant = tenant
                if changed and not st.busy:
                    self._schedule(st, self._delay_until_due(st))

    def _delay_until_due(self, st: _TenantState) -> float:
        """Seconds until ``st``'s certificate needs an order (0 = now); read from its files."""
        chain_path, _key_path = self.store.paths_for(st.tenant)
        try:
            info = certs.cert_info(Path(chain_path).read_bytes())
        except (OSError, ValueError):
            return 0.0
        wanted, _skipped = _split_names(st.tenant.domains)
        if not set(wanted) <= set(info.names):
            return 0.0
        st.not_after = info.not_after
        lifetime = (info.not_after - info.not_before).total_seconds()
        st.renew_at = info.not_after - datetime.timedelta(seconds=lifetime * self.config.acme.renew_fraction)
        if st.state == "idle":
            st.state = "valid"
        return max(0.0, (st.renew_at - self.wall()).total_seconds())

    def _schedule(self, st: _TenantState, delay: float) -> None:
        self.timers.cancel(st.timer)
        st.timer = None
        if not self._running:
            return
        delay = min(delay, _DAY)  # re-check at least daily (clock changes, files replaced by hand)
        st.next_attempt = self.wall() + datetime.timedelta(seconds=delay)
        st.timer = self.timers.call_later(delay, self._due, st.tenant.id)

    def _due(self, tenant_id: str) -> None:
        st = self._states.get(tenant_id)
        if st is None or st.busy:
            return
        st.timer = None
        delay = self._delay_until_due(st)
        if delay > 0:
            self._schedule(st, delay)
            return
        self._launch(st)

    def _launch(self, st: _TenantState) -> None:
        st.next_attempt = None
        st.busy = True  # cleared by _guarded_order, possibly before run() returns
        self._sem.run(self._guarded_order, st)

    @inlineCallbacks
    def _guarded_order(self, st: _TenantState) -> Generator[Deferred[Any], Any, bool]:
        tenant = st.tenant
        st.state = "ordering"
        st.orders += 1
        ok = False
        try:
            if not self._running:
                raise defer.CancelledError()
            yield self._order(st)
            ok = True
        except Exception as exc:
            self._failed(st, exc)
        finally:
            st.busy = False
            waiters, st.waiters = st.waiters, []
            for w in waiters:
                w.callback(ok)
        if ok:
            st.state = "valid"
            st.failures = 0
            st.last_error = None
            st.last_issued = self.wall()
            self._schedule(st, self._delay_until_due(st))
            try:
                self.on_issued(tenant.id)
            except Exception:
                self.log.failure("ACM501 {tenant} certificate written but reloading failed", tenant=tenant.id)
        return ok

    def _failed(self, st: _TenantState, exc: BaseException) -> None:
        st.failures += 1
        st.state = "error"
        st.last_error = _describe(exc)
        cfg = self.config.acme
        delay = min(cfg.retry_max, cfg.retry_min * 2 ** min(st.failures - 1, 30))
        delay *= random.uniform(0.9, 1.1)
        if self._running:
            self._schedule(st, delay)
        self.log.error(
            "ACM400 {tenant} certificate order failed ({failures} in a row): {error}; retry in {delay:.0f}s",
            tenant=st.tenant.id,
            failures=st.failures,
            error=st.last_error,
            delay=delay,
        )

    # -- one order ----------------------------------------------------------------------------
    def _blocking(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        if self._blocking_impl is not None:
            return self._blocking_impl(fn, *args)
        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), fn, *args)

    def _sleep(self, delay: float) -> Deferred[None]:
        d: Deferred[None] = task.deferLater(self.reactor, delay, lambda: None)
        self._sleeps.add(d)

        def done(result: Any) -> Any:
            self._sleeps.discard(d)
            return result

        d.addBoth(done)
        return d

    @inlineCallbacks
    def _order(self, st: _TenantState) -> Generator[Deferred[Any], Any, None]:
        tenant = st.tenant
        names, skipped = _split_names(tenant.domains)
        st.skipped = tuple(skipped)
        if skipped:
            self.log.warn(
                "ACM300 {tenant} names {names} cannot be validated by HTTP-01/TLS-ALPN-01: left out",
                tenant=tenant.id,
                names=", ".join(skipped),
            )
        if not names:
            raise AcmeError("no name of this tenant can be validated (wildcards and IPs need DNS-01)")
        kind = self._challenge_of(tenant)
        if kind == "http-01" and self.config.listen.http is None:
            raise AcmeError("http-01 needs listen.http")
        deadline = self.timers.now() + self.order_timeout
        yield self._ensure_account()
        acme_client: client.ClientV2 = yield self._blocking(self._new_client)
        key_pem, csr_pem = yield self._blocking(_new_key_and_csr, names)
        self.log.info(
            "ACM100 {tenant} ordering a certificate for {names} ({kind})",
            tenant=tenant.id,
            names=", ".join(names),
            kind=kind,
        )
        orderr: messages.OrderResource = yield self._blocking(acme_client.new_order, csr_pem)
        installed: list[tuple[str, str]] = []
        try:
            pending: list[messages.AuthorizationResource] = []
            for authzr in orderr.authorizations:
                if authzr.body.status == messages.STATUS_VALID:
                    continue  # the CA remembers an earlier validation
                domain = authzr.body.identifier.value
                challb = self._pick(authzr, kind)
                assert self._account_key is not None
                key_auth = challb.chall.key_authorization(self._account_key)
                self._install(kind, domain, challb, key_auth, installed)
                pending.append(authzr)
                response = challb.chall.response(self._account_key)
                yield self._blocking(acme_client.answer_challenge, challb, response)
            for authzr in pending:
                yield self._wait_valid(acme_client, authzr, deadline)
            seconds_left = max(5.0, deadline - self.timers.now())
            # the acme client compares this deadline with its own naive local datetime.now()
            local_now = self.wall().astimezone().replace(tzinfo=None)
            finalize_by = local_now + datetime.timedelta(seconds=min(seconds_left, 60.0))
            orderr = yield self._blocking(acme_client.finalize_order, orderr, finalize_by)
        finally:
            self._uninstall(installed)
        if not orderr.fullchain_pem:
            raise AcmeError("the CA returned no certificate")
        chain_path, key_path = self.store.paths_for(tenant)
        info: certs.CertInfo = yield self._blocking(
            _check_and_write, orderr.fullchain_pem.encode(), key_pem, chain_path, key_path
        )
        st.not_after = info.not_after
        self.log.info(
            "ACM200 {tenant} certificate issued for {names}, expires {expires} (sha256 {sha256})",
            tenant=tenant.id,
            names=", ".join(info.names),
            expires=info.not_after.isoformat(),
            sha256=info.sha256[:16],
        )

    def _pick(self, authzr: messages.AuthorizationResource, kind: str) -> messages.ChallengeBody:
        for challb in authzr.body.challenges:
            if challb.chall.typ == kind:
                return challb
        offered = ", ".join(sorted(c.chall.typ for c in authzr.body.challenges if hasattr(c.chall, "typ")))
        raise AcmeError(f"the CA offers no {kind} challenge for {authzr.body.identifier.value} ({offered})")

    def _install(
        self,
        kind: str,
        domain: str,
        challb: messages.ChallengeBody,
        key_auth: str,
        installed: list[tuple[str, str]],
    ) -> None:
        if kind == "http-01":
            token = challb.chall.encode("token")
            self._http01[token] = (domain.lower(), key_auth)
            installed.append(("http-01", token))
        else:
            self.store.set_acme_challenge(domain, _alpn_challenge_context(self.store, domain, key_auth))
            installed.append(("tls-alpn-01", domain))

    def _uninstall(self, installed: list[tuple[str, str]]) -> None:
        for kind, key in installed:
            if kind == "http-01":
                self._http01.pop(key, None)
            else:
                self.store.set_acme_challenge(key, None)

    @inlineCallbacks
    def _wait_valid(
        self, acme_client: client.ClientV2, authzr: messages.AuthorizationResource, deadline: float
    ) -> Generator[Deferred[Any], Any, None]:
        while True:
            yield self._sleep(self.poll_interval)
            if not self._running:
                raise defer.CancelledError()
            authzr, _response = yield self._blocking(acme_client.poll, authzr)
            status = authzr.body.status
            if status == messages.STATUS_VALID:
                return
            if status != messages.STATUS_PENDING:
                raise acme_errors.ValidationError([authzr])
            if self.timers.now() > deadline:
                raise acme_errors.TimeoutError()

    @inlineCallbacks
    def _ensure_account(self) -> Generator[Deferred[Any], Any, None]:
        if self._account is not None:
            return
        waiter: Deferred[None] = Deferred()
        if self._account_waiters is not None:
            self._account_waiters.append(waiter)  # registration already under way
        else:
            self._account_waiters = [waiter]
            self._blocking(self._register).addBoth(self._account_ready)
        yield waiter

    def _account_ready(self, result: Any) -> None:
        waiters, self._account_waiters = self._account_waiters or [], None
        for w in waiters:
            if isinstance(result, Failure):
                w.errback(result)
            else:
                w.callback(None)

    # -- blocking helpers (thread pool) -------------------------------------------------------
    def _network(self) -> client.ClientNetwork:
        assert self._account_key is not None
        return client.ClientNetwork(
            self._account_key,
            account=self._account,
            alg=ES256,
            verify_ssl=self._trust(),  # type: ignore[arg-type]  # requests takes a CA file path too
            user_agent=f"mcs-edge/{__version__} acme-python",
            timeout=30,
        )

    def _trust(self) -> bool | str:
        extra = self.config.acme.ca_bundle
        if not extra:
            return True
        # "extra" CA: the usual trust store plus this file, combined under state_dir
        import certifi

        combined = Path(self.config.state_dir) / "acme" / "trust.pem"
        data = Path(certifi.where()).read_bytes() + b"\n" + Path(self.config.resolve(extra)).read_bytes()
        if not combined.exists() or combined.read_bytes() != data:
            atomic_write(combined, data, 0o644)
        return str(combined)

    def _register(self) -> None:
        self._account_key = _load_or_create_account_key(Path(self.config.state_dir) / "acme" / "account.key")
        net = self._network()
        directory_url = self.config.acme.directory
        if not directory_url:
            raise AcmeError("acme.directory is not set")
        directory = client.ClientV2.get_directory(directory_url, net)
        acme_client = client.ClientV2(directory, net)
        email = self.config.acme.email
        new = messages.NewRegistration.from_data(email=email, terms_of_service_agreed=True)
        try:
            regr = acme_client.new_account(new)
        except acme_errors.ConflictError as exc:  # the key already has an account: use it
            regr = messages.RegistrationResource(uri=exc.location, body=messages.Registration())
        self._directory = directory
        self._account = regr
        self.log.info("ACM101 ACME account ready at {directory}", directory=directory_url)

    def _new_client(self) -> client.ClientV2:
        assert self._directory is not None
        return client.ClientV2(self._directory, self._network())


def _load_or_create_account_key(path: Path) -> JWKEC:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), None)
    except FileNotFoundError:
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        atomic_write(path, pem, 0o600)
        try:
            os.chmod(path.parent, 0o700)
        except OSError:
            pass
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise AcmeError(f"{path}: the ACME account key must be an EC P-256 key")
    return JWKEC(key=key)


def _new_key_and_csr(names: list[str]) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, crypto_util.make_csr(key_pem, names)


def _check_and_write(chain_pem: bytes, key_pem: bytes, chain_path: str, key_path: str) -> certs.CertInfo:
    """Refuse a chain whose leaf is not for our key; else write key then chain atomically."""
    leaf = x509.load_pem_x509_certificate(chain_pem)
    key = serialization.load_pem_private_key(key_pem, None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if leaf.public_key().public_bytes(serialization.Encoding.DER, spki) != key.public_key().public_bytes(
        serialization.Encoding.DER, spki
    ):
        raise AcmeError("the issued certificate does not match the order's key")
    info = certs.cert_info(chain_pem)
    atomic_write(key_path, key_pem, 0o600)
    atomic_write(chain_path, chain_pem, 0o644)
    return info


# -- the plain-HTTP listener --------------------------------------------------------------------


class PlainHttpRequest(Request):
    """A request on the plain-HTTP port: no body is needed there, so none is buffered."""

    max_body = 4096

    def gotLength(self, length: int | None) -> None:  # noqa: N802
        if length is None or length > self.max_body:
            transport: Any = self.channel.transport
            transport.write(
                b"HTTP/1.1 413 Content Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
            )
            self.channel.loseConnection()
            self._refused = True
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:  # noqa: N802
        if not getattr(self, "_refused", False):
            super().handleContentChunk(data)

    def process(self) -> None:
        if not getattr(self, "_refused", False):
            super().process()


class PlainHttpResource(Resource):
    """``listen.http``: ACME HTTP-01 answers; everything else for a tenant host goes to HTTPS."""

    isLeaf = True
    log = Logger()

    def __init__(
        self,
        http01_response: Callable[[str, str | None], str | None],
        tenants: Callable[[], TenantTable[TenantConfig]],
        config: Callable[[], EdgeConfig],
        ports: Mapping[str, Any],
    ) -> None:
        """``http01_response(token, host)``: the ACME manager's answer; ``tenants``/``config``:
        the current tenant table and configuration (replaced on reload); ``ports``: the bound
        listeners by name (the HTTPS port when ``listen.https`` asks for port 0)."""
        super().__init__()
        self.http01_response = http01_response
        self.tenants = tenants
        self.config = config
        self.ports = ports

    def render(self, request: Request) -> bytes:
        request.setHeader(b"server", b"mcs-edge")
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        host = request.getHeader("host")
        path = request.path or b""
        if path.startswith(HTTP01_PREFIX):
            token = path[len(HTTP01_PREFIX) :].decode("ascii", "replace")
            answer = self.http01_response(token, host)
            if answer is None or request.method not in (b"GET", b"HEAD"):
                request.setResponseCode(404)
                return b"404 not found\n"
            self.log.info("ACM110 answered HTTP-01 for {host}", host=normalise_host(host))
            request.setHeader(b"content-type", b"application/octet-stream")
            return answer.encode("ascii")
        name = normalise_host(host)
        if name is None or self.tenants().by_host(name) is None:
            request.setResponseCode(404)
            return b"404 unknown host\n"
        port = self._https_port()
        authority = name if port == 443 else f"{name}:{port}"
        if ":" in name:
            authority = f"[{name}]" if port == 443 else f"[{name}]:{port}"
        uri = request.uri if request.uri.startswith(b"/") else b"/"
        request.setResponseCode(301 if request.method in (b"GET", b"HEAD") else 308)
        request.setHeader(b"location", b"https://" + authority.encode("ascii", "replace") + uri)
        return b"moved to https\n"

    def _https_port(self) -> int:
        bound = self.ports.get("https")
        configured = self.config().listen.https.port
        if configured == 0 and bound is not None:
            return int(bound.getHost().port)
        return configured
