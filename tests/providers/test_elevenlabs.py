"""ElevenLabsTts against the loopback multi-context fake: one warm socket, contexts, barge-in."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from benchmarks.fakes.elevenlabs import ElevenLabsFake, ElevenLabsFakeConfig
from benchmarks.fakes.server import Fault, serve, ws_url
from voice.errors import ProviderError, ProviderProtocolError, ProviderTimeout
from voice.providers.elevenlabs import ElevenLabsTts, words_from_alignment
from voice.providers.options import ElevenLabsVoiceSettings
from voice.types import TtsChunk, WordTiming

pytestmark = pytest.mark.timeout(30)

KEY = "xi-test"
VOICE = "voice-123"
SECONDS_PER_CHAR = 0.02
LONG = " ".join(f"This is sentence number {i} of a long answer." for i in range(12))


@asynccontextmanager
async def elevenlabs(**config: Any) -> AsyncIterator[tuple[ElevenLabsFake, str]]:
    config.setdefault("first_byte_latency", 0.03)
    config.setdefault("seconds_per_char", SECONDS_PER_CHAR)
    config.setdefault("realtime_factor", 8.0)
    fake = ElevenLabsFake(ElevenLabsFakeConfig(api_key=KEY, **config))
    async with serve(fake.app) as base:
        yield fake, ws_url(base)


async def collect(tts: ElevenLabsTts, text: str) -> list[tuple[float, TtsChunk]]:
    loop = asyncio.get_running_loop()
    return [(loop.time(), chunk) async for chunk in tts.synthesize(text)]


def audio_of(chunks: list[tuple[float, TtsChunk]]) -> bytes:
    return b"".join(c.audio for _, c in chunks)


def words_of(chunks: list[tuple[float, TtsChunk]]) -> list[WordTiming]:
    return [w for _, c in chunks for w in c.words]


async def test_audio_streams_with_monotonic_word_timings() -> None:
    settings = ElevenLabsVoiceSettings(stability=0.4, similarity_boost=0.8)
    async with elevenlabs() as (fake, base), asyncio.timeout(10):
        tts = ElevenLabsTts(KEY, VOICE, base_url=base, voice_settings=settings)
        chunks = await collect(tts, LONG)
        await tts.aclose()

    audio = audio_of(chunks)
    context = fake.contexts[0]
    assert audio == bytes(context.audio)  # ulaw_8000 passed through untouched
    assert len(audio) == pytest.approx(len(LONG) * SECONDS_PER_CHAR * 8000, rel=0.05)
    assert len(chunks) > 5
    assert chunks[-1][0] - chunks[0][0] > 0.2, "the first chunk waited for the whole answer"
    words = words_of(chunks)
    assert [w.word for w in words] == LONG.split()
    assert all(w.end > w.start for w in words)
    assert all(a.end <= b.start + 1e-9 for a, b in zip(words, words[1:], strict=False))
    assert words[-1].end == pytest.approx(len(audio) / 8000, abs=0.05)
    # protocol: init with one space and the voice settings, text + flush, then close_context
    sent = [m for m in fake.messages if m.get("context_id") == context.id]
    assert sent[0] == {"text": " ", "context_id": context.id, "voice_settings": settings.to_json()}
    assert sent[1] == {"text": LONG + " ", "context_id": context.id, "flush": True}
    assert sent[2] == {"context_id": context.id, "close_context": True}
    assert fake.query[0] == {
        "model_id": "eleven_flash_v2_5",
        "output_format": "ulaw_8000",
        "sync_alignment": "true",
    }


async def test_sequential_phrases_reuse_one_warm_socket() -> None:
    async with elevenlabs() as (fake, base), asyncio.timeout(10):
        tts = ElevenLabsTts(KEY, VOICE, base_url=base)
        first = await collect(tts, "Hello there.")
        second = await collect(tts, "How can I help you today?")
        await tts.aclose()

    assert fake.connections == 1 and tts.connections == 1
    one, two = fake.contexts
    assert one.id != two.id
    assert audio_of(first) == bytes(one.audio)
    assert audio_of(second) == bytes(two.audio)
    assert [w.word for w in words_of(second)] == ["How", "can", "I", "help", "you", "today?"]
    assert words_of(second)[0].start == 0.0  # timings restart with each synthesize()


async def test_concurrent_phrases_are_demultiplexed_by_context() -> None:
    texts = [LONG, "A short one, meanwhile.", "And a third phrase for good measure."]
    async with elevenlabs() as (fake, base), asyncio.timeout(10):
        tts = ElevenLabsTts(KEY, VOICE, base_url=base)
        results = await asyncio.gather(*(collect(tts, t) for t in texts))
        await tts.aclose()

    assert fake.connections == 1
    for text, chunks in zip(texts, results, strict=True):
        record = next(c for c in fake.contexts if c.spoken.strip() == text)
        assert audio_of(chunks) == bytes(record.audio)


async def test_barge_in_closes_the_context_and_drops_its_late_audio() -> None:
    async with elevenlabs(realtime_factor=4.0) as (fake, base), asyncio.timeout(10):
        tts = ElevenLabsTts(KEY, VOICE, base_url=base)
        stream = tts.synthesize(LONG)
        first = await anext(stream)
        await stream.aclose()  # the caller barged in
        reply = await collect(tts, "Sorry, go ahead.")
        await asyncio.sleep(0.3)  # let the abandoned context trickle and finish
        await tts.aclose()

    interrupted, answer = fake.contexts
    assert interrupted.closed and interrupted.id in fake.closed_contexts
    assert interrupted.audio_at_close is not None
    assert interrupted.audio_at_close < len(interrupted.audio)  # closed while still generating
    assert len(interrupted.audio) > len(first.audio)  # more audio came after we stopped...
    assert tts.dropped_chunks > 0  # ...and was dropped, not delivered
    assert audio_of(reply) == bytes(answer.audio)
    assert fake.connections == 1


async def test_a_dropped_idle_socket_is_reopened_for_the_next_phrase() -> None:
    config = {"fault": Fault.DROP, "fault_count": 1, "fault_after": 0.3}
    reported: list[ProviderError] = []
    async with elevenlabs(**config) as (fake, base), asyncio.timeout(10):
        tts = ElevenLabsTts(KEY, VOICE, base_url=base, on_reconnect=reported.append)
        await collect(tts, "Hi.")
        await asyncio.sleep(0.5)  # the server drops the idle socket meanwhile
        assert reported == []  # reported with the socket that replaces it
        again = await collect(tts, "Still here.")
        await collect(tts, "And still.")
        await tts.aclose()
    assert fake.connections == 2 and tts.connections == 2
    assert audio_of(again) == bytes(fake.contexts[-2].audio)
    (report,) = reported  # once: the third phrase reused the new socket
    assert report.retryable and report.provider == "elevenlabs"
    assert str(report) == (
        "elevenlabs: connection lost without a close frame; reconnected while idle"
    )


async def test_a_drop_mid_phrase_fails_that_phrase_and_is_not_reported_again() -> None:
    # the phrase in flight gets the (retryable) error: its caller reports it; the socket that
    # replaces it must not be reported a second time
    config = {"fault": Fault.DROP, "fault_count": 1, "fault_after": 0.1, "realtime_factor": 2.0}
    reported: list[ProviderError] = []
    async with elevenlabs(**config) as (fake, base), asyncio.timeout(10):
        tts = ElevenLabsTts(KEY, VOICE, base_url=base, on_reconnect=reported.append)
        with pytest.raises(ProviderError) as caught:
            await collect(tts, LONG)
        again = await collect(tts, "Still here.")
        await tts.aclose()
    assert caught.value.retryable and audio_of(again)
    assert fake.connections == 2 and reported == []


@pytest.mark.parametrize("code", [1000, 1008])  # 1008: how ElevenLabs ends an idle socket
async def test_an_idle_socket_the_server_closes_on_purpose_is_not_a_failure(code: int) -> None:
    config = {"fault": Fault.BAD_CLOSE, "fault_count": 1, "fault_after": 0.3}
    reported: list[ProviderError] = []
    async with elevenlabs(**config, bad_close_code=code) as (fake, base), asyncio.timeout(10):
        tts = ElevenLabsTts(KEY, VOICE, base_url=base, on_reconnect=reported.append)
        await collect(tts, "Hi.")
        await asyncio.sleep(0.5)  # the server closes the idle socket meanwhile
        await collect(tts, "Still here.")
        await tts.aclose()
    assert fake.connections == 2 and reported == []


async def test_aclose_cancels_the_reader_and_refuses_new_phrases() -> None:
    async with elevenlabs() as (_, base), asyncio.timeout(10):
        tts = ElevenLabsTts(KEY, VOICE, base_url=base)
        await collect(tts, "Hi.")
        assert [t for t in asyncio.all_tasks() if t.get_name() == "elevenlabs-reader"]
        await tts.aclose()
        assert not [t for t in asyncio.all_tasks() if t.get_name() == "elevenlabs-reader"]
        with pytest.raises(ProviderError) as caught:
            await collect(tts, "Hello?")
    assert not caught.value.retryable


@pytest.mark.parametrize(
    ("fault", "error", "retryable"),
    [
        (Fault.UNAUTHORIZED, ProviderError, False),
        (Fault.RATE_LIMITED, ProviderError, True),
        (Fault.SERVER_ERROR, ProviderError, True),
        (Fault.STALL, ProviderTimeout, True),
        (Fault.GARBAGE, ProviderProtocolError, False),
        (Fault.DROP, ProviderError, True),
        (Fault.BAD_CLOSE, ProviderError, True),
    ],
)
async def test_faults_map_to_provider_errors(
    fault: Fault, error: type[ProviderError], retryable: bool
) -> None:
    # mid-stream faults strike 0.1 s after connecting, once audio is flowing
    after = 0.1 if fault in (Fault.DROP, Fault.BAD_CLOSE) else None
    config = {"fault": fault, "fault_after": after, "realtime_factor": 2.0}
    async with elevenlabs(**config) as (_, base):
        tts = ElevenLabsTts(KEY, VOICE, base_url=base, first_byte_timeout=0.4)
        loop = asyncio.get_running_loop()
        started = loop.time()
        got: list[TtsChunk] = []
        async with asyncio.timeout(10):
            with pytest.raises(ProviderError) as caught:
                async for chunk in tts.synthesize(LONG):
                    got.append(chunk)
            await tts.aclose()
    assert type(caught.value) is error
    assert caught.value.retryable is retryable
    assert loop.time() - started < 2.0
    if after is not None:
        assert got, "the fault was meant to strike mid-stream"


async def test_wrong_key_is_not_retryable() -> None:
    async with elevenlabs() as (fake, base), asyncio.timeout(5):
        tts = ElevenLabsTts("wrong", VOICE, base_url=base)
        with pytest.raises(ProviderError) as caught:
            await collect(tts, "Hello.")
        await tts.aclose()
    assert not caught.value.retryable
    assert fake.rejected == [401]


def test_words_from_alignment_groups_characters() -> None:
    alignment = {
        "chars": list("Hi there. "),
        "charStartTimesMs": [0, 50, 100, 150, 200, 250, 300, 350, 400, 450],
        "charDurationsMs": [50] * 10,
    }
    assert words_from_alignment(alignment, 1.0) == (
        WordTiming("Hi", 1.0, 1.1),
        WordTiming("there.", 1.15, 1.45),
    )
    with pytest.raises(ValueError):
        words_from_alignment({**alignment, "charDurationsMs": [50]}, 0.0)
