"""The turn-taking and barge-in state machine, driven with explicit times (no sleeps)."""

from __future__ import annotations

from typing import TypeVar

import pytest

from voice.assistant import DEFAULT_ACKNOWLEDGEMENTS, DEFAULT_INTERRUPTIONS
from voice.turns import (
    CancelSpeculation,
    CommitTurn,
    DiscardTurn,
    FinalizeStt,
    Interrupt,
    PauseOutput,
    ResumeOutput,
    RunTurnModel,
    Speculate,
    TurnAction,
    TurnConfig,
    TurnState,
    TurnTaker,
)
from voice.types import Transcript

WINDOW = 0.032  # one Silero window at 8 kHz
T = TypeVar("T")


def make(**overrides: object) -> TurnTaker:
    config = TurnConfig(
        acknowledgement_phrases=tuple(DEFAULT_ACKNOWLEDGEMENTS),
        interruption_phrases=tuple(DEFAULT_INTERRUPTIONS),
        **overrides,  # type: ignore[arg-type]
    )
    return TurnTaker(config)


def feed(turns: TurnTaker, start: float, end: float, probability: float) -> list[TurnAction]:
    """VAD windows from `start` (inclusive) to `end` (exclusive), each followed by a tick."""
    actions: list[TurnAction] = []
    t = start
    while t < end - 1e-9:
        actions += turns.vad(probability, t)
        actions += turns.tick(t)
        t = round(t + WINDOW, 6)
    return actions


def final(text: str, speech_final: bool = True) -> Transcript:
    return Transcript(text, is_final=True, speech_final=speech_final)


def of_type(actions: list[TurnAction], kind: type[T]) -> list[T]:
    return [a for a in actions if isinstance(a, kind)]


def speak_and_pause(turns: TurnTaker) -> tuple[list[TurnAction], float]:
    """1 s of speech from t=1.0, then silence until the end of turn opens; returns speech_end."""
    actions = feed(turns, 1.0, 2.0, 0.9)
    actions += feed(turns, 2.0, 2.3, 0.05)
    pending = of_type(actions, RunTurnModel)
    assert len(pending) == 1
    return actions, pending[0].speech_end


def test_silence_opens_the_decision_then_stt_and_turn_model_commit() -> None:
    turns = make()
    actions, speech_end = speak_and_pause(turns)
    assert speech_end == pytest.approx(2.0)  # the first silent window
    assert of_type(actions, FinalizeStt)
    assert turns.state is TurnState.PENDING
    assert turns.turn_model_result(0.9, speech_end, 2.25) == []  # still no transcript
    committed = turns.transcript(final("What are your hours?"), 2.4)
    assert committed == [CommitTurn("What are your hours?", speech_end, 2.4)]
    assert turns.state is TurnState.RESPONDING


def test_incomplete_turn_waits_for_the_timeout() -> None:
    turns = make(incomplete_timeout=0.8)
    _, speech_end = speak_and_pause(turns)
    assert turns.turn_model_result(0.1, speech_end, 2.25) == []
    speculated = turns.transcript(final("I would like to"), 2.3)
    assert speculated == [Speculate("I would like to")]
    assert turns.next_deadline() == pytest.approx(speech_end + 0.8)
    assert of_type(feed(turns, 2.3, speech_end + 0.79, 0.05), CommitTurn) == []
    committed = of_type(feed(turns, speech_end + 0.79, speech_end + 0.85, 0.05), CommitTurn)
    assert [c.text for c in committed] == ["I would like to"]


def test_caller_resuming_cancels_the_speculation_and_continues_the_turn() -> None:
    turns = make()
    _, speech_end = speak_and_pause(turns)
    turns.turn_model_result(0.2, speech_end, 2.25)
    assert turns.transcript(final("I would like"), 2.3) == [Speculate("I would like")]
    actions = feed(turns, 2.4, 2.6, 0.9)
    assert of_type(actions, CancelSpeculation) == [CancelSpeculation()]
    assert turns.state is TurnState.USER_SPEAKING
    actions = feed(turns, 2.6, 3.0, 0.05)
    (pending,) = of_type(actions, RunTurnModel)
    turns.turn_model_result(0.95, pending.speech_end, 3.0)
    (commit,) = of_type(turns.transcript(final("an appointment"), 3.1), CommitTurn)
    assert commit.text == "I would like an appointment"


def test_stale_turn_model_verdict_is_ignored() -> None:
    turns = make()
    _, speech_end = speak_and_pause(turns)
    feed(turns, 2.4, 2.6, 0.9)  # caller resumed
    assert turns.turn_model_result(0.99, speech_end, 2.6) == []


