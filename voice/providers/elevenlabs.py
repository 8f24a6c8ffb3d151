"""ElevenLabs streaming TTS over the multi-context WebSocket (protocols.md §3.2).

One socket per `ElevenLabsTts`, opened at the first `synthesize()` and kept warm between phrases
(re-opened when it has dropped). A drop with phrases in flight fails them (retryable: the session's
fallback chain retries and records it); a drop while idle would otherwise be invisible, so the
socket that replaces it is reported to `on_reconnect` (when set). Each `synthesize()` is one
context:

    {"text": " ", "context_id": c, "voice_settings": {…}}     initialise the context
    {"text": "<text> ", "context_id": c, "flush": true}         generate all of it now
    {"context_id": c, "close_context": true}                    isFinal follows the last audio

`close_context` goes right after the flush because `isFinal` only follows a close, and a flushed
context keeps flushing after it (the API's contract), exactly as pipecat ends a turn. If the
consumer stops early (barge-in), a context not yet closed is closed then, and whatever audio still
arrives for it is dropped by `contextId`.

`synthesize_stream()` is one context per reply round, fed while the LLM writes (see
`StreamPlan` for when it flushes):

    {"text": " ", "context_id": c, "voice_settings": {…}, "generation_config": {…}}
    {"text": "Sure, ", "context_id": c}  …  {"text": "help ", "context_id": c, "flush": true}
    {"text": "you ", "context_id": c}  …   the service generates by its chunk schedule
    {"context_id": c, "flush": true}                             the rest, once the LLM is done
    {"context_id": c, "close_context": true}

The output format is the call's, passed through untouched: `ulaw_8000` for a phone call,
`pcm_16000` for a browser call (`for_format`; a PCM chunk cut mid-sample has its odd byte carried
to the next). One reader task owned by this object
demultiplexes by `contextId` into bounded per-context queues; `aclose()` cancels it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import itertools
import json
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from media.audio_format import AudioFormat
from media.transport import TELEPHONE
from voice.errors import ConfigError, ProviderError, ProviderProtocolError, ProviderTimeout
from voice.providers._ws import describe_close, map_websocket_errors
from voice.providers.options import ElevenLabsVoiceSettings
from voice.text_feed import TextFeed
from voice.types import TtsChunk, WordTiming

__all__ = ["STREAM_CHUNK_SCHEDULE", "ElevenLabsTts", "StreamPlan", "words_from_alignment"]

# ElevenLabs buffers streamed text and generates only when the buffer reaches the next length of
# `chunk_length_schedule` (default [120, 160, 250, 290] characters, each 50–500), on `flush`, or
# at once for every message with `auto_mode` (meant for whole sentences: word by word it would
# speak each word alone). The default's 120 characters is two sentences of an ordinary reply
# (~600 ms of tokens at 50 tokens/s), so the first words are flushed by `StreamPlan` instead;
# after them the service's schedule takes over, with lengths small enough that the next
# generation (≤ 80 characters ≈ 400 ms of tokens + first byte) is ready before the first words
# (~1 s of speech) have been said, and larger later ones for prosody once audio is well ahead.
STREAM_CHUNK_SCHEDULE = (50, 80, 160, 250)
_CLAUSE_END = ".!?,;:—–…"
_CLOSERS = "\"')]”’*_`"


class StreamPlan:
    """Where one streamed context flushes (sans-I/O). The first generation is what the caller
    waits for: flush at the first clause worth saying alone ("Sure, I can help," but not a
    lone "Sure,") or after `first_words` words, whichever comes first — a clause keeps its
    prosody whole, and four words (~1 s of speech) cover the next generation's latency. Later
    text is left to the service's chunk schedule, and the rest is flushed at the end."""

    def __init__(self, first_words: int = 4, first_min_chars: int = 8) -> None:
        self.first_words = first_words
        self.first_min_chars = first_min_chars
        self._words = 0
        self._chars = 0
        self.flushed = False  # the first flush was sent
        self.pending = False  # text sent since the last flush

    def add(self, piece: str) -> bool:
        """`piece` is being sent; True: flush with it."""
        self.pending = True
        if self.flushed:
            return False
        self._words += len(piece.split())
        self._chars += len(piece)
        clause = piece.rstrip().rstrip(_CLOSERS)[-1:] in tuple(_CLAUSE_END)
        if self._words >= self.first_words or (clause and self._chars >= self.first_min_chars):
            self.flushed, self.pending = True, False
            return True
        return False

    def finish(self) -> bool:
        """The text has ended; True: a last flush is needed for what the schedule left."""
        pending, self.pending = self.pending, False
        return pending


