"""Vapi's JSON shapes for stored records (its Call object), so Vapi clients read AVA's unchanged.

Durations in the database are seconds; Vapi speaks milliseconds in messages and metrics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from storage.crypto import without_secrets
from voice.recording_urls import RECORDING_BASE_URL, recording_artifact

if TYPE_CHECKING:
    from storage.calls import CallMessage, CallRecord, CallTurn

__all__ = [
    "BREAKDOWN_FIELDS",
    "CUSTOMER",
    "PLACE_URLS",
    "SCHEDULE_PLAN",
    "UNKNOWN_VARIABLES",
    "VARIABLE_VALUES",
    "cost_breakdown",
    "iso",
    "to_vapi",
]

# Keys of a call's stored metadata that to_vapi shows as fields of their own.
CUSTOMER = "customer"  # what POST /call was told of the customer besides the number
VARIABLE_VALUES = "variableValues"
UNKNOWN_VARIABLES = "unknownVariables"
SCHEDULE_PLAN = "schedulePlan"  # Vapi's, as POST /call gave it (a scheduled or batch call)
PLACE_URLS = "placeUrls"  # where a scheduled call's media stream and status callbacks go; internal

_SPEAKERS = {"user": "User", "bot": "AI"}
_ANALYSIS = ("summary", "structuredData", "successEvaluation", "errors")  # as stored, shown
# costBreakdown's fields (Vapi's order), and where each cost item's amount goes.
BREAKDOWN_FIELDS = (
    "transport", "stt", "llm", "tts", "vapi", "chat", "total",
    "llmPromptTokens", "llmCompletionTokens", "llmCachedPromptTokens", "ttsCharacters",
)  # fmt: skip
_BREAKDOWN_OF = {
    "transport": "transport", "transcriber": "stt", "model": "llm", "voice": "tts", "vapi": "vapi",
}  # fmt: skip
_TOKENS = {
    "llmPromptTokens": "promptTokens",
    "llmCompletionTokens": "completionTokens",
    "llmCachedPromptTokens": "cachedPromptTokens",
}
_COST_DECIMALS = 6  # USD, as voice.pricing rounds each item
# Vapi's turnLatencies keys ← voice.events.TurnLatency fields.
_LATENCIES = {
    "modelLatency": "llm_ttft",
    "voiceLatency": "tts_ttfb",
    "transcriberLatency": "stt",
    "endpointingLatency": "endpointing",
    "turnLatency": "voice_to_voice",
    "serverLatency": "server",  # AVA's own share of the turn; not a Vapi field
    "heldLatency": "held",  # audio ready but held back (stopSpeakingPlan); not a Vapi field
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
    if call.analysis is not None:
        # Vapi's call.analysis (AVA's `errors` in it: the parts that failed, and why), and its
        # legacy top-level `summary`, which many webhook handlers still read.
        analysis = {k: call.analysis[k] for k in _ANALYSIS if k in call.analysis}
        out["analysis"] = analysis
        out["summary"] = analysis.get("summary", "")
    breakdown = cost_breakdown(call.costs)
    out["costs"] = list(call.costs)
    out["cost"] = breakdown["total"]
    out["costBreakdown"] = breakdown  # Vapi's, also its legacy top-level field: the same one
    metadata = dict(call.metadata)
    customer = metadata.pop(CUSTOMER, None)
    if isinstance(customer, dict) and "customer" in out:
        out["customer"] = {**customer, **out["customer"]}
    if isinstance(metadata.get("assistant"), dict):
        # the call's own assistant (transient, or with assistantOverrides merged in: the
        # effective one); its secrets are write-only, as stored ones
        out["assistant"] = without_secrets(metadata.pop("assistant"))
    variables = metadata.pop(VARIABLE_VALUES, None)
    if isinstance(variables, dict):
        out["artifact"]["variableValues"] = variables  # Vapi's: what the templates saw
    plan = metadata.pop(SCHEDULE_PLAN, None)
    if isinstance(plan, dict):
        out[SCHEDULE_PLAN] = plan
    metadata.pop(PLACE_URLS, None)
    unknown = metadata.pop(UNKNOWN_VARIABLES, None)
    if isinstance(unknown, list):
        # AVA extension: variables the call's templates named that it did not have (rendered
        # empty); Vapi leaves them unrendered and says nothing.
        out["unknownVariables"] = unknown
    # Recording URLs, derived from the call's download base (never stored as URLs).
    base = metadata.pop(RECORDING_BASE_URL, None)
    recording = call.recording or {}
    if isinstance(base, str) and recording.get("state") == "closed":
        urls = recording_artifact(base, call.id)
        out["artifact"].update(urls)
        out["recordingUrl"] = urls["recordingUrl"]  # the legacy top-level fields
        out["stereoRecordingUrl"] = urls["stereoRecordingUrl"]
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


def cost_breakdown(costs: Sequence[Any]) -> dict[str, Any]:
    """Vapi's `costBreakdown` from a call's `costs[]` (voice.pricing's items; anything else
    counts in the total only, so a cost type added later is never lost from it)."""
    out: dict[str, Any] = dict.fromkeys(BREAKDOWN_FIELDS, 0)
    for item in costs:
        if not isinstance(item, dict):
            continue
        cost = _amount(item.get("cost"))
        out["total"] += cost
        kind = item.get("type")
        if kind in _BREAKDOWN_OF:
            out[_BREAKDOWN_OF[kind]] += cost
        if kind == "model":
            for field, key in _TOKENS.items():
                out[field] += int(_amount(item.get(key)))
        elif kind == "voice":
            out["ttsCharacters"] += int(_amount(item.get("characters")))
    for field in ("transport", "stt", "llm", "tts", "vapi", "chat", "total"):
        out[field] = round(out[field], _COST_DECIMALS)
    out["analysisCostBreakdown"] = {}
    return out


def _amount(value: Any) -> float:
    # JSON numbers come back exactly int or float (a bool, NaN, ∞ or anything else counts 0);
    # exact type checks: analytics folds up to 100k calls' costs per request.
    if type(value) is int or type(value) is float:
        return float(value) if 0 <= value < math.inf else 0.0
    return 0.0
