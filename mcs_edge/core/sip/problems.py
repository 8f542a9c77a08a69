"""Problems the proxy core reports: values the adapter logs under their own stable code.

In: a refusal or a drop decided anywhere in the proxy core. Out: a :class:`Problem` -- a stable log
code registered in :mod:`mcs_edge.logevents` and the fields its format string names -- appended to
``SipProxy.problems``; the adapter (tx/sip/router.py) logs each under its code, rate-limited per
code. Each problem is also counted under its counter name (``SipProxy.counters``, exported as
metrics), whether or not its line is logged.

========  ==================================  ===================================================
code      counter                             the core refused or dropped
========  ==================================  ===================================================
SIP440    sip_bad_from_client                 a client's message that does not parse or cannot
                                              be processed (answered 400 or its parse status)
SIP441    sip_bad_from_backend                the same from a PBX
SIP442    sip_unknown_backend                 SIP from an address that is no tenant's PBX
SIP443    sip_foreign_domain                  an initial request for a domain of another tenant
SIP444    sip_foreign_flow                    a request routed to another tenant's connection
SIP445    sip_dialog_foreign_flow             an in-dialog request for a call in grace, from a
                                              connection of another client instance
SIP446    sip_flow_token_refused              an in-dialog request with a dead connection's token
SIP447    sip_backend_unreachable             requests a PBX transport could not carry (503)
SIP448    sip_answer_refused_early            an 18x whose SDP the media relay cannot use
SIP449    sip_answer_refused_after_2xx        a 2xx whose SDP the media relay cannot use
PSH401    push_register_without_instance      pn-provider without +sip.instance (RFC 8599 s.4.1.1)
PSH402    push_provider_unsupported           a pn-provider the tenant does not use
PSH403    push_bindings_refused               a push binding over the table's bound
PSH404    push_calls_lost_push_failed         a held INVITE whose push failed
PSH405    push_calls_lost_timeout             a held INVITE whose app did not wake up in time
========  ==================================  ===================================================
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["FIELDS", "Problem"]


class Problem(NamedTuple):
    """One reported problem: its log code and the fields of that code's format string."""

    code: str
    fields: dict[str, object]


#: code -> the fields the core gives it (the names in its format string in mcs_edge.logevents).
FIELDS: dict[str, frozenset[str]] = {
    "SIP440": frozenset({"tenant", "error"}),
    "SIP441": frozenset({"tenant", "source", "error"}),
    "SIP442": frozenset({"source"}),
    "SIP443": frozenset({"tenant", "domain"}),
    "SIP444": frozenset({"tenant", "other"}),
    "SIP445": frozenset({"tenant"}),
    "SIP446": frozenset({"tenant"}),
    "SIP447": frozenset({"tenant", "count", "reason"}),
    "SIP448": frozenset({"tenant", "call_id"}),
    "SIP449": frozenset({"tenant", "call_id"}),
    "PSH401": frozenset({"tenant"}),
    "PSH402": frozenset({"tenant", "provider"}),
    "PSH403": frozenset({"tenant"}),
    "PSH404": frozenset({"tenant", "outcome"}),
    "PSH405": frozenset({"tenant", "aor"}),
}
