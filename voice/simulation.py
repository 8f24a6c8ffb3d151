"""A whole call in-process, in virtual time: no sockets, no sleeps, faster than real time.

- `VirtualTimeLoop`: an event loop whose clock jumps to the next timer whenever nothing is ready,
  so a 20 s call with real pacing runs in a fraction of a second and every sleep, timeout and
  deadline agrees (use `voice.clock.LoopClock` as the session's clock).
- `SimulatedPhone`: a `CallTransport` with Twilio Media Streams semantics on the far end: audio
  is queued and played at real time, a mark is echoed when everything before it has played, and
  `clear` drops what is queued (echoing its marks). It records what the caller heard and when.
- `ListeningStt`: a streaming transcriber that listens to the audio it is sent, as Deepgram does:
  energy-detected speech segments get the next scripted text, revealed word by word in interim
  results no more often than `interim_every`, a `speech_final` result `endpointing` after the
  segment's trailing silence, an answer to `finalize()`, and empty finals in silence.

The session under test is the real one with real VAD and pacing; only time and the network are
simulated.
"""

from __future__ import annotations

import asyncio
import math
import selectors
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from media.audio_format import MULAW_8K, AudioFormat
from media.g711 import ulaw_to_pcm16
from media.transport import (
    AudioReceived,
    DtmfReceived,
    InboundEvent,
    MarkReceived,
    StreamStopped,
    TransportClosed,
)
from voice.types import SAMPLE_RATE, Transcript

__all__ = [
    "CallerScript",
    "Digits",
    "Line",
    "ListeningStt",
    "SimulatedPhone",
    "VirtualTimeLoop",
    "run_virtual",
]

T = TypeVar("T")
FRAME = 160  # 20 ms of μ-law at 8 kHz
SILENCE_FRAME = b"\xff" * FRAME


class _JumpingSelector(selectors.DefaultSelector):
    """Never waits for a timer: moves the loop's clock to it instead."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            # No timer at all: only another thread can wake the loop (an executor job).
            return super().select(None)
        self._loop.virtual_now += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time. Work sent to threads (executors) is not simulated:
    virtual time may pass while it runs, so keep in-loop engines for simulated calls."""

    def __init__(self) -> None:
        self.virtual_now = 0.0
        super().__init__(_JumpingSelector(self))

    def time(self) -> float:
        return self.virtual_now


def run_virtual(main: Coroutine[Any, Any, T], *, limit: float = 600.0) -> T:
    """Run `main` to completion in virtual time; fail if it takes over `limit` virtual seconds."""
    loop = VirtualTimeLoop()
    try:

        async def bounded() -> T:
            async with asyncio.timeout(limit):
                return await main

        return loop.run_until_complete(bounded())
    finally:
        loop.close()


# --- the phone ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Played:
    start: float
    end: float


