"""The [guard], [tenants.guard] and shaping aggregate keys: defaults, validation, error paths."""

from __future__ import annotations

import pytest

from mcs_edge import config as c
from mcs_edge.errors import ConfigErrors

TENANT = '[[tenants]]\nid = "rossi"\ndomains = ["rossi.example.com"]\nbackend_sip = "udp:10.1.0.10:5060"\n'


def _errors(text: str) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        c.loads(text)
    return [str(e) for e in info.value.errors]


def test_defaults() -> None:
    """Without the sections the guard and shaping defaults apply (aggregate off)."""
    cfg = c.loads(TENANT)
    g = cfg.guard
    assert (g.max_connections_per_ip, g.connection_rate_per_ip, g.connection_burst_per_ip) == (64, 5.0, 20)
    assert (g.request_rate_per_ip, g.request_burst_per_ip) == (20.0, 100)
    assert (g.ban_failures, g.ban_window, g.ban_duration) == (10, 60.0, 600.0)
    assert g.allow_networks == () and cfg.tenants[0].guard.allow_networks == ()
    assert (cfg.shaping.aggregate_rate, cfg.shaping.aggregate_burst, cfg.shaping.send_queue) == (0, 0, 262144)
    assert cfg.tenants[0].shaping.aggregate_rate is None


def test_keys_parse() -> None:
    """Every new key is accepted with its documented meaning."""
    cfg = c.loads(
        '[guard]\nmax_connections_per_ip = 0\nrequest_rate_per_ip = 2.5\nallow_networks = ["10.0.0.0/8", "2001:db8::/32"]\n'
        "ban_failures = 3\nban_window = 10\nban_duration = 30\nipv6_prefix = 56\nmax_sources = 5000\n"
        "[shaping]\naggregate_rate = 500000\naggregate_burst = 0\nsend_queue = 65536\n"
        + TENANT
        + '[tenants.guard]\nallow_networks = ["192.0.2.0/24"]\n[tenants.shaping]\naggregate_rate = 0\naggregate_burst = 3000\n'
    )
    assert cfg.guard.allow_networks == ("10.0.0.0/8", "2001:db8::/32")
    assert cfg.guard.request_rate_per_ip == 2.5 and cfg.guard.ipv6_prefix == 56
    assert cfg.tenants[0].guard.allow_networks == ("192.0.2.0/24",)
    assert cfg.tenants[0].shaping.aggregate_rate == 0 and cfg.tenants[0].shaping.aggregate_burst == 3000


def test_bad_values_name_their_key() -> None:
    """Every error names the key path and the reason."""
    errors = _errors(
        '[guard]\nallow_networks = ["10.0.0.1/8"]\nban_failures = 0\nban_duration = -1\nipv6_prefix = 129\nbogus = 1\n'
        "[shaping]\naggregate_burst = 10\n" + TENANT + '[tenants.guard]\nallow_networks = ["nope"]\n'
    )
    text = "\n".join(errors)
    for path in (
        "guard.allow_networks[0]",
        "guard.ban_failures",
        "guard.ban_duration",
        "guard.ipv6_prefix",
        "guard.bogus: unknown key",
        "shaping.aggregate_burst: 10 is below the minimum 1500 (or 0)",
        "tenants[0].guard.allow_networks[0]",
    ):
        assert path in text, text


def test_keys_are_listed_with_docs() -> None:
    """`mcs-edge keys` lists the new keys with a description."""
    rows = {path: doc for path, _default, doc in c.describe_keys()}
    for key in (
        "guard.max_connections_per_ip",
        "guard.request_rate_per_ip",
        "guard.allow_networks",
        "guard.ban_failures",
        "shaping.aggregate_rate",
        "shaping.send_queue",
    ):
        assert rows.get(key), key
