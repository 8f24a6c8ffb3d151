"""Mono WAVs derived from a stereo 16-bit WAV on the fly, by byte range (HTTP Range requests).

A stored recording is stereo (caller left, assistant right). The mono mix and the single
channels are computed while they are served: byte `i` of the derived file is known from a byte
range of the stereo one, so a player seeking in the mono mix costs one ranged read. Pure apart
from the `read` callable it is given.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import Literal

import numpy as np

__all__ = ["Channel", "derived_range", "derived_size", "mono_header", "mono_of"]

Channel = Literal["mix", "left", "right"]
_HEADER = 44
_SAMPLES = 16 * 1024  # mono samples per step


def mono_header(sample_rate: int, data_bytes: int) -> bytes:
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF", 36 + data_bytes, b"WAVE", b"fmt ", 16, 1, 1, sample_rate, sample_rate * 2, 2,
        16, b"data", data_bytes,
    )  # fmt: skip


def derived_size(stereo_size: int) -> int:
    """Bytes in the mono file derived from a stereo file of `stereo_size` bytes."""
    return _HEADER + max(0, stereo_size - _HEADER) // 4 * 2


def mono_of(stereo: bytes, channel: Channel) -> bytes:
    """One channel, or the mix, of interleaved stereo int16 PCM."""
    frames = np.frombuffer(stereo, "<i2", len(stereo) // 4 * 2).reshape(-1, 2)
    if channel == "left":
        return frames[:, 0].tobytes()
    if channel == "right":
        return frames[:, 1].tobytes()
    # Summed, not averaged: the two sides rarely speak at once, and halving each would make
    # the mix quieter than either channel.
    mixed = np.clip(frames.astype(np.int32).sum(axis=1), -32768, 32767)
    return bytes(mixed.astype("<i2").tobytes())


def derived_range(
    read: Callable[[int, int], Iterator[bytes]],
    stereo_size: int,
    sample_rate: int,
    channel: Channel,
    start: int,
    end: int,
) -> Iterator[bytes]:
    """Bytes [start, end) of the mono file derived from the stereo one; `read(a, b)` yields
    bytes [a, b) of the stereo file."""
    size = derived_size(stereo_size)
    end = min(end, size)
    if start < _HEADER:
        yield mono_header(sample_rate, size - _HEADER)[start:end]
        start = _HEADER
    if start >= end:
        return
    first, last = (start - _HEADER) // 2, (end - _HEADER + 1) // 2  # mono samples
    skip = (start - _HEADER) % 2
    want = end - start
    for s in range(first, last, _SAMPLES):
        stop = min(last, s + _SAMPLES)
        stereo = b"".join(read(_HEADER + 4 * s, _HEADER + 4 * stop))
        piece = mono_of(stereo, channel)[skip:]
        skip = 0
        piece = piece[:want]
        want -= len(piece)
        if piece:
            yield piece
        if want <= 0:
            return