@dataclass
class SimulatedPhone:
    """The far end of a Twilio media stream, and the caller holding the phone."""

    kind: str = "twilio"
    audio_format: AudioFormat = MULAW_8K
    heard: list[_Played] = field(default_factory=list)  # assistant audio the caller heard
    clears: list[float] = field(default_factory=list)
    marks_echoed: list[str] = field(default_factory=list)
    closed_reason: str | None = None

    def __post_init__(self) -> None:
        self._inbound: asyncio.Queue[InboundEvent | None] = asyncio.Queue(maxsize=512)
        self._play_end = -math.inf
        self._pending_marks: list[tuple[asyncio.TimerHandle, str]] = []

    # CallTransport (the server's side)

    async def receive(self) -> InboundEvent:
        event = await self._inbound.get()
        if event is None:
            raise TransportClosed("caller hung up")
        return event

    async def send_audio(self, audio: bytes) -> None:
        now = _now()
        start = max(now, self._play_end)
        self._play_end = start + len(audio) / SAMPLE_RATE
        if self.heard and abs(self.heard[-1].end - start) < 1e-9:
            self.heard[-1].end = self._play_end
        else:
            self.heard.append(_Played(start, self._play_end))

    async def send_mark(self, name: str) -> None:
        delay = max(0.0, self._play_end - _now())
        handle = asyncio.get_running_loop().call_later(delay, self._echo, name)
        self._pending_marks.append((handle, name))

    async def send_clear(self) -> None:
        now = _now()
        self.clears.append(now)
        self.heard = [p for p in self.heard if p.start < now]
        if self.heard and self.heard[-1].end > now:
            self.heard[-1].end = now
        self._play_end = now
        pending, self._pending_marks = self._pending_marks, []
        for handle, name in pending:  # Twilio echoes the marks of cleared audio at once
            handle.cancel()
            self._echo(name)

    async def close(self, reason: str) -> None:
        self.closed_reason = reason

    def _echo(self, name: str) -> None:
        self._pending_marks = [(h, n) for h, n in self._pending_marks if n != name]
        self.marks_echoed.append(name)
        self._inbound.put_nowait(MarkReceived(name))

    # the caller

    async def say(self, audio: bytes) -> None:
        """Send `audio` as 20 ms media frames at real time (on the loop's clock)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        for n, offset in enumerate(range(0, len(audio), FRAME)):
            frame = audio[offset : offset + FRAME].ljust(FRAME, b"\xff")
            await _sleep_until(start + n * FRAME / SAMPLE_RATE)
            if self.closed_reason is not None:
                return  # the server ended the call: the line is dead
            await self._inbound.put(AudioReceived(frame))
        await _sleep_until(start + math.ceil(len(audio) / FRAME) * FRAME / SAMPLE_RATE)

    async def pause(self, seconds: float) -> None:
        await self.say(SILENCE_FRAME * round(seconds * SAMPLE_RATE / FRAME))

    async def press(self, keys: str, gap: float) -> None:
        """Press `keys` on the keypad, one every `gap` seconds. The line stays open meanwhile:
        Twilio goes on sending (silent) media frames between `dtmf` events."""
        for key in keys:
            if self.closed_reason is not None:
                return
            await self._inbound.put(DtmfReceived(key))
            await self.pause(gap)

    async def hang_up(self) -> None:
        if self.closed_reason is None:
            await self._inbound.put(StreamStopped())

    def drop(self) -> None:
        """The connection drops without a stop message."""
        self._inbound.put_nowait(None)

    def hearing(self, at: float) -> bool:
        """Was assistant audio playing at the phone at `at`?"""
        return any(p.start <= at < p.end for p in self.heard)

    def heard_between(self, start: float, end: float) -> float:
        """Seconds of assistant audio the caller heard between `start` and `end`."""
        return sum(max(0.0, min(end, p.end) - max(start, p.start)) for p in self.heard)

    def silent_from(self, at: float) -> float:
        """When the caller stopped hearing the assistant after `at` (`at` if already silent)."""
        ends = [p.end for p in self.heard if p.end > at and p.start <= at]
        if not ends:
            return at
        end = max(ends)
        for p in sorted(self.heard, key=lambda p: p.start):  # contiguous audio that follows
            if p.start <= end + 1e-9 and p.end > end:
                end = p.end
        return end


@dataclass(frozen=True, slots=True)
class Digits:
    """Keys pressed on the caller's keypad, `gap` seconds apart (a brisk typist's pace)."""

    keys: str
    gap: float = 0.2


@dataclass(frozen=True, slots=True)
class CallerScript:
    """What the caller does, in order: audio to say, keys to press, or seconds of silence."""

    steps: Sequence[bytes | float | Digits]

    async def run(self, phone: SimulatedPhone) -> None:
        for step in self.steps:
            if isinstance(step, bytes):
                await phone.say(step)
            elif isinstance(step, Digits):
                await phone.press(step.keys, step.gap)
            else:
                await phone.pause(step)


def _now() -> float:
    return asyncio.get_running_loop().time()


async def _sleep_until(deadline: float) -> None:
    delay = deadline - _now()
    await asyncio.sleep(delay if delay > 0 else 0)


# --- the transcriber ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Line:
    """One speech segment's words and how long the caller takes to say them."""

    text: str
    seconds: float


class ListeningStt:
    """A streaming STT that hears the audio it is sent (see the module docstring)."""

    name = "listening-stt"

    def __init__(
        self,
        lines: Sequence[Line],
        *,
        interim_every: float = 0.25,
        endpointing: float = 0.1,
        latency: float = 0.1,
        silence_final_every: float = 1.0,
        speech_dbfs: float = -40.0,
    ) -> None:
        self.lines = list(lines)
        self.interim_every = interim_every
        self.endpointing = endpointing
        self.latency = latency
        self.silence_final_every = silence_final_every
        self.speech_rms = 32768 * 10 ** (speech_dbfs / 20)
        self.streams: list[ListeningSttStream] = []

    async def connect(self) -> ListeningSttStream:
        stream = ListeningSttStream(self)
        self.streams.append(stream)
        return stream


