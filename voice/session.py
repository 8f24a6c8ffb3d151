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

Keypad digits (`keypadInputPlan`, `voice.session_keypad`) are gathered until a delimiter or
`timeoutSeconds` without a new one, then committed as the caller's turn, interrupting the
assistant as a barge-in would. Idle hooks (`customer.speech.timeout`, `voice.session_idle`) say
their next message after that long with both sides quiet and no turn under way, up to their
count; `silenceTimeoutSeconds` still ends the call. How the call ends (`call.ending` lines,
endings after a reply or a handoff, the close) is `voice.session_ending`; how it greets,
`voice.session_greeting`.

Live control (`say`, `add_message`, `set_muted`, `transfer`, and `hang_up`) posts a command to the
inbox and returns at once (`ControlRefused` when the call has ended, cannot do it, or the inbox
is full): the loop carries it out (`voice.session_control`) between two events like anything else.

Its other parts: `voice.session_replies` (the replies in flight, one handle each),
`voice.session_inbound` (the transport reader), `voice.session_timer` (the one loop timer),
`voice.transcriber` (audio to the STT, failover), `voice.playout` (paced, marked audio out),
`voice.reply_record` (what was heard into the history and the record), `voice.turn_model`
(smart-turn off the loop), `voice.session_config` (engines, options).

Audio is in the call's format, the one its transport declares (`audio_format`: 16 kHz PCM16 for
a browser; μ-law 8 kHz on the phone, and for a transport that declares none): the transcriber and
the voices are bound to it (`Engines.in_format`), the VAD and the turn model get PCM16 at its
rate, and playout sizes its chunks by it. Nothing here assumes telephone audio.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Literal

