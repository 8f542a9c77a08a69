"""Which peer addresses a TURN allocation may reach (RFC 8656 s.21.2.3, "open relay" abuse).

Theory of operation
-------------------
A TURN server relays to whatever XOR-PEER-ADDRESS a client names, so without a policy it is a
proxy into the edge's own networks (the PBXs, admin ports, cloud metadata services). The TURN core
asks ``peer_allowed(tenant, ip)`` on CreatePermission and ChannelBind (never per packet) and
answers 403 Forbidden when it says no.

:class:`PeerPolicy` refuses, unless the address is inside an allow-listed network (global or per
tenant):

* IPv4: unspecified/"this network" 0.0.0.0/8, loopback 127/8, RFC 1918 private 10/8,
  172.16/12, 192.168/16, CGNAT shared space 100.64/10, link-local 169.254/16, IETF protocol
  assignments 192.0.0.0/24, multicast 224/4, reserved 240/4 and broadcast;
* IPv6: unspecified ::, loopback ::1, unique-local fc00::/7, link-local fe80::/10, site-local
  fec0::/10, multicast ff00::/8, and IPv4-mapped/NAT64 addresses whose IPv4 part is refused;
* the edge's own addresses.

Documentation ranges (192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32) are not refused, so
tests can use them as "public" peers. The allow-list is checked first, so an operator can let a
tenant's relays reach, say, its PBX on 10.1.2.3 by allow-listing 10.1.2.0/24 for that tenant.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

__all__ = ["RESTRICTED_NETWORKS", "PeerPolicy", "default_peer_policy", "is_restricted_ip"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

RESTRICTED_NETWORKS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.168.0.0/16",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::/128",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _parse(ip: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return None


def _embedded_v4(addr: IPAddress) -> ipaddress.IPv4Address | None:
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return addr.ipv4_mapped
        if addr in _NAT64:
            return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def is_restricted_ip(ip: str) -> bool:
    """True if ``ip`` is in one of :data:`RESTRICTED_NETWORKS` (or is not an IP address at all)."""
    addr = _parse(ip)
    if addr is None:
        return True
    v4 = _embedded_v4(addr)
    if v4 is not None:
        addr = v4
    return any(addr.version == net.version and addr in net for net in RESTRICTED_NETWORKS)


class PeerPolicy:
    """``peer_allowed(tenant, ip)`` for the TURN core (see the module docstring)."""

    __slots__ = ("_allow", "_own", "_tenant_allow")

    def __init__(
        self,
        *,
        own_addresses: Iterable[str] = (),
        allow_networks: Iterable[str] = (),
        tenant_allow_networks: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        own: set[IPAddress] = set()
        for ip in own_addresses:
            addr = _parse(ip)
            if addr is None:
                raise ValueError(f"not an IP address: {ip!r}")
            own.add(addr)
        self._own = frozenset(own)
        self._allow = tuple(ipaddress.ip_network(n, strict=False) for n in allow_networks)
        self._tenant_allow = {
            tenant: tuple(ipaddress.ip_network(n, strict=False) for n in nets)
            for tenant, nets in (tenant_allow_networks or {}).items()
        }

    def __call__(self, tenant: str, ip: str) -> bool:
        """True if ``tenant``'s allocations may send to ``ip``."""
        addr = _parse(ip)
        if addr is None:
            return False
        v4 = _embedded_v4(addr)
        candidates = (addr,) if v4 is None else (addr, v4)
        for nets in (self._allow, self._tenant_allow.get(tenant, ())):
            for net in nets:
                if any(c.version == net.version and c in net for c in candidates):
                    return True
        if any(c in self._own for c in candidates):
            return False
        return not is_restricted_ip(ip)


def default_peer_policy(tenant: str, ip: str) -> bool:
    """Refuse the restricted networks; no allow-list, no own addresses (use PeerPolicy for those)."""
    return not is_restricted_ip(ip)
