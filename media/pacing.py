"""Pure models of the far end's playback clock: how far ahead to send, and what was heard.

Twilio plays outbound audio in order as fast as real time allows and buffers the rest. Sending
everything at once would make barge-in useless (the queue would have to be cleared, and what the
caller heard would be unknown), so `Pacer` holds each chunk back until at most `max_ahead`
seconds are still queued there (so at most `max_ahead` + one chunk right after a send).
`PlayoutTracker` turns mark echoes into "seconds of this utterance the caller heard", which is
what the history is truncated to on barge-in. Time is always an argument.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Pacer", "PlayoutTracker"]


class Pacer:
    def __init__(self, max_ahead: float = 0.2) -> None:
        if max_ahead < 0:
            raise ValueError(f"max_ahead must not be negative, got {max_ahead}")
        self.max_ahead = max_ahead
        self._end: float | None = None  # when the audio sent so far finishes playing

    def sent(self, seconds: float, now: float) -> None:
        """`seconds` of audio were sent at `now`; it plays after whatever is still queued."""
        start = now if self._end is None else max(now, self._end)
        self._end = start + seconds

    def queued(self, now: float) -> float:
        """Seconds sent but not yet played at `now`."""
        return 0.0 if self._end is None else max(0.0, self._end - now)

    def send_at(self, now: float) -> float:
        """Earliest time the next chunk may go: when the queue has drained to `max_ahead`."""
        if self._end is None:
            return now
        return max(now, self._end - self.max_ahead)

    def reset(self, now: float) -> None:
        """After a clear, nothing is queued at the far end."""
        self._end = now


@dataclass(slots=True)
class _Chunk:
    name: str
    seconds: float
    end: float  # cumulative seconds of the utterance at the end of this chunk
    sent_at: float | None


class PlayoutTracker:
    """Playout of one assistant utterance, chunk by chunk, from the marks sent after each chunk.

    A mark echo proves the audio before it has played, except after a clear: Twilio echoes
    flushed marks too, so after `clear` echoes only complete the bookkeeping (`finished`).
    Pass `now` to `add_chunk` and `acknowledge` so `heard_seconds` can interpolate within the
    chunk playing; without times it counts confirmed chunks only.
    """

    def __init__(self) -> None:
        self._chunks: list[_Chunk] = []
        self._index: dict[str, int] = {}
        self._acked = 0  # chunks[:_acked] are acknowledged
        self._confirmed = 0.0
        self._confirmed_at: float | None = None
        self._frozen: float | None = None

    @property
    def sent_seconds(self) -> float:
        return self._chunks[-1].end if self._chunks else 0.0

    @property
    def confirmed_seconds(self) -> float:
        return self._confirmed

    @property
    def finished(self) -> bool:
        """Every chunk added so far has been acknowledged (or flushed by a clear and echoed)."""
        return self._acked == len(self._chunks)

    @property
    def cleared(self) -> bool:
        return self._frozen is not None

    def add_chunk(self, mark_name: str, seconds: float, now: float | None = None) -> None:
        if mark_name in self._index:
            raise ValueError(f"mark {mark_name!r} already used in this utterance")
        self._index[mark_name] = len(self._chunks)
        self._chunks.append(_Chunk(mark_name, seconds, self.sent_seconds + seconds, now))

    def acknowledge(self, mark_name: str, now: float | None = None) -> float:
        """A mark echo arrived; returns the seconds confirmed played. Echoes arrive in order,
        so one echo confirms every chunk before it too. Unknown or repeated names change
        nothing."""
        i = self._index.get(mark_name)
        if i is None or i < self._acked:
            return self._confirmed
        self._acked = i + 1
        if self._frozen is None:
            self._confirmed = self._chunks[i].end
            self._confirmed_at = now
        return self._confirmed

    def heard_seconds(self, now: float) -> float:
        """Confirmed seconds plus the elapsed part of the chunk now playing (at most that
        chunk); frozen once cleared."""
        if self._frozen is not None:
            return self._frozen
        if self._acked == len(self._chunks):
            return self._confirmed
        playing = self._chunks[self._acked]
        # The next chunk started when the previous one finished, or when it was sent if the
        # far end had run dry by then.
        if self._acked == 0:
            anchor = playing.sent_at
        elif self._confirmed_at is None:
            anchor = None  # an echo of unknown time: only what it confirmed is certain
        else:
            anchor = max(self._confirmed_at, playing.sent_at or self._confirmed_at)
        if anchor is None:
            return self._confirmed
        elapsed = min(max(0.0, now - anchor), playing.seconds)
        return self._confirmed + elapsed

    def clear(self, now: float) -> float:
        """The far end's queue was cleared at `now`: fix and return what had been heard."""
        if self._frozen is None:
            self._frozen = self.heard_seconds(now)
        return self._frozen
