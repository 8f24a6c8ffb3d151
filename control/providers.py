"""Cloud provider adapters built from an assistant's Vapi-shaped `transcriber`, `model`, `voice`.

Keys and base URLs come from `Settings` (conventional names: DEEPGRAM_API_KEY, OPENAI_API_KEY,
ELEVENLABS_API_KEY, …); provider choice and options from the assistant. A provider whose key is
not set is a `ConfigError` naming the setting, raised when the call's engines are built, so a
call never starts on a provider it cannot reach. Adapters are per call (each holds its own
client or socket); `CloudAdapters.aclose()` releases them.

Fallbacks use Vapi's shapes: `model.fallbackModels` (each entry's fields override the primary
model's), `voice.fallbackPlan.voices` and `transcriber.fallbackPlan.transcribers` (each entry a
whole voice / transcriber).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import ValidationError

from control.settings import Settings
from storage import ToolStore
from voice.assistant import Assistant, ModelConfig, TranscriberConfig, VoiceConfig
from voice.errors import ConfigError
from voice.ports import LanguageModel, SpeechToText, TextToSpeech
from voice.providers import (
    DeepgramStt,
    ElevenLabsTts,
    ElevenLabsVoiceSettings,
    OpenAiLlm,
    OpenAiTts,
    StageTimeouts,
)
from voice.server_messages import ServerTarget
from voice.tools import ToolSet

__all__ = [
    "CLOUD_MODELS",
    "CLOUD_TRANSCRIBERS",
    "CLOUD_VOICES",
    "CloudAdapters",
    "fallback_models",
    "fallback_transcribers",
    "fallback_voices",
    "openai_tools",
    "resolve_tools",
]

CLOUD_MODELS = frozenset({"openai", "custom-llm", "groq", "together-ai", "deepinfra"})
CLOUD_VOICES = frozenset({"11labs", "openai"})
CLOUD_TRANSCRIBERS = frozenset({"deepgram"})

Closer = Callable[[], Awaitable[None]]
C = TypeVar("C", ModelConfig, VoiceConfig, TranscriberConfig)


def openai_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Vapi tools as OpenAI's `tools`: function tools, plus `endCall` and `transferCall` as
    functions the model can call (other built-in types are not offered)."""
    return [dict(t) for t in ToolSet.from_model(ModelConfig(tools=tools)).schemas]


async def resolve_tools(assistant: Assistant, tenant_id: str | None, store: ToolStore) -> Assistant:
    """The assistant for one call with `model.toolIds` resolved into `model.tools` (the tenant's
    stored tools) and every tool and server config checked, so the session gets a complete,
    usable list. Raises ConfigError naming what is wrong."""
    model = assistant.model
    tools = list(model.tools)
    if model.tool_ids:
        if tenant_id is None:
            raise ConfigError("model.toolIds needs a tenant's stored tools; use model.tools")
        for tool_id in model.tool_ids:
            record = await store.get(tenant_id, tool_id)
            if record is None:
                raise ConfigError(f"model.toolIds: tool {tool_id} does not exist")
            tools.append(dict(record.config))
    resolved = assistant.model_copy(
        update={"model": model.model_copy(update={"tools": tools, "tool_ids": []})}
    )
    ToolSet.from_model(resolved.model)
    try:
        ServerTarget.from_config(resolved.server)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return resolved


