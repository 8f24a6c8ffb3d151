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

The output format is `ulaw_8000`, passed through untouched. One reader task owned by this object
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
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from voice.errors import ProviderError, ProviderProtocolError, ProviderTimeout
from voice.providers._ws import describe_close, map_websocket_errors
from voice.providers.options import ElevenLabsVoiceSettings
from voice.types import SAMPLE_RATE, TtsChunk, WordTiming

__all__ = ["ElevenLabsTts", "words_from_alignment"]

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
    ) -> None:
        if min(first_byte_timeout, connect_timeout, stall_timeout) <= 0:
            raise ValueError("timeouts must be positive")
        if max_contexts < 1 or queue_chunks < 1:
            raise ValueError("max_contexts and queue_chunks must be at least 1")
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
            {"model_id": model_id, "output_format": "ulaw_8000", "sync_alignment": "true"}
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

    # --- the port ------------------------------------------------------------------------------

    async def synthesize(self, text: str) -> AsyncGenerator[TtsChunk, None]:
        text = text.strip()
        if not text:
            return
        if self._closed:
            raise ProviderError(self.name, "synthesize() after aclose()", retryable=False)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.first_byte_timeout
        context = _Context(f"{self._prefix}-{next(self._ids)}", asyncio.Queue(self.queue_chunks))
        try:
            async with asyncio.timeout_at(deadline):
                await self._slots.acquire()
        except TimeoutError as exc:
            # Every slot is held, most likely by barged-in contexts whose isFinal never came:
            # closing the socket releases them, so the next phrase starts on a fresh one.
            if self._ws is not None:
                await self._ws.close()
            raise ProviderTimeout(self.name, "first_byte", self.first_byte_timeout) from exc
        try:
            await self._start(context, text)
            offset = 0
            first = True
            while True:
                # Never yield inside a deadline block: the timeout would cancel the consumer.
                if first:
                    stage, seconds = "first_byte", self.first_byte_timeout
                    with map_websocket_errors(self.name, stage=stage, timeout=seconds):
                        async with asyncio.timeout_at(deadline):
                            item = await context.queue.get()
                else:
                    stage, seconds = "audio", self.stall_timeout
                    with map_websocket_errors(self.name, stage=stage, timeout=seconds):
                        async with asyncio.timeout(seconds):
                            item = await context.queue.get()
                if item is _FINAL:
                    context.done = True
                    return
                if isinstance(item, ProviderError):
                    raise item
                audio, words = _as_audio(item)
                shift = offset / SAMPLE_RATE
                offset += len(audio)
                first = False
                yield TtsChunk(audio, tuple(_shifted(w, shift) for w in words))
        except ProviderTimeout:
            # A server that stopped answering one context is not trusted with the next: drop the
            # socket (its other contexts fail as retryable) and open a fresh one next time.
            if context.ws is not None:
                await context.ws.close()
            raise
        finally:
            if not context.done:
                await self._abandon(context)

    async def aclose(self) -> None:
        """Close the socket and stop the reader; pending `synthesize()` calls fail."""
        self._closed = True
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
        init = {
            "text": " ",
            "context_id": context.id,
            "voice_settings": self.voice_settings.to_json(),
        }
        body = {"text": f"{text} ", "context_id": context.id, "flush": True}
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
            break
        with map_websocket_errors(self.name, stage="send"):
            await ws.send(json.dumps(body))
            await ws.send(json.dumps({"context_id": context.id, "close_context": True}))
            context.close_sent = True

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
                        compression=None,  # μ-law and base64 JSON: deflate only costs CPU
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


def _shifted(word: WordTiming, seconds: float) -> WordTiming:
    return WordTiming(word.word, word.start + seconds, word.end + seconds)


def _as_audio(item: _Item) -> tuple[bytes, tuple[WordTiming, ...]]:
    if not isinstance(item, tuple):
        raise TypeError(f"unexpected queue item {item!r}")
    audio, words = item
    return audio, words
