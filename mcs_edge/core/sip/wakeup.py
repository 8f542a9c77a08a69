"""Push wake-up (RFC 8599): push bindings from REGISTER, INVITEs held while an app wakes.

In: a 2xx to a client's REGISTER carrying ``pn-provider``/``pn-prid``/``pn-param``, an initial
INVITE from a PBX for an app whose connection is gone (or silent for ``push.stale_after``), the
app's new REGISTER, the adapter's push outcome, expired waits. Out: push bindings
(:mod:`mcs_edge.core.push.bindings`), ``Feature-Caps`` on the 2xx, a
:class:`~mcs_edge.core.sip.destinations.Push` action, the held INVITE forwarded to the woken
app's new connection or refused.

=======================================  ==========================================================
situation                                decision
=======================================  ==========================================================
REGISTER with pn- params, push off for   nothing kept, nothing advertised
the tenant
pn-provider without ``+sip.instance``    counted, no binding (RFC 8599 s.4.1.1 needs the instance)
pn-provider the tenant does not use      ``Feature-Caps`` without PURR (RFC 8599 s.4.1.2), counted
granted expiry 0                         binding removed (RFC 3261 s.10.2.2)
otherwise                                binding created/refreshed, ``Feature-Caps: +sip.pns=...;
                                         +sip.pnsreg;+sip.pnspurr=...`` on the 2xx
initial INVITE for a bound app without   held (``push.wait``), 180 Ringing unless ``push.ring``
a live connection                        is 100 (RFC 8599 s.5.3.1), Push action
the app registers again                  held INVITEs forwarded to its new connection
push failed / wait expired               480 Temporarily Unavailable with Reason (RFC 8599 s.5.3.2)
CANCEL of a held INVITE                  200 to the CANCEL, 487 to the INVITE (cancel.py)
=======================================  ==========================================================
"""

from __future__ import annotations

from typing import Any

from mcs_edge.core.push.bindings import FAILED_REASON, PushKey, Waiting, feature_caps, push_params
from mcs_edge.errors import RemoteProtocolError

from .destinations import Push
from .flows import Flow
from .forwarding import Forwarding
from .headers import NameAddr, SipUri
from .message import Request, Response
from .routing import FLOW_PARAM, Addr
from .state import LOCAL_CLASS
from .transaction import ServerTransaction

__all__ = ["Wakeups"]


