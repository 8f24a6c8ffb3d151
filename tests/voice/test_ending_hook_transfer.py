"""A `call.ending` hook that transfers the call instead of hanging up: the action as Vapi writes
it (validated as `transferCall`'s destinations), and whole calls in virtual time (the pieces of
tests/voice/sim_kit.py) with the `CallControl` port recorded. Times are loop (virtual) seconds
from the start of the call."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from tests.voice.sim_kit import LLM_FIRST_TOKEN, TTS_FIRST_BYTE, _vad
from voice.assistant import Assistant, ModelConfig
from voice.call_messages import CallMessages
from voice.clock import LoopClock
from voice.egress import EgressPolicy
from voice.errors import ConfigError, ProviderError
from voice.events import CallEnded, CallStarted, MessageAdded, ToolCallFailed
from voice.greeting import GreetingCache
from voice.ports import CallControlError, LanguageModel, TransferDestination
from voice.session import APOLOGY, CallSession, Engines
from voice.simulation import CallerScript, ListeningStt, SimulatedPhone, run_virtual
from voice.testing import RecordingSink, ScriptedLlm, ToneTts
from voice.tools import ToolRunner, ToolSet
from voice.types import ChatMessage, EndedReason, LlmDelta, TtsChunk

GOODBYE = "Let me put you through to the front desk."
HUMAN = "+15551112222"


def _transfer(number: str = HUMAN, **extra: Any) -> dict[str, Any]:
    return {"type": "transfer", "destination": {"type": "number", "number": number, **extra}}


def _hook(*do: dict[str, Any], reasons: Sequence[str] = ()) -> dict[str, Any]:
    hook: dict[str, Any] = {"on": "call.ending", "do": list(do)}
    if reasons:
        hook["filters"] = [{"type": "oneOf", "key": "call.endedReason", "oneOf": list(reasons)}]
    return hook


def _say(text: str = GOODBYE) -> dict[str, Any]:
    return {"type": "say", "exact": text}


# --- the model -----------------------------------------------------------------------------------


def test_vapis_transfer_action_round_trips() -> None:
    # Vapi's documented example (assistant-hooks): say, then transfer with a caller id.
    hook = _hook(
        _say(),
        _transfer("+1234567890", callerId="+1987654321"),
        reasons=["silence-timed-out", "exceeded-max-duration"],
    )
    assistant = Assistant.model_validate({"hooks": [hook]})
    action = assistant.hooks[0].do[1]
    assert action.type == "transfer"
    assert action.destination == {
        "type": "number", "number": "+1234567890", "callerId": "+1987654321"
    }  # fmt: skip
    assert assistant.to_json()["hooks"][0]["do"][1] == hook["do"][1]
    assert Assistant.model_validate(assistant.to_json()) == assistant


@pytest.mark.parametrize(
    ("hook", "says"),
    [
        (_hook({"type": "transfer"}), "transfer needs destination"),
        (_hook({"type": "transfer", "destination": {"type": "sip", "sipUri": "sip:a@b.example"}}),
         "'sip' is not supported"),
        (_hook({"type": "transfer", "destination": {"type": "assistant", "assistantName": "B"}}),
         "'assistant' is not supported"),
        (_hook(_transfer("15551112222")), "destination.number must be an E.164 number"),
        (_hook(_transfer(transferPlan={"mode": "warm-transfer-say-message"})),
         "'warm-transfer-say-message' is not supported"),
        (_hook(_transfer(), _transfer("+15553334444")), "to one destination"),
        ({"on": "customer.speech.timeout", "do": [_say("Still there?"), _transfer()]},
         "only a call.ending hook can transfer"),
    ],
)  # fmt: skip
def test_a_transfer_ava_cannot_make_is_refused(hook: dict[str, Any], says: str) -> None:
    with pytest.raises(ValidationError) as info:
        Assistant.model_validate({"hooks": [hook]})
    assert says in str(info.value)


def test_a_blind_transfer_plan_and_an_untyped_number_are_accepted() -> None:
    hook = _hook({"type": "transfer", "destination": {"number": HUMAN}})
    Assistant.model_validate({"hooks": [hook]})
    Assistant.model_validate({"hooks": [_hook(_transfer(transferPlan={"mode": "blind-transfer"}))]})


def test_the_hook_and_transfer_call_check_a_number_alike() -> None:
    entry = {"type": "number", "number": "5551112222"}
    with pytest.raises(ConfigError, match=r"destinations\[0\]\.number must be an E\.164 number"):
        ToolSet.from_model(ModelConfig(tools=[{"type": "transferCall", "destinations": [entry]}]))
    with pytest.raises(ConfigError, match=r"^x\.number must be an E\.164 number"):
        TransferDestination.from_vapi(entry, "x")


# --- whole calls ---------------------------------------------------------------------------------


@dataclass
class RecordingCallControl:
    """The telephony side of the `CallControl` port: when it was asked to transfer, and where."""

    fail: bool = False
    transfers: list[tuple[float, TransferDestination]] = field(default_factory=list)

    async def transfer(self, destination: TransferDestination) -> None:
        self.transfers.append((asyncio.get_running_loop().time(), destination))
        if self.fail:
            raise CallControlError("the carrier refused", retryable=False)

    async def aclose(self) -> None:
        return None


@dataclass
class Call:
    phone: SimulatedPhone
    sink: RecordingSink
    control: RecordingCallControl
    ended: CallEnded
    t0: float
    tool_calls: list[dict[str, Any]]  # Vapi `tool-calls` messages the hooks' server received

    def said(self) -> list[str]:
        return [
            e.content for e in self.sink.of_type(MessageAdded)
            if isinstance(e, MessageAdded) and e.role == "bot"
        ]  # fmt: skip

    def transfers(self) -> list[tuple[float, str]]:
        return [(at - self.t0, d.number) for at, d in self.control.transfers]

    def last_heard(self) -> tuple[float, float]:
        played = self.phone.heard[-1]
        return played.start - self.t0, played.end - self.t0


def run_call(
    assistant: dict[str, Any],
    *,
    tail: float = 60.0,
    fail: bool = False,
    kind: str = "twilio",
    with_control: bool = True,
    during: tuple[float, Callable[[CallSession], None]] | None = None,
    tts: ToneTts | None = None,
    llm: LanguageModel | None = None,
) -> Call:
    async def main() -> Call:
        loop = asyncio.get_running_loop()
        phone = SimulatedPhone(kind=kind)
        control = RecordingCallControl(fail=fail)
        engines = Engines(
            stt=ListeningStt(()),
            llm=llm or ScriptedLlm((), first_token=LLM_FIRST_TOKEN, per_token=0.02),
            tts=tts or ToneTts(seconds_per_char=0.06, first_byte=TTS_FIRST_BYTE),
            vad=_vad(),
            turn_detector=None,
            greetings=GreetingCache(),
        )
        sink = RecordingSink()
        session = CallSession(
            call_id="hook-transfer",
            assistant=Assistant.model_validate(assistant),
            transport=phone,
            engines=engines,
            sink=sink,
            clock=LoopClock(),
            call_control=control if with_control else None,
        )
        tool_calls: list[dict[str, Any]] = []

        async def tool_server(request: httpx.Request) -> httpx.Response:
            message = json.loads(request.content)["message"]
            tool_calls.append(message)
            results = [{"toolCallId": c["id"], "result": "ok"} for c in message["toolCallList"]]
            return httpx.Response(200, json={"results": results})

        hooks = session.ending_hooks
        hooks.runner = ToolRunner(
            hooks.tools,
            assistant_server=None,
            context=lambda: {"call": {"id": "hook-transfer"}},
            policy=EgressPolicy("127.0.0.1"),
            transport=httpx.MockTransport(tool_server),
        )
        t0 = loop.time()
        task = asyncio.create_task(session.run())
        rest = tail
        if during is not None:
            at, act = during
            await CallerScript([at]).run(phone)
            act(session)
            rest -= at
        await CallerScript([rest]).run(phone)
        await phone.hang_up()
        ended = await task
        return Call(phone, sink, control, ended, t0, tool_calls)

    return run_virtual(main())


def test_the_silence_timeout_says_the_line_then_transfers() -> None:
    hook = _hook(_say(), _transfer(message=""), reasons=["silence-timed-out"])
    call = run_call({"hooks": [hook], "silenceTimeoutSeconds": 5})
    assert call.said() == [GOODBYE]
    start, end = call.last_heard()
    assert 5.0 <= start <= 5.3
    assert end - start == pytest.approx(len(GOODBYE) * 0.06, abs=0.1)  # heard whole
    ((at, number),) = call.transfers()
    assert number == HUMAN
    assert at >= end - 0.05  # say, then transfer
    assert call.ended.reason is EndedReason.CALL_ENDING_HOOK_EXECUTED_TRANSFER
    assert call.ended.detail == f"transferred to {HUMAN}"
    assert call.ended.at == pytest.approx(at, abs=0.1)


def test_the_destinations_message_follows_the_says() -> None:
    # Vapi's `message` default, as for `transferCall`: "" keeps it silent (above).
    hook = _hook(_say(), _transfer(callerId="+15559990000"))
    call = run_call({"hooks": [hook], "maxDurationSeconds": 10})
    assert call.said() == [f"{GOODBYE} Transferring the call now"]
    (_, destination) = call.control.transfers[0]
    assert destination.caller_id == "+15559990000"
    assert call.ended.reason is EndedReason.CALL_ENDING_HOOK_EXECUTED_TRANSFER


def test_with_nothing_to_say_the_call_is_transferred_at_once() -> None:
    call = run_call({"hooks": [_hook(_transfer(message=""))], "silenceTimeoutSeconds": 5})
    assert call.said() == []
    ((at, number),) = call.transfers()
    assert number == HUMAN and at == pytest.approx(5.0, abs=0.05)
    assert call.ended.reason is EndedReason.CALL_ENDING_HOOK_EXECUTED_TRANSFER


def test_the_hooks_tools_run_for_the_ending_the_transfer_replaced() -> None:
    tool = {
        "type": "tool",
        "tool": {
            "type": "function",
            "function": {"name": "log_call"},
            "server": {"url": "http://127.0.0.1:9/hooks"},
        },
    }
    hook = _hook(_say(), tool, _transfer(message=""), reasons=["silence-timed-out"])
    call = run_call({"hooks": [hook], "silenceTimeoutSeconds": 5})
    assert call.ended.reason is EndedReason.CALL_ENDING_HOOK_EXECUTED_TRANSFER
    (message,) = call.tool_calls
    assert [c["function"]["name"] for c in message["toolCallList"]] == ["log_call"]


def test_a_filter_that_does_not_match_leaves_the_ending_alone() -> None:
    hook = _hook(_say(), _transfer(), reasons=["exceeded-max-duration"])
    call = run_call({"hooks": [hook], "silenceTimeoutSeconds": 5})
    assert call.transfers() == [] and call.said() == []
    assert call.ended.reason is EndedReason.SILENCE_TIMED_OUT


def test_no_one_is_transferred_when_the_caller_hung_up() -> None:
    call = run_call({"hooks": [_hook(_say(), _transfer())], "silenceTimeoutSeconds": 5}, tail=2)
    assert call.transfers() == [] and call.said() == []
    assert call.ended.reason is EndedReason.CUSTOMER_ENDED_CALL


def test_a_caller_hanging_up_during_the_line_is_not_transferred() -> None:
    hook = _hook(_say(), _transfer(message=""))
    call = run_call({"hooks": [hook], "silenceTimeoutSeconds": 5}, tail=6.0)
    assert call.transfers() == []
    assert call.ended.reason is EndedReason.SILENCE_TIMED_OUT


def test_a_server_shutting_down_transfers_no_one() -> None:
    def shut_down(session: CallSession) -> None:
        session.hang_up(EndedReason.SERVER_SHUTDOWN, "server shutting down")

    hook = _hook(_say(), _transfer())
    call = run_call({"hooks": [hook], "silenceTimeoutSeconds": 5}, during=(2.0, shut_down))
    assert call.transfers() == [] and call.said() == []
    assert call.ended.reason is EndedReason.SERVER_SHUTDOWN


def test_a_web_call_skips_the_transfer_and_keeps_its_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hook = _hook(_say(), _transfer())
    with caplog.at_level(logging.INFO, logger="ava.call"):
        call = run_call(
            {"hooks": [hook], "silenceTimeoutSeconds": 5}, kind="webrtc", with_control=False
        )
    assert call.said() == [GOODBYE]  # the says, without the transfer's message
    assert call.ended.reason is EndedReason.SILENCE_TIMED_OUT
    assert call.ended.at == pytest.approx(call.last_heard()[1], abs=0.1)
    skipped = [r.getMessage() for r in caplog.records if "transfer" in r.getMessage()]
    assert any(HUMAN in m and "webrtc" in m and "skipped" in m for m in skipped), skipped


class StallingTts(ToneTts):
    """A voice that sends its first chunk, then nothing more (and no error)."""

    async def synthesize(self, text: str) -> AsyncIterator[TtsChunk]:
        async for chunk in super().synthesize(text):
            yield chunk
            await asyncio.sleep(3600)


def test_a_voice_that_stalls_does_not_keep_the_caller_from_the_transfer() -> None:
    hook = _hook(_say(), _transfer(message=""))
    tts = StallingTts(seconds_per_char=0.06, first_byte=TTS_FIRST_BYTE)
    call = run_call({"hooks": [hook], "silenceTimeoutSeconds": 5}, tts=tts, tail=60.0)
    # given up on after its bound (10 s and 0.15 s a character), then transferred, once
    bound = 5.0 + 10.0 + 0.15 * len(GOODBYE)
    ((at, number),) = call.transfers()
    assert number == HUMAN and at == pytest.approx(bound, abs=0.1)
    assert call.ended.reason is EndedReason.CALL_ENDING_HOOK_EXECUTED_TRANSFER


def test_a_refused_transfer_ends_the_call_with_its_reason() -> None:
    hook = _hook(_say(), _transfer(message=""))
    call = run_call({"hooks": [hook], "silenceTimeoutSeconds": 5}, fail=True)
    assert [n for _, n in call.transfers()] == [HUMAN]  # attempted
    assert call.said() == [GOODBYE]  # no apology: the call was ending anyway
    assert call.ended.reason is EndedReason.SILENCE_TIMED_OUT
    failed = [e for e in call.sink.of_type(ToolCallFailed) if isinstance(e, ToolCallFailed)]
    assert [(e.name, e.error) for e in failed] == [("transferCall", "the carrier refused")]


def test_the_webhooks_say_the_call_was_forwarded() -> None:
    messages = CallMessages("call_9", frozenset({"status-update"}))
    messages.on(CallStarted("call_9", 0.0, 1000.0, "twilio", "A", {}), 1000.0)
    ended = CallEnded(
        "call_9", 5.0, EndedReason.CALL_ENDING_HOOK_EXECUTED_TRANSFER, f"transferred to {HUMAN}"
    )
    out = messages.on(ended, 1005.0)
    assert [fields["status"] for _, fields in out] == ["forwarding", "ended"]
    assert out[0][1]["destination"] == {"type": "number", "number": HUMAN}
    assert out[1][1]["endedReason"] == "call.ending.hook-executed-transfer"


# --- no provider left (pipeline-error-*) ---------------------------------------------------------

MODEL_GREETING = "assistant-speaks-first-with-model-generated-message"
SEND_ON_FAILURE = ["pipeline-error"]  # Vapi's example: every pipeline-error-* reason
LOG_CALL = {
    "type": "tool",
    "tool": {
        "type": "function",
        "function": {"name": "log_call"},
        "server": {"url": "http://127.0.0.1:9/hooks"},
    },
}


class FailingLlm:
    """A model whose every request fails, as a provider that is down (breakers are per name:
    one name a test)."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def stream(self, messages: Sequence[ChatMessage]) -> AsyncIterator[LlmDelta]:
        await asyncio.sleep(0.1)
        raise ProviderError(self.name, "HTTP 500", retryable=True)
        yield LlmDelta()  # an async generator


