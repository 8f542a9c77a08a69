"""Tests of the TURN server core in virtual time: auth, every error, lifetimes, relay paths."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import pytest

from mcs_edge.core.stun import message as m
from mcs_edge.core.stun.channel_data import pack_channel_data, unpack_channel_data
from mcs_edge.core.stun.message import (
    CLASS_ERROR,
    CLASS_INDICATION,
    CLASS_REQUEST,
    CLASS_SUCCESS,
    METHOD_ALLOCATE,
    METHOD_CHANNEL_BIND,
    METHOD_CREATE_PERMISSION,
    METHOD_REFRESH,
    METHOD_SEND,
    Message,
    long_term_key,
    parse_view,
)
from mcs_edge.core.stun.peer_policy import PeerPolicy
from mcs_edge.core.stun.turn import (
    AllocationCreated,
    AllocationDeleted,
    SendToClient,
    SendToPeer,
    TurnAction,
    TurnQuota,
    TurnServer,
    rest_password,
)
from mcs_edge.errors import LocalProtocolError

REALM = "rossi.example.com"
OTHER_REALM = "bianchi.example.com"
SECRETS = {REALM: b"rossi-secret", OTHER_REALM: b"bianchi-secret"}
WALL = 1_700_000_000.0
CLIENT = ("198.51.100.10", 40000)
CLIENT2 = ("198.51.100.11", 40001)
PEER = ("203.0.113.50", 6000)
PEER2 = ("203.0.113.51", 6001)


@dataclass
class FakeAllocator:
    """Relay ports 49152.. on 192.0.2.1 (and 2001:db8::1 for IPv6), at most ``size`` at once."""

    size: int = 100
    in_use: set[tuple[str, int]] = field(default_factory=set)
    released: list[tuple[str, int]] = field(default_factory=list)
    calls: list[tuple[str, int, bool]] = field(default_factory=list)

    def allocate(self, tenant: str, family: int, even_port: bool) -> tuple[str, int] | None:
        self.calls.append((tenant, family, even_port))
        if len(self.in_use) >= self.size:
            return None
        ip = "192.0.2.1" if family == 1 else "2001:db8::1"
        port = next(p for p in range(49152, 65536, 2 if even_port else 1) if (ip, p) not in self.in_use)
        self.in_use.add((ip, port))
        return (ip, port)

    def release(self, relay: tuple[str, int]) -> None:
        self.in_use.remove(relay)
        self.released.append(relay)


def make_server(**kwargs: object) -> tuple[TurnServer, FakeAllocator]:
    allocator = FakeAllocator(size=kwargs.pop("pool", 100))  # type: ignore[arg-type]
    server = TurnServer(
        random_bytes=secrets.token_bytes,
        realm=REALM,
        credentials_for=SECRETS.get,
        relay_allocator=allocator,
        nonce_secret=b"n" * 32,
        **kwargs,  # type: ignore[arg-type]
    )
    return server, allocator


def rest_username(user: str = "alice", expiry: float = WALL + 3600) -> str:
    return f"{int(expiry)}:{user}"


class Client:
    """A TURN client: learns the nonce from a 401 and signs its requests."""

    def __init__(
        self,
        server: TurnServer,
        addr: tuple[str, int] = CLIENT,
        *,
        user: str = "alice",
        realm: str = REALM,
        expiry: float = WALL + 3600,
        password: str | None = None,
        sha256: bool = False,
        algorithm: int | None = None,
    ) -> None:
        self.server = server
        self.addr = addr
        self.username = rest_username(user, expiry)
        self.realm = realm
        self.password = password or rest_password(SECRETS.get(realm, b"?"), self.username)
        self.sha256 = sha256
        self.algorithm = algorithm
        self.nonce: str | None = None

    @property
    def key(self) -> bytes:
        alg = self.algorithm or m.PASSWORD_ALGORITHM_MD5
        return long_term_key(self.username, self.realm, self.password, alg)

    def build(
        self,
        method: int,
        attrs: tuple[m.Attribute, ...] = (),
        *,
        sign: bool = True,
        txid: bytes | None = None,
        fingerprint: bool = False,
    ) -> bytes:
        all_attrs = list(attrs)
        if sign:
            all_attrs += [m.Username(self.username), m.Realm(self.realm), m.Nonce(self.nonce or "")]
            if self.algorithm is not None:
                all_attrs.append(m.PasswordAlgorithm(self.algorithm))
        msg = Message(
            method, CLASS_REQUEST, txid or Message.new_transaction_id(secrets.token_bytes), tuple(all_attrs)
        )
        if not sign:
            return msg.serialize(fingerprint=fingerprint)
        if self.sha256:
            return msg.serialize(integrity_sha256_key=self.key, fingerprint=fingerprint)
        return msg.serialize(integrity_key=self.key, fingerprint=fingerprint)

    def raw(self, data: bytes, now: float = 0.0, wall: float = WALL) -> list[TurnAction]:
        # the adapter names the tenant realm (e.g. from SNI) for realms the edge knows
        hint = self.realm if self.realm in SECRETS else None
        return self.server.receive(data, self.addr, now, wall, realm=hint)

    def request(
        self,
        method: int,
        attrs: tuple[m.Attribute, ...] = (),
        now: float = 0.0,
        wall: float = WALL,
        **kwargs: object,
    ) -> tuple[Message, list[TurnAction]]:
        """Send a signed request (fetching a nonce first if needed); return the response and actions."""
        if self.nonce is None:
            self.fetch_nonce(now, wall)
        actions = self.raw(self.build(method, attrs, **kwargs), now, wall)  # type: ignore[arg-type]
        return response_of(actions, self.addr), actions

    def fetch_nonce(self, now: float = 0.0, wall: float = WALL) -> str:
        """Learn a nonce from the 401 to an unsigned Refresh."""
        challenge, _ = self.unsigned(METHOD_REFRESH, (), now, wall)
        nonce = challenge.get(m.Nonce)
        assert nonce is not None
        self.nonce = nonce.value
        return nonce.value

    def unsigned(
        self, method: int, attrs: tuple[m.Attribute, ...] = (), now: float = 0.0, wall: float = WALL
    ) -> tuple[Message, list[TurnAction]]:
        actions = self.raw(self.build(method, attrs, sign=False), now, wall)
        return response_of(actions, self.addr), actions

    def allocate(self, now: float = 0.0, wall: float = WALL, extra: tuple[m.Attribute, ...] = ()) -> Message:
        resp, _ = self.request(METHOD_ALLOCATE, (m.RequestedTransport(17), *extra), now, wall)
        return resp


def response_of(actions: list[TurnAction], addr: tuple[str, int]) -> Message:
    sends = [a for a in actions if isinstance(a, SendToClient)]
    assert len(sends) == 1, actions
    assert sends[0].client == addr
    return Message.parse(sends[0].data)


def code_of(msg: Message) -> int:
    assert msg.cls == CLASS_ERROR, msg
    error = msg.get(m.ErrorCode)
    assert error is not None
    return error.code


def allocated(
    server: TurnServer, client: Client | None = None, now: float = 0.0
) -> tuple[Client, tuple[str, int]]:
    client = client or Client(server)
    resp = client.allocate(now)
    assert resp.cls == CLASS_SUCCESS, resp
    relay = resp.get(m.XorRelayedAddress)
    assert relay is not None
    return client, relay.address


def permit(client: Client, *peers: tuple[str, int], now: float = 0.0) -> Message:
    attrs = tuple(m.XorPeerAddress(*p) for p in peers)
    return client.request(METHOD_CREATE_PERMISSION, attrs, now)[0]


def bind(client: Client, number: int, peer: tuple[str, int], now: float = 0.0) -> Message:
    return client.request(METHOD_CHANNEL_BIND, (m.ChannelNumber(number), m.XorPeerAddress(*peer)), now)[0]


# --- authentication -----------------------------------------------------------------------------


def test_binding_request_needs_no_auth() -> None:
    """A plain STUN Binding request is answered with the client's reflexive address."""
    server, _ = make_server()
    resp, _ = Client(server).unsigned(m.METHOD_BINDING)
    assert resp.cls == CLASS_SUCCESS
    assert resp.get(m.XorMappedAddress) == m.XorMappedAddress(*CLIENT)


