"""Text normalisation for turn-taking decisions (acknowledgements, interruptions, end phrases)."""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = [
    "find_end_call_phrase",
    "has_interruption_phrase",
    "is_acknowledgement",
    "normalize",
    "word_count",
]

_APOSTROPHES = re.compile(r"['’`]")
_NON_WORD = re.compile(r"[^\w]+")


def normalize(text: str) -> str:
    """Lowercase words separated by single spaces: "I'm OK, uh-huh." → "im ok uh huh"."""
    text = _APOSTROPHES.sub("", text.lower())
    return " ".join(_NON_WORD.sub(" ", text).split())


def _squash(words: str) -> str:
    # "uh-huh", "uh huh" and "uhhuh" are the same acknowledgement.
    return words.replace(" ", "")


def is_acknowledgement(text: str, phrases: Iterable[str]) -> bool:
    """True when the whole utterance is made of acknowledgement phrases ("yeah, okay")."""
    words = normalize(text).split()
    if not words:
        return False
    known = {_squash(normalize(p)) for p in phrases if normalize(p)}
    longest = max((len(normalize(p).split()) for p in phrases), default=0)
    # Greedy cover of the words by known phrases, longest first, allowing split spellings.
    position = 0
    while position < len(words):
        for size in range(min(longest + 1, len(words) - position), 0, -1):
            if _squash(" ".join(words[position : position + size])) in known:
                position += size
                break
        else:
            return False
    return True


def has_interruption_phrase(text: str, phrases: Iterable[str]) -> bool:
    """True when any interruption phrase occurs as whole words."""
    padded = f" {normalize(text)} "
    return any(f" {normalize(p)} " in padded for p in phrases if normalize(p))


def find_end_call_phrase(text: str, phrases: Iterable[str]) -> str | None:
    """The first end-call phrase the text contains as whole words (case-insensitive)."""
    padded = f" {normalize(text)} "
    for phrase in phrases:
        if normalize(phrase) and f" {normalize(phrase)} " in padded:
            return phrase
    return None


def word_count(text: str) -> int:
    return len(normalize(text).split())
