"""Reply → TTS: streamed words for a streaming-input TTS (the ElevenLabs fake on 127.0.0.1),
whole clauses for a request-based one, failover that replays the same text, and barge-in.

Ordering is asserted on events (what the fake had received when audio came), not wall time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest

from benchmarks.fakes.elevenlabs import ElevenLabsFake, ElevenLabsFakeConfig
from benchmarks.fakes.server import Fault, serve, ws_url
from media.pacing import PlayoutTracker
from voice.assistant import Assistant
from voice.breaker import BreakerBoard
from voice.chunking import PhraseChunker
from voice.clock import MonotonicClock
from voice.errors import ProviderError
from voice.events import CallEvent
from voice.fallback import FallbackTts, candidates
from voice.history import Conversation
from voice.playout import Playing
from voice.ports import TextToSpeech
from voice.providers.elevenlabs import ElevenLabsTts
from voice.reply import Reply
from voice.reply_record import ReplyRecorder
from voice.tool_turns import ToolTurns
from voice.types import (
    SAMPLE_RATE,
    ChatMessage,
    EndedReason,
    LlmDelta,
    ToolCall,
    TtsChunk,
    WordTiming,
)

pytestmark = pytest.mark.timeout(30)

KEY = "xi-test"
SECONDS_PER_CHAR = 0.02
ORDINARY = "Sure, I can help you with that order right away. It ships today."
MESSAGES = [ChatMessage("user", "Can you help with my order?")]


def tokens(text: str) -> list[str]:
    """Roughly how an LLM splits text: words with their leading space, punctuation apart."""
    out: list[str] = []
    for i, word in enumerate(text.split(" ")):
        lead = " " if i else ""
        if word[-1:] in ",.":
            out += [lead + word[:-1], word[-1]]
        else:
            out.append(lead + word)
    return out


class Llm:
    """Streams `text` token by token; `gate(n)` may hold token n until it returns."""

    name = "scripted"

    def __init__(
        self,
        text: str,
        *,
        gate: Callable[[int], Any] | None = None,
        calls: Sequence[ToolCall] = (),
        per_token: float = 0.0,
        fail_after: int | None = None,
        cached: int | None = None,
    ) -> None:
        self.text, self.gate, self.calls = text, gate, tuple(calls)
        self.per_token, self.fail_after, self.cached = per_token, fail_after, cached
        self.finished_at: float | None = None
        self.closed = False

    async def stream(self, messages: Sequence[ChatMessage]) -> AsyncIterator[LlmDelta]:
        try:
            for n, token in enumerate(tokens(self.text) if self.text else []):
                if self.fail_after is not None and n == self.fail_after:
                    raise ProviderError("llm", "stream cut", retryable=True)
                if self.gate is not None:
                    await self.gate(n)
                if self.per_token:
                    await asyncio.sleep(self.per_token)
                yield LlmDelta(text=token)
            if self.calls:
                yield LlmDelta(tool_calls=self.calls)
            yield LlmDelta(
                prompt_tokens=12,
                completion_tokens=len(tokens(self.text)),
                cached_prompt_tokens=self.cached,
            )
            self.finished_at = asyncio.get_running_loop().time()
        finally:
            self.closed = True


class ClauseTts:
    """Request-based: records each request, a tone-free 'audio' of `SECONDS_PER_CHAR`/char."""

    name = "clauses"
    voice_key = "clauses/v1"

    def __init__(self) -> None:
        self.requests: list[str] = []

    async def synthesize(self, text: str) -> AsyncIterator[TtsChunk]:
        self.requests.append(text)
        await asyncio.sleep(0)
        audio = b"\xff" * int(len(text) * SECONDS_PER_CHAR * SAMPLE_RATE)
        words, position = [], 0
        for word in text.split():
            start = text.index(word, position)
            position = start + len(word)
            words.append(WordTiming(word, start * SECONDS_PER_CHAR, position * SECONDS_PER_CHAR))
        yield TtsChunk(audio, tuple(words))


@asynccontextmanager
async def elevenlabs(**config: Any) -> AsyncIterator[tuple[ElevenLabsFake, ElevenLabsTts]]:
    config.setdefault("first_byte_latency", 0.03)
    config.setdefault("seconds_per_char", SECONDS_PER_CHAR)
    config.setdefault("realtime_factor", 8.0)
    fake = ElevenLabsFake(ElevenLabsFakeConfig(api_key=KEY, **config))
    async with serve(fake.app) as base:
        tts = ElevenLabsTts(KEY, "voice-1", base_url=ws_url(base), first_byte_timeout=2.0)
        try:
            yield fake, tts
        finally:
            await tts.aclose()


async def drain(reply: Reply, heard: asyncio.Event | None = None) -> bytes:
    audio = b""
    while (chunk := await reply.audio.get()) is not None:
        audio += chunk
        if heard is not None:
            heard.set()
    return audio


async def produce(
    reply: Reply, llm: Llm, tts: TextToSpeech, heard: asyncio.Event | None = None
) -> bytes:
    drained = asyncio.create_task(drain(reply, heard))
    await reply.produce(llm, tts, MESSAGES)
    return await drained


def clauses(text: str) -> list[str]:
    chunker = PhraseChunker()
    phrases = chunker.push(text)
    rest = chunker.flush()
    return phrases + ([rest] if rest else [])


async def test_streaming_tts_speaks_from_the_first_words_not_the_first_clause() -> None:
    reply = Reply(1, "Can you help with my order?", MonotonicClock())
    clause_end = tokens(ORDINARY).index(".")
    heard = asyncio.Event()

    async def gate(n: int) -> None:
        # The LLM writes on past the first words only once the caller hears something: with
        # clause chunking this would never finish.
        if n == 6:
            await heard.wait()

    llm = Llm(ORDINARY, gate=gate)
    async with elevenlabs() as (fake, tts), asyncio.timeout(10):
        audio = await produce(reply, llm, tts, heard)
    assert 6 < clause_end
    context = fake.contexts[0]
    assert context.generations[0].received == "Sure, I can help "
    assert reply.text == ORDINARY and reply.spoken_text == ORDINARY
    assert context.spoken == ORDINARY + " "
    timings = reply.timings
    assert timings.llm_start is not None and timings.llm_first_token is not None
    assert timings.tts_first_request is not None and timings.tts_first_audio is not None
    assert llm.finished_at is not None
    assert timings.llm_first_token <= timings.tts_first_request < timings.tts_first_audio
    assert timings.tts_first_audio < llm.finished_at  # audio before the LLM was done
    assert timings.completion_tokens == len(tokens(ORDINARY))
    assert [w.word for w in reply.words] == ORDINARY.split()
    assert reply.audio_seconds == pytest.approx(len(audio) / SAMPLE_RATE)
    assert reply.words[-1].end == pytest.approx(reply.audio_seconds, abs=0.05)
    assert len(fake.contexts) == 1  # one context for the round


async def test_request_based_tts_still_gets_whole_clauses() -> None:
    reply = Reply(1, "hi", MonotonicClock())
    tts = ClauseTts()
    async with asyncio.timeout(10):
        await produce(reply, Llm(ORDINARY), tts)
    assert tts.requests == ["Sure, I can help you with that order right away.", "It ships today."]
    assert reply.spoken_text == ORDINARY
    assert [w.word for w in reply.words] == ORDINARY.split()


async def test_a_failure_before_first_audio_replays_the_same_text_to_the_fallback() -> None:
    failures: list[tuple[str, str, ProviderError]] = []
    clause_tts = ClauseTts()
    reply = Reply(1, "hi", MonotonicClock())
    # every socket drops at its first generation: the retry fails too, then the fallback
    async with elevenlabs(fault=Fault.DROP) as (fake, primary), asyncio.timeout(10):
        tts = FallbackTts(
            candidates("tts", primary, [clause_tts]),
            BreakerBoard(),
            MonotonicClock(),
            lambda stage, key, error: failures.append((stage, key, error)),
        )
        assert tts.streams_text
        audio = await produce(reply, Llm(ORDINARY, per_token=0.002), tts)
    assert [(stage, key) for stage, key, _ in failures] == [("tts", f"tts/{primary.voice_key}")] * 2
    assert all(error.retryable for _, _, error in failures)
    # both ElevenLabs attempts got the first words; the fallback got all of it, as clauses
    assert [c.generations[0].received for c in fake.contexts] == ["Sure, I can help "] * 2
    assert clause_tts.requests == clauses(ORDINARY)
    assert reply.spoken_text == ORDINARY and audio
    assert [w.word for w in reply.words] == ORDINARY.split()
    assert reply.timings.tts_first_request is not None


async def test_a_streaming_fallback_gets_the_same_words() -> None:
    failures: list[str] = []
    reply = Reply(1, "hi", MonotonicClock())
    async with (
        elevenlabs(fault=Fault.BAD_CLOSE) as (bad, primary),
        elevenlabs() as (good, fallback),
        asyncio.timeout(10),
    ):
        tts = FallbackTts(
            candidates("tts", primary, [fallback]),
            BreakerBoard(),
            MonotonicClock(),
            lambda stage, key, error: failures.append(key),
        )
        await produce(reply, Llm(ORDINARY), tts)
    assert failures == [f"tts/{primary.voice_key}"] * 2
    (context,) = good.contexts
    assert context.received == ORDINARY + " " and context.spoken == ORDINARY + " "
    assert [w.word for w in reply.words] == ORDINARY.split()


async def test_an_llm_failure_mid_stream_speaks_what_was_written_then_raises() -> None:
    reply = Reply(1, "hi", MonotonicClock())
    async with elevenlabs() as (fake, tts), asyncio.timeout(10):
        drained = asyncio.create_task(drain(reply))
        with pytest.raises(ProviderError, match="stream cut"):
            await reply.produce(Llm(ORDINARY, fail_after=3), tts, MESSAGES)
        await reply.finish()
        await drained
    assert reply.text == "Sure, I" and reply.spoken_text == "Sure, I"
    assert fake.contexts[0].spoken == "Sure, I "  # the tail was flushed, not lost
    assert [w.word for w in reply.words] == ["Sure,", "I"]


@pytest.mark.parametrize("queue_full", [False, True])
async def test_barge_in_cancels_the_round_and_closes_the_context(queue_full: bool) -> None:
    # queue_full: the playout is behind, so the reply is parked on its full audio queue with
    # the TTS stream suspended at a yield — the usual state when a caller barges in
    reply = Reply(1, "hi", MonotonicClock(), audio=asyncio.Queue(maxsize=1 if queue_full else 64))
    long = " ".join(f"Here is detail number {i} of the answer." for i in range(30))
    llm = Llm(long, per_token=0.01)
    async with elevenlabs(realtime_factor=1.0) as (fake, tts), asyncio.timeout(10):
        producing = asyncio.create_task(reply.produce(llm, tts, MESSAGES))
        if queue_full:
            for _ in range(500):
                if reply.audio.full() and len(reply.words) > 1:
                    break
                await asyncio.sleep(0.01)
            assert reply.audio.full()
        else:
            assert await reply.audio.get()  # the caller hears the first words …
        producing.cancel()  # … and barges in
        with pytest.raises(asyncio.CancelledError):
            await producing
        (context,) = fake.contexts
        for _ in range(200):
            if context.final_sent:
                break
            await asyncio.sleep(0.02)
        assert context.closed and context.final_sent
        assert {"context_id": context.id, "close_context": True} in fake.messages
    assert llm.closed and llm.finished_at is None  # the LLM stream was stopped too
    assert len(reply.spoken_text) < len(long)


async def test_a_tool_round_streams_its_words_then_ends_the_call() -> None:
    assistant = Assistant.model_validate(
        {"model": {"provider": "local", "tools": [{"type": "endCall"}]}}
    )
    events: list[CallEvent] = []
    ended: list[EndedReason] = []
    turns = ToolTurns.for_assistant(
        assistant,
        call_id="call_1",
        history=Conversation(assistant.model),
        emit=events.append,
        since_start=lambda: 0.0,
        finalize=lambda _reply, reason, _detail, _handoff: ended.append(reason),
        call_control=None,
        context=lambda: {"call": {"id": "call_1"}},
    )
    said = "Thanks for calling, goodbye."
    llm = Llm(said, calls=[ToolCall("t1", "endCall", "{}")])
    reply = Reply(1, "bye", MonotonicClock())
    reply.release()
    async with elevenlabs() as (fake, tts), asyncio.timeout(10):
        drained = asyncio.create_task(drain(reply))
        try:
            await turns.produce(reply, llm, tts, MESSAGES)
        finally:
            await turns.runner.aclose()
        await drained
    assert ended == [EndedReason.ASSISTANT_ENDED_CALL]
    (context,) = fake.contexts  # one streamed context, no second LLM round
    assert context.spoken == said + " " and context.generations[0].trigger == "flush"
    assert reply.spoken_text == said and reply.used_tools
    assert [w.word for w in reply.words] == said.split()


@pytest.mark.parametrize("streaming", [True, False])
async def test_usage_of_every_round_adds_up_cached_prompt_tokens_included(
    streaming: bool,
) -> None:
    # A tool round then the answer: both requests' usage is the reply's; a provider that does
    # not say what it cached (None) adds nothing. The recorder sums replies into the call's.
    assistant = Assistant.model_validate({"model": {"provider": "local"}})
    recorder = ReplyRecorder("call_1", Conversation(assistant.model), lambda _event: None)
    rounds = [Llm("Let me check.", cached=8), Llm("It ships today.", cached=4), Llm("Bye.")]
    replies = []
    async with elevenlabs() as (_, tts), asyncio.timeout(10):
        for index, llms in enumerate([rounds[:2], rounds[2:]]):
            reply = Reply(index, "where is my order?", MonotonicClock())
            drained = asyncio.create_task(drain(reply))
            for llm in llms:
                await reply.produce_round(llm, tts if streaming else ClauseTts(), MESSAGES)
            await reply.finish()
            await drained
            replies.append(reply)
    first, second = (r.timings for r in replies)
    assert (first.prompt_tokens, first.cached_prompt_tokens) == (24, 12)
    assert (second.prompt_tokens, second.cached_prompt_tokens) == (12, 0)
    for reply in replies:
        recorder.record(
            Playing(reply, PlayoutTracker()), interrupted=False, now=0.0, at=0.0, commit=None
        )
    assert recorder.usage["promptTokens"] == 36
    assert recorder.usage["cachedPromptTokens"] == 12
    assert recorder.usage["completionTokens"] == sum(len(tokens(llm.text)) for llm in rounds)
