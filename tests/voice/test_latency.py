"""The per-turn latency breakdown: a deliberate hold (stopSpeakingPlan.backoffSeconds after a
barge-in) is counted apart, so `server` is what AVA's own processing added."""

from __future__ import annotations

import pytest

from voice.latency import turn_latency
from voice.reply import ReplyTimings
from voice.turns import CommitTurn

# The caller stops at 10.0; the turn is confirmed at 10.2 (final at 10.15); the LLM is asked at
# 10.2 and answers at 10.5; the TTS is asked at 10.6 and its first audio is in at 10.75.
COMMIT = CommitTurn("What?", speech_end=10.0, stt_done=10.15)


def timings(held_until: float | None = None, *, llm_start: float = 10.2) -> ReplyTimings:
    return ReplyTimings(
        llm_start=llm_start,
        llm_first_token=llm_start + 0.3,
        tts_first_request=llm_start + 0.4,
        tts_first_audio=llm_start + 0.55,
        held_until=held_until,
    )


def test_a_reply_held_back_after_a_barge_in_is_not_server_time() -> None:
    # Backoff until 11.5: the audio, ready at 10.75, goes out at 11.502.
    latency = turn_latency(COMMIT, timings(11.5), 10.2, 11.502)
    assert latency.voice_to_voice == pytest.approx(1.502)
    assert latency.held == pytest.approx(0.75)
    assert latency.server == pytest.approx(0.002)
    # the stages still add up to the turn: endpointing + provider waits + held + server
    waits = 0.3 + 0.1 + 0.15  # first token, rest of the clause, TTS first byte
    assert latency.endpointing + waits + latency.held + latency.server == pytest.approx(1.502)


def test_without_the_hold_on_record_the_wait_was_counted_as_ours() -> None:
    latency = turn_latency(COMMIT, timings(), 10.2, 11.502)
    assert latency.held == 0.0
    assert latency.server == pytest.approx(0.752)


def test_a_hold_that_ends_before_the_audio_is_ready_delays_nothing() -> None:
    latency = turn_latency(COMMIT, timings(10.5), 10.2, 10.752)
    assert latency.held == 0.0
    assert latency.server == pytest.approx(0.002)


def test_a_speculative_reply_is_held_from_the_turn_confirmation() -> None:
    # Produced before the turn was confirmed (audio ready at 10.45, confirmed at 10.6): the
    # hold runs from the confirmation to 11.0; the 2 ms after it are ours.
    latency = turn_latency(COMMIT, timings(11.0, llm_start=9.9), 10.6, 11.002)
    assert latency.held == pytest.approx(0.4)
    assert latency.server == pytest.approx(0.002)
