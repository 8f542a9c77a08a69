"""Secrets at rest in Redis: AES-256-GCM (``cryptography``'s AESGCM) under the cluster key.

A sealed value is ``{"n": nonce, "c": ciphertext+tag}`` (base64), with a fresh 96-bit nonce per seal
(NIST SP 800-38D s.8.2.2: random nonces are safe far beyond the writes one key sees here) and the
record's Redis key as associated data, so a value copied under another key does not open.

Sans-IO: the nonce source is injected (the adapter passes ``os.urandom``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["KEY_BYTES", "SecretBox", "parse_key"]

KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12


def parse_key(text: str) -> bytes:
    """The 32-byte key from its base64 form (``cluster.key``); ValueError otherwise (the message
    never contains the key)."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None
    if len(raw) != KEY_BYTES:
        raise ValueError(f"must decode to {KEY_BYTES} bytes (openssl rand -base64 32)")
    return raw


class SecretBox:
    """Seal and open small secrets (see the module docstring)."""

    __slots__ = ("_aead", "_nonce")

    def __init__(self, key: bytes, nonce: Callable[[int], bytes]) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"key must be {KEY_BYTES} bytes")
        self._aead = AESGCM(key)
        self._nonce = nonce

    def seal(self, plaintext: bytes, aad: bytes) -> dict[str, str]:
        nonce = self._nonce(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext, aad)
        return {"n": base64.b64encode(nonce).decode(), "c": base64.b64encode(sealed).decode()}

    def open(self, sealed: Mapping[str, Any], aad: bytes) -> bytes:
        try:
            nonce = base64.b64decode(str(sealed["n"]), validate=True)
            data = base64.b64decode(str(sealed["c"]), validate=True)
            return self._aead.decrypt(nonce, data, aad)
        except (KeyError, binascii.Error, ValueError, InvalidTag):
            raise ValueError("sealed value does not open (wrong cluster.key, or not its record)") from None
