"""Every engine job queue is bounded, with its overflow policy: the shared inference pool refuses
a job past its bound at once (a retryable ProviderError), and a call's Whisper finals drop the
oldest waiting one. And a greeting too long to synthesize cannot get into an assistant."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from typing import Any, cast

import numpy.typing as npt
import pytest
from pydantic import ValidationError

from control.logs import ContextThreadPool
from voice.assistant import Assistant
from voice.engines import WhisperEngine, inference_executor
from voice.engines.whisper_stt import MAX_QUEUED_FINALS, WhisperStt
from voice.errors import ProviderError
from voice.job_pool import MAX_PENDING_JOBS, BoundedExecutor, InferenceBusy
from voice.server_messages import parse_assistant_answer
from voice.testing import tone_ulaw
from voice.types import EndedReason, Transcript

pytestmark = pytest.mark.timeout(30)


async def test_the_pool_refuses_a_job_past_its_bound_and_recovers() -> None:
    release = threading.Event()
    with BoundedExecutor(1, max_pending=3) as pool:
        loop = asyncio.get_running_loop()
        held = [loop.run_in_executor(pool, release.wait) for _ in range(3)]
        assert pool.pending == 3
        with pytest.raises(InferenceBusy) as busy:
            await loop.run_in_executor(pool, release.wait)
        assert isinstance(busy.value, ProviderError) and busy.value.retryable
        assert pool.refused == 1 and pool.pending == 3  # the queued jobs are undisturbed
        release.set()
        assert await asyncio.gather(*held) == [True, True, True]
        await asyncio.sleep(0)  # done callbacks
        assert pool.pending == 0
        assert await loop.run_in_executor(pool, lambda: 7) == 7


def test_a_cancelled_job_gives_its_place_back() -> None:
    release = threading.Event()
    with BoundedExecutor(1, max_pending=2) as pool:
        running = pool.submit(release.wait)
        queued = pool.submit(release.wait)
        assert queued.cancel()
        assert pool.pending == 1
        again = pool.submit(lambda: "ran")
        release.set()
        assert running.result(5) is True and again.result(5) == "ran"


def test_the_pools_in_use_are_bounded() -> None:
    with inference_executor(1) as engines, ContextThreadPool(1) as control:
        for pool in (engines, control):
            assert isinstance(pool, BoundedExecutor) and pool.max_pending == MAX_PENDING_JOBS


class _BlockingWhisper:
    """Stands in for the model: each transcription waits for `release`."""

    def __init__(self) -> None:
        self.executor = BoundedExecutor(1)
        self.release = threading.Event()
        self.calls = 0

    def transcribe(self, audio_16k: npt.NDArray[Any], language: str) -> str:
        self.release.wait(10)
        self.calls += 1
        return f"words {self.calls}"


async def _finals(results: AsyncIterator[Transcript], n: int) -> list[Transcript]:
    out: list[Transcript] = []
    async with asyncio.timeout(10):
        while len(out) < n:
            result = await anext(results)
            if result.is_final:
                out.append(result)
    return out


async def test_whisper_drops_the_oldest_waiting_final_when_behind() -> None:
    engine = _BlockingWhisper()
    stt = WhisperStt(cast(WhisperEngine, engine), "en", 5.0, -45.0, 30.0, 64)
    stream = await stt.connect()
    results = stream.transcripts()
    speech = tone_ulaw(0.2, frequency=300.0)
    try:
        await stream.send_audio(speech)
        await stream.finalize()
        await asyncio.sleep(0.05)  # the worker takes the first final and blocks in Whisper
        for _ in range(MAX_QUEUED_FINALS + 1):
            await stream.send_audio(speech)
            await stream.finalize()
        assert stream.dropped_finals == 1
        engine.release.set()
        finals = await _finals(results, MAX_QUEUED_FINALS + 1)
        # Segment k starts at 0.2 k s: the second (the oldest waiting) is the one dropped.
        assert [round(f.start, 2) for f in finals] == [0.0, 0.4, 0.6, 0.8, 1.0]
        assert [f.text for f in finals] == [f"words {i}" for i in range(1, 6)]
    finally:
        await stream.aclose()
        engine.executor.shutdown()


def test_a_greeting_too_long_to_synthesize_cannot_be_set() -> None:
    huge = "Hello! " * 130_000  # ~900 KB: synthesized on the shared threads before the limit
    with pytest.raises(ValidationError, match="firstMessage: string longer than 100000"):
        Assistant.model_validate({"firstMessage": huge})
    long = "x" * 1001
    with pytest.raises(ValidationError, match="at most 1000 characters"):
        Assistant.model_validate({"firstMessage": long})
    assistant = Assistant.model_validate({"firstMessage": "Hello!"})
    with pytest.raises(ValidationError):
        assistant.first_message = long  # validate_assignment: no way around it
    # nor through an assistant-request answer
    for text in (long, huge):
        body = json.dumps({"assistant": {"firstMessage": text}}).encode()
        answer = parse_assistant_answer(200, body)
        assert answer.assistant is None
        assert answer.reason is EndedReason.ASSISTANT_REQUEST_RETURNED_INVALID_ASSISTANT
