"""TURN adapters on real loopback sockets: UDP, TCP, TLS (shared HTTPS port and dedicated), policy,
policing, release of every relay, the ice-servers endpoint, and the pure pieces (policy, front)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from helpers.edge import edge_toml, tenant_toml
from helpers.turnclient import TurnClient, TurnError
from twisted.internet import threads
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.policies import WrappingFactory

from mcs_edge import config as c
from mcs_edge.core.stun.turn import rest_password
from mcs_edge.tx.relay_endpoint import asyncio_loop_of
from mcs_edge.tx.service import EdgeService
from mcs_edge.tx.timers import Timers
from mcs_edge.tx.tls.front import TlsFrontFactory
from mcs_edge.tx.turn.server import TurnPolicy, turn_username

ROSSI_SECRET = "rossi-turn-secret-0123"
BIANCHI_SECRET = "bianchi-turn-secret-0123"
API_SECRET = "rossi-api-secret-0123456"
PEER_IP = "127.0.0.2"


def _config(
    tmp: Path, extra: str = "", rossi_extra: str = "", media: tuple[int, int] = (31000, 31999)
) -> c.EdgeConfig:
    tenants = tenant_toml(
        "rossi",
        5080,
        keys=f'turn_secret = "{ROSSI_SECRET}"\nturn_peers = ["127.0.0.0/8"]\napi_secret = "{API_SECRET}"\n',
        tail=rossi_extra,
    ) + tenant_toml("bianchi", 5080, keys=f'turn_secret = "{BIANCHI_SECRET}"\n')
    text = edge_toml(
        tmp / "state",
        tenants,
        edge='public_address = "127.0.0.1"\n',
        listen='turn = "127.0.0.1:0"\nturns = "127.0.0.1:0"\n',
        media=media,
        media_bind=None,
        media_keys=extra,
    )
    return c.loads(text)


class Edge:
    """An in-process edge with every TURN listener on an ephemeral loopback port."""

    def __init__(
        self, tmp: Path, extra: str = "", rossi_extra: str = "", media: tuple[int, int] = (31000, 31999)
    ) -> None:
        from twisted.internet import reactor

        self.tmp = tmp
        self.service = EdgeService(_config(tmp, extra, rossi_extra, media), reactor)
        self.service.privilegedStartService()
        self.service.startService()
        assert self.service.turn is not None
        self.turn = self.service.turn
        ports = self.turn.ports
        self.udp = ("127.0.0.1", ports["turn_udp"])
        self.tcp = ("127.0.0.1", ports["turn_tcp"])
        self.turns = ("127.0.0.1", ports["turns"])
        self.https = ("127.0.0.1", self.service.ports["https"].getHost().port)
        self.ca = str(tmp / "state" / "dev-ca" / "ca.pem")

    def creds(self, user: str = "alice", tenant: str = "rossi", ttl: int = 3600) -> tuple[str, str]:
        secret = ROSSI_SECRET if tenant == "rossi" else BIANCHI_SECRET
        username = turn_username(int(time.time()) + ttl, user, tenant)
        return username, rest_password(secret.encode(), username)

    def client(self, kind: str = "udp", user: str = "alice", tenant: str = "rossi", **kw: Any) -> TurnClient:
        addr = {"udp": self.udp, "tcp": self.tcp, "tls": self.turns, "https": self.https}[kind]
        username, password = kw.pop("creds", None) or self.creds(user, tenant)
        if kind in ("tls", "https"):
            kw.setdefault("server_hostname", "rossi.example.com")
            kw.setdefault("cafile", self.ca)
        return TurnClient("tls" if kind == "https" else kind, addr, username, password, **kw)

    def stop(self) -> Any:
        return self.service.stopService()


@pytest.fixture
def edge(tmp_path: Path):  # type: ignore[no-untyped-def]
    e = Edge(tmp_path)
    yield e
    if e.service.running:
        pytest_twisted.blockon(e.stop())


def _peer_socket(ip: str = PEER_IP) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((ip, 0))
    sock.settimeout(3)
    return sock


def _relay_round_trip(client: TurnClient, number: int = 0x4001) -> dict[str, Any]:
    """Allocate, permit and bind a peer, relay both ways with ChannelData and Send/Data indications."""
    peer = _peer_socket()
    try:
        relay = client.allocate()
        peer_addr = peer.getsockname()
        assert client.bind(number, peer_addr) == 0
        client.send_channel(number, b"hello peer")
        data, src = peer.recvfrom(2048)
        assert data == b"hello peer" and src == relay
        peer.sendto(b"hello client", relay)
        got = client.recv_channel()
        client.send_indication(peer_addr, b"by indication")
        data2, _ = peer.recvfrom(2048)
        second = _peer_socket()  # another port of the permitted IP: no channel, so a Data indication
        second.sendto(b"no channel", relay)
        other = client.recv_data_indication()
        second_addr = second.getsockname()
        second.close()
        return {"relay": relay, "got": got, "data2": data2, "other": other, "second": second_addr}
    finally:
        peer.close()


@pytest_twisted.inlineCallbacks
def test_udp_allocation_relays_both_ways_and_refresh_zero_releases(edge: Edge) -> Any:
    """Over UDP: 401 then Allocate, ChannelBind, ChannelData and Send/Data both ways; Refresh 0 frees the relay."""
    client = yield threads.deferToThread(edge.client, "udp")
    try:
        out = yield threads.deferToThread(_relay_round_trip, client)
        assert out["got"] == (0x4001, b"hello client")
        assert out["data2"] == b"by indication"
        assert out["other"] == (out["second"], b"no channel")
        assert out["relay"][0] == "127.0.0.1" and 31000 <= out["relay"][1] <= 31999
        assert len(edge.turn.pool) == 1 and edge.turn.pool.ports.in_use == 1
        relay = next(iter(edge.turn.pool.relays.values()))
        listener = edge.turn.listeners["udp"]
        if asyncio_loop_of(edge.service.reactor) is not None:  # hot-path rule: native loop endpoints
            assert relay.endpoint.native and listener.endpoint.native
            assert relay.sendto == relay.endpoint.transport.sendto  # the loop's own sendto, no wrapper
        else:
            assert not relay.endpoint.native
        code = yield threads.deferToThread(client.refresh, 0)
        assert code == 0
        assert len(edge.turn.pool) == 0 and edge.turn.pool.ports.in_use == 0
        counters = edge.turn.listeners["udp"].counters()
        assert counters["allocations_created"] == 1 and counters["allocations_deleted"] == 1
    finally:
        client.close()


def _forbidden(edge: Edge, tenant: str, peers: list[tuple[str, int]]) -> list[int]:
    client = edge.client("udp", tenant=tenant)
    try:
        client.allocate()
        return [client.permit(p) for p in peers] + [client.bind(0x4002, p) for p in peers]
    finally:
        client.close()


@pytest_twisted.inlineCallbacks
def test_private_loopback_and_own_peers_are_403(edge: Edge) -> Any:
    """Loopback, 10/8, link-local and multicast peers are 403; turn_peers opens only what it names."""
    bad = [("127.0.0.1", 9), ("10.0.0.1", 9), ("10.255.1.2", 5060), ("169.254.169.254", 80), ("224.0.0.1", 9)]
    codes = yield threads.deferToThread(_forbidden, edge, "bianchi", bad)
    assert codes == [403] * 10
    codes = yield threads.deferToThread(_forbidden, edge, "rossi", [("10.0.0.1", 9), ("127.0.0.1", 9)])
    assert codes == [403, 0, 403, 0]  # rossi allow-lists 127.0.0.0/8 only
    assert edge.turn.listeners["udp"].server.counters.forbidden_peers == 12


def _allocate_code(edge: Edge, expires_in: int, secret: str) -> int:
    """The error code of an Allocate with REST credentials for rossi valid ``expires_in`` s, signed with ``secret``."""
    username = turn_username(int(time.time()) + expires_in, "alice", "rossi")
    client = edge.client("udp", creds=(username, rest_password(secret.encode(), username)))
    try:
        client.allocate()
    except TurnError as exc:
        return exc.code
    finally:
        client.close()
    return 0


def _expired(edge: Edge) -> int:
    return _allocate_code(edge, -5, ROSSI_SECRET)


def _wrong_tenant_secret(edge: Edge) -> int:
    return _allocate_code(edge, 60, BIANCHI_SECRET)


@pytest_twisted.inlineCallbacks
def test_expired_or_foreign_credentials_are_401(edge: Edge) -> Any:
    """Expired REST credentials, and credentials signed with another tenant's secret, are refused (401)."""
    assert (yield threads.deferToThread(_expired, edge)) == 401
    assert (yield threads.deferToThread(_wrong_tenant_secret, edge)) == 401
    assert len(edge.turn.pool) == 0


