"""Piper TTS: real μ-law 8 kHz speech, streamed sentence by sentence, cancellable."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from piper.config import SynthesisConfig

from media.g711 import ulaw_to_float
from tests.voice.conftest import QUESTION, SpeechClip, truncated_copy
from voice.engines import PiperEngine, piper_voice_files
from voice.engines.piper_tts import split_sentences
from voice.errors import ConfigError
from voice.types import TtsChunk

STORY = (
    "Thanks for calling. Our kitchen opens at noon every day. "
    "We close at ten on weekdays and at eleven on weekends. Is there anything else?"
)


class CountingEngine:
    """Wraps `synthesize_sentence` to count executor jobs and signal when one starts."""

    def __init__(self, engine: PiperEngine, monkeypatch: pytest.MonkeyPatch) -> None:
        self.started = 0
        self.finished = 0
        self.first_started = threading.Event()
        real = engine.synthesize_sentence

        def counting(sentence: str, config: SynthesisConfig) -> bytes:
            self.started += 1
            self.first_started.set()
            try:
                return real(sentence, config)
            finally:
                self.finished += 1

        monkeypatch.setattr(engine, "synthesize_sentence", counting)


def rms_dbfs(ulaw: bytes) -> float:
    x = ulaw_to_float(ulaw).astype(np.float64)
    return float(10 * np.log10(np.mean(x * x) + 1e-12))


def test_question_is_plausible_speech(engine_question_clip: SpeechClip) -> None:
    seconds = len(engine_question_clip.ulaw) / 8000
    assert 1.0 < seconds < 4.0
    assert rms_dbfs(engine_question_clip.ulaw) > -30.0
    words = engine_question_clip.words
    assert [w.word for w in words] == QUESTION.split()
    assert all(a.end <= b.start + 1e-9 for a, b in zip(words, words[1:], strict=False))
    assert words[-1].end <= seconds + 0.05


async def test_chunks_are_short_and_first_arrives_before_the_rest_is_made(
    piper_engine: PiperEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = CountingEngine(piper_engine, monkeypatch)
    chunks: list[TtsChunk] = []
    jobs_at_first_chunk = -1
    async for chunk in piper_engine.tts().synthesize(STORY):
        if not chunks:
            jobs_at_first_chunk = counter.started
        chunks.append(chunk)
    assert len(split_sentences(STORY)) == 4
    assert jobs_at_first_chunk == 1 and counter.finished == 4
    assert all(0 < len(c.audio) <= 1600 for c in chunks)  # ≤ 200 ms each
    audio = b"".join(c.audio for c in chunks)
    assert 5.0 < len(audio) / 8000 < 12.0
    assert len([w for c in chunks for w in c.words]) == len(STORY.split())


async def test_closing_the_stream_leaves_no_queued_work(
    piper_engine: PiperEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = CountingEngine(piper_engine, monkeypatch)
    stream = piper_engine.tts().synthesize(STORY)
    await anext(stream)
    await stream.aclose()  # barge-in after the first chunk
    await asyncio.sleep(0.3)
    assert counter.started == 1


async def test_cancel_mid_sentence_finishes_only_that_sentence(
    piper_engine: PiperEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = CountingEngine(piper_engine, monkeypatch)

    async def consume() -> None:
        async for _ in piper_engine.tts().synthesize(STORY):
            pass

    task = asyncio.create_task(consume())
    await asyncio.to_thread(counter.first_started.wait, 5.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.5)
    assert counter.started == 1


async def test_speed_shortens_audio_and_changes_the_voice_key(piper_engine: PiperEngine) -> None:
    async def duration(speed: float) -> float:
        tts = piper_engine.tts(speed, noise_scale=0.0, noise_w_scale=0.0)
        chunks = [c async for c in tts.synthesize(QUESTION)]
        return sum(len(c.audio) for c in chunks) / 8000

    normal, fast = await duration(1.0), await duration(1.5)
    assert fast < normal * 0.8
    assert piper_engine.tts(1.0).voice_key != piper_engine.tts(1.5).voice_key
    assert piper_engine.tts().name == "piper"


def test_split_sentences() -> None:
    assert split_sentences("Hi there.  How are you?Fine! ") == ["Hi there.", "How are you?Fine!"]
    assert split_sentences("   ") == []


def test_bad_speed_is_a_config_error(piper_engine: PiperEngine) -> None:
    with pytest.raises(ConfigError):
        piper_engine.tts(speed=0.0)


def test_corrupt_voice_files_are_config_errors(tmp_path: Path) -> None:
    model, config = piper_voice_files()
    executor = ThreadPoolExecutor(1)
    try:
        with pytest.raises(ConfigError, match="Piper voice"):
            PiperEngine(truncated_copy(model, tmp_path), config, executor)
        bad_config = tmp_path / "voice.onnx.json"
        bad_config.write_text("{not json")
        with pytest.raises(ConfigError, match="config"):
            PiperEngine(model, bad_config, executor)
    finally:
        executor.shutdown()
