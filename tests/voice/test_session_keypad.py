"""Keypad input (`keypadInputPlan`) in whole calls, in virtual time (see tests/voice/sim_kit.py).

The caller presses keys (Twilio `dtmf` events between silent media frames); the gathered digits
are their turn, answered like a spoken one. Times are loop (virtual) seconds.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.voice.sim_kit import Digits, SimResult, clip, line, simulate
from voice.types import EndedReason

ANSWER = "Thank you, I found your account."
LONG = (
    "Sure, I can help you with that. Our clinic offers cleanings, fillings, crowns, whitening "
    "and emergency care, and we take most insurance plans, so let me walk you through each."
)
QUESTION = "What services do you offer?"


def _keypad(**plan: Any) -> dict[str, Any]:
    return {"keypadInputPlan": {"enabled": True, **plan}}


def _llm_user_text(result: SimResult) -> list[str]:
    """The last user message of every request the scripted LLM got."""
    return [[m for m in request if m.role == "user"][-1].content for request in result.llm.requests]


def test_digits_ended_by_a_delimiter_are_the_callers_turn() -> None:
    result = simulate(
        [0.5, Digits("1234#"), "pressed"], [], [ANSWER], assistant=_keypad(delimiters=["#"])
    )
    assert result.ended.reason is EndedReason.CUSTOMER_ENDED_CALL
    assert result.user_messages() == ["1234"]
    assert _llm_user_text(result) == ["1234"]
    # Answered at once: the delimiter, not the timeout (2 s), ended the input.
    starts = result.assistant_starts()
    assert len(starts) == 1
    assert starts[0] - result.marks["pressed"] < 1.0
    turn = result.turns()[0]
    assert turn.user_text == "1234" and not turn.interrupted


def test_digits_then_silence_become_a_turn_after_the_timeout() -> None:
    result = simulate(
        [0.5, Digits("42", gap=0.3), "pressed"], [], [ANSWER], assistant=_keypad(timeoutSeconds=1.5)
    )
    assert result.user_messages() == ["42"]
    assert _llm_user_text(result) == ["42"]
    last_key = result.marks["pressed"] - 0.3  # the second key, then one gap of silence
    start = result.assistant_starts()[0]
    # Not before the timeout; then the LLM (0.3 s) and the TTS's first byte (0.15 s).
    assert 1.5 <= start - last_key <= 1.5 + 0.9


def test_a_new_digit_restarts_the_timeout() -> None:
    result = simulate(
        [0.5, Digits("1", gap=0.8), Digits("2", gap=0.8), Digits("3", gap=0.1)], [], [ANSWER],
        assistant=_keypad(timeoutSeconds=1.0),
    )  # fmt: skip
    assert result.user_messages() == ["123"]


def test_digits_are_ignored_when_keypad_input_is_off() -> None:
    result = simulate([0.5, Digits("1234#")], [], [ANSWER], tail=4.0)
    assert result.user_messages() == []
    assert result.llm.requests == []
    assert result.assistant_starts() == []


def test_a_keypad_turn_interrupts_the_assistant() -> None:
    result = simulate(
        [0.5, clip(QUESTION), 2.5, "talking", Digits("9#")],
        [line(QUESTION)],
        [LONG, ANSWER],
        assistant=_keypad(delimiters=["#"]),
        tail=8.0,
    )
    talking = result.marks["talking"]
    assert result.phone.hearing(talking - 0.1)  # the long answer was playing
    assert result.user_messages() == [QUESTION, "9"]
    assert _llm_user_text(result) == [QUESTION, "9"]
    # Cut within a key's gap of the delimiter (0.2 s after "9").
    assert len(result.phone.clears) == 1
    assert result.phone.clears[0] - talking == pytest.approx(0.2, abs=0.05)
    assert result.barge_ins()
    turns = result.turns()
    assert turns[0].interrupted and not turns[1].interrupted
    # The history the second request saw holds only what the caller heard of the first answer.
    heard = [m for m in result.llm.requests[1] if m.role == "assistant"][-1].content
    assert heard and len(heard) < len(LONG)
    assert len(result.assistant_starts()) == 2


def test_keys_without_a_delimiter_are_bounded_per_turn() -> None:
    # 70 keys, 50 ms apart, never a delimiter: one turn of the first 64, then the rest.
    result = simulate(
        [0.5, Digits("1234567890" * 7, gap=0.05)], [], [ANSWER, ANSWER],
        assistant=_keypad(timeoutSeconds=1.0), tail=6.0,
    )  # fmt: skip
    assert [len(m) for m in result.user_messages()] == [64, 6]
