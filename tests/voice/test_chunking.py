"""PhraseChunker and WordChunker: streamed LLM text → TTS phrases or words; the TextFeed."""

from __future__ import annotations

import asyncio

import pytest

from voice.chunking import PhraseChunker, WordChunker, clean_for_speech
from voice.text_feed import TextFeed

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


def words(text: str, step: int) -> list[str]:
    chunker = WordChunker()
    pieces = [p for i in range(0, len(text), step) if (p := chunker.push(text[i : i + step]))]
    rest = chunker.flush()
    return pieces + ([rest] if rest else [])


@pytest.mark.parametrize("text", [REPLY, MARKDOWN, TRICKY])
@pytest.mark.parametrize("step", [1, 2, 3, 7, 50])
def test_words_are_the_same_whatever_the_split(text: str, step: int) -> None:
    assert "".join(words(text, step)) == "".join(words(text, len(text)))


def test_words_come_as_soon_as_they_are_complete() -> None:
    chunker = WordChunker()
    assert chunker.push("Sure") == ""  # may go on ("Surely")
    assert chunker.push(", I") == "Sure, "
    assert chunker.push(" can help") == "I can "
    assert chunker.flush() == "help "
    pieces = words(REPLY, 3)
    assert all(p.endswith(" ") and not p.endswith("  ") for p in pieces)
    assert "".join(pieces) == REPLY + " "


def test_words_are_said_without_markdown_and_control_tokens() -> None:
    assert "".join(words(MARKDOWN, 1)) == (
        "Opening hours Here is what we offer, every week: Cleanings on Monday "
        "Fillings on Tuesday 1. Call us first. 2. Then come in. Bye. "
    )
    # a bullet or heading sign counts only at a line start, as for whole phrases
    assert "".join(words("Prices - from 5 - vary. # of items", 2)) == (
        "Prices - from 5 - vary. # of items "
    )


def test_an_unclosed_link_or_token_holds_words_back_only_so_long() -> None:
    chunker = WordChunker()
    assert chunker.push("See [our page") == "See "
    assert chunker.push(" here](https://x.y/") == ""  # the URL is not complete yet
    assert chunker.push("a) now ") == "our page here now "  # the label, not the URL
    stray = WordChunker()
    assert stray.push("a [" + "word " * 50) != ""  # a stray "[" stops holding after 200 chars
    token = WordChunker()
    assert token.push("Bye <flush") == "Bye "
    assert token.push(" />now ") == "now "


async def test_a_feed_replays_from_the_first_piece_for_every_reader() -> None:
    feed = TextFeed()
    feed.push("one ")
    first = aiter(feed)
    assert await anext(first) == "one "
    waiting = asyncio.create_task(anext(first))
    await asyncio.sleep(0)
    waiting.cancel()  # a reader cancelled mid-wait (barge-in) leaves the feed as it was
    with pytest.raises(asyncio.CancelledError):
        await waiting
    feed.push("two ")
    feed.close()
    assert [p async for p in feed] == ["one ", "two "]
    with pytest.raises(RuntimeError):
        feed.push("three ")
