"""`call.ending` hooks: the Hook model, and whole calls in virtual time (the pieces of
tests/voice/sim_kit.py). A `say` is the last line of an ending the assistant decides, heard whole
before the call ends with the same reason; a `tool` calls its server as the call ends (also when
the caller hung up), within its timeout; `filters` pick the ended reasons. Times are loop
(virtual) seconds."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from tests.voice.sim_kit import LLM_FIRST_TOKEN, TTS_FIRST_BYTE, _vad, clip, line
from voice.assistant import Assistant
from voice.clock import LoopClock
from voice.egress import EgressPolicy
from voice.events import CallEnded, MessageAdded, ToolCallFailed
from voice.greeting import GreetingCache
from voice.session import CallSession, Engines
from voice.simulation import CallerScript, Line, ListeningStt, SimulatedPhone, run_virtual
from voice.testing import RecordingSink, ScriptedLlm, ToneTts
from voice.tools import ToolRunner
from voice.types import EndedReason

GOODBYE = "Thank you for calling the bakery. Goodbye."
QUESTION = "What time do you open on Saturday?"
BYE_ANSWER = "We open at nine. Have a nice day, bye for now."
TOOL_URL = "http://127.0.0.1:9/hooks"


def _say(text: str, **extra: Any) -> dict[str, Any]:
    return {"on": "call.ending", "do": [{"type": "say", "exact": text}], **extra}


def _reasons(*reasons: str) -> list[dict[str, Any]]:
    return [{"type": "oneOf", "key": "call.endedReason", "oneOf": list(reasons)}]


def _tool(name: str, timeout: float = 5.0) -> dict[str, Any]:
    return {
        "type": "tool",
        "tool": {
            "type": "function",
            "function": {"name": name, "parameters": {"type": "object", "properties": {}}},
            "server": {"url": TOOL_URL, "timeoutSeconds": timeout},
        },
    }


# --- the model -----------------------------------------------------------------------------------


def test_a_call_ending_hook_with_filters_round_trips() -> None:
    hook = {**_say(GOODBYE, filters=_reasons("silence-timed-out")), "do": [
        {"type": "say", "exact": GOODBYE}, _tool("log_call")
    ]}  # fmt: skip
    assistant = Assistant.model_validate({"hooks": [hook]})
    parsed = assistant.hooks[0]
    assert parsed.on == "call.ending"
    assert parsed.matches("silence-timed-out") and not parsed.matches("customer-ended-call")
    assert Assistant.model_validate(assistant.to_json()) == assistant


def test_pipeline_error_matches_every_pipeline_error() -> None:
    hook = Assistant.model_validate(
        {"hooks": [_say(GOODBYE, filters=_reasons("pipeline-error"))]}
    ).hooks[0]
    assert hook.matches("pipeline-error-model-failed")
    assert hook.matches("pipeline-error-voice-failed")
    assert not hook.matches("silence-timed-out")


@pytest.mark.parametrize(
    ("hook", "says"),
    [
        (_say(GOODBYE, filters=[{"type": "oneOf", "key": "call.cost", "oneOf": ["1"]}]),
         "call.endedReason"),
        (_say(GOODBYE, filters=[{"type": "oneOf", "key": "call.endedReason", "oneOf": []}]),
         "at least 1"),
        ({"on": "call.ending", "do": [{"type": "tool", "tool": {"type": "endCall"}}]},
         "function tools only"),
        ({"on": "call.ending", "do": [{"type": "tool", "tool": {"type": "transferCall"}}]},
         "function tool"),
        ({"on": "call.ending", "do": [{"type": "tool", "tool": {"type": "function"}}]},
         "function.name"),
        ({"on": "customer.speech.timeout", "do": [_tool("log_call")]}, "endCall tool"),
        ({"on": "customer.speech.timeout", "do": [{"type": "say", "exact": "Hi?"}],
          "filters": _reasons("silence-timed-out")}, "call.ending hooks only"),
    ],
)  # fmt: skip
def test_what_a_call_ending_hook_cannot_do_is_refused(hook: dict[str, Any], says: str) -> None:
    with pytest.raises(ValidationError) as info:
        Assistant.model_validate({"hooks": [hook]})
    assert says in str(info.value)


# --- whole calls ---------------------------------------------------------------------------------


@dataclass
class ToolServer:
    """The tenant's tool server, behind httpx's in-process transport: answers Vapi's
    `tool-calls` message after `delay` seconds."""

    phone: SimulatedPhone
    delay: float = 0.0
    # (loop time, the message, whether the caller's line was already closed)
    received: list[tuple[float, dict[str, Any], bool]] = field(default_factory=list)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        message = json.loads(request.content)["message"]
        loop = asyncio.get_running_loop()
        self.received.append((loop.time(), message, self.phone.closed_reason is not None))
        await asyncio.sleep(self.delay)
        results = [{"toolCallId": c["id"], "result": "logged"} for c in message["toolCallList"]]
        return httpx.Response(200, json={"results": results})


@dataclass
class Call:
    phone: SimulatedPhone
    sink: RecordingSink
    server: ToolServer
    ended: CallEnded
    t0: float
    hung_up: float  # seconds from the start when the caller's script ended
    finished: float  # seconds from the start when the session had ended (its record written)

    def bot_lines(self) -> list[MessageAdded]:
        return [
            e for e in self.sink.of_type(MessageAdded)
            if isinstance(e, MessageAdded) and e.role == "bot"
        ]  # fmt: skip

    def line_heard(self, text: str) -> tuple[float, float]:
        """(start, end) in seconds since the start of the audio that said `text` (the last
        stretch of audio the caller heard)."""
        assert self.bot_lines()[-1].content == text
        played = self.phone.heard[-1]
        return played.start - self.t0, played.end - self.t0


def run_call(
    assistant: dict[str, Any],
    steps: Sequence[bytes | float] = (),
    lines: Sequence[Line] = (),
    replies: Sequence[str] = (),
    *,
    tail: float = 60.0,
    tool_delay: float = 0.0,
) -> Call:
    async def main() -> Call:
        loop = asyncio.get_running_loop()
        phone = SimulatedPhone()
        server = ToolServer(phone, tool_delay)
        engines = Engines(
            stt=ListeningStt(lines),
            llm=ScriptedLlm(replies, first_token=LLM_FIRST_TOKEN, per_token=0.02),
            tts=ToneTts(seconds_per_char=0.06, first_byte=TTS_FIRST_BYTE),
            vad=_vad(),
            turn_detector=None,
            greetings=GreetingCache(),
        )
        sink = RecordingSink()
        session = CallSession(
            call_id="ending",
            assistant=Assistant.model_validate(assistant),
            transport=phone,
            engines=engines,
            sink=sink,
            clock=LoopClock(),
        )
        # The hooks' tool server is reached through httpx's in-process transport (the egress
        # check still applies to its address).
        hooks = session.ending_hooks
        hooks.runner = ToolRunner(
            hooks.tools,
            assistant_server=None,
            context=lambda: {"call": {"id": "ending"}},
            policy=EgressPolicy("127.0.0.1"),
            transport=httpx.MockTransport(server.handle),
        )
        t0 = loop.time()
        task = asyncio.create_task(session.run())
        await CallerScript([*steps, tail]).run(phone)
        hung_up = loop.time() - t0
        await phone.hang_up()
        ended = await task
        return Call(phone, sink, server, ended, t0, hung_up, loop.time() - t0)

    return run_virtual(main())


def test_the_silence_timeout_says_the_hooks_line_then_ends() -> None:
    call = run_call({"hooks": [_say(GOODBYE)], "silenceTimeoutSeconds": 5})
    assert [m.content for m in call.bot_lines()] == [GOODBYE]
    start, end = call.line_heard(GOODBYE)
    assert 5.0 <= start <= 5.3  # the timeout, then the voice's first byte
    assert end - start == pytest.approx(len(GOODBYE) * 0.06, abs=0.1)  # heard whole
    assert call.ended.reason is EndedReason.SILENCE_TIMED_OUT
    assert call.ended.at == pytest.approx(end, abs=0.1)
    # It is the assistant's last message in the call's messages.
    assert call.ended.summary["messages"][-1] == {"role": "assistant", "content": GOODBYE}


def test_after_an_end_call_phrase_the_line_is_said_and_the_reason_kept() -> None:
    call = run_call(
        {"hooks": [_say(GOODBYE)], "endCallPhrases": ["bye for now"]},
        [0.5, clip(QUESTION)], [line(QUESTION)], [BYE_ANSWER],
    )  # fmt: skip
    assert [m.content for m in call.bot_lines()] == [BYE_ANSWER, GOODBYE]
    assert not any(m.interrupted for m in call.bot_lines())
    assert call.ended.reason is EndedReason.ASSISTANT_SAID_END_CALL_PHRASE
    assert call.ended.detail == "bye for now"
    _, end = call.line_heard(GOODBYE)
    assert call.ended.at == pytest.approx(end, abs=0.1)


def test_max_duration_cuts_the_assistant_and_says_the_line() -> None:
    greeting = "Welcome to the bakery. " * 10  # about 14 s of speech
    call = run_call(
        {"firstMessage": greeting.strip(), "maxDurationSeconds": 10, "hooks": [_say(GOODBYE)]}
    )
    cut, last = call.bot_lines()
    assert cut.interrupted and len(cut.content) < len(greeting.strip())
    assert last.content == GOODBYE
    start, end = call.line_heard(GOODBYE)
    assert 10.0 <= start <= 10.3
    assert call.ended.reason is EndedReason.EXCEEDED_MAX_DURATION
    assert call.ended.at == pytest.approx(end, abs=0.1)


@pytest.mark.parametrize("matches", [True, False])
def test_filters_pick_the_ended_reasons(matches: bool) -> None:
    reason = "silence-timed-out" if matches else "exceeded-max-duration"
    hook = _say(GOODBYE, filters=_reasons(reason, "assistant-ended-call"))
    call = run_call({"hooks": [hook], "silenceTimeoutSeconds": 5})
    assert call.ended.reason is EndedReason.SILENCE_TIMED_OUT
    if matches:
        assert [m.content for m in call.bot_lines()] == [GOODBYE]
    else:
        assert call.bot_lines() == []
        assert call.ended.at == pytest.approx(5.0, abs=0.05)


def test_when_the_caller_hangs_up_nothing_is_said_but_the_tool_runs() -> None:
    hook = {"on": "call.ending", "do": [{"type": "say", "exact": GOODBYE}, _tool("log_call")]}
    call = run_call({"hooks": [hook]}, tail=2.0)
    assert call.ended.reason is EndedReason.CUSTOMER_ENDED_CALL
    assert call.bot_lines() == []
    ((at, message, closed),) = call.server.received
    assert message["type"] == "tool-calls"
    assert [c["function"]["name"] for c in message["toolCallList"]] == ["log_call"]
    assert closed  # once the line was closed
    # The call and its result are in the call's messages.
    messages = call.ended.summary["messages"]
    assert messages[-2]["tool_calls"][0]["function"]["name"] == "log_call"
    assert messages[-1] == {
        "role": "tool", "content": "logged", "tool_call_id": messages[-2]["tool_calls"][0]["id"]
    }  # fmt: skip


def test_after_a_spoken_ending_the_tool_runs_once_the_line_is_closed() -> None:
    hook = {"on": "call.ending", "do": [{"type": "say", "exact": GOODBYE}, _tool("log_call")]}
    call = run_call({"hooks": [hook], "silenceTimeoutSeconds": 5})
    _, end = call.line_heard(GOODBYE)
    ((at, _, closed),) = call.server.received
    assert closed and at - call.t0 >= end - 0.05
    assert call.ended.reason is EndedReason.SILENCE_TIMED_OUT


def test_a_slow_tool_holds_the_end_no_longer_than_its_timeout() -> None:
    hook = {"on": "call.ending", "do": [_tool("log_call", timeout=2.0)]}
    call = run_call({"hooks": [hook]}, tail=1.0, tool_delay=30.0)
    assert len(call.server.received) == 1
    # The caller was gone at `hung_up`; the session ends at most the timeout later (the
    # call's length is not stretched by it).
    assert 2.0 <= call.finished - call.hung_up <= 3.1
    assert call.ended.at == pytest.approx(call.hung_up, abs=0.1)
    failed = [e for e in call.sink.of_type(ToolCallFailed) if isinstance(e, ToolCallFailed)]
    assert [e.name for e in failed] == ["log_call"]
    assert "2s" in failed[0].error


def test_an_idle_hook_that_ends_the_call_is_followed_by_the_line() -> None:
    still_there = "Are you still there? I will hang up now."
    idle = {
        "on": "customer.speech.timeout",
        "options": {"timeoutSeconds": 3},
        "do": [
            {"type": "say", "exact": still_there},
            {"type": "tool", "tool": {"type": "endCall"}},
        ],
    }
    only_phrase = _say("This is not said.", filters=_reasons("assistant-said-end-call-phrase"))
    call = run_call({"hooks": [only_phrase, idle, _say(GOODBYE)]})
    # The idle hook is found among call.ending ones; the ending's line follows its words.
    assert [m.content for m in call.bot_lines()] == [still_there, GOODBYE]
    assert call.ended.reason is EndedReason.ASSISTANT_ENDED_CALL
    _, end = call.line_heard(GOODBYE)
    assert call.ended.at == pytest.approx(end, abs=0.1)


def test_a_caller_hanging_up_during_the_line_keeps_the_reason() -> None:
    call = run_call({"hooks": [_say(GOODBYE)], "silenceTimeoutSeconds": 5}, tail=6.0)
    assert call.ended.reason is EndedReason.SILENCE_TIMED_OUT
    (heard,) = call.bot_lines()
    assert heard.interrupted and GOODBYE.startswith(heard.content)
    assert call.ended.at == pytest.approx(6.0, abs=0.1)
