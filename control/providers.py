"""Cloud provider adapters built from an assistant's Vapi-shaped `transcriber`, `model`, `voice`.

Provider choice and options come from the assistant; keys from `ProviderKeys`, the credentials
one call may use (`provider_keys`):

- a tenant's call uses the tenant's credential for the provider (`POST /credential`): the one a
  config names by `credentialId`, else the tenant's newest for that provider. The operator's env
  keys (DEEPGRAM_API_KEY, OPENAI_API_KEY, ELEVENLABS_API_KEY, GROQ_API_KEY, …) are used only if
  the tenant has none and the operator shares them (`AVA_TENANTS_USE_OPERATOR_KEYS`; unset: yes
  while the server has at most one tenant, counted at each call's start).
- a call without a tenant (the assistant file) uses the operator's keys.

A key is only ever sent to the base URL the operator configured for its provider (groq,
together-ai and deepinfra have their own, never OPENAI_BASE_URL). `custom-llm` posts to the
assistant's `model.url`, so it gets only a custom-llm credential of the call's tenant (or the
placeholder key "not-needed"), never an operator key, and a tenant's custom-llm requests go
through the egress guard (`voice.egress_http`). A call without a tenant keeps the old behaviour
there (the operator wrote that URL): OPENAI_API_KEY if set.

A provider whose key is missing is a `ConfigError` naming the setting or credential, raised when
the call's engines are built, so a call never starts on a provider it cannot reach; a provider
AVA has no adapter for is refused when an assistant is saved (`unsupported_providers`). Adapters
are per call; `CloudAdapters.aclose()` releases them. The HTTP adapters (OpenAI LLM and TTS)
share one `HttpPool` per process when given one: building an HTTP client per call costs ~16 ms
of CPU before the greeting leaves, and a shared pool also keeps connections warm across calls.

Fallbacks use Vapi's shapes: `model.fallbackModels` (each entry's fields override the primary
model's), `voice.fallbackPlan.voices` and `transcriber.fallbackPlan.transcribers` (each entry a
whole voice / transcriber); they use the same keys as the primary.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
from pydantic import SecretStr, ValidationError

from control.settings import Settings
from storage import DecryptionFailed, ProviderCredential, ToolStore
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
from voice.voicemail import problems as voicemail_problems

if TYPE_CHECKING:
    from control.stores import Stores

__all__ = [
    "CLOUD_MODELS",
    "CLOUD_TRANSCRIBERS",
    "CLOUD_VOICES",
    "CREDENTIAL_PROVIDERS",
    "OPERATOR_KEYS",
    "CloudAdapters",
    "HttpPool",
    "ProviderKeys",
    "assistant_problems",
    "credential_ids",
    "fallback_models",
    "fallback_transcribers",
    "fallback_voices",
    "openai_tools",
    "provider_keys",
    "resolve_tools",
    "unsupported_providers",
]

CLOUD_MODELS = frozenset({"openai", "custom-llm", "groq", "together-ai", "deepinfra"})
CLOUD_VOICES = frozenset({"11labs", "openai"})
CLOUD_TRANSCRIBERS = frozenset({"deepgram"})
# What each field can run on: the offline engine plus the cloud adapters above.
_RUNNABLE = {
    "transcriber": frozenset({"faster-whisper"}) | CLOUD_TRANSCRIBERS,
    "model": frozenset({"local"}) | CLOUD_MODELS,
    "voice": frozenset({"piper"}) | CLOUD_VOICES,
}
# Vapi's provider names a credential (`POST /credential`) may be for: the ones AVA can use.
CREDENTIAL_PROVIDERS = frozenset({"deepgram", "11labs"}) | CLOUD_MODELS
# The operator's key for a provider, and the setting's conventional name (for messages).
_OPERATOR_KEYS: dict[str, tuple[Callable[[Settings], SecretStr], str]] = {
    "deepgram": (lambda s: s.deepgram_api_key, "DEEPGRAM_API_KEY"),
    "openai": (lambda s: s.openai_api_key, "OPENAI_API_KEY"),
    "11labs": (lambda s: s.elevenlabs_api_key, "ELEVENLABS_API_KEY"),
    "groq": (lambda s: s.groq_api_key, "GROQ_API_KEY"),
    "together-ai": (lambda s: s.together_api_key, "TOGETHER_API_KEY"),
    "deepinfra": (lambda s: s.deepinfra_api_key, "DEEPINFRA_API_KEY"),
}
# The base URL an OpenAI-compatible model provider's key goes to (None: the SDK's, OpenAI's).
_LLM_BASE_URLS: dict[str, Callable[[Settings], str | None]] = {
    "openai": lambda s: s.openai_base_url,
    "groq": lambda s: s.groq_base_url,
    "together-ai": lambda s: s.together_base_url,
    "deepinfra": lambda s: s.deepinfra_base_url,
}
# Sent as the key to a custom LLM that has no credential: self-hosted servers take any key, and
# the SDK needs one.
_NO_KEY = "not-needed"

Closer = Callable[[], Awaitable[None]]
ClientFactory = Callable[[httpx.Limits], httpx.AsyncClient]
C = TypeVar("C", ModelConfig, VoiceConfig, TranscriberConfig)

log = logging.getLogger("ava.providers")


@dataclass(frozen=True, slots=True)
class ProviderKeys:
    """The provider credentials one call may use: its tenant's (newest first), and whether the
    operator's env keys may be used too. `tenant_id` None: the operator's own call."""

    tenant_id: str | None = None
    credentials: tuple[ProviderCredential, ...] = ()
    operator: bool = True

    def credential(
        self, provider: str, config: ModelConfig | VoiceConfig | TranscriberConfig, field: str
    ) -> ProviderCredential | None:
        """The credential `config` names by `credentialId` (ConfigError if it is not this
        tenant's or not for `provider`), else the newest one for `provider`, else None."""
        wanted = _extra(config, "credentialId")
        if wanted is None:
            return next((c for c in self.credentials if c.provider == provider), None)
        for credential in self.credentials:
            if credential.id == wanted:
                if credential.provider != provider:
                    raise ConfigError(
                        f"{field}.credentialId: credential {wanted} is for "
                        f"{credential.provider!r}, not {provider!r}"
                    )
                return credential
        raise ConfigError(f"{field}.credentialId: credential {wanted} not found")


OPERATOR_KEYS = ProviderKeys()


async def provider_keys(stores: Stores, settings: Settings, tenant_id: str | None) -> ProviderKeys:
    """The keys a call of `tenant_id` (None: the assistant file's call) may use. Raises
    ConfigError when the tenant's credentials cannot be opened with the server's key."""
    if tenant_id is None:
        return OPERATOR_KEYS
    try:
        credentials = await stores.credentials.secrets(tenant_id)
    except DecryptionFailed as exc:
        raise ConfigError(
            "the tenant's provider credentials cannot be decrypted with the server's key"
        ) from exc
    shared = settings.tenants_use_operator_keys
    if shared is None:
        shared = not await stores.credentials.several_tenants()
    return ProviderKeys(tenant_id, tuple(credentials), shared)


class HttpPool:
    """One `httpx.AsyncClient` for every call's HTTP adapters, built on first use.

    A client's connections belong to the event loop that opened them, so the client is bound to
    the loop it was built on; used from another loop (a test's, or after a restart in-process) a
    new one is built. `aclose()` (at app shutdown) closes it; a later use builds a fresh one.
    `build` makes the client from the pool's limits (default: a plain client); the pool for
    tenants' URLs builds the egress-guarded one.
    """

    def __init__(self, max_calls: int = 200, *, build: ClientFactory | None = None) -> None:
        # Each live call has at most one LLM stream and one OpenAI TTS request in flight, so
        # 2 connections per call never makes a call wait for the pool; idle ones are kept for
        # reuse (no TCP/TLS handshake on the next call's first request) up to one per call.
        self.limits = httpx.Limits(
            max_connections=max(20, 2 * max_calls),
            max_keepalive_connections=max(10, max_calls),
            keepalive_expiry=20.0,
        )
        self._build = build or _plain_client
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
            self._client = self._build(self.limits)
            self._loop = loop
        return self._client

    async def aclose(self) -> None:
        client, self._client, self._loop = self._client, None, None
        if client is not None:
            await client.aclose()


def _plain_client(limits: httpx.Limits) -> httpx.AsyncClient:
    # Timeouts are the adapters', sent with each request; `trust_env` off so no proxy or
    # certificate settings come from the environment (as the websocket adapters).
    return httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(10.0), trust_env=False)


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
    out = []
    for i, entry in enumerate(model.fallback_models):
        merged = {**base, **entry}
        if merged.get("provider") != model.provider and "credentialId" not in entry:
            # The primary's credential is for the primary's provider: not inherited across.
            merged.pop("credentialId", None)
        out.append(_validate(ModelConfig, merged, f"model.fallbackModels[{i}]"))
    return out


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


