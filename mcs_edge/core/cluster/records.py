"""Records of the state a standby node needs: calls (dialog + media session) and flow bindings.

Theory of operation
-------------------
As rtpengine does (``daemon/redis.c``, ``redis_update_onekey``), every call is one self-contained
JSON document under one key; a flow binding (RFC 5626, :mod:`mcs_edge.core.sip.flows`) is another.
docs/ha.md lists what is in them and why. This module only *builds* and *reads* those documents:

==============================  ====================================================================
function                        what
==============================  ====================================================================
:func:`call_record`             Call (+ dialog, flow token) and its MediaSession -> dict
:func:`binding_record`          Binding -> dict
:func:`encode` / :func:`decode` dict <-> bytes (compact JSON, sorted keys: equal state, equal bytes)
:func:`open_secrets`            a decoded call record with its sealed fields opened
==============================  ====================================================================

Secrets (ICE passwords, SRTP master keys) never enter a record in clear: they go through the
:class:`~mcs_edge.core.cluster.secrets.SecretBox` given, with the record's Redis key as associated
data. The rest (Call-ID, tags, addresses, ports) is what an operator needs to see anyway.

SRTP index (ROC << 16 | sequence) of each leg's *sent* stream is approximated by the packets sent
(``tx_packets``); the standby adds :data:`SAFE_JUMP` at takeover (docs/ha.md, *Safe jump*).

Sans-IO: no clock (``now`` is passed), no randomness (the box's nonce source is injected).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from typing import Any, Final, Protocol

__all__ = [
    "RECORD_VERSION",
    "SAFE_JUMP",
    "SealsSecrets",
    "binding_record",
    "call_record",
    "decode",
    "encode",
    "key_for_binding",
    "key_for_call",
    "open_secrets",
    "snapshot",
]

RECORD_VERSION: Final = 1
#: Packets added to the last replicated SRTP index of a sent stream at takeover (docs/ha.md):
#: 50 packets/s x (0.1 s write interval + ~4 s takeover) x 2, rounded up to 2^10; below 2^15, so
#: a receiver's index estimate (RFC 3711 s.3.3.1) is never ambiguous.
SAFE_JUMP: Final = 1024


class SealsSecrets(Protocol):
    def seal(self, plaintext: bytes, aad: bytes) -> dict[str, str]: ...

    def open(self, sealed: Mapping[str, Any], aad: bytes) -> bytes: ...


def key_for_call(prefix: str, call_id: str) -> str:
    return f"{prefix}call:{call_id}"


def key_for_binding(prefix: str, key: Any) -> str:
    """Redis key of a :class:`~mcs_edge.core.sip.flows.BindingKey` (hashed: AORs and instance URNs
    have characters a key pattern would treat as glob syntax)."""
    raw = "\x00".join((key.tenant_id, key.aor, key.instance, key.reg_id)).encode()
    return f"{prefix}binding:{hashlib.sha256(raw).hexdigest()[:32]}"


def encode(record: Mapping[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":"), sort_keys=True).encode()


def decode(data: bytes | str) -> dict[str, Any]:
    """The record in ``data``; ValueError when it is not one this version reads."""
    try:
        record = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(record, dict) or record.get("v") != RECORD_VERSION:
        raise ValueError("not a record of this version")
    return record


def _addr(addr: Any) -> list[Any] | None:
    return [str(addr[0]), int(addr[1])] if addr else None


def _leg(leg: Any, box: SealsSecrets, aad: bytes) -> dict[str, Any]:
    out: dict[str, Any] = {
        "side": leg.side.name,
        "index": leg.index,
        "profile": leg.profile.name,
        "port": leg.port,
        "rtcp_port": leg.rtcp_port,
        "remote": _addr(leg.remote),
        "remote_rtcp": _addr(leg.remote_rtcp),
        "tx_packets": leg.tx_packets,
        "rx_packets": leg.counters.packets,
    }
    ice = leg.ice
    if ice is not None:
        out["ice"] = {
            "local_ufrag": ice.local_ufrag,
            "local_pwd": box.seal(ice.local_pwd.encode(), aad),
            "remote_ufrag": ice.remote_ufrag,
            "remote_pwd": box.seal(ice.remote_pwd.encode(), aad) if ice.remote_pwd else None,
        }
    srtp = leg.srtp
    if srtp is not None:
        out["srtp"] = {
            "profile": srtp.profile.name,
            "local": box.seal(srtp.local_key, aad),
            "remote": box.seal(srtp.remote_key, aad),
            # highest index sent so far (approximation; SAFE_JUMP covers the rest)
            "tx_index": leg.tx_packets,
        }
    return out


def call_record(
    call: Any, session: Any, token: str | None, box: SealsSecrets, key: str, node: str, now: float
) -> dict[str, Any]:
    """The record of ``call`` (:class:`~mcs_edge.core.sip.calls.Call`), its client flow ``token`` and
    media ``session`` (:class:`~mcs_edge.core.media.session.MediaSession` or None). ``written`` is
    ``now``: the standby measures its lag from it."""
    aad = key.encode()
    dialog = call.dialog
    record: dict[str, Any] = {
        "v": RECORD_VERSION,
        "kind": "call",
        "node": node,
        "written": round(now, 3),
        "call_id": call.call_id,
        "tenant": call.tenant_id,
        "flow_id": call.flow_id,
        "token": token,
        "from_client": call.from_client,
        "started": call.started,
        "answered": call.answered,
        "state": call.state,
        "dialog": None
        if dialog is None
        else {
            "local": dialog.local,
            "remote": dialog.remote,
            "target": dialog.target,
            "routes": list(dialog.routes),
            "cseq": dialog.cseq,
        },
        "media": None,
    }
    if session is not None and session.ended is None:
        record["media"] = {
            "profiles": [p.name if p is not None else None for p in session.profiles],
            "ice_local": [[u, box.seal(p.encode(), aad)] for u, p in session.ice_credentials],
            "legs": [_leg(leg, box, aad) for leg in session.legs],
            # the last SDP of each side (sealed: ice-pwd and a=crypto keys are in them); a takeover
            # replays them to rebuild the legs (core/media/anchor.py ``adopt``)
            "sdp": [
                box.seal(str(sdp).encode(), aad) if sdp is not None else None for sdp in session.remote_sdp
            ],
            "established": session.established,
        }
    return record


def binding_record(binding: Any, node: str, now: float) -> dict[str, Any]:
    """The record of a :class:`~mcs_edge.core.sip.flows.Binding` (tokens are not secrets: they are
    in every Record-Route the PBX holds)."""
    k = binding.key
    return {
        "v": RECORD_VERSION,
        "kind": "binding",
        "node": node,
        "written": round(now, 3),
        "tenant": k.tenant_id,
        "aor": k.aor,
        "instance": k.instance,
        "reg_id": k.reg_id,
        "flow_id": binding.flow_id,
        "tokens": list(binding.tokens),
        "aliases": dict(binding.aliases),
    }


def _open(value: Any, box: SealsSecrets, aad: bytes) -> Any:
    if isinstance(value, dict) and "c" in value and "n" in value:
        return box.open(value, aad)
    return value


def open_secrets(record: Mapping[str, Any], box: SealsSecrets, key: str) -> dict[str, Any]:
    """A copy of a call record with every sealed value opened (base64 text for SRTP keys, text for ICE
    passwords). Raises ValueError when a value does not open (wrong key, or moved to another key)."""
    aad = key.encode()
    out: dict[str, Any] = json.loads(json.dumps(record))
    media = out.get("media")
    if not media:
        return out
    media["ice_local"] = [[u, _open(p, box, aad).decode()] for u, p in media["ice_local"]]
    media["sdp"] = [_open(x, box, aad).decode() if x else None for x in media.get("sdp", [None, None])]
    for leg in media["legs"]:
        ice = leg.get("ice")
        if ice:
            ice["local_pwd"] = _open(ice["local_pwd"], box, aad).decode()
            if ice.get("remote_pwd"):
                ice["remote_pwd"] = _open(ice["remote_pwd"], box, aad).decode()
        srtp = leg.get("srtp")
        if srtp:
            srtp["local"] = base64.b64encode(_open(srtp["local"], box, aad)).decode()
            srtp["remote"] = base64.b64encode(_open(srtp["remote"], box, aad)).decode()
    return out


def _fingerprint(call: Any, session: Any, token: str | None) -> tuple[Any, ...]:
    """What a call record depends on, cheaply (identities and small values, no encoding); the
    packet counters are left out: :func:`snapshot` rebuilds a record at least every ``max_age``."""
    d = call.dialog
    fp: tuple[Any, ...] = (call.state, call.flow_id, call.answered, token, id(d), d.cseq if d else None)
    if session is not None:
        fp += (id(session), session.ended, session.established, tuple(map(id, session.remote_sdp)))
        fp += tuple(session.ice_credentials)
        for leg in session.legs:
            ice = leg.ice
            fp += (leg.port, leg.rtcp_port, leg.remote, leg.profile, id(leg.srtp), id(ice))
            if ice is not None:
                fp += (ice.local_ufrag, ice.remote_ufrag)
    return fp


def snapshot(
    calls: Any,
    flows: Mapping[int, Any],
    registry: Any,
    sessions: Mapping[str, Any],
    box: SealsSecrets,
    prefix: str,
    node: str,
    now: float,
    cache: dict[str, tuple[tuple[Any, ...], float, dict[str, Any]]] | None = None,
    max_age: float = 5.0,
) -> dict[str, dict[str, Any]]:
    """Every record of a node: its answered calls (a call still ringing is not worth a takeover:
    its transaction is lost anyway) and its flow bindings. ``calls`` is the proxy's
    :class:`~mcs_edge.core.sip.calls.CallTable`, ``flows`` its flows by id, ``registry`` its
    :class:`~mcs_edge.core.sip.flows.FlowRegistry`, ``sessions`` the media anchor's sessions.

    With ``cache``, a call whose fingerprint did not change since its record was built less than
    ``max_age`` ago gets *the same record object* back (the change tracker then skips it without
    encoding it); ended calls leave the cache."""
    out: dict[str, dict[str, Any]] = {}
    for call in calls.calls.values():
        if call.answered is None:
            continue
        flow = flows.get(call.flow_id)
        token = getattr(flow, "token", None)
        session = sessions.get(call.call_id)
        key = key_for_call(prefix, call.call_id)
        if cache is not None:
            fp = _fingerprint(call, session, token)
            hit = cache.get(key)
            if hit is not None and hit[0] == fp and now - hit[1] < max_age:
                out[key] = hit[2]
                continue
            out[key] = call_record(call, session, token, box, key, node, now)
            cache[key] = (fp, now, out[key])
        else:
            out[key] = call_record(call, session, token, box, key, node, now)
    for binding in registry.bindings.values():
        key = key_for_binding(prefix, binding.key)
        if cache is not None:
            fp = (binding.flow_id, tuple(binding.tokens), tuple(binding.aliases.items()))
            hit = cache.get(key)
            if hit is not None and hit[0] == fp and now - hit[1] < max_age:
                out[key] = hit[2]
                continue
            out[key] = binding_record(binding, node, now)
            cache[key] = (fp, now, out[key])
        else:
            out[key] = binding_record(binding, node, now)
    if cache is not None and len(cache) > len(out):
        for key in [k for k in cache if k not in out]:
            del cache[key]
    return out
