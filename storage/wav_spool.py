"""A recording's spool file: a 16-bit PCM WAV written while the call runs, crash-safe.

`SpoolWriter` is the call's `voice.recording.StereoSink`. `write()` only appends to a bounded
in-memory buffer; a writer task (`run()`) moves the buffer to the file every `flush_seconds`
through a worker thread, so the call's event loop never touches the disk. The file is flushed to
the OS after every batch and its header sizes are rewritten every `header_every_seconds`: a
process killed at any moment (SIGKILL included) leaves a WAV that plays up to the last batch,
and `repair()` sets the header from the file's size on restart.

Overflow policy (the disk stalls): past `max_buffer_seconds` of unwritten audio, new audio is
dropped and counted (`dropped_bytes`), never waited for; as soon as there is room again the
dropped span is written as silence, so the file keeps the call's timeline and length.

A disk error (a full disk: ENOSPC) stops the recording, never the call: `failed` keeps the first
error, later audio is ignored, and what was written before stays a playable file. `opener` is
the seam tests inject such errors through.

While a writer has the file open it holds an exclusive `flock` on it, which the kernel releases
when the process dies: `is_live()` tells a file another process (or this one) is still writing
from one a crash left.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "HEADER_BYTES",
    "SpoolWriter",
    "is_live",
    "read_sidecar",
    "repair",
    "try_lock",
    "wav_header",
]

HEADER_BYTES = 44
_ZEROS = bytes(64 * 1024)


def wav_header(sample_rate: int, channels: int, data_bytes: int) -> bytes:
    """The canonical 44-byte header of a 16-bit PCM WAV."""
    block = channels * 2
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF", 36 + data_bytes, b"WAVE", b"fmt ", 16, 1, channels, sample_rate,
        sample_rate * block, block, 16, b"data", data_bytes,
    )  # fmt: skip


def _format(header: bytes) -> tuple[int, int]:
    """(sample_rate, channels) of a header this module wrote."""
    if len(header) < HEADER_BYTES or header[:4] != b"RIFF" or header[8:16] != b"WAVEfmt ":
        raise ValueError("not a WAV spool file")
    channels, sample_rate = struct.unpack_from("<HI", header, 22)
    if channels not in (1, 2) or not 1000 <= sample_rate <= 192_000:
        raise ValueError("not a WAV spool file")
    return sample_rate, channels


def repair(path: Path) -> tuple[int, int, int]:
    """Fix the header of a spool file a crash left from its size (a partial sample frame at the
    end is cut off). Returns (sample_rate, channels, data_bytes)."""
    with path.open("r+b") as f:
        sample_rate, channels = _format(f.read(HEADER_BYTES))
        size = os.fstat(f.fileno()).st_size
        data = max(0, size - HEADER_BYTES)
        data -= data % (channels * 2)
        f.truncate(HEADER_BYTES + data)
        f.seek(0)
        f.write(wav_header(sample_rate, channels, data))
        f.flush()
        os.fsync(f.fileno())
    return sample_rate, channels, data


def is_live(path: Path) -> bool:
    """Whether a writer (of any process) holds the file open."""
    try:
        with path.open("rb") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    except FileNotFoundError:
        return False
    return False


def try_lock(path: Path) -> BinaryIO | None:
    """The file, open and exclusively locked (closing it unlocks), or None when a writer or
    another keeper holds it, or it is gone."""
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def _open_for_writing(path: Path) -> BinaryIO:
    return path.open("wb")


def sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def read_sidecar(path: Path) -> dict[str, Any] | None:
    """What the writer recorded about the call when it opened the file (None if unreadable)."""
    try:
        data = json.loads(sidecar(path).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class SpoolWriter:
    def __init__(
        self,
        path: Path,
        sample_rate: int,
        *,
        channels: int = 2,
        flush_seconds: float = 0.5,
        header_every_seconds: float = 2.0,
        max_buffer_seconds: float = 10.0,
        offload: Callable[[Callable[[], None]], Awaitable[None]] | None = None,
        opener: Callable[[Path], BinaryIO] | None = None,
    ) -> None:
        """`offload` runs the blocking file work (default: a worker thread); `opener` opens the
        file for writing (default: `path.open("wb")`)."""
        self.path = path
        self._opener = opener or _open_for_writing
        self._offload = offload or asyncio.to_thread
        self.sample_rate = sample_rate
        self.channels = channels
        self.flush_seconds = flush_seconds
        self.header_every_seconds = header_every_seconds
        self._max_buffer = round(max_buffer_seconds * sample_rate) * channels * 2
        self._items: list[tuple[int, bytes]] = []  # (silence bytes before, pcm)
        self._buffered = 0
        self._gap = 0  # dropped bytes not yet written as silence
        self.dropped_bytes = 0
        self.data_bytes = 0  # written to the file
        self._file: BinaryIO | None = None
        self._header_at = 0.0
        self._closing = asyncio.Event()
        self.failed: OSError | None = None

    @property
    def bytes_per_second(self) -> int:
        return self.sample_rate * self.channels * 2

    @property
    def seconds(self) -> float:
        return self.data_bytes / self.bytes_per_second

    async def open(self, meta: dict[str, Any]) -> None:
        """Create the file (and its sidecar with `meta`) and take its lock. Raises OSError."""
        await self._offload(lambda: self._open(meta))

    def _open(self, meta: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        side = sidecar(self.path)
        tmp = side.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(meta), "utf-8")
        os.replace(tmp, side)
        f = self._opener(self.path)
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            f.write(wav_header(self.sample_rate, self.channels, 0))
            f.flush()
        except OSError:
            f.close()
            raise
        self._file = f
        self._header_at = time.monotonic()

    # --- the call's side (its event loop): never blocks -----------------------------------------

    def write(self, pcm: bytes) -> None:
        if self._closing.is_set() or self.failed is not None:
            return
        if self._buffered + len(pcm) > self._max_buffer:
            self.dropped_bytes += len(pcm)
            self._gap += len(pcm)
            return
        self._items.append((self._gap, pcm))
        self._buffered += len(pcm)  # silence costs no memory: written from a count
        self._gap = 0

    # --- the writer task -------------------------------------------------------------------------

    async def run(self) -> None:
        """Write batches until `aclose()`; a disk error stops the recording (not the call)."""
        while not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.flush_seconds):
                    await self._closing.wait()
            await self._flush()

    async def _flush(self) -> None:
        items, self._items, self._buffered = self._items, [], 0
        if not items or self.failed is not None:
            return
        try:
            await self._offload(lambda: self._write_items(items))
        except OSError as exc:
            self.failed = exc

    def _write_items(self, items: list[tuple[int, bytes]]) -> None:
        f = self._file
        assert f is not None
        for gap, pcm in items:
            while gap > 0:
                n = min(gap, len(_ZEROS))
                f.write(_ZEROS[:n])
                gap -= n
                self.data_bytes += n
            f.write(pcm)
            self.data_bytes += len(pcm)
        now = time.monotonic()
        if now - self._header_at >= self.header_every_seconds:
            self._write_header(f)
            self._header_at = now
        f.flush()

    def _write_header(self, f: BinaryIO) -> None:
        f.seek(0)
        f.write(wav_header(self.sample_rate, self.channels, self.data_bytes))
        f.seek(0, os.SEEK_END)

    async def aclose(self, run: asyncio.Task[None] | None = None) -> None:
        """Stop taking audio, write what is buffered, fix the header, sync and unlock. Pass the
        task running `run()` to wait for its last batch first."""
        self._closing.set()
        if run is not None:
            await run
        await self._flush()
        if self._file is not None:
            f, self._file = self._file, None
            await self._offload(lambda: self._close_file(f))

    def _close_file(self, f: BinaryIO) -> None:
        try:
            self._write_header(f)
            f.flush()
            os.fsync(f.fileno())
        except OSError as exc:
            self.failed = self.failed or exc
        finally:
            try:
                f.close()  # releases the flock (the file is closed even when its flush fails)
            except OSError as exc:
                self.failed = self.failed or exc
