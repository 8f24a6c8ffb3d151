"""The small interfaces the call loop talks to.

A `CallSession` knows nothing about Twilio, WebRTC, Deepgram or Piper: it sees a
`media.transport.CallTransport`, streaming STT/LLM/TTS, a VAD and a turn model, and an
`EventSink`. Each real implementation and each test fake satisfies these.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from voice.errors import ProviderError
from voice.events import CallEvent
from voice.types import ChatMessage, LlmDelta, Transcript, TtsChunk

__all__ = [
    "DEFAULT_TRANSFER_MESSAGE",
    "CallControl",
    "CallControlError",
    "EventSink",
    "LanguageModel",
    "ReportsReconnects",
    "SpeechToText",
    "SttStream",
    "TextToSpeech",
    "TransferDestination",
    "TurnDetector",
    "VadModel",
    "VadStream",
]


# --- speech and language engines ---------------------------------------------------------------


class SttStream(Protocol):
    """One call's streaming recognition. Created when the call starts, closed when it ends."""

    async def send_audio(self, audio: bytes) -> None:
        """μ-law 8 kHz caller audio, in order, as it arrives."""
        ...

    async def finalize(self) -> None:
        """Our VAD says the caller stopped: produce a final result for the audio so far."""
        ...

    def transcripts(self) -> AsyncIterator[Transcript]:
        """Interim and final results, in order; ends when the stream is closed."""
        ...

    async def aclose(self) -> None: ...


class SpeechToText(Protocol):
    name: str

    async def connect(self) -> SttStream: ...


class LanguageModel(Protocol):
    name: str

    def stream(self, messages: Sequence[ChatMessage]) -> AsyncIterator[LlmDelta]:
        """Stream a reply to `messages` (OpenAI chat order, system prompt first)."""
        ...


class TextToSpeech(Protocol):
    name: str
    voice_key: str  # identifies the voice for caching synthesized audio (greeting cache)

    def synthesize(self, text: str) -> AsyncIterator[TtsChunk]:
        """μ-law 8 kHz audio for `text`, streamed as it is produced."""
        ...


@runtime_checkable
class ReportsReconnects(Protocol):
    """An adapter that reconnects a dropped socket by itself. After each such recovery it calls
    `on_reconnect` (when set) with what went wrong; the session records it. Set per call only:
    the adapters that have it are built per call."""

    on_reconnect: Callable[[ProviderError], None] | None


class VadStream(Protocol):
    """Per-call VAD state over a shared model."""

    def process(self, pcm16: bytes) -> float | None:
        """Feed 8 kHz PCM16; return the speech probability of the newest complete window,
        or None when no window completed."""
        ...


class VadModel(Protocol):
    window_seconds: float  # audio per decision: a voiced window's speech began up to this early

    def stream(self) -> VadStream: ...


class TurnDetector(Protocol):
    """End-of-turn model (smart-turn). CPU-heavy: callers run it off the event loop."""

    def completion_probability(self, pcm16: bytes, sample_rate: int) -> float: ...


# --- observers ---------------------------------------------------------------------------------


class EventSink(Protocol):
    """Receives every event of a call. `emit` must not block or raise: a sink that can fall behind
    keeps its own bounded buffer and counts what it drops."""

    def emit(self, event: CallEvent) -> None: ...


# --- telephony control -------------------------------------------------------------------------

DEFAULT_TRANSFER_MESSAGE = "Transferring the call now"  # Vapi's default


@dataclass(frozen=True, slots=True)
class TransferDestination:
    """Vapi's `TransferDestinationNumber`: where `transferCall` sends the caller."""

    number: str  # E.164
    message: str = DEFAULT_TRANSFER_MESSAGE  # said before the transfer; "" = silent
    extension: str | None = None
    caller_id: str | None = None
    description: str = ""


class CallControlError(Exception):
    """The telephony side could not do what was asked (the call itself is still up)."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class CallControl(Protocol):
    """What the call loop may ask of the telephony provider about the live call.

    The voice layer never knows it is Twilio; `control.call_control` implements this."""

    async def transfer(self, destination: TransferDestination) -> None:
        """Redirect the live call to `destination`. Raises CallControlError."""
        ...

    async def aclose(self) -> None: ...
