"""Short-lived signed tokens that bind a media stream to the call the voice webhook accepted.

Twilio forbids query strings on the stream URL, so the token travels as a `<Parameter>` and
arrives in `start.customParameters`. Format: base64url(JSON claims) "." base64url(HMAC-SHA256).
Twilio wants a parameter's name and value under 500 characters together, so claims stay short
(`exp` is whole seconds). A token is good for one media stream: the stream records the call id
its claims carry as used (control/twilio_routes.py), so a replay is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
from typing import Any

__all__ = ["InvalidToken", "issue_token", "verify_token"]


class InvalidToken(Exception):
    pass


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue_token(key: bytes, claims: dict[str, Any], *, now: float, ttl: float) -> str:
    # Rounded down: a token never outlives the TTL asked for (it may lose up to a second).
    expires = math.floor(now + ttl)
    body = _b64(json.dumps({**claims, "exp": expires}, separators=(",", ":")).encode())
    signature = _b64(hmac.new(key, body.encode(), hashlib.sha256).digest())
    return f"{body}.{signature}"


def verify_token(key: bytes, token: str, *, now: float) -> dict[str, Any]:
    body, _, signature = token.partition(".")
    # Tokens arrive from unauthenticated requests: anything but base64url text is malformed
    # (hmac.compare_digest refuses non-ASCII str, and encode() a lone surrogate).
    if not body or not signature or not token.isascii():
        raise InvalidToken("malformed stream token")
    expected = _b64(hmac.new(key, body.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(expected, signature):
        raise InvalidToken("bad stream token signature")
    try:
        claims = json.loads(_unb64(body))
    except ValueError as exc:
        raise InvalidToken("malformed stream token") from exc
    if not isinstance(claims, dict) or not isinstance(claims.get("exp"), int | float):
        raise InvalidToken("malformed stream token")
    if claims["exp"] < now:
        raise InvalidToken("stream token expired")
    return claims
