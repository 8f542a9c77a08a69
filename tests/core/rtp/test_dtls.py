"""DTLS-SRTP endpoints pumped in memory, in virtual time."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcs_edge.certs import dtls_certificate, edge_dtls_certificate
from mcs_edge.core.media.sdp import Fingerprint
from mcs_edge.core.rtp.dtls import (
    MAX_RETRANSMISSIONS,
    ConnectionClosed,
    DtlsEndpoint,
    DtlsEvent,
    DtlsState,
    HandshakeComplete,
    HandshakeFailed,
)
from mcs_edge.core.rtp.rtp import RtpPacket
from mcs_edge.core.rtp.srtp import AEAD_AES_128_GCM, AES_CM_128_HMAC_SHA1_80
from mcs_edge.errors import RemoteProtocolError

CERT_A = dtls_certificate("a")
CERT_B = dtls_certificate("b")
RTP = bytes(RtpPacket(0, 1, 160, 0x11223344, payload=bytes(160)))

Filter = Callable[[str, int, bytes], bool]  # (direction, index, datagram) -> deliver?


def make_pair(srtp_profiles: bytes | None = None) -> tuple[DtlsEndpoint, DtlsEndpoint]:
    if srtp_profiles is None:
        client = DtlsEndpoint(is_client=True, remote_fingerprints=(CERT_B.fingerprint,), certificate=CERT_A)
    else:
        client = DtlsEndpoint(
            is_client=True,
            remote_fingerprints=(CERT_B.fingerprint,),
            certificate=CERT_A,
            srtp_profiles=srtp_profiles,
        )
    server = DtlsEndpoint(is_client=False, remote_fingerprints=(CERT_A.fingerprint,), certificate=CERT_B)
    return client, server


def events(ep: DtlsEndpoint) -> list[DtlsEvent]:
    out = []
    while (ev := ep.next_event()) is not None:
        out.append(ev)
    return out


def pump(
    client: DtlsEndpoint,
    server: DtlsEndpoint,
    now: float,
    deliver: Filter | None = None,
    counter: dict[str, int] | None = None,
) -> None:
    """Exchange datagrams until both sides are quiet (at time ``now``)."""
    counter = counter if counter is not None else {"c": 0, "s": 0}
    for _ in range(20):
        moved = False
        for d in client.datagrams_to_send():
            counter["c"] += 1
            moved = True
            if deliver is None or deliver("c", counter["c"], d):
                try:
                    server.receive(d, now)
                except RemoteProtocolError:
                    pass
        for d in server.datagrams_to_send():
            counter["s"] += 1
            moved = True
            if deliver is None or deliver("s", counter["s"], d):
                try:
                    client.receive(d, now)
                except RemoteProtocolError:
                    pass
        if not moved:
            return


def run(
    client: DtlsEndpoint, server: DtlsEndpoint, deliver: Filter | None = None, until: float = 200.0
) -> float:
    """Drive both endpoints in virtual time until both finished or ``until``; returns the end time."""
    now = 0.0
    counter = {"c": 0, "s": 0}
    client.start(now)
    server.start(now)
    pump(client, server, now, deliver, counter)
    while now < until:
        timers = [t for t in (client.get_timer(), server.get_timer()) if t is not None]
        if not timers:
            break
        now = min(timers)
        client.handle_timer(now)
        server.handle_timer(now)
        pump(client, server, now, deliver, counter)
    return now


def test_handshake_agrees_keys_and_protects_both_ways() -> None:
    """Two endpoints complete the handshake, agree GCM keys, and SRTP works in both directions."""
    client, server = make_pair()
    run(client, server)
    (ec,), (es,) = events(client), events(server)
    assert isinstance(ec, HandshakeComplete) and isinstance(es, HandshakeComplete)
    assert ec.profile is AEAD_AES_128_GCM is es.profile
    assert ec.local_key == es.remote_key and ec.remote_key == es.local_key
    sc, ss = ec.srtp_context(), es.srtp_context()
    assert ss.unprotect_rtp(sc.protect_rtp(RTP)) == RTP
    assert sc.unprotect_rtp(ss.protect_rtp(RTP)) == RTP
    assert client.state is server.state is DtlsState.CONNECTED
    assert client.get_timer() is None and server.get_timer() is None


def test_aes_cm_80_when_peer_offers_only_that() -> None:
    """A peer offering only SRTP_AES128_CM_SHA1_80 gets that profile."""
    client, server = make_pair(srtp_profiles=b"SRTP_AES128_CM_SHA1_80")
    run(client, server)
    (ec,), (es,) = events(client), events(server)
    assert isinstance(ec, HandshakeComplete) and isinstance(es, HandshakeComplete)
    assert ec.profile is AES_CM_128_HMAC_SHA1_80
    assert es.srtp_context().unprotect_rtp(ec.srtp_context().protect_rtp(RTP)) == RTP


def test_nobody_speaks_first_until_told() -> None:
    """A server never sends unprompted; a client sends its ClientHello only on start()."""
    client, server = make_pair()
    server.start(0.0)
    assert server.datagrams_to_send() == [] and server.get_timer() is None
    assert client.datagrams_to_send() == [] and client.get_timer() is None
    client.start(0.0)
    hello = client.datagrams_to_send()
    assert len(hello) == 1 and hello[0][0] == 22 and client.get_timer() == 1.0


def test_client_refuses_input_before_start() -> None:
    """A client that was not started drops DTLS input."""
    client, _ = make_pair()
    with pytest.raises(RemoteProtocolError):
        client.receive(bytes([22]) + bytes(20), 0.0)


def test_fingerprint_mismatch_fails() -> None:
    """A certificate that does not match the SDP fingerprint fails the handshake."""
    wrong = Fingerprint.from_digest("sha-256", bytes(32))
    client = DtlsEndpoint(is_client=True, remote_fingerprints=(wrong,), certificate=CERT_A)
    server = DtlsEndpoint(is_client=False, remote_fingerprints=(CERT_A.fingerprint,), certificate=CERT_B)
    run(client, server)
    assert events(client) == [HandshakeFailed("fingerprint mismatch")]
    assert client.state is DtlsState.FAILED
    assert server.state is not DtlsState.CONNECTED
    assert not any(isinstance(e, HandshakeComplete) for e in events(server))


def test_server_checks_client_fingerprint() -> None:
    """The server rejects a client whose certificate does not match (and one with no pin at all)."""
    client = DtlsEndpoint(is_client=True, remote_fingerprints=(CERT_B.fingerprint,), certificate=CERT_A)
    server = DtlsEndpoint(is_client=False, remote_fingerprints=(CERT_B.fingerprint,), certificate=CERT_B)
    run(client, server)
    assert events(server) == [HandshakeFailed("fingerprint mismatch")]
    client2 = DtlsEndpoint(is_client=True, remote_fingerprints=(CERT_B.fingerprint,), certificate=CERT_A)
    server2 = DtlsEndpoint(is_client=False, certificate=CERT_B)
    run(client2, server2)
    assert events(server2) == [HandshakeFailed("no remote fingerprint")]


def test_fingerprint_set_after_construction() -> None:
    """Fingerprints learnt from a later SDP answer are used."""
    client = DtlsEndpoint(is_client=True, certificate=CERT_A)
    server = DtlsEndpoint(is_client=False, remote_fingerprints=(CERT_A.fingerprint,), certificate=CERT_B)
    client.set_remote_fingerprints((Fingerprint("sha-1", "00:11"), CERT_B.fingerprint))
    run(client, server)
    assert isinstance(events(client)[0], HandshakeComplete)


@pytest.mark.parametrize(("direction", "index"), [("c", 1), ("s", 1), ("c", 2), ("s", 2)])
def test_lost_flight_is_retransmitted_in_virtual_time(direction: str, index: int) -> None:
    """Losing any one handshake flight is repaired by the 1 s retransmission timer."""

    def deliver(d: str, i: int, data: bytes) -> bool:
        return not (d == direction and i == index)

    client, server = make_pair()
    end = run(client, server, deliver)
    assert client.state is DtlsState.CONNECTED and server.state is DtlsState.CONNECTED
    assert 1.0 <= end < 4.0
    (ec,), (es,) = events(client), events(server)
    assert isinstance(ec, HandshakeComplete) and isinstance(es, HandshakeComplete)
    assert ec.local_key == es.remote_key


def test_backoff_doubles_and_times_out() -> None:
    """With every datagram lost the client retries at 1, 3, 7, ... s and then fails."""
    client = DtlsEndpoint(is_client=True, remote_fingerprints=(CERT_B.fingerprint,), certificate=CERT_A)
    client.start(0.0)
    client.datagrams_to_send()
    deadlines = []
    while (t := client.get_timer()) is not None:
        deadlines.append(t)
        client.handle_timer(t - 0.5)  # early: nothing happens
        client.handle_timer(t)
        sent = client.datagrams_to_send()
        if client.state is DtlsState.CONNECTING:
            assert sent
    assert deadlines[:4] == [1.0, 3.0, 7.0, 15.0]
    assert len(deadlines) == MAX_RETRANSMISSIONS + 1
    assert events(client) == [HandshakeFailed("handshake timeout")]


def test_close_notify() -> None:
    """close() sends close_notify; the peer reports ConnectionClosed and refuses further input."""
    client, server = make_pair()
    run(client, server)
    events(client), events(server)
    client.close()
    (alert,) = client.datagrams_to_send()
    assert alert[0] == 21
    server.receive(alert, 5.0)
    assert events(server) == [ConnectionClosed()]
    assert server.state is DtlsState.CLOSED
    with pytest.raises(RemoteProtocolError):
        server.receive(alert, 5.0)


def test_non_dtls_input_rejected() -> None:
    """STUN or RTP bytes handed to the DTLS endpoint raise RemoteProtocolError(None)."""
    _, server = make_pair()
    for data in (b"", b"\x00\x01" + bytes(18), RTP):
        with pytest.raises(RemoteProtocolError) as info:
            server.receive(data, 0.0)
        assert info.value.status_hint is None


def test_default_certificate_is_shared() -> None:
    """The process certificate is generated once; its fingerprint is SHA-256."""
    assert edge_dtls_certificate() is edge_dtls_certificate()
    fp = edge_dtls_certificate().fingerprint
    assert fp.algorithm == "sha-256" and len(fp.digest) == 32


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=6), st.booleans())
def test_fuzz_garbage_only_remote_errors(datagrams: list[bytes], dtls_prefix: bool) -> None:
    """Garbage fed to a server (fresh or mid-handshake) raises nothing but RemoteProtocolError."""
    client, server = make_pair()
    client.start(0.0)
    hello = client.datagrams_to_send()
    for i, d in enumerate(datagrams):
        data = (bytes([22, 0xFE, 0xFD]) + d) if dtls_prefix else d
        for ep in (server, client):
            try:
                ep.receive(data, float(i))
            except RemoteProtocolError:
                pass
            ep.handle_timer(float(i))
            ep.datagrams_to_send()
        if i == 0:
            try:
                server.receive(hello[0], 0.0)
            except RemoteProtocolError:
                pass
