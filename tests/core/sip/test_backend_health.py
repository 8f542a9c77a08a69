"""The PBX OPTIONS check's decisions (core/sip/health.py)."""

from __future__ import annotations

from mcs_edge.core.sip.health import (
    PROBE_BRANCH,
    BackendHealth,
    HealthState,
    SendProbe,
    StateChanged,
    options_request,
)


def drain(h: BackendHealth) -> list[object]:
    out = []
    while (a := h.next_action()) is not None:
        out.append(a)
    return out


def _health(reliable: bool = False) -> BackendHealth:
    n = iter(range(1000))
    h = BackendHealth(10.0, reliable=reliable, token=lambda: f"{next(n):04d}", t1=0.5)
    h.start(0.0)
    return h


def test_probe_answered_means_up_once() -> None:
    """Any final answer (here 404) is a live PBX; the change is reported once, not per probe."""
    h = _health()
    h.handle_timer(0.0)
    assert drain(h) == [SendProbe(PROBE_BRANCH + "0000")]
    h.response(PROBE_BRANCH + "0000", 404, 0.1)
    assert drain(h) == [StateChanged(HealthState.UNKNOWN, HealthState.UP, "PBX answered OPTIONS with 404")]
    h.handle_timer(10.0)
    h.response(PROBE_BRANCH + "0001", 200, 10.1)
    assert drain(h) == [SendProbe(PROBE_BRANCH + "0001")]
    assert h.state is HealthState.UP


def test_udp_probe_is_retransmitted_then_times_out_to_down() -> None:
    """Over UDP: resent at T1, 2*T1 (s.17.1.2.2); no answer within min(interval, 5 s): down."""
    h = _health()
    h.handle_timer(0.0)
    drain(h)
    times = []
    while (t := h.get_timer()) is not None and t < 5.0:
        times.append(t)
        h.handle_timer(t)
        assert all(isinstance(a, SendProbe) and a.retransmission for a in drain(h))
    assert times == [0.5, 1.5, 3.5]
    h.handle_timer(5.0)
    changes = [a for a in drain(h) if isinstance(a, StateChanged)]
    assert changes == [StateChanged(HealthState.UNKNOWN, HealthState.DOWN, "no answer to OPTIONS within 5 s")]


def test_tcp_probe_is_sent_once() -> None:
    """Over a reliable transport there is no retransmission timer."""
    h = _health(reliable=True)
    h.handle_timer(0.0)
    drain(h)
    assert h.get_timer() == 5.0


def test_transport_failure_is_down_at_once_and_an_answer_brings_it_back() -> None:
    """Link in backoff / name unresolvable: down now; the next answered probe: up."""
    h = _health()
    h.transport_failed("connection refused", 1.0)
    assert drain(h) == [StateChanged(HealthState.UNKNOWN, HealthState.DOWN, "connection refused")]
    h.handle_timer(0.0)
    (probe,) = drain(h)
    assert isinstance(probe, SendProbe)
    h.response(probe.branch, 200, 2.0)
    assert drain(h)[0] == StateChanged(HealthState.DOWN, HealthState.UP, "PBX answered OPTIONS with 200")


def test_503_is_down_and_stray_branches_are_ignored() -> None:
    """A PBX answering 503 cannot take calls; answers to other branches change nothing."""
    h = _health()
    h.handle_timer(0.0)
    (probe,) = drain(h)
    assert isinstance(probe, SendProbe)
    h.response("z9hG4bKother", 200, 0.1)
    assert drain(h) == []
    h.response(probe.branch, 503, 0.2)
    assert h.state is HealthState.DOWN


def test_options_request_shape() -> None:
    """Via with our transport and rport, a CSeq OPTIONS, no body."""
    data = options_request(
        branch=PROBE_BRANCH + "x",
        transport="tls",
        via_host="10.0.0.5",
        via_port=5070,
        target="pbx.example.net",
        domain="rossi.example.com",
        call_id="c1",
        tag="t1",
        server_name="mcs-edge",
    ).decode()
    assert data.startswith(
        "OPTIONS sip:pbx.example.net SIP/2.0\r\nVia: SIP/2.0/TLS 10.0.0.5:5070;branch=z9hG4bKhx;rport"
    )
    assert "CSeq: 1 OPTIONS" in data and data.endswith("Content-Length: 0\r\n\r\n")
