"""The offline keyword responder."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from voice import local_llm
from voice.assistant import ModelConfig
from voice.local_llm import GREETING, LocalResponder
from voice.ports import LanguageModel
from voice.types import ChatMessage, LlmDelta

CONFIG = ModelConfig.model_validate(
    {
        "rules": [
            {"keywords": ["hours", "open"], "reply": "We are open nine to five."},
            {"keywords": ["car park", "check-in"], "reply": "Behind the building."},
            {"keywords": ["open late"], "reply": "Never reached: the rule above matches first."},
            {"keywords": ["bye", "goodbye"], "reply": "Goodbye!", "endCall": True},
        ],
        "fallbackReply": "Sorry, could you say that again?",
    }
)


async def collect(llm: LanguageModel, messages: list[ChatMessage]) -> list[LlmDelta]:
    return [delta async for delta in llm.stream(messages)]


async def reply(llm: LocalResponder, text: str) -> str:
    deltas = await collect(llm, [ChatMessage("system", "Be brief."), ChatMessage("user", text)])
    return "".join(d.text for d in deltas)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("When are you OPEN?", "We are open nine to five."),
        ("hours, please", "We are open nine to five."),
        ("Is there a car park?", "Behind the building."),
        ("is there a carpark", "Behind the building."),  # spelling variants of the keyword
        ("Where is check in?", "Behind the building."),
        ("Are you open late?", "We are open nine to five."),  # the first matching rule wins
        ("I have a scar", "Sorry, could you say that again?"),  # whole words: "car" ≠ "scar"
        ("opening times", "Sorry, could you say that again?"),
        ("Bye!", "Goodbye!"),
    ],
)
async def test_rules_match_whole_words(text: str, expected: str) -> None:
    assert await reply(LocalResponder(CONFIG), text) == expected


def test_rule_for_exposes_end_call() -> None:
    llm = LocalResponder(CONFIG)
    rule = llm.rule_for("ok, goodbye then")
    assert rule is not None and rule.end_call and rule.reply == "Goodbye!"
    hours = llm.rule_for("hours")
    assert hours is not None and not hours.end_call
    assert llm.rule_for("something else") is None
    assert LocalResponder(ModelConfig()).rule_for("hours") is None


async def test_answers_the_last_user_message() -> None:
    llm = LocalResponder(CONFIG)
    messages = [
        ChatMessage("user", "your hours?"),
        ChatMessage("assistant", "We are open nine to five."),
        ChatMessage("user", "and the car park?"),
    ]
    assert "".join(d.text for d in await collect(llm, messages)) == "Behind the building."


@pytest.mark.parametrize(
    "messages",
    [
        [],
        [ChatMessage("system", "You are the Smile Dental receptionist. Be kind.")],
        [ChatMessage("system", "x"), ChatMessage("user", "  ")],
    ],
)
async def test_greets_when_the_caller_said_nothing(messages: list[ChatMessage]) -> None:
    deltas = await collect(LocalResponder(CONFIG), messages)
    assert "".join(d.text for d in deltas) == GREETING == "Hello! How can I help you today?"


async def test_streams_a_delta_per_word_then_usage() -> None:
    messages = [ChatMessage("system", "Be brief."), ChatMessage("user", "hours")]
    deltas = await collect(LocalResponder(CONFIG), messages)
    assert [d.text for d in deltas[:-1]] == ["We ", "are ", "open ", "nine ", "to ", "five."]
    assert all(d.prompt_tokens is None and d.completion_tokens is None for d in deltas[:-1])
    usage = deltas[-1]
    assert usage.text == "" and usage.tool_calls == ()
    assert (usage.prompt_tokens, usage.completion_tokens) == (3, 6)


async def test_deltas_reassemble_replies_with_odd_spacing() -> None:
    config = ModelConfig.model_validate(
        {"rules": [{"keywords": ["x"], "reply": "  One,  two\nthree. "}]}
    )
    deltas = await collect(LocalResponder(config), [ChatMessage("user", "x")])
    assert "".join(d.text for d in deltas) == "  One,  two\nthree. "
    assert deltas[-1].completion_tokens == 3


async def test_token_delay_sleeps_per_word_only_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    monkeypatch.setattr(local_llm, "asyncio", SimpleNamespace(sleep=sleep))
    await collect(LocalResponder(CONFIG), [ChatMessage("user", "hours")])
    assert sleeps == []
    await collect(LocalResponder(CONFIG, token_delay=0.01), [ChatMessage("user", "hours")])
    assert sleeps == [0.01] * 6


def test_is_a_language_model() -> None:
    llm: LanguageModel = LocalResponder(CONFIG)
    assert llm.name == "local"
