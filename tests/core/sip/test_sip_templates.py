"""Values parsed from a cached template (a known value with a new ``tag``/``branch``) give what the
full grammar gives: the same verdict (valid or not) and the same parsed value, on hand-picked
values and on generated ones (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcs_edge.core.sip import _abnf, headers, message
from mcs_edge.core.sip.headers import name_addr_template, parse_name_addr
from mcs_edge.errors import RemoteProtocolError


def _full_parse(text: str) -> object:
    try:
        return headers._parse_name_addr(text)
    except RemoteProtocolError:
        return "invalid"


def _fast_parse(text: str) -> object:
    headers._parse_name_addr_cached.cache_clear()
    try:
        return parse_name_addr(text)
    except RemoteProtocolError:
        return "invalid"


def _check(text: str) -> None:
    message._valid_name_addr_cached.cache_clear()
    assert message._valid_name_addr(text) == (_abnf.NAME_ADDR_RE.fullmatch(text) is not None), text
    assert _fast_parse(text) == _full_parse(text), text


VALUES = [
    "<sip:pbx@example.com>;tag=p1",
    "<sip:pbx@example.com>;tag=p2",  # same template, new tag
    '"Alice" <sip:a@example.com>;x=1;tag=abc;y',
    '"a>;tag=q" <sip:b@example.com>',  # the tag is inside the display name
    '"a>;tag=q" <sip:b@example.com>;tag=r',
    "<sip:a@b;tag=x>;tag=y",  # a URI parameter called tag, and the header's
    "<sip:a@b>;tag=a%zz",  # token, fine as a header parameter
    "<sip:a@b>;tag=",  # empty: not a token, full grammar
    "<sip:a@b>;tag=a b",
    "<sip:a@b>;tag=abc ;x=1",
    '<sip:a@b>;tag="quoted"',
    "<sip:a@b>;tag=[::1]",
    "<sip:a@b>;tag=-tag-",  # the slot itself
    "<sip:a@b>;tag=x;tag=y",
    "<sip:a@b >;tag=x",  # invalid URI: the template is invalid too
    "sip:a@b;tag=x",  # addr-spec: no template
    "<sip:a@b>;TAG=x",
    "<sip:a@b>;tag=x>",
    "<sip:a@b>;tag=x,y",
    "Bob <sip:a@b>;tag=1",
    '<sip:a@b>;x=";tag=t;";y',  # ";tag=" inside a quoted parameter value
    '<sip:a@b>;x=";tag=t;";tag=u',
]


@pytest.mark.parametrize("text", VALUES)
def test_hand_picked(text: str) -> None:
    _check(text)


def test_the_template_path_is_taken() -> None:
    assert name_addr_template("<sip:pbx@example.com>;tag=p1") == ("<sip:pbx@example.com>;tag=-tag-", "p1")
    assert name_addr_template('"a>;tag=q" <sip:b@example.com>') is None
    assert name_addr_template("sip:a@b;tag=x") is None
    parsed = parse_name_addr("<sip:pbx@example.com>;x;tag=p9;y=2")
    assert parsed.tag == "p9"
    assert parsed.params == (("x", None), ("tag", "p9"), ("y", "2"))


_PIECES = st.sampled_from(
    [
        "<sip:a@b>",
        "<sip:a@b;tag=u>",
        '"d>;tag=z"',
        " ",
        "Bob",
        ";tag=",
        ";tag",
        "=",
        ";x=1",
        ";",
        "t1",
        "-tag-",
        "a%z",
        '"q"',
        "[::1]",
        ">",
        "<",
        ",",
        "\t",
        "sip:c@d",
        "é",
        "tag=",
        "~'`",
    ]
)


@settings(max_examples=800, deadline=None)
@given(st.lists(_PIECES, min_size=1, max_size=8).map("".join))
def test_generated_values_agree(text: str) -> None:
    _check(text)


@settings(max_examples=300, deadline=None)
@given(st.text(st.sampled_from(list("abAZ09-.!%*_+`'~;= \"<>[]:@")), max_size=12))
def test_any_tag_value_agrees(tag: str) -> None:
    for text in (
        f"<sip:pbx@example.com>;tag={tag}",
        f'"x" <sip:a@b>;a=1;tag={tag};b',
        f"<sip:a@b>;tag={tag}",
    ):
        _check(text)
