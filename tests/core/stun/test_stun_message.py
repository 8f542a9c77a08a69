"""Tests of the STUN codec: RFC 5769 vectors, header/type layout, attributes, integrity."""

from __future__ import annotations

import hashlib
import hmac
import struct
import zlib
from pathlib import Path

import pytest

from mcs_edge.core.stun import message as m
from mcs_edge.core.stun.message import (
    CLASS_ERROR,
    CLASS_INDICATION,
    CLASS_REQUEST,
    CLASS_SUCCESS,
    METHOD_ALLOCATE,
    METHOD_BINDING,
    METHOD_CHANNEL_BIND,
    METHOD_DATA,
    METHOD_SEND,
    Message,
    decode_type,
    encode_type,
    is_stun,
    long_term_key,
    parse_view,
)
from mcs_edge.errors import LocalProtocolError, RemoteProtocolError

DATA = Path(__file__).resolve().parents[2] / "data" / "stun"
SHORT_TERM_PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"
LTC_USERNAME = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"
LTC_REALM = "example.org"
LTC_PASSWORD = "TheMatrIX"
VECTORS = [
    "rfc5769_sample_request",
    "rfc5769_ipv4_response",
    "rfc5769_ipv6_response",
    "rfc5769_long_term_request",
]
TXID = bytes(range(12))


def load(name: str) -> bytes:
    return (DATA / f"{name}.bin").read_bytes()


# --- RFC 5769 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VECTORS)
def test_rfc5769_round_trip_is_byte_exact(name: str) -> None:
    """Every RFC 5769 vector parses and serialises back to the same bytes."""
    data = load(name)
    msg = Message.parse(data)
    assert bytes(msg) == data


@pytest.mark.parametrize("name", VECTORS[:3])
def test_rfc5769_short_term_integrity_and_fingerprint(name: str) -> None:
    """The short-term vectors verify with the RFC password and carry a valid FINGERPRINT."""
    view = parse_view(load(name))
    assert view.check_integrity(SHORT_TERM_PASSWORD)
    assert not view.check_integrity(b"wrong password")
    assert view.check_fingerprint()


def test_rfc5769_sample_request_values() -> None:
    """The sample request decodes to the values RFC 5769 s.2.1 lists."""
    msg = Message.parse(load("rfc5769_sample_request"))
    assert (msg.method, msg.cls) == (METHOD_BINDING, CLASS_REQUEST)
    assert msg.transaction_id == bytes.fromhex("b7e7a701bc34d686fa87dfae")
    assert msg.get(m.Software) == m.Software("STUN test client")
    assert msg.get(m.Priority) == m.Priority(0x6E0001FF)
    assert msg.get(m.IceControlled) == m.IceControlled(0x932FF9B151263B36)
    assert msg.get(m.Username) == m.Username("evtj:h6vY")
    assert msg.padding == 0x20


def test_rfc5769_ipv4_response_address() -> None:
    """The IPv4 response's XOR-MAPPED-ADDRESS is 192.0.2.1:32853."""
    msg = Message.parse(load("rfc5769_ipv4_response"))
    assert msg.cls == CLASS_SUCCESS
    assert msg.get(m.XorMappedAddress) == m.XorMappedAddress("192.0.2.1", 32853)
    assert msg.get(m.Software) == m.Software("test vector")


def test_rfc5769_ipv6_response_address() -> None:
    """The IPv6 response's XOR-MAPPED-ADDRESS (xored with cookie and txid) decodes correctly."""
    msg = Message.parse(load("rfc5769_ipv6_response"))
    xma = msg.get(m.XorMappedAddress)
    assert xma == m.XorMappedAddress("2001:db8:1234:5678:11:2233:4455:6677", 32853)


