"""A protocol-faithful fake of ElevenLabs multi-context TTS (protocols.md §3.2 and §6).

`/v1/text-to-speech/{voice_id}/multi-stream-input` with `output_format=ulaw_8000` (AVA) or
`pcm_<rate>` (s16le, what pipecat asks for). Text sent to a context is buffered, and generated
as the real service documents it (ElevenLabs `GenerationConfig`):
- on `flush`: everything buffered;
- by the context's `chunk_length_schedule` (from `generation_config` in its first message;
  default [120, 160, 250, 290], each 50–500): the n-th generation of a context (flushes count)
  starts once the buffer holds schedule[n] characters (the last length repeats), and takes the
  buffer up to its last space — so streamed words wait there until enough have arrived;
- with `auto_mode=true` (pipecat sets it), every text message as it arrives: the service then
  skips its buffering, which is meant for whole sentences.
Each generation takes `first_byte_latency`, then sends audio chunks of about `chunk_chars`
characters each (`seconds_per_char` of audio per character, a different pitch per context) with a
character alignment relative to the chunk, paced `realtime_factor` times faster than real time;
a context's generations run one after the other. `close_context` lets a generation in progress
finish (the API's contract) and then sends `{"isFinal": true, "contextId": …}`; contexts
generate concurrently, so their chunks interleave. Text still buffered at `close_context` is
dropped: a client flushes first (pipecat and AVA do).
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from benchmarks.fakes.server import (
    REJECT_STATUS,
    Fault,
    FaultSwitch,
    speech_like_pcm16,
    speech_like_ulaw,
)

__all__ = [
    "DEFAULT_CHUNK_SCHEDULE",
    "OUTPUT_FORMATS",
    "ContextRecord",
    "ElevenLabsFake",
    "ElevenLabsFakeConfig",
    "Generation",
]

# ElevenLabs' streaming formats the fake produces: μ-law at 8 kHz, or s16le PCM at a rate.
OUTPUT_FORMATS = ("ulaw_8000", "pcm_8000", "pcm_16000", "pcm_22050", "pcm_24000", "pcm_44100")


@dataclass
class ElevenLabsFakeConfig:
    api_key: str = "test-key"
    first_byte_latency: float = 0.15
    seconds_per_char: float = 0.06
    chunk_chars: int = 40
    realtime_factor: float = 4.0
    inactivity_timeout: float = 20.0  # no message while contexts are open: close 1008
    fault: Fault | None = None
    fault_count: int | None = None  # connections that get the fault; None: all
    fault_after: float | None = None  # wall seconds after accept; None: at the first flush
    bad_close_code: int = 4000


DEFAULT_CHUNK_SCHEDULE = (120, 160, 250, 290)


@dataclass(frozen=True)
class Generation:
    """One audio generation of a context: its text, why it started, and how much text the
    context had received by then (what a test asserts "first audio after the first words" on)."""

    text: str
    trigger: str  # "flush", "schedule" or "auto"
    received: str  # all text the context had received when it started


@dataclass
class ContextRecord:
    id: str
    voice_settings: dict[str, Any] | None = None
    schedule: tuple[int, ...] = DEFAULT_CHUNK_SCHEDULE
    text: str = ""  # buffered, not yet generated
    received: str = ""  # every text message's text, in order
    spoken: str = ""  # everything generated so far
    generations: list[Generation] = field(default_factory=list)
    audio: bytearray = field(default_factory=bytearray)
    chunks: int = 0
    closed: bool = False
    audio_at_close: int | None = None  # bytes sent before close_context arrived
    final_sent: bool = False


class _Stop(Exception):
    """Ends a connection from inside its task group (after a close frame, or none: a drop)."""


class ElevenLabsFake:
    def __init__(self, config: ElevenLabsFakeConfig | None = None) -> None:
        self.config = config or ElevenLabsFakeConfig()
        self.connections = 0
        self.rejected: list[int] = []
        self.messages: list[dict[str, Any]] = []
        self.contexts: list[ContextRecord] = []
        self.query: list[dict[str, str]] = []
        self._faults = FaultSwitch()
        path = "/v1/text-to-speech/{voice_id}/multi-stream-input"
        self.app = Starlette(routes=[WebSocketRoute(path, self._socket)])

    @property
    def closed_contexts(self) -> list[str]:
        return [c.id for c in self.contexts if c.closed]

    def context(self, context_id: str) -> ContextRecord:
        """The latest context with this id."""
        return next(c for c in reversed(self.contexts) if c.id == context_id)

    async def _deny(self, websocket: WebSocket, status: int, message: str) -> None:
        self.rejected.append(status)
        body = json.dumps({"detail": {"status": "error", "message": message}})
        await websocket.send_denial_response(Response(body, status_code=status))

    async def _socket(self, websocket: WebSocket) -> None:
        key = websocket.headers.get("xi-api-key")
        if key is not None and key != self.config.api_key:
            await self._deny(websocket, 401, "Invalid API key")
            return
        params = dict(websocket.query_params)
        if params.get("output_format") not in OUTPUT_FORMATS or not params.get("model_id"):
            await self._deny(
                websocket, 400, f"The fake needs model_id and output_format in {OUTPUT_FORMATS}"
            )
            return
        fault = self._faults.take(self.config.fault, self.config.fault_count)
        if fault in REJECT_STATUS:
            await self._deny(websocket, REJECT_STATUS[fault], f"injected {fault}")
            return
        self.query.append(params)
        self.connections += 1
        await websocket.accept()
        connection = _Connection(
            self,
            websocket,
            fault,
            authorised=key is not None,
            output=params["output_format"],
            auto_mode=params.get("auto_mode") == "true",
        )
        try:
            await connection.run()
        except* _Stop:
            pass  # closed already, or a drop: returning without a close frame ends the TCP
        except* (WebSocketDisconnect, OSError):
            pass  # the client went away mid-send; nothing to tell it


class _Connection:
    def __init__(
        self,
        fake: ElevenLabsFake,
        websocket: WebSocket,
        fault: Fault | None,
        authorised: bool,
        output: str = "ulaw_8000",
        auto_mode: bool = False,
    ) -> None:
        self.auto_mode = auto_mode
        self.fake = fake
        kind, rate = output.split("_")
        self.pcm_rate = int(rate) if kind == "pcm" else None
        self.cfg = fake.config
        self.ws = websocket
        self.fault = fault
        self.authorised = authorised
        self.open: dict[str, ContextRecord] = {}
        self.busy: dict[str, int] = {}  # flushes in progress per context
        self.locks: dict[str, asyncio.Lock] = {}
        self.send_lock = asyncio.Lock()
        self.stalled = False
        self.closing = False
        self.tasks = asyncio.TaskGroup()

    async def run(self) -> None:
        async with self.tasks as tasks:
            if self.fault is not None and self.cfg.fault_after is not None:
                tasks.create_task(self._fault_later(self.cfg.fault_after))
            await self._receive_loop()
            # close_socket: let pending flushes finish, then close normally
        await self.ws.close(1000)

    async def _receive_loop(self) -> None:
        while not self.closing:
            timeout = self.cfg.inactivity_timeout if self.open else None
            try:
                async with asyncio.timeout(timeout):
                    message = await self.ws.receive()
            except TimeoutError:
                await self.ws.close(1008, "input_timeout_exceeded")
                raise _Stop() from None
            if message["type"] == "websocket.disconnect":
                raise _Stop()
            text = message.get("text")
            if text is None:
                await self.ws.close(1003, "binary frames are not accepted")
                raise _Stop()
            try:
                data = json.loads(text)
            except ValueError:
                await self.ws.close(1008, "invalid JSON")
                raise _Stop() from None
            self.fake.messages.append(data)
            await self._handle(data)

    async def _handle(self, data: dict[str, Any]) -> None:
        if not self.authorised:
            key = data.get("xi_api_key") or data.get("xi-api-key")
            if key != self.cfg.api_key:
                await self.ws.close(1008, "Invalid API key")
                raise _Stop()
            self.authorised = True
        if data.get("close_socket"):
            self.closing = True
            return
        context_id = str(data.get("context_id", "default"))
        if data.get("close_context"):
            await self._close_context(context_id)
            return
        record = self.open.get(context_id)
        if record is None:
            schedule = _schedule(data.get("generation_config"))
            if schedule is None:
                await self.ws.close(1008, "invalid generation_config.chunk_length_schedule")
                raise _Stop()
            record = ContextRecord(
                context_id, voice_settings=data.get("voice_settings"), schedule=schedule
            )
            self.fake.contexts.append(record)
            self.open[context_id] = record
            self.busy[context_id] = 0
            self.locks[context_id] = asyncio.Lock()
        text = data.get("text")
        if isinstance(text, str) and text.strip():
            record.text += text
            record.received += text
        if data.get("flush"):
            self._generate_now(record, record.text, "flush")
        elif self.auto_mode and record.text.strip():
            self._generate_now(record, record.text, "auto")
        elif not self.auto_mode:
            schedule = record.schedule
            needed = schedule[min(len(record.generations), len(schedule) - 1)]
            if len(record.text) >= needed:
                # whole words only: a word still being streamed waits for the next generation
                cut = record.text.rfind(" ") + 1 or len(record.text)
                self._generate_now(record, record.text[:cut], "schedule")

    def _generate_now(self, record: ContextRecord, pending: str, trigger: str) -> None:
        record.text = record.text[len(pending) :]
        if not pending.strip():
            return
        record.spoken += pending
        record.generations.append(Generation(pending, trigger, record.received))
        self.busy[record.id] += 1
        self.tasks.create_task(self._generate(record, pending))

    async def _close_context(self, context_id: str) -> None:
        record = self.open.get(context_id)
        if record is None:
            return
        record.closed = True
        record.audio_at_close = len(record.audio)
        if self.busy[context_id] == 0:
            await self._final(record)

    async def _final(self, record: ContextRecord) -> None:
        self.open.pop(record.id, None)
        record.final_sent = True
        await self._send({"isFinal": True, "contextId": record.id})

    async def _generate(self, record: ContextRecord, text: str) -> None:
        async with self.locks[record.id]:
            if self.fault is not None and self.cfg.fault_after is None:
                await self._inject()
            await asyncio.sleep(self.cfg.first_byte_latency)
            pitch = 120.0 + 15.0 * (len(self.fake.contexts) % 8)
            phase = 0
            for chunk in _chunks(text, self.cfg.chunk_chars):
                seconds = len(chunk) * self.cfg.seconds_per_char
                if self.pcm_rate is None:
                    audio = speech_like_ulaw(seconds, pitch=pitch, phase=phase)
                    phase += len(audio)
                else:
                    audio = speech_like_pcm16(seconds, self.pcm_rate, pitch=pitch, phase=phase)
                    phase += len(audio) // 2
                ms = self.cfg.seconds_per_char * 1000
                alignment = {
                    "chars": list(chunk),
                    "charStartTimesMs": [round(i * ms) for i in range(len(chunk))],
                    "charDurationsMs": [round(ms)] * len(chunk),
                }
                await self._send(
                    {
                        "audio": base64.b64encode(audio).decode(),
                        "isFinal": None,
                        "normalizedAlignment": alignment,
                        "alignment": alignment,
                        "contextId": record.id,
                    }
                )
                record.audio += audio
                record.chunks += 1
                await asyncio.sleep(seconds / self.cfg.realtime_factor)
        self.busy[record.id] -= 1
        if record.closed and self.busy[record.id] == 0 and not record.final_sent:
            await self._final(record)

    async def _fault_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        await self._inject()

    async def _inject(self) -> None:
        fault, self.fault = self.fault, None
        if fault is Fault.DROP:
            raise _Stop()
        if fault is Fault.BAD_CLOSE:
            await self.ws.close(self.cfg.bad_close_code, "injected fault")
            raise _Stop()
        if fault is Fault.GARBAGE:
            async with self.send_lock:
                await self.ws.send_text('{"audio": "AAAA", "contextId": ')
        if fault is Fault.STALL:
            self.stalled = True
            await asyncio.Event().wait()  # this flush never produces anything

    async def _send(self, message: dict[str, Any]) -> None:
        if self.stalled:
            return  # a stalled server says nothing more
        async with self.send_lock:
            await self.ws.send_text(json.dumps(message))


def _schedule(config: Any) -> tuple[int, ...] | None:
    """The context's chunk schedule, or None when the service would refuse it."""
    if config is None:
        return DEFAULT_CHUNK_SCHEDULE
    if not isinstance(config, dict):
        return None
    lengths = config.get("chunk_length_schedule")
    if lengths is None:
        return DEFAULT_CHUNK_SCHEDULE
    if not isinstance(lengths, list) or not lengths:
        return None
    if not all(isinstance(n, int) and 50 <= n <= 500 for n in lengths):
        return None
    return tuple(lengths)


def _chunks(text: str, size: int) -> list[str]:
    """Split at spaces into pieces of about `size` characters, each keeping its trailing space."""
    pieces: list[str] = []
    current = ""
    for word in text.split():
        current += word + " "
        if len(current) >= size:
            pieces.append(current)
            current = ""
    if current:
        pieces.append(current)
    return pieces