def _tcp_byte_by_byte(edge: Edge) -> tuple[Any, ...]:
    client = edge.client("tcp")
    peer = _peer_socket()
    try:
        real_send = client.send_raw

        def dribble(data: bytes) -> None:
            for i in range(len(data)):
                real_send(data[i : i + 1])

        client.send_raw = dribble  # type: ignore[method-assign]
        relay = client.allocate()
        assert client.bind(0x4003, peer.getsockname()) == 0
        client.send_channel(0x4003, b"odd")  # 3 bytes + 1 padding byte on a stream
        data, _ = peer.recvfrom(100)
        peer.sendto(b"12345", relay)
        got = client.recv_channel()
        return relay, data, got
    finally:
        peer.close()
        client.close()


@pytest_twisted.inlineCallbacks
def test_tcp_framing_survives_one_byte_writes_and_close_releases(edge: Edge) -> Any:
    """Over TCP, requests and padded ChannelData written one byte at a time work; closing the connection frees the relay."""
    _relay, data, got = yield threads.deferToThread(_tcp_byte_by_byte, edge)
    assert data == b"odd" and got == (0x4003, b"12345")
    for _ in range(50):
        if len(edge.turn.pool) == 0:
            break
        yield threads.deferToThread(time.sleep, 0.02)
    assert len(edge.turn.pool) == 0 and edge.turn.pool.ports.in_use == 0
    assert edge.turn.listeners["tcp"].server.counters.allocations_deleted == 1