def test_rfc5769_long_term_request() -> None:
    """The long-term request verifies with MD5(username:realm:password) and not with the raw password."""
    data = load("rfc5769_long_term_request")
    msg = Message.parse(data)
    assert msg.get(m.Username) == m.Username(LTC_USERNAME)
    assert msg.get(m.Realm) == m.Realm(LTC_REALM)
    assert msg.get(m.Nonce) == m.Nonce("f//499k954d6OL34oL9FSTvy64sA")
    view = parse_view(data)
    key = long_term_key(LTC_USERNAME, LTC_REALM, LTC_PASSWORD)
    assert key == hashlib.md5(f"{LTC_USERNAME}:{LTC_REALM}:{LTC_PASSWORD}".encode()).digest()
    assert view.check_integrity(key)
    assert not view.check_integrity(LTC_PASSWORD.encode())
    assert view.fingerprint_at == -1 and not view.check_fingerprint()


@pytest.mark.parametrize("name", VECTORS[:3])
def test_rfc5769_recomputed_integrity_and_fingerprint(name: str) -> None:
    """Serialising the vector's attributes with the password regenerates MI and FINGERPRINT exactly."""
    data = load(name)
    msg = Message.parse(data)
    stripped = Message(
        msg.method,
        msg.cls,
        msg.transaction_id,
        tuple(a for a in msg.attributes if not isinstance(a, m.MessageIntegrity | m.Fingerprint)),
        padding=msg.padding,
    )
    assert stripped.serialize(integrity_key=SHORT_TERM_PASSWORD, fingerprint=True) == data


@pytest.mark.parametrize("name", VECTORS)
def test_rfc5769_any_flipped_byte_breaks_a_check(name: str) -> None:
    """Flipping any byte after the header breaks integrity, fingerprint or parsing."""
    data = load(name)
    key = long_term_key(LTC_USERNAME, LTC_REALM, LTC_PASSWORD) if "long_term" in name else SHORT_TERM_PASSWORD
    has_fingerprint = parse_view(data).fingerprint_at >= 0
    for i in range(len(data)):
        mutated = bytearray(data)
        mutated[i] ^= 0x01
        try:
            view = parse_view(bytes(mutated))
        except RemoteProtocolError:
            continue
        fingerprint_ok = view.check_fingerprint() if has_fingerprint else True
        assert not (view.check_integrity(key) and fingerprint_ok), i


# --- header -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "cls", "wire"),
    [
        (METHOD_BINDING, CLASS_REQUEST, 0x0001),
        (METHOD_BINDING, CLASS_INDICATION, 0x0011),
        (METHOD_BINDING, CLASS_SUCCESS, 0x0101),
        (METHOD_BINDING, CLASS_ERROR, 0x0111),
        (METHOD_ALLOCATE, CLASS_REQUEST, 0x0003),
        (METHOD_ALLOCATE, CLASS_ERROR, 0x0113),
        (METHOD_SEND, CLASS_INDICATION, 0x0016),
        (METHOD_DATA, CLASS_INDICATION, 0x0017),
        (METHOD_CHANNEL_BIND, CLASS_SUCCESS, 0x0109),
        (0xFFF, CLASS_ERROR, 0x3FFF),
    ],
)
def test_message_type_layout(method: int, cls: int, wire: int) -> None:
    """Method and class interleave into the 14-bit type as RFC 8489 s.5 draws it."""
    assert encode_type(method, cls) == wire
    assert decode_type(wire) == (method, cls)


def test_every_type_round_trips() -> None:
    """decode_type inverts encode_type for all 4096 methods and 4 classes."""
    for method in range(0x1000):
        for cls in range(4):
            assert decode_type(encode_type(method, cls)) == (method, cls)


def test_is_stun() -> None:
    """is_stun accepts STUN and refuses RTP, DTLS, ChannelData, short input and wrong cookies."""
    assert is_stun(load("rfc5769_sample_request"))
    assert not is_stun(b"\x80" + bytes(30))  # RTP
    assert not is_stun(b"\x16\xfe\xfd" + bytes(30))  # DTLS
    assert not is_stun(b"\x40\x00\x00\x04abcd" + bytes(12))  # ChannelData
    assert not is_stun(load("rfc5769_sample_request")[:19])
    bad_cookie = bytearray(load("rfc5769_sample_request"))
    bad_cookie[5] ^= 1
    assert not is_stun(bytes(bad_cookie))


def _header(msg_type: int, length: int, cookie: int = m.MAGIC_COOKIE) -> bytes:
    return struct.pack("!HHI", msg_type, length, cookie) + TXID