def test_first_request_gets_401_with_realm_and_nonce() -> None:
    """An Allocate without credentials is challenged: 401, REALM, NONCE and no integrity."""
    server, allocator = make_server()
    resp, actions = Client(server).unsigned(METHOD_ALLOCATE, (m.RequestedTransport(17),))
    assert code_of(resp) == 401
    assert resp.get(m.Realm) == m.Realm(REALM)
    assert resp.get(m.Nonce) is not None
    assert resp.get(m.MessageIntegrity) is None
    assert allocator.calls == [] and len(actions) == 1
    assert server.counters.auth_challenges == 1


def test_challenge_realm_can_be_chosen_per_request() -> None:
    """The adapter may pass the tenant realm (e.g. from SNI) for the challenge."""
    server, _ = make_server()
    data = Client(server).build(METHOD_ALLOCATE, sign=False)
    resp = response_of(server.receive(data, CLIENT, 0.0, WALL, realm=OTHER_REALM), CLIENT)
    assert resp.get(m.Realm) == m.Realm(OTHER_REALM)


def test_allocate_success() -> None:
    """A signed Allocate creates the allocation: relayed and mapped address, lifetime, integrity."""
    server, allocator = make_server()
    client = Client(server)
    resp, actions = client.request(METHOD_ALLOCATE, (m.RequestedTransport(17),), now=5.0)
    assert resp.cls == CLASS_SUCCESS
    assert resp.get(m.XorRelayedAddress) == m.XorRelayedAddress("192.0.2.1", 49152)
    assert resp.get(m.XorMappedAddress) == m.XorMappedAddress(*CLIENT)
    assert resp.get(m.Lifetime) == m.Lifetime(600)
    send = next(a for a in actions if isinstance(a, SendToClient))
    assert parse_view(send.data).check_integrity(client.key)
    created = actions[0]
    assert created == AllocationCreated(CLIENT, ("192.0.2.1", 49152), REALM, client.username, 600.0)
    assert allocator.calls == [(REALM, 1, False)]
    info = server.allocation(CLIENT)
    assert info is not None and info.expires == 605.0 and info.tenant == REALM


def test_response_has_fingerprint_when_request_had_one() -> None:
    """Responses mirror the client's use of FINGERPRINT."""
    server, _ = make_server()
    client = Client(server)
    client.fetch_nonce()
    data = client.build(METHOD_ALLOCATE, (m.RequestedTransport(17),), fingerprint=True)
    send = client.raw(data)[-1]
    assert isinstance(send, SendToClient)
    view = parse_view(send.data)
    assert view.check_fingerprint() and view.check_integrity(client.key)


def test_integrity_sha256_is_accepted_and_mirrored() -> None:
    """A client using MESSAGE-INTEGRITY-SHA256 is verified and answered with it."""
    server, _ = make_server()
    client = Client(server, sha256=True)
    resp, actions = client.request(METHOD_ALLOCATE, (m.RequestedTransport(17),))
    assert resp.cls == CLASS_SUCCESS
    send = actions[-1]
    assert isinstance(send, SendToClient)
    view = parse_view(send.data)
    assert view.integrity_at < 0 and view.check_integrity_sha256(client.key)


def test_password_algorithm_sha256_key() -> None:
    """PASSWORD-ALGORITHM SHA-256 switches the long-term key to SHA-256(username:realm:password)."""
    server, _ = make_server()
    client = Client(server, algorithm=m.PASSWORD_ALGORITHM_SHA256)
    assert client.allocate().cls == CLASS_SUCCESS


def test_stale_nonce_is_438_and_a_fresh_nonce_works() -> None:
    """A nonce older than its lifetime gets 438 with a new nonce, which then succeeds."""
    server, _ = make_server(nonce_lifetime=600.0)
    client = Client(server)
    client.fetch_nonce(wall=WALL)  # nonce minted at WALL
    assert client.nonce is not None
    resp, _ = client.request(METHOD_ALLOCATE, (m.RequestedTransport(17),), wall=WALL + 599)
    assert resp.cls == CLASS_SUCCESS
    resp, _ = client.request(METHOD_REFRESH, (), wall=WALL + 601)
    assert code_of(resp) == 438
    assert resp.get(m.Realm) == m.Realm(REALM)
    fresh = resp.get(m.Nonce)
    assert fresh is not None and fresh.value != client.nonce
    assert resp.get(m.MessageIntegrity) is None
    client.nonce = fresh.value
    assert client.request(METHOD_REFRESH, (), wall=WALL + 601)[0].cls == CLASS_SUCCESS
    assert server.counters.stale_nonces == 1