def _configs(
    assistant: Assistant,
) -> list[tuple[str, str, ModelConfig | VoiceConfig | TranscriberConfig]]:
    """(kind, field path, config) of the primary transcriber, model, voice and every fallback.
    Raises ConfigError for a fallback entry that is not a valid config."""
    out: list[tuple[str, str, ModelConfig | VoiceConfig | TranscriberConfig]] = [
        ("transcriber", "transcriber", assistant.transcriber),
        ("model", "model", assistant.model),
        ("voice", "voice", assistant.voice),
    ]
    out += [
        ("transcriber", f"transcriber.fallbackPlan.transcribers[{i}]", t)
        for i, t in enumerate(fallback_transcribers(assistant.transcriber))
    ]
    out += [
        ("model", f"model.fallbackModels[{i}]", m)
        for i, m in enumerate(fallback_models(assistant.model))
    ]
    out += [
        ("voice", f"voice.fallbackPlan.voices[{i}]", v)
        for i, v in enumerate(fallback_voices(assistant.voice))
    ]
    return out


def unsupported_providers(assistant: Assistant) -> list[str]:
    """Why AVA cannot run `assistant`'s providers, one message per field (empty: it can): a
    provider without an adapter, a custom-llm without `url`, an invalid fallback entry. Checked
    when an assistant is saved, so such a call never fails at its start."""
    try:
        configs = _configs(assistant)
    except ConfigError as exc:
        return [str(exc)]
    problems = []
    for kind, field, config in configs:
        if config.provider not in _RUNNABLE[kind]:
            problems.append(f"{field}.provider: {config.provider!r} is not supported")
        elif isinstance(config, ModelConfig) and config.provider == "custom-llm" and not config.url:
            problems.append(f"{field}.url: required for provider 'custom-llm'")
    return problems


