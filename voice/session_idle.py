"""The `customer.speech.timeout` hooks of one call: when the next is due and what it says.

Split from `voice.session` because how often each hook has fired (its `triggerMaxCount`, reset
by the caller's turn with `triggerResetMode: onUserSpeech`) is state of its own, and choosing
the hook and its line only computes. The session decides when both sides are quiet and says
the line.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from voice.assistant import Hook

__all__ = ["IdleHooks"]

log = logging.getLogger("ava.call")


class IdleHooks:
    def __init__(self, hooks: Sequence[Hook], *, call_id: str) -> None:
        self.call_id = call_id
        self.hooks = [h for h in hooks if h.on == "customer.speech.timeout"]
        self.counts = [0] * len(self.hooks)  # how often each has fired

    def due(self, last_activity: float) -> tuple[int, float] | None:
        """The hook due first, and when: counted from `last_activity` (the caller's voice, the
        end of the assistant's words). Only asked while both are quiet and no turn is under
        way."""
        due: tuple[int, float] | None = None
        for index, hook in enumerate(self.hooks):
            if self.counts[index] >= hook.options.trigger_max_count:
                continue
            at = last_activity + hook.options.timeout_seconds
            if due is None or at < due[1]:
                due = (index, at)
        return due

    def fire(self, index: int) -> tuple[str | None, bool]:
        """Count the hook as fired; its next line (None: it says nothing), and whether the call
        ends once that has been heard (the hook runs `endCall`). Several `say` actions are said
        as one line, each its next message (Vapi picks one at random; in turn is
        predictable)."""
        hook = self.hooks[index]
        count = self.counts[index]
        self.counts[index] = count + 1
        ending = any(action.type == "tool" for action in hook.do)
        says = [action.exact for action in hook.do if action.type == "say" and action.exact]
        log.info("call %s: idle hook %d fired (%d)", self.call_id, index, count + 1)
        if not says:
            return None, ending
        return " ".join(exact[count % len(exact)] for exact in says), ending

    def caller_spoke(self) -> None:
        """`triggerResetMode: onUserSpeech`: the caller's turn starts those hooks' counts anew."""
        for index, hook in enumerate(self.hooks):
            if hook.options.trigger_reset_mode == "onUserSpeech":
                self.counts[index] = 0