def test_speech_without_words_is_discarded() -> None:
    turns = make()
    _, speech_end = speak_and_pause(turns)
    turns.turn_model_result(0.9, speech_end, 2.25)
    assert turns.transcript(final(""), 2.5) == [DiscardTurn()]
    assert turns.state is TurnState.LISTENING


def test_max_wait_commits_without_a_final_transcript() -> None:
    turns = make(max_wait=3.0, incomplete_timeout=0.8)
    _, speech_end = speak_and_pause(turns)
    turns.turn_model_result(0.9, speech_end, 2.25)
    turns.transcript(Transcript("hello there", is_final=False), 2.3)
    assert of_type(feed(turns, 2.3, speech_end + 2.9, 0.05), CommitTurn) == []
    (commit,) = of_type(feed(turns, speech_end + 2.9, speech_end + 3.1, 0.05), CommitTurn)
    assert commit.text == "hello there" and commit.stt_done is None


def test_short_noise_is_not_speech() -> None:
    turns = make(min_speech_seconds=0.1)
    actions = feed(turns, 1.0, 1.06, 0.9) + feed(turns, 1.06, 2.0, 0.05)
    assert actions == [] and turns.state is TurnState.LISTENING


def responding(**overrides: object) -> TurnTaker:
    turns = make(**overrides)
    _, speech_end = speak_and_pause(turns)
    turns.turn_model_result(0.9, speech_end, 2.25)
    turns.transcript(final("Tell me about your services."), 2.3)
    assert turns.state is TurnState.RESPONDING
    turns.set_assistant_audible(True, 2.5)
    return turns


def test_barge_in_pauses_at_onset_and_interrupts_after_voice_seconds() -> None:
    turns = responding(voice_seconds=0.2)
    assert turns.next_deadline() is None
    actions = feed(turns, 3.0, 3.1, 0.95)
    assert actions == [PauseOutput(3.0)]
    assert turns.next_deadline() == pytest.approx(3.2)
    actions = feed(turns, 3.1, 3.25, 0.95)
    assert actions == [Interrupt(3.0)]
    # the interrupted caller is now the one talking: their turn goes on as usual
    assert turns.state is TurnState.USER_SPEAKING
    (pending,) = of_type(feed(turns, 3.25, 3.6, 0.05), RunTurnModel)
    turns.turn_model_result(0.9, pending.speech_end, 3.6)
    (commit,) = of_type(turns.transcript(final("Stop, how much is it?"), 3.7), CommitTurn)
    assert commit.text == "Stop, how much is it?"


def test_acknowledgement_does_not_interrupt() -> None:
    turns = responding()
    assert feed(turns, 3.0, 3.1, 0.95) == [PauseOutput(3.0)]
    assert turns.transcript(Transcript("uh-huh", is_final=False), 3.15) == [ResumeOutput()]
    assert of_type(feed(turns, 3.15, 3.5, 0.95), Interrupt) == []
    assert turns.state is TurnState.RESPONDING


def test_more_than_an_acknowledgement_interrupts() -> None:
    turns = responding()
    feed(turns, 3.0, 3.1, 0.95)
    assert turns.transcript(Transcript("okay", is_final=False), 3.15) == [ResumeOutput()]
    feed(turns, 3.15, 3.4, 0.95)
    assert turns.transcript(Transcript("okay so how much", is_final=False), 3.45) == [
        Interrupt(3.0)
    ]


@pytest.mark.parametrize("words", ["okay", "Yeah, okay.", "mm-hmm right"])
def test_acknowledgement_variants(words: str) -> None:
    turns = responding()
    feed(turns, 3.0, 3.1, 0.95)
    assert turns.transcript(Transcript(words, is_final=False), 3.12) == [ResumeOutput()]


def test_interruption_phrase_interrupts_at_once() -> None:
    turns = responding(voice_seconds=0.5)
    feed(turns, 3.0, 3.06, 0.95)
    assert turns.transcript(Transcript("wait", is_final=False), 3.07) == [Interrupt(3.0)]


def test_a_blip_resumes_output() -> None:
    turns = responding()
    assert feed(turns, 3.0, 3.07, 0.95) == [PauseOutput(3.0)]
    assert feed(turns, 3.07, 3.4, 0.05) == [ResumeOutput()]
    assert turns.state is TurnState.RESPONDING


def test_echo_level_speech_does_not_trigger_barge_in() -> None:
    turns = responding()  # threshold while speaking: 0.7
    assert feed(turns, 3.0, 4.0, 0.6) == []


def test_no_barge_in_while_not_interruptible() -> None:
    turns = responding()
    turns.interruptible = False  # e.g. the greeting, by Vapi's default
    assert feed(turns, 3.0, 4.0, 0.95) == []


