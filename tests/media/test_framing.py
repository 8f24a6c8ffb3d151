"""Framer: exact frames out, remainder kept, silence padding only on flush."""

from __future__ import annotations

import pytest

from media.framing import Framer


def test_exact_frames_and_remainder() -> None:
    framer = Framer()
    assert framer.push(b"a" * 100) == []
    assert framer.pending == 100
    frames = framer.push(b"b" * 250)
    assert frames == [b"a" * 100 + b"b" * 60, b"b" * 160]
    assert framer.pending == 30


def test_many_frames_in_one_push() -> None:
    data = bytes(range(256)) * 5
    frames = Framer(160).push(data)
    assert len(frames) == 8
    assert b"".join(frames) == data[:1280]


def test_arbitrary_push_sizes_preserve_the_stream() -> None:
    data = bytes(i % 251 for i in range(5000))
    framer = Framer(160)
    out: list[bytes] = []
    sizes = [1, 7, 159, 160, 161, 320, 999, 3]
    pos = 0
    i = 0
    while pos < len(data):
        n = sizes[i % len(sizes)]
        out += framer.push(data[pos : pos + n])
        pos += n
        i += 1
    tail = framer.flush(pad=False)
    assert all(len(f) == 160 for f in out)
    assert b"".join(out) + (tail or b"") == data


def test_flush_pads_with_ulaw_silence() -> None:
    framer = Framer(160)
    framer.push(b"\x01" * 10)
    assert framer.flush() == b"\x01" * 10 + b"\xff" * 150
    assert framer.pending == 0
    assert framer.flush() is None


def test_flush_without_padding() -> None:
    framer = Framer(4)
    framer.push(b"abcdef")
    assert framer.flush(pad=False) == b"ef"
    assert framer.flush(pad=False) is None


def test_flush_when_aligned_is_none() -> None:
    framer = Framer(4)
    assert framer.push(b"abcd") == [b"abcd"]
    assert framer.flush() is None


def test_frame_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Framer(0)
