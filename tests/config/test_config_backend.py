"""Config keys of the PBX transports: what the runtime cannot do is refused."""

from __future__ import annotations

import pytest

from mcs_edge import config as c
from mcs_edge.errors import ConfigErrors

TENANT = '[[tenants]]\nid = "r"\ndomains = ["r.example.com"]\n'


def _error(text: str) -> tuple[str, str]:
    with pytest.raises(ConfigErrors) as exc:
        c.loads(text)
    first = exc.value.errors[0]
    return first.path, first.reason


def test_bridge_sdes_over_cleartext_to_a_remote_pbx_is_refused() -> None:
    """SDES keys travel in the SDP: bridge-sdes toward a udp:/tcp: PBX on the network is a config error."""
    for transport in ("udp", "tcp"):
        path, reason = _error(TENANT + f'backend_sip = "{transport}:10.1.0.10:5060"\nmedia = "bridge-sdes"\n')
        assert path == "tenants[0].media" and "tls:" in reason


def test_bridge_sdes_over_tls_or_loopback_is_accepted() -> None:
    """tls: carries the keys encrypted; a PBX on this machine's loopback never puts them on a network."""
    cfg = c.loads(TENANT + 'backend_sip = "tls:pbx.example.net:5061"\nmedia = "bridge-sdes"\n')
    assert cfg.tenants[0].backend_sip.transport == "tls"
    c.loads(TENANT + 'backend_sip = "udp:127.0.0.1:5060"\nmedia = "bridge-sdes"\n')


def test_backend_tls_needs_a_tls_backend() -> None:
    """backend_tls settings on a udp: tenant would be silently unused: refused."""
    path, reason = _error(
        TENANT + 'backend_sip = "udp:10.1.0.10:5060"\n[tenants.backend_tls]\nca = "ca.pem"\n'
    )
    assert path == "tenants[0].backend_tls" and "tls:" in reason


def test_backend_tls_client_certificate_needs_its_key() -> None:
    """cert_file and key_file go together."""
    path, reason = _error(
        TENANT + 'backend_sip = "tls:10.1.0.10:5061"\n[tenants.backend_tls]\ncert_file = "c.pem"\n'
    )
    assert path == "tenants[0].backend_tls.cert_file" and "go together" in reason


def test_backend_tls_keys_load() -> None:
    """ca, server_name, cert_file and key_file are read as given; defaults are the system store and the host."""
    cfg = c.loads(
        TENANT + 'backend_sip = "tls:10.1.0.10:5061"\n[tenants.backend_tls]\nca = "pbx-ca.pem"\n'
        'server_name = "PBX.Example.net"\ncert_file = "c.pem"\nkey_file = "k.pem"\n'
    )
    tls = cfg.tenants[0].backend_tls
    assert (tls.ca, tls.server_name, tls.cert_file, tls.key_file) == (
        "pbx-ca.pem",
        "pbx.example.net",
        "c.pem",
        "k.pem",
    )
    assert c.loads(TENANT + 'backend_sip = "tls:10.1.0.10:5061"\n').tenants[0].backend_tls.ca is None


def test_backend_stream_timing_keys_are_bounded() -> None:
    """The keepalive interval cannot be set below 5 s (RFC 5626 pongs take up to 10 s anyway)."""
    path, _reason = _error("[sip]\nbackend_keepalive = 1\n")
    assert path == "sip.backend_keepalive"


def test_backend_without_port_is_a_name_for_srv_or_an_ip_on_the_default_port() -> None:
    """RFC 3263: a name without port is located by SRV (port 0 here); an IP gets 5060/5061."""
    srv = c.loads(TENANT + 'backend_sip = "tcp:PBX.Example.net."\n').tenants[0].backend_sip
    assert (srv.transport, srv.host, srv.port, str(srv)) == (
        "tcp",
        "pbx.example.net",
        0,
        "tcp:pbx.example.net",
    )
    assert c.loads(TENANT + 'backend_sip = "tls:10.1.0.10"\n').tenants[0].backend_sip.port == 5061
    assert (
        c.loads(TENANT + 'backend_sip = "udp:[2001:db8::1]"\n').tenants[0].backend_sip.host == "2001:db8::1"
    )


