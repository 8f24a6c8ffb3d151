"""MP3 encoding of 16-bit PCM (LAME, through the `lameenc` wheel), chunk by chunk, and of a
stereo WAV file into a stereo MP3 and its mono mix (blocking: run it in a worker thread)."""

from __future__ import annotations

import wave
from pathlib import Path

import lameenc

from media.wav_derive import mono_of

__all__ = ["Mp3Encoder", "bitrate_for", "wav_to_mp3"]


def bitrate_for(sample_rate: int, channels: int) -> int:
    """kbit/s that keep speech clear without wasting space: 32 per channel at 16 kHz and
    above, 16 per channel for telephone audio (8 kHz)."""
    return (16 if sample_rate < 16000 else 32) * channels


class Mp3Encoder:
    def __init__(self, sample_rate: int, channels: int) -> None:
        encoder = lameenc.Encoder()
        encoder.set_bit_rate(bitrate_for(sample_rate, channels))
        encoder.set_in_sample_rate(sample_rate)
        encoder.set_channels(channels)
        encoder.set_quality(5)  # LAME's "good" speed/quality trade-off
        self._encoder = encoder

    def encode(self, pcm: bytes) -> bytes:
        """Interleaved int16 little-endian PCM in; MP3 frames out (may be empty)."""
        return bytes(self._encoder.encode(pcm))

    def flush(self) -> bytes:
        return bytes(self._encoder.flush())


def wav_to_mp3(source: Path, stereo_path: Path, mono_path: Path) -> None:
    """A 16-bit stereo WAV as a stereo MP3 and an MP3 of its mono mix, a second at a time (memory
    stays bounded whatever the call's length). Raises OSError or wave.Error."""
    with wave.open(str(source), "rb") as wav:
        rate, channels = wav.getframerate(), wav.getnchannels()
        if channels != 2 or wav.getsampwidth() != 2:
            raise wave.Error(f"{source}: not a 16-bit stereo WAV")
        stereo, mono = Mp3Encoder(rate, 2), Mp3Encoder(rate, 1)
        with stereo_path.open("wb") as s_out, mono_path.open("wb") as m_out:
            while pcm := wav.readframes(rate):
                s_out.write(stereo.encode(pcm))
                m_out.write(mono.encode(mono_of(pcm, "mix")))
            s_out.write(stereo.flush())
            m_out.write(mono.flush())