@pytest.mark.parametrize(
    ("data", "hint"),
    [
        (b"", None),
        (bytes(19), None),
        (_header(0x0001, 0, cookie=0x2112A443), None),
        (_header(0xC001, 0), None),
        (_header(0x0001, 4), None),  # claims 4 bytes, has none
        (_header(0x0001, 2) + b"\x00\x00", None),  # length not a multiple of 4
        (_header(0x0001, 4) + b"\x00\x06\x00\x08", 400),  # value overruns
        (_header(0x0001, 8) + b"\x00\x06\x00\x05abcd", 400),  # padding overruns
        (_header(0x0001, 8) + b"\x80\x28\x00\x03abcd", 400),  # FINGERPRINT length
        (_header(0x0001, 8) + b"\x00\x08\x00\x04abcd", 400),  # MESSAGE-INTEGRITY length
        (_header(0x0001, 16) + b"\x80\x28\x00\x04abcd\x80\x22\x00\x04abcd", 400),  # after FINGERPRINT
        (_header(0x0001, 8) + b"\x00\x1c\x00\x04abcd", 400),  # MI-SHA256 too short
    ],
)
def test_malformed_messages_raise_remote_protocol_error(data: bytes, hint: int | None) -> None:
    """Bad headers are dropped (hint None); bad attributes in a sane header are 400s."""
    with pytest.raises(RemoteProtocolError) as info:
        Message.parse(data)
    assert info.value.status_hint == hint


def test_attributes_after_integrity_are_ignored_except_fingerprint() -> None:
    """RFC 8489 s.14.5: attributes after MESSAGE-INTEGRITY are ignored, FINGERPRINT is kept."""
    base = Message(METHOD_BINDING, CLASS_REQUEST, TXID, (m.Username("a:b"),))
    signed = bytearray(base.serialize(integrity_key=b"k"))
    signed += b"\x80\x22\x00\x04evil"  # SOFTWARE after MESSAGE-INTEGRITY
    struct.pack_into("!H", signed, 2, len(signed) - 20)
    m.append_fingerprint(signed)
    view = parse_view(bytes(signed))
    assert m.Software.TYPE not in view.attrs
    assert view.check_integrity(b"k")
    assert view.check_fingerprint()
    assert Message.parse(bytes(signed)).get(m.Software) is None


def test_duplicate_attributes_first_wins_in_view_and_get() -> None:
    """Only the first occurrence of an attribute is used; get_all still sees every one."""
    msg = Message(METHOD_BINDING, CLASS_REQUEST, TXID, (m.Username("first"), m.Username("second")))
    data = bytes(msg)
    assert parse_view(data).value(m.Username.TYPE) == b"first"
    parsed = Message.parse(data)
    assert parsed.get(m.Username) == m.Username("first")
    assert [u.value for u in parsed.get_all(m.Username)] == ["first", "second"]


def test_unknown_comprehension_required_attributes_are_reported() -> None:
    """Unknown types below 0x8000 are listed for a 420; unknown optional ones are not."""
    msg = Message(
        METHOD_BINDING,
        CLASS_REQUEST,
        TXID,
        (m.UnknownAttribute(0x7777, b"x"), m.UnknownAttribute(0xC057, b"\x00\x01\x00\x02")),
    )
    data = bytes(msg)
    assert Message.parse(data).unknown_comprehension_required() == (0x7777,)
    assert parse_view(data).unknown_comprehension_required() == [0x7777]
    assert Message.parse(data) == msg


# --- attributes ---------------------------------------------------------------------------------

