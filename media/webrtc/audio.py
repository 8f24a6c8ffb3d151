"""Sans-I/O audio between a browser's WebRTC track and the call loop's frames.

A browser call is wideband: the call's format (`AUDIO_FORMAT`) is 16 kHz PCM16, not the phone
leg's μ-law 8 kHz, so the STT hears and the caller hears everything up to 8 kHz. Any
`media.audio_format.AudioFormat` works (the tests run μ-law 8 kHz through it too).

Inbound, the browser's Opus arrives decoded as 48 kHz int16 (aiortc decodes to stereo): it is
down-mixed, resampled by `StreamingResampler` (emits audio for every packet, so no 100 ms
hold-back) and cut into 20 ms frames of the call's format, the unit the VAD and the STT are fed.

Outbound, `Playout` is the queue in front of the outbound track, with Twilio's semantics: audio
plays in order, a mark is "echoed" once everything queued before it has played, and `clear`
drops what is queued and echoes the pending marks at once. "Played" is the track's own clock:
audio counts as played when the frame carrying it was handed to the encoder one frame period
ago, so marks tell the session what the caller has heard, not what was sent. `FrameSchedule`
is that clock: frame n is due at start + n × 20 ms (absolute, so sleep error never
accumulates). Time is always an argument.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from media.audio_format import FRAME_SECONDS, PCM16_16K, AudioFormat
from media.framing import Framer
from media.resample import StreamingResampler

__all__ = [
    "AUDIO_FORMAT",
    "FRAME_SECONDS",
    "FrameSchedule",
    "InboundAudio",
    "Playout",
    "Tick",
]

AUDIO_FORMAT = PCM16_16K  # what a browser call carries between the track and the session


class InboundAudio:
    """Decoded browser audio (interleaved int16, any rate and channel count) → 20 ms frames of
    `audio_format`."""

    def __init__(self, audio_format: AudioFormat = AUDIO_FORMAT) -> None:
        self.audio_format = audio_format
        self._rate = 0
        self._resampler: StreamingResampler | None = None
        self._framer = Framer(audio_format.frame_bytes, audio_format.silence_byte)

    def push(self, pcm16: bytes, sample_rate: int, channels: int) -> list[bytes]:
        """Returns every whole 20 ms frame now available (the rest waits for more)."""
        if sample_rate <= 0 or channels <= 0:
            raise ValueError(f"bad audio format: {sample_rate} Hz, {channels} channels")
        if len(pcm16) % (2 * channels):
            raise ValueError(f"{len(pcm16)} bytes is not a whole number of {channels}-ch samples")
        samples = np.frombuffer(pcm16, dtype="<i2")
        if channels > 1:
            # Browsers send the microphone as identical channels; averaging is exact then.
            mixed = samples.reshape(-1, channels).astype(np.int32).sum(axis=1) // channels
            samples = mixed.astype("<i2")
        if sample_rate != self._rate:
            # A format change mid-call (renegotiation) restarts the filter; a click at most.
            self._rate = sample_rate
            self._resampler = StreamingResampler(sample_rate, self.audio_format.sample_rate)
        assert self._resampler is not None
        pcm = self._resampler.process(samples.tobytes())
        return self._framer.push(self.audio_format.from_pcm16(pcm))


@dataclass(frozen=True, slots=True)
class Tick:
    """What the outbound track does at one frame time."""

    frame: bytes  # 20 ms of the call's format, silence-padded
    marks: tuple[str, ...]  # marks whose audio has now played, in order
    audio_bytes: int  # how much of `frame` is assistant audio (the rest is silence)


class Playout:
    """Assistant audio and marks queued for the outbound track.

    Positions are absolute byte offsets into everything ever queued, so a mark is just "the
    audio up to here". Bounded: more than `max_seconds` queued means the sender is not pacing;
    the oldest audio is dropped (counted in `dropped_bytes`) and the marks before it are echoed
    as if cleared. Pending marks are bounded too; dropping the oldest loses nothing, because an
    echo confirms every mark before it.
    """

    def __init__(
        self,
        max_seconds: float = 2.0,
        max_marks: int = 256,
        audio_format: AudioFormat = AUDIO_FORMAT,
    ) -> None:
        if max_seconds <= 0 or max_marks <= 0:
            raise ValueError("the playout queue needs room for some audio and marks")
        self.audio_format = audio_format
        self.frame_bytes = audio_format.frame_bytes
        self.max_bytes = audio_format.bytes_for(max_seconds)
        self._buffer = bytearray()  # audio from `_handed` to `_end`
        self._handed = 0  # offset of the next byte to hand to the track
        self._end = 0
        self._marks: deque[tuple[int, str]] = deque(maxlen=max_marks)
        self.dropped_bytes = 0

    @property
    def queued_seconds(self) -> float:
        return self.audio_format.seconds(len(self._buffer))

    @property
    def pending_marks(self) -> int:
        return len(self._marks)

    def push_audio(self, audio: bytes) -> None:
        self._buffer += audio
        self._end += len(audio)
        excess = len(self._buffer) - self.max_bytes
        excess += excess % self.audio_format.sample_width  # never split a sample
        if excess > 0:
            del self._buffer[:excess]
            self._handed += excess
            self.dropped_bytes += excess

    def push_mark(self, name: str) -> None:
        self._marks.append((self._end, name))

    def clear(self) -> list[str]:
        """Drop every queued byte now; returns the pending marks, to be echoed at once."""
        self._handed = self._end
        self._buffer.clear()
        names = [name for _, name in self._marks]
        self._marks.clear()
        return names

    def tick(self) -> Tick:
        """The next frame, at its play time. Everything handed over at earlier ticks has
        finished playing by now (each tick is one frame period after the last), so the marks
        up to there are released first."""
        played = self._handed
        marks: list[str] = []
        while self._marks and self._marks[0][0] <= played:
            marks.append(self._marks.popleft()[1])
        size = self.frame_bytes
        audio = bytes(self._buffer[:size])
        del self._buffer[:size]
        self._handed += len(audio)
        frame = audio + self.audio_format.silence(size - len(audio))
        return Tick(frame, tuple(marks), len(audio))


class FrameSchedule:
    """When the outbound track hands over each frame: `start + n × frame_seconds`.

    A stall longer than `max_lag` (a blocked loop, a suspended process) re-anchors the schedule
    at the current time instead of handing the missed frames over in a burst, which would only
    pile audio up in the far end's jitter buffer.
    """

    def __init__(self, frame_seconds: float = FRAME_SECONDS, max_lag: float = 0.1) -> None:
        if frame_seconds <= 0 or max_lag < 0:
            raise ValueError("frame_seconds must be positive and max_lag not negative")
        self.frame_seconds = frame_seconds
        self.max_lag = max_lag
        self._start: float | None = None
        self._frames = 0
        self.reanchored = 0

    def next_due(self, now: float) -> float:
        """The time the next frame is due (possibly in the past, by at most `max_lag`)."""
        if self._start is None:
            self._start = now
        due = self._start + self._frames * self.frame_seconds
        if now - due > self.max_lag:
            self.reanchored += 1
            self._start, self._frames, due = now, 0, now
        self._frames += 1
        return due
