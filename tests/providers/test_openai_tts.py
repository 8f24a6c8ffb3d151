"""OpenAiTts against the loopback speech fake: streamed 24 kHz PCM → 8 kHz μ-law, faults."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest

from benchmarks.fakes.openai import SPEECH_RATE, OpenAiFake, OpenAiFakeConfig
from benchmarks.fakes.server import Fault, serve, speech_like_pcm16
from media.g711 import ulaw_to_pcm16
from media.resample import resample_once
from voice.errors import ProviderError, ProviderTimeout
from voice.providers.openai_tts import OpenAiTts
from voice.types import TtsChunk

pytestmark = pytest.mark.timeout(30)

KEY = "sk-test"
TEXT = "Thanks for calling. Your table for four is booked for seven tonight."
SECONDS_PER_CHAR = 0.05


@asynccontextmanager
async def speech(**config: Any) -> AsyncIterator[tuple[OpenAiFake, str]]:
    config.setdefault("speech_first_byte_latency", 0.05)
    config.setdefault("speech_seconds_per_char", SECONDS_PER_CHAR)
    fake = OpenAiFake(OpenAiFakeConfig(api_key=KEY, **config))
    async with serve(fake.app) as base:
        yield fake, f"{base}/v1"


async def run(tts: OpenAiTts, text: str) -> list[tuple[float, TtsChunk]]:
    loop = asyncio.get_running_loop()
    try:
        return [(loop.time(), chunk) async for chunk in tts.synthesize(text)]
    finally:
        await tts.aclose()


async def test_audio_streams_at_8khz_with_text_proportional_length() -> None:
    async with speech(speech_realtime_factor=4.0) as (fake, base):
        tts = OpenAiTts(KEY, base_url=base, voice="coral", speed=1.0)
        async with asyncio.timeout(10):
            chunks = await run(tts, TEXT)

    audio = b"".join(c.audio for _, c in chunks)
    expected = len(TEXT) * SECONDS_PER_CHAR * 8000  # μ-law: one byte per 8 kHz sample
    assert len(audio) == pytest.approx(expected, rel=0.01)
    assert len(chunks) > 5
    assert chunks[-1][0] - chunks[0][0] > 0.3, "the first chunk waited for the whole answer"
    assert fake.speech_requests == [
        {
            "model": "gpt-4o-mini-tts",
            "input": TEXT,
            "voice": "coral",
            "response_format": "pcm",
            "speed": 1.0,
        }
    ]


async def test_reads_split_mid_sample_do_not_corrupt_the_audio() -> None:
    # the fake writes 4801-byte pieces, so every other read ends inside a sample
    async with speech(speech_realtime_factor=50.0, speech_chunk_bytes=4801) as (_, base):
        async with asyncio.timeout(10):
            chunks = await run(OpenAiTts(KEY, base_url=base), TEXT)

    got = np.frombuffer(ulaw_to_pcm16(b"".join(c.audio for _, c in chunks)), "<i2").astype(float)
    source = speech_like_pcm16(len(TEXT) * SECONDS_PER_CHAR, SPEECH_RATE)
    want = np.frombuffer(resample_once(source, SPEECH_RATE, 8000), "<i2").astype(float)
    n = min(len(got), len(want))
    correlation = np.corrcoef(got[:n], want[:n])[0, 1]
    assert correlation > 0.98


def test_voice_key_names_model_voice_and_speed() -> None:
    assert (
        OpenAiTts(KEY, voice="sage", speed=1.25).voice_key == "openai-tts/gpt-4o-mini-tts/sage/1.25"
    )
    assert OpenAiTts(KEY).voice_key != OpenAiTts(KEY, instructions="Speak warmly.").voice_key


@pytest.mark.parametrize(
    ("fault", "error", "retryable"),
    [
        (Fault.UNAUTHORIZED, ProviderError, False),
        (Fault.RATE_LIMITED, ProviderError, True),
        (Fault.SERVER_ERROR, ProviderError, True),
        (Fault.STALL, ProviderTimeout, True),
        (Fault.DROP, ProviderError, True),
    ],
)
async def test_faults_map_to_provider_errors(
    fault: Fault, error: type[ProviderError], retryable: bool
) -> None:
    async with speech(speech_fault=fault) as (_, base):
        tts = OpenAiTts(KEY, base_url=base, first_byte_timeout=0.4)
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with asyncio.timeout(10):
            with pytest.raises(ProviderError) as caught:
                await run(tts, TEXT)
    assert type(caught.value) is error
    assert caught.value.retryable is retryable
    assert loop.time() - started < 2.0
    if fault is Fault.UNAUTHORIZED:
        # the status only: the provider's body goes to the log, not the call record
        assert "401" in str(caught.value) and "Incorrect API key" not in str(caught.value)
    if fault is Fault.STALL:
        assert isinstance(caught.value, ProviderTimeout) and caught.value.stage == "first_byte"
