"""`PhoneLine`: the Twilio side of one Media Stream, as a pure object driven with explicit times.

It stands in for Twilio plus the caller's handset in the simulated caller, the end-to-end tests
and the benchmarks. It emits what Twilio emits (`connected`, `start`, `media`, `dtmf`, `stop`,
mark echoes) with Twilio's numbering, and models Twilio's playback of the server's audio: media
is queued and plays in real time, a mark is echoed when everything queued before it has played,
and `clear` drops the queue and echoes every pending mark at once. Everything that was played is
kept with its start time, so a test can reconstruct what the caller heard and when.

Every method takes `now` (seconds, any monotonic origin); nothing here reads a clock.
"""

from __future__ import annotations

import base64
import json
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from media.g711 import SILENCE_BYTE
from media.twilio.messages import (
    DTMF_DIGITS,
    Connected,
    Dtmf,
    Mark,
    OutClear,
    OutMark,
    OutMedia,
    ProtocolError,
    Start,
    Stop,
    encode_inbound,
    parse_outbound,
)

__all__ = [
    "DEFAULT_ACCOUNT_SID",
    "DEFAULT_CALL_SID",
    "DEFAULT_STREAM_SID",
    "PhoneLine",
    "PlayedSegment",
]

DEFAULT_ACCOUNT_SID = "AC00000000000000000000000000000001"
DEFAULT_STREAM_SID = "MZ00000000000000000000000000000001"
DEFAULT_CALL_SID = "CA00000000000000000000000000000001"

_RATE = 8000  # μ-law bytes per second
# Float sums of 20 ms steps drift by ~1e-15; a mark due "exactly" at a frame edge must fire.
_EPSILON = 1e-9


@dataclass(slots=True)
class PlayedSegment:
    """One outbound media payload as played: from `start`, `audio` (cut short by a clear)."""

    start: float
    audio: bytes

    @property
    def end(self) -> float:
        return self.start + len(self.audio) / _RATE

    def played_by(self, now: float) -> bytes:
        if now >= self.end - _EPSILON:
            return self.audio
        return self.audio[: max(0, int((now - self.start) * _RATE + _EPSILON))]


