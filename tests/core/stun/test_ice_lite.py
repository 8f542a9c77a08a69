"""Tests of the ICE-lite responder: checks, authentication, nomination, consent, restart."""

from __future__ import annotations

import re
import secrets

import pytest

from mcs_edge.core.stun import message as m
from mcs_edge.core.stun.ice_lite import (
    ConsentLost,
    IceEvent,
    IceLiteResponder,
    SelectedAddressChanged,
    generate_credentials,
)
from mcs_edge.core.stun.message import CLASS_ERROR, CLASS_INDICATION, CLASS_REQUEST, CLASS_SUCCESS, Message
from mcs_edge.errors import LocalProtocolError

REMOTE_UFRAG = "rUfr"
REMOTE_PWD = "remote-password-is-long-enough"
PEER = ("198.51.100.7", 50000)
PEER2 = ("203.0.113.8", 50002)


def make_leg(**kwargs: object) -> IceLiteResponder:
    return IceLiteResponder(
        remote_ufrag=REMOTE_UFRAG, remote_pwd=REMOTE_PWD, random_bytes=secrets.token_bytes, **kwargs
    )  # type: ignore[arg-type]


def check(
    leg: IceLiteResponder,
    *,
    username: str | None = None,
    pwd: str | None = None,
    priority: int | None = 1000,
    use_candidate: bool = False,
    controlling: bool = True,
    controlled: bool = False,
    extra: tuple[m.Attribute, ...] = (),
    cls: int = CLASS_REQUEST,
    method: int = m.METHOD_BINDING,
    integrity: bool = True,
    fingerprint: bool = True,
) -> bytes:
    """A connectivity check as a full agent would send it."""
    attrs: list[m.Attribute] = [m.Username(username or f"{leg.local_ufrag}:{REMOTE_UFRAG}")]
    if priority is not None:
        attrs.append(m.Priority(priority))
    if controlling:
        attrs.append(m.IceControlling(0x1234))
    if controlled:
        attrs.append(m.IceControlled(0x5678))
    if use_candidate:
        attrs.append(m.UseCandidate())
    attrs.extend(extra)
    msg = Message(method, cls, Message.new_transaction_id(secrets.token_bytes), tuple(attrs))
    key = (pwd or leg.local_pwd).encode() if integrity else None
    return msg.serialize(integrity_key=key, fingerprint=fingerprint)


def answer(leg: IceLiteResponder, data: bytes, addr: tuple[str, int] = PEER, now: float = 0.0) -> Message:
    out = leg.receive(data, addr, now)
    assert out is not None
    msg = Message.parse(out)
    assert msg.transaction_id == Message.parse(data).transaction_id
    return msg


def error_code(msg: Message) -> int:
    assert msg.cls == CLASS_ERROR
    code = msg.get(m.ErrorCode)
    assert code is not None
    return code.code


def events(leg: IceLiteResponder) -> list[IceEvent]:
    out: list[IceEvent] = []
    while (ev := leg.next_event()) is not None:
        out.append(ev)
    return out


# --- answering checks ---------------------------------------------------------------------------


@pytest.mark.parametrize("addr", [PEER, ("2001:db8::7", 40000)])
def test_good_check_is_answered(addr: tuple[str, int]) -> None:
    """A valid check gets a success with XOR-MAPPED-ADDRESS, integrity (local pwd) and FINGERPRINT."""
    leg = make_leg()
    out = leg.receive(check(leg), addr, 5.0)
    assert out is not None
    msg = Message.parse(out)
    assert (msg.method, msg.cls) == (m.METHOD_BINDING, CLASS_SUCCESS)
    assert msg.get(m.XorMappedAddress) == m.XorMappedAddress(*addr)
    view = m.parse_view(out)
    assert view.check_integrity(leg.local_pwd.encode())
    assert view.check_fingerprint()
    assert leg.stats.checks == 1


def test_response_is_fresh_per_transaction() -> None:
    """Two checks from the same address get responses with their own transaction ids."""
    leg = make_leg()
    first = answer(leg, check(leg))
    second = answer(leg, check(leg))
    assert first.transaction_id != second.transaction_id


