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
    speculated = turns.transcript(final("Thursday works"), 2.3)
    assert speculated == [Speculate("Thursday works")]
    assert turns.next_deadline() == pytest.approx(speech_end + 0.8)
    assert of_type(feed(turns, 2.3, speech_end + 0.79, 0.05), CommitTurn) == []
    committed = of_type(feed(turns, speech_end + 0.79, speech_end + 0.85, 0.05), CommitTurn)
    assert [c.text for c in committed] == ["Thursday works"]


def test_unfinished_words_outweigh_the_turn_model_and_the_stt() -> None:
    turns = make(incomplete_timeout=0.8, unfinished_timeout=1.6)
    _, speech_end = speak_and_pause(turns)
    # The audio model thinks it's over and the STT has endpointed, but "to" ends nothing.
    assert turns.turn_model_result(0.95, speech_end, 2.25) == []
    assert turns.transcript(final("I would like to move it to."), 2.3) == []  # no speculation
    assert turns.next_deadline() == pytest.approx(speech_end + 1.6)
    assert of_type(feed(turns, 2.3, speech_end + 1.55, 0.05), CommitTurn) == []
    (commit,) = of_type(feed(turns, speech_end + 1.55, speech_end + 1.7, 0.05), CommitTurn)
    assert commit.text == "I would like to move it to."


def test_finished_words_and_the_final_commit_without_the_turn_model() -> None:
    turns = make()
    feed(turns, 1.0, 2.0, 0.9)
    turns.transcript(Transcript("What are your hours?", is_final=False), 1.9)
    actions = feed(turns, 2.0, 2.25, 0.05)
    assert of_type(actions, FinalizeStt) and not of_type(actions, RunTurnModel)
    assert of_type(actions, Speculate) == [Speculate("What are your hours?")]
    (commit,) = of_type(turns.transcript(final("What are your hours?"), 2.3), CommitTurn)
    assert commit.stt_done == 2.3


def test_caller_resuming_cancels_the_speculation_and_continues_the_turn() -> None:
    turns = make()
    _, speech_end = speak_and_pause(turns)
    turns.turn_model_result(0.2, speech_end, 2.25)
    assert turns.transcript(final("I would like"), 2.3) == []  # unfinished: no speculation
    assert turns.transcript(final("an appointment"), 2.35) == [
        Speculate("I would like an appointment")
    ]
    actions = feed(turns, 2.4, 2.6, 0.9)
    assert of_type(actions, CancelSpeculation) == [CancelSpeculation()]
    assert turns.state is TurnState.USER_SPEAKING
    actions = feed(turns, 2.6, 3.0, 0.05)
    (pending,) = of_type(actions, RunTurnModel)
    turns.turn_model_result(0.95, pending.speech_end, 3.0)
    (commit,) = of_type(turns.transcript(final("on Monday"), 3.1), CommitTurn)
    assert commit.text == "I would like an appointment on Monday"


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


def test_barge_in_pauses_at_onset_and_interrupts_on_words() -> None:
    turns = responding()
    assert turns.next_deadline() is None
    actions = feed(turns, 3.0, 3.1, 0.95)
    assert actions == [PauseOutput(3.0)]
    assert turns.next_deadline() == pytest.approx(3.7)  # the deadline without words
    assert feed(turns, 3.1, 3.3, 0.95) == []  # no words yet: paused, not decided
    assert turns.transcript(Transcript("how much", is_final=False), 3.35) == [Interrupt(3.0)]
    # the interrupted caller is now the one talking: their turn goes on as usual
    assert turns.state is TurnState.USER_SPEAKING
    feed(turns, 3.35, 3.6, 0.95)
    actions = feed(turns, 3.6, 3.9, 0.05)
    assert of_type(actions, Speculate) == [Speculate("how much")]
    (commit,) = of_type(turns.transcript(final("how much is it?"), 3.95), CommitTurn)
    assert commit.text == "how much is it?"


def test_speech_without_words_past_the_deadline_interrupts() -> None:
    turns = responding(barge_in_deadline=0.7)
    assert feed(turns, 3.0, 3.68, 0.95) == [PauseOutput(3.0)]
    assert feed(turns, 3.68, 3.72, 0.95) == [Interrupt(3.0)]


def test_the_first_sound_of_an_acknowledgement_waits_for_the_rest() -> None:
    turns = responding()
    feed(turns, 3.0, 3.1, 0.95)
    assert turns.transcript(Transcript("uh", is_final=False), 3.2) == []
    assert turns.transcript(Transcript("uh huh", is_final=False), 3.4) == [ResumeOutput()]
    # its final, arriving late, is not a turn of its own
    assert turns.transcript(final("Uh-huh."), 3.8) == []
    assert turns.state is TurnState.RESPONDING


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
    # over: the STT is asked for its words; none come, so output resumes once they could have
    assert feed(turns, 3.07, 3.55, 0.05) == [FinalizeStt()]
    assert feed(turns, 3.55, 3.7, 0.05) == [ResumeOutput()]
    assert turns.state is TurnState.RESPONDING


def test_a_blip_resumes_as_soon_as_the_stt_finds_no_words() -> None:
    turns = responding()
    feed(turns, 3.0, 3.07, 0.95)
    assert feed(turns, 3.07, 3.3, 0.05) == [FinalizeStt()]
    assert turns.transcript(final(""), 3.35) == [ResumeOutput()]
    assert turns.state is TurnState.RESPONDING