def _garbage(edge: Edge, kind: str) -> bool:
    client = edge.client(kind)
    try:
        client.send_raw(b"\x90\x00\x00\x10" + b"x" * 16)
        return client.closed_by_server()
    finally:
        client.close()


@pytest_twisted.inlineCallbacks
def test_stream_that_is_not_stun_is_closed(edge: Edge) -> Any:
    """A TCP or TLS stream that is neither STUN nor ChannelData is closed and counted."""
    assert (yield threads.deferToThread(_garbage, edge, "tcp"))
    assert (yield threads.deferToThread(_garbage, edge, "tls"))
    assert edge.turn.listeners["tcp"].server.counters.dropped_malformed == 1


def _https_get(edge: Edge, path: str = "/", headers: str = "") -> tuple[int, bytes]:
    ctx = ssl.create_default_context(cafile=edge.ca)
    with socket.create_connection(edge.https, timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="rossi.example.com") as tls:
            tls.sendall(
                f"GET {path} HTTP/1.1\r\nHost: rossi.example.com\r\n{headers}Connection: close\r\n\r\n".encode()
            )
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    return int(data.split(b" ", 2)[1]), data.partition(b"\r\n\r\n")[2]


def _tls_relay(edge: Edge, kind: str, alpn: list[str] | None) -> tuple[Any, str | None]:
    client = edge.client(kind, alpn=alpn)
    try:
        selected = client.sock.selected_alpn_protocol()  # type: ignore[attr-defined]
        return _relay_round_trip(client)["got"], selected
    finally:
        client.close()


