"""G.711 μ-law (PCMU) codec, table-driven and pure.

The tables are built once at import from the ITU-T G.711 reference algorithm (the one in Sun's
g711.c and CPython's audioop): encode is one 64 Ki-entry lookup per sample, decode one 256-entry
lookup, both vectorised with numpy. Encoding is bit-exact with audioop.lin2ulaw, decoding with
audioop.ulaw2lin.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["SILENCE_BYTE", "pcm16_to_ulaw", "ulaw_to_pcm16", "ulaw_to_float", "ulaw_silence"]

SILENCE_BYTE = 0xFF
_BIAS = 0x84
_CLIP = 8159


_SEG_END = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)


def _encode_sample(sample: int) -> int:
    # Sun g711.c st_14linear2ulaw on the 14-bit value, as audioop.lin2ulaw does.
    value = sample >> 2
    if value < 0:
        value, mask = -value, 0x7F
    else:
        mask = 0xFF
    value = min(value, _CLIP) + (_BIAS >> 2)
    for segment, end in enumerate(_SEG_END):
        if value <= end:
            return ((segment << 4) | ((value >> (segment + 1)) & 0x0F)) ^ mask
    return 0x7F ^ mask


def _decode_byte(byte: int) -> int:
    u = ~byte & 0xFF
    t = ((u & 0x0F) << 3) + _BIAS
    t <<= (u & 0x70) >> 4
    return (_BIAS - t) if u & 0x80 else (t - _BIAS)


# Indexed by the int16 sample reinterpreted as uint16 (two's complement).
_ENCODE = np.array(
    [_encode_sample(i - 65536 if i >= 32768 else i) for i in range(65536)], dtype=np.uint8
)
_DECODE = np.array([_decode_byte(b) for b in range(256)], dtype=np.int16)
_DECODE_LE = _DECODE.astype("<i2")
_DECODE_FLOAT = (_DECODE.astype(np.float32) / 32768.0).astype(np.float32)


def pcm16_to_ulaw(pcm: bytes) -> bytes:
    """Encode little-endian int16 PCM to μ-law, one byte per sample."""
    samples = np.frombuffer(pcm, dtype="<i2").view(np.uint16)
    return _ENCODE[samples].tobytes()


def ulaw_to_pcm16(ulaw: bytes) -> bytes:
    """Decode μ-law to little-endian int16 PCM."""
    # One gather from a little-endian table: no second copy (this runs on every inbound frame).
    return _DECODE_LE.take(np.frombuffer(ulaw, dtype=np.uint8)).tobytes()


def ulaw_to_float(ulaw: bytes) -> npt.NDArray[np.float32]:
    """Decode μ-law straight to float32 in [-1, 1), the input the VAD and turn models take."""
    return _DECODE_FLOAT[np.frombuffer(ulaw, dtype=np.uint8)]


def ulaw_silence(n_bytes: int) -> bytes:
    return bytes([SILENCE_BYTE]) * n_bytes
