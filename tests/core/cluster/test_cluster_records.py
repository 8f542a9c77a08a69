"""Replication records (core/cluster): what a call and a binding become in Redis, secrets sealed,
change detection, the bounded coalescing queue and the standby's replica."""

from __future__ import annotations

import base64
import json
import os

import pytest
from core.media.test_session import bridge, legs

from mcs_edge.core.cluster.records import (
    SAFE_JUMP,
    binding_record,
    decode,
    encode,
    key_for_binding,
    key_for_call,
    open_secrets,
    snapshot,
)
from mcs_edge.core.cluster.replication import CachingBox, ChangeTracker, Replica, WriteQueue
from mcs_edge.core.cluster.secrets import SecretBox, parse_key
from mcs_edge.core.media.sdp import Profile
from mcs_edge.core.sip.calls import CallTable, Dialog
from mcs_edge.core.sip.flows import BindingKey, FlowRegistry

KEY = os.urandom(32)
PREFIX = "mcs:test:"


def box() -> CachingBox:
    return CachingBox(SecretBox(KEY, os.urandom))


class _Flow:
    token = "tok123"


def _state() -> tuple[CallTable, FlowRegistry, dict[str, object]]:
    calls = CallTable()
    calls.invite("call-1", "acme", 7, True, 1.0)
    calls.answered("call-1", 2.0)
    calls.calls["call-1"].dialog = Dialog("<sip:a@x>;tag=1", "<sip:b@y>;tag=2", "sip:b@10.1.0.10", (), 3)
    calls.invite("call-ringing", "acme", 7, True, 1.5)  # not answered: not replicated
    registry = FlowRegistry()
    registry.bind(BindingKey("acme", "sip:a@x", "urn:uuid:1", "1"), 7, "tok123", {}, 1.0)
    session, _ports, _browser, _sdes = bridge(Profile.SDES)
    return calls, registry, {"call-1": session}


def test_a_call_record_carries_dialog_legs_and_sealed_secrets_only() -> None:
    """The record has the dialog, ports and ICE ufrags in clear; ICE passwords and SRTP keys appear
    nowhere in clear; open_secrets gives them back with the right key."""
    calls, registry, sessions = _state()
    b = box()
    records = snapshot(calls, {7: _Flow()}, registry, sessions, b, PREFIX, "n1", 10.0)
    key = key_for_call(PREFIX, "call-1")
    assert set(records) == {key, key_for_binding(PREFIX, next(iter(registry.bindings)))}
    raw = encode(records[key])
    session = sessions["call-1"]
    client, pbx = legs(session)  # type: ignore[arg-type]
    for secret in (client.ice.local_pwd, client.ice.remote_pwd):
        assert secret.encode() not in raw
    for k in (client.srtp.local_key, client.srtp.remote_key, pbx.srtp.local_key):
        assert base64.b64encode(k) not in raw and k not in raw
    record = decode(raw)
    assert record["dialog"]["target"] == "sip:b@10.1.0.10" and record["token"] == "tok123"
    ports = {leg["side"]: leg["port"] for leg in record["media"]["legs"]}
    assert ports == {"CLIENT": client.port, "PBX": pbx.port}
    opened = open_secrets(record, b, key)
    by_side = {leg["side"]: leg for leg in opened["media"]["legs"]}
    assert by_side["CLIENT"]["ice"]["local_pwd"] == client.ice.local_pwd
    assert base64.b64decode(by_side["PBX"]["srtp"]["local"]) == pbx.srtp.local_key
    assert by_side["CLIENT"]["srtp"]["tx_index"] == client.tx_packets
    assert SAFE_JUMP < 1 << 15


def test_a_sealed_value_does_not_open_with_another_key_or_under_another_record() -> None:
    calls, registry, sessions = _state()
    key = key_for_call(PREFIX, "call-1")
    record = decode(encode(snapshot(calls, {}, registry, sessions, box(), PREFIX, "n1", 1.0)[key]))
    with pytest.raises(ValueError, match="does not open"):
        open_secrets(record, CachingBox(SecretBox(os.urandom(32), os.urandom)), key)
    with pytest.raises(ValueError, match="does not open"):
        open_secrets(record, box(), key_for_call(PREFIX, "another-call"))


def test_cluster_key_must_be_32_bytes_of_base64_and_errors_never_echo_it() -> None:
    good = base64.b64encode(KEY).decode()
    assert parse_key(good) == KEY
    for bad in ("not base64!!", base64.b64encode(b"short").decode()):
        with pytest.raises(ValueError) as exc:
            parse_key(bad)
        assert bad not in str(exc.value)