ATTRIBUTES: list[m.Attribute] = [
    m.MappedAddress("192.0.2.1", 3478),
    m.MappedAddress("2001:db8::1", 3478),
    m.AlternateServer("198.51.100.9", 443),
    m.XorMappedAddress("203.0.113.77", 65535),
    m.XorMappedAddress("2001:db8::dead:beef", 1),
    m.XorPeerAddress("198.51.100.1", 5000),
    m.XorPeerAddress("2001:db8::2", 5000),
    m.XorRelayedAddress("203.0.113.1", 49152),
    m.XorRelayedAddress("2001:db8::3", 49153),
    m.Username("user:name"),
    m.Realm("example.org"),
    m.Nonce("abc123"),
    m.Software("mcs_edge"),
    m.AlternateDomain("turn.example.org"),
    m.ErrorCode(438, "Stale Nonce"),
    m.ErrorCode(300, ""),
    m.UnknownAttributes((0x7777, 0x001A)),
    m.MessageIntegrity(bytes(range(20))),
    m.MessageIntegritySha256(bytes(range(32))),
    m.MessageIntegritySha256(bytes(range(16))),
    m.Fingerprint(0xDEADBEEF),
    m.Priority(0x6E0001FF),
    m.UseCandidate(),
    m.IceControlled(2**64 - 1),
    m.IceControlling(12345),
    m.Lifetime(600),
    m.RequestedTransport(17),
    m.RequestedAddressFamily(2),
    m.Data(b"hello world"),
    m.Data(b""),
    m.ChannelNumber(0x4001),
    m.DontFragment(),
    m.EvenPort(True),
    m.EvenPort(False),
    m.ReservationToken(b"12345678"),
    m.PasswordAlgorithm(m.PASSWORD_ALGORITHM_SHA256),
    m.PasswordAlgorithms(((m.PASSWORD_ALGORITHM_MD5, b""), (m.PASSWORD_ALGORITHM_SHA256, b"xyz"))),
    m.Userhash(bytes(32)),
    m.UnknownAttribute(0xC057, b"\x00\x01\x00\x0a"),
]


@pytest.mark.parametrize("attr", ATTRIBUTES, ids=lambda a: type(a).__name__)
def test_attribute_round_trip(attr: m.Attribute) -> None:
    """Each typed attribute survives serialise -> parse unchanged, and so do the bytes."""
    msg = Message(METHOD_ALLOCATE, CLASS_SUCCESS, TXID, (attr,))
    data = bytes(msg)
    assert len(data) % 4 == 0
    parsed = Message.parse(data)
    assert parsed.attributes == (attr,)
    assert bytes(parsed) == data


def test_xor_address_wire_value_matches_rfc5769() -> None:
    """XOR-MAPPED-ADDRESS 192.0.2.1:32853 encodes to the bytes in RFC 5769 s.2.2."""
    value = m.XorMappedAddress("192.0.2.1", 32853).encode(TXID)
    assert value == bytes.fromhex("0001a147e112a643")


@pytest.mark.parametrize(
    ("attr_type", "value"),
    [
        (m.ErrorCode.TYPE, b"\x00\x00\x02\x00"),  # class 2
        (m.ErrorCode.TYPE, b"\x00\x00\x04\x64"),  # number 100
        (m.ErrorCode.TYPE, b"\x00\x00\x04"),
        (m.XorMappedAddress.TYPE, b"\x00\x03\x00\x00\x00\x00\x00\x00"),  # family 3
        (m.XorMappedAddress.TYPE, b"\x00\x01\x00\x00\x00\x00"),  # short IPv4
        (m.XorMappedAddress.TYPE, b"\x00\x02\x00\x00" + bytes(8)),  # short IPv6
        (m.Username.TYPE, b"\xff\xfe"),  # not UTF-8
        (m.Username.TYPE, b"a" * 514),  # over 513 bytes
        (m.Priority.TYPE, b"\x00\x01"),
        (m.IceControlling.TYPE, b"\x00\x01"),
        (m.UseCandidate.TYPE, b"x"),
        (m.ChannelNumber.TYPE, b"\x40"),
        (m.RequestedTransport.TYPE, b"\x11"),
        (m.EvenPort.TYPE, b"\x80\x00"),
        (m.UnknownAttributes.TYPE, b"\x00"),
        (m.ReservationToken.TYPE, b"1234"),
        (m.PasswordAlgorithm.TYPE, b"\x00\x02\x00\x08\x00"),
        (m.PasswordAlgorithms.TYPE, b"\x00\x01"),
    ],
)
def test_malformed_attribute_values_are_400(attr_type: int, value: bytes) -> None:
    """A bad attribute value raises RemoteProtocolError with hint 400 from Message.parse."""
    body = struct.pack("!HH", attr_type, len(value)) + value + bytes(-len(value) % 4)
    data = _header(0x0001, len(body)) + body
    with pytest.raises(RemoteProtocolError) as info:
        Message.parse(data)
    assert info.value.status_hint == 400


