"""Typed option objects the provider adapters take instead of reading configuration themselves.

Latency budgets are value objects (as httpx's `Timeout` is) so that the session, the factory that
builds adapters and the benchmarks all speak about the same three deadlines.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from voice.errors import ConfigError

__all__ = ["ElevenLabsVoiceSettings", "ReconnectPolicy", "StageTimeouts"]


def _require_positive(owner: str, values: dict[str, object]) -> None:
    for field_name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if not value > 0:
            raise ConfigError(f"{owner}.{field_name} must be positive, got {value!r}")


@dataclass(frozen=True, slots=True)
class StageTimeouts:
    """Per-stage deadlines, in seconds, of one provider round trip.

    stt_connect: opening the streaming recognition socket.
    llm_first_token: from sending the request to the first text or tool-call delta.
    tts_first_byte: from sending the text to the first audio byte.
    """

    stt_connect: float = 3.0
    llm_first_token: float = 4.0
    tts_first_byte: float = 3.0

    def __post_init__(self) -> None:
        _require_positive("StageTimeouts", asdict(self))


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """How a streaming socket that dropped mid-call is re-opened.

    Each drop gets up to `attempts` connects, the first immediately and then after `backoff`,
    doubling up to `max_backoff`. `max_reconnects` caps the drops survived per stream, so a server
    that accepts and then drops every connection cannot keep a call in a reconnect loop.
    """

    attempts: int = 3
    backoff: float = 0.1
    max_backoff: float = 1.0
    max_reconnects: int = 3

    def __post_init__(self) -> None:
        _require_positive("ReconnectPolicy", asdict(self))

    def delay(self, attempt: int) -> float:
        """Seconds to wait before connect attempt `attempt` (0-based) of one drop."""
        if attempt == 0:
            return 0.0
        return float(min(self.backoff * 2 ** (attempt - 1), self.max_backoff))


@dataclass(frozen=True, slots=True)
class ElevenLabsVoiceSettings:
    """`voice_settings` of an ElevenLabs context (protocols.md §3.1, the API's defaults)."""

    stability: float = 0.5
    similarity_boost: float = 0.75
    style: float = 0.0
    use_speaker_boost: bool = True
    speed: float = 1.0

    def __post_init__(self) -> None:
        for name in ("stability", "similarity_boost", "style"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"ElevenLabsVoiceSettings.{name} must be in [0, 1], got {value}")
        if not 0.7 <= self.speed <= 1.2:
            raise ConfigError(
                f"ElevenLabsVoiceSettings.speed must be in [0.7, 1.2], got {self.speed}"
            )

    def to_json(self) -> dict[str, float | bool]:
        return asdict(self)