async def assistant_problems(assistant: Assistant, stores: Stores, tenant_id: str) -> list[str]:
    """What keeps a tenant's `assistant` from running, one message per field (empty: nothing):
    `unsupported_providers`, Vapi's inline `credentials` (they would be stored and answered with
    the assistant: keys belong in `POST /credential`), and a `credentialId` that is not one of
    this tenant's credentials. A credential that is merely missing is not a problem here (it may
    be added later); the call says so if it still is at its start."""
    problems = unsupported_providers(assistant) + voicemail_problems(assistant.voicemail_detection)
    if (assistant.model_extra or {}).get("credentials"):
        problems.append(
            "credentials: inline provider keys are not supported; create them with "
            "POST /credential (and name one with credentialId)"
        )
    if problems:
        return problems
    for field, wanted, provider in credential_ids(assistant):
        record = await stores.credentials.get(tenant_id, wanted)
        if record is None:
            problems.append(f"{field}: credential {wanted} not found")
        elif record.provider != provider:
            problems.append(f"{field}: credential {wanted} is for {record.provider!r}")
    return problems


def credential_ids(assistant: Assistant) -> list[tuple[str, str, str]]:
    """(field, credential id, provider) of every `credentialId` the transcriber, model, voice
    and their fallbacks name. Raises ConfigError for an invalid fallback entry."""
    out: dict[tuple[str, str], str] = {}
    for _kind, field, config in _configs(assistant):
        wanted = _extra(config, "credentialId")
        if wanted is not None:
            # A fallback model inherits the primary's credentialId: named once, by the primary.
            out.setdefault((str(wanted), config.provider), f"{field}.credentialId")
    return [(field, wanted, provider) for (wanted, provider), field in out.items()]


def _extra(config: ModelConfig | VoiceConfig | TranscriberConfig, name: str) -> Any:
    return (config.model_extra or {}).get(name)