@pytest_twisted.inlineCallbacks
def test_turn_over_tls_on_the_shared_https_port(edge: Edge) -> Any:
    """TURN over TLS on the HTTPS port, with ALPN stun.turn and sniffed without ALPN; HTTPS still served there."""
    got, selected = yield threads.deferToThread(_tls_relay, edge, "https", ["stun.turn"])
    assert got == (0x4001, b"hello client") and selected == "stun.turn"
    got, selected = yield threads.deferToThread(_tls_relay, edge, "https", None)
    assert got == (0x4001, b"hello client") and selected is None
    got, selected = yield threads.deferToThread(_tls_relay, edge, "https", ["http/1.1", "stun.turn"])
    assert got == (0x4001, b"hello client") and selected == "http/1.1"  # coturn's offer: sniffed
    status, body = yield threads.deferToThread(_https_get, edge)
    assert status == 200 and b"rossi.example.com" in body
    counters = edge.turn.listeners["https"].server.counters
    assert counters.allocations_created == 3 and counters.allocations_deleted == 3


@pytest_twisted.inlineCallbacks
def test_turn_over_tls_on_the_dedicated_port(edge: Edge) -> Any:
    """listen.turns serves TURN over TLS; its handshakes count in the service's TLS metrics."""
    got, _ = yield threads.deferToThread(_tls_relay, edge, "tls", None)
    assert got == (0x4001, b"hello client")
    assert edge.turn.listeners["tls"].server.counters.allocations_created == 1
    stats = edge.service.metrics.tls["turns"]
    assert (stats.ok, stats.failed) == (1, 0)


def _sni_mismatch(edge: Edge) -> tuple[int, str]:
    client = edge.client("https", tenant="bianchi")  # SNI rossi.example.com, bianchi's credentials
    try:
        client.allocate()
    except TurnError as exc:
        return exc.code, client.realm or ""
    finally:
        client.close()
    return 0, ""


@pytest_twisted.inlineCallbacks
def test_tls_sni_binds_the_tenant(edge: Edge) -> Any:
    """On TLS the SNI tenant is the realm, and another tenant's credentials are refused (401)."""
    code, realm = yield threads.deferToThread(_sni_mismatch, edge)
    assert code == 401 and realm == "rossi.example.com"


def _police(edge: Edge) -> tuple[int, int]:
    client = edge.client("udp")
    peer = _peer_socket()
    peer.settimeout(0.5)
    try:
        client.allocate()
        assert client.bind(0x4004, peer.getsockname()) == 0
        for _ in range(10):
            client.send_channel(0x4004, b"x" * 1000)
        received = 0
        try:
            while True:
                peer.recvfrom(2048)
                received += 1
        except TimeoutError:
            pass
        return received, edge.turn.listeners["udp"].dropped_policed
    finally:
        peer.close()
        client.close()


@pytest_twisted.inlineCallbacks
def test_relayed_traffic_is_policed_at_the_tenant_rate(tmp_path: Path) -> Any:
    """A tenant shaped to 1000 B/s with a 1500 B burst gets one 1000-byte packet of ten relayed."""
    edge = Edge(tmp_path, rossi_extra="[tenants.shaping]\nrate = 1000\nburst = 1500\n")
    try:
        received, dropped = yield threads.deferToThread(_police, edge)
        assert received == 1 and dropped == 9
    finally:
        yield edge.stop()


def _own_address(edge: Edge) -> tuple[bool, bool]:
    """Send to the edge's own IP on a non-relay port (dropped) and to 127.0.0.2 (relayed)."""
    client = edge.client("udp")
    own = _peer_socket("127.0.0.1")
    other = _peer_socket()
    own.settimeout(0.5)
    try:
        client.allocate()
        assert client.bind(0x4005, own.getsockname()) == 0  # allowed by turn_peers 127.0.0.0/8 ...
        assert client.bind(0x4006, other.getsockname()) == 0
        client.send_channel(0x4005, b"to own")
        client.send_channel(0x4006, b"to other")
        other_got = other.recvfrom(100)[0] == b"to other"
        try:
            own.recvfrom(100)
            own_got = True
        except TimeoutError:
            own_got = False
        return own_got, other_got
    finally:
        own.close()
        other.close()
        client.close()


@pytest_twisted.inlineCallbacks
def test_edge_own_address_is_reached_only_on_relay_ports(edge: Edge) -> Any:
    """... but a packet to the edge's own address outside the relay range is dropped, whatever the allow-list."""
    own_got, other_got = yield threads.deferToThread(_own_address, edge)
    assert other_got and not own_got
    assert edge.turn.listeners["udp"].dropped_own == 1