@pytest.mark.parametrize(
    "nonce",
    ["", "garbage!", "AAAAAAAAAAAAAAAAAAAAAAAAAAAA", "A" * 40],
    ids=["empty", "not-base64", "forged", "long"],
)
def test_forged_nonce_is_438(nonce: str) -> None:
    """Nonces the server did not mint are stale."""
    server, _ = make_server()
    client = Client(server)
    client.nonce = nonce
    assert code_of(client.request(METHOD_ALLOCATE, (m.RequestedTransport(17),))[0]) == 438


def test_nonce_is_bound_to_client_ip() -> None:
    """A nonce minted for one client address is stale for another."""
    server, _ = make_server()
    first = Client(server)
    first.fetch_nonce()
    thief = Client(server, ("198.51.100.99", 1))
    thief.nonce = first.nonce
    assert code_of(thief.allocate()) == 438


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"expiry": WALL - 1}, 401),
        ({"expiry": WALL}, 401),
        ({"password": "wrong"}, 401),
        ({"realm": "unknown.example.com"}, 401),
    ],
    ids=["rest-expired", "rest-expires-now", "wrong-password", "unknown-realm"],
)
def test_bad_credentials_are_401(kwargs: dict[str, object], code: int) -> None:
    """Expired REST usernames, wrong passwords and unknown realms are refused with a new challenge."""
    server, allocator = make_server()
    client = Client(server, **kwargs)  # type: ignore[arg-type]
    client.nonce = server.make_nonce(client.realm, CLIENT[0], WALL)
    resp = client.allocate()
    assert code_of(resp) == code
    assert resp.get(m.Nonce) is not None and resp.get(m.Realm) is not None
    assert resp.get(m.MessageIntegrity) is None
    assert allocator.calls == []


def test_unknown_realm_challenge_names_listener_realm() -> None:
    """A request for a realm without credentials is challenged with the listener's realm."""
    server, _ = make_server()
    client = Client(server, realm="nobody.example.com")
    client.nonce = server.make_nonce(client.realm, CLIENT[0], WALL)
    assert client.allocate().get(m.Realm) == m.Realm(REALM)


def test_malformed_rest_username_is_401() -> None:
    """A username without a leading unix time is refused."""
    server, _ = make_server()
    client = Client(server)
    client.username = "alice"
    client.password = rest_password(SECRETS[REALM], "alice")
    client.nonce = server.make_nonce(REALM, CLIENT[0], WALL)
    assert code_of(client.allocate()) == 401


def test_integrity_without_username_is_400() -> None:
    """A signed request lacking USERNAME/REALM/NONCE is a 400."""
    server, _ = make_server()
    msg = Message(METHOD_ALLOCATE, CLASS_REQUEST, bytes(12), (m.RequestedTransport(17),))
    resp = response_of(server.receive(msg.serialize(integrity_key=b"k"), CLIENT, 0.0, WALL), CLIENT)
    assert code_of(resp) == 400


def test_tenant_credentials_do_not_cross() -> None:
    """A password derived from one tenant's secret does not authenticate in another realm."""
    server, _ = make_server()
    client = Client(server, realm=OTHER_REALM)
    client.password = rest_password(SECRETS[REALM], client.username)
    client.nonce = server.make_nonce(OTHER_REALM, CLIENT[0], WALL)
    assert code_of(client.allocate()) == 401
    good = Client(server, CLIENT2, realm=OTHER_REALM)
    assert good.allocate().cls == CLASS_SUCCESS
    info = server.allocation(CLIENT2)
    assert info is not None and info.tenant == OTHER_REALM


# --- Allocate errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attrs", "code"),
    [
        ((), 400),
        ((m.RequestedTransport(6),), 442),
        ((m.RequestedTransport(17), m.DontFragment()), 420),
        ((m.RequestedTransport(17), m.ReservationToken(b"12345678")), 508),
        ((m.RequestedTransport(17), m.ReservationToken(b"12345678"), m.EvenPort(False)), 400),
        ((m.RequestedTransport(17), m.RequestedAddressFamily(2)), 440),
        ((m.RequestedTransport(17), m.RequestedAddressFamily(7)), 440),
        ((m.RequestedTransport(17), m.UnknownAttribute(0x7ABC, b"")), 420),
    ],
    ids=[
        "no-transport",
        "tcp",
        "dont-fragment",
        "reservation",
        "reservation+even",
        "ipv6",
        "bad-family",
        "unknown",
    ],
)
def test_allocate_errors(attrs: tuple[m.Attribute, ...], code: int) -> None:
    """Each Allocate error of RFC 8656 s.7.2 is answered with its code, authenticated."""
    server, allocator = make_server()
    client = Client(server)
    resp, actions = client.request(METHOD_ALLOCATE, attrs)
    assert code_of(resp) == code
    send = actions[-1]
    assert isinstance(send, SendToClient)
    assert parse_view(send.data).check_integrity(client.key)
    assert allocator.in_use == set() and len(server) == 0
    if code == 420:
        unknown = resp.get(m.UnknownAttributes)
        assert unknown is not None and len(unknown.types) == 1


def test_ipv6_allocation_when_enabled() -> None:
    """With IPv6 enabled REQUESTED-ADDRESS-FAMILY 2 gets an IPv6 relay."""
    server, _ = make_server(families=frozenset({1, 2}))
    resp = Client(server).allocate(extra=(m.RequestedAddressFamily(2),))
    assert resp.get(m.XorRelayedAddress) == m.XorRelayedAddress("2001:db8::1", 49152)


def test_even_port_is_passed_to_allocator() -> None:
    """EVEN-PORT asks the allocator for an even port."""
    server, allocator = make_server()
    Client(server).allocate(extra=(m.EvenPort(False),))
    assert allocator.calls[-1] == (REALM, 1, True)