class FailingTts(ToneTts):
    """A voice whose every request fails (`voice_key` per test: its breaker is its own)."""

    def __init__(self, name: str) -> None:
        super().__init__(seconds_per_char=0.06, first_byte=TTS_FIRST_BYTE)
        self.name = self.voice_key = name

    async def synthesize(self, text: str) -> AsyncIterator[TtsChunk]:
        self.requests.append(text)
        await asyncio.sleep(0.1)
        raise ProviderError(self.name, "HTTP 500", retryable=True)
        yield TtsChunk(b"")  # an async generator


def _model_greeting(*hooks: dict[str, Any]) -> dict[str, Any]:
    return {
        "firstMessageMode": MODEL_GREETING,
        "model": {"messages": [{"role": "system", "content": "Greet the caller."}]},
        "hooks": list(hooks),
    }


def test_no_model_left_transfers_after_the_apology() -> None:
    # Vapi's flagship call.ending transfer. The hook's `say` is not said (the apology is the
    # line); the destination's message follows the apology; its tools match pipeline-error.
    hook = _hook(_say(), LOG_CALL, _transfer(), reasons=SEND_ON_FAILURE)
    call = run_call(_model_greeting(hook), llm=FailingLlm("down-llm-hook-transfer-1"))
    assert call.said() == [f"{APOLOGY} Transferring the call now"]
    start, end = call.last_heard()
    assert end - start == pytest.approx(len(call.said()[0]) * 0.06, abs=0.1)  # heard whole
    ((at, number),) = call.transfers()
    assert number == HUMAN
    assert end - 0.05 <= at <= end + 0.3  # heard, then transferred
    assert call.ended.reason is EndedReason.CALL_ENDING_HOOK_EXECUTED_TRANSFER
    assert call.ended.detail == f"transferred to {HUMAN}"
    (message,) = call.tool_calls
    assert [c["function"]["name"] for c in message["toolCallList"]] == ["log_call"]


