"""How one call ends: as the assistant decides, after a reply, after a handoff, and the close.

Split from `voice.session` because ending has its own state and rules. `call.ending` hooks
(`voice.ending_hooks`) say a last line before an ending the assistant decides: what the
assistant was saying is cut as a barge-in would, the line is heard whole (or given up on after
a generous time, a voice that stalls), then the call ends with that reason. A reply may carry
the end of the call (`endCall`, `transferCall`, an ending `say`): the call ends once it has
been heard, after its handoff (a transfer) if any; a handoff that fails lets the call go on.
Once ended, the call is closed: what was played is recorded, every provider and the transport
are closed, the hooks' tools run with the line closed, and `CallEnded` is emitted last.

It works on the session it belongs to (its replies, playout and turn machine), as the loop
does: it is the session's own code, kept in its own module.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from media.transport import TransportClosed
from voice.ending_hooks import NO_TOOLS, SPEAKABLE
from voice.errors import ProviderError
from voice.events import CallEnded, ToolCallFailed
from voice.ports import CallControlError
from voice.reply import Reply
from voice.session_events import HandoffFailed
from voice.session_replies import ReplyHandle
from voice.tool_turns import Handoff
from voice.types import EndedReason

if TYPE_CHECKING:
    from voice.session import CallSession

__all__ = ["CallEnding"]

log = logging.getLogger("ava.call")

# How long a `call.ending` line may take before the call ends anyway (a voice that stalls):
# generous for its length, as a caller hears about 15 characters a second.
_ENDING_LINE_SECONDS = 10.0
_ENDING_LINE_SECONDS_PER_CHAR = 0.15


class CallEnding:
    def __init__(self, session: CallSession) -> None:
        self._session = session
        # The `call.ending` line under way: until when it may take, and the ending it delays.
        self.line: tuple[float, EndedReason, str] | None = None
        self.run_tools = True  # not when the call is cancelled from outside

    async def end(self, reason: EndedReason, detail: str = "") -> None:
        """End the call as the assistant decides, the `call.ending` hooks' line said first (what
        the assistant was saying is cut as a barge-in would): the call ends once it has been
        heard. Without such a line, or once it has been said, now."""
        s = self._session
        if s.ended is not None:
            return
        text = None
        if self.line is None and not s._giving_up and reason in SPEAKABLE:
            text = s.ending_hooks.line(reason)
        if text is None:
            s._finish(reason, detail)
            return
        now = s.clock.now()
        until = now + _ENDING_LINE_SECONDS + _ENDING_LINE_SECONDS_PER_CHAR * len(text)
        self.line = (until, reason, detail)
        log.info("call %s: call.ending hook before %s", s.call_id, reason.value)
        await s._heard.cut(now)
        if s.ended is not None:  # what was cut was itself to end the call
            return
        handle = s._replies.start_fixed_line(text, (reason, detail), cache=False)
        handle.interruptible = False
        s._last_activity = now
        await s._apply(s.turns.assistant_started(now), now)

    def check_line(self, now: float) -> None:
        """The last line is said whole, whatever else is due; but not for ever."""
        assert self.line is not None
        until, reason, detail = self.line
        if now >= until:
            log.warning("call %s: the call.ending line took too long", self._session.call_id)
            self._session._finish(reason, detail)

    def end_after(
        self, reply: Reply, reason: EndedReason, detail: str, handoff: Handoff | None
    ) -> None:
        """End the call once `reply` has been heard (after `handoff`, if any)."""
        s = self._session
        handle = s._replies.live.get(reply)
        if handle is None:
            return
        handle.ending = (reason, detail)
        handle.handoff = handoff
        playing = s._playout.playing
        if playing is not None and playing.reply is reply:
            s.turns.interruptible = False  # the last words must be heard whole

    async def hand_off(self, handle: ReplyHandle) -> None:
        """Run the handoff (a transfer), then end; when it fails the call goes on."""
        s = self._session
        assert handle.handoff is not None and handle.ending is not None
        try:
            await handle.handoff.action()
        except CallControlError as exc:
            call = handle.handoff.tool_call
            s._emit(ToolCallFailed(s.call_id, s._since_start(), call.id, call.name, str(exc)))
            log.warning("call %s: transfer failed: %s", s.call_id, exc)
            await s._post(HandoffFailed(handle.reply))
            return
        s._finish(*handle.ending)

    async def close(self) -> None:
        """The call has ended: record what was played, close everything, then run the hooks'
        tools and emit the call's record."""
        s = self._session
        assert s.ended is not None
        now = s.clock.now()
        for handle in list(s._replies.live.values()):
            if handle.played is not None:  # played to the end just before the call ended
                await s._heard.played(handle, now)
        playing = s._playout.playing
        if playing is not None and playing.first_sent is not None:
            # The caller hung up mid-reply: keep what they heard.
            s._heard.record(playing, interrupted=True, now=now)
        await s._stt.aclose()
        await s._tool_turns.runner.aclose()
        if s.call_control is not None:
            try:
                await s.call_control.aclose()
            except CallControlError as exc:
                log.warning("call %s: closing call control failed: %s", s.call_id, exc)
        for close in s.engines.closers:
            try:
                await close()
            except (ProviderError, OSError) as exc:
                log.warning("call %s: closing a provider failed: %s", s.call_id, exc)
        try:
            await s.transport.close(s.ended.reason.value)
        except TransportClosed:
            pass
        at = s._since_start()  # the call's length: the hooks' tools run after it
        try:
            if self.run_tools and s.ended.reason not in NO_TOOLS:
                # The line is closed: the caller is not held while the hooks' tools run.
                await s.ending_hooks.run_tools(s.ended.reason)
        except Exception:  # a bug in a hook must not lose the call's record
            log.exception("call %s: call.ending hook failed", s.call_id)
        finally:  # even when cancelled while the tools run: the call's record is written
            s.ended = CallEnded(
                s.call_id, at, s.ended.reason, s.ended.detail,
                {
                    "messages": [m.to_openai() for m in s.history.messages()],
                    "usage": dict(s._records.usage),
                },
            )  # fmt: skip
            s._emit(s.ended)
            log.info("call %s ended: %s %s", s.call_id, s.ended.reason.value, s.ended.detail)