def test_allocate_retransmission_gets_same_response() -> None:
    """A retransmitted Allocate (same transaction id) gets the cached response, no new relay."""
    server, allocator = make_server()
    client = Client(server)
    client.fetch_nonce()
    data = client.build(METHOD_ALLOCATE, (m.RequestedTransport(17),))
    first = client.raw(data)
    second = client.raw(data)
    assert isinstance(first[-1], SendToClient) and second == [first[-1]]
    assert len(allocator.calls) == 1


def test_second_allocate_is_437() -> None:
    """A new Allocate on a 5-tuple that has an allocation is an Allocation Mismatch."""
    server, _ = make_server()
    client, _ = allocated(server)
    assert code_of(client.allocate()) == 437


def test_user_quota_is_486() -> None:
    """The per-user quota (REST user part, any expiry) refuses one allocation too many."""
    server, _ = make_server(quota_for=lambda realm: TurnQuota(per_user=2, per_tenant=100))
    allocated(server, Client(server, ("198.51.100.1", 1)))
    allocated(server, Client(server, ("198.51.100.2", 1), expiry=WALL + 7200))
    assert code_of(Client(server, ("198.51.100.3", 1)).allocate()) == 486
    assert Client(server, ("198.51.100.4", 1), user="bob").allocate().cls == CLASS_SUCCESS
    assert server.counters.quota_refusals == 1


def test_tenant_quota_is_486_and_freed_on_delete() -> None:
    """The per-tenant quota counts every user of the realm and frees up on deletion."""
    quotas = {REALM: TurnQuota(per_user=10, per_tenant=1), OTHER_REALM: TurnQuota()}
    server, _ = make_server(quota_for=quotas.__getitem__)
    first, _ = allocated(server, Client(server, ("198.51.100.1", 1), user="a"))
    assert code_of(Client(server, ("198.51.100.2", 1), user="b").allocate()) == 486
    assert Client(server, ("198.51.100.3", 1), realm=OTHER_REALM).allocate().cls == CLASS_SUCCESS
    first.request(METHOD_REFRESH, (m.Lifetime(0),))
    assert Client(server, ("198.51.100.2", 1), user="b").allocate().cls == CLASS_SUCCESS


def test_relay_exhaustion_is_508() -> None:
    """When the relay allocator has no port the answer is 508 Insufficient Capacity."""
    server, _ = make_server(pool=1)
    allocated(server)
    assert code_of(Client(server, CLIENT2).allocate()) == 508


@pytest.mark.parametrize(("requested", "granted"), [(None, 600), (100, 600), (1200, 1200), (5000, 3600)])
def test_lifetime_is_clamped(requested: int | None, granted: int) -> None:
    """Granted lifetime = max(default, min(requested, max))."""
    server, _ = make_server()
    extra = () if requested is None else (m.Lifetime(requested),)
    assert Client(server).allocate(extra=extra).get(m.Lifetime) == m.Lifetime(granted)


# --- Refresh and lifetimes ----------------------------------------------------------------------


def test_refresh_without_allocation_is_437() -> None:
    """Refresh, CreatePermission and ChannelBind need an allocation."""
    server, _ = make_server()
    client = Client(server)
    assert code_of(client.request(METHOD_REFRESH)[0]) == 437
    assert code_of(permit(client, PEER)) == 437
    assert code_of(bind(client, 0x4000, PEER)) == 437


def test_refresh_with_other_credentials_is_441() -> None:
    """Requests on an allocation with another username are Wrong Credentials."""
    server, _ = make_server()
    allocated(server)
    other = Client(server, user="mallory")
    assert code_of(other.request(METHOD_REFRESH)[0]) == 441
    assert code_of(permit(other, PEER)) == 441


def test_refresh_extends_and_lifetime_zero_deletes() -> None:
    """Refresh moves the expiry; LIFETIME 0 deletes the allocation and releases the relay."""
    server, allocator = make_server()
    client, relay = allocated(server, now=0.0)
    resp, _ = client.request(METHOD_REFRESH, (m.Lifetime(1800),), now=500.0)
    assert resp.get(m.Lifetime) == m.Lifetime(1800)
    info = server.allocation(CLIENT)
    assert info is not None and info.expires == 2300.0
    resp, actions = client.request(METHOD_REFRESH, (m.Lifetime(0),), now=501.0)
    assert resp.cls == CLASS_SUCCESS and resp.get(m.Lifetime) == m.Lifetime(0)
    assert AllocationDeleted(CLIENT, relay, REALM, "refresh") in actions
    assert allocator.released == [relay]
    assert server.allocation(CLIENT) is None
    assert server.get_timer() is None


def test_refresh_family_mismatch_is_443() -> None:
    """A Refresh naming another address family than the allocation's is 443."""
    server, _ = make_server()
    client, _ = allocated(server)
    assert code_of(client.request(METHOD_REFRESH, (m.RequestedAddressFamily(2),))[0]) == 443


def test_allocation_expires_in_virtual_time() -> None:
    """Without Refresh the allocation expires at its lifetime: AllocationDeleted and release."""
    server, allocator = make_server()
    _, relay = allocated(server, now=10.0)
    assert server.get_timer() == 610.0
    assert server.handle_timer(609.9) == []
    assert server.handle_timer(610.0) == [AllocationDeleted(CLIENT, relay, REALM, "expired")]
    assert allocator.released == [relay] and len(server) == 0
    assert server.get_timer() is None


def test_refresh_postpones_expiry() -> None:
    """After a Refresh the old deadline passes harmlessly and the new one deletes."""
    server, _ = make_server()
    client, _ = allocated(server, now=0.0)
    client.request(METHOD_REFRESH, (), now=300.0)
    assert server.handle_timer(600.0) == []
    assert server.get_timer() == 900.0
    assert [type(a) for a in server.handle_timer(900.0)] == [AllocationDeleted]


