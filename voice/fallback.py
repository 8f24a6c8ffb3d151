"""Retry and fallback across providers of one stage, behind the ports the session already uses.

`FailoverPlan` is the pure policy (explicit time): the first usable candidate gets one retry on a
retryable error, then each fallback gets one attempt, and a candidate whose circuit breaker is
open is skipped — unless every one is open: then the attempt tries the one open longest, once.
`FallbackLlm` and `FallbackTts` apply it to a stream: a provider that fails before producing
anything is replaced by the next one; a failure after output has started is re-raised (the
caller already has part of the answer). Every failure is reported through
`on_failure` (the session turns it into a `ProviderFailed` event). When nothing is left,
`ProvidersExhausted` is raised.

A streamed reply round (text fed to the TTS while the LLM writes it) is one attempt: its text is
kept in the `TextFeed`, so the retry or the next voice gets the same words from the first one (a
request-based voice gets them as clauses); after audio has started a failure is re-raised, as for
a phrase.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from voice.breaker import BreakerBoard
from voice.chunking import PhraseChunker
from voice.clock import Clock
from voice.errors import ProviderError
from voice.ports import LanguageModel, TextToSpeech, streaming_input
from voice.text_feed import TextFeed
from voice.types import SAMPLE_RATE, ChatMessage, LlmDelta, TtsChunk, WordTiming

__all__ = [
    "Candidate",
    "FailoverPlan",
    "FailureHandler",
    "FallbackLlm",
    "FallbackTts",
    "ProvidersExhausted",
    "Stage",
    "breaker_key",
    "candidates",
    "speak_clauses",
]

Stage = Literal["stt", "llm", "tts"]
T = TypeVar("T")
E = TypeVar("E")  # an engine
Item = TypeVar("Item")  # what its stream yields
FailureHandler = Callable[[Stage, str, ProviderError], None]


class ProvidersExhausted(ProviderError):
    """Every provider of a stage failed (or is skipped by its breaker) for this attempt."""

    def __init__(self, stage: Stage, last: ProviderError | None) -> None:
        detail = f"; last error: {last}" if last is not None else " (all circuit breakers open)"
        super().__init__(stage, f"no {stage} provider left{detail}", retryable=False)
        self.stage = stage
        self.last = last


@dataclass(frozen=True, slots=True)
class Candidate(Generic[T]):
    key: str  # the circuit breaker's key, also named in ProviderFailed events
    engine: T


def breaker_key(stage: Stage, engine: object) -> str:
    """A per-provider key: the stage, the adapter's name and its model or voice when known."""
    name = str(getattr(engine, "name", type(engine).__name__))
    if stage == "tts":
        voice = getattr(engine, "voice_key", None)
        return f"tts/{voice}" if isinstance(voice, str) and voice else f"tts/{name}"
    model = getattr(engine, "model", None)
    return f"{stage}/{name}/{model}" if isinstance(model, str) and model else f"{stage}/{name}"


def candidates(stage: Stage, primary: T, fallbacks: Sequence[T]) -> list[Candidate[T]]:
    return [Candidate(breaker_key(stage, e), e) for e in (primary, *fallbacks)]


class FailoverPlan(Generic[T]):
    """The order in which one attempt (a turn's LLM answer, a phrase's TTS) tries providers."""

    def __init__(self, chain: Sequence[Candidate[T]], breakers: BreakerBoard) -> None:
        self._chain = list(chain)
        self._breakers = breakers
        self._index = 0
        self._retried = False  # the one retry goes to the first candidate actually tried
        self._tried_any = False

    def next(self, now: float) -> Candidate[T] | None:
        """The candidate to try now, or None when nothing is left."""
        while self._index < len(self._chain):
            candidate = self._chain[self._index]
            if self._breakers.get(candidate.key).allow(now):
                self._tried_any = True
                return candidate
            self._index += 1
        if not self._tried_any and self._chain:
            # Every breaker is open. A breaker is there to skip a failing provider for one that
            # works; with none left, skipping would end the call untried. Breakers open on
            # spells (a rate limit, a burst of slow first tokens when this process is loaded),
            # and then three timeouts would fail every call of the process for the cool-down.
            # So the attempt still tries the provider whose breaker opened first, once.
            self._tried_any = True
            self._retried = True
            self._index = len(self._chain)
            return min(self._chain, key=lambda c: self._opened_at(c, now))
        return None

    def _opened_at(self, candidate: Candidate[T], now: float) -> float:
        opened_at = self._breakers.get(candidate.key).opened_at
        return now if opened_at is None else opened_at

    def failed(
        self, candidate: Candidate[T], error: ProviderError, now: float, *, retry: bool = True
    ) -> None:
        self._breakers.get(candidate.key).record_failure(now)
        if retry and error.retryable and not self._retried:
            self._retried = True
            return  # same candidate once more (unless its breaker has just opened)
        self._retried = True
        self._index += 1

    def succeeded(self, candidate: Candidate[T], now: float) -> None:
        self._breakers.get(candidate.key).record_success(now)


