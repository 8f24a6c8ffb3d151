"""How one call ends: as the assistant decides, after a reply, after a handoff, and the close.

Split from `voice.session` because ending has its own state and rules. `call.ending` hooks
(`voice.ending_hooks`) say a last line before an ending the assistant decides: what the
assistant was saying is cut as a barge-in would, the line is heard whole (or given up on after
a generous time, a voice that stalls), then the call ends with that reason — or, when a hook
transfers it, is transferred (`call.ending.hook-executed-transfer`; if that fails, it ends
with its reason). When no provider of a stage is left (`give_up`), the apology is the line:
the call ends with its `pipeline-error-*` reason once it has been heard, or is transferred if a
hook says so (at once when not even the apology can be said). A reply may carry
the end of the call (`endCall`, `transferCall`, an ending `say`): the call ends once it has
been heard, after its handoff (a transfer) if any; a handoff that fails lets the call go on.
Once ended, the call is closed: what was played is recorded, every provider and the transport
are closed, the hooks' tools run with the line closed, and `CallEnded` is emitted last.

It works on the session it belongs to (its replies, playout and turn machine), as the loop
does: it is the session's own code, kept in its own module.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from media.transport import TransportClosed
from voice.ending_hooks import NO_TOOLS, SPEAKABLE
from voice.errors import ProviderError
from voice.events import CallEnded, ToolCallFailed
from voice.ports import CallControlError, TransferDestination
from voice.reply import Reply
from voice.session_events import HandoffFailed
from voice.session_replies import ReplyHandle
from voice.tool_turns import Handoff
from voice.tools import TRANSFER_CALL
from voice.types import EndedReason, ToolCall

if TYPE_CHECKING:
    from voice.session import CallSession

__all__ = ["CallEnding"]

log = logging.getLogger("ava.call")

# How long a `call.ending` hook's transfer may take: beyond the telephony side's own deadline
# (Twilio REST: 10 s), so this only bounds a stuck one.
_TRANSFER_SECONDS = 15.0
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
        # A `call.ending` hook's transfer: its handoff and ending, and once under way, the
        # ending it replaced.
        self._hook: tuple[Handoff, tuple[EndedReason, str]] | None = None
        self._unless_transferred: tuple[EndedReason, str] | None = None

    async def end(self, reason: EndedReason, detail: str = "") -> None:
        """End the call as the assistant decides, the `call.ending` hooks' line said first (what
        the assistant was saying is cut as a barge-in would): the call ends once it has been
        heard, transferred if a hook says so. Without such a line, or once it has been said,
        now."""
        s = self._session
        if s.ended is not None:
            return
        text = None
        destination = None
        if self.line is None and not s._giving_up and reason in SPEAKABLE:
            text = s.ending_hooks.line(reason)
            destination = self._transfer_to(reason)
            if destination is not None and destination.message:
                text = f"{text} {destination.message}" if text else destination.message
        if text is None and destination is None:
            s._finish(reason, detail)
            return
        now = s.clock.now()
        until = now + _ENDING_LINE_SECONDS + _ENDING_LINE_SECONDS_PER_CHAR * len(text or "")
        self.line = (until, reason, detail)
        log.info("call %s: call.ending hook before %s", s.call_id, reason.value)
        await s._heard.cut(now)
        if s.ended is not None:  # what was cut was itself to end the call
            return
        ending = (reason, detail)
        handoff = None
        if destination is not None:
            handoff = self._handoff_to(destination)
            ending = (
                EndedReason.CALL_ENDING_HOOK_EXECUTED_TRANSFER,
                f"transferred to {destination.number}",
            )
            self._hook = (handoff, ending)
            if text is None:  # nothing to say: transfer now
                self._start_hook_transfer()
                return
        assert text is not None
        # The line's own ending, not the transfer's: if it is cancelled, no one was transferred.
        handle = s._replies.start_fixed_line(text, (reason, detail), cache=False)
        handle.handoff = handoff
        handle.interruptible = False
        s._last_activity = now
        await s._apply(s.turns.assistant_started(now), now)

    def give_up(self, apology: str, ending: tuple[EndedReason, str], *, voice_works: bool) -> None:
        """No provider of a stage is left: say `apology`, then end with `ending` (a
        `pipeline-error-*`), or transfer the caller if a hook says so. The hooks' `say`s are not
        said (the apology is the line); the destination's `message` follows it only when the voice
        works, as a cached apology can still be heard when it does not."""
        s = self._session
        reason, detail = ending
        destination = self._transfer_to(reason) if self.line is None else None
        if destination is None:
            s._replies.start_fixed_line(apology, ending)
            return
        text = apology
        if voice_works and destination.message:
            text = f"{apology} {destination.message}"
        until = s.clock.now() + _ENDING_LINE_SECONDS + _ENDING_LINE_SECONDS_PER_CHAR * len(text)
        self.line = (until, reason, detail)
        handoff = self._handoff_to(destination)
        number = destination.number
        self._hook = (
            handoff,
            (EndedReason.CALL_ENDING_HOOK_EXECUTED_TRANSFER, f"transferred to {number}"),
        )
        log.info("call %s: call.ending transfer after the apology (%s)", s.call_id, reason.value)
        # If not even the apology can be said, it is played as silence: the transfer follows.
        handle = s._replies.start_fixed_line(text, ending, cache=text == apology)
        handle.handoff = handoff

    def check_line(self, now: float) -> None:
        """The last line is said whole, whatever else is due; but not for ever."""
        assert self.line is not None
        until, reason, detail = self.line
        if now < until:
            return
        if self._unless_transferred is not None:
            log.warning("call %s: the call.ending transfer took too long", self._session.call_id)
            self._session._finish(*self._unless_transferred)
        elif self._hook is not None:
            # A voice that stalls does not keep the caller from the transfer.
            log.warning("call %s: the call.ending line took too long", self._session.call_id)
            self._start_hook_transfer()
        else:
            log.warning("call %s: the call.ending line took too long", self._session.call_id)
            self._session._finish(reason, detail)

    def _transfer_to(self, reason: EndedReason) -> TransferDestination | None:
        s = self._session
        destination = s.ending_hooks.transfer(reason)
        if destination is not None and s.call_control is None:
            log.info(
                "call %s: call.ending transfer to %s skipped: a %s call without telephony "
                "control cannot be transferred; it ends with %s",
                s.call_id, destination.number, s.transport.kind, reason.value,
            )  # fmt: skip
            return None
        return destination

    def _handoff_to(self, destination: TransferDestination) -> Handoff:
        control = self._session.call_control
        assert control is not None
        call = ToolCall(
            "call-ending-transfer",
            TRANSFER_CALL,
            json.dumps({"destination": {"type": "number", "number": destination.number}}),
        )

        async def redirect() -> None:
            await control.transfer(destination)

        return Handoff(call, redirect)

    def _start_hook_transfer(self) -> None:
        assert self._session._tg is not None
        self._session._tg.create_task(self._hook_transfer())

    async def _hook_transfer(self) -> None:
        """Transfer the caller instead of hanging up; if the telephony side refuses, the call
        ends as it was going to (the failure recorded as a failed `transferCall`)."""
        s = self._session
        assert self.line is not None and self._hook is not None
        if self._unless_transferred is not None:
            return  # under way already (the line was given up on, then heard)
        handoff, ending = self._hook
        _, reason, detail = self.line
        self._unless_transferred = (reason, detail)
        # Twilio stops the media stream as it redirects the call: the caller leaving while the
        # transfer is under way is the transfer itself (`CallerGone` ends with the line's reason).
        self.line = (s.clock.now() + _TRANSFER_SECONDS, *ending)
        try:
            await handoff.action()
        except CallControlError as exc:
            call = handoff.tool_call
            s._emit(ToolCallFailed(s.call_id, s._since_start(), call.id, call.name, str(exc)))
            log.warning(
                "call %s: call.ending transfer failed: %s; it ends with %s",
                s.call_id, exc, reason.value,
            )  # fmt: skip
            s._finish(reason, detail)
            return
        s._finish(*ending)

    def _hooks_reason(self, reason: EndedReason) -> EndedReason:
        """The ending the hooks' filters match: the one a hook's transfer replaced, if any."""
        if reason is EndedReason.CALL_ENDING_HOOK_EXECUTED_TRANSFER and self._unless_transferred:
            return self._unless_transferred[0]
        return reason

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
        """Run the handoff (a transfer), then end; when it fails the call goes on (but for a
        `call.ending` hook's: the call was ending anyway)."""
        s = self._session
        assert handle.handoff is not None and handle.ending is not None
        if self._hook is not None and handle.handoff is self._hook[0]:
            await self._hook_transfer()
            return
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
                await s.ending_hooks.run_tools(self._hooks_reason(s.ended.reason))
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
