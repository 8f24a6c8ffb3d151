"""WebRTC's GMM VAD: the fallback when the Silero model cannot be used. Binary, 20 ms frames,
at 8 or 16 kHz (the call's rate)."""

from __future__ import annotations

import webrtcvad

from voice.errors import ConfigError

__all__ = ["WebRtcVad", "WebRtcVadStream"]

_RATES = (8000, 16000)


class WebRtcVad:
    """`VadModel`. `aggressiveness` 0–3: higher rejects more non-speech (and more weak speech)."""

    name = "webrtc"
    window_seconds = 0.02

    def __init__(self, aggressiveness: int = 2) -> None:
        if aggressiveness not in (0, 1, 2, 3):
            raise ConfigError(f"webrtc VAD aggressiveness must be 0–3, got {aggressiveness}")
        self.aggressiveness = aggressiveness

    def stream(self, sample_rate: int = 8000) -> WebRtcVadStream:
        if sample_rate not in _RATES:
            raise ConfigError(f"webrtc VAD takes 8 or 16 kHz audio, not {sample_rate} Hz")
        return WebRtcVadStream(self.aggressiveness, sample_rate)


class WebRtcVadStream:
    """`VadStream`: 1.0 or 0.0 for the newest complete 20 ms frame."""

    def __init__(self, aggressiveness: int, sample_rate: int = 8000) -> None:
        # The C object keeps adaptive noise estimates, so each call gets its own.
        self._vad = webrtcvad.Vad(aggressiveness)
        self._rate = sample_rate
        self._frame_bytes = sample_rate // 50 * 2  # 20 ms of PCM16
        self._pending = bytearray()

    def process(self, pcm16: bytes) -> float | None:
        self._pending += pcm16
        result: float | None = None
        size = self._frame_bytes
        while len(self._pending) >= size:
            frame = bytes(self._pending[:size])
            del self._pending[:size]
            result = 1.0 if self._vad.is_speech(frame, self._rate) else 0.0
        return result
