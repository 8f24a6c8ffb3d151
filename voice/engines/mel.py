"""Whisper log-mel features in numpy (what smart-turn v3 takes), without torch or transformers.

Same math as transformers' WhisperFeatureExtractor (and pipecat's vendored copy): centred STFT with
reflect padding, periodic Hann window, n_fft 400, hop 160, power spectrum, 80-bin Slaney mel
filterbank over 0–8 kHz, log10 with a 1e-10 floor, dynamic range clamped to max-8, then (x+4)/4.
The last STFT frame is dropped so 8 s gives exactly 800 frames.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["N_FRAMES", "N_MELS", "SAMPLE_RATE", "log_mel_spectrogram", "mel_filterbank"]

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
N_MELS = 80
N_FRAMES = 800  # 8 s
_N_SAMPLES = N_FRAMES * HOP
_MEL_FLOOR = 1e-10
_NORM_EPS = 1e-7


def _hz_to_mel(hz: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    # Slaney: linear below 1 kHz, logarithmic above.
    mel = 3.0 * hz / 200.0
    log = hz >= 1000.0
    mel[log] = 15.0 + np.log(hz[log] / 1000.0) * (27.0 / np.log(6.4))
    return mel


def _mel_to_hz(mel: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    hz = 200.0 * mel / 3.0
    log = mel >= 15.0
    hz[log] = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel[log] - 15.0))
    return hz


def mel_filterbank(
    n_mels: int = N_MELS, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE
) -> npt.NDArray[np.float64]:
    """(n_mels, n_fft // 2 + 1) triangular Slaney filters with area normalisation."""
    edges = _mel_to_hz(
        np.linspace(
            _hz_to_mel(np.array([0.0]))[0],
            _hz_to_mel(np.array([sample_rate / 2.0]))[0],
            n_mels + 2,
        )
    )
    bins = np.linspace(0.0, sample_rate // 2, n_fft // 2 + 1)
    slopes = edges[None, :] - bins[:, None]
    widths = np.diff(edges)
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    filters *= 2.0 / (edges[2 : n_mels + 2] - edges[:n_mels])
    return np.ascontiguousarray(filters.T)


_FILTERS = mel_filterbank()
_WINDOW = np.hanning(N_FFT + 1)[:-1]  # periodic, like torch.hann_window


def log_mel_spectrogram(
    audio: npt.NDArray[np.floating], normalize: bool = True
) -> npt.NDArray[np.float32]:
    """(80, 800) features of 8 s of 16 kHz audio; shorter input is zero-padded at the end.

    `normalize`: zero-mean unit-variance over the padded 8 s first, as smart-turn was trained.
    """
    x = np.asarray(audio, dtype=np.float32).reshape(-1)[:_N_SAMPLES]
    if x.size < _N_SAMPLES:
        x = np.pad(x, (0, _N_SAMPLES - x.size))
    if normalize:
        # float32 like the reference, which normalises before promoting to float64.
        x = (x - x.mean()) / np.sqrt(x.var() + _NORM_EPS)
    padded = np.pad(x.astype(np.float64), N_FFT // 2, mode="reflect")
    frames = sliding_window_view(padded, N_FFT)[::HOP]
    power = np.abs(np.fft.rfft(frames * _WINDOW, axis=-1)) ** 2  # (frames, bins)
    mel = np.maximum(_MEL_FLOOR, _FILTERS @ power.T)
    log_spec = np.log10(mel)[:, :-1]
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    features: npt.NDArray[np.float32] = ((log_spec + 4.0) / 4.0).astype(np.float32)
    return features
