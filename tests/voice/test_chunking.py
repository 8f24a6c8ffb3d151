"""PhraseChunker: streamed LLM text → TTS phrases."""

from __future__ import annotations

import pytest

from voice.chunking import PhraseChunker, clean_for_speech

REPLY = (
    "Sure, I can help with that. Our office is at 3.5 Main St. in the U.S. and opens at 9 a.m. "
    "every weekday; we also offer evening slots, weekend appointments, and emergency visits "
    "when a tooth really cannot wait. Would you like to book?"
)
MARKDOWN = (
    "## Opening hours\n"
    "Here is what we offer, **every** week:\n"
    "- `Cleanings` on Monday\n"
    "* Fillings on [Tuesday](https://example.com/tue?a=1.5)\n"
    "1. Call us first.\n"
    "2. Then come in. <flush />Bye."
)
TRICKY = (
    'Mr. Smith said "we open at 8.30." Dr. J. Smith, Ph.D., e.g. on Sundays, '
    "writes to bob@example.com. See https://example.com/a.b?c=d. No. 5 is free. "
    "The answer is no. Sorry! Really?! Well… maybe — later. I."
)


def chunk(text: str, step: int, **kwargs: int) -> list[str]:
    chunker = PhraseChunker(**kwargs)
    phrases: list[str] = []
    for i in range(0, len(text), step):
        phrases += chunker.push(text[i : i + step])
    rest = chunker.flush()
    return phrases + ([rest] if rest is not None else [])


def test_first_phrase_is_cut_at_the_first_clause_long_enough() -> None:
    phrases = chunk(REPLY, len(REPLY))
    assert phrases[0] == "Sure, I can help with that."  # "Sure," alone is too short to say
    assert (
        chunk("Okay, so the clinic, as you know, opens at nine.", 100)[0] == "Okay, so the clinic,"
    )
    assert " ".join(phrases) == REPLY


def test_the_first_clause_is_cut_once_it_is_worth_saying_alone() -> None:
    assert chunk("You said: what are your hours? We open at nine.", 100)[0] == "You said:"
    assert chunk("Hi, how can I help you today?", 100)[0] == "Hi, how can I help you today?"


def test_first_min_chars_is_configurable() -> None:
    assert chunk("Sure, I can help.", 100, first_min_chars=3) == ["Sure,", "I can help."]


@pytest.mark.parametrize("text", [REPLY, MARKDOWN, TRICKY])
@pytest.mark.parametrize("step", [1, 2, 3, 7, 50])
def test_any_streaming_split_gives_the_same_phrases(text: str, step: int) -> None:
    assert chunk(text, step) == chunk(text, len(text))


def test_later_phrases_cut_at_every_sentence_or_at_a_long_clause() -> None:
    phrases = chunk(REPLY, 5)
    assert phrases[-1] == "Would you like to book?"
    # the long middle sentence is cut at the first clause past 60 characters, not before
    assert phrases[1].endswith("every weekday;") and len(phrases[1]) >= 60
    assert "," in phrases[2]  # the clauses after it were shorter than 60
    assert chunk("Hi there, my friend. Yes. No.", 4, first_min_chars=12) == [
        "Hi there, my friend.",
        "Yes.",
        "No.",
    ]


def test_numbers_abbreviations_urls_and_emails_are_not_split() -> None:
    phrases = chunk(TRICKY, 1)
    assert phrases == [
        'Mr. Smith said "we open at 8.30."',
        "Dr. J. Smith, Ph.D., e.g. on Sundays, writes to bob@example.com.",
        "See https://example.com/a.b?c=d.",
        "No. 5 is free.",
        "The answer is no.",
        "Sorry!",
        "Really?!",
        "Well… maybe — later.",
        "I.",
    ]


def test_markdown_is_not_spoken_and_lines_end_phrases() -> None:
    assert chunk(MARKDOWN, 1) == [
        "Opening hours",  # a line ends a phrase; 13 characters are enough for the first
        "Here is what we offer, every week:",
        "Cleanings on Monday",
        "Fillings on Tuesday",
        "1. Call us first.",
        "2. Then come in.",
        "Bye.",
    ]
    assert clean_for_speech("**bold** _it_ __b__ `x` snake_case") == "bold it b x snake_case"


def test_flush_token_forces_a_cut_even_when_short_or_split_across_deltas() -> None:
    chunker = PhraseChunker()
    assert chunker.push("**Hours:** we open at nine <flush />") == ["Hours: we open at nine"]
    assert chunker.push("and `close` at five") == []
    assert chunker.flush() == "and close at five"
    assert chunk("Hi <flush/> there <flush /><flush />", 1) == ["Hi", "there"]
    chunker = PhraseChunker()
    assert chunker.push("Yes <flu") == [] and chunker.push("sh /> right") == ["Yes"]


@pytest.mark.parametrize("text", ["", "   ", "\n\n", "**", " - ", "...", "<flush />"])
def test_nothing_speakable_gives_no_phrase(text: str) -> None:
    chunker = PhraseChunker()
    assert chunker.push(text) == []
    assert chunker.flush() is None


def test_phrases_are_never_empty_or_padded() -> None:
    text = "Hi there, friend.   \n\n  ...  Okay! \n - \n**Done**.  "
    for step in (1, 4, len(text)):
        phrases = chunk(text, step, first_min_chars=12)
        assert phrases == ["Hi there, friend.", "... Okay!", "Done."]


def test_flush_returns_the_unfinished_rest_once() -> None:
    chunker = PhraseChunker()
    assert chunker.push("We open at nine and close at five") == []
    assert chunker.flush() == "We open at nine and close at five"
    assert chunker.flush() is None
