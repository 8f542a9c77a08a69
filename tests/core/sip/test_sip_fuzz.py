"""Hypothesis: generated messages round-trip; random and mutated input only ever raises
RemoteProtocolError."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from mcs_edge.core.sip.headers import Via, parse_name_addr, parse_uri, parse_via
from mcs_edge.core.sip.message import Request, Response, parse
from mcs_edge.errors import RemoteProtocolError

FIXTURES = sorted((Path(__file__).resolve().parents[2] / "data" / "sip" / "rfc4475").glob("*.sip"))
SEEDS = [p.read_bytes() for p in FIXTURES]

TOKEN = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~",
    min_size=1,
    max_size=12,
)
USER = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._!~*'()&=+$,", min_size=1, max_size=12)
HOST = st.from_regex(r"[a-z][a-z0-9]{0,8}(\.[a-z][a-z0-9]{0,8}){0,2}", fullmatch=True)
PORT = st.one_of(st.none(), st.integers(min_value=1, max_value=65535))
DISPLAY = st.one_of(
    st.none(),
    st.text(
        alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.sampled_from("é大"), max_size=12
    ),
)
TEXT = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E) | st.just(" ") | st.sampled_from("éж"),
    max_size=30,
).map(str.strip)


def _uri(host: str, port: int | None, user: str | None) -> str:
    u = f"{user}@" if user else ""
    p = f":{port}" if port else ""
    return f"sip:{u}{host}{p}"


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(["INVITE", "REGISTER", "OPTIONS", "BYE", "MESSAGE", "X-CUSTOM"]))
    host = draw(HOST)
    via_count = draw(st.integers(min_value=1, max_value=3))
    vias = [
        str(
            Via(
                draw(st.sampled_from(["UDP", "TCP", "TLS", "WSS"])),
                draw(HOST),
                draw(PORT),
                (("branch", "z9hG4bK" + draw(TOKEN)),),
            )
        )
        for _ in range(via_count)
    ]
    display = draw(DISPLAY)
    frm = parse_name_addr(f"<{_uri(host, None, draw(USER))}>;tag={draw(TOKEN)}")
    if display is not None:
        frm = type(frm)(frm.uri, display, frm.params)
    body = draw(st.binary(max_size=40))
    lines = [f"{method} {_uri(draw(HOST), draw(PORT), None)} SIP/2.0"]
    lines.append("Via: " + ", ".join(vias) if draw(st.booleans()) else "\r\n".join(f"Via: {v}" for v in vias))
    lines += [
        f"Max-Forwards: {draw(st.integers(min_value=0, max_value=255))}",
        f"From: {frm}",
        f"To: <{_uri(host, None, draw(USER))}>",
        f"Call-ID: {draw(TOKEN)}@{draw(TOKEN)}",
        f"CSeq: {draw(st.integers(min_value=0, max_value=2**31 - 1))} {method}",
    ]
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        lines.append(f"X-{draw(TOKEN)}: {draw(TEXT)}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@given(messages())
def test_generated_messages_round_trip(data: bytes) -> None:
    """Generated valid messages parse, serialise byte for byte and reparse equal."""
    msg = parse(data)
    assert bytes(msg) == data
    assert parse(bytes(msg)) == msg
    assert msg.top_via.branch is not None


@given(messages())
def test_generated_messages_survive_proxy_edits(data: bytes) -> None:
    """After the proxy edits, the message still parses and keeps its meaning."""
    msg = parse(data)
    assert isinstance(msg, Request)
    vias = msg.vias
    msg.push_via(Via("UDP", "10.0.0.1", 5060, (("branch", "z9hG4bKedge"),)))
    msg.prepend_record_route("<sip:10.0.0.1;lr>")
    if msg.max_forwards:
        msg.decrement_max_forwards()
    out = parse(bytes(msg))
    assert out.vias[1:] == vias
    assert out.pop_via().branch == "z9hG4bKedge"
    assert out.vias == vias


@given(st.binary(max_size=500))
def test_random_bytes_raise_only_remote_protocol_error(data: bytes) -> None:
    """Random bytes never raise anything but RemoteProtocolError."""
    try:
        msg = parse(data)
    except RemoteProtocolError:
        return
    assert isinstance(msg, Request | Response)


@settings(max_examples=300)
@given(
    st.sampled_from(SEEDS),
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=5000), st.binary(max_size=3)), min_size=1, max_size=6
    ),
)
def test_mutated_messages_raise_only_remote_protocol_error(
    seed: bytes, edits: list[tuple[int, bytes]]
) -> None:
    """Valid messages with random byte edits either parse (and then serialise) or raise
    RemoteProtocolError; every parsed view is safe to read."""
    data = bytearray(seed)
    for pos, chunk in edits:
        pos %= len(data) + 1
        data[pos : pos + len(chunk)] = chunk
    try:
        msg = parse(bytes(data))
        for name in (
            "vias",
            "from_",
            "to",
            "cseq",
            "call_id",
            "contacts",
            "routes",
            "record_routes",
            "max_forwards",
        ):
            getattr(msg, name)
        bytes(msg)
        if isinstance(msg, Request):
            msg.request_uri  # noqa: B018
    except RemoteProtocolError:
        pass


@given(st.text(max_size=80))
def test_value_parsers_raise_only_remote_protocol_error(text: str) -> None:
    """URI, name-addr and Via parsers reject junk with RemoteProtocolError only."""
    for parser in (parse_uri, parse_name_addr, parse_via):
        try:
            parser(text)
        except RemoteProtocolError:
            pass
