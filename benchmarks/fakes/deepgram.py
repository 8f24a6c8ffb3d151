"""A protocol-faithful fake of Deepgram live STT (`/v1/listen`, protocols.md §2 and §6).

It decodes the μ-law it receives and runs an energy detector on 20 ms frames, all on the audio's
own timeline (so tests may send faster than real time). Each detected speech segment is given the
next utterance of `script`: interim Results while it lasts, then a final `speech_final` Result
`final_delay` seconds (wall clock, the "processing time") after the segment's trailing silence,
or at once, `from_finalize`, on a Finalize. Silence gets empty finals every
`silence_final_every` seconds of audio, as Deepgram's do. The script cursor is shared by all
connections and moves only when a final is sent, so a segment cut off by a dropped socket is
recognised again from the client's replay. For many concurrent calls (the benchmarks) set
`script_per_connection`: each connection then walks the script on its own, wrapping around, and
`utterance_gap`: speech resuming after a shorter pause continues the same utterance, so a
sentence with pauses in it is not given several script lines. With `utterance_gap` the script
follows the audio, as a real Deepgram transcribes what was said: every utterance (speech after
at least `utterance_gap` of silence) is the next line, whatever the finals of the one before
carried (none, when a Finalize came before its first word was heard, or all of them before its
last syllable), so a long call never drifts from what its caller says. With `script_seconds`
(each line's spoken length) a final inside an utterance carries the share of its words spoken
so far, as Deepgram's endpointing finals do; without, the first final carries them all. With
`script_word_times` (for each line, the seconds of *voiced* audio, counted from the line's first
voiced frame, by which each word has been heard) interims and finals carry exactly the words
heard so far, also after a pause inside the sentence: a final for "I'd like to move my
appointment to" arrives during the caller's pause, as Deepgram's endpointing sends it.
Interims come every `interim_every` seconds of speech (Deepgram's cadence is no faster than
~250 ms), each repeating the words heard so far. A dip in energy shorter than `dip_seconds` (a
quiet consonant, the gap between two syllables) does not end a segment, whatever `endpointing`
says, as Deepgram's own voice detection bridges it; the final still comes `final_delay` after the
endpointing silence. A Finalize in the middle of speech returns the words heard so far and, with
`utterance_gap`, the rest of the segment is transcribed as usual afterwards.
Audio is `encoding=mulaw` or `encoding=linear16` (what pipecat's service sends) at the
`sample_rate` given.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from benchmarks.fakes.server import REJECT_STATUS, Fault, FaultSwitch
from media.g711 import ulaw_to_float

__all__ = ["DeepgramFake", "DeepgramFakeConfig", "ListenRecord"]

_FRAME_SECONDS = 0.02
_ENCODINGS = ("mulaw", "linear16")


@dataclass
class DeepgramFakeConfig:
    api_key: str = "test-key"
    script: list[str] = field(default_factory=list)
    final_delay: float = 0.15  # wall seconds from end of speech to its final
    interim_every: float = 0.25  # audio seconds of speech between interim Results
    final_every: float | None = 3.0  # long speech: an is_final (not speech_final) this often
    silence_final_every: float | None = 1.0  # audio seconds between empty finals in silence
    speech_rms: float = 0.02  # frame RMS (full scale 1.0) that counts as speech
    min_silence: float | None = None  # silence ending a segment; None: the `endpointing` param
    dip_seconds: float = 0.1  # shorter silence inside speech never ends a segment
    idle_timeout: float = 10.0  # no audio or KeepAlive this long: close 1011 NET-0001
    metadata_on_open: bool = False  # Deepgram sends Metadata only at CloseStream (§2.3)
    # Each connection walks the script from its start and wraps around (concurrent calls);
    # otherwise one cursor is shared by all connections and stops at the end.
    script_per_connection: bool = False
    # Audio seconds of silence that separate utterances; None: every segment is one.
    utterance_gap: float | None = None
    script_seconds: list[float] | None = None  # audio seconds of each script line
    # For each script line: voiced seconds into the line at which each word is heard (needs
    # `utterance_gap`, so a pause inside the line does not start the next one).
    script_word_times: list[list[float]] | None = None
    fault: Fault | None = None
    fault_count: int | None = None  # connections that get the fault; None: all
    fault_after: float = 0.0  # wall seconds after accept before the fault
    fault_after_audio: float | None = None  # or: after this much audio was received
    bad_close_code: int = 4000


@dataclass
class ListenRecord:
    """What one accepted connection received."""

    params: dict[str, str]
    headers: dict[str, str]
    audio_bytes: int = 0
    controls: list[str] = field(default_factory=list)  # KeepAlive / Finalize / CloseStream
    sent: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None


class _ScriptCursor:
    """Where a transcript stream is in the script: utterance and words already finalised."""

    def __init__(
        self,
        script: list[str],
        *,
        wrap: bool,
        seconds: list[float] | None = None,
        word_times: list[list[float]] | None = None,
        per_utterance: bool = False,
    ) -> None:
        self.script = script
        self.seconds = seconds
        self.word_times = word_times
        self.wrap = wrap
        # Lines follow utterances (`advance` at each new one), not finals: a final that carries
        # a line's last words leaves the cursor on it, so more speech of the same utterance
        # gets no words of the next line.
        self.per_utterance = per_utterance
        self.index = 0
        self.word_offset = 0

    def _current(self) -> int:
        return self.index % len(self.script) if self.wrap and self.script else self.index

    def words(self) -> list[str]:
        index = self._current()
        return self.script[index].split() if index < len(self.script) else []

    def remaining(self) -> list[str]:
        """Words of the current utterance not yet in a final result."""
        return self.words()[self.word_offset :]

    def spoken_seconds(self) -> float | None:
        index = self._current()
        if self.seconds is None or index >= len(self.seconds):
            return None
        return self.seconds[index]

    def heard(self, voiced: float) -> int | None:
        """Words of the current line heard after `voiced` seconds of it (None: not timed)."""
        index = self._current()
        if self.word_times is None or index >= len(self.word_times):
            return None
        return sum(t <= voiced + 1e-9 for t in self.word_times[index])

    def next_utterance(self) -> None:
        """Skip what is left of a partly finalised utterance: the caller moved on."""
        if self.word_offset:
            self.advance()

    def advance(self) -> None:
        """The next line: a new utterance began, whatever this one's finals carried."""
        self.index += 1
        self.word_offset = 0

    def take(self, words: int | None = None) -> str:
        """Finalise `words` more words of the current utterance, or (None) all the rest."""
        remaining = self.remaining()
        if words is None:
            if self.per_utterance:
                self.word_offset = len(self.words())
            else:
                self.advance()
            return " ".join(remaining)
        self.word_offset += words
        return " ".join(remaining[:words])


