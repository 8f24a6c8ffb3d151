"""Vapi's `call.ending` hooks: the assistant's last line, and the tools called as a call ends.

A hook matches an ending when each of its `filters` (`{type: oneOf, key: call.endedReason}`)
has the call's ended reason among its values (`"pipeline-error"` stands for every
`pipeline-error-*`); a hook without filters matches every ending.

- `say`: when the session ends the call for a reason the line can still carry (`SPEAKABLE`: the
  assistant ended it, an end-call phrase, the silence timeout, the maximum duration, an idle
  hook), the matching hooks' words are said as one last line, whole (the caller cannot
  interrupt it), and the call ends with the same reason once it has been heard. When the caller
  hung up, the stream broke, a provider failed, the call was transferred, or it was ended
  through the API, nothing is said: there is no one to hear it, or no voice to say it.
- `transfer`: for the same endings the call is transferred instead of hung up, once the line
  (the `say`s, then the destination's `message`: Vapi's "Transferring the call now" unless
  given, "" for none) has been heard, through the telephony side as `transferCall` does; the
  first matching hook's destination is used, and the call ends with
  `call.ending.hook-executed-transfer` (the hooks' tools still match the ending it replaced).
  A call with no telephony control (a web call, a number without Twilio credentials) is not
  transferred, and a transfer Twilio refuses is recorded as a failed `transferCall`: either way
  the call ends with its own reason. A voice that stalls on the line does not stop the
  transfer (it starts when the line is given up on). A provider failure (`pipeline-error-*`,
  `TRANSFERABLE`) transfers too, as Vapi's own example does: a transfer needs no voice or
  model. No `say` is said then: the apology is the line, followed by the destination's
  `message` when the voice still works (not when the voice itself failed); with no voice at
  all, the caller is transferred at once.
- `tool`: a `function` tool's server is called once (a Vapi `tool-calls` message, as for a
  tool the model calls), for every ending its filters match — also when the caller hung up, as
  a tool needs no audio. It runs once the line is closed (the caller is never held on a silent
  line), within its server's `timeoutSeconds`; the call's end (`CallEnded`) waits for it no
  longer than that. Calls and results go into the call's messages like the model's tool calls.
  None run when the server ends the call (shutting down, `NO_TOOLS`) or refused it before it
  started.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from voice.assistant import Hook, ModelConfig
from voice.egress import EgressPolicy
from voice.egress_http import DEFAULT_MAX_RESPONSE_BYTES
from voice.errors import ConfigError
from voice.events import CallEvent, MessageAdded, ToolCallFailed
from voice.history import Conversation
from voice.ports import TransferDestination
from voice.server_messages import DEFAULT_SERVER_TIMEOUT, ServerTarget
from voice.tools import ToolRunner, ToolSet, tool_call_json
from voice.types import EndedReason, ToolCall

__all__ = ["NO_TOOLS", "SPEAKABLE", "TRANSFERABLE", "EndingHooks"]

log = logging.getLogger("ava.call")

# Endings the assistant decides while the caller is still on the line and the voice works.
SPEAKABLE = frozenset(
    {
        EndedReason.ASSISTANT_ENDED_CALL,
        EndedReason.ASSISTANT_SAID_END_CALL_PHRASE,
        EndedReason.SILENCE_TIMED_OUT,
        EndedReason.EXCEEDED_MAX_DURATION,
    }
)
# Endings that send the caller on when a hook says so: also a pipeline that failed (no provider
# of a stage left), as the caller is still there and a transfer needs no voice or model.
TRANSFERABLE = SPEAKABLE | frozenset(
    reason for reason in EndedReason if reason.value.startswith("pipeline-error-")
)
# The server ends these calls (shutting down): its drain waits seconds, not a tool's timeout.
NO_TOOLS = frozenset({EndedReason.SERVER_SHUTDOWN})
# Beyond the slowest tool server's own deadline: the runner keeps that one; this only bounds
# anything under it (name resolution, a stuck connection pool) so an ending never hangs.
_MARGIN_SECONDS = 1.0


class EndingHooks:
    def __init__(
        self,
        hooks: Sequence[Hook],
        model: ModelConfig,
        *,
        call_id: str,
        assistant_server: dict[str, Any] | None,
        history: Conversation,
        emit: Callable[[CallEvent], None],
        since_start: Callable[[], float],
        context: Callable[[], dict[str, Any]],
        egress: EgressPolicy | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        self.call_id = call_id
        self.hooks = [hook for hook in hooks if hook.on == "call.ending"]
        self._history = history
        self._emit = emit
        self._since_start = since_start
        tools = [a.tool for hook in self.hooks for a in hook.do if a.tool is not None]
        try:
            self.tools = ToolSet.from_model(model.model_copy(update={"tools": tools}))
            server = ServerTarget.from_config(assistant_server)
        except (ConfigError, ValueError) as exc:
            # Checked when the assistant was saved; a session built without that check ends
            # its calls without the hooks' tools rather than failing.
            log.error("call %s: call.ending tools unusable: %s", call_id, exc)
            self.tools, server = ToolSet(), None
        self._server = server
        self.runner = ToolRunner(
            self.tools,
            assistant_server=server,
            context=context,
            policy=egress,
            max_response_bytes=max_response_bytes,
        )

    def matching(self, reason: EndedReason) -> list[Hook]:
        return [hook for hook in self.hooks if hook.matches(reason.value)]

    def line(self, reason: EndedReason) -> str | None:
        """The last words for this ending: the matching hooks' `say`s, in order (the first of
        each one's `exact`: the hook fires once); None when there are none or none can be
        heard."""
        if reason not in SPEAKABLE:
            return None
        says = [
            action.exact[0]
            for hook in self.matching(reason)
            for action in hook.do
            if action.type == "say" and action.exact
        ]
        return " ".join(says) or None

    def transfer(self, reason: EndedReason) -> TransferDestination | None:
        """Where this ending sends the caller instead of hanging up: the first matching hook's
        `transfer` destination; None when there is none or no one is left to transfer."""
        if reason not in TRANSFERABLE:
            return None
        for hook in self.matching(reason):
            for action in hook.do:
                if action.type == "transfer" and action.destination is not None:
                    try:
                        return TransferDestination.from_vapi(action.destination, "destination")
                    except ConfigError as exc:  # checked when the assistant was saved
                        log.error("call %s: call.ending transfer unusable: %s", self.call_id, exc)
                        return None
        return None

    async def run_tools(self, reason: EndedReason) -> None:
        """Call the matching hooks' tools, all at once, each within its server's timeout."""
        names = [
            str((action.tool.get("function") or {}).get("name"))
            for hook in self.matching(reason)
            for action in hook.do
            if action.tool is not None and action.tool.get("type") == "function"
        ]
        if not names:
            return
        calls = [ToolCall(f"call-ending-{i + 1}", name, "{}") for i, name in enumerate(names)]
        self._history.add_tool_calls(calls)
        self._emit(
            MessageAdded(
                self.call_id, self._since_start(), "tool_calls", "",
                tool_calls=tuple(tool_call_json(c) for c in calls),
            )
        )  # fmt: skip
        bound = self._bound_seconds(names)
        try:
            async with asyncio.timeout(bound):
                outcomes = await self.runner.run(calls)
        except TimeoutError:
            why = f"the tool server did not answer within {bound:g}s"
            for call in calls:
                self._history.add_tool_result(call.id, f"Error: {why}.")
                self._failed(call, why)
            return
        finally:
            await self.runner.aclose()
        for outcome in outcomes:
            self._history.add_tool_result(outcome.call.id, outcome.content)
            self._emit(
                MessageAdded(
                    self.call_id, self._since_start(), "tool_call_result", outcome.content,
                    tool_call_id=outcome.call.id, name=outcome.name,
                )
            )  # fmt: skip
            if outcome.failed:
                self._failed(outcome.call, outcome.error)
        log.info("call %s: call.ending hook ran %s", self.call_id, ", ".join(names))

    def _bound_seconds(self, names: Sequence[str]) -> float:
        seconds: list[float] = []
        for name in names:
            tool = self.tools.functions.get(name)
            server = (tool.server if tool is not None else None) or self._server
            if server is not None:
                seconds.append(server.timeout_seconds)
        return max(seconds, default=DEFAULT_SERVER_TIMEOUT) + _MARGIN_SECONDS

    def _failed(self, call: ToolCall, error: str) -> None:
        self._emit(ToolCallFailed(self.call_id, self._since_start(), call.id, call.name, error))
        log.warning("call %s: call.ending tool %s failed: %s", self.call_id, call.name, error)
