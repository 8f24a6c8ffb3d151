"""Pure text logic of the call loop: phrase chunking, phrase matching, history, local replies."""

from __future__ import annotations

import pytest

from voice.assistant import DEFAULT_ACKNOWLEDGEMENTS, DEFAULT_INTERRUPTIONS, ModelConfig
from voice.chunking import PhraseChunker
from voice.history import Conversation, heard_text
from voice.local_llm import LocalResponder
from voice.phrases import (
    find_end_call_phrase,
    has_interruption_phrase,
    is_acknowledgement,
    normalize,
    word_count,
)
from voice.types import ChatMessage, WordTiming

REPLY = (
    "Sure, I can help with that. Our office is at 3.5 Main St. in the U.S. and opens at 9 a.m. "
    "every weekday; we also offer evening slots, weekend appointments, and emergency visits "
    "when a tooth really cannot wait. Would you like to book?"
)


def chunk(text: str, step: int) -> list[str]:
    chunker = PhraseChunker()
    phrases: list[str] = []
    for i in range(0, len(text), step):
        phrases += chunker.push(text[i : i + step])
    rest = chunker.flush()
    return phrases + ([rest] if rest else [])


def test_first_phrase_is_cut_at_the_first_clause() -> None:
    phrases = chunk(REPLY, len(REPLY))
    assert phrases[0] == "Sure, I can help with that."  # "Sure," alone is too short to say
    assert " ".join(phrases) == REPLY


def test_streaming_one_character_at_a_time_gives_the_same_phrases() -> None:
    assert chunk(REPLY, 1) == chunk(REPLY, len(REPLY)) == chunk(REPLY, 7)


def test_numbers_abbreviations_and_initials_are_not_split() -> None:
    phrases = chunk(REPLY, 3)
    joined = "|".join(phrases)
    for whole in ("3.5", "St. in", "U.S. and", "9 a.m. every"):
        assert whole in joined.replace("|", " ") and f"{whole.split()[0]}|" not in joined
    assert all(p.strip() == p and p for p in phrases)


def test_later_phrases_cut_at_sentences_or_long_clauses() -> None:
    phrases = chunk(REPLY, 5)
    assert phrases[-1] == "Would you like to book?"
    # the long middle sentence is split at a clause once it is long enough
    assert phrases[1].endswith("every weekday;") and len(phrases[1]) >= 60


def test_markdown_is_not_spoken_and_flush_token_cuts() -> None:
    chunker = PhraseChunker()
    out = chunker.push("**Hours:** we open at nine <flush /> and `close` at five")
    assert out == ["Hours: we open at nine"]
    assert chunker.flush() == "and close at five"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("okay", True),
        ("Uh-huh.", True),
        ("uh huh", True),
        ("uhhuh", True),
        ("Yeah, okay", True),
        ("mm-hmm right", True),
        ("I'm listening", True),
        ("okay but how much", False),
        ("", False),
    ],
)
def test_acknowledgements(text: str, expected: bool) -> None:
    assert is_acknowledgement(text, DEFAULT_ACKNOWLEDGEMENTS) is expected


def test_interruption_phrases_match_whole_words() -> None:
    assert has_interruption_phrase("Wait, that's wrong", DEFAULT_INTERRUPTIONS)
    assert has_interruption_phrase("I don't want that", DEFAULT_INTERRUPTIONS)  # "dont"
    assert not has_interruption_phrase("What a wonderful day", DEFAULT_INTERRUPTIONS)


def test_end_call_phrases_and_normalisation() -> None:
    assert find_end_call_phrase("Thank you. Goodbye!", ["goodbye"]) == "goodbye"
    assert find_end_call_phrase("goodbyes are hard", ["goodbye"]) is None
    assert normalize("I'm OK,   uh-huh.") == "im ok uh huh"
    assert word_count("Hello there, friend!") == 3


def test_conversation_truncation() -> None:
    model = ModelConfig(messages=[{"role": "system", "content": "Be brief."}])
    conversation = Conversation(model)
    conversation.add_user("Hi")
    index = conversation.add_assistant("Hello there, how can I help you today?")
    conversation.truncate_assistant(index, "Hello there,")
    messages = conversation.messages()
    assert [m.role for m in messages] == ["system", "user", "assistant"]
    assert messages[-1].content == "Hello there," and messages[-1].interrupted
    with pytest.raises(ValueError, match="user message"):
        conversation.truncate_assistant(1, "x")


def test_heard_text_with_word_timings() -> None:
    words = [
        WordTiming("Hello", 0.0, 0.4),
        WordTiming("there", 0.4, 0.8),
        WordTiming("friend", 0.8, 1.3),
    ]
    text = "Hello there friend"
    assert heard_text(text, words, 1.3, 0.0) == ""
    assert heard_text(text, words, 1.3, 0.85) == "Hello there"
    assert heard_text(text, words, 1.3, 2.0) == text


def test_heard_text_proportional_cuts_at_a_word() -> None:
    text = "We are open from nine to five"
    heard = heard_text(text, None, 3.0, 1.5)
    assert text.startswith(heard) and heard == "We are open"
    assert heard_text(text, None, 3.0, 0.05) == ""


RULES = ModelConfig(
    rules=[
        {"keywords": ["hours", "open"], "reply": "Nine to five."},
        {"keywords": ["car park"], "reply": "Behind the building."},
    ],
    fallbackReply="Sorry?",
)


async def reply(llm: LocalResponder, text: str) -> tuple[str, int | None]:
    out, tokens = "", None
    async for delta in llm.stream([ChatMessage("system", "x"), ChatMessage("user", text)]):
        out += delta.text
        tokens = delta.completion_tokens if delta.completion_tokens is not None else tokens
    return out, tokens


async def test_local_responder_rules() -> None:
    llm = LocalResponder(RULES)
    assert await reply(llm, "When are you OPEN?") == ("Nine to five.", 3)
    assert (await reply(llm, "Is there a car park?"))[0] == "Behind the building."
    assert (await reply(llm, "I have a scar"))[0] == "Sorry?"  # whole words: "car" ≠ "scar"
    assert (await reply(llm, "opening"))[0] == "Sorry?"
    assert llm.rule_for("hours please") is not None


async def test_local_responder_streams_word_by_word() -> None:
    llm = LocalResponder(RULES)
    deltas = [d.text async for d in llm.stream([ChatMessage("user", "hours")]) if d.text]
    assert deltas == ["Nine ", "to ", "five."]
