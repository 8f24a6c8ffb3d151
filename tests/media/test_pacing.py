"""Pacer and PlayoutTracker with explicit times (no clocks, no sleeps)."""

from __future__ import annotations

import pytest

from media.pacing import Pacer, PlayoutTracker

# --- Pacer -----------------------------------------------------------------------------------


def test_first_chunk_may_go_at_once() -> None:
    pacer = Pacer(0.2)
    assert pacer.send_at(5.0) == 5.0
    assert pacer.queued(5.0) == 0.0


def test_queue_plays_in_real_time() -> None:
    pacer = Pacer(0.2)
    pacer.sent(0.5, 10.0)
    assert pacer.queued(10.0) == pytest.approx(0.5)
    assert pacer.queued(10.2) == pytest.approx(0.3)
    assert pacer.queued(11.0) == 0.0


def test_send_at_waits_until_only_max_ahead_is_queued() -> None:
    pacer = Pacer(0.2)
    pacer.sent(0.5, 10.0)  # plays 10.0 .. 10.5
    assert pacer.send_at(10.0) == pytest.approx(10.3)
    assert pacer.send_at(10.4) == 10.4  # already allowed: returns now


def test_audio_sent_while_queued_plays_after_it() -> None:
    pacer = Pacer(0.2)
    pacer.sent(0.1, 0.0)
    pacer.sent(0.1, 0.05)  # queued behind the first: ends at 0.2, not 0.15
    assert pacer.queued(0.05) == pytest.approx(0.15)


def test_audio_sent_after_underrun_plays_from_now() -> None:
    pacer = Pacer(0.2)
    pacer.sent(0.1, 0.0)
    pacer.sent(0.1, 1.0)
    assert pacer.queued(1.0) == pytest.approx(0.1)


def test_steady_state_keeps_max_ahead() -> None:
    pacer = Pacer(0.2)
    now = 0.0
    for _ in range(100):
        now = pacer.send_at(now)
        pacer.sent(0.04, now)
        assert pacer.queued(now) <= 0.2 + 0.04 + 1e-9
    # 100 chunks of 40 ms: sending ran 4 s minus the lead it may keep.
    assert now == pytest.approx(4.0 - 0.2 - 0.04)


def test_reset_after_clear() -> None:
    pacer = Pacer(0.2)
    pacer.sent(2.0, 0.0)
    pacer.reset(0.5)
    assert pacer.queued(0.5) == 0.0
    assert pacer.send_at(0.5) == 0.5
    pacer.sent(0.1, 0.5)
    assert pacer.queued(0.5) == pytest.approx(0.1)


def test_max_ahead_must_not_be_negative() -> None:
    with pytest.raises(ValueError):
        Pacer(-0.1)


# --- PlayoutTracker --------------------------------------------------------------------------


def tracker_with_chunks(now: float = 0.0) -> PlayoutTracker:
    """Three chunks (0.2, 0.2, 0.1 s) all sent at `now`, so they play back to back."""
    tracker = PlayoutTracker()
    tracker.add_chunk("r.1", 0.2, now)
    tracker.add_chunk("r.2", 0.2, now)
    tracker.add_chunk("r.3", 0.1, now)
    return tracker


def test_acknowledge_returns_cumulative_seconds() -> None:
    tracker = tracker_with_chunks()
    assert tracker.sent_seconds == pytest.approx(0.5)
    assert not tracker.finished
    assert tracker.acknowledge("r.1", 0.2) == pytest.approx(0.2)
    assert tracker.acknowledge("r.2", 0.4) == pytest.approx(0.4)
    assert tracker.acknowledge("r.3", 0.5) == pytest.approx(0.5)
    assert tracker.finished
    assert tracker.heard_seconds(9.0) == pytest.approx(0.5)


def test_one_echo_confirms_everything_before_it() -> None:
    tracker = tracker_with_chunks()
    assert tracker.acknowledge("r.2", 0.4) == pytest.approx(0.4)
    assert tracker.acknowledge("r.1", 0.4) == pytest.approx(0.4)  # late/duplicate: no change
    assert tracker.acknowledge("other.1", 0.4) == pytest.approx(0.4)
    assert not tracker.finished


def test_heard_interpolates_within_the_playing_chunk() -> None:
    tracker = tracker_with_chunks(now=10.0)
    assert tracker.heard_seconds(10.0) == 0.0
    assert tracker.heard_seconds(10.05) == pytest.approx(0.05)
    # Never beyond the chunk until its mark confirms it.
    assert tracker.heard_seconds(10.5) == pytest.approx(0.2)
    tracker.acknowledge("r.1", 10.21)
    assert tracker.heard_seconds(10.21) == pytest.approx(0.2)
    assert tracker.heard_seconds(10.31) == pytest.approx(0.3)
    assert tracker.heard_seconds(11.0) == pytest.approx(0.4)


def test_next_chunk_sent_after_an_underrun_plays_from_its_send_time() -> None:
    tracker = PlayoutTracker()
    tracker.add_chunk("r.1", 0.2, 0.0)
    tracker.acknowledge("r.1", 0.2)
    tracker.add_chunk("r.2", 0.2, 1.0)  # the far end sat silent 0.2 .. 1.0
    assert tracker.heard_seconds(0.9) == pytest.approx(0.2)
    assert tracker.heard_seconds(1.1) == pytest.approx(0.3)


def test_without_times_only_confirmed_chunks_count() -> None:
    tracker = PlayoutTracker()
    tracker.add_chunk("r.1", 0.2)
    tracker.add_chunk("r.2", 0.2)
    assert tracker.heard_seconds(100.0) == 0.0
    tracker.acknowledge("r.1")
    assert tracker.heard_seconds(100.0) == pytest.approx(0.2)


def test_clear_freezes_heard_and_ignores_flushed_echoes() -> None:
    tracker = tracker_with_chunks(now=0.0)
    tracker.acknowledge("r.1", 0.2)
    heard = tracker.clear(0.25)
    assert heard == pytest.approx(0.25)
    assert tracker.cleared
    # Twilio echoes the marks the clear flushed; they prove nothing was played.
    assert tracker.acknowledge("r.2", 0.26) == pytest.approx(0.2)
    assert tracker.acknowledge("r.3", 0.26) == pytest.approx(0.2)
    assert tracker.heard_seconds(5.0) == pytest.approx(0.25)
    assert tracker.clear(6.0) == pytest.approx(0.25)
    assert tracker.finished


def test_clear_before_anything_played() -> None:
    tracker = tracker_with_chunks(now=1.0)
    assert tracker.clear(1.0) == 0.0


def test_empty_tracker_is_finished() -> None:
    tracker = PlayoutTracker()
    assert tracker.finished
    assert tracker.heard_seconds(1.0) == 0.0


def test_mark_names_are_unique_per_utterance() -> None:
    tracker = PlayoutTracker()
    tracker.add_chunk("r.1", 0.1)
    with pytest.raises(ValueError):
        tracker.add_chunk("r.1", 0.1)