def test_change_tracker_writes_changes_refreshes_and_deletes() -> None:
    """Volatile counters do not cause writes; a real change, the refresh period and a vanished key do."""
    t = ChangeTracker(refresh=5.0)
    rec = {"v": 1, "kind": "call", "written": 1.0, "state": "up", "legs": [{"tx_packets": 1}]}
    assert [k for k, _ in t.sync({"a": rec}, 1.0)] == ["a"]
    busy = {**rec, "written": 2.0, "legs": [{"tx_packets": 99}]}
    assert t.sync({"a": busy}, 2.0) == []
    assert [k for k, _ in t.sync({"a": {**busy, "state": "grace"}}, 3.0)] == ["a"]
    assert [k for k, _ in t.sync({"a": {**busy, "state": "grace"}}, 8.1)] == ["a"]  # refresh
    assert t.sync({}, 9.0) == [("a", None)]
    t.sync({"b": rec}, 10.0)
    t.forget()
    assert [k for k, _ in t.sync({"b": rec}, 10.1)] == ["b"]


def test_write_queue_is_bounded_coalescing_and_one_batch_at_a_time() -> None:
    q = WriteQueue(limit=2)
    q.put_all([("a", b"1"), ("b", b"1"), ("a", b"2")])
    assert len(q) == 2 and q.dropped == 0
    q.put_all([("c", b"1")])
    assert q.dropped == 1 and q.out_of_sync
    batch = q.take(10)
    assert batch == [("a", b"2"), ("b", b"1")]
    assert q.take(10) == []  # one in flight
    q.done()
    assert q.written == 2
    q.put_all([("d", None)])
    q.take(10)
    q.failed()
    assert q.failed_batches == 1 and q.in_flight is None


def test_caching_box_gives_an_unchanged_secret_the_same_sealed_value() -> None:
    b = box()
    assert b.seal(b"k", b"x") == b.seal(b"k", b"x")
    assert b.seal(b"k", b"x") != b.seal(b"k", b"y")
    assert b.open(b.seal(b"k", b"x"), b"x") == b"k"


def test_replica_applies_sets_and_deletes_counts_kinds_and_measures_lag() -> None:
    r = Replica()
    binding = FlowRegistry()
    binding.bind(BindingKey("acme", "sip:a@x", "urn:uuid:1", "1"), 7, "t", {}, 0.0)
    rec = binding_record(next(iter(binding.bindings.values())), "n1", 100.0)
    assert r.apply("k1", encode(rec), 100.25)
    assert r.counts() == {"call": 0, "binding": 1}
    assert r.last_lag == pytest.approx(0.25)
    assert not r.apply("k2", b"{garbage", 101.0) and r.bad == 1
    assert not r.apply("k3", json.dumps({"v": 99}), 101.0) and r.bad == 2
    assert r.apply("k1", None, 102.0) and r.counts() == {"call": 0, "binding": 0}


def test_snapshot_cache_hands_back_unchanged_records_and_rebuilds_changed_or_old_ones() -> None:
    """An unchanged call gets the same record object (the tracker skips it without encoding); a
    state change, or the record's age reaching max_age, builds a new one; an ended call leaves."""
    calls, registry, sessions = _state()
    b = box()
    cache: dict[str, object] = {}
    tracker = ChangeTracker(refresh=5.0)
    key = key_for_call(PREFIX, "call-1")
    first = snapshot(calls, {7: _Flow()}, registry, sessions, b, PREFIX, "n1", 1.0, cache, 5.0)  # type: ignore[arg-type]
    assert len(tracker.sync(first, 1.0)) == 2
    again = snapshot(calls, {7: _Flow()}, registry, sessions, b, PREFIX, "n1", 1.1, cache, 5.0)  # type: ignore[arg-type]
    assert again[key] is first[key] and tracker.sync(again, 1.1) == []
    calls.calls["call-1"].state = "grace"
    changed = snapshot(calls, {7: _Flow()}, registry, sessions, b, PREFIX, "n1", 1.2, cache, 5.0)  # type: ignore[arg-type]
    assert changed[key] is not first[key] and [k for k, _ in tracker.sync(changed, 1.2)] == [key]
    old = snapshot(calls, {7: _Flow()}, registry, sessions, b, PREFIX, "n1", 6.3, cache, 5.0)  # type: ignore[arg-type]
    assert old[key] is not changed[key] and key in dict(tracker.sync(old, 6.3))
    calls.bye("call-1")
    snapshot(calls, {}, registry, sessions, b, PREFIX, "n1", 6.4, cache, 5.0)  # type: ignore[arg-type]
    assert key not in cache
