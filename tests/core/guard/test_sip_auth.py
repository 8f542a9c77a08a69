"""Tests for ``core.guard.sip_auth``: which PBX answers count as failed or successful authentications."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mcs_edge.core.guard.sip_auth import MAX_USER, AuthOutcome, auth_outcome, credentials_user, digest_param
from mcs_edge.core.sip.message import Request, Response, parse

AUTH = 'Authorization: Digest username="alice", realm="rossi.example.com", nonce="abc", uri="sip:rossi.example.com", response="00"\r\n'
PROXY_AUTH = (
    'Proxy-Authorization: Digest username="bob", realm="r", nonce="n", uri="sip:1@r", response="0"\r\n'
)


def _request(method: str = "REGISTER", extra: str = "") -> Request:
    msg = parse(
        (
            f"{method} sip:rossi.example.com SIP/2.0\r\nVia: SIP/2.0/WSS x.invalid;branch=z9hG4bK1\r\n"
            "Max-Forwards: 70\r\nFrom: <sip:alice@rossi.example.com>;tag=1\r\nTo: <sip:alice@rossi.example.com>\r\n"
            f"Call-ID: c1\r\nCSeq: 1 {method}\r\n{extra}Content-Length: 0\r\n\r\n"
        ).encode()
    )
    assert isinstance(msg, Request)
    return msg


def _response(status: int, extra: str = "") -> Response:
    msg = parse(
        (
            f"SIP/2.0 {status} X\r\nVia: SIP/2.0/WSS x.invalid;branch=z9hG4bK1\r\n"
            "From: <sip:alice@rossi.example.com>;tag=1\r\nTo: <sip:alice@rossi.example.com>;tag=2\r\n"
            f"Call-ID: c1\r\nCSeq: 1 REGISTER\r\n{extra}Content-Length: 0\r\n\r\n"
        ).encode()
    )
    assert isinstance(msg, Response)
    return msg


CHALLENGE = 'WWW-Authenticate: Digest realm="rossi.example.com", nonce="xyz", algorithm=MD5\r\n'


def test_first_challenge_without_credentials_is_not_a_failure() -> None:
    """The 401 to a REGISTER without credentials is ordinary digest traffic."""
    assert auth_outcome(_request(), _response(401, CHALLENGE)) is None


def test_401_403_407_to_credentials_are_failures_with_the_user() -> None:
    """A 401, 403 or 407 to a request with credentials is a failure for the digest user."""
    assert auth_outcome(_request(extra=AUTH), _response(401, CHALLENGE)) == AuthOutcome(False, "alice")
    assert auth_outcome(_request(extra=AUTH), _response(403)) == AuthOutcome(False, "alice")
    invite = _request("INVITE", PROXY_AUTH)
    assert auth_outcome(invite, _response(407, CHALLENGE.replace("WWW", "Proxy"))) == AuthOutcome(
        False, "bob"
    )


def test_stale_nonce_is_not_a_failure() -> None:
    """A challenge with stale=true (quoted or not, any case) means the password was right."""
    stale = 'WWW-Authenticate: Digest realm="r", nonce="new", stale=TRUE\r\n'
    assert auth_outcome(_request(extra=AUTH), _response(401, stale)) is None
    quoted = 'Proxy-Authenticate: Digest realm="r", nonce="new", stale="true"\r\n'
    assert auth_outcome(_request("INVITE", PROXY_AUTH), _response(407, quoted)) is None
    not_stale = 'WWW-Authenticate: Digest realm="r", nonce="new", stale=false\r\n'
    assert auth_outcome(_request(extra=AUTH), _response(401, not_stale)) == AuthOutcome(False, "alice")


def test_2xx_to_authenticated_register_is_a_success() -> None:
    """Only a 2xx to a REGISTER that carried credentials forgives; other 2xx say nothing."""
    assert auth_outcome(_request(extra=AUTH), _response(200)) == AuthOutcome(True, "alice")
    assert auth_outcome(_request(), _response(200)) is None
    assert auth_outcome(_request("INVITE", PROXY_AUTH), _response(200)) is None
    assert auth_outcome(_request(extra=AUTH), _response(404)) is None
    assert auth_outcome(_request(extra=AUTH), _response(500)) is None


def test_garbage_credentials_count_with_unknown_user() -> None:
    """A malformed Authorization still carries credentials (a sprayer's), with no user name."""
    req = _request(extra="Authorization: garbage\r\n")
    assert credentials_user(req) == (True, None)
    assert auth_outcome(req, _response(403)) == AuthOutcome(False, None)


def test_user_names_are_unquoted_and_capped() -> None:
    """Quoted-pair escapes are undone; a huge user name is cut to MAX_USER characters."""
    assert digest_param('Digest username="a\\"b", realm=x', "username") == 'a"b'
    assert digest_param("Digest Username=plain, realm=x", "USERNAME") == "plain"
    assert digest_param('Digest username="open', "username") == "open"
    assert digest_param("Digest realm=x", "username") is None
    req = _request(extra=f'Authorization: Digest username="{"u" * 500}", realm="r"\r\n')
    has, user = credentials_user(req)
    assert has and user == "u" * MAX_USER


@given(st.text(max_size=300), st.sampled_from(["username", "stale", "realm"]))
def test_digest_param_never_raises(value: str, name: str) -> None:
    """Any header text gives a string or None, never an exception."""
    result = digest_param(value, name)
    assert result is None or isinstance(result, str)
