"""The process's speech engines: loaded once at startup, shared by every call.

Offline engines (faster-whisper, the local responder, Piper) are shared; cloud adapters
(`control.providers`) are built per call from the assistant's provider choice, fallbacks
included, and closed by the session when the call ends, with the keys the call may use
(`ProviderKeys`: its tenant's credentials, or the operator's). They share the hub's HTTP
connection pools (`HttpPool`): one for the operator's provider URLs, one egress-guarded for URLs
a tenant chose (custom-llm), both closed by the app at shutdown (`aclose_http`). One
`BreakerBoard` per hub (per process) lets every call skip a provider that keeps failing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import httpx

from control.egress import egress_policy
from control.logs import ContextThreadPool
from control.providers import (
    OPERATOR_KEYS,
    CloudAdapters,
    HttpPool,
    ProviderKeys,
    fallback_models,
    fallback_transcribers,
    fallback_voices,
)
from control.settings import Settings
from media.audio_format import PCM16_16K, AudioFormat
from media.transport import TELEPHONE
from voice.assistant import Assistant, ModelConfig, TranscriberConfig, VoiceConfig
from voice.breaker import BreakerBoard
from voice.egress_http import DEFAULT_MAX_RESPONSE_BYTES, guarded_client
from voice.engines import (
    PiperEngine,
    SileroVad,
    SmartTurn,
    WebRtcVad,
    WhisperEngine,
    piper_voice_files,
    silero_vad_path,
    smart_turn_path,
    whisper_model_dir,
)
from voice.errors import ConfigError, ProviderError
from voice.greeting import GreetingCache
from voice.local_llm import LocalResponder
from voice.ports import LanguageModel, SpeechToText, TextToSpeech, VadModel, in_format
from voice.providers import StageTimeouts
from voice.session import APOLOGY, Engines
from voice.variables import has_template

__all__ = ["EngineHub", "EngineSource"]

log = logging.getLogger("ava.engines")


def _guarded(settings: Settings) -> Callable[[httpx.Limits], httpx.AsyncClient]:
    """Builds the egress-guarded client of the tenants' pool. The policy is made now, so a bad
    AVA_EGRESS_ALLOW stops the server at startup rather than a call."""
    policy = egress_policy(settings)

    def build(limits: httpx.Limits) -> httpx.AsyncClient:
        # Timeouts are the adapters', sent with each request, as on the operator's pool.
        return guarded_client(
            policy, timeout_seconds=10.0, max_connections=limits.max_connections or 100
        )

    return build


class EngineSource(Protocol):
    """Where the app gets each call's engines (the offline hub, or scripted ones in tests)."""

    def for_assistant(
        self, assistant: Assistant, keys: ProviderKeys = OPERATOR_KEYS
    ) -> Engines: ...

    async def warm(self, assistant: Assistant) -> None: ...

    def close(self) -> None: ...


