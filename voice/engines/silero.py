"""Silero VAD over onnxruntime: one shared session, one small state object per call.

The model runs natively at both call rates: a window is 32 ms, 256 samples plus the previous 32
of context at 8 kHz (a phone call), 512 plus 64 at 16 kHz (a browser call), as it was trained;
the recurrent state carries across windows. Runs inline on the event loop: ~0.1 ms per window.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from voice.engines.executor import load_onnx_session
from voice.errors import ConfigError, ProviderError

__all__ = ["SileroVad", "SileroVadStream"]

_WINDOWS = {8000: (256, 32), 16000: (512, 64)}  # rate: (window, context) in samples
_WINDOW_SECONDS = 0.032

# Long non-speech (silence or line noise at 8 kHz, music) drifts the recurrent state until the
# model under-reports the speech that follows; pipecat measured this and resets the state about
# every 2 s of audio, but only during a run of clearly non-speech windows (~160 ms below 0.1) so
# a reset never lands inside a word. We have no VAD state machine here, so the low-confidence run
# alone stands in for pipecat's "VAD is quiet" condition.
_RESET_INTERVAL_WINDOWS = int(2.0 / _WINDOW_SECONDS)
_RESET_MAX_CONFIDENCE = 0.1
_RESET_LOW_WINDOWS = 5
# A window this quiet is not speech whatever the recurrent state says. Silero's state holds
# its probability near 1 for 100–250 ms after a phrase ends (the model's own hangover); the
# turn's silence timer would start that late. pipecat gates its VAD on volume for the same
# reason. -45 dBFS is far below telephone speech (-15…-30 dBFS) and above line noise.
_SILENCE_DBFS = -45.0
_SILENCE_MEAN_SQUARE = 10 ** (_SILENCE_DBFS / 10)
# After this many quiet windows (160 ms) the model is not run at all until the audio is loud
# again, and its state is reset instead: a caller listening to the assistant is quiet most of a
# call, and the inference is most of the VAD's cost. A reset state is what pipecat's periodic
# reset in quiet gives too, and speech onsets from it are detected as at the call's start.
_SKIP_AFTER_QUIET_WINDOWS = 5


class SileroVad:
    """`VadModel`: loads the ONNX model once; `stream()` per call."""

    name = "silero"
    window_seconds = _WINDOW_SECONDS

    def __init__(self, path: Path) -> None:
        self._session = load_onnx_session(path, what="Silero VAD")
        names = {i.name for i in self._session.get_inputs()}
        if names != {"input", "state", "sr"}:
            raise ConfigError(f"{path} is not a Silero VAD v5 model (inputs {sorted(names)})")

    def stream(self, sample_rate: int = 8000) -> SileroVadStream:
        if sample_rate not in _WINDOWS:
            raise ConfigError(f"Silero VAD takes 8 or 16 kHz audio, not {sample_rate} Hz")
        return SileroVadStream(self._session, sample_rate)


class SileroVadStream:
    """`VadStream`: per-call buffer, context and recurrent state."""

    def __init__(self, session: ort.InferenceSession, sample_rate: int = 8000) -> None:
        self._session = session
        self._window, self._context = _WINDOWS[sample_rate]
        self._pending = bytearray()
        self._sr = np.array(sample_rate, dtype=np.int64)
        self._input = np.zeros((1, self._context + self._window), dtype=np.float32)
        self._state: npt.NDArray[np.float32] = np.zeros((2, 1, 128), dtype=np.float32)
        self._windows_since_reset = 0
        self._low_windows = 0
        self._quiet_windows = 0
        self.resets = 0
        self.skipped = 0  # windows not run through the model (quiet)

    def reset(self) -> None:
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._input[:] = 0.0
        self._windows_since_reset = 0
        self.resets += 1

    def process(self, pcm16: bytes) -> float | None:
        self._pending += pcm16
        probability: float | None = None
        size, context, window_bytes = self._window, self._context, self._window * 2
        while len(self._pending) >= window_bytes:
            # A copy: a numpy view would pin the bytearray and forbid the `del` below.
            window = np.frombuffer(bytes(self._pending[:window_bytes]), dtype="<i2")
            # Slide the last samples of the previous window in as this window's context.
            self._input[0, :context] = self._input[0, size:]
            samples = self._input[0, context:]
            samples[:] = window * (1.0 / 32768.0)
            del self._pending[:window_bytes]
            if float(np.dot(samples, samples)) >= _SILENCE_MEAN_SQUARE * size:
                self._quiet_windows = 0
                probability = self._run()
                self._maybe_reset(probability)
                continue
            self._quiet_windows += 1
            if self._quiet_windows < _SKIP_AFTER_QUIET_WINDOWS:
                # Still run: the state must see the end of the phrase it is in.
                self._maybe_reset(self._run())
            elif self._quiet_windows == _SKIP_AFTER_QUIET_WINDOWS:
                self._state = np.zeros((2, 1, 128), dtype=np.float32)
                self._windows_since_reset = 0
                self.resets += 1
            else:
                self.skipped += 1
            probability = 0.0
        return probability

    def _run(self) -> float:
        try:
            out, state = self._session.run(
                None, {"input": self._input, "state": self._state, "sr": self._sr}
            )
        except Exception as exc:  # onnxruntime's exceptions are untyped
            raise ProviderError("silero", f"inference failed: {exc}", retryable=False) from exc
        self._state = state
        return float(out[0, 0])

    def _maybe_reset(self, probability: float) -> None:
        self._windows_since_reset += 1
        if probability < _RESET_MAX_CONFIDENCE:
            self._low_windows += 1
        else:
            self._low_windows = 0
        if (
            self._windows_since_reset >= _RESET_INTERVAL_WINDOWS
            and self._low_windows >= _RESET_LOW_WINDOWS
        ):
            self.reset()
