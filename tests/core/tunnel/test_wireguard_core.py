"""WireGuard pieces without I/O (core/tunnel/wireguard.py): keys, peer diffs, UAPI text, wg-quick."""

from __future__ import annotations

import base64

from mcs_edge.core.tunnel.wireguard import (
    WantedPeer,
    b64_to_hex,
    keypair_from_bytes,
    parse_get,
    peer_changes,
    public_of,
    uapi_set,
    valid_key,
    wg_quick,
)

# RFC 7748 s.6.1 test vector (Alice): private key and its X25519 public key.
ALICE_PRIV = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUB = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")


def test_keys_follow_rfc_7748() -> None:
    """The public key of the RFC 7748 test private key is the RFC's; keys are base64 of 32 bytes."""
    pair = keypair_from_bytes(ALICE_PRIV)
    assert base64.b64decode(pair.public) == ALICE_PUB
    assert public_of(pair.private) == pair.public
    assert (
        valid_key(pair.public)
        and not valid_key("abc")
        and not valid_key(base64.b64encode(b"x" * 31).decode())
    )
    assert pair.private not in repr(pair)


def test_peer_changes_touch_only_what_differs() -> None:
    """Unchanged peers are left alone; a new or moved peer is set; a peer nobody wants is removed."""
    a, b, c = (keypair_from_bytes(bytes([i]) * 32).public for i in (1, 2, 3))
    present = {a: ("10.77.1.2/32",), b: ("10.77.2.2/32",), c: ("10.77.3.2/32",)}
    wanted = [WantedPeer(a, "10.77.1.2/32", "ta"), WantedPeer(b, "10.77.2.9/32", "tb")]
    upsert, remove = peer_changes(present, wanted)
    assert upsert == [WantedPeer(b, "10.77.2.9/32", "tb")] and remove == [c]
    assert peer_changes({a: ("10.77.1.2/32",)}, [WantedPeer(a, "10.77.1.2/32")]) == ([], [])


def test_uapi_set_text() -> None:
    """https://www.wireguard.com/xplatform/: hex keys, remove=true, replace_allowed_ips, blank line at the end."""
    pub = keypair_from_bytes(ALICE_PRIV).public
    text = uapi_set(listen_port=51820, upsert=[WantedPeer(pub, "10.77.3.2/32")], remove=[pub]).decode()
    hexkey = b64_to_hex(pub)
    assert text == (
        f"set=1\nlisten_port=51820\npublic_key={hexkey}\nremove=true\n"
        f"public_key={hexkey}\nreplace_allowed_ips=true\nallowed_ip=10.77.3.2/32\n\n"
    )


def test_parse_get_reads_peers_and_counters() -> None:
    """A get=1 answer: listen port, and per peer endpoint, allowed IPs, handshake time, bytes."""
    hexkey = ALICE_PUB.hex()
    text = (
        f"private_key={ALICE_PRIV.hex()}\nlisten_port=51820\npublic_key={hexkey}\nendpoint=192.0.2.7:40000\n"
        "last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=500000000\nrx_bytes=1200\ntx_bytes=3400\n"
        "allowed_ip=10.77.3.2/32\nerrno=0\n"
    )
    state = parse_get(text)
    assert state.listen_port == 51820 and state.public_key == base64.b64encode(ALICE_PUB).decode()
    (peer,) = state.peers.values()
    assert peer.endpoint == "192.0.2.7:40000" and peer.allowed_ips == ("10.77.3.2/32",)
    assert (peer.last_handshake, peer.rx_bytes, peer.tx_bytes) == (1700000000.5, 1200, 3400)


def test_wg_quick_file_for_the_tenant() -> None:
    """Address /32, the edge as the only AllowedIPs, endpoint, keepalive 25; the private key only when given."""
    text = wg_quick(
        tenant_address="10.77.3.2",
        edge_public_key="EDGEPUB=",
        endpoint="203.0.113.10:51820",
        edge_address="10.77.0.1",
        private_key="TENANTPRIV=",
    )
    assert "PrivateKey = TENANTPRIV=" in text and "Address = 10.77.3.2/32" in text
    assert "AllowedIPs = 10.77.0.1/32" in text and "Endpoint = 203.0.113.10:51820" in text
    assert "PersistentKeepalive = 25" in text
    again = wg_quick(
        tenant_address="10.77.3.2",
        edge_public_key="EDGEPUB=",
        endpoint="203.0.113.10:51820",
        edge_address="10.77.0.1",
        private_key=None,
    )
    assert "PrivateKey =" not in again.replace("# PrivateKey", "")