class DeepgramFake:
    def __init__(self, config: DeepgramFakeConfig | None = None) -> None:
        self.config = config or DeepgramFakeConfig()
        self.connections: list[ListenRecord] = []
        self.rejected: list[int] = []
        self._faults = FaultSwitch()
        # shared by connections (unless script_per_connection), for replayed speech
        self._shared = self._new_cursor(wrap=False)
        self.app = Starlette(routes=[WebSocketRoute("/v1/listen", self._listen)])

    @property
    def finals(self) -> list[str]:
        """Non-empty final transcripts sent, over all connections."""
        return [
            m["channel"]["alternatives"][0]["transcript"]
            for record in self.connections
            for m in record.sent
            if m.get("type") == "Results"
            and m["is_final"]
            and m["channel"]["alternatives"][0]["transcript"]
        ]

    def _new_cursor(self, *, wrap: bool) -> _ScriptCursor:
        cfg = self.config
        return _ScriptCursor(
            cfg.script,
            wrap=wrap,
            seconds=cfg.script_seconds,
            word_times=cfg.script_word_times,
            per_utterance=cfg.utterance_gap is not None,
        )

    def _cursor(self) -> _ScriptCursor:
        if self.config.script_per_connection:
            return self._new_cursor(wrap=True)
        return self._shared

    async def _deny(self, websocket: WebSocket, status: int, reason: str) -> None:
        self.rejected.append(status)
        headers = {"dg-error": reason, "dg-request-id": str(uuid.uuid4())}
        await websocket.send_denial_response(
            Response(json.dumps({"err_msg": reason}), status_code=status, headers=headers)
        )

    async def _listen(self, websocket: WebSocket) -> None:
        if websocket.headers.get("authorization") != f"Token {self.config.api_key}":
            await self._deny(websocket, 401, "Invalid credentials.")
            return
        params = dict(websocket.query_params)
        rate = params.get("sample_rate", "")
        if params.get("encoding") not in _ENCODINGS or not rate.isdigit() or int(rate) < 8000:
            await self._deny(websocket, 400, "The fake speaks mulaw or linear16 at >= 8000 Hz.")
            return
        fault = self._faults.take(self.config.fault, self.config.fault_count)
        if fault in REJECT_STATUS:
            await self._deny(websocket, REJECT_STATUS[fault], f"injected {fault}")
            return
        record = ListenRecord(params=params, headers=dict(websocket.headers))
        self.connections.append(record)
        await websocket.accept()
        await _Listen(self, websocket, record, fault).run()


