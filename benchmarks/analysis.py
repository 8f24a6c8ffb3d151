"""Latency measures from a simulated call's trace (pure: no sockets, no clocks).

The definitions the benchmark reports:
- voice-to-voice: the caller's last voiced frame sent → the first voiced assistant frame received
  after it, if that arrives before the caller speaks again;
- greeting: `start` sent → the first voiced assistant frame received;
- barge-in: for caller speech that starts while the assistant is audible, onset → `clear`
  received, and onset → the end of the last voiced assistant audio the phone actually played;
- outbound gaps: inside one assistant utterance (no caller speech and no `clear` in between),
  places where the phone's playback ran dry for longer than 60 ms.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from media.twilio.caller import CallTrace, voiced

__all__ = [
    "BargeInMeasure",
    "CallMeasures",
    "Segment",
    "measure_call",
    "outbound_gaps",
    "played_frames",
    "speech_segments",
]

FRAME_SECONDS = 0.02
FRAME_BYTES = 160
GAP_THRESHOLD = 0.06
# Pauses inside one utterance (between words) are shorter than this; turns are longer.
SPEECH_JOIN = 0.5
AUDIBLE_WINDOW = 0.3  # assistant audio received this recently counts as "speaking"


@dataclass(frozen=True, slots=True)
class Segment:
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class BargeInMeasure:
    onset: float
    to_clear: float | None
    to_silence: float | None


@dataclass(frozen=True, slots=True)
class CallMeasures:
    greeting: float | None
    voice_to_voice: list[float]
    barge_ins: list[BargeInMeasure]
    gaps: list[float]
    unanswered_turns: int


def speech_segments(voiced_times: Sequence[float], join: float = SPEECH_JOIN) -> list[Segment]:
    """Runs of voiced 20 ms frames, joining pauses shorter than `join`."""
    segments: list[Segment] = []
    for t in voiced_times:
        if segments and t - segments[-1].end <= join:
            segments[-1] = Segment(segments[-1].start, t + FRAME_SECONDS)
        else:
            segments.append(Segment(t, t + FRAME_SECONDS))
    return segments


def played_frames(played: Sequence[tuple[float, bytes]]) -> list[tuple[float, float, bool]]:
    """(start, end, voiced) of every 20 ms frame the phone played (the last may be shorter)."""
    frames: list[tuple[float, float, bool]] = []
    for start, audio in played:
        for offset in range(0, len(audio), FRAME_BYTES):
            frame = audio[offset : offset + FRAME_BYTES]
            begin = start + offset / 8000
            frames.append((begin, begin + len(frame) / 8000, voiced(frame)))
    return frames


def outbound_gaps(
    played: Sequence[tuple[float, bytes]],
    boundaries: Sequence[float],
    threshold: float = GAP_THRESHOLD,
) -> list[float]:
    """Playback underruns longer than `threshold` that no caller turn (`boundaries`) separates."""
    gaps: list[float] = []
    ordered = sorted(boundaries)
    for (start_a, audio_a), (start_b, _) in zip(played, played[1:], strict=False):
        end_a = start_a + len(audio_a) / 8000
        gap = start_b - end_a
        if gap <= threshold:
            continue
        # a caller turn started in between: a new utterance, not a gap
        if bisect.bisect_left(ordered, end_a) != bisect.bisect_left(ordered, start_b):
            continue
        gaps.append(gap)
    return gaps


def measure_call(trace: CallTrace) -> CallMeasures:
    voiced_rx = [t for t, is_voiced in trace.received if is_voiced]
    caller = speech_segments(trace.voiced_sent)
    greeting = None
    if voiced_rx and (not caller or voiced_rx[0] < caller[0].start):
        greeting = voiced_rx[0] - trace.start_sent

    v2v: list[float] = []
    unanswered = 0
    barge_ins: list[BargeInMeasure] = []
    played = played_frames(trace.played)
    for i, segment in enumerate(caller):
        next_start = caller[i + 1].start if i + 1 < len(caller) else float("inf")
        k = bisect.bisect_right(voiced_rx, segment.end)
        if k < len(voiced_rx) and voiced_rx[k] < next_start:
            v2v.append(voiced_rx[k] - segment.end)
        else:
            unanswered += 1
        # Was the assistant audible when the caller started? Then this is a barge-in.
        j = bisect.bisect_left(voiced_rx, segment.start)
        if j > 0 and segment.start - voiced_rx[j - 1] <= AUDIBLE_WINDOW:
            clears = [c for c in trace.clears if segment.start <= c <= segment.end + 1.0]
            to_clear = clears[0] - segment.start if clears else None
            heard = [
                end
                for begin, end, is_voiced in played
                if is_voiced and segment.start <= begin < segment.end
            ]
            to_silence = (heard[-1] - segment.start) if heard else 0.0
            barge_ins.append(BargeInMeasure(segment.start, to_clear, to_silence))

    # Caller speech (its start or its end) or a clear between two played chunks means the
    # assistant started a new utterance, not that its audio ran dry.
    boundaries = [s.start for s in caller] + [s.end for s in caller] + trace.clears
    gaps = outbound_gaps(trace.played, boundaries)
    return CallMeasures(greeting, v2v, barge_ins, gaps, unanswered)
