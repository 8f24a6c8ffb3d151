"""LLM text → TTS input: whole phrases for request-based TTS, words for streaming-input TTS.

`PhraseChunker` cuts clauses, so a request-based TTS starts on the first clause instead of the
whole answer. `WordChunker` hands a streaming-input TTS each word as soon as it is complete, and
the TTS service decides when it has enough to speak. Every cut depends only on the text, never on
how the deltas were split: a position whose decision needs text that has not arrived yet is left
pending and looked at again on the next push.
"""

from __future__ import annotations

import re

__all__ = ["PhraseChunker", "WordChunker", "clean_for_speech"]

_FLUSH = re.compile(r"<flush\s*/>")  # Vapi's control token: cut here whatever the length
_SENTENCE_END = ".!?"
_CLAUSE_END = ",;:—–…"
_CLOSERS = "\"')]”’*_`"  # may follow the punctuation: 'said "no." Then', "**Note:** …"
_OPENERS = "\"'([“‘*_`"
# Words ending in "." that rarely end a sentence, where a cut would make TTS pause mid-name.
_ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "ave", "vs", "approx", "dept",
    "inc", "ltd", "co", "corp", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept",
    "oct", "nov", "dec",
}  # fmt: skip
# Abbreviations only before a number: "No. 5" is one, "The answer is no. Sorry" is not.
_NUMBER_ABBREVIATIONS = {"no", "nos", "vol", "fig", "pp"}
_WAIT = -1  # the decision needs more text
_WORD = re.compile(r"\w")
_MARKDOWN = (
    (re.compile(r"^[ \t]*#{1,6}[ \t]+", re.MULTILINE), ""),  # headings
    (re.compile(r"^[ \t]*[-*+•][ \t]+", re.MULTILINE), ""),  # bullets
    (re.compile(r"\[([^\]\n]*)\]\([^)\s]*\)"), r"\1"),  # links: say the label, not the URL
    (re.compile(r"\*+|`+|(?<!\w)_+|_+(?!\w)"), ""),  # emphasis and code; keeps snake_case
)


def clean_for_speech(text: str) -> str:
    """Drop markdown a voice would read aloud (bold, headings, bullets, code ticks, link URLs)."""
    for pattern, replacement in _MARKDOWN:
        text = pattern.sub(replacement, text)
    return text


def _speakable(text: str) -> str:
    return " ".join(clean_for_speech(text).split())


# Text a word cut must not split: a markdown link whose URL is not closed yet, and a prefix of
# Vapi's `<flush />` token (it contains a space). Held back at most this many characters, so a
# stray "[" or "<" only delays speech, never silences the rest of the answer.
_HOLD_CHARS = 200
_FLUSH_PREFIX = re.compile(r"<(?:f(?:l(?:u(?:s(?:h\s*/?)?)?)?)?)?$")
_LINE_GUARD = "\x00"  # not a word character, space or markup: `^` rules cannot match after it


class WordChunker:
    """Cuts one streamed reply into word-boundary pieces, markdown removed, each ending in one
    space (what ElevenLabs asks of streamed text). Use a new chunker for each reply round."""

    def __init__(self) -> None:
        self._buffer = ""  # text not yet emitted
        self._line_start = True  # the buffer starts at the beginning of a line

    def push(self, delta: str) -> str:
        """Add a text delta; return the words it completed ("" when none)."""
        self._buffer = _FLUSH.sub(" ", self._buffer + delta)
        cut = self._cut()
        if cut == 0:
            return ""
        return self._emit(cut)

    def flush(self) -> str:
        """Everything left (the reply is complete)."""
        return self._emit(len(self._buffer)) if self._buffer else ""

    def _cut(self) -> int:
        text = self._buffer
        end = len(text)
        link = text.rfind("[")
        if link >= 0 and end - link < _HOLD_CHARS and _open_link(text[link:]):
            end = link
        token = _FLUSH_PREFIX.search(text, max(0, end - 12))
        if token is not None and token.end() == len(text):
            end = min(end, token.start())
        return max(text.rfind(c, 0, end) for c in " \n\t") + 1

    def _emit(self, cut: int) -> str:
        segment, self._buffer = self._buffer[:cut], self._buffer[cut:]
        if self._line_start:
            cleaned = clean_for_speech(segment)
        else:
            cleaned = clean_for_speech(_LINE_GUARD + segment)[1:]
        tail = segment[len(segment.rstrip()) :]
        if tail:
            self._line_start = "\n" in tail
        elif segment:
            self._line_start = False
        words = cleaned.split()
        return " ".join(words) + " " if words else ""


