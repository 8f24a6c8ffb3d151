"""Synthesized-once audio for fixed lines (greetings, apologies), per voice and text.

The first message is the same for every call of an assistant, so it is synthesized when the
assistant is loaded and the call's first audio leaves within a frame of the stream start.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field

from media.audio_format import AudioFormat
from media.transport import TELEPHONE
from voice.ports import TextToSpeech
from voice.types import WordTiming

__all__ = ["CachedAudio", "GreetingCache"]


@dataclass(frozen=True, slots=True)
class CachedAudio:
    audio: bytes  # in the format it was cached under
    words: tuple[WordTiming, ...]


class GreetingCache:
    """LRU of synthesized lines per voice, audio format and text; `max_entries` bounds memory (a
    5 s line is 40 kB of μ-law 8 kHz, 160 kB of PCM16 16 kHz).

    `tts` must already speak `audio_format` (`voice.ports.in_format`): the format is part of the
    key, so a phone call and a browser call of one assistant each get their own audio."""

    def __init__(self, max_entries: int = 512) -> None:
        self._entries: OrderedDict[tuple[str, str, str], CachedAudio] = OrderedDict()
        self._max = max_entries
        # One lock per line being synthesized (dropped with its last user, so as many as calls
        # starting at once): two calls starting together synthesize a line once, while other
        # lines (the browser's format, another assistant's greeting) go ahead side by side.
        self._locks: dict[tuple[str, str, str], _LineLock] = {}

    def get(
        self, tts: TextToSpeech, text: str, audio_format: AudioFormat = TELEPHONE
    ) -> CachedAudio | None:
        key = (tts.voice_key, audio_format.name, text)
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    async def get_or_synthesize(
        self,
        tts: TextToSpeech,
        text: str,
        audio_format: AudioFormat = TELEPHONE,
        *,
        keep: bool = True,
    ) -> CachedAudio:
        """`keep=False`: a line of one call (a personalized greeting): synthesized on its own,
        neither waiting for the others nor stored."""
        cached = self.get(tts, text, audio_format)
        if cached is not None:
            return cached
        if not keep:
            return await _synthesize(tts, text)
        key = (tts.voice_key, audio_format.name, text)
        line = self._locks.setdefault(key, _LineLock())
        line.users += 1
        try:
            async with line.lock:
                cached = self.get(tts, text, audio_format)
                if cached is not None:
                    return cached
                entry = await _synthesize(tts, text)
                self._entries[key] = entry
                while len(self._entries) > self._max:
                    self._entries.popitem(last=False)
                return entry
        finally:
            line.users -= 1
            if line.users == 0:
                del self._locks[key]


@dataclass(slots=True)
class _LineLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


async def _synthesize(tts: TextToSpeech, text: str) -> CachedAudio:
    audio = bytearray()
    words: list[WordTiming] = []
    async for chunk in tts.synthesize(text):
        words.extend(chunk.words)
        audio += chunk.audio
    return CachedAudio(bytes(audio), tuple(words))
