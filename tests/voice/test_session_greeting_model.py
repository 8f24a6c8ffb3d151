"""`firstMessageMode: assistant-speaks-first-with-model-generated-message` in whole calls, in
virtual time (the pieces of tests/voice/sim_kit.py): the model is asked for its reply to the
prompt alone as the call starts, and that reply, streamed, is the greeting."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from media.audio_format import MULAW_8K, PCM16_16K
from tests.voice.sim_kit import LLM_FIRST_TOKEN, TTS_FIRST_BYTE, _vad, clip, line
from voice.assistant import Assistant
from voice.clock import LoopClock
from voice.errors import ProviderError
from voice.events import BargeIn, CallEnded, MessageAdded, ProviderFailed
from voice.greeting import GreetingCache
from voice.ports import LanguageModel
from voice.session import APOLOGY, CallSession, Engines
from voice.simulation import CallerScript, Line, ListeningStt, SimulatedPhone, run_virtual
from voice.testing import RecordingSink, ScriptedLlm, ScriptedStt, ToneTts
from voice.types import ChatMessage, EndedReason, LlmDelta

MODE = "assistant-speaks-first-with-model-generated-message"
PROMPT = "You are Ada, the receptionist of a bakery. Greet the caller."
HELLO = "Hi, this is Ada from the bakery. How can I help?"
LONG_HELLO = (
    "Hi, this is Ada from the bakery on Main Street. Today we have fresh sourdough, rye, "
    "croissants and apple pie, and the cafe is open until six. How can I help you?"
)
QUESTION = "What time do you open on Saturday?"
ANSWER = "We open at nine."


def _assistant(**extra: Any) -> dict[str, Any]:
    return {
        "firstMessageMode": MODE,
        "model": {"messages": [{"role": "system", "content": PROMPT}]},
        **extra,
    }


class FailingLlm:
    """A model whose every request fails, as a provider that is down."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests = 0

    async def stream(self, messages: Sequence[ChatMessage]) -> AsyncIterator[LlmDelta]:
        self.requests += 1
        await asyncio.sleep(0.1)
        raise ProviderError(self.name, "HTTP 503", retryable=True)
        yield LlmDelta()  # an async generator


@dataclass
class Call:
    phone: SimulatedPhone
    sink: RecordingSink
    greetings: GreetingCache
    tts: ToneTts
    ended: CallEnded
    t0: float

    def bot_messages(self) -> list[MessageAdded]:
        return [
            e for e in self.sink.of_type(MessageAdded) if isinstance(e, MessageAdded)
            and e.role == "bot"
        ]  # fmt: skip

    def first_audio(self) -> float:
        """Seconds from the start of the call to the first assistant audio the caller heard."""
        return self.phone.heard[0].start - self.t0


def run_call(
    assistant: dict[str, Any],
    llm: LanguageModel,
    steps: Sequence[bytes | float] = (),
    lines: Sequence[Line] = (),
    *,
    fallbacks: Sequence[LanguageModel] = (),
    tail: float = 6.0,
    phone: SimulatedPhone | None = None,
) -> Call:
    async def main() -> Call:
        the_phone = phone or SimulatedPhone()
        tts = ToneTts(
            seconds_per_char=0.06, first_byte=TTS_FIRST_BYTE, audio_format=the_phone.audio_format
        )
        # The browser's wideband audio: a transcriber that takes any format (no words).
        wideband = the_phone.audio_format != MULAW_8K
        engines = Engines(
            stt=ScriptedStt([]) if wideband else ListeningStt(lines),
            llm=llm,
            llm_fallbacks=fallbacks,
            tts=tts,
            vad=_vad(),
            turn_detector=None,
            greetings=GreetingCache(),
        )
        sink = RecordingSink()
        session = CallSession(
            call_id="greeting",
            assistant=Assistant.model_validate(assistant),
            transport=the_phone,
            engines=engines,
            sink=sink,
            clock=LoopClock(),
        )
        t0 = asyncio.get_running_loop().time()
        task = asyncio.create_task(session.run())
        await CallerScript([*steps, tail]).run(the_phone)
        await the_phone.hang_up()
        ended = await task
        return Call(the_phone, sink, engines.greetings, tts, ended, t0)

    return run_virtual(main())


