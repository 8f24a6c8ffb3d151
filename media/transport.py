"""The contract between a call and its media connection, with Twilio Media Streams semantics.

Outbound audio is queued by the far end and played in order; a mark is echoed when everything
before it has played (or was dropped by a clear); `send_clear` drops queued audio at once. The
Twilio websocket and the WebRTC peer connection both implement `CallTransport`.

Audio both ways is in the call's format (`media.audio_format.AudioFormat`), 20 ms frames inbound:
Twilio's is μ-law 8 kHz (`TELEPHONE`), WebRTC's 16 kHz PCM16 (`WebRtcTransport.audio_format`).
A transport declares it (`audio_format`); the session and its engines follow it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from media.audio_format import MULAW_8K, AudioFormat

__all__ = [
    "TELEPHONE",
    "AudioReceived",
    "CallTransport",
    "DtmfReceived",
    "InboundEvent",
    "MarkReceived",
    "StreamStopped",
    "TransportClosed",
]

TELEPHONE = MULAW_8K  # Twilio Media Streams' format: a phone call's audio


@dataclass(frozen=True, slots=True)
class AudioReceived:
    """Caller audio in the transport's `audio_format`, normally one 20 ms frame."""

    audio: bytes


@dataclass(frozen=True, slots=True)
class MarkReceived:
    name: str


@dataclass(frozen=True, slots=True)
class DtmfReceived:
    digit: str


@dataclass(frozen=True, slots=True)
class StreamStopped:
    """The far end ended the stream (Twilio `stop`: the caller hung up or the call was ended)."""


InboundEvent = AudioReceived | MarkReceived | DtmfReceived | StreamStopped


class TransportClosed(Exception):
    """The connection is gone. `malformed` is set when it was closed because of bad input."""

    def __init__(self, detail: str = "connection closed", *, malformed: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.malformed = malformed


class CallTransport(Protocol):
    kind: str  # "twilio" | "webrtc"
    audio_format: AudioFormat  # both ways

    async def receive(self) -> InboundEvent:
        """Next inbound event; raises `TransportClosed` when the connection is gone."""
        ...

    async def send_audio(self, audio: bytes) -> None: ...

    async def send_mark(self, name: str) -> None: ...

    async def send_clear(self) -> None: ...

    async def close(self, reason: str) -> None:
        """End the media connection (for Twilio, closing the socket ends `<Connect>`).
        `reason` is the call's endedReason; the transport picks the close code."""
        ...
