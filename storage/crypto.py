"""Provider secrets (Twilio auth tokens, API secrets) encrypted at rest.

Fernet is AES-128-CBC + HMAC-SHA256 with a timestamp: authenticated, so a tampered or
wrong-key value fails loudly instead of decrypting to garbage. Old keys can be kept for
decryption while new values are written with the first key (rotation without a rewrite).
"""

from __future__ import annotations

import base64
import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from storage.errors import DecryptionFailed

__all__ = [
    "MASKED",
    "MAX_WALK_DEPTH",
    "SEALED",
    "SecretBox",
    "derive_key",
    "derive_subkey",
    "open_secrets",
    "seal_secrets",
    "without_secrets",
]

# A secret inside stored JSON config becomes `{"$sealed": "<Fernet token>"}`: an object, so
# no plain string a tenant might choose as a secret can be mistaken for an encrypted one.
SEALED = "$sealed"
# What API responses show for each `server.headers` value: the names stay visible, the values
# (often credentials) never leave the server.
MASKED = "***"
# The walks below recurse; configs deeper than this are refused rather than walked. The API
# admits 32 levels (voice.json_bounds), so only a row stored before that bound can reach it.
MAX_WALK_DEPTH = 64


def derive_subkey(secret_key: str, purpose: str, length: int = 32) -> bytes:
    """`length` bytes for one `purpose`, derived from the server's secret with HKDF-SHA256.

    Separate purposes get unrelated keys, so the key that encrypts Twilio tokens is not the one
    that hashes API keys or signs stream tokens, even though operators configure one secret.
    """
    if not secret_key:
        raise ValueError("secret key is empty")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=f"ava:{purpose}".encode())
    return hkdf.derive(secret_key.encode())


def derive_key(secret_key: str) -> str:
    """A Fernet key (urlsafe base64 of 32 bytes) from an arbitrary secret string."""
    return base64.urlsafe_b64encode(derive_subkey(secret_key, "secretbox-v1")).decode()


class SecretBox:
    """Encrypts with `key`; decrypts with `key` or any of `old_keys` (all Fernet keys)."""

    def __init__(self, key: str, *old_keys: str) -> None:
        try:
            fernets = [Fernet(k.encode()) for k in (key, *old_keys)]
        except ValueError as exc:  # don't echo the key back in the message
            raise ValueError(
                "not a Fernet key (32 url-safe base64 bytes); use derive_key() for passphrases"
            ) from exc
        self._fernet = MultiFernet(fernets)

    @classmethod
    def from_secret(cls, secret_key: str) -> SecretBox:
        return cls(derive_key(secret_key))

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode("ascii")

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode()
        except (InvalidToken, UnicodeError) as exc:
            raise DecryptionFailed(
                "stored secret cannot be decrypted with the current key"
            ) from exc

    def encrypt_json(self, value: dict[str, Any]) -> str:
        return self.encrypt(json.dumps(value, separators=(",", ":"), sort_keys=True))

    def decrypt_json(self, token: str) -> dict[str, Any]:
        value = json.loads(self.decrypt(token))
        if not isinstance(value, dict):
            raise DecryptionFailed("stored secret is not a JSON object")
        return value


def _is_secret(key: str, in_server: bool) -> bool:
    # Vapi's `server.secret` (on assistants, tools, inline tools and phone numbers) and the
    # legacy top-level `serverUrlSecret`, wherever a config nests them.
    return key == "serverUrlSecret" or (in_server and key == "secret")


def _deeper(depth: int) -> int:
    """The next level of a walk below; a ValueError past `MAX_WALK_DEPTH` instead of a
    RecursionError (and a 500 on every later read of the row, issue 9 finding 7)."""
    if depth >= MAX_WALK_DEPTH:
        raise ValueError(f"JSON config nested deeper than {MAX_WALK_DEPTH} levels")
    return depth + 1


def seal_secrets(value: Any, box: SecretBox, *, in_server: bool = False, _depth: int = 0) -> Any:
    """A copy of the JSON `value` with every provider secret encrypted (already-sealed ones
    and non-string values are left as they are)."""
    if isinstance(value, list):
        return [seal_secrets(v, box, _depth=_deeper(_depth)) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        if _is_secret(key, in_server) and isinstance(item, str):
            out[key] = {SEALED: box.encrypt(item)}
        elif in_server and key == "headers" and isinstance(item, dict):
            out[key] = _sealed_headers(item, box)
        else:
            out[key] = seal_secrets(item, box, in_server=key == "server", _depth=_deeper(_depth))
    return out


def _sealed_headers(headers: dict[str, Any], box: SecretBox) -> dict[str, Any]:
    # `server.headers` values are credentials as often as not (Authorization, X-Api-Key): each
    # is sealed like a secret. MASKED is what an API response shows instead of a value; a client
    # echoing it back means "keep the stored value" (storage/resources.py does that for the same
    # URL), so where nothing was kept the placeholder is dropped, never stored as a credential.
    out: dict[str, Any] = {}
    for name, value in headers.items():
        if value == MASKED:
            continue
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            out[name] = {SEALED: box.encrypt(str(value))}
        else:  # already sealed, or no usable header value (refused when a call uses it)
            out[name] = value
    return out


def open_secrets(value: Any, box: SecretBox, *, _depth: int = 0) -> Any:
    """The inverse of `seal_secrets`. Raises DecryptionFailed on a wrong key or tampering."""
    if isinstance(value, list):
        return [open_secrets(v, box, _depth=_deeper(_depth)) for v in value]
    if not isinstance(value, dict):
        return value
    token = value.get(SEALED)
    if len(value) == 1 and isinstance(token, str):
        return box.decrypt(token)
    return {key: open_secrets(item, box, _depth=_deeper(_depth)) for key, item in value.items()}


def without_secrets(value: Any, *, in_server: bool = False, _depth: int = 0) -> Any:
    """A copy of the JSON `value` with the provider secrets left out (for API responses)."""
    if isinstance(value, list):
        return [without_secrets(v, _depth=_deeper(_depth)) for v in value]
    if not isinstance(value, dict):
        return value
    return {
        key: (
            dict.fromkeys(item, MASKED)
            if in_server and key == "headers" and isinstance(item, dict)
            else without_secrets(item, in_server=key == "server", _depth=_deeper(_depth))
        )
        for key, item in value.items()
        if not _is_secret(key, in_server)
    }
