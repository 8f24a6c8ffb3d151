"""One assistant reply: LLM → TTS, producing audio the playout loop drains.

A TTS that takes streaming input gets the LLM's words as they are written (one stream per LLM
round, the service decides when it has enough to speak); any other TTS gets whole clauses, one
request each. A reply may be produced speculatively (before the caller's turn is confirmed); its
audio is held until `release()`. Timestamps are recorded on the session clock for the latency
breakdown: `tts_first_request` is when the TTS was first asked to generate, i.e. when the text it
needed had arrived (a clause for request-based TTS, the first words for streaming input).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from media.audio_format import AudioFormat
from media.transport import TELEPHONE
from voice.chunking import PhraseChunker, WordChunker
from voice.clock import Clock
from voice.errors import ProviderError
from voice.ports import LanguageModel, StreamingTextToSpeech, TextToSpeech, streaming_input
from voice.text_feed import TextFeed
from voice.types import ChatMessage, LlmDelta, ToolCall, TtsChunk, WordTiming

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
    # Playback held back until then (stopSpeakingPlan.backoffSeconds after a barge-in): a
    # deliberate wait, which the turn's latency counts apart from processing (None: not held).
    held_until: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0  # part of prompt_tokens


@dataclass(eq=False)
class Reply:
    """Audio of one assistant turn. `audio` yields chunks in `audio_format` (the call's, which
    its TTS speaks), then None at the end."""

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
    audio_format: AudioFormat = TELEPHONE

    def release(self) -> None:
        self.released.set()

    async def put_audio(self, audio: bytes, words: Sequence[WordTiming] = ()) -> None:
        offset = self.audio_seconds
        self.words.extend(WordTiming(w.word, w.start + offset, w.end + offset) for w in words)
        self.audio_seconds += self.audio_format.seconds(len(audio))
        await self.audio.put(audio)

    async def finish(self) -> None:
        self.done = True
        await self.audio.put(None)

    async def produce(
        self, llm: LanguageModel, tts: TextToSpeech, messages: Sequence[ChatMessage]
    ) -> None:
        """Stream the LLM's answer into TTS (words or clauses, see the module). Raises
        ProviderError."""
        await self.produce_round(llm, tts, messages)
        await self.finish()

    async def produce_round(
        self, llm: LanguageModel, tts: TextToSpeech, messages: Sequence[ChatMessage]
    ) -> tuple[ToolCall, ...]:
        """One LLM response spoken (the audio stays open); returns the tool calls it made."""
        if self.timings.llm_start is None:
            self.timings.llm_start = self.clock.now()
        streaming = streaming_input(tts)
        if streaming is not None:
            return await self._round_streaming(llm, streaming, messages)
        chunker = PhraseChunker()
        calls: tuple[ToolCall, ...] = ()
        try:
            async for delta in llm.stream(messages):
                calls += self._take(delta)
                if delta.text:
                    for phrase in chunker.push(delta.text):
                        await self.speak(tts, phrase)
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

    async def _round_streaming(
        self, llm: LanguageModel, tts: StreamingTextToSpeech, messages: Sequence[ChatMessage]
    ) -> tuple[ToolCall, ...]:
        """The LLM's words go into the TTS as they complete while its audio comes back: the LLM
        is read by a task of its own, so neither waits for the other."""
        feed = TextFeed(on_request=self._tts_requested)
        calls: list[ToolCall] = []
        failure: list[ProviderError] = []

        async def write() -> None:
            words = WordChunker()
            try:
                async for delta in llm.stream(messages):
                    calls.extend(self._take(delta))
                    if delta.text:
                        self._hand(feed, words.push(delta.text))
            except ProviderError as exc:
                # As on the clause path: the words already written are spoken, then it raises.
                failure.append(exc)
            except BaseException:
                feed.close()  # cancelled (barge-in) or a bug: no TTS waits for more text
                raise
            self._hand(feed, words.flush())
            feed.close()

        writer = asyncio.create_task(write(), name=f"reply-{self.index}-llm")
        try:
            await self._play(tts.synthesize_stream(feed))
            await writer
        finally:
            if not writer.done():
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)
        if failure:
            raise failure[0]
        return tuple(calls)

    def _take(self, delta: LlmDelta) -> tuple[ToolCall, ...]:
        """Record a delta's text, timing and usage; return its tool calls."""
        if (delta.text or delta.tool_calls) and self.timings.llm_first_token is None:
            self.timings.llm_first_token = self.clock.now()
        if delta.text:
            self.text += delta.text
        if delta.prompt_tokens is not None:
            self.timings.prompt_tokens += delta.prompt_tokens
        if delta.completion_tokens is not None:
            self.timings.completion_tokens += delta.completion_tokens
        if delta.cached_prompt_tokens is not None:
            self.timings.cached_prompt_tokens += delta.cached_prompt_tokens
        return tuple(delta.tool_calls or ())

    def _hand(self, feed: TextFeed, words: str) -> None:
        if words:
            self.spoken_text = f"{self.spoken_text} {words}".strip()
            feed.push(words)

    def _tts_requested(self) -> None:
        if self.timings.tts_first_request is None:
            self.timings.tts_first_request = self.clock.now()

    async def speak(self, tts: TextToSpeech, phrase: str) -> None:
        """Say one whole phrase (a clause, a tool's filler) with a request-based call."""
        self._tts_requested()
        self.spoken_text = f"{self.spoken_text} {phrase}".strip()
        await self._play(tts.synthesize(phrase))

    async def _play(self, chunks: AsyncIterator[TtsChunk]) -> None:
        """Queue one TTS call's audio, its word times moved from that call's audio to the
        reply's."""
        start = self.audio_seconds
        try:
            async for chunk in chunks:
                if not chunk.audio:
                    continue
                if self.timings.tts_first_audio is None:
                    self.timings.tts_first_audio = self.clock.now()
                shift = start - self.audio_seconds  # put_audio adds the audio so far back
                await self.put_audio(
                    chunk.audio,
                    [WordTiming(w.word, w.start + shift, w.end + shift) for w in chunk.words],
                )
        finally:
            # A barge-in usually lands while this waits on a full audio queue, the TTS stream
            # parked at a yield: close it now (its context is closed on the socket) rather
            # than whenever the garbage collector finalizes it.
            close = getattr(chunks, "aclose", None)  # async generators have it
            if close is not None:
                await close()
