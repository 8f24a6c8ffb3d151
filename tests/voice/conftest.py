"""Session-wide offline engines and real synthesized speech for the engine tests.

Models load once per test session. Speech comes from the Piper engine itself with its noise
scales at 0, so the audio is identical on every run and the STT/turn assertions cannot flake on
one unlucky rendition.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from media.g711 import ulaw_silence
from voice.engines import (
    PiperEngine,
    SileroVad,
    SmartTurn,
    WhisperEngine,
    piper_voice_files,
    silero_vad_path,
    smart_turn_path,
    whisper_model_dir,
)
from voice.types import WordTiming

QUESTION = "What is the weather like in Paris?"
BOOKING = "I would like to book a table for two people tomorrow at seven."


@dataclass(frozen=True, slots=True)
class SpeechClip:
    text: str
    ulaw: bytes  # μ-law 8 kHz, speech only
    words: tuple[WordTiming, ...]

    def padded(self, before: float = 0.3, after: float = 0.5) -> bytes:
        """With digital silence around it, as a caller's turn arrives."""
        return ulaw_silence(int(before * 8000)) + self.ulaw + ulaw_silence(int(after * 8000))


def synthesize_clip(engine: PiperEngine, text: str) -> SpeechClip:
    async def run() -> SpeechClip:
        audio = bytearray()
        words: list[WordTiming] = []
        async for chunk in engine.tts(noise_scale=0.0, noise_w_scale=0.0).synthesize(text):
            audio += chunk.audio
            words.extend(chunk.words)
        return SpeechClip(text, bytes(audio), tuple(words))

    return asyncio.run(run())


@pytest.fixture(scope="session")
def engine_executor() -> Iterator[ThreadPoolExecutor]:
    executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="test-infer")
    yield executor
    executor.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="session")
def piper_engine(engine_executor: ThreadPoolExecutor) -> PiperEngine:
    model_path, config_path = piper_voice_files()
    return PiperEngine(model_path, config_path, engine_executor)


@pytest.fixture(scope="session")
def engine_question_clip(piper_engine: PiperEngine) -> SpeechClip:
    return synthesize_clip(piper_engine, QUESTION)


@pytest.fixture(scope="session")
def engine_booking_clip(piper_engine: PiperEngine) -> SpeechClip:
    return synthesize_clip(piper_engine, BOOKING)


@pytest.fixture(scope="session")
def whisper_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engine-models")


@pytest.fixture(scope="session")
def whisper_engine(engine_executor: ThreadPoolExecutor, whisper_cache_dir: Path) -> WhisperEngine:
    return WhisperEngine(whisper_model_dir(whisper_cache_dir), engine_executor)


@pytest.fixture(scope="session")
def silero_vad() -> SileroVad:
    return SileroVad(silero_vad_path())


@pytest.fixture(scope="session")
def smart_turn_model() -> SmartTurn:
    return SmartTurn(smart_turn_path())


def truncated_copy(source: Path, target_dir: Path, keep: int = 4096) -> Path:
    """A damaged copy of a model file (never touch the installed one)."""
    target = target_dir / source.name
    with source.open("rb") as f:
        target.write_bytes(f.read(keep))
    return target
