"""Plain data that crosses the boundaries of the call loop.

Audio inside a call is in the call's format (`media.audio_format.AudioFormat`), declared by its
transport: G.711 μ-law at 8 kHz mono on the phone (what Twilio sends and what Deepgram and
ElevenLabs speak natively, so the cloud path never transcodes), 16 kHz PCM16 in a browser. PCM
is always int16 little-endian. `SAMPLE_RATE` and `FRAME_BYTES` are the telephone format's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

__all__ = [
    "SAMPLE_RATE",
    "FRAME_BYTES",
    "FRAME_SECONDS",
    "ChatMessage",
    "EndedReason",
    "LlmDelta",
    "ToolCall",
    "Transcript",
    "TtsChunk",
    "WordTiming",
]

SAMPLE_RATE = 8000  # the telephone format's (`media.transport.TELEPHONE`)
FRAME_SECONDS = 0.02
FRAME_BYTES = 160  # one 20 ms μ-law 8 kHz frame


class EndedReason(StrEnum):
    """Vapi's `endedReason` values that this server produces."""

    CUSTOMER_ENDED_CALL = "customer-ended-call"
    ASSISTANT_ENDED_CALL = "assistant-ended-call"
    ASSISTANT_FORWARDED_CALL = "assistant-forwarded-call"
    # a `call.ending` hook transferred the call instead of hanging up (voice.ending_hooks)
    CALL_ENDING_HOOK_EXECUTED_TRANSFER = "call.ending.hook-executed-transfer"
    ASSISTANT_SAID_END_CALL_PHRASE = "assistant-said-end-call-phrase"
    MANUALLY_CANCELED = "manually-canceled"  # ended through the control API
    VOICEMAIL = "voicemail"  # an answering machine took the call (voicemailDetection)
    SILENCE_TIMED_OUT = "silence-timed-out"
    EXCEEDED_MAX_DURATION = "exceeded-max-duration"
    PIPELINE_ERROR_STT = "pipeline-error-transcriber-failed"
    PIPELINE_ERROR_LLM = "pipeline-error-model-failed"
    PIPELINE_ERROR_TTS = "pipeline-error-voice-failed"
    MALFORMED_STREAM = "call.in-progress.error-malformed-media-stream"
    SERVER_SHUTDOWN = "call.in-progress.error-server-shutdown"
    SERVER_ERROR = "call.in-progress.error-server"
    # an inbound call's `assistant-request` webhook (control/assistant_request.py)
    ASSISTANT_REQUEST_FAILED = "assistant-request-failed"
    ASSISTANT_REQUEST_RETURNED_ERROR = "assistant-request-returned-error"
    ASSISTANT_REQUEST_RETURNED_UNSPEAKABLE_ERROR = "assistant-request-returned-unspeakable-error"
    ASSISTANT_REQUEST_RETURNED_INVALID_ASSISTANT = "assistant-request-returned-invalid-assistant"
    ASSISTANT_REQUEST_RETURNED_NO_ASSISTANT = "assistant-request-returned-no-assistant"
    ASSISTANT_REQUEST_RETURNED_FORWARDING = "assistant-request-returned-forwarding-phone-number"


@dataclass(frozen=True, slots=True)
class Transcript:
    """One STT result. `is_final`: this span's text won't change. `speech_final`: the STT's own
    endpoint (caller stopped talking)."""

    text: str
    is_final: bool
    speech_final: bool = False
    confidence: float = 1.0
    start: float = 0.0  # seconds since the STT stream started
    end: float = 0.0


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as the model produced it


@dataclass(frozen=True, slots=True)
class LlmDelta:
    """A piece of a streamed model reply: text, completed tool calls, or final usage.

    `cached_prompt_tokens` is the part of `prompt_tokens` the provider served from its prompt
    cache (billed at the cached price); None when the provider did not say."""

    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_prompt_tokens: int | None = None


@dataclass(slots=True)
class ChatMessage:
    role: Literal["system", "user", "assistant", "tool"]
    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None
    interrupted: bool = False  # assistant message cut off by the caller (content = what was heard)

    def to_openai(self) -> dict[str, Any]:
        # An assistant turn that only calls tools has `content: null`, as the API sends it.
        content = None if self.tool_calls and not self.content else self.content
        message: dict[str, Any] = {"role": self.role, "content": content}
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in self.tool_calls
            ]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message


@dataclass(frozen=True, slots=True)
class WordTiming:
    word: str
    start: float  # seconds from the start of the audio of the whole `synthesize()` call
    end: float


@dataclass(frozen=True, slots=True)
class TtsChunk:
    """Synthesized audio in the engine's format, with word timings when it provides them."""

    audio: bytes
    words: tuple[WordTiming, ...] = ()
