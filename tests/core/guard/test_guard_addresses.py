"""Tests for ``mcs_edge.core.guard.addresses``: source identity and allow-lists."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcs_edge.core.guard.addresses import AllowList, source_of


def test_ipv4_source_is_the_address() -> None:
    """An IPv4 source is the address; strings and address objects give the same source."""
    a = source_of("192.0.2.10")
    assert a == source_of(IPv4Address("192.0.2.10"))
    assert a.display == "192.0.2.10"
    assert a.key != source_of("192.0.2.11").key


def test_ipv6_source_is_the_slash_64() -> None:
    """All addresses of one IPv6 /64 are one source; another /64 is another source."""
    a = source_of("2001:db8:1:2::1")
    b = source_of("2001:db8:1:2:ffff:ffff:ffff:ffff")
    c = source_of("2001:db8:1:3::1")
    assert a.key == b.key != c.key
    assert a.display == "2001:db8:1:2::/64"
    assert a.address == IPv6Address("2001:db8:1:2::1")
    assert source_of("2001:db8:1:2::1", 128).display == "2001:db8:1:2::1"
    assert source_of("2001:db8:1:2::1", 48).key == source_of("2001:db8:1:3::1", 48).key


def test_ipv4_mapped_ipv6_is_the_ipv4_source() -> None:
    """A dual-stack socket's ``::ffff:a.b.c.d`` counts as the IPv4 source."""
    assert source_of("::ffff:192.0.2.10") == source_of("192.0.2.10")


def test_ipv4_and_ipv6_keys_never_collide() -> None:
    """The IPv6 prefix ``::/64`` does not share a key with IPv4 ``0.0.0.0``."""
    assert source_of("::1").key != source_of("0.0.0.0").key
    assert source_of("::1", 128).key != source_of("0.0.0.1").key


def test_invalid_input_raises_value_error() -> None:
    """A non-address or a bad prefix length raises ``ValueError``."""
    with pytest.raises(ValueError, match="does not appear"):
        source_of("pbx.example.com")
    with pytest.raises(ValueError, match="ipv6_prefix"):
        source_of("2001:db8::1", 129)


def test_allow_list_global_and_per_tenant() -> None:
    """Global networks exempt everyone's sources; tenant networks only that tenant's."""
    allow = AllowList(
        ["10.0.0.0/8", "2001:db8::/32"],
        {"rossi": ["198.51.100.0/24", "203.0.113.7/32"], "empty": []},
    )
    assert allow.allows(ip_address("10.1.2.3"), None)
    assert allow.is_global(ip_address("2001:db8:ffff::1"))
    assert not allow.allows(ip_address("11.0.0.1"), "rossi")
    assert allow.allows(ip_address("198.51.100.99"), "rossi")
    assert not allow.allows(ip_address("198.51.100.99"), "bianchi")
    assert not allow.is_global(ip_address("198.51.100.99"))
    assert allow.for_tenant(ip_address("203.0.113.7"), "rossi")
    assert not allow.for_tenant(ip_address("203.0.113.8"), "rossi")
    assert not allow.for_tenant(ip_address("203.0.113.7"), None)
    assert allow.tenant_networks("rossi")[1].prefixlen == 32
    assert allow.tenant_networks("empty") == ()
    assert len(allow.networks) == 2


def test_allow_list_refuses_host_bits() -> None:
    """A network written with host bits set is refused rather than silently widened."""
    with pytest.raises(ValueError, match="host bits"):
        AllowList(["10.0.0.1/8"])


@given(
    st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)), max_size=8),
    st.integers(0, 2**32 - 1),
)
def test_property_allow_list_matches_naive_membership(nets: list[tuple[int, int]], addr: int) -> None:
    """The grouped-by-prefix lookup agrees with ``address in network`` over every network."""
    from ipaddress import IPv4Network

    networks = [IPv4Network((value >> (32 - plen) << (32 - plen), plen)) for value, plen in nets]
    allow = AllowList(networks)
    address = IPv4Address(addr)
    assert allow.is_global(address) == any(address in n for n in networks)
