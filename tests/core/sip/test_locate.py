"""RFC 3263/2782 pieces of PBX location (core/sip/locate.py)."""

from __future__ import annotations

from mcs_edge.core.sip.locate import SrvRecord, clamp_ttl, default_port, order_srv, srv_name


def test_srv_names_per_transport() -> None:
    """RFC 3263 s.4.2 service labels; tls: uses _sips._tcp."""
    assert srv_name("udp", "pbx.example.com.") == "_sip._udp.pbx.example.com"
    assert srv_name("tcp", "pbx.example.com") == "_sip._tcp.pbx.example.com"
    assert srv_name("tls", "pbx.example.com") == "_sips._tcp.pbx.example.com"
    assert (default_port("udp"), default_port("tls")) == (5060, 5061)


def test_order_by_priority_then_weight() -> None:
    """Lower priority first; within one, a random draw against the running weight sum (RFC 2782)."""
    a = SrvRecord(10, 90, 5060, "a", 60)
    b = SrvRecord(10, 10, 5060, "b", 60)
    backup = SrvRecord(20, 0, 5060, "backup", 60)
    # a draw of 0.95 of the total (100) falls in the last 10: with the group sorted by weight (b, a) the
    # running sums are 10, 100 -> a is chosen first
    assert [r.target for r in order_srv([backup, b, a], lambda: 0.95)] == ["a", "b", "backup"]
    assert [r.target for r in order_srv([backup, b, a], lambda: 0.05)] == ["b", "a", "backup"]


def test_dot_target_means_no_service() -> None:
    """RFC 2782: a target of '.' means the service is not available there."""
    assert order_srv([SrvRecord(0, 0, 5060, ".", 60)], lambda: 0.0) == []


def test_ttl_is_clamped() -> None:
    assert clamp_ttl(0, 5, 3600) == 5 and clamp_ttl(10**6, 5, 3600) == 3600 and clamp_ttl(60, 5, 3600) == 60