def test_permission_and_channel_lifetimes() -> None:
    """Permissions last 300 s and channels 600 s, each refreshed by its own request."""
    server, _ = make_server()
    client, _ = allocated(server, now=0.0)
    client.request(METHOD_REFRESH, (m.Lifetime(3600),), now=0.0)
    assert permit(client, PEER, now=0.0).cls == CLASS_SUCCESS
    assert bind(client, 0x4000, PEER2, now=100.0).cls == CLASS_SUCCESS
    assert server.get_timer() == 300.0
    server.handle_timer(300.0)
    info = server.allocation(CLIENT)
    assert info is not None
    assert set(info.permissions) == {PEER2[0]} and info.permissions[PEER2[0]] == 400.0
    server.handle_timer(400.0)
    info = server.allocation(CLIENT)
    assert info is not None and info.permissions == {} and info.channels == {0x4000: PEER2}
    server.handle_timer(700.0)
    info = server.allocation(CLIENT)
    assert info is not None and info.channels == {}


# --- CreatePermission / ChannelBind -------------------------------------------------------------


def test_create_permission_success_and_missing_peer() -> None:
    """CreatePermission installs permissions for each peer IP; without XOR-PEER-ADDRESS it is 400."""
    server, _ = make_server()
    client, _ = allocated(server)
    assert permit(client, PEER, PEER2, now=1.0).cls == CLASS_SUCCESS
    info = server.allocation(CLIENT)
    assert info is not None and info.permissions == {PEER[0]: 301.0, PEER2[0]: 301.0}
    assert code_of(permit(client)) == 400


FORBIDDEN = [
    ("127.0.0.1", 1),
    ("10.0.0.1", 5060),
    ("10.255.1.2", 9),
    ("192.168.1.1", 80),
    ("192.168.200.3", 80),
    ("172.16.5.5", 80),
    ("100.64.0.1", 80),
    ("169.254.169.254", 80),
    ("224.0.0.1", 80),
    ("0.0.0.0", 80),
]


@pytest.mark.parametrize("peer", FORBIDDEN, ids=lambda p: p[0])
def test_forbidden_peers_are_403(peer: tuple[str, int]) -> None:
    """Peers in loopback/private/CGNAT/link-local/multicast ranges are Forbidden."""
    server, _ = make_server()
    client, _ = allocated(server)
    assert code_of(permit(client, peer)) == 403
    assert code_of(bind(client, 0x4000, peer)) == 403
    info = server.allocation(CLIENT)
    assert info is not None and info.permissions == {} and info.channels == {}
    assert server.counters.forbidden_peers == 2


@pytest.mark.parametrize("peer", [("::1", 1), ("fe80::1", 1), ("fd00::1", 1)], ids=lambda p: p[0])
def test_forbidden_ipv6_peers_are_403(peer: tuple[str, int]) -> None:
    """IPv6 loopback, link-local and ULA peers are Forbidden on an IPv6 allocation."""
    server, _ = make_server(families=frozenset({1, 2}))
    client = Client(server)
    assert client.allocate(extra=(m.RequestedAddressFamily(2),)).cls == CLASS_SUCCESS
    assert code_of(permit(client, peer)) == 403
    assert permit(client, ("2001:db8::99", 1)).cls == CLASS_SUCCESS


def test_one_forbidden_peer_refuses_the_whole_request() -> None:
    """CreatePermission is all or nothing."""
    server, _ = make_server()
    client, _ = allocated(server)
    assert code_of(permit(client, PEER, ("10.0.0.1", 1))) == 403
    info = server.allocation(CLIENT)
    assert info is not None and info.permissions == {}


def test_allow_listed_network_is_permitted() -> None:
    """A tenant allow-list lets that tenant reach a private network; others stay refused."""
    policy = PeerPolicy(tenant_allow_networks={REALM: ["10.1.2.0/24"]}, own_addresses=["203.0.113.1"])
    server, _ = make_server(peer_allowed=policy)
    client, _ = allocated(server)
    assert permit(client, ("10.1.2.3", 5060)).cls == CLASS_SUCCESS
    assert code_of(permit(client, ("10.1.3.3", 5060))) == 403
    assert code_of(permit(client, ("203.0.113.1", 3478))) == 403
    other = Client(server, CLIENT2, realm=OTHER_REALM)
    allocated(server, other)
    assert code_of(permit(other, ("10.1.2.3", 5060))) == 403


def test_peer_family_mismatch_is_443() -> None:
    """An IPv6 peer on an IPv4 allocation is 443 Peer Address Family Mismatch."""
    server, _ = make_server()
    client, _ = allocated(server)
    assert code_of(permit(client, ("2001:db8::5", 1))) == 443
    assert code_of(bind(client, 0x4000, ("2001:db8::5", 1))) == 443


@pytest.mark.parametrize("number", [0x3FFF, 0x5000, 0x7FFF, 0])
def test_channel_number_out_of_range_is_400(number: int) -> None:
    """Channel numbers must be 0x4000..0x4FFF."""
    server, _ = make_server()
    client, _ = allocated(server)
    assert code_of(bind(client, number, PEER)) == 400


def test_channel_bind_missing_attributes_is_400() -> None:
    """ChannelBind needs CHANNEL-NUMBER and XOR-PEER-ADDRESS."""
    server, _ = make_server()
    client, _ = allocated(server)
    assert code_of(client.request(METHOD_CHANNEL_BIND, (m.ChannelNumber(0x4000),))[0]) == 400
    assert code_of(client.request(METHOD_CHANNEL_BIND, (m.XorPeerAddress(*PEER),))[0]) == 400


def test_channel_rebinding_rules() -> None:
    """A bound number cannot move to another peer, nor a peer to another number; refresh is fine."""
    server, _ = make_server()
    client, _ = allocated(server)
    assert bind(client, 0x4000, PEER).cls == CLASS_SUCCESS
    assert bind(client, 0x4000, PEER).cls == CLASS_SUCCESS  # refresh
    assert code_of(bind(client, 0x4000, PEER2)) == 400
    assert code_of(bind(client, 0x4001, PEER)) == 400
    assert bind(client, 0x4001, PEER2).cls == CLASS_SUCCESS
    info = server.allocation(CLIENT)
    assert info is not None and info.channels == {0x4000: PEER, 0x4001: PEER2}
    assert set(info.permissions) == {PEER[0], PEER2[0]}


def test_expired_channel_can_be_rebound() -> None:
    """After a channel expired its number may be bound to another peer."""
    server, _ = make_server()
    client, _ = allocated(server)
    client.request(METHOD_REFRESH, (m.Lifetime(3600),))
    bind(client, 0x4000, PEER, now=0.0)
    assert bind(client, 0x4000, PEER2, now=600.0).cls == CLASS_SUCCESS
    info = server.allocation(CLIENT)
    assert info is not None and info.channels == {0x4000: PEER2}


