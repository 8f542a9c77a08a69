"""Takeover pieces in the core: a claimed relay port, adopted bindings and lost flows, the cluster
config rules, and take_over refusing records it cannot adopt without touching the rest."""

from __future__ import annotations

import base64
import os

import pytest

from mcs_edge import config as c
from mcs_edge.core.cluster.secrets import SecretBox
from mcs_edge.core.cluster.takeover import take_over
from mcs_edge.core.media.ports import PortAllocator
from mcs_edge.core.sip.flows import BindingKey, FlowRegistry
from mcs_edge.errors import ConfigErrors

KEY = base64.b64encode(os.urandom(32)).decode()


def test_claim_hands_out_that_very_port_once_and_allocate_never_gives_it_again() -> None:
    a = PortAllocator(40000, 40009)
    pair = a.claim(40004, rtcp_mux=False)
    assert pair is not None and (pair.rtp_port, pair.rtcp_port) == (40004, 40005)
    assert a.claim(40004, rtcp_mux=False) is None and a.claim(40005, rtcp_mux=True) is None
    single = a.claim(40007, rtcp_mux=True)
    assert single is not None and single.rtcp_port is None
    assert a.claim(40006, rtcp_mux=False) is None  # half of that slot is taken
    assert a.claim(39998, rtcp_mux=True) is None and a.claim(40003, rtcp_mux=False) is None
    handed = set()
    while (x := a.allocate(rtcp_mux=True)) is not None:
        handed.add(x.rtp_port)
    assert handed.isdisjoint({40004, 40005, 40007}) and 40006 in handed
    a.release(40004)
    a.release(40007)
    assert a.claim(40004, rtcp_mux=False) is not None


def test_adopted_binding_resolves_its_tokens_and_takes_the_calls_of_its_lost_flow_when_it_binds() -> None:
    reg = FlowRegistry(grace=20.0)
    key = BindingKey("acme", "sip:a@x", "urn:uuid:1", "1")
    reg.adopt_binding(key, ["t1", "t2"], {"al": "sip:a@x"}, now=100.0)
    assert reg.resolve("t1") is reg.bindings[key] and reg.bindings[key].flow_id is None
    lost = reg.adopt_lost(900, "acme", key, now=100.0)
    assert lost.deadline == 120.0 and reg.bindings[key].lost_flows == [900]
    assert reg.get_timer() == 120.0
    replaced = reg.bind(key, 7, "t3", {}, now=101.0)  # the client is back on this node
    assert replaced is not None and reg.same_instance(900, 7)
    assert [x.flow_id for x in reg.expired(121.0)] == [900]


def _cluster(extra: str) -> str:
    return (
        f'[cluster]\nenabled = true\n{extra}\n[[tenants]]\nid = "t"\ndomains = ["t.example.com"]\n'
        'backend_sip = "udp:127.0.0.1:5060"\n'
    )


def test_cluster_config_needs_a_32_byte_key_and_one_worker() -> None:
    with pytest.raises(ConfigErrors, match=r"cluster\.key.*required"):
        c.loads(_cluster(""))
    with pytest.raises(ConfigErrors, match="32 bytes") as exc:
        c.loads(_cluster('key = "c2hvcnQ="'))
    assert "c2hvcnQ=" not in str(exc.value)
    with pytest.raises(ConfigErrors, match="workers = 1"):
        c.loads("[edge]\nworkers = 2\n" + _cluster(f'key = "{KEY}"'))
    cfg = c.loads(_cluster(f'key = "{KEY}"\nrole = "standby"'))
    assert cfg.cluster.role == "standby" and cfg.cluster.sync_interval == 0.1


class _Tenants:
    def by_id(self, tid: str) -> object | None:
        return object() if tid == "acme" else None


class _Proxy:
    def __init__(self) -> None:
        self.flow_registry = FlowRegistry()
        self.calls = type("Calls", (), {"calls": {}})()
        self.adopted: list[BindingKey] = []

    def adopt_binding(self, key: BindingKey, tokens: list[str], aliases: dict[str, str], now: float) -> None:
        self.adopted.append(key)


def test_take_over_refuses_what_it_cannot_adopt_and_goes_on() -> None:
    """Unknown tenant, a broken record, a call whose secrets do not open: each refused with a
    reason; the good binding is adopted."""
    binding = {
        "kind": "binding",
        "aor": "sip:a@x",
        "instance": "u",
        "reg_id": "1",
        "tokens": ["t"],
        "aliases": {},
    }
    sealed = {"n": "AAAAAAAAAAAAAAAA", "c": "AAAAAAAAAAAAAAAAAAAAAA=="}
    records = {
        "b1": {**binding, "tenant": "acme"},
        "b2": {**binding, "tenant": "other"},
        "b3": {"kind": "binding", "tenant": "acme"},
        "c1": {
            "kind": "call",
            "call_id": "x",
            "tenant": "acme",
            "from_client": True,
            "dialog": {"local": "a", "remote": "b", "target": "sip:b@y", "routes": [], "cseq": 1},
            "media": {"ice_local": [["u", sealed]], "legs": [], "sdp": []},
        },
    }
    proxy = _Proxy()
    out = take_over(records, SecretBox(os.urandom(32), os.urandom), proxy, None, _Tenants(), 1.0)
    assert out.bindings == 1 and out.calls == 0 and len(proxy.adopted) == 1
    refused = dict(out.refused)
    assert "unknown tenant" in refused["b2"] and "aor" in refused["b3"]
    assert "does not open" in refused["c1"]
