"""Tests of the TURN peer address policy."""

from __future__ import annotations

import pytest

from mcs_edge.core.stun.peer_policy import PeerPolicy, default_peer_policy, is_restricted_ip

REFUSED = [
    "127.0.0.1",
    "127.255.0.9",
    "10.0.0.1",
    "10.255.255.255",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.0.1",
    "192.168.100.200",
    "100.64.0.1",
    "100.127.255.254",
    "169.254.169.254",
    "224.0.0.251",
    "239.255.255.250",
    "0.0.0.0",
    "255.255.255.255",
    "::",
    "::1",
    "fe80::1",
    "fc00::1",
    "fd12:3456::1",
    "ff02::1",
    "::ffff:127.0.0.1",
    "::ffff:10.1.2.3",
    "64:ff9b::a00:1",
    "not-an-ip",
]
ALLOWED = [
    "8.8.8.8",
    "198.51.100.7",
    "203.0.113.9",
    "172.32.0.1",
    "100.128.0.1",
    "2001:db8::1",
    "2a00:1450::1",
]


@pytest.mark.parametrize("ip", REFUSED)
def test_restricted_addresses_are_refused(ip: str) -> None:
    """Loopback, private, CGNAT, link-local, multicast, unspecified and ULA peers are refused."""
    assert is_restricted_ip(ip)
    assert not default_peer_policy("t", ip)
    assert not PeerPolicy()("t", ip)


@pytest.mark.parametrize("ip", ALLOWED)
def test_public_addresses_are_allowed(ip: str) -> None:
    """Public (and documentation) addresses are allowed by default."""
    assert not is_restricted_ip(ip)
    assert default_peer_policy("t", ip)


def test_own_addresses_are_refused() -> None:
    """The edge's own public addresses are refused, also in IPv4-mapped form."""
    policy = PeerPolicy(own_addresses=["203.0.113.5"])
    assert not policy("t", "203.0.113.5")
    assert not policy("t", "::ffff:203.0.113.5")
    assert policy("t", "203.0.113.6")


def test_global_allow_list_wins() -> None:
    """A globally allow-listed network is reachable even if private."""
    policy = PeerPolicy(allow_networks=["10.1.2.0/24"])
    assert policy("any", "10.1.2.3")
    assert not policy("any", "10.1.3.3")


def test_tenant_allow_list_is_per_tenant() -> None:
    """A tenant's allow-list opens its networks to that tenant only."""
    policy = PeerPolicy(tenant_allow_networks={"rossi": ["192.168.50.0/24", "fd00:1::/64"]})
    assert policy("rossi", "192.168.50.10")
    assert policy("rossi", "fd00:1::5")
    assert not policy("bianchi", "192.168.50.10")
    assert not policy("rossi", "192.168.51.10")


def test_bad_own_address_is_a_configuration_error() -> None:
    """An own address that is not an IP is refused at construction."""
    with pytest.raises(ValueError, match="not an IP"):
        PeerPolicy(own_addresses=["edge.example.com"])
