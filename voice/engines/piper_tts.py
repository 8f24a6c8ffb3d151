"""Offline TTS with Piper: neural voice, 22.05 kHz, resampled to the call's format (μ-law 8 kHz
for the phone, PCM16 16 kHz for a browser; `PiperTts.for_format`).

The voice loads once per process. Each `synthesize()` runs Piper in the inference executor one
sentence at a time, so the first sentence plays while the rest is synthesized, and a cancelled
reply (barge-in) leaves at most the sentence in flight behind, never queued work.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncGenerator
from concurrent.futures import Executor
from pathlib import Path

from piper import PiperVoice
from piper.config import PiperConfig, SynthesisConfig

from media.audio_format import AudioFormat
from media.resample import StreamingResampler
from media.transport import TELEPHONE
from voice.engines.executor import load_onnx_session
from voice.errors import ConfigError, ProviderError
from voice.types import TtsChunk, WordTiming

__all__ = ["PiperEngine", "PiperTts", "split_sentences"]

_CHUNK_SECONDS = 0.2  # ≤200 ms per chunk keeps barge-in and pacing responsive
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")


def split_sentences(text: str) -> list[str]:
    """Split at sentence punctuation followed by whitespace; drops empty pieces."""
    return [s for s in (p.strip() for p in _SENTENCE_END.split(text)) if s]


def _word_timings(sentence: str, start: float, duration: float) -> list[WordTiming]:
    """Piper gives no word alignment: spread the sentence's audio over its words by length."""
    words = sentence.split()
    if not words or duration <= 0.0:
        return []
    weights = [len(w) + 1 for w in words]  # +1: the gap between words takes time too
    scale = duration / sum(weights)
    timings: list[WordTiming] = []
    t = start
    for word, weight in zip(words, weights, strict=True):
        end = t + weight * scale
        timings.append(WordTiming(word, t, end))
        t = end
    return timings


class PiperEngine:
    """One loaded Piper voice, shared by every call."""

    def __init__(self, model_path: Path, config_path: Path, executor: Executor) -> None:
        try:
            config = PiperConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"cannot read the Piper voice config {config_path}: {exc}") from exc
        # Built directly rather than via PiperVoice.load so the session is single-threaded.
        session = load_onnx_session(model_path, what="Piper voice")
        self.voice = PiperVoice(session=session, config=config)
        self.voice_id = model_path.name.removesuffix(".onnx")
        self.sample_rate = config.sample_rate
        self.executor = executor

    def tts(
        self,
        speed: float = 1.0,
        *,
        noise_scale: float | None = None,
        noise_w_scale: float | None = None,
    ) -> PiperTts:
        """A voice at `speed`. The noise scales (None: the voice's own) vary the audio from run
        to run; 0 makes synthesis deterministic (reproducible tests and cached lines)."""
        if not 0.25 <= speed <= 4.0:
            raise ConfigError(f"voice speed must be within 0.25–4.0, got {speed}")
        config = SynthesisConfig(
            length_scale=1.0 / speed, noise_scale=noise_scale, noise_w_scale=noise_w_scale
        )
        key = f"piper:{self.voice_id}:{speed:g}"
        if noise_scale is not None or noise_w_scale is not None:
            key += f":{noise_scale}:{noise_w_scale}"
        return PiperTts(self, key, config)

    def synthesize_sentence(self, sentence: str, config: SynthesisConfig) -> bytes:
        """Blocking: 22.05 kHz PCM16 of one sentence. Runs in the executor."""
        try:
            pieces = [chunk.audio_int16_bytes for chunk in self.voice.synthesize(sentence, config)]
        except Exception as exc:  # espeak/onnxruntime errors are untyped
            raise ProviderError("piper", f"synthesis failed: {exc}", retryable=False) from exc
        return b"".join(pieces)


class PiperTts:
    """`TextToSpeech` for one voice and speed (cheap; make one per assistant)."""

    name = "piper"

    def __init__(
        self,
        engine: PiperEngine,
        voice_key: str,
        config: SynthesisConfig,
        audio_format: AudioFormat = TELEPHONE,
    ) -> None:
        self._engine = engine
        self.voice_key = voice_key
        self._config = config
        self.audio_format = audio_format

    def for_format(self, audio_format: AudioFormat) -> PiperTts:
        if audio_format == self.audio_format:
            return self
        return PiperTts(self._engine, self.voice_key, self._config, audio_format)

    async def synthesize(self, text: str) -> AsyncGenerator[TtsChunk, None]:
        loop = asyncio.get_running_loop()
        engine = self._engine
        audio_format = self.audio_format
        chunk_bytes = audio_format.bytes_for(_CHUNK_SECONDS)
        resampler = StreamingResampler(engine.sample_rate, audio_format.sample_rate)
        pending = bytearray()  # audio not yet yielded
        words: list[WordTiming] = []
        emitted = 0  # bytes yielded so far: the clock for word timings
        produced = 0.0  # seconds of source audio synthesized so far

        def take(n: int) -> TtsChunk:
            nonlocal emitted
            audio = bytes(pending[:n])
            del pending[:n]
            emitted += len(audio)
            end = audio_format.seconds(emitted)
            # A word goes with the chunk its start falls in, so none is announced before it plays
            # (words are in time order, so this is a prefix of `words`).
            mine = [w for w in words if w.start < end]
            del words[: len(mine)]
            return TtsChunk(audio, tuple(mine))

        for sentence in split_sentences(text):
            # Awaiting one sentence at a time: cancellation here drops nothing queued behind it.
            pcm = await loop.run_in_executor(
                engine.executor, engine.synthesize_sentence, sentence, self._config
            )
            duration = len(pcm) / 2 / engine.sample_rate
            words.extend(_word_timings(sentence, produced, duration))
            produced += duration
            pending += audio_format.from_pcm16(resampler.process(pcm))
            while len(pending) >= chunk_bytes:
                yield take(chunk_bytes)
        pending += audio_format.from_pcm16(resampler.process(b"", last=True))
        # Late words (rounding at the very end) ride on the last chunk.
        while pending:
            chunk = take(min(chunk_bytes, len(pending)))
            if len(pending) == 0 and words:
                chunk = TtsChunk(chunk.audio, chunk.words + tuple(words))
                words.clear()
            yield chunk
