"""The conversation sent to the LLM, and what the caller actually heard of a cut-off reply."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from voice.assistant import ModelConfig
from voice.types import ChatMessage, ToolCall, WordTiming

__all__ = ["Conversation", "heard_text"]

_TOKEN = re.compile(r"\S+")


def _content(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: only text parts mean anything here
        return "".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


class Conversation:
    def __init__(self, model: ModelConfig) -> None:
        # Starting tool messages are dropped: without their tool call, APIs reject them.
        self._messages: list[ChatMessage] = [
            ChatMessage(role=m["role"], content=_content(m))
            for m in model.messages
            if m.get("role") in ("system", "user", "assistant")
        ]

    def __len__(self) -> int:
        return len(self._messages)

    def messages(self) -> list[ChatMessage]:
        """A copy: a request built from it must not change when the history does."""
        return [replace(m, tool_calls=list(m.tool_calls)) for m in self._messages]

    def add_user(self, text: str) -> int:
        return self._append(ChatMessage("user", text))

    def add_assistant(self, text: str) -> int:
        return self._append(ChatMessage("assistant", text))

    def add_tool_calls(self, calls: Sequence[ToolCall], text: str = "") -> int:
        return self._append(ChatMessage("assistant", text, tool_calls=list(calls)))

    def add_tool_result(self, call_id: str, result: str) -> int:
        return self._append(ChatMessage("tool", result, tool_call_id=call_id))

    def truncate_assistant(self, index: int, heard: str) -> None:
        """The caller cut the reply off: the model must only believe it said what was heard."""
        message = self._messages[index]
        if message.role != "assistant":
            raise ValueError(f"message {index} is a {message.role} message")
        message.content = heard
        message.interrupted = True

    def _append(self, message: ChatMessage) -> int:
        self._messages.append(message)
        return len(self._messages) - 1


def heard_text(
    full_text: str,
    words: Sequence[WordTiming] | None,
    total_seconds: float,
    heard_seconds: float,
) -> str:
    """The prefix of `full_text` the caller heard after `heard_seconds` of its audio.

    With word timings, the words that finished playing; without, a prefix proportional to the
    time played, cut back to a word boundary. The prefix keeps the text's own punctuation.
    """
    if heard_seconds <= 0 or not full_text.strip():
        return ""
    if heard_seconds >= total_seconds:
        return full_text
    tokens = list(_TOKEN.finditer(full_text))
    if words:
        finished = sum(1 for w in words if w.end <= heard_seconds)
        if finished >= len(words):
            return full_text  # only trailing silence was left
        # TTS words are the text's whitespace tokens for every engine we have; should a provider
        # split differently, scale the count (rounding down: claim less was heard, not more).
        count = finished if len(words) == len(tokens) else finished * len(tokens) // len(words)
    else:
        cut = int(len(full_text) * heard_seconds / total_seconds)
        count = sum(1 for t in tokens if t.end() <= cut)
    return full_text[: tokens[count - 1].end()] if count > 0 else ""
