"""Vapi's JSON shapes for stored records (its Call object), so Vapi clients read AVA's unchanged.

Durations in the database are seconds; Vapi speaks milliseconds in messages and metrics.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from storage.crypto import without_secrets

if TYPE_CHECKING:
    from storage.calls import CallMessage, CallRecord, CallTurn

__all__ = ["iso", "to_vapi"]

_SPEAKERS = {"user": "User", "bot": "AI"}
# Vapi's turnLatencies keys ← voice.events.TurnLatency fields.
_LATENCIES = {
    "modelLatency": "llm_ttft",
    "voiceLatency": "tts_ttfb",
    "transcriberLatency": "stt",
    "endpointingLatency": "endpointing",
    "turnLatency": "voice_to_voice",
    "serverLatency": "server",  # AVA's own share of the turn; not a Vapi field
}


def iso(value: datetime) -> str:
    """Vapi's timestamps: UTC, milliseconds, `Z`."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_vapi(call: CallRecord) -> dict[str, Any]:
    """The Call object: top-level fields, `messages`, `artifact` (transcript, messages,
    performance metrics), the legacy top-level `transcript` old webhook handlers read, and
    AVA's `providerErrors` when a provider failed."""
    messages = [_message(m) for m in call.messages]
    transcript = "\n".join(
        f"{_SPEAKERS[m.role]}: {m.message}" for m in call.messages if m.role in _SPEAKERS
    )
    out: dict[str, Any] = {
        "id": call.id,
        "orgId": call.tenant_id,
        "type": call.type,
        "status": call.status,
        "createdAt": iso(call.created_at),
        "updatedAt": iso(call.updated_at),
    }
    optional = {
        "startedAt": call.started_at and iso(call.started_at),
        "endedAt": call.ended_at and iso(call.ended_at),
        "endedReason": call.ended_reason,
        "endedMessage": call.ended_detail,
        "assistantId": call.assistant_id,
        "phoneNumberId": call.phone_number_id,
    }
    out.update({k: v for k, v in optional.items() if v})
    if call.type != "webCall":
        number = call.from_number if call.type == "inboundPhoneCall" else call.to_number
        out["customer"] = {"number": number} if number else {}
        out["phoneCallProvider"] = "twilio"
        out["phoneCallTransport"] = "pstn"
        if call.twilio_call_sid:
            out["phoneCallProviderId"] = call.twilio_call_sid
            out["transport"] = {
                "provider": "twilio",
                "callSid": call.twilio_call_sid,
                "statusCallbacks": _status_callbacks(call),
            }
    barge_ins = sum(1 for e in call.events if e.kind == "barge-in")
    out["messages"] = messages
    out["artifact"] = {
        "messages": messages,
        "messagesOpenAIFormatted": [_openai(m) for m in call.messages],
        "transcript": transcript,
        "performanceMetrics": _metrics(call.turns, barge_ins),
    }
    out["transcript"] = transcript
    failures = [dict(e.data) for e in call.events if e.kind == "provider-failed"]
    if failures:
        # AVA extension (Vapi has no such field): every provider failure of the call, including
        # those it survived (`recovered`: the adapter reconnected a dropped socket by itself).
        out["providerErrors"] = failures
    out["costs"] = list(call.costs)
    out["cost"] = round(sum(float(c.get("cost", 0) or 0) for c in call.costs), 6)
    metadata = dict(call.metadata)
    if isinstance(metadata.get("assistant"), dict):
        # a transient assistant given to POST /call; its secrets are write-only, as stored ones
        out["assistant"] = without_secrets(metadata.pop("assistant"))
    if metadata:
        out["metadata"] = metadata
    return out


def _status_callbacks(call: CallRecord) -> list[dict[str, Any]]:
    """Twilio's status callbacks in Twilio's order (SequenceNumber), not arrival order."""
    events = [e for e in call.events if e.kind == "twilio-status"]
    events.sort(key=lambda e: (e.sequence is None, e.sequence or 0, e.at))
    return [{**e.data, "sequenceNumber": e.sequence} for e in events]


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _message(m: CallMessage) -> dict[str, Any]:
    out: dict[str, Any] = {
        "role": m.role,
        "message": m.message,
        "time": m.time,
        "secondsFromStart": round(m.seconds_from_start, 3),
    }
    if m.role in ("user", "bot"):
        out["endTime"] = m.time + _ms(m.duration)
        out["duration"] = _ms(m.duration)
    if m.role == "tool_calls":
        out["toolCalls"] = list(m.tool_calls or [])
    if m.role == "tool_call_result":
        out.update(toolCallId=m.tool_call_id, name=m.name, result=m.message)
    if m.interrupted:
        out["interrupted"] = True  # AVA: the caller barged in; `message` is what they heard
    return out


def _openai(m: CallMessage) -> dict[str, Any]:
    if m.role == "tool_calls":
        return {"role": "assistant", "content": m.message, "tool_calls": list(m.tool_calls or [])}
    if m.role == "tool_call_result":
        return {"role": "tool", "tool_call_id": m.tool_call_id, "content": m.message}
    return {"role": "assistant" if m.role == "bot" else m.role, "content": m.message}


def _metrics(turns: tuple[CallTurn, ...], barge_ins: int) -> dict[str, Any]:
    latencies = [
        {key: _ms(getattr(t.latency, name)) for key, name in _LATENCIES.items()}
        for t in turns
        if t.latency is not None
    ]
    metrics: dict[str, Any] = {
        "turnLatencies": latencies,
        "numUserInterrupted": barge_ins,
        "numAssistantInterrupted": 0,
    }
    if latencies:
        for key in _LATENCIES:
            metrics[f"{key}Average"] = round(sum(t[key] for t in latencies) / len(latencies), 1)
    return metrics