class Wakeups(Forwarding):
    """Push wake-up (see the module docstring)."""

    def _note_push(self, flow: Flow, register: Request, out: Response, now: float) -> None:
        """A 2xx to ``register``: create, refresh or remove its push binding (core/push/bindings.py)."""
        providers = self.push_providers(flow.tenant)
        if not providers:
            return  # push is off for this tenant: nothing advertised, nothing kept
        try:
            contacts = register.contacts
        except (RemoteProtocolError, ValueError):
            return
        for contact in contacts:
            if contact.is_star:
                continue
            params = push_params(contact.uri)
            if params is None:
                continue
            instance = (contact.param("+sip.instance") or "").strip('"<>').lower()
            if not instance:
                self.problem("push_register_without_instance", "PSH401", tenant=flow.tenant.id)
                return
            key = PushKey(flow.tenant.id, _aor(register.to.uri), instance)
            if params.provider not in providers:
                self.problem(
                    "push_provider_unsupported",
                    "PSH402",
                    tenant=flow.tenant.id,
                    provider=repr(params.provider[:16]),
                )
                out.headers.add("Feature-Caps", feature_caps(providers, None))
                return
            expires = _granted_expiry(out, register, contact, instance)
            if expires <= 0:
                if self.push_registry.remove(key) is not None:
                    self.count("push_bindings_removed")
                return
            known = key in self.push_registry.bindings
            binding = self.push_registry.register(
                key, params, flow.token, now + expires, self.random_bytes(8).hex()
            )
            if binding is None:
                self.problem("push_bindings_refused", "PSH403", tenant=flow.tenant.id)
                return
            self.count("push_bindings_refreshed" if known else "push_bindings_registered")
            out.headers.add("Feature-Caps", feature_caps(providers, binding.purr))
            return

    def _push_binding_of(self, req: Request) -> Any:
        """The push binding an INVITE from the PBX targets: by our flow token, else by pn-purr."""
        registry = self.push_registry
        for route in req.routes:
            uri = route.uri
            if not self.routing.is_ours(uri):
                break
            if isinstance(uri, SipUri) and uri.user:
                return registry.by_token(uri.user)
        ruri = req.request_uri
        if isinstance(ruri, SipUri):
            purr = ruri.param("pn-purr")
            if purr:
                return registry.by_purr(purr)
            if self.routing.is_ours(ruri):
                key = ruri.param(FLOW_PARAM) or ""
                token = key.split(".", 1)[0] if key else (ruri.user or "")
                if token:
                    return registry.by_token(token)
        return None

    def _hold_for_push(
        self,
        tx: ServerTransaction,
        req: Request,
        fwd: Request,
        flow: Flow | None,
        tenants: list[Any],
        transport: str,
        src: Addr,
        now: float,
    ) -> bool:
        """An initial INVITE for an app whose connection is gone (or stale): hold it and push."""
        if req.method != "INVITE" or req.to.tag is not None or self.draining:
            return False
        stale = self.settings.push_stale
        if flow is not None and not (stale > 0 and now - flow.last_seen > stale):
            return False
        binding = self._push_binding_of(req)
        if binding is None or binding.key.tenant_id not in {t.id for t in tenants}:
            return False
        key = binding.key
        waiting = self.wakes.hold(
            key, binding.params.provider, now + self.settings.push_wait, now, (tx, req, fwd, transport, src)
        )
        self.count("push_calls_held")
        if self.settings.push_ring == 180:
            self._respond(tx, req, 180, "Ringing", now)
        caller = req.headers.get("from") or ""
        self._actions.append(
            Push(
                waiting.wake_id,
                key.tenant_id,
                binding.params.provider,
                binding.params.prid,
                binding.params.param,
                req.call_id,
                caller[:256],
                key,
            )
        )
        return True

    def _release_woken(self, flow_id: int, now: float) -> None:
        """The app registered again on ``flow_id``: its held INVITEs go there."""
        flow = self.flows.get(flow_id)
        bkey = self.flow_registry.binding_of(flow_id)
        if flow is None or bkey is None or not self.wakes.waiting:
            return
        key = PushKey(bkey.tenant_id, bkey.aor, bkey.instance)
        for waiting in self.wakes.of_key(key):
            self.wakes.release(waiting.wake_id)
            tx, req, fwd, transport, src = waiting.context
            self.wake_latency.observe(now - waiting.pushed_at)
            self.count("push_calls_delivered")
            self._forward_to_flow(tx, req, fwd, flow, transport, src, now)

    def _push_outcome(self, push: Push, outcome: str, now: float) -> None:
        """The adapter's report for ``push``: "sent", "bad_token", "rate_limited" or "error"."""
        waiting = self.wakes.waiting.get(push.wake_id)
        if outcome == "bad_token":
            binding = self.push_registry.bindings.get(push.key)
            if binding is not None and binding.params.prid == push.prid:  # not re-registered with a new token
                self.push_registry.remove(push.key)
                self.count("push_bindings_dropped_bad_token")
        if outcome != "sent" and waiting is not None:
            self.wakes.release(waiting.wake_id)
            self.problem("push_calls_lost_push_failed", "PSH404", tenant=push.tenant_id, outcome=outcome)
            self._fail_waiting(waiting, FAILED_REASON, now)

    def _fail_waiting(self, waiting: Waiting, reason: str, now: float) -> None:
        tx, req = waiting.context[0], waiting.context[1]
        resp = Response.for_request(req, 480, "Temporarily Unavailable", to_tag=self._new_tag())
        resp.headers.add("Server", self.settings.server_name)
        resp.headers.add("Reason", reason)
        self.count(LOCAL_CLASS[4])
        self.layer.send_response(tx, resp, now)


def _aor(uri: Any) -> str:
    if isinstance(uri, SipUri):
        user = f"{uri.user}@" if uri.user else ""
        return f"sip:{user}{uri.host.lower()}"
    return str(uri).lower()


def _granted_expiry(out: Response, register: Request, contact: NameAddr, instance: str) -> int:
    """Seconds the registrar granted the push Contact: its 2xx Contact's expires, the 2xx's Expires,
    the request's (RFC 3261 s.10.2.1.1); 3600 when nobody said."""
    candidates: list[str | None] = []
    try:
        for c in out.contacts:
            if not c.is_star and (c.param("+sip.instance") or "").strip('"<>').lower() == instance:
                candidates.append(c.param("expires"))
    except (RemoteProtocolError, ValueError):
        pass
    candidates += [out.headers.get("expires"), contact.param("expires"), register.headers.get("expires")]
    for value in candidates:
        if value is not None and value.strip().isdigit():
            return int(value.strip())
    return 3600
