"""The cloud adapters in a browser call's format (16 kHz PCM16), against the loopback fakes that
speak the real wire format: Deepgram is told `linear16`/16000 and gets the PCM byte for byte,
ElevenLabs is asked for `pcm_16000`, OpenAI's 24 kHz PCM is resampled to 16 kHz."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest

from benchmarks.fakes.deepgram import DeepgramFake, DeepgramFakeConfig
from benchmarks.fakes.elevenlabs import ElevenLabsFake, ElevenLabsFakeConfig
from benchmarks.fakes.openai import SPEECH_RATE, OpenAiFake, OpenAiFakeConfig
from benchmarks.fakes.server import Fault, serve, speech_like_pcm16, ws_url
from media.audio_format import MULAW_8K, PCM16_16K, AudioFormat
from media.resample import resample_once
from voice.errors import ConfigError, ProviderError
from voice.ports import in_format
from voice.providers.deepgram import DeepgramStt
from voice.providers.elevenlabs import ElevenLabsTts
from voice.providers.openai_tts import OpenAiTts
from voice.providers.options import ReconnectPolicy
from voice.testing import tone
from voice.types import Transcript

pytestmark = pytest.mark.timeout(30)

KEY = "test-key"


@asynccontextmanager
async def fake_server(app: Any) -> AsyncIterator[str]:
    async with serve(app) as base:
        yield base


async def test_deepgram_is_told_linear16_at_16_khz_and_gets_the_pcm_unchanged() -> None:
    fake = DeepgramFake(DeepgramFakeConfig(api_key=KEY, script=["hello from the browser"]))
    phone = DeepgramStt(KEY, base_url="ws://unused", endpointing_ms=100)
    stt = phone.for_format(PCM16_16K)
    assert phone.audio_format == MULAW_8K and "encoding=mulaw&sample_rate=8000" in phone.url
    assert "encoding=linear16&sample_rate=16000" in stt.url
    assert stt.batch_bytes == 1280  # 40 ms of PCM16 16 kHz
    audio = PCM16_16K.silence(9600) + tone(1.2, audio_format=PCM16_16K) + PCM16_16K.silence(19200)
    async with fake_server(fake.app) as base, asyncio.timeout(10):
        stt = DeepgramStt(KEY, base_url=ws_url(base), endpointing_ms=100).for_format(PCM16_16K)
        stream = await stt.connect()
        results: list[Transcript] = []
        final_arrived = asyncio.Event()

        async def read() -> None:
            async for result in stream.transcripts():
                results.append(result)
                if result.is_final and result.text:
                    final_arrived.set()

        reader = asyncio.create_task(read())
        for i in range(0, len(audio), PCM16_16K.frame_bytes):
            await stream.send_audio(audio[i : i + PCM16_16K.frame_bytes])
            await asyncio.sleep(0.005)
        await final_arrived.wait()
        await stream.aclose()
        await reader
    record = fake.connections[0]
    assert (record.params["encoding"], record.params["sample_rate"]) == ("linear16", "16000")
    assert record.audio_bytes == len(audio)  # PCM passed through byte for byte
    (final,) = [r for r in results if r.is_final and r.text]
    assert final.text == "hello from the browser"
    # Times are seconds of audio, not bytes: the speech is at 0.3–1.5 s.
    assert final.start == pytest.approx(0.3, abs=0.03)
    assert final.end == pytest.approx(1.5, abs=0.03)


async def test_a_deepgram_drop_at_16_khz_replays_on_one_timeline() -> None:
    """The replay buffer and the timeline count PCM16 16 kHz bytes as seconds correctly."""
    script = ["alpha bravo", "charlie delta", "echo foxtrot"]
    # segments at 0-0.6, 1.1-1.7, 2.2-2.8 s; the first socket drops at 1.4 s, mid "charlie"
    fake = DeepgramFake(
        DeepgramFakeConfig(
            api_key=KEY, script=script, fault=Fault.DROP, fault_count=1, fault_after_audio=1.4
        )
    )
    speech = tone(0.6, audio_format=PCM16_16K) + PCM16_16K.silence(PCM16_16K.bytes_for(0.5))
    reported: list[ProviderError] = []
    async with fake_server(fake.app) as base, asyncio.timeout(15):
        stt = DeepgramStt(
            KEY,
            base_url=ws_url(base),
            endpointing_ms=100,
            reconnect=ReconnectPolicy(backoff=0.02),
            on_reconnect=reported.append,
        ).for_format(PCM16_16K)
        stream = await stt.connect()
        finals: list[Transcript] = []
        three = asyncio.Event()

        async def read() -> None:
            async for result in stream.transcripts():
                if result.is_final and result.text:
                    finals.append(result)
                    if len(finals) == 3:
                        three.set()

        reader = asyncio.create_task(read())
        audio = speech * 3
        for i in range(0, len(audio), PCM16_16K.frame_bytes):
            await stream.send_audio(audio[i : i + PCM16_16K.frame_bytes])
            await asyncio.sleep(0.005)
        await three.wait()
        await stream.aclose()
        await reader
    assert [t.text for t in finals] == script
    assert stream.reconnects == 1 and len(fake.connections) == 2
    assert fake.connections[1].params["encoding"] == "linear16"
    (report,) = reported
    assert "replayed" in str(report)
    assert [round(t.start, 1) for t in finals] == [0.0, 1.1, 2.2]


async def test_elevenlabs_is_asked_for_pcm_16000_on_a_socket_of_its_own() -> None:
    fake = ElevenLabsFake(
        ElevenLabsFakeConfig(
            api_key=KEY, first_byte_latency=0.03, seconds_per_char=0.02, realtime_factor=8.0
        )
    )
    text = "Hello from a wideband voice."
    async with fake_server(fake.app) as base, asyncio.timeout(10):
        phone = ElevenLabsTts(KEY, "voice-1", base_url=ws_url(base))
        browser = phone.for_format(PCM16_16K)
        assert browser is not phone and phone.for_format(PCM16_16K) is browser
        assert browser.voice_key == phone.voice_key  # one breaker, one cache entry per format
        chunks = [c async for c in browser.synthesize(text)]
        await phone.aclose()  # closes the sibling's socket too
        with pytest.raises(Exception, match="aclose"):
            _ = [c async for c in browser.synthesize("again")]
    assert [q["output_format"] for q in fake.query] == ["pcm_16000"]
    audio = b"".join(c.audio for c in chunks)
    assert audio == bytes(fake.contexts[0].audio)  # passed through untouched
    assert len(audio) % 2 == 0
    seconds = PCM16_16K.seconds(len(audio))
    assert seconds == pytest.approx(len(text) * 0.02, rel=0.05)
    words = [w for c in chunks for w in c.words]
    assert words[-1].end == pytest.approx(seconds, abs=0.1)  # timed in seconds, not bytes


async def test_openai_pcm_is_resampled_to_16_khz() -> None:
    seconds_per_char = 0.05
    text = "Thanks for calling, how can I help?"
    fake = OpenAiFake(
        OpenAiFakeConfig(
            api_key=KEY, speech_first_byte_latency=0.02, speech_seconds_per_char=seconds_per_char
        )
    )
    async with fake_server(fake.app) as base, asyncio.timeout(10):
        phone = OpenAiTts(KEY, base_url=f"{base}/v1")
        tts = phone.for_format(PCM16_16K)
        audio = b"".join([c.audio async for c in tts.synthesize(text)])
        await phone.aclose()  # the HTTP client is the original's
    assert fake.speech_requests[0]["response_format"] == "pcm"
    got = np.frombuffer(audio, "<i2").astype(float)
    assert len(got) == pytest.approx(len(text) * seconds_per_char * 16000, rel=0.01)
    source = speech_like_pcm16(len(text) * seconds_per_char, SPEECH_RATE)
    want = np.frombuffer(resample_once(source, SPEECH_RATE, 16000), "<i2").astype(float)
    n = min(len(got), len(want))
    assert np.corrcoef(got[:n], want[:n])[0, 1] > 0.98


def test_engines_without_a_format_are_telephone_only() -> None:
    class PhoneOnly:
        name = "old-stt"

    engine = PhoneOnly()
    assert in_format(engine, MULAW_8K) is engine
    with pytest.raises(ConfigError, match="old-stt"):
        in_format(engine, PCM16_16K)


@pytest.mark.parametrize("fmt", [AudioFormat("pcm16", 12000), AudioFormat("mulaw", 16000)])
def test_elevenlabs_refuses_a_format_it_has_none_for(fmt: AudioFormat) -> None:
    with pytest.raises(ConfigError):
        ElevenLabsTts(KEY, "voice-1").for_format(fmt)
