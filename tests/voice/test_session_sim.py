"""Turn-taking of the whole session, in process and in virtual time (see tests/voice/sim_kit.py).

The caller's speech is real (Piper), the VAD is Silero, the transcriber listens to the audio and
answers with Deepgram's cadence; the LLM's first token takes 300 ms and the TTS's first byte
150 ms. Times are loop (virtual) seconds.
"""

from __future__ import annotations

import pytest

from tests.voice.sim_kit import SimResult, clip, line, noise, simulate, speech_span
from voice.types import EndedReason

QUESTION = "What time do you open on Saturday?"
ANSWER = "We open at nine in the morning on Saturdays and close at five."
LONG = (
    "Sure, I can help you with that. Our clinic offers cleanings, fillings, crowns, whitening "
    "and emergency care, and we take most insurance plans, so let me walk you through each."
)


def test_a_finished_question_is_answered_once_and_fast() -> None:
    result = simulate([0.5, clip(QUESTION), "spoke"], [line(QUESTION)], [ANSWER])
    assert result.ended.reason is EndedReason.CUSTOMER_ENDED_CALL
    assert result.user_messages() == [QUESTION]
    starts = result.assistant_starts()
    assert len(starts) == 1
    turn = result.turns()[0]
    assert turn.latency is not None
    # Decided within ~0.3 s of the end of speech; the rest is the LLM, the TTS and the clause
    # the request-based TTS waits for.
    assert turn.latency.endpointing <= 0.3
    assert turn.latency.voice_to_voice < 0.9


@pytest.mark.parametrize("pause", [0.5, 0.7])
@pytest.mark.parametrize(
    ("head", "tail"),
    [
        ("I'd like to move my appointment to", "next Tuesday afternoon."),
        ("I was calling about the", "bill I got last week."),
        ("Can you check my order and", "tell me when it ships?"),
    ],
)
def test_no_reply_during_a_pause_after_an_unfinished_phrase(
    head: str, tail: str, pause: float
) -> None:
    result = simulate(
        [0.5, clip(head), pause, "resumed", clip(tail), "finished"],
        [line(head), line(tail)],
        [ANSWER],
    )
    # Nothing was heard, and nothing was even asked of the LLM, before the caller finished.
    assert result.phone.heard_between(result.t0, result.marks["finished"]) == 0
    assert len(result.llm.requests) >= 1
    assert result.user_messages() == [f"{head} {tail}"]
    assert len(result.assistant_starts()) == 1


def test_a_caller_who_stops_after_an_unfinished_phrase_still_gets_an_answer() -> None:
    head = "I'd like to move my appointment to"
    result = simulate([0.5, clip(head), "stopped"], [line(head)], [ANSWER], tail=5.0)
    starts = result.assistant_starts()
    assert len(starts) == 1
    assert 0.8 < starts[0] - result.marks["stopped"] < 3.0


def _over_the_reply(said: bytes, text: str | None, at: float = 2.0) -> tuple[SimResult, float]:
    """The caller asks, the assistant starts its long answer, `at` s into it the caller says
    `said` (which the transcriber hears as `text`; None: no words at all); returns the result
    and the loop time the caller's voice began."""
    result = simulate(
        [0.5, clip(QUESTION), 0.8 + at, "over", said],
        [line(QUESTION)] + ([line(text)] if text else []),
        [LONG, ANSWER],
        tail=10.0,
    )
    onset = result.marks["over"] + speech_span(said)[0]
    return result, onset


@pytest.mark.parametrize("word", ["Okay.", "Uh-huh.", "Yeah.", "Right."])
def test_a_backchannel_does_not_stop_the_assistant(word: str) -> None:
    result, onset = _over_the_reply(clip(word), word)
    assert result.phone.clears == [], "the reply was cleared for a backchannel"
    assert result.barge_ins() == []
    turns = result.turns()
    assert len(turns) == 1 and not turns[0].interrupted
    assert turns[0].assistant_text == LONG  # resumed where it stopped: nothing lost


@pytest.mark.parametrize("words", ["Stop.", "Wait, no.", "Hold on a second."])
def test_an_interruption_stops_the_assistant_within_300_ms(words: str) -> None:
    result, onset = _over_the_reply(clip(words), words)
    assert len(result.phone.clears) == 1
    assert result.phone.silent_from(onset) - onset <= 0.3
    assert result.barge_ins()
    assert result.turns()[0].interrupted


def test_a_noise_burst_does_not_stop_the_assistant() -> None:
    result, _ = _over_the_reply(noise(0.4), None)
    assert result.phone.clears == []
    assert not result.turns()[0].interrupted


def test_more_than_an_acknowledgement_interrupts() -> None:
    words = "Okay, but what about Sunday?"
    result, onset = _over_the_reply(clip(words), words)
    assert len(result.phone.clears) == 1
    assert result.phone.silent_from(onset) - onset <= 0.3
    assert result.user_messages()[-1] == words


def test_an_unfinished_number_is_waited_for() -> None:
    head, tail = "My phone number is five five five,", "one two three, four five six seven."
    result = simulate(
        [0.5, clip(head), 0.7, clip(tail), "finished"], [line(head), line(tail)], [ANSWER]
    )
    assert result.phone.heard_between(result.t0, result.marks["finished"]) == 0
    assert result.user_messages() == [f"{head} {tail}"]


def test_silence_ends_the_call_after_the_timeout() -> None:
    result = simulate([1.0], [], [], assistant={"silenceTimeoutSeconds": 5}, tail=20.0)
    assert result.ended.reason is EndedReason.SILENCE_TIMED_OUT
    assert result.ended.at == pytest.approx(5.0, abs=0.05)


def test_max_duration_ends_the_call_mid_conversation() -> None:
    result = simulate(
        [0.5, clip(QUESTION)], [line(QUESTION)], [LONG], assistant={"maxDurationSeconds": 10},
        tail=20.0,
    )  # fmt: skip
    assert result.ended.reason is EndedReason.EXCEEDED_MAX_DURATION
    assert result.ended.at == pytest.approx(10.0, abs=0.05)
    assert result.turns()[0].interrupted  # the caller heard part of the answer, recorded so


def test_the_greeting_plays_first_and_the_caller_is_answered_after_it() -> None:
    result = simulate(
        [3.0, clip(QUESTION), "spoke"],
        [line(QUESTION)],
        [ANSWER],
        assistant={"firstMessage": "Hello, thanks for calling the clinic. How can I help?"},
    )
    starts = result.assistant_starts()
    assert len(starts) == 2 and starts[0] - result.t0 < 0.05
    assert result.user_messages() == [QUESTION]


def test_the_answer_to_a_short_interruption_is_held_back_not_slow() -> None:
    # "Stop." is over before stopSpeakingPlan.backoffSeconds (1 s) has passed since the
    # barge-in: its answer waits, ready, until then. That wait is `held`, not server time.
    result, _ = _over_the_reply(clip("Stop."), "Stop.")
    answer = result.turns()[1]
    assert answer.latency is not None
    # the answer's audio is ready ~0.65 s after "Stop." was confirmed, the backoff ends later
    assert answer.latency.held > 0.03, answer.latency
    assert 0 <= answer.latency.server < 0.01, answer.latency