class PhoneLine:
    def __init__(
        self,
        *,
        stream_sid: str = DEFAULT_STREAM_SID,
        call_sid: str = DEFAULT_CALL_SID,
        account_sid: str = DEFAULT_ACCOUNT_SID,
        custom_parameters: Mapping[str, str] | None = None,
    ) -> None:
        self.stream_sid = stream_sid
        self.call_sid = call_sid
        self.account_sid = account_sid
        self.custom_parameters = dict(custom_parameters or {})
        self.started_at: float | None = None
        self.stopped_at: float | None = None
        self._sequence = 0
        self._chunk = 0
        self._sent_bytes = 0
        self._segments: list[PlayedSegment] = []
        # Playback is a run of back-to-back audio from `_run_start`; its end is computed as
        # start + bytes/rate in one step so long runs do not accumulate float error.
        self._run_start = 0.0
        self._run_bytes = 0
        self._pending_marks: deque[tuple[str, float]] = deque()
        self.media_received = 0
        self.marks_received = 0
        self.marks_echoed = 0
        self.clears_received = 0
        self.ignored_after_stop = 0
        # `media()` runs 50 times a second per simulated call: its JSON is built from a template
        # (byte for byte what `encode_inbound` makes; a test holds the two together).
        self._media_tail = '"},"streamSid":' + json.dumps(stream_sid, ensure_ascii=False) + "}"

    @property
    def started(self) -> bool:
        return self.started_at is not None

    @property
    def stopped(self) -> bool:
        return self.stopped_at is not None

    @property
    def sequence_number(self) -> int:
        """The last sequence number used (0 before `start`)."""
        return self._sequence

    # --- Twilio → server ---------------------------------------------------------------------

    def connected(self, now: float | None = None) -> str:
        # Carries no time or number; `now` is accepted for symmetry with the other messages.
        return encode_inbound(Connected("Call", "1.0.0"))

    def start(self, now: float) -> str:
        if self.started_at is not None:
            raise RuntimeError("start() called twice")
        self.started_at = now
        self._run_start = now
        return encode_inbound(
            Start(
                self._next_sequence(),
                self.stream_sid,
                self.call_sid,
                self.account_sid,
                ("inbound",),
                dict(self.custom_parameters),
                "audio/x-mulaw",
                _RATE,
                1,
            )
        )

    def media(self, frame: bytes, now: float) -> str:
        """One frame of caller audio (normally 160 bytes = 20 ms)."""
        self._require_live("media")
        self._chunk += 1
        # Presentation time follows the audio itself, so it advances 20 ms per 160-byte frame.
        timestamp = self._sent_bytes * 1000 // _RATE
        self._sent_bytes += len(frame)
        return (
            f'{{"event":"media","sequenceNumber":"{self._next_sequence()}","media":'
            f'{{"track":"inbound","chunk":"{self._chunk}","timestamp":"{timestamp}",'
            f'"payload":"{base64.b64encode(frame).decode("ascii")}{self._media_tail}'
        )

    def dtmf(self, digit: str, now: float) -> str:
        self._require_live("dtmf")
        if len(digit) != 1 or digit not in DTMF_DIGITS:
            raise ValueError(f"not a DTMF digit: {digit!r}")
        return encode_inbound(Dtmf(self._next_sequence(), self.stream_sid, "inbound_track", digit))

    def stop(self, now: float) -> str:
        """The caller hangs up. Marks still pending are never echoed, as with Twilio."""
        self._require_live("stop")
        self.stopped_at = now
        self._pending_marks.clear()
        return encode_inbound(
            Stop(self._next_sequence(), self.stream_sid, self.account_sid, self.call_sid)
        )

    def due_messages(self, now: float) -> list[str]:
        """Mark echoes due by `now`, each taking the next sequence number."""
        out: list[str] = []
        while self._pending_marks and self._pending_marks[0][1] <= now + _EPSILON:
            name, _ = self._pending_marks.popleft()
            self.marks_echoed += 1
            out.append(encode_inbound(Mark(self._next_sequence(), self.stream_sid, name)))
        return out

    def next_due(self) -> float | None:
        """When the next mark echo falls due, for a driver that sleeps until then."""
        return self._pending_marks[0][1] if self._pending_marks else None

    def _next_sequence(self) -> int:
        self._sequence += 1
        return self._sequence

    def _require_live(self, what: str) -> None:
        if self.started_at is None:
            raise RuntimeError(f"{what} before start()")
        if self.stopped_at is not None:
            raise RuntimeError(f"{what} after stop()")

    # --- server → Twilio ---------------------------------------------------------------------

    def receive_text(self, text: str, now: float) -> bytes:
        """Consume one server text frame; returns the μ-law payload if it was media, else b"".

        Echoes it makes due (a mark with nothing queued before it, every pending mark on a
        `clear`) are due at `now`: the next `due_messages(now)` returns them."""
        msg = parse_outbound(text)
        if self.started_at is None:
            raise ProtocolError(f"{type(msg).__name__} before start")
        if msg.stream_sid != self.stream_sid:
            raise ProtocolError(f"unknown streamSid {msg.stream_sid!r:.60}")
        if self.stopped_at is not None:
            # In flight when the caller hung up; Twilio discards it with the socket.
            self.ignored_after_stop += 1
            return b""
        if isinstance(msg, OutMedia):
            self.media_received += 1
            self._enqueue(msg.payload, now)
            return msg.payload
        if isinstance(msg, OutMark):
            self.marks_received += 1
            self._pending_marks.append((msg.name, max(now, self._queue_end())))
        elif isinstance(msg, OutClear):
            self.clears_received += 1
            self._clear(now)
        return b""

    def _queue_end(self) -> float:
        return self._run_start + self._run_bytes / _RATE

    def _enqueue(self, audio: bytes, now: float) -> None:
        if not audio:
            return
        start = self._queue_end()
        if now > start + _EPSILON:  # the queue ran dry: a new run starts now
            self._run_start, self._run_bytes, start = now, 0, now
        self._segments.append(PlayedSegment(start, audio))
        self._run_bytes += len(audio)

    def _clear(self, now: float) -> None:
        # Segments are in playback order: only the tail can still be queued or playing.
        segments = self._segments
        while segments and segments[-1].end > now + _EPSILON:
            if segments[-1].start < now - _EPSILON:
                segments[-1].audio = segments[-1].played_by(now)  # cut mid-payload
                break
            segments.pop()  # had not started: dropped entirely
        self._run_start, self._run_bytes = now, 0
        # Twilio echoes marks flushed by a clear; the echo proves nothing was played.
        self._pending_marks = deque((name, now) for name, _ in self._pending_marks)

    # --- what the caller heard ---------------------------------------------------------------

    def queued_seconds(self, now: float) -> float:
        """Server audio received but not yet played at `now`."""
        return max(0.0, self._queue_end() - now)

    def played_segments(self, now: float) -> list[PlayedSegment]:
        """Payloads that had started playing by `now`, each cut to what had played."""
        return [
            PlayedSegment(s.start, s.played_by(now))
            for s in self._segments
            if s.start <= now + _EPSILON and s.played_by(now)
        ]

    def played_audio(self, now: float) -> bytes:
        """Everything played by `now`, back to back (gaps between runs removed)."""
        return b"".join(s.audio for s in self.played_segments(now))

    def played_seconds(self, now: float) -> float:
        return len(self.played_audio(now)) / _RATE

    def timeline(self, start: float, end: float) -> bytes:
        """What the caller's earpiece carried from `start` to `end`: μ-law at 8 kHz, silence
        (0xFF) wherever nothing played. Byte i is the sound at `start + i / 8000`."""
        out = bytearray([SILENCE_BYTE]) * max(0, round((end - start) * _RATE))
        for segment in self.played_segments(end):
            offset = round((segment.start - start) * _RATE)
            audio = segment.audio
            if offset < 0:
                audio, offset = audio[-offset:], 0
            audio = audio[: max(0, len(out) - offset)]
            out[offset : offset + len(audio)] = audio
        return bytes(out)