def test_no_voice_left_transfers_at_once_without_a_line() -> None:
    tts = FailingTts("down-tts-hook-transfer-1")
    hook = _hook(_transfer(), reasons=SEND_ON_FAILURE)
    call = run_call({"firstMessage": "Hello.", "hooks": [hook]}, tts=tts)
    assert call.said() == [] and call.phone.heard == []
    assert "Transferring the call now" not in " ".join(tts.requests)  # the voice is gone
    assert APOLOGY in tts.requests  # tried, could not be said
    ((at, number),) = call.transfers()
    assert number == HUMAN and at < 2.0
    assert call.ended.reason is EndedReason.CALL_ENDING_HOOK_EXECUTED_TRANSFER


def test_a_line_the_voice_cannot_say_still_transfers() -> None:
    # A silence timeout's `say` that fails: the transfer follows at once, not a hang-up.
    tts = FailingTts("down-tts-hook-transfer-2")
    hook = _hook(_say(), _transfer(message=""), reasons=["silence-timed-out"])
    call = run_call({"hooks": [hook], "silenceTimeoutSeconds": 5}, tts=tts)
    assert set(tts.requests) == {GOODBYE} and call.said() == []
    ((at, number),) = call.transfers()
    assert number == HUMAN and 5.0 <= at <= 6.0
    assert call.ended.reason is EndedReason.CALL_ENDING_HOOK_EXECUTED_TRANSFER


