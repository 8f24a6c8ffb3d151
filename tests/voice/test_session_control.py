"""Live control of a call's session (`say`, `add-message`, mute, transfer), in process and in
virtual time: the real session, Silero VAD, real speech and a phone with Twilio's playout (see
tests/voice/sim_kit.py). Times are loop (virtual) seconds."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.voice.sim_kit import LLM_FIRST_TOKEN, TTS_FIRST_BYTE, clip, line
from voice.assistant import Assistant
from voice.clock import LoopClock
from voice.engines.models import silero_vad_path
from voice.engines.silero import SileroVad
from voice.events import CallEnded, MessageAdded, ToolCallFailed, TurnCompleted
from voice.greeting import GreetingCache
from voice.ports import CallControlError, TransferDestination
from voice.session import CallSession, Engines
from voice.session_config import SessionOptions
from voice.session_events import ControlRefused
from voice.simulation import Line, ListeningStt, SimulatedPhone, run_virtual
from voice.testing import RecordingSink, ScriptedLlm, ToneTts
from voice.types import ChatMessage, EndedReason

pytestmark = pytest.mark.timeout(60)

QUESTION = "What time do you open on Saturday?"
ANSWER = "We open at nine in the morning on Saturdays and close at five."
LONG = (
    "Sure, I can help you with that. Our clinic offers cleanings, fillings, crowns, whitening "
    "and emergency care, and we take most insurance plans, so let me walk you through each."
)
SECONDS_PER_CHAR = 0.06  # the ToneTts voice below
# From a command to its first audio at the phone: the fixed line's TTS, then one paced chunk.
SAY_LATENCY = TTS_FIRST_BYTE + 0.15

Control = Callable[[CallSession], None]


@dataclass
class RecordingCallControl:
    """The telephony side of the `CallControl` port, remembering what it was asked."""

    fail: bool = False
    transfers: list[str] = field(default_factory=list)

    async def transfer(self, destination: TransferDestination) -> None:
        if self.fail:
            raise CallControlError("the carrier refused", retryable=False)
        self.transfers.append(destination.number)

    async def aclose(self) -> None:
        return None


@dataclass
class Run:
    session: CallSession
    phone: SimulatedPhone
    sink: RecordingSink
    llm: ScriptedLlm
    ended: CallEnded
    t0: float
    marks: dict[str, float]

    def bot_said(self) -> list[str]:
        return [
            e.content
            for e in self.sink.of_type(MessageAdded)
            if isinstance(e, MessageAdded) and e.role == "bot"
        ]

    def turns(self) -> list[TurnCompleted]:
        return [e for e in self.sink.of_type(TurnCompleted) if isinstance(e, TurnCompleted)]

    def ended_at(self) -> float:
        return self.t0 + self.ended.at


def _vad() -> SileroVad:
    return SileroVad(silero_vad_path())


def run_call(
    steps: Sequence[bytes | float | str | Control],
    lines: Sequence[Line] = (),
    replies: Sequence[str] = (),
    *,
    assistant: dict[str, Any] | None = None,
    call_control: RecordingCallControl | None = None,
) -> Run:
    """The caller's `steps` (audio, seconds of silence, a mark's name), with control commands
    (callables) given to the session at that moment; the caller hangs up at the end unless the
    call has ended."""

    async def main() -> Run:
        loop = asyncio.get_running_loop()
        phone = SimulatedPhone()
        llm = ScriptedLlm(replies, first_token=LLM_FIRST_TOKEN, per_token=0.02)
        engines = Engines(
            stt=ListeningStt(lines),
            llm=llm,
            tts=ToneTts(seconds_per_char=SECONDS_PER_CHAR, first_byte=TTS_FIRST_BYTE),
            vad=_vad(),
            turn_detector=None,
            greetings=GreetingCache(),
        )
        sink = RecordingSink()
        session = CallSession(
            call_id="ctl",
            assistant=Assistant.model_validate(assistant or {}),
            transport=phone,
            engines=engines,
            sink=sink,
            clock=LoopClock(),
            call_control=call_control,
        )
        t0 = loop.time()
        task = asyncio.create_task(session.run())
        marks: dict[str, float] = {}
        for step in steps:
            if task.done():
                break
            if isinstance(step, bytes):
                await phone.say(step)
            elif isinstance(step, float | int):
                await phone.pause(step)
            elif isinstance(step, str):
                marks[step] = loop.time()
            else:
                step(session)
        await phone.hang_up()
        ended = await task
        return Run(session, phone, sink, llm, ended, t0, marks)

    return run_virtual(main())


def _over_the_reply(*controls: str | Control | float, tail: float = 14.0) -> Run:
    """The caller asks, the assistant starts its long answer (~10 s of audio); 2 s into it
    `controls` are given (with marks and pauses in between)."""
    return run_call([0.5, clip(QUESTION), 2.8, *controls, tail], [line(QUESTION)], [LONG, ANSWER])


def test_a_say_mid_call_is_heard_at_once_and_recorded() -> None:
    text = "Your order has shipped."
    run = run_call([1.0, "said", lambda s: s.say(text), 4.0])
    said = run.marks["said"]
    assert run.phone.heard_between(run.t0, said) == 0
    assert run.phone.hearing(said + SAY_LATENCY)
    assert run.phone.heard_between(said, said + 4.0) == pytest.approx(
        len(text) * SECONDS_PER_CHAR, abs=0.05
    )
    assert run.bot_said() == [text]
    assert run.llm.requests == []  # said as given: the model was not asked
    assert run.session.history.messages()[-1] == ChatMessage("assistant", text)
    assert run.ended.reason is EndedReason.CUSTOMER_ENDED_CALL


def test_end_call_after_spoken_ends_the_call_once_it_was_heard() -> None:
    text = "Thank you for calling, goodbye."
    run = run_call([1.0, "said", lambda s: s.say(text, end_call_after=True), 8.0])
    assert run.ended.reason is EndedReason.MANUALLY_CANCELED
    spoken = len(text) * SECONDS_PER_CHAR
    assert run.phone.heard_between(run.marks["said"], run.ended_at()) == pytest.approx(
        spoken, abs=0.05
    )
    last = run.phone.heard[-1].end
    assert last <= run.ended_at() < last + 0.2  # ended as the last word was heard, not later


def test_a_say_waits_for_the_assistant_to_finish_by_default() -> None:
    text = "One more thing."
    run = _over_the_reply("over", lambda s: s.say(text))
    assert run.phone.clears == []
    assert run.bot_said() == [LONG, text]
    turns = run.turns()
    assert len(turns) == 1 and not turns[0].interrupted
    # one stretch of audio: the reply, then the say right after it
    reply_end = run.phone.silent_from(run.marks["over"])
    assert reply_end - run.marks["over"] > len(text) * SECONDS_PER_CHAR + 3.0


def test_a_say_that_interrupts_the_assistant_replaces_its_reply() -> None:
    text = "Sorry, one moment."
    run = _over_the_reply("over", lambda s: s.say(text, interrupt=True))
    over = run.marks["over"]
    assert len(run.phone.clears) == 1 and run.phone.clears[0] - over < 0.05
    said = run.bot_said()
    assert said[-1] == text and LONG.startswith(said[0]) and said[0] != LONG
    assert run.turns()[0].interrupted
    assert run.phone.heard_between(over, over + 1.0 + len(text) * SECONDS_PER_CHAR) > 1.0


def test_add_message_with_a_trigger_makes_the_model_answer_with_it() -> None:
    note = "Tell the caller the store closes early today."
    answer = "Just so you know, we close early today."
    run = run_call([1.0, "added", lambda s: s.add_message("system", note), 6.0], replies=[answer])
    (request,) = run.llm.requests
    assert request[-1] == ChatMessage("system", note)
    added = run.marks["added"]
    assert run.phone.heard_between(run.t0, added) == 0
    # (said in two phrases: the space between them is not spoken)
    assert run.phone.heard_between(added, added + 6.0) == pytest.approx(
        len(answer) * SECONDS_PER_CHAR, abs=0.1
    )
    assert run.bot_said() == [answer]
    system = [e for e in run.sink.of_type(MessageAdded) if isinstance(e, MessageAdded)]
    assert [(e.role, e.content) for e in system][0] == ("system", note)


def test_add_message_without_a_trigger_waits_for_the_callers_turn() -> None:
    note = "The caller is a premium member."
    run = run_call(
        [0.5, lambda s: s.add_message("system", note, trigger=False), 1.0, clip(QUESTION), 4.0],
        [line(QUESTION)],
        [ANSWER],
    )
    (request,) = run.llm.requests  # nothing was asked until the caller spoke
    assert request[-2:] == [ChatMessage("system", note), ChatMessage("user", QUESTION)]


def test_mute_stops_the_assistants_audio_and_unmute_resumes_it() -> None:
    run = _over_the_reply(
        "muted", lambda s: s.set_muted(True), 3.0, "unmuted", lambda s: s.set_muted(False)
    )
    muted, unmuted = run.marks["muted"], run.marks["unmuted"]
    # What was already queued at the phone (one playout chunk ahead) still plays out.
    assert run.phone.heard_between(muted + 0.5, unmuted) == 0
    assert run.phone.heard_between(unmuted, unmuted + 1.0) > 0.8
    # The reply went on while muted: the caller missed its middle, the record has all of it.
    turns = run.turns()
    assert len(turns) == 1 and not turns[0].interrupted and run.bot_said() == [LONG]
    assert run.phone.clears == []


def test_a_transfer_is_made_once_its_line_was_heard() -> None:
    control = RecordingCallControl()
    line_ = "Connecting you to billing."
    run = run_call(
        [1.0, "asked", lambda s: s.transfer("+15551112222", line_), 6.0], call_control=control
    )
    assert control.transfers == ["+15551112222"]
    assert run.ended.reason is EndedReason.ASSISTANT_FORWARDED_CALL
    assert run.bot_said() == [line_]
    assert run.ended_at() >= run.phone.heard[-1].end


def test_a_refused_transfer_is_said_and_the_call_goes_on() -> None:
    control = RecordingCallControl(fail=True)
    run = run_call([1.0, lambda s: s.transfer("+15551112222"), 8.0], call_control=control)
    assert run.ended.reason is EndedReason.CUSTOMER_ENDED_CALL
    failed = [e for e in run.sink.of_type(ToolCallFailed) if isinstance(e, ToolCallFailed)]
    assert len(failed) == 1 and "refused" in failed[0].error
    assert run.bot_said()[0] == "Transferring the call now"  # Vapi's default line
    assert len(run.bot_said()) == 2  # then the line that says the transfer failed


def test_commands_are_refused_when_the_call_cannot_take_them() -> None:
    run = run_call([0.5])
    with pytest.raises(ControlRefused) as ended:
        run.session.say("too late")
    assert ended.value.reason == "ended"
    with pytest.raises(ControlRefused) as no_phone:
        run.session.transfer("+15551112222")  # no telephony control on this call
    assert no_phone.value.reason == "unsupported"

    async def full_inbox() -> ControlRefused:
        session = CallSession(
            call_id="busy",
            assistant=Assistant.model_validate({}),
            transport=SimulatedPhone(),
            engines=Engines(
                stt=ListeningStt([]),
                llm=ScriptedLlm([]),
                tts=ToneTts(),
                vad=_vad(),
                turn_detector=None,
                greetings=GreetingCache(),
            ),  # fmt: skip
            sink=RecordingSink(),
            options=SessionOptions(inbox_events=2),
        )
        session.set_muted(True)
        session.add_message("user", "hello", trigger=False)
        with pytest.raises(ControlRefused) as busy:
            session.say("one too many")  # never waits for room
        return busy.value

    assert run_virtual(full_inbox()).reason == "busy"