# --- data relay ---------------------------------------------------------------------------------


def send_indication(peer: tuple[str, int], data: bytes, *, extra: tuple[m.Attribute, ...] = ()) -> bytes:
    attrs = (m.XorPeerAddress(*peer), m.Data(data), *extra)
    return bytes(
        Message(METHOD_SEND, CLASS_INDICATION, Message.new_transaction_id(secrets.token_bytes), attrs)
    )


def test_send_indication_needs_permission() -> None:
    """Send indications reach the peer only with a permission; otherwise they are dropped."""
    server, _ = make_server()
    client, relay = allocated(server)
    assert client.raw(send_indication(PEER, b"hi")) == []
    assert server.counters.dropped_no_permission == 1
    permit(client, PEER)
    assert client.raw(send_indication(PEER, b"hi")) == [SendToPeer(relay, PEER, b"hi")]
    # the permission is per IP: another port of the same peer is fine
    assert client.raw(send_indication((PEER[0], 7), b"x")) == [SendToPeer(relay, (PEER[0], 7), b"x")]


@pytest.mark.parametrize(
    "data",
    [
        bytes(Message(METHOD_SEND, CLASS_INDICATION, bytes(12), (m.Data(b"x"),))),
        bytes(Message(METHOD_SEND, CLASS_INDICATION, bytes(12), (m.XorPeerAddress(*PEER),))),
        send_indication(PEER, b"x", extra=(m.DontFragment(),)),
        bytes(Message(m.METHOD_DATA, CLASS_INDICATION, bytes(12), ())),
        bytes(Message(METHOD_SEND, CLASS_INDICATION, bytes(12), (m.UnknownAttribute(0x12, b"\x00\x09"),))),
    ],
    ids=["no-peer", "no-data", "dont-fragment", "data-from-client", "bad-peer"],
)
def test_bad_indications_are_dropped(data: bytes) -> None:
    """Malformed indications are never answered."""
    server, _ = make_server()
    client, _ = allocated(server)
    permit(client, PEER)
    assert client.raw(data) == []


def test_send_without_allocation_is_dropped() -> None:
    """A Send indication from a client without an allocation is dropped and counted."""
    server, _ = make_server()
    assert server.receive(send_indication(PEER, b"x"), CLIENT, 0.0, WALL) == []
    assert server.counters.dropped_no_allocation == 1


def test_channel_data_to_peer() -> None:
    """ChannelData on a bound channel becomes a datagram from the relay to the peer."""
    server, _ = make_server()
    client, relay = allocated(server)
    bind(client, 0x4000, PEER)
    assert client.raw(pack_channel_data(0x4000, b"media")) == [SendToPeer(relay, PEER, b"media")]
    # UDP padding is tolerated
    assert server.relay_channel_data(b"\x40\x00\x00\x01x\x00\x00\x00", CLIENT, 0.0) == SendToPeer(
        relay, PEER, b"x"
    )


def test_channel_data_drops() -> None:
    """Unbound channels, truncated frames, unknown clients and expired permissions are dropped."""
    server, _ = make_server()
    client, _ = allocated(server)
    client.request(METHOD_REFRESH, (m.Lifetime(3600),))
    bind(client, 0x4000, PEER, now=0.0)
    assert server.relay_channel_data(pack_channel_data(0x4001, b"x"), CLIENT, 1.0) is None
    assert server.relay_channel_data(b"\x40\x00\x00\x09abc", CLIENT, 1.0) is None
    assert server.relay_channel_data(b"\x40\x00", CLIENT, 1.0) is None
    assert server.relay_channel_data(pack_channel_data(0x4000, b"x"), CLIENT2, 1.0) is None
    # the permission (300 s) lapses before the channel (600 s)
    assert server.relay_channel_data(pack_channel_data(0x4000, b"x"), CLIENT, 300.0) is None
    c = server.counters
    assert (c.dropped_no_channel, c.dropped_malformed, c.dropped_no_allocation) == (1, 2, 1)
    assert c.dropped_no_permission == 1
    # a CreatePermission restores the flow over the same channel
    permit(client, PEER, now=310.0)
    server.handle_timer(310.0)
    assert server.relay_channel_data(pack_channel_data(0x4000, b"x"), CLIENT, 311.0) is not None


def test_peer_data_becomes_channel_data_or_data_indication() -> None:
    """Peer datagrams go to the client as ChannelData when bound, else as a Data indication."""
    server, _ = make_server()
    client, relay = allocated(server)
    bind(client, 0x4000, PEER)
    permit(client, PEER2)
    to_client = server.receive_from_peer(relay, PEER, b"abcde", 1.0)
    assert to_client == SendToClient(CLIENT, b"\x40\x00\x00\x05abcde")
    indication = server.receive_from_peer(relay, PEER2, b"xyz", 1.0)
    assert indication is not None and indication.client == CLIENT
    msg = Message.parse(indication.data)
    assert (msg.method, msg.cls) == (m.METHOD_DATA, CLASS_INDICATION)
    assert msg.get(m.XorPeerAddress) == m.XorPeerAddress(*PEER2)
    assert msg.get(m.Data) == m.Data(b"xyz")


def test_peer_data_ipv6_data_indication() -> None:
    """Data indications carry IPv6 peer addresses too."""
    server, _ = make_server(families=frozenset({1, 2}))
    client = Client(server)
    resp = client.allocate(extra=(m.RequestedAddressFamily(2),))
    relay = resp.get(m.XorRelayedAddress)
    assert relay is not None
    permit(client, ("2001:db8::77", 9))
    out = server.receive_from_peer(relay.address, ("2001:db8::77", 9), b"v6", 1.0)
    assert out is not None
    assert Message.parse(out.data).get(m.XorPeerAddress) == m.XorPeerAddress("2001:db8::77", 9)


def test_peer_data_without_permission_is_dropped() -> None:
    """Datagrams from peers without a permission, or to unknown relays, are dropped and counted."""
    server, _ = make_server()
    client, relay = allocated(server)
    assert server.receive_from_peer(relay, PEER, b"x", 1.0) is None
    assert server.receive_from_peer(("192.0.2.1", 1), PEER, b"x", 1.0) is None
    permit(client, PEER, now=0.0)
    assert server.receive_from_peer(relay, PEER, b"x", 300.0) is None
    assert server.counters.dropped_no_permission == 2
    assert server.counters.dropped_no_allocation == 1


