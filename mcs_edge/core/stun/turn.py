"""TURN server core (RFC 8656), sans-IO: one :class:`TurnServer` per listener (address + transport).

Theory of operation
-------------------
Inputs, all with an injected monotonic ``now`` (lifetimes) and, where credentials are checked, a
wall-clock ``wall_now`` (TURN REST usernames and nonces carry unix times)::

    actions = server.receive(data, client_addr, now, wall_now)      # from a client (STUN or ChannelData)
    action  = server.receive_from_peer(relay_addr, peer_addr, data, now)   # from a peer, or None
    hit = server.channel_data(data, client_addr, now)   # hot paths: plain tuples, not actions
    hit = server.peer_data(relay_addr, peer_addr, data, now)
    deadline = server.get_timer();  actions = server.handle_timer(now)
    actions = server.client_gone(client_addr)   # TCP/TLS connection closed
    actions = server.close()                    # shutdown: every allocation released

Outputs are actions: :class:`SendToClient`, :class:`SendToPeer`, :class:`AllocationCreated` (the
adapter opens the relay socket) and :class:`AllocationDeleted` (it closes it). The relay port itself
comes from a :class:`RelayAllocator` passed in; the core calls its ``release`` on every deletion
path (Refresh with LIFETIME 0, expiry, connection loss, shutdown).

Allocations are keyed by the client's transport address (the rest of the 5-tuple is this
listener) and by their relayed address. Each holds permissions (peer IP -> deadline, 300 s) and
channels (number <-> peer address, 600 s).

Requests (Allocate, Refresh, CreatePermission, ChannelBind) use long-term credentials
(RFC 8489 s.9.2), checked in this order:

==========================================================  ====================================
condition                                                   answer
==========================================================  ====================================
no MESSAGE-INTEGRITY(-SHA256)                               401 + REALM + NONCE
USERNAME, REALM or NONCE missing                            400
NONCE not ours, tampered, or expired                        438 Stale Nonce + REALM + fresh NONCE
unknown realm/tenant, REST username malformed or expired    401 + REALM + NONCE
integrity does not verify                                   401 + REALM + NONCE
==========================================================  ====================================

Nonces are stateless: ``base64(expiry || HMAC-SHA256(server secret, expiry, client IP, realm)[:12])``,
valid for ``nonce_lifetime`` seconds of wall-clock time. ``lookup(realm, username)`` names the
tenant and returns ``(tenant, TURN REST secret)`` or None; the simple form ``credentials_for(realm)``
makes the realm the tenant. A connection bound to a tenant (TLS SNI) passes ``tenant=`` to
:meth:`TurnServer.receive`: credentials that resolve to another tenant are refused like unknown ones
(401). The username is
``"<unix expiry>:<user>"`` and the password ``base64(HMAC-SHA1(secret, username))``; the key is
``MD5(username:realm:password)`` (SHA-256 when the client sends PASSWORD-ALGORITHM SHA-256). A client
using MESSAGE-INTEGRITY-SHA256 gets responses protected the same way. Unauthenticated error
responses carry no integrity; errors after authentication do.

After authentication (errors are authenticated):

* any request: unknown comprehension-required attribute -> 420 + UNKNOWN-ATTRIBUTES;
* Allocate: 5-tuple in use -> 437 (a retransmission gets the cached response); no
  REQUESTED-TRANSPORT -> 400; not UDP -> 442; DONT-FRAGMENT -> 420 (unsupported); RESERVATION-TOKEN
  -> 508 (no reservations are kept), with EVEN-PORT -> 400; unsupported family -> 440; quota per
  user or per tenant -> 486; no relay port -> 508. Lifetime: max(default, min(requested, max)).
* Refresh / CreatePermission / ChannelBind without an allocation -> 437; another username or realm
  than the allocation's -> 441; Refresh with LIFETIME 0 deletes.
* CreatePermission / ChannelBind: peer of the other family -> 443; ``peer_allowed(tenant, ip)``
  false -> 403 (one refused peer refuses the whole request); ChannelBind number outside
  0x4000..0x4FFF (0x7FFF with ``channel_max=LEGACY_CHANNEL_MAX``, the RFC 5766 range), the number
  bound to another peer, or the peer bound to another number -> 400.

Send indications are never authenticated (RFC 8656 s.11): they are relayed if the allocation has a
permission for the peer, otherwise dropped and counted, like every malformed indication.

The data path is kept to dictionary lookups and a struct pack: ChannelData from the client is
``allocation[client] -> channel[number] -> permission deadline``; data from a peer is
``allocation[relay] -> permission[peer ip] -> channel[peer]`` and a ChannelData header (a Data
indication when the peer has no channel).

Timers: each allocation schedules its earliest deadline (allocation, permission or channel expiry)
in one heap; refreshes only ever push a deadline earlier, so the heap stays small.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import hmac
import itertools
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from mcs_edge.core.randomness import RandomBytes
from mcs_edge.core.stun.channel_data import CHANNEL_MAX, CHANNEL_MIN, LEGACY_CHANNEL_MAX
from mcs_edge.core.stun.message import (
    ADDRESS_FAMILY_IPV4,
    ADDRESS_FAMILY_IPV6,
    ATTR_DATA,
    ATTR_DONT_FRAGMENT,
    ATTR_XOR_PEER_ADDRESS,
    CLASS_ERROR,
    CLASS_INDICATION,
    CLASS_REQUEST,
    CLASS_SUCCESS,
    MAGIC_COOKIE_BYTES,
    METHOD_ALLOCATE,
    METHOD_BINDING,
    METHOD_CHANNEL_BIND,
    METHOD_CREATE_PERMISSION,
    METHOD_DATA,
    METHOD_REFRESH,
    METHOD_SEND,
    PASSWORD_ALGORITHM_MD5,
    PASSWORD_ALGORITHM_SHA256,
    TRANSPORT_UDP,
    Attribute,
    ChannelNumber,
    DontFragment,
    ErrorCode,
    EvenPort,
    Lifetime,
    Message,
    MessageView,
    Nonce,
    PasswordAlgorithm,
    Realm,
    RequestedAddressFamily,
    RequestedTransport,
    ReservationToken,
    Software,
    UnknownAttributes,
    Username,
    XorMappedAddress,
    XorPeerAddress,
    XorRelayedAddress,
    encode_type,
    encode_xor_address,
    long_term_key,
    parse_view,
)
from mcs_edge.core.stun.peer_policy import default_peer_policy
from mcs_edge.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "AllocationCreated",
    "AllocationDeleted",
    "AllocationInfo",
    "RelayAllocator",
    "SendToClient",
    "SendToPeer",
    "TurnAction",
    "TurnCounters",
    "TurnQuota",
    "TurnServer",
    "rest_password",
]

Addr = tuple[str, int]

DEFAULT_LIFETIME = 600.0
MAX_LIFETIME = 3600.0
PERMISSION_LIFETIME = 300.0
CHANNEL_LIFETIME = 600.0
NONCE_LIFETIME = 600.0

_CD_HEADER = struct.Struct("!HH")
_ATTR_HEADER = struct.Struct("!HH")
_PAD = (b"", b"\x00\x00\x00", b"\x00\x00", b"\x00")
_DATA_INDICATION_TYPE = encode_type(METHOD_DATA, CLASS_INDICATION).to_bytes(2, "big")
_XPA_V4 = b"\x00\x12\x00\x08"
_XPA_V6 = b"\x00\x12\x00\x14"
_INF = math.inf


# --- actions ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendToClient:
    """Send ``data`` from the listener to the client at ``client``."""

    client: Addr
    data: bytes


@dataclass(frozen=True, slots=True)
class SendToPeer:
    """Send ``data`` from the relay socket bound to ``relay`` to ``peer``."""

    relay: Addr
    peer: Addr
    data: bytes


@dataclass(frozen=True, slots=True)
class AllocationCreated:
    """Open a relay socket on ``relay`` for ``client`` of ``tenant``."""

    client: Addr
    relay: Addr
    tenant: str
    username: str
    lifetime: float


@dataclass(frozen=True, slots=True)
class AllocationDeleted:
    """Close the relay socket on ``relay``; ``reason`` is refresh, expired, client_gone or shutdown."""

    client: Addr
    relay: Addr
    tenant: str
    reason: str


TurnAction = SendToClient | SendToPeer | AllocationCreated | AllocationDeleted


class RelayAllocator(Protocol):
    """Hands out relayed transport addresses (the adapter binds the sockets on AllocationCreated)."""

    def allocate(self, tenant: str, family: int, even_port: bool) -> Addr | None:
        """A free relayed address of ``family`` (1 = IPv4, 2 = IPv6), or None when exhausted."""

    def release(self, relay: Addr) -> None:
        """``relay`` is free again."""


@dataclass(frozen=True, slots=True)
class TurnQuota:
    """Concurrent allocations allowed per user (REST user part) and per tenant."""

    per_user: int = 10
    per_tenant: int = 1000


@dataclass(frozen=True, slots=True)
class AllocationInfo:
    """A read-only snapshot of one allocation (for tests, the admin API and metrics)."""

    client: Addr
    relay: Addr
    tenant: str
    username: str
    expires: float
    permissions: dict[str, float]
    channels: dict[int, Addr]
    realm: str = ""


class TurnCounters:
    """Counters the adapter exports as metrics."""

    __slots__ = (
        "allocations_created",
        "allocations_deleted",
        "auth_challenges",
        "auth_failures",
        "bad_requests",
        "dropped_malformed",
        "dropped_no_allocation",
        "dropped_no_channel",
        "dropped_no_permission",
        "forbidden_peers",
        "quota_refusals",
        "stale_nonces",
    )

    def __init__(self) -> None:
        self.allocations_created = 0
        self.allocations_deleted = 0
        self.auth_challenges = 0
        self.auth_failures = 0
        self.bad_requests = 0
        self.dropped_malformed = 0
        self.dropped_no_allocation = 0
        self.dropped_no_channel = 0
        self.dropped_no_permission = 0
        self.forbidden_peers = 0
        self.quota_refusals = 0
        self.stale_nonces = 0

    def as_dict(self) -> dict[str, int]:
        """All counters by name."""
        return {name: getattr(self, name) for name in self.__slots__}


def rest_password(secret: bytes, username: str) -> str:
    """The TURN REST password for ``username``: base64(HMAC-SHA1(secret, username))."""
    return base64.b64encode(hmac.digest(secret, username.encode(), "sha1")).decode()


# --- internal state -----------------------------------------------------------------------------


class _Permission:
    __slots__ = ("expires",)

    def __init__(self, expires: float) -> None:
        self.expires = expires


class _Channel:
    __slots__ = ("expires", "number", "peer", "permission")

    def __init__(self, number: int, peer: Addr, expires: float, permission: _Permission) -> None:
        self.number = number
        self.peer = peer
        self.expires = expires
        self.permission = permission


class _Allocation:
    __slots__ = (
        "allocate_response",
        "allocate_txid",
        "channel_by_peer",
        "channels",
        "client",
        "deleted",
        "expires",
        "family",
        "handle",
        "key",
        "permissions",
        "quota_key",
        "realm",
        "relay",
        "scheduled",
        "tenant",
        "username",
    )

    def __init__(
        self,
        client: Addr,
        relay: Addr,
        family: int,
        auth: _Auth,
        expires: float,
    ) -> None:
        self.client = client
        self.relay = relay
        self.handle: object = relay
        self.family = family
        self.realm = auth.realm
        self.tenant = auth.tenant
        self.username = auth.username
        self.quota_key = (auth.tenant, _rest_user(auth.username))
        self.key = auth.key
        self.expires = expires
        self.permissions: dict[str, _Permission] = {}
        self.channels: dict[int, _Channel] = {}
        self.channel_by_peer: dict[Addr, _Channel] = {}
        self.allocate_txid = b""
        self.allocate_response = b""
        self.scheduled = _INF
        self.deleted = False

    def next_deadline(self) -> float:
        deadline = self.expires
        for perm in self.permissions.values():
            deadline = min(deadline, perm.expires)
        for channel in self.channels.values():
            deadline = min(deadline, channel.expires)
        return deadline


class _Auth:
    __slots__ = ("key", "realm", "sha256", "tenant", "username")

    def __init__(self, username: str, realm: str, tenant: str, key: bytes, sha256: bool) -> None:
        self.username = username
        self.realm = realm
        self.tenant = tenant
        self.key = key
        self.sha256 = sha256


class _Reply(Exception):
    """Internal: abort request processing with an error response."""

    def __init__(self, code: int, extra: tuple[Attribute, ...] = ()) -> None:
        self.code = code
        self.extra = extra


def _rest_user(username: str) -> str:
    _expiry, sep, user = username.partition(":")
    return user if sep and user else username


def _rest_expiry(username: str) -> int | None:
    head = username.partition(":")[0]
    if not head.isascii() or not head.isdigit() or len(head) > 12:
        return None
    return int(head)


def _realm_lookup(
    credentials_for: Callable[[str], bytes | None],
) -> Callable[[str, str], tuple[str, bytes] | None]:
    def lookup(realm: str, _username: str) -> tuple[str, bytes] | None:
        secret = credentials_for(realm)
        return None if secret is None else (realm, secret)

    return lookup


def _family_of(ip: str) -> int:
    return ADDRESS_FAMILY_IPV6 if ":" in ip else ADDRESS_FAMILY_IPV4


# --- the server ---------------------------------------------------------------------------------


class TurnServer:
    """The TURN server state of one listener (see the module docstring)."""

    def __init__(
        self,
        *,
        realm: str,
        credentials_for: Callable[[str], bytes | None] | None = None,
        lookup: Callable[[str, str], tuple[str, bytes] | None] | None = None,
        relay_allocator: RelayAllocator,
        peer_allowed: Callable[[str, str], bool] = default_peer_policy,
        quota_for: Callable[[str], TurnQuota] | None = None,
        stream: bool = False,
        software: str | None = None,
        random_bytes: RandomBytes,
        nonce_secret: bytes | None = None,
        nonce_lifetime: float = NONCE_LIFETIME,
        default_lifetime: float = DEFAULT_LIFETIME,
        max_lifetime: float = MAX_LIFETIME,
        permission_lifetime: float = PERMISSION_LIFETIME,
        channel_lifetime: float = CHANNEL_LIFETIME,
        families: frozenset[int] = frozenset({ADDRESS_FAMILY_IPV4}),
        channel_max: int = CHANNEL_MAX,
    ) -> None:
        if not 0 < default_lifetime <= max_lifetime:
            raise LocalProtocolError("TURN: need 0 < default_lifetime <= max_lifetime")
        if channel_max not in (CHANNEL_MAX, LEGACY_CHANNEL_MAX):
            raise LocalProtocolError("TURN: channel_max is CHANNEL_MAX or LEGACY_CHANNEL_MAX")
        #: highest channel number accepted in ChannelBind, and the first byte of its ChannelData
        self.channel_max = channel_max
        self.channel_first_max = channel_max >> 8
        if lookup is None:
            if credentials_for is None:
                raise LocalProtocolError("TURN: give credentials_for or lookup")
            lookup = _realm_lookup(credentials_for)
        self.realm = realm
        #: ``(realm, username) -> (tenant, secret)`` or None
        self.lookup = lookup
        self.relay_allocator = relay_allocator
        self.peer_allowed = peer_allowed
        self.quota_for = quota_for or (lambda _realm: TurnQuota())
        #: True for TCP/TLS listeners: ChannelData to clients is padded to 4 bytes
        self.stream = stream
        self.software = None if software is None else Software(software)
        self._random_bytes = random_bytes
        self._nonce_secret = nonce_secret or random_bytes(32)
        self.nonce_lifetime = nonce_lifetime
        self.default_lifetime = default_lifetime
        self.max_lifetime = max_lifetime
        self.permission_lifetime = permission_lifetime
        self.channel_lifetime = channel_lifetime
        self.families = families
        self.counters = TurnCounters()
        self._by_client: dict[Addr, _Allocation] = {}
        self._by_relay: dict[Addr, _Allocation] = {}
        self._user_counts: dict[tuple[str, str], int] = {}
        self._tenant_counts: dict[str, int] = {}
        self._heap: list[tuple[float, int, _Allocation]] = []
        self._seq = itertools.count()

    # --- inspection -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._by_client)

    def allocations_by_tenant(self) -> dict[str, int]:
        """Live allocations per tenant."""
        return dict(self._tenant_counts)

    def allocation(self, client: Addr) -> AllocationInfo | None:
        """A snapshot of the allocation of ``client``, or None."""
        alloc = self._by_client.get(client)
        if alloc is None:
            return None
        return AllocationInfo(
            alloc.client,
            alloc.relay,
            alloc.tenant,
            alloc.username,
            alloc.expires,
            {ip: p.expires for ip, p in alloc.permissions.items()},
            {n: c.peer for n, c in alloc.channels.items()},
            alloc.realm,
        )

    # --- data path ------------------------------------------------------------------------------

    def attach(self, relay: Addr, handle: object) -> bool:
        """Let :meth:`channel_data` name the allocation on ``relay`` by ``handle`` (the adapter's
        relay socket object, saving it a lookup per packet); False if there is no such allocation."""
        alloc = self._by_relay.get(relay)
        if alloc is None:
            return False
        alloc.handle = handle
        return True

    def channel_data(self, data: bytes, client: Addr, now: float) -> tuple[object, Addr, bytes] | None:
        """The hot path from clients: ChannelData from ``client`` -> ``(handle, peer, payload)`` to
        send from the allocation's relay (``handle`` is the relayed address unless :meth:`attach`
        named another), or None (dropped, counted)."""
        alloc = self._by_client.get(client)
        if alloc is None:
            self.counters.dropped_no_allocation += 1
            return None
        if len(data) < 4:
            self.counters.dropped_malformed += 1
            return None
        number, length = _CD_HEADER.unpack_from(data)
        channel = alloc.channels.get(number)
        if channel is None or channel.expires <= now:
            self.counters.dropped_no_channel += 1
            return None
        if channel.permission.expires <= now:
            self.counters.dropped_no_permission += 1
            return None
        if 4 + length > len(data):
            self.counters.dropped_malformed += 1
            return None
        return alloc.handle, channel.peer, data[4 : 4 + length]

    def relay_channel_data(self, data: bytes, client: Addr, now: float) -> SendToPeer | None:
        """ChannelData from ``client`` -> the datagram to send to the bound peer, or None (dropped)."""
        hit = self.channel_data(data, client, now)
        if hit is None:
            return None
        return SendToPeer(self._by_client[client].relay, hit[1], hit[2])

    def peer_data(self, relay: Addr, peer: Addr, data: bytes, now: float) -> tuple[Addr, bytes] | None:
        """The hot path from peers: a datagram from ``peer`` on ``relay`` -> ``(client, bytes)``
        (ChannelData, or a Data indication when the peer has no channel), or None (dropped)."""
        alloc = self._by_relay.get(relay)
        if alloc is None:
            self.counters.dropped_no_allocation += 1
            return None
        perm = alloc.permissions.get(peer[0])
        if perm is None or perm.expires <= now:
            self.counters.dropped_no_permission += 1
            return None
        size = len(data)
        if size > 0xFFF0:
            self.counters.dropped_malformed += 1
            return None
        channel = alloc.channel_by_peer.get(peer)
        if channel is not None and channel.expires > now:
            if self.stream and size & 3:
                return alloc.client, _CD_HEADER.pack(channel.number, size) + data + _PAD[size & 3]
            return alloc.client, _CD_HEADER.pack(channel.number, size) + data
        return alloc.client, self._data_indication(peer, data)

    def receive_from_peer(self, relay: Addr, peer: Addr, data: bytes, now: float) -> SendToClient | None:
        """A datagram from ``peer`` on relay ``relay`` -> ChannelData or Data indication, or None."""
        hit = self.peer_data(relay, peer, data, now)
        return None if hit is None else SendToClient(hit[0], hit[1])

    def _data_indication(self, peer: Addr, data: bytes) -> bytes:
        txid = self._random_bytes(12)
        xpa = encode_xor_address(peer[0], peer[1], txid)
        size = len(data)
        body = (
            (_XPA_V4 if len(xpa) == 8 else _XPA_V6)
            + xpa
            + _ATTR_HEADER.pack(ATTR_DATA, size)
            + data
            + _PAD[size & 3]
        )
        return _DATA_INDICATION_TYPE + len(body).to_bytes(2, "big") + MAGIC_COOKIE_BYTES + txid + body

    # --- control path ---------------------------------------------------------------------------

    def receive(
        self,
        data: bytes,
        client: Addr,
        now: float,
        wall_now: float,
        *,
        realm: str | None = None,
        tenant: str | None = None,
    ) -> list[TurnAction]:
        """One STUN message or ChannelData from ``client``; ``realm`` overrides the listener's realm
        in challenges (e.g. chosen from SNI on a TLS listener); ``tenant`` binds the request to one
        tenant (credentials resolving to another are refused)."""
        if not data:
            self.counters.dropped_malformed += 1
            return []
        first = data[0]
        if 0x40 <= first <= self.channel_first_max:
            action = self.relay_channel_data(data, client, now)
            return [] if action is None else [action]
        if first >= 0x40:
            self.counters.dropped_malformed += 1
            return []
        try:
            view = parse_view(data)
        except RemoteProtocolError as exc:
            self.counters.dropped_malformed += 1
            if exc.status_hint is None or data[0] & 0x01 or data[1] & 0x10:
                return []  # not STUN, or not a request: never answered
            msg_type = (data[0] << 8) | data[1]
            return [self._send(client, self._error_bytes(msg_type, data[8:20], 400, None))]
        if view.fingerprint_at >= 0 and not view.check_fingerprint():
            self.counters.dropped_malformed += 1
            return []
        if view.cls == CLASS_INDICATION:
            if view.method == METHOD_SEND:
                action = self._on_send(view, client, now)
                return [] if action is None else [action]
            self.counters.dropped_malformed += 1
            return []
        if view.cls != CLASS_REQUEST:
            self.counters.dropped_malformed += 1
            return []
        return self._on_request(view, client, now, wall_now, realm or self.realm, tenant)

    def _on_send(self, view: MessageView, client: Addr, now: float) -> SendToPeer | None:
        alloc = self._by_client.get(client)
        if alloc is None:
            self.counters.dropped_no_allocation += 1
            return None
        raw_peer = view.value(ATTR_XOR_PEER_ADDRESS)
        where = view.attrs.get(ATTR_DATA)
        if raw_peer is None or where is None or ATTR_DONT_FRAGMENT in view.attrs:
            self.counters.dropped_malformed += 1
            return None
        try:
            peer = XorPeerAddress.decode(raw_peer, view.transaction_id)
        except RemoteProtocolError:
            self.counters.dropped_malformed += 1
            return None
        perm = alloc.permissions.get(peer.ip)
        if perm is None or perm.expires <= now:
            self.counters.dropped_no_permission += 1
            return None
        return SendToPeer(alloc.relay, (peer.ip, peer.port), view.data[where[0] : where[0] + where[1]])

    def _on_request(
        self, view: MessageView, client: Addr, now: float, wall_now: float, realm: str, tenant: str | None
    ) -> list[TurnAction]:
        method = view.method
        txid = view.transaction_id
        fingerprint = view.fingerprint_at >= 0
        try:
            msg = Message.from_view(view)
        except RemoteProtocolError:
            self.counters.bad_requests += 1
            return [self._send(client, self._error_bytes(view.msg_type, txid, 400, None, fingerprint))]
        if method == METHOD_BINDING:
            attrs: tuple[Attribute, ...] = (XorMappedAddress(client[0], client[1]),)
            return [self._send(client, self._success_bytes(method, txid, attrs, None, fingerprint))]
        if method not in (METHOD_ALLOCATE, METHOD_REFRESH, METHOD_CREATE_PERMISSION, METHOD_CHANNEL_BIND):
            self.counters.bad_requests += 1
            return [self._send(client, self._error_bytes(view.msg_type, txid, 400, None, fingerprint))]
        if method == METHOD_ALLOCATE:
            existing = self._by_client.get(client)
            if existing is not None and existing.allocate_txid == txid:
                return [self._send(client, existing.allocate_response)]
        auth = self._authenticate(view, msg, client, wall_now, realm, tenant)
        if not isinstance(auth, _Auth):
            return [self._send(client, auth)]
        try:
            unknown = msg.unknown_comprehension_required()
            if unknown:
                raise _Reply(420, (UnknownAttributes(unknown),))
            if method == METHOD_ALLOCATE:
                return self._on_allocate(msg, auth, client, now, fingerprint)
            alloc = self._by_client.get(client)
            if alloc is None:
                raise _Reply(437)
            if alloc.username != auth.username or alloc.realm != auth.realm:
                raise _Reply(441)
            if method == METHOD_REFRESH:
                return self._on_refresh(msg, auth, alloc, now, fingerprint)
            if method == METHOD_CREATE_PERMISSION:
                self._on_create_permission(msg, alloc, now)
            else:
                self._on_channel_bind(msg, alloc, now)
            self._schedule(alloc)
            return [self._send(client, self._success_bytes(method, txid, (), auth, fingerprint))]
        except _Reply as reply:
            self._count_error(reply.code)
            error = self._error_bytes(view.msg_type, txid, reply.code, auth, fingerprint, reply.extra)
            return [self._send(client, error)]

    def _count_error(self, code: int) -> None:
        c = self.counters
        if code == 403:
            c.forbidden_peers += 1
        elif code == 486:
            c.quota_refusals += 1
        else:
            c.bad_requests += 1

    # --- authentication -------------------------------------------------------------------------

    def make_nonce(self, realm: str, client_ip: str, wall_now: float) -> str:
        """A stateless nonce for ``realm`` and ``client_ip``, valid for ``nonce_lifetime`` seconds."""
        expiry = int(min(max(wall_now + self.nonce_lifetime, 0.0), 2.0**63)).to_bytes(8, "big")
        mac = hmac.digest(
            self._nonce_secret, b"%b%b\x00%b" % (expiry, client_ip.encode(), realm.encode()), "sha256"
        )
        return base64.urlsafe_b64encode(expiry + mac[:12]).decode()

    def _nonce_valid(self, nonce: str, realm: str, client_ip: str, wall_now: float) -> bool:
        try:
            raw = base64.urlsafe_b64decode(nonce.encode())
        except (binascii.Error, ValueError):
            return False
        if len(raw) != 20:
            return False
        expiry = raw[:8]
        mac = hmac.digest(
            self._nonce_secret, b"%b%b\x00%b" % (expiry, client_ip.encode(), realm.encode()), "sha256"
        )
        return hmac.compare_digest(mac[:12], raw[8:]) and int.from_bytes(expiry, "big") > wall_now

    def _challenge(self, view: MessageView, code: int, realm: str, client: Addr, wall_now: float) -> bytes:
        attrs: tuple[Attribute, ...] = (Realm(realm), Nonce(self.make_nonce(realm, client[0], wall_now)))
        return self._error_bytes(
            view.msg_type, view.transaction_id, code, None, view.fingerprint_at >= 0, attrs
        )

    def _authenticate(
        self,
        view: MessageView,
        msg: Message,
        client: Addr,
        wall_now: float,
        challenge_realm: str,
        bound_tenant: str | None,
    ) -> _Auth | bytes:
        counters = self.counters
        sha256 = view.integrity_sha256_at >= 0
        if view.integrity_at < 0 and not sha256:
            counters.auth_challenges += 1
            return self._challenge(view, 401, challenge_realm, client, wall_now)
        username = msg.get(Username)
        realm = msg.get(Realm)
        nonce = msg.get(Nonce)
        if username is None or realm is None or nonce is None:
            counters.bad_requests += 1
            return self._error_bytes(view.msg_type, view.transaction_id, 400, None, view.fingerprint_at >= 0)
        found = self.lookup(realm.value, username.value)
        if found is not None and bound_tenant is not None and found[0] != bound_tenant:
            found = None
        reply_realm = realm.value if found is not None else challenge_realm
        if not self._nonce_valid(nonce.value, realm.value, client[0], wall_now):
            counters.stale_nonces += 1
            return self._challenge(view, 438, reply_realm, client, wall_now)
        expiry = _rest_expiry(username.value)
        if found is None or expiry is None or expiry <= wall_now:
            counters.auth_failures += 1
            return self._challenge(view, 401, reply_realm, client, wall_now)
        tenant, secret = found
        algorithm = msg.get(PasswordAlgorithm)
        alg = PASSWORD_ALGORITHM_MD5 if algorithm is None else algorithm.algorithm
        if alg not in (PASSWORD_ALGORITHM_MD5, PASSWORD_ALGORITHM_SHA256):
            counters.bad_requests += 1
            return self._error_bytes(view.msg_type, view.transaction_id, 400, None, view.fingerprint_at >= 0)
        password = rest_password(secret, username.value)
        key = long_term_key(username.value, realm.value, password, alg)
        ok = view.check_integrity_sha256(key) if sha256 else view.check_integrity(key)
        if not ok:
            counters.auth_failures += 1
            return self._challenge(view, 401, reply_realm, client, wall_now)
        return _Auth(username.value, realm.value, tenant, key, sha256)

    # --- methods --------------------------------------------------------------------------------

    def _lifetime(self, requested: Lifetime | None) -> float:
        if requested is None:
            return self.default_lifetime
        return max(self.default_lifetime, min(float(requested.value), self.max_lifetime))

    def _on_allocate(
        self, msg: Message, auth: _Auth, client: Addr, now: float, fingerprint: bool
    ) -> list[TurnAction]:
        if client in self._by_client:
            raise _Reply(437)
        transport = msg.get(RequestedTransport)
        if transport is None:
            raise _Reply(400)
        if transport.value != TRANSPORT_UDP:
            raise _Reply(442)
        if msg.get(DontFragment) is not None:
            raise _Reply(420, (UnknownAttributes((DontFragment.TYPE,)),))
        even = msg.get(EvenPort)
        if msg.get(ReservationToken) is not None:
            raise _Reply(400 if even is not None else 508)
        requested_family = msg.get(RequestedAddressFamily)
        family = ADDRESS_FAMILY_IPV4 if requested_family is None else requested_family.value
        if family not in self.families:
            raise _Reply(440)
        quota = self.quota_for(auth.tenant)
        quota_key = (auth.tenant, _rest_user(auth.username))
        if (
            self._user_counts.get(quota_key, 0) >= quota.per_user
            or self._tenant_counts.get(auth.tenant, 0) >= quota.per_tenant
        ):
            raise _Reply(486)
        relay = self.relay_allocator.allocate(auth.tenant, family, even is not None)
        if relay is None:
            raise _Reply(508)
        lifetime = self._lifetime(msg.get(Lifetime))
        alloc = _Allocation(client, relay, family, auth, now + lifetime)
        self._by_client[client] = alloc
        self._by_relay[relay] = alloc
        self._user_counts[quota_key] = self._user_counts.get(quota_key, 0) + 1
        self._tenant_counts[auth.tenant] = self._tenant_counts.get(auth.tenant, 0) + 1
        self.counters.allocations_created += 1
        self._schedule(alloc)
        attrs: tuple[Attribute, ...] = (
            XorRelayedAddress(relay[0], relay[1]),
            Lifetime(int(lifetime)),
            XorMappedAddress(client[0], client[1]),
        )
        response = self._success_bytes(METHOD_ALLOCATE, msg.transaction_id, attrs, auth, fingerprint)
        alloc.allocate_txid = msg.transaction_id
        alloc.allocate_response = response
        return [
            AllocationCreated(client, relay, auth.tenant, auth.username, lifetime),
            self._send(client, response),
        ]

    def _on_refresh(
        self, msg: Message, auth: _Auth, alloc: _Allocation, now: float, fingerprint: bool
    ) -> list[TurnAction]:
        requested_family = msg.get(RequestedAddressFamily)
        if requested_family is not None and requested_family.value != alloc.family:
            raise _Reply(443)
        requested = msg.get(Lifetime)
        if requested is not None and requested.value == 0:
            actions = self._delete(alloc, "refresh")
            attrs: tuple[Attribute, ...] = (Lifetime(0),)
            actions.append(
                self._send(
                    alloc.client,
                    self._success_bytes(METHOD_REFRESH, msg.transaction_id, attrs, auth, fingerprint),
                )
            )
            return actions
        lifetime = self._lifetime(requested)
        alloc.expires = now + lifetime
        self._schedule(alloc)
        attrs = (Lifetime(int(lifetime)),)
        return [
            self._send(
                alloc.client,
                self._success_bytes(METHOD_REFRESH, msg.transaction_id, attrs, auth, fingerprint),
            )
        ]

    def _check_peer(self, alloc: _Allocation, peer: XorPeerAddress) -> None:
        if _family_of(peer.ip) != alloc.family:
            raise _Reply(443)
        if not self.peer_allowed(alloc.tenant, peer.ip):
            raise _Reply(403)

    def _permit(self, alloc: _Allocation, ip: str, now: float) -> _Permission:
        perm = alloc.permissions.get(ip)
        expires = now + self.permission_lifetime
        if perm is None:
            perm = alloc.permissions[ip] = _Permission(expires)
            for channel in alloc.channels.values():
                if channel.peer[0] == ip:
                    channel.permission = perm
        else:
            perm.expires = expires
        return perm

    def _on_create_permission(self, msg: Message, alloc: _Allocation, now: float) -> None:
        peers = list(msg.get_all(XorPeerAddress))
        if not peers:
            raise _Reply(400)
        for peer in peers:
            self._check_peer(alloc, peer)
        for peer in peers:
            self._permit(alloc, peer.ip, now)

    def _on_channel_bind(self, msg: Message, alloc: _Allocation, now: float) -> None:
        number_attr = msg.get(ChannelNumber)
        peer_attr = msg.get(XorPeerAddress)
        if number_attr is None or peer_attr is None:
            raise _Reply(400)
        number = number_attr.number
        if not CHANNEL_MIN <= number <= self.channel_max:
            raise _Reply(400)
        self._check_peer(alloc, peer_attr)
        peer = (peer_attr.ip, peer_attr.port)
        channel = alloc.channels.get(number)
        if channel is not None and channel.peer != peer:
            if channel.expires > now:
                raise _Reply(400)
            self._unbind(alloc, channel)
            channel = None
        other = alloc.channel_by_peer.get(peer)
        if other is not None and other.number != number:
            if other.expires > now:
                raise _Reply(400)
            self._unbind(alloc, other)
        perm = self._permit(alloc, peer[0], now)
        if channel is None:
            channel = _Channel(number, peer, now + self.channel_lifetime, perm)
            alloc.channels[number] = channel
            alloc.channel_by_peer[peer] = channel
        else:
            channel.expires = now + self.channel_lifetime
            channel.permission = perm

    @staticmethod
    def _unbind(alloc: _Allocation, channel: _Channel) -> None:
        alloc.channels.pop(channel.number, None)
        alloc.channel_by_peer.pop(channel.peer, None)

    # --- responses ------------------------------------------------------------------------------

    def _send(self, client: Addr, data: bytes) -> SendToClient:
        return SendToClient(client, data)

    def _finish(self, msg: Message, auth: _Auth | None, fingerprint: bool) -> bytes:
        if auth is None:
            return msg.serialize(fingerprint=fingerprint)
        if auth.sha256:
            return msg.serialize(integrity_sha256_key=auth.key, fingerprint=fingerprint)
        return msg.serialize(integrity_key=auth.key, fingerprint=fingerprint)

    def _success_bytes(
        self, method: int, txid: bytes, attrs: tuple[Attribute, ...], auth: _Auth | None, fingerprint: bool
    ) -> bytes:
        if self.software is not None:
            attrs = (*attrs, self.software)
        return self._finish(Message(method, CLASS_SUCCESS, txid, attrs), auth, fingerprint)

    def _error_bytes(
        self,
        msg_type: int,
        txid: bytes,
        code: int,
        auth: _Auth | None,
        fingerprint: bool = False,
        extra: tuple[Attribute, ...] = (),
    ) -> bytes:
        method = (msg_type & 0x000F) | ((msg_type >> 1) & 0x0070) | ((msg_type >> 2) & 0x0F80)
        attrs: tuple[Attribute, ...] = (ErrorCode.for_code(code), *extra)
        if self.software is not None:
            attrs = (*attrs, self.software)
        return self._finish(Message(method, CLASS_ERROR, txid, attrs), auth, fingerprint)

    # --- lifetimes ------------------------------------------------------------------------------

    def _schedule(self, alloc: _Allocation) -> None:
        deadline = alloc.next_deadline()
        if deadline < alloc.scheduled:
            alloc.scheduled = deadline
            heapq.heappush(self._heap, (deadline, next(self._seq), alloc))

    def _stale(self, entry: tuple[float, int, _Allocation]) -> bool:
        deadline, _seq, alloc = entry
        return alloc.deleted or deadline != alloc.scheduled

    def get_timer(self) -> float | None:
        """The earliest allocation, permission or channel deadline, or None."""
        heap = self._heap
        while heap and self._stale(heap[0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def handle_timer(self, now: float) -> list[TurnAction]:
        """Expire what is due at ``now``: allocations (releasing relays), permissions, channels."""
        actions: list[TurnAction] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            if self._stale(entry):
                continue
            alloc = entry[2]
            alloc.scheduled = _INF
            if alloc.expires <= now:
                actions.extend(self._delete(alloc, "expired"))
                continue
            for ip in [ip for ip, p in alloc.permissions.items() if p.expires <= now]:
                del alloc.permissions[ip]
            for channel in [c for c in alloc.channels.values() if c.expires <= now]:
                self._unbind(alloc, channel)
            self._schedule(alloc)
        return actions

    def _delete(self, alloc: _Allocation, reason: str) -> list[TurnAction]:
        if alloc.deleted:
            return []
        alloc.deleted = True
        del self._by_client[alloc.client]
        del self._by_relay[alloc.relay]
        count = self._user_counts[alloc.quota_key] - 1
        if count:
            self._user_counts[alloc.quota_key] = count
        else:
            del self._user_counts[alloc.quota_key]
        count = self._tenant_counts[alloc.tenant] - 1
        if count:
            self._tenant_counts[alloc.tenant] = count
        else:
            del self._tenant_counts[alloc.tenant]
        self.relay_allocator.release(alloc.relay)
        self.counters.allocations_deleted += 1
        return [AllocationDeleted(alloc.client, alloc.relay, alloc.tenant, reason)]

    def client_gone(self, client: Addr) -> list[TurnAction]:
        """The client's TCP/TLS connection closed: its allocation goes (RFC 8656 s.5)."""
        alloc = self._by_client.get(client)
        return [] if alloc is None else self._delete(alloc, "client_gone")

    def close(self) -> list[TurnAction]:
        """Shutdown: delete every allocation and release every relay address."""
        actions: list[TurnAction] = []
        for alloc in list(self._by_client.values()):
            actions.extend(self._delete(alloc, "shutdown"))
        self._heap.clear()
        return actions