class ListeningSttStream:
    def __init__(self, stt: ListeningStt) -> None:
        self._stt = stt
        self._results: asyncio.Queue[Transcript | None] = asyncio.Queue(maxsize=256)
        self.sent: list[tuple[float, Transcript]] = []
        self._audio_time = 0.0
        self._speech = 0.0  # seconds of speech in the current segment
        self._silence = 0.0  # seconds of silence since the segment's last speech
        self._in_segment = False
        self._line: Line | None = None
        self._revealed = 0  # words of the line already finalised
        self._interim_words = 0
        self._next_interim = 0.0
        self._silent_for = 0.0

    async def send_audio(self, audio: bytes) -> None:
        pcm = np.frombuffer(ulaw_to_pcm16(audio), dtype="<i2").astype(np.float64)
        voiced = bool(pcm.size) and float(np.sqrt(np.mean(pcm * pcm))) >= self._stt.speech_rms
        seconds = len(audio) / SAMPLE_RATE
        self._audio_time += seconds
        if voiced:
            self._on_speech(seconds)
        else:
            self._on_silence(seconds)

    def _on_speech(self, seconds: float) -> None:
        stt = self._stt
        if not self._in_segment:
            self._in_segment = True
            self._speech = self._silence = 0.0
            if self._line is None or self._revealed >= len(self._line.text.split()):
                self._line = stt.lines.pop(0) if stt.lines else Line("", 1.0)
                self._revealed = 0
            self._interim_words = self._revealed
            self._next_interim = stt.interim_every
        self._speech += seconds
        self._silence = 0.0
        self._silent_for = 0.0
        if self._speech >= self._next_interim:
            self._next_interim += stt.interim_every
            words = self._spoken_words()
            if words > self._interim_words:
                self._interim_words = words
                self._emit(self._text(self._revealed, words), is_final=False)

    def _on_silence(self, seconds: float) -> None:
        stt = self._stt
        if self._in_segment:
            self._silence += seconds
            if self._silence >= stt.endpointing:
                self._in_segment = False
                self._final(speech_final=True)
            return
        self._silent_for += seconds
        if self._silent_for >= stt.silence_final_every:
            self._silent_for = 0.0
            self._emit("", is_final=True)

    def _spoken_words(self) -> int:
        line = self._line
        assert line is not None
        words = len(line.text.split())
        spoken = self._revealed_seconds() + self._speech
        return min(words, math.floor(words * spoken / line.seconds + 0.5))

    def _revealed_seconds(self) -> float:
        line = self._line
        assert line is not None
        words = len(line.text.split())
        return line.seconds * self._revealed / words if words else 0.0

    def _text(self, start: int, end: int) -> str:
        assert self._line is not None
        return " ".join(self._line.text.split()[start:end])

    def _final(self, *, speech_final: bool) -> None:
        if self._line is None:
            self._emit("", is_final=True, speech_final=speech_final)
            return
        words = len(self._line.text.split())
        # At the end of a segment the words said so far are final; the last segment of a
        # line gets all of them (the script's timing is approximate, the STT's isn't).
        end = words if speech_final and self._spoken_words() >= words - 1 else self._spoken_words()
        text = self._text(self._revealed, end)
        self._revealed = end
        self._interim_words = end
        self._speech = 0.0
        self._emit(text, is_final=True, speech_final=speech_final)

    def _emit(self, text: str, *, is_final: bool, speech_final: bool = False) -> None:
        result = Transcript(text, is_final=is_final, speech_final=speech_final)
        loop = asyncio.get_running_loop()
        loop.call_later(self._stt.latency, self._deliver, result)

    def _deliver(self, result: Transcript) -> None:
        self.sent.append((_now(), result))
        if not self._results.full():  # overflow: a consumer this far behind has failed anyway
            self._results.put_nowait(result)

    async def finalize(self) -> None:
        if self._in_segment:
            self._in_segment = False
            self._final(speech_final=True)

    async def transcripts(self) -> AsyncIterator[Transcript]:
        while (item := await self._results.get()) is not None:
            yield item

    async def aclose(self) -> None:
        if self._results.full():
            self._results.get_nowait()
        self._results.put_nowait(None)
