"""The process's speech engines: loaded once at startup, shared by every call."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from control.settings import Settings
from voice.assistant import Assistant
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
from voice.errors import ConfigError
from voice.greeting import GreetingCache
from voice.local_llm import LocalResponder
from voice.ports import VadModel
from voice.session import Engines

__all__ = ["EngineHub", "EngineSource"]

log = logging.getLogger("ava.engines")


class EngineSource(Protocol):
    """Where the app gets each call's engines (the offline hub, or scripted ones in tests)."""

    def for_assistant(self, assistant: Assistant) -> Engines: ...

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
    ) -> None:
        self.executor = executor
        self.vad = vad
        self.turn_detector = turn_detector
        self.piper = piper
        self.whisper = whisper
        self.greetings = GreetingCache()

    @classmethod
    def load(cls, settings: Settings) -> EngineHub:
        """Blocking: loads every model (~1–2 s). Call it off the event loop."""
        started = time.perf_counter()
        executor = ThreadPoolExecutor(settings.inference_threads, thread_name_prefix="ava-infer")
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
            executor=executor, vad=vad, turn_detector=turn_detector, piper=piper, whisper=whisper
        )

    def for_assistant(self, assistant: Assistant) -> Engines:
        model, voice, transcriber = assistant.model, assistant.voice, assistant.transcriber
        if model.provider != "local":
            raise ConfigError(f"model.provider {model.provider!r} needs a cloud provider adapter")
        if voice.provider != "piper":
            raise ConfigError(f"voice.provider {voice.provider!r} needs a cloud provider adapter")
        if transcriber.provider != "faster-whisper":
            raise ConfigError(
                f"transcriber.provider {transcriber.provider!r} needs a cloud provider adapter"
            )
        return Engines(
            stt=self.whisper.stt(language=transcriber.language),
            llm=LocalResponder(model),
            tts=self.piper.tts(speed=voice.speed),
            vad=self.vad,
            turn_detector=self.turn_detector,
            greetings=self.greetings,
            executor=self.executor,
        )

    async def warm(self, assistant: Assistant) -> None:
        """Synthesize the greeting now so calls start speaking within a frame."""
        if assistant.first_message:
            engines = self.for_assistant(assistant)
            await self.greetings.get_or_synthesize(engines.tts, assistant.first_message)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    async def load_async(settings: Settings) -> EngineHub:
        return await asyncio.to_thread(EngineHub.load, settings)
