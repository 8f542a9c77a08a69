"""Stable log event codes: what operators alert on.

Every log line of the edge starts with a code ``AAAnnn``: three letters name the area, the first
digit the kind of event, the rest the event. A code never changes meaning once released; a new
event gets a new code. The format strings below are the ones the code emits (``twisted.logger``
named keys); the JSON log output (``--log-format=json``) carries the code as ``log_code``.

========  ==========================================================================
area      meaning
========  ==========================================================================
EDG       service lifecycle (start, ready, drain, stop)
CFG       configuration (reload accepted, refused, restart needed)
TLS       certificates and TLS handshakes
ACM       ACME certificate issuance and renewal
SIP       SIP signalling (bad messages, flows)
WSS       SIP over WebSocket (handshake refusals)
PSH       push notifications to wake the mobile app (APNs, FCM; RFC 8599)
MED       media relay
TRN       STUN/TURN
GRD       guard: per-source caps, rate limits, bans
SHP       shaping
WEB       HTTPS front and reverse proxy
ECH       the echo service (echo@<tenant domain>)
CHK       the network check page
ADM       admin API, metrics and health endpoints
WRK       worker processes and their supervisor
LOG       the logging system itself (rate limits)
TMR       timers
CLU       cluster replication through Redis (docs/ha.md)
TUN       WireGuard backhaul to the tenant platforms
========  ==========================================================================

========  ==========================================================================
digit     kind
========  ==========================================================================
1xx       information: lifecycle milestones
2xx       success: a change applied (reload, certificate loaded, tenant added)
3xx       notice: works, but an operator should look (restart needed, drain timeout)
4xx       refused input or failed change (bad config, bad message, bad token)
5xx       internal failure (a bug, or the machine: disk full, spawn failed)
========  ==========================================================================
"""

from __future__ import annotations

import re

__all__ = ["CODE_RE", "EVENTS", "code_of"]

