"""Vapi-shaped assistant configuration, validated.

The JSON a tenant sends (or the file `ava serve --assistant` reads) uses Vapi's camelCase names and
defaults, so configs move over from Vapi unchanged. Fields AVA does not act on yet are kept (extra
fields are allowed and round-trip) rather than rejected. Where AVA's default differs from Vapi's it
is to cut latency, and the field says so.

Everything here may come from a tenant, so everything is bounded (issue 9): JSON depth and
string length for the whole document (`voice.json_bounds`), Vapi's own maximum sizes where Vapi
states them and AVA's where it does not (each field's comment says which), and every URL AVA
would later follow must be http(s) (the address it resolves to is checked when connecting:
`voice.egress`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from voice.egress import check_url_scheme
from voice.errors import ConfigError
from voice.json_bounds import MAX_DEPTH, JsonBounds, check_json

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
    "check_server",
    "check_tool",
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


# AVA's bounds where Vapi states none (Vapi's own are noted at the fields that use them).
MAX_MESSAGE_CHARS = 1000  # firstMessage: Vapi's limit for endCallMessage and voicemailMessage
MAX_PROMPT_CHARS = 100_000  # all of model.messages' content: ~25k tokens, past any sane prompt
MAX_MESSAGES = 256  # model.messages entries
MAX_TOOLS = 128  # model.tools + model.toolIds: OpenAI's limit on tools per request
MAX_TOOL_CHARS = 32 * 1024  # one tool, as JSON: name, description, parameters schema, server
MAX_PHRASES = 32  # endCallPhrases entries
MAX_PHRASE_CHARS = 140  # one end-call phrase: Vapi's limit
MAX_METADATA_CHARS = 16 * 1024  # metadata as JSON: it rides along in every webhook
MAX_FALLBACK_MODELS = 8
SERVER_TIMEOUT_RANGE = (1.0, 300.0)  # server.timeoutSeconds: Vapi's range (default 20)
# A stored tool goes into an assistant's model.tools (assistant > model > tools > tool): three
# levels less than a whole document may have, so it fits there too.
_TOOL_BOUNDS = JsonBounds(max_depth=MAX_DEPTH - 3)


def _json_chars(value: Any) -> int:
    # Only called on values the model-level depth check has already bounded.
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str))


def _at(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def check_server(server: Any, where: str = "server") -> None:
    """Vapi's `server` object `{url, timeoutSeconds, headers, secret}` as AVA uses it: raises
    ValueError naming the field for a URL that is not http(s), a timeout outside 1–300 s (null
    means the default, 20 s), or headers that are not an object."""
    if server is None:
        return
    if not isinstance(server, Mapping):
        raise ValueError(f"{where} must be an object")
    url = server.get("url")
    if url is not None:
        if not isinstance(url, str):
            raise ValueError(f"{where}.url must be a string")
        if url:
            check_url_scheme(url, f"{where}.url")
    timeout = server.get("timeoutSeconds")
    if timeout is not None:
        low, high = SERVER_TIMEOUT_RANGE
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not math.isfinite(timeout)
            or not low <= timeout <= high
        ):
            raise ValueError(
                f"{where}.timeoutSeconds must be a number of seconds, {low:g}–{high:g}"
            )
    headers = server.get("headers")
    if headers is not None and not isinstance(headers, Mapping):
        raise ValueError(f"{where}.headers must be an object")
    secret = server.get("secret")
    if secret is not None and not isinstance(secret, str):
        raise ValueError(f"{where}.secret must be a string")


def check_tool(tool: Any, where: str = "") -> None:
    """A Vapi tool (inline in `model.tools` or stored through `/tool`, where `where` is "")
    bounded in size, and its `server` (and its transfer destinations' servers) usable. Raises
    ValueError naming the field."""
    if not isinstance(tool, Mapping):
        raise ValueError(f"{where or 'tool'} must be an object")
    check_json(tool, _TOOL_BOUNDS, at=(where,) if where else ())
    if _json_chars(tool) > MAX_TOOL_CHARS:
        raise ValueError(f"{where or 'tool'} is over {MAX_TOOL_CHARS} characters as JSON")
    check_server(tool.get("server"), _at(where, "server"))
    destinations = tool.get("destinations")
    if isinstance(destinations, list):
        for i, destination in enumerate(destinations):
            if isinstance(destination, Mapping):
                check_server(destination.get("server"), _at(where, f"destinations[{i}].server"))


class _Vapi(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="allow", validate_assignment=True
    )

    @model_validator(mode="before")
    @classmethod
    def _bounded(cls, data: Any) -> Any:
        """Depth and string length first: later checks (and pydantic itself) walk the values
        recursively. Extra fields, kept as they are, are covered too."""
        if isinstance(data, Mapping):
            check_json(data)
        return data

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
    fallback_models: list[dict[str, Any]] = Field(
        default_factory=list, max_length=MAX_FALLBACK_MODELS
    )
    url: str | None = None  # custom-llm
    # offline responder (provider "local"): AVA's extension
    rules: list[KeywordRule] = Field(default_factory=list)
    fallback_reply: str = (
        "Sorry, I can only help with a few things. Could you say that another way?"
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None:
            check_url_scheme(url, "url")
        return url

    @field_validator("messages")
    @classmethod
    def _bounded_prompt(cls, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if len(messages) > MAX_MESSAGES:
            raise ValueError(f"at most {MAX_MESSAGES} messages")
        total = sum(_json_chars(m.get("content", "")) for m in messages)
        if total > MAX_PROMPT_CHARS:
            raise ValueError(f"content over {MAX_PROMPT_CHARS} characters in all")
        return messages

    @field_validator("tools")
    @classmethod
    def _bounded_tools(cls, tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if len(tools) > MAX_TOOLS:
            raise ValueError(f"at most {MAX_TOOLS} tools")
        for i, tool in enumerate(tools):
            check_tool(tool, f"tools[{i}]")
        return tools

    @model_validator(mode="after")
    def _bounded_tool_count(self) -> ModelConfig:
        if len(self.tools) + len(self.tool_ids) > MAX_TOOLS:
            raise ValueError(f"tools and toolIds: at most {MAX_TOOLS} in all")
        return self

    @field_validator("fallback_models")
    @classmethod
    def _fallback_urls(cls, models: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, model in enumerate(models):
            url = model.get("url")
            if url is not None:
                if not isinstance(url, str):
                    raise ValueError(f"fallbackModels[{i}].url must be a string")
                check_url_scheme(url, f"fallbackModels[{i}].url")
        return models

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
    name: str = Field(default="Assistant", max_length=40)  # Vapi's limit
    # Vapi states no limit; AVA takes Vapi's endCallMessage one: it is synthesized per call.
    first_message: str | None = Field(default=None, max_length=MAX_MESSAGE_CHARS)
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
    end_call_message: str | None = Field(default=None, max_length=MAX_MESSAGE_CHARS)  # Vapi's
    voicemail_message: str | None = Field(default=None, max_length=MAX_MESSAGE_CHARS)  # Vapi's
    end_call_phrases: list[Annotated[str, Field(max_length=MAX_PHRASE_CHARS)]] = Field(
        default_factory=list, max_length=MAX_PHRASES
    )
    server: dict[str, Any] | None = Field(
        default=None, validation_alias=AliasChoices("server", "serverUrl")
    )
    server_messages: list[str] = Field(default_factory=lambda: list(DEFAULT_SERVER_MESSAGES))
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("server")
    @classmethod
    def _usable_server(cls, server: dict[str, Any] | None) -> dict[str, Any] | None:
        check_server(server)
        return server

    @field_validator("metadata")
    @classmethod
    def _bounded_metadata(cls, metadata: dict[str, Any]) -> dict[str, Any]:
        if _json_chars(metadata) > MAX_METADATA_CHARS:
            raise ValueError(f"over {MAX_METADATA_CHARS} characters as JSON")
        return metadata

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
