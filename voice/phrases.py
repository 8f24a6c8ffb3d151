"""Text normalisation for turn-taking decisions (acknowledgements, interruptions, end phrases).

Phrases are compared on normalised words, and a phrase also matches its spellings with the word
breaks moved ("uh-huh", "uh huh", "uhhuh"; "never mind", "nevermind"): STT engines and config
authors spell these differently, and the caller said the same thing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

__all__ = [
    "find_end_call_phrase",
    "could_become_acknowledgement",
    "find_phrase",
    "has_interruption_phrase",
    "is_acknowledgement",
    "normalize",
    "word_count",
]

_APOSTROPHES = re.compile(r"['’‘`ʼ]")
_SEPARATORS = re.compile(r"[\W_]+")


def normalize(text: str) -> str:
    """Lowercase words separated by single spaces: "I'm OK, uh-huh." → "im ok uh huh"."""
    # Apostrophes go without a space so "don't" is the single word "dont" of Vapi's lists.
    text = _APOSTROPHES.sub("", text.lower())
    return " ".join(_SEPARATORS.sub(" ", text).split())


def _squashed(phrases: Iterable[str]) -> list[tuple[str, str]]:
    """(phrase, its normalised words without spaces) for each non-empty phrase."""
    return [(p, s) for p in phrases if (s := normalize(p).replace(" ", ""))]


def _spans(words: Sequence[str], start: int, longest: int) -> Iterable[tuple[int, str]]:
    """(end, joined words[start:end]) for every span from `start` not longer than `longest`."""
    joined = ""
    for end in range(start + 1, len(words) + 1):
        joined += words[end - 1]
        if len(joined) > longest:
            return
        yield end, joined


def find_phrase(text: str, phrases: Iterable[str]) -> str | None:
    """The first of `phrases` that occurs in `text` as whole words (case-insensitive)."""
    words = normalize(text).split()
    for phrase, target in _squashed(phrases):
        for start in range(len(words)):
            if any(joined == target for _, joined in _spans(words, start, len(target))):
                return phrase
    return None


def is_acknowledgement(text: str, phrases: Iterable[str]) -> bool:
    """True when the whole utterance is made of acknowledgement phrases ("yeah, okay")."""
    words = normalize(text).split()
    known = {target for _, target in _squashed(phrases)}
    if not words or not known:
        return False
    longest = max(map(len, known))
    # Word break: can words[:i] be covered by known phrases? Greedy longest-first would miss
    # covers where a long match leaves an unmatchable remainder.
    covered = [True] + [False] * len(words)
    for start in range(len(words)):
        if covered[start]:
            for end, joined in _spans(words, start, longest):
                covered[end] = covered[end] or joined in known
    return covered[-1]


def could_become_acknowledgement(text: str, phrases: Iterable[str]) -> bool:
    """True when `text` is the start of an acknowledgement still being said: the first interim
    of "uh-huh" is often "uh", of "got it" "got"."""
    said = normalize(text).replace(" ", "")
    return bool(said) and any(
        target.startswith(said) and target != said for _, target in _squashed(phrases)
    )


def has_interruption_phrase(text: str, phrases: Iterable[str]) -> bool:
    """True when any interruption phrase occurs as whole words."""
    return find_phrase(text, phrases) is not None


def find_end_call_phrase(text: str, phrases: Iterable[str]) -> str | None:
    """The end-call phrase the assistant said, as configured (Vapi's `endCallPhrases`)."""
    return find_phrase(text, phrases)


def word_count(text: str) -> int:
    return len(normalize(text).split())
