"""Errors of the call loop.

    VoiceError
    ├── ProviderError(retryable)        a speech/LLM provider failed; raised by adapters only
    │   ├── ProviderTimeout             a stage deadline passed (connect, first token, first byte)
    │   └── ProviderProtocolError       the provider sent something we cannot understand
    └── ConfigError                     an assistant or engine configuration cannot be used

Adapters convert foreign exceptions (httpx, websockets, onnxruntime, …) into these at their
boundary, chaining `from exc`, so the session decides retry / fallback / hang-up on one type.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ProviderError",
    "ProviderProtocolError",
    "ProviderTimeout",
    "VoiceError",
]


class VoiceError(Exception):
    """Base class of every error raised by the voice package."""


class ProviderError(VoiceError):
    def __init__(self, provider: str, message: str, *, retryable: bool) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        self.retryable = retryable


class ProviderTimeout(ProviderError):
    def __init__(self, provider: str, stage: str, seconds: float) -> None:
        super().__init__(provider, f"{stage} took longer than {seconds:.3f}s", retryable=True)
        self.stage = stage
        self.seconds = seconds


class ProviderProtocolError(ProviderError):
    def __init__(self, provider: str, message: str) -> None:
        super().__init__(provider, message, retryable=False)


class ConfigError(VoiceError):
    """The configuration cannot be used; the message says which field and why."""
