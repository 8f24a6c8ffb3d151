"""How a call's greeting starts: a fixed `firstMessage`, the model's own first words, or none.

Split from `voice.session` because it runs once, as the call starts, and only decides which
reply to start and how (`firstMessageMode`); the reply itself is played like any other.

`assistant-speaks-first-with-model-generated-message`: the model is asked at once for its reply
to the prompt alone, and that reply, streamed as any other, is the greeting.
"""

from __future__ import annotations

import logging

from voice.assistant import Assistant
from voice.clock import Clock
from voice.history import Conversation
from voice.session_replies import Replies
from voice.turns import TurnTaker

__all__ = ["start_greeting"]

log = logging.getLogger("ava.call")


def start_greeting(
    assistant: Assistant,
    replies: Replies,
    *,
    history: Conversation,
    turns: TurnTaker,
    clock: Clock,
    call_id: str,
) -> None:
    if assistant.first_message_mode == "assistant-speaks-first-with-model-generated-message":
        _start_model_greeting(replies, history=history, turns=turns, clock=clock, call_id=call_id)
        return
    text = assistant.first_message
    if not text or assistant.first_message_mode != "assistant-speaks-first":
        return
    handle = replies.start_fixed_line(text)
    handle.reply.is_greeting = True


def _start_model_greeting(
    replies: Replies, *, history: Conversation, turns: TurnTaker, clock: Clock, call_id: str
) -> None:
    """The model's reply to the prompt alone (no caller turn), asked for as the call starts
    and streamed like any reply: it is the greeting (interruptible as the greeting is, in
    the history as the assistant's first message), never kept in the greeting cache."""
    messages = history.messages()
    if not messages:
        # Nothing to generate from (and an empty request is refused): start listening.
        log.info("call %s: no prompt for a model-generated greeting", call_id)
        return
    reply = replies.start("", messages).reply
    reply.is_greeting = True
    now = clock.now()
    reply.committed_at = now
    reply.release()
    # The assistant has the floor while the model answers: the caller's "hello?" meanwhile
    # is answered after the greeting (as under a greeting that cannot be interrupted).
    turns.assistant_started(now)
