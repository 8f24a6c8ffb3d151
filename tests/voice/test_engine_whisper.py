"""faster-whisper STT stream on real synthesized speech (μ-law 8 kHz, as a phone call sends)."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from media.g711 import ulaw_silence
from tests.voice.conftest import SpeechClip
from voice.engines import WhisperEngine
from voice.engines.whisper_stt import WhisperSttStream, is_hallucination
from voice.errors import ConfigError
from voice.types import Transcript


async def send(stream: WhisperSttStream, ulaw: bytes) -> None:
    for i in range(0, len(ulaw), 160):  # 20 ms frames, as the call loop delivers them
        await stream.send_audio(ulaw[i : i + 160])


async def next_result(results: AsyncIterator[Transcript], limit: float = 10.0) -> Transcript:
    async with asyncio.timeout(limit):
        return await anext(results)


async def test_question_then_silence_gives_ordered_finals(
    whisper_engine: WhisperEngine, engine_question_clip: SpeechClip
) -> None:
    stream = await whisper_engine.stt().connect()
    results = stream.transcripts()
    await send(stream, engine_question_clip.padded(before=0.3, after=0.5))
    await stream.finalize()
    await send(stream, ulaw_silence(8000))
    await stream.finalize()

    final = await next_result(results)
    while not final.is_final:  # an interim may come first
        final = await next_result(results)
    text = final.text.lower()
    assert "weather" in text and "paris" in text
    assert final.speech_final
    # Piper ends the clip with ~0.2 s of near-silence, which trimming rightly drops.
    speech_end = 0.3 + len(engine_question_clip.ulaw) / 8000
    assert 0.05 <= final.start <= 0.3
    assert speech_end - 0.4 <= final.end <= speech_end + 0.3

    silent = await next_result(results, limit=2.0)
    assert silent == Transcript(
        "", is_final=True, speech_final=True, start=silent.start, end=silent.end
    )
    assert silent.start >= final.end
    await stream.aclose()


async def test_silence_finalizes_quickly_without_inference(
    whisper_engine: WhisperEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_inference(*args: object) -> str:
        raise AssertionError("silence must not reach Whisper")

    monkeypatch.setattr(whisper_engine, "transcribe", no_inference)
    stream = await whisper_engine.stt().connect()
    results = stream.transcripts()
    await send(stream, ulaw_silence(8000 * 2))
    started = time.perf_counter()
    await stream.finalize()
    result = await next_result(results, limit=1.0)
    assert result.text == "" and result.is_final
    assert time.perf_counter() - started < 0.2
    await stream.aclose()


async def test_interim_arrives_while_caller_keeps_talking(
    whisper_engine: WhisperEngine, engine_question_clip: SpeechClip
) -> None:
    stream = await whisper_engine.stt().connect()
    results = stream.transcripts()
    await send(stream, engine_question_clip.padded(before=0.2, after=0.0)[: 8000 * 1])
    interim = await next_result(results)
    assert not interim.is_final and not interim.speech_final and interim.text
    await stream.aclose()


async def test_final_reuses_an_interim_that_already_heard_everything(
    whisper_engine: WhisperEngine,
    engine_question_clip: SpeechClip,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    real = whisper_engine.transcribe

    def counting(audio: npt.NDArray[np.float32], language: str) -> str:
        calls.append(audio.size)
        return real(audio, language)

    monkeypatch.setattr(whisper_engine, "transcribe", counting)
    stream = await whisper_engine.stt().connect()
    # One big delivery: the interim it starts covers all the speech, trailing silence too.
    await stream.send_audio(engine_question_clip.padded(after=0.2))
    await send(stream, ulaw_silence(1600))  # more silence: nothing new to hear
    await stream.finalize()
    final = await next_result(stream.transcripts())
    assert final.is_final and "weather" in final.text.lower()
    assert len(calls) == 1
    await stream.aclose()


async def test_aclose_ends_the_iterator(whisper_engine: WhisperEngine) -> None:
    stream = await whisper_engine.stt().connect()

    async def drain() -> list[Transcript]:
        return [t async for t in stream.transcripts()]

    reader = asyncio.create_task(drain())
    await asyncio.sleep(0.05)
    await stream.aclose()
    assert await asyncio.wait_for(reader, 1.0) == []
    await stream.send_audio(b"\xff" * 160)  # after close: ignored, no error
    await stream.finalize()


async def test_buffer_keeps_the_newest_30_seconds(whisper_engine: WhisperEngine) -> None:
    stream = await whisper_engine.stt().connect()
    await send(stream, ulaw_silence(8000 * 31))
    assert stream.dropped_samples == 8000
    await stream.finalize()
    result = await next_result(stream.transcripts(), limit=1.0)
    assert result.start == pytest.approx(31.0)  # times count the dropped audio too
    await stream.aclose()


def test_hallucinations_are_stripped_only_from_near_silence() -> None:
    assert is_hallucination("Thank you.", peak_dbfs=-50.0)
    assert is_hallucination(" you", peak_dbfs=-40.0)
    assert not is_hallucination("Thank you.", peak_dbfs=-12.0)  # a caller really said it
    assert not is_hallucination("What is the weather?", peak_dbfs=-50.0)


def test_unsupported_language_is_a_config_error(whisper_engine: WhisperEngine) -> None:
    with pytest.raises(ConfigError, match="language"):
        whisper_engine.stt(language="xx")
    assert whisper_engine.stt().name == "faster-whisper"


def test_corrupt_whisper_model_is_a_config_error(
    tmp_path: Path, whisper_cache_dir: Path, whisper_engine: WhisperEngine
) -> None:
    broken = tmp_path / "whisper-base"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "vocabulary.json"):
        shutil.copyfile(whisper_cache_dir / "whisper-base" / name, broken / name)
    (broken / "model.bin").write_bytes(b"\x00" * 4096)
    with pytest.raises(ConfigError, match="Whisper model"):
        WhisperEngine(broken, whisper_engine.executor)
