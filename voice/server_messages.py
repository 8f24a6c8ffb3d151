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

Also here, sans-I/O: the answer to an `assistant-request` (`parse_assistant_answer`, Vapi's
contract and its `assistant-request-*` ended reasons); `control/assistant_request.py` sends it.
What each call event becomes is `voice.call_messages`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from voice.assistant import Assistant
from voice.history import Conversation
from voice.types import EndedReason

__all__ = [
    "ASSISTANT_REQUEST_TIMEOUT",
    "DEFAULT_ORG",
    "DEFAULT_SERVER_TIMEOUT",
    "SIGNATURE_HEADER",
    "SIGNATURE_TOLERANCE",
    "TIMESTAMP_HEADER",
    "AssistantAnswer",
    "ServerTarget",
    "call_json",
    "encode",
    "envelope",
    "iso_time",
    "parse_assistant_answer",
    "public_assistant",
    "public_server",
    "sign",
    "tool_context",
    "verify_signature",
]

DEFAULT_SERVER_TIMEOUT = 20.0
SIGNATURE_HEADER = "x-signature"
TIMESTAMP_HEADER = "x-timestamp"
SECRET_HEADER = "x-vapi-secret"
SIGNATURE_TOLERANCE = 300.0  # seconds a signed timestamp may be off from the receiver's clock
DEFAULT_ORG = "default"  # the `orgId` of calls without a tenant (single-tenant mode)
ASSISTANT_REQUEST_TIMEOUT = 7.5  # Vapi's fixed, end-to-end limit for `assistant-request`
MAX_ERROR_CHARS = 1000  # an `{error}` longer than this is not read out to a caller


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
        # null (or absent) is Vapi's default; anything not a number is a ValueError like any
        # other bad config, never a TypeError that escapes a call's start (issue 9, finding 7).
        given = config.get("timeoutSeconds")
        if given is None:
            given = DEFAULT_SERVER_TIMEOUT
        if isinstance(given, bool) or not isinstance(given, int | float | str):
            raise ValueError(f"server.timeoutSeconds must be a number, got {type(given).__name__}")
        try:
            timeout = float(given)
        except ValueError as exc:
            raise ValueError("server.timeoutSeconds must be a number") from exc
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


def call_json(
    call_id: str,
    metadata: Mapping[str, str],
    status: str,
    created_at: float | None = None,
    updated_at: float | None = None,
) -> dict[str, Any]:
    """Vapi's Call object, as much of it as the call loop knows (ids from the media layer).
    `orgId`, `createdAt`, `updatedAt` are required by Vapi's SDK models: a call without a
    tenant is in the org `default` (single-tenant mode); times are unix seconds."""
    kind = metadata.get("type") or "inboundPhoneCall"
    call: dict[str, Any] = {
        "id": call_id,
        "orgId": metadata.get("tenant_id") or DEFAULT_ORG,
        "type": kind,
        "status": status,
    }
    if created_at is not None:
        call["createdAt"] = iso_time(created_at)
        call["updatedAt"] = iso_time(updated_at if updated_at is not None else created_at)
    if kind.endswith("PhoneCall"):
        call |= {"phoneCallProvider": "twilio", "phoneCallTransport": "pstn"}
    optional = {
        "assistantId": metadata.get("assistant_id"),
        "phoneNumberId": metadata.get("phone_number_id"),
        "phoneCallProviderId": metadata.get("call_sid"),
    }
    call.update({k: v for k, v in optional.items() if v})
    if metadata.get("from"):
        call["customer"] = {"number": metadata["from"]}
    return call


