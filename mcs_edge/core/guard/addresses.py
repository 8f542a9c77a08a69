"""Source identity and allow-lists for the guard.

Theory of operation
-------------------
Guard rules count per *source*, not per literal address. An IPv4 source is one address. An IPv6
source is a prefix (``/64`` by default): one subscriber line or one office gets a whole /64, so
counting single IPv6 addresses would let one host walk around every per-IP cap and ban. IPv4
addresses written in IPv6-mapped form (``::ffff:192.0.2.1``, as dual-stack sockets report them)
are the IPv4 source. ``source_of`` turns an address into a ``Source`` with an integer table key
(IPv4: the address as an int; IPv6: the prefix as an int with bit 128 set, so the two families
never collide) and a display string for logs and the admin API. Parsing is memoised in a bounded
LRU cache: the adapter hands the same peer address on every request of a connection.

An ``AllowList`` holds networks exempt from per-source caps and from bans: global ones and per
tenant ones (an office of one tenant behind a NAT). Membership is a handful of set lookups: the
networks are grouped by prefix length, so a test costs one shift and one set lookup per distinct
prefix length, not one comparison per network.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

__all__ = ["Address", "AllowList", "Network", "Source", "source_of"]

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network

_V6_FLAG = 1 << 128


@dataclass(frozen=True, slots=True)
class Source:
    """One counted source: ``key`` for tables, ``display`` for people, ``address`` as seen."""

    key: int
    display: str
    address: Address


@functools.lru_cache(maxsize=16384)
def source_of(ip: str | Address, ipv6_prefix: int = 64) -> Source:
    """The ``Source`` of ``ip``; raises ``ValueError`` if ``ip`` is not an IP address."""
    address = ip if isinstance(ip, IPv4Address | IPv6Address) else ip_address(ip)
    if isinstance(address, IPv6Address):
        mapped = address.ipv4_mapped
        if mapped is not None:
            address = mapped
        else:
            if not (0 <= ipv6_prefix <= 128):
                raise ValueError(f"ipv6_prefix must be within [0, 128], got {ipv6_prefix!r}")
            prefix = int(address) >> (128 - ipv6_prefix)
            if ipv6_prefix == 128:
                display = str(address)
            else:
                display = str(IPv6Network((prefix << (128 - ipv6_prefix), ipv6_prefix)))
            return Source(_V6_FLAG | prefix, display, address)
    return Source(int(address), str(address), address)


class _NetworkSet:
    """Networks of one family grouped by prefix length: ``(prefixlen, shift, {network ints})``."""

    __slots__ = ("_groups",)

    def __init__(self, networks: Iterable[Network], bits: int) -> None:
        groups: dict[int, set[int]] = {}
        for net in networks:
            groups.setdefault(net.prefixlen, set()).add(int(net.network_address) >> (bits - net.prefixlen))
        self._groups = tuple(
            (bits - plen, frozenset(ints)) for plen, ints in sorted(groups.items(), reverse=True)
        )

    def __bool__(self) -> bool:
        return bool(self._groups)

    def __contains__(self, value: int) -> bool:
        return any((value >> shift) in ints for shift, ints in self._groups)


class _Networks:
    __slots__ = ("_v4", "_v6", "networks")

    def __init__(self, networks: Iterable[Network | str]) -> None:
        nets = tuple(n if isinstance(n, IPv4Network | IPv6Network) else ip_network(n) for n in networks)
        self.networks = nets
        self._v4 = _NetworkSet((n for n in nets if isinstance(n, IPv4Network)), 32)
        self._v6 = _NetworkSet((n for n in nets if isinstance(n, IPv6Network)), 128)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def contains(self, address: Address) -> bool:
        if isinstance(address, IPv4Address):
            return int(address) in self._v4
        return int(address) in self._v6


class AllowList:
    """Networks exempt from per-source caps and bans: ``networks`` for all, ``per_tenant`` for one.

    Networks may be given as ``ipaddress`` networks or strings (``"192.0.2.0/24"``); a string with
    host bits set is refused (``ValueError``), as a typo there would silently widen the list.
    """

    __slots__ = ("_global", "_tenants")

    def __init__(
        self,
        networks: Iterable[Network | str] = (),
        per_tenant: Mapping[str, Iterable[Network | str]] | None = None,
    ) -> None:
        self._global = _Networks(networks)
        self._tenants = {
            tenant: nets
            for tenant, nets in ((t, _Networks(n)) for t, n in (per_tenant or {}).items())
            if nets
        }

    @property
    def networks(self) -> tuple[Network, ...]:
        """The global networks."""
        return self._global.networks

    def tenant_networks(self, tenant: str) -> tuple[Network, ...]:
        """The networks allow-listed for ``tenant`` only."""
        nets = self._tenants.get(tenant)
        return nets.networks if nets is not None else ()

    def is_global(self, address: Address) -> bool:
        """Whether ``address`` is in a globally allow-listed network."""
        return self._global.contains(address)

    def for_tenant(self, address: Address, tenant: str | None) -> bool:
        """Whether ``address`` is allow-listed for ``tenant`` specifically (not counting global ones)."""
        if tenant is None:
            return False
        nets = self._tenants.get(tenant)
        return nets is not None and nets.contains(address)

    def allows(self, address: Address, tenant: str | None) -> bool:
        """Whether ``address`` is exempt for ``tenant``: globally or by that tenant's list."""
        return self._global.contains(address) or self.for_tenant(address, tenant)
