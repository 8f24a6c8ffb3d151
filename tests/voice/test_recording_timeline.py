"""The stereo timeline (voice/recording.py) with byte fixtures: 8 samples per second, so every
sample of the output is written out in the expected value."""

from __future__ import annotations

import struct

from voice.recording import StereoTimeline
from voice.recording_urls import recording_artifact

RATE = 10  # samples per second: 0.1 s per sample


def pcm(*samples: int) -> bytes:
    return struct.pack(f"<{len(samples)}h", *samples)


def frames(stereo: bytes) -> list[tuple[int, int]]:
    values = struct.unpack(f"<{len(stereo) // 2}h", stereo)
    return list(zip(values[0::2], values[1::2], strict=True))


def timeline(**options: float) -> StereoTimeline:
    return StereoTimeline(RATE, start=100.0, **options)


def test_both_legs_are_interleaved_caller_left_assistant_right() -> None:
    t = timeline()
    t.assistant(pcm(7, 8, 9, 10), 100.0)  # plays 100.0 .. 100.4
    t.caller(pcm(1, 2), 100.2)  # arrived at 100.2: samples 0-1
    assert frames(t.advance(100.2)) == [(1, 7), (2, 8)]
    t.caller(pcm(3, 4), 100.4)
    assert frames(t.advance(100.4)) == [(3, 9), (4, 10)]
    assert t.emitted == 4


def test_assistant_audio_is_never_emitted_before_its_play_time() -> None:
    t = timeline()
    t.assistant(pcm(5, 5, 5), 100.0)
    t.caller(pcm(1, 1, 1, 1, 1), 100.0)  # the caller ran ahead (a burst)
    # Only up to now: the rest of the assistant's audio may still be cleared.
    assert frames(t.advance(100.1)) == [(1, 5)]


def test_a_gap_in_the_callers_frames_is_silence_and_later_audio_lands_at_its_time() -> None:
    t = timeline(caller_gap_seconds=0.2)
    t.caller(pcm(1, 1), 100.2)
    assert frames(t.advance(100.2)) == [(1, 0), (1, 0)]
    # Nothing from the caller for a while; at 101.0 two samples arrive: they are 100.8-101.0.
    t.caller(pcm(2, 2), 101.0)
    assert frames(t.advance(101.0)) == [(0, 0)] * 6 + [(2, 0), (2, 0)]


def test_jitter_within_the_gap_keeps_the_callers_audio_contiguous() -> None:
    t = timeline(caller_gap_seconds=0.2)
    t.caller(pcm(1, 1), 100.2)
    t.caller(pcm(2, 2), 100.5)  # 0.1 s late: still right after the previous frame
    assert frames(t.advance(100.5)) == [(1, 0), (1, 0), (2, 0), (2, 0)]


def test_queued_assistant_audio_plays_back_to_back_then_silence_when_nothing_is_sent() -> None:
    t = timeline()
    t.assistant(pcm(5, 6), 100.0)
    t.assistant(pcm(7, 8), 100.1)  # queued behind the first: plays 100.2 .. 100.4
    # Output paused (nothing sent) until 100.7: silence after the queue drained.
    t.caller(pcm(*([1] * 7)), 100.7)
    assert frames(t.advance(100.7)) == [(1, 5), (1, 6), (1, 7), (1, 8), (1, 0), (1, 0), (1, 0)]


def test_a_clear_cuts_the_audio_that_had_not_played_yet() -> None:
    t = timeline()
    t.assistant(pcm(5, 6, 7, 8, 9), 100.0)  # would play 100.0 .. 100.5
    t.caller(pcm(1, 1), 100.2)
    assert frames(t.advance(100.2)) == [(1, 5), (1, 6)]
    t.clear(100.3)  # the caller heard 5, 6, 7; 8 and 9 were dropped at the far end
    t.caller(pcm(2, 2, 2, 2), 100.6)
    assert frames(t.advance(100.6)) == [(2, 7), (2, 0), (2, 0), (2, 0)]


def test_audio_sent_after_a_clear_plays_from_the_clear_not_after_the_dropped_queue() -> None:
    t = timeline()
    t.assistant(pcm(5, 5, 5, 5, 5, 5), 100.0)
    t.clear(100.1)
    t.assistant(pcm(9), 100.2)
    t.caller(pcm(1, 1, 1, 1), 100.4)
    assert frames(t.advance(100.4)) == [(1, 5), (1, 0), (1, 9), (1, 0)]


def test_a_silent_caller_does_not_hold_the_recording_back_past_the_lag() -> None:
    t = timeline(max_caller_lag_seconds=0.3)
    t.assistant(pcm(5, 5, 5, 5, 5, 5, 5, 5, 5, 5), 100.0)
    assert frames(t.advance(101.0)) == [(0, 5)] * 7  # up to now - lag
    # The caller is back: its frame lands at its own time (100.9), not at the quiet caller's end.
    t.caller(pcm(3), 101.0)
    assert frames(t.finish(101.1)) == [(0, 5), (0, 5), (3, 5), (0, 0)]


def test_finish_cuts_queued_assistant_audio_and_keeps_the_callers_frames() -> None:
    t = timeline()
    t.assistant(pcm(5, 5, 5, 5, 5), 100.0)
    t.caller(pcm(1, 1, 1), 100.3)
    assert frames(t.finish(100.2)) == [(1, 5), (1, 5), (1, 0)]
    assert t.finish(101.0) == b""
    t.caller(pcm(1), 101.0)
    assert t.advance(102.0) == b""  # nothing after the end


def test_pending_audio_is_bounded_and_what_is_dropped_is_counted() -> None:
    t = timeline(max_pending_seconds=0.5)
    t.caller(pcm(*([1] * 5)), 100.0)  # 5 samples ahead of the clock: fits
    t.caller(pcm(2, 2), 100.0)  # would be 7 pending: dropped
    assert t.dropped_samples == 2
    assert frames(t.advance(100.5)) == [(1, 0)] * 5


def test_the_report_urls_are_vapis_fields_under_the_download_routes() -> None:
    urls = recording_artifact("https://ava.example/", "call_1")
    base = "https://ava.example/call/call_1"
    assert urls["recordingUrl"] == f"{base}/mono-recording"
    assert urls["stereoRecordingUrl"] == f"{base}/stereo-recording"
    assert urls["recording"] == {
        "stereoUrl": f"{base}/stereo-recording",
        "mono": {
            "combinedUrl": f"{base}/mono-recording",
            "assistantUrl": f"{base}/assistant-recording",
            "customerUrl": f"{base}/customer-recording",
        },
    }
