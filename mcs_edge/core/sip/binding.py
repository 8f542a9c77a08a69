"""Which tenant a SIP/TLS connection that sent no SNI belongs to, decided by its first request.

Some native SIP stacks (baresip, several mobile SDKs) send no server name, so the TLS handshake
cannot pick the tenant. When ``tls.sip_no_sni_certificate`` allows it, the connection stays
unbound until its first complete SIP message, and that message decides:

==========================================  =================================================
first message                               binding
==========================================  =================================================
REGISTER (no To tag)                        the tenant owning the Request-URI's domain (the
                                            registrar domain, RFC 3261 s.10.2)
in-dialog request (To tag) with a Route     the tenant of the flow whose token is in our
whose user part is a flow token             Record-Route (a client that opens a new connection
                                            for ACK/BYE/re-INVITE, RFC 3261 s.12.2.1.1); when
                                            no live flow has that token (another worker owns
                                            it), the tenant of the From URI's domain
anything else (responses, other requests,   none: the connection is refused
garbage)
==========================================  =================================================

Sans-IO: bytes in, a :class:`ByDomain` / :class:`ByFlowToken` hint (or None) out; the adapter
looks the hint up in its tenant table or flows.
"""

from __future__ import annotations

from dataclasses import dataclass

from mcs_edge.errors import LocalProtocolError, RemoteProtocolError

from .headers import SipUri
from .message import Limits, Request, parse

__all__ = ["ByDomain", "ByFlowToken", "binding_of"]


@dataclass(frozen=True, slots=True)
class ByDomain:
    host: str


@dataclass(frozen=True, slots=True)
class ByFlowToken:
    token: str
    domain: str | None = None  # the From URI's host: the fallback when no live flow has the token


def binding_of(data: bytes, limits: Limits) -> ByDomain | ByFlowToken | None:
    """The binding hint of an unbound connection's first message (see the module docstring)."""
    try:
        msg = parse(data, limits=limits, require_max_forwards=False)
        if not isinstance(msg, Request):
            return None
        if msg.to.tag is None:
            ruri = msg.request_uri
            if msg.method == "REGISTER" and isinstance(ruri, SipUri):
                return ByDomain(ruri.host.lower())
            return None
        sender = msg.from_.uri
        domain = sender.host.lower() if isinstance(sender, SipUri) else None
        for route in msg.routes:
            uri = route.uri
            if isinstance(uri, SipUri) and uri.user:
                return ByFlowToken(uri.user, domain)
    except (RemoteProtocolError, LocalProtocolError, ValueError):
        return None
    return None
