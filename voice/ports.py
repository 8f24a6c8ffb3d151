"""The small interfaces the call loop talks to.

A `CallSession` knows nothing about Twilio, WebRTC, Deepgram or Piper: it sees a
`media.transport.CallTransport`, streaming STT/LLM/TTS, a VAD and a turn model, and an
`EventSink`. Each real implementation and each test fake satisfies these.

Audio is in the call's format (`media.audio_format.AudioFormat`: μ-law 8 kHz on the phone, PCM16
16 kHz in a browser). An engine that can work in more than telephone audio says so by
`ChoosesAudioFormat`; `in_format` gives the session each engine bound to its call's format. An
engine without it speaks telephone audio only.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

from media.audio_format import AudioFormat
from media.transport import TELEPHONE
from voice.errors import ConfigError, ProviderError
from voice.events import CallEvent
from voice.text_feed import TextFeed
from voice.types import ChatMessage, LlmDelta, Transcript, TtsChunk

__all__ = [
    "DEFAULT_TRANSFER_MESSAGE",
    "CallControl",
    "CallControlError",
    "ChoosesAudioFormat",
    "EventSink",
    "LanguageModel",
    "ReportsReconnects",
    "SpeechToText",
    "SttStream",
    "StreamingTextToSpeech",
    "TextToSpeech",
    "TransferDestination",
    "TurnDetector",
    "VadModel",
    "VadStream",
    "in_format",
    "streaming_input",
]


# --- speech and language engines ---------------------------------------------------------------


class SttStream(Protocol):
    """One call's streaming recognition. Created when the call starts, closed when it ends."""

    async def send_audio(self, audio: bytes) -> None:
        """Caller audio in the call's format, in order, as it arrives."""
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
        """Audio for `text` in the engine's format (see `in_format`), streamed as produced."""
        ...


@runtime_checkable
class StreamingTextToSpeech(TextToSpeech, Protocol):
    """A TTS that takes text while the LLM is still writing it (ElevenLabs' multi-context
    socket): one `synthesize_stream()` per reply round, fed from its first words.

    `streams_text` says whether to use it: a fallback chain whose primary takes whole phrases
    says False, and the reply then cuts clauses for it as for any request-based TTS."""

    streams_text: bool

    def synthesize_stream(self, text: TextFeed) -> AsyncIterator[TtsChunk]:
        """Audio (the engine's format) for everything pushed into `text` until it is closed;
        word timings relative to the start of this call's audio. Calls `text.requested()` when
        it asks its service to generate. Reads `text` with its own cursor (it may be read
        again)."""
        ...


def streaming_input(tts: TextToSpeech) -> StreamingTextToSpeech | None:
    """`tts` as a streaming-input TTS, or None when it wants whole phrases."""
    if isinstance(tts, StreamingTextToSpeech) and tts.streams_text:
        return tts
    return None


@runtime_checkable
class ChoosesAudioFormat(Protocol):
    """An STT or TTS that works in more than one audio format."""

    def for_format(self, audio_format: AudioFormat) -> Any:
        """This engine speaking `audio_format` (itself when it already does). Raises
        ConfigError for a format it cannot do."""
        ...


E = TypeVar("E")


def in_format(engine: E, audio_format: AudioFormat) -> E:
    """`engine` bound to the call's `audio_format`. Raises ConfigError when it cannot be."""
    if isinstance(engine, ChoosesAudioFormat):
        bound: E = engine.for_format(audio_format)
        return bound
    if audio_format == TELEPHONE:
        return engine
    name = getattr(engine, "name", type(engine).__name__)
    raise ConfigError(f"{name} speaks telephone audio (μ-law 8 kHz), not {audio_format.name}")


@runtime_checkable
class ReportsReconnects(Protocol):
    """An adapter that reconnects a dropped socket by itself. After each such recovery it calls
    `on_reconnect` (when set) with what went wrong; the session records it. Set per call only:
    the adapters that have it are built per call."""

    on_reconnect: Callable[[ProviderError], None] | None


class VadStream(Protocol):
    """Per-call VAD state over a shared model."""

    def process(self, pcm16: bytes) -> float | None:
        """Feed PCM16 at the stream's rate; return the speech probability of the newest
        complete window, or None when no window completed."""
        ...


class VadModel(Protocol):
    window_seconds: float  # audio per decision: a voiced window's speech began up to this early

    def stream(self, sample_rate: int = 8000) -> VadStream:
        """Per-call state for PCM16 at `sample_rate` (8000 or 16000). Raises ConfigError for
        a rate the model does not take."""
        ...


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
# A tenant's destination is dialled by the operator's Twilio account: refuse at save time what
# Twilio would refuse mid-call (and anything else that is not a phone number).
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
_EXTENSION = re.compile(r"[0-9*#wW]{1,32}")  # Twilio's sendDigits


@dataclass(frozen=True, slots=True)
class TransferDestination:
    """Vapi's `TransferDestinationNumber`: where `transferCall` sends the caller."""

    number: str  # E.164
    message: str = DEFAULT_TRANSFER_MESSAGE  # said before the transfer; "" = silent
    extension: str | None = None
    caller_id: str | None = None
    description: str = ""

    @classmethod
    def from_vapi(cls, entry: Mapping[str, Any], where: str) -> TransferDestination:
        """A number destination as Vapi writes it (`transferCall.destinations[i]`, a hook's
        `transfer.destination`). Raises ConfigError naming `where` for a number AVA cannot dial."""
        number = entry.get("number")
        if not isinstance(number, str) or not _E164.fullmatch(number):
            raise ConfigError(f"{where}.number must be an E.164 number (+ and 2-15 digits)")
        caller_id = entry.get("callerId")
        if caller_id and not (isinstance(caller_id, str) and _E164.fullmatch(caller_id)):
            raise ConfigError(f"{where}.callerId must be an E.164 number (+ and 2-15 digits)")
        extension = entry.get("extension")
        if extension and not _EXTENSION.fullmatch(str(extension)):
            raise ConfigError(f"{where}.extension may hold only 0-9, *, # and w (a pause)")
        message = entry.get("message")
        return cls(
            number=number,
            message=DEFAULT_TRANSFER_MESSAGE if message is None else str(message),
            extension=str(extension) if extension else None,
            caller_id=caller_id or None,
            description=str(entry.get("description") or ""),
        )


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