def test_stream_listener_pads_channel_data() -> None:
    """On TCP/TLS listeners ChannelData to the client is padded to 4 bytes."""
    server, _ = make_server(stream=True)
    client, relay = allocated(server)
    bind(client, 0x4000, PEER)
    out = server.receive_from_peer(relay, PEER, b"abcde", 1.0)
    assert out is not None and out.data == b"\x40\x00\x00\x05abcde\x00\x00\x00"
    assert unpack_channel_data(out.data) == (0x4000, b"abcde")


# --- misc ---------------------------------------------------------------------------------------


def test_unknown_method_request_is_400() -> None:
    """A request of an unknown method is answered 400."""
    server, _ = make_server()
    data = bytes(Message(0x0ABC, CLASS_REQUEST, bytes(12), ()))
    assert code_of(response_of(server.receive(data, CLIENT, 0.0, WALL), CLIENT)) == 400


def test_malformed_request_is_400_and_garbage_dropped() -> None:
    """A request with a broken attribute gets 400; non-STUN and responses are dropped."""
    server, _ = make_server()
    data = bytearray(bytes(Message(METHOD_ALLOCATE, CLASS_REQUEST, bytes(12), (m.Lifetime(1),))))
    data[22:24] = b"\x00\x09"
    assert code_of(response_of(server.receive(bytes(data), CLIENT, 0.0, WALL), CLIENT)) == 400
    bad_value = bytes(
        Message(METHOD_ALLOCATE, CLASS_REQUEST, bytes(12), (m.UnknownAttribute(0x000D, b"\x01"),))
    )
    assert code_of(response_of(server.receive(bad_value, CLIENT, 0.0, WALL), CLIENT)) == 400
    assert server.receive(b"", CLIENT, 0.0, WALL) == []
    assert server.receive(b"\x80" * 40, CLIENT, 0.0, WALL) == []
    response = bytes(Message(METHOD_ALLOCATE, CLASS_SUCCESS, bytes(12), ()))
    assert server.receive(response, CLIENT, 0.0, WALL) == []


def test_client_gone_and_close_release_everything() -> None:
    """Connection loss deletes one allocation; close() deletes the rest; every relay is released."""
    server, allocator = make_server()
    _, relay1 = allocated(server, Client(server, CLIENT))
    _, relay2 = allocated(server, Client(server, CLIENT2, user="bob"))
    assert server.client_gone(CLIENT) == [AllocationDeleted(CLIENT, relay1, REALM, "client_gone")]
    assert server.client_gone(CLIENT) == []
    assert server.close() == [AllocationDeleted(CLIENT2, relay2, REALM, "shutdown")]
    assert allocator.in_use == set() and sorted(allocator.released) == sorted([relay1, relay2])
    assert server.get_timer() is None and server.handle_timer(10_000.0) == []
    assert server.counters.as_dict()["allocations_deleted"] == 2


def test_software_attribute_is_sent_when_configured() -> None:
    """A configured SOFTWARE name appears in responses."""
    server, _ = make_server(software="mcs_edge")
    resp, _ = Client(server).unsigned(m.METHOD_BINDING)
    assert resp.get(m.Software) == m.Software("mcs_edge")


def test_bad_lifetime_configuration_is_refused() -> None:
    """default_lifetime must not exceed max_lifetime."""
    with pytest.raises(LocalProtocolError):
        make_server(default_lifetime=7200.0)


def test_nonce_is_bound_to_realm_and_438_names_the_right_one() -> None:
    """A nonce from the listener realm used with another known realm gets 438 for that realm; the retry works."""
    server, _ = make_server()
    client = Client(server, realm=OTHER_REALM)
    challenge = response_of(
        server.receive(client.build(METHOD_REFRESH, sign=False), CLIENT, 0.0, WALL), CLIENT
    )
    assert challenge.get(m.Realm) == m.Realm(REALM)
    nonce = challenge.get(m.Nonce)
    assert nonce is not None
    client.nonce = nonce.value
    data = client.build(METHOD_ALLOCATE, (m.RequestedTransport(17),))
    stale = response_of(server.receive(data, CLIENT, 0.0, WALL), CLIENT)
    assert code_of(stale) == 438 and stale.get(m.Realm) == m.Realm(OTHER_REALM)
    fresh = stale.get(m.Nonce)
    assert fresh is not None
    client.nonce = fresh.value
    data = client.build(METHOD_ALLOCATE, (m.RequestedTransport(17),))
    assert response_of(server.receive(data, CLIENT, 0.0, WALL), CLIENT).cls == CLASS_SUCCESS


def test_expired_channel_falls_back_to_data_indication() -> None:
    """Once a channel expires, peer data (with a live permission) arrives as a Data indication."""
    server, _ = make_server()
    client, relay = allocated(server)
    client.request(METHOD_REFRESH, (m.Lifetime(3600),))
    bind(client, 0x4000, PEER, now=0.0)
    permit(client, PEER, now=500.0)
    out = server.receive_from_peer(relay, PEER, b"late", 650.0)
    assert out is not None and out.data[0] == 0x00
    assert Message.parse(out.data).get(m.Data) == m.Data(b"late")


def test_timer_heap_stays_small_under_refreshes() -> None:
    """Refreshing permissions and lifetimes does not grow the timer heap."""
    server, _ = make_server()
    client, _ = allocated(server)
    for t in range(0, 3000, 60):
        client.request(METHOD_REFRESH, (), now=float(t))
        permit(client, PEER, now=float(t))
        server.handle_timer(float(t))
    assert len(server._heap) <= 2
    assert server.allocation(CLIENT) is not None


# --- tenant lookup by username, tenant binding -------------------------------------------------

TENANT_SECRETS = {"rossi": b"rossi-secret", "bianchi": b"bianchi-secret"}


def _suffix_lookup(realm: str, username: str) -> tuple[str, bytes] | None:
    """Test lookup: the tenant is the ``@tenant`` suffix of the REST user part; any realm."""
    tenant = username.rpartition("@")[2]
    secret = TENANT_SECRETS.get(tenant)
    return None if secret is None else (tenant, secret)