def test_num_words_requires_words() -> None:
    turns = responding(num_words=2)
    feed(turns, 3.0, 3.5, 0.95)
    assert turns.transcript(Transcript("hello", is_final=False), 3.5) == []
    assert turns.transcript(Transcript("hello there", is_final=False), 3.6) == [Interrupt(3.0)]


def test_reply_finishing_under_the_caller_resumes_and_opens_their_turn() -> None:
    turns = responding()
    feed(turns, 3.0, 3.1, 0.95)
    assert turns.set_assistant_audible(False, 3.12) == [ResumeOutput()]
    turns.reply_finished(3.12)
    feed(turns, 3.12, 3.3, 0.95)
    assert turns.state is TurnState.USER_SPEAKING


def test_words_without_vad_open_a_turn() -> None:
    turns = make()
    actions = turns.transcript(final("hello"), 5.0)
    assert actions[:2] == [FinalizeStt(), RunTurnModel(5.0)]
    (commit,) = of_type(turns.turn_model_result(0.9, 5.0, 5.05), CommitTurn)
    assert commit.text == "hello"


def test_without_turn_model_stt_alone_commits() -> None:
    turns = make(use_turn_model=False)
    _, speech_end = speak_and_pause(turns)
    (commit,) = of_type(turns.transcript(final("hi"), 2.35), CommitTurn)
    assert commit.speech_end == speech_end


def test_speech_under_an_uninterruptible_greeting_is_answered_after_it() -> None:
    turns = make()
    turns.assistant_started(0.0)
    turns.set_assistant_audible(True, 0.0)
    turns.interruptible = False
    assert feed(turns, 0.5, 1.5, 0.95) == []  # no barge-in on the greeting
    assert feed(turns, 1.5, 2.0, 0.05) == []
    actions = turns.reply_finished(2.5)
    assert actions[:2] == [FinalizeStt(), RunTurnModel(1.5)]
    (commit,) = of_type(
        turns.transcript(final("Is it open?"), 2.6) + turns.turn_model_result(0.9, 1.5, 2.6),
        CommitTurn,
    )
    assert commit.text == "Is it open?" and commit.speech_end == 1.5


def test_onsets_are_dated_from_the_start_of_the_vad_window() -> None:
    turns = responding(vad_window_seconds=0.032)
    assert feed(turns, 3.032, 3.1, 0.95) == [PauseOutput(3.0)]
    assert turns.next_deadline() == pytest.approx(3.2)
    # the window completing at 3.228 s interrupts; undated it would take until 3.26 s
    assert feed(turns, 3.1, 3.23, 0.95) == [Interrupt(3.0)]


def test_an_stt_endpoint_on_a_full_sentence_ends_the_turn_without_the_model() -> None:
    turns = make()
    actions = feed(turns, 1.0, 2.0, 0.9)
    actions += feed(turns, 2.0, 2.15, 0.05)  # quiet, but not yet vad_silence_seconds
    # Deepgram endpoints 150 ms after the caller stopped, before our VAD silence is up.
    actions += turns.transcript(final("What are your hours?"), 2.15)
    assert turns.state is TurnState.USER_SPEAKING and not of_type(actions, CommitTurn)
    actions = feed(turns, 2.15, 2.3, 0.05)
    assert of_type(actions, CommitTurn) == [CommitTurn("What are your hours?", 2.0, 2.15)]
    # Decided already: no turn-model run (its CPU) and no flush of a finished transcript.
    assert not of_type(actions, RunTurnModel) and not of_type(actions, FinalizeStt)


def test_an_stt_endpoint_without_a_sentence_end_still_asks_the_model() -> None:
    turns = make()
    feed(turns, 1.0, 2.0, 0.9)
    feed(turns, 2.0, 2.15, 0.05)
    turns.transcript(final("I would like to"), 2.15)
    actions = feed(turns, 2.15, 2.3, 0.05)
    assert of_type(actions, RunTurnModel) and not of_type(actions, CommitTurn)


def test_an_stt_endpoint_is_void_once_the_caller_goes_on() -> None:
    turns = make()
    feed(turns, 1.0, 2.0, 0.9)
    feed(turns, 2.0, 2.1, 0.05)
    turns.transcript(final("Hello."), 2.1)
    feed(turns, 2.1, 2.6, 0.9)  # "Hello. I have a question about my bill"
    turns.transcript(final("I have a question about my bill", speech_final=False), 2.6)
    actions = feed(turns, 2.6, 2.9, 0.05)
    assert of_type(actions, RunTurnModel) and not of_type(actions, CommitTurn)