def test_dns_servers_are_ip_addresses() -> None:
    """dns.servers take IP or IP:port (53 by default); a name there could never be resolved."""
    cfg = c.loads('[dns]\nservers = ["192.0.2.53", "127.0.0.1:5353"]\n')
    assert [(s.host, s.port) for s in cfg.dns.servers] == [("192.0.2.53", 53), ("127.0.0.1", 5353)]
    path, _reason = _error('[dns]\nservers = ["ns.example.net:53"]\n')
    assert path == "dns.servers[0]"
    path, _reason = _error("[dns]\nmin_ttl = 100\nmax_ttl = 10\n")
    assert path == "dns.min_ttl"


def test_backend_check_interval_is_off_or_at_least_a_second() -> None:
    """0 switches the OPTIONS check off; anything between 0 and 1 s would flood the PBX."""
    assert c.loads(TENANT + 'backend_sip = "udp:10.1.0.10:5060"\n').tenants[0].backend_check_interval == 0
    cfg = c.loads(TENANT + 'backend_sip = "udp:10.1.0.10:5060"\nbackend_check_interval = 10\n')
    assert cfg.tenants[0].backend_check_interval == 10
    path, reason = _error(TENANT + 'backend_sip = "udp:10.1.0.10:5060"\nbackend_check_interval = 0.2\n')
    assert path == "tenants[0].backend_check_interval" and "(or 0)" in reason


TUNNEL = '[edge]\nbackend_address = "10.77.0.1"\n[tunnel]\ninterface = "mcs0"\naddress = "10.77.0.1/16"\n'


def test_tunnel_tenant_config_is_checked() -> None:
    """The tenant's tunnel address lies in the tunnel network, is unique, and is where its PBX is reached."""
    ok = c.loads(TUNNEL + TENANT + 'backend_sip = "udp:10.77.3.2:5060"\ntunnel = { address = "10.77.3.2" }\n')
    assert ok.tenants[0].tunnel is not None and ok.tunnel.listen_port == 51820
    path, _ = _error(
        TUNNEL + TENANT + 'backend_sip = "udp:10.77.3.2:5060"\ntunnel = { address = "10.78.3.2" }\n'
    )
    assert path == "tenants[0].tunnel.address"
    path, _ = _error(
        TUNNEL + TENANT + 'backend_sip = "udp:10.1.0.10:5060"\ntunnel = { address = "10.77.3.2" }\n'
    )
    assert path == "tenants[0].backend_sip"
    path, _ = _error(TENANT + 'backend_sip = "udp:10.77.3.2:5060"\ntunnel = { address = "10.77.3.2" }\n')
    assert path == "tenants[0].tunnel"
    path, _ = _error(
        TUNNEL
        + TENANT
        + 'backend_sip = "udp:10.77.3.2:5060"\ntunnel = { address = "10.77.3.2", public_key = "x" }\n'
    )
    assert path == "tenants[0].tunnel.public_key"


def test_bridge_sdes_inside_the_tunnel_is_accepted() -> None:
    """SDES keys over UDP are fine inside the WireGuard tunnel (encrypted on the way)."""
    c.loads(
        TUNNEL
        + TENANT
        + 'backend_sip = "udp:10.77.3.2:5060"\nmedia = "bridge-sdes"\ntunnel = { address = "10.77.3.2" }\n'
    )


def test_tunnel_needs_the_edge_backend_address_and_one_worker() -> None:
    """The PBXs see the edge at its tunnel address; the backhaul runs in a single process."""
    path, _ = _error('[tunnel]\ninterface = "mcs0"\naddress = "10.77.0.1/16"\n')
    assert path == "edge.backend_address"
    path, _ = _error(TUNNEL.replace("[edge]\n", "[edge]\nworkers = 2\n"))
    assert path == "tunnel.interface"
