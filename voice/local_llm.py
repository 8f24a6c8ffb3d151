"""The offline "LLM": a deterministic responder driven by the assistant's keyword rules.

No model ships on PyPI that runs fast enough on two cores, so without API keys AVA answers with
the assistant's own `model.rules`; any OpenAI-compatible server is the self-hosted LLM path.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence

from voice.assistant import KeywordRule, ModelConfig
from voice.phrases import find_phrase
from voice.types import ChatMessage, LlmDelta

__all__ = ["GREETING", "LocalResponder"]

# The answer to a turn without caller words, e.g. a model-generated first message.
GREETING = "Hello! How can I help you today?"
_WORD = re.compile(r"\s*\S+\s*")


class LocalResponder:
    name = "local"

    def __init__(self, config: ModelConfig, token_delay: float = 0.0) -> None:
        self.config = config
        self.token_delay = token_delay

    def rule_for(self, text: str) -> KeywordRule | None:
        """The first rule with a keyword among the caller's words (whole words, any case)."""
        return next((r for r in self.config.rules if find_phrase(text, r.keywords)), None)

    def reply_to(self, messages: Sequence[ChatMessage]) -> str:
        last_user = next((m.content for m in reversed(messages) if m.role == "user"), "")
        if not last_user.strip():
            return GREETING
        rule = self.rule_for(last_user)
        return rule.reply if rule is not None else self.config.fallback_reply

    async def stream(self, messages: Sequence[ChatMessage]) -> AsyncIterator[LlmDelta]:
        # One delta per word, like a real model's tokens, so chunking and barge-in see a stream.
        pieces = _WORD.findall(self.reply_to(messages))
        for piece in pieces:
            if self.token_delay > 0:
                await asyncio.sleep(self.token_delay)
            yield LlmDelta(text=piece)
        prompt_words = sum(len(m.content.split()) for m in messages)
        yield LlmDelta(prompt_tokens=prompt_words, completion_tokens=len(pieces))