#: code -> the format string logged with it.
EVENTS: dict[str, str] = {
    # service lifecycle
    "EDG100": "certificates ready for {count} tenant(s)",
    "EDG101": "mcs_edge ready: {tenants} tenant(s) ({names}); point a client at https://{host}:{port}/",
    "EDG102": "draining: refusing new connections and calls; {calls} call(s) up, waiting at most {timeout} s",
    "EDG103": "drained: every call ended after {elapsed:.1f} s",
    "EDG104": "stopped accepting connections on {listeners}",
    "EDG300": "backend SIP receive buffer not resized: {error}",
    "EDG301": "drain timeout after {elapsed:.1f} s: closing {calls} call(s) on {flows} connection(s)",
    "EDG500": "{where} raised on a connection from {peer}",
    "EDG501": "{port}: the loop could not serve the listening socket: {error}",
    # configuration
    "CFG200": "reload: embedded default, nothing to read; re-checking certificates",
    "CFG201": "configuration reloaded: {count} tenant(s)",
    "CFG202": "tenant {tenant} {action} through the admin API, saved to {path}",
    "CFG300": "listener addresses changed: they take effect at the next restart",
    "CFG400": "reload refused: {error}",
    "CFG401": "admin change refused: {error}",
    "CFG500": "cannot save the configuration to {path}: {error}",
    # TLS
    "TLS201": "{tenant} certificate loaded from {path} (expires {expires}, sha256 {sha256})",
    "TLS401": "{tenant} certificate {path} not loaded: {reason}{keeping}",
    "TLS300": "{listener}: TLS from {peer} for {name} refused before the handshake: {reason}",
    "TLS400": "{listener}: bad TLS from {peer} ({kind}: {reason}); closed",
    # SIP
    "SIP230": "{tenant} call {call_id} moved to a new connection of its client after {seconds} s",
    "SIP400": "{problem}",  # no longer emitted: the core's problems have their own codes (SIP44x, PSH40x)
    "SIP430": "{tenant} call {call_id} ended: its client did not come back within {grace} s (BYE to the PBX)",
    "PSH400": "{problem}",
    # problems the SIP proxy core reports (core/sip/problems.py: code, counter, fields)
    "SIP440": "{tenant} bad message from a client: {error}",
    "SIP441": "{tenant} bad message from its PBX {source}: {error}",
    "SIP442": "SIP from {source}, which is no tenant's PBX: dropped",
    "SIP443": "{tenant} request for domain {domain} refused (403): not a domain of this connection's tenant",
    "SIP444": "{tenant} request for a connection of tenant {other} refused (403)",
    "SIP445": "{tenant} in-dialog request for a call of another client connection refused (403)",
    "SIP446": "{tenant} in-dialog request with the flow token of another connection refused (430)",
    "SIP447": "{tenant} {count} request(s) to its PBX refused (503): {reason}",
    "SIP448": "{tenant} call {call_id}: early answer (18x) not usable by the media relay; INVITE cancelled, 488",
    "SIP449": "{tenant} call {call_id}: answer (2xx) not usable by the media relay; dialog ended (ACK, BYE), 488",
    "PSH401": "{tenant} REGISTER with pn-provider but without +sip.instance: no push binding",
    "PSH402": "{tenant} REGISTER with pn-provider {provider}, which the tenant does not use: no push binding",
    "PSH403": "{tenant} push binding refused: the binding table is full",
    "PSH404": "{tenant} held call lost: push {outcome}",
    "PSH405": "{tenant} held call lost: {aor} did not wake up in time",
    "SIP401": "{tenant} TLS stream from {peer} closed: {reason}",
    "WSS400": "{tenant} WebSocket from {peer} closed with {code}: {reason}",
    "SIP402": "TLS connection from {peer} without SNI closed: its first message names no tenant",
    "SIP210": "{tenant} connected to its PBX {target} ({peer})",
    "SIP413": "{tenant} PBX stream {target} closed: {reason}",
    "SIP410": "{tenant} cannot reach its PBX {target}: {reason}; retrying with backoff",
    "SIP211": "PBX name {name} ({transport}) resolves to {addresses}",
    "SIP411": "PBX name {name} ({transport}) does not resolve: {reason}",
    "SIP212": "{tenant} PBX {target} moved to {addresses}: reconnecting",
    "SIP220": "{tenant} PBX {target} is up: {reason}",
    "SIP420": "{tenant} PBX {target} is down: {reason}; new calls get 503",
    "TUN100": "WireGuard {interface} up: {address}, port {port}, {peers} tenant peer(s)",
    "TUN200": "peer of tenant {tenant} set ({allowed})",
    "TUN201": "{count} peer(s) removed",
    "TUN202": "key pair generated for tenant {tenant} (private key handed over once)",
    "TUN300": "[tunnel] changed: the interface settings take effect at the next restart",
    "TUN500": "wireguard-go for {interface} exited ({code}): every tenant tunnel is down; restart the edge",
    "TUN400": "WireGuard peers not updated: {error}",
    "SIP412": "PBX name {name} ({transport}): {reason}; keeping {addresses} meanwhile",
    "SIP311": "backend SIP over TCP not listening on {host}:{port}: {error}",
    "WSS403": "{tenant} origin {origin} refused from {peer}",
    # admin API, metrics, health
    "ADM100": "admin API, /metrics and /health on http://{host}:{port}/",
    "ADM101": "admin token generated into {path}",
    "ADM102": "admin listener serves HTTPS ({mode}) with {path}",
    "ADM200": "panel sign-in by {operator} from {peer}",
    "ADM401": "admin request refused from {peer}: {reason}",
    "ADM402": "panel request refused from {peer}: {reason}",
    "ADM403": "admin request refused from {peer}: source banned",
    "ADM500": "admin request {method} {path} failed",
    # workers
    "WRK100": "supervisor: starting {workers} worker(s)",
    "WRK101": "worker {index} (pid {pid}) ready: backend SIP port {backend_port}, media ports {media}",
    "WRK300": "worker {index} (pid {pid}) exited ({reason}); restarting in {delay:.1f} s",
    "WRK301": "worker {index} did not stop within {timeout} s: killed",
    "WRK500": "worker {index} could not be started: {error}",
    # guard (tx/protect/guard.py)
    "GRD300": "guard.ipv6_prefix changed to {new}: it takes effect at the next restart ({old} kept)",
    "GRD301": "{tenant} source {source} banned for {duration:.0f} s after {failures} failed authentication(s) (last: {what}, user {user})",
    "GRD302": "{tenant} source {source} reached {failures} failed authentication(s) but is allow-listed: not banned",
    "GRD401": "connection from {source} on {listener} refused before TLS: {reason}",
    "GRD402": "{tenant} connection from {source} refused: {reason}",
    "GRD403": "{tenant} request from {source} dropped: {reason}",
    # shaping
    "SHP401": "{tenant} {kind} connection from {peer} closed: {reason}",
    # media relay
    "MED200": "{tenant} call of {agent} ended after {duration:.1f} s ({reason}): MOS {mos}, loss {loss}",
    "MED400": "{problem}",
    # TURN
    "TRN100": "{listener} allocation {relay} for {tenant} user {user} from {client} ({lifetime:.0f} s)",
    "TRN101": "{listener} allocation {relay} of {tenant} ended: {reason}",
    "TRN400": "{listener}: not STUN/ChannelData from {client}; closing",
    "TRN401": "{tenant} ice-servers: bad or missing bearer token from {client}",
    "TRN500": "relay bind {ip}:{port} failed: {err}",
    "TRN501": "relay endpoint on port {port} failed: {err}",
    "TRN502": "{listener}: TURN core raised on input",
    "TRN503": "TURN UDP endpoint on {host}:{port} failed: {err}",
    # ACME
    "ACM100": "{tenant} ordering a certificate for {names} ({kind})",
    "ACM101": "ACME account ready at {directory}",
    "ACM110": "answered HTTP-01 for {host}",
    "ACM200": "{tenant} certificate issued for {names}, expires {expires} (sha256 {sha256})",
    "ACM300": "{tenant} names {names} cannot be validated by HTTP-01/TLS-ALPN-01: left out",
    "ACM400": "{tenant} certificate order failed ({failures} in a row): {error}; retry in {delay:.0f}s",
    "ACM501": "{tenant} certificate written but reloading failed",
    # web front and reverse proxy
    "WEB210": "{tenant} certificate handed off to {peer} (sha256 {sha256}, expires {expires})",
    "WEB410": "{tenant} certificate hand-off refused for {peer}: {reason} ({count} so far)",
    "WEB411": "{tenant} certificate hand-off: files unreadable or mismatched ({reason})",
    "WEB420": "{tenant} proxy {kind}{detail} ({count} so far)",
    "WEB500": "{tenant} proxy exchange failed",
    # echo service and network check page
    "ECH200": "{tenant} echo call ended by its media: {reason}",
    "CHK200": "{tenant} network check reported: {result} ({kept} figures)",
    # logging
    "LOG300": "{key}: {count} more message(s) suppressed in the last {window:.0f} s",
    "LOG301": "{count} log line(s) dropped: the log output did not keep up",
    # cluster replication
    "CLU100": "cluster node {node} ({role}) replicating to redis {host}:{port}",
    "CLU101": "replication on: redis {host}:{port}",
    "CLU102": "cluster node {node} promoted to active",
    "CLU103": "took over {calls} call(s) and {bindings} binding(s) from the replica",
    "CLU300": "replication off: {reason}; serving on, resync when Redis is back",
    "CLU301": "cannot enable keyspace notifications: {why}",
    "CLU302": "replica read failed: {why}",
    "CLU303": "keyspace notifications lost; the replica reloads on reconnect",
    "CLU400": "record {key} not taken over: {why}",
    # timers
    "TMR500": "timer callback {fn!r} failed",
    "TMR501": "periodic task {fn!r} failed",
}

#: A log format string that starts with a code.
CODE_RE = re.compile(r"^([A-Z]{3}[0-9]{3})\b")


def code_of(log_format: str | None) -> str | None:
    """The event code at the start of a ``log_format``, or None."""
    if not log_format:
        return None
    m = CODE_RE.match(log_format)
    return m.group(1) if m else None
