"""The LLM's conversation history and what the caller heard of an interrupted reply."""

from __future__ import annotations

import pytest

from voice.assistant import ModelConfig
from voice.history import Conversation, heard_text
from voice.types import ToolCall, WordTiming


def conversation() -> Conversation:
    return Conversation(ModelConfig(messages=[{"role": "system", "content": "Be brief."}]))


def test_starts_from_the_model_messages() -> None:
    model = ModelConfig(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "system", "content": None},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "image"}]},
            {"role": "assistant", "content": "Hello!"},
            {"role": "tool", "content": "orphan result", "tool_call_id": "x"},
        ]
    )
    messages = Conversation(model).messages()
    assert [(m.role, m.content) for m in messages] == [
        ("system", "Be brief."),
        ("system", ""),
        ("user", "Hi"),
        ("assistant", "Hello!"),
    ]
    assert Conversation(ModelConfig()).messages() == []


def test_adds_return_indexes_and_tool_messages_serialize() -> None:
    history = conversation()
    assert history.add_user("What time is it?") == 1
    call = ToolCall("call_1", "get_time", "{}")
    assert history.add_tool_calls([call]) == 2
    assert history.add_tool_result("call_1", "noon") == 3
    assert history.add_assistant("It is noon.") == 4
    assert len(history) == 5
    openai = [m.to_openai() for m in history.messages()]
    assert openai[2]["tool_calls"][0]["function"] == {"name": "get_time", "arguments": "{}"}
    assert openai[3] == {"role": "tool", "content": "noon", "tool_call_id": "call_1"}


def test_messages_is_a_copy() -> None:
    history = conversation()
    history.add_tool_calls([ToolCall("c", "f", "{}")])
    copy = history.messages()
    copy[0].content = "changed"
    copy[1].tool_calls.clear()
    copy.append(copy[0])
    fresh = history.messages()
    assert fresh[0].content == "Be brief." and len(fresh[1].tool_calls) == 1 and len(fresh) == 2


def test_truncate_assistant_keeps_only_what_was_heard() -> None:
    history = conversation()
    history.add_user("Hi")
    index = history.add_assistant("Hello there, how can I help you today?")
    history.truncate_assistant(index, "Hello there,")
    last = history.messages()[-1]
    assert last.content == "Hello there," and last.interrupted
    assert last.to_openai() == {"role": "assistant", "content": "Hello there,"}
    with pytest.raises(ValueError, match="user message"):
        history.truncate_assistant(1, "x")
    with pytest.raises(IndexError):
        history.truncate_assistant(9, "x")


TEXT = "Hello there, my friend."
WORDS = [
    WordTiming("Hello", 0.0, 0.4),
    WordTiming("there,", 0.4, 0.8),
    WordTiming("my", 0.9, 1.0),
    WordTiming("friend.", 1.0, 1.5),
]


@pytest.mark.parametrize(
    ("heard", "expected"),
    [
        (0.0, ""),
        (0.3, ""),  # the first word had not finished
        (0.4, "Hello"),
        (0.85, "Hello there,"),  # the text's own punctuation is kept
        (1.49, "Hello there, my"),
        (1.5, TEXT),
        (1.7, TEXT),  # only trailing silence was left
        (2.0, TEXT),
    ],
)
def test_heard_text_with_word_timings(heard: float, expected: str) -> None:
    assert heard_text(TEXT, WORDS, 1.8, heard) == expected


def test_heard_text_scales_when_tts_words_differ_from_the_text() -> None:
    # a provider that split "there," into two words: 2 of 5 heard → 1 of 4 text words
    words = [*WORDS[:1], WordTiming("there", 0.4, 0.7), WordTiming(",", 0.7, 0.8), *WORDS[2:]]
    assert heard_text(TEXT, words, 1.5, 0.75) == "Hello"


@pytest.mark.parametrize(
    ("heard", "expected"),
    [
        (0.0, ""),
        (0.05, ""),
        (1.5, "We are open"),  # half the characters end inside "from": cut back to a word
        (0.7, "We are"),  # exactly at the space after "are"
        (2.9, "We are open from nine to"),
        (3.0, "We are open from nine to five"),
    ],
)
def test_heard_text_proportional_without_timings(heard: float, expected: str) -> None:
    text = "We are open from nine to five"
    assert heard_text(text, None, 3.0, heard) == expected
    assert heard_text(text, [], 3.0, heard) == expected


def test_heard_text_edges() -> None:
    assert heard_text("", None, 1.0, 0.5) == ""
    assert heard_text("   ", WORDS, 1.0, 0.5) == ""
    assert heard_text("Hello", None, 0.0, 0.1) == "Hello"  # no audio length known: all played
    assert heard_text("Hello", None, 1.0, -1.0) == ""
    assert heard_text("Supercalifragilistic", None, 1.0, 0.9) == ""