def _many(edge: Edge) -> list[TurnClient]:
    clients = []
    for kind in ("udp", "udp", "tcp", "tls", "https"):
        client = edge.client(kind, user=f"u{len(clients)}")
        client.allocate()
        clients.append(client)
    return clients


@pytest_twisted.inlineCallbacks
def test_stop_releases_every_relay(tmp_path: Path) -> Any:
    """Stopping the service deletes every allocation on every listener, closes the relay sockets, returns the ports."""
    edge = Edge(tmp_path)
    clients = yield threads.deferToThread(_many, edge)
    relays = [relay.port for relay in edge.turn.pool.relays.values()]
    assert len(relays) == 5 and edge.turn.allocations() == 5
    yield edge.stop()
    yield threads.deferToThread(time.sleep, 0.1)  # asyncio transports close on the next loop turn
    assert len(edge.turn.pool) == 0 and edge.turn.pool.ports.in_use == 0 and edge.turn.allocations() == 0
    for port in relays:  # every relay socket is closed: the port can be bound again
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", port))
        sock.close()
    for client in clients:
        client.close()


@pytest_twisted.inlineCallbacks
def test_allocation_quota_per_user_is_486(tmp_path: Path) -> Any:
    """turn.max_allocations_per_user caps one REST user's live allocations (486)."""
    edge = Edge(tmp_path, extra="[turn]\nmax_allocations_per_user = 1\n")

    def two() -> int:
        first, second = edge.client("udp"), edge.client("udp")
        try:
            first.allocate()
            try:
                second.allocate()
            except TurnError as exc:
                return exc.code
            return 0
        finally:
            first.close()
            second.close()

    try:
        assert (yield threads.deferToThread(two)) == 486
    finally:
        yield edge.stop()


# --- the ice-servers endpoint --------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_ice_servers_endpoint_needs_the_bearer_secret(edge: Edge) -> Any:
    """No token or a wrong one: 401; the right one: iceServers JSON with working REST credentials."""
    path = "/.well-known/mcs-edge/ice-servers"
    status, _ = yield threads.deferToThread(_https_get, edge, path)
    assert status == 401
    status, _ = yield threads.deferToThread(_https_get, edge, path, "Authorization: Bearer wrong-secret\r\n")
    assert status == 401
    assert edge.turn.api_refusals == 2
    # the wrong secret (not the missing one) counts toward the source's ban
    assert edge.service.protection.credential_failures == {"api_secret": 1}
    assert edge.service.protection.bans.failure_count("127.0.0.1", edge.service.timers.now()) == 1
    status, _ = yield threads.deferToThread(
        _https_get, edge, path + "?user=bad%20user", f"Authorization: Bearer {API_SECRET}\r\n"
    )
    assert status == 400
    status, body = yield threads.deferToThread(
        _https_get, edge, path + "?user=agent7&ttl=999999", f"Authorization: Bearer {API_SECRET}\r\n"
    )
    assert status == 200
    doc = json.loads(body)
    stun, turn = doc["iceServers"]
    https_port = edge.https[1]
    assert stun == {"urls": [f"stun:127.0.0.1:{edge.udp[1]}"]}
    assert turn["urls"] == [
        f"turn:127.0.0.1:{edge.udp[1]}?transport=udp",
        f"turn:127.0.0.1:{edge.tcp[1]}?transport=tcp",
        f"turns:rossi.example.com:{https_port}?transport=tcp",
        f"turns:rossi.example.com:{edge.turns[1]}?transport=tcp",
    ]
    assert doc["ttl"] == 86400  # clamped to turn.credential_ttl
    expiry, _, user = turn["username"].partition(":")
    assert user == "agent7@rossi" and abs(int(expiry) - (time.time() + 86400)) < 5
    expected = base64.b64encode(hmac.digest(ROSSI_SECRET.encode(), turn["username"].encode(), hashlib.sha1))
    assert turn["credential"] == expected.decode()

    def use() -> Any:
        client = TurnClient("udp", edge.udp, turn["username"], turn["credential"])
        try:
            return client.allocate()
        finally:
            client.close()

    relay = yield threads.deferToThread(use)
    assert relay[0] == "127.0.0.1"