def iso_time(seconds: float) -> str:
    """Unix seconds as Vapi writes times: ISO 8601, milliseconds, `Z`."""
    return (
        datetime.fromtimestamp(seconds, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def public_assistant(assistant: Assistant) -> dict[str, Any]:
    """The assistant as sent in messages: its JSON without any server secret."""
    data = assistant.to_json()
    _drop_secret(data.get("server"))
    for tool in data.get("model", {}).get("tools", []):
        if isinstance(tool, dict):
            _drop_secret(tool.get("server"))
    return data


def public_server(server: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A `server` object as sent in messages (a phone number's): no secret, no headers."""
    if server is None:
        return None
    out = dict(server)
    _drop_secret(out)
    return out


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


@dataclass(frozen=True, slots=True)
class AssistantAnswer:
    """What the answer to an `assistant-request` tells the call to do. Exactly one of
    `assistant` (transient), `assistant_id`, `destination` (a number to forward to) or
    `say` (an error to speak, then hang up) is set; `reason` is the call's `endedReason` when
    it does not get an assistant, `detail` says why for the record."""

    assistant: Assistant | None = None
    assistant_id: str | None = None
    destination: str | None = None
    say: str | None = None
    reason: EndedReason | None = None
    detail: str = ""

    @classmethod
    def failed(cls, reason: EndedReason, detail: str) -> AssistantAnswer:
        return cls(reason=reason, detail=detail)


def parse_assistant_answer(status: int, body: bytes) -> AssistantAnswer:
    """Vapi's `assistant-request` contract, for an HTTP answer `status` / `body`:
    `{assistant}` | `{assistantId}` | `{destination: {type: "number", number}}` |
    `{error: "spoken to the caller"}`. Anything else (non-2xx, not a JSON object, an invalid
    assistant, squads and workflows, which AVA does not run) is a failure with the matching
    `assistant-request-*` reason."""
    failed = EndedReason.ASSISTANT_REQUEST_FAILED
    invalid = EndedReason.ASSISTANT_REQUEST_RETURNED_INVALID_ASSISTANT
    if not 200 <= status < 300:
        return AssistantAnswer.failed(failed, f"the server answered HTTP {status}")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return AssistantAnswer.failed(failed, "the server's answer is not JSON")
    if not isinstance(data, dict):
        return AssistantAnswer.failed(failed, "the server's answer is not a JSON object")
    if "error" in data:
        error = data["error"]
        if isinstance(error, str) and error.strip() and len(error) <= MAX_ERROR_CHARS:
            return AssistantAnswer(
                say=error.strip(),
                reason=EndedReason.ASSISTANT_REQUEST_RETURNED_ERROR,
                detail=error.strip(),
            )
        return AssistantAnswer.failed(
            EndedReason.ASSISTANT_REQUEST_RETURNED_UNSPEAKABLE_ERROR,
            # not quoted: the record says what was wrong, not what the server sent
            f"the error is not a non-empty string of at most {MAX_ERROR_CHARS} characters",
        )
    if data.get("assistant") is not None:
        if not isinstance(data["assistant"], dict):
            return AssistantAnswer.failed(invalid, "assistant must be an object")
        try:
            return AssistantAnswer(assistant=Assistant.model_validate(data["assistant"]))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            return AssistantAnswer.failed(invalid, f"assistant.{where}: {first['msg']}")
    if data.get("assistantId") is not None:
        assistant_id = data["assistantId"]
        if not isinstance(assistant_id, str) or not assistant_id:
            return AssistantAnswer.failed(invalid, "assistantId must be a non-empty string")
        return AssistantAnswer(assistant_id=assistant_id)
    destination = data.get("destination")
    if isinstance(destination, dict):
        number = destination.get("number")
        if destination.get("type", "number") == "number" and isinstance(number, str) and number:
            return AssistantAnswer(
                destination=number,
                reason=EndedReason.ASSISTANT_REQUEST_RETURNED_FORWARDING,
                detail=f"forwarded to {number}",
            )
        return AssistantAnswer.failed(invalid, "destination must be {type: number, number}")
    unsupported = [k for k in ("squadId", "squad", "workflowId", "workflow") if k in data]
    if unsupported:
        return AssistantAnswer.failed(invalid, f"{unsupported[0]}: AVA does not run squads")
    return AssistantAnswer.failed(
        EndedReason.ASSISTANT_REQUEST_RETURNED_NO_ASSISTANT,
        "the answer names no assistant, destination or error",
    )