def test_a_short_interruption_from_an_stt_that_transcribes_on_request_interrupts() -> None:
    # The offline Whisper has no interim words: "What?" is over before any words exist.
    turns = responding()
    assert feed(turns, 3.0, 3.4, 0.95) == [PauseOutput(3.0)]
    assert feed(turns, 3.4, 3.65, 0.05) == [FinalizeStt()]
    actions = turns.transcript(final("Sorry, what was the price again?"), 3.75)
    assert actions[0] == Interrupt(3.0)
    # its turn is already over and its words are in: decided like any other turn
    assert turns.state in (TurnState.PENDING, TurnState.RESPONDING)
    assert FinalizeStt() not in actions
    commits = of_type(actions + feed(turns, 3.75, 4.4, 0.05), CommitTurn)
    assert [c.text for c in commits] == ["Sorry, what was the price again?"]
    assert commits[0].speech_end == pytest.approx(3.4, abs=WINDOW)


def test_words_that_come_after_the_resume_still_interrupt() -> None:
    turns = responding()
    feed(turns, 3.0, 3.1, 0.95)
    feed(turns, 3.1, 3.7, 0.05)  # asked, nothing yet: resumed
    assert turns.state is TurnState.RESPONDING and turns.assistant_audible
    actions = turns.transcript(final("What?"), 3.8)
    assert actions[0] == Interrupt(3.8)
    assert [c.text for c in of_type(actions, CommitTurn)] == ["What?"]
    # an acknowledgement arriving late would not have
    turns = responding()
    feed(turns, 3.0, 3.1, 0.95)
    feed(turns, 3.1, 3.7, 0.05)
    assert turns.transcript(final("Okay."), 3.8) == []


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
    actions = turns.transcript(final("my name is John Smith"), 5.0)
    assert actions[:2] == [FinalizeStt(), RunTurnModel(5.0)]
    (commit,) = of_type(turns.turn_model_result(0.9, 5.0, 5.05), CommitTurn)
    assert commit.text == "my name is John Smith"


def test_without_turn_model_stt_alone_commits() -> None:
    turns = make(use_turn_model=False)
    actions = feed(turns, 1.0, 2.0, 0.9) + feed(turns, 2.0, 2.3, 0.05)
    assert of_type(actions, FinalizeStt) and not of_type(actions, RunTurnModel)
    (commit,) = of_type(turns.transcript(final("Thursday works"), 2.35), CommitTurn)
    assert commit.speech_end == pytest.approx(2.0)


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
    assert turns.next_deadline() == pytest.approx(3.7)
    # the window completing at 3.708 s interrupts; undated it would take until 3.74 s
    assert feed(turns, 3.1, 3.71, 0.95) == [Interrupt(3.0)]


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
    turns.transcript(final("my name is John Smith"), 2.15)
    actions = feed(turns, 2.15, 2.3, 0.05)
    assert of_type(actions, RunTurnModel) and not of_type(actions, CommitTurn)


def test_an_stt_endpoint_after_unfinished_words_decides_nothing() -> None:
    turns = make()
    feed(turns, 1.0, 2.0, 0.9)
    feed(turns, 2.0, 2.15, 0.05)
    assert turns.transcript(final("I'd like to move my appointment to."), 2.15) == []
    actions = feed(turns, 2.15, 2.9, 0.05)
    assert not of_type(actions, RunTurnModel) and not of_type(actions, CommitTurn)
    assert not of_type(actions, Speculate)


def test_an_stt_endpoint_is_void_once_the_caller_goes_on() -> None:
    turns = make()
    feed(turns, 1.0, 2.0, 0.9)
    feed(turns, 2.0, 2.1, 0.05)
    turns.transcript(final("Hello."), 2.1)
    feed(turns, 2.1, 2.6, 0.9)  # "Hello. I have a question about my bill"
    turns.transcript(final("I have a question about my bill", speech_final=False), 2.6)
    actions = feed(turns, 2.6, 2.9, 0.05)
    assert of_type(actions, RunTurnModel) and not of_type(actions, CommitTurn)


def test_speech_that_arrives_in_one_burst_is_still_a_turn() -> None:
    """Frames held up by a stall (the network's, the caller's or this server's loop) are handled
    together with no clock time between them: their speech and the silence after it are
    measured by the audio they carry."""
    turns = make(use_turn_model=False)
    actions: list[TurnAction] = []
    for _ in range(round(0.8 / WINDOW)):  # 0.8 s of speech, all handled at t=2.0
        actions += turns.vad(1.0, 2.0, WINDOW)
    assert turns.state is TurnState.USER_SPEAKING
    for _ in range(round(0.3 / WINDOW)):  # and the silence after it, in the same burst
        actions += turns.vad(0.0, 2.0, WINDOW)
    assert turns.state is TurnState.PENDING and of_type(actions, FinalizeStt)
    actions = turns.transcript(final("Hello?"), 2.05)
    (commit,) = of_type(actions, CommitTurn)
    assert commit.text == "Hello?"


def test_a_burst_measured_by_the_clock_alone_would_be_no_speech() -> None:
    """Without the audio's own length (seconds=0: measured by the clock), the same burst spans
    no time at all: the reason the session passes it."""
    turns = make(use_turn_model=False)
    for _ in range(round(0.8 / WINDOW)):
        turns.vad(1.0, 2.0)
    assert turns.state is TurnState.LISTENING
