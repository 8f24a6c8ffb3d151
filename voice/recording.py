"""A call's stereo recording as the caller lived it: caller left, assistant right.

`StereoTimeline` is sans-I/O: it is fed the caller's frames as they arrive, the assistant's audio
as it is sent, and the clears, each with the clock time, and hands out interleaved 16-bit stereo
PCM in order, up to the point where both channels are final.

- The caller's channel is contiguous: frames arrive every 20 ms with jitter, so each is placed
  right after the previous one, unless it arrives more than `caller_gap_seconds` later than that
  (the far end stopped sending: a WebRTC hiccup), when the gap is silence.
- The assistant's channel follows the far end's playback clock (Twilio's and WebRTC's alike, see
  `media.pacing`): audio sent at `t` plays at `t`, or when what was queued before it has played.
  So audio still queued when a barge-in `clear` goes out was never heard: the clear cuts the
  channel at its time. Paused output needs no event: nothing is sent while paused, so the
  channel falls silent once the queue has drained, which is what the caller heard.
- Output is final up to `now` for the assistant (anything later may still be cleared) and up to
  the caller's last frame, but never lags `now` by more than `max_caller_lag_seconds` (a caller
  channel that stops must not hold the recording, and its memory, back).

Memory is bounded: each channel holds at most `max_pending_seconds` not yet handed out; more is
dropped and counted in `dropped_seconds` (it can only happen if a transport misbehaves).

`RecordingTransport` taps a `CallTransport` into a timeline and hands what is final to a
`StereoSink` (never blocking: the sink queues it for a writer off the event loop).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

import numpy as np

from media.transport import AudioReceived, CallTransport, InboundEvent
from voice.clock import Clock

__all__ = [
    "RecordingTransport",
    "StereoSink",
    "StereoTimeline",
]


_WIDTH = 2  # bytes per sample: 16-bit PCM


class StereoTimeline:
    def __init__(
        self,
        sample_rate: int,
        *,
        start: float,
        caller_gap_seconds: float = 0.2,
        max_caller_lag_seconds: float = 1.0,
        max_pending_seconds: float = 10.0,
    ) -> None:
        self.sample_rate = sample_rate
        self.start = start
        self._gap = round(caller_gap_seconds * sample_rate)
        self._max_lag = round(max_caller_lag_seconds * sample_rate)
        self._max_pending = round(max_pending_seconds * sample_rate)
        self.emitted = 0  # samples handed out (both channels)
        self._left = bytearray()  # caller samples from `emitted` on
        self._right = bytearray()  # assistant samples from `emitted` on
        self._caller_end = 0  # where the caller's next frame goes
        self._assistant_end = 0  # when the audio sent so far finishes playing
        self.dropped_samples = 0
        self.finished = False

    @property
    def dropped_seconds(self) -> float:
        return self.dropped_samples / self.sample_rate

    def _at(self, now: float) -> int:
        return max(0, round((now - self.start) * self.sample_rate))

    def caller(self, pcm: bytes, now: float) -> None:
        """A caller frame (PCM16 at the call's rate) that arrived at `now`."""
        n = len(pcm) // _WIDTH
        if n == 0 or self.finished:
            return
        arrival_start = self._at(now) - n
        start = self._caller_end
        if arrival_start - start > self._gap:
            start = arrival_start  # the far end stopped sending for a while: silence
        start = max(start, self.emitted)
        if self._put(self._left, start, pcm):
            self._caller_end = start + n

    def assistant(self, pcm: bytes, now: float) -> None:
        """Assistant audio (PCM16) sent at `now`: it plays after what is still queued."""
        n = len(pcm) // _WIDTH
        if n == 0 or self.finished:
            return
        start = max(self._at(now), self._assistant_end, self.emitted)
        if self._put(self._right, start, pcm):
            self._assistant_end = start + n

    def clear(self, now: float) -> None:
        """The far end dropped its queue at `now`: what had not played by then never did."""
        cut = max(self._at(now), self.emitted)
        keep = (cut - self.emitted) * _WIDTH
        if len(self._right) > keep:
            del self._right[keep:]
        self._assistant_end = min(self._assistant_end, cut)

    def advance(self, now: float) -> bytes:
        """Interleaved stereo PCM16 for everything final at `now` (may be empty)."""
        if self.finished:
            return b""
        at = self._at(now)
        horizon = max(min(self._caller_end, at), at - self._max_lag)
        return self._take(horizon)

    def finish(self, now: float) -> bytes:
        """The call is over at `now`: the rest, assistant audio still queued cut off (the line
        closed), the caller's frames kept whole. Nothing is accepted afterwards."""
        if self.finished:
            return b""
        self.clear(now)
        self.finished = True
        return self._take(max(self._at(now), self._caller_end))

    def _put(self, channel: bytearray, start: int, pcm: bytes) -> bool:
        offset = start - self.emitted
        end = offset + len(pcm) // _WIDTH
        if end > self._max_pending:
            self.dropped_samples += len(pcm) // _WIDTH
            return False
        have = len(channel) // _WIDTH
        if offset > have:
            channel.extend(bytes((offset - have) * _WIDTH))
        elif offset < have:
            del channel[offset * _WIDTH :]  # cannot happen for placed audio; keeps order safe
        channel.extend(pcm[: len(pcm) // _WIDTH * _WIDTH])
        return True

    def _take(self, horizon: int) -> bytes:
        n = horizon - self.emitted
        if n <= 0:
            return b""
        out = np.zeros(2 * n, dtype="<i2")
        for channel, column in ((self._left, 0), (self._right, 1)):
            have = min(n, len(channel) // _WIDTH)
            if have:
                out[column : 2 * have : 2] = np.frombuffer(channel, "<i2", have)
            del channel[: have * _WIDTH]
        self.emitted = horizon
        return out.tobytes()


class StereoSink(Protocol):
    def write(self, pcm: bytes) -> None:
        """Queue interleaved stereo PCM16 for the file. Never blocks, never raises."""
        ...


class RecordingTransport:
    """A `CallTransport` that records what it carries into `sink` (see the module docstring).
    Closing it cuts the recording at that moment and awaits `on_close` (the sink's own close:
    before the session reports the call ended, so the file is complete when the report names
    it); `finish()` cuts it if the session never closed it.

    With `wanted` (a call that is only listened to, not recorded), the timeline runs only while
    `wanted()` is true: it starts at the moment a first listener appears and is dropped when the
    last one goes, so an unheard call spends nothing on stereo audio."""

    def __init__(
        self,
        inner: CallTransport,
        clock: Clock,
        sink: StereoSink,
        *,
        start: float | None = None,
        on_close: Callable[[], Awaitable[None]] | None = None,
        wanted: Callable[[], bool] | None = None,
    ) -> None:
        self.inner = inner
        self._on_close = on_close
        self._wanted = wanted
        self._finished = False
        self.kind = inner.kind
        self.audio_format = inner.audio_format
        self.clock = clock
        self.sink = sink
        self.timeline: StereoTimeline | None = None
        if wanted is None:
            self.timeline = StereoTimeline(
                inner.audio_format.sample_rate, start=clock.now() if start is None else start
            )

    def _live(self, now: float) -> StereoTimeline | None:
        """The timeline, if anyone wants the audio now (started or dropped as that changes)."""
        if self._wanted is None or self._finished:
            return self.timeline
        if not self._wanted():
            self.timeline = None
        elif self.timeline is None:
            self.timeline = StereoTimeline(self.audio_format.sample_rate, start=now)
        return self.timeline

    async def receive(self) -> InboundEvent:
        event = await self.inner.receive()
        if isinstance(event, AudioReceived):
            now = self.clock.now()
            timeline = self._live(now)
            if timeline is not None:
                timeline.caller(self.audio_format.to_pcm16(event.audio), now)
                self._push(timeline.advance(now))
        return event

    async def send_audio(self, audio: bytes) -> None:
        await self.inner.send_audio(audio)
        now = self.clock.now()
        timeline = self._live(now)
        if timeline is not None:
            timeline.assistant(self.audio_format.to_pcm16(audio), now)
            self._push(timeline.advance(now))

    async def send_mark(self, name: str) -> None:
        await self.inner.send_mark(name)

    async def send_clear(self) -> None:
        await self.inner.send_clear()
        if self.timeline is not None:
            self.timeline.clear(self.clock.now())

    async def close(self, reason: str) -> None:
        self.finish()
        try:
            await self.inner.close(reason)
        finally:
            if self._on_close is not None:
                await self._on_close()

    def finish(self) -> None:
        self._finished = True
        if self.timeline is not None:
            self._push(self.timeline.finish(self.clock.now()))

    def _push(self, pcm: bytes) -> None:
        if pcm:
            self.sink.write(pcm)
