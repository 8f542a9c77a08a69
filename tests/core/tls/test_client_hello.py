"""The ClientHello reader (mcs_edge/core/tls/client_hello.py): real hellos, split anywhere, and hostile input."""

from __future__ import annotations

import ssl

import pytest

from mcs_edge.core.tls.client_hello import (
    MAX_HELLO,
    MAX_RECORDS,
    NEED_MORE,
    ClientHello,
    Malformed,
    parse_client_hello,
)

# `openssl s_client -connect ... -servername Rossi.Example.com -alpn h2,http/1.1` (OpenSSL 3.0), as sent
S_CLIENT = bytes.fromhex(
    "16030101500100014c03035f6005d792de68c747ef42478c57526a876d883520f661b4ac597c4e2de3549620887833122d71"
    "b4f88026d54cee5ade863894898b8605b54a9d12369218e80a15003e130213031301c02cc030009fcca9cca8ccaac02bc02f"
    "009ec024c028006bc023c0270067c00ac0140039c009c0130033009d009c003d003c0035002f00ff010000c5000000160014"
    "000011526f7373692e4578616d706c652e636f6d000b000403000102000a00160014001d0017001e00190018010001010102"
    "01030104002300000010000e000c02683208687474702f312e310016000000170000000d002a002804030503060308070808"
    "0809080a080b080408050806040105010601030303010302040205020602002b0009080304030303020301002d0002010100"
    "3300260024001d00201eb559733886089df58bcbd761e7af9682c00ef245febdb5000befbdab137755"
)


def _stdlib_hello(
    server_name: str | None = "rossi.example.com",
    alpn: list[str] | None = None,
    max_version: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED,
) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = max_version
    if alpn:
        ctx.set_alpn_protocols(alpn)
    out = ssl.MemoryBIO()
    conn = ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        conn.do_handshake()
    return out.read()


def _record(fragment: bytes, content_type: int = 22) -> bytes:
    return bytes((content_type, 3, 1)) + len(fragment).to_bytes(2, "big") + fragment


def _hello_body(extensions: bytes | None) -> bytes:
    body = b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    if extensions is not None:
        body += len(extensions).to_bytes(2, "big") + extensions
    return body


def _hello(extensions: bytes | None) -> bytes:
    body = _hello_body(extensions)
    return _record(b"\x01" + len(body).to_bytes(3, "big") + body)


def _ext(ext_type: int, data: bytes) -> bytes:
    return ext_type.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data


def _sni(*names: bytes, name_type: int = 0) -> bytes:
    entries = b"".join(bytes((name_type,)) + len(n).to_bytes(2, "big") + n for n in names)
    return _ext(0, len(entries).to_bytes(2, "big") + entries)


def test_openssl_s_client_hello() -> None:
    """A ClientHello captured from openssl s_client: its name (lower-cased), ALPN and versions."""
    hello = parse_client_hello(S_CLIENT)
    assert hello == ClientHello(
        "rossi.example.com", (b"h2", b"http/1.1"), 0x0303, (0x0304, 0x0303, 0x0302, 0x0301)
    )
    assert isinstance(hello, ClientHello) and hello.offers_tls13


def test_python_ssl_hellos_tls13_and_tls12() -> None:
    """ClientHellos of the standard library's client, TLS 1.3 and TLS 1.2 only, with and without SNI."""
    h13 = parse_client_hello(_stdlib_hello(alpn=["acme-tls/1"]))
    assert isinstance(h13, ClientHello)
    assert (h13.server_name, h13.alpn, h13.offers_tls13) == ("rossi.example.com", (b"acme-tls/1",), True)
    h12 = parse_client_hello(_stdlib_hello(max_version=ssl.TLSVersion.TLSv1_2))
    assert isinstance(h12, ClientHello)
    assert (h12.server_name, h12.alpn, h12.offers_tls13) == ("rossi.example.com", (), False)
    none = parse_client_hello(_stdlib_hello(server_name=None))
    assert isinstance(none, ClientHello) and none.server_name is None


def test_every_split_point_needs_more_then_parses() -> None:
    """Any prefix asks for more bytes; the whole hello parses, whatever follows it."""
    for cut in range(len(S_CLIENT)):
        assert parse_client_hello(S_CLIENT[:cut]) is NEED_MORE, cut
    assert isinstance(parse_client_hello(S_CLIENT + b"\x14\x03\x03\x00\x01\x01"), ClientHello)


def test_hello_fragmented_across_records() -> None:
    """One handshake message in three records (RFC 8446 s.5.1), each prefix incomplete."""
    message = S_CLIENT[5:]
    parts = [message[:3], message[3:100], message[100:]]
    data = b"".join(_record(p) for p in parts)
    assert parse_client_hello(data) == parse_client_hello(S_CLIENT)
    for cut in range(len(data)):
        assert parse_client_hello(data[:cut]) is NEED_MORE, cut


