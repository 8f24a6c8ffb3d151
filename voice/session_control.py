"""Live control of one call (`POST /call/{id}/control`): the commands, posted and carried out.

Split from `voice.session` because it is one feature with its own rules: a command is posted to
the inbox and the caller of the API never waits (`ControlRefused` when the call has ended,
cannot do it, or the inbox is full); the session loop then hands it back here, between two
events like anything else. A `say` is a fixed line played after what the assistant is saying
(or instead of it); `add_message` goes into the model's context and may start a reply as a
caller's turn would; muting drops the assistant's audio on its way out (`voice.mute_gate`)
while everything else goes on; a transfer says its line, then redirects the call.

It works on the session it belongs to (its replies, turn machine and history), as the loop
does: it is the session's own code, kept in its own module.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING

from voice.events import MessageAdded
from voice.ports import DEFAULT_TRANSFER_MESSAGE, TransferDestination
from voice.session_events import AddMessage, ControlEvent, ControlRefused, Mute, Say, Transfer
from voice.tool_turns import Handoff
from voice.types import ChatMessage, EndedReason, ToolCall

if TYPE_CHECKING:
    from voice.session import CallSession

__all__ = ["LiveControl"]

log = logging.getLogger("ava.call")


class LiveControl:
    def __init__(self, session: CallSession) -> None:
        self._session = session

    def post(self, event: ControlEvent) -> None:
        """For the loop; never waits (the API must not block on a call)."""
        s = self._session
        if s.ended is not None:
            raise ControlRefused(f"call {s.call_id} has ended", reason="ended")
        try:
            s._inbox.put_nowait(event)
        except asyncio.QueueFull:
            raise ControlRefused(
                f"call {s.call_id} is busy (its event queue is full); try again",
                reason="busy",
            ) from None

    async def handle(self, event: ControlEvent, now: float) -> None:
        """Carry out a command the loop took from its inbox."""
        s = self._session
        if isinstance(event, Mute):
            s._out.muted = event.muted
            log.info("call %s: assistant %s", s.call_id, "muted" if event.muted else "unmuted")
            return
        if isinstance(event, AddMessage):
            # Conversation has no public append for a system message; its own helper is used.
            s.history._append(ChatMessage(event.role, event.content))
            role = "bot" if event.role == "assistant" else event.role  # Vapi's message roles
            s._emit(MessageAdded(s.call_id, now - s._t0, role, event.content))
            if not event.trigger or s._giving_up:
                return
            handle = s._replies.start("", s.history.messages())
            handle.reply.committed_at = now
            handle.reply.release()
        elif isinstance(event, Say):
            if s._giving_up:
                return  # the apology and the end are on their way
            ending = any(h.ending is not None for h in s._replies.live.values())
            if event.interrupt and not ending:
                await s._heard.cut(now)
            end = event.end_reason or (
                EndedReason.MANUALLY_CANCELED,
                "ended through the API once a say was heard",
            )
            handle = s._replies.start_fixed_line(
                event.text, end if event.end_call_after else None, cache=False
            )
            handle.interruptible = event.interruptible
        else:
            self._start_transfer(event)
        # Speaking without a caller turn, as the greeting does: the caller's speech over it is a
        # barge-in, and its end returns the turn to the caller.
        s._last_activity = now
        await s._apply(s.turns.assistant_started(now), now)

    def _start_transfer(self, event: Transfer) -> None:
        """The line is said whole, then the call is redirected and ends; if the telephony side
        refuses, the caller hears so and the call goes on (as for `transferCall`)."""
        s = self._session
        control = s.call_control
        assert control is not None  # `transfer` refuses a call without one
        destination = TransferDestination(event.number, message=event.message)
        call = ToolCall(
            f"control-transfer-{s._replies.count + 1}",
            "transferCall",
            json.dumps({"destination": {"type": "number", "number": event.number}}),
        )

        async def redirect() -> None:
            await control.transfer(destination)

        reason = (EndedReason.ASSISTANT_FORWARDED_CALL, f"transferred to {event.number} (API)")
        handle = s._replies.start_fixed_line(
            event.message or DEFAULT_TRANSFER_MESSAGE, reason, cache=not event.message
        )
        handle.handoff = Handoff(call, redirect)