def _entries(plan: dict[str, Any] | None, field: str, owner: str) -> list[dict[str, Any]]:
    if not plan:
        return []
    entries = plan.get(field, [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(f"{owner}.fallbackPlan.{field} must be a list of objects")
    return entries


def _validate(kind: type[C], data: dict[str, Any], where: str) -> C:
    try:
        return kind.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{where}: {problems}") from exc


def fallback_models(model: ModelConfig) -> list[ModelConfig]:
    base = model.to_json()
    base.pop("fallbackModels", None)
    return [
        _validate(ModelConfig, {**base, **entry}, f"model.fallbackModels[{i}]")
        for i, entry in enumerate(model.fallback_models)
    ]


def fallback_voices(voice: VoiceConfig) -> list[VoiceConfig]:
    return [
        _validate(VoiceConfig, entry, f"voice.fallbackPlan.voices[{i}]")
        for i, entry in enumerate(_entries(voice.fallback_plan, "voices", "voice"))
    ]


def fallback_transcribers(transcriber: TranscriberConfig) -> list[TranscriberConfig]:
    return [
        _validate(TranscriberConfig, entry, f"transcriber.fallbackPlan.transcribers[{i}]")
        for i, entry in enumerate(
            _entries(transcriber.fallback_plan, "transcribers", "transcriber")
        )
    ]


def _extra(config: ModelConfig | VoiceConfig | TranscriberConfig, name: str) -> Any:
    return (config.model_extra or {}).get(name)


class CloudAdapters:
    """Builds one call's cloud adapters and remembers them so they can be closed together."""

    def __init__(self, settings: Settings, timeouts: StageTimeouts | None = None) -> None:
        self.settings = settings
        self.timeouts = timeouts or StageTimeouts()
        self.closers: list[Closer] = []

    @staticmethod
    def _key(value: str, setting: str, what: str) -> str:
        if not value:
            raise ConfigError(f"{what} needs {setting} (set it in the environment or .env)")
        return value

    def stt(self, config: TranscriberConfig) -> SpeechToText:
        if config.provider != "deepgram":
            raise ConfigError(f"transcriber.provider {config.provider!r} has no cloud adapter")
        key = self._key(
            self.settings.deepgram_api_key.get_secret_value(),
            "DEEPGRAM_API_KEY",
            "transcriber.provider 'deepgram'",
        )
        return DeepgramStt(
            key,
            base_url=self.settings.deepgram_base_url,
            model=config.model,
            language=config.language,
            endpointing_ms=config.endpointing,
            connect_timeout=self.timeouts.stt_connect,
        )

    def llm(self, config: ModelConfig) -> LanguageModel:
        if config.provider not in CLOUD_MODELS:
            raise ConfigError(f"model.provider {config.provider!r} has no cloud adapter")
        key = self.settings.openai_api_key.get_secret_value()
        if config.provider == "custom-llm":
            if not config.url:
                raise ConfigError("model.url is required for model.provider 'custom-llm'")
            base_url: str | None = config.url
            key = key or "not-needed"  # self-hosted servers usually take any key
        else:
            base_url = self.settings.openai_base_url
            self._key(key, "OPENAI_API_KEY", f"model.provider {config.provider!r}")
        llm = OpenAiLlm(
            key,
            base_url=base_url,
            model=config.model,
            temperature=config.temperature,
            max_tokens=config.max_tokens,
            tools=openai_tools(config.tools),
            first_token_timeout=self.timeouts.llm_first_token,
        )
        self.closers.append(llm.aclose)
        return llm

    def tts(self, config: VoiceConfig) -> TextToSpeech:
        if config.provider == "11labs":
            key = self._key(
                self.settings.elevenlabs_api_key.get_secret_value(),
                "ELEVENLABS_API_KEY",
                "voice.provider '11labs'",
            )
            settings = ElevenLabsVoiceSettings(
                stability=float(_extra(config, "stability") or 0.5),
                similarity_boost=float(_extra(config, "similarityBoost") or 0.75),
                style=float(_extra(config, "style") or 0.0),
                speed=config.speed,
            )
            eleven = ElevenLabsTts(
                key,
                config.voice_id,
                base_url=self.settings.elevenlabs_base_url,
                model_id=str(_extra(config, "model") or "eleven_flash_v2_5"),
                voice_settings=settings,
                first_byte_timeout=self.timeouts.tts_first_byte,
            )
            self.closers.append(eleven.aclose)
            return eleven
        if config.provider == "openai":
            key = self._key(
                self.settings.openai_api_key.get_secret_value(),
                "OPENAI_API_KEY",
                "voice.provider 'openai'",
            )
            openai_tts = OpenAiTts(
                key,
                base_url=self.settings.openai_base_url,
                model=str(_extra(config, "model") or "gpt-4o-mini-tts"),
                voice=config.voice_id,
                speed=config.speed,
                first_byte_timeout=self.timeouts.tts_first_byte,
            )
            self.closers.append(openai_tts.aclose)
            return openai_tts
        raise ConfigError(f"voice.provider {config.provider!r} has no cloud adapter")

    async def aclose(self) -> None:
        closers, self.closers = self.closers, []
        for close in closers:
            await close()
