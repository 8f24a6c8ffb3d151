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

Text the caller hears or the model reads may hold Vapi's `{{variable}}` templates
(`voice.variables`): a template that does not parse makes the assistant invalid, naming the
field; `personalize` renders them once per call, and `with_overrides` applies Vapi's
`assistantOverrides`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from voice.analysis_plan import AnalysisPlan
from voice.artifact_plan import ArtifactPlan
from voice.egress import check_url_scheme
from voice.errors import ConfigError
from voice.json_bounds import MAX_DEPTH, JsonBounds, check_json
from voice.notification_plan import NotificationPlan
from voice.ports import TransferDestination
from voice.variables import (
    TemplateError,
    builtin_variables,
    check_template,
    check_tool_templates,
    merge_overrides,
    render_templates,
)
from voice.voicemail import VoicemailDetection

__all__ = [
    "DEFAULT_SERVER_MESSAGES",
    "Assistant",
    "Hook",
    "HookAction",
    "HookFilter",
    "HookOptions",
    "KeypadInputPlan",
    "KeywordRule",
    "ModelConfig",
    "Personalized",
    "StartSpeakingPlan",
    "StopSpeakingPlan",
    "TranscriberConfig",
    "TranscriptionEndpointingPlan",
    "VoiceConfig",
    "check_server",
    "check_tool",
    "load_assistant",
    "personalize",
    "with_overrides",
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
MAX_VARIABLE_CHARS = 16 * 1024  # variableValues as JSON: the call's record keeps them
# Validation context of an assistant whose templates are already rendered: what variables put
# into its text is the caller's data (a name may hold "{{"), never parsed again.
RENDERED = "rendered"
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


def _rendered(info: ValidationInfo | None) -> bool:
    return bool(
        info is not None and isinstance(info.context, Mapping) and info.context.get(RENDERED)
    )


def check_tool(tool: Any, where: str = "", *, templates: bool = True) -> None:
    """A Vapi tool (inline in `model.tools` or stored through `/tool`, where `where` is "")
    bounded in size, its `server` (and its transfer destinations' servers) usable, and its
    templates (`voice.variables`) parsable unless `templates` is False. Raises ValueError
    naming the field."""
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
    if templates:
        check_tool_templates(tool, where)


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
    def _bounded_prompt(
        cls, messages: list[dict[str, Any]], info: ValidationInfo
    ) -> list[dict[str, Any]]:
        if len(messages) > MAX_MESSAGES:
            raise ValueError(f"at most {MAX_MESSAGES} messages")
        total = sum(_json_chars(m.get("content", "")) for m in messages)
        if total > MAX_PROMPT_CHARS:
            raise ValueError(f"content over {MAX_PROMPT_CHARS} characters in all")
        if not _rendered(info):
            for i, message in enumerate(messages):
                check_template(message.get("content"), f"messages[{i}].content")
        return messages

    @field_validator("tools")
    @classmethod
    def _bounded_tools(
        cls, tools: list[dict[str, Any]], info: ValidationInfo
    ) -> list[dict[str, Any]]:
        if len(tools) > MAX_TOOLS:
            raise ValueError(f"at most {MAX_TOOLS} tools")
        for i, tool in enumerate(tools):
            check_tool(tool, f"tools[{i}]", templates=not _rendered(info))
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


DTMF_DIGITS = frozenset("0123456789*#ABCD")
MAX_DELIMITERS = 4  # AVA's: Vapi lists `#`, `*` and "" (none)


class KeypadInputPlan(_Vapi):
    """Vapi's `keypadInputPlan`: the caller's keypad digits, gathered, are their turn."""

    enabled: bool = False
    timeout_seconds: float = Field(default=2.0, ge=0, le=10)  # Vapi's default and range
    # Vapi's "" means no delimiter: it is kept out, so every entry is one DTMF key.
    delimiters: list[str] = Field(default_factory=list, max_length=MAX_DELIMITERS)

    @field_validator("delimiters")
    @classmethod
    def _dtmf_keys(cls, delimiters: list[str]) -> list[str]:
        keys = [d for d in delimiters if d != ""]
        for key in keys:
            if len(key) != 1 or key not in DTMF_DIGITS:
                raise ValueError(f"delimiter {key!r} is not a keypad key (0-9, *, #, A-D)")
        return keys


MAX_HOOKS = 8  # AVA's
MAX_HOOK_ACTIONS = 4  # AVA's
MAX_IDLE_MESSAGES = 16  # AVA's: `exact` entries of one `say`


class HookOptions(_Vapi):
    timeout_seconds: float = Field(default=7.5, ge=1, le=3600)  # Vapi's default
    trigger_max_count: int = Field(default=3, ge=1, le=100)  # Vapi's default
    trigger_reset_mode: Literal["never", "onUserSpeech"] = "never"  # Vapi's default


class HookAction(_Vapi):
    """What a hook does, of Vapi's actions the ones AVA runs: `say` exact words (one of them,
    in turn), a tool: `endCall` (after the words have been heard) for an idle hook, a
    `function` tool (its server called once) for `call.ending`, and for `call.ending` a
    `transfer` to a phone number (`destination`, as a `transferCall` tool's destinations)."""

    type: Literal["say", "tool", "transfer"]
    exact: list[Annotated[str, Field(min_length=1, max_length=MAX_MESSAGE_CHARS)]] | None = Field(
        default=None, min_length=1, max_length=MAX_IDLE_MESSAGES
    )
    tool: dict[str, Any] | None = None
    destination: dict[str, Any] | None = None

    @field_validator("exact", mode="before")
    @classmethod
    def _one_or_many(cls, exact: Any) -> Any:
        return [exact] if isinstance(exact, str) else exact  # Vapi takes a string or a list

    @field_validator("exact")
    @classmethod
    def _parsable(cls, exact: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if exact and not _rendered(info):
            for k, text in enumerate(exact):
                try:
                    check_template(text, f"exact[{k}]")
                except TemplateError as exc:
                    raise ValueError(str(exc)) from exc
        return exact

    @model_validator(mode="after")
    def _supported(self) -> HookAction:
        extra = self.model_extra or {}
        if self.type == "say":
            if "prompt" in extra:
                raise ValueError("say.prompt is not supported: give the words in say.exact")
            if not self.exact:
                raise ValueError("say needs exact: the words to say")
        elif self.type == "transfer":
            _check_hook_destination(self.destination)
        elif self.tool is None or self.tool.get("type") not in ("endCall", "function"):
            raise ValueError(
                "of the tools, a hook can only run {'type': 'endCall'} (customer.speech.timeout) "
                "or a function tool (call.ending)"
            )
        elif self.tool.get("type") == "function":
            function = self.tool.get("function")
            if not isinstance(function, Mapping) or not function.get("name"):
                raise ValueError("a function tool needs function.name")
            check_tool(self.tool, "tool", templates=False)
        return self


def _check_hook_destination(destination: dict[str, Any] | None) -> None:
    """A hook's `transfer.destination`: a number, checked as `transferCall`'s destinations are;
    the transfers AVA cannot make (SIP, another assistant, a warm transfer) are refused."""
    if destination is None:
        raise ValueError("transfer needs destination: {'type': 'number', 'number': '+1…'}")
    kind = destination.get("type", "number")
    if kind != "number":
        raise ValueError(
            f"transfer.destination type {kind!r} is not supported: AVA transfers a call to a "
            "phone number only ({'type': 'number', 'number': '+1…'})"
        )
    plan = destination.get("transferPlan") or {}
    mode = plan.get("mode", "blind-transfer") if isinstance(plan, Mapping) else plan
    if mode != "blind-transfer":
        raise ValueError(
            f"transfer.destination.transferPlan.mode {mode!r} is not supported: a call.ending "
            "transfer is blind"
        )
    try:
        TransferDestination.from_vapi(destination, "destination")
    except ConfigError as exc:
        raise ValueError(str(exc)) from exc


MAX_HOOK_FILTERS = 4  # AVA's
MAX_FILTER_VALUES = 64  # AVA's


class HookFilter(_Vapi):
    """Vapi's hook filter; of its keys AVA has `call.endedReason` (on `call.ending`)."""

    type: Literal["oneOf"]
    key: Literal["call.endedReason"]
    one_of: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        min_length=1, max_length=MAX_FILTER_VALUES
    )

    def matches(self, ended_reason: str) -> bool:
        # Vapi: "pipeline-error" is a catch-all for every pipeline-error-* reason.
        return any(
            ended_reason == value
            or (value == "pipeline-error" and ended_reason.startswith("pipeline-error-"))
            for value in self.one_of
        )


class Hook(_Vapi):
    """Vapi's `hooks` entry. AVA runs `customer.speech.timeout` (idle messages) and
    `call.ending` (say a last line, call a tool, transfer the call; `filters` on the ended
    reason); other events are refused rather than silently never fired."""

    on: Literal["customer.speech.timeout", "call.ending"]
    options: HookOptions = Field(default_factory=HookOptions)
    do: list[HookAction] = Field(min_length=1, max_length=MAX_HOOK_ACTIONS)
    filters: list[HookFilter] = Field(default_factory=list, max_length=MAX_HOOK_FILTERS)

    @model_validator(mode="after")
    def _fits_event(self) -> Hook:
        kinds = {action.tool.get("type") for action in self.do if action.tool is not None}
        transfers = sum(action.type == "transfer" for action in self.do)
        if self.on == "customer.speech.timeout":
            if transfers:
                raise ValueError("only a call.ending hook can transfer the call")
            if kinds - {"endCall"}:
                raise ValueError("a customer.speech.timeout hook can only run the endCall tool")
            if self.filters:
                raise ValueError("filters apply to call.ending hooks only")
        elif kinds - {"function"}:
            raise ValueError("a call.ending hook runs function tools only: the call is ending")
        elif transfers > 1:
            raise ValueError("a call.ending hook transfers the call to one destination")
        return self

    def matches(self, ended_reason: str) -> bool:
        """Every filter matches (no filter: every reason)."""
        return all(f.matches(ended_reason) for f in self.filters)


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
    # Vapi's; "off" (its default) reads as None. AVA runs the twilio provider (voice/voicemail.py).
    voicemail_detection: VoicemailDetection | None = None
    end_call_phrases: list[Annotated[str, Field(max_length=MAX_PHRASE_CHARS)]] = Field(
        default_factory=list, max_length=MAX_PHRASES
    )
    server: dict[str, Any] | None = Field(
        default=None, validation_alias=AliasChoices("server", "serverUrl")
    )
    server_messages: list[str] = Field(default_factory=lambda: list(DEFAULT_SERVER_MESSAGES))
    metadata: dict[str, Any] = Field(default_factory=dict)
    keypad_input_plan: KeypadInputPlan = Field(default_factory=KeypadInputPlan)
    artifact_plan: ArtifactPlan = Field(default_factory=ArtifactPlan)  # voice.artifact_plan
    hooks: list[Hook] = Field(default_factory=list, max_length=MAX_HOOKS)
    # What is worked out from the call once it ends (voice.analysis_plan, control.post_call).
    analysis_plan: AnalysisPlan = Field(default_factory=AnalysisPlan)
    # AVA extension: who is told about the call once it ends (voice.notification_plan,
    # control.email_summaries); a phone number's plan is merged over it.
    notification_plan: NotificationPlan = Field(default_factory=NotificationPlan)
    # Vapi's `assistantOverrides.variableValues`, kept on the effective assistant of a call (its
    # overrides merged in) until the call renders its templates; on a stored assistant, defaults.
    variable_values: dict[str, Any] | None = None
    # Set by `personalize` when the greeting was rendered for this call: it is not kept in the
    # greeting cache (shared by all calls), where per-customer lines would evict the others.
    _personal_greeting: bool = PrivateAttr(default=False)

    @property
    def personal_greeting(self) -> bool:
        return self._personal_greeting

    @field_validator("voicemail_detection", mode="before")
    @classmethod
    def _detection_off(cls, value: Any) -> Any:
        return None if value == "off" else value

    @field_validator("first_message", "end_call_message", "voicemail_message")
    @classmethod
    def _parsable(cls, text: str | None, info: ValidationInfo) -> str | None:
        if not _rendered(info):
            try:
                check_template(text, "")
            except TemplateError as exc:
                raise ValueError(exc.reason) from exc
        return text

    @field_validator("variable_values")
    @classmethod
    def _bounded_values(cls, values: dict[str, Any] | None) -> dict[str, Any] | None:
        if values is not None and _json_chars(values) > MAX_VARIABLE_CHARS:
            raise ValueError(f"over {MAX_VARIABLE_CHARS} characters as JSON")
        return values

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


def with_overrides(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> Assistant:
    """The effective assistant: Vapi's `assistantOverrides` deep-merged onto `base` (an
    assistant's JSON) and validated like any assistant. Raises ValidationError (its locations
    are the effective assistant's fields) or ValueError for a malformed `tools:append`."""
    return Assistant.model_validate(merge_overrides(base, overrides))


@dataclass(frozen=True, slots=True)
class Personalized:
    """A call's assistant with its templates rendered, the variables they were rendered with,
    those they named that the call did not have, and how many templates it had."""

    assistant: Assistant
    variables: dict[str, Any]
    unknown: tuple[str, ...]
    templates: int = 0


def personalize(
    assistant: Assistant,
    *,
    now: datetime,
    customer: Mapping[str, Any] | None = None,
    timezone: str | None = None,
) -> Personalized:
    """Render `assistant`'s templates once for a call at `now`: Vapi's built-in variables
    (`voice.variables.builtin_variables`) and the assistant's `variableValues` (which win; a
    `customer` object in them adds to the built-in one). Raises ConfigError naming the field
    when a template cannot be rendered or its output breaks a bound of the assistant."""
    given = dict(assistant.variable_values or {})
    try:
        variables = builtin_variables(now, customer=customer, timezone=timezone)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    extra_customer = given.pop("customer", None)
    if isinstance(extra_customer, Mapping):
        variables["customer"] = {**variables["customer"], **extra_customer}
    elif extra_customer is not None:
        given["customer"] = extra_customer
    variables |= given
    try:
        rendered = render_templates(assistant.to_json(), variables, now)
    except TemplateError as exc:
        raise ConfigError(str(exc)) from exc
    if not rendered.templates:
        return Personalized(assistant, variables, (), 0)  # nothing changed: as validated
    try:
        result = Assistant.model_validate(rendered.data, context={RENDERED: True})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{where}: after rendering its variables: {first['msg']}") from exc
    result._personal_greeting = result.first_message != assistant.first_message
    return Personalized(result, variables, rendered.unknown, rendered.templates)


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