def test_tls12_hello_without_extensions() -> None:
    assert parse_client_hello(_hello(None)) == ClientHello(None, (), 0x0303, ())


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"GET / HTTP/1.1\r\n", "not_tls"),
        (b"\x00\x01\x00\x50", "not_tls"),  # STUN
        (b"\x80\x2e\x01\x03\x01", "not_tls"),  # SSLv2-compatible hello
        (b"\x16\x02\x01\x00\x10", "not_tls"),
        (b"\x16\x03\x01\x00\x00", "record"),  # zero-length handshake fragment
        (b"\x16\x03\x01\x40\x01", "record"),  # record over 2^14
        (_record(b"\x02\x00\x00\x04"), "not_client_hello"),  # a ServerHello
        (_record(b"\x01\x00\x40\x01"), "too_large"),  # MAX_HELLO + 1 announced
        (_record(b"\x01\x00") + _record(b"\x00\x05", content_type=23), "record"),
        (_record(b"\x01\x00\x00\x05\x03\x03\x00\x00\x00"), "decode"),  # shorter than its random
    ],
)
def test_refusals_before_the_whole_hello(data: bytes, reason: str) -> None:
    """Garbage, other protocols and oversize announcements are refused at once, not buffered."""
    assert parse_client_hello(data) == Malformed(reason)


@pytest.mark.parametrize(
    ("extensions", "reason"),
    [
        (_sni(b"a.example") + _sni(b"b.example"), "duplicate_extension"),
        (_sni(b"a.example", b"b.example"), "server_name"),
        (_sni(b"bad name"), "server_name"),
        (_sni(b"nul\x00.example"), "server_name"),
        (_sni(b"x" * 256), "server_name"),
        (_ext(0, b"\x00\x00"), "server_name"),  # empty list
        (_ext(0, b"\x00\x05\x00\x00\x09ab"), "server_name"),  # name runs past the list
        (_sni(b"a.example") + b"\x00", "decode"),  # a dangling byte in the extensions block
        (_ext(16, b"\x00\x03\x03h2"), "alpn"),  # the name says 3 bytes, the list holds 2
        (_ext(16, b"\x00\x02\x00\x00"), "alpn"),  # empty protocol name
        (_ext(16, b"\x00\x00"), "alpn"),
        (_ext(43, b"\x03\x03\x04\x03"), "supported_versions"),
        (_ext(43, b"\x00"), "supported_versions"),
        (_ext(0x1234, b"\x00\x01\x02"), "decode"),  # runs past the block: 3 > 2 remaining after the cut
    ],
)
def test_hostile_extensions(extensions: bytes, reason: str) -> None:
    if reason == "decode" and extensions.startswith(b"\x12\x34"):
        body = _hello_body(b"")[:-2] + (len(extensions) - 1).to_bytes(2, "big") + extensions[:-1]
        data = _record(b"\x01" + len(body).to_bytes(3, "big") + body)
    else:
        data = _hello(extensions)
    assert parse_client_hello(data) == Malformed(reason)


def test_unknown_name_types_and_extensions_are_skipped() -> None:
    """Only host_name (0) counts; unknown extensions (GREASE) are passed over."""
    ext = _ext(0x0A0A, b"") + _sni(b"Rossi.Example.COM") + _ext(16, b"\x00\x03\x02h2")
    hello = parse_client_hello(_hello(ext))
    assert hello == ClientHello("rossi.example.com", (b"h2",), 0x0303, ())


def test_trailing_bytes_after_extensions_are_malformed() -> None:
    body = _hello_body(_sni(b"a.example")) + b"\x00"
    assert parse_client_hello(_record(b"\x01" + len(body).to_bytes(3, "big") + body)) == Malformed("decode")


def test_the_size_bound_holds_for_fragmented_hellos() -> None:
    """A hello of exactly MAX_HELLO bytes in two records parses; one byte more is refused up front."""
    padding = MAX_HELLO - len(_hello_body(b"")) - 4
    body = _hello_body(_ext(21, bytes(padding)))
    assert len(body) == MAX_HELLO
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    data = _record(message[:16000]) + _record(message[16000:])
    assert isinstance(parse_client_hello(data), ClientHello)
    over = b"\x01" + (MAX_HELLO + 1).to_bytes(3, "big")
    assert parse_client_hello(_record(over)) == Malformed("too_large")


def test_a_hello_in_more_records_than_allowed_is_refused() -> None:
    """MAX_RECORDS records of one byte are still waited for; one more is refused, whatever follows."""
    message = S_CLIENT[5:]
    tiny = b"".join(_record(message[i : i + 1]) for i in range(MAX_RECORDS))
    assert parse_client_hello(tiny) is NEED_MORE
    assert parse_client_hello(tiny + _record(message[MAX_RECORDS : MAX_RECORDS + 1])) == Malformed("record")
