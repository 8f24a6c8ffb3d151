"""Typed events a call emits. Storage, metrics and live views subscribe through an `EventSink`.

`at` is seconds since the call started (the session clock); `wall` on CallStarted anchors it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from voice.types import EndedReason

__all__ = [
    "AssistantSpeechStarted",
    "AssistantSpeechStopped",
    "BargeIn",
    "CallEnded",
    "CallEvent",
    "CallStarted",
    "MessageAdded",
    "ProviderFailed",
    "SpeechStarted",
    "SpeechStopped",
    "ToolCallFailed",
    "TranscriptReceived",
    "TurnCompleted",
    "TurnLatency",
]


@dataclass(frozen=True, slots=True)
class CallStarted:
    call_id: str
    at: float
    wall: float  # time.time() at start
    transport: str
    assistant: str
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    call_id: str
    at: float


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    call_id: str
    at: float


@dataclass(frozen=True, slots=True)
class AssistantSpeechStarted:
    """A reply's first audio went to the caller (Vapi's speech-update, role assistant)."""

    call_id: str
    at: float


@dataclass(frozen=True, slots=True)
class AssistantSpeechStopped:
    """That reply is over: played to the end, cut off by the caller, or the call ended."""

    call_id: str
    at: float


@dataclass(frozen=True, slots=True)
class TranscriptReceived:
    call_id: str
    at: float
    text: str
    is_final: bool


@dataclass(frozen=True, slots=True)
class TurnLatency:
    """Where one turn's voice-to-voice time went, in seconds.

    voice_to_voice = end of caller speech → first assistant audio sent to the caller.
    endpointing = end of speech → turn confirmed; stt = end of speech → final transcript;
    llm_ttft = LLM request → first token; tts_ttfb = first phrase to TTS → first audio byte;
    held = audio ready but deliberately not played yet (stopSpeakingPlan.backoffSeconds after a
    barge-in); server = voice_to_voice − endpointing − the provider waits − held (what our own
    code added).
    """

    voice_to_voice: float
    endpointing: float
    stt: float
    llm_ttft: float
    tts_ttfb: float
    server: float
    held: float = 0.0


@dataclass(frozen=True, slots=True)
class MessageAdded:
    """A message joined the conversation (Vapi's `messages` roles: user, bot, system,
    `tool_calls` (with `tool_calls` in OpenAI's shape) and `tool_call_result` (with
    `tool_call_id` and `name`; `content` is the result))."""

    call_id: str
    at: float
    role: str
    content: str
    duration: float = 0.0
    interrupted: bool = False
    tool_calls: tuple[dict[str, Any], ...] = ()
    tool_call_id: str | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class TurnCompleted:
    call_id: str
    at: float
    index: int
    user_text: str
    assistant_text: str  # what the caller heard
    interrupted: bool
    latency: TurnLatency | None  # None when no audio was produced (e.g. interrupted too early)


@dataclass(frozen=True, slots=True)
class BargeIn:
    call_id: str
    at: float
    onset: float  # when the caller's speech began
    heard_text: str


@dataclass(frozen=True, slots=True)
class ProviderFailed:
    """A provider failed. `recovered`: its adapter reconnected on its own (a dropped Deepgram or
    ElevenLabs socket) and the call did not otherwise notice; recorded so the call's record and
    the error counters still explain the gap."""

    call_id: str
    at: float
    stage: str  # "stt" | "llm" | "tts"
    provider: str
    error: str
    retryable: bool
    recovered: bool = False


@dataclass(frozen=True, slots=True)
class ToolCallFailed:
    """A tool call did not produce a result (timeout, HTTP error, unreadable answer, a transfer
    the telephony side refused). The model was told; the call went on."""

    call_id: str
    at: float
    tool_call_id: str
    name: str
    error: str


@dataclass(frozen=True, slots=True)
class CallEnded:
    call_id: str
    at: float
    reason: EndedReason
    detail: str = ""
    summary: dict[str, Any] = field(default_factory=dict)


CallEvent = (
    CallStarted
    | SpeechStarted
    | SpeechStopped
    | AssistantSpeechStarted
    | AssistantSpeechStopped
    | TranscriptReceived
    | TurnCompleted
    | MessageAdded
    | BargeIn
    | ProviderFailed
    | ToolCallFailed
    | CallEnded
)