_FINAL = object()  # queue item: isFinal for this context
_Item = tuple[bytes, tuple[WordTiming, ...]] | ProviderError | object


def words_from_alignment(alignment: Mapping[str, Any], offset: float) -> tuple[WordTiming, ...]:
    """Word timings from one chunk's character alignment, shifted by `offset` seconds.

    Alignment times are relative to their own chunk, so `offset` is where the chunk starts in the
    phrase. The server cuts chunks at spaces, so a chunk's alignment holds whole words.
    """
    chars = alignment["chars"]
    starts = alignment["charStartTimesMs"]
    durations = alignment.get("charDurationsMs", alignment.get("charsDurationsMs"))
    if not (isinstance(chars, list) and isinstance(starts, list) and isinstance(durations, list)):
        raise TypeError("alignment fields must be lists")
    if not len(chars) == len(starts) == len(durations):
        raise ValueError("alignment lists differ in length")
    words: list[WordTiming] = []
    current = ""
    start = end = 0.0
    for char, char_start, char_duration in zip(chars, starts, durations, strict=True):
        if not isinstance(char, str):
            raise TypeError("alignment chars must be strings")
        if char.isspace():
            if current:
                words.append(WordTiming(current, offset + start, offset + end))
                current = ""
            continue
        if not current:
            start = float(char_start) / 1000
        current += char
        end = (float(char_start) + float(char_duration)) / 1000
    if current:
        words.append(WordTiming(current, offset + start, offset + end))
    return tuple(words)


@dataclass(eq=False, slots=True)
class _Context:
    id: str
    queue: asyncio.Queue[_Item]
    abandoned: bool = False  # the consumer is gone: late audio is dropped
    close_sent: bool = False
    released: bool = False
    done: bool = False
    ws: ClientConnection | None = field(default=None, repr=False)
    # streamed contexts: when audio is due by (a flush sent and no audio since, or the text
    # ended), None while the LLM is still writing and the service may be waiting for more
    due: float | None = None
    text_done: bool = True


