"""Phrase matching for turn-taking, with Vapi's default phrase lists."""

from __future__ import annotations

import pytest

from voice.assistant import DEFAULT_ACKNOWLEDGEMENTS, DEFAULT_INTERRUPTIONS
from voice.phrases import (
    find_end_call_phrase,
    find_phrase,
    has_interruption_phrase,
    is_acknowledgement,
    normalize,
    word_count,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I'm OK,   uh-huh.", "im ok uh huh"),
        ("Don’t STOP!", "dont stop"),
        ("  ", ""),
        ("snake_case/slash\tand\nlines", "snake case slash and lines"),
        ("Café, 3.5 times", "café 3 5 times"),
    ],
)
def test_normalize(text: str, expected: str) -> None:
    assert normalize(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("okay", True),
        ("OK.", True),
        ("Uh-huh.", True),
        ("uh huh", True),
        ("uhhuh", True),
        ("mm hmm", True),
        ("Yeah, okay", True),
        ("yeah okay sure", True),
        ("mm-hmm right", True),
        ("I'm listening", True),
        ("I got it, thanks", False),
        ("okay but how much", False),
        ("yeahokay", True),  # "yeah okay" written together
        ("", False),
        ("...", False),
    ],
)
def test_acknowledgements_with_vapi_defaults(text: str, expected: bool) -> None:
    assert is_acknowledgement(text, DEFAULT_ACKNOWLEDGEMENTS) is expected


def test_acknowledgement_cover_is_not_greedy() -> None:
    # longest-first would take "yeah okay" and be left with "sure"
    assert is_acknowledgement("yeah okay sure", ["yeah okay", "okay sure", "yeah"])
    assert not is_acknowledgement("okay", [])
    assert not is_acknowledgement("okay", ["", "  "])


def test_interruption_phrases_match_whole_words() -> None:
    assert has_interruption_phrase("Wait, that's wrong", DEFAULT_INTERRUPTIONS)
    assert has_interruption_phrase("I don't want that", DEFAULT_INTERRUPTIONS)  # "dont"
    assert has_interruption_phrase("hold on a second", ["hold on"])
    assert has_interruption_phrase("never mind", ["nevermind"])
    assert not has_interruption_phrase("What a wonderful day", DEFAULT_INTERRUPTIONS)
    assert not has_interruption_phrase("nothing", ["no", "not"])  # not a prefix match
    assert not has_interruption_phrase("", DEFAULT_INTERRUPTIONS)


def test_end_call_phrases_whole_words_any_case() -> None:
    phrases = ["goodbye", "Have a great day"]
    assert find_end_call_phrase("Thank you. Goodbye!", phrases) == "goodbye"
    assert find_end_call_phrase("Thanks, and HAVE A GREAT DAY.", phrases) == "Have a great day"
    assert find_end_call_phrase("goodbyes are hard", phrases) is None
    assert find_end_call_phrase("Have a great day-trip", phrases) is not None  # hyphen = space
    assert find_end_call_phrase("Have a day", phrases) is None
    assert find_end_call_phrase("Goodbye", []) is None


def test_find_phrase_returns_the_first_configured_match() -> None:
    assert find_phrase("bye, see you", ["see you", "bye"]) == "see you"
    assert find_phrase("good-bye", ["goodbye"]) == "goodbye"


def test_word_count() -> None:
    assert word_count("Hello there, friend!") == 3
    assert word_count("uh-huh") == 2
    assert word_count(" ... ") == 0
