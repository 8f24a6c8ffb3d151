"""A plain energy VAD: no model, deterministic. For tests and as a last-resort fallback."""

from __future__ import annotations

import numpy as np

__all__ = ["EnergyVad", "EnergyVadStream"]


class EnergyVadStream:
    def __init__(self, threshold_dbfs: float, window: int) -> None:
        self._threshold = threshold_dbfs
        self._window = window
        self._buffer = np.zeros(0, dtype=np.float32)

    def process(self, pcm16: bytes) -> float | None:
        samples = np.frombuffer(pcm16, dtype="<i2").astype(np.float32) / 32768.0
        self._buffer = np.concatenate((self._buffer, samples))
        probability: float | None = None
        while len(self._buffer) >= self._window:
            window, self._buffer = self._buffer[: self._window], self._buffer[self._window :]
            rms = float(np.sqrt(np.mean(window * window))) + 1e-9
            dbfs = 20 * np.log10(rms)
            # A soft step 6 dB wide around the threshold, so probabilities are not only 0 or 1.
            probability = float(np.clip((dbfs - self._threshold) / 6 + 0.5, 0.0, 1.0))
        return probability


class EnergyVad:
    """`window` is in 8 kHz samples (256: 32 ms); a 16 kHz stream uses the same duration."""

    def __init__(self, threshold_dbfs: float = -35.0, window: int = 256) -> None:
        self.threshold_dbfs = threshold_dbfs
        self.window = window
        self.window_seconds = window / 8000

    def stream(self, sample_rate: int = 8000) -> EnergyVadStream:
        if sample_rate <= 0:
            raise ValueError(f"sample rate must be positive, got {sample_rate}")
        return EnergyVadStream(self.threshold_dbfs, round(self.window_seconds * sample_rate))
