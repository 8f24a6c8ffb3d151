"""A played (or cut-off) reply into the conversation history and the call's record.

The history gets what the model said, or — when the caller barged in — only what the caller
heard (mark echoes and TTS word timings). A reply that ran tools already put what it said before
them into the history with its tool calls; only the rest is added here. The call record gets a
`bot` message with what was heard (fillers included) and, for a committed turn, its latency.
"""

from __future__ import annotations

from collections.abc import Callable

from voice.events import CallEvent, MessageAdded, TurnCompleted
from voice.history import Conversation, heard_text
from voice.latency import turn_latency
from voice.playout import Playing
from voice.reply import Reply
from voice.turns import CommitTurn

__all__ = ["ReplyRecorder"]


class ReplyRecorder:
    def __init__(
        self, call_id: str, history: Conversation, emit: Callable[[CallEvent], None]
    ) -> None:
        self.call_id = call_id
        self.history = history
        self._emit = emit
        # for the end-of-call report's costs: replies that were played, or heard in part
        self.usage = {
            "promptTokens": 0,
            "cachedPromptTokens": 0,  # part of promptTokens, priced at the cached rate
            "completionTokens": 0,
            "characters": 0,
        }

    def record(
        self,
        playing: Playing,
        *,
        interrupted: bool,
        now: float,
        at: float,
        commit: CommitTurn | None,
    ) -> str:
        """Returns what the caller heard. `at`: seconds since the call started."""
        reply = playing.reply
        self.usage["promptTokens"] += reply.timings.prompt_tokens
        self.usage["cachedPromptTokens"] += reply.timings.cached_prompt_tokens
        self.usage["completionTokens"] += reply.timings.completion_tokens
        self.usage["characters"] += len(reply.spoken_text)
        if interrupted:
            heard_seconds = playing.tracker.clear(now)
            text = heard_text(
                reply.spoken_text, reply.words or None, reply.audio_seconds, heard_seconds
            )
        else:
            heard_seconds, text = reply.audio_seconds, reply.text
        if reply.used_tools:
            self._after_tools(reply, text, interrupted)
            if not interrupted:
                text = reply.spoken_text  # fillers and tool messages were heard too
        elif text:
            index = self.history.add_assistant(reply.text)
            if interrupted:
                self.history.truncate_assistant(index, text)
        if text or interrupted:  # a reply that failed before saying anything adds no message
            self._emit(
                MessageAdded(self.call_id, at, "bot", text, heard_seconds, interrupted=interrupted)
            )
        if commit is not None:
            latency = (
                turn_latency(commit, reply.timings, reply.committed_at, playing.first_sent)
                if playing.first_sent is not None
                else None
            )
            self._emit(
                TurnCompleted(
                    self.call_id, at, reply.index, reply.user_text, text, interrupted, latency
                )
            )
        return text

    def _after_tools(self, reply: Reply, heard: str, interrupted: bool) -> None:
        """The history already holds what was said before the tools ran; add the rest."""
        rest = reply.text[reply.text_in_history :].strip()
        if not rest:
            return
        if not interrupted:
            self.history.add_assistant(rest)
            return
        # `heard` is a prefix of everything spoken (fillers included); the last round's words
        # are its tail, so what of them was heard is as far as `heard` reaches into them.
        reached = len(heard) - (len(reply.spoken_text) - len(rest))
        if reached <= 0:
            return
        heard_rest = heard_text(rest, None, 1.0, min(reached / len(rest), 1.0))
        if heard_rest:
            index = self.history.add_assistant(rest)
            self.history.truncate_assistant(index, heard_rest)
