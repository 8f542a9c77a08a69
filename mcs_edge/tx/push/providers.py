"""Push providers: APNs (HTTP/2, token auth, VoIP pushes) and FCM HTTP v1 (OAuth 2 service account).

The proxy core asks for a push with a :class:`~mcs_edge.core.sip.proxy.Push` action; this adapter sends
it with httpx over HTTP/2 (the ``h2`` package) and reports one outcome back (``push_result``):

=====================================================  ==============  =====================================
provider answer                                        outcome         effect in the core
=====================================================  ==============  =====================================
APNs 200 / FCM 200                                     ``sent``        the call waits for the app's REGISTER
APNs 410, 400 BadDeviceToken/DeviceTokenNotForTopic,   ``bad_token``   binding dropped, 480 to the PBX
FCM 404 or UNREGISTERED                                                 at once
429 (either), APNs TooManyProviderTokenUpdates         ``rate_limited`` 480; this tenant's provider is backed
                                                                        off (Retry-After, else 30 s): pushes
                                                                        in that time fail at once, counted
anything else (5xx, 403, a network error, a timeout)   ``error``       480 with a Reason
=====================================================  ==============  =====================================

Credentials. APNs: a JWT signed ES256 with the team's .p8 key (``kid`` = key id, ``iss`` = team id,
``iat``), re-signed every 40 minutes (Apple accepts 20-60) and at once after 403
ExpiredProviderToken. FCM: an OAuth 2 access token from the service account's token endpoint by the
JWT bearer grant (RFC 7523: RS256 assertion, scope firebase.messaging), cached until a minute before
it expires. Key material is read once when the tenant's sender is built and never logged.

Reactor. httpx runs on asyncio: the edge must run on Twisted's asyncio reactor (``--reactor=asyncio``
or the production ``--reactor=uvloop``). :func:`require_asyncio_reactor` refuses a start with push
configured on another reactor (a clear start-up error instead of a push that never goes out).
Coroutines are bridged with ``Deferred.fromFuture``; nothing blocks the reactor.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable
from typing import Any

import httpx
import jwt
from twisted.internet.defer import Deferred

from mcs_edge.config import ApnsConfig, EdgeConfig, FcmConfig, TenantConfig
from mcs_edge.core.sip.proxy import Push
from mcs_edge.errors import StartupError
from mcs_edge.tx.timers import wall_clock

__all__ = ["PushSender", "require_asyncio_reactor"]

APNS_JWT_LIFETIME = 40 * 60.0
FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
BACKOFF_DEFAULT = 30.0
TIMEOUT = 10.0
_APNS_BAD_TOKEN = frozenset({"BadDeviceToken", "Unregistered", "DeviceTokenNotForTopic"})


def require_asyncio_reactor(config: EdgeConfig, reactor: Any) -> None:
    """Push needs the asyncio reactor (httpx): refuse a start with push on another one."""
    if not any(t.push.providers() for t in config.tenants):
        return
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    if not isinstance(reactor, AsyncioSelectorReactor):
        raise StartupError(
            "tenants.push",
            type(reactor).__name__,
            "push notifications need the asyncio reactor: run with --reactor=uvloop or --reactor=asyncio",
        )


def _client(ca_file: str | None) -> httpx.AsyncClient:
    verify: Any = ssl.create_default_context(cafile=ca_file) if ca_file else True
    return httpx.AsyncClient(http2=True, verify=verify, timeout=TIMEOUT)


def _retry_after(resp: httpx.Response) -> float:
    value = resp.headers.get("retry-after", "")
    return float(value) if value.isdigit() else BACKOFF_DEFAULT


class _Apns:
    def __init__(self, cfg: ApnsConfig, resolve: Callable[[str], str]) -> None:
        self.cfg = cfg
        with open(resolve(cfg.key_file), encoding="ascii") as fh:
            self._key = fh.read()
        self._client = _client(resolve(cfg.ca_file) if cfg.ca_file else None)
        self._token = ""
        self._token_at = -1e18

    def _bearer(self, now: float) -> str:
        if now - self._token_at > APNS_JWT_LIFETIME:
            self._token = jwt.encode(
                {"iss": self.cfg.team_id, "iat": int(now)},
                self._key,
                algorithm="ES256",
                headers={"kid": self.cfg.key_id},
            )
            self._token_at = now
        return self._token

    async def send(self, push: Push) -> tuple[str, float]:
        url = f"{self.cfg.endpoint.rstrip('/')}/3/device/{push.prid}"
        payload = {"aps": {}, "call-id": push.call_id, "caller": push.caller, "pn-provider": "apns"}
        headers = {
            "authorization": f"bearer {self._bearer(wall_clock())}",
            "apns-topic": self.cfg.topic,
            "apns-push-type": "voip",
            "apns-priority": "10",
            "apns-expiration": "0",
        }
        resp = await self._client.post(url, content=json.dumps(payload).encode(), headers=headers)
        if resp.status_code == 200:
            return "sent", 0.0
        try:
            reason = str(resp.json().get("reason", ""))
        except ValueError:
            reason = ""
        if resp.status_code == 410 or reason in _APNS_BAD_TOKEN:
            return "bad_token", 0.0
        if resp.status_code == 429:
            return "rate_limited", _retry_after(resp)
        if reason == "ExpiredProviderToken":
            self._token_at = -1e18
        return "error", 0.0

    async def close(self) -> None:
        await self._client.aclose()


class _Fcm:
    def __init__(self, cfg: FcmConfig, resolve: Callable[[str], str]) -> None:
        self.cfg = cfg
        with open(resolve(cfg.service_account_file), encoding="utf-8") as fh:
            account = json.load(fh)
        self._email = str(account["client_email"])
        self._key = str(account["private_key"])
        self._project = str(account["project_id"])
        self._token_uri = cfg.oauth_url or str(
            account.get("token_uri") or "https://oauth2.googleapis.com/token"
        )
        self._client = _client(resolve(cfg.ca_file) if cfg.ca_file else None)
        self._access = ""
        self._access_until = 0.0

    async def _bearer(self) -> str:
        now = wall_clock()
        if now < self._access_until:
            return self._access
        assertion = jwt.encode(
            {
                "iss": self._email,
                "scope": FCM_SCOPE,
                "aud": self._token_uri,
                "iat": int(now),
                "exp": int(now) + 3600,
            },
            self._key,
            algorithm="RS256",
        )
        resp = await self._client.post(
            self._token_uri,
            data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion},
        )
        resp.raise_for_status()
        body = resp.json()
        self._access = str(body["access_token"])
        self._access_until = now + float(body.get("expires_in", 3600)) - 60
        return self._access

    async def send(self, push: Push) -> tuple[str, float]:
        url = f"{self.cfg.endpoint.rstrip('/')}/v1/projects/{self._project}/messages:send"
        message = {
            "message": {
                "token": push.prid,
                "android": {"priority": "high", "ttl": "0s"},
                "data": {"call-id": push.call_id, "caller": push.caller, "pn-provider": "fcm"},
            }
        }
        resp = await self._client.post(
            url, json=message, headers={"authorization": f"Bearer {await self._bearer()}"}
        )
        if resp.status_code == 200:
            return "sent", 0.0
        text = resp.text
        if resp.status_code == 404 or "UNREGISTERED" in text:
            return "bad_token", 0.0
        if resp.status_code == 429:
            return "rate_limited", _retry_after(resp)
        if resp.status_code == 401:
            self._access_until = 0.0
        return "error", 0.0

    async def close(self) -> None:
        await self._client.aclose()


class PushSender:
    """Sends the core's Push actions through each tenant's providers; reports with ``report``."""

    def __init__(
        self,
        config: EdgeConfig,
        tenant: Callable[[str], TenantConfig | None],
        report: Callable[[Push, str], None],
        now: Callable[[], float],
    ) -> None:
        self._config = config
        self._tenant = tenant
        self._report = report
        self._now = now
        self._senders: dict[tuple[str, str], Any] = {}
        self._backoff: dict[tuple[str, str], float] = {}
        #: (provider, result) -> pushes, for mcs_edge_pushes_total
        self.results: dict[tuple[str, str], int] = {}
        #: problems for the router's rate-limited log (stable code PSH400)
        self.problems: list[str] = []

    def providers(self, tenant: Any) -> frozenset[str]:
        current = self._tenant(tenant.id)
        return current.push.providers() if current is not None else frozenset()

    def start(self, reactor: Any) -> None:
        """At start-up: the reactor can run httpx, and every configured credential file is readable
        and well-formed (a StartupError or an OSError naming the file otherwise)."""
        require_asyncio_reactor(self._config, reactor)
        for tenant in self._config.tenants:
            for provider in sorted(tenant.push.providers()):
                try:
                    self._sender(tenant.id, provider)
                except (KeyError, ValueError) as exc:
                    key = f"tenants.push.{provider}"
                    raise StartupError(
                        key, tenant.id, f"credential file unusable ({type(exc).__name__})"
                    ) from None

    def update(self, config: EdgeConfig) -> None:
        """A reloaded configuration: senders are rebuilt on their next use."""
        self._config = config
        old, self._senders = self._senders, {}
        for sender in old.values():
            _ensure_future(sender.close())  # its HTTP/2 connections end; new credentials on next use

    def _sender(self, tenant_id: str, provider: str) -> Any:
        key = (tenant_id, provider)
        sender = self._senders.get(key)
        if sender is None:
            tenant = self._tenant(tenant_id)
            section = getattr(tenant.push, provider, None) if tenant is not None else None
            if section is None:
                return None
            cls = _Apns if provider == "apns" else _Fcm
            sender = self._senders[key] = cls(section, self._config.resolve)
        return sender

    def send(self, push: Push) -> Deferred[None]:
        key = (push.tenant_id, push.provider)
        if self._backoff.get(key, 0.0) > self._now():
            return self._done(push, "rate_limited")
        try:
            sender = self._sender(push.tenant_id, push.provider)
        except (OSError, ValueError, KeyError) as exc:
            self.problems.append(
                f"{push.tenant_id}: {push.provider} credentials unusable ({type(exc).__name__})"
            )
            return self._done(push, "error")
        if sender is None:
            return self._done(push, "error")
        d: Deferred[tuple[str, float]] = Deferred.fromFuture(_ensure_future(sender.send(push)))

        def done(result: tuple[str, float]) -> None:
            outcome, backoff = result
            if outcome == "rate_limited":
                self._backoff[key] = self._now() + backoff
            self._finish(push, outcome)

        def failed(failure: Any) -> None:
            self.problems.append(f"{push.tenant_id}: {push.provider} push failed ({failure.type.__name__})")
            self._finish(push, "error")

        d.addCallbacks(done, failed)
        return d  # type: ignore[return-value]

    def _done(self, push: Push, outcome: str) -> Deferred[None]:
        self._finish(push, outcome)
        return Deferred.fromFuture(_ensure_future(_nothing()))

    def _finish(self, push: Push, outcome: str) -> None:
        key = (push.provider, outcome)
        self.results[key] = self.results.get(key, 0) + 1
        self._report(push, outcome)

    def stop(self) -> None:
        """The edge stops: the providers' HTTP/2 connections end (nothing to do without push)."""
        old, self._senders = self._senders, {}
        for sender in old.values():
            _ensure_future(sender.close())


async def _nothing() -> None:
    return None


def _ensure_future(coro: Any) -> Any:
    import asyncio

    return asyncio.ensure_future(coro)
