"""CallSession: one call's media loop, one event loop per call, every task in one TaskGroup.

    transport ─► reader ─┐                          ┌─► STT feed (own queue, own task) ─► STT
    STT results ─────────┤                          │
    turn model ──────────┼─► inbox ─► session loop ─┼─► VAD ─► TurnTaker (pure) ─► actions
    reply tasks ─────────┤   (bounded)  (one task)  │
    timers ──────────────┘                          └─► replies: one handle each (one cancel)
                                                         LLM → phrases → TTS ─► playout ─► transport

Every collaborator posts an event into one bounded inbox (`voice.session_events`); one task, the
session loop, consumes it and alone owns the turn state and the replies. A batch of turn actions
is carried out before the next event is looked at, so nothing interleaves. The per-frame path
never waits on the STT (it has its own queue and sender), so a slow transcriber cannot delay
VAD or barge-in. Timers are one loop timer, armed for the earliest deadline.

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

Keypad digits (`keypadInputPlan`) are gathered until a delimiter or `timeoutSeconds` without a new
one, then committed as the caller's turn, interrupting the assistant as a barge-in would. Idle
hooks (`customer.speech.timeout`) say their next message after that long with both sides quiet
and no turn under way, up to their count; `silenceTimeoutSeconds` still ends the call.
`call.ending` hooks (`voice.ending_hooks`) say a last line before an ending the assistant
decides (the line is heard whole, then the call ends with that reason) and call their tools
once the line is closed.

`firstMessageMode: assistant-speaks-first-with-model-generated-message`: the model is asked at
once for its reply to the prompt alone, and that reply, streamed as any other, is the greeting.

Live control (`say`, `add_message`, `set_muted`, `transfer`, and `hang_up`) posts a command to the
inbox and returns at once (`ControlRefused` when the call has ended, cannot do it, or the inbox
is full): the loop carries it out between two events like anything else. A `say` is a fixed line
played after what the assistant is saying (or instead of it); `add_message` goes into the
model's context and may start a reply as a caller's turn would; muting drops the assistant's
audio on its way out (`voice.mute_gate`) while everything else goes on.

Its parts: `voice.transcriber` (audio to the STT, failover), `voice.playout` (paced, marked
audio out), `voice.reply_record` (what was heard into the history and the record),
`voice.turn_model` (smart-turn off the loop), `voice.session_config` (engines, options).

Audio is in the call's format, the one its transport declares (`audio_format`: 16 kHz PCM16 for
a browser; μ-law 8 kHz on the phone, and for a transport that declares none): the transcriber and
the voices are bound to it (`Engines.in_format`), the VAD and the turn model get PCM16 at its
rate, and playout sizes its chunks by it. Nothing here assumes telephone audio.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Literal

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
from voice.ending_hooks import NO_TOOLS, SPEAKABLE, EndingHooks
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
from voice.mute_gate import MuteGate
from voice.phrases import find_end_call_phrase
from voice.playout import Playing, Playout
from voice.ports import (
    DEFAULT_TRANSFER_MESSAGE,
    CallControl,
    CallControlError,
    EventSink,
    ReportsReconnects,
    TransferDestination,
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
from voice.session_events import (
    AddMessage,
    Audible,
    CallerAudio,
    CallerGone,
    ControlEvent,
    ControlRefused,
    Dtmf,
    HandoffFailed,
    InboxEvent,
    MarkEchoed,
    Mute,
    Played,
    Say,
    StageExhausted,
    TimerDue,
    TranscriptArrived,
    Transfer,
    Verdict,
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
from voice.types import ChatMessage, EndedReason, ToolCall, Transcript

__all__ = ["APOLOGY", "CallSession", "Engines", "SessionOptions"]

log = logging.getLogger("ava.call")

# The longest keypad input taken as one turn (a card number with its expiry fits); more digits
# start the next one.
_MAX_KEYPAD_DIGITS = 64
_RECHECK_SECONDS = 0.02  # one frame
# How long a `call.ending` line may take before the call ends anyway (a voice that stalls):
# generous for its length, as a caller hears about 15 characters a second.
_ENDING_LINE_SECONDS = 10.0
_ENDING_LINE_SECONDS_PER_CHAR = 0.15


class _CallOver(Exception):
    """Raised inside the TaskGroup to cancel every task once the call has ended."""


@dataclass(eq=False, slots=True)
class _ReplyHandle:
    """Everything the session knows about one reply; `cancel()` is its only way out."""

    reply: Reply
    task: asyncio.Task[None] | None = None
    commit: CommitTurn | None = None  # the caller's turn it answers, once confirmed
    ending: tuple[EndedReason, str] | None = None  # end the call once it has been heard
    handoff: Handoff | None = None  # run before ending (a transfer)
    played: Playing | None = None  # played to the end, not yet recorded by the loop
    interruptible: bool = True  # may the caller's speech cut it (a `say` may forbid it)
    cached: bool = True  # a fixed line worth keeping in the greeting cache

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()


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
        """Audio is in the transport's `audio_format`. Raises ConfigError when an engine cannot
        speak it."""
        audio_format = transport.audio_format
        self.call_id = call_id
        self.assistant = assistant
        self.transport = transport
        self.audio_format = audio_format
        engines = engines.in_format(audio_format)
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
        # Overflow policy: producers wait (the transport reader stops reading, which is
        # backpressure on the socket); only the timer's wake-up is dropped, as the loop
        # checks its deadlines after every event anyway.
        self._inbox: asyncio.Queue[InboxEvent] = asyncio.Queue(self.options.inbox_events)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._turn_model = TurnModelRunner(
            engines.turn_detector,
            engines.executor,
            call_id=call_id,
            seconds=self.options.turn_model_seconds,
            on_verdict=self._post_verdict,
            sample_rate=audio_format.sample_rate,
        )
        self._vad = engines.vad.stream(audio_format.sample_rate)
        # Playout talks to the caller through the mute switch (`mute-assistant`).
        self._out = MuteGate(transport)
        self._playout = Playout(
            self._out,
            self.clock,
            chunk_seconds=self.options.playout_chunk_seconds,
            max_ahead_seconds=self.options.max_ahead_seconds,
            audio_format=audio_format,
        )
        self._records = ReplyRecorder(call_id, self.history, self._emit)
        self._live: dict[Reply, _ReplyHandle] = {}
        self._speculative: _ReplyHandle | None = None
        self._replies = 0
        self._last_activity = 0.0
        self._caller_speaking = False
        self._vad_pending = 0.0  # caller audio (seconds) fed to the VAD since its last answer
        self._backoff_until = 0.0
        self._giving_up = False  # a stage has no provider left: apologise, then end
        # Keypad digits gathered so far (`keypadInputPlan`), and when they become a turn.
        self._keypad = ""
        self._keypad_due: float | None = None
        # How often each `customer.speech.timeout` hook has fired (its `triggerMaxCount`).
        self._idle_hooks = [h for h in assistant.hooks if h.on == "customer.speech.timeout"]
        self._hook_counts = [0] * len(self._idle_hooks)
        # The `call.ending` line under way: until when it may take, and the ending it delays.
        self._ending: tuple[float, EndedReason, str] | None = None
        self._ending_tools = True  # not when the call is cancelled from outside
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
            queue_frames=self.options.prebuffer_frames,
            on_result=self._post_transcript,
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
        self.ending_hooks = EndingHooks(
            assistant.hooks,
            assistant.model,
            call_id=call_id,
            assistant_server=assistant.server,
            history=self.history,
            emit=self._emit,
            since_start=self._since_start,
            context=lambda: tool_context(call_id, self.metadata, assistant, self.history),
            egress=engines.egress,
            max_response_bytes=engines.max_response_bytes,
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
        if self.ended is not None:  # refused before it started (capacity, draining)
            self._ending_tools = False
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
            if self._timer is not None:
                self._timer.cancel()
            if self.ended is None:  # cancelled from outside: the server is shutting down
                self._ending_tools = False
                self._finish(EndedReason.SERVER_SHUTDOWN, "server shutting down")
            await self._cleanup()
        assert self.ended is not None
        return self.ended

    def hang_up(self, reason: EndedReason, detail: str = "") -> None:
        """End the call from outside (API, drain). Safe to call at any time, any number of times."""
        self._finish(reason, detail)

    # --- live control (`POST /call/{id}/control`) ------------------------------------------------
    # Each posts a command for the loop and returns at once; ControlRefused when the call has
    # ended, cannot do it, or its inbox is full (never waits: the API must not block on a call).

    def say(
        self,
        text: str,
        *,
        end_call_after: bool = False,
        interruptible: bool = True,
        interrupt: bool = False,
        end_reason: tuple[EndedReason, str] | None = None,
    ) -> None:
        """Say `text` as the assistant: after what it is saying now (`interrupt`: instead of
        it). `end_call_after`: end the call once it has been heard (not interruptible then),
        with `end_reason` (reason, detail; default: manually-canceled, as an API `say`)."""
        self._control(Say(text, end_call_after, interruptible, interrupt, end_reason))

    def add_message(
        self, role: Literal["system", "user", "assistant"], content: str, *, trigger: bool = True
    ) -> None:
        """Add a message to the model's context; `trigger`: the assistant answers now."""
        self._control(AddMessage(role, content, trigger))

    def set_muted(self, muted: bool) -> None:
        """While muted the assistant goes on (it hears, answers and is recorded) but none of its
        audio reaches the caller."""
        self._control(Mute(muted))

    def transfer(self, number: str, message: str = "") -> None:
        """Say `message` (Vapi's default line when empty), then redirect the call to `number`."""
        if self.call_control is None:
            raise ControlRefused(
                f"call {self.call_id} cannot be transferred: no telephony control "
                "(a web call, or a number without Twilio credentials)",
                reason="unsupported",
            )
        self._control(Transfer(number, message))

    def _control(self, event: ControlEvent) -> None:
        if self.ended is not None:
            raise ControlRefused(f"call {self.call_id} has ended", reason="ended")
        try:
            self._inbox.put_nowait(event)
        except asyncio.QueueFull:
            raise ControlRefused(
                f"call {self.call_id} is busy (its event queue is full); try again",
                reason="busy",
            ) from None

    def _finish(self, reason: EndedReason, detail: str = "") -> None:
        if self.ended is not None:
            return
        self.ended = CallEnded(self.call_id, self._since_start(), reason, detail)
        self._ended.set()
        self._wake()

    async def _main(self) -> None:
        assert self._tg is not None
        tg = self._tg
        tg.create_task(self._read_transport())
        tg.create_task(self._transcribe())
        tg.create_task(self._turn_model.run())
        self._start_greeting()
        await self._loop()
        raise _CallOver

    async def _cleanup(self) -> None:
        assert self.ended is not None
        now = self.clock.now()
        for handle in list(self._live.values()):
            if handle.played is not None:  # played to the end just before the call ended
                await self._on_played(handle, now)
        playing = self._playout.playing
        if playing is not None and playing.first_sent is not None:
            # The caller hung up mid-reply: keep what they heard.
            self._record_reply(playing, interrupted=True, now=now)
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
        at = self._since_start()  # the call's length: the hooks' tools run after it
        try:
            if self._ending_tools and self.ended.reason not in NO_TOOLS:
                # The line is closed: the caller is not held while the hooks' tools run.
                await self.ending_hooks.run_tools(self.ended.reason)
        except Exception:  # a bug in a hook must not lose the call's record
            log.exception("call %s: call.ending hook failed", self.call_id)
        finally:  # even when cancelled while the tools run: the call's record is written
            self.ended = CallEnded(
                self.call_id, at, self.ended.reason, self.ended.detail,
                {
                    "messages": [m.to_openai() for m in self.history.messages()],
                    "usage": dict(self._records.usage),
                },
            )  # fmt: skip
            self._emit(self.ended)
            log.info(
                "call %s ended: %s %s", self.call_id, self.ended.reason.value, self.ended.detail
            )

    # --- the loop ----------------------------------------------------------------------------

    async def _loop(self) -> None:
        """The one consumer of the inbox: owns the turn state and the replies."""
        inbox = self._inbox
        while self.ended is None:
            event = await inbox.get()
            now = self.clock.now()
            await self._handle(event, now)
            if self.ended is None:
                await self._check_deadlines(self.clock.now())
                self._arm_timer()

    async def _handle(self, event: InboxEvent, now: float) -> None:
        if not isinstance(event, CallerAudio):
            log.debug(
                "call %s: %.3f %s (%s)", self.call_id, now - self._t0, event, self.turns.state
            )
        if isinstance(event, CallerAudio):
            await self._on_audio(event.audio, now)
        elif isinstance(event, MarkEchoed):
            self._playout.on_mark(event.name)
        elif isinstance(event, TranscriptArrived):
            result = event.result
            if result.text:
                self._emit(
                    TranscriptReceived(self.call_id, now - self._t0, result.text, result.is_final)
                )
            await self._apply(self.turns.transcript(result, now), now)
        elif isinstance(event, Verdict):
            actions = self.turns.turn_model_result(event.probability, event.speech_end, now)
            await self._apply(actions, now)
        elif isinstance(event, Audible):
            await self._on_audible(event.reply, event.at)
        elif isinstance(event, Played):
            handle = self._live.get(event.playing.reply)
            if handle is not None:
                await self._on_played(handle, now)
        elif isinstance(event, CallerGone):
            if self._ending is not None:  # gone during the last line: the call was ending anyway
                self._finish(*self._ending[1:])
            else:
                self._finish(event.reason, event.detail)
        elif isinstance(event, StageExhausted):
            self._give_up(event.stage, event.error)
        elif isinstance(event, HandoffFailed):
            self._start_fixed_line(TRANSFER_FAILED)
        elif isinstance(event, Dtmf):
            await self._on_dtmf(event.digit, now)
        elif isinstance(event, Say | AddMessage | Mute | Transfer):
            await self._on_control(event, now)

    async def _post(self, event: InboxEvent) -> None:
        await self._inbox.put(event)

    def _wake(self) -> None:
        try:
            self._inbox.put_nowait(TimerDue())
        except asyncio.QueueFull:
            pass  # the loop has events to handle and checks its deadlines after each

    # --- timers ------------------------------------------------------------------------------

    def _deadline(self) -> float:
        """The earliest time at which a timer has something to do."""
        assistant = self.assistant
        if self._ending is not None:  # the last line is said whole, whatever else is due
            return self._ending[0]
        deadline = self._t0 + assistant.max_duration_seconds
        if self._playout.playing is None:
            deadline = min(deadline, self._last_activity + assistant.silence_timeout_seconds)
        if self._keypad_due is not None:
            deadline = min(deadline, self._keypad_due)
        idle = self._idle_hook()
        if idle is not None:
            deadline = min(deadline, idle[1])
        turn = self.turns.next_deadline()
        return deadline if turn is None else min(deadline, turn)

    async def _check_deadlines(self, now: float) -> None:
        assistant = self.assistant
        if self._ending is not None:
            until, reason, detail = self._ending
            if now >= until:
                log.warning("call %s: the call.ending line took too long", self.call_id)
                self._finish(reason, detail)
            return
        if now - self._t0 >= assistant.max_duration_seconds:
            await self._end(EndedReason.EXCEEDED_MAX_DURATION)
            return
        if self._playout.playing is not None:
            self._last_activity = now
        elif now - self._last_activity >= assistant.silence_timeout_seconds:
            await self._end(EndedReason.SILENCE_TIMED_OUT)
            return
        if self._keypad_due is not None and now >= self._keypad_due:
            await self._keypad_turn(now)
        idle = self._idle_hook()
        if idle is not None and now >= idle[1]:
            await self._run_idle_hook(idle[0])
        deadline = self.turns.next_deadline()
        if deadline is not None and now >= deadline:
            await self._apply(self.turns.tick(now), now)

    def _arm_timer(self) -> None:
        """One loop timer for the earliest deadline. A later deadline keeps the armed timer
        (it fires early, finds nothing due and re-arms): no re-arming on every frame."""
        now = self.clock.now()
        # A deadline already passed is one the turn machine keeps open until its next input
        # (it has been ticked): look again shortly rather than spin.
        deadline = max(self._deadline(), now + _RECHECK_SECONDS)
        if deadline >= self._timer_at and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        delay = deadline - now
        self._timer = asyncio.get_running_loop().call_later(delay, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        self._wake()

    # --- inbound -----------------------------------------------------------------------------

    async def _read_transport(self) -> None:
        transport = self.transport
        post = self._post
        while True:
            try:
                event = await transport.receive()
            except TransportClosed as exc:
                reason = (
                    EndedReason.MALFORMED_STREAM
                    if exc.malformed
                    else EndedReason.CUSTOMER_ENDED_CALL
                )
                await post(CallerGone(reason, exc.detail))
                return
            if isinstance(event, AudioReceived):
                await post(CallerAudio(event.audio))
            elif isinstance(event, MarkReceived):
                await post(MarkEchoed(event.name))
            elif isinstance(event, StreamStopped):
                await post(CallerGone(EndedReason.CUSTOMER_ENDED_CALL, "stream stopped"))
                return
            elif isinstance(event, DtmfReceived):
                await post(Dtmf(event.digit))

    async def _transcribe(self) -> None:
        exhausted = await self._stt.run()
        if exhausted is not None:
            await self._post(StageExhausted("stt", exhausted))

    async def _post_transcript(self, result: Transcript) -> None:
        await self._post(TranscriptArrived(result))

    async def _post_verdict(self, probability: float, request: RunTurnModel) -> None:
        await self._post(Verdict(probability, request.speech_end))

    async def _on_audio(self, audio: bytes, now: float) -> None:
        """The per-frame hot path: STT (queued, never awaited), VAD, the turn machine."""
        self._stt.feed(audio)
        # The turn machine also measures speech by the audio itself: frames held up together (a
        # stall of this loop, the network's or the caller's) are handled in one burst, in which
        # no clock time passes.
        self._vad_pending += self.audio_format.seconds(len(audio))
        pcm = self.audio_format.to_pcm16(audio)
        if self.engines.turn_detector is not None:
            self._turn_model.add_audio(pcm)
        probability = self._vad.process(pcm)
        if probability is None:
            return
        seconds, self._vad_pending = self._vad_pending, 0.0
        if probability >= self.turns.config.vad_threshold:
            self._last_activity = now
        actions = self.turns.vad(probability, now, seconds)
        if actions:
            await self._apply(actions, now)
        speaking = self.turns.state is TurnState.USER_SPEAKING
        if speaking != self._caller_speaking:
            self._caller_speaking = speaking
            event = SpeechStarted if speaking else SpeechStopped
            self._emit(event(self.call_id, now - self._t0))

    # --- keypad ------------------------------------------------------------------------------

    async def _on_dtmf(self, digit: str, now: float) -> None:
        """Gather keypad digits; a delimiter, or `timeoutSeconds` without a new digit, ends
        the input, which is then the caller's turn (`_keypad_turn`)."""
        plan = self.assistant.keypad_input_plan
        if not plan.enabled:
            log.info("call %s: dtmf %s (keypad input off)", self.call_id, digit)
            return
        self._last_activity = now  # typing is not silence
        if digit in plan.delimiters:
            await self._keypad_turn(now)
            return
        self._keypad += digit
        self._keypad_due = now + plan.timeout_seconds
        if len(self._keypad) >= _MAX_KEYPAD_DIGITS:
            await self._keypad_turn(now)  # bounded: a stream of keys with no delimiter

    async def _keypad_turn(self, now: float) -> None:
        """The gathered digits are the caller's turn, answered like a spoken one. Over the
        audible assistant they interrupt it as a barge-in does: the caller has taken the turn
        (a key press is never an acknowledgement, so nothing is left to decide)."""
        digits, self._keypad, self._keypad_due = self._keypad, "", None
        if not digits or self._giving_up:
            return
        if any(handle.ending is not None for handle in self._live.values()):
            log.info("call %s: keypad %s ignored: the call is ending", self.call_id, digits)
            return
        # A greeting that speech may not interrupt is not cut by keys either: the answer
        # to the digits follows it.
        if self._live and (self._playout.playing is None or self.turns.interruptible):
            await self._interrupt(Interrupt(now), now)
            # Unlike speech, the input is complete: no backoff for the caller to go on.
            self._backoff_until = now
            await self._apply(self.turns.set_assistant_audible(False, now), now)
        # The turn machine did not see this turn: it is told a reply is under way, so the
        # caller's speech over it is a barge-in and the reply's end returns it to listening.
        await self._apply(self.turns.assistant_started(now), now)
        self._commit(CommitTurn(digits, now, None), now)

    # --- live control --------------------------------------------------------------------------

    async def _on_control(self, event: ControlEvent, now: float) -> None:
        if isinstance(event, Mute):
            self._out.muted = event.muted
            log.info("call %s: assistant %s", self.call_id, "muted" if event.muted else "unmuted")
            return
        if isinstance(event, AddMessage):
            # Conversation has no public append for a system message; its own helper is used.
            self.history._append(ChatMessage(event.role, event.content))
            role = "bot" if event.role == "assistant" else event.role  # Vapi's message roles
            self._emit(MessageAdded(self.call_id, now - self._t0, role, event.content))
            if not event.trigger or self._giving_up:
                return
            handle = self._start_reply("", self.history.messages())
            handle.reply.committed_at = now
            handle.reply.release()
        elif isinstance(event, Say):
            if self._giving_up:
                return  # the apology and the end are on their way
            ending = any(h.ending is not None for h in self._live.values())
            if event.interrupt and not ending:
                await self._cut_assistant(now)
            end = event.end_reason or (
                EndedReason.MANUALLY_CANCELED,
                "ended through the API once a say was heard",
            )
            handle = self._start_fixed_line(
                event.text, end if event.end_call_after else None, cache=False
            )
            handle.interruptible = event.interruptible
        else:
            self._start_transfer(event)
        # Speaking without a caller turn, as the greeting does: the caller's speech over it is a
        # barge-in, and its end returns the turn to the caller.
        self._last_activity = now
        await self._apply(self.turns.assistant_started(now), now)

    async def _cut_assistant(self, now: float) -> None:
        """Stop what the assistant is saying, as a barge-in would (what was heard is kept),
        for a `say` that replaces it. Nothing the caller is saying is touched."""
        for handle in list(self._live.values()):
            if handle.played is not None:
                await self._on_played(handle, now)
        playing = self._playout.take()
        if playing is not None:
            self._record_reply(playing, interrupted=True, now=now)
        for handle in list(self._live.values()):
            self._cancel(handle)
        self._speculative = None
        await self._playout.clear(now)
        await self._apply(self.turns.set_assistant_audible(False, now), now)
        await self._apply(self.turns.reply_finished(now), now)

    def _start_transfer(self, event: Transfer) -> None:
        """The line is said whole, then the call is redirected and ends; if the telephony side
        refuses, the caller hears so and the call goes on (as for `transferCall`)."""
        control = self.call_control
        assert control is not None  # `transfer` refuses a call without one
        destination = TransferDestination(event.number, message=event.message)
        call = ToolCall(
            f"control-transfer-{self._replies + 1}",
            "transferCall",
            json.dumps({"destination": {"type": "number", "number": event.number}}),
        )

        async def redirect() -> None:
            await control.transfer(destination)

        reason = (EndedReason.ASSISTANT_FORWARDED_CALL, f"transferred to {event.number} (API)")
        handle = self._start_fixed_line(
            event.message or DEFAULT_TRANSFER_MESSAGE, reason, cache=not event.message
        )
        handle.handoff = Handoff(call, redirect)

    # --- idle hooks ------------------------------------------------------------------------------

    def _idle_hook(self) -> tuple[int, float] | None:
        """The `customer.speech.timeout` hook due first, and when: counted from the last sign of
        life (the caller's voice, the end of the assistant's words), only while both are quiet
        and no turn is under way."""
        if (
            not self._hook_counts
            or self._live
            or self._playout.playing is not None
            or self._keypad
            or self._giving_up
            or self.turns.state is not TurnState.LISTENING
        ):
            return None
        due: tuple[int, float] | None = None
        for index, hook in enumerate(self._idle_hooks):
            if self._hook_counts[index] >= hook.options.trigger_max_count:
                continue
            at = self._last_activity + hook.options.timeout_seconds
            if due is None or at < due[1]:
                due = (index, at)
        return due

    async def _run_idle_hook(self, index: int) -> None:
        """Say the hook's next message (Vapi picks one at random; in turn is predictable), then
        end the call if it runs `endCall`: once the words have been heard."""
        hook = self._idle_hooks[index]
        count = self._hook_counts[index]
        self._hook_counts[index] = count + 1
        ending = any(action.type == "tool" for action in hook.do)
        reason = (EndedReason.ASSISTANT_ENDED_CALL, "customer.speech.timeout hook")
        says = [action.exact for action in hook.do if action.type == "say" and action.exact]
        log.info("call %s: idle hook %d fired (%d)", self.call_id, index, count + 1)
        if not says:
            await self._end(*reason)
            return
        # Several `say` actions are said as one line, each its next message.
        text = " ".join(exact[count % len(exact)] for exact in says)
        self._start_fixed_line(text, reason if ending else None)
        now = self.clock.now()
        self._last_activity = now
        self.turns.assistant_started(now)  # as the greeting: speech over it is a barge-in

    def _caller_spoke(self) -> None:
        """`triggerResetMode: onUserSpeech`: the caller's turn starts those hooks' counts anew."""
        for index, hook in enumerate(self._idle_hooks):
            if hook.options.trigger_reset_mode == "onUserSpeech":
                self._hook_counts[index] = 0

    # --- turn actions ------------------------------------------------------------------------

    async def _apply(self, actions: list[TurnAction], now: float) -> None:
        for action in actions:
            log.debug("call %s: %.3f %s", self.call_id, now - self._t0, action)
            if isinstance(action, FinalizeStt):
                self._stt.finalize()
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
        self._caller_spoke()
        self.history.add_user(action.text)
        self._emit(MessageAdded(self.call_id, now - self._t0, "user", action.text))
        handle = self._speculative
        self._speculative = None
        if handle is None or handle.reply.user_text != action.text:
            if handle is not None:
                self._cancel(handle)
            handle = self._start_reply(action.text, self.history.messages())
        handle.commit = action
        handle.reply.committed_at = now
        handle.reply.release()

    def _cancel_speculation(self) -> None:
        if self._speculative is not None:
            self._cancel(self._speculative)
            self._speculative = None

    async def _interrupt(self, action: Interrupt, now: float) -> None:
        for handle in list(self._live.values()):
            if handle.played is not None:  # it ended just before the caller spoke: all heard
                await self._on_played(handle, now)
        playing = self._playout.take()
        # What was heard is fixed now, before anything else can be sent.
        heard = self._record_reply(playing, interrupted=True, now=now) if playing else ""
        for handle in list(self._live.values()):
            self._cancel(handle)
        self._speculative = None
        await self._playout.clear(now)
        if playing is None:
            return
        self._backoff_until = now + self.assistant.stop_speaking_plan.backoff_seconds
        self._emit(BargeIn(self.call_id, now - self._t0, action.onset - self._t0, heard))
        log.info("call %s: barge-in %.0f ms after onset", self.call_id, (now - action.onset) * 1e3)

    # --- replies -----------------------------------------------------------------------------

    def _start_reply(self, user_text: str, messages: list[ChatMessage] | None) -> _ReplyHandle:
        assert self._tg is not None
        self._replies += 1
        reply = Reply(self._replies, user_text, self.clock, audio_format=self.audio_format)
        handle = _ReplyHandle(reply)
        self._live[reply] = handle
        handle.task = self._tg.create_task(self._run_reply(handle, messages))
        return handle

    def _start_fixed_line(
        self, text: str, ending: tuple[EndedReason, str] | None = None, *, cache: bool = True
    ) -> _ReplyHandle:
        """A line said from the greeting cache (greeting, apology, failed transfer); `cache`:
        False for a line of one call (a `say`), synthesized but not kept."""
        handle = self._start_reply("", None)
        handle.reply.text = text
        handle.ending = ending
        handle.cached = cache
        handle.reply.release()
        return handle

    def _cancel(self, handle: _ReplyHandle) -> None:
        self._live.pop(handle.reply, None)
        handle.cancel()
        if handle.ending is not None:
            # Its words were to end the call (apology, goodbye): nothing else will, so end now.
            self._finish(*handle.ending)

    def _start_greeting(self) -> None:
        assistant = self.assistant
        if assistant.first_message_mode == "assistant-speaks-first-with-model-generated-message":
            self._start_model_greeting()
            return
        text = assistant.first_message
        if not text or assistant.first_message_mode != "assistant-speaks-first":
            return
        handle = self._start_fixed_line(text)
        handle.reply.is_greeting = True

    def _start_model_greeting(self) -> None:
        """The model's reply to the prompt alone (no caller turn), asked for as the call starts
        and streamed like any reply: it is the greeting (interruptible as the greeting is, in
        the history as the assistant's first message), never kept in the greeting cache."""
        messages = self.history.messages()
        if not messages:
            # Nothing to generate from (and an empty request is refused): start listening.
            log.info("call %s: no prompt for a model-generated greeting", self.call_id)
            return
        reply = self._start_reply("", messages).reply
        reply.is_greeting = True
        now = self.clock.now()
        reply.committed_at = now
        reply.release()
        # The assistant has the floor while the model answers: the caller's "hello?" meanwhile
        # is answered after the greeting (as under a greeting that cannot be interrupted).
        self.turns.assistant_started(now)

    async def _run_reply(self, handle: _ReplyHandle, messages: list[ChatMessage] | None) -> None:
        reply = handle.reply
        async with asyncio.TaskGroup() as tg:
            if messages is None:
                tg.create_task(self._produce_fixed_line(handle))
            else:
                tg.create_task(self._produce(reply, messages))
            await reply.released.wait()
            await self.clock.sleep_until(self._backoff_until)
            async with self._playout.lock:
                playing = await self._playout.play(
                    reply, functools.partial(self._post_audible, reply)
                )
                self._playout.playing = None
                handle.played = playing
        await self._post(Played(playing))

    async def _post_audible(self, reply: Reply, at: float) -> None:
        await self._post(Audible(reply, at))

    async def _produce_fixed_line(self, handle: _ReplyHandle) -> None:
        """Fixed lines (greeting, apology): from the cache, synthesized once per voice."""
        reply = handle.reply
        try:
            personal = reply.is_greeting and self.assistant.personal_greeting
            cached = await self.engines.greetings.get_or_synthesize(
                self._tts, reply.text, self.audio_format, keep=handle.cached and not personal
            )
        except ProviderError as exc:
            if handle.ending is not None:  # not even the apology can be said: just end
                self._finish(*handle.ending)
                return
            if isinstance(exc, ProvidersExhausted):
                await self._post(StageExhausted(exc.stage, exc))
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
            await self._post(StageExhausted(exc.stage, exc))
        except ProviderError as exc:
            # Failed after part of the answer was produced (already a ProviderFailed event):
            # the caller hears that part and the call goes on.
            log.warning("call %s: reply %d cut short: %s", self.call_id, reply.index, exc)
            if not reply.done:
                await reply.finish()

    def _give_up(self, stage: Stage, exc: ProviderError) -> None:
        """Nothing is left to try for `stage`: say the apology, then end the call."""
        if self._giving_up or self.ended is not None:
            return
        self._giving_up = True
        log.error("call %s: no %s provider left: %s", self.call_id, stage, exc)
        self._cancel_speculation()
        self._start_fixed_line(APOLOGY, (FAILED_REASONS[stage], str(exc)))

    async def _on_audible(self, reply: Reply, at: float) -> None:
        handle = self._live.get(reply)
        playing = self._playout.playing
        if handle is None or playing is None or playing.reply is not reply:
            return  # cut off before the loop heard of it
        self._emit(AssistantSpeechStarted(self.call_id, at - self._t0))
        self.turns.interruptible = (
            handle.ending is None
            and handle.interruptible
            and (not reply.is_greeting or self.assistant.first_message_interruptions_enabled)
        )
        now = self.clock.now()
        if reply.is_greeting:
            self.turns.assistant_started(now)
        await self._apply(self.turns.set_assistant_audible(True, now), now)

    async def _on_played(self, handle: _ReplyHandle, now: float) -> None:
        """The reply was played to its end: record it, then whatever was to follow it."""
        playing = handle.played
        assert playing is not None
        self._live.pop(handle.reply, None)
        handle.played = None
        reply = handle.reply
        self._record_reply(playing, interrupted=False, now=now, commit=handle.commit)
        await self._apply(self.turns.set_assistant_audible(False, now), now)
        await self._apply(self.turns.reply_finished(now), now)
        self._last_activity = now
        if handle.ending is not None:
            if handle.handoff is None:
                await self._end(*handle.ending)
            else:
                assert self._tg is not None
                self._tg.create_task(self._hand_off(handle))
            return
        phrase = find_end_call_phrase(reply.text, self.assistant.end_call_phrases)
        if phrase is not None:
            await self._end(EndedReason.ASSISTANT_SAID_END_CALL_PHRASE, phrase)

    async def _end(self, reason: EndedReason, detail: str = "") -> None:
        """End the call as the assistant decides, the `call.ending` hooks' line said first (what
        the assistant was saying is cut as a barge-in would): the call ends once it has been
        heard. Without such a line, or once it has been said, now."""
        if self.ended is not None:
            return
        text = None
        if self._ending is None and not self._giving_up and reason in SPEAKABLE:
            text = self.ending_hooks.line(reason)
        if text is None:
            self._finish(reason, detail)
            return
        now = self.clock.now()
        until = now + _ENDING_LINE_SECONDS + _ENDING_LINE_SECONDS_PER_CHAR * len(text)
        self._ending = (until, reason, detail)
        log.info("call %s: call.ending hook before %s", self.call_id, reason.value)
        await self._cut_assistant(now)
        if self.ended is not None:  # what was cut was itself to end the call
            return
        handle = self._start_fixed_line(text, (reason, detail), cache=False)
        handle.interruptible = False
        self._last_activity = now
        await self._apply(self.turns.assistant_started(now), now)

    def _end_after(
        self, reply: Reply, reason: EndedReason, detail: str, handoff: Handoff | None
    ) -> None:
        """End the call once `reply` has been heard (after `handoff`, if any)."""
        handle = self._live.get(reply)
        if handle is None:
            return
        handle.ending = (reason, detail)
        handle.handoff = handoff
        playing = self._playout.playing
        if playing is not None and playing.reply is reply:
            self.turns.interruptible = False  # the last words must be heard whole

    async def _hand_off(self, handle: _ReplyHandle) -> None:
        """Run the handoff (a transfer), then end; when it fails the call goes on."""
        assert handle.handoff is not None and handle.ending is not None
        try:
            await handle.handoff.action()
        except CallControlError as exc:
            call = handle.handoff.tool_call
            self._emit(
                ToolCallFailed(self.call_id, self._since_start(), call.id, call.name, str(exc))
            )
            log.warning("call %s: transfer failed: %s", self.call_id, exc)
            await self._post(HandoffFailed(handle.reply))
            return
        self._finish(*handle.ending)

    def _record_reply(
        self,
        playing: Playing,
        *,
        interrupted: bool,
        now: float,
        commit: CommitTurn | None = None,
    ) -> str:
        """Put the reply in the history and the call record: all of it, or what was heard."""
        if commit is None:
            handle = self._live.get(playing.reply)
            commit = handle.commit if handle is not None else None
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
