"""ElevenLabsTts.synthesize_stream and the fake's text buffering, over loopback websockets.

Assertions are on what the fake received and when it generated, in text pieces: never on wall
time, so they hold on a loaded machine.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import websockets

from benchmarks.fakes.elevenlabs import (
    DEFAULT_CHUNK_SCHEDULE,
    ElevenLabsFake,
    ElevenLabsFakeConfig,
    Generation,
)
from benchmarks.fakes.server import serve, ws_url
from voice.chunking import WordChunker
from voice.providers.elevenlabs import STREAM_CHUNK_SCHEDULE, ElevenLabsTts, StreamPlan
from voice.text_feed import TextFeed
from voice.types import TtsChunk

pytestmark = pytest.mark.timeout(30)

KEY = "xi-test"
SECONDS_PER_CHAR = 0.02
ORDINARY = "Sure, I can help you with that order right away."
PATH = "/v1/text-to-speech/v/multi-stream-input?model_id=m&output_format=ulaw_8000"
LONG = " ".join(f"This is sentence number {i} of a long answer." for i in range(12))


@asynccontextmanager
async def elevenlabs(**config: Any) -> AsyncIterator[tuple[ElevenLabsFake, ElevenLabsTts]]:
    config.setdefault("first_byte_latency", 0.03)
    config.setdefault("seconds_per_char", SECONDS_PER_CHAR)
    config.setdefault("realtime_factor", 8.0)
    fake = ElevenLabsFake(ElevenLabsFakeConfig(api_key=KEY, **config))
    async with serve(fake.app) as base:
        tts = ElevenLabsTts(KEY, "voice-1", base_url=ws_url(base))
        try:
            yield fake, tts
        finally:
            await tts.aclose()


def words(text: str) -> list[str]:
    chunker = WordChunker()
    pieces = [p for w in text.split(" ") if (p := chunker.push(w + " "))]
    return pieces + ([rest] if (rest := chunker.flush()) else [])


def context_messages(fake: ElevenLabsFake, context_id: str) -> list[dict[str, Any]]:
    return [m for m in fake.messages if m.get("context_id") == context_id]


async def test_audio_starts_on_the_first_words_before_the_clause_is_written() -> None:
    pieces = words(ORDINARY)
    feed = TextFeed()
    for piece in pieces[:5]:  # "Sure, I can help you " — the clause is not finished
        feed.push(piece)
    chunks: list[TtsChunk] = []
    pushed_at_first_audio = None
    async with elevenlabs() as (fake, tts), asyncio.timeout(10):
        async for chunk in tts.synthesize_stream(feed):
            if pushed_at_first_audio is None:
                pushed_at_first_audio = len(feed.pieces)
                for piece in pieces[5:]:  # the LLM goes on only now
                    feed.push(piece)
                feed.close()
            chunks.append(chunk)

    # the first audio came while the fake held only the first five words
    assert pushed_at_first_audio == 5
    (context,) = fake.contexts
    first, *rest = context.generations
    assert first == Generation("Sure, I can help ", "flush", "Sure, I can help ")
    assert [g.trigger for g in rest] == ["flush"]  # the rest at the end (under 50 characters)
    assert context.spoken == ORDINARY + " "
    # wire: init with the chunk schedule, one message per word (each ending in one space)
    sent = context_messages(fake, context.id)
    assert sent[0]["text"] == " " and sent[0]["generation_config"] == {
        "chunk_length_schedule": list(STREAM_CHUNK_SCHEDULE)
    }
    texts = [m["text"] for m in sent[1:] if "text" in m]
    assert texts == pieces and all(t.endswith(" ") and not t.endswith("  ") for t in texts)
    assert [i for i, m in enumerate(sent) if m.get("flush")] == [4, len(sent) - 2]
    assert sent[-1] == {"context_id": context.id, "close_context": True}
    # audio for all of it, word timings in order across the two generations
    audio = b"".join(c.audio for c in chunks)
    assert audio == bytes(context.audio)
    assert len(audio) == pytest.approx(len(ORDINARY) * SECONDS_PER_CHAR * 8000, rel=0.05)
    timed = [w for c in chunks for w in c.words]
    assert [w.word for w in timed] == ORDINARY.split()
    assert all(a.end <= b.start + 1e-9 for a, b in zip(timed, timed[1:], strict=False))
    assert timed[-1].end == pytest.approx(len(audio) / 8000, abs=0.05)


async def test_after_the_first_words_the_service_schedule_generates() -> None:
    feed = TextFeed()
    for piece in words(LONG):
        feed.push(piece)
    feed.close()
    async with elevenlabs() as (fake, tts), asyncio.timeout(10):
        chunks = [c async for c in tts.synthesize_stream(feed)]
    (context,) = fake.contexts
    triggers = [g.trigger for g in context.generations]
    assert triggers[0] == "flush" and context.generations[0].text == "This is sentence number "
    assert set(triggers[1:-1]) == {"schedule"} and triggers[-1] in ("schedule", "flush")
    schedule = list(STREAM_CHUNK_SCHEDULE)
    for n, generation in enumerate(context.generations[1:-1], start=1):
        assert len(generation.text) >= schedule[min(n, len(schedule) - 1)]
    assert "".join(g.text for g in context.generations) == LONG + " "
    timed = [w for c in chunks for w in c.words]
    assert [w.word for w in timed] == LONG.split()
    assert all(a.end <= b.start + 1e-9 for a, b in zip(timed, timed[1:], strict=False))


async def test_barge_in_mid_stream_closes_the_context_and_drops_late_audio() -> None:
    feed = TextFeed()
    for piece in words(LONG)[:30]:
        feed.push(piece)  # the LLM is still writing: the feed stays open
    async with elevenlabs(realtime_factor=1.0) as (fake, tts), asyncio.timeout(10):
        stream = tts.synthesize_stream(feed)
        first = await anext(stream)
        assert first.audio
        await stream.aclose()  # the consumer stops (barge-in)
        (context,) = fake.contexts
        for _ in range(200):
            if context.final_sent:
                break
            await asyncio.sleep(0.02)
        assert context.closed and context.final_sent
        assert context.audio_at_close is not None and context.audio_at_close < len(context.audio)
        assert tts.dropped_chunks > 0
        # the feed is intact for another reader, and the socket serves the next context
        feed.close()
        again = [c async for c in tts.synthesize_stream(feed)]
    assert (
        len(fake.contexts) == 2
        and fake.contexts[1].spoken.split() == " ".join(words(LONG)[:30]).split()
    )
    assert sum(len(c.audio) for c in again) == len(fake.contexts[1].audio)
    assert tts.connections == 1


async def test_a_round_without_words_opens_no_context() -> None:
    feed = TextFeed()
    feed.close()
    async with elevenlabs() as (fake, tts), asyncio.timeout(10):
        assert [c async for c in tts.synthesize_stream(feed)] == []
    assert fake.contexts == [] and fake.connections == 0


def test_stream_plan_flushes_the_first_clause_or_the_first_words() -> None:
    plan = StreamPlan()
    assert [plan.add(p) for p in ("Sure, ", "I ", "can ", "help ", "you ")] == [
        False,  # a lone "Sure," is not worth saying alone
        False,
        False,
        True,  # four words
        False,  # then the service's schedule
    ]
    assert plan.finish() is True and plan.finish() is False
    clause = StreamPlan()
    assert [clause.add(p) for p in ("Hi ", "there, ", "Sam ")] == [False, True, False]
    short = StreamPlan()
    assert [short.add(p) for p in ("Hello. ",)] == [False]  # under 8 characters
    assert short.finish() is True


async def send_and_finish(url: str, messages: list[dict[str, Any]]) -> None:
    async with websockets.connect(url, additional_headers={"xi-api-key": KEY}) as ws:
        for message in messages:
            await ws.send(json.dumps(message))
        await ws.send(json.dumps({"context_id": "c", "close_context": True}))
        async for raw in ws:
            if json.loads(raw).get("isFinal"):
                break


async def test_the_fake_buffers_streamed_words_until_its_schedule_or_a_flush() -> None:
    fake = ElevenLabsFake(ElevenLabsFakeConfig(api_key=KEY, first_byte_latency=0.0))
    sentence = "Sure, I can help you with that order right away. "  # 50 characters
    async with serve(fake.app) as base, asyncio.timeout(10):
        url = ws_url(base) + PATH
        init = {"text": " ", "context_id": "c"}  # no generation_config: the default schedule
        per_word = [{"text": w + " ", "context_id": "c"} for w in (sentence * 3).split()]
        await send_and_finish(url, [init, *per_word, {"context_id": "c", "flush": True}])
    (context,) = fake.contexts
    first, second = context.generations
    # nothing for the first two sentences: 120 characters before the first generation
    assert first.trigger == "schedule" and len(first.text) >= DEFAULT_CHUNK_SCHEDULE[0]
    assert len(first.received) - len(first.text) == 0 and len(first.text) < 120 + 10
    assert second.trigger == "flush" and first.text + second.text == sentence * 3


async def test_the_fake_refuses_a_schedule_the_service_would() -> None:
    fake = ElevenLabsFake(ElevenLabsFakeConfig(api_key=KEY))
    async with serve(fake.app) as base, asyncio.timeout(10):
        url = ws_url(base) + PATH
        async with websockets.connect(url, additional_headers={"xi-api-key": KEY}) as ws:
            bad = {"chunk_length_schedule": [20]}
            await ws.send(json.dumps({"text": " ", "context_id": "c", "generation_config": bad}))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
