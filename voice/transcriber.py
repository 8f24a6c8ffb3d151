"""The caller's audio into the transcriber, its results out; failing over when it fails.

The session hands each frame to `feed()`, which never waits: frames go into one bounded queue that
a sender task of its own drains into the STT stream, so a slow or reconnecting transcriber never
delays the session's VAD and barge-in. The same queue holds the audio while no stream is up
(connecting, or moving to the next transcriber) and is sent first when one is. Overflow policy:
the oldest audio is dropped (counted in `dropped_frames`) — the newest speech is what the turn
decision needs. A `finalize()` request travels in the same queue, so it follows the audio before it;
it is never what overflow drops (a turn would wait for a transcript nobody asked for).

Connecting, the one retry and the fallback transcribers follow `voice.fallback`'s plan.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final

from voice.clock import Clock
from voice.errors import ProviderError, ProviderTimeout
from voice.fallback import FailoverPlan, FailureHandler, ProvidersExhausted, candidates
from voice.ports import SttStream
from voice.session_config import Engines
from voice.types import Transcript

__all__ = ["TranscriberFeed"]

log = logging.getLogger("ava.call")


class _Finalize:
    """Queue item: ask the STT for a final transcript of the audio sent before it."""


_FINALIZE: Final = _Finalize()


class _StreamOver(Exception):
    """The stream's transcripts ended (it was closed): stop its sender."""


class TranscriberFeed:
    def __init__(
        self,
        *,
        call_id: str,
        engines: Engines,
        clock: Clock,
        connect_timeout: float,
        queue_frames: int,
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
        self._queue: deque[bytes | _Finalize] = deque()
        self._capacity = queue_frames
        self._waiting = asyncio.Event()
        self.dropped_frames = 0

    def feed(self, audio: bytes) -> None:
        """Queue one frame for the STT; never waits."""
        self._make_room()
        self._queue.append(audio)
        self._waiting.set()

    def finalize(self) -> None:
        """Ask for a final transcript of everything fed so far; never waits."""
        if self._queue and self._queue[-1] is _FINALIZE:
            return
        self._make_room()
        self._queue.append(_FINALIZE)
        self._waiting.set()

    def _make_room(self) -> None:
        """At capacity, drop the oldest audio frame (never a finalize request: requests are
        never adjacent, so at least every other item is audio)."""
        queue = self._queue
        if len(queue) < self._capacity:
            return
        self.dropped_frames += 1
        for index, item in enumerate(queue):
            if item is not _FINALIZE:
                del queue[index]
                return

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
        self.stream = stream
        error: ProviderError | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._send(stream))
                async for result in stream.transcripts():
                    await self._on_result(result)
                raise _StreamOver
        except* ProviderError as group:
            failure = group.exceptions[0]
            assert isinstance(failure, ProviderError)
            error = failure
        except* _StreamOver:
            if not self._ended.is_set():
                error = ProviderError(name, "stream ended", retryable=True)
        self.stream = None  # caller audio stays queued until the next stream is up
        await self._close(stream)
        return error

    async def _send(self, stream: SttStream) -> None:
        queue = self._queue
        while True:
            await self._waiting.wait()
            while queue:
                item = queue[0]
                if item is _FINALIZE:
                    await stream.finalize()
                else:
                    assert isinstance(item, bytes)
                    await stream.send_audio(item)
                # Taken off only once sent: a frame whose send failed goes to the next stream.
                if queue and queue[0] is item:
                    queue.popleft()
            self._waiting.clear()

    async def aclose(self) -> None:
        if self.stream is not None:
            await self._close(self.stream)

    async def _close(self, stream: SttStream) -> None:
        try:
            await stream.aclose()
        except ProviderError as exc:
            log.warning("call %s: closing STT failed: %s", self.call_id, exc)
