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

With tools (`voice.tool_turns`) a reply may run them and ask the model again; `endCall` and
`transferCall` end the call once their last words have been heard (`CallControl` redirects a
transferred call), with `assistant-ended-call` / `assistant-forwarded-call`.

Its parts: `voice.transcriber` (audio to the STT, failover), `voice.playout` (paced, marked
audio out), `voice.reply_record` (what was heard into the history and the record),
`voice.turn_model` (smart-turn off the loop), `voice.session_config` (engines, options).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time

from media.g711 import ulaw_to_pcm16
from media.transport import (
    AudioReceived,
    CallTransport,
    DtmfReceived,
    MarkReceived,
    StreamStopped,
    TransportClosed,
)
from voice.assistant import Assistant
from voice.clock import Clock, MonotonicClock
from voice.errors import ProviderError
from voice.events import (
    AssistantSpeechStarted,
    AssistantSpeechStopped,
    BargeIn,
    CallEnded,
    CallEvent,
    CallStarted,
    MessageAdded,
    ProviderFailed,
    SpeechStarted,
    SpeechStopped,
    ToolCallFailed,
    TranscriptReceived,
)
from voice.fallback import (
    FallbackLlm,
    FallbackTts,
    ProvidersExhausted,
    Stage,
    breaker_key,
    candidates,
)
from voice.history import Conversation
from voice.phrases import find_end_call_phrase
from voice.playout import Playing, Playout
from voice.ports import (
    CallControl,
    CallControlError,
    EventSink,
    ReportsReconnects,
)
from voice.reply import Reply
from voice.reply_record import ReplyRecorder
from voice.server_messages import tool_context
from voice.session_config import (
    APOLOGY,
    FAILED_REASONS,
    TRANSFER_FAILED,
    Engines,
    SessionOptions,
    turn_config,
)
from voice.tool_turns import Handoff, ToolTurns
from voice.transcriber import TranscriberFeed
from voice.turn_model import TurnModelRunner
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
    TurnState,
    TurnTaker,
)
from voice.types import ChatMessage, EndedReason, Transcript

__all__ = ["APOLOGY", "CallSession", "Engines", "SessionOptions"]

log = logging.getLogger("ava.call")