def _get_as(edge: Edge, host: str, path: str, token: str) -> int:
    ctx = ssl.create_default_context(cafile=edge.ca)
    with socket.create_connection(edge.https, timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(
                f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n".encode()
            )
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    return int(data.split(b" ", 2)[1])


@pytest_twisted.inlineCallbacks
def test_ice_servers_endpoint_is_off_without_api_secret(edge: Edge) -> Any:
    """A tenant without api_secret has no endpoint (404), even with another tenant's secret."""
    status = yield threads.deferToThread(
        _get_as, edge, "bianchi.example.com", "/.well-known/mcs-edge/ice-servers", API_SECRET
    )
    assert status == 404


@pytest_twisted.inlineCallbacks
def test_reload_applies_new_turn_secrets(tmp_path: Path) -> Any:
    """After a reload that changes rossi's turn_secret, credentials made with the old one are refused."""
    edge = Edge(tmp_path)
    try:
        cfg = _config(tmp_path)
        rossi = dataclasses.replace(cfg.tenants[0], turn_secret="rossi-new-secret-987654")
        assert edge.service.reload(dataclasses.replace(cfg, tenants=(rossi, cfg.tenants[1])))
        assert (yield threads.deferToThread(_wrong_tenant_secret_old, edge)) == 401
    finally:
        yield edge.stop()


def _wrong_tenant_secret_old(edge: Edge) -> int:
    client = edge.client("udp")  # signed with the old ROSSI_SECRET
    try:
        client.allocate()
    except TurnError as exc:
        return exc.code
    finally:
        client.close()
    return 0


# --- pure pieces ---------------------------------------------------------------------------------


def _policy() -> TurnPolicy:
    from mcs_edge.core.tenants import TenantTable

    cfg = _config(Path("/nonexistent"))
    return TurnPolicy(cfg, TenantTable(cfg.tenants))


@pytest.mark.parametrize(
    ("realm", "username", "expected"),
    [
        ("mcs-edge", "1:alice@rossi", "rossi"),
        ("mcs-edge", "1:alice@bianchi", "bianchi"),
        ("rossi.example.com", "1:alice@rossi", "rossi"),
        ("rossi.example.com", "1:alice", "rossi"),  # no suffix: the tenant realm names it
        ("bianchi.example.com", "1:alice@rossi", None),  # realm and suffix disagree
        ("mcs-edge", "1:alice", None),  # no tenant at all
        ("mcs-edge", "1:alice@nobody", None),
        ("other-realm", "1:alice@rossi", None),  # a realm we never issued
        ("mcs-edge", "1:a@b@rossi", "rossi"),  # the last @ names the tenant
    ],
)
def test_policy_lookup_table(realm: str, username: str, expected: str | None) -> None:
    """Which tenant a (realm, username) pair authenticates as."""
    found = _policy().lookup(realm, username)
    assert (found[0] if found else None) == expected


def test_policy_peer_rules() -> None:
    """Restricted networks refused unless allow-listed for that tenant; public peers allowed."""
    policy = _policy()
    assert policy.peer_allowed("rossi", "127.0.0.5") and not policy.peer_allowed("bianchi", "127.0.0.5")
    assert not policy.peer_allowed("rossi", "10.1.2.3")
    assert policy.peer_allowed("bianchi", "203.0.113.7")
    assert "127.0.0.1" in policy.own_ips


class _Recorder(Protocol):
    def __init__(self) -> None:
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data


def _front(clock: Clock) -> tuple[TlsFrontFactory, Factory, Factory]:
    web, turn = Factory.forProtocol(_Recorder), Factory.forProtocol(_Recorder)
    return TlsFrontFactory(web, turn, Timers(clock, clock.seconds), idle_timeout=5), web, turn


@pytest.mark.parametrize(("first", "to_turn"), [(b"\x00\x03\x00\x00", True), (b"GET / HTTP/1.1\r\n", False)])
def test_front_hands_the_connection_over_by_first_byte(first: bytes, to_turn: bool) -> None:
    """STUN's first byte (< 0x40) goes to TURN, an HTTP method to the web; the chosen protocol gets the bytes."""
    clock = Clock()
    front, _web, _turn = _front(clock)
    wrapper = WrappingFactory(front).buildProtocol(None)
    wrapper.makeConnection(StringTransport())
    wrapper.dataReceived(first)
    chosen = wrapper.wrappedProtocol
    assert isinstance(chosen, _Recorder) and chosen.data == first
    assert (chosen.factory is front.turn_factory) == to_turn  # type: ignore[attr-defined]
    assert clock.getDelayedCalls() == []  # the idle timer went with the decision


def test_front_closes_a_silent_connection() -> None:
    """A TLS connection that sends nothing is aborted after the idle timeout."""
    clock = Clock()
    front, _, _ = _front(clock)
    transport = StringTransport()
    wrapper = WrappingFactory(front).buildProtocol(None)
    wrapper.makeConnection(transport)
    clock.advance(4.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting


@pytest_twisted.inlineCallbacks
def test_metrics_expose_turn_counters(edge: Edge) -> Any:
    """The service's /metrics registry carries TURN allocations per tenant and refusals per listener."""
    codes = yield threads.deferToThread(_forbidden, edge, "bianchi", [("10.0.0.1", 9)])
    assert codes == [403, 403]
    client = yield threads.deferToThread(edge.client, "udp")
    yield threads.deferToThread(client.allocate)
    text = edge.service.metrics.render().decode()
    client.close()
    assert 'mcs_edge_turn_allocations{tenant="rossi"} 1.0' in text
    assert 'mcs_edge_turn_requests_refused_total{listener="udp",reason="forbidden_peer"} 2.0' in text
    assert 'mcs_edge_turn_allocations_created_total{listener="udp"} 2.0' in text


@pytest_twisted.inlineCallbacks
def test_busy_relay_port_is_withheld_then_returned(tmp_path: Path) -> Any:
    """A relay port held by another socket is skipped and withheld (never tried again while the
    range has others), given another chance when the range runs dry, and returned at shutdown."""
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("127.0.0.1", 33001))  # the second single port the allocator hands out
    edge = Edge(tmp_path, media=(33000, 33005))  # 6 ports
    try:

        def allocate_all() -> list[Any]:
            clients = [edge.client("udp", user=f"b{i}") for i in range(7)]
            out: list[Any] = []
            try:
                for client in clients:
                    try:
                        out.append(client.allocate()[1])
                    except TurnError as exc:
                        out.append(exc.code)
                return out
            finally:
                for client in clients:
                    client.close()

        got = yield threads.deferToThread(allocate_all)
        # five free ports are handed out, 33001 never; the sixth request finds the range dry,
        # gives 33001 another chance (still busy) and gets 508
        assert sorted(got[:5]) == [33000, 33002, 33003, 33004, 33005] and got[5:] == [508, 508]
        assert 33001 in edge.turn.pool.busy
        assert edge.turn.pool.bind_failures == 3
    finally:
        busy.close()
        yield edge.stop()
    assert edge.turn.pool.ports.in_use == 0 and edge.turn.pool.busy == []


def _idle_life(edge: Edge) -> tuple[bool, bool, bool]:
    silent = edge.client("tcp")
    busy = edge.client("tcp")
    try:
        busy.allocate()
        silent_closed = silent.closed_by_server(timeout=2.0)
        busy_closed = busy.closed_by_server(timeout=0.6)  # holds an allocation: stays open
        assert busy.refresh(0) == 0
        busy_closed_after = busy.closed_by_server(timeout=2.0)
        return silent_closed, busy_closed, busy_closed_after
    finally:
        silent.close()
        busy.close()


@pytest_twisted.inlineCallbacks
def test_stream_without_allocation_is_closed_when_idle(edge: Edge) -> Any:
    """A TCP connection with no allocation is closed after stream_idle; one with an allocation stays
    open until the allocation ends, then gets the same grace."""
    edge.turn.stream_idle = 0.3
    silent_closed, busy_closed, busy_closed_after = yield threads.deferToThread(_idle_life, edge)
    assert silent_closed and not busy_closed and busy_closed_after