class EngineHub:
    def __init__(
        self,
        *,
        executor: ThreadPoolExecutor,
        vad: VadModel,
        turn_detector: SmartTurn | None,
        piper: PiperEngine,
        whisper: WhisperEngine,
        settings: Settings | None = None,
        timeouts: StageTimeouts | None = None,
    ) -> None:
        self.settings = settings
        self.timeouts = timeouts or StageTimeouts()
        self.breakers = BreakerBoard()
        self.executor = executor
        self.vad = vad
        self.turn_detector = turn_detector
        self.piper = piper
        self.whisper = whisper
        self.greetings = GreetingCache()
        max_calls = 200 if settings is None else settings.max_calls
        self.http = HttpPool(max_calls)
        # Tenants' URLs (a custom LLM) only through the operator's egress policy.
        self.tenant_http = (
            None if settings is None else HttpPool(max_calls, build=_guarded(settings))
        )

    @classmethod
    def load(cls, settings: Settings) -> EngineHub:
        """Blocking: loads every model (~1–2 s). Call it off the event loop."""
        started = time.perf_counter()
        # Runs each job in its submitter's context: STT/TTS log lines carry the call id.
        executor = ContextThreadPool(settings.inference_threads, thread_name_prefix="ava-infer")
        vad: VadModel
        if settings.vad == "webrtc":
            vad = WebRtcVad()
        else:
            try:
                vad = SileroVad(silero_vad_path())
            except ConfigError as exc:
                # A call with a cruder VAD beats no calls at all; say so loudly.
                log.error("Silero VAD unusable (%s); falling back to webrtcvad", exc)
                vad = WebRtcVad()
        turn_detector = SmartTurn(smart_turn_path()) if settings.turn_model else None
        model_path, config_path = piper_voice_files()
        piper = PiperEngine(model_path, config_path, executor)
        # Whisper's encoder is most of a turn's latency on the offline path: give it every
        # inference thread (measured: ~1.0 s per utterance with 1 thread, ~0.65 s with 2).
        whisper = WhisperEngine(
            whisper_model_dir(settings.model_dir), executor, cpu_threads=settings.inference_threads
        )
        log.info("engines loaded in %.2fs", time.perf_counter() - started)
        return cls(
            executor=executor,
            vad=vad,
            turn_detector=turn_detector,
            piper=piper,
            whisper=whisper,
            settings=settings,
        )

    def for_assistant(self, assistant: Assistant, keys: ProviderKeys = OPERATOR_KEYS) -> Engines:
        """Engines for one call, its cloud providers keyed by `keys` (a tenant's call: from
        `control.providers.provider_keys`). Raises ConfigError (naming the setting or field)
        when a chosen provider, primary or fallback, cannot be used."""
        model, voice, transcriber = assistant.model, assistant.voice, assistant.transcriber
        cloud = (
            None
            if self.settings is None
            else CloudAdapters(
                self.settings,
                self.timeouts,
                http=self.http,
                tenant_http=self.tenant_http,
                keys=keys,
            )
        )
        return Engines(
            stt=self._stt(transcriber, cloud),
            llm=self._llm(model, cloud),
            tts=self._tts(voice, cloud),
            vad=self.vad,
            turn_detector=self.turn_detector,
            greetings=self.greetings,
            executor=self.executor,
            stt_fallbacks=[self._stt(t, cloud) for t in fallback_transcribers(transcriber)],
            llm_fallbacks=[self._llm(m, cloud) for m in fallback_models(model)],
            tts_fallbacks=[self._tts(v, cloud) for v in fallback_voices(voice)],
            breakers=self.breakers,
            closers=[] if cloud is None else [cloud.aclose],
            # tool servers: the operator's egress policy and response cap (voice.tools)
            egress=None if self.settings is None else egress_policy(self.settings),
            max_response_bytes=(
                DEFAULT_MAX_RESPONSE_BYTES
                if self.settings is None
                else self.settings.max_response_bytes
            ),
        )

    @staticmethod
    def _need(cloud: CloudAdapters | None, what: str) -> CloudAdapters:
        if cloud is None:
            raise ConfigError(f"{what} needs a cloud provider adapter (no settings loaded)")
        return cloud

    def _stt(self, config: TranscriberConfig, cloud: CloudAdapters | None) -> SpeechToText:
        if config.provider == "faster-whisper":
            return self.whisper.stt(language=config.language)
        return self._need(cloud, f"transcriber.provider {config.provider!r}").stt(config)

    def _llm(self, config: ModelConfig, cloud: CloudAdapters | None) -> LanguageModel:
        if config.provider == "local":
            return LocalResponder(config)
        return self._need(cloud, f"model.provider {config.provider!r}").llm(config)

    def _tts(self, config: VoiceConfig, cloud: CloudAdapters | None) -> TextToSpeech:
        if config.provider == "piper":
            return self.piper.tts(speed=config.speed)
        return self._need(cloud, f"voice.provider {config.provider!r}").tts(config)

    async def warm(self, assistant: Assistant) -> None:
        """Synthesize the greeting (and, on a cloud voice, the apology) now, in the phone's
        format and the browser's, so calls start speaking within a frame and a failing call
        still has something to say. A greeting with {{variables}} is rendered per call: there
        is nothing to warm."""
        engines = self.for_assistant(assistant)
        lines = [APOLOGY] if assistant.voice.provider != "piper" else []
        greeting = assistant.first_message
        # A model-generated greeting never says `firstMessage`: nothing to keep for it.
        spoken = assistant.first_message_mode == "assistant-speaks-first"
        if greeting and spoken and not has_template(greeting):
            lines.insert(0, greeting)

        async def warm_line(tts: TextToSpeech, line: str, audio_format: AudioFormat) -> None:
            try:
                await self.greetings.get_or_synthesize(tts, line, audio_format)
            except ProviderError as exc:
                # A cloud voice that is down at startup must not stop the server: calls
                # synthesize these lines on demand (through the voice's fallbacks) once it is back.
                log.error("warming %r (%s) failed: %s", assistant.name, audio_format.name, exc)

        try:
            # Every line side by side (a voice serves concurrent calls anyway): the time to ready,
            # which a rolling restart waits on, is the longest line, not the sum of them.
            async with asyncio.TaskGroup() as group:
                for audio_format in (TELEPHONE, PCM16_16K):
                    try:
                        tts = in_format(engines.tts, audio_format)
                    except ConfigError:
                        continue  # a voice that only speaks telephone audio takes no browser calls
                    for line in lines:
                        group.create_task(warm_line(tts, line, audio_format))
        finally:
            for close in engines.closers:
                await close()

    async def aclose_http(self) -> None:
        """Closes the shared HTTP pools (the app's shutdown); a later call builds new ones."""
        await self.http.aclose()
        if self.tenant_http is not None:
            await self.tenant_http.aclose()

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    async def load_async(settings: Settings) -> EngineHub:
        return await asyncio.to_thread(EngineHub.load, settings)