class _CallOver(Exception):
    """Raised inside the TaskGroup to cancel every task once the call has ended."""


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
        call_control: CallControl | None = None,
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
            turn_config(assistant, engines.turn_detector is not None, engines.vad.window_seconds)
        )
        self.ended: CallEnded | None = None
        self._t0 = 0.0
        self._ended = asyncio.Event()
        self._tg: asyncio.TaskGroup | None = None
        self._turn_model = TurnModelRunner(
            engines.turn_detector,
            engines.executor,
            call_id=call_id,
            seconds=self.options.turn_model_seconds,
            on_verdict=self._on_turn_verdict,
        )
        self._vad = engines.vad.stream()
        self._playout = Playout(
            transport,
            self.clock,
            chunk_seconds=self.options.playout_chunk_seconds,
            max_ahead_seconds=self.options.max_ahead_seconds,
        )
        self._records = ReplyRecorder(call_id, self.history, self._emit)
        self._reply_tasks: dict[Reply, asyncio.Task[None]] = {}
        self._speculative: Reply | None = None
        self._replies = 0
        self._commits: dict[Reply, CommitTurn] = {}
        self._last_activity = 0.0
        self._caller_speaking = False
        self._backoff_until = 0.0
        self._giving_up = False  # a stage has no provider left: apologise, then end
        self._ending: dict[Reply, tuple[EndedReason, str]] = {}
        self._handoffs: dict[Reply, Handoff] = {}
        self.call_control = call_control
        self._tool_turns = ToolTurns.for_assistant(
            assistant,
            call_id=call_id,
            history=self.history,
            emit=self._emit,
            since_start=self._since_start,
            finalize=self._end_after,
            call_control=call_control,
            context=lambda: tool_context(call_id, self.metadata, assistant, self.history),
            egress=engines.egress,
            max_response_bytes=engines.max_response_bytes,
        )
        self._stt = TranscriberFeed(
            call_id=call_id,
            engines=engines,
            clock=self.clock,
            connect_timeout=self.options.stt_connect_timeout,
            prebuffer_frames=self.options.prebuffer_frames,
            on_result=self._on_transcript,
            on_failure=self._on_provider_failure,
            ended=self._ended,
        )
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
        stages: list[tuple[Stage, object]] = [("stt", engines.stt), ("tts", engines.tts)]
        stages += [("stt", e) for e in engines.stt_fallbacks]
        stages += [("tts", e) for e in engines.tts_fallbacks]
        for stage, engine in stages:
            if isinstance(engine, ReportsReconnects):  # per-call adapters only (see the port)
                key = breaker_key(stage, engine)
                report = functools.partial(self._on_provider_failure, stage, key, recovered=True)
                engine.on_reconnect = report

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
        tg.create_task(self._transcribe())
        tg.create_task(self._turn_model.run())
        await self._ended.wait()
        raise _CallOver

    async def _cleanup(self) -> None:
        assert self.ended is not None
        playing = self._playout.playing
        if playing is not None and playing.first_sent is not None:
            # The caller hung up mid-reply: keep what they heard.
            self._record_reply(playing, interrupted=True, now=self.clock.now())
        await self._stt.aclose()
        await self._tool_turns.runner.aclose()
        if self.call_control is not None:
            try:
                await self.call_control.aclose()
            except CallControlError as exc:
                log.warning("call %s: closing call control failed: %s", self.call_id, exc)
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
            {
                "messages": [m.to_openai() for m in self.history.messages()],
                "usage": dict(self._records.usage),
            },
        )  # fmt: skip
        self._emit(self.ended)
        log.info("call %s ended: %s %s", self.call_id, self.ended.reason.value, self.ended.detail)

    # --- inbound -----------------------------------------------------------------------------

    async def _transcribe(self) -> None:
        exhausted = await self._stt.run()
        if exhausted is not None:
            self._give_up("stt", exhausted)

    async def _on_transcript(self, result: Transcript) -> None:
        now = self.clock.now()
        if result.text:
            self._emit(
                TranscriptReceived(self.call_id, now - self._t0, result.text, result.is_final)
            )
        await self._apply(self.turns.transcript(result, now), now)

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
                self._playout.on_mark(event.name)
            elif isinstance(event, StreamStopped):
                self._finish(EndedReason.CUSTOMER_ENDED_CALL, "stream stopped")
                return
            elif isinstance(event, DtmfReceived):
                log.info("call %s: dtmf %s", self.call_id, event.digit)

    async def _on_audio(self, audio: bytes) -> None:
        """The per-frame hot path: STT, VAD, turn timers."""
        now = self.clock.now()
        await self._stt.send(audio)
        pcm = ulaw_to_pcm16(audio)
        self._turn_model.add_audio(pcm)
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

    async def _on_turn_verdict(self, probability: float, request: RunTurnModel) -> None:
        now = self.clock.now()
        await self._apply(self.turns.turn_model_result(probability, request.speech_end, now), now)

    async def _playout_idle_timer(self) -> None:
        """Timers that must fire even if inbound frames stop: durations and turn deadlines."""
        assistant = self.assistant
        while True:
            now = self.clock.now()
            if now - self._t0 >= assistant.max_duration_seconds:
                self._finish(EndedReason.EXCEEDED_MAX_DURATION)
                return
            if self._playout.playing is not None:
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
                await self._stt.finalize()
            elif isinstance(action, RunTurnModel):
                self._turn_model.ask(action)
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
                self._playout.pause()
            elif isinstance(action, ResumeOutput):
                self._playout.resume()
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
        playing = self._playout.take()
        # What was heard is fixed now, before anything else can be sent.
        heard = self._record_reply(playing, interrupted=True, now=now) if playing else ""
        for reply in list(self._reply_tasks):
            self._cancel_reply(reply)
        self._speculative = None
        await self._playout.clear(now)
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
                async with self._playout.lock:
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
            if self._tool_turns.tools.schemas:
                await self._tool_turns.produce(reply, self._llm, self._tts, messages)
            else:
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
        self._ending[reply] = (FAILED_REASONS[stage], str(exc))
        reply.release()

    async def _play(self, reply: Reply) -> None:
        self.turns.interruptible = reply not in self._ending and (
            not reply.is_greeting or self.assistant.first_message_interruptions_enabled
        )

        async def audible(now: float) -> None:
            self._emit(AssistantSpeechStarted(self.call_id, now - self._t0))
            if reply.is_greeting:
                self.turns.assistant_started(now)
            await self._apply(self.turns.set_assistant_audible(True, now), now)

        playing = await self._playout.play(reply, audible)
        now = self.clock.now()
        self._playout.playing = None
        self._record_reply(playing, interrupted=False, now=now)
        await self._apply(self.turns.set_assistant_audible(False, now), now)
        await self._apply(self.turns.reply_finished(now), now)
        self._last_activity = now
        ending = self._ending.get(reply)
        if ending is not None:
            handoff = self._handoffs.pop(reply, None)
            if handoff is None or await self._hand_off(reply, handoff):
                self._finish(*ending)
            return
        phrase = find_end_call_phrase(reply.text, self.assistant.end_call_phrases)
        if phrase is not None:
            self._finish(EndedReason.ASSISTANT_SAID_END_CALL_PHRASE, phrase)

    def _end_after(
        self, reply: Reply, reason: EndedReason, detail: str, handoff: Handoff | None
    ) -> None:
        """End the call once `reply` has been heard (after `handoff`, if any)."""
        self._ending[reply] = (reason, detail)
        if handoff is not None:
            self._handoffs[reply] = handoff
        playing = self._playout.playing
        if playing is not None and playing.reply is reply:
            self.turns.interruptible = False  # the last words must be heard whole

    async def _hand_off(self, reply: Reply, handoff: Handoff) -> bool:
        """Run the handoff (a transfer); False when it failed and the call goes on."""
        try:
            await handoff.action()
        except CallControlError as exc:
            call = handoff.tool_call
            self._emit(
                ToolCallFailed(self.call_id, self._since_start(), call.id, call.name, str(exc))
            )
            log.warning("call %s: transfer failed: %s", self.call_id, exc)
            self._ending.pop(reply, None)
            sorry = self._start_reply("", None)
            sorry.text = TRANSFER_FAILED
            sorry.release()
            return False
        return True

    def _record_reply(self, playing: Playing, *, interrupted: bool, now: float) -> str:
        """Put the reply in the history and the call record: all of it, or what was heard."""
        commit = self._commits.pop(playing.reply, None)
        if playing.first_sent is not None:
            self._emit(AssistantSpeechStopped(self.call_id, now - self._t0))
        return self._records.record(
            playing, interrupted=interrupted, now=now, at=now - self._t0, commit=commit
        )

    # --- helpers -----------------------------------------------------------------------------

    def _on_provider_failure(
        self, stage: Stage, provider: str, exc: ProviderError, *, recovered: bool = False
    ) -> None:
        """Every provider failure is an event of the call, whether or not the call survives it
        (`recovered`: the adapter reconnected by itself and the call did not notice)."""
        self._emit(
            ProviderFailed(
                self.call_id, self._since_start(), stage, provider, str(exc), exc.retryable,
                recovered=recovered,
            )
        )  # fmt: skip
        log.warning("call %s: %s provider %s failed: %s", self.call_id, stage, provider, exc)

    def _emit(self, event: CallEvent) -> None:
        self.sink.emit(event)

    def _since_start(self) -> float:
        return self.clock.now() - self._t0
