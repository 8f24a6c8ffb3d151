"""WebRTC's GMM VAD: the fallback when the Silero model cannot be used. Binary, 20 ms frames."""

from __future__ import annotations

import webrtcvad

from voice.errors import ConfigError

__all__ = ["WebRtcVad", "WebRtcVadStream"]

_SAMPLE_RATE = 8000
_FRAME_BYTES = 320  # 20 ms of 8 kHz PCM16


class WebRtcVad:
    """`VadModel`. `aggressiveness` 0–3: higher rejects more non-speech (and more weak speech)."""

    name = "webrtc"
    window_seconds = 0.02

    def __init__(self, aggressiveness: int = 2) -> None:
        if aggressiveness not in (0, 1, 2, 3):
            raise ConfigError(f"webrtc VAD aggressiveness must be 0–3, got {aggressiveness}")
        self.aggressiveness = aggressiveness

    def stream(self) -> WebRtcVadStream:
        return WebRtcVadStream(self.aggressiveness)


class WebRtcVadStream:
    """`VadStream`: 1.0 or 0.0 for the newest complete 20 ms frame."""

    def __init__(self, aggressiveness: int) -> None:
        # The C object keeps adaptive noise estimates, so each call gets its own.
        self._vad = webrtcvad.Vad(aggressiveness)
        self._pending = bytearray()

    def process(self, pcm16: bytes) -> float | None:
        self._pending += pcm16
        result: float | None = None
        while len(self._pending) >= _FRAME_BYTES:
            frame = bytes(self._pending[:_FRAME_BYTES])
            del self._pending[:_FRAME_BYTES]
            result = 1.0 if self._vad.is_speech(frame, _SAMPLE_RATE) else 0.0
        return result