def _lookup_server(**kwargs: object) -> tuple[TurnServer, FakeAllocator]:
    allocator = FakeAllocator()
    server = TurnServer(
        random_bytes=secrets.token_bytes,
        realm="edge.example.net",
        lookup=_suffix_lookup,
        relay_allocator=allocator,
        nonce_secret=b"n" * 32,
        **kwargs,  # type: ignore[arg-type]
    )
    return server, allocator


class LookupClient(Client):
    """A client whose password comes from its tenant's secret, sending to a listener realm."""

    def __init__(self, server: TurnServer, addr: tuple[str, int], user: str, tenant_hint: str | None = None):
        super().__init__(server, addr, user=user, realm="edge.example.net")
        self.password = rest_password(TENANT_SECRETS.get(user.rpartition("@")[2], b"?"), self.username)
        self.tenant_hint = tenant_hint

    def raw(self, data: bytes, now: float = 0.0, wall: float = WALL) -> list[TurnAction]:
        return self.server.receive(data, self.addr, now, wall, tenant=self.tenant_hint)


def test_lookup_names_the_tenant_from_the_username() -> None:
    """With ``lookup``, the tenant comes from the credentials: it is reported, counted and checked per tenant."""
    seen: list[str] = []
    server, allocator = _lookup_server(
        quota_for=lambda t: seen.append(t) or TurnQuota(per_user=5, per_tenant=1),
        peer_allowed=lambda tenant, ip: tenant == "rossi",
    )
    alice = LookupClient(server, CLIENT, "alice@rossi")
    resp, actions = alice.request(METHOD_ALLOCATE, (m.RequestedTransport(17),))
    assert resp.cls == CLASS_SUCCESS
    created = [a for a in actions if isinstance(a, AllocationCreated)]
    assert created[0].tenant == "rossi" and allocator.calls[0][0] == "rossi" and seen == ["rossi"]
    info = server.allocation(CLIENT)
    assert info is not None and info.tenant == "rossi" and info.realm == "edge.example.net"
    assert permit(alice, PEER).cls == CLASS_SUCCESS
    bob = LookupClient(server, CLIENT2, "bob@bianchi")
    assert bob.request(METHOD_ALLOCATE, (m.RequestedTransport(17),))[0].cls == CLASS_SUCCESS
    assert code_of(permit(bob, PEER)) == 403  # peer policy asked for tenant bianchi
    carol = LookupClient(server, ("198.51.100.12", 1), "carol@rossi")
    assert code_of(carol.request(METHOD_ALLOCATE, (m.RequestedTransport(17),))[0]) == 486


def test_unknown_tenant_in_username_is_401() -> None:
    """A username naming no tenant gets a 401 challenge."""
    server, _ = _lookup_server()
    mallory = LookupClient(server, CLIENT, "mallory@nobody")
    assert code_of(mallory.request(METHOD_ALLOCATE, (m.RequestedTransport(17),))[0]) == 401
    assert server.counters.auth_failures == 1


def test_bound_tenant_refuses_other_tenants_credentials() -> None:
    """A connection bound to tenant rossi (SNI) cannot authenticate with bianchi's credentials."""
    server, _ = _lookup_server()
    bob = LookupClient(server, CLIENT, "bob@bianchi", tenant_hint="rossi")
    resp = bob.request(METHOD_ALLOCATE, (m.RequestedTransport(17),))[0]
    assert code_of(resp) == 401 and len(server) == 0
    alice = LookupClient(server, CLIENT2, "alice@rossi", tenant_hint="rossi")
    assert alice.request(METHOD_ALLOCATE, (m.RequestedTransport(17),))[0].cls == CLASS_SUCCESS


def test_server_needs_a_credential_source() -> None:
    """Neither credentials_for nor lookup: our misuse, refused at construction."""
    with pytest.raises(LocalProtocolError):
        TurnServer(realm="x", relay_allocator=FakeAllocator(), random_bytes=secrets.token_bytes)


def test_legacy_channel_range_when_enabled() -> None:
    """channel_max=0x7FFF (RFC 5766 clients such as coturn's): 0x7474 binds and its ChannelData relays."""
    from mcs_edge.core.stun.channel_data import LEGACY_CHANNEL_MAX

    server, _ = make_server(channel_max=LEGACY_CHANNEL_MAX)
    client, relay = allocated(server)
    assert bind(client, 0x7474, PEER).cls == CLASS_SUCCESS
    assert code_of(bind(client, 0x8000, PEER2)) == 400
    actions = client.raw(pack_channel_data(0x7474, b"hello"))
    assert actions == [SendToPeer(relay, PEER, b"hello")]
    back = server.receive_from_peer(relay, PEER, b"pong", 1.0)
    assert back is not None and back.data == b"\x74\x74\x00\x04pong"


def test_channel_max_must_be_a_known_range() -> None:
    """Only the RFC 8656 and RFC 5766 ranges are accepted."""
    with pytest.raises(LocalProtocolError):
        make_server(channel_max=0x6000)


def test_hot_path_tuples_and_attached_handle() -> None:
    """channel_data/peer_data return plain tuples; attach() makes channel_data name the adapter's handle."""
    server, _ = make_server()
    client, relay = allocated(server)
    assert bind(client, 0x4001, PEER).cls == CLASS_SUCCESS
    frame = pack_channel_data(0x4001, b"abc")
    assert server.channel_data(frame, CLIENT, 1.0) == (relay, PEER, b"abc")
    handle = object()
    assert server.attach(relay, handle) is True
    assert server.attach(("192.0.2.9", 1), handle) is False
    hit = server.channel_data(frame, CLIENT, 1.0)
    assert hit is not None and hit[0] is handle
    assert server.relay_channel_data(frame, CLIENT, 1.0) == SendToPeer(relay, PEER, b"abc")
    assert server.peer_data(relay, PEER, b"xyz", 1.0) == (CLIENT, pack_channel_data(0x4001, b"xyz"))
    assert server.peer_data(relay, ("203.0.113.99", 1), b"xyz", 1.0) is None
    assert server.channel_data(frame, CLIENT2, 1.0) is None
