"""Deepgram live STT over its WebSocket API (protocols.md §2), with websockets directly.

Caller audio is the call's format, which Deepgram takes natively either way (`encoding=mulaw&
sample_rate=8000` for a phone call, `linear16&16000` for a browser call; `for_format`), so binary
frames carry the transport's bytes unchanged. One `DeepgramStream` per call:

- `send_audio` takes one frame at a time (Twilio's 20 ms) but sends Deepgram one binary message
  per `batch_seconds` (40 ms): each websocket message costs a syscall, a frame header and a loop
  wakeup on both ends, and at 50 messages a second per call that was a measurable share of the
  server's CPU. 40 ms, not more, because every batch delays the newest audio by up to one batch
  (20 ms on average at 40 ms), which delays Deepgram's finals and so voice-to-voice; Deepgram
  itself recommends 20–100 ms chunks. The partial batch is sent before a `Finalize`, and before
  `CloseStream` on close, so no audio is lost and none waits past one batch while frames flow.
- `send_audio` keeps a replay buffer of the audio not yet covered by a final result. If the socket
  drops (not closed by us), `transcripts()` reconnects and replays that buffer, so the words being
  spoken when it dropped are recognised on the new socket; timestamps stay on one timeline.
  Each recovery is reported to `DeepgramStt.on_reconnect` (when set), so the call's record can
  say why its transcript had a gap; a reconnect that fails is raised as usual.
- A KeepAlive text frame goes out after `keepalive_interval` without audio (Deepgram closes an
  idle socket after 10 s).
- A server that stops answering while audio flows is a `ProviderTimeout` after `result_timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
from collections.abc import AsyncGenerator, Callable
from typing import Any
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from media.audio_format import AudioFormat
from media.transport import TELEPHONE
from voice.errors import ConfigError, ProviderError, ProviderProtocolError, ProviderTimeout
from voice.providers._ws import close_code, describe_close, map_websocket_errors
from voice.providers.options import ReconnectPolicy
from voice.types import Transcript

__all__ = ["DeepgramStream", "DeepgramStt"]

_KEEPALIVE = json.dumps({"type": "KeepAlive"})
_FINALIZE = json.dumps({"type": "Finalize"})
_CLOSE_STREAM = json.dumps({"type": "CloseStream"})
_CLOSE_DATA_ERROR = 1008  # DATA-0000: Deepgram cannot decode our audio; reconnecting won't help
_REPLAY_PIECE_SECONDS = 0.4  # per message when replaying, so one message never gets huge
_ENCODINGS = {"mulaw": "mulaw", "pcm16": "linear16"}  # ours: Deepgram's `encoding`
# The soonest the reader looks again for a stalled server, when a look finds it only quiet.
_STALL_CHECK = 0.25


def _bool(value: bool) -> str:
    # Deepgram's query values are strings; Python's "True" is not accepted everywhere.
    return "true" if value else "false"


class DeepgramStt:
    """Opens one `DeepgramStream` per call. Holds no socket itself."""

    name = "deepgram"

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = "wss://api.deepgram.com",
        model: str = "nova-3",
        language: str = "en",
        endpointing_ms: int | None = 10,
        utterance_end_ms: int | None = 1000,
        smart_format: bool = True,
        connect_timeout: float = 3.0,
        keepalive_interval: float = 5.0,
        result_timeout: float = 8.0,
        replay_seconds: float = 30.0,
        batch_seconds: float = 0.04,
        reconnect: ReconnectPolicy | None = None,
        on_reconnect: Callable[[ProviderError], None] | None = None,
        audio_format: AudioFormat = TELEPHONE,
    ) -> None:
        if connect_timeout <= 0 or keepalive_interval <= 0 or result_timeout <= 0:
            raise ValueError("timeouts and intervals must be positive")
        if batch_seconds < 0:
            raise ValueError("batch_seconds must not be negative")
        self._api_key = api_key
        self.connect_timeout = connect_timeout
        self.keepalive_interval = keepalive_interval
        self.result_timeout = result_timeout
        self.replay_seconds = max(replay_seconds, 0.0)
        self.batch_seconds = batch_seconds
        self.reconnect = reconnect or ReconnectPolicy()
        self.on_reconnect = on_reconnect
        self._base_url = base_url.rstrip("/")
        params: dict[str, str] = {
            "channels": "1",
            "interim_results": "true",
            "endpointing": "false" if endpointing_ms is None else str(endpointing_ms),
            "vad_events": "true",
            "punctuate": "true",
            "smart_format": _bool(smart_format),
            "model": model,
            "language": language,
        }
        if utterance_end_ms is not None:
            params["utterance_end_ms"] = str(utterance_end_ms)
        self._params = params
        self._use(audio_format)

    def _use(self, audio_format: AudioFormat) -> None:
        self.audio_format = audio_format
        self.replay_bytes = audio_format.bytes_for(self.replay_seconds)
        self.batch_bytes = audio_format.bytes_for(self.batch_seconds)
        self.replay_piece_bytes = audio_format.bytes_for(_REPLAY_PIECE_SECONDS)
        params = {
            "encoding": _ENCODINGS[audio_format.encoding],
            "sample_rate": str(audio_format.sample_rate),
            **self._params,
        }
        self.url = f"{self._base_url}/v1/listen?{urlencode(params)}"

    def for_format(self, audio_format: AudioFormat) -> DeepgramStt:
        """Listening to `audio_format` (told to Deepgram in the URL). Holds no socket, so the
        copy is independent."""
        if audio_format == self.audio_format:
            return self
        if audio_format.encoding not in _ENCODINGS:
            raise ConfigError(f"Deepgram does not take {audio_format.name} audio")
        other = copy.copy(self)
        other._use(audio_format)
        return other

    async def connect(self) -> DeepgramStream:
        stream = DeepgramStream(self, await self.open_socket())
        stream.start()
        return stream

    async def open_socket(self) -> ClientConnection:
        with map_websocket_errors(self.name, stage="connect", timeout=self.connect_timeout):
            async with asyncio.timeout(self.connect_timeout):
                return await connect(
                    self.url,
                    additional_headers={"Authorization": f"Token {self._api_key}"},
                    open_timeout=None,  # the asyncio deadline above owns the connect budget
                    close_timeout=1.0,
                    compression=None,  # audio barely compresses; deflate only costs CPU
                    proxy=None,  # no ambient proxy configuration from the environment
                )


class DeepgramStream:
    """One call's recognition. `transcripts()` has a single consumer."""

    def __init__(self, stt: DeepgramStt, ws: ClientConnection) -> None:
        self._stt = stt
        self._ws: ClientConnection | None = ws
        self._loop = asyncio.get_running_loop()
        # Audio not yet covered by a final result: `_replay[0]` is byte `_replay_start` of the
        # call's audio. Bounded by `stt.replay_bytes`; when full the oldest audio is dropped
        # (counted), which only matters if a drop then needs more than that to be replayed.
        self._replay = bytearray()
        self._replay_start = 0
        # Audio received but not yet sent on the current socket (less than one batch); it is in
        # `_replay` too, so a reconnect's replay sends it and the batch starts afresh.
        self._batch = bytearray()
        self._time_offset = 0.0  # call seconds at which the current socket's audio begins
        self._last_activity = self._loop.time()
        self._last_message = self._loop.time()
        self._audio_since_message = 0
        self._finalize_pending = False
        self._closing = False
        self._reading = False
        self._failure: ProviderError | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self.reconnects = 0
        self.replay_dropped_bytes = 0
        self.audio_messages = 0  # binary messages sent (replays included)

    def start(self) -> None:
        """Start the keepalive task; it is cancelled by `aclose()`."""
        if self._keepalive is None:
            self._keepalive = asyncio.create_task(self._keepalive_loop(), name="deepgram-keepalive")

    # --- sending -------------------------------------------------------------------------------

    async def send_audio(self, audio: bytes) -> None:
        self._check_usable()
        if not audio:
            return
        self._buffer(audio)
        if self._ws is None:
            return  # reconnecting: the replay sends it
        self._last_activity = self._loop.time()
        self._batch += audio
        if len(self._batch) >= self._stt.batch_bytes:
            await self._flush()

    async def _flush(self) -> None:
        """Send the batch so far (if any) on the current socket."""
        ws = self._ws
        if ws is None or not self._batch:
            return
        audio = bytes(self._batch)
        self._batch.clear()
        self.audio_messages += 1
        with contextlib.suppress(ConnectionClosed):
            # A dead socket is the reader's to handle: it reconnects and replays this audio.
            await ws.send(audio)

    async def finalize(self) -> None:
        self._check_usable()
        ws = self._ws
        if ws is None:
            self._finalize_pending = True
            return
        try:
            await self._flush()  # Finalize flushes what Deepgram has: it must have all of it
            await ws.send(_FINALIZE)
        except ConnectionClosed:
            self._finalize_pending = True  # sent again after the replay

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise ProviderError(
                self._stt.name, f"stream failed: {self._failure}", retryable=self._failure.retryable
            ) from self._failure
        if self._closing:
            raise ProviderError(self._stt.name, "stream is closed", retryable=False)

    def _buffer(self, audio: bytes) -> None:
        self._replay += audio
        self._audio_since_message += len(audio)
        excess = len(self._replay) - self._stt.replay_bytes
        excess += excess % self._stt.audio_format.sample_width  # whole samples only
        if excess > 0:
            del self._replay[:excess]
            self._replay_start += excess
            self.replay_dropped_bytes += excess

    def _trim_to(self, offset: int) -> None:
        """Forget audio before call byte `offset`: a final result covers it."""
        cut = min(offset - self._replay_start, len(self._replay))
        if cut > 0:
            del self._replay[:cut]
            self._replay_start += cut

    async def _keepalive_loop(self) -> None:
        interval = self._stt.keepalive_interval
        while True:
            await asyncio.sleep(max(self._last_activity + interval - self._loop.time(), 0.0))
            if self._loop.time() - self._last_activity < interval:
                continue
            ws = self._ws
            if ws is not None:
                with contextlib.suppress(ConnectionClosed):  # the reader handles drops
                    await ws.send(_KEEPALIVE)
            self._last_activity = self._loop.time()

    # --- receiving -----------------------------------------------------------------------------

    async def transcripts(self) -> AsyncGenerator[Transcript, None]:
        if self._reading:
            raise RuntimeError("transcripts() is already being consumed")
        self._reading = True
        try:
            while True:
                message = await self._receive()
                if message is None:
                    return
                transcript = self._parse(message)
                if transcript is not None:
                    yield transcript
        finally:
            self._reading = False

    async def _receive(self) -> str | bytes | None:
        """The next server message; None once the stream is closed by us."""
        while True:
            ws = self._ws
            if ws is None:  # only after a failure (reconnects happen inside this method)
                return None
            # Wake only when a stall could have begun: results normally arrive well before, so
            # a healthy stream never times out here (no timer firing per call while it talks).
            wait = max(self._last_message + self._stt.result_timeout - self._loop.time(), 0.0)
            try:
                async with asyncio.timeout(max(wait, _STALL_CHECK)):
                    message = await ws.recv()
            except TimeoutError:
                self._check_stall()
                continue
            except ConnectionClosed as exc:
                if self._closing:
                    return None
                await self._recover(exc)
                continue
            self._last_message = self._loop.time()
            self._audio_since_message = 0
            return message

    def _check_stall(self) -> None:
        # Deepgram answers audio with results (empty ones for silence); silence from the server
        # while audio flows means it stopped working. Without audio flowing, quiet is normal.
        timeout = self._stt.result_timeout
        quiet = self._loop.time() - self._last_message
        per_second = self._stt.audio_format.bytes_per_second
        if quiet > timeout and self._audio_since_message >= timeout * per_second / 2:
            raise self._fail(ProviderTimeout(self._stt.name, "results", timeout))

    def _parse(self, message: str | bytes) -> Transcript | None:
        if isinstance(message, bytes):
            raise self._fail(ProviderProtocolError(self._stt.name, "unexpected binary frame"))
        try:
            data = json.loads(message)
        except ValueError as exc:
            raise self._fail(
                ProviderProtocolError(self._stt.name, f"invalid JSON: {message[:80]!r}")
            ) from exc
        if not isinstance(data, dict):
            raise self._fail(ProviderProtocolError(self._stt.name, "message is not an object"))
        if data.get("type") != "Results":
            return None  # Metadata, SpeechStarted, UtteranceEnd, and types added later
        return self._result(data)

    def _result(self, data: dict[str, Any]) -> Transcript | None:
        try:
            alternative = data["channel"]["alternatives"][0]
            text = alternative["transcript"]
            if not isinstance(text, str):
                raise TypeError("transcript is not a string")
            confidence = float(alternative.get("confidence", 0.0))
            start = self._time_offset + float(data["start"])
            end = start + float(data["duration"])
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise self._fail(
                ProviderProtocolError(self._stt.name, f"malformed Results: {exc!r}")
            ) from exc
        is_final = bool(data.get("is_final"))
        # A Finalize is our own end-of-turn call, so its answer ends the utterance too.
        speech_final = bool(data.get("speech_final")) or bool(data.get("from_finalize"))
        if is_final:
            self._trim_to(self._stt.audio_format.bytes_for(end))
        elif not text:
            return None  # empty interims carry nothing
        return Transcript(
            text=text,
            is_final=is_final,
            speech_final=speech_final,
            confidence=confidence,
            start=start,
            end=end,
        )

    # --- reconnecting --------------------------------------------------------------------------

    async def _recover(self, exc: ConnectionClosed) -> None:
        name = self._stt.name
        self._ws = None
        if close_code(exc) == _CLOSE_DATA_ERROR:
            raise self._fail(
                ProviderProtocolError(name, f"audio rejected: {describe_close(exc)}")
            ) from exc
        policy = self._stt.reconnect
        if self.reconnects >= policy.max_reconnects:
            raise self._fail(
                ProviderError(name, f"{describe_close(exc)} (reconnect limit)", retryable=True)
            ) from exc
        self.reconnects += 1
        last: BaseException = exc
        for attempt in range(policy.attempts):
            await asyncio.sleep(policy.delay(attempt))
            try:
                ws = await self._stt.open_socket()
            except ProviderError as err:
                if not err.retryable:
                    raise self._fail(err) from err
                last = err
                continue
            if self._closing:  # aclose() ran meanwhile and found no socket to close
                await ws.close()
                return
            try:
                await self._replay_into(ws)
                if self._finalize_pending:
                    await ws.send(_FINALIZE)
            except ConnectionClosed as err:
                last = err
                continue
            self._finalize_pending = False
            self._batch.clear()  # the replay sent it
            self._ws = ws  # no await since the replay caught up, so no audio is missed
            self._last_message = self._loop.time()
            self._audio_since_message = 0
            self._report_reconnect(exc, attempt + 1)
            return
        raise self._fail(
            ProviderError(
                name,
                f"{describe_close(exc)}; reconnect failed after {policy.attempts} attempts: {last}",
                retryable=True,
            )
        ) from last

    async def _replay_into(self, ws: ClientConnection) -> None:
        """Send the unconfirmed audio, then whatever `send_audio` buffered meanwhile."""
        position = self._replay_start
        self._time_offset = self._stt.audio_format.seconds(position)
        piece = self._stt.replay_piece_bytes
        while True:
            position = max(position, self._replay_start)
            pending = bytes(self._replay[position - self._replay_start :])
            if not pending:
                return
            for i in range(0, len(pending), piece):
                self.audio_messages += 1
                await ws.send(pending[i : i + piece])
            position += len(pending)

    def _report_reconnect(self, exc: ConnectionClosed, attempts: int) -> None:
        listener = self._stt.on_reconnect
        if listener is None:
            return
        end = self._stt.audio_format.seconds(self._replay_start + len(self._replay))
        replayed = end - self._time_offset
        listener(
            ProviderError(
                self._stt.name,
                f"{describe_close(exc)}; reconnected (reconnect {self.reconnects}, "
                f"{attempts} attempt{'s' if attempts > 1 else ''}) and replayed "
                f"{replayed:.1f}s of audio",
                retryable=True,
            )
        )

    def _fail(self, error: ProviderError) -> ProviderError:
        self._failure = error
        return error

    # --- closing -------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Send CloseStream, let Deepgram flush its last results briefly, then close."""
        if self._closing:
            return
        self._closing = True
        if self._keepalive is not None:
            self._keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive
        ws = self._ws
        if ws is None:
            return
        try:
            await self._flush()  # the last words of the call are still transcribed
            await ws.send(_CLOSE_STREAM)
            async with asyncio.timeout(1.0):
                await ws.wait_closed()
        except (ConnectionClosed, TimeoutError):
            pass  # closing anyway; nothing more to learn from this socket
        finally:
            await ws.close()