def test_our_misuse_raises_local_protocol_error() -> None:
    """Building invalid messages is our bug: LocalProtocolError, not RemoteProtocolError."""
    with pytest.raises(LocalProtocolError):
        Message(METHOD_BINDING, CLASS_REQUEST, b"short")
    with pytest.raises(LocalProtocolError):
        bytes(Message(METHOD_BINDING, CLASS_ERROR, TXID, (m.ErrorCode(200),)))
    with pytest.raises(LocalProtocolError):
        bytes(Message(METHOD_BINDING, CLASS_SUCCESS, TXID, (m.XorMappedAddress("not-an-ip", 1),)))
    with pytest.raises(LocalProtocolError):
        long_term_key("u", "r", "p", algorithm=9)


# --- integrity ----------------------------------------------------------------------------------


def test_integrity_sha256_full_and_truncated() -> None:
    """MESSAGE-INTEGRITY-SHA256 verifies at full length and truncated to 16 bytes."""
    key = long_term_key("u", "r", "p", m.PASSWORD_ALGORITHM_SHA256)
    msg = Message(METHOD_ALLOCATE, CLASS_REQUEST, TXID, (m.Username("u"), m.Realm("r")))
    full = msg.serialize(integrity_sha256_key=key, fingerprint=True)
    view = parse_view(full)
    assert view.check_integrity_sha256(key) and view.check_fingerprint()
    assert not view.check_integrity_sha256(b"other")
    assert not view.check_integrity(key)  # there is no SHA-1 integrity

    prefix = bytearray(bytes(msg))
    struct.pack_into("!H", prefix, 2, len(prefix) - 20 + 20)
    mac = hmac.digest(key, bytes(prefix), "sha256")[:16]
    truncated = bytes(prefix) + b"\x00\x1c\x00\x10" + mac
    assert parse_view(truncated).check_integrity_sha256(key)


def test_integrity_covers_prefix_with_adjusted_length() -> None:
    """MESSAGE-INTEGRITY is computed with the length field pointing at its own end."""
    msg = Message(METHOD_BINDING, CLASS_REQUEST, TXID, (m.Username("a:b"),))
    data = msg.serialize(integrity_key=b"pw", fingerprint=True)
    at = parse_view(data).integrity_at
    prefix = bytearray(data[:at])
    struct.pack_into("!H", prefix, 2, at + 24 - 20)
    assert data[at + 4 : at + 24] == hmac.digest(b"pw", bytes(prefix), "sha1")
    fp_at = parse_view(data).fingerprint_at
    assert struct.unpack("!I", data[fp_at + 4 :])[0] == zlib.crc32(data[:fp_at]) ^ 0x5354554E


def test_both_integrities_in_rfc_order() -> None:
    """MI, MI-SHA256 and FINGERPRINT can all be present and each verifies."""
    msg = Message(METHOD_BINDING, CLASS_REQUEST, TXID, (m.Username("a:b"),))
    data = msg.serialize(integrity_key=b"k1", integrity_sha256_key=b"k2", fingerprint=True)
    view = parse_view(data)
    assert view.integrity_at < view.integrity_sha256_at < view.fingerprint_at
    assert view.check_integrity(b"k1")
    assert view.check_integrity_sha256(b"k2")
    assert view.check_fingerprint()


def test_long_term_key_sha256() -> None:
    """The SHA-256 long-term key is SHA-256(username:realm:password)."""
    assert long_term_key("u", "r", "p", m.PASSWORD_ALGORITHM_SHA256) == hashlib.sha256(b"u:r:p").digest()


def test_short_term_key_is_the_password() -> None:
    """Short-term credentials use the password bytes as the HMAC key."""
    assert m.short_term_key("VOkJxbRl1RmTxUk/WvJxBt") == SHORT_TERM_PASSWORD
