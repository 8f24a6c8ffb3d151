"""`Framer`: cut a byte stream into exact fixed-size frames (20 ms of μ-law 8 kHz by default).

TTS engines and websockets deliver audio in arbitrary sizes; Twilio, the VAD and the pacing
all want whole frames. The remainder is kept for the next push, so nothing is lost or padded
mid-stream; only `flush` at the end of an utterance pads with silence.
"""

from __future__ import annotations

from media.g711 import SILENCE_BYTE

__all__ = ["Framer"]


class Framer:
    def __init__(self, frame_bytes: int = 160, silence_byte: int = SILENCE_BYTE) -> None:
        """`silence_byte` pads `flush`: μ-law's 0xFF by default, 0 for PCM16 (see
        `media.audio_format.AudioFormat.silence_byte`)."""
        if frame_bytes <= 0:
            raise ValueError(f"frame_bytes must be positive, got {frame_bytes}")
        self.frame_bytes = frame_bytes
        self.silence_byte = silence_byte
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held back waiting for a whole frame."""
        return len(self._buffer)

    def push(self, data: bytes) -> list[bytes]:
        """Add `data`; returns every whole frame now available, in order."""
        self._buffer += data
        size = self.frame_bytes
        whole = len(self._buffer) - len(self._buffer) % size
        frames = [bytes(self._buffer[i : i + size]) for i in range(0, whole, size)]
        del self._buffer[:whole]
        return frames

    def flush(self, pad: bool = True) -> bytes | None:
        """The held-back remainder (padded to a whole frame with silence when `pad`),
        or None when there is none. The framer is empty afterwards."""
        if not self._buffer:
            return None
        rest = bytes(self._buffer)
        self._buffer.clear()
        if pad:
            rest += bytes([self.silence_byte]) * (self.frame_bytes - len(rest))
        return rest
