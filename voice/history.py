"""The conversation sent to the LLM, and what the caller actually heard of a cut-off reply."""

from __future__ import annotations

from collections.abc import Sequence

from voice.assistant import ModelConfig
from voice.types import ChatMessage, ToolCall, WordTiming

__all__ = ["Conversation", "heard_text"]


class Conversation:
    def __init__(self, model: ModelConfig) -> None:
        self._messages: list[ChatMessage] = [
            ChatMessage(role=m["role"], content=str(m.get("content", "")))
            for m in model.messages
            if m.get("role") in ("system", "user", "assistant")
        ]

    def messages(self) -> list[ChatMessage]:
        return list(self._messages)

    def add_user(self, text: str) -> int:
        self._messages.append(ChatMessage("user", text))
        return len(self._messages) - 1

    def add_assistant(self, text: str) -> int:
        self._messages.append(ChatMessage("assistant", text))
        return len(self._messages) - 1

    def add_tool_calls(self, calls: Sequence[ToolCall]) -> int:
        self._messages.append(ChatMessage("assistant", "", tool_calls=list(calls)))
        return len(self._messages) - 1

    def add_tool_result(self, call_id: str, result: str) -> int:
        self._messages.append(ChatMessage("tool", result, tool_call_id=call_id))
        return len(self._messages) - 1

    def truncate_assistant(self, index: int, heard: str) -> None:
        """The caller cut the reply off: the model must only believe it said what was heard."""
        message = self._messages[index]
        if message.role != "assistant":
            raise ValueError(f"message {index} is a {message.role} message")
        message.content = heard
        message.interrupted = True


def heard_text(
    full_text: str,
    words: Sequence[WordTiming] | None,
    total_seconds: float,
    heard_seconds: float,
) -> str:
    """The prefix of `full_text` the caller heard after `heard_seconds` of its audio.

    With word timings, the words that finished playing; without, a prefix proportional to the
    time played, cut back to a word boundary.
    """
    if heard_seconds <= 0 or not full_text:
        return ""
    if heard_seconds >= total_seconds:
        return full_text
    if words:
        return " ".join(w.word for w in words if w.end <= heard_seconds)
    cut = int(len(full_text) * heard_seconds / total_seconds)
    if cut >= len(full_text):
        return full_text
    if not full_text[cut].isspace():
        space = full_text.rfind(" ", 0, cut + 1)
        cut = space if space > 0 else 0
    return full_text[:cut].rstrip()
