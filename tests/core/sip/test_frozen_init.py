"""``fast_init``: the cheaper ``__init__`` keeps what the dataclass promised (order, defaults,
keywords, frozen, equality and hashing) and refuses classes it cannot serve."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from mcs_edge.core.sip._frozen import fast_init
from mcs_edge.core.sip.destinations import ToBackend
from mcs_edge.core.sip.headers import CSeq, NameAddr, SipUri, Via
from mcs_edge.core.sip.transaction import Send


@dataclasses.dataclass(frozen=True, slots=True)
class _Plain:
    a: str
    b: int = 2
    c: tuple[str, ...] = ()


@fast_init
@dataclasses.dataclass(frozen=True, slots=True)
class _Fast:
    a: str
    b: int = 2
    c: tuple[str, ...] = ()


def test_same_signature_values_equality_and_hash() -> None:
    assert list(inspect.signature(_Fast).parameters) == ["a", "b", "c"]
    for args, kwargs in ((("x",), {}), (("x", 3), {}), (("x",), {"c": ("y",)}), ((), {"a": "x", "b": 5})):
        fast, plain = _Fast(*args, **kwargs), _Plain(*args, **kwargs)  # type: ignore[arg-type]
        assert dataclasses.astuple(fast) == dataclasses.astuple(plain)
    assert _Fast("x") == _Fast("x", 2, ())
    assert hash(_Fast("x")) == hash(_Fast("x", 2, ()))
    assert _Fast("x") != _Fast("y")
    with pytest.raises(TypeError):
        _Fast()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        _Fast("x", 1, (), 4)  # type: ignore[call-arg]


def test_still_frozen() -> None:
    v = Via("UDP", "h", 5060, (("branch", "z9hG4bK1"),))
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.host = "other"  # type: ignore[misc]
    assert str(v) == "SIP/2.0/UDP h:5060;branch=z9hG4bK1"


def test_the_message_classes_use_it() -> None:
    for cls in (Via, CSeq, NameAddr, SipUri, Send, ToBackend):
        assert cls.__init__.__code__.co_filename == "<string>"
        assert "_set_" in " ".join(cls.__init__.__code__.co_names)


def test_refuses_what_it_cannot_serve() -> None:
    @dataclasses.dataclass(slots=True)
    class NotFrozen:
        a: int

    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        a: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class Factory:
        a: list[int] = dataclasses.field(default_factory=list)

    @dataclasses.dataclass(frozen=True, slots=True)
    class PostInit:
        a: int

        def __post_init__(self) -> None:
            pass

    for cls in (NotFrozen, NoSlots, Factory, PostInit):
        with pytest.raises(TypeError):
            fast_init(cls)
