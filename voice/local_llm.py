"""The offline "LLM": a deterministic responder driven by the assistant's keyword rules.

No model ships on PyPI that runs fast enough on two cores, so without API keys AVA answers with
the assistant's own `model.rules`; any OpenAI-compatible server is the self-hosted LLM path.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from voice.assistant import KeywordRule, ModelConfig
from voice.phrases import normalize
from voice.types import ChatMessage, LlmDelta

__all__ = ["LocalResponder"]

_GREETING = "Hello! How can I help you today?"


class LocalResponder:
    name = "local"

    def __init__(self, config: ModelConfig, token_delay: float = 0.0) -> None:
        self.config = config
        self.token_delay = token_delay

    def rule_for(self, text: str) -> KeywordRule | None:
        padded = f" {normalize(text)} "
        for rule in self.config.rules:
            if any(f" {normalize(k)} " in padded for k in rule.keywords if normalize(k)):
                return rule
        return None

    def reply_to(self, messages: Sequence[ChatMessage]) -> str:
        last_user = next((m.content for m in reversed(messages) if m.role == "user"), "")
        if not last_user.strip():
            return _GREETING
        rule = self.rule_for(last_user)
        return rule.reply if rule is not None else self.config.fallback_reply

    async def stream(self, messages: Sequence[ChatMessage]) -> AsyncIterator[LlmDelta]:
        reply = self.reply_to(messages)
        words = reply.split(" ")
        for i, word in enumerate(words):
            if self.token_delay > 0:
                await asyncio.sleep(self.token_delay)
            yield LlmDelta(text=word if i == len(words) - 1 else word + " ")
        prompt_words = sum(len(m.content.split()) for m in messages)
        yield LlmDelta(prompt_tokens=prompt_words, completion_tokens=len(words))
