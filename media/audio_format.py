"""A call's audio format, declared by its transport: what every frame of the call is.

The phone leg is G.711 μ-law at 8 kHz (Twilio's wire format, which Deepgram and ElevenLabs
speak natively, so the cloud path never transcodes). A browser call has no such limit: WebRTC
carries 16 kHz linear PCM end to end, so the STT hears, and the caller hears, everything up to
8 kHz instead of a telephone's 4 kHz. Every stage asks the call's `AudioFormat` for frame sizes,
silence and the PCM the models take, instead of assuming telephone audio. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from media.g711 import SILENCE_BYTE, pcm16_to_ulaw, ulaw_to_float, ulaw_to_pcm16

__all__ = ["FRAME_SECONDS", "MULAW_8K", "PCM16_16K", "AudioFormat", "Encoding"]

FRAME_SECONDS = 0.02  # the unit every transport, the VAD and the pacing work in

Encoding = Literal["mulaw", "pcm16"]


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """Mono audio: `mulaw` (one byte per sample) or `pcm16` (int16 little-endian)."""

    encoding: Encoding
    sample_rate: int

    def __post_init__(self) -> None:
        if self.encoding not in ("mulaw", "pcm16"):
            raise ValueError(f"unknown audio encoding {self.encoding!r}")
        if self.sample_rate <= 0:
            raise ValueError(f"sample rate must be positive, got {self.sample_rate}")

    @property
    def name(self) -> str:
        """Short and stable (cache keys, logs): `mulaw_8000`, `pcm16_16000`."""
        return f"{self.encoding}_{self.sample_rate}"

    @property
    def sample_width(self) -> int:
        return 1 if self.encoding == "mulaw" else 2

    @property
    def bytes_per_second(self) -> int:
        return self.sample_rate * self.sample_width

    @property
    def frame_bytes(self) -> int:
        """One 20 ms frame: 160 bytes of μ-law 8 kHz, 640 of PCM16 16 kHz."""
        return self.bytes_for(FRAME_SECONDS)

    @property
    def silence_byte(self) -> int:
        """The byte that repeated is silence (μ-law 0xFF; PCM's zero)."""
        return SILENCE_BYTE if self.encoding == "mulaw" else 0

    def bytes_for(self, seconds: float) -> int:
        """Whole samples' worth of bytes for `seconds` (rounded down to a sample)."""
        return int(seconds * self.sample_rate) * self.sample_width

    def seconds(self, n_bytes: int) -> float:
        return n_bytes / self.bytes_per_second

    def silence(self, n_bytes: int) -> bytes:
        return bytes([self.silence_byte]) * n_bytes

    def to_pcm16(self, audio: bytes) -> bytes:
        """Int16 little-endian PCM at this format's rate (PCM16 is returned as is)."""
        return ulaw_to_pcm16(audio) if self.encoding == "mulaw" else audio

    def from_pcm16(self, pcm16: bytes) -> bytes:
        """Encode int16 PCM already at this format's rate."""
        return pcm16_to_ulaw(pcm16) if self.encoding == "mulaw" else pcm16

    def to_float(self, audio: bytes) -> npt.NDArray[np.float32]:
        """Float32 samples in [-1, 1), what the models take."""
        if self.encoding == "mulaw":
            return ulaw_to_float(audio)
        samples: npt.NDArray[np.float32] = np.frombuffer(audio, dtype="<i2").astype(np.float32)
        samples *= 1.0 / 32768.0
        return samples


MULAW_8K = AudioFormat("mulaw", 8000)  # the phone leg (Twilio Media Streams)
PCM16_16K = AudioFormat("pcm16", 16000)  # a browser call (WebRTC)