def _open_link(tail: str) -> bool:
    """Whether `tail` (from a "[") may still become a markdown link whose URL is incomplete."""
    close = tail.find("]")
    if close < 0:
        return "\n" not in tail
    after = tail[close + 1 :]
    if not after:
        return True  # "(" may come next
    return after.startswith("(") and ")" not in after and not any(c.isspace() for c in after)


class PhraseChunker:
    """Cuts one streamed reply into phrases. Use a new chunker for each reply."""

    # The first phrase is what the caller waits for: cut it at the first clause that is worth
    # saying alone ("Let me check," / "You said:"), but not at a lone "Sure," or "Hi,".
    def __init__(self, first_min_chars: int = 8, min_chars: int = 60) -> None:
        self.first_min_chars = first_min_chars
        self.min_chars = min_chars
        self._buffer = ""  # text not yet emitted; always starts where a phrase starts
        self._scan = 0  # positions of the buffer before this are decided: no cut there
        self._line_start = True  # the buffer starts at the beginning of a line
        self._emitted = 0

    def push(self, delta: str) -> list[str]:
        """Add a text delta; return the phrases it completed."""
        self._buffer += delta
        phrases: list[str] = []
        while (token := _FLUSH.search(self._buffer)) is not None:
            rest = self._buffer[token.end() :]
            self._buffer = self._buffer[: token.start()]
            phrases += self._take(final=True)
            self._buffer, self._line_start = rest, False
        return phrases + self._take(final=False)

    def flush(self) -> str | None:
        """The rest of the reply as one phrase, or None when nothing speakable is left."""
        rest = self._take(final=True)
        return " ".join(rest) if rest else None

    def _take(self, *, final: bool) -> list[str]:
        """Cut the complete phrases off the buffer (all of it when final)."""
        text = self._buffer
        phrases: list[str] = []
        start, i = 0, self._scan
        while i < len(text):
            end = self._cut_at(text, start, i)
            if end == _WAIT:
                break
            if end is None:
                i += 1
                continue
            phrases.append(_speakable(text[start:end]))
            self._emitted += 1
            self._line_start = False  # the rest starts with the whitespace after the cut
            start = i = end
        self._buffer, self._scan = text[start:], i - start
        if final:
            tail = _speakable(self._buffer)
            if _WORD.search(tail):
                phrases.append(tail)
                self._emitted += 1
            self._buffer, self._scan = "", 0
        return phrases

    def _cut_at(self, text: str, start: int, i: int) -> int | None:
        """Where the phrase text[start:] ends if position i is a boundary: None when it is
        not, _WAIT when the text after i has not arrived yet."""
        char = text[i]
        if char == "\n":  # a list item or heading ends here even without punctuation
            end, sentence = i, True
        elif char in _SENTENCE_END or char in _CLAUSE_END:
            end = i + 1
            while end < len(text) and text[end] in _CLOSERS:
                end += 1
            if end == len(text):
                return _WAIT
            # Whitespace must follow, so "3.5", "U.S.A", URLs and emails are not cut.
            if not text[end].isspace():
                return None
            sentence = char in _SENTENCE_END
            if char == ".":
                abbreviation = self._is_abbreviation(text, start, i, end)
                if abbreviation is None:
                    return _WAIT
                if abbreviation:
                    return None
        else:
            return None
        phrase = _speakable(text[start:end])
        if not _WORD.search(phrase):
            return None  # punctuation alone: keep it with the next words
        if self._emitted == 0:
            needed = self.first_min_chars
        else:
            needed = 1 if sentence else self.min_chars
        return end if len(phrase) >= needed else None

    def _is_abbreviation(self, text: str, start: int, dot: int, after: int) -> bool | None:
        """Whether the "." at `dot` ends an abbreviation rather than a sentence (None: the
        next word is needed to tell)."""
        head = text[start:dot]
        # the word the dot is attached to ("" for "word .")
        raw = "" if head[-1:].isspace() else (head.split() or [""])[-1]
        before = head[: len(head) - len(raw)]
        word = raw.lstrip(_OPENERS)
        lower = word.lower()
        if lower in _ABBREVIATIONS:
            return True
        if len(word) == 1 and word.isupper() and word != "I":  # an initial: "J. Smith"
            return True
        parts = lower.split(".")
        if len(parts) > 1 and all(p.isalpha() and len(p) <= 2 for p in parts):  # e.g, u.s, ph.d
            return True
        if lower in _NUMBER_ABBREVIATIONS:
            following = text[after:].lstrip()
            return following[0].isdigit() if following else None
        if word.isdigit() and len(word) <= 2:  # "1. Call us" at a line start is a list item
            _, newline, line = before.rpartition("\n")
            return not line.strip() and bool(newline or self._line_start)
        return False
