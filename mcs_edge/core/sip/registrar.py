"""Client flows and REGISTER: flow tokens, Path or Contact aliases, bindings to client instances.

In: client connections opening (a tenant, a transport, a peer), a client's REGISTER on its way to
the PBX and the PBX's answer on its way back. Out: :class:`Flow` records with their token, the
REGISTER edited so the PBX reaches the client through this edge, the answer's Contacts restored,
and the connection bound to its client instance (an earlier connection of the same instance is
replaced: its calls move over, it is closed).

=====================================  ============================================================
step                                   rule
=====================================  ============================================================
a connection opens                     a flow with a fresh random token (RFC 5626 s.5.2 flow token)
REGISTER to a PBX with Path support    ``Path: <sip:token@backend;lr;ob>`` first, ``Supported:
(``tenant.path``)                      path`` added (RFC 3327 s.5, RFC 5626 s.6); the PBX routes
                                       requests for the client through the Path
REGISTER to a PBX without Path         each Contact rewritten to an alias at the edge
                                       (``;mcsf=token.n``), mapped back on the way in
2xx to REGISTER                        the flow is registered (its AOR noted); aliased Contacts are
                                       restored to the client's own (RFC 3261 s.10.3 step 8)
2xx with ``+sip.instance``/``reg-id``  the connection is bound to the instance (RFC 5626 s.4.2);
                                       a new connection of the same binding replaces the old one
                                       (its tokens lead to the new one, its calls move over)
2xx to a REGISTER with expires=0       the binding of this connection is removed
=====================================  ============================================================
"""

from __future__ import annotations

from typing import Any

from mcs_edge.errors import RemoteProtocolError

from .calls import address_of_record
from .destinations import CloseFlow
from .dialogs import Dialogs
from .flows import BindingKey, Flow, binding_key
from .headers import SipUri
from .message import Request, Response
from .routing import FLOW_PARAM, Addr, hostport, replace_uri

__all__ = ["Flow", "Registrar"]


class Registrar(Dialogs):
    """Client flows and REGISTER (see the module docstring)."""

    def open_flow(self, tenant: Any, transport: str, peer: Addr, now: float) -> Flow:
        flow_id = self._next_flow
        self._next_flow += 1
        token = self.random_bytes(12).hex()
        flow = Flow(flow_id, token, tenant, transport, peer, last_seen=now)
        self._tenant_objects[tenant.id] = tenant
        self.flows[flow_id] = flow
        self._tokens[token] = flow_id
        return flow

    def tenant_of_token(self, token: str) -> Any:
        """The tenant of the live flow with ``token`` (binding a connection without SNI), or None."""
        _found, flow = self._flow_by_token(token)
        return flow.tenant if flow is not None else None

    def adopt_binding(self, key: BindingKey, tokens: list[str], aliases: dict[str, str], now: float) -> None:
        """A flow binding taken over from the node that died (core/cluster, docs/ha.md)."""
        self.flow_registry.adopt_binding(key, tokens, aliases, now)
        for token in tokens:
            self._dead_tokens[token] = None

    def _register_outbound(self, flow: Flow, fwd: Request) -> None:
        s = self.settings
        transport = self._backend_of(flow.tenant)[0]
        tp = "" if transport == "udp" else f";transport={transport}"  # the PBX reaches us the same way
        if flow.tenant.path:
            fwd.headers.insert_first(
                "Path", f"<sip:{flow.token}@{hostport(s.backend_host, s.backend_port)}{tp};lr;ob>"
            )
            supported = fwd.headers.get("supported") or ""
            if "path" not in [x.strip().lower() for x in supported.split(",")]:
                fwd.headers.set("Supported", f"{supported}, path" if supported else "path")
            return
        # No Path support: rewrite every Contact to an alias at the edge that maps back to the flow.
        contacts = fwd.contacts
        if not contacts or any(c.is_star for c in contacts):
            return
        out = []
        for c in contacts:
            uri = c.uri
            user = uri.user if isinstance(uri, SipUri) and uri.user else "u"
            key = (
                f"{flow.token}.{len(flow.aliases)}"
                if str(uri) not in flow.aliases.values()
                else next(k for k, v in flow.aliases.items() if v == str(uri))
            )
            flow.aliases[key] = str(uri)
            alias = f"sip:{user}@{hostport(s.backend_host, s.backend_port)}{tp};{FLOW_PARAM}={key}"
            out.append(replace_uri(c, alias))
        fwd.headers.set("Contact", ", ".join(out))

    def _register_inbound(self, flow: Flow, resp: Response, status: int) -> None:
        if status >= 200:
            flow.registered = True
            try:
                flow.aor = address_of_record(resp.to.uri)
            except RemoteProtocolError:
                flow.aor = ""
        if flow.tenant.path or not flow.aliases:
            return
        contacts = resp.headers.get_all("contact")
        if not contacts:
            return
        restored = []
        for value in resp.contacts:
            uri = value.uri
            key = uri.param(FLOW_PARAM) if isinstance(uri, SipUri) else None
            original = flow.aliases.get(key or "")
            restored.append(replace_uri(value, original) if original else str(value))
        resp.headers.set("Contact", ", ".join(restored))

    def _bind_instance(self, flow: Flow, register: Request, now: float) -> None:
        """A 2xx to ``register``: bind ``flow`` to the client's instance; replace an earlier connection."""
        try:
            key, unregister = binding_key(flow.tenant.id, register.to, register.contacts)
        except (RemoteProtocolError, ValueError):
            return
        registry = self.flow_registry
        if key is None:
            return
        if unregister:
            if registry.binding_of(flow.id) == key:
                registry.unbind(flow.id)
            return
        previous = registry.bindings.get(key)
        previous_flow = previous.flow_id if previous is not None else None
        lost_flows = list(previous.lost_flows) if previous is not None else []
        replaced = registry.bind(key, flow.id, flow.token, flow.aliases, now)
        if replaced is None:
            return
        for k, v in replaced.aliases.items():
            flow.aliases.setdefault(k, v)  # Contact aliases the PBX may still use
        self.count("flows_replaced")
        if previous_flow is not None and previous_flow != flow.id and previous_flow in self.flows:
            old = self.flows[previous_flow]
            self._tokens.pop(old.token, None)
            for call in self.calls.of_flow(previous_flow):
                self._recover(call, flow, now)
            self._actions.append(
                CloseFlow(previous_flow, "replaced by a new connection of the same instance")
            )
        for lost_id in lost_flows:
            for call in self.calls.of_flow(lost_id):
                self._recover(call, flow, now)