def test_the_models_first_reply_is_the_greeting_heard_as_soon_as_it_answers() -> None:
    llm = ScriptedLlm([HELLO, ANSWER], first_token=LLM_FIRST_TOKEN, per_token=0.02)
    # The fixed firstMessage is not what this mode says.
    call = run_call(
        _assistant(firstMessage="Static hello."), llm, [3.0, clip(QUESTION)], [line(QUESTION)]
    )
    # Asked at once, with the prompt and no caller turn.
    assert llm.requests[0] == [ChatMessage("system", PROMPT)]
    # Heard once the model's first words were voiced: its first token, the first phrase's
    # words, the voice's first byte; never before the model answered.
    assert LLM_FIRST_TOKEN + TTS_FIRST_BYTE <= call.first_audio() <= 1.2
    said = [m.content for m in call.bot_messages()]
    assert said == [HELLO, ANSWER]
    # The greeting is the assistant's first message in the model's context …
    assert llm.requests[1] == [
        ChatMessage("system", PROMPT),
        ChatMessage("assistant", HELLO),
        ChatMessage("user", QUESTION),
    ]
    # … and in the call's messages.
    messages = call.ended.summary["messages"]
    assert [(m["role"], m["content"]) for m in messages[:3]] == [
        ("system", PROMPT),
        ("assistant", HELLO),
        ("user", QUESTION),
    ]
    # A line of this call only: nothing is kept in the shared greeting cache.
    assert call.greetings.get(call.tts, HELLO) is None
    assert call.greetings.get(call.tts, "Static hello.") is None


@pytest.mark.parametrize("interruptible", [False, True])
def test_the_greeting_is_interruptible_as_first_message_interruptions_say(
    interruptible: bool,
) -> None:
    llm = ScriptedLlm([LONG_HELLO, ANSWER], first_token=LLM_FIRST_TOKEN, per_token=0.02)
    stop = "Hold on a second."
    call = run_call(
        _assistant(firstMessageInterruptionsEnabled=interruptible),
        llm,
        [2.0, clip(stop)],
        [line(stop)],
        tail=12.0,
    )
    said = call.bot_messages()
    barge_ins = call.sink.of_type(BargeIn)
    if interruptible:
        assert len(barge_ins) == 1
        assert said[0].interrupted and LONG_HELLO.startswith(said[0].content)
        assert len(said[0].content) < len(LONG_HELLO)
    else:
        # Heard whole; the caller's words are answered after it.
        assert barge_ins == []
        assert said[0].content == LONG_HELLO and not said[0].interrupted
        assert [m.content for m in said] == [LONG_HELLO, ANSWER]


def test_a_failing_model_falls_back_for_the_greeting() -> None:
    primary = FailingLlm("down-llm-greeting-1")
    fallback = ScriptedLlm([HELLO], first_token=LLM_FIRST_TOKEN)
    call = run_call(_assistant(), primary, fallbacks=[fallback])
    assert primary.requests == 2  # tried, retried once, then the fallback
    assert fallback.requests == [[ChatMessage("system", PROMPT)]]
    assert [m.content for m in call.bot_messages()] == [HELLO]
    failed = [e for e in call.sink.of_type(ProviderFailed) if isinstance(e, ProviderFailed)]
    assert {e.provider for e in failed} == {"llm/down-llm-greeting-1"}
    assert call.ended.reason is EndedReason.CUSTOMER_ENDED_CALL


def test_with_no_model_left_the_caller_hears_the_apology_and_the_call_ends() -> None:
    call = run_call(_assistant(), FailingLlm("down-llm-greeting-2"), tail=20.0)
    assert [m.content for m in call.bot_messages()] == [APOLOGY]
    assert call.ended.reason is EndedReason.PIPELINE_ERROR_LLM


def test_a_browser_call_starts_with_the_models_greeting_too() -> None:
    llm = ScriptedLlm([HELLO], first_token=LLM_FIRST_TOKEN)
    # The simulated phone times what it plays as telephone audio (4x the bytes per second of
    # wideband): a long tail lets it play the greeting to its end.
    browser = SimulatedPhone(kind="webrtc", audio_format=PCM16_16K)
    call = run_call(_assistant(), llm, phone=browser, tail=20.0)
    assert llm.requests[0] == [ChatMessage("system", PROMPT)]
    assert [m.content for m in call.bot_messages()] == [HELLO]
    assert LLM_FIRST_TOKEN + TTS_FIRST_BYTE <= call.first_audio() <= 1.2


def test_without_a_prompt_the_call_starts_listening() -> None:
    llm = ScriptedLlm([ANSWER], first_token=LLM_FIRST_TOKEN)
    call = run_call({"firstMessageMode": MODE}, llm, [1.0, clip(QUESTION)], [line(QUESTION)])
    assert llm.requests == [[ChatMessage("user", QUESTION)]]
    assert [m.content for m in call.bot_messages()] == [ANSWER]
