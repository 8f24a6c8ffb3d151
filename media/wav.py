"""Read and write WAV files as μ-law 8 kHz, the telephony format the call loop speaks."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from media.g711 import pcm16_to_ulaw, ulaw_to_pcm16
from media.resample import resample_once

__all__ = ["read_wav_ulaw", "write_wav_ulaw"]


def read_wav_ulaw(path: Path) -> bytes:
    """PCM WAV (8/16-bit, any rate, mono or stereo) → μ-law 8 kHz mono."""
    try:
        with wave.open(str(path), "rb") as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            frames = wav.readframes(wav.getnframes())
    except (OSError, wave.Error, EOFError) as exc:
        raise ValueError(f"{path}: not a readable PCM WAV file ({exc})") from exc
    if width == 1:
        samples = (np.frombuffer(frames, np.uint8).astype(np.int16) - 128) << 8
    elif width == 2:
        samples = np.frombuffer(frames, "<i2")
    else:
        raise ValueError(f"{path}: {8 * width}-bit samples; use 8- or 16-bit PCM")
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1).astype(np.int16)
    return pcm16_to_ulaw(resample_once(samples.astype("<i2").tobytes(), rate, 8000))


def write_wav_ulaw(path: Path, ulaw: bytes) -> None:
    """μ-law 8 kHz → 16-bit PCM WAV (what every player opens)."""
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(ulaw_to_pcm16(ulaw))
