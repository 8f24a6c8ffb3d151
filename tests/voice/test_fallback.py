"""Retry and fallback policy (explicit time) and the LLM/TTS wrappers that apply it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest

from voice.breaker import BreakerBoard
from voice.errors import ProviderError
from voice.fallback import (
    Candidate,
    FailoverPlan,
    FallbackLlm,
    FallbackTts,
    ProvidersExhausted,
    Stage,
    breaker_key,
    candidates,
)
from voice.testing import FakeClock
from voice.types import ChatMessage, LlmDelta, TtsChunk

RETRYABLE = ProviderError("x", "HTTP 500", retryable=True)
FATAL = ProviderError("x", "HTTP 401", retryable=False)


def plan_of(*keys: str, board: BreakerBoard | None = None) -> FailoverPlan[str]:
    return FailoverPlan([Candidate(k, k) for k in keys], board or BreakerBoard())


def test_retries_the_primary_once_then_each_fallback_once() -> None:
    plan = plan_of("a", "b", "c")
    tried = []
    while (candidate := plan.next(0.0)) is not None:
        tried.append(candidate.key)
        plan.failed(candidate, RETRYABLE, 0.0)
    assert tried == ["a", "a", "b", "c"]


def test_a_non_retryable_error_skips_the_retry() -> None:
    plan = plan_of("a", "b")
    first = plan.next(0.0)
    assert first is not None
    plan.failed(first, FATAL, 0.0)
    assert (second := plan.next(0.0)) is not None and second.key == "b"


def test_no_retry_when_asked_not_to() -> None:
    plan = plan_of("a", "b")
    first = plan.next(0.0)
    assert first is not None
    plan.failed(first, RETRYABLE, 0.0, retry=False)
    assert (second := plan.next(0.0)) is not None and second.key == "b"


def test_open_breakers_are_skipped() -> None:
    board = BreakerBoard(failure_threshold=1, cool_down=30.0)
    board.get("a").record_failure(0.0)
    plan = plan_of("a", "b", board=board)
    assert (candidate := plan.next(1.0)) is not None and candidate.key == "b"
    board.get("b").record_failure(1.0)
    # after the cool-down the primary gets its half-open trial again
    assert (trial := plan_of("a", "b", board=board).next(31.0)) is not None and trial.key == "a"


def test_with_every_breaker_open_the_one_open_longest_is_still_tried_once() -> None:
    """Skipping every provider would end the call untried: a spell of timeouts on a loaded
    process would otherwise fail every call for the whole cool-down."""
    board = BreakerBoard(failure_threshold=1, cool_down=30.0)
    board.get("b").record_failure(0.0)
    board.get("a").record_failure(1.0)
    plan = plan_of("a", "b", board=board)
    assert (candidate := plan.next(2.0)) is not None and candidate.key == "b"
    plan.failed(candidate, RETRYABLE, 2.0)  # retryable, but the last resort gets no retry
    assert plan.next(2.0) is None
    assert board.get("b").state(2.5).value == "open"  # its cool-down starts again
    # …and one that answers closes its breaker at once, for every call
    plan = plan_of("a", board=board)
    assert (candidate := plan.next(3.0)) is not None and candidate.key == "a"
    plan.succeeded(candidate, 3.1)
    assert board.get("a").state(3.2).value == "closed"


def test_success_closes_the_breaker() -> None:
    board = BreakerBoard(failure_threshold=2)
    plan = plan_of("a", board=board)
    candidate = plan.next(0.0)
    assert candidate is not None
    plan.failed(candidate, RETRYABLE, 0.0)
    plan.succeeded(candidate, 0.1)
    assert board.get("a").failures == 0


class Llm:
    def __init__(self, name: str, model: str, failures: list[ProviderError | None]) -> None:
        self.name, self.model = name, model
        self.failures = failures  # per request: fail before output (error) or answer (None)
        self.requests = 0

    async def stream(self, messages: Sequence[ChatMessage]) -> AsyncIterator[LlmDelta]:
        self.requests += 1
        error = self.failures.pop(0) if self.failures else None
        if error is not None:
            raise error
        yield LlmDelta(text=f"{self.model} says hi")


class MidStreamFailure(Llm):
    async def stream(self, messages: Sequence[ChatMessage]) -> AsyncIterator[LlmDelta]:
        yield LlmDelta(text="Half an ans")
        raise RETRYABLE


class Tts:
    name = "tone"

    def __init__(self, voice: str, fail: bool) -> None:
        self.voice_key, self.fail = voice, fail

    async def synthesize(self, text: str) -> AsyncIterator[TtsChunk]:
        if self.fail:
            raise ProviderError(self.voice_key, "closed 1011", retryable=True)
        yield TtsChunk(self.voice_key.encode())


Failures = list[tuple[Stage, str, str]]


async def answer(llm: FallbackLlm) -> str:
    return "".join([d.text async for d in llm.stream([ChatMessage("user", "hi")])])


async def test_llm_retried_once_then_fallback_and_every_failure_reported() -> None:
    primary = Llm("openai", "main", [RETRYABLE, RETRYABLE])
    backup = Llm("openai", "backup", [])
    seen: Failures = []
    llm = FallbackLlm(
        candidates("llm", primary, [backup]),
        BreakerBoard(),
        FakeClock(),
        lambda stage, key, error: seen.append((stage, key, str(error))),
    )
    assert await answer(llm) == "backup says hi"
    assert primary.requests == 2 and backup.requests == 1
    assert [(s, k) for s, k, _ in seen] == [("llm", "llm/openai/main")] * 2


async def test_llm_survives_one_failure_on_the_primary() -> None:
    primary = Llm("openai", "main", [RETRYABLE])
    llm = FallbackLlm(candidates("llm", primary, []), BreakerBoard(), FakeClock(), print_none)
    assert await answer(llm) == "main says hi"


async def test_llm_exhausted_when_nothing_is_left() -> None:
    primary = Llm("openai", "main", [FATAL])
    backup = Llm("groq", "b", [RETRYABLE])
    llm = FallbackLlm(candidates("llm", primary, [backup]), BreakerBoard(), FakeClock(), print_none)
    with pytest.raises(ProvidersExhausted) as caught:
        await answer(llm)
    assert caught.value.stage == "llm" and caught.value.last is RETRYABLE
    assert not caught.value.retryable


async def test_a_failure_after_output_is_not_retried() -> None:
    broken = MidStreamFailure("openai", "main", [])
    backup = Llm("openai", "backup", [])
    llm = FallbackLlm(candidates("llm", broken, [backup]), BreakerBoard(), FakeClock(), print_none)
    with pytest.raises(ProviderError) as caught:
        await answer(llm)
    assert caught.value is RETRYABLE and backup.requests == 0


async def test_breaker_skips_a_dead_primary_on_later_turns() -> None:
    board = BreakerBoard(failure_threshold=2, cool_down=60.0)
    primary = Llm("openai", "main", [RETRYABLE] * 10)
    backup = Llm("openai", "backup", [])
    llm = FallbackLlm(candidates("llm", primary, [backup]), board, FakeClock(), print_none)
    assert await answer(llm) == "backup says hi"
    assert await answer(llm) == "backup says hi"
    assert primary.requests == 2  # the second turn did not wait for the dead provider


async def test_tts_falls_back_to_the_next_voice_and_keeps_the_primary_cache_key() -> None:
    tts = FallbackTts(
        candidates("tts", Tts("eleven/a", fail=True), [Tts("openai/b", fail=False)]),
        BreakerBoard(),
        FakeClock(),
        print_none,
    )
    assert tts.voice_key == "eleven/a"
    audio = b"".join([c.audio async for c in tts.synthesize("Hello.")])
    assert audio == b"openai/b"


def test_breaker_keys_name_the_model_or_voice() -> None:
    assert breaker_key("llm", Llm("openai", "gpt-4o", [])) == "llm/openai/gpt-4o"
    assert breaker_key("tts", Tts("elevenlabs/x", fail=False)) == "tts/elevenlabs/x"
    assert breaker_key("stt", object()) == "stt/object"


def print_none(stage: Stage, key: str, error: ProviderError) -> None:
    """A failure handler that ignores failures (the policy, not the reporting, is under test)."""
