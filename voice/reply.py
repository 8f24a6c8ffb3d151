"""One assistant reply: LLM → phrases → TTS, producing audio the playout loop drains.

A reply may be produced speculatively (before the caller's turn is confirmed); its audio is held
until `release()`. Timestamps are recorded on the session clock for the latency breakdown.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from voice.chunking import PhraseChunker
from voice.clock import Clock
from voice.errors import ProviderError
from voice.ports import LanguageModel, TextToSpeech
from voice.types import SAMPLE_RATE, ChatMessage, ToolCall, WordTiming

__all__ = ["Reply", "ReplyTimings"]

# Bounded so a TTS far faster than real time waits instead of buffering a whole answer
# (backpressure is the overflow policy): 64 chunks ≈ 12 s of Piper audio.
_AUDIO_QUEUE_CHUNKS = 64


@dataclass(slots=True)
class ReplyTimings:
    llm_start: float | None = None
    llm_first_token: float | None = None
    tts_first_request: float | None = None
    tts_first_audio: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(eq=False)
class Reply:
    """Audio of one assistant turn. `audio` yields μ-law chunks, then None at the end."""

    index: int
    user_text: str  # the caller's words it answers ("" for the greeting)
    clock: Clock
    timings: ReplyTimings = field(default_factory=ReplyTimings)
    text: str = ""  # everything the LLM said
    spoken_text: str = ""  # the part handed to TTS
    audio_seconds: float = 0.0  # produced so far
    words: list[WordTiming] = field(default_factory=list)
    audio: asyncio.Queue[bytes | None] = field(
        default_factory=lambda: asyncio.Queue(maxsize=_AUDIO_QUEUE_CHUNKS)
    )
    released: asyncio.Event = field(default_factory=asyncio.Event)
    done: bool = False  # all audio produced
    is_greeting: bool = False
    committed_at: float | None = None  # when the caller's turn was confirmed
    # With tools: how much of `text` the history already holds (in tool-call messages), and
    # whether any tool ran (the record then shows what was said, fillers included).
    text_in_history: int = 0
    used_tools: bool = False

    def release(self) -> None:
        self.released.set()

    async def put_audio(self, audio: bytes, words: Sequence[WordTiming] = ()) -> None:
        offset = self.audio_seconds
        self.words.extend(WordTiming(w.word, w.start + offset, w.end + offset) for w in words)
        self.audio_seconds += len(audio) / SAMPLE_RATE
        await self.audio.put(audio)

    async def finish(self) -> None:
        self.done = True
        await self.audio.put(None)

    async def produce(
        self, llm: LanguageModel, tts: TextToSpeech, messages: Sequence[ChatMessage]
    ) -> None:
        """Stream the LLM's answer phrase by phrase into TTS. Raises ProviderError."""
        await self.produce_round(llm, tts, messages)
        await self.finish()

    async def produce_round(
        self, llm: LanguageModel, tts: TextToSpeech, messages: Sequence[ChatMessage]
    ) -> tuple[ToolCall, ...]:
        """One LLM response spoken (the audio stays open); returns the tool calls it made."""
        clock = self.clock
        chunker = PhraseChunker()
        calls: tuple[ToolCall, ...] = ()
        if self.timings.llm_start is None:
            self.timings.llm_start = clock.now()
        try:
            async for delta in llm.stream(messages):
                if delta.text:
                    if self.timings.llm_first_token is None:
                        self.timings.llm_first_token = clock.now()
                    self.text += delta.text
                    for phrase in chunker.push(delta.text):
                        await self.speak(tts, phrase)
                if delta.tool_calls:
                    if self.timings.llm_first_token is None:
                        self.timings.llm_first_token = clock.now()
                    calls += delta.tool_calls
                if delta.prompt_tokens is not None:
                    self.timings.prompt_tokens += delta.prompt_tokens
                if delta.completion_tokens is not None:
                    self.timings.completion_tokens += delta.completion_tokens
        except ProviderError:
            # The LLM failed after producing text (a failure before any is retried by the
            # fallback chain and arrives here with nothing produced). The words already
            # streamed are the answer the caller gets: the tail still waiting in the chunker
            # for a phrase boundary is spoken too, else a short answer cut mid-stream ("You
            # said:") is never heard at all while the record says it was.
            rest = chunker.flush()
            if rest:
                await self.speak(tts, rest)
            raise
        rest = chunker.flush()
        if rest:
            await self.speak(tts, rest)
        return calls

    async def speak(self, tts: TextToSpeech, phrase: str) -> None:
        clock = self.clock
        if self.timings.tts_first_request is None:
            self.timings.tts_first_request = clock.now()
        self.spoken_text = f"{self.spoken_text} {phrase}".strip()
        phrase_offset = self.audio_seconds
        async for chunk in tts.synthesize(phrase):
            if not chunk.audio:
                continue
            if self.timings.tts_first_audio is None:
                self.timings.tts_first_audio = clock.now()
            # Word times are relative to this phrase's audio; shift them to the reply's.
            shift = phrase_offset - self.audio_seconds
            await self.put_audio(
                chunk.audio,
                [WordTiming(w.word, w.start + shift, w.end + shift) for w in chunk.words],
            )
