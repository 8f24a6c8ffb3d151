"""The benchmark's own arithmetic: percentiles and the measures taken from a call trace."""

from __future__ import annotations

import pytest

from benchmarks.analysis import measure_call, outbound_gaps, speech_segments
from benchmarks.stats import percentile, summarize
from media.g711 import ulaw_silence
from media.twilio.caller import CallTrace
from voice.testing import tone_ulaw

TONE = tone_ulaw(0.1)  # 100 ms of voiced assistant audio
QUIET = ulaw_silence(800)


def frames(start: float, end: float) -> list[float]:
    count = round((end - start) / 0.02)
    return [round(start + i * 0.02, 6) for i in range(count)]


def test_percentiles_match_linear_interpolation() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([5], 99) == 5
    assert percentile(list(range(101)), 95) == 95
    assert percentile([3, 1, 2], 0) == 1 and percentile([3, 1, 2], 100) == 3
    with pytest.raises(ValueError):
        percentile([], 50)
    summary = summarize([0.1, 0.2, 0.3])
    assert summary is not None and summary.as_ms()["p50"] == 200.0
    assert summarize([]) is None


def test_speech_segments_join_short_pauses() -> None:
    times = frames(1.0, 1.5) + frames(1.8, 2.0) + frames(3.0, 3.2)
    assert [(round(s.start, 2), round(s.end, 2)) for s in speech_segments(times)] == [
        (1.0, 2.0),
        (3.0, 3.2),
    ]


def test_greeting_turns_and_unanswered() -> None:
    trace = CallTrace(start_sent=0.05)
    trace.received = [(0.06, True), (0.16, True), (0.5, False)]  # greeting
    trace.voiced_sent = frames(2.0, 3.0) + frames(6.0, 7.0)
    trace.received += [(3.9, False), (4.2, True), (4.3, True)]  # reply 1: 1.2 s after speech end
    measures = measure_call(trace)
    assert measures.greeting == pytest.approx(0.01)
    assert measures.voice_to_voice == [pytest.approx(1.2)]
    assert measures.unanswered_turns == 1  # nothing came back after the second question
    assert measures.barge_ins == []


def test_barge_in_reaction_to_clear_and_to_silence() -> None:
    trace = CallTrace()
    # the assistant talks from 1.0 s on: audio arrives ahead and plays back to back
    trace.received = [(1.0 + i * 0.1, True) for i in range(20)]
    trace.voiced_sent = frames(2.0, 2.6)  # the caller cuts in at 2.0 s
    trace.clears = [2.25]
    # what played: back-to-back 100 ms chunks from 1.0 s, cut by the clear at 2.25 s
    trace.played = [(1.0 + i * 0.1, TONE) for i in range(12)] + [(2.2, TONE[:400])]
    (barge_in,) = measure_call(trace).barge_ins
    assert barge_in.onset == 2.0
    assert barge_in.to_clear == pytest.approx(0.25)
    assert barge_in.to_silence == pytest.approx(0.25)


def test_outbound_gaps_only_inside_an_utterance() -> None:
    played = [(1.0, TONE), (1.1, TONE), (1.3, TONE), (1.4, QUIET), (5.0, TONE)]
    # 1.2 → 1.3 is a 100 ms underrun inside the reply; 1.5 → 5.0 spans a caller turn at 3.0
    assert outbound_gaps(played, boundaries=[3.0]) == [pytest.approx(0.1)]
    assert outbound_gaps(played, boundaries=[]) == [pytest.approx(0.1), pytest.approx(3.5)]


def test_a_reply_cut_by_a_clear_and_the_next_reply_are_not_a_gap() -> None:
    trace = CallTrace()
    trace.received = [(1.0 + i * 0.1, True) for i in range(12)]
    trace.voiced_sent = frames(1.5, 2.5)  # barge-in from 1.5 s to 2.5 s
    trace.clears = [1.75]
    # the first reply played 1.0 → 1.75 (cut), the answer to the barge-in starts at 3.3
    trace.played = [(1.0 + i * 0.1, TONE) for i in range(7)] + [(1.7, TONE[:400])]
    trace.played += [(3.3, TONE), (3.4, TONE), (3.6, TONE)]  # …and runs dry 3.5 → 3.6
    assert measure_call(trace).gaps == [pytest.approx(0.1)]
