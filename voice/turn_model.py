"""The end-of-turn model (smart-turn) for one call: run off the event loop on the caller's last
few seconds of audio.

One question at a time: the queue holds one request, and a newer one replaces a waiting one
(overflow policy: the older question is stale). A model that fails gives no verdict; the turn
then ends by the incomplete-timeout instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor

from voice.errors import ProviderError
from voice.ports import TurnDetector
from voice.turns import RunTurnModel
from voice.types import FRAME_SECONDS, SAMPLE_RATE

__all__ = ["TurnModelRunner"]

log = logging.getLogger("ava.call")


class TurnModelRunner:
    def __init__(
        self,
        detector: TurnDetector | None,
        executor: Executor | None,
        *,
        call_id: str,
        seconds: float,
        on_verdict: Callable[[float, RunTurnModel], Awaitable[None]],
        sample_rate: int = SAMPLE_RATE,
    ) -> None:
        self.detector = detector
        self.sample_rate = sample_rate  # the call's: smart-turn resamples only when not 16 kHz
        self.executor = executor
        self.call_id = call_id
        self._on_verdict = on_verdict
        self._pcm: deque[bytes] = deque(maxlen=int(seconds / FRAME_SECONDS))
        self._requests: asyncio.Queue[RunTurnModel] = asyncio.Queue(maxsize=1)

    def add_audio(self, pcm16: bytes) -> None:
        """One frame of caller audio (PCM16 at `sample_rate`); the oldest beyond `seconds` is
        dropped."""
        self._pcm.append(pcm16)

    def ask(self, request: RunTurnModel) -> None:
        if self._requests.full():  # a newer question supersedes the old one
            self._requests.get_nowait()
        self._requests.put_nowait(request)

    async def run(self) -> None:
        detector = self.detector
        if detector is None:
            return
        loop = asyncio.get_running_loop()
        while True:
            request = await self._requests.get()
            pcm = b"".join(self._pcm)
            try:
                probability = await loop.run_in_executor(
                    self.executor, detector.completion_probability, pcm, self.sample_rate
                )
            except ProviderError as exc:
                # Degrade, don't fail: without a verdict the incomplete-timeout ends the turn.
                log.warning("call %s: turn model failed: %s", self.call_id, exc)
                continue
            await self._on_verdict(probability, request)