from media.transport import CallTransport, TransportClosed
from voice.assistant import Assistant
from voice.clock import Clock, MonotonicClock
from voice.ending_hooks import EndingHooks
from voice.errors import ProviderError
from voice.events import (
    CallEnded,
    CallEvent,
    CallStarted,
    MessageAdded,
    ProviderFailed,
    SpeechStarted,
    SpeechStopped,
    TranscriptReceived,
)
from voice.fallback import FallbackLlm, FallbackTts, Stage, breaker_key, candidates
from voice.history import Conversation
from voice.mute_gate import MuteGate
from voice.playout import Playout
from voice.ports import CallControl, EventSink, ReportsReconnects
from voice.reply_record import ReplyRecorder
from voice.server_messages import tool_context
from voice.session_bookkeeping import ReplyBookkeeping
from voice.session_config import (
    APOLOGY,
    FAILED_REASONS,
    TRANSFER_FAILED,
    Engines,
    SessionOptions,
    turn_config,
)
from voice.session_control import LiveControl
from voice.session_ending import CallEnding
from voice.session_events import (
    AddMessage,
    Audible,
    CallerAudio,
    CallerGone,
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
from voice.session_greeting import start_greeting
from voice.session_idle import IdleHooks
from voice.session_inbound import read_transport
from voice.session_keypad import KeypadInput
from voice.session_replies import Replies
from voice.session_timer import LoopTimer
from voice.tool_turns import ToolTurns
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


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception in a (possibly nested) group, as the tasks raised it."""
    first = group.exceptions[0]
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


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
        self._timer = LoopTimer(self._wake)
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
        self._last_activity = 0.0
        self._caller_speaking = False
        self._vad_pending = 0.0  # caller audio (seconds) fed to the VAD since its last answer
        self._giving_up = False  # a stage has no provider left: apologise, then end
        self._keypad = KeypadInput(assistant.keypad_input_plan)
        self._idle = IdleHooks(assistant.hooks, call_id=call_id)
        self._ending = CallEnding(self)
        self._heard = ReplyBookkeeping(self)
        self._control = LiveControl(self)
        self.call_control = call_control
        self._tool_turns = ToolTurns.for_assistant(
            assistant,
            call_id=call_id,
            history=self.history,
            emit=self._emit,
            since_start=self._since_start,
            finalize=self._ending.end_after,
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
        llm = FallbackLlm(
            candidates("llm", engines.llm, engines.llm_fallbacks),
            breakers,
            self.clock,
            self._on_provider_failure,
        )
        tts = FallbackTts(
            candidates("tts", engines.tts, engines.tts_fallbacks),
            breakers,
            self.clock,
            self._on_provider_failure,
        )
        self._replies = Replies(
            call_id=call_id,
            assistant=assistant,
            clock=self.clock,
            audio_format=audio_format,
            playout=self._playout,
            llm=llm,
            tts=tts,
            greetings=engines.greetings,
            tool_turns=self._tool_turns,
            task_group=lambda: self._tg,
            post=self._post,
            finish=self._finish,
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
            self._ending.run_tools = False
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
        except* TransportClosed as closed:
            # A send met the closed line before the reader did: the caller left (or their
            # stream was refused), which is not a failure of the server.
            gone = _first_leaf(closed)
            assert isinstance(gone, TransportClosed)
            malformed = gone.malformed
            reason = EndedReason.MALFORMED_STREAM if malformed else EndedReason.CUSTOMER_ENDED_CALL
            self._finish(reason, gone.detail)
        except* Exception as group:  # the session boundary: a bug ends this call, not the server
            log.error("call %s failed", self.call_id, exc_info=group)
            self._finish(EndedReason.SERVER_ERROR, repr(group.exceptions[0]))
        finally:
            self._tg = None
            self._timer.cancel()
            if self.ended is None:  # cancelled from outside: the server is shutting down
                self._ending.run_tools = False
                self._finish(EndedReason.SERVER_SHUTDOWN, "server shutting down")
            await self._ending.close()
        assert self.ended is not None
        return self.ended

    def hang_up(self, reason: EndedReason, detail: str = "") -> None:
        """End the call from outside (API, drain). Safe to call at any time, any number of times."""
        self._finish(reason, detail)

    # --- live control (`POST /call/{id}/control`, `voice.session_control`) ----------------------
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
        self._control.post(Say(text, end_call_after, interruptible, interrupt, end_reason))

    def add_message(
        self, role: Literal["system", "user", "assistant"], content: str, *, trigger: bool = True
    ) -> None:
        """Add a message to the model's context; `trigger`: the assistant answers now."""
        self._control.post(AddMessage(role, content, trigger))

    def set_muted(self, muted: bool) -> None:
        """While muted the assistant goes on (it hears, answers and is recorded) but none of its
        audio reaches the caller."""
        self._control.post(Mute(muted))

    def transfer(self, number: str, message: str = "") -> None:
        """Say `message` (Vapi's default line when empty), then redirect the call to `number`."""
        if self.call_control is None:
            raise ControlRefused(
                f"call {self.call_id} cannot be transferred: no telephony control "
                "(a web call, or a number without Twilio credentials)",
                reason="unsupported",
            )
        self._control.post(Transfer(number, message))

    def _finish(self, reason: EndedReason, detail: str = "") -> None:
        if self.ended is not None:
            return
        self.ended = CallEnded(self.call_id, self._since_start(), reason, detail)
        self._ended.set()
        self._wake()

    async def _main(self) -> None:
        assert self._tg is not None
        tg = self._tg
        tg.create_task(read_transport(self.transport, self._post))
        tg.create_task(self._transcribe())
        tg.create_task(self._turn_model.run())
        start_greeting(
            self.assistant,
            self._replies,
            history=self.history,
            turns=self.turns,
            clock=self.clock,
            call_id=self.call_id,
        )
        await self._loop()
        raise _CallOver

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
            await self._heard.audible(event.reply, event.at)
        elif isinstance(event, Played):
            handle = self._replies.live.get(event.playing.reply)
            if handle is not None:
                await self._heard.played(handle, now)
        elif isinstance(event, CallerGone):
            line = self._ending.line
            if line is not None:  # gone during the last line: the call was ending anyway
                self._finish(*line[1:])
            else:
                self._finish(event.reason, event.detail)
        elif isinstance(event, StageExhausted):
            self._give_up(event.stage, event.error)
        elif isinstance(event, HandoffFailed):
            self._replies.start_fixed_line(TRANSFER_FAILED)
        elif isinstance(event, Dtmf):
            await self._on_dtmf(event.digit, now)
        elif isinstance(event, Say | AddMessage | Mute | Transfer):
            await self._control.handle(event, now)

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
        if self._ending.line is not None:  # the last line is said whole, whatever else is due
            return self._ending.line[0]
        deadline = self._t0 + assistant.max_duration_seconds
        if self._playout.playing is None:
            deadline = min(deadline, self._last_activity + assistant.silence_timeout_seconds)
        if self._keypad.due is not None:
            deadline = min(deadline, self._keypad.due)
        idle = self._idle_hook()
        if idle is not None:
            deadline = min(deadline, idle[1])
        turn = self.turns.next_deadline()
        return deadline if turn is None else min(deadline, turn)

    async def _check_deadlines(self, now: float) -> None:
        assistant = self.assistant
        if self._ending.line is not None:
            self._ending.check_line(now)
            return
        if now - self._t0 >= assistant.max_duration_seconds:
            await self._ending.end(EndedReason.EXCEEDED_MAX_DURATION)
            return
        if self._playout.playing is not None:
            self._last_activity = now
        elif now - self._last_activity >= assistant.silence_timeout_seconds:
            await self._ending.end(EndedReason.SILENCE_TIMED_OUT)
            return
        if self._keypad.due is not None and now >= self._keypad.due:
            await self._keypad_turn(now)
        idle = self._idle_hook()
        if idle is not None and now >= idle[1]:
            await self._run_idle_hook(idle[0])
        deadline = self.turns.next_deadline()
        if deadline is not None and now >= deadline:
            await self._apply(self.turns.tick(now), now)

    def _arm_timer(self) -> None:
        now = self.clock.now()
        self._timer.arm(now, self._deadline())

    # --- inbound -----------------------------------------------------------------------------

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
        self._caller_speech(self.turns.state is TurnState.USER_SPEAKING, now)

    def _caller_speech(self, speaking: bool, now: float) -> None:
        """Vapi's user `speech-update`, each start with its stop. Checked on every VAD answer,
        and also at a barge-in and a commit: a transcript can interrupt and commit in one
        event, and the caller's turn must not go unreported because no VAD answer saw it."""
        if speaking != self._caller_speaking:
            self._caller_speaking = speaking
            event = SpeechStarted if speaking else SpeechStopped
            self._emit(event(self.call_id, now - self._t0))

    # --- keypad (`voice.session_keypad`) and idle hooks (`voice.session_idle`) ---------------

    async def _on_dtmf(self, digit: str, now: float) -> None:
        """Gather keypad digits; a delimiter, or `timeoutSeconds` without a new digit, ends
        the input, which is then the caller's turn (`_keypad_turn`)."""
        if not self.assistant.keypad_input_plan.enabled:
            log.info("call %s: dtmf %s (keypad input off)", self.call_id, digit)
            return
        self._last_activity = now  # typing is not silence
        if self._keypad.press(digit, now):
            await self._keypad_turn(now)

    async def _keypad_turn(self, now: float) -> None:
        """The gathered digits are the caller's turn, answered like a spoken one. Over the
        audible assistant they interrupt it as a barge-in does: the caller has taken the turn
        (a key press is never an acknowledgement, so nothing is left to decide)."""
        digits = self._keypad.take()
        if not digits or self._giving_up:
            return
        live = self._replies.live
        if any(handle.ending is not None for handle in live.values()):
            log.info("call %s: keypad %s ignored: the call is ending", self.call_id, digits)
            return
        # A greeting that speech may not interrupt is not cut by keys either: the answer
        # to the digits follows it.
        if live and (self._playout.playing is None or self.turns.interruptible):
            await self._heard.interrupt(Interrupt(now), now)
            # Unlike speech, the input is complete: no backoff for the caller to go on.
            self._replies.backoff_until = now
            await self._apply(self.turns.set_assistant_audible(False, now), now)
        # The turn machine did not see this turn: it is told a reply is under way, so the
        # caller's speech over it is a barge-in and the reply's end returns it to listening.
        await self._apply(self.turns.assistant_started(now), now)
        self._commit(CommitTurn(digits, now, None), now)

    def _idle_hook(self) -> tuple[int, float] | None:
        """The `customer.speech.timeout` hook due first, and when: counted from the last sign of
        life (the caller's voice, the end of the assistant's words), only while both are quiet
        and no turn is under way."""
        if (
            not self._idle.counts
            or self._replies.live
            or self._playout.playing is not None
            or self._keypad.digits
            or self._giving_up
            or self.turns.state is not TurnState.LISTENING
        ):
            return None
        return self._idle.due(self._last_activity)

    async def _run_idle_hook(self, index: int) -> None:
        """Say the hook's next message, then end the call if it runs `endCall`: once the words
        have been heard."""
        text, ending = self._idle.fire(index)
        reason = (EndedReason.ASSISTANT_ENDED_CALL, "customer.speech.timeout hook")
        if text is None:
            await self._ending.end(*reason)
            return
        self._replies.start_fixed_line(text, reason if ending else None)
        now = self.clock.now()
        self._last_activity = now
        self.turns.assistant_started(now)  # as the greeting: speech over it is a barge-in

    # --- turn actions ------------------------------------------------------------------------

    async def _apply(self, actions: list[TurnAction], now: float) -> None:
        replies = self._replies
        for action in actions:
            log.debug("call %s: %.3f %s", self.call_id, now - self._t0, action)
            if isinstance(action, FinalizeStt):
                self._stt.finalize()
            elif isinstance(action, RunTurnModel):
                self._turn_model.ask(action)
            elif isinstance(action, Speculate | CommitTurn) and self._giving_up:
                continue  # no new turns once the call is apologising its way out
            elif isinstance(action, Speculate):
                replies.cancel_speculation()
                messages = [*self.history.messages(), ChatMessage("user", action.text)]
                replies.speculative = replies.start(action.text, messages)
            elif isinstance(action, CancelSpeculation | DiscardTurn):
                replies.cancel_speculation()
            elif isinstance(action, CommitTurn):
                self._caller_speech(False, now)
                self._commit(action, now)
            elif isinstance(action, PauseOutput):
                self._playout.pause()
            elif isinstance(action, ResumeOutput):
                self._playout.resume()
            elif isinstance(action, Interrupt):
                self._caller_speech(True, now)
                await self._heard.interrupt(action, now)

    def _commit(self, action: CommitTurn, now: float) -> None:
        replies = self._replies
        self._idle.caller_spoke()
        self.history.add_user(action.text)
        self._emit(MessageAdded(self.call_id, now - self._t0, "user", action.text))
        handle = replies.speculative
        replies.speculative = None
        if handle is None or handle.reply.user_text != action.text:
            if handle is not None:
                replies.cancel(handle)
            handle = replies.start(action.text, self.history.messages())
        handle.commit = action
        handle.reply.committed_at = now
        handle.reply.release()

    # --- no provider left ---------------------------------------------------------------------

    def _give_up(self, stage: Stage, exc: ProviderError) -> None:
        """Nothing is left to try for `stage`: say the apology, then end the call (or transfer
        it, as a `call.ending` hook may say)."""
        if self._giving_up or self.ended is not None:
            return
        self._giving_up = True
        log.error("call %s: no %s provider left: %s", self.call_id, stage, exc)
        self._replies.cancel_speculation()
        ending = (FAILED_REASONS[stage], str(exc))
        self._ending.give_up(APOLOGY, ending, voice_works=stage != "tts")

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
