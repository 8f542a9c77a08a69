"""WireGuard for the tenant backhaul, without I/O: keys, peers wanted vs present, UAPI text, wg-quick.

Theory of operation
-------------------
The edge runs one WireGuard interface (``[tunnel] interface``) with the edge's tunnel address and
one *peer per tenant* (``tenants.tunnel``): the peer's public key, and AllowedIPs = that tenant's
tunnel address only (``/32`` or ``/128``). With cryptokey routing, a packet from tenant A's peer
is accepted only with A's address as source, and a packet for B's address leaves only toward B's
peer; the adapter also switches off IP forwarding on the interface, so nothing arriving from one
tunnel is ever routed into another.

* Keys are Curve25519 (X25519), base64 in configuration and wg-quick files, hex on the UAPI
  (https://www.wireguard.com/xplatform/). Randomness is passed in (32 bytes).
* :func:`peer_changes` compares the peers wanted (configuration) with the peers present
  (``get=1`` on the UAPI) and yields the minimal ``set=1`` operations: add or change a peer
  (``replace_allowed_ips``), remove a peer (``remove=true``); others are never touched, so a
  reload or an admin change of one tenant does not disturb the tunnels of the others.
* :func:`parse_get` reads a ``get=1`` answer (last handshake, bytes each way per peer).
* :func:`wg_quick` renders the tenant side's configuration file.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

__all__ = [
    "DeviceState",
    "KeyPair",
    "PeerState",
    "WantedPeer",
    "b64_to_hex",
    "hex_to_b64",
    "keypair_from_bytes",
    "parse_get",
    "peer_changes",
    "public_of",
    "uapi_set",
    "valid_key",
    "wg_quick",
]


def valid_key(text: str) -> bool:
    """``text`` is a base64 WireGuard key (32 bytes)."""
    try:
        return len(base64.b64decode(text, validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


def b64_to_hex(key: str) -> str:
    return base64.b64decode(key).hex()


def hex_to_b64(key: str) -> str:
    return base64.b64encode(bytes.fromhex(key)).decode()


@dataclass(frozen=True, slots=True)
class KeyPair:
    private: str  # base64
    public: str  # base64

    def __repr__(self) -> str:  # never print the private key by accident
        return f"KeyPair(public={self.public!r})"


def keypair_from_bytes(raw: bytes) -> KeyPair:
    """A key pair from 32 random bytes (the caller draws them)."""
    key = X25519PrivateKey.from_private_bytes(raw)
    private = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return KeyPair(base64.b64encode(private).decode(), base64.b64encode(public).decode())


def public_of(private_b64: str) -> str:
    return keypair_from_bytes(base64.b64decode(private_b64)).public


def host_network(address: str) -> str:
    """``10.77.3.2`` -> ``10.77.3.2/32`` (``/128`` for IPv6): a peer's AllowedIPs."""
    ip = ipaddress.ip_address(address)
    return f"{ip}/{ip.max_prefixlen}"


@dataclass(frozen=True, slots=True)
class WantedPeer:
    public_key: str  # base64
    allowed_ip: str  # "10.77.3.2/32"
    tenant: str = ""


@dataclass(slots=True)
class PeerState:
    public_key: str  # base64
    allowed_ips: tuple[str, ...] = ()
    endpoint: str = ""
    last_handshake: float = 0.0  # seconds since the epoch, 0 = never
    rx_bytes: int = 0
    tx_bytes: int = 0


@dataclass(slots=True)
class DeviceState:
    listen_port: int = 0
    public_key: str = ""
    peers: dict[str, PeerState] = field(default_factory=dict)
    errno: int = 0


def parse_get(text: str) -> DeviceState:
    """Parse the answer to ``get=1`` (key=value lines, peers start at ``public_key=``)."""
    state = DeviceState()
    peer: PeerState | None = None
    sec = nsec = 0
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key == "public_key":
            if peer is not None:
                peer.last_handshake = sec + nsec / 1e9
            peer = PeerState(hex_to_b64(value))
            state.peers[peer.public_key] = peer
            sec = nsec = 0
        elif key == "listen_port" and peer is None:
            state.listen_port = int(value)
        elif key == "private_key" and peer is None:
            state.public_key = public_of(hex_to_b64(value))
        elif key == "errno":
            state.errno = int(value)
        elif peer is not None:
            if key == "endpoint":
                peer.endpoint = value
            elif key == "allowed_ip":
                peer.allowed_ips += (value,)
            elif key == "last_handshake_time_sec":
                sec = int(value)
            elif key == "last_handshake_time_nsec":
                nsec = int(value)
            elif key == "rx_bytes":
                peer.rx_bytes = int(value)
            elif key == "tx_bytes":
                peer.tx_bytes = int(value)
    if peer is not None:
        peer.last_handshake = sec + nsec / 1e9
    return state


def peer_changes(
    present: Mapping[str, Iterable[str]], wanted: Iterable[WantedPeer]
) -> tuple[list[WantedPeer], list[str]]:
    """(peers to add or change, public keys to remove): only what differs, nobody else touched."""
    want = {p.public_key: p for p in wanted}
    upsert = [p for key, p in want.items() if tuple(present.get(key, ())) != (p.allowed_ip,)]
    remove = [key for key in present if key not in want]
    return upsert, remove


def uapi_set(
    *,
    private_key: str | None = None,
    listen_port: int | None = None,
    upsert: Iterable[WantedPeer] = (),
    remove: Iterable[str] = (),
) -> bytes:
    """A ``set=1`` UAPI request (keys given in base64)."""
    lines = ["set=1"]
    if private_key is not None:
        lines.append(f"private_key={b64_to_hex(private_key)}")
    if listen_port is not None:
        lines.append(f"listen_port={listen_port}")
    for key in remove:
        lines += [f"public_key={b64_to_hex(key)}", "remove=true"]
    for peer in upsert:
        lines += [
            f"public_key={b64_to_hex(peer.public_key)}",
            "replace_allowed_ips=true",
            f"allowed_ip={peer.allowed_ip}",
        ]
    return ("\n".join(lines) + "\n\n").encode()


def wg_quick(
    *,
    tenant_address: str,
    edge_public_key: str,
    endpoint: str,
    edge_address: str,
    private_key: str | None,
    interface_comment: str = "",
) -> str:
    """The tenant side's wg-quick file; without ``private_key`` a placeholder says where it went."""
    ip = ipaddress.ip_address(tenant_address)
    lines = ["[Interface]"]
    if interface_comment:
        lines.append(f"# {interface_comment}")
    if private_key is not None:
        lines.append(f"PrivateKey = {private_key}")
    else:
        lines.append("# PrivateKey = <the tenant's own private key, never known to or stored by the edge>")
    lines += [
        f"Address = {ip}/{ip.max_prefixlen}",
        "",
        "[Peer]",
        f"PublicKey = {edge_public_key}",
        f"Endpoint = {endpoint}",
        f"AllowedIPs = {host_network(edge_address)}",
        "PersistentKeepalive = 25",
        "",
    ]
    return "\n".join(lines)
