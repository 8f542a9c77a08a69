"""Hypothesis: random and mutated input never raises anything but RemoteProtocolError from the
parsers and never crashes the ICE-lite or TURN objects."""

from __future__ import annotations

import secrets
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcs_edge.core.stun import message as m
from mcs_edge.core.stun.channel_data import stream_frame_length, unpack_channel_data
from mcs_edge.core.stun.ice_lite import IceLiteResponder
from mcs_edge.core.stun.message import CLASS_REQUEST, Message, long_term_key, parse_view
from mcs_edge.core.stun.turn import SendToClient, SendToPeer, TurnServer, rest_password
from mcs_edge.errors import RemoteProtocolError

DATA = Path(__file__).resolve().parents[2] / "data" / "stun"
VECTORS = [p.read_bytes() for p in sorted(DATA.glob("*.bin"))]
REALM = "fuzz.example.com"
SECRET = b"fuzz-secret"
NONCE_SECRET = b"n" * 32
WALL = 1_700_000_000.0
CLIENT = ("198.51.100.1", 1000)
PEER = ("203.0.113.9", 2000)


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A seed message with a few bytes flipped, truncated or extended."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.integers(0, 3))
        if op == 0 and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        elif op == 1 and data:
            del data[draw(st.integers(0, len(data) - 1)) :]
        elif op == 2:
            data += draw(st.binary(max_size=12))
        elif len(data) >= 4:
            # keep the length field consistent so the attribute walker is exercised
            data[2:4] = (max(len(data) - 20, 0) & 0xFFFF).to_bytes(2, "big")
    return bytes(data)


def _parse_everything(data: bytes) -> None:
    try:
        msg = Message.parse(data)
    except RemoteProtocolError:
        return
    view = parse_view(data)
    view.check_integrity(b"key")
    view.check_integrity_sha256(b"key")
    view.check_fingerprint()
    msg.unknown_comprehension_required()
    assert Message.parse(bytes(msg)) == msg


@given(st.binary(max_size=200))
def test_random_bytes_parse_or_raise_remote_protocol_error(data: bytes) -> None:
    """Random bytes either parse (and re-serialise consistently) or raise RemoteProtocolError."""
    _parse_everything(data)


@given(mutated(VECTORS))
@settings(max_examples=300)
def test_mutated_vectors_parse_or_raise_remote_protocol_error(data: bytes) -> None:
    """Mutated RFC 5769 messages either parse or raise RemoteProtocolError."""
    _parse_everything(data)


@given(st.binary(min_size=20, max_size=120).map(lambda b: b[:4] + m.MAGIC_COOKIE_BYTES + b[8:]))
def test_random_bodies_with_cookie(data: bytes) -> None:
    """Random bodies behind a valid cookie exercise the attribute walker."""
    data = bytes([data[0] & 0x3F, data[1]]) + (len(data) - 20).to_bytes(2, "big") + data[4:]
    _parse_everything(data)


@given(st.binary(max_size=40))
def test_channel_data_and_stream_framing(data: bytes) -> None:
    """ChannelData parsing and stream framing raise only RemoteProtocolError."""
    for fn in (unpack_channel_data, stream_frame_length):
        try:
            fn(data)
        except RemoteProtocolError:
            pass


# --- objects ------------------------------------------------------------------------------------


def _ice_seeds() -> tuple[IceLiteResponder, list[bytes]]:
    leg = IceLiteResponder(remote_ufrag="abcd", remote_pwd="p" * 22, random_bytes=secrets.token_bytes)
    good = Message(
        m.METHOD_BINDING,
        CLASS_REQUEST,
        bytes(range(12)),
        (m.Username(f"{leg.local_ufrag}:abcd"), m.Priority(5), m.IceControlling(1), m.UseCandidate()),
    ).serialize(integrity_key=leg.local_pwd.encode(), fingerprint=True)
    return leg, [good, *VECTORS]


ICE_LEG, ICE_SEEDS = _ice_seeds()