def test_bad_integrity_is_401_without_integrity() -> None:
    """A check signed with the wrong password gets 401 and the response carries no MI."""
    leg = make_leg()
    out = leg.receive(check(leg, pwd="x" * 22), PEER, 0.0)
    assert out is not None
    msg = Message.parse(out)
    assert error_code(msg) == 401
    assert msg.get(m.MessageIntegrity) is None
    assert leg.stats.auth_failures == 1
    assert leg.get_timer() is None  # no state was created


@pytest.mark.parametrize(
    "username",
    ["zzzz:rUfr", "{local}:wrong", "{local}", "{local}:", ":rUfr"],
)
def test_unknown_username_is_401(username: str) -> None:
    """USERNAME must be exactly local_ufrag:remote_ufrag."""
    leg = make_leg()
    assert error_code(answer(leg, check(leg, username=username.format(local=leg.local_ufrag)))) == 401


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"integrity": False}, 400),
        ({"priority": None}, 400),
        ({"controlling": False}, 400),
        ({"method": m.METHOD_ALLOCATE}, 400),
    ],
    ids=["no-integrity", "no-priority", "no-role", "not-binding"],
)
def test_bad_requests_are_400(kwargs: dict[str, object], code: int) -> None:
    """Checks missing a required attribute, or of another method, are answered 400."""
    leg = make_leg()
    assert error_code(answer(leg, check(leg, **kwargs))) == code  # type: ignore[arg-type]


def test_missing_username_is_400() -> None:
    """A request without USERNAME is 400 (RFC 8489 s.9.1.3)."""
    leg = make_leg()
    msg = Message(m.METHOD_BINDING, CLASS_REQUEST, bytes(12), (m.Priority(1), m.IceControlling(1)))
    out = leg.receive(msg.serialize(integrity_key=leg.local_pwd.encode()), PEER, 0.0)
    assert out is not None
    assert error_code(Message.parse(out)) == 400


def test_malformed_attribute_in_request_is_400() -> None:
    """A binding request with a broken attribute is answered 400."""
    leg = make_leg()
    data = bytearray(bytes(Message(m.METHOD_BINDING, CLASS_REQUEST, bytes(12), (m.Priority(1),))))
    data[22:24] = b"\x00\x09"  # PRIORITY length 9: overruns
    out = leg.receive(bytes(data), PEER, 0.0)
    assert out is not None
    assert error_code(Message.parse(out)) == 400


def test_role_conflict_is_487() -> None:
    """A peer claiming the controlled role gets 487 (a lite agent cannot become controlling)."""
    leg = make_leg()
    out = leg.receive(check(leg, controlling=False, controlled=True), PEER, 0.0)
    assert out is not None
    assert error_code(Message.parse(out)) == 487
    assert m.parse_view(out).check_integrity(leg.local_pwd.encode())
    assert leg.stats.role_conflicts == 1


def test_unknown_comprehension_required_attribute_is_420() -> None:
    """An authenticated check with an unknown mandatory attribute gets 420 + UNKNOWN-ATTRIBUTES."""
    leg = make_leg()
    msg = answer(leg, check(leg, extra=(m.UnknownAttribute(0x7F01, b"x"),)))
    assert error_code(msg) == 420
    assert msg.get(m.UnknownAttributes) == m.UnknownAttributes((0x7F01,))


def test_unknown_optional_attribute_is_ignored() -> None:
    """Unknown comprehension-optional attributes (e.g. GOOG-NETWORK-INFO) do not hurt."""
    leg = make_leg()
    msg = answer(leg, check(leg, extra=(m.UnknownAttribute(0xC057, b"\x00\x01\x00\x0a"),)))
    assert msg.cls == CLASS_SUCCESS


def _flip_last(message: bytes) -> bytes:
    """The message with its last FINGERPRINT byte changed (one message: its transaction id is random)."""
    return message[:-1] + bytes((message[-1] ^ 0x01,))


@pytest.mark.parametrize(
    "data_factory",
    [
        lambda leg: check(leg, cls=CLASS_INDICATION),
        lambda leg: check(leg, cls=CLASS_SUCCESS),
        lambda leg: b"\x80\x00" + bytes(30),
        lambda leg: b"",
        lambda leg: _flip_last(check(leg)),
    ],
    ids=["indication", "response", "rtp", "empty", "bad-fingerprint"],
)
def test_non_requests_and_garbage_are_dropped(data_factory: object) -> None:
    """Indications, responses, non-STUN and bad FINGERPRINTs are dropped silently."""
    leg = make_leg()
    assert leg.receive(data_factory(leg), PEER, 0.0) is None  # type: ignore[operator]
    assert leg.stats.dropped == 1