class _Listen:
    """One connection: an energy detector on the audio timeline plus wall-clock deadlines."""

    def __init__(
        self, fake: DeepgramFake, websocket: WebSocket, record: ListenRecord, fault: Fault | None
    ) -> None:
        self.fake = fake
        self.cfg = fake.config
        self.ws = websocket
        self.record = record
        self.fault = fault
        self.loop = asyncio.get_running_loop()
        self.script = fake._cursor()
        self.linear = record.params["encoding"] == "linear16"
        rate = int(record.params["sample_rate"])
        self.frame_bytes = round(rate * _FRAME_SECONDS) * (2 if self.linear else 1)
        self.request_id = str(uuid.uuid4())
        params = record.params
        self.interims = params.get("interim_results") == "true"
        self.vad_events = params.get("vad_events") == "true"
        self.utterance_end = float(params.get("utterance_end_ms", "0") or 0) / 1000
        endpointing = params.get("endpointing", "10")
        default_silence = 0.01 if endpointing == "false" else float(endpointing) / 1000
        silence = self.cfg.min_silence if self.cfg.min_silence is not None else default_silence
        self.endpoint_silence = max(silence, _FRAME_SECONDS)
        # Silence that ends a segment: the endpointing silence, but never a dip inside speech.
        self.min_silence = max(self.endpoint_silence, self.cfg.dip_seconds)
        self.model = params.get("model", "nova-3")
        self.pending = b""
        self.audio_time = 0.0
        self.in_speech = False
        self.consumed = False  # this segment already answered (by a Finalize)
        self.seg_start = 0.0
        self.span_start = 0.0  # start of the segment's part not yet in a final
        self.voiced_end = 0.0
        self.silence = 0.0
        self.next_interim = 0.0
        self.interim_words = 0
        self.final_due: tuple[float, float, float] | None = None  # (wall due, start, end)
        self.continuation = False  # this segment continues the utterance already transcribed
        self.utterance_start = 0.0  # audio time the current utterance began
        self.utterance_voiced = 0.0  # voiced audio seconds of the current utterance so far
        self.utterances = 0  # utterances heard on this connection
        self.finalized_to = 0.0  # audio time covered by the last final
        self.last_word_end: float | None = None
        self.stalled = fault is Fault.STALL and self.cfg.fault_after <= 0
        self.fault_at = self.loop.time() + self.cfg.fault_after if fault else None

    async def run(self) -> None:
        if self.cfg.metadata_on_open:
            await self._send(self._metadata())
        idle_at = self.loop.time() + self.cfg.idle_timeout
        while True:
            now = self.loop.time()
            deadlines = [idle_at]
            if self.fault_at is not None and self.cfg.fault_after_audio is None:
                deadlines.append(self.fault_at)
            if self.final_due is not None and not self.stalled:
                deadlines.append(self.final_due[0])
            try:
                async with asyncio.timeout(max(min(deadlines) - now, 0.0)):
                    message = await self.ws.receive()
            except TimeoutError:
                now = self.loop.time()
                if now >= idle_at:
                    await self._close(1011, "NET-0001")
                    return
                if self.fault_at is not None and now >= self.fault_at:
                    if await self._inject():
                        return
                    continue
                await self._send_due_final()
                continue
            if message["type"] == "websocket.disconnect":
                return
            idle_at = self.loop.time() + self.cfg.idle_timeout
            if message.get("bytes") is not None:
                self.record.audio_bytes += len(message["bytes"])
                await self._audio(message["bytes"])
                limit = self.cfg.fault_after_audio
                if self.fault_at is not None and limit is not None and self.audio_time >= limit:
                    if await self._inject():
                        return
            elif message.get("text") is not None:
                if await self._control(message["text"]):
                    return

    async def _inject(self) -> bool:
        """Apply the connection's fault; True when the connection is over."""
        fault, self.fault_at = self.fault, None
        if fault is Fault.DROP:
            return True  # returning without a close frame drops the TCP connection
        if fault is Fault.BAD_CLOSE:
            await self._close(self.cfg.bad_close_code, "injected fault")
            return True
        if fault is Fault.GARBAGE:
            await self.ws.send_text('{"type": "Results", "channel": ')
        if fault is Fault.STALL:
            self.stalled = True
        return False

    async def _close(self, code: int, reason: str) -> None:
        self.record.close_code = code
        await self.ws.close(code, reason)

    async def _send(self, message: dict[str, Any]) -> None:
        if self.stalled:
            return
        self.record.sent.append(message)
        await self.ws.send_text(json.dumps(message))

    # --- control messages ----------------------------------------------------------------------

    async def _control(self, text: str) -> bool:
        try:
            kind = json.loads(text).get("type")
        except (ValueError, AttributeError):
            await self._close(1008, "DATA-0000")
            return True
        self.record.controls.append(str(kind))
        if kind == "Finalize":
            await self._finalize()
        elif kind == "CloseStream":
            if self.final_due is not None:
                await self._send_due_final(force=True)
            elif self.in_speech and not self.consumed:
                await self._final(self.span_start, self.audio_time, speech_final=True)
            await self._send(self._metadata())
            await self._close(1000, "")
            return True
        return False  # KeepAlive: no reply; it only reset the idle deadline

    async def _finalize(self) -> None:
        if self.final_due is not None:
            _, start, end = self.final_due
            self.final_due = None
            await self._final(start, end, from_finalize=True)
        elif self.in_speech and not self.consumed and self.cfg.utterance_gap is not None:
            # Deepgram returns what it has heard and goes on transcribing what follows.
            if self.silence > 0:  # in the segment's trailing silence (or a dip): it ends here
                self.in_speech = False
                end = self.voiced_end
            else:
                end = self.audio_time
            start, self.span_start = self.span_start, end
            self.interim_words = 0
            await self._final(start, end, from_finalize=True)
        elif self.in_speech and not self.consumed:
            self.consumed = True
            await self._final(self.span_start, self.audio_time, from_finalize=True)
        else:
            await self._results("", self.audio_time, 0.0, is_final=True, from_finalize=True)

    # --- audio ---------------------------------------------------------------------------------

    async def _audio(self, data: bytes) -> None:
        self.pending += data
        size = self.frame_bytes
        whole = len(self.pending) - len(self.pending) % size
        frames, self.pending = self.pending[:whole], self.pending[whole:]
        for i in range(0, len(frames), size):
            frame = frames[i : i + size]
            if self.linear:
                samples = np.frombuffer(frame, "<i2").astype(np.float32) / 32768.0
            else:
                samples = ulaw_to_float(frame)
            rms = float(np.sqrt(np.mean(samples * samples)))
            await self._frame(rms >= self.cfg.speech_rms)

    async def _frame(self, voiced: bool) -> None:
        start = self.audio_time
        self.audio_time += _FRAME_SECONDS
        if voiced:
            self.silence = 0.0
            if not self.in_speech:
                if self.final_due is not None:
                    await self._send_due_final(force=True)  # keep finals in order
                gap = self.cfg.utterance_gap
                self.continuation = (
                    gap is not None and self.voiced_end > 0 and start - self.voiced_end < gap
                )
                if not self.continuation:
                    self.utterance_start = start
                    self.utterance_voiced = 0.0
                    if gap is not None and self.utterances:
                        self.script.advance()
                    elif gap is not None:
                        # the first on this connection: a line cut off by a dropped socket is
                        # said again from the client's replay, unless part of it was finalised
                        self.script.next_utterance()
                    self.utterances += 1
                self.in_speech, self.consumed = True, False
                self.seg_start = self.span_start = start
                self.interim_words = 0
                self.next_interim = start + self.cfg.interim_every
                if self.vad_events:
                    await self._send(
                        {"type": "SpeechStarted", "channel": [0, 1], "timestamp": round(start, 3)}
                    )
            self.voiced_end = self.audio_time
            self.utterance_voiced += _FRAME_SECONDS
            heard = self.script.heard(self.utterance_voiced)
            timed = heard is not None and self.cfg.utterance_gap is not None
            fresh = not self.consumed and (timed or not self.continuation)
            if self.interims and fresh and self.audio_time >= self.next_interim:
                # from this interim, not a fixed grid: never closer than `interim_every`
                self.next_interim = self.audio_time + self.cfg.interim_every - 1e-9
                if timed and heard is not None:
                    self.interim_words = max(0, heard - self.script.word_offset)
                else:
                    self.interim_words += 1
                words = self.script.remaining()[: self.interim_words]
                await self._results(
                    " ".join(words), self.span_start, self.audio_time - self.span_start, False
                )
            every = self.cfg.final_every
            if every and fresh and self.audio_time - self.span_start >= every:
                await self._partial_final()
            return
        if self.in_speech:
            self.silence += _FRAME_SECONDS
            if self.silence >= self.min_silence:
                self.in_speech = False
                if not self.consumed:
                    # `final_delay` after the endpointing silence, not after the dip bridging
                    late = self.silence - self.endpoint_silence
                    due = self.loop.time() + max(0.0, self.cfg.final_delay - late)
                    self.final_due = (due, self.span_start, self.voiced_end)
                self.finalized_to = max(self.finalized_to, self.voiced_end)
            return
        if self.final_due is not None:
            return
        if (
            self.utterance_end
            and self.last_word_end is not None
            and self.audio_time - self.last_word_end >= self.utterance_end
        ):
            await self._send(
                {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": self.last_word_end}
            )
            self.last_word_end = None
        every = self.cfg.silence_final_every
        if every is not None and self.audio_time - self.finalized_to >= every:
            span_start, self.finalized_to = self.finalized_to, self.audio_time
            await self._results("", span_start, self.audio_time - span_start, True)

    async def _partial_final(self) -> None:
        # Deepgram finalises long speech in pieces; keep one word back for the speech_final.
        count = min(self.interim_words, len(self.script.remaining()) - 1)
        if count <= 0:
            return
        text = self.script.take(count)
        start, self.span_start = self.span_start, self.audio_time
        self.interim_words = 0
        self.finalized_to = self.audio_time
        await self._results(text, start, self.audio_time - start, True)

    async def _send_due_final(self, *, force: bool = False) -> None:
        if self.final_due is None or (not force and self.loop.time() < self.final_due[0]):
            return
        _, start, end = self.final_due
        self.final_due = None
        await self._final(start, end, speech_final=True)

    async def _final(
        self, start: float, end: float, *, speech_final: bool = False, from_finalize: bool = False
    ) -> None:
        text = self._segment_text(end)
        self.finalized_to = max(self.finalized_to, end)
        if text:
            self.last_word_end = end
        await self._results(text, start, end - start, True, speech_final, from_finalize)

    def _segment_text(self, end: float) -> str:
        """The words a final ending at audio time `end` carries."""
        heard = self.script.heard(self.utterance_voiced)
        if self.cfg.utterance_gap is not None and heard is not None:
            if heard >= len(self.script.words()):
                return self.script.take()
            count = heard - self.script.word_offset
            return self.script.take(count) if count > 0 else ""
        seconds = self.script.spoken_seconds()
        if self.cfg.utterance_gap is None or seconds is None:
            return "" if self.continuation else self.script.take()
        total = len(self.script.words())
        spoken = end - self.utterance_start
        if spoken >= seconds - 0.1 or total == 0:
            return self.script.take()
        count = min(total - 1, round(total * spoken / seconds)) - self.script.word_offset
        return self.script.take(count) if count > 0 else ""

    async def _results(
        self,
        text: str,
        start: float,
        duration: float,
        is_final: bool,
        speech_final: bool = False,
        from_finalize: bool = False,
    ) -> None:
        words = text.split()
        step = duration / len(words) if words else 0.0
        await self._send(
            {
                "type": "Results",
                "channel_index": [0, 1],
                "duration": round(duration, 3),
                "start": round(start, 3),
                "is_final": is_final,
                "speech_final": speech_final,
                "from_finalize": from_finalize,
                "channel": {
                    "alternatives": [
                        {
                            "transcript": text,
                            "confidence": 0.98 if words else 0.0,
                            "words": [
                                {
                                    "word": w.strip(".,?!").lower(),
                                    "start": round(start + i * step, 3),
                                    "end": round(start + (i + 1) * step, 3),
                                    "confidence": 0.98,
                                    "punctuated_word": w,
                                }
                                for i, w in enumerate(words)
                            ],
                        }
                    ]
                },
                "metadata": {
                    "request_id": self.request_id,
                    "model_info": {"name": "2-general-nova", "version": "fake", "arch": self.model},
                    "model_uuid": "00000000-0000-4000-8000-000000000000",
                },
            }
        )

    def _metadata(self) -> dict[str, Any]:
        return {
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": self.request_id,
            "sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "created": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "duration": round(self.audio_time, 3),
            "channels": 1,
        }