@given(st.one_of(st.binary(max_size=120), mutated(ICE_SEEDS)), st.floats(0, 1e6))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_ice_lite_never_crashes(data: bytes, now: float) -> None:
    """The ICE-lite responder answers bytes or None, whatever arrives, and its timers keep working."""
    out = ICE_LEG.receive(data, ("198.51.100.7", 4000), now)
    assert out is None or isinstance(out, bytes)
    if out is not None:
        Message.parse(out)
    deadline = ICE_LEG.get_timer()
    if deadline is not None:
        ICE_LEG.handle_timer(deadline)
    while ICE_LEG.next_event() is not None:
        pass


class _Allocator:
    def __init__(self) -> None:
        self.port = 50000

    def allocate(self, tenant: str, family: int, even_port: bool) -> tuple[str, int] | None:
        self.port += 1
        return ("192.0.2.1", self.port)

    def release(self, relay: tuple[str, int]) -> None:
        pass


def _turn_seeds() -> list[bytes]:
    server = TurnServer(
        random_bytes=secrets.token_bytes,
        realm=REALM,
        credentials_for={REALM: SECRET}.get,
        relay_allocator=_Allocator(),
        nonce_secret=NONCE_SECRET,
    )
    username = f"{int(WALL) + 3600}:user"
    key = long_term_key(username, REALM, rest_password(SECRET, username))
    nonce = server.make_nonce(REALM, CLIENT[0], WALL)
    auth = (m.Username(username), m.Realm(REALM), m.Nonce(nonce))
    seeds = []
    for method, attrs in [
        (m.METHOD_ALLOCATE, (m.RequestedTransport(17), m.Lifetime(900))),
        (m.METHOD_REFRESH, (m.Lifetime(0),)),
        (m.METHOD_CREATE_PERMISSION, (m.XorPeerAddress(*PEER),)),
        (m.METHOD_CHANNEL_BIND, (m.ChannelNumber(0x4000), m.XorPeerAddress(*PEER))),
    ]:
        msg = Message(method, CLASS_REQUEST, Message.new_transaction_id(secrets.token_bytes), (*attrs, *auth))
        seeds.append(msg.serialize(integrity_key=key, fingerprint=True))
    send = Message(m.METHOD_SEND, m.CLASS_INDICATION, bytes(12), (m.XorPeerAddress(*PEER), m.Data(b"x")))
    seeds += [bytes(send), b"\x40\x00\x00\x03abc\x00"]
    return seeds


TURN_SEEDS = _turn_seeds()


@given(
    st.lists(
        st.one_of(st.binary(max_size=100), mutated(TURN_SEEDS), st.sampled_from(TURN_SEEDS)), max_size=8
    ),
    st.floats(0, 4000),
)
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_turn_server_never_crashes(inputs: list[bytes], step: float) -> None:
    """The TURN server returns actions for any sequence of client and peer input and timer ticks."""
    server = TurnServer(
        random_bytes=secrets.token_bytes,
        realm=REALM,
        credentials_for={REALM: SECRET}.get,
        relay_allocator=_Allocator(),
        nonce_secret=NONCE_SECRET,
    )
    now = 0.0
    for data in inputs:
        for action in server.receive(data, CLIENT, now, WALL):
            if isinstance(action, SendToClient) and action.data[0] < 0x40:
                Message.parse(action.data)
        info = server.allocation(CLIENT)
        if info is not None:
            out = server.receive_from_peer(info.relay, PEER, data, now)
            assert out is None or isinstance(out, SendToClient)
            relayed = server.relay_channel_data(data, CLIENT, now)
            assert relayed is None or isinstance(relayed, SendToPeer)
        deadline = server.get_timer()
        if deadline is not None and deadline <= now + step:
            server.handle_timer(deadline)
        now += step / 4
    server.close()
    assert len(server) == 0 and server.get_timer() is None


@given(st.floats(allow_nan=False), st.floats(allow_nan=False))
def test_nonce_round_trip_for_any_clock(mint: float, check: float) -> None:
    """Nonces can be minted and checked at any wall-clock value without raising."""
    server = TurnServer(
        random_bytes=secrets.token_bytes,
        realm=REALM,
        credentials_for={REALM: SECRET}.get,
        relay_allocator=_Allocator(),
        nonce_secret=NONCE_SECRET,
    )
    nonce = server.make_nonce(REALM, CLIENT[0], mint)
    assert isinstance(server._nonce_valid(nonce, REALM, CLIENT[0], check), bool)
