"""Vapi server messages (webhooks): where they go, their envelope, and how they are signed.

Every message is `POST {"message": {"type": …, "timestamp": <ms>, "call": {…}, …}}` to the
server URL (a tool's `server.url` for `tool-calls`, else the assistant's `server.url`), with
`server.headers` added and a deadline of `server.timeoutSeconds` (Vapi's default: 20 s).

Signing. When the server config has a `secret`, each request carries

    X-Vapi-Secret: <secret>                 Vapi's legacy shared-secret header, verbatim
    X-Timestamp:   <unix seconds>
    X-Signature:   <hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>

The last two are Vapi's HMAC credential with its defaults (`signatureHeader` x-signature,
`timestampHeader` x-timestamp, `payloadFormat` "{timestamp}.{body}", hex). A receiver should
check the signature, not the plain secret: `verify_signature` does it in constant time and
refuses timestamps more than five minutes away (replays). Without a secret nothing is signed
(Vapi's default too); the server can still be given static `headers`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from voice.assistant import Assistant
from voice.history import Conversation

__all__ = [
    "DEFAULT_SERVER_TIMEOUT",
    "SIGNATURE_HEADER",
    "SIGNATURE_TOLERANCE",
    "TIMESTAMP_HEADER",
    "ServerTarget",
    "call_json",
    "encode",
    "envelope",
    "public_assistant",
    "sign",
    "tool_context",
    "verify_signature",
]

DEFAULT_SERVER_TIMEOUT = 20.0
SIGNATURE_HEADER = "x-signature"
TIMESTAMP_HEADER = "x-timestamp"
SECRET_HEADER = "x-vapi-secret"
SIGNATURE_TOLERANCE = 300.0  # seconds a signed timestamp may be off from the receiver's clock


@dataclass(frozen=True, slots=True)
class ServerTarget:
    """A Vapi `server` object: `{url, secret, timeoutSeconds, headers}`."""

    url: str
    secret: str | None = field(default=None, repr=False)
    timeout_seconds: float = DEFAULT_SERVER_TIMEOUT
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> ServerTarget | None:
        """None when there is no usable URL. Raises ValueError for a malformed config."""
        if not config or not config.get("url"):
            return None
        url = str(config["url"])
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"server.url must be http(s), got {url!r}")
        timeout = float(config.get("timeoutSeconds", DEFAULT_SERVER_TIMEOUT))
        if not 1 <= timeout <= 300:  # Vapi's range
            raise ValueError(f"server.timeoutSeconds must be 1–300, got {timeout}")
        headers = config.get("headers") or {}
        if not isinstance(headers, Mapping):
            raise ValueError("server.headers must be an object")
        secret = config.get("secret")
        return cls(
            url=url,
            secret=str(secret) if secret else None,
            timeout_seconds=timeout,
            headers={str(k): str(v) for k, v in headers.items()},
        )

    def request_headers(self, body: bytes, timestamp: int) -> dict[str, str]:
        headers = {**self.headers, "content-type": "application/json"}
        if self.secret:
            headers[SECRET_HEADER] = self.secret
            headers[TIMESTAMP_HEADER] = str(timestamp)
            headers[SIGNATURE_HEADER] = sign(body, self.secret, timestamp)
        return headers


def sign(body: bytes, secret: str, timestamp: int) -> str:
    payload = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()


def verify_signature(
    body: bytes,
    headers: Mapping[str, str],
    secret: str,
    now: float,
    tolerance: float = SIGNATURE_TOLERANCE,
) -> bool:
    """The receiver's check: `headers` as received (case-insensitive mapping or lower-case
    keys), `now` in unix seconds."""
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        timestamp = int(lowered.get(TIMESTAMP_HEADER, ""))
    except ValueError:
        return False
    if abs(now - timestamp) > tolerance:
        return False
    expected = sign(body, secret, timestamp)
    return hmac.compare_digest(expected, lowered.get(SIGNATURE_HEADER, ""))


def envelope(
    kind: str, timestamp_ms: int, call: Mapping[str, Any], **fields: Any
) -> dict[str, Any]:
    """`{"message": {"type", "timestamp", "call", …fields}}`."""
    return {"message": {"type": kind, "timestamp": timestamp_ms, "call": dict(call), **fields}}


def encode(message: Mapping[str, Any]) -> bytes:
    """The exact bytes sent (and signed)."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()


def call_json(call_id: str, metadata: Mapping[str, str], status: str) -> dict[str, Any]:
    """Vapi's Call object, as much of it as the call loop knows (ids from the media layer)."""
    call: dict[str, Any] = {
        "id": call_id,
        "type": metadata.get("type") or "inboundPhoneCall",
        "status": status,
        "phoneCallProvider": "twilio",
        "phoneCallTransport": "pstn",
    }
    optional = {
        "orgId": metadata.get("tenant_id"),
        "assistantId": metadata.get("assistant_id"),
        "phoneNumberId": metadata.get("phone_number_id"),
        "phoneCallProviderId": metadata.get("call_sid"),
    }
    call.update({k: v for k, v in optional.items() if v})
    if metadata.get("from"):
        call["customer"] = {"number": metadata["from"]}
    return call


def public_assistant(assistant: Assistant) -> dict[str, Any]:
    """The assistant as sent in messages: its JSON without any server secret."""
    data = assistant.to_json()
    _drop_secret(data.get("server"))
    for tool in data.get("model", {}).get("tools", []):
        if isinstance(tool, dict):
            _drop_secret(tool.get("server"))
    return data


def _drop_secret(server: Any) -> None:
    if isinstance(server, dict):
        server.pop("secret", None)
        server.pop("headers", None)  # may carry credentials too


def tool_context(
    call_id: str, metadata: Mapping[str, str], assistant: Assistant, history: Conversation
) -> dict[str, Any]:
    """The envelope fields of a `tool-calls` message besides the tool calls themselves."""
    return {
        "call": call_json(call_id, metadata, "in-progress"),
        "assistant": public_assistant(assistant),
        "artifact": {"messagesOpenAIFormatted": [m.to_openai() for m in history.messages()]},
    }
