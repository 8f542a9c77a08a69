"""Takeover: the standby's replica becomes live state when it is promoted (docs/ha.md).

Theory of operation
-------------------
Order matters; each step uses the one before:

1. flow bindings (RFC 5626) -> :meth:`ProxyCore.adopt_binding`: the tokens in the PBX's Record-Route
   and Path headers resolve to them; no connection yet (every client must reconnect);
2. calls -> :meth:`ProxyCore.adopt_call`: each answered call is put *in grace* on a lost flow of its
   binding (found by its flow token), exactly as if its client's connection had just closed on this
   node: the PBX's in-dialog requests get the in-grace answers, the client's REGISTER from a new
   connection moves the call to it, a BYE from either side ends it, no client within
   ``sip.flow_grace`` ends it with a BYE to the PBX;
3. media -> :meth:`MediaAnchor.adopt`: the session is rebuilt on the same relay ports with the same
   local ICE credentials and SRTP keys, and parked until the grace deadline.

A record that fails (unknown tenant, secrets that do not open, ports taken, SDP that does not
replay) is skipped and reported in :attr:`TakeOver.refused`; the others go on.

Sans-IO: ``now`` is an argument; the box opens secrets without I/O.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mcs_edge.core.media.sdp import SessionDescription
from mcs_edge.core.sip.calls import Dialog
from mcs_edge.core.sip.flows import BindingKey
from mcs_edge.errors import EdgeError

from .records import SealsSecrets, open_secrets

__all__ = ["TakeOver", "take_over"]


@dataclass(slots=True)
class TakeOver:
    calls: int = 0
    bindings: int = 0
    media: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)  # (key, why)


def take_over(
    records: Mapping[str, Mapping[str, Any]],
    box: SealsSecrets,
    proxy: Any,
    anchor: Any,
    tenants: Any,
    now: float,
) -> TakeOver:
    """Adopt every record (see the module docstring); ``tenants`` has ``by_id``."""
    out = TakeOver()
    for key, record in records.items():
        if record.get("kind") != "binding":
            continue
        try:
            bkey = BindingKey(
                str(record["tenant"]), str(record["aor"]), str(record["instance"]), str(record["reg_id"])
            )
            if tenants.by_id(bkey.tenant_id) is None:
                raise ValueError(f"unknown tenant {bkey.tenant_id!r}")
            proxy.adopt_binding(bkey, [str(t) for t in record["tokens"]], dict(record["aliases"]), now)
            out.bindings += 1
        except (KeyError, TypeError, ValueError) as exc:
            out.refused.append((key, str(exc)))
    for key, record in records.items():
        if record.get("kind") != "call":
            continue
        try:
            _adopt_call(key, record, box, proxy, anchor, tenants, now, out)
        except (KeyError, TypeError, ValueError, EdgeError) as exc:
            out.refused.append((key, f"{type(exc).__name__}: {exc}"))
    return out


def _adopt_call(
    key: str,
    record: Mapping[str, Any],
    box: SealsSecrets,
    proxy: Any,
    anchor: Any,
    tenants: Any,
    now: float,
    out: TakeOver,
) -> None:
    call_id = str(record["call_id"])
    if call_id in proxy.calls.calls:
        raise ValueError("already a call here")
    tenant = tenants.by_id(str(record["tenant"]))
    if tenant is None:
        raise ValueError(f"unknown tenant {record['tenant']!r}")
    d = record["dialog"]
    if not d:
        raise ValueError("no dialog")
    opened = open_secrets(record, box, key)  # before anything changes: a bad key changes nothing
    media = opened.get("media")
    sdps: tuple[SessionDescription, SessionDescription] | None = None
    if media and all(media.get("sdp") or [None]):
        sdps = (SessionDescription.parse(media["sdp"][0]), SessionDescription.parse(media["sdp"][1]))
    dialog = Dialog(str(d["local"]), str(d["remote"]), str(d["target"]), tuple(d["routes"]), int(d["cseq"]))
    token = record.get("token")
    bkey = proxy.flow_registry.key_of_token(token) if token else None
    flow_id, deadline = proxy.adopt_call(
        call_id, tenant, bool(record["from_client"]), now, dialog, bkey, token, now
    )
    out.calls += 1
    if media is None or sdps is None:
        return
    ports = [(int(leg["port"]), leg["rtcp_port"]) for leg in media["legs"]]
    srtp = {
        i: (
            str(leg["srtp"]["profile"]),
            base64.b64decode(leg["srtp"]["local"]),
            base64.b64decode(leg["srtp"]["remote"]),
        )
        for i, leg in enumerate(media["legs"])
        if leg.get("srtp")
    }
    ice = [(str(u), str(p)) for u, p in media["ice_local"]]
    try:
        anchor.adopt(
            call_id, tenant.id, flow_id, bool(record["from_client"]), sdps, ports, ice, srtp, deadline, now
        )
    except EdgeError as exc:
        raise ValueError(f"media not taken over ({exc}); the call goes on without it") from None
    out.media += 1