@pytest.mark.parametrize(
    ("hooks", "name"),
    [
        ((), "down-llm-hook-transfer-2"),
        ((_hook(_transfer(), reasons=["silence-timed-out"]),), "down-llm-hook-transfer-3"),
    ],
)
def test_without_a_matching_hook_no_model_left_ends_as_before(
    hooks: tuple[dict[str, Any], ...], name: str
) -> None:
    call = run_call(_model_greeting(*hooks), llm=FailingLlm(name))
    assert call.said() == [APOLOGY]
    assert call.transfers() == []
    assert call.ended.reason is EndedReason.PIPELINE_ERROR_LLM
    assert call.ended.at == pytest.approx(call.last_heard()[1], abs=0.1)


def test_a_refused_transfer_after_the_apology_keeps_the_pipeline_error() -> None:
    hook = _hook(_transfer(message=""), reasons=SEND_ON_FAILURE)
    call = run_call(_model_greeting(hook), llm=FailingLlm("down-llm-hook-transfer-4"), fail=True)
    assert call.said() == [APOLOGY]
    assert [n for _, n in call.transfers()] == [HUMAN]  # attempted
    assert call.ended.reason is EndedReason.PIPELINE_ERROR_LLM
    failed = [e for e in call.sink.of_type(ToolCallFailed) if isinstance(e, ToolCallFailed)]
    assert [(e.name, e.error) for e in failed] == [("transferCall", "the carrier refused")]


def test_a_web_call_with_no_model_left_is_not_transferred() -> None:
    hook = _hook(_transfer(), reasons=SEND_ON_FAILURE)
    call = run_call(
        _model_greeting(hook),
        llm=FailingLlm("down-llm-hook-transfer-5"),
        kind="webrtc",
        with_control=False,
    )
    assert call.said() == [APOLOGY]  # without the transfer's message
    assert call.transfers() == []
    assert call.ended.reason is EndedReason.PIPELINE_ERROR_LLM


def test_a_caller_gone_during_the_apology_is_not_transferred() -> None:
    hook = _hook(_transfer(message=""), reasons=SEND_ON_FAILURE)
    call = run_call(_model_greeting(hook), llm=FailingLlm("down-llm-hook-transfer-6"), tail=1.5)
    assert call.transfers() == []
    assert call.ended.reason is EndedReason.PIPELINE_ERROR_LLM