async def _failover(
    stage: Stage,
    plan: FailoverPlan[E],
    open_stream: Callable[[E], AsyncIterator[Item]],
    is_output: Callable[[Item], bool],
    clock: Clock,
    on_failure: FailureHandler,
) -> AsyncGenerator[Item, None]:
    """Items of the first stream in `plan` that does not fail before its first output."""
    last: ProviderError | None = None
    while (candidate := plan.next(clock.now())) is not None:
        produced = False
        stream = open_stream(candidate.engine)
        try:
            async for item in stream:
                produced = produced or is_output(item)
                yield item
        except ProviderError as exc:
            plan.failed(candidate, exc, clock.now())
            on_failure(stage, candidate.key, exc)
            if produced:
                raise  # the listener already has part of it: no silent switch mid-answer
            last = exc
            continue
        finally:
            await _aclose(stream)  # closed by our consumer: close the provider's stream now
        plan.succeeded(candidate, clock.now())
        return
    raise ProvidersExhausted(stage, last)


async def _aclose(stream: object) -> None:
    """Close an async generator that may be parked at a yield (its `finally` runs now); a
    plain async iterator has nothing to close."""
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()


class FallbackLlm:
    """A `LanguageModel` over a chain of them."""

    def __init__(
        self,
        chain: Sequence[Candidate[LanguageModel]],
        breakers: BreakerBoard,
        clock: Clock,
        on_failure: FailureHandler,
    ) -> None:
        if not chain:
            raise ValueError("a fallback chain needs at least one candidate")
        self.name = chain[0].engine.name
        self._chain, self._breakers, self._clock = list(chain), breakers, clock
        self._on_failure = on_failure

    async def stream(self, messages: Sequence[ChatMessage]) -> AsyncGenerator[LlmDelta, None]:
        async for delta in _failover(
            "llm",
            FailoverPlan(self._chain, self._breakers),
            lambda model: model.stream(messages),
            lambda _delta: True,
            self._clock,
            self._on_failure,
        ):
            yield delta


class FallbackTts:
    """A `TextToSpeech` over a chain of them; the cache key is the primary voice's."""

    def __init__(
        self,
        chain: Sequence[Candidate[TextToSpeech]],
        breakers: BreakerBoard,
        clock: Clock,
        on_failure: FailureHandler,
    ) -> None:
        if not chain:
            raise ValueError("a fallback chain needs at least one candidate")
        self.name = chain[0].engine.name
        self.voice_key = chain[0].engine.voice_key
        self._chain, self._breakers, self._clock = list(chain), breakers, clock
        self._on_failure = on_failure

    @property
    def streams_text(self) -> bool:
        """Streamed text when the primary voice takes it; a request-based primary gets clauses
        from the reply as before (a streaming fallback then gets those clauses too)."""
        return streaming_input(self._chain[0].engine) is not None

    async def synthesize(self, text: str) -> AsyncGenerator[TtsChunk, None]:
        async for chunk in _failover(
            "tts",
            FailoverPlan(self._chain, self._breakers),
            lambda voice: voice.synthesize(text),
            lambda chunk: bool(chunk.audio),
            self._clock,
            self._on_failure,
        ):
            yield chunk

    async def synthesize_stream(self, text: TextFeed) -> AsyncGenerator[TtsChunk, None]:
        async for chunk in _failover(
            "tts",
            FailoverPlan(self._chain, self._breakers),
            lambda voice: _stream_into(voice, text),
            lambda chunk: bool(chunk.audio),
            self._clock,
            self._on_failure,
        ):
            yield chunk


def _stream_into(voice: TextToSpeech, text: TextFeed) -> AsyncIterator[TtsChunk]:
    streaming = streaming_input(voice)
    if streaming is not None:
        return streaming.synthesize_stream(text)
    return speak_clauses(voice, text)


async def speak_clauses(voice: TextToSpeech, text: TextFeed) -> AsyncGenerator[TtsChunk, None]:
    """Streamed text through a request-based voice: one request per clause, word times moved
    onto the audio of the whole stream (the contract of `synthesize_stream`)."""
    chunker = PhraseChunker()
    offset = 0.0

    async def say(phrase: str) -> AsyncGenerator[TtsChunk, None]:
        nonlocal offset
        text.requested()
        start = offset
        chunks = voice.synthesize(phrase)
        try:
            async for chunk in chunks:
                offset += len(chunk.audio) / SAMPLE_RATE
                words = tuple(
                    WordTiming(w.word, w.start + start, w.end + start) for w in chunk.words
                )
                yield TtsChunk(chunk.audio, words)
        finally:
            await _aclose(chunks)

    async def phrases() -> AsyncGenerator[str, None]:
        async for piece in text:
            for phrase in chunker.push(piece):
                yield phrase
        rest = chunker.flush()
        if rest:
            yield rest

    async with contextlib.aclosing(phrases()) as said:
        async for phrase in said:
            async with contextlib.aclosing(say(phrase)) as chunks:
                async for chunk in chunks:
                    yield chunk
