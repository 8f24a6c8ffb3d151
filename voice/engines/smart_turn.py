"""Smart-turn v3.2: does the caller's last utterance sound finished? (Whisper-encoder classifier.)

Takes the last 8 s of caller audio; ~30–45 ms per call on one core, so callers run it in the
inference executor. The session is shared and onnxruntime's `run` is thread-safe.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from media.resample import resample_once
from voice.engines.executor import background_priority, load_onnx_session
from voice.engines.mel import N_FRAMES, N_MELS, SAMPLE_RATE, log_mel_spectrogram
from voice.errors import ConfigError, ProviderError

__all__ = ["SmartTurn"]

_SECONDS = 8
_SAMPLES = _SECONDS * SAMPLE_RATE


class SmartTurn:
    """`TurnDetector` over the smart-turn v3 ONNX model."""

    name = "smart-turn"

    def __init__(self, path: Path) -> None:
        self._session = load_onnx_session(path, what="smart-turn")
        inputs = self._session.get_inputs()
        if [i.name for i in inputs] != ["input_features"] or inputs[0].shape[1:] != [
            N_MELS,
            N_FRAMES,
        ]:
            raise ConfigError(f"{path} is not a smart-turn v3 model (inputs {inputs})")

    def completion_probability(self, pcm16: bytes, sample_rate: int) -> float:
        """Probability in [0, 1] that the turn is complete. Blocking (CPU-heavy): call it from a
        worker thread, which it lowers to background priority (the media loop comes first)."""
        background_priority()
        pcm16 = pcm16[: len(pcm16) & ~1]
        if sample_rate != SAMPLE_RATE:
            # Only the tail matters; cutting before resampling saves work on long turns.
            keep = (_SECONDS + 1) * sample_rate * 2
            pcm16 = resample_once(pcm16[-keep:], sample_rate, SAMPLE_RATE)
        audio = np.frombuffer(pcm16, dtype="<i2")[-_SAMPLES:].astype(np.float32) / 32768.0
        # Pad at the start, as the model was trained: the turn's end is always at the end.
        audio = np.pad(audio, (_SAMPLES - audio.size, 0))
        features = log_mel_spectrogram(audio)[None, :, :]
        try:
            (probability,) = self._session.run(None, {"input_features": features})
        except Exception as exc:  # onnxruntime's exceptions are untyped
            raise ProviderError(self.name, f"inference failed: {exc}", retryable=False) from exc
        # The graph ends in a sigmoid already; clip only guards against float noise.
        return float(np.clip(probability.reshape(-1)[0], 0.0, 1.0))