def test_without_fingerprint_still_answered() -> None:
    """FINGERPRINT is optional on input."""
    leg = make_leg()
    assert answer(leg, check(leg, fingerprint=False)).cls == CLASS_SUCCESS


def test_remote_ufrag_unknown_checks_local_part_only() -> None:
    """Before the SDP answer gives the remote ufrag, only the local part of USERNAME is checked."""
    leg = IceLiteResponder(random_bytes=secrets.token_bytes)
    assert answer(leg, check(leg, username=f"{leg.local_ufrag}:anything")).cls == CLASS_SUCCESS
    leg.set_remote_credentials("real", "p" * 22)
    assert error_code(answer(leg, check(leg, username=f"{leg.local_ufrag}:anything"))) == 401
    assert answer(leg, check(leg, username=f"{leg.local_ufrag}:real")).cls == CLASS_SUCCESS


def test_generated_credentials_are_ice_chars() -> None:
    """Generated ufrag/pwd use ice-chars, with at least 24 and 128 random bits."""
    ufrag, pwd = generate_credentials(secrets.token_bytes)
    assert re.fullmatch(r"[A-Za-z0-9+/]{8}", ufrag)
    assert re.fullmatch(r"[A-Za-z0-9+/]{24}", pwd)
    assert generate_credentials(secrets.token_bytes) != (ufrag, pwd)


def test_given_credentials_are_validated() -> None:
    """Caller-supplied credentials must be ice-chars of legal length."""
    with pytest.raises(LocalProtocolError):
        IceLiteResponder(local_ufrag="abc", random_bytes=secrets.token_bytes)
    with pytest.raises(LocalProtocolError):
        IceLiteResponder(local_pwd="short", random_bytes=secrets.token_bytes)
    with pytest.raises(LocalProtocolError):
        IceLiteResponder(remote_ufrag="bad ufrag", random_bytes=secrets.token_bytes)
    leg = IceLiteResponder(local_ufrag="abcd", local_pwd="a" * 22)
    assert (leg.local_ufrag, leg.local_pwd) == ("abcd", "a" * 22)


# --- nomination ---------------------------------------------------------------------------------


def test_use_candidate_nominates_and_selects() -> None:
    """A plain check selects nothing; USE-CANDIDATE selects the pair and queues an event once."""
    leg = make_leg()
    answer(leg, check(leg))
    assert events(leg) == [] and leg.selected_address is None
    answer(leg, check(leg, use_candidate=True))
    assert events(leg) == [SelectedAddressChanged(PEER)]
    assert leg.selected_address == PEER
    answer(leg, check(leg, use_candidate=True))
    assert events(leg) == []


def test_unauthenticated_use_candidate_does_not_nominate() -> None:
    """A USE-CANDIDATE check with a bad password changes nothing."""
    leg = make_leg()
    leg.receive(check(leg, use_candidate=True, pwd="y" * 22), PEER, 0.0)
    assert leg.selected_address is None and events(leg) == []


def test_higher_priority_nomination_wins() -> None:
    """Among nominated pairs the highest PRIORITY is selected; a lower one does not replace it."""
    leg = make_leg()
    answer(leg, check(leg, use_candidate=True, priority=100), PEER)
    answer(leg, check(leg, use_candidate=True, priority=500), PEER2)
    answer(leg, check(leg, use_candidate=True, priority=50), ("198.51.100.99", 1))
    assert events(leg) == [SelectedAddressChanged(PEER), SelectedAddressChanged(PEER2)]
    assert leg.selected_address == PEER2


def test_pair_table_is_bounded() -> None:
    """At most max_pairs pairs are kept; the selected pair is never evicted."""
    leg = make_leg(max_pairs=2)
    answer(leg, check(leg, use_candidate=True), PEER, now=0.0)
    for port in range(1, 5):
        answer(leg, check(leg), ("198.51.100.50", port), now=float(port))
    assert leg.selected_address == PEER
    assert leg.has_consent(PEER, 5.0)
    assert not leg.has_consent(("198.51.100.50", 1), 5.0)


