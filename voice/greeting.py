"""Synthesized-once audio for fixed lines (greetings, apologies), per voice and text.

The first message is the same for every call of an assistant, so it is synthesized when the
assistant is loaded and the call's first audio leaves within a frame of the stream start.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass

from voice.ports import TextToSpeech
from voice.types import WordTiming

__all__ = ["CachedAudio", "GreetingCache"]


@dataclass(frozen=True, slots=True)
class CachedAudio:
    audio: bytes  # μ-law 8 kHz
    words: tuple[WordTiming, ...]


class GreetingCache:
    """LRU of synthesized lines; `max_entries` bounds memory (a 5 s line is 40 kB)."""

    def __init__(self, max_entries: int = 512) -> None:
        self._entries: OrderedDict[tuple[str, str], CachedAudio] = OrderedDict()
        self._max = max_entries
        self._lock = asyncio.Lock()

    def get(self, tts: TextToSpeech, text: str) -> CachedAudio | None:
        key = (tts.voice_key, text)
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    async def get_or_synthesize(self, tts: TextToSpeech, text: str) -> CachedAudio:
        cached = self.get(tts, text)
        if cached is not None:
            return cached
        async with self._lock:  # two calls starting together synthesize once
            cached = self.get(tts, text)
            if cached is not None:
                return cached
            audio = bytearray()
            words: list[WordTiming] = []
            async for chunk in tts.synthesize(text):
                words.extend(chunk.words)
                audio += chunk.audio
            entry = CachedAudio(bytes(audio), tuple(words))
            self._entries[(tts.voice_key, text)] = entry
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
            return entry