class CloudAdapters:
    """Builds one call's cloud adapters and remembers them so they can be closed together.
    With `http`, the HTTP adapters use its shared client (closing them leaves it open);
    `tenant_http` is the pool for URLs a tenant chose (the egress-guarded client). `keys`: the
    credentials the call may use (default: the operator's)."""

    def __init__(
        self,
        settings: Settings,
        timeouts: StageTimeouts | None = None,
        *,
        http: HttpPool | None = None,
        tenant_http: HttpPool | None = None,
        keys: ProviderKeys = OPERATOR_KEYS,
    ) -> None:
        self.settings = settings
        self.timeouts = timeouts or StageTimeouts()
        self.http = http
        self.tenant_http = tenant_http
        self.keys = keys
        self.closers: list[Closer] = []

    def _http_client(self) -> httpx.AsyncClient | None:
        return None if self.http is None else self.http.client()

    def _api_key(
        self,
        provider: str,
        config: ModelConfig | VoiceConfig | TranscriberConfig,
        field: str,
    ) -> str:
        """The key for `provider` (sent only to the operator's base URL for it): the tenant's
        credential, else the operator's key where the call may use it."""
        credential = self.keys.credential(provider, config, field)
        if credential is not None:
            return credential.api_key
        read, setting = _OPERATOR_KEYS[provider]
        what = f"{field}.provider {provider!r}"
        if self.keys.tenant_id is None:
            value = read(self.settings).get_secret_value()
            if not value:
                raise ConfigError(f"{what} needs {setting} (set it in the environment or .env)")
            return value
        if self.keys.operator and (value := read(self.settings).get_secret_value()):
            return value
        raise ConfigError(f"{what} needs a credential for {provider!r} (POST /credential)")

    def _custom_llm(self, config: ModelConfig) -> tuple[str, httpx.AsyncClient | None]:
        """The key and client for a custom LLM at `model.url`. A tenant's URL gets only the
        tenant's custom-llm credential (never an operator key) and the egress-guarded client."""
        credential = self.keys.credential("custom-llm", config, "model")
        if credential is not None:
            key = credential.api_key
        elif self.keys.tenant_id is None:  # the operator's own assistant file chose this URL
            key = self.settings.openai_api_key.get_secret_value() or _NO_KEY
        else:
            key = _NO_KEY
        if self.keys.tenant_id is None:
            return key, self._http_client()
        client = None if self.tenant_http is None else self.tenant_http.client()
        if client is None:
            # Without it the SDK would build an unguarded client: never for a tenant's URL.
            raise ConfigError("model.url: a tenant's custom LLM needs the egress-guarded client")
        return key, client

    def stt(self, config: TranscriberConfig) -> SpeechToText:
        if config.provider != "deepgram":
            raise ConfigError(f"transcriber.provider {config.provider!r} has no cloud adapter")
        return DeepgramStt(
            self._api_key("deepgram", config, "transcriber"),
            base_url=self.settings.deepgram_base_url,
            model=config.model,
            language=config.language,
            endpointing_ms=config.endpointing,
            connect_timeout=self.timeouts.stt_connect,
        )

    def llm(self, config: ModelConfig) -> LanguageModel:
        if config.provider not in CLOUD_MODELS:
            raise ConfigError(f"model.provider {config.provider!r} has no cloud adapter")
        base_url: str | None
        if config.provider == "custom-llm":
            if not config.url:
                raise ConfigError("model.url is required for model.provider 'custom-llm'")
            base_url = config.url
            key, client = self._custom_llm(config)
        else:
            base_url = _LLM_BASE_URLS[config.provider](self.settings)
            key, client = self._api_key(config.provider, config, "model"), self._http_client()
        llm = OpenAiLlm(
            key,
            base_url=base_url,
            model=config.model,
            temperature=config.temperature,
            max_tokens=config.max_tokens,
            tools=openai_tools(config.tools),
            first_token_timeout=self.timeouts.llm_first_token,
            http_client=client,
        )
        self.closers.append(llm.aclose)
        return llm

    def tts(self, config: VoiceConfig) -> TextToSpeech:
        if config.provider == "11labs":
            settings = ElevenLabsVoiceSettings(
                stability=float(_extra(config, "stability") or 0.5),
                similarity_boost=float(_extra(config, "similarityBoost") or 0.75),
                style=float(_extra(config, "style") or 0.0),
                speed=config.speed,
            )
            eleven = ElevenLabsTts(
                self._api_key("11labs", config, "voice"),
                config.voice_id,
                base_url=self.settings.elevenlabs_base_url,
                model_id=str(_extra(config, "model") or "eleven_flash_v2_5"),
                voice_settings=settings,
                first_byte_timeout=self.timeouts.tts_first_byte,
            )
            self.closers.append(eleven.aclose)
            return eleven
        if config.provider == "openai":
            openai_tts = OpenAiTts(
                self._api_key("openai", config, "voice"),
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
