"""Vapi-shaped assistant configuration, validated.

The JSON a tenant sends (or the file `ava serve --assistant` reads) uses Vapi's camelCase names and
defaults, so configs move over from Vapi unchanged. Fields AVA does not act on yet are kept (extra
fields are allowed and round-trip) rather than rejected. Where AVA's default differs from Vapi's it
is to cut latency, and the field says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from voice.errors import ConfigError

__all__ = [
    "DEFAULT_SERVER_MESSAGES",
    "Assistant",
    "KeywordRule",
    "ModelConfig",
    "StartSpeakingPlan",
    "StopSpeakingPlan",
    "TranscriberConfig",
    "TranscriptionEndpointingPlan",
    "VoiceConfig",
    "load_assistant",
]

DEFAULT_ACKNOWLEDGEMENTS = [
    "i understand", "i see", "i got it", "i hear you", "im listening", "im with you", "right",
    "okay", "ok", "sure", "alright", "got it", "understood", "yeah", "yes", "uh-huh", "mm-hmm",
    "gotcha", "mhmm", "ah", "yeah okay", "yeah sure",
]  # fmt: skip
DEFAULT_INTERRUPTIONS = [
    "stop", "shut", "up", "enough", "quiet", "silence", "but", "dont", "not", "no", "hold", "wait",
    "cut", "pause", "nope", "nah", "nevermind", "never", "bad", "actually",
]  # fmt: skip
# Vapi's default `serverMessages`: the webhooks sent unless the assistant lists its own.
DEFAULT_SERVER_MESSAGES = [
    "conversation-update", "end-of-call-report", "function-call", "hang", "speech-update",
    "status-update", "tool-calls", "transfer-destination-request",
    "handoff-destination-request", "user-interrupted", "assistant.started",
]  # fmt: skip


class _Vapi(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="allow", validate_assignment=True
    )

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class KeywordRule(_Vapi):
    """A rule of the offline responder: if any keyword occurs in the caller's words, say `reply`."""

    keywords: list[str] = Field(min_length=1)
    reply: str = Field(min_length=1)
    end_call: bool = False


class ModelConfig(_Vapi):
    provider: Literal["local", "openai", "custom-llm", "groq", "together-ai", "deepinfra"] = "local"
    model: str = "ava-local-responder"
    messages: list[dict[str, Any]] = Field(default_factory=list)
    tools: list[dict[str, Any]] = Field(default_factory=list)
    tool_ids: list[str] = Field(default_factory=list)
    temperature: float = Field(default=0.5, ge=0, le=2)
    max_tokens: int = Field(default=250, ge=1, le=10_000)
    fallback_models: list[dict[str, Any]] = Field(default_factory=list)
    url: str | None = None  # custom-llm
    # offline responder (provider "local"): AVA's extension
    rules: list[KeywordRule] = Field(default_factory=list)
    fallback_reply: str = (
        "Sorry, I can only help with a few things. Could you say that another way?"
    )

    @property
    def system_prompt(self) -> str:
        return "\n".join(
            str(m.get("content", "")) for m in self.messages if m.get("role") == "system"
        )


class VoiceConfig(_Vapi):
    provider: Literal["piper", "11labs", "openai"] = "piper"
    voice_id: str = "en_US-joe-medium"
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    caching_enabled: bool = True
    fallback_plan: dict[str, Any] | None = None


class TranscriberConfig(_Vapi):
    provider: Literal["faster-whisper", "deepgram", "openai"] = "faster-whisper"
    model: str = "base"
    language: str = "en"
    endpointing: int = Field(default=10, ge=10, le=500)  # ms; Deepgram's own endpointing
    confidence_threshold: float = Field(default=0.4, ge=0, le=1)
    fallback_plan: dict[str, Any] | None = None


class TranscriptionEndpointingPlan(_Vapi):
    on_punctuation_seconds: float = Field(default=0.1, ge=0, le=3)
    # Vapi: 1.5 s, its users' largest latency complaint. AVA: 0.8 s, and only when neither the
    # turn model nor the STT has called the end of turn.
    on_no_punctuation_seconds: float = Field(default=0.8, ge=0, le=3)
    on_number_seconds: float = Field(default=0.5, ge=0, le=3)


class StartSpeakingPlan(_Vapi):
    # Vapi: 0.4 s added after the reply is ready. AVA: 0 (the turn model already waited).
    wait_seconds: float = Field(default=0.0, ge=0, le=5)
    smart_endpointing_plan: dict[str, Any] | None = None
    transcription_endpointing_plan: TranscriptionEndpointingPlan = Field(
        default_factory=TranscriptionEndpointingPlan
    )
    # AVA extensions. VAD silence that opens the end-of-turn decision (pipecat's stop_secs: 0.2).
    vad_silence_seconds: float = Field(default=0.2, ge=0.06, le=2)
    # smart-turn probability at which the turn counts as complete.
    smart_turn_threshold: float = Field(default=0.5, ge=0, le=1)
    # start the LLM on the stable transcript while the turn decision is pending
    speculative: bool = True


class StopSpeakingPlan(_Vapi):
    num_words: int = Field(default=0, ge=0, le=10)
    voice_seconds: float = Field(default=0.2, ge=0, le=0.5)
    backoff_seconds: float = Field(default=1.0, ge=0, le=10)
    acknowledgement_phrases: list[str] = Field(
        default_factory=lambda: list(DEFAULT_ACKNOWLEDGEMENTS)
    )
    interruption_phrases: list[str] = Field(default_factory=lambda: list(DEFAULT_INTERRUPTIONS))


class Assistant(_Vapi):
    name: str = Field(default="Assistant", max_length=40)
    first_message: str | None = None
    first_message_mode: Literal[
        "assistant-speaks-first",
        "assistant-speaks-first-with-model-generated-message",
        "assistant-waits-for-user",
    ] = "assistant-speaks-first"
    first_message_interruptions_enabled: bool = False
    model: ModelConfig = Field(default_factory=ModelConfig)
    voice: VoiceConfig = Field(default_factory=VoiceConfig)
    transcriber: TranscriberConfig = Field(default_factory=TranscriberConfig)
    start_speaking_plan: StartSpeakingPlan = Field(default_factory=StartSpeakingPlan)
    stop_speaking_plan: StopSpeakingPlan = Field(default_factory=StopSpeakingPlan)
    silence_timeout_seconds: float = Field(default=30, ge=5, le=3600)
    max_duration_seconds: float = Field(default=600, ge=10, le=43_200)
    end_call_message: str | None = None
    end_call_phrases: list[str] = Field(default_factory=list)
    server: dict[str, Any] | None = Field(
        default=None, validation_alias=AliasChoices("server", "serverUrl")
    )
    server_messages: list[str] = Field(default_factory=lambda: list(DEFAULT_SERVER_MESSAGES))
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _legacy_server_url(cls, data: Any) -> Any:
        """Vapi's pre-2025 `serverUrl` + `serverUrlSecret` (still in many tutorials) become
        `server: {url, secret}`; a `server` object given alongside wins."""
        if not isinstance(data, dict) or not isinstance(data.get("serverUrl"), str):
            return data
        data = dict(data)
        server = {"url": data.pop("serverUrl")}
        secret = data.pop("serverUrlSecret", None)
        if isinstance(secret, str):
            server["secret"] = secret
        data.setdefault("server", server)
        return data


def load_assistant(path: Path) -> Assistant:
    """Read and validate an assistant JSON file; errors name the field and the reason."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read assistant file {path}: {exc}") from exc
    try:
        return Assistant.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid assistant in {path}: {problems}") from exc