# --- consent ------------------------------------------------------------------------------------


def test_consent_lost_after_30_seconds_of_silence() -> None:
    """Without valid checks for 30 s the selected pair loses consent: ConsentLost, nothing selected."""
    leg = make_leg()
    answer(leg, check(leg, use_candidate=True), now=100.0)
    events(leg)
    assert leg.get_timer() == 130.0
    leg.handle_timer(129.9)
    assert events(leg) == [] and leg.has_consent(PEER, 129.9)
    leg.handle_timer(130.0)
    assert events(leg) == [ConsentLost(PEER)]
    assert ConsentLost.name == "consent_lost"
    assert leg.selected_address is None
    assert leg.get_timer() is None
    assert not leg.has_consent(PEER, 130.0)


def test_checks_refresh_consent() -> None:
    """Each valid check pushes the consent deadline 30 s further."""
    leg = make_leg()
    answer(leg, check(leg, use_candidate=True), now=0.0)
    for t in (20.0, 40.0, 60.0):
        answer(leg, check(leg), now=t)
        leg.handle_timer(t)
    assert leg.get_timer() == 90.0
    assert leg.selected_address == PEER


def test_failed_checks_do_not_refresh_consent() -> None:
    """Checks that fail authentication do not keep consent alive."""
    leg = make_leg()
    answer(leg, check(leg, use_candidate=True), now=0.0)
    leg.receive(check(leg, pwd="z" * 22), PEER, 20.0)
    assert leg.get_timer() == 30.0


def test_consent_loss_falls_back_to_other_nominated_pair() -> None:
    """When the selected pair loses consent another nominated pair with consent takes over."""
    leg = make_leg()
    answer(leg, check(leg, use_candidate=True, priority=10), PEER2, now=0.0)
    answer(leg, check(leg, use_candidate=True, priority=99), PEER, now=0.0)
    answer(leg, check(leg), PEER2, now=20.0)  # PEER2 stays fresh, PEER goes silent
    events(leg)
    leg.handle_timer(30.0)
    assert events(leg) == [ConsentLost(PEER), SelectedAddressChanged(PEER2)]
    assert leg.selected_address == PEER2


# --- restart ------------------------------------------------------------------------------------


def test_restart_keeps_old_pair_until_new_nomination() -> None:
    """After restart the old selected pair stays until a pair is nominated with the new credentials."""
    leg = make_leg()
    old_ufrag, old_pwd = leg.local_ufrag, leg.local_pwd
    answer(leg, check(leg, use_candidate=True), PEER, now=0.0)
    events(leg)

    leg.restart("nEwR", "new-remote-password-123")
    assert leg.local_ufrag != old_ufrag and leg.local_pwd != old_pwd
    assert leg.selected_address == PEER
    # the old generation still refreshes consent of the old pair
    old_check = check(leg, username=f"{old_ufrag}:{REMOTE_UFRAG}", pwd=old_pwd)
    assert answer(leg, old_check, PEER, now=10.0).cls == CLASS_SUCCESS
    # a new-generation check without nomination changes nothing
    new_user = f"{leg.local_ufrag}:nEwR"
    assert answer(leg, check(leg, username=new_user), PEER2, now=11.0).cls == CLASS_SUCCESS
    assert events(leg) == [] and leg.selected_address == PEER

    answer(leg, check(leg, username=new_user, use_candidate=True, priority=1), PEER2, now=12.0)
    assert events(leg) == [SelectedAddressChanged(PEER2)]
    # the old credentials are retired now
    old_again = check(leg, username=f"{old_ufrag}:{REMOTE_UFRAG}", pwd=old_pwd)
    assert error_code(answer(leg, old_again, PEER, now=13.0)) == 401


def test_restart_requires_new_local_ufrag() -> None:
    """Restarting with the same local ufrag is our misuse."""
    leg = IceLiteResponder(local_ufrag="abcd", local_pwd="a" * 22)
    with pytest.raises(LocalProtocolError):
        leg.restart("rrrr", "p" * 22, local_ufrag="abcd", local_pwd="b" * 22)
