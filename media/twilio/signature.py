"""`X-Twilio-Signature`: Twilio's request signing, as twilio-python's `RequestValidator` does it.

The signature covers the URL Twilio requested (as written in its configuration or TwiML, so the
public one, not the one a TLS-terminating proxy forwards) followed by every form parameter as
name+value in sorted order, HMAC-SHA1 keyed with the account's auth token, base64. Media Stream
upgrades are GETs signed over the `wss://` URL with no parameters.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

__all__ = ["compute_signature", "public_url", "validate_signature"]

Params = Mapping[str, str | Sequence[str]]


def compute_signature(auth_token: str, url: str, params: Params) -> str:
    parts = [url]
    for name in sorted(params):
        value = params[name]
        # A repeated form field signs each distinct value once, in sorted order.
        values = [value] if isinstance(value, str) else sorted(set(value))
        parts.extend(name + v for v in values)
    digest = hmac.new(auth_token.encode(), "".join(parts).encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def validate_signature(auth_token: str, url: str, params: Params, signature: str) -> bool:
    """True if `signature` signs `url` either without its port or with the default port:
    Twilio signs the URL as configured, which the server cannot tell apart from either."""
    try:
        candidates = (_without_port(url), _with_port(url))
    except ValueError:  # a port that is not a number: nothing Twilio could have signed
        return False
    expected = signature.encode()
    # Check both without short-circuiting so timing does not reveal which form matched.
    results = [
        hmac.compare_digest(compute_signature(auth_token, u, params).encode(), expected)
        for u in candidates
    ]
    return any(results)


def _without_port(url: str) -> str:
    parts = urlsplit(url)
    if parts.port is None:
        return url
    netloc = parts.netloc.rpartition(":")[0]
    return urlunsplit(parts._replace(netloc=netloc))


def _with_port(url: str) -> str:
    parts = urlsplit(url)
    if parts.port is not None:
        return url
    # twilio-python's add_port: 443 only for https; every other scheme (wss too) gets 80.
    port = 443 if parts.scheme == "https" else 80
    return urlunsplit(parts._replace(netloc=f"{parts.netloc}:{port}"))


def public_url(
    scheme: str,
    host: str,
    path: str,
    *,
    forwarded_proto: str | None = None,
    forwarded_host: str | None = None,
    websocket: bool = False,
) -> str:
    """The URL Twilio signed, rebuilt from what a server behind a proxy sees.

    `X-Forwarded-Proto`/`-Host` win over the request's own scheme and host (first value when a
    chain of proxies appended several). For a websocket the scheme becomes ws/wss, since Twilio
    signs the `wss://` URL from the TwiML while the proxy forwards plain http."""
    proto = _first(forwarded_proto) or scheme
    proto = proto.lower()
    if websocket:
        proto = {"https": "wss", "http": "ws"}.get(proto, proto)
    else:
        proto = {"wss": "https", "ws": "http"}.get(proto, proto)
    netloc = _first(forwarded_host) or host
    if not path.startswith("/"):
        path = "/" + path
    return f"{proto}://{netloc}{path}"


def _first(header: str | None) -> str:
    return header.split(",")[0].strip() if header else ""
