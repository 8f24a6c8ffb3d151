"""Cloud provider adapters built from an assistant's Vapi-shaped `transcriber`, `model`, `voice`.

Keys and base URLs come from `Settings` (conventional names: DEEPGRAM_API_KEY, OPENAI_API_KEY,
ELEVENLABS_API_KEY, …); provider choice and options from the assistant. A provider whose key is
not set is a `ConfigError` naming the setting, raised when the call's engines are built, so a
call never starts on a provider it cannot reach. Adapters are per call; `CloudAdapters.aclose()`
releases them. The HTTP adapters (OpenAI LLM and TTS) share one `HttpPool` per process when
given one: building an HTTP client per call costs ~16 ms of CPU before the greeting leaves,
and a shared pool also keeps connections warm across calls.

Fallbacks use Vapi's shapes: `model.fallbackModels` (each entry's fields override the primary
model's), `voice.fallbackPlan.voices` and `transcriber.fallbackPlan.transcribers` (each entry a
whole voice / transcriber).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
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
    "HttpPool",
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

log = logging.getLogger("ava.providers")


class HttpPool:
    """One `httpx.AsyncClient` for every call's HTTP adapters, built on first use.

    A client's connections belong to the event loop that opened them, so the client is bound to
    the loop it was built on; used from another loop (a test's, or after a restart in-process) a
    new one is built. `aclose()` (at app shutdown) closes it; a later use builds a fresh one.
    """

    def __init__(self, max_calls: int = 200) -> None:
        # Each live call has at most one LLM stream and one OpenAI TTS request in flight, so
        # 2 connections per call never makes a call wait for the pool; idle ones are kept for
        # reuse (no TCP/TLS handshake on the next call's first request) up to one per call.
        self.limits = httpx.Limits(
            max_connections=max(20, 2 * max_calls),
            max_keepalive_connections=max(10, max_calls),
            keepalive_expiry=20.0,
        )
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def client(self) -> httpx.AsyncClient | None:
        """The shared client, or None outside an event loop (the adapter then builds its own)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        if self._client is None or self._client.is_closed or self._loop is not loop:
            if self._client is not None and not self._client.is_closed:
                # Its loop is gone or elsewhere: its connections cannot be closed from here.
                log.warning("HTTP pool used from a new event loop; building a new client")
            # Timeouts are the adapters', sent with each request; `trust_env` off so no proxy
            # or certificate settings come from the environment (as the websocket adapters).
            self._client = httpx.AsyncClient(
                limits=self.limits, timeout=httpx.Timeout(10.0), trust_env=False
            )
            self._loop = loop
        return self._client

    async def aclose(self) -> None:
        client, self._client, self._loop = self._client, None, None
        if client is not None:
            await client.aclose()


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
    """Builds one call's cloud adapters and remembers them so they can be closed together.
    With `http`, the HTTP adapters use its shared client (closing them leaves it open)."""

    def __init__(
        self,
        settings: Settings,
        timeouts: StageTimeouts | None = None,
        *,
        http: HttpPool | None = None,
    ) -> None:
        self.settings = settings
        self.timeouts = timeouts or StageTimeouts()
        self.http = http
        self.closers: list[Closer] = []

    def _http_client(self) -> httpx.AsyncClient | None:
        return None if self.http is None else self.http.client()

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
            http_client=self._http_client(),
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
                http_client=self._http_client(),
            )
            self.closers.append(openai_tts.aclose)
            return openai_tts
        raise ConfigError(f"voice.provider {config.provider!r} has no cloud adapter")

    async def aclose(self) -> None:
        closers, self.closers = self.closers, []
        for close in closers:
            await close()
