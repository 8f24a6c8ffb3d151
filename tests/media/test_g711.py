"""G.711 μ-law: bit-exact with CPython's audioop over every input value."""

from __future__ import annotations

import warnings
from types import ModuleType

import numpy as np
import pytest

from media.g711 import SILENCE_BYTE, pcm16_to_ulaw, ulaw_silence, ulaw_to_float, ulaw_to_pcm16


@pytest.fixture(scope="module")
def audioop() -> ModuleType:
    # audioop warns on import (deprecated, removed in 3.13) and warnings are errors here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop

    return audioop


ALL_PCM16 = np.arange(-32768, 32768, dtype="<i2").tobytes()
ALL_ULAW = bytes(range(256))


def test_encode_matches_audioop_for_every_int16(audioop: ModuleType) -> None:
    assert pcm16_to_ulaw(ALL_PCM16) == audioop.lin2ulaw(ALL_PCM16, 2)


def test_decode_matches_audioop_for_every_byte(audioop: ModuleType) -> None:
    assert ulaw_to_pcm16(ALL_ULAW) == audioop.ulaw2lin(ALL_ULAW, 2)


def test_float_decode_is_pcm_scaled() -> None:
    pcm = np.frombuffer(ulaw_to_pcm16(ALL_ULAW), dtype="<i2")
    floats = ulaw_to_float(ALL_ULAW)
    assert floats.dtype == np.float32
    np.testing.assert_array_equal(floats, pcm.astype(np.float32) / 32768.0)
    assert floats.min() >= -1.0 and floats.max() < 1.0


def test_round_trip_is_stable_after_one_pass() -> None:
    # μ-law is lossy once, then idempotent: decode(encode(decode(x))) == decode(x).
    once = ulaw_to_pcm16(ALL_ULAW)
    assert ulaw_to_pcm16(pcm16_to_ulaw(once)) == once


def test_silence() -> None:
    assert SILENCE_BYTE == 0xFF
    assert ulaw_silence(160) == b"\xff" * 160
    assert ulaw_to_pcm16(ulaw_silence(4)) == b"\x00\x00" * 4
    assert pcm16_to_ulaw(b"\x00\x00" * 3) == b"\xff" * 3


def test_empty_input() -> None:
    assert pcm16_to_ulaw(b"") == b""
    assert ulaw_to_pcm16(b"") == b""
    assert ulaw_to_float(b"").shape == (0,)