class ElevenLabsTts:
    name = "elevenlabs"

    def __init__(
        self,
        api_key: str,
        voice_id: str,
        *,
        base_url: str = "wss://api.elevenlabs.io",
        model_id: str = "eleven_flash_v2_5",
        voice_settings: ElevenLabsVoiceSettings | None = None,
        first_byte_timeout: float = 3.0,
        connect_timeout: float = 3.0,
        stall_timeout: float = 5.0,
        max_contexts: int = 5,
        queue_chunks: int = 256,
        on_reconnect: Callable[[ProviderError], None] | None = None,
        chunk_schedule: tuple[int, ...] = STREAM_CHUNK_SCHEDULE,
        stream_plan: Callable[[], StreamPlan] = StreamPlan,
        audio_format: AudioFormat = TELEPHONE,
    ) -> None:
        if min(first_byte_timeout, connect_timeout, stall_timeout) <= 0:
            raise ValueError("timeouts must be positive")
        if max_contexts < 1 or queue_chunks < 1:
            raise ValueError("max_contexts and queue_chunks must be at least 1")
        if not chunk_schedule or not all(50 <= n <= 500 for n in chunk_schedule):
            raise ValueError("chunk_schedule lengths must be 50–500 characters (ElevenLabs)")
        output_format = _output_format(audio_format)
        # What `for_format` builds its sibling from (same voice, its own socket).
        self._options: dict[str, Any] = {
            "base_url": base_url,
            "model_id": model_id,
            "voice_settings": voice_settings,
            "first_byte_timeout": first_byte_timeout,
            "connect_timeout": connect_timeout,
            "stall_timeout": stall_timeout,
            "max_contexts": max_contexts,
            "queue_chunks": queue_chunks,
            "chunk_schedule": chunk_schedule,
            "stream_plan": stream_plan,
        }
        self._voice_id = voice_id
        self._siblings: list[ElevenLabsTts] = []
        self.audio_format = audio_format
        self.chunk_schedule = chunk_schedule
        self._stream_plan = stream_plan
        self._api_key = api_key
        self.voice_settings = voice_settings or ElevenLabsVoiceSettings()
        self.first_byte_timeout = first_byte_timeout
        self.connect_timeout = connect_timeout
        self.stall_timeout = stall_timeout
        self.queue_chunks = queue_chunks
        settings = self.voice_settings
        self.voice_key = (
            f"elevenlabs/{model_id}/{voice_id}/{settings.stability:g}/"
            f"{settings.similarity_boost:g}/{settings.style:g}/{settings.speed:g}"
        )
        query = urlencode(
            {"model_id": model_id, "output_format": output_format, "sync_alignment": "true"}
        )
        self.url = (
            f"{base_url.rstrip('/')}/v1/text-to-speech/{quote(voice_id, safe='')}"
            f"/multi-stream-input?{query}"
        )
        self._ws: ClientConnection | None = None
        self._readers: set[asyncio.Task[None]] = set()
        self._contexts: dict[str, _Context] = {}
        # The server allows 5 open contexts per socket; a barged-in context stays open there
        # until its isFinal, so it keeps its slot until then.
        self._slots = asyncio.Semaphore(max_contexts)
        self._open_lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self._prefix = uuid.uuid4().hex[:8]
        self._closed = False
        self.on_reconnect = on_reconnect
        self._lost: str | None = None  # how an idle socket dropped, not yet reported
        self.connections = 0  # sockets opened over this object's life
        self.dropped_chunks = 0  # late audio of abandoned contexts

    streams_text = True

    def for_format(self, audio_format: AudioFormat) -> ElevenLabsTts:
        """This voice in `audio_format`: a sibling with its own socket (the output format is
        fixed per socket), closed with this one by `aclose`."""
        if audio_format == self.audio_format:
            return self
        for sibling in self._siblings:
            if sibling.audio_format == audio_format:
                return sibling
        sibling = ElevenLabsTts(
            self._api_key,
            self._voice_id,
            **self._options,
            on_reconnect=self.on_reconnect,
            audio_format=audio_format,
        )
        self._siblings.append(sibling)
        return sibling

    # --- the port ------------------------------------------------------------------------------

    async def synthesize(self, text: str) -> AsyncGenerator[TtsChunk, None]:
        text = text.strip()
        if not text:
            return
        context = await self._new_context()
        try:
            await self._start(context, text)
            async for chunk in self._audio(context):
                yield chunk
        finally:
            if not context.done:
                await self._abandon(context)

    async def synthesize_stream(self, text: TextFeed) -> AsyncGenerator[TtsChunk, None]:
        async with contextlib.aclosing(aiter(text)) as pieces:
            # The context opens with the first words: a round that says nothing (tool calls
            # only) costs no context, and the LLM's first-token wait is not first-byte time.
            first = await anext(pieces, None)
            if first is None:
                return
            context = await self._new_context()
            context.text_done = False
            context.due = None  # nothing is generated before the first flush
            sender: asyncio.Task[None] | None = None
            try:
                ws = await self._open(context, generation=True)
                sender = asyncio.create_task(
                    self._feed(context, ws, first, pieces, text), name="elevenlabs-feed"
                )
                async for chunk in self._audio(context):
                    yield chunk
            finally:
                if sender is not None and not sender.done():
                    sender.cancel()
                    await asyncio.gather(sender, return_exceptions=True)
                if not context.done:
                    await self._abandon(context)

    async def _new_context(self) -> _Context:
        if self._closed:
            raise ProviderError(self.name, "synthesize() after aclose()", retryable=False)
        context = _Context(f"{self._prefix}-{next(self._ids)}", asyncio.Queue(self.queue_chunks))
        context.due = asyncio.get_running_loop().time() + self.first_byte_timeout
        try:
            async with asyncio.timeout_at(context.due):
                await self._slots.acquire()
        except TimeoutError as exc:
            # Every slot is held, most likely by barged-in contexts whose isFinal never came:
            # closing the socket releases them, so the next phrase starts on a fresh one.
            if self._ws is not None:
                await self._ws.close()
            raise ProviderTimeout(self.name, "first_byte", self.first_byte_timeout) from exc
        return context

    async def _audio(self, context: _Context) -> AsyncGenerator[TtsChunk, None]:
        """The context's audio until isFinal, word times relative to its first byte."""
        loop = asyncio.get_running_loop()
        offset = 0
        width = self.audio_format.sample_width
        carry = b""  # half a PCM16 sample, completed by the next chunk
        try:
            while True:
                # Never yield inside a deadline block: the timeout would cancel the consumer.
                stage = "first_byte" if offset == 0 else "audio"
                seconds = self.first_byte_timeout if offset == 0 else self.stall_timeout
                due = context.due
                # No deadline while the LLM is still writing unflushed text; look again after
                # `first_byte_timeout` in case a flush has set one meanwhile.
                wait = self.first_byte_timeout if due is None else max(0.0, due - loop.time())
                try:
                    async with asyncio.timeout(wait):
                        item = await context.queue.get()
                except TimeoutError as exc:
                    if context.due is not None and loop.time() >= context.due:
                        raise ProviderTimeout(self.name, stage, seconds) from exc
                    continue
                if item is _FINAL:
                    context.done = True
                    return
                if isinstance(item, ProviderError):
                    raise item
                audio, words = _as_audio(item)
                audio = carry + audio
                cut = len(audio) - len(audio) % width
                audio, carry = audio[:cut], audio[cut:]
                shift = self.audio_format.seconds(offset)
                offset += len(audio)
                if context.text_done:
                    context.due = loop.time() + self.stall_timeout
                else:
                    context.due = None  # more comes when the service has enough text
                yield TtsChunk(audio, tuple(_shifted(w, shift) for w in words))
        except ProviderTimeout:
            # A server that stopped answering one context is not trusted with the next: drop the
            # socket (its other contexts fail as retryable) and open a fresh one next time.
            if context.ws is not None:
                await context.ws.close()
            raise

    async def aclose(self) -> None:
        """Close the socket and stop the reader; pending `synthesize()` calls fail."""
        self._closed = True
        for sibling in self._siblings:
            await sibling.aclose()
        ws = self._ws
        self._ws = None
        if ws is not None:
            await ws.close()
        for reader in list(self._readers):
            reader.cancel()
        if self._readers:
            await asyncio.gather(*self._readers, return_exceptions=True)
        self._fail_all(ProviderError(self.name, "closed", retryable=False))

    # --- contexts ------------------------------------------------------------------------------

    async def _start(self, context: _Context, text: str) -> None:
        ws = await self._open(context, generation=False)
        body = {"text": f"{text} ", "context_id": context.id, "flush": True}
        with map_websocket_errors(self.name, stage="send"):
            await ws.send(json.dumps(body))
            await ws.send(json.dumps({"context_id": context.id, "close_context": True}))
            context.close_sent = True

    async def _open(self, context: _Context, *, generation: bool) -> ClientConnection:
        """Initialise the context on the warm socket (a fresh one if it died while idle)."""
        init: dict[str, Any] = {
            "text": " ",
            "context_id": context.id,
            "voice_settings": self.voice_settings.to_json(),
        }
        if generation:
            init["generation_config"] = {"chunk_length_schedule": list(self.chunk_schedule)}
        for attempt in range(2):
            ws = await self._socket()
            try:
                await ws.send(json.dumps(init))
            except ConnectionClosed as exc:
                if attempt:
                    raise ProviderError(self.name, describe_close(exc), retryable=True) from exc
                continue  # the warm socket died while idle: one fresh socket, then give up
            # Registered with no await since the send, so the reader cannot have missed audio.
            context.ws = ws
            self._contexts[context.id] = context
            return ws
        raise AssertionError("unreachable")

    async def _feed(
        self,
        context: _Context,
        ws: ClientConnection,
        first: str,
        pieces: AsyncIterator[str],
        text: TextFeed,
    ) -> None:
        """Send the round's words as they come; flush by `StreamPlan`, then close the context.
        A failure goes to the consumer through the context's queue."""
        loop = asyncio.get_running_loop()
        plan = self._stream_plan()
        sent = 0
        schedule_due = self.chunk_schedule[0]

        def due() -> None:
            if context.due is None:
                context.due = loop.time() + self.first_byte_timeout

        try:
            piece: str | None = first
            with map_websocket_errors(self.name, stage="send"):
                while piece is not None:
                    message: dict[str, Any] = {"text": piece, "context_id": context.id}
                    flush = plan.add(piece)
                    if flush:
                        message["flush"] = True
                    await ws.send(json.dumps(message))
                    sent += len(piece)
                    if flush or sent >= schedule_due:
                        text.requested()  # the service generates now
                        schedule_due = 1 << 30
                    if flush:
                        due()
                    piece = await anext(pieces, None)
                if plan.finish():
                    await ws.send(json.dumps({"context_id": context.id, "flush": True}))
                    text.requested()
                context.text_done = True
                due()
                await ws.send(json.dumps({"context_id": context.id, "close_context": True}))
                context.close_sent = True
        except ProviderError as error:
            _put_error(context, error)

    async def _abandon(self, context: _Context) -> None:
        context.abandoned = True
        while not context.queue.empty():
            context.queue.get_nowait()
        if context.id not in self._contexts:
            self._release(context)
            return
        ws = context.ws
        if context.close_sent or ws is None:
            return
        context.close_sent = True
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            async with asyncio.timeout(1.0):
                await ws.send(json.dumps({"context_id": context.id, "close_context": True}))

    def _release(self, context: _Context) -> None:
        self._contexts.pop(context.id, None)
        if not context.released:
            context.released = True
            self._slots.release()

    def _fail_all(self, error: ProviderError) -> None:
        for context in list(self._contexts.values()):
            self._release(context)
            _put_error(context, error)

    # --- the socket ----------------------------------------------------------------------------

    async def _socket(self) -> ClientConnection:
        async with self._open_lock:
            ws = self._ws
            if ws is not None and ws.state is State.OPEN:
                return ws
            with map_websocket_errors(self.name, stage="connect", timeout=self.connect_timeout):
                async with asyncio.timeout(self.connect_timeout):
                    ws = await connect(
                        self.url,
                        additional_headers={"xi-api-key": self._api_key},
                        open_timeout=None,  # the asyncio deadline above owns the budget
                        close_timeout=1.0,
                        compression=None,  # audio in base64 JSON: deflate only costs CPU
                        proxy=None,  # no ambient proxy configuration from the environment
                    )
            if self._closed:
                await ws.close()
                raise ProviderError(self.name, "closed while connecting", retryable=False)
            self._ws = ws
            self.connections += 1
            lost, self._lost = self._lost, None
            if lost is not None and self.on_reconnect is not None:
                self.on_reconnect(
                    ProviderError(self.name, f"{lost}; reconnected while idle", retryable=True)
                )
            reader = asyncio.create_task(self._read(ws), name="elevenlabs-reader")
            self._readers.add(reader)
            reader.add_done_callback(self._readers.discard)
            return ws

    async def _read(self, ws: ClientConnection) -> None:
        error = ProviderError(self.name, "socket reader stopped", retryable=not self._closed)
        dropped: str | None = None  # a failure, not a normal close (idle sockets time out)
        try:
            async for message in ws:
                await self._route(message)
            error = ProviderError(self.name, "socket closed by the server", retryable=True)
        except ConnectionClosed as exc:
            error = ProviderError(self.name, describe_close(exc), retryable=True)
            # A close frame below 1011 is the server ending the socket on purpose (an idle
            # socket's inactivity timeout): routine for a warm socket, not a failure.
            if exc.rcvd is None or exc.rcvd.code >= 1011:
                dropped = describe_close(exc)
        except ProviderError as exc:
            error, dropped = exc, str(exc).removeprefix(f"{self.name}: ")
            await ws.close()
        finally:
            # Whatever ended the reader, the contexts on this socket will get no more audio.
            if self._ws is ws:
                self._ws = None
            in_flight = [c for c in self._contexts.values() if c.ws is ws]
            for context in in_flight:
                self._release(context)
                _put_error(context, error)
            if dropped is not None and not in_flight and not self._closed:
                self._lost = dropped  # no phrase saw it fail: the next socket reports it

    async def _route(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            raise ProviderProtocolError(self.name, "unexpected binary frame")
        try:
            data = json.loads(message)
        except ValueError as exc:
            raise ProviderProtocolError(self.name, f"invalid JSON: {message[:80]!r}") from exc
        if not isinstance(data, dict):
            raise ProviderProtocolError(self.name, "message is not an object")
        context = self._contexts.get(str(data.get("contextId")))
        if "error" in data or ("message" in data and "audio" not in data):
            error = ProviderError(self.name, f"server error: {data}", retryable=True)
            if context is None:
                raise error
            self._release(context)
            _put_error(context, error)
            return
        if data.get("isFinal"):
            if context is not None:
                self._release(context)
                if not context.abandoned:
                    await self._deliver(context, _FINAL)
            return
        encoded = data.get("audio")
        if not encoded:
            return  # keep-alive style message without audio
        if context is None or context.abandoned:
            self.dropped_chunks += 1
            return
        try:
            audio = base64.b64decode(encoded, validate=True)
            alignment = data.get("alignment") or data.get("normalizedAlignment")
            words = words_from_alignment(alignment, 0.0) if alignment else ()
        except (binascii.Error, TypeError, ValueError, KeyError) as exc:
            raise ProviderProtocolError(self.name, f"malformed audio message: {exc!r}") from exc
        await self._deliver(context, (audio, words))

    async def _deliver(self, context: _Context, item: _Item) -> None:
        # Overflow policy: wait for the consumer (backpressure through the socket), but a consumer
        # that takes no chunk for `stall_timeout` loses its context so the others keep flowing.
        try:
            async with asyncio.timeout(self.stall_timeout):
                await context.queue.put(item)
        except TimeoutError:
            context.abandoned = True
            _put_error(context, ProviderError(self.name, "consumer fell behind", retryable=True))


def _put_error(context: _Context, error: ProviderError) -> None:
    """Queue `error` for the consumer, displacing the oldest chunk if the queue is full."""
    if context.queue.full():
        context.queue.get_nowait()
    context.queue.put_nowait(error)


def _output_format(audio_format: AudioFormat) -> str:
    """ElevenLabs' `output_format` for our format (raises ConfigError when it has none)."""
    rate = audio_format.sample_rate
    if audio_format.encoding == "mulaw" and rate == 8000:
        return "ulaw_8000"
    if audio_format.encoding == "pcm16" and rate in (8000, 16000, 22050, 24000, 44100):
        return f"pcm_{rate}"
    raise ConfigError(f"ElevenLabs has no output format for {audio_format.name} audio")


def _shifted(word: WordTiming, seconds: float) -> WordTiming:
    return WordTiming(word.word, word.start + seconds, word.end + seconds)


def _as_audio(item: _Item) -> tuple[bytes, tuple[WordTiming, ...]]:
    if not isinstance(item, tuple):
        raise TypeError(f"unexpected queue item {item!r}")
    audio, words = item
    return audio, words
