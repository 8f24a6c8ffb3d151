"""Idle hooks (`customer.speech.timeout`) in whole calls, in virtual time (tests/voice/sim_kit.py).

The caller stays silent; the assistant says the hook's messages after its timeout, up to its
count; `endCall` ends the call once the words were heard; `silenceTimeoutSeconds` stays the last
resort. Times are loop (virtual) seconds.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.voice.sim_kit import SimResult, clip, line, simulate
from voice.events import MessageAdded
from voice.types import EndedReason

QUESTION = "What time do you open on Saturday?"
ANSWER = "We open at nine."
STILL_THERE = "Are you still there?"
HELLO = "Hello? I am here to help."


def _idle(*actions: dict[str, Any], **options: Any) -> dict[str, Any]:
    return {"on": "customer.speech.timeout", "options": options, "do": list(actions)}


def _say(*messages: str) -> dict[str, Any]:
    return {"type": "say", "exact": list(messages)}


def _assistant_lines(result: SimResult) -> list[str]:
    return [
        e.content
        for e in result.sink.of_type(MessageAdded)
        if isinstance(e, MessageAdded) and e.role == "bot"
    ]


def test_an_idle_caller_hears_the_messages_in_turn_up_to_the_count() -> None:
    hook = _idle(_say(STILL_THERE, HELLO), timeoutSeconds=4, triggerMaxCount=3)
    result = simulate(
        [0.5], [], [], assistant={"hooks": [hook], "silenceTimeoutSeconds": 20}, tail=60.0
    )
    starts = [s - result.t0 for s in result.assistant_starts()]
    assert len(starts) == 3  # the count, then only the silence timeout
    # 4 s of silence, then the voice's first byte (150 ms; cached after the first time).
    assert 4.0 <= starts[0] <= 4.3
    # Each next one counts from the end of the last: 4 s after it was heard.
    for earlier, later in zip(starts, starts[1:], strict=False):
        silent = result.phone.silent_from(result.t0 + earlier + 0.01) - result.t0
        assert 4.0 <= later - silent <= 4.3
    assert _assistant_lines(result) == [STILL_THERE, HELLO, STILL_THERE]
    assert result.ended.reason is EndedReason.SILENCE_TIMED_OUT
    last_heard = result.phone.silent_from(result.t0 + starts[-1] + 0.01) - result.t0
    assert result.ended.at == pytest.approx(last_heard + 20, abs=0.1)


def test_end_call_after_the_message_ends_the_call_once_heard() -> None:
    goodbye = "I will hang up now. Goodbye."
    hook = _idle(_say(goodbye), {"type": "tool", "tool": {"type": "endCall"}}, timeoutSeconds=5)
    result = simulate([0.5], [], [], assistant={"hooks": [hook]}, tail=30.0)
    assert result.ended.reason is EndedReason.ASSISTANT_ENDED_CALL
    starts = result.assistant_starts()
    assert len(starts) == 1
    heard_until = result.phone.silent_from(starts[0] + 0.01)
    assert result.t0 + result.ended.at == pytest.approx(heard_until, abs=0.1)
    assert _assistant_lines(result) == [goodbye]


def test_the_idle_timeout_counts_from_the_end_of_the_answer() -> None:
    hook = _idle(_say(STILL_THERE), timeoutSeconds=1.5, triggerMaxCount=1)
    result = simulate(
        [0.5, clip(QUESTION)], [line(QUESTION)], [ANSWER], assistant={"hooks": [hook]}, tail=6.0
    )
    # The question is longer than the timeout: nothing is said over the caller, nor while
    # their answer is on its way.
    assert _assistant_lines(result) == [ANSWER, STILL_THERE]
    answer, idle = result.assistant_starts()
    answer_end = result.phone.silent_from(answer + 0.01)
    assert 1.5 <= idle - answer_end <= 1.8


def test_the_count_starts_anew_when_the_caller_speaks_if_so_configured() -> None:
    def run(mode: str) -> list[str]:
        hook = _idle(_say(STILL_THERE), timeoutSeconds=3, triggerMaxCount=1, triggerResetMode=mode)
        result = simulate(
            [6.0, clip(QUESTION)], [line(QUESTION)], [ANSWER],
            assistant={"hooks": [hook]}, tail=6.0,
        )  # fmt: skip
        return _assistant_lines(result)

    assert run("onUserSpeech") == [STILL_THERE, ANSWER, STILL_THERE]
    assert run("never") == [STILL_THERE, ANSWER]


def test_no_idle_message_while_the_callers_turn_is_being_decided() -> None:
    # Words that cannot end a sentence are waited for (1.6 s), longer than the idle timeout:
    # the caller is mid-turn, not idle.
    head = "I was calling about the"
    hook = _idle(_say(STILL_THERE), timeoutSeconds=1, triggerMaxCount=1)
    result = simulate(
        [0.5, clip(head)], [line(head)], [ANSWER], assistant={"hooks": [hook]}, tail=6.0
    )
    assert result.user_messages() == [head]
    assert _assistant_lines(result) == [ANSWER, STILL_THERE]
