"""`MediaRateGuard`: caller audio may not arrive faster than real time, beyond a short burst.

A media stream is paced by the phone network: Twilio sends one 20 ms frame every 20 ms, a few
late ones at once after a network hiccup, and never more audio than time has passed. A client
holding a stream token could instead send minutes of audio in a second, and every second of it
costs STT and VAD work on the shared inference threads (issue 9, finding 7). So the audio
received since the first frame may exceed the time elapsed since then by at most
`burst_seconds`; past that the stream is refused.

The allowance is cumulative, not a refilling bucket: after a 5 s stall Twilio delivers the 5 s
it buffered at once, which is real time overall and must pass. What cannot pass is more audio
than the call has lasted, plus the burst.

The call's time counts from `opened_at` when given (the moment the websocket was accepted: no
audio can have been sent before it), else from the first frame read. The first frame read is
late when the server itself is busy (a loaded event loop reads a socket that has been filling
for seconds), and counting from it would take the server's own backlog for a flood and refuse
honest calls exactly when the server is under load.

Sans-I/O: bytes and the caller's clock in, a verdict out.
"""

from __future__ import annotations

__all__ = ["MediaRateExceeded", "MediaRateGuard"]


class MediaRateExceeded(ValueError):
    """The stream is ahead of real time by more than its burst; `reason` is for the record."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MediaRateGuard:
    def __init__(
        self, burst_seconds: float, bytes_per_second: int = 8000, *, opened_at: float | None = None
    ) -> None:
        """`bytes_per_second`: of the stream's audio (μ-law 8 kHz mono: 8000). `opened_at`:
        when the connection opened, on the clock `receive` is given."""
        if burst_seconds <= 0 or bytes_per_second <= 0:
            raise ValueError("burst_seconds and bytes_per_second must be positive")
        self.burst_seconds = burst_seconds
        self.bytes_per_second = bytes_per_second
        self._first: float | None = opened_at
        self._received = 0  # bytes since the first frame, that frame included

    @property
    def received_seconds(self) -> float:
        return self._received / self.bytes_per_second

    def ahead(self, now: float) -> float:
        """Seconds of audio received beyond the time elapsed since the start."""
        if self._first is None:
            return 0.0
        return self.received_seconds - max(0.0, now - self._first)

    def receive(self, audio_bytes: int, now: float) -> None:
        """Count one frame that arrived at `now` (monotonic seconds); raises
        `MediaRateExceeded` once the stream is more than `burst_seconds` ahead."""
        if self._first is None:
            self._first = now
        self._received += audio_bytes
        ahead = self.ahead(now)
        if ahead > self.burst_seconds:
            elapsed = max(0.0, now - self._first)
            raise MediaRateExceeded(
                f"media faster than real time: {self.received_seconds:.2f} s of audio in "
                f"{elapsed:.2f} s (burst allowed: {self.burst_seconds:g} s)"
            )
