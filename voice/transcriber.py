"""The caller's audio into the transcriber, its results out; failing over when it fails.

Connecting, the one retry and the fallback transcribers follow `voice.fallback`'s plan. While no
stream is up (connecting, or moving to the next transcriber) caller audio waits in a bounded
prebuffer (overflow policy: the oldest audio is dropped) and is sent first when one is up.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from voice.clock import Clock
from voice.errors import ProviderError, ProviderTimeout
from voice.fallback import FailoverPlan, FailureHandler, ProvidersExhausted, candidates
from voice.ports import SttStream
from voice.session_config import Engines
from voice.types import Transcript

__all__ = ["TranscriberFeed"]

log = logging.getLogger("ava.call")


class TranscriberFeed:
    def __init__(
        self,
        *,
        call_id: str,
        engines: Engines,
        clock: Clock,
        connect_timeout: float,
        prebuffer_frames: int,
        on_result: Callable[[Transcript], Awaitable[None]],
        on_failure: FailureHandler,
        ended: asyncio.Event,
    ) -> None:
        self.call_id = call_id
        self.engines = engines
        self.clock = clock
        self.connect_timeout = connect_timeout
        self._on_result = on_result
        self._on_failure = on_failure
        self._ended = ended
        self.stream: SttStream | None = None
        self._prebuffer: deque[bytes] = deque(maxlen=prebuffer_frames)

    async def send(self, audio: bytes) -> None:
        stream = self.stream
        if stream is None:
            self._prebuffer.append(audio)
            return
        try:
            await stream.send_audio(audio)
        except ProviderError:
            # The stream has failed: its transcript loop reports it and moves to the fallback,
            # which gets this audio from the prebuffer.
            self._prebuffer.append(audio)

    async def finalize(self) -> None:
        if self.stream is not None:
            await self.stream.finalize()

    async def run(self) -> ProvidersExhausted | None:
        """Transcribe until the call ends (None) or no transcriber is left (returned)."""
        engines = self.engines
        plan = FailoverPlan(candidates("stt", engines.stt, engines.stt_fallbacks), engines.breakers)
        last: ProviderError | None = None
        while (candidate := plan.next(self.clock.now())) is not None:
            seconds = self.connect_timeout
            try:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow the call's own
                # cancellation when the connect completes in the same tick, leaving a live task.
                async with asyncio.timeout(seconds):
                    stream = await candidate.engine.connect()
            except ProviderError as exc:
                error = exc
            except TimeoutError:
                error = ProviderTimeout(candidate.engine.name, "connect", seconds)
            else:
                failure = await self._run(stream, candidate.engine.name)
                if failure is None:
                    return None  # the call is over
                # Mid-call: the adapter has already reconnected on its own; move on.
                plan.failed(candidate, failure, self.clock.now(), retry=False)
                self._on_failure("stt", candidate.key, failure)
                last = failure
                continue
            plan.failed(candidate, error, self.clock.now())
            self._on_failure("stt", candidate.key, error)
            last = error
        return ProvidersExhausted("stt", last)

    async def _run(self, stream: SttStream, name: str) -> ProviderError | None:
        """Feed and read one STT stream until it fails (returned) or the call ends (None)."""
        try:
            while self._prebuffer:
                await stream.send_audio(self._prebuffer.popleft())
            self.stream = stream
            async for result in stream.transcripts():
                await self._on_result(result)
        except ProviderError as exc:
            error = exc
        else:
            if self._ended.is_set():
                return None
            error = ProviderError(name, "stream ended", retryable=True)
        self.stream = None  # caller audio goes to the prebuffer until the next stream is up
        await self._close(stream)
        return error

    async def aclose(self) -> None:
        if self.stream is not None:
            await self._close(self.stream)

    async def _close(self, stream: SttStream) -> None:
        try:
            await stream.aclose()
        except ProviderError as exc:
            log.warning("call %s: closing STT failed: %s", self.call_id, exc)
