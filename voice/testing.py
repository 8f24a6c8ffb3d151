"""Test kit: a fake clock, scripted engines and a recording sink.

Public so the tests and the benchmarks build sessions without models or network. The scripted
engines follow the real ports exactly; they only replace the intelligence with a script. The STT
and the TTS work in any call format (`for_format`), telephone audio unless told otherwise.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Sequence

import numpy as np

from media.audio_format import AudioFormat
from media.transport import TELEPHONE
from voice.events import CallEvent
from voice.types import ChatMessage, LlmDelta, Transcript, TtsChunk, WordTiming

__all__ = [
    "FakeClock",
    "RecordingSink",
    "ScriptedLlm",
    "ScriptedStt",
    "ScriptedSttStream",
    "ToneTts",
    "tone",
    "tone_ulaw",
]


class FakeClock:
    """Time that moves only when told to. `sleep_until` returns once `advance` reaches it."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._changed = asyncio.Condition()

    def now(self) -> float:
        return self._now

    async def advance(self, seconds: float) -> None:
        self._now += seconds
        async with self._changed:
            self._changed.notify_all()
        await asyncio.sleep(0)

    async def sleep_until(self, deadline: float) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self._now >= deadline)


class RecordingSink:
    def __init__(self) -> None:
        self.events: list[CallEvent] = []

    def emit(self, event: CallEvent) -> None:
        self.events.append(event)

    def of_type(self, kind: type) -> list[CallEvent]:
        return [e for e in self.events if isinstance(e, kind)]


def tone(
    seconds: float,
    frequency: float = 440.0,
    level: float = 0.3,
    audio_format: AudioFormat = TELEPHONE,
) -> bytes:
    """A sine in `audio_format` (μ-law 8 kHz by default)."""
    rate = audio_format.sample_rate
    t = np.arange(int(seconds * rate)) / rate
    pcm = (level * 32767 * np.sin(2 * math.pi * frequency * t)).astype("<i2")
    return audio_format.from_pcm16(pcm.tobytes())


def tone_ulaw(seconds: float, frequency: float = 440.0, level: float = 0.3) -> bytes:
    return tone(seconds, frequency, level)


class ScriptedSttStream:
    def __init__(
        self, texts: list[str], delay: float, audio_format: AudioFormat = TELEPHONE
    ) -> None:
        self._texts = texts
        self._delay = delay
        self.audio_format = audio_format
        self._queue: asyncio.Queue[Transcript | None] = asyncio.Queue(maxsize=64)
        self.audio_bytes = 0
        self.chunk_sizes: set[int] = set()  # the sizes `send_audio` was given
        self.received = bytearray()  # the first 10 s of audio, as sent
        self.finalized = 0

    async def send_audio(self, audio: bytes) -> None:
        self.audio_bytes += len(audio)
        self.chunk_sizes.add(len(audio))
        room = self.audio_format.bytes_for(10.0) - len(self.received)
        if room > 0:
            self.received += audio[:room]

    async def finalize(self) -> None:
        self.finalized += 1
        text = self._texts.pop(0) if self._texts else ""
        if self._delay:
            await asyncio.sleep(self._delay)
        await self._queue.put(Transcript(text, is_final=True, speech_final=True))

    async def transcripts(self) -> AsyncIterator[Transcript]:
        while (item := await self._queue.get()) is not None:
            yield item

    async def aclose(self) -> None:
        if self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait(None)


class ScriptedStt:
    """Each `finalize` yields the next scripted text as a final transcript."""

    name = "scripted-stt"

    def __init__(
        self, texts: Sequence[str], delay: float = 0.0, audio_format: AudioFormat = TELEPHONE
    ) -> None:
        self.texts = list(texts)
        self.delay = delay
        self.audio_format = audio_format
        self.streams: list[ScriptedSttStream] = []

    def for_format(self, audio_format: AudioFormat) -> ScriptedStt:
        """The same script in another format: the texts and `streams` are shared, so a test
        holding this one sees the other's streams."""
        if audio_format == self.audio_format:
            return self
        other = ScriptedStt((), self.delay, audio_format)
        other.texts, other.streams = self.texts, self.streams
        return other

    async def connect(self) -> ScriptedSttStream:
        stream = ScriptedSttStream(self.texts, self.delay, self.audio_format)
        self.streams.append(stream)
        return stream


class ScriptedLlm:
    """Replies with the next scripted answer, a word per delta."""

    name = "scripted-llm"

    def __init__(
        self, replies: Sequence[str], first_token: float = 0.0, per_token: float = 0.0
    ) -> None:
        self.replies = list(replies)
        self.first_token = first_token
        self.per_token = per_token
        self.requests: list[list[ChatMessage]] = []

    async def stream(self, messages: Sequence[ChatMessage]) -> AsyncIterator[LlmDelta]:
        self.requests.append(list(messages))
        reply = self.replies.pop(0) if self.replies else "I have nothing more to say."
        if self.first_token:
            await asyncio.sleep(self.first_token)
        words = reply.split(" ")
        for i, word in enumerate(words):
            if i and self.per_token:
                await asyncio.sleep(self.per_token)
            yield LlmDelta(text=word if i == len(words) - 1 else word + " ")
        yield LlmDelta(prompt_tokens=10, completion_tokens=len(words))


class ToneTts:
    """A tone `seconds_per_char` long per character, in 100 ms chunks, with word timings."""

    name = "tone-tts"

    def __init__(
        self,
        seconds_per_char: float = 0.05,
        first_byte: float = 0.0,
        *,
        frequency: float = 440.0,
        audio_format: AudioFormat = TELEPHONE,
    ) -> None:
        self.seconds_per_char = seconds_per_char
        self.first_byte = first_byte
        self.frequency = frequency
        self.audio_format = audio_format
        self.voice_key = f"tone-{seconds_per_char}"
        if frequency != 440.0:
            self.voice_key += f"-{frequency:g}Hz"
        self.requests: list[str] = []

    def for_format(self, audio_format: AudioFormat) -> ToneTts:
        """The same voice in another format; `requests` is shared."""
        if audio_format == self.audio_format:
            return self
        other = ToneTts(
            self.seconds_per_char,
            self.first_byte,
            frequency=self.frequency,
            audio_format=audio_format,
        )
        other.requests = self.requests
        return other

    async def synthesize(self, text: str) -> AsyncIterator[TtsChunk]:
        self.requests.append(text)
        if self.first_byte:
            await asyncio.sleep(self.first_byte)
        audio = tone(
            len(text) * self.seconds_per_char, self.frequency, audio_format=self.audio_format
        )
        words: list[WordTiming] = []
        position = 0
        for word in text.split():
            start = text.index(word, position)
            position = start + len(word)
            words.append(
                WordTiming(word, start * self.seconds_per_char, position * self.seconds_per_char)
            )
        step = self.audio_format.bytes_for(0.1)
        for offset in range(0, len(audio), step):
            yield TtsChunk(audio[offset : offset + step], tuple(words) if offset == 0 else ())
