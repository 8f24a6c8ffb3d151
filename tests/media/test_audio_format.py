"""The call audio format: frame sizes, silence and the PCM conversions, on byte fixtures."""

from __future__ import annotations

import numpy as np
import pytest

from media.audio_format import FRAME_SECONDS, MULAW_8K, PCM16_16K, AudioFormat
from media.framing import Framer
from media.transport import TELEPHONE

# int16 samples and their G.711 μ-law bytes (audioop.lin2ulaw), little-endian PCM.
PCM = np.array([0, 1000, -1000, 32767, -32768, 8], dtype="<i2").tobytes()
ULAW = bytes([0xFF, 0xCE, 0x4E, 0x80, 0x00, 0xFE])


def test_the_two_call_formats() -> None:
    assert (MULAW_8K.frame_bytes, PCM16_16K.frame_bytes) == (160, 640)
    assert (MULAW_8K.bytes_per_second, PCM16_16K.bytes_per_second) == (8000, 32000)
    assert (MULAW_8K.name, PCM16_16K.name) == ("mulaw_8000", "pcm16_16000")
    assert TELEPHONE == MULAW_8K
    assert FRAME_SECONDS == 0.02


def test_mulaw_encodes_and_decodes_by_g711() -> None:
    assert MULAW_8K.from_pcm16(PCM) == ULAW
    decoded = np.frombuffer(MULAW_8K.to_pcm16(ULAW), dtype="<i2")
    assert decoded.tolist() == [0, 988, -988, 32124, -32124, 8]
    assert MULAW_8K.to_float(ULAW) == pytest.approx(decoded / 32768.0)


def test_pcm16_is_carried_as_is() -> None:
    assert PCM16_16K.from_pcm16(PCM) == PCM
    assert PCM16_16K.to_pcm16(PCM) == PCM
    floats = PCM16_16K.to_float(PCM)
    assert floats.dtype == np.float32
    assert floats.tolist() == pytest.approx(
        [0, 1000 / 32768, -1000 / 32768, 32767 / 32768, -1, 8 / 32768]
    )


def test_silence_decodes_to_zero_in_both() -> None:
    for fmt in (MULAW_8K, PCM16_16K):
        silence = fmt.silence(fmt.frame_bytes)
        assert len(silence) == fmt.frame_bytes
        assert not np.frombuffer(fmt.to_pcm16(silence), dtype="<i2").any()
    assert MULAW_8K.silence(2) == b"\xff\xff" and PCM16_16K.silence(2) == b"\x00\x00"


def test_durations_round_to_whole_samples() -> None:
    assert PCM16_16K.bytes_for(0.1) == 3200 and MULAW_8K.bytes_for(0.1) == 800
    assert PCM16_16K.bytes_for(1 / 32000) == 0  # half a sample is no sample
    assert PCM16_16K.seconds(640) == pytest.approx(0.02)
    assert MULAW_8K.seconds(160) == pytest.approx(0.02)


def test_bad_formats_are_refused() -> None:
    with pytest.raises(ValueError):
        AudioFormat("alaw", 8000)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        AudioFormat("pcm16", 0)


def test_the_framer_pads_with_the_formats_silence() -> None:
    framer = Framer(PCM16_16K.frame_bytes, PCM16_16K.silence_byte)
    assert framer.push(b"\x01\x02" * 400) == [b"\x01\x02" * 320]
    assert framer.flush() == b"\x01\x02" * 80 + b"\x00" * 480
    ulaw = Framer(MULAW_8K.frame_bytes)
    ulaw.push(b"\x10" * 10)
    assert ulaw.flush() == b"\x10" * 10 + b"\xff" * 150
