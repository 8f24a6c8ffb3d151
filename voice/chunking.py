"""LLM text → TTS phrases, so speech starts on the first clause instead of the whole answer."""

from __future__ import annotations

import re

__all__ = ["PhraseChunker", "clean_for_speech"]

_FLUSH = "<flush />"
_SENTENCE_END = ".!?"
_CLAUSE_END = ",;:—"
# Words ending in "." that don't end a sentence.
_ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "u.s",
    "a.m", "p.m", "no", "approx", "dept", "inc", "ltd", "co",
}  # fmt: skip
_MARKDOWN = re.compile(r"(\*\*|__|`+|^#+\s*|^\s*[-*•]\s+)", re.MULTILINE)


def clean_for_speech(text: str) -> str:
    """Drop markdown a voice would read aloud (bold, headings, bullets, code ticks)."""
    return _MARKDOWN.sub("", text)


class PhraseChunker:
    def __init__(self, first_min_chars: int = 12, min_chars: int = 60) -> None:
        self.first_min_chars = first_min_chars
        self.min_chars = min_chars
        self._buffer = ""
        self._emitted = 0

    def push(self, delta: str) -> list[str]:
        self._buffer += delta
        phrases: list[str] = []
        while (flush_at := self._buffer.find(_FLUSH)) >= 0:
            head = self._buffer[:flush_at]
            self._buffer = self._buffer[flush_at + len(_FLUSH) :]
            phrases += self._split(head, final=True)[0]
        done, self._buffer = self._split(self._buffer, final=False)
        return phrases + done

    def flush(self) -> str | None:
        rest, self._buffer = self._split(self._buffer, final=True)
        return " ".join(rest) if rest else None

    def _split(self, text: str, *, final: bool) -> tuple[list[str], str]:
        """Complete phrases in `text`, and the unfinished rest ("" when final)."""
        phrases: list[str] = []
        start = 0
        for i in range(len(text)):
            # A boundary needs the whitespace after it, so "3.5" and "e.g." are not split.
            followed = i + 1 < len(text) and text[i + 1].isspace()
            if not followed or not self._is_boundary(text, start, i):
                continue
            phrase = clean_for_speech(text[start : i + 1]).strip()
            if phrase:
                phrases.append(phrase)
                self._emitted += 1
            start = i + 1
        rest = text[start:]
        if final:
            tail = clean_for_speech(rest).strip()
            if tail:
                phrases.append(tail)
                self._emitted += 1
            rest = ""
        return phrases, rest

    def _is_boundary(self, text: str, start: int, i: int) -> bool:
        char = text[i]
        length = len(text[start : i + 1].strip())
        if char in _SENTENCE_END:
            if char == ".":
                word = text[start:i].split()[-1:] or [""]
                if word[0].lower().rstrip(".") in _ABBREVIATIONS:
                    return False
                if len(word[0]) == 1 and word[0].isupper():  # an initial: "J. Smith"
                    return False
            return length >= (self.first_min_chars if self._emitted == 0 else 1)
        if char in _CLAUSE_END:
            needed = self.first_min_chars if self._emitted == 0 else self.min_chars
            return length >= needed
        return False
