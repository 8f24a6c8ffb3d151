"""CallSession: one call's media loop, every task of it in one TaskGroup.

    transport ──audio──► VAD ─► TurnTaker ◄── transcripts ◄── STT stream
                          │         │ actions
                          └► STT    ▼
                            Reply (LLM → phrases → TTS) ──► playout (paced, marked) ──► transport

The session ends exactly once, with one `EndedReason`, whoever ends it: the caller (stop or a
closed socket), the assistant (end-call phrase), a timer (silence, max duration), a provider, bad
input, or the server. Ending cancels every task of the call; the transport is closed and the
last event emitted is `CallEnded`.

Providers fail over rather than end the call (`voice.fallback`): a failed LLM answer or TTS phrase
is retried once, then the assistant's fallbacks are tried, skipping providers whose circuit
breaker (`voice.breaker`, shared per process) is open; a transcriber that fails moves the stream to
the fallback transcriber. Every failure is a `ProviderFailed` event. Only when a stage has nothing
left does the caller hear the cached apology, and the call ends with that stage's pipeline error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

from media.g711 import ulaw_to_pcm16
from media.pacing import Pacer, PlayoutTracker
from media.transport import (
    AudioReceived,
    CallTransport,
    DtmfReceived,
    MarkReceived,
    StreamStopped,
    TransportClosed,
)
from voice.assistant import Assistant
from voice.breaker import BreakerBoard
from voice.clock import Clock, MonotonicClock
from voice.errors import ProviderError, ProviderTimeout
from voice.events import (
    BargeIn,
    CallEnded,
    CallEvent,
    CallStarted,
    MessageAdded,
    ProviderFailed,
    SpeechStarted,
    SpeechStopped,
    TranscriptReceived,
    TurnCompleted,
)
from voice.fallback import (
    FailoverPlan,
    FallbackLlm,
    FallbackTts,
    ProvidersExhausted,
    Stage,
    candidates,
)
from voice.greeting import GreetingCache
from voice.history import Conversation, heard_text
from voice.latency import turn_latency
from voice.phrases import find_end_call_phrase
from voice.ports import (
    EventSink,
    LanguageModel,
    SpeechToText,
    SttStream,
    TextToSpeech,
    TurnDetector,
    VadModel,
)
from voice.reply import Reply
from voice.turns import (
    CancelSpeculation,
    CommitTurn,
    DiscardTurn,
    FinalizeStt,
    Interrupt,
    PauseOutput,
    ResumeOutput,
    RunTurnModel,
    Speculate,
    TurnAction,
    TurnConfig,
    TurnState,
    TurnTaker,
)
from voice.types import FRAME_SECONDS, SAMPLE_RATE, ChatMessage, EndedReason

__all__ = ["APOLOGY", "CallSession", "Engines", "SessionOptions"]

log = logging.getLogger("ava.call")

# Said (from the greeting cache) when no provider of a stage is left, just before hanging up.
APOLOGY = "Sorry, I'm having trouble right now. Please call back later."

_FAILED_REASONS: dict[Stage, EndedReason] = {
    "stt": EndedReason.PIPELINE_ERROR_STT,
    "llm": EndedReason.PIPELINE_ERROR_LLM,
    "tts": EndedReason.PIPELINE_ERROR_TTS,
}


@dataclass(frozen=True, slots=True)
class SessionOptions:
    playout_chunk_seconds: float = 0.1  # audio per media message (and per mark)
    max_ahead_seconds: float = 0.2  # queued at the far end beyond the playback clock
    stt_connect_timeout: float = 5.0
    turn_model_seconds: float = 8.0  # caller audio the turn model sees
    timer_seconds: float = 0.1  # coarse timer for when inbound frames stop arriving
    prebuffer_frames: int = 150  # caller audio kept while the STT connects (3 s; oldest dropped)


@dataclass(slots=True)
class Engines:
    """What a call runs on. Engines are shared by calls; streams are per call."""

    stt: SpeechToText
    llm: LanguageModel
    tts: TextToSpeech
    vad: VadModel
    turn_detector: TurnDetector | None
    greetings: GreetingCache
    executor: Executor | None = None  # for the turn model; None: the loop's default
    # Tried in order when the primary fails (after one retry): the assistant's fallback plans.
    stt_fallbacks: Sequence[SpeechToText] = ()
    llm_fallbacks: Sequence[LanguageModel] = ()
    tts_fallbacks: Sequence[TextToSpeech] = ()
    # Per provider per process when the engine source shares one board across calls.
    breakers: BreakerBoard = field(default_factory=BreakerBoard)
    # Releases the per-call adapters (sockets, HTTP pools) when the call ends.
    closers: Sequence[Callable[[], Awaitable[None]]] = ()


@dataclass(slots=True)
class _Playing:
    reply: Reply
    tracker: PlayoutTracker
    first_sent: float | None = None
    all_played: asyncio.Event = field(default_factory=asyncio.Event)


class _CallOver(Exception):
    """Raised inside the TaskGroup to cancel every task once the call has ended."""


def _turn_config(assistant: Assistant, has_turn_model: bool, vad_window: float) -> TurnConfig:
    start, stop = assistant.start_speaking_plan, assistant.stop_speaking_plan
    return TurnConfig(
        vad_silence_seconds=start.vad_silence_seconds,
        vad_window_seconds=vad_window,
        turn_threshold=start.smart_turn_threshold,
        incomplete_timeout=start.transcription_endpointing_plan.on_no_punctuation_seconds,
        use_turn_model=has_turn_model,
        speculative=start.speculative,
        voice_seconds=stop.voice_seconds,
        num_words=stop.num_words,
        acknowledgement_phrases=tuple(stop.acknowledgement_phrases),
        interruption_phrases=tuple(stop.interruption_phrases),
    )


class CallSession:
    def __init__(
        self,
        *,
        call_id: str,
        assistant: Assistant,
        transport: CallTransport,
        engines: Engines,
        sink: EventSink,
        clock: Clock | None = None,
        options: SessionOptions | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.call_id = call_id
        self.assistant = assistant
        self.transport = transport
        self.engines = engines
        self.sink = sink
        self.clock = clock or MonotonicClock()
        self.options = options or SessionOptions()
        self.metadata = metadata or {}
        self.history = Conversation(assistant.model)
        self.turns = TurnTaker(
            _turn_config(assistant, engines.turn_detector is not None, engines.vad.window_seconds)
        )
        self.ended: CallEnded | None = None
        self._t0 = 0.0
        self._ended = asyncio.Event()
        self._tg: asyncio.TaskGroup | None = None
        self._stt: SttStream | None = None
        self._prebuffer: deque[bytes] = deque(maxlen=self.options.prebuffer_frames)
        frames = int(self.options.turn_model_seconds / FRAME_SECONDS)
        self._caller_pcm: deque[bytes] = deque(maxlen=frames)
        self._vad = engines.vad.stream()
        self._pacer = Pacer(self.options.max_ahead_seconds)
        self._playout_lock = asyncio.Lock()
        self._output_open = asyncio.Event()
        self._output_open.set()
        self._playing: _Playing | None = None
        self._reply_tasks: dict[Reply, asyncio.Task[None]] = {}
        self._speculative: Reply | None = None
        self._replies = 0
        self._commits: dict[Reply, CommitTurn] = {}
        self._turn_requests: asyncio.Queue[RunTurnModel] = asyncio.Queue(maxsize=1)
        self._last_activity = 0.0
        self._caller_speaking = False
        self._backoff_until = 0.0
        self._giving_up = False  # a stage has no provider left: apologise, then end
        self._ending: dict[Reply, tuple[EndedReason, str]] = {}
        breakers = engines.breakers
        self._llm = FallbackLlm(
            candidates("llm", engines.llm, engines.llm_fallbacks),
            breakers,
            self.clock,
            self._on_provider_failure,
        )
        self._tts = FallbackTts(
            candidates("tts", engines.tts, engines.tts_fallbacks),
            breakers,
            self.clock,
            self._on_provider_failure,
        )

    # --- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> CallEnded:
        """Run the call to its end; never raises for anything a call can survive."""
        self._t0 = self._last_activity = self.clock.now()
        self._emit(
            CallStarted(
                self.call_id, 0.0, time.time(), self.transport.kind, self.assistant.name,
                dict(self.metadata),
            )
        )  # fmt: skip
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                tg.create_task(self._main())
        except* _CallOver:
            pass
        except* Exception as group:  # the session boundary: a bug ends this call, not the server
            log.error("call %s failed", self.call_id, exc_info=group)
            self._finish(EndedReason.SERVER_ERROR, repr(group.exceptions[0]))
        finally:
            self._tg = None
            if self.ended is None:  # cancelled from outside: the server is shutting down
                self._finish(EndedReason.SERVER_SHUTDOWN, "server shutting down")
            await self._cleanup()
        assert self.ended is not None
        return self.ended

    def hang_up(self, reason: EndedReason, detail: str = "") -> None:
        """End the call from outside (API, drain). Safe to call at any time, any number of times."""
        self._finish(reason, detail)

    def _finish(self, reason: EndedReason, detail: str = "") -> None:
        if self.ended is not None:
            return
        self.ended = CallEnded(self.call_id, self._since_start(), reason, detail)
        self._ended.set()

    async def _main(self) -> None:
        assert self._tg is not None
        tg = self._tg
        tg.create_task(self._receive_loop())
        tg.create_task(self._playout_idle_timer())
        self._start_greeting()
        tg.create_task(self._connect_stt())
        tg.create_task(self._turn_model_loop())
        await self._ended.wait()
        raise _CallOver

    async def _cleanup(self) -> None:
        assert self.ended is not None
        playing = self._playing
        if playing is not None and playing.first_sent is not None:
            # The caller hung up mid-reply: keep what they heard.
            self._record_reply(playing, interrupted=True, now=self.clock.now())
        if self._stt is not None:
            await self._close_stt(self._stt)
        for close in self.engines.closers:
            try:
                await close()
            except (ProviderError, OSError) as exc:
                log.warning("call %s: closing a provider failed: %s", self.call_id, exc)
        try:
            await self.transport.close(self.ended.reason.value)
        except TransportClosed:
            pass
        self.ended = CallEnded(
            self.call_id, self._since_start(), self.ended.reason, self.ended.detail,
            {"messages": [m.to_openai() for m in self.history.messages()]},
        )  # fmt: skip
        self._emit(self.ended)
        log.info("call %s ended: %s %s", self.call_id, self.ended.reason.value, self.ended.detail)

    # --- inbound -----------------------------------------------------------------------------

    async def _connect_stt(self) -> None:
        """Connect the transcriber; on failure retry once, then the fallback transcribers."""
        engines = self.engines
        plan = FailoverPlan(candidates("stt", engines.stt, engines.stt_fallbacks), engines.breakers)
        last: ProviderError | None = None
        while (candidate := plan.next(self.clock.now())) is not None:
            seconds = self.options.stt_connect_timeout
            try:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow the call's own
                # cancellation when the connect completes in the same tick, leaving a live task.
                async with asyncio.timeout(seconds):
                    stream = await candidate.engine.connect()
            except ProviderError as exc:
                error = exc
            except TimeoutError:
                error = ProviderTimeout(candidate.engine.name, "connect", seconds)
            else:
                failure = await self._run_stt(stream, candidate.engine.name)
                if failure is None:
                    return  # the call is over
                # Mid-call: the adapter has already reconnected on its own; move on.
                plan.failed(candidate, failure, self.clock.now(), retry=False)
                self._on_provider_failure("stt", candidate.key, failure)
                last = failure
                continue
            plan.failed(candidate, error, self.clock.now())
            self._on_provider_failure("stt", candidate.key, error)
            last = error
        self._give_up("stt", ProvidersExhausted("stt", last))

    async def _run_stt(self, stream: SttStream, name: str) -> ProviderError | None:
        """Feed and read one STT stream until it fails (returned) or the call ends (None)."""
        try:
            while self._prebuffer:
                await stream.send_audio(self._prebuffer.popleft())
            self._stt = stream
            await self._transcript_loop(stream)
        except ProviderError as exc:
            error = exc
        else:
            if self._ended.is_set():
                return None
            error = ProviderError(name, "stream ended", retryable=True)
        self._stt = None  # caller audio goes to the prebuffer until the next stream is up
        await self._close_stt(stream)
        return error

    async def _close_stt(self, stream: SttStream) -> None:
        try:
            await stream.aclose()
        except ProviderError as exc:
            log.warning("call %s: closing STT failed: %s", self.call_id, exc)

    async def _receive_loop(self) -> None:
        transport = self.transport
        while True:
            try:
                event = await transport.receive()
            except TransportClosed as exc:
                reason = (
                    EndedReason.MALFORMED_STREAM
                    if exc.malformed
                    else EndedReason.CUSTOMER_ENDED_CALL
                )
                self._finish(reason, exc.detail)
                return
            if isinstance(event, AudioReceived):
                await self._on_audio(event.audio)
            elif isinstance(event, MarkReceived):
                self._on_mark(event.name)
            elif isinstance(event, StreamStopped):
                self._finish(EndedReason.CUSTOMER_ENDED_CALL, "stream stopped")
                return
            elif isinstance(event, DtmfReceived):
                log.info("call %s: dtmf %s", self.call_id, event.digit)

    async def _on_audio(self, audio: bytes) -> None:
        """The per-frame hot path: STT, VAD, turn timers."""
        now = self.clock.now()
        stt = self._stt
        if stt is None:
            self._prebuffer.append(audio)
        else:
            try:
                await stt.send_audio(audio)
            except ProviderError:
                # The stream has failed: its transcript loop reports it and moves to the
                # fallback, which gets this audio from the prebuffer.
                self._prebuffer.append(audio)
        pcm = ulaw_to_pcm16(audio)
        self._caller_pcm.append(pcm)
        probability = self._vad.process(pcm)
        if probability is not None:
            if probability >= self.turns.config.vad_threshold:
                self._last_activity = now
            await self._apply(self.turns.vad(probability, now), now)
            self._track_speech(now)
        deadline = self.turns.next_deadline()
        if deadline is not None and now >= deadline:
            await self._apply(self.turns.tick(now), now)

    def _track_speech(self, now: float) -> None:
        speaking = self.turns.state is TurnState.USER_SPEAKING
        if speaking != self._caller_speaking:
            self._caller_speaking = speaking
            event = SpeechStarted if speaking else SpeechStopped
            self._emit(event(self.call_id, now - self._t0))

    async def _transcript_loop(self, stream: SttStream) -> None:
        """Raises ProviderError when the stream fails."""
        async for result in stream.transcripts():
            now = self.clock.now()
            if result.text:
                self._emit(
                    TranscriptReceived(self.call_id, now - self._t0, result.text, result.is_final)
                )
            await self._apply(self.turns.transcript(result, now), now)

    async def _turn_model_loop(self) -> None:
        detector = self.engines.turn_detector
        if detector is None:
            return
        loop = asyncio.get_running_loop()
        while True:
            request = await self._turn_requests.get()
            pcm = b"".join(self._caller_pcm)
            try:
                probability = await loop.run_in_executor(
                    self.engines.executor, detector.completion_probability, pcm, SAMPLE_RATE
                )
            except ProviderError as exc:
                # Degrade, don't fail: without a verdict the incomplete-timeout ends the turn.
                log.warning("call %s: turn model failed: %s", self.call_id, exc)
                continue
            now = self.clock.now()
            await self._apply(
                self.turns.turn_model_result(probability, request.speech_end, now), now
            )

    async def _playout_idle_timer(self) -> None:
        """Timers that must fire even if inbound frames stop: durations and turn deadlines."""
        assistant = self.assistant
        while True:
            now = self.clock.now()
            if now - self._t0 >= assistant.max_duration_seconds:
                self._finish(EndedReason.EXCEEDED_MAX_DURATION)
                return
            if self._playing is not None:
                self._last_activity = now
            elif now - self._last_activity >= assistant.silence_timeout_seconds:
                self._finish(EndedReason.SILENCE_TIMED_OUT)
                return
            deadline = self.turns.next_deadline()
            if deadline is not None and now >= deadline:
                await self._apply(self.turns.tick(now), now)
            await self.clock.sleep_until(now + self.options.timer_seconds)

    # --- turn actions ------------------------------------------------------------------------

    async def _apply(self, actions: list[TurnAction], now: float) -> None:
        for action in actions:
            if isinstance(action, FinalizeStt):
                if self._stt is not None:
                    await self._stt.finalize()
            elif isinstance(action, RunTurnModel):
                if self._turn_requests.full():  # a newer question supersedes the old one
                    self._turn_requests.get_nowait()
                self._turn_requests.put_nowait(action)
            elif isinstance(action, Speculate | CommitTurn) and self._giving_up:
                continue  # no new turns once the call is apologising its way out
            elif isinstance(action, Speculate):
                self._cancel_speculation()
                messages = [*self.history.messages(), ChatMessage("user", action.text)]
                self._speculative = self._start_reply(action.text, messages)
            elif isinstance(action, CancelSpeculation | DiscardTurn):
                self._cancel_speculation()
            elif isinstance(action, CommitTurn):
                self._commit(action, now)
            elif isinstance(action, PauseOutput):
                self._output_open.clear()
            elif isinstance(action, ResumeOutput):
                self._output_open.set()
            elif isinstance(action, Interrupt):
                await self._interrupt(action, now)

    def _commit(self, action: CommitTurn, now: float) -> None:
        self.history.add_user(action.text)
        self._emit(MessageAdded(self.call_id, now - self._t0, "user", action.text))
        reply = self._speculative
        self._speculative = None
        if reply is None or reply.user_text != action.text:
            if reply is not None:
                self._cancel_reply(reply)
            reply = self._start_reply(action.text, self.history.messages())
        self._commits[reply] = action
        reply.committed_at = now
        reply.release()

    def _cancel_speculation(self) -> None:
        if self._speculative is not None:
            self._cancel_reply(self._speculative)
            self._speculative = None

    async def _interrupt(self, action: Interrupt, now: float) -> None:
        playing = self._playing
        self._playing = None
        # What was heard is fixed now, before anything else can be sent.
        heard = self._record_reply(playing, interrupted=True, now=now) if playing else ""
        for reply in list(self._reply_tasks):
            self._cancel_reply(reply)
        self._speculative = None
        await self.transport.send_clear()
        self._pacer.reset(now)
        self._output_open.set()
        if playing is None:
            return
        self._backoff_until = now + self.assistant.stop_speaking_plan.backoff_seconds
        self._emit(BargeIn(self.call_id, now - self._t0, action.onset - self._t0, heard))
        log.info("call %s: barge-in %.0f ms after onset", self.call_id, (now - action.onset) * 1e3)

    # --- replies -----------------------------------------------------------------------------

    def _start_reply(self, user_text: str, messages: list[ChatMessage] | None) -> Reply:
        assert self._tg is not None
        self._replies += 1
        reply = Reply(self._replies, user_text, self.clock)
        task = self._tg.create_task(self._run_reply(reply, messages))
        self._reply_tasks[reply] = task
        return reply

    def _cancel_reply(self, reply: Reply) -> None:
        task = self._reply_tasks.pop(reply, None)
        self._commits.pop(reply, None)
        if task is not None:
            task.cancel()

    def _start_greeting(self) -> None:
        assistant = self.assistant
        text = assistant.first_message
        if not text or assistant.first_message_mode != "assistant-speaks-first":
            return
        reply = self._start_reply("", None)
        reply.is_greeting = True
        reply.text = text
        reply.release()

    async def _run_reply(self, reply: Reply, messages: list[ChatMessage] | None) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                if messages is None:
                    tg.create_task(self._produce_greeting(reply))
                else:
                    tg.create_task(self._produce(reply, messages))
                await reply.released.wait()
                await self.clock.sleep_until(self._backoff_until)
                async with self._playout_lock:
                    await self._play(reply)
        finally:
            self._reply_tasks.pop(reply, None)

    async def _produce_greeting(self, reply: Reply) -> None:
        """Fixed lines (greeting, apology): from the cache, synthesized once per voice."""
        try:
            cached = await self.engines.greetings.get_or_synthesize(self._tts, reply.text)
        except ProviderError as exc:
            ending = self._ending.get(reply)
            if ending is not None:  # not even the apology can be said: just end
                self._finish(*ending)
                return
            if isinstance(exc, ProvidersExhausted):
                self._give_up(exc.stage, exc)
            await reply.finish()
            return
        reply.spoken_text = reply.text
        await reply.put_audio(cached.audio, cached.words)
        await reply.finish()

    async def _produce(self, reply: Reply, messages: list[ChatMessage]) -> None:
        try:
            await reply.produce(self._llm, self._tts, messages)
        except ProvidersExhausted as exc:
            await reply.finish()
            self._give_up(exc.stage, exc)
        except ProviderError as exc:
            # Failed after part of the answer was produced (already a ProviderFailed event):
            # the caller hears that part and the call goes on.
            log.warning("call %s: reply %d cut short: %s", self.call_id, reply.index, exc)
            if not reply.done:
                await reply.finish()

    def _give_up(self, stage: Stage, exc: ProviderError) -> None:
        """Nothing is left to try for `stage`: say the apology, then end the call."""
        if self._giving_up or self._ended.is_set():
            return
        self._giving_up = True
        log.error("call %s: no %s provider left: %s", self.call_id, stage, exc)
        self._cancel_speculation()
        reply = self._start_reply("", None)
        reply.text = APOLOGY
        self._ending[reply] = (_FAILED_REASONS[stage], str(exc))
        reply.release()

    async def _play(self, reply: Reply) -> None:
        """Send the reply's audio paced against the playback clock, a mark after each chunk."""
        clock, transport, pacer = self.clock, self.transport, self._pacer
        playing = _Playing(reply, PlayoutTracker())
        self._playing = playing
        self.turns.interruptible = reply not in self._ending and (
            not reply.is_greeting or self.assistant.first_message_interruptions_enabled
        )
        chunk_bytes = int(self.options.playout_chunk_seconds * SAMPLE_RATE)
        pending = b""
        seq = 0
        end_of_audio = False
        while not end_of_audio:
            piece = await reply.audio.get()
            if piece is None:
                end_of_audio = True
            else:
                pending += piece
            while len(pending) >= chunk_bytes or (end_of_audio and pending):
                chunk, pending = pending[:chunk_bytes], pending[chunk_bytes:]
                await self._output_open.wait()
                await clock.sleep_until(pacer.send_at(clock.now()))
                await self._output_open.wait()
                now = clock.now()
                seq += 1
                name = f"{reply.index}.{seq}"
                seconds = len(chunk) / SAMPLE_RATE
                await transport.send_audio(chunk)
                await transport.send_mark(name)
                pacer.sent(seconds, now)
                playing.tracker.add_chunk(name, seconds, now)
                if playing.first_sent is None:
                    playing.first_sent = now
                    if reply.is_greeting:
                        self.turns.assistant_started(now)
                    await self._apply(self.turns.set_assistant_audible(True, now), now)
        if seq and not playing.tracker.finished:
            await playing.all_played.wait()
        now = clock.now()
        self._playing = None
        self._record_reply(playing, interrupted=False, now=now)
        await self._apply(self.turns.set_assistant_audible(False, now), now)
        await self._apply(self.turns.reply_finished(now), now)
        self._last_activity = now
        ending = self._ending.get(reply)
        if ending is not None:
            self._finish(*ending)
            return
        phrase = find_end_call_phrase(reply.text, self.assistant.end_call_phrases)
        if phrase is not None:
            self._finish(EndedReason.ASSISTANT_SAID_END_CALL_PHRASE, phrase)

    def _on_mark(self, name: str) -> None:
        playing = self._playing
        if playing is None or not name.startswith(f"{playing.reply.index}."):
            return  # a mark of a reply that was cleared: it proves nothing was played
        playing.tracker.acknowledge(name, self.clock.now())
        if playing.reply.done and playing.tracker.finished:
            playing.all_played.set()

    def _record_reply(self, playing: _Playing, *, interrupted: bool, now: float) -> str:
        """Put the reply in the history and the call record: all of it, or what was heard."""
        reply = playing.reply
        if interrupted:
            heard_seconds = playing.tracker.clear(now)
            text = heard_text(
                reply.spoken_text, reply.words or None, reply.audio_seconds, heard_seconds
            )
        else:
            heard_seconds, text = reply.audio_seconds, reply.text
        if text:
            index = self.history.add_assistant(reply.text)
            if interrupted:
                self.history.truncate_assistant(index, text)
        if text or interrupted:  # a reply that failed before saying anything adds no message
            self._emit(
                MessageAdded(
                    self.call_id, now - self._t0, "bot", text, heard_seconds,
                    interrupted=interrupted,
                )
            )  # fmt: skip
        commit = self._commits.pop(reply, None)
        if commit is not None:
            latency = (
                turn_latency(commit, reply.timings, reply.committed_at, playing.first_sent)
                if playing.first_sent is not None
                else None
            )
            self._emit(
                TurnCompleted(
                    self.call_id, now - self._t0, reply.index, reply.user_text, text,
                    interrupted, latency,
                )
            )  # fmt: skip
        return text

    # --- helpers -----------------------------------------------------------------------------

    def _on_provider_failure(self, stage: Stage, provider: str, exc: ProviderError) -> None:
        """Every provider failure is an event of the call, whether or not the call survives it."""
        self._emit(
            ProviderFailed(
                self.call_id, self._since_start(), stage, provider, str(exc), exc.retryable
            )
        )
        log.warning("call %s: %s provider %s failed: %s", self.call_id, stage, provider, exc)

    def _emit(self, event: CallEvent) -> None:
        self.sink.emit(event)

    def _since_start(self) -> float:
        return self.clock.now() - self._t0
