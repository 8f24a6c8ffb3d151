"""A reply that may call tools: LLM → (tools → LLM)* → done, all in the reply's one task.

    round:  LLM streams (its text spoken as it comes) → tool calls?
              no  → the reply is finished
              yes → wait for the turn to be committed (a speculative reply never has side
                    effects), say the `request-start` filler while the function tools run,
                    record the calls and results (history and call record), maybe say
                    `request-complete` / `request-failed`, and run the LLM again
    endCall     → the reply finishes (plus `endCallMessage` if the model said nothing), and the
                  call ends with `assistant-ended-call` once it has been heard
    transferCall→ the destination's message is said, and once it has been heard the telephony
                  side redirects the call; the call ends with `assistant-forwarded-call`.
                  Without call control (no Twilio credentials) the model is told the transfer
                  is not possible and the call goes on.

At most `max_rounds` LLM responses per reply. A barge-in cancels the reply's task, and with it
any tool request in flight; the history then holds neither the calls nor their results (a call
without its result would make the next LLM request invalid), while the call record shows the
calls and a `ToolCallFailed` saying they were cancelled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from voice.assistant import Assistant
from voice.egress import EgressPolicy
from voice.egress_http import DEFAULT_MAX_RESPONSE_BYTES
from voice.errors import ConfigError, ProviderError
from voice.events import CallEvent, MessageAdded, ToolCallFailed
from voice.history import Conversation
from voice.ports import CallControl, LanguageModel, TextToSpeech
from voice.reply import Reply
from voice.server_messages import ServerTarget
from voice.tools import ToolOutcome, ToolRunner, ToolSet, tool_call_json
from voice.types import ChatMessage, EndedReason, ToolCall

__all__ = ["MAX_TOOL_ROUNDS", "Handoff", "ToolTurns"]

log = logging.getLogger("ava.tools")

MAX_TOOL_ROUNDS = 5
NO_TRANSFER = "Error: transferring calls is not available on this line. Tell the caller."


@dataclass(frozen=True, slots=True)
class Handoff:
    """What to do once a reply has been heard, before the call ends (a transfer)."""

    tool_call: ToolCall
    action: Callable[[], Awaitable[None]]


# finalize(reply, reason, detail, handoff): end the call after `reply` has played.
Finalize = Callable[[Reply, EndedReason, str, Handoff | None], None]


class ToolTurns:
    def __init__(
        self,
        *,
        call_id: str,
        tools: ToolSet,
        runner: ToolRunner,
        history: Conversation,
        emit: Callable[[CallEvent], None],
        since_start: Callable[[], float],
        finalize: Finalize,
        call_control: CallControl | None,
        end_call_message: str | None,
        max_rounds: int = MAX_TOOL_ROUNDS,
    ) -> None:
        self.call_id = call_id
        self.tools = tools
        self.runner = runner
        self.history = history
        self._emit = emit
        self._since_start = since_start
        self._finalize = finalize
        self.call_control = call_control
        self.end_call_message = end_call_message
        self.max_rounds = max_rounds

    @classmethod
    def for_assistant(
        cls,
        assistant: Assistant,
        *,
        call_id: str,
        history: Conversation,
        emit: Callable[[CallEvent], None],
        since_start: Callable[[], float],
        finalize: Finalize,
        call_control: CallControl | None,
        context: Callable[[], dict[str, Any]],
        egress: EgressPolicy | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> ToolTurns:
        try:
            tools = ToolSet.from_model(assistant.model)
            server = ServerTarget.from_config(assistant.server)
        except (ConfigError, ValueError) as exc:
            # control checks this before a call starts (control.providers.resolve_tools); a
            # session built without that check runs without tools rather than failing mid-call
            log.error("call %s: tools unusable: %s", call_id, exc)
            tools, server = ToolSet(), None
        return cls(
            call_id=call_id,
            tools=tools,
            runner=ToolRunner(
                tools,
                assistant_server=server,
                context=context,
                policy=egress,
                max_response_bytes=max_response_bytes,
            ),
            history=history,
            emit=emit,
            since_start=since_start,
            finalize=finalize,
            call_control=call_control,
            end_call_message=assistant.end_call_message,
        )

    async def produce(
        self,
        reply: Reply,
        llm: LanguageModel,
        tts: TextToSpeech,
        messages: Sequence[ChatMessage],
    ) -> None:
        """Raises ProviderError like `Reply.produce`."""
        context = list(messages)
        for _ in range(self.max_rounds):
            if reply.text and not reply.text.endswith(" "):
                reply.text += " "
            calls = await reply.produce_round(llm, tts, context)
            if not calls:
                break
            await reply.released.wait()  # no side effects until the caller's turn is confirmed
            said = reply.text[reply.text_in_history :].strip()
            reply.text_in_history = len(reply.text)
            reply.used_tools = True
            self._emit(
                MessageAdded(
                    self.call_id, self._since_start(), "tool_calls", said,
                    tool_calls=tuple(tool_call_json(c) for c in calls),
                )
            )  # fmt: skip
            try:
                outcomes, stop, extra = await self._run(reply, tts, calls, said)
            except asyncio.CancelledError:
                for call in calls:
                    self._failed(call, "cancelled: the caller interrupted")
                raise
            self.history.add_tool_calls(calls, said)
            context.append(ChatMessage("assistant", said, tool_calls=list(calls)))
            for outcome in outcomes:
                self.history.add_tool_result(outcome.call.id, outcome.content)
                context.append(ChatMessage("tool", outcome.content, tool_call_id=outcome.call.id))
                self._emit(
                    MessageAdded(
                        self.call_id, self._since_start(), "tool_call_result", outcome.content,
                        tool_call_id=outcome.call.id, name=outcome.name,
                    )
                )  # fmt: skip
                if outcome.failed:
                    self._failed(outcome.call, outcome.error)
            context.extend(extra)
            if stop:
                break
        await reply.finish()

    async def _run(
        self, reply: Reply, tts: TextToSpeech, calls: Sequence[ToolCall], said: str
    ) -> tuple[list[ToolOutcome], bool, list[ChatMessage]]:
        """Outcomes in call order; whether the reply ends here; system messages to add."""
        tools = self.tools
        functions = [c for c in calls if c.name not in (tools.end_call, tools.transfer)]
        outcomes: dict[str, ToolOutcome] = {}
        extra: list[ChatMessage] = []
        stop = False
        if functions:
            filler = self.runner.filler(functions)
            async with asyncio.TaskGroup() as tg:  # the filler is said while the tools run
                if filler:
                    tg.create_task(self._say(reply, tts, filler))
                results = await self.runner.run(functions)
            for outcome in results:
                outcomes[outcome.call.id] = outcome
                stop = await self._after_function(reply, tts, outcome, extra) or stop
        transfer = next((c for c in calls if c.name == tools.transfer), None)
        for call in calls:
            if call.name == tools.transfer and call is transfer:
                outcome = await self._transfer(reply, tts, call)
                stop = stop or not outcome.failed
            elif call.name == tools.transfer:
                outcome = ToolOutcome(call, "Only one transfer can be made.", failed=True,
                                      error="a second transfer in the same response")  # fmt: skip
            elif call.name == tools.end_call:
                if transfer is not None:
                    outcome = ToolOutcome(call, "Not ended: the call is being transferred.")
                else:
                    outcome = ToolOutcome(call, "The call is ending.")
                    if not said and self.end_call_message:
                        await self._say(reply, tts, self.end_call_message)
                    self._finalize(reply, EndedReason.ASSISTANT_ENDED_CALL, "endCall tool", None)
                    stop = True
            else:
                continue
            outcomes[call.id] = outcome
        return [outcomes[c.id] for c in calls], stop, extra

    async def _after_function(
        self, reply: Reply, tts: TextToSpeech, outcome: ToolOutcome, extra: list[ChatMessage]
    ) -> bool:
        """The tool's `request-complete` / `request-failed` message; True: end the call."""
        tool = self.tools.functions.get(outcome.name)
        message = None
        if tool is not None:
            message = tool.message("request-failed" if outcome.failed else "request-complete")
        if message is None or not message.get("content"):
            return False
        content = str(message["content"])
        if message.get("role") == "system":
            extra.append(ChatMessage("system", content))
            return False
        await self._say(reply, tts, content)
        if message.get("endCallAfterSpokenEnabled"):
            self._finalize(reply, EndedReason.ASSISTANT_ENDED_CALL, f"{outcome.name} tool", None)
            return True
        return False

    async def _transfer(self, reply: Reply, tts: TextToSpeech, call: ToolCall) -> ToolOutcome:
        control = self.call_control
        if control is None:
            return ToolOutcome(call, NO_TRANSFER, failed=True, error="no call control")
        destination = self.tools.destination_for(call)
        if destination is None:
            return ToolOutcome(
                call, "Error: that is not one of the transfer destinations.", failed=True,
                error=f"unknown destination in {call.arguments}",
            )  # fmt: skip
        if destination.message:
            await self._say(reply, tts, destination.message)

        async def redirect() -> None:
            await control.transfer(destination)

        self._finalize(
            reply,
            EndedReason.ASSISTANT_FORWARDED_CALL,
            f"transferred to {destination.number}",
            Handoff(call, redirect),
        )
        return ToolOutcome(call, f"Transferring the call to {destination.number}.")

    async def _say(self, reply: Reply, tts: TextToSpeech, text: str) -> None:
        # A fixed line failing to synthesize must not lose the tool result: log and go on.
        try:
            await reply.speak(tts, text)
        except ProviderError as exc:
            log.warning("call %s: could not say %r: %s", self.call_id, text, exc)

    def _failed(self, call: ToolCall, error: str) -> None:
        self._emit(ToolCallFailed(self.call_id, self._since_start(), call.id, call.name, error))
        log.warning("call %s: tool %s (%s) failed: %s", self.call_id, call.name, call.id, error)
