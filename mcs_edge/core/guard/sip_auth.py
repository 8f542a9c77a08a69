"""Which PBX answers are failed (or successful) authentications: the input of the ban list.

Theory of operation
-------------------
The edge never checks passwords: the tenant's PBX does, and the edge watches its answers to
requests it relayed from clients (``auth_outcome(request, response)``):

* the request carried credentials (an ``Authorization`` or ``Proxy-Authorization`` header), and
  the PBX answered 401, 407 or 403: a *failure* for the source, remembered with the digest
  ``username``. A 401/407 whose challenge says ``stale=true`` is not a failure: the password was
  right, only the nonce had expired (RFC 3261 s.22.4, RFC 7616 s.3.3), and the client retries.
* the request was a REGISTER with credentials and the PBX answered 2xx: a *success* for that
  user, which forgives that user's earlier failures from the same source (see ``bans.py``).
* anything else, notably the first 401 challenge of every REGISTER (no credentials yet), is
  ordinary digest traffic and says nothing.

The user name comes from the first credentials header; it is capped at ``MAX_USER`` characters
(a key in the ban list's memory, never trusted for anything else). Parsing is tolerant: a header
that is not well-formed still counts as "credentials present" (with an unknown user), because a
garbage Authorization is exactly what a password sprayer might send.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mcs_edge.core.sip.message import Request, Response

__all__ = ["MAX_USER", "AuthOutcome", "auth_outcome", "credentials_user", "digest_param"]

#: Longest user name remembered (longer ones are cut).
MAX_USER = 128

_CREDENTIALS = ("authorization", "proxy-authorization")
_CHALLENGES = ("www-authenticate", "proxy-authenticate")
# auth-param = token "=" ( token / quoted-string )   (RFC 3261 s.25.1, RFC 7616)
_PARAM = re.compile(r'([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"?|[^\s,]*)')


@dataclass(frozen=True, slots=True)
class AuthOutcome:
    """A failed (``success=False``) or successful authentication of ``user`` (if known)."""

    success: bool
    user: str | None


def digest_param(value: str, name: str) -> str | None:
    """The value of parameter ``name`` (case-insensitive) in a credentials/challenge value."""
    wanted = name.lower()
    for m in _PARAM.finditer(value):
        if m.group(1).lower() == wanted:
            raw = m.group(2)
            if raw.startswith('"'):
                raw = raw[1:-1] if len(raw) >= 2 and raw.endswith('"') else raw[1:]
                raw = re.sub(r"\\(.)", r"\1", raw)
            return raw
    return None


def credentials_user(request: Request) -> tuple[bool, str | None]:
    """(carries credentials, digest user name or ``None``) of ``request``."""
    headers = request.headers
    for name in _CREDENTIALS:
        value = headers.get(name)
        if value is not None:
            user = digest_param(value, "username")
            if user is not None:
                user = user[:MAX_USER]
            return True, user or None
    return False, None


def _stale(response: Response) -> bool:
    headers = response.headers
    for name in _CHALLENGES:
        for value in headers.get_all(name):
            stale = digest_param(value, "stale")
            if stale is not None and stale.lower() == "true":
                return True
    return False


def auth_outcome(request: Request, response: Response) -> AuthOutcome | None:
    """What the PBX's final ``response`` to the relayed ``request`` says about authentication."""
    status = response.status
    if status in (401, 403, 407):
        has, user = credentials_user(request)
        if not has or (status != 403 and _stale(response)):
            return None
        return AuthOutcome(False, user)
    if 200 <= status < 300 and request.method == "REGISTER":
        has, user = credentials_user(request)
        if has:
            return AuthOutcome(True, user)
    return None
