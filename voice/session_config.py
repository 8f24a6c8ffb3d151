"""What a `CallSession` is built from: its engines, its tuning, and the turn-taking settings
derived from the assistant's Vapi plans."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace

from media.audio_format import AudioFormat
from voice.assistant import Assistant
from voice.breaker import BreakerBoard
from voice.egress import EgressPolicy
from voice.egress_http import DEFAULT_MAX_RESPONSE_BYTES
from voice.fallback import Stage
from voice.greeting import GreetingCache
from voice.ports import (
    LanguageModel,
    SpeechToText,
    TextToSpeech,
    TurnDetector,
    VadModel,
    in_format,
)
from voice.turns import TurnConfig
from voice.types import EndedReason

__all__ = [
    "APOLOGY",
    "FAILED_REASONS",
    "TRANSFER_FAILED",
    "Engines",
    "SessionOptions",
    "turn_config",
]

# Said (from the greeting cache) when no provider of a stage is left, just before hanging up.
APOLOGY = "Sorry, I'm having trouble right now. Please call back later."
# Said when the telephony side refused a transfer the caller was told about; the call goes on.
TRANSFER_FAILED = "Sorry, I couldn't transfer your call. How else can I help?"

FAILED_REASONS: dict[Stage, EndedReason] = {
    "stt": EndedReason.PIPELINE_ERROR_STT,
    "llm": EndedReason.PIPELINE_ERROR_LLM,
    "tts": EndedReason.PIPELINE_ERROR_TTS,
}


@dataclass(frozen=True, slots=True)
class SessionOptions:
    playout_chunk_seconds: float = 0.1  # audio per media message (and per mark)
    max_ahead_seconds: float = 0.2  # most audio ever queued at the far end (Twilio)
    stt_connect_timeout: float = 5.0
    turn_model_seconds: float = 8.0  # caller audio the turn model sees
    # Caller audio queued for the STT (while it connects, fails over, or falls behind):
    # 150 frames = 3 s; the oldest is dropped beyond that.
    prebuffer_frames: int = 150
    # Events waiting for the session loop; producers wait when it is full (backpressure).
    inbox_events: int = 256


@dataclass(slots=True)
class Engines:
    """What a call runs on. Engines are shared by calls; streams are per call."""

    stt: SpeechToText
    llm: LanguageModel
    tts: TextToSpeech
    vad: VadModel
    turn_detector: TurnDetector | None
    greetings: GreetingCache
    executor: Executor | None = None  # for the turn model; None: the loop's default
    # Tried in order when the primary fails (after one retry): the assistant's fallback plans.
    stt_fallbacks: Sequence[SpeechToText] = ()
    llm_fallbacks: Sequence[LanguageModel] = ()
    tts_fallbacks: Sequence[TextToSpeech] = ()
    # Per provider per process when the engine source shares one board across calls.
    breakers: BreakerBoard = field(default_factory=BreakerBoard)
    # Releases the per-call adapters (sockets, HTTP pools) when the call ends.
    closers: Sequence[Callable[[], Awaitable[None]]] = ()
    # Where the assistant's tool servers may be (the operator's egress policy; None: the strict
    # default) and how much of their answers is read.
    egress: EgressPolicy | None = None
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES

    def in_format(self, audio_format: AudioFormat) -> Engines:
        """These engines with every transcriber and voice speaking the call's `audio_format`
        (the same objects when they already do). Raises ConfigError when one cannot."""
        return replace(
            self,
            stt=in_format(self.stt, audio_format),
            tts=in_format(self.tts, audio_format),
            stt_fallbacks=[in_format(e, audio_format) for e in self.stt_fallbacks],
            tts_fallbacks=[in_format(e, audio_format) for e in self.tts_fallbacks],
        )


def turn_config(assistant: Assistant, has_turn_model: bool, vad_window: float) -> TurnConfig:
    start, stop = assistant.start_speaking_plan, assistant.stop_speaking_plan
    return TurnConfig(
        vad_silence_seconds=start.vad_silence_seconds,
        vad_window_seconds=vad_window,
        turn_threshold=start.smart_turn_threshold,
        incomplete_timeout=start.transcription_endpointing_plan.on_no_punctuation_seconds,
        use_turn_model=has_turn_model,
        speculative=start.speculative,
        voice_seconds=stop.voice_seconds,
        num_words=stop.num_words,
        acknowledgement_phrases=tuple(stop.acknowledgement_phrases),
        interruption_phrases=tuple(stop.interruption_phrases),
    )
