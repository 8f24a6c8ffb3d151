"""What the caller heard of each reply, and what follows it: the session's reply bookkeeping.

Split from `voice.session` because recording a reply (all of it once played to its end, or
what was heard when it is cut) and carrying out what was to follow it (the end of the call, a
handoff, an end-call phrase) is one job with one rule: what was heard is fixed before anything
else can be sent. A reply is cut by the caller (a barge-in, `interrupt`) or by the assistant's
side (`cut`: a `say` or an ending line that replaces it); either way it is recorded once.

It works on the session it belongs to (its replies, playout and turn machine), as the loop
does: it is the session's own code, kept in its own module.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from voice.events import AssistantSpeechStarted, AssistantSpeechStopped, BargeIn
from voice.phrases import find_end_call_phrase
from voice.playout import Playing
from voice.reply import Reply
from voice.session_replies import ReplyHandle
from voice.turns import CommitTurn, Interrupt
from voice.types import EndedReason

if TYPE_CHECKING:
    from voice.session import CallSession

__all__ = ["ReplyBookkeeping"]

log = logging.getLogger("ava.call")


class ReplyBookkeeping:
    def __init__(self, session: CallSession) -> None:
        self._session = session

    async def interrupt(self, action: Interrupt, now: float) -> None:
        """The caller barged in: what they heard is kept, every reply is cancelled."""
        s = self._session
        replies = s._replies
        for handle in list(replies.live.values()):
            if handle.played is not None:  # it ended just before the caller spoke: all heard
                await self.played(handle, now)
        playing = s._playout.take()
        # What was heard is fixed now, before anything else can be sent.
        heard = self.record(playing, interrupted=True, now=now) if playing else ""
        for handle in list(replies.live.values()):
            replies.cancel(handle)
        replies.speculative = None
        await s._playout.clear(now)
        if playing is None:
            return
        replies.backoff_until = now + s.assistant.stop_speaking_plan.backoff_seconds
        s._emit(BargeIn(s.call_id, now - s._t0, action.onset - s._t0, heard))
        log.info("call %s: barge-in %.0f ms after onset", s.call_id, (now - action.onset) * 1e3)

    async def cut(self, now: float) -> None:
        """Stop what the assistant is saying, as a barge-in would (what was heard is kept),
        for a `say` or an ending line that replaces it. Nothing the caller is saying is
        touched."""
        s = self._session
        replies = s._replies
        for handle in list(replies.live.values()):
            if handle.played is not None:
                await self.played(handle, now)
        playing = s._playout.take()
        if playing is not None:
            self.record(playing, interrupted=True, now=now)
        for handle in list(replies.live.values()):
            replies.cancel(handle)
        replies.speculative = None
        await s._playout.clear(now)
        await s._apply(s.turns.set_assistant_audible(False, now), now)
        await s._apply(s.turns.reply_finished(now), now)

    async def audible(self, reply: Reply, at: float) -> None:
        """The reply's first audio reached the caller at `at`."""
        s = self._session
        handle = s._replies.live.get(reply)
        playing = s._playout.playing
        if handle is None or playing is None or playing.reply is not reply:
            return  # cut off before the loop heard of it
        s._emit(AssistantSpeechStarted(s.call_id, at - s._t0))
        s.turns.interruptible = (
            handle.ending is None
            and handle.interruptible
            and (not reply.is_greeting or s.assistant.first_message_interruptions_enabled)
        )
        now = s.clock.now()
        if reply.is_greeting:
            s.turns.assistant_started(now)
        await s._apply(s.turns.set_assistant_audible(True, now), now)

    async def played(self, handle: ReplyHandle, now: float) -> None:
        """The reply was played to its end: record it, then whatever was to follow it."""
        s = self._session
        playing = handle.played
        assert playing is not None
        s._replies.live.pop(handle.reply, None)
        handle.played = None
        reply = handle.reply
        self.record(playing, interrupted=False, now=now, commit=handle.commit)
        await s._apply(s.turns.set_assistant_audible(False, now), now)
        await s._apply(s.turns.reply_finished(now), now)
        s._last_activity = now
        if handle.ending is not None:
            if handle.handoff is None:
                await s._ending.end(*handle.ending)
            else:
                assert s._tg is not None
                s._tg.create_task(s._ending.hand_off(handle))
            return
        phrase = find_end_call_phrase(reply.text, s.assistant.end_call_phrases)
        if phrase is not None:
            await s._ending.end(EndedReason.ASSISTANT_SAID_END_CALL_PHRASE, phrase)

    def record(
        self,
        playing: Playing,
        *,
        interrupted: bool,
        now: float,
        commit: CommitTurn | None = None,
    ) -> str:
        """Put the reply in the history and the call record: all of it, or what was heard."""
        s = self._session
        if commit is None:
            handle = s._replies.live.get(playing.reply)
            commit = handle.commit if handle is not None else None
        if playing.first_sent is not None:
            s._emit(AssistantSpeechStopped(s.call_id, now - s._t0))
        return s._records.record(
            playing, interrupted=interrupted, now=now, at=now - s._t0, commit=commit
        )
